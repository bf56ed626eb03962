"""Point-in-time join against a brute-force oracle written from the semantics alone.

The oracle scans every table row for every spine row (O(n·m) Python): visible = same non-null keys,
``ev <= t``, ``ev >= t - ttl`` (when a TTL is set), ``created <= t`` (null created = event time);
winner = largest ``(ev, created, table position)``. Random cases mix composite keys, renamed keys,
TTLs on exact boundaries, ties on event time, rows created after the spine time, null keys, time
zones, ms/us units, duplicate spine rows, empty inputs and LazyFrames.
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from risk_assets.features import point_in_time as pit
from risk_assets.features.point_in_time import FeatureTable, point_in_time_join

BASE = datetime(2026, 3, 1, tzinfo=UTC)
ZONES = [None, "UTC", "America/New_York", "Asia/Kolkata", "Europe/Paris"]


def ts_column(name: str, minutes: list[int | None], unit: str, tz: str | None) -> pl.Series:
    """Instants ``BASE + minutes`` as a Datetime(unit, tz) column (naive = UTC wall time)."""
    us = [None if m is None else int((BASE + timedelta(minutes=m)).timestamp() * 1_000_000) for m in minutes]
    s = pl.Series(name, us, dtype=pl.Int64).cast(pl.Datetime("us")).cast(pl.Datetime(unit))  # type: ignore[arg-type]
    if tz is not None:
        s = s.dt.replace_time_zone("UTC").dt.convert_time_zone(tz)
    return s


def oracle(spine: dict, tables: list[dict]) -> dict[str, list]:
    """Expected feature columns, by brute force over plain Python lists."""
    out: dict[str, list] = {}
    m = len(spine["t"])
    for tab in tables:
        rows = tab["rows"]
        for f in tab["features"]:
            out[f"{tab['name']}__{f}"] = [None] * m
        for i in range(m):
            t = spine["t"][i]
            if t is None:
                continue
            best = None
            for j, r in enumerate(rows):
                keys = [spine[s][i] for s, _ in tab["pairs"]]
                rkeys = [r[tc] for _, tc in tab["pairs"]]
                if any(k is None for k in keys) or keys != rkeys:
                    continue
                ev = r["ev"]
                if ev is None or ev > t:
                    continue
                if tab["ttl"] is not None and ev < t - tab["ttl"]:
                    continue
                cr = r.get("cr", ev)
                cr = ev if cr is None else cr
                if tab["has_created"] and cr > t:
                    continue
                rank = (ev, cr if tab["has_created"] else 0, j)
                if best is None or rank > best[0]:
                    best = (rank, r)
            if best is not None:
                for f in tab["features"]:
                    out[f"{tab['name']}__{f}"][i] = best[1][f]
    return out


def random_case(rng: random.Random) -> tuple[pl.DataFrame | pl.LazyFrame, list[FeatureTable], dict, list]:
    n_users, horizon = rng.randint(1, 6), rng.randint(1, 40)
    devices = ["a", "b", "c"][: rng.randint(1, 3)]

    def key(p_null: float = 0.08) -> int | None:
        return None if rng.random() < p_null else rng.randrange(n_users)

    m = rng.choice([0, 1, rng.randint(2, 40)])
    spine_t = [None if rng.random() < 0.03 else rng.randint(-5, horizon + 5) for _ in range(m)]
    spine = {
        "user_id": [key() for _ in range(m)],
        "device": [
            rng.choice([*devices, None]) if rng.random() < 0.1 else rng.choice(devices) for _ in range(m)
        ],
        "label": [rng.randint(0, 1) for _ in range(m)],
        "t": spine_t,
    }
    if m > 1:  # duplicate spine rows
        for _ in range(rng.randint(0, 3)):
            a, b = rng.randrange(m), rng.randrange(m)
            for col in spine.values():
                col[b] = col[a]
    s_unit, s_tz = rng.choice(["ms", "us"]), rng.choice(ZONES)
    spine_df = pl.DataFrame(
        {
            "uid": pl.Series(spine["user_id"], dtype=pl.Int64),
            "device": pl.Series(spine["device"], dtype=pl.String),
            "label": spine["label"],
            "ts": ts_column("ts", spine_t, s_unit, s_tz),
        }
    )
    tables, specs = [], []
    for ti in range(rng.randint(1, 3)):
        n = rng.choice([0, rng.randint(1, 30)])
        composite = rng.random() < 0.4
        has_created = rng.random() < 0.7
        ttl = rng.choice([None, rng.randint(0, 15)])
        rows = []
        for _ in range(n):
            ev = None if rng.random() < 0.03 else rng.randint(0, horizon)
            cr = None
            if ev is not None and rng.random() > 0.05:
                cr = ev + rng.randint(-3, 12)
            rows.append({"user_id": key(0.05), "dev": rng.choice(devices), "ev": ev, "cr": cr})
        if n > 2:  # exact duplicate (ev, cr) and tie on ev with other created times
            rows.append(dict(rows[0]))
            rows.append({**rows[1], "cr": (rows[1]["ev"] or 0) + rng.randint(-2, 20)})
        for j, r in enumerate(rows):
            r["rid"] = j
            r["score"] = j * 0.5
            r["tag"] = f"t{j}"
        t_unit, t_tz = rng.choice(["ms", "us"]), rng.choice(ZONES)
        c_unit, c_tz = rng.choice(["ms", "us"]), rng.choice(ZONES)
        frame = pl.DataFrame(
            {
                "user_id": pl.Series([r["user_id"] for r in rows], dtype=rng.choice([pl.Int64, pl.Int32])),
                "dev": pl.Series([r["dev"] for r in rows], dtype=pl.String),
                "rid": pl.Series([r["rid"] for r in rows], dtype=pl.Int64),
                "when": ts_column("when", [r["ev"] for r in rows], t_unit, t_tz),
                "score": pl.Series([r["score"] for r in rows], dtype=pl.Float64),
                "made": ts_column("made", [r["cr"] for r in rows], c_unit, c_tz),
                "tag": pl.Series([r["tag"] for r in rows], dtype=pl.String),
            }
        )
        if not has_created:
            frame = frame.drop("made")
        if composite:
            join_keys: object = {"uid": "user_id", "device": "dev"}
            pairs = [("user_id", "user_id"), ("device", "dev")]
        else:
            frame = frame.rename({"user_id": "uid"}).drop("dev")
            join_keys = ["uid"] if rng.random() < 0.5 else {"uid": "uid"}
            pairs = [("user_id", "uid")]
            for r in rows:
                r["uid"] = r["user_id"]
        name = f"tab{ti}"
        tables.append(
            FeatureTable(
                name,
                frame.lazy() if rng.random() < 0.3 else frame,
                join_keys,  # type: ignore[arg-type]
                timestamp="when",
                created_timestamp="made" if has_created else None,
                ttl=None if ttl is None else timedelta(minutes=ttl),
            )
        )
        feats = ["rid", "score", "tag"]
        specs.append(
            {
                "name": name,
                "rows": rows,
                "pairs": pairs,
                "ttl": ttl,
                "has_created": has_created,
                "features": feats,
            }
        )
    out_spine = spine_df.lazy() if rng.random() < 0.3 else spine_df
    return out_spine, tables, spine, specs


@pytest.mark.parametrize("encoded", [True, False], ids=["encoded", "grouped"])
def test_random_cases_match_the_oracle(encoded: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # encoded: entity and time in one Int64 as-of column; grouped: the by-entity as-of fallback
    # used when code * time span would overflow.
    if not encoded:
        monkeypatch.setattr(pit, "_ENCODE_LIMIT", 0)
    rng = random.Random(20260301)
    for case in range(300):
        spine_in, tables, spine, specs = random_case(rng)
        spine_df = spine_in.collect() if isinstance(spine_in, pl.LazyFrame) else spine_in
        out = point_in_time_join(spine_in, tables, spine_timestamp="ts")
        expected = oracle(spine, specs)
        assert out.height == spine_df.height, case
        assert out.columns == spine_df.columns + list(expected), case
        assert out.select(spine_df.columns).equals(spine_df), case
        for col, values in expected.items():
            assert out[col].to_list() == values, (case, col)
        for t, spec in zip(tables, specs, strict=True):
            schema = t.frame.lazy().collect_schema()
            for f in spec["features"]:
                assert out.schema[f"{t.name}__{f}"] == schema[f]


def _one(frame_rows: dict, spine_rows: dict, **kw: object) -> pl.DataFrame:
    table = FeatureTable("f", pl.DataFrame(frame_rows), ["user_id"], **kw)  # type: ignore[arg-type]
    return point_in_time_join(pl.DataFrame(spine_rows), [table])


def _at(minutes: int) -> datetime:
    return BASE + timedelta(minutes=minutes)


def test_created_after_spine_time_falls_back_to_an_earlier_row() -> None:
    # ev=10 was corrected at 30 (created 30); ev=20 only became known at 50.
    table = {
        "user_id": [1, 1, 1],
        "event_timestamp": [_at(10), _at(10), _at(20)],
        "created": [_at(11), _at(30), _at(50)],
        "v": [1.0, 2.0, 3.0],
    }
    spine = {"user_id": [1, 1, 1, 1, 1], "event_timestamp": [_at(10), _at(15), _at(30), _at(49), _at(50)]}
    out = _one(table, spine, created_timestamp="created")
    # t=10: the ev=10 rows were created at 11/30 > 10 → nothing visible yet.
    assert out["f__v"].to_list() == [None, 1.0, 2.0, 2.0, 3.0]


def test_feast_tie_break_leak_is_not_reproduced() -> None:
    # Same event time; the later-created correction exists only after the spine time.
    table = {
        "user_id": [7, 7],
        "event_timestamp": [_at(0), _at(0)],
        "created": [_at(1), _at(100)],
        "v": [0.1, 0.9],
    }
    out = _one(table, {"user_id": [7, 7], "event_timestamp": [_at(5), _at(100)]}, created_timestamp="created")
    assert out["f__v"].to_list() == [0.1, 0.9]


def test_old_event_created_late_loses_to_newer_event_created_earlier() -> None:
    # max(ev, created) ordering would pick row 0 at t=60; the newest visible event is row 1.
    table = {
        "user_id": [1, 1],
        "event_timestamp": [_at(10), _at(20)],
        "created": [_at(50), _at(21)],
        "v": [1.0, 2.0],
    }
    out = _one(
        table,
        {"user_id": [1, 1, 1], "event_timestamp": [_at(15), _at(40), _at(60)]},
        created_timestamp="created",
    )
    assert out["f__v"].to_list() == [None, 2.0, 2.0]


@pytest.mark.parametrize("created", [None, "created"])
def test_ttl_boundary_is_inclusive(created: str | None) -> None:
    table = {"user_id": [1], "event_timestamp": [_at(0)], "created": [_at(0)], "v": [5]}
    spine = {"user_id": [1, 1, 1], "event_timestamp": [_at(0), _at(10), _at(10) + timedelta(microseconds=1)]}
    out = _one(table, spine, ttl=timedelta(minutes=10), created_timestamp=created)
    assert out["f__v"].to_list() == [5, 5, None]
    zero = _one(table, spine, ttl=timedelta(0), created_timestamp=created)
    assert zero["f__v"].to_list() == [5, None, None]


def test_time_zones_and_units_compare_instants() -> None:
    paris = pl.Series([datetime(2026, 3, 1, 13, 0)]).dt.replace_time_zone("Europe/Paris")  # 12:00 UTC
    table = pl.DataFrame(
        {
            "user_id": [1, 1],
            "ts": pl.Series([datetime(2026, 3, 1, 11, 59), datetime(2026, 3, 1, 12, 1)]).cast(
                pl.Datetime("ms")
            ),
            "v": [1, 2],
        }
    )
    spine = pl.DataFrame({"user_id": [1], "event_timestamp": paris.cast(pl.Datetime("us", "Europe/Paris"))})
    out = point_in_time_join(spine, [FeatureTable("f", table, ["user_id"], timestamp="ts")])
    assert out["f__v"].to_list() == [1]
    assert out.schema["event_timestamp"] == pl.Datetime("us", "Europe/Paris")


def test_nanoseconds_are_not_rounded() -> None:
    t0 = 1_772_366_400_000_000_000
    table = pl.DataFrame(
        {"user_id": [1], "event_timestamp": pl.Series([t0 + 1]).cast(pl.Datetime("ns", "UTC")), "v": [1]}
    )
    spine = pl.DataFrame(
        {"user_id": [1, 1], "event_timestamp": pl.Series([t0, t0 + 1]).cast(pl.Datetime("ns", "UTC"))}
    )
    out = point_in_time_join(spine, [FeatureTable("f", table, ["user_id"])])
    assert out["f__v"].to_list() == [None, 1]


def test_date_spine_and_dtype_of_datetime_features() -> None:
    table = pl.DataFrame(
        {
            "user_id": [1],
            "event_timestamp": [datetime(2026, 3, 1, 0, 0)],
            "last_seen": pl.Series([datetime(2026, 2, 28, 23, 0)]).cast(pl.Datetime("ms", "Asia/Tokyo")),
        }
    )
    spine = pl.DataFrame({"user_id": [1, 1], "day": [date(2026, 2, 28), date(2026, 3, 1)]})
    out = point_in_time_join(spine, [FeatureTable("f", table, ["user_id"])], spine_timestamp="day")
    assert out.schema["f__last_seen"] == pl.Datetime("ms", "Asia/Tokyo")
    assert out["f__last_seen"].is_null().to_list() == [True, False]


def test_key_dtypes_are_reconciled_and_null_keys_never_match() -> None:
    table = pl.DataFrame(
        {
            "uid": pl.Series([1, None], dtype=pl.Int32),
            "cat": pl.Series(["x", None], dtype=pl.Categorical),
            "event_timestamp": [_at(0), _at(0)],
            "v": [1, 2],
        }
    )
    spine = pl.DataFrame(
        {
            "user": pl.Series([1, None, 1], dtype=pl.Int64),
            "cat": ["x", None, None],
            "event_timestamp": [_at(1)] * 3,
        }
    )
    out = point_in_time_join(spine, [FeatureTable("f", table, {"user": "uid", "cat": "cat"})])
    assert out["f__v"].to_list() == [1, None, None]
    assert out.schema["cat"] == pl.String


def test_empty_spine_and_empty_table_keep_schema() -> None:
    table = pl.DataFrame({"user_id": [1], "event_timestamp": [_at(0)], "v": [1.5], "s": ["a"]})
    empty_spine = pl.DataFrame(
        schema={"user_id": pl.Int64, "event_timestamp": pl.Datetime("us"), "y": pl.Int8}
    )
    out = point_in_time_join(empty_spine.lazy(), [FeatureTable("f", table.lazy(), ["user_id"])])
    assert out.height == 0 and out.schema["f__v"] == pl.Float64 and out.schema["f__s"] == pl.String
    spine = pl.DataFrame({"user_id": [1, 2], "event_timestamp": [_at(1), _at(1)], "y": [0, 1]})
    out = point_in_time_join(spine, [FeatureTable("f", table.clear(), ["user_id"])])
    assert out["f__v"].to_list() == [None, None] and out.schema["f__s"] == pl.String
    assert point_in_time_join(spine, []).equals(spine)


def test_spine_order_and_duplicates_are_preserved_on_a_larger_random_spine() -> None:
    rng = np.random.default_rng(3)
    n, m = 50_000, 20_000
    ev = rng.integers(0, 10_000, n)
    table = pl.DataFrame(
        {
            "user_id": rng.integers(0, 500, n),
            "event_timestamp": pl.Series(ev * 60_000_000).cast(pl.Datetime("us")),
            "created": pl.Series((ev + rng.integers(0, 30, n)) * 60_000_000).cast(pl.Datetime("us")),
            "v": np.arange(n),
        }
    )
    spine = pl.DataFrame(
        {
            "user_id": rng.integers(0, 600, m),
            "event_timestamp": pl.Series(rng.integers(0, 10_000, m) * 60_000_000).cast(pl.Datetime("us")),
            "row": np.arange(m),
        }
    )
    spine = pl.concat([spine, spine.head(100)])  # duplicate rows
    ft = FeatureTable("f", table, ["user_id"], created_timestamp="created", ttl=timedelta(hours=24))
    out = point_in_time_join(spine, [ft])
    assert out["row"].equals(spine["row"])
    # Baseline: cross join per key, filter, keep the best (ev, created, v) per spine row.
    base = (
        spine.with_row_index("i")
        .join(table, on="user_id", how="left", suffix="_r")
        .filter(
            (pl.col("event_timestamp_r") <= pl.col("event_timestamp"))
            & (pl.col("created") <= pl.col("event_timestamp"))
            & (pl.col("event_timestamp_r") >= pl.col("event_timestamp") - timedelta(hours=24))
        )
        .sort("i", "event_timestamp_r", "created", "v")
        .group_by("i", maintain_order=True)
        .agg(pl.col("v").last())
    )
    expected = spine.with_row_index("i").join(base, on="i", how="left", maintain_order="left")["v"]
    assert out["f__v"].to_list() == expected.to_list()


def test_invalid_inputs_raise() -> None:
    table = pl.DataFrame({"user_id": [1], "event_timestamp": [_at(0)], "v": [1]})
    spine = pl.DataFrame({"user_id": [1], "event_timestamp": [_at(1)], "f__v": [0]})
    with pytest.raises(ValueError, match="already exist"):
        point_in_time_join(spine, [FeatureTable("f", table, ["user_id"])])
    with pytest.raises(ValueError, match="used twice"):
        point_in_time_join(spine.drop("f__v"), [FeatureTable("g", table, ["user_id"])] * 2)
    with pytest.raises(ValueError, match="not a spine column"):
        point_in_time_join(spine, [FeatureTable("g", table, ["nope"])])
    with pytest.raises(ValueError, match="lacks column"):
        point_in_time_join(spine, [FeatureTable("g", table, ["user_id"], created_timestamp="c")])
    with pytest.raises(ValueError, match="no timestamp column"):
        point_in_time_join(spine, [], spine_timestamp="x")
    with pytest.raises(ValueError, match="ttl"):
        point_in_time_join(spine, [FeatureTable("g", table, ["user_id"], ttl=timedelta(seconds=-1))])
    with pytest.raises(TypeError):
        point_in_time_join(spine.with_columns(pl.lit(1).alias("event_timestamp")), [])


def test_same_table_joined_twice_under_different_key_maps() -> None:
    # A P2P trade has two users: the same per-user table is joined once per role.
    rng = random.Random(5)
    users = [f"u{i}" for i in range(6)]
    table = pl.DataFrame(
        {
            "user_id": [rng.choice(users) for _ in range(120)],
            "event_timestamp": [_at(rng.randint(0, 300)) for _ in range(120)],
            "trades_7d": list(range(120)),
        }
    )
    spine = pl.DataFrame(
        {
            "buyer": [rng.choice(users) for _ in range(80)],
            "seller": [rng.choice(users) for _ in range(80)],
            "event_timestamp": [_at(rng.randint(0, 320)) for _ in range(80)],
        }
    )
    out = point_in_time_join(
        spine,
        [
            FeatureTable("buyer", table, {"buyer": "user_id"}),
            FeatureTable("seller", table, {"seller": "user_id"}),
        ],
    )
    assert out.columns == [*spine.columns, "buyer__trades_7d", "seller__trades_7d"]
    rows = table.rows(named=True)
    for s, got_b, got_s in zip(
        spine.iter_rows(named=True), out["buyer__trades_7d"], out["seller__trades_7d"], strict=True
    ):
        for who, got in (("buyer", got_b), ("seller", got_s)):
            seen = [
                r for r in rows if r["user_id"] == s[who] and r["event_timestamp"] <= s["event_timestamp"]
            ]
            best = max(seen, key=lambda r: (r["event_timestamp"], r["trades_7d"]), default=None)
            latest_ts = best["event_timestamp"] if best else None
            candidates = {r["trades_7d"] for r in seen if r["event_timestamp"] == latest_ts}
            assert (got is None and best is None) or got in candidates
