"""A broker restart in the middle of the stream (D3), on the real broker, Redis and Dagster sensors.

Before: the cursor (past the new log's end) skipped every new event as "no new offsets", run keys
repeated across incarnations, and feature rows published to the new broker were never ingested.
Now the inflight run of the old log fails instead of reading the new log's offsets, the sensors stop
with the numbers, and after the operator accepts the new incarnation every event of the new log is
processed once and every feature row it produced is ingested once."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import dagster as dg
import polars as pl
import pytest

from risk_assets.features.ingestion import read_feature_log
from risk_assets.features.stream_assets import STREAM_GROUPS
from risk_assets.lake import Lake
from risk_assets.names import STREAM_FEATURE_BUFFER
from risk_assets.sensors.kafka_sensors import (
    INCARNATION_TAG,
    feature_ingestion_sensor,
    stream_features_sensor,
)
from risk_assets.sensors.offset_cursor import OffsetCursor
from risk_assets.simulator.config import SimConfig
from risk_assets.simulator.writers import make_producer, replay
from tests.conftest import DEFS as defs
from tests.features.test_stream_pipeline import tick

START = datetime(2026, 6, 2, 8, tzinfo=UTC)
SIM = SimConfig(seed=5, start=START, hours=1, events_per_day=40_000, users=500)
JOBS = {
    stream_features_sensor.name: "stream_features_job",
    feature_ingestion_sensor.name: "feature_ingestion_job",
}


@pytest.fixture
def env(fresh_stack, tmp_path, monkeypatch):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", fresh_stack.kafka)
    monkeypatch.setenv("REDIS_URL", fresh_stack.redis_url)
    monkeypatch.setenv("RISK_LAKE_URL", str(tmp_path / "lake"))
    return fresh_stack, Lake(str(tmp_path / "lake"))


def execute(job_name: str, request: dg.RunRequest, instance) -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def(job_name).execute_in_process(
        run_config=request.run_config,
        instance=instance,
        tags={**request.tags, "dagster/run_key": request.run_key},
        raise_on_error=False,
    )


def stream_counts(result: dg.ExecuteInProcessResult) -> tuple[int, int, int]:
    """(messages read = valid + rejected, feature rows published, rejected as future) of a stream
    micro-batch."""
    (mat,) = [
        m for m in result.get_asset_materialization_events() if m.asset_key.path == [STREAM_FEATURE_BUFFER]
    ]
    md = mat.materialization.metadata
    future = md["rejected/future_timestamp"].value if "rejected/future_timestamp" in md else 0
    return md["events"].value + md["rejected"].value, md["dagster/row_count"].value, future


def drain(instance, kafka, cursors, counts):
    for _ in range(20):
        progressed = False
        for sensor in (stream_features_sensor, feature_ingestion_sensor):
            requests, cursors[sensor.name] = tick(sensor, instance, cursors[sensor.name], kafka)
            for r in requests:
                result = execute(JOBS[sensor.name], r, instance)
                assert result.success, r.run_key
                if sensor is stream_features_sensor:
                    read, rows, future = stream_counts(result)
                    counts["read"] += read
                    counts["published"] += rows
                    counts["future"] = counts.get("future", 0) + future
                progressed = True
        if not progressed:
            return cursors
    raise AssertionError("sensors kept requesting runs")


def log_rows(lake: Lake) -> int:
    return sum(read_feature_log(lake, g).collect().height for g in STREAM_GROUPS)


def test_broker_restart_mid_stream_is_an_incident_then_nothing_is_lost_or_doubled(env, dagster_instance):
    stack, lake = env
    instance = dagster_instance
    first = replay(SIM, make_producer(stack.kafka))
    cursors = {stream_features_sensor.name: None, feature_ingestion_sensor.name: None}
    counts = {"read": 0, "published": 0}
    cursors = drain(instance, stack.kafka, cursors, counts)
    assert counts["read"] == first.events
    rows_before = log_rows(lake)
    assert rows_before == counts["published"] > 0

    # More traffic; the stream sensor requests a range of it; the broker dies before the run.
    more = replay(SIM.with_(start=SIM.end), make_producer(stack.kafka))
    (pending,), cursors[stream_features_sensor.name] = tick(
        stream_features_sensor, instance, cursors[stream_features_sensor.name], stack.kafka
    )
    assert pending.run_key.startswith("risk.events@") and pending.tags[INCARNATION_TAG]
    stack.restart_kafka()
    third = replay(SIM.with_(start=SIM.end, seed=6), make_producer(stack.kafka))
    assert third.events < first.events + more.events  # the new log ends below the cursor

    # The old incarnation's run refuses the new log's offsets (they are other records).
    stale = execute("stream_features_job", pending, instance)
    assert not stale.success
    (failure,) = [e for e in stale.all_events if e.is_step_failure]
    assert "changed incarnation" in failure.step_failure_data.error.message

    # Both sensors stop, saying so with the numbers, and leave their cursors as they were.
    for sensor in (stream_features_sensor, feature_ingestion_sensor):
        with pytest.raises(Exception, match="topic incarnation changed") as info:
            tick(sensor, instance, cursors[sensor.name], stack.kafka)
        message = str(info.value)
        if sensor is stream_features_sensor:
            end_before = first.events + more.events
            assert f"requested up to {end_before:,}" in message and f"[0, {third.events:,})" in message
        # The operator path: the incident prints the cursor to set.
        cursors[sensor.name] = json.dumps(json.loads(message.rsplit("set the sensor cursor to: ", 1)[1]))

    counts = {"read": 0, "published": 0}
    cursors = drain(instance, stack.kafka, cursors, counts)
    assert counts["read"] == third.events  # every event of the new log, once
    assert OffsetCursor.parse(cursors[stream_features_sensor.name]).committed == {
        "risk.events/0": third.events
    }
    # Every feature row published to the new broker is in the feature log, once.
    assert log_rows(lake) == rows_before + counts["published"]
    keys = pl.concat(
        [
            read_feature_log(lake, g).collect().select(pl.lit(g.name).alias("g"), pl.all().exclude(r"^f_.*$"))
            for g in STREAM_GROUPS
        ],
        how="diagonal_relaxed",
    )
    assert keys.is_duplicated().sum() == 0


def test_an_event_from_two_days_ahead_does_not_freeze_the_online_row(env, dagster_instance):
    """D9 on the stream: a producer clock two days ahead used to publish a row that then won
    write-if-newer against every real event of the entity for two days."""
    import msgspec

    from risk_assets.features.groups import GROUPS_BY_NAME
    from risk_assets.features.ingestion import group_layout
    from risk_assets.features.online_store import OnlineStore
    from risk_assets.simulator.generator import generate
    from tests.ingest.test_archive import produce

    stack, lake = env
    first = replay(SIM, make_producer(stack.kafka))
    events = generate(SIM).events.filter(pl.col("ingest_ts") < SIM.end, pl.col("event_type") == "login")
    row = events.row(0, named=True)
    # Two days ahead of the wall clock (the simulated traffic is in the past).
    ahead = int((datetime.now(UTC) + timedelta(days=2)).timestamp() * 1000)
    payload = {
        k: v
        for k, v in row.items()
        if v is not None
        and k
        in (
            "event_type",
            "event_id",
            "user_id",
            "device_id",
            "ip",
            "ip_country",
            "ip_asn",
            "success",
            "auth_method",
        )
    }
    payload |= {"event_id": "from-the-future", "event_ts": ahead}
    produce(stack.kafka, [(msgspec.json.encode(payload), ahead + 10)])
    counts = {"read": 0, "published": 0}
    cursors = drain(dagster_instance, stack.kafka, {s: None for s in JOBS}, counts)
    assert counts["read"] == first.events + 1  # every message was read, the future one too
    assert counts["future"] == 1 and cursors  # …and the one from the future was rejected, counted
    group = GROUPS_BY_NAME["ato_ip"]  # a stream group the login feeds, keyed by its IP
    with OnlineStore.from_url(stack.redis_url) as store:
        (online,) = store.read([(group_layout(group), row["ip"])])
    assert online is not None and online.event_ts <= SIM.end  # the real newest row, not the future one
    logged = read_feature_log(lake, group).collect()
    assert logged["event_ts"].max() < SIM.end  # no row from the future was published
