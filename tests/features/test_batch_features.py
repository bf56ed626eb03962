"""The batch engine against a brute-force oracle that follows the written semantics line by line."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
import pytest

from risk_assets.events.schema import ARCHIVE_EVENT_COLUMNS, ARCHIVE_LABEL_COLUMNS, EVENT_TYPES
from risk_assets.features.batch import compute_feature_group, compute_feature_groups
from risk_assets.features.groups import FEATURE_GROUPS
from risk_assets.features.spec import (
    CARD,
    DEVICE,
    USER,
    USER_WALLET,
    Aggregate,
    Entity,
    FeatureGroup,
    LabelAggregate,
    Ratio,
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

T0 = datetime(2026, 11, 1, tzinfo=UTC)
T0_MS = int(T0.timestamp() * 1000)


# ---------------------------------------------------------------------------------------------
# Random small event frames
# ---------------------------------------------------------------------------------------------
def random_events(seed: int, n: int = 400, span_minutes: int = 600, tick_s: int = 20) -> list[dict[str, Any]]:
    """Events with coarse timestamps (many ties), few entities, nulls in keys and values."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        et = rng.choice(EVENT_TYPES)
        ts = T0_MS + rng.randrange(0, span_minutes * 60 // tick_s) * tick_s * 1000
        r: dict[str, Any] = {c: None for c in ARCHIVE_EVENT_COLUMNS}
        r.update(
            event_id=f"ev{rng.randrange(10**6):06d}_{i:04d}",
            event_type=et,
            event_ts=ts,
            user_id=rng.choice(["u0", "u1", "u2", "u3", "u4"]),
            device_id=rng.choice(["d0", "d1", "d2", "d3", None]),
            ip=rng.choice(["1.1.1.1", "2.2.2.2", "3.3.3.3"]),
            ip_country=rng.choice(["DE", "FR", "US", None]),
            ip_asn=rng.choice([100, 200, 300]),
        )
        if et == "login":
            r.update(success=rng.random() < 0.7, auth_method=rng.choice(["password", "sso"]))
        elif et == "security_change":
            r.update(change_type=rng.choice(["password", "2fa_disable", "email"]))
        elif et in ("deposit", "withdrawal", "card_payment", "p2p_trade"):
            amt = rng.choice([None, round(rng.uniform(1, 500), 2), 10.0, 10.0])
            r.update(amount=amt, amount_usd=amt, currency="USD")
            if et in ("deposit", "withdrawal"):
                r.update(wallet_address=rng.choice(["w0", "w1", "w2", None]))
            if et == "card_payment":
                status = rng.choice(["approved", "declined"])
                r.update(
                    card_id=rng.choice(["c0", "c1", "c2", "c3"]),
                    card_country=rng.choice(["DE", "BR", None]),
                    status=status,
                    decline_reason=rng.choice(["invalid_cvv", "do_not_honor"])
                    if status == "declined"
                    else None,
                )
            if et == "p2p_trade":
                r.update(
                    counterparty_id=rng.choice(["cp0", "cp1"]),
                    payment_method=rng.choice(["gift_card", "bank_transfer"]),
                    trade_status=rng.choice(["completed", "disputed"]),
                )
        rows.append(r)
    return rows


def random_labels(seed: int, rows: list[dict[str, Any]], share: float = 0.3) -> list[dict[str, Any]]:
    rng = random.Random(seed + 1)
    labels = []
    for r in rows:
        if rng.random() < share:
            for j in range(rng.choice([1, 1, 2])):  # sometimes two labels for one event
                labels.append(
                    {
                        "label_id": f"lb_{r['event_id']}_{j}",
                        "label_type": rng.choice(["chargeback", "ato_report"]),
                        "schema_version": 1,
                        "label_ts": r["event_ts"] + rng.randrange(0, 6 * 3600) * 1000,
                        "event_id": r["event_id"],
                        "event_ts": r["event_ts"],
                        "user_id": r["user_id"],
                        "scenario": rng.choice(["ato", "card_testing"]),
                        "ingest_ts": r["event_ts"],
                    }
                )
    return labels


def to_frame(rows: list[dict[str, Any]], layout: dict[str, pl.DataType]) -> pl.DataFrame:
    ts_cols = [c for c, d in layout.items() if isinstance(d, pl.Datetime)]
    df = pl.DataFrame(rows, schema={c: (pl.Int64 if c in ts_cols else d) for c, d in layout.items()})
    return df.with_columns([pl.col(c).cast(layout[c]) for c in ts_cols])


# ---------------------------------------------------------------------------------------------
# The oracle: the module docstring of spec.py, as a loop
# ---------------------------------------------------------------------------------------------
def oracle(
    group: FeatureGroup,
    rows: list[dict[str, Any]],
    start_ms: int,
    end_ms: int,
    labels: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Rows are dicts in the group's source layout (time as integer ms); the output names the as-of
    time ``event_ts`` whatever the source calls its time column."""
    src = group.source
    ts, eid, etype = src.timestamp, src.id_column, src.event_type_column
    keys = group.entity.keys
    by_entity: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        typed = etype is None or r[etype] in group.source_event_types
        if typed and all(r[k] is not None for k in keys):
            by_entity[tuple(r[k] for k in keys)].append(r)
    out = []
    for key in sorted(by_entity):
        es = sorted(by_entity[key], key=lambda r: (r[ts], r[eid]))
        for t in sorted({r[ts] for r in es if start_ms <= r[ts] < end_ms}):
            row: dict[str, Any] = dict(zip(keys, key, strict=True))
            row["event_ts"] = t
            for f in group.features:
                if isinstance(f, Ratio):
                    continue
                w = f.window // timedelta(milliseconds=1)
                o = f.offset // timedelta(milliseconds=1)
                m = [e for e in es if t - o - w < e[ts] <= t - o and all(c.matches(e) for c in f.where)]
                if isinstance(f, LabelAggregate):
                    row[f.name] = _oracle_label(group, f, m, t, labels or [])
                else:
                    row[f.name] = _oracle_agg(f, m, t, ts)
            for f in group.features:
                if isinstance(f, Ratio):
                    num, den = row[f.numerator], row[f.denominator]
                    if den is None or den == 0:
                        row[f.name] = 0.0 if f.empty == "zero" else None
                    else:
                        row[f.name] = None if num is None else num / den
            out.append(row)
    return out


def _oracle_agg(f: Aggregate, m: list[dict[str, Any]], t: int, ts: str = "event_ts") -> Any:
    vals = [e[f.column] for e in m if e[f.column] is not None] if f.column else []
    match f.kind:
        case "count":
            return len(m)
        case "sum":
            return float(sum(vals))
        case "mean":
            return sum(vals) / len(vals) if vals else None
        case "min":
            return min(vals) if vals else None
        case "max":
            return max(vals) if vals else None
        case "distinct_count":
            return len(set(vals))
        case "last":
            return vals[-1] if vals else None
        case "time_since_last":
            before = [e[ts] for e in m if e[ts] < t]
            return (t - max(before)) / 1000 if before else None
    raise AssertionError(f.kind)


def _oracle_label(
    group: FeatureGroup, f: LabelAggregate, m: list[dict[str, Any]], t: int, labels: list[dict[str, Any]]
) -> Any:
    assert group.label_source is not None
    key, lts = group.label_source.key, group.label_source.timestamp
    eid, ts = group.source.id_column, group.source.timestamp
    d = f.availability_delay // timedelta(milliseconds=1)
    known: dict[str, int] = {}
    for lb in labels:
        if all(c.matches(lb) for c in f.label_where):
            known[lb[key]] = min(known.get(lb[key], lb[lts]), lb[lts])
    n = sum(1 for e in m if e[eid] in known and known[e[eid]] <= t - d)
    if f.kind == "label_count":
        return n
    base = m if f.denominator == "all" else [e for e in m if e[ts] <= t - d]
    return n / len(base) if base else None


def assert_matches(group: FeatureGroup, got: pl.DataFrame, expected: list[dict[str, Any]]) -> None:
    assert got.schema == pl.Schema(group.schema())
    assert got.height == len(expected), (got.height, len(expected))
    got_rows = got.with_columns(pl.col("event_ts").dt.epoch("ms")).to_dicts()
    for g, e in zip(got_rows, expected, strict=True):
        for name, ev in e.items():
            gv = g[name]
            if isinstance(ev, float) and gv is not None:
                assert math.isclose(gv, ev, rel_tol=1e-9, abs_tol=1e-9), (name, g, e)
            else:
                assert gv == ev, (name, gv, ev, e)


# ---------------------------------------------------------------------------------------------
# Groups exercising every aggregation kind
# ---------------------------------------------------------------------------------------------
AMT = "amount_usd"
ALL = tuple(EVENT_TYPES)


def kitchen_sink(entity: Entity, name: str = "kitchen_sink") -> FeatureGroup:
    money = event_type("deposit", "withdrawal", "card_payment", "p2p_trade")
    return FeatureGroup(
        name=name,
        entity=entity,
        description="every aggregation kind",
        owner="tests",
        source_event_types=ALL,
        features=(
            count("n_10m", minutes(10)),
            count("n_1h", hours(1)),
            count("logins_ok_1h", hours(1), event_type("login"), Where("success", "eq", True)),
            count("not_cvv_1h", hours(1), Where("decline_reason", "ne", "invalid_cvv")),
            count("no_country_2h", hours(2), Where("ip_country", "is_null")),
            count("big_1h", hours(1), Where(AMT, "gt", 100.0)),
            count("small_1h", hours(1), Where(AMT, "le", 10.0)),
            sum_of("usd_1h", AMT, hours(1), money),
            sum_of("usd_asn_2h", AMT, hours(2), Where("ip_asn", "ge", 200)),
            mean_of("mean_usd_3h", AMT, hours(3)),
            min_of("min_usd_30m", AMT, minutes(30)),
            max_of("max_usd_3h", AMT, hours(3), Where("ip_country", "in", ("DE", "US"))),
            min_of("min_asn_1h", "ip_asn", hours(1), Where("ip_asn", "lt", 300)),
            distinct_count("devices_1h", "device_id", hours(1)),
            distinct_count("countries_3h", "ip_country", hours(3)),
            distinct_count("cards_2h", "card_id", hours(2), Where("status", "eq", "declined")),
            distinct_count("asn_5h", "ip_asn", hours(5), Where("ip_country", "not_in", ("FR",))),
            last_value("last_country_2h", "ip_country", hours(2)),
            last_value("last_usd_1h", AMT, hours(1)),
            last_value("last_success_3h", "success", hours(3)),
            time_since_last("since_any_1h", hours(1)),
            time_since_last("since_sec_3h", hours(3), event_type("security_change")),
            time_since_last("since_wallet_2h", hours(2), Where("wallet_address", "not_null")),
            ratio("big_share_1h", "big_1h", "n_1h"),
            ratio("usd_per_mean", "usd_1h", "mean_usd_3h"),
            ratio("ok_per_small", "logins_ok_1h", "small_1h"),
        ),
        ttl=days(1),
    )


def label_group(entity: Entity = DEVICE) -> FeatureGroup:
    return FeatureGroup(
        name="labels",
        entity=entity,
        description="label aggregates",
        owner="tests",
        source_event_types=ALL,
        features=(
            count("n_6h", hours(6)),
            label_count("fraud_n_6h", hours(6), hours(1)),
            label_rate("fraud_rate_6h", hours(6), hours(1)),
            label_rate("fraud_rate_0", hours(3), timedelta(0)),
            label_rate(
                "ato_rate_6h", hours(6), minutes(30), event_type("login"),
                label_filters=(label_where("scenario", "eq", "ato"),),
            ),
            label_count(
                "cb_n_5h", hours(5), hours(2), label_filters=(label_where("label_type", "eq", "chargeback"),)
            ),
        ),
    )  # fmt: skip


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("entity", [USER, DEVICE, USER_WALLET, Entity("ip_asn", ("ip", "ip_asn"))])
def test_every_aggregation_matches_oracle(seed: int, entity: Entity) -> None:
    rows = random_events(seed)
    group = kitchen_sink(entity)
    # As-of range narrower than the data: the first hours are lookback only, the tail is cut.
    start, end = T0 + hours(3), T0 + hours(9)
    got = compute_feature_group(group, to_frame(rows, ARCHIVE_EVENT_COLUMNS), start, end)
    expected = oracle(group, rows, T0_MS + 3 * 3_600_000, T0_MS + 9 * 3_600_000)
    assert len(expected) > 20
    assert_matches(group, got, expected)


@pytest.mark.parametrize("seed", range(6))
def test_label_aggregates_match_oracle(seed: int) -> None:
    rows = random_events(seed, n=300)
    labels = random_labels(seed, rows)
    group = label_group()
    start, end = T0 + hours(2), T0 + hours(10)
    got = compute_feature_group(
        group, to_frame(rows, ARCHIVE_EVENT_COLUMNS), start, end, to_frame(labels, ARCHIVE_LABEL_COLUMNS)
    )
    expected = oracle(group, rows, T0_MS + 2 * 3_600_000, T0_MS + 10 * 3_600_000, labels)
    assert any(r["fraud_n_6h"] for r in expected)
    assert_matches(group, got, expected)


def offset_group(entity: Entity, name: str = "offsets") -> FeatureGroup:
    """Every aggregation kind with an offset (shorter, equal to and longer than its window), a
    matured label rate, and ratios with both empty values."""
    money = event_type("deposit", "withdrawal", "card_payment", "p2p_trade")
    lab = {"label_filters": (label_where("label_type", "eq", "chargeback"),)}
    return FeatureGroup(
        name=name,
        entity=entity,
        description="every aggregation kind, delayed",
        owner="tests",
        source_event_types=ALL,
        features=(
            count("n_1h_o20m", hours(1), offset=minutes(20)),
            count("n_20m_o1h", minutes(20), offset=hours(1), model_input=False),
            count("logins_1h_o1h", hours(1), event_type("login"), offset=hours(1)),
            sum_of("usd_1h_o30m", AMT, hours(1), money, offset=minutes(30)),
            mean_of("mean_usd_2h_o1h", AMT, hours(2), offset=hours(1)),
            min_of("min_usd_30m_o2h", AMT, minutes(30), offset=hours(2)),
            max_of("max_usd_1h_o20s", AMT, hours(1), offset=timedelta(seconds=20)),
            min_of("min_asn_1h_o1m", "ip_asn", hours(1), offset=minutes(1)),
            distinct_count("devices_1h_o40m", "device_id", hours(1), offset=minutes(40)),
            distinct_count("countries_3h_o1h", "ip_country", hours(3), offset=hours(1)),
            last_value("last_country_2h_o30m", "ip_country", hours(2), offset=minutes(30)),
            last_value("last_usd_1h_o1h", AMT, hours(1), offset=hours(1)),
            time_since_last("since_1h_o10m", hours(1), offset=minutes(10)),
            time_since_last("since_sec_3h_o1h", hours(3), event_type("security_change"), offset=hours(1)),
            label_count("fraud_n_3h_o1h", hours(3), hours(1), offset=hours(1)),
            label_count("cb_n_2h_o30m_d2h", hours(2), hours(2), offset=minutes(30), **lab),
            label_rate("rate_3h_d1h", hours(3), hours(1)),
            label_rate("rate_3h_d1h_matured", hours(3), hours(1), denominator="matured"),
            label_rate("rate_2h_o30m_d1h_m", hours(2), hours(1), offset=minutes(30), denominator="matured"),
            label_rate("rate_1h_o2h_d1h_m", hours(1), hours(1), offset=hours(2), denominator="matured"),
            ratio("share_null", "n_20m_o1h", "logins_1h_o1h"),
            ratio("share_zero", "n_20m_o1h", "logins_1h_o1h", empty="zero"),
            ratio("usd_per_mean_zero", "usd_1h_o30m", "mean_usd_2h_o1h", empty="zero"),
        ),
    )  # fmt: skip


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("entity", [USER, DEVICE, USER_WALLET])
def test_offsets_on_every_aggregation_match_oracle(seed: int, entity: Entity) -> None:
    """Offsets on every kind (incl. label aggregates and the matured denominator) against the
    oracle. Timestamps on a 20 s grid and offsets/windows that are multiples of it put events
    exactly on window edges all the time."""
    rows = random_events(seed, n=500)
    labels = random_labels(seed, rows)
    group = offset_group(entity)
    start, end = T0 + hours(4), T0 + hours(10)
    got = compute_feature_group(
        group, to_frame(rows, ARCHIVE_EVENT_COLUMNS), start, end, to_frame(labels, ARCHIVE_LABEL_COLUMNS)
    )
    expected = oracle(group, rows, T0_MS + 4 * 3_600_000, T0_MS + 10 * 3_600_000, labels)
    assert len(expected) > 20
    assert any(r["share_zero"] == 0.0 and r["share_null"] is None for r in expected)
    assert any(r["rate_3h_d1h_matured"] != r["rate_3h_d1h"] for r in expected)
    assert_matches(group, got, expected)


@pytest.mark.parametrize("offset_ms", [1, 60_000, 3_600_000, 7_200_000])
def test_offset_window_edges_at_one_millisecond(offset_ms: int) -> None:
    """Window (t − o − w, t − o]: probes at t − o − w (out), t − o − w + 1 (in), t − o (in) and
    t − o + 1 (out) — for every aggregation kind, checked against the oracle and by hand."""
    w = 3_600_000
    t = T0_MS + 5 * 3_600_000
    probes = [t - offset_ms - w, t - offset_ms - w + 1, t - offset_ms, t - offset_ms + 1]
    amounts = [1.0, 10.0, 100.0, 1000.0]
    rows = []
    for i, (ts, amt) in enumerate(zip(probes, amounts, strict=True)):
        r: dict[str, Any] = {c: None for c in ARCHIVE_EVENT_COLUMNS}
        r.update(event_id=f"p{i}", event_type="withdrawal", event_ts=ts, user_id="u", amount_usd=amt,
                 wallet_address=f"w{i}", ip_asn=i)  # fmt: skip
        rows.append(r)
    anchor: dict[str, Any] = {c: None for c in ARCHIVE_EVENT_COLUMNS}
    anchor.update(event_id="a", event_type="login", event_ts=t, user_id="u", success=True)
    rows.append(anchor)
    labels = [
        {"label_id": f"l{i}", "label_type": "chargeback", "schema_version": 1, "event_id": r["event_id"],
         "event_ts": r["event_ts"], "label_ts": r["event_ts"], "user_id": "u", "scenario": "ato",
         "ingest_ts": r["event_ts"]}
        for i, r in enumerate(rows[:4])
    ]  # fmt: skip
    o, win = timedelta(milliseconds=offset_ms), timedelta(milliseconds=w)
    wd = event_type("withdrawal")
    group = FeatureGroup(
        name="edges", entity=USER, description="d", owner="o", source_event_types=("withdrawal", "login"),
        features=(
            count("n", win, wd, offset=o), sum_of("usd", AMT, win, offset=o),
            mean_of("mean", AMT, win, offset=o),
            min_of("mn", AMT, win, offset=o), max_of("mx", AMT, win, offset=o),
            distinct_count("wallets", "wallet_address", win, offset=o),
            last_value("last_asn", "ip_asn", win, wd, offset=o), time_since_last("since", win, wd, offset=o),
            label_count("lab", win, timedelta(0), offset=o), label_rate("rate", win, timedelta(0), offset=o),
        ),
    )  # fmt: skip
    got = compute_feature_group(
        group,
        to_frame(rows, ARCHIVE_EVENT_COLUMNS),
        T0,
        T0 + days(1),
        to_frame(labels, ARCHIVE_LABEL_COLUMNS),
    ).filter(pl.col("event_ts").dt.epoch("ms") == t)
    expected = oracle(group, rows, t, t + 1, labels)
    assert_matches(group, got, expected)
    # By hand: only the probes at t − o − w + 1 (10.0, w1, asn 1) and t − o (100.0, w2, asn 2) count.
    row = got.row(0, named=True)
    assert (row["n"], row["usd"], row["mean"], row["mn"], row["mx"]) == (2, 110.0, 55.0, 10.0, 100.0)
    assert (row["wallets"], row["last_asn"], row["since"]) == (2, 2, offset_ms / 1000)
    assert (row["lab"], row["rate"]) == (2, 1.0)


def test_matured_label_rate_divides_by_matured_events_only() -> None:
    """A terminal-style delayed fraud rate: events 10 days and 2 days old, the old one labelled.
    With D = 7 days only the old event is matured: rate 1/1 (not 1/2, which the default gives)."""
    t = T0_MS + 20 * 86_400_000
    rows = []
    for i, age_days in enumerate((10, 2, 0)):
        r: dict[str, Any] = {c: None for c in ARCHIVE_EVENT_COLUMNS}
        r.update(event_id=f"e{i}", event_type="card_payment", event_ts=t - age_days * 86_400_000,
                 user_id="u", card_id="c", amount_usd=5.0)  # fmt: skip
        rows.append(r)
    label = {"label_id": "l", "label_type": "chargeback", "schema_version": 1, "event_id": "e0",
             "event_ts": rows[0]["event_ts"], "label_ts": rows[0]["event_ts"] + 86_400_000, "user_id": "u",
             "scenario": "card_testing", "ingest_ts": t}  # fmt: skip
    group = FeatureGroup(
        name="matured", entity=CARD, description="d", owner="o", source_event_types=("card_payment",),
        features=(label_rate("all", days(90), days(7)),
                  label_rate("matured", days(90), days(7), denominator="matured"),
                  label_rate("matured_o", days(30), days(7), offset=days(7), denominator="matured")),
    )  # fmt: skip
    out = compute_feature_group(
        group,
        to_frame(rows, ARCHIVE_EVENT_COLUMNS),
        T0,
        T0 + days(30),
        to_frame([label], ARCHIVE_LABEL_COLUMNS),
    )
    last = out.filter(pl.col("event_ts").dt.epoch("ms") == t).row(0, named=True)
    assert (last["all"], last["matured"], last["matured_o"]) == (pytest.approx(1 / 3), 1.0, 1.0)
    first = out.row(0, named=True)  # the old event's own row: not matured yet at its own time
    assert (first["all"], first["matured"], first["matured_o"]) == (0.0, None, None)


def test_offset_features_through_the_point_in_time_join_are_the_oracle_at_the_last_row() -> None:
    """Offline rows of delayed windows joined to a spine (as training sets are, at ``t − 1 ms``):
    every value equals the oracle at the entity's latest row before the spine time, so no event
    later than (that row − offset) can reach a training example."""
    from risk_assets.features.offline_store import with_created_ts
    from risk_assets.features.point_in_time import FeatureTable, point_in_time_join

    rows = random_events(4, n=500)
    labels = random_labels(4, rows)
    group = offset_group(USER)
    events = to_frame(rows, ARCHIVE_EVENT_COLUMNS).with_columns(pl.col("event_ts").alias("ingest_ts"))
    start, end = T0 + hours(4), T0 + hours(10)
    offline = with_created_ts(
        compute_feature_group(group, events, start, end, to_frame(labels, ARCHIVE_LABEL_COLUMNS)),
        group,
        events,
    )
    rng = random.Random(7)
    spine_ms = [T0_MS + 4 * 3_600_000 + rng.randrange(0, 6 * 3_600_000) for _ in range(300)]
    spine = pl.DataFrame(
        {"user_id": [rng.choice(["u0", "u1", "u2", "u3", "u4"]) for _ in spine_ms], "t": spine_ms}
    ).with_columns(pl.col("t").cast(pl.Datetime("ms", "UTC")))
    table = FeatureTable(group.name, offline, ["user_id"], "event_ts", "created_ts")
    joined = point_in_time_join(spine, [table], spine_timestamp="t").to_dicts()
    by_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in oracle(group, rows, T0_MS + 4 * 3_600_000, T0_MS + 10 * 3_600_000, labels):
        by_user[r["user_id"]].append(r)
    matched = 0
    for j, s_ms in zip(joined, spine_ms, strict=True):
        before = [r for r in by_user[j["user_id"]] if r["event_ts"] <= s_ms]
        if not before:
            assert all(j[f"{group.name}__{f}"] is None for f in group.feature_names)
            continue
        expected = before[-1]
        matched += 1
        for f in group.feature_names:
            got, exp = j[f"{group.name}__{f}"], expected[f]
            if isinstance(exp, float) and got is not None:
                assert math.isclose(got, exp, rel_tol=1e-9, abs_tol=1e-9), (f, got, exp)
            else:
                assert got == exp, (f, got, exp)
    assert matched > 200


def test_full_range_lazy_input_and_missing_columns() -> None:
    """A LazyFrame with only the columns the group needs gives the same values."""
    rows = random_events(11, n=200)
    group = FeatureGroup(
        name="slim", entity=USER, description="d", owner="o", source_event_types=("login",),
        features=(count("n", hours(1)), distinct_count("ips", "ip", hours(2)),
                  max_of("mx", AMT, hours(1))),
    )  # fmt: skip
    full = to_frame(rows, ARCHIVE_EVENT_COLUMNS)
    slim = full.select("event_id", "event_type", "event_ts", "user_id", "ip").lazy()
    got = compute_feature_group(group, slim, T0, T0 + days(1))
    expected = oracle(group, rows, T0_MS, T0_MS + 86_400_000)
    assert_matches(group, got, expected)
    assert got["mx"].null_count() == got.height  # amount_usd absent: read as null


# ---------------------------------------------------------------------------------------------
# Label availability: no leakage across the t − D cutoff
# ---------------------------------------------------------------------------------------------
def _leak_case(label_offset_ms: int) -> pl.DataFrame:
    """Device d0 has a fraud event at 10:00 and another event at 20:00; the label of the first
    event arrives at 20:00 − D + label_offset_ms. Returns the feature rows."""
    d = days(2)
    group = FeatureGroup(
        name="leak", entity=DEVICE, description="d", owner="o", source_event_types=("withdrawal",),
        features=(label_count("fraud_n", days(30), d), label_rate("fraud_rate", days(30), d)),
    )  # fmt: skip
    t1 = T0_MS + 10 * 3_600_000
    t2 = T0_MS + 3 * 86_400_000 + 20 * 3_600_000
    rows = []
    for i, ts in enumerate((t1, t2)):
        r: dict[str, Any] = {c: None for c in ARCHIVE_EVENT_COLUMNS}
        r.update(event_id=f"e{i}", event_type="withdrawal", event_ts=ts, user_id="u", device_id="d0",
                 wallet_address="w", amount_usd=5.0)  # fmt: skip
        rows.append(r)
    cutoff = t2 - 2 * 86_400_000
    label = {"label_id": "l", "label_type": "ato_report", "schema_version": 1, "event_id": "e0",
             "event_ts": t1, "label_ts": cutoff + label_offset_ms, "user_id": "u", "scenario": "ato",
             "ingest_ts": cutoff}  # fmt: skip
    out = compute_feature_group(
        group, to_frame(rows, ARCHIVE_EVENT_COLUMNS), T0, T0 + days(10),
        to_frame([label], ARCHIVE_LABEL_COLUMNS),
    )  # fmt: skip
    return out.filter(pl.col("event_ts").dt.epoch("ms") == t2)


def test_label_exactly_at_cutoff_is_used() -> None:
    row = _leak_case(0)
    assert row["fraud_n"].to_list() == [1]
    assert row["fraud_rate"].to_list() == [0.5]


def test_label_one_ms_after_cutoff_is_not_used() -> None:
    row = _leak_case(1)
    assert row["fraud_n"].to_list() == [0]
    assert row["fraud_rate"].to_list() == [0.0]


def test_label_features_require_labels() -> None:
    rows = random_events(1, n=50)
    with pytest.raises(ValueError, match="needs labels"):
        compute_feature_group(label_group(), to_frame(rows, ARCHIVE_EVENT_COLUMNS), T0, T0 + days(1))


# ---------------------------------------------------------------------------------------------
# Edge cases
# ---------------------------------------------------------------------------------------------
def test_window_boundary_is_open_on_the_left() -> None:
    """Events exactly w before t are out; events 1 ms later are in; ties at t are all in."""
    base = T0_MS
    stamps = [base, base + 1, base + 3_600_000, base + 3_600_000, base + 3_600_001]
    rows = []
    for i, ts in enumerate(stamps):
        r: dict[str, Any] = {c: None for c in ARCHIVE_EVENT_COLUMNS}
        r.update(event_id=f"e{i}", event_type="login", event_ts=ts, user_id="u", device_id=f"d{i}",
                 success=True)  # fmt: skip
        rows.append(r)
    group = FeatureGroup(
        name="edge", entity=USER, description="d", owner="o", source_event_types=("login",),
        features=(count("n", hours(1)), distinct_count("dev", "device_id", hours(1)),
                  time_since_last("since", hours(1)), last_value("last_dev", "device_id", hours(1))),
    )  # fmt: skip
    out = compute_feature_group(group, to_frame(rows, ARCHIVE_EVENT_COLUMNS), T0, T0 + days(1))
    assert out["event_ts"].dt.epoch("ms").to_list() == [base, base + 1, base + 3_600_000, base + 3_600_001]
    assert out["n"].to_list() == [1, 2, 3, 3]  # (t−1h, t]: the event at t−1h is out
    assert out["dev"].to_list() == [1, 2, 3, 3]
    assert out["since"].to_list() == [None, 0.001, 3599.999, 0.001]
    assert out["last_dev"].to_list() == ["d0", "d1", "d3", "d4"]  # ties by event_id


def test_empty_inputs_give_empty_frames_with_the_schema() -> None:
    group = kitchen_sink(USER)
    empty = pl.DataFrame(schema=ARCHIVE_EVENT_COLUMNS)
    out = compute_feature_group(group, empty, T0, T0 + days(1))
    assert out.height == 0
    assert out.schema == pl.Schema(group.schema())


def test_groups_share_one_scan_and_match_single_runs() -> None:
    rows = random_events(5)
    frame = to_frame(rows, ARCHIVE_EVENT_COLUMNS)
    groups = [kitchen_sink(USER, "a"), kitchen_sink(DEVICE, "b")]
    both = compute_feature_groups(groups, frame.lazy(), T0 + hours(1), T0 + hours(8))
    for g in groups:
        assert both[g.name].equals(compute_feature_group(g, frame, T0 + hours(1), T0 + hours(8)))


# ---------------------------------------------------------------------------------------------
# The starter set on a realistic frame
# ---------------------------------------------------------------------------------------------
def realistic_events(n: int, seed: int = 3, hours_: int = 48) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Every event type with plausible columns, vectorised (also used by bench/)."""
    rng = np.random.default_rng(seed)
    types = np.array(EVENT_TYPES)
    et = rng.choice(types, n, p=[0.45, 0.03, 0.12, 0.1, 0.15, 0.15])
    ts = T0_MS + np.sort(rng.integers(0, hours_ * 3_600_000, n))
    users = rng.zipf(1.6, n) % 5_000
    pick = lambda prefix, k, idx: np.char.add(prefix, (idx % k).astype(str))  # noqa: E731
    amount = np.round(rng.lognormal(4, 1.2, n), 2)
    is_money = np.isin(et, ["deposit", "withdrawal", "card_payment", "p2p_trade"])
    declined = rng.random(n) < 0.2
    choice = lambda *values: pl.Series(rng.choice(np.array(values), n))  # noqa: E731

    def only(types: str | list[str], values: pl.Series | pl.Expr) -> pl.Expr:
        return pl.when(pl.col("event_type").is_in([types] if isinstance(types, str) else types)).then(values)

    df = pl.DataFrame(
        {
            "event_id": np.char.add("ev", np.arange(n).astype(str)),
            "event_type": et,
            "schema_version": np.ones(n, dtype=np.int16),
            "event_ts": ts,
            "user_id": pick("u", 5_000, users),
            "device_id": pick("d", 7_000, users * 7 + rng.integers(0, 2, n)),
            "ip": pick("ip", 3_000, users * 3 + rng.integers(0, 3, n)),
            "ip_country": rng.choice(np.array(["DE", "FR", "US", "BR"]), n, p=[0.4, 0.3, 0.2, 0.1]),
            "ip_asn": rng.integers(1, 50, n),
            "amount_usd": amount,
        }
    )
    cards = pl.Series(pick("c", 6_000, users * 2 + rng.integers(0, 2, n)))
    df = df.with_columns(
        pl.col("event_ts").cast(pl.Datetime("ms", "UTC")),
        only("login", pl.Series(rng.random(n) < 0.9)).alias("success"),
        only("security_change", choice("password", "2fa_disable", "email", "phone")).alias("change_type"),
        pl.when(pl.Series(is_money)).then(pl.col("amount_usd")).alias("amount_usd"),
        only(["withdrawal", "deposit"], pl.Series(pick("w", 4_000, users + rng.integers(0, 3, n)))).alias(
            "wallet_address"
        ),
        only("card_payment", cards).alias("card_id"),
        only("card_payment", choice("DE", "US", "GB")).alias("card_country"),
        only("card_payment", pl.Series(pick("4", 30, users)).str.pad_start(6, "0")).alias("card_bin"),
        only("card_payment", pl.Series(np.where(declined, "declined", "approved"))).alias("status"),
        only("card_payment", pl.when(pl.Series(declined)).then(pl.lit("invalid_cvv"))).alias(
            "decline_reason"
        ),
        only("p2p_trade", pl.Series(pick("cp", 800, rng.zipf(1.5, n)))).alias("counterparty_id"),
        only("p2p_trade", choice("buy", "sell")).alias("side"),
        only("p2p_trade", choice("gift_card", "mobile_money", "bank_transfer", "cash")).alias(
            "payment_method"
        ),
        only("p2p_trade", choice("completed", "completed", "completed", "disputed")).alias("trade_status"),
    )
    labelled = df.filter(pl.Series(rng.random(n) < 0.01))
    delay_h = pl.Series(rng.integers(1, 96, labelled.height))
    labels = labelled.select(
        pl.concat_str(pl.lit("lb_"), "event_id").alias("label_id"),
        pl.lit("chargeback").alias("label_type"),
        pl.lit(1, pl.Int16).alias("schema_version"),
        (pl.col("event_ts") + pl.duration(hours=delay_h)).alias("label_ts"),
        "event_id",
        "event_ts",
        "user_id",
        pl.lit("ato").alias("scenario"),
        pl.col("event_ts").alias("ingest_ts"),
    )
    from risk_assets.ingest.archive_format import to_archive_frame
    from risk_assets.names import RAW_EVENTS, RAW_LABELS

    return to_archive_frame(df, RAW_EVENTS), to_archive_frame(labels, RAW_LABELS)


def test_starter_set_computes_on_a_realistic_frame() -> None:
    events, labels = realistic_events(60_000)
    total_features = sum(len(g.features) for g in FEATURE_GROUPS)
    assert total_features >= 60
    start, end = T0 + hours(24), T0 + hours(48)
    out = compute_feature_groups(FEATURE_GROUPS, events.lazy(), start, end, labels.lazy())
    assert set(out) == {g.name for g in FEATURE_GROUPS}
    for g in FEATURE_GROUPS:
        frame = out[g.name]
        assert frame.schema == pl.Schema(g.schema()), g.name
        assert frame.height > 0, g.name
        ts = frame["event_ts"]
        assert ts.min() >= start and ts.max() < end
        assert frame.select([*g.entity.keys, "event_ts"]).is_duplicated().sum() == 0
        # Counting features are never null; something in the group is non-trivial.
        for f in g.features:
            kind = getattr(f, "kind", None)
            counting = kind in ("count", "distinct_count") or type(f).__name__ == "LabelAggregate"
            if counting and f.dtype() == pl.Int64:
                assert frame[f.name].null_count() == 0, (g.name, f.name)
        assert any(frame[f].n_unique() > 1 for f in g.feature_names), g.name


def test_starter_group_matches_oracle_on_realistic_sample() -> None:
    """One starter group per entity kind, checked row by row on a small realistic frame."""
    events, labels = realistic_events(4_000, seed=9, hours_=36)
    rows = events.with_columns(pl.col("event_ts").dt.epoch("ms")).to_dicts()
    lab_rows = labels.with_columns(pl.col("label_ts").dt.epoch("ms")).to_dicts()
    start_ms = T0_MS + 24 * 3_600_000
    for g in FEATURE_GROUPS:
        got = compute_feature_group(g, events, T0 + hours(24), T0 + hours(36), labels)
        assert_matches(g, got, oracle(g, rows, start_ms, T0_MS + 36 * 3_600_000, lab_rows))
