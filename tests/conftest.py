"""Shared fixtures: real services started by the project's own launcher, on free loopback ports.

Nothing is mocked. Every test that needs a broker gets its own tansu instance (it starts in tens of
milliseconds), so topic contents never leak between tests; Redis and S3 are shared per session and
tests use their own key prefixes and buckets. The system Redis on :6379 is never touched.
"""

from __future__ import annotations

import os
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import dagster as dg
import pytest

from risk_assets.definitions import all_assets, build_definitions
from risk_assets.partitions import TimePartitions
from risk_assets.stack import launcher

_EXTERNAL_ENV = ("REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS", "S3_ENDPOINT_URL")


TEST_PARTITIONS = TimePartitions(date(2026, 1, 1))
"""Partitions of the definitions tests run: from a data start before every simulated test day."""
DEFS = build_definitions(TEST_PARTITIONS)
"""The code location as the tests see it: the wiring of ``definitions.defs`` (resources read their
``dg.EnvVar`` at run time, so a test sets the environment of its own services)."""
_UNBOUND = {
    key: a for a in all_assets(TEST_PARTITIONS) if isinstance(a, dg.AssetsDefinition) for key in a.keys
}


def asset_def(key: str | dg.AssetKey) -> dg.AssetsDefinition:
    """The assets definition (asset or multi-asset) that materializes ``key``, with no resources
    bound, for ``dg.materialize(..., resources=…)`` with a test's own services."""
    return _UNBOUND[dg.AssetKey.from_coercible(key)]


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    return launcher.free_port()


@dataclass(frozen=True)
class Stack:
    """Endpoints of a running test stack."""

    config: launcher.StackConfig
    env: dict[str, str]

    @property
    def kafka(self) -> str:
        return self.env["KAFKA_BOOTSTRAP_SERVERS"]

    @property
    def redis_url(self) -> str:
        return self.env["REDIS_URL"]

    @property
    def s3_endpoint(self) -> str:
        return self.env["S3_ENDPOINT_URL"]

    def restart_redis(self) -> None:
        """An operator's bad day: SIGKILL the stack's redis-server and start a new one on the same
        port through the launcher — empty, since the project's Redis keeps nothing on disk."""
        pid = launcher.pids(self.config)["redis"]
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while "redis" in launcher.pids(self.config) or not _bindable(self.config.redis_port):
            # The killed server's listening socket can outlive the reaped process by a few ms.
            assert time.monotonic() < deadline, f"redis-server {pid} did not release its port"
            time.sleep(0.02)
        saved = {k: os.environ.pop(k) for k in _EXTERNAL_ENV if k in os.environ}
        try:
            launcher.up(self.config)
        finally:
            os.environ.update(saved)


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _start(state_dir: Path, with_s3: bool) -> Stack:
    # Tests always own their services: ignore endpoints a developer may have exported.
    saved = {k: os.environ.pop(k) for k in _EXTERNAL_ENV if k in os.environ}
    try:
        config = launcher.StackConfig(
            state_dir=state_dir,
            redis_port=free_port(),
            kafka_port=free_port(),
            s3_port=free_port(),
            with_s3=with_s3,
        )
        return Stack(config, launcher.up(config))
    finally:
        os.environ.update(saved)


@pytest.fixture(scope="session")
def session_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Redis + broker + S3 (moto server) shared by the session."""
    stack = _start(tmp_path_factory.mktemp("stack"), with_s3=True)
    yield stack
    launcher.down(stack.config)


@pytest.fixture
def fresh_stack(tmp_path: Path) -> Iterator[Stack]:
    """A Redis + broker pair of the test's own: empty topics, nothing shared."""
    stack = _start(tmp_path / "stack", with_s3=False)
    yield stack
    launcher.down(stack.config)


@pytest.fixture
def key_prefix() -> str:
    """A Redis key prefix owned by one test (tests never flush keys they do not own)."""
    return f"test:{uuid.uuid4().hex[:12]}:"
