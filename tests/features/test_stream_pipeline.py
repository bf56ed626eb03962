"""The stream path as Dagster runs it: sensor ticks → exact-range runs → buffer topic → ingestion
sensor → Redis + feature log, on the real broker and Redis, including a Redis outage."""

from __future__ import annotations

import os
import signal
import time
from datetime import UTC, datetime, timedelta

import dagster as dg
import polars as pl
import pytest

from risk_assets.features.batch import compute_feature_groups
from risk_assets.features.consistency import compare
from risk_assets.features.ingestion import read_feature_log
from risk_assets.features.stream_assets import STREAM_GROUPS, stream_batch_consistency
from risk_assets.lake import Lake
from risk_assets.names import feature_asset_key
from risk_assets.resources import KafkaResource, LakeResource, RawEventSource, RedisResource
from risk_assets.sensors.kafka_sensors import feature_ingestion_sensor, stream_features_sensor
from risk_assets.sensors.offset_cursor import OffsetCursor
from risk_assets.simulator.config import SimConfig
from risk_assets.simulator.generator import generate
from risk_assets.simulator.writers import make_producer, replay
from risk_assets.stack import launcher
from tests.conftest import DEFS as defs
from tests.conftest import asset_def

batch_features = asset_def(feature_asset_key("ato_user"))

START = datetime(2026, 6, 1, 8, tzinfo=UTC)
SIM = SimConfig(seed=21, start=START, hours=2, events_per_day=100_000, users=2_000)


@pytest.fixture
def env(fresh_stack, tmp_path, monkeypatch, key_prefix):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", fresh_stack.kafka)
    monkeypatch.setenv("REDIS_URL", fresh_stack.redis_url)
    monkeypatch.setenv("RISK_LAKE_URL", str(tmp_path / "lake"))
    return fresh_stack, Lake(str(tmp_path / "lake"))


def tick(sensor, instance, cursor, kafka, redis_url=None):
    """One evaluation of a Kafka sensor (Redis: ``redis_url``, else the test's ``REDIS_URL``)."""
    resources = {
        "kafka": KafkaResource(bootstrap_servers=kafka),
        "redis": RedisResource(url=redis_url or os.environ["REDIS_URL"]),
    }
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    data = sensor.evaluate_tick(ctx)
    return data.run_requests or [], data.cursor


def execute(job_name: str, request: dg.RunRequest, instance) -> bool:
    job = defs.resolve_job_def(job_name)
    result = job.execute_in_process(
        run_config=request.run_config,
        instance=instance,
        tags={**request.tags, "dagster/run_key": request.run_key},
        raise_on_error=False,
    )
    return result.success


def drain(instance, kafka, cursors):
    """Tick both sensors and run what they request until nothing is left."""
    for _ in range(20):
        progressed = False
        for sensor, job in (
            (stream_features_sensor, "stream_features_job"),
            (feature_ingestion_sensor, "feature_ingestion_job"),
        ):
            requests, cursors[sensor.name] = tick(sensor, instance, cursors[sensor.name], kafka)
            for r in requests:
                assert execute(job, r, instance), r.run_key
                progressed = True
        if not progressed:
            return cursors
    raise AssertionError("sensors kept requesting runs")


def test_stream_values_match_batch_and_failures_keep_the_cursor(env, monkeypatch, open_instance):
    # Runs on SQLite and on PostgreSQL: the sensors read run states back from the instance.
    stack, lake = env
    stats = replay(SIM, make_producer(stack.kafka))
    assert stats.delivery_errors == 0
    events = generate(SIM).events.filter(pl.col("ingest_ts") < SIM.end)

    with open_instance() as instance:
        cursors = drain(
            instance, stack.kafka, {stream_features_sensor.name: None, feature_ingestion_sensor.name: None}
        )
        committed = OffsetCursor.parse(cursors[stream_features_sensor.name]).committed
        assert committed == {"risk.events/0": stats.events}

        batch = compute_feature_groups(STREAM_GROUPS, events, SIM.start, SIM.end)
        results = [compare(g, read_feature_log(lake, g).collect(), batch[g.name]) for g in STREAM_GROUPS]
        total = sum(r.rows_compared for r in results)
        equal = sum(r.rows_equal for r in results)
        assert total == sum(batch[g.name].height for g in STREAM_GROUPS) > 0
        assert all(r.stream_rows_without_batch == 0 for r in results)
        print(f"stream/batch consistency: {equal}/{total} = {equal / total:.4f}")
        # Rows differ only where an event of the window arrived after the row was computed.
        assert equal / total >= 0.97, equal / total

        # The same hours through the archive and the batch assets: the asset check agrees.
        fmt = "%Y-%m-%d-%H:%M"
        archived = defs.resolve_job_def("raw_archive_job").execute_in_process(
            instance=instance,
            tags={
                "dagster/asset_partition_range_start": SIM.start.strftime(fmt),
                "dagster/asset_partition_range_end": (SIM.end - timedelta(hours=1)).strftime(fmt),
            },
        )
        assert archived.success
        assert dg.materialize(
            [batch_features],
            selection=[feature_asset_key(g.name) for g in STREAM_GROUPS],
            resources={"lake": LakeResource(url=lake.url), "raw_event_source": RawEventSource()},
            partition_key=SIM.start.strftime("%Y-%m-%d"),
            instance=instance,
        ).success
        check = stream_batch_consistency(lake=LakeResource(url=lake.url))
        assert check.passed, check.metadata
        assert check.metadata["rows_compared"].value > 0
        assert check.metadata["consistency_rate"].value >= 0.97

        # Redis dies: the ingestion run fails and the committed cursor stays where it was.
        more = SIM.with_(start=SIM.end, hours=1)
        produced = replay(more, make_producer(stack.kafka)).events
        requests, cursors["stream_features_sensor"] = tick(
            stream_features_sensor, instance, cursors["stream_features_sensor"], stack.kafka
        )
        assert requests and all(execute("stream_features_job", r, instance) for r in requests)
        before = OffsetCursor.parse(cursors["feature_ingestion_sensor"]).committed
        redis_pid = launcher.pids(stack.config)["redis"]
        os.kill(redis_pid, signal.SIGKILL)
        time.sleep(0.3)
        requests, cursors["feature_ingestion_sensor"] = tick(
            feature_ingestion_sensor, instance, cursors["feature_ingestion_sensor"], stack.kafka
        )
        assert requests and not any(execute("feature_ingestion_job", r, instance) for r in requests)
        requests, cursors["feature_ingestion_sensor"] = tick(
            feature_ingestion_sensor, instance, cursors["feature_ingestion_sensor"], stack.kafka
        )
        assert OffsetCursor.parse(cursors["feature_ingestion_sensor"]).committed == before
        assert requests and all("#attempt2" in r.run_key for r in requests)

        with monkeypatch.context() as m:  # the launcher must not take our test endpoints as external
            m.delenv("REDIS_URL")
            m.delenv("KAFKA_BOOTSTRAP_SERVERS")
            launcher.up(stack.config)  # Redis back on its port (empty: it keeps nothing on disk)
        assert all(execute("feature_ingestion_job", r, instance) for r in requests)
        cursors = drain(instance, stack.kafka, cursors)
        after = OffsetCursor.parse(cursors["feature_ingestion_sensor"]).committed
        assert after["risk.features/0"] > before["risk.features/0"]
        assert OffsetCursor.parse(cursors["stream_features_sensor"]).committed == {
            "risk.events/0": stats.events + produced
        }
