"""Semantics v2 (``spec.py``): a brute-force oracle written from the text, against the spine engine
and against the tiles → finish path, at random query times and at every window and tile edge."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
import pytest

from risk_assets.events.schema import ARCHIVE_EVENT_COLUMNS, ARCHIVE_LABEL_COLUMNS, EVENT_TYPES
from risk_assets.features import tiles
from risk_assets.features.spec import (
    DEVICE,
    USER,
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
from risk_assets.features.spine import compute_at
from risk_assets.sources import EventSource, LabelSource

T0 = datetime(2026, 11, 2, tzinfo=UTC)
T0_MS = int(T0.timestamp() * 1000)
MS = timedelta(milliseconds=1)
AMT = "amount_usd"
ALL = tuple(EVENT_TYPES)


# ---------------------------------------------------------------------------------------------
# Data: ms timestamps with same-ms ties, nulls in keys and values, events over several days
# ---------------------------------------------------------------------------------------------
def random_events(seed: int, n: int = 260, span_h: int = 80) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for i in range(n):
        et = rng.choice(EVENT_TYPES)
        if rows and rng.random() < 0.15:
            ts = rng.choice(rows)["event_ts"]  # same-millisecond tie
        elif rng.random() < 0.5:  # bursts near hop edges
            ts = T0_MS + rng.randrange(span_h) * 3_600_000 + rng.choice([0, 1, 59_999, 60_000, 3_599_999])
        else:
            ts = T0_MS + rng.randrange(span_h * 3_600_000)
        r: dict[str, Any] = {c: None for c in ARCHIVE_EVENT_COLUMNS}
        r.update(
            event_id=f"ev{rng.randrange(10**6):06d}_{i:04d}",
            event_type=et,
            event_ts=ts,
            ingest_ts=ts + rng.choice([0, 5, 3_600_000]),
            user_id=rng.choice(["u0", "u1", "u2", None]),
            device_id=rng.choice(["d0", "d1", "d2", None]),
            ip_country=rng.choice(["DE", "FR", "US", None]),
            ip_asn=rng.choice([100, 200, 300]),
        )
        if et == "login":
            r.update(success=rng.choice([True, False, None]))
        elif et in ("deposit", "withdrawal", "card_payment", "p2p_trade"):
            amt = rng.choice([None, round(rng.uniform(1, 500), 2), 10.0])
            r.update(amount_usd=amt, wallet_address=rng.choice(["w0", "w1", None]))
        rows.append(r)
    return rows


def random_labels(seed: int, rows: list[dict[str, Any]], share: float = 0.35) -> list[dict[str, Any]]:
    rng = random.Random(seed + 7)
    out = []
    for r in rows:
        if rng.random() < share:
            for j in range(rng.choice([1, 1, 2])):
                out.append(
                    {
                        "label_id": f"lb_{r['event_id']}_{j}",
                        "label_type": rng.choice(["chargeback", "ato_report"]),
                        "schema_version": 1,
                        "label_ts": r["event_ts"] + rng.choice([0, 1, 3_600_000, rng.randrange(108_000_000)]),
                        "event_id": r["event_id"],
                        "event_ts": r["event_ts"],
                        "user_id": r["user_id"],
                        "scenario": rng.choice(["ato", "card_testing"]),
                        "ingest_ts": r["event_ts"],
                    }
                )
    return out


def to_frame(rows: list[dict[str, Any]], layout: dict[str, pl.DataType]) -> pl.DataFrame:
    ts_cols = [c for c, d in layout.items() if isinstance(d, pl.Datetime)]
    df = pl.DataFrame(rows, schema={c: (pl.Int64 if c in ts_cols else d) for c, d in layout.items()})
    return df.with_columns([pl.col(c).cast(layout[c]) for c in ts_cols])


# ---------------------------------------------------------------------------------------------
# The oracle: the v2 text of spec.py, as loops
# ---------------------------------------------------------------------------------------------
def _floor(x: int, h: int) -> int:
    return x - x % h


def _hop(window_ms: int) -> int:
    if window_ms <= 3_600_000:
        return 60_000
    if window_ms <= 2 * 86_400_000:
        return 3_600_000
    return 86_400_000


def oracle_row(
    group: FeatureGroup, entity_events: list[dict[str, Any]], t: int, labels: list[dict[str, Any]]
) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for f in group.features:
        if isinstance(f, Ratio):
            continue
        w, o = f.window // MS, f.offset // MS
        h = _hop(w)
        if o == 0:
            lo, hi = _floor(t, h) - w, t
        else:
            hi = _floor(t - o, h)
            lo = hi - w
        m = [e for e in entity_events if lo <= e["event_ts"] < hi and all(c.matches(e) for c in f.where)]
        if isinstance(f, LabelAggregate):
            row[f.name] = _oracle_label(f, m, t, h, labels)
        else:
            row[f.name] = _oracle_agg(f, m, t)
    for f in group.features:
        if isinstance(f, Ratio):
            num, den = row[f.numerator], row[f.denominator]
            if den is None or den == 0:
                row[f.name] = 0.0 if f.empty == "zero" else None
            else:
                row[f.name] = None if num is None else num / den
    return {f.name: row[f.name] for f in group.features}


def _oracle_agg(f: Aggregate, m: list[dict[str, Any]], t: int) -> Any:
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
            n = len(set(vals))
            assert len({tiles.value_hash(v) for v in vals}) == n  # no collision on this data
            return n
        case "last":
            known = [e for e in m if e[f.column] is not None]
            best = max(known, key=lambda e: (e["event_ts"], e["event_id"]), default=None)
            return None if best is None else best[f.column]
        case "time_since_last":
            return (t - max(e["event_ts"] for e in m)) / 1000 if m else None
    raise AssertionError(f.kind)


def _oracle_label(
    f: LabelAggregate, m: list[dict[str, Any]], t: int, h: int, labels: list[dict[str, Any]]
) -> Any:
    d = f.availability_delay // MS
    first: dict[str, int] = {}
    for lb in labels:
        if all(c.matches(lb) for c in f.label_where):
            first[lb["event_id"]] = min(first.get(lb["event_id"], lb["label_ts"]), lb["label_ts"])
    n = sum(1 for e in m if e["event_id"] in first and first[e["event_id"]] < t - d)
    if f.kind == "label_count":
        return n
    base = m if f.denominator == "all" else [e for e in m if e["event_ts"] < _floor(t - d, h)]
    return n / len(base) if base else None


def by_entity(group: FeatureGroup, rows: list[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    out: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["event_type"] in group.source_event_types and all(r[k] is not None for k in group.entity.keys):
            out[tuple(r[k] for k in group.entity.keys)].append(r)
    return out


def query_times(group: FeatureGroup, rows: list[dict[str, Any]], seed: int, n_random: int = 40) -> list[int]:
    """Random times between events plus, around every event, its window and tile edges ±1 ms."""
    rng = random.Random(seed + 3)
    ts = sorted({r["event_ts"] for r in rows})
    out = {rng.randrange(ts[0] - 3_600_000, ts[-1] + 3 * 86_400_000) for _ in range(n_random)}
    for s in rng.sample(ts, min(25, len(ts))):
        out.update((s - 1, s, s + 1))
        for f in group.features:
            if isinstance(f, Ratio):
                continue
            w, o = f.window // MS, f.offset // MS
            h = _hop(w)
            edges = [_floor(s, h) + w + h, _floor(s, h) + h + o, _floor(s, h) + w + h + o, _floor(s, h) + h]
            if isinstance(f, LabelAggregate):
                edges.append(_floor(s, h) + h + f.availability_delay // MS)
            for e in edges:
                out.update((e - 1, e, e + 1))
    return sorted(out)


def expected_frame(
    group: FeatureGroup,
    rows: list[dict[str, Any]],
    ts: list[int],
    labels: list[dict[str, Any]],
    keys: list[tuple],
) -> list[dict[str, Any]]:
    ents = by_entity(group, rows)
    out = []
    for key in keys:
        for t in ts:
            r = dict(zip(group.entity.keys, key, strict=True))
            r["event_ts"] = t
            r.update(oracle_row(group, ents.get(key, []), t, labels))
            out.append(r)
    return out


def assert_rows_equal(group: FeatureGroup, got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        for name in group.feature_names:
            gv, ev = g[name], e[name]
            if isinstance(ev, float) and gv is not None:
                assert math.isclose(gv, ev, rel_tol=1e-9, abs_tol=1e-12), (name, e["event_ts"], gv, ev)
            else:
                assert gv == ev and type(gv) is type(ev), (name, e, gv, ev)


# ---------------------------------------------------------------------------------------------
# Groups: every aggregation kind on three hops, offsets, label aggregates
# ---------------------------------------------------------------------------------------------
def every_kind(entity: Entity) -> FeatureGroup:
    money = event_type("deposit", "withdrawal", "card_payment", "p2p_trade")
    return FeatureGroup(
        name="every_kind",
        entity=entity,
        description="every aggregation kind",
        owner="tests",
        source_event_types=ALL,
        features=(
            count("n_10m", minutes(10)),
            count("n_3h", hours(3)),
            count("n_3d", days(3)),
            count("logins_ok_1h", hours(1), event_type("login"), Where("success", "eq", True)),
            count("no_country_2h", hours(2), Where("ip_country", "is_null")),
            sum_of("usd_1h", AMT, hours(1), money),
            sum_of("usd_3d", AMT, days(3)),
            mean_of("mean_usd_3h", AMT, hours(3)),
            mean_of("mean_usd_10m", AMT, minutes(10)),
            min_of("min_usd_30m", AMT, minutes(30)),
            max_of("max_usd_3d", AMT, days(3), Where("ip_country", "in", ("DE", "US"))),
            min_of("min_asn_2h", "ip_asn", hours(2), Where("ip_asn", "lt", 300)),
            distinct_count("countries_1h", "ip_country", hours(1)),
            distinct_count("wallets_3d", "wallet_address", days(3)),
            distinct_count("asn_5h", "ip_asn", hours(5), Where("ip_country", "not_in", ("FR",))),
            last_value("last_country_2h", "ip_country", hours(2)),
            last_value("last_usd_10m", AMT, minutes(10)),
            last_value("last_success_3d", "success", days(3)),
            time_since_last("since_any_1h", hours(1)),
            time_since_last("since_money_3d", days(3), money),
            ratio("big_share", "logins_ok_1h", "n_3h"),
            ratio("usd_per_mean", "usd_1h", "mean_usd_3h", empty="zero"),
        ),
    )


def with_offsets(entity: Entity) -> FeatureGroup:
    return FeatureGroup(
        name="offsets",
        entity=entity,
        description="every kind with an offset",
        owner="tests",
        source_event_types=ALL,
        features=(
            count("n_20m_o7m", minutes(20), offset=minutes(7)),
            count("n_3h_o90m", hours(3), offset=timedelta(minutes=90)),
            sum_of("usd_1h_o1ms", AMT, hours(1), offset=MS),
            mean_of("mean_3d_o1d", AMT, days(3), offset=days(1)),
            min_of("min_2h_o30s", AMT, hours(2), offset=timedelta(seconds=30)),
            max_of("max_30m_o1h", AMT, minutes(30), offset=hours(1)),
            distinct_count("countries_3h_o1h", "ip_country", hours(3), offset=hours(1)),
            last_value("last_country_1h_o20m", "ip_country", hours(1), offset=minutes(20)),
            time_since_last("since_3d_o2h", days(3), offset=hours(2)),
            label_count("lab_6h_o1h", hours(6), hours(2), offset=hours(1)),
            label_rate("rate_2h_o30m_m", hours(2), hours(1), offset=minutes(30), denominator="matured"),
        ),
    )


def with_labels(entity: Entity) -> FeatureGroup:
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
            label_rate("rate_0", hours(3), timedelta(0)),
            label_rate("rate_0_m", hours(3), timedelta(0), denominator="matured"),
            label_rate("rate_3d_m", days(3), days(1), denominator="matured"),
            label_rate(
                "ato_rate_1h", hours(1), minutes(30), event_type("login"),
                label_filters=(label_where("scenario", "eq", "ato"),),
            ),
            label_count(
                "cb_n_5h", hours(5), hours(2), label_filters=(label_where("label_type", "eq", "chargeback"),)
            ),
        ),
    )  # fmt: skip


GROUPS = [every_kind, with_offsets, with_labels]


Case = tuple[FeatureGroup, list[dict], list[dict], list[int], list[tuple]]


def _case(make: Any, entity: Entity, seed: int) -> Case:
    group = make(entity)
    rows = random_events(seed)
    labels = random_labels(seed, rows)
    ts = query_times(group, rows, seed)
    keys = [*sorted(by_entity(group, rows)), ("nobody",)]
    return group, rows, labels, ts, keys


# ---------------------------------------------------------------------------------------------
# Spine engine
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("make", GROUPS)
@pytest.mark.parametrize("entity", [USER, DEVICE])
def test_spine_engine_matches_oracle(make: Any, entity: Entity, seed: int) -> None:
    group, rows, labels, ts, keys = _case(make, entity, seed)
    shuffled = rows[:]
    random.Random(seed).shuffle(shuffled)  # late / out-of-order input: offline values are final
    events = to_frame(shuffled, ARCHIVE_EVENT_COLUMNS)
    spine_rows = [dict(zip(group.entity.keys, k, strict=True), event_ts=t) for k in keys for t in ts]
    order = list(range(len(spine_rows)))
    random.Random(seed + 1).shuffle(order)  # any spine order; the output follows it
    spine = pl.DataFrame([spine_rows[i] for i in order])
    spine = spine.with_columns(pl.col("event_ts").cast(pl.Datetime("ms", "UTC")))
    got = compute_at(group, events, spine, labels=to_frame(labels, ARCHIVE_LABEL_COLUMNS))
    assert got.schema == pl.Schema(group.schema())
    expected = expected_frame(group, rows, ts, labels, keys)
    got_rows = got.with_columns(pl.col("event_ts").dt.epoch("ms")).to_dicts()
    inverse = [0] * len(order)
    for pos, i in enumerate(order):
        inverse[i] = pos
    assert_rows_equal(group, [got_rows[inverse[i]] for i in range(len(order))], expected)


# ---------------------------------------------------------------------------------------------
# Tiles → finish (the online representation)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("make", GROUPS)
def test_tiles_merge_at_matches_oracle(make: Any, seed: int) -> None:
    """Tiles built from the events before ``t`` (what the online store holds when ``t`` is
    scored), merged per entity, give the oracle's values exactly; the vectorized finish agrees."""
    group, rows, labels, ts, keys = _case(make, USER, seed)
    lab = to_frame(labels, ARCHIVE_LABEL_COLUMNS)
    ts = random.Random(seed).sample(ts, min(60, len(ts)))
    for t in ts:
        before = [r for r in rows if r["event_ts"] < t]
        if not before:
            continue
        tl = tiles.build_tiles(group, to_frame(before, ARCHIVE_EVENT_COLUMNS), lab)
        expected = expected_frame(group, rows, [t], labels, keys)
        got = []
        for key in keys:
            mine = tl.filter(pl.col("user_id") == key[0]).to_dicts()
            assert tiles.head_is_exact(mine, t)
            got.append(tiles.merge_at(group, mine, t))
        assert_rows_equal(group, got, expected)
        spine = pl.DataFrame({"user_id": [k[0] for k in keys], "event_ts": [t] * len(keys)}).with_columns(
            pl.col("event_ts").cast(pl.Datetime("ms", "UTC"))
        )
        assert_rows_equal(group, tiles.finish_windows(group, tl, spine).to_dicts(), expected)


