"""The continuous stream worker (risk-stream) on the real broker and Redis: killed mid-batch and
restarted, its output equals an uninterrupted computation and the batch engine's; it shares its
partitions with the Kafka sensors; its progress reaches a real Dagster instance."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime

import dagster as dg
import polars as pl
import pytest

from risk_assets.features.batch import compute_feature_groups
from risk_assets.features.consistency import compare
from risk_assets.features.groups import FEATURE_GROUPS
from risk_assets.features.ingestion import read_feature_log
from risk_assets.features.redis_client import connect
from risk_assets.features.stream import process_events
from risk_assets.features.stream_state import StreamState, stream_groups
from risk_assets.ingest.archive import EVENTS, decode_messages
from risk_assets.ingest.kafka_reader import KafkaRangeReader, OffsetRange
from risk_assets.lake import Lake
from risk_assets.names import (
    EVENTS_TOPIC,
    FEATURE_LOG,
    FEATURES_TOPIC,
    KAFKA_LAG_CHECK,
    ONLINE_FEATURES,
    STREAM_FEATURE_BUFFER,
)
from risk_assets.resources import RedisResource
from risk_assets.sensors.kafka_sensors import stream_features_sensor
from risk_assets.sensors.offset_cursor import OffsetCursor
from risk_assets.sensors.stream_worker import stream_worker_progress_sensor
from risk_assets.simulator.config import SimConfig
from risk_assets.simulator.generator import generate
from risk_assets.simulator.writers import make_producer, replay
from risk_assets.streaming import progress
from risk_assets.streaming.handoff import Handoff
from risk_assets.streaming.worker import StreamIncident, StreamWorker, WorkerSettings
from tests.features.test_stream_pipeline import execute, tick

STREAM_GROUPS = stream_groups(FEATURE_GROUPS)
START = datetime(2026, 6, 1, 8, tzinfo=UTC)
SIM = SimConfig(seed=21, start=START, hours=2, events_per_day=100_000, users=2_000)
EVENTS_TP = f"{EVENTS_TOPIC}/0"
FEATURES_TP = f"{FEATURES_TOPIC}/0"


@pytest.fixture
def env(fresh_stack, tmp_path, monkeypatch):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", fresh_stack.kafka)
    monkeypatch.setenv("REDIS_URL", fresh_stack.redis_url)
    monkeypatch.setenv("RISK_LAKE_URL", str(tmp_path / "lake"))
    return fresh_stack, Lake(str(tmp_path / "lake"))


def _end(kafka: str, topic: str) -> int:
    with KafkaRangeReader(kafka) as reader:
        return reader.bounds(topic, 0)[1]


def _start_worker(hold_s: float) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "risk_assets.streaming.cli", "--worker-id", "w1", "--max-range", "1500"]
    if hold_s:
        cmd += ["--hold-after-publish", str(hold_s)]
    return subprocess.Popen(
        cmd, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _wait(predicate, timeout_s: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(
                f"worker exited ({proc.returncode}) while waiting for {what}: {proc.stdout.read()}"
            )
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_worker_killed_mid_batch_loses_and_doubles_nothing(env):
    stack, lake = env
    stats = replay(SIM, make_producer(stack.kafka))
    assert stats.delivery_errors == 0
    handoff = Handoff(connect(stack.redis_url))

    # Two SIGKILLs, each after the worker published a range's rows and before it committed the range.
    kills = 0
    for _ in range(2):
        before = handoff.read(EVENTS_TP).committed
        published_before = _end(stack.kafka, FEATURES_TOPIC)
        proc = _start_worker(hold_s=3.0)
        _wait(
            lambda before=published_before: _end(stack.kafka, FEATURES_TOPIC) > before,
            120,
            "a published range",
            proc,
        )
        assert handoff.read(EVENTS_TP).committed == before  # published, not committed: mid-batch
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        kills += 1
    state = handoff.read(EVENTS_TP)
    assert state.pending is not None and state.pending[0] == (state.committed or 0)

    proc = _start_worker(hold_s=0.0)  # same worker id: takes its leases back at once
    _wait(lambda: handoff.read(EVENTS_TP).committed == stats.events, 180, "every event committed", proc)
    _wait(
        lambda: handoff.read(FEATURES_TP).committed == _end(stack.kafka, FEATURES_TOPIC),
        60,
        "the buffer ingested",
        proc,
    )
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert handoff.read(EVENTS_TP).owner == ""  # released on SIGTERM

    # The exact ranges the worker committed, computed once each by the engine on a state of its own.
    records = [r for _, r in progress.read_after(handoff.client, "risk", None)]
    ranges = [
        OffsetRange(r.topic, r.partition, r.start, r.end) for r in records if r.asset == STREAM_FEATURE_BUFFER
    ]
    assert ranges[0].start == 0 and ranges[-1].end == stats.events
    assert all(a.end == b.start for a, b in itertools.pairwise(ranges))  # contiguous, each once
    expected: dict[str, list[pl.DataFrame]] = {g.name: [] for g in STREAM_GROUPS}
    with (
        StreamState.from_url(stack.redis_url, STREAM_GROUPS, namespace="reference") as ref,
        KafkaRangeReader(stack.kafka) as reader,
    ):
        ref.mark_complete()
        for rng in ranges:
            valid = decode_messages(reader.read(rng, complete=True), EVENTS).valid
            for name, rows in process_events(valid, STREAM_GROUPS, ref).items():
                expected[name].append(rows)

    # The kills really replayed published ranges: the buffer holds some rows twice ...
    buffered = _end(stack.kafka, FEATURES_TOPIC)
    expected_rows = sum(pl.concat(f).height for f in expected.values())
    assert buffered > expected_rows > 0, (buffered, expected_rows)
    events = generate(SIM).events.filter(pl.col("ingest_ts") < SIM.end)
    batch = compute_feature_groups(STREAM_GROUPS, events, SIM.start, SIM.end)
    for g in STREAM_GROUPS:
        logged = read_feature_log(lake, g).collect()
        keys = [*g.entity.keys, "event_ts"]
        # ... yet 0 doubled: one row per (entity, event_ts) in the feature log (created_ts included) ...
        assert logged.select([*keys, "created_ts"]).is_duplicated().sum() == 0
        # ... 0 lost and every value equal to the uninterrupted computation of the same ranges ...
        ref_rows = pl.concat(expected[g.name])
        same = compare(g, logged, ref_rows)
        assert (
            logged.height == ref_rows.height and same.rows_equal == same.rows_compared == ref_rows.height
        ), same
        # ... and to the batch engine's wherever no event of the window arrived after the row (as the
        # sensor path: tests/features/test_stream_pipeline.py).
        vs_batch = compare(g, logged, batch[g.name])
        assert vs_batch.rows_compared == batch[g.name].height and vs_batch.stream_rows_without_batch == 0
        assert vs_batch.rate >= 0.97, vs_batch
    print(f"{kills} kills; {buffered} buffer messages for {expected_rows} rows; {len(ranges)} ranges")


def test_worker_and_sensor_share_a_partition_and_progress_reaches_dagster(env, dagster_instance):
    stack, lake = env
    first = replay(SIM.with_(hours=1), make_producer(stack.kafka)).events
    handoff = Handoff(connect(stack.redis_url))
    settings = WorkerSettings(worker_id="w2", max_range=2_000, lease_ms=300_000)

    # The sensor goes first and requests a range; a worker that starts now waits for that range.
    requests_first, cursor = tick(stream_features_sensor, dagster_instance, None, stack.kafka)
    assert [r.tags["risk/offset_range"] for r in requests_first] == [f"0-{first}"]
    with StreamWorker(stack.kafka, stack.redis_url, lake, settings=settings) as worker:
        StreamState.from_url(stack.redis_url, STREAM_GROUPS).mark_complete()
        waiting = worker.step()
        assert not waiting.ranges and "waiting for the sensor" in waiting.waiting[EVENTS_TP]
        # While the worker holds the lease the sensor requests nothing new (its range is still pending).
        replay(SIM.with_(start=SIM.end, hours=1), make_producer(stack.kafka))
        requests, cursor = tick(stream_features_sensor, dagster_instance, cursor, stack.kafka)
        assert requests == []
        # The sensor's run succeeds; its next tick records it (still no new range), and the worker goes on.
        (run,) = requests_first
        assert execute("stream_features_job", run, dagster_instance)
        requests, cursor = tick(stream_features_sensor, dagster_instance, cursor, stack.kafka)
        assert requests == [] and OffsetCursor.parse(cursor).committed[EVENTS_TP] == first
        for _ in range(10):
            if handoff.read(EVENTS_TP).committed == _end(stack.kafka, EVENTS_TOPIC):
                break
            worker.step()
        total = _end(stack.kafka, EVENTS_TOPIC)
        assert handoff.read(EVENTS_TP).committed == total
        records = [r for _, r in progress.read_after(handoff.client, "risk", None)]
        assert min(r.start for r in records if r.asset == STREAM_FEATURE_BUFFER) == first  # not 0: no overlap

    # The worker stopped (leases released): the sensor adopts its committed offset, requests nothing old.
    requests, cursor = tick(stream_features_sensor, dagster_instance, cursor, stack.kafka)
    assert OffsetCursor.parse(cursor).committed[EVENTS_TP] == total and requests == []

    # Progress in Dagster: one tick of the progress sensor, its events recorded as the daemon does.
    ctx = dg.build_sensor_context(
        instance=dagster_instance, resources={"redis": RedisResource(url=stack.redis_url)}
    )
    result = stream_worker_progress_sensor(ctx)
    assert isinstance(result, dg.SensorResult) and result.cursor
    for event in result.asset_events:
        dagster_instance.report_runless_asset_event(event)
    latest = dagster_instance.get_latest_materialization_event(dg.AssetKey(STREAM_FEATURE_BUFFER))
    meta = latest.asset_materialization.metadata
    assert meta["offset_start"].value == first and meta["offset_end"].value == total
    assert meta["messages"].value == total - first and meta["lag_offsets"].value >= 0
    for key in (ONLINE_FEATURES, FEATURE_LOG):
        assert dagster_instance.get_latest_materialization_event(dg.AssetKey(key)) is not None
    checks = [e for e in result.asset_events if isinstance(e, dg.AssetCheckEvaluation)]
    assert {(c.asset_key.to_user_string(), c.check_name) for c in checks} == {
        (STREAM_FEATURE_BUFFER, KAFKA_LAG_CHECK),
        (ONLINE_FEATURES, KAFKA_LAG_CHECK),
    }
    # The next tick has nothing new to report.
    again = stream_worker_progress_sensor(
        dg.build_sensor_context(
            instance=dagster_instance,
            cursor=result.cursor,
            resources={"redis": RedisResource(url=stack.redis_url)},
        )
    )
    assert isinstance(again, dg.SkipReason)


def test_a_broker_reset_stops_the_worker_with_the_numbers_and_poison_is_rejected(env):
    stack, lake = env
    first = replay(SIM.with_(hours=1), make_producer(stack.kafka), bad_rate=0.01).events
    handoff = Handoff(connect(stack.redis_url))
    with StreamWorker(stack.kafka, stack.redis_url, lake, settings=WorkerSettings(worker_id="w3")) as worker:
        for _ in range(5):
            worker.step()
        old = worker.reader.incarnation(EVENTS_TOPIC)
    assert handoff.read(EVENTS_TP).committed == first
    records = [r for _, r in progress.read_after(handoff.client, "risk", None)]
    # Poison (1 % invalid payloads) is rejected by the decoder, counted, and does not hold the cursor.
    assert sum(r.rejected for r in records if r.asset == STREAM_FEATURE_BUFFER) > 0

    stack.restart_kafka()  # the broker comes back empty: new topic ids, offsets from 0 again
    again = replay(SIM.with_(start=SIM.end, hours=1), make_producer(stack.kafka)).events
    before = {tp: handoff.read(tp) for tp in (EVENTS_TP, FEATURES_TP)}
    with StreamWorker(stack.kafka, stack.redis_url, lake, settings=WorkerSettings(worker_id="w3")) as worker:
        new = worker.reader.incarnation(EVENTS_TOPIC, fresh=True)
        with pytest.raises(StreamIncident) as incident:
            worker.step()
        message = str(incident.value)
        assert old in message and new in message and f"{first:,}" in message and f"[0, {again:,})" in message
        assert {tp: handoff.read(tp).committed for tp in before} == {
            tp: s.committed for tp, s in before.items()
        }
        # The operator accepts the new log: the worker starts it at its first offset.
        notes = worker.accept_incarnations()
        assert any(EVENTS_TP in n and new in n for n in notes)
        for _ in range(5):
            worker.step()
    assert handoff.read(EVENTS_TP).committed == again and handoff.read(EVENTS_TP).incarnation == new
