"""A team's own events: a declared source with foreign column names and event types, its own label
source, feature groups over it (customer, terminal, customer × terminal; delayed terminal fraud
rates), computed by the batch engine and checked against the brute-force oracle, then through the
offline store and the point-in-time join into a training frame."""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
import pytest

from risk_assets.features.batch import compute_feature_group, compute_feature_groups, required_event_columns
from risk_assets.features.groups import FEATURE_GROUPS
from risk_assets.features.offline_store import days_of, read_offline, with_created_ts, write_days
from risk_assets.features.point_in_time import FeatureTable, point_in_time_join
from risk_assets.features.spec import (
    USER,
    Entity,
    FeatureGroup,
    Where,
    count,
    days,
    distinct_count,
    event_type,
    hours,
    label_count,
    label_rate,
    label_where,
    last_value,
    max_of,
    mean_of,
    min_of,
    ratio,
    sum_of,
    time_since_last,
)
from risk_assets.lake import Lake
from risk_assets.sources import EXCHANGE_EVENTS, EXCHANGE_LABELS, EventSource, LabelSource
from tests.features.test_batch_features import assert_matches, oracle, to_frame

_TS = pl.Datetime("ms", "UTC")

# -- the card team's declarations (docs/sources.md shows the same) ---------------------------------
CARD_TX = EventSource(
    name="card_transactions",
    columns={
        "tx_id": pl.String,
        "tx_ts": _TS,
        "ingested_at": _TS,
        "customer_id": pl.String,
        "terminal_id": pl.String,
        "amount": pl.Float64,
        "tx_type": pl.String,
        "entry_mode": pl.String,
    },
    timestamp="tx_ts",
    id_column="tx_id",
    ingestion_timestamp="ingested_at",
    event_type_column="tx_type",
    event_types=("purchase", "refund"),
    archive_dataset="card_transactions",
    topic="cards.transactions",
    snowflake_table="CARD_TRANSACTIONS",
    schema_version=1,
)
CARD_FRAUD = LabelSource(
    name="card_fraud",
    events=CARD_TX.name,
    columns={
        "label_id": pl.String,
        "transaction_id": pl.String,
        "known_ts": _TS,
        "fraud_kind": pl.String,
        "confirmed": pl.Boolean,
        "ingested_at": _TS,
    },
    key="transaction_id",
    timestamp="known_ts",
    type_column="fraud_kind",
    label_types=("chargeback", "customer_report"),
    ingestion_timestamp="ingested_at",
    id_column="label_id",
    archive_dataset="card_fraud",
    topic="cards.fraud",
)
CUSTOMER = Entity("customer", ("customer_id",))
TERMINAL = Entity("terminal", ("terminal_id",))
CUSTOMER_TERMINAL = Entity("customer_terminal", ("customer_id", "terminal_id"))
PURCHASE = event_type("purchase", source=CARD_TX)
REFUND = event_type("refund", source=CARD_TX)
CONFIRMED = Where("confirmed", "eq", True)


def customer_group() -> FeatureGroup:
    return FeatureGroup(
        name="card_customer",
        entity=CUSTOMER,
        description="spending profile of a customer",
        owner="card-risk",
        source_event_types=("purchase", "refund"),
        features=(
            count("n_tx_1d", days(1), PURCHASE),
            count("n_tx_7d", days(7), PURCHASE),
            count("n_tx_30d", days(30), PURCHASE),
            sum_of("amount_1d", "amount", days(1), PURCHASE),
            mean_of("mean_amount_7d", "amount", days(7), PURCHASE),
            mean_of("mean_amount_30d", "amount", days(30), PURCHASE),
            min_of("min_amount_7d", "amount", days(7)),
            max_of("max_amount_7d", "amount", days(7), Where("entry_mode", "in", ("chip", "online"))),
            distinct_count("terminals_7d", "terminal_id", days(7)),
            last_value("last_entry_mode_2d", "entry_mode", days(2)),
            time_since_last("since_tx_7d", days(7)),
            count("n_refund_7d", days(7), REFUND),
            ratio("refund_share_7d", "n_refund_7d", "n_tx_7d", empty="zero"),
            label_count("frauds_30d_d7", days(30), days(7), label_filters=(CONFIRMED,)),
        ),
        ttl=days(30),
        source=CARD_TX,
        label_source=CARD_FRAUD,
    )


