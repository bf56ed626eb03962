"""Raw archive: lateness policy, dead letters, idempotency and exact round trips through Kafka."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import dagster as dg
import msgspec
import numpy as np
import polars as pl
import pytest
from confluent_kafka import Producer

from risk_assets.events.schema import Login, Withdrawal
from risk_assets.ingest.archive import EVENTS, build_archive, dead_letter_part_path
from risk_assets.ingest.archive_format import archive_part_path
from risk_assets.ingest.assets import raw_events_archive
from risk_assets.ingest.kafka_reader import KafkaRangeReader, MessageBatch
from risk_assets.ingest.partitioning import ingest_window
from risk_assets.lake import Lake
from risk_assets.resources import KafkaResource, LakeResource

H0 = datetime(2026, 3, 1, 10, tzinfo=UTC)
MIN = 60_000


def ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


def login(i: int, event_ts: int) -> bytes:
    return msgspec.json.encode(
        Login(
            event_id=f"ev-{i}",
            event_ts=event_ts,
            user_id=f"u{i % 7}",
            device_id="d1",
            ip="10.0.0.1",
            ip_country="DE",
            ip_asn=3320,
            success=True,
            auth_method="password",
        )
    )


def batch_of(items: list[tuple[bytes, int]]) -> MessageBatch:
    n = len(items)
    return MessageBatch(
        np.zeros(n, np.int32),
        np.arange(n, dtype=np.int64),
        np.array([t for _, t in items], np.int64),
        [v for v, _ in items],
    )


def test_lateness_policy_duplicates_and_reasons():
    h1 = H0 + timedelta(hours=1)
    items = [
        (login(0, ms(H0) + 5 * MIN), ms(H0) + 5 * MIN + 300),  # on time → H0
        (login(1, ms(H0) + 50 * MIN), ms(H0) + 100 * MIN),  # late within grace → H0
        (login(2, ms(H0) + 10 * MIN), ms(H0) + 130 * MIN),  # after H0 end + 1 h grace → H1
        (login(3, ms(h1) + 1 * MIN), ms(h1) + 2 * MIN),  # on time → H1
        (login(0, ms(H0) + 5 * MIN), ms(H0) + 20 * MIN),  # duplicate of ev-0 → dead letter
        (login(4, ms(H0) + 60 * MIN), ms(H0) + 10 * MIN),  # 50 min in the future → dead letter
        (b'{"event_type": "login", "oops"', ms(H0) + 1 * MIN),  # malformed → dead letter in H0
        (b'{"event_type": "teleport", "event_id": "x"}', ms(h1) + 3 * MIN),  # unknown type → H1
    ]
    result = build_archive(batch_of(items), EVENTS, [H0, h1])
    assert result.records[H0]["event_id"].to_list() == ["ev-0", "ev-1"]
    assert result.records[h1]["event_id"].to_list() == ["ev-2", "ev-3"]
    # The very late event keeps its true event time.
    assert result.records[h1]["event_ts"][0] == H0 + timedelta(minutes=10)
    assert dict(result.reasons) == {
        "duplicate": 1,
        "future_timestamp": 1,
        "malformed_json": 1,
        "unknown_event_type": 1,
    }
    # Dead letters are ordered by Kafka coordinates (offsets 4, 5, 6).
    assert result.dead_letters[H0]["reason"].to_list() == ["duplicate", "future_timestamp", "malformed_json"]
    assert result.dead_letters[h1]["reason"].to_list() == ["unknown_event_type"]
    assert result.dead_letters[H0]["payload"][2] == b'{"event_type": "login", "oops"'
    assert result.record_count + result.dead_letter_count == len(items)
    # Asking for one hour only returns exactly that hour's share.
    only_h1 = build_archive(batch_of(items), EVENTS, [h1])
    assert list(only_h1.records) == [h1] and only_h1.record_count == 2 and only_h1.dead_letter_count == 1


def test_field_level_rejections_are_classified():
    w = dict(
        event_type="withdrawal",
        event_id="w",
        event_ts=ms(H0),
        user_id="u",
        device_id="d",
        ip="1.1.1.1",
        ip_country="FR",
        ip_asn=5410,
        amount=0.5,
        currency="BTC",
        amount_usd=40_000.0,
        wallet_address="bc1q",
        chain="bitcoin",
    )
    cases = {
        "missing_field": {k: v for k, v in w.items() if k != "wallet_address"},
        "unknown_field": {**w, "memo": "hi"},
        "wrong_type": {**w, "amount": "0.5"},
        "invalid_value": {**w, "amount": -3.0},
        "unsupported_schema_version": {**w, "schema_version": 2},
    }
    items = [(msgspec.json.encode(c), ms(H0) + i) for i, c in enumerate(cases.values())]
    items.append(
        (msgspec.json.encode(Withdrawal(**{k: v for k, v in w.items() if k != "event_type"})), ms(H0))
    )
    result = build_archive(batch_of(items), EVENTS, [H0])
    assert result.dead_letters[H0]["reason"].to_list() == list(cases)
    assert result.records[H0]["event_id"].to_list() == ["w"]


def produce(bootstrap: str, items: list[tuple[bytes, int]], topic: str = "risk.events") -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for value, ts in items:
        producer.produce(topic, value=value, timestamp=ts)
    assert producer.flush(30) == 0


def traffic(hours: int, per_hour: int, seed: int) -> list[tuple[bytes, int]]:
    """Events over ``hours`` hours from H0, arriving late and out of order, plus some garbage."""
    rng = np.random.default_rng(seed)
    n = hours * per_hour
    event_ts = ms(H0) + np.sort(rng.integers(0, hours * 3600_000, n))
    delay = np.where(rng.random(n) < 0.05, rng.integers(0, 3 * 3600_000, n), rng.integers(0, 5_000, n))
    items = [(login(i, int(t)), int(t + d)) for i, (t, d) in enumerate(zip(event_ts, delay, strict=True))]
    items += [(b"not json at all", int(t)) for t in event_ts[:: per_hour // 3]]
    items.sort(key=lambda x: x[1])
    return items


def resources(bootstrap: str, lake_url: str, s3_endpoint: str = "") -> dict:
    return {
        "lake": LakeResource(url=lake_url, s3_endpoint_url=s3_endpoint),
        "kafka": KafkaResource(bootstrap_servers=bootstrap, timeout_s=15),
    }


def materialize_hours(res: dict, first: datetime, last: datetime) -> dg.ExecuteInProcessResult:
    fmt = "%Y-%m-%d-%H:%M"
    return dg.materialize(
        [raw_events_archive],
        resources=res,
        tags={
            "dagster/asset_partition_range_start": first.strftime(fmt),
            "dagster/asset_partition_range_end": last.strftime(fmt),
        },
    )


def lake_events(lake: Lake, hours: list[datetime]) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(lake.read_bytes(archive_part_path("raw_events", h))) for h in hours])


def test_round_trip_exact_and_idempotent(fresh_stack, tmp_path):
    items = traffic(hours=3, per_hour=2000, seed=1)
    produce(fresh_stack.kafka, items)
    # Traffic continues well past the last hour's grace, so all three hours are final.
    produce(fresh_stack.kafka, [(login(10**6, ms(H0) + 300 * MIN), ms(H0) + 300 * MIN)])
    hours = [H0 + timedelta(hours=i) for i in range(3)]
    lake = Lake(str(tmp_path / "lake"))
    res = resources(fresh_stack.kafka, lake.url)

    first = materialize_hours(res, hours[0], hours[-1])
    assert first.success
    events = lake_events(lake, hours)
    produced_ids = {f"ev-{i}" for i in range(3 * 2000)}
    # Events more than the grace late land in the hour open when they arrived (≤ 3 h delay here).
    tail = build_archive_tail(fresh_stack.kafka, [hours[-1] + timedelta(hours=i) for i in (1, 2, 3)])
    assert not set(events["event_id"]) & tail
    assert set(events["event_id"]) | tail == produced_ids
    assert events["event_id"].n_unique() == events.height
    mats = first.asset_materializations_for_node("archive_raw_events")
    meta = {m.asset_key.path[-1]: m.metadata for m in mats}
    garbage = sum(v == b"not json at all" for v, _ in items)
    assert garbage > 0
    assert meta["raw_event_dead_letters"]["reason/malformed_json"].value == garbage
    assert meta["raw_event_dead_letters"]["dagster/row_count"].value == garbage
    assert meta["raw_events"]["open_hours"].value == 0
    checks = first.get_asset_check_evaluations()
    assert [c.passed for c in checks] == [True]

    digest = {
        h: hashlib.sha256(lake.read_bytes(archive_part_path("raw_events", h))).hexdigest() for h in hours
    }
    second = materialize_hours(res, hours[1], hours[1])  # one hour again, alone
    assert second.success
    again = hashlib.sha256(lake.read_bytes(archive_part_path("raw_events", hours[1]))).hexdigest()
    assert again == digest[hours[1]]
    assert lake_events(lake, hours).equals(events)
    assert lake.exists(dead_letter_part_path(EVENTS, hours[0]))


def build_archive_tail(bootstrap: str, hours: list[datetime]) -> set[str]:
    """Event ids that the policy puts into ``hours`` (computed without the asset)."""
    start, end = ingest_window(hours[0], hours[-1])
    with KafkaRangeReader(bootstrap) as reader:
        batch, _ = reader.read_time_window("risk.events", ms(start), ms(end))
    result = build_archive(batch, EVENTS, hours)
    ids = set(pl.concat(list(result.records.values()))["event_id"])
    return ids - {f"ev-{10**6}"}


def test_invalid_share_check_fails_above_threshold(fresh_stack, tmp_path):
    garbage = [(b"{{{", ms(H0) + i * 1000) for i in range(30)]
    good = [(login(i, ms(H0) + i * 1000), ms(H0) + i * 1000 + 10) for i in range(70)]
    produce(fresh_stack.kafka, sorted(good + garbage, key=lambda x: x[1]))
    result = dg.materialize(
        [raw_events_archive],
        resources=resources(fresh_stack.kafka, str(tmp_path / "lake")),
        partition_key=H0.strftime("%Y-%m-%d-%H:%M"),
        raise_on_error=False,
    )
    (check,) = result.get_asset_check_evaluations()
    assert not check.passed
    assert check.metadata["invalid_share"].value == pytest.approx(0.3)


def test_archive_to_s3_lake(fresh_stack, session_stack, monkeypatch):
    import boto3

    # The lake follows the standard AWS credential chain; the local moto stack hands out test keys.
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(key, session_stack.env[key])
    items = [(login(i, ms(H0) + i * 1000), ms(H0) + i * 1000 + 50) for i in range(500)]
    produce(fresh_stack.kafka, items)
    s3 = boto3.client(
        "s3",
        endpoint_url=session_stack.s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    s3.create_bucket(Bucket="archive-test")
    res = resources(fresh_stack.kafka, "s3://archive-test/lake", session_stack.s3_endpoint)
    result = dg.materialize([raw_events_archive], resources=res, partition_key=H0.strftime("%Y-%m-%d-%H:%M"))
    assert result.success
    key = f"lake/{archive_part_path('raw_events', H0)}"
    body = s3.get_object(Bucket="archive-test", Key=key)["Body"].read()
    assert key == "lake/raw_events/dt=2026-03-01/hour=10/part-00000.parquet"
    frame = pl.read_parquet(body)
    assert frame.height == 500 and frame["event_id"].n_unique() == 500
    # The lake reads it back lazily through Polars' object store as well.
    lake = res["lake"].lake()
    assert lake.scan([archive_part_path("raw_events", H0)]).select(pl.len()).collect().item() == 500
    # Listing and version tokens (what the online sync's watermark uses) work on S3 too.
    assert list(lake.list("raw_events")) == [archive_part_path("raw_events", H0)]
    token = lake.versions("raw_events")[archive_part_path("raw_events", H0)]
    lake.write_parquet(frame.head(10), archive_part_path("raw_events", H0))
    assert lake.versions("raw_events")[archive_part_path("raw_events", H0)] != token


def test_simulated_traffic_round_trip_with_bad_input(fresh_stack, tmp_path):
    from risk_assets.simulator.config import SimConfig
    from risk_assets.simulator.generator import generate
    from risk_assets.simulator.writers import make_producer, replay

    sim = SimConfig(seed=11, start=H0, hours=3, events_per_day=120_000, users=3_000)
    stats = replay(sim, make_producer(fresh_stack.kafka), bad_rate=0.01)
    assert stats.delivery_errors == 0 and stats.bad > 0
    expected = generate(sim).events.filter(pl.col("ingest_ts") < sim.end)
    assert stats.events - stats.bad == expected.height

    hours = [H0 + timedelta(hours=i) for i in range(3)]
    lake = Lake(str(tmp_path / "lake"))
    assert materialize_hours(resources(fresh_stack.kafka, lake.url), hours[0], hours[-1]).success

    archived = lake_events(lake, hours)
    # Exactly the produced valid events: none lost, none twice, same values.
    assert archived.height == expected.height
    assert set(archived["event_id"]) == set(expected["event_id"])
    cols = ["event_id", "event_ts", "user_id", "amount_usd", "ingest_ts"]
    assert archived.select(cols).sort("event_id").equals(expected.select(cols).sort("event_id"))

    dead = pl.concat([pl.read_parquet(lake.read_bytes(dead_letter_part_path(EVENTS, h))) for h in hours])
    got = dict(dead.group_by("reason").len().iter_rows())
    want = dict(stats.manifest.group_by("kind").len().iter_rows())
    want["invalid_value"] = want.pop("impossible_value", 0)
    assert got == {k: v for k, v in want.items() if v}
