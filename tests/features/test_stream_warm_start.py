"""The stream state's epoch marker and warm start (issue 9, D7): a Redis restart in the middle of the
stream must not publish a single row computed from a partial window.

Real services only: the test's own Redis and broker (``fresh_stack``), killed and restarted through
the launcher as an operator's bad day would go; the archive written by the archive's own functions.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from risk_assets.features.groups import FEATURE_GROUPS
from risk_assets.features.spec import EVENT_TS
from risk_assets.features.stream import process_events
from risk_assets.features.stream_assets import stream_state_warm_start_job
from risk_assets.features.stream_state import StreamState, StreamStateCold, stream_groups
from risk_assets.features.stream_warm_start import (
    WarmStartIncomplete,
    process_with_warm_start,
    warm_start_for_batch,
    warm_start_now,
)
from risk_assets.ingest.archive import EVENTS, build_archive, decode_messages, write_archive
from risk_assets.ingest.kafka_reader import KafkaRangeReader, OffsetRange
from risk_assets.ingest.partitioning import HOUR, ingest_window
from risk_assets.lake import Lake
from risk_assets.names import EVENTS_TOPIC
from risk_assets.resources import KafkaResource, LakeResource, RedisResource
from risk_assets.simulator.config import SimConfig
from risk_assets.simulator.writers import make_producer, replay

STREAM = stream_groups(FEATURE_GROUPS)
START = datetime(2026, 6, 1, 8, tzinfo=UTC)
SIM = SimConfig(seed=29, start=START, hours=4, events_per_day=100_000, users=2_000)
BATCH = 1_500  # offsets per micro-batch


def _archive_hours(lake: Lake, kafka: str, first: datetime, last: datetime) -> None:
    """Archive hours first..last from the topic with the archive's own functions."""
    lo, hi = ingest_window(first, last)
    with KafkaRangeReader(kafka) as reader:
        batch, _ = reader.read_time_window(
            EVENTS_TOPIC, int(lo.timestamp() * 1000), int(hi.timestamp() * 1000)
        )
    hours = [first + i * HOUR for i in range(int((last - first) / HOUR) + 1)]
    write_archive(lake, EVENTS, build_archive(batch, EVENTS, hours))


def _expected_rows(events: pl.DataFrame) -> int:
    """Rows a batch must yield: one per (group, entity key, event_ts) among its stream events."""
    n = 0
    for g in STREAM:
        keys = [*g.entity.keys, EVENT_TS]
        mine = events.filter(
            pl.col("event_type").is_in(list(g.source_event_types)), *[pl.col(k).is_not_null() for k in keys]
        )
        n += mine.select(keys).unique().height
    return n


def _sorted(rows: dict[str, pl.DataFrame]) -> dict[str, pl.DataFrame]:
    by_name = {g.name: g for g in STREAM}
    return {n: f.sort([*by_name[n].entity.keys, EVENT_TS]) for n, f in rows.items()}


@pytest.fixture
def topic(fresh_stack) -> tuple[object, int]:
    stats = replay(SIM, make_producer(fresh_stack.kafka))
    assert stats.delivery_errors == 0
    return fresh_stack, stats.events


def _batches(kafka: str, end: int) -> list[tuple[OffsetRange, pl.DataFrame]]:
    out = []
    with KafkaRangeReader(kafka) as reader:
        for a in range(0, end, BATCH):
            rng = OffsetRange(EVENTS_TOPIC, 0, a, min(end, a + BATCH))
            out.append((rng, decode_messages(reader.read(rng), EVENTS).valid))
    return out


def test_a_cold_state_refuses_to_compute_until_warm(session_stack, key_prefix):
    """Marker missing (never warmed, or deleted) → StreamStateCold before any row is computed."""
    events = pl.DataFrame(
        {
            "event_id": ["e1"],
            "event_type": ["login"],
            "event_ts": [START],
            "ingest_ts": [START],
            "user_id": ["u1"],
            "device_id": ["d1"],
            "ip": ["10.0.0.1"],
            "success": [True],
        },
        schema_overrides={"event_ts": pl.Datetime("ms", "UTC"), "ingest_ts": pl.Datetime("ms", "UTC")},
    )
    with StreamState.from_url(session_stack.redis_url, STREAM, namespace=key_prefix) as state:
        assert state.epoch() is None
        with pytest.raises(StreamStateCold, match="missing"):
            process_events(events, None, state)
        token = state.mark_complete()
        assert state.epoch() == token and token in state.client.get(state.epoch_key).decode()
        assert process_events(events, None, state)["ato_ip"].height == 1
        state.delete_all()  # a reset makes the state cold again
        with pytest.raises(StreamStateCold):
            process_events(events, None, state)
        # A warm start whose pending token vanished (Redis lost it) does not commit.
        pending = state.begin_epoch()
        state.client.delete(state.epoch_key + ":pending")
        assert state.commit_epoch(pending) is False and state.epoch() is None
        state.delete_all()


