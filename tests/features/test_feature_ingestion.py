"""Feature buffer round trip through the real broker, and buffer → online store + offline log ingestion.

Each test gets its own broker and Redis (``fresh_stack``); nothing is mocked. Rows come from the real
stream engine over simulated events.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import polars as pl
import pytest
from confluent_kafka import Producer

from risk_assets.features.feature_buffer import (
    BAD_VALUES,
    BUFFER_FORMAT_VERSION,
    FEATURES_TOPIC,
    MALFORMED,
    UNKNOWN_GROUP,
    UNKNOWN_VERSION,
    FeatureBufferError,
    decode,
    encode_rows,
    publish,
)
from risk_assets.features.groups import FEATURE_GROUPS, GROUPS_BY_NAME
from risk_assets.features.ingestion import (
    DEAD_LETTER_DATASET,
    FEATURE_LOG,
    group_layout,
    ingest_range,
    read_feature_log,
)
from risk_assets.features.online_store import OnlineStore, OnlineStoreUnavailable
from risk_assets.features.stream import CREATED_TS, output_schema, process_events
from risk_assets.features.stream_state import StreamState, stream_groups
from risk_assets.ingest.kafka_reader import KafkaRangeReader, OffsetRange
from risk_assets.lake import Lake
from risk_assets.simulator.config import SimConfig
from risk_assets.simulator.generator import generate
from tests.conftest import free_port

STREAM = stream_groups(FEATURE_GROUPS)
ATO_IP = GROUPS_BY_NAME["ato_ip"]


@pytest.fixture(scope="module")
def events() -> pl.DataFrame:
    cfg = SimConfig(hours=1, events_per_day=150_000, users=2000, start=datetime(2026, 11, 1, 12, tzinfo=UTC))
    ev = generate(cfg).events.sort("ingest_ts", "event_id")
    return ev.with_columns(
        pl.lit(0, pl.Int32).alias("_partition"), pl.int_range(pl.len(), dtype=pl.Int64).alias("_offset")
    )


@pytest.fixture
def stack_rows(
    fresh_stack, events
) -> Iterator[tuple[object, dict[str, pl.DataFrame], dict[str, pl.DataFrame]]]:
    """Stream rows of two consecutive micro-batches (first half, second half of the hour)."""
    with StreamState.from_url(fresh_stack.redis_url, STREAM, namespace="state") as state:
        half = events.height // 2
        first = process_events(events.slice(0, half), None, state)
        second = process_events(events.slice(half), None, state)
        yield fresh_stack, first, second


def _producer(bootstrap: str) -> Producer:
    return Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all"})


def _end(bootstrap: str) -> int:
    with KafkaRangeReader(bootstrap, timeout_s=10) as reader:
        return reader.bounds(FEATURES_TOPIC, 0)[1]


def _sorted(frame: pl.DataFrame, group) -> pl.DataFrame:
    return frame.sort([*group.entity.keys, "event_ts", CREATED_TS])


def test_buffer_round_trip_and_poison_messages(stack_rows):
    stack, rows, _ = stack_rows
    assert sum(f.height for f in rows.values()) > 1000
    producer = _producer(stack.kafka)
    n = publish(producer, rows)
    assert n == sum(f.height for f in rows.values())
    # Poison: not msgpack, an unknown group, an old group version, a wrong value type.
    _, good_value = encode_rows(ATO_IP, rows["ato_ip"].head(1))
    doc = msgspec.msgpack.decode(good_value[0])
    poison = [
        b"\xc1 not msgpack",
        msgspec.msgpack.encode([BUFFER_FORMAT_VERSION, "no_such_group", "0" * 12, ["x"], 1, 1, [1]]),
        msgspec.msgpack.encode([*doc[:2], "aaaaaaaaaaaa", *doc[3:]]),
        msgspec.msgpack.encode([*doc[:6], ["many", *doc[6][1:]]]),
    ]
    for p in poison:
        producer.produce(FEATURES_TOPIC, value=p, key=b"poison")
    assert producer.flush(10) == 0
    end = _end(stack.kafka)
    assert end == n + len(poison)
    with KafkaRangeReader(stack.kafka, timeout_s=10) as reader:
        batch = reader.read(OffsetRange(FEATURES_TOPIC, 0, 0, end))
    decoded = decode(batch)
    assert decoded.rejected_count == 4
    assert decoded.reasons == {MALFORMED: 1, UNKNOWN_GROUP: 1, UNKNOWN_VERSION: 1, BAD_VALUES: 1}
    assert sorted(i for i, _, _ in decoded.rejected) == list(range(n, n + 4))
    assert set(decoded.frames) == set(rows)
    for name, frame in rows.items():
        g = GROUPS_BY_NAME[name]
        assert decoded.frames[name].schema == pl.Schema(output_schema(g))
        assert _sorted(decoded.frames[name], g).equals(_sorted(frame, g))


def test_ingest_range_online_offline_idempotent(stack_rows, tmp_path: Path):
    stack, rows, _ = stack_rows
    lake = Lake(str(tmp_path / "lake"))
    n = publish(_producer(stack.kafka), rows)
    rng = OffsetRange(FEATURES_TOPIC, 0, 0, _end(stack.kafka))
    assert rng.size == n
    with (
        KafkaRangeReader(stack.kafka, timeout_s=10) as reader,
        OnlineStore.from_url(stack.redis_url, namespace="online") as store,
    ):
        result = ingest_range(reader, rng, store, lake)
        assert result.row_count == n and result.rejected == 0
        assert all(w.applied > 0 for w in result.online.values())
        # Online: the newest row per entity, values as floats.
        g = ATO_IP
        layout = group_layout(g)
        newest = rows["ato_ip"].sort("event_ts", CREATED_TS).unique("ip", keep="last").sort("ip").head(50)
        got = store.read([(layout, ip) for ip in newest["ip"].to_list()])
        for row, fr in zip(newest.iter_rows(named=True), got, strict=True):
            assert fr is not None
            assert fr.event_ts == row["event_ts"] and fr.created_ts == row[CREATED_TS]
            for f in g.feature_names:
                assert fr.values[f] == (None if row[f] is None else float(row[f]))
        # Offline log: every row, back in the group's schema.
        objects = sorted(lake.list(FEATURE_LOG))
        assert objects == sorted(result.log_objects)
        for name, frame in rows.items():
            grp = GROUPS_BY_NAME[name]
            logged = read_feature_log(lake, grp).collect()
            assert _sorted(logged, grp).equals(_sorted(frame, grp))
        # Re-ingesting the same range changes nothing: same objects, same contents, no online write.
        before = {p: lake.read_bytes(p) for p in objects}
        again = ingest_range(reader, rng, store, lake)
        assert all(w.applied == 0 for w in again.online.values())
        assert sorted(lake.list(FEATURE_LOG)) == objects
        for p in objects:
            a = pl.read_parquet(before[p])
            assert pl.read_parquet(lake.read_bytes(p)).equals(a)
        # Time filter on the log.
        t_mid = rows["ato_ip"]["event_ts"].sort()[rows["ato_ip"].height // 2]
        part = read_feature_log(lake, ATO_IP, start=t_mid, end=t_mid + timedelta(minutes=5)).collect()
        expected = rows["ato_ip"].filter(
            (pl.col("event_ts") >= t_mid) & (pl.col("event_ts") < t_mid + timedelta(minutes=5))
        )
        assert part.height == expected.height > 0


def test_out_of_order_ranges_keep_newer_values_online(stack_rows, tmp_path: Path):
    stack, older, newer = stack_rows
    lake = Lake(str(tmp_path / "lake"))
    producer = _producer(stack.kafka)
    n1 = publish(producer, older)
    n2 = publish(producer, newer)
    r_old = OffsetRange(FEATURES_TOPIC, 0, 0, n1)
    r_new = OffsetRange(FEATURES_TOPIC, 0, n1, n1 + n2)
    assert _end(stack.kafka) == n1 + n2
    layout = group_layout(ATO_IP)
    both = set(older["ato_ip"]["ip"].to_list()) & set(newer["ato_ip"]["ip"].to_list())
    ips = sorted(both)[:100]
    assert ips
    with (
        KafkaRangeReader(stack.kafka, timeout_s=10) as reader,
        OnlineStore.from_url(stack.redis_url, namespace="online") as store,
    ):
        ingest_range(reader, r_new, store, lake)
        after_new = store.read([(layout, ip) for ip in ips])
        res_old = ingest_range(reader, r_old, store, lake)
        after_old = store.read([(layout, ip) for ip in ips])
    assert after_old == after_new  # the older range never overwrote a newer row
    assert res_old.online["ato_ip"].skipped > 0
    latest = newer["ato_ip"].filter(pl.col("ip").is_in(ips)).group_by("ip").agg(pl.col("event_ts").max())
    by_ip = dict(latest.iter_rows())
    assert all(r is not None and r.event_ts == by_ip[ip] for ip, r in zip(ips, after_old, strict=True))
    # Both ranges are in the log.
    logged = read_feature_log(lake, ATO_IP).collect()
    assert logged.height == older["ato_ip"].height + newer["ato_ip"].height


def test_redis_down_raises_and_writes_nothing_offline(stack_rows, tmp_path: Path):
    stack, rows, _ = stack_rows
    lake = Lake(str(tmp_path / "lake"))
    n = publish(_producer(stack.kafka), rows)
    rng = OffsetRange(FEATURES_TOPIC, 0, 0, n)
    dead = OnlineStore.from_url(f"redis://127.0.0.1:{free_port()}/0", check=False, retries=0)
    with KafkaRangeReader(stack.kafka, timeout_s=10) as reader, pytest.raises(OnlineStoreUnavailable):
        ingest_range(reader, rng, dead, lake)
    dead.close()
    assert list(lake.list(FEATURE_LOG)) == []
    # The rows are still in Kafka: once Redis is back, the same range ingests completely.
    with (
        KafkaRangeReader(stack.kafka, timeout_s=10) as reader,
        OnlineStore.from_url(stack.redis_url, namespace="online") as store,
    ):
        assert ingest_range(reader, rng, store, lake).row_count == n


def test_poison_messages_are_dead_lettered_not_blocking(fresh_stack, tmp_path: Path):
    lake = Lake(str(tmp_path / "lake"))
    producer = _producer(fresh_stack.kafka)
    t = datetime(2026, 11, 1, 12, tzinfo=UTC)
    row = pl.DataFrame(
        {"ip": ["1.2.3.4"], "event_ts": [t], CREATED_TS: [t]}
        | {
            f: [1] if d.is_integer() else [0.5]
            for f, d in ATO_IP.schema().items()
            if f in ATO_IP.feature_names
        },
        schema_overrides={"event_ts": pl.Datetime("ms", "UTC"), CREATED_TS: pl.Datetime("ms", "UTC")},
    )
    publish(producer, {"ato_ip": row})
    producer.produce(FEATURES_TOPIC, value=b"garbage", key=b"x")
    assert producer.flush(10) == 0
    with (
        KafkaRangeReader(fresh_stack.kafka, timeout_s=10) as reader,
        OnlineStore.from_url(fresh_stack.redis_url, namespace="online") as store,
    ):
        res = ingest_range(reader, OffsetRange(FEATURES_TOPIC, 0, 0, 2), store, lake)
        assert res.rows == {"ato_ip": 1} and res.rejected == 1 and res.reasons == {MALFORMED: 1}
        assert store.read([(group_layout(ATO_IP), "1.2.3.4")])[0] is not None
    dl = pl.read_parquet(lake.read_bytes(res.dead_letter_object))
    assert res.dead_letter_object.startswith(DEAD_LETTER_DATASET)
    assert dl["kafka_offset"].to_list() == [1] and dl["payload"].to_list() == [b"garbage"]


def test_publish_raises_when_delivery_fails():
    producer = Producer(
        {"bootstrap.servers": f"127.0.0.1:{free_port()}", "message.timeout.ms": 500, "socket.timeout.ms": 200}
    )
    t = datetime(2026, 11, 1, 12, tzinfo=UTC)
    row = pl.DataFrame(
        {"ip": ["1.2.3.4"], "event_ts": [t], CREATED_TS: [t]}
        | {
            f: [1] if d.is_integer() else [0.5]
            for f, d in ATO_IP.schema().items()
            if f in ATO_IP.feature_names
        },
        schema_overrides={"event_ts": pl.Datetime("ms", "UTC"), CREATED_TS: pl.Datetime("ms", "UTC")},
    )
    with pytest.raises(FeatureBufferError, match="0 of 1 messages confirmed"):
        publish(producer, {"ato_ip": row}, flush_timeout_s=5)
