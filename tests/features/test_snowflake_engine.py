"""Snowflake as the heavy engine: the compiled SQL equals the Polars engine on the same data.

Simulated events and labels are mirrored into a fakesnow server (real snowflake-connector-python,
DuckDB underneath); every group is computed once by ``batch.compute_feature_group`` over the same
frames and once in the warehouse by ``snowflake_engine``, and the frames must be equal (integers,
strings, booleans and timestamps exactly; floats to 1e-9 relative).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from risk_assets.features import snowflake_engine, snowflake_sql
from risk_assets.features.batch import compute_feature_group
from risk_assets.features.groups import FEATURE_GROUPS
from risk_assets.features.offline_store import with_created_ts
from risk_assets.features.spec import (
    DEVICE,
    USER,
    USER_WALLET,
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
    minutes,
    ratio,
    sum_of,
    time_since_last,
)
from risk_assets.ingest import snowflake_mirror
from risk_assets.simulator.config import SimConfig
from risk_assets.simulator.generator import generate
from risk_assets.sources import EXCHANGE_LABELS
from tests.conftest import fakesnow_server

START = datetime(2026, 5, 1, tzinfo=UTC)
SIM = SimConfig(seed=11, start=START, hours=30, events_per_day=3_000, users=300, ato_cases_per_m=3000.0)
AS_OF = (START + timedelta(hours=20), START + timedelta(hours=30))
EVENTS_TABLE, LABELS_TABLE = "RAW_EVENTS", "RAW_LABELS"
AMT = "amount_usd"
ALL = ("login", "security_change", "deposit", "withdrawal", "card_payment", "p2p_trade")


def every_kind(entity: Entity, name: str) -> FeatureGroup:
    """Every aggregation kind the language has, with filters of every op, offsets, label
    aggregates with both denominators and ratios with both empty values."""
    money = event_type("deposit", "withdrawal", "card_payment", "p2p_trade")
    cb = (label_where("label_type", "in", ("ato_report", "chargeback")),)
    return FeatureGroup(
        name=name,
        entity=entity,
        description="every aggregation kind",
        owner="tests",
        source_event_types=ALL,
        features=(
            count("n_10m", minutes(10)),
            count("n_6h", hours(6)),
            count("logins_ok_1h", hours(1), event_type("login"), Where("success", "eq", True)),
            count("not_cvv_1h", hours(1), Where("decline_reason", "ne", "invalid_cvv")),
            count("no_country_2h", hours(2), Where("ip_country", "is_null")),
            count("big_6h", hours(6), Where(AMT, "gt", 100.0)),
            count("small_6h", hours(6), Where(AMT, "le", 10.0)),
            count("n_1h_o20m", hours(1), offset=minutes(20)),
            sum_of("usd_6h", AMT, hours(6), money),
            sum_of("usd_asn_2h", AMT, hours(2), Where("ip_asn", "ge", 200)),
            sum_of("usd_1h_o30m", AMT, hours(1), money, offset=minutes(30)),
            mean_of("mean_usd_12h", AMT, hours(12)),
            mean_of("mean_usd_2h_o1h", AMT, hours(2), offset=hours(1)),
            min_of("min_usd_3h", AMT, hours(3)),
            max_of("max_usd_12h", AMT, hours(12), Where("ip_country", "in", ("DE", "US"))),
            min_of("min_asn_6h", "ip_asn", hours(6), Where("ip_asn", "lt", 60000)),
            max_of("max_usd_1h_o2h", AMT, hours(1), offset=hours(2)),
            distinct_count("devices_12h", "device_id", hours(12)),
            distinct_count("countries_12h", "ip_country", hours(12)),
            distinct_count("cards_6h", "card_id", hours(6), Where("status", "eq", "declined")),
            distinct_count("asn_12h", "ip_asn", hours(12), Where("ip_country", "not_in", ("FR",))),
            distinct_count("ips_3h_o1h", "ip", hours(3), offset=hours(1)),
            last_value("last_country_6h", "ip_country", hours(6)),
            last_value("last_usd_6h", AMT, hours(6)),
            last_value("last_success_12h", "success", hours(12)),
            last_value("last_asn_2h_o1h", "ip_asn", hours(2), offset=hours(1)),
            time_since_last("since_any_6h", hours(6)),
            time_since_last("since_sec_12h", hours(12), event_type("security_change")),
            time_since_last("since_wallet_6h", hours(6), Where("wallet_address", "not_null")),
            time_since_last("since_1h_o10m", hours(1), offset=minutes(10)),
            label_count("fraud_n_20h", hours(20), timedelta(0)),
            label_count("fraud_n_20h_d2h", hours(20), hours(2)),
            label_count("cb_n_12h_o1h", hours(12), minutes(30), offset=hours(1), label_filters=cb),
            label_rate("fraud_rate_20h", hours(20), hours(1)),
            label_rate("fraud_rate_20h_m", hours(20), hours(1), denominator="matured"),
            label_rate("fraud_rate_6h_o1h_m", hours(6), minutes(30), offset=hours(1), denominator="matured"),
            ratio("big_share_6h", "big_6h", "n_6h"),
            ratio("usd_per_mean", "usd_6h", "mean_usd_12h"),
            ratio("ok_per_small", "logins_ok_1h", "small_6h", empty="zero"),
        ),
        ttl=days(1),
    )  # fmt: skip


KINDS = [every_kind(USER, "every_kind_user"), every_kind(DEVICE, "every_kind_device"),
         every_kind(USER_WALLET, "every_kind_user_wallet")]  # fmt: skip


@pytest.fixture(scope="module")
def warehouse():
    """A fakesnow server holding the simulated events and labels in the mirror tables; yields
    (cursor, events frame, labels frame)."""
    import snowflake.connector

    data = generate(SIM)
    # Labels are days late in the simulator; bring them within the run so label features count.
    labels = (
        data.labels.join(
            data.events.select("event_id", pl.col("event_ts").alias("_ets")), on="event_id", how="inner"
        )
        .with_columns(
            (pl.col("_ets") + pl.duration(minutes=pl.col("label_ts").dt.minute() * 7)).alias("label_ts")
        )
        .drop("_ets")
    )
    with fakesnow_server() as kwargs:
        params = {**kwargs.get("session_parameters", {}), "TIMEZONE": "UTC"}
        conn = snowflake.connector.connect(**{**kwargs, "session_parameters": params})
        cur = conn.cursor()
        cur.execute("CREATE DATABASE IF NOT EXISTS RISK")
        cur.execute("CREATE SCHEMA IF NOT EXISTS RISK.RAW")
        cur.execute("USE SCHEMA RISK.RAW")
        end = START + timedelta(hours=SIM.hours + 1)
        snowflake_mirror.write_hours(cur, EVENTS_TABLE, data.events, START, end)
        snowflake_mirror.write_hours(cur, LABELS_TABLE, labels, START, end + days(30), EXCHANGE_LABELS)
        yield cur, data.events, labels
        conn.close()


def assert_same(group: FeatureGroup, polars_rows: pl.DataFrame, sql_rows: pl.DataFrame) -> None:
    assert sql_rows.schema == polars_rows.schema
    assert sql_rows.height == polars_rows.height > 0
    keys = [*group.entity.keys, "event_ts"]
    assert sql_rows.select(keys).equals(polars_rows.select(keys))
    for name, dtype in polars_rows.schema.items():
        a, b = polars_rows[name], sql_rows[name]
        assert a.is_null().equals(b.is_null()), name
        if dtype == pl.Float64:
            x, y = a.drop_nulls().to_numpy(), b.drop_nulls().to_numpy()
            assert (abs(x - y) <= 1e-9 * abs(x) + 1e-12).all(), name
        else:
            assert a.equals(b), name


@pytest.mark.parametrize("group", KINDS, ids=lambda g: g.name)
def test_every_aggregation_kind_equals_the_polars_engine(warehouse, group):
    cur, events, labels = warehouse
    expected = compute_feature_group(group, events, *AS_OF, labels)
    got = snowflake_engine.compute_feature_group(cur, group, *AS_OF, EVENTS_TABLE, LABELS_TABLE)
    assert_same(group, expected, got)
    # The data exercises what is compared: labels counted, offsets and filters non-trivial.
    if group.entity != USER:
        return
    for name in ("fraud_n_20h", "fraud_n_20h_d2h", "cb_n_12h_o1h", "n_1h_o20m", "cards_6h"):
        assert expected[name].sum() > 0, name
    assert expected["last_asn_2h_o1h"].null_count() < expected.height


@pytest.mark.parametrize("group", FEATURE_GROUPS, ids=lambda g: g.name)
def test_starter_groups_equal_the_polars_engine_with_created_ts(warehouse, group):
    cur, events, labels = warehouse
    expected = with_created_ts(compute_feature_group(group, events, *AS_OF, labels), group, events)
    expected = expected.sort([*group.entity.keys, "event_ts"])  # the join does not keep the order
    got = snowflake_engine.compute_feature_group(
        cur, group, *AS_OF, EVENTS_TABLE, LABELS_TABLE, created_ts=True
    )
    assert_same(group, expected, got)


def test_offline_store_table_is_computed_inside_snowflake_and_idempotent(warehouse):
    cur, events, labels = warehouse
    group = next(g for g in FEATURE_GROUPS if g.needs_labels)
    table = snowflake_engine.offline_table_name(group)
    first = snowflake_engine.materialize_offline(cur, group, *AS_OF, EVENTS_TABLE, table, LABELS_TABLE)
    again = snowflake_engine.materialize_offline(cur, group, *AS_OF, EVENTS_TABLE, table, LABELS_TABLE)
    stored = snowflake_engine.read_offline(cur, group, table, *AS_OF)
    expected = with_created_ts(compute_feature_group(group, events, *AS_OF, labels), group, events)
    expected = expected.sort([*group.entity.keys, "event_ts"])
    assert first == again == stored.height == expected.height
    assert_same(group, expected, stored)


def test_duplicate_copies_in_the_mirror_are_counted_once(warehouse):
    cur, events, _ = warehouse
    group = KINDS[0]
    # A resend archived an hour later: same event, later ingest_ts, in its own mirror table.
    resent = events.head(200).with_columns(pl.col("ingest_ts") + pl.duration(hours=2))
    table = "RAW_EVENTS_RESENT"
    snowflake_mirror.write_hours(cur, table, pl.concat([events, resent]), START, START + days(2))
    no_labels = FeatureGroup(
        name="no_labels", entity=USER, description="", owner="tests", source_event_types=ALL,
        features=tuple(f for f in group.features if not f.name.startswith(("fraud", "cb_"))),
    )  # fmt: skip
    expected = compute_feature_group(no_labels, events, *AS_OF)
    got = snowflake_engine.compute_feature_group(cur, no_labels, *AS_OF, table)
    assert_same(no_labels, expected, got)


def test_identifiers_are_validated_and_values_are_bound():
    group = KINDS[0]
    q = snowflake_sql.compile_group(group, "RISK.RAW.RAW_EVENTS", *AS_OF, "RAW_LABELS")
    assert "'DE'" not in q.sql and "invalid_cvv" not in q.sql and "ato_report" not in q.sql
    values = list(q.params.values())
    assert "invalid_cvv" in values and "ato_report" in values and "DE" in values
    assert all(f"%({name})s" in q.sql for name in q.params) and "%s" not in q.sql
    for bad in ("RAW_EVENTS; DROP TABLE X", 'RAW"EVENTS', "A.B.C.D", ""):
        with pytest.raises(ValueError, match=r"identifier|table name"):
            snowflake_sql.compile_group(group, bad, *AS_OF, "RAW_LABELS")
    with pytest.raises(ValueError, match="labels_table"):
        snowflake_sql.compile_group(group, "RAW_EVENTS", *AS_OF)