def terminal_group() -> FeatureGroup:
    """The published card-fraud baseline's delayed terminal windows: transactions and frauds of the
    terminal between 7 + w and 7 days ago (labels known 7 days later)."""
    d = days(7)
    feats: list[Any] = []
    for w in (1, 7, 30):
        feats += [
            count(f"n_tx_{w}d_d7", days(w), offset=d, model_input=False),
            label_count(f"n_fraud_{w}d_d7", days(w), d, offset=d, model_input=False),
            ratio(f"risk_{w}d_d7", f"n_fraud_{w}d_d7", f"n_tx_{w}d_d7", empty="zero"),
        ]
    feats += [
        label_rate("matured_rate_30d", days(30), d, denominator="matured"),
        label_rate(
            "chargeback_rate_90d_d7", days(90), d, PURCHASE, offset=d,
            label_filters=(label_where("fraud_kind", "eq", "chargeback", source=CARD_FRAUD),),
        ),
    ]  # fmt: skip
    return FeatureGroup(
        name="card_terminal",
        entity=TERMINAL,
        description="delayed fraud rates of a terminal",
        owner="card-risk",
        source_event_types=("purchase", "refund"),
        features=tuple(feats),
        ttl=days(30),
        source=CARD_TX,
        label_source=CARD_FRAUD,
    )


def customer_terminal_group() -> FeatureGroup:
    return FeatureGroup(
        name="card_customer_terminal",
        entity=CUSTOMER_TERMINAL,
        description="a customer at a terminal",
        owner="card-risk",
        source_event_types=("purchase",),
        features=(count("n_tx_30d", days(30)), sum_of("amount_30d", "amount", days(30), offset=hours(1))),
        source=CARD_TX,
    )


# -- random card data: coarse times (ties), nulls in keys and values, labels days later ---------------
T0 = datetime(2026, 1, 1, tzinfo=UTC)
T0_MS = int(T0.timestamp() * 1000)
DAY_MS = 86_400_000


def random_card_transactions(seed: int, n: int = 700, span_days: int = 120) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        ts = T0_MS + rng.randrange(0, span_days * 24) * 3_600_000  # hourly ticks: many ties
        rows.append(
            {
                "tx_id": f"tx{rng.randrange(10**6):06d}_{i:04d}",
                "tx_ts": ts,
                "ingested_at": ts + rng.choice([0, 0, 1000, 90_000, 3_600_000]),
                "customer_id": rng.choice(["c0", "c1", "c2", "c3", "c4", "c5"]),
                "terminal_id": rng.choice(["t0", "t1", "t2", "t3", None]),
                "amount": rng.choice([None, 12.5, 12.5, round(rng.uniform(1, 900), 2)]),
                "tx_type": rng.choice(["purchase", "purchase", "purchase", "refund"]),
                "entry_mode": rng.choice(["chip", "online", "swipe", None]),
            }
        )
    return rows


