"""Archive and dead letters of a declared source: a card team's transactions and fraud labels go
through the same gate as the exchange's events (same reason codes, lateness policy, duplicates by
id), land in their own archive datasets, and the archive feeds the batch engine unchanged."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
import pytest

from risk_assets.events.declared import event_payload_type
from risk_assets.events.validation import validate_payloads
from risk_assets.features.batch import compute_feature_group
from risk_assets.ingest.archive import (
    EVENTS,
    LABELS,
    archive_spec,
    build_archive,
    read_archive,
    write_archive,
)
from risk_assets.ingest.kafka_reader import MessageBatch
from risk_assets.ingest.raw_reader import read_source
from risk_assets.lake import Lake
from risk_assets.sources import EXCHANGE_EVENTS, EXCHANGE_LABELS, EventSource
from tests.conftest import fakesnow_server
from tests.features.test_batch_features import assert_matches, oracle
from tests.features.test_sources import CARD_FRAUD, CARD_TX, customer_group

H0 = datetime(2026, 3, 1, 10, tzinfo=UTC)
H1 = H0 + timedelta(hours=1)
MIN = 60_000


def ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def tx(i: int, ts: int, **over: Any) -> dict[str, Any]:
    doc = {
        "tx_id": f"tx-{i}",
        "tx_ts": ts,
        "customer_id": f"c{i % 3}",
        "terminal_id": f"t{i % 2}",
        "amount": 10.0 + i,
        "tx_type": "purchase",
        "entry_mode": "chip",
    }
    doc.update(over)
    return {k: v for k, v in doc.items() if v is not ...}


def batch_of(items: list[tuple[bytes, int]]) -> MessageBatch:
    n = len(items)
    return MessageBatch(
        np.zeros(n, np.int32),
        np.arange(n, dtype=np.int64),
        np.array([t for _, t in items], np.int64),
        [v for v, _ in items],
    )


def enc(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def test_exchange_sources_keep_their_archive_specs() -> None:
    assert archive_spec(EXCHANGE_EVENTS) is EVENTS
    assert archive_spec(EXCHANGE_LABELS) is LABELS


def test_card_transactions_archive_with_reasons_and_feed_the_batch_engine(tmp_path) -> None:
    spec = archive_spec(CARD_TX)
    assert (spec.dataset, spec.dead_letter_dataset, spec.topic) == (
        "card_transactions", "card_transactions_dead_letters", "cards.transactions",
    )  # fmt: skip
    t0 = ms(H0)
    good = [
        (tx(0, t0 + 5 * MIN), t0 + 5 * MIN + 300),  # on time → H0
        (
            tx(1, t0 + 50 * MIN, tx_type="refund", amount=None, entry_mode=...),
            t0 + 100 * MIN,
        ),  # late, grace → H0
        (tx(2, t0 + 10 * MIN), t0 + 130 * MIN),  # after H0's grace → H1
        (tx(3, t0 + 61 * MIN, terminal_id=None), t0 + 62 * MIN),  # H1, null optional field
        (tx(4, t0 + 62 * MIN, amount=7), t0 + 63 * MIN),  # an integer amount is a float
    ]
    bad = [
        (enc(tx(0, t0 + 5 * MIN)), t0 + 20 * MIN, "duplicate"),
        (enc(tx(5, t0 + 60 * MIN)), t0 + 10 * MIN, "future_timestamp"),
        (b'{"tx_id": "x", "oops"', t0 + 1 * MIN, "malformed_json"),
        (enc(tx(6, t0 + 3 * MIN, tx_type="teleport")), t0 + 3 * MIN, "unknown_event_type"),
        (enc(tx(7, t0 + 3 * MIN, tx_ts=...)), t0 + 3 * MIN, "missing_field"),
        (enc(tx(8, t0 + 3 * MIN, amount="ten")), t0 + 3 * MIN, "wrong_type"),
        (enc({**tx(9, t0 + 3 * MIN), "user_id": "u1"}), t0 + 3 * MIN, "unknown_field"),
        (enc(tx(10, t0 + 3 * MIN, tx_id="")), t0 + 3 * MIN, "invalid_value"),
        # The ingestion-time column is added on arrival, never sent.
        (enc({**tx(11, t0 + 3 * MIN), "ingested_at": t0}), t0 + 3 * MIN, "unknown_field"),
    ]
    items = [(enc(d), at) for d, at in good] + [(v, at) for v, at, _ in bad]
    result = build_archive(batch_of(items), spec, [H0, H1])

    assert result.records[H0]["tx_id"].to_list() == ["tx-0", "tx-1"]
    assert result.records[H1]["tx_id"].to_list() == ["tx-2", "tx-3", "tx-4"]
    assert result.records[H0].schema == pl.Schema(CARD_TX.schema)
    assert result.records[H0]["ingested_at"].dt.epoch("ms").to_list() == [t0 + 5 * MIN + 300, t0 + 100 * MIN]
    assert result.records[H1]["terminal_id"].to_list() == ["t0", None, "t0"]
    assert result.records[H0]["entry_mode"].to_list() == ["chip", None]
    reasons = sorted(r for _, _, r in bad)
    assert sorted(result.reasons.elements()) == reasons
    dead = pl.concat(result.dead_letters.values())
    assert dead["topic"].unique().to_list() == ["cards.transactions"]
    assert sorted(dead["reason"].to_list()) == reasons

    lake = Lake(str(tmp_path / "lake"))
    write_archive(lake, spec, result)
    assert lake.exists(f"card_transactions_dead_letters/dt={H0:%Y-%m-%d}/hour={H0:%H}/part-00000.parquet")
    events = read_archive(lake, spec.dataset, [H0, H1], spec.columns).collect()
    assert events.height == len(good)
    # Re-running the same hours gives the same bytes.
    again = Lake(str(tmp_path / "again"))
    write_archive(again, spec, build_archive(batch_of(items), spec, [H0, H1]))
    assert read_archive(again, spec.dataset, [H0, H1], spec.columns).collect().equals(events)

    # The source's reader: the time range, late hours read, resends in later hours removed.
    later = [H1 + timedelta(hours=k) for k in (1, 2, 3)]
    resent = [(enc(tx(0, t0 + 5 * MIN)), ms(later[-1]) + 5 * MIN)]  # tx-0 again, hours late
    write_archive(lake, spec, build_archive(batch_of(resent), spec, later))
    assert read_archive(lake, spec.dataset, later, spec.columns).collect()["tx_id"].to_list() == ["tx-0"]
    read = read_source(lake, CARD_TX, H0, H1 + timedelta(hours=1))
    assert read.sort("tx_id").equals(events.sort("tx_id"))
    first_half = read_source(lake, CARD_TX, H0, H0 + timedelta(minutes=30), ["tx_id"])
    assert sorted(first_half["tx_id"].to_list()) == ["tx-0", "tx-2"]

    group = customer_group()
    rows = [{c: d.get(c) for c in CARD_TX.column_names if c != "ingested_at"} for d, _ in good]
    got = compute_feature_group(
        group, read, H0, H1 + timedelta(hours=1), pl.DataFrame(schema=CARD_FRAUD.schema)
    )
    assert_matches(group, got, oracle(group, rows, ms(H0), ms(H1) + 60 * MIN, []))


def test_card_fraud_labels_archive_by_label_id() -> None:
    spec = archive_spec(CARD_FRAUD)
    t0 = ms(H0)
    label = {"label_id": "fr-1", "transaction_id": "tx-0", "known_ts": t0, "fraud_kind": "chargeback"}
    items = [
        (enc(label), t0 + 1000),
        (enc(label), t0 + 2000),  # duplicate label_id
        (enc({**label, "label_id": "fr-2", "fraud_kind": "rumour"}), t0 + 3000),
        (enc({"label_id": "fr-3", "known_ts": t0}), t0 + 4000),  # no transaction_id
    ]
    result = build_archive(batch_of(items), spec, [H0])
    assert result.records[H0]["label_id"].to_list() == ["fr-1"]
    assert result.records[H0]["confirmed"].to_list() == [None]
    assert sorted(result.reasons.elements()) == ["duplicate", "missing_field", "unknown_event_type"]


def test_declared_payloads_check_integer_widths_and_schema_version() -> None:
    src = EventSource(
        name="small",
        columns={"id": pl.String, "ts": pl.Datetime("ms", "UTC"), "n": pl.Int8, "schema_version": pl.Int16},
        timestamp="ts",
        id_column="id",
        schema_version=3,
    )
    payload = event_payload_type(src)
    out = validate_payloads(
        [
            b'{"id": "a", "ts": 1, "n": 127}',
            b'{"id": "a", "ts": 1, "n": 128}',
            b'{"id": "a", "ts": 1, "schema_version": 3}',
            b'{"id": "a", "ts": 1, "schema_version": 2}',
            b'{"id": "a", "ts": -1}',
        ],
        payload,
        None,
    )
    assert out.valid == [0, 2]
    assert [r[1] for r in out.rejected] == ["invalid_value", "unsupported_schema_version", "invalid_value"]
    with pytest.raises(ValueError, match="no archive dataset"):
        archive_spec(src)
    with pytest.raises(ValueError, match="is taken"):
        archive_spec(
            EventSource(**{**CARD_TX.__dict__, "archive_dataset": "raw_events"})  # the exchange's dataset
        )


def test_card_transactions_mirror_into_snowflake_in_their_own_layout() -> None:
    """The Snowflake mirror per source (fakesnow server): the card layout's table, time-range
    replace, read back with the source's dtypes, resends removed by tx_id (first arrival wins)."""
    from tests.features.test_batch_features import to_frame
    from tests.features.test_sources import random_card_transactions

    rows = random_card_transactions(5, n=120, span_days=2)
    frame = to_frame(rows, CARD_TX.schema)
    resend = frame.head(3).with_columns(pl.col("ingested_at") + timedelta(hours=3))
    start, end = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 3, tzinfo=UTC)
    back, some = _mirror_round_trip(pl.concat([frame, resend]), frame.height + 3, start, end)
    assert back.schema == pl.Schema(CARD_TX.schema)
    assert back.sort("tx_id").equals(frame.sort("tx_id"))
    assert some.columns == ["tx_id", "amount"] and some.height == frame.height


