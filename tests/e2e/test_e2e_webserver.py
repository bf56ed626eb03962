"""End to end as an analyst would do it: the real webserver + daemon, a backfill launched through
the GraphQL API (the same mutation the UI sends), and the lake checked against what was produced.

Runs twice: on the SQLite instance ``make dev`` uses by default and on PostgreSQL (``DAGSTER_STORAGE=
postgres``: the instance file is dagster.yaml + dagster-postgres.yaml, as the Makefile writes it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
import sqlalchemy

from risk_assets.ingest.archive_format import archive_part_path
from risk_assets.lake import Lake
from risk_assets.partitions import DATA_START_ENV
from tests.conftest import free_port, instance_yaml
from tests.ingest.test_archive import login, ms, produce

# Generous deadlines: on a loaded 2-core box `dagster dev` (webserver + daemon + code server, and the
# schema migration on PostgreSQL) took over 120 s to answer; idle it answers in about 20 s.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
H0 = datetime(2026, 4, 2, 6, tzinfo=UTC)

LAUNCH = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
    ... on Error { message }
  }
}"""

STATUS = """
query($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { status runs { runId status } }
    ... on PythonError { message }
  }
}"""


def graphql(port: int, query: str, variables: dict) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        body = json.load(resp)
    assert "errors" not in body, body
    return body["data"]


def wait_for_server(port: int, proc: subprocess.Popen, log: Path, deadline_s: float = 300) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"dagster dev exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"dagster dev did not answer within {deadline_s}s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def dagster_dev(fresh_stack, tmp_path, dagster_storage):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(instance_yaml(dagster_storage))
    port = free_port()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "RISK_LAKE_URL": str(tmp_path / "lake"),
        "KAFKA_BOOTSTRAP_SERVERS": fresh_stack.kafka,
        "REDIS_URL": fresh_stack.redis_url,
        # The partitions must hold this test's hours whatever the caller exports (`make test`
        # exports the demo's RISK_DATA_START, which is after H0).
        DATA_START_ENV: (H0 - timedelta(days=1)).strftime("%Y-%m-%d"),
    }
    log = tmp_path / "dagster_dev.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1",
             "-p", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        wait_for_server(port, proc, log)
        yield port, Lake(env["RISK_LAKE_URL"]), log
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_backfill_through_graphql_archives_exactly_what_was_produced(
    fresh_stack, dagster_dev, dagster_storage
):
    port, lake, log = dagster_dev
    # Three hours of events arriving within seconds to minutes (well inside the grace period),
    # then a marker an hour and a half later so every hour is final.
    items = []
    for i in range(3 * 600):
        t = ms(H0) + i * 6_000
        items.append((login(i, t), t + (i % 50) * 1_000))
    items.append((login(999_999, ms(H0) + 270 * 60_000), ms(H0) + 270 * 60_000))
    produce(fresh_stack.kafka, sorted(items, key=lambda x: x[1]))

    hours = [H0 + timedelta(hours=i) for i in range(3)]
    params = {
        "assetSelection": [{"path": ["raw_events"]}, {"path": ["raw_event_dead_letters"]}],
        "partitionNames": [h.strftime("%Y-%m-%d-%H:%M") for h in hours],
        "fromFailure": False,
    }
    launched = graphql(port, LAUNCH, {"params": params})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["backfillId"]

    deadline = time.monotonic() + 300
    status = None
    while time.monotonic() < deadline:
        status = graphql(port, STATUS, {"id": backfill_id})["partitionBackfillOrError"]
        if status["status"] in ("COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"):
            break
        time.sleep(2)
    assert status is not None and status["status"] == "COMPLETED_SUCCESS", (status, log.read_text()[-3000:])
    # BackfillPolicy.multi_run(24): the three hours are one run.
    assert [r["status"] for r in status["runs"]] == ["SUCCESS"]
    if dagster_storage == "postgres":  # the webserver and daemon really used PostgreSQL
        # (Other runs may be there too: the online sync schedule is on by default.)
        engine = sqlalchemy.create_engine(os.environ["DAGSTER_PG_URL"])
        with engine.connect() as conn:
            stored = dict(conn.execute(sqlalchemy.text("SELECT run_id, status FROM runs")).all())
        engine.dispose()
        assert {r["runId"]: stored.get(r["runId"]) for r in status["runs"]} == {
            r["runId"]: r["status"] for r in status["runs"]
        }

    archived = pl.concat(
        [pl.read_parquet(lake.read_bytes(archive_part_path("raw_events", h))) for h in hours]
    )
    assert sorted(archived["event_id"].to_list()) == sorted(f"ev-{i}" for i in range(3 * 600))
    for h in hours:
        part = pl.read_parquet(lake.read_bytes(archive_part_path("raw_events", h)))
        assert part.height == 600
        assert part["event_ts"].dt.truncate("1h").unique().to_list() == [h]