def random_card_frauds(seed: int, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rng = random.Random(seed + 1)
    out = []
    for r in rows:
        if rng.random() < 0.25:
            for j in range(rng.choice([1, 1, 2])):  # sometimes a chargeback and a report
                # Known 0–14 days later, sometimes exactly 7 days (the delay's edge).
                known = r["tx_ts"] + rng.choice([rng.randrange(0, 14 * DAY_MS), 7 * DAY_MS])
                out.append(
                    {
                        "label_id": f"fr_{r['tx_id']}_{j}",
                        "transaction_id": r["tx_id"],
                        "known_ts": known,
                        "ingested_at": known,
                        "fraud_kind": rng.choice(["chargeback", "customer_report"]),
                        "confirmed": rng.random() < 0.8,
                    }
                )
    return out


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("build", [customer_group, terminal_group, customer_terminal_group])
def test_foreign_source_groups_match_the_oracle(seed: int, build) -> None:
    rows = random_card_transactions(seed)
    labels = random_card_frauds(seed, rows)
    group = build()
    start, end = T0 + days(40), T0 + days(120)
    got = compute_feature_group(
        group, to_frame(rows, CARD_TX.schema), start, end, to_frame(labels, CARD_FRAUD.schema)
    )
    expected = oracle(group, rows, T0_MS + 40 * DAY_MS, T0_MS + 120 * DAY_MS, labels)
    assert len(expected) > 50
    assert_matches(group, got, expected)
    if group.needs_labels:  # the delayed label features are not all zero: the case is exercised
        label_cols = [f.name for f in group.features if f.name.startswith(("n_fraud", "frauds", "matured"))]
        assert any(got[c].fill_null(0).sum() > 0 for c in label_cols)


def test_one_scan_computes_all_groups_of_a_source_and_reads_only_its_columns() -> None:
    rows = random_card_transactions(7, n=300)
    labels = random_card_frauds(7, rows)
    groups = [customer_group(), terminal_group(), customer_terminal_group()]
    events = to_frame(rows, CARD_TX.schema)
    cols = required_event_columns(groups)
    assert cols == ["tx_id", "tx_ts", "customer_id", "terminal_id", "amount", "tx_type", "entry_mode"]
    # Only the read columns are needed: the ingestion column is absent here.
    together = compute_feature_groups(
        groups, events.select(cols), T0 + days(40), T0 + days(120), to_frame(labels, CARD_FRAUD.schema)
    )
    for g in groups:
        alone = compute_feature_group(
            g, events, T0 + days(40), T0 + days(120), to_frame(labels, CARD_FRAUD.schema)
        )
        assert together[g.name].equals(alone)


def test_groups_of_two_sources_are_not_computed_in_one_scan() -> None:
    exchange = next(g for g in FEATURE_GROUPS if not g.needs_labels)
    with pytest.raises(ValueError, match="share one source"):
        compute_feature_groups([exchange, customer_group()], pl.DataFrame(), T0, T0 + days(1))


def test_declarations_are_checked_against_the_groups_source() -> None:
    base = customer_terminal_group()

    def build(**kw: Any) -> FeatureGroup:
        return FeatureGroup(**{**base.__dict__, **kw})

    cases = [
        (lambda: build(features=(count("n", days(1), Where("user_id", "eq", "u")),)), "not in source card_"),
        (lambda: build(features=(sum_of("s", "amount_usd", days(1)),)), "not a column of source card_"),
        (lambda: build(features=(sum_of("s", "entry_mode", days(1)),)), "numeric"),
        (lambda: build(features=(count("n", days(1), Where("amount", "gt", "ten")),)), "wrong type"),
        (lambda: build(entity=USER), "key 'user_id' is not a column of source card_transactions"),
        (lambda: build(entity=Entity("at", ("tx_ts",))), "not a column of source"),  # the time column
        (lambda: build(source_event_types=("login",)), "bad source_event_types"),
        (lambda: build(features=(count("n", days(1), REFUND),)), "outside source_event_types"),
        (lambda: event_type("login", source=CARD_TX), "unknown event types"),
        (lambda: build(features=(label_count("f", days(30), days(7)),)), "need a label_source"),
        (
            lambda: build(features=(label_count("f", days(30), days(7)),), label_source=EXCHANGE_LABELS),
            "labels exchange_events",
        ),
        (
            lambda: build(
                features=(
                    label_count(
                        "f", days(30), days(7), label_filters=(label_where("scenario", "eq", "ato"),)
                    ),
                ),
                label_source=CARD_FRAUD,
            ),
            "not in label source card_fraud",
        ),
        (
            lambda: build(
                features=(
                    label_count(
                        "f", days(30), days(7), label_filters=(Where("fraud_kind", "eq", "chargbeack"),)
                    ),
                ),
                label_source=CARD_FRAUD,
            ),
            "unknown label types",
        ),
        (lambda: EventSource("s", {"id": pl.String, "ts": pl.Datetime("us", "UTC")}, "ts", "id"), "Datetime"),
        (
            lambda: EventSource("s", {"id": pl.String, "ts": _TS}, "ts", "id", event_types=("a",)),
            "event_type_column",
        ),
        (lambda: EventSource("s", {"id": pl.String, "ts": _TS}, "time", "id"), "timestamp column 'time'"),
    ]
    for make, message in cases:
        with pytest.raises(ValueError, match=message):
            make()


def test_source_identity_is_in_the_version_and_the_exchange_source_is_left_out() -> None:
    g = customer_group()
    doc = g.to_dict()
    assert doc["source"] == {"name": "card_transactions", "schema_version": 1}
    assert doc["label_source"] == {"name": "card_fraud", "schema_version": 1}
    bumped = FeatureGroup(
        **{**g.__dict__, "source": EventSource(**{**CARD_TX.__dict__, "schema_version": 2})}
    )
    # A label source of the bumped schema would name the same events: only the source changed.
    assert bumped.version != g.version
    assert "label_source" not in customer_terminal_group().to_dict()  # no label aggregates
    for eg in FEATURE_GROUPS:  # the exchange groups name no source: their versions are unchanged
        assert eg.source == EXCHANGE_EVENTS and "source" not in eg.to_dict()
        assert eg.label_source == (EXCHANGE_LABELS if eg.needs_labels else None)
        assert "label_source" not in eg.to_dict()
    # A group without label aggregates moves to another source as is (no label source carried over).
    plain = next(e for e in FEATURE_GROUPS if not e.needs_labels)
    moved = dataclasses.replace(
        plain,
        source=CARD_TX,
        entity=CUSTOMER,
        source_event_types=("purchase",),
        features=(count("n", days(1)),),
    )
    assert moved.label_source is None and moved.to_dict()["source"]["name"] == "card_transactions"
    md = g.metadata()
    assert (md["source"], md["label_source"], md["keys"]) == (
        "card_transactions",
        "card_fraud",
        ["customer_id"],
    )


def test_source_without_event_types_feeds_every_event() -> None:
    plain = EventSource(
        name="plain_tx",
        columns={k: v for k, v in CARD_TX.columns if k != "tx_type"},
        timestamp="tx_ts",
        id_column="tx_id",
    )
    g = FeatureGroup("plain", CUSTOMER, "no types", "tests", (), (count("n_7d", days(7)),), source=plain)
    rows = [{k: v for k, v in r.items() if k != "tx_type"} for r in random_card_transactions(3, n=200)]
    got = compute_feature_group(g, to_frame(rows, plain.schema), T0 + days(10), T0 + days(120))
    assert_matches(g, got, oracle(g, rows, T0_MS + 10 * DAY_MS, T0_MS + 120 * DAY_MS))
    with pytest.raises(ValueError, match="has no event types"):
        FeatureGroup("plain", CUSTOMER, "d", "o", ("purchase",), (count("n", days(1)),), source=plain)


def test_offline_store_and_point_in_time_join_build_a_training_frame(tmp_path) -> None:
    """Batch → offline store (created_ts from the source's ingestion column) → point-in-time join
    onto a spine of purchases → a training frame with the fraud label; every joined value is the
    oracle's row of that entity with the latest as-of time ≤ the transaction's time that had
    already arrived (created ≤ t), within the TTL."""
    rows = random_card_transactions(11, n=500)
    labels = random_card_frauds(11, rows)
    events = to_frame(rows, CARD_TX.schema)
    fraud = to_frame(labels, CARD_FRAUD.schema)
    start, end = T0 + days(40), T0 + days(120)
    lake = Lake(str(tmp_path / "lake"))
    groups = [customer_group(), terminal_group()]
    computed = compute_feature_groups(groups, events, start, end, fraud)

    for g in groups:
        write_days(lake, g, with_created_ts(computed[g.name], g, events), days_of(start, end))

    spine = (
        events.filter(pl.col("tx_type") == "purchase", pl.col("tx_ts") >= start, pl.col("tx_ts") < end)
        .select("tx_id", "tx_ts", "customer_id", "terminal_id")
        .sort("tx_ts", "tx_id")
    )
    tables = [
        FeatureTable(
            g.name, read_offline(lake, g, start, end).select(*g.entity.keys, "event_ts", "created_ts",
                                                            *g.model_feature_names),
            list(g.entity.keys), timestamp="event_ts", created_timestamp="created_ts", ttl=g.ttl,
        )
        for g in groups
    ]  # fmt: skip
    frame = point_in_time_join(spine, tables, spine_timestamp="tx_ts")
    is_fraud = fraud.filter("confirmed").select(pl.col("transaction_id").alias("tx_id")).unique()
    training = frame.join(is_fraud.with_columns(pl.lit(True).alias("is_fraud")), on="tx_id", how="left")
    training = training.with_columns(pl.col("is_fraud").fill_null(False))

    assert training.height == spine.height > 100
    assert training["is_fraud"].sum() > 0
    # Helpers (model_input=False) stay in the store but not in the training frame.
    assert "card_terminal__n_tx_7d_d7" not in training.columns
    assert "card_terminal__risk_7d_d7" in training.columns

    arrivals: dict[tuple, int] = {}
    for r in rows:
        for g in groups:
            key = (g.name, *(r[k] for k in g.entity.keys), r["tx_ts"])
            arrivals[key] = max(arrivals.get(key, r["ingested_at"]), r["ingested_at"])
    checked = 0
    for g in groups:
        expected = oracle(g, rows, T0_MS + 40 * DAY_MS, T0_MS + 120 * DAY_MS, labels)
        ttl = g.ttl // timedelta(milliseconds=1)
        by_key: dict[tuple, list[dict[str, Any]]] = {}
        for e in expected:
            by_key.setdefault(tuple(e[k] for k in g.entity.keys), []).append(e)
        for s in training.with_columns(pl.col("tx_ts").dt.epoch("ms")).to_dicts():
            key = tuple(s[k] for k in g.entity.keys)
            t = s["tx_ts"]
            visible = [
                e for e in by_key.get(key, [])
                if t - ttl <= e["event_ts"] <= t and arrivals[(g.name, *key, e["event_ts"])] <= t
            ]  # fmt: skip
            best = max(visible, key=lambda e: e["event_ts"]) if visible else None
            for name in g.model_feature_names:
                want = None if best is None else best[name]
                got = s[f"{g.name}__{name}"]
                if isinstance(want, float) and got is not None:
                    assert got == pytest.approx(want, rel=1e-9, abs=1e-9), (g.name, name, s)
                else:
                    assert got == want, (g.name, name, s, want)
            checked += best is not None
    assert checked > 100


def test_catalog_names_the_sources_event_types_and_the_stream_path_refuses_other_sources() -> None:
    from risk_assets.features.catalog import describe
    from risk_assets.features.stream_state import EntityLayout

    g = customer_group()
    text = describe(g.feature("n_refund_7d"), g.source_event_types, g.source.event_type_column)
    assert text.startswith("Number of refund events") and "tx_type" not in text, text
    with pytest.raises(ValueError, match="exchange events only"):
        EntityLayout.build(CUSTOMER, [g], hours(1))


def test_the_catalog_lists_features_of_any_source_with_their_dtypes() -> None:
    """Before: the catalog took ``min``/``last`` dtypes from the exchange layout, so a card group
    with ``min_of("amount")``/``last_value("entry_mode")`` failed ("not a column of source
    exchange_events")."""
    from risk_assets.features.catalog import catalog_frame

    g = customer_group()
    frame = catalog_frame([g, *FEATURE_GROUPS[:1]])
    mine = frame.filter(pl.col("group") == g.name)
    assert mine["source"].unique().to_list() == ["card_transactions"]
    dtypes = dict(zip(mine["feature"], mine["dtype"], strict=True))
    assert dtypes["card_customer__min_amount_7d"] == "Float64"
    assert dtypes["card_customer__last_entry_mode_2d"] == "String"
    assert frame.filter(pl.col("group") != g.name)["source"].unique().to_list() == ["exchange_events"]