def test_redis_restart_mid_stream_publishes_no_row_from_a_partial_state(topic, tmp_path):
    """D7. The same micro-batches twice: once without a fault (the reference), once with Redis killed
    and restarted empty before batch k and again right after the warm start of batch k + 3. Every
    batch's rows must equal the reference's: 0 lost, 0 doubled, 0 silently wrong."""
    stack, n_events = topic
    lake = Lake(str(tmp_path / "lake"))
    # The hourly archive ran since a day before the traffic (empty hours) up to hour 1 of the
    # simulation; hours 2–3 are only in the topic.
    _archive_hours(lake, stack.kafka, START - timedelta(hours=27), START + HOUR)
    batches = _batches(stack.kafka, n_events)

    with StreamState.from_url(stack.redis_url, STREAM, namespace="reference") as ref:
        ref.mark_complete()  # a new deployment: the topic starts with the simulation
        reference = [_sorted(process_events(ev, None, ref)) for _, ev in batches]

    k = next(
        i
        for i, (_, ev) in enumerate(batches)
        if ev["ingest_ts"].min() >= START + timedelta(hours=2, minutes=30)
    )
    restarts = {k: "before", k + 3: "after warm start"}
    warm_starts = []
    rows_in = rows_out = 0
    with StreamState.from_url(stack.redis_url, STREAM, namespace="live") as state:
        state.mark_complete()
        for i, (rng, ev) in enumerate(batches):
            if restarts.get(i) == "before":
                stack.restart_redis()

            def warm(i=i, rng=rng, ev=ev):
                with KafkaRangeReader(stack.kafka) as reader:
                    result = warm_start_for_batch(state, lake, reader, rng, ev)
                warm_starts.append((i, result))
                if restarts.get(i) == "after warm start" and len(warm_starts) == 2:
                    stack.restart_redis()  # the fresh warm state is lost before the batch reruns
                return result

            if restarts.get(i) == "after warm start":
                stack.restart_redis()  # cold again → warm → lost again → warm again
            rows, _ = process_with_warm_start(ev, None, state, warm)
            rows = _sorted(rows)
            rows_in += _expected_rows(ev)
            rows_out += sum(f.height for f in rows.values())
            for name, frame in rows.items():
                keys = [*next(g for g in STREAM if g.name == name).entity.keys, EVENT_TS]
                assert not frame.select(keys).is_duplicated().any()  # 0 doubled
                assert_frame_equal(frame, reference[i][name], check_exact=False, rel_tol=1e-9, abs_tol=1e-9)

    assert rows_out == rows_in == sum(sum(f.height for f in r.values()) for r in reference)
    print(
        f"{sum(ev.height for _, ev in batches)} events in {len(batches)} micro-batches, restarts before "
        f"batch {k} and after the warm start of batch {k + 3}: {rows_out} rows, all equal to the no-fault "
        f"run; warm starts (batch, archived, topic, s): "
        f"{[(i, w.archive_events, w.kafka_events, round(w.seconds, 2)) for i, w in warm_starts]}"
    )
    assert [i for i, _ in warm_starts] == [k, k + 3, k + 3]
    first = warm_starts[0][1]
    assert first.committed and first.archive_events > 0 and first.kafka_events > 0
    assert first.missing_hours and first.missing_hours[0] == START + 2 * HOUR
    assert all(w.committed for _, w in warm_starts)


def test_warm_start_refuses_a_window_that_neither_archive_nor_topic_covers(topic, tmp_path):
    """No reader and an archive that stops before the batch: nothing is committed."""
    stack, n_events = topic
    lake = Lake(str(tmp_path / "lake"))
    _archive_hours(lake, stack.kafka, START, START + HOUR)
    (rng, ev), *_ = _batches(stack.kafka, n_events)[-1:]
    with StreamState.from_url(stack.redis_url, STREAM, namespace="gaps") as state:
        with pytest.raises(WarmStartIncomplete, match="missing"):
            warm_start_for_batch(state, lake, None, rng, ev)
        assert state.epoch() is None
        # With the topic the same window is complete.
        with KafkaRangeReader(stack.kafka) as reader:
            result = warm_start_now(state, lake, reader, now=SIM.end)
        assert result.committed and state.epoch() == result.token
        assert result.archive_events + result.kafka_events >= n_events * 0.9


def test_warm_start_job_in_dagster_commits_the_epoch(topic, tmp_path):
    """The op/job a team runs after adding a stream group (or an operator after losing Redis)."""
    stack, n_events = topic
    lake = Lake(str(tmp_path / "lake"))
    _archive_hours(lake, stack.kafka, START - timedelta(hours=27), START + HOUR)
    resources = {
        "kafka": KafkaResource(bootstrap_servers=stack.kafka),
        "redis": RedisResource(url=stack.redis_url, namespace="job"),
        "lake": LakeResource(url=lake.url),
    }
    config = {"ops": {"warm_stream_state": {"config": {"as_of": SIM.end.isoformat()}}}}
    result = stream_state_warm_start_job.execute_in_process(run_config=config, resources=resources)
    assert result.success
    with StreamState.from_url(stack.redis_url, STREAM, namespace="job") as state:
        assert state.epoch() is not None
        # The state holds the simulated traffic: a busy IP's members are there.
        last = _batches(stack.kafka, n_events)[-1][1]
        ip = last.filter(pl.col("event_type") == "login", pl.col("ip").is_not_null())["ip"][0]
        assert len(state.members("ip", ip)) > 0