def test_late_events_combined_into_tiles_equal_tiles_of_all_events() -> None:
    """A late batch (events older than ones already in the tiles) combined into the stored tiles
    gives the same tiles, hence the same values, as building from every event at once."""
    group = every_kind(USER)
    rows = random_events(11)
    rows.sort(key=lambda r: r["ingest_ts"])
    first, late = rows[: len(rows) // 2], rows[len(rows) // 2 :]
    a = tiles.build_tiles(group, to_frame(first, ARCHIVE_EVENT_COLUMNS))
    b = tiles.build_tiles(group, to_frame(late, ARCHIVE_EVENT_COLUMNS))
    combined = tiles.combine_tiles(group, pl.concat([a, b]))
    whole = tiles.build_tiles(group, to_frame(rows, ARCHIVE_EVENT_COLUMNS))
    assert combined.columns == whole.columns
    for c in whole.columns:
        x, y = combined[c], whole[c]
        if x.dtype == pl.Float64:
            assert (x.is_null() == y.is_null()).all(), c
            assert ((x - y).abs() <= 1e-9 * y.abs()).fill_null(True).all(), c
        else:
            assert x.equals(y), c


def test_burst_at_nine_scored_at_two_reads_zero() -> None:
    """The issue's case: 8 failed logins at 09:00, nothing since; scored at 14:00 the 10-minute
    count is 0 (it was 8 under v1), on the spine engine and through the tiles."""
    group = FeatureGroup(
        name="burst", entity=USER, description="", owner="tests", source_event_types=("login",),
        features=(
            count("failed_login_count_10m", minutes(10), Where("success", "eq", False)),
            count("failed_login_count_24h", hours(24), Where("success", "eq", False)),
        ),
    )  # fmt: skip
    nine = T0_MS + 9 * 3_600_000
    rows = []
    for i in range(8):
        r = {c: None for c in ARCHIVE_EVENT_COLUMNS}
        r.update(event_id=f"e{i}", event_type="login", event_ts=nine + i * 1000, user_id="u", success=False)
        rows.append(r)
    events = to_frame(rows, ARCHIVE_EVENT_COLUMNS)
    at = [nine + 8000, nine + 7000, T0_MS + 14 * 3_600_000]
    spine = pl.DataFrame({"user_id": ["u"] * 3, "event_ts": at}).with_columns(
        pl.col("event_ts").cast(pl.Datetime("ms", "UTC"))
    )
    got = compute_at(group, events, spine)
    assert got["failed_login_count_10m"].to_list() == [8, 7, 0]
    assert got["failed_login_count_24h"].to_list() == [8, 7, 8]
    tl = tiles.build_tiles(group, events).to_dicts()
    assert tiles.merge_at(group, tl, at[2]) == {"failed_login_count_10m": 0, "failed_login_count_24h": 8}


def test_windows_must_be_multiples_of_their_hop() -> None:
    with pytest.raises(ValueError, match="multiple of its hop"):
        count("n_90s", timedelta(seconds=90))
    with pytest.raises(ValueError, match="multiple of its hop"):
        count("n_90m", minutes(90))
    with pytest.raises(ValueError, match="multiple of its hop"):
        count("n_50h", hours(50))
    assert count("n_2d", hours(48)).hop == hours(1) and count("n_3d", days(3)).hop == days(1)


def test_a_declared_source_with_its_own_column_names() -> None:
    """A card team's source (``tx_ts``, ``tx_id``, ``tx_type``; labels keyed by ``transaction_id``
    known at ``known_ts``): the spine engine at a ``tx_ts`` spine equals the oracle, which reads the
    source's columns through the exchange names."""
    ts_type = pl.Datetime("ms", "UTC")
    card = EventSource(
        name="card_tx", columns={"tx_id": pl.String, "tx_ts": ts_type, "customer_id": pl.String,
                                 "terminal_id": pl.String, "amount": pl.Float64, "tx_type": pl.String},
        timestamp="tx_ts", id_column="tx_id", event_type_column="tx_type", event_types=("purchase", "refund"),
    )  # fmt: skip
    fraud = LabelSource(
        name="card_fraud", events="card_tx",
        columns={"label_id": pl.String, "transaction_id": pl.String, "known_ts": ts_type,
                 "confirmed": pl.Boolean},
        key="transaction_id", timestamp="known_ts", id_column="label_id",
    )  # fmt: skip
    purchase = event_type("purchase", source=card)
    group = FeatureGroup(
        name="card_customer", entity=Entity("customer", ("customer_id",)), description="", owner="tests",
        source_event_types=("purchase", "refund"), source=card, label_source=fraud,
        features=(
            count("n_1d", days(1), purchase), sum_of("amount_3d", "amount", days(3), purchase),
            distinct_count("terminals_3d", "terminal_id", days(3)), time_since_last("since_2h", hours(2)),
            label_count("frauds_3d_d1h", days(3), hours(1), label_filters=(Where("confirmed", "eq", True),)),
        ),
    )  # fmt: skip
    rng = random.Random(5)
    rows = []
    for i in range(150):
        ts = T0_MS + rng.randrange(60 * 3_600_000)
        rows.append({"tx_id": f"t{i:03d}", "tx_ts": ts, "customer_id": rng.choice(["c0", "c1", None]),
                     "terminal_id": rng.choice(["x", "y", "z"]), "amount": rng.choice([None, 5.0, 12.5]),
                     "tx_type": rng.choice(["purchase", "refund"])})  # fmt: skip
    labels = [
        {"label_id": f"l{i}", "transaction_id": r["tx_id"], "known_ts": r["tx_ts"] + rng.randrange(7_200_000),
         "confirmed": rng.random() < 0.7}
        for i, r in enumerate(rows) if rng.random() < 0.4
    ]  # fmt: skip
    events = to_frame(rows, card.schema)
    lab = to_frame(labels, fraud.schema)
    ts = sorted(
        {rng.randrange(T0_MS, T0_MS + 70 * 3_600_000) for _ in range(60)} | {r["tx_ts"] for r in rows[:30]}
    )
    keys = [("c0",), ("c1",)]
    spine = pl.DataFrame(
        {"customer_id": [k[0] for k in keys for _ in ts], "tx_ts": [t for _ in keys for t in ts]}
    )
    got = compute_at(group, events, spine.with_columns(pl.col("tx_ts").cast(ts_type)), lab, timestamp="tx_ts")
    as_exchange = [
        {**r, "event_ts": r["tx_ts"], "event_id": r["tx_id"], "event_type": r["tx_type"]} for r in rows
    ]
    labels_x = [{**lb, "event_id": lb["transaction_id"], "label_ts": lb["known_ts"]} for lb in labels]
    expected = expected_frame(group, as_exchange, ts, labels_x, keys)
    assert_rows_equal(group, got.with_columns(pl.col("event_ts").dt.epoch("ms")).to_dicts(), expected)