def _mirror_round_trip(
    rows: pl.DataFrame, expected: int, start: datetime, end: datetime
) -> tuple[pl.DataFrame, pl.DataFrame]:
    from risk_assets.ingest import snowflake_mirror
    from risk_assets.resources import RawEventSource

    with fakesnow_server() as conn_kwargs:
        extra = {k: v for k, v in conn_kwargs.items() if k in ("host", "port", "protocol")}
        res = RawEventSource(
            backend="snowflake",
            snowflake_account="fake",
            snowflake_user="risk",
            snowflake_password="not-a-secret",
            snowflake_connection_args={**extra, "session_parameters": {"TIMEZONE": "UTC"}},
        )
        with res.snowflake().get_connection() as conn:
            cur = conn.cursor()
            cur.execute("CREATE DATABASE IF NOT EXISTS RISK")
            cur.execute("CREATE SCHEMA IF NOT EXISTS RISK.RAW")
            cur.execute("USE SCHEMA RISK.RAW")
            table = CARD_TX.snowflake_table
            assert table is not None
            assert snowflake_mirror.write_hours(cur, table, rows, start, end, CARD_TX) == expected
            # Re-running the range replaces it (no doubling).
            snowflake_mirror.write_hours(cur, table, rows, start, end, CARD_TX)
            back = snowflake_mirror.read_events(cur, table, start, end, source=CARD_TX)
            some = snowflake_mirror.read_events(cur, table, start, end, ["tx_id", "amount"], source=CARD_TX)
            with pytest.raises(ValueError, match="unknown columns of source card_transactions"):
                snowflake_mirror.read_events(cur, table, start, end, ["event_id"], source=CARD_TX)
    return back, some
