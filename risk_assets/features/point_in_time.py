"""Point-in-time join: attach feature values to a spine of (entity, time) rows without leakage.

Pure Polars + NumPy, no Dagster. Public interface::

    point_in_time_join(spine, tables, *, spine_timestamp="event_timestamp") -> pl.DataFrame

    FeatureTable(name, frame, join_keys, timestamp="event_timestamp", created_timestamp=None, ttl=None)

Semantics (for every spine row and every table)
-----------------------------------------------
A table row is *visible* to a spine row at time ``t`` when

* its join keys equal the spine row's keys (a null key never matches anything),
* its event timestamp ``ev ≤ t`` (and ``ev ≥ t − ttl`` when the table has a ``ttl``; the boundary
  ``ev = t − ttl`` is included), and
* its created timestamp ``cr ≤ t``: a row computed after the spine time did not exist yet and is
  invisible — even when that leaves an *older* event timestamp as the best match.

Among the visible rows the one with the largest ``(ev, cr)`` wins (largest event time, ties broken by
the latest created time; rows identical in both: the one that comes last in the table). No visible
row → nulls. A row whose created timestamp is null counts as created at its event time; a row whose
event timestamp is null is never visible. Without ``created_timestamp`` only ``ev`` matters.

Output: every spine row exactly once, in the input order, its columns (names, dtypes, values)
unchanged, followed by one column ``{table name}__{column}`` per table column that is not a join
key, not the event timestamp and not the created timestamp, in the table's column order and with the
table's dtype (a Datetime feature keeps its unit and zone).

Timestamps may be ``Datetime`` of any unit (ms/us/ns) and any zone, or ``Date``. Naive values are
UTC; aware ones are compared as instants, so a spine in ``Europe/Paris`` and a table in UTC, or ms vs
us, compare correctly. Internally every timestamp is an Int64 count of microseconds since the epoch
(nanoseconds when any input column has unit ``ns``, so nothing is rounded).

Join keys are a sequence of column names present in both frames, or a mapping ``{spine column:
table column}`` when the names differ. Key dtypes are cast to their common supertype (integers of
different widths, String vs Categorical/Enum → String).

How it is computed (one table; ``n`` table rows, ``m`` spine rows)
-------------------------------------------------------------------
1. Project the table to (keys, ``ev``, ``cr``, row number) — the feature columns are collected once,
   in their original order, and never sorted — and drop rows with a null key or ``ev``.
2. Give every entity an Int64 code ``g`` (one integer key: ``key − min``; otherwise a hash join
   against the distinct keys) and map the spine's keys to the same codes (no row → no match).
3. Sort by (``g``, ``ev``, ``cr``, row number). Position ``p`` in this order ranks rows by
   ``(ev, cr)`` within an entity, and entities are contiguous in ``g`` order.
4. Let ``a = max(ev, cr)`` be when a row became visible (``a = ev`` without a created timestamp).
   The rows visible at ``t`` are exactly those with ``a ≤ t``, a set that only grows with ``t``; so
   the best visible row at ``t`` is a *running maximum* of ``p`` over the entity's rows in ``a``
   order: sort (``g``, ``a``) and take ``np.maximum.accumulate(p)`` (no per-entity reset is needed:
   every ``p`` of entity ``g + 1`` exceeds every ``p`` of entity ``g``). Without a created timestamp
   the order of step 3 already is that order and every row is its own running maximum.
   (An as-of join on ``a`` *alone* would be wrong: a row with an old ``ev`` and a late ``cr`` has a
   large ``a`` but must lose to a row with a newer ``ev`` that became visible earlier.)
5. ``join_asof`` (backward) the spine's time on ``a``, by entity. When ``n_codes × time span`` stays
   below 2⁶² (10⁵ entities × 1 year in µs ≈ 3·10¹⁸ does; 10⁶ entities × 1 year does not), entity and
   time are packed into one Int64 ``g·span + (time − lo)`` on both sides, which turns the grouped
   as-of join into a plain merge on one sorted column; otherwise Polars' ``join_asof(by=g)`` runs
   on the separate columns. Both paths are tested against the oracle.
6. TTL: a post-filter on the winner (``ev ≥ t − ttl``). If the best visible row is older than the
   TTL, every visible row is (it has the largest ``ev``), so the answer is null; otherwise the TTL
   does not change the winner. (A ``tolerance`` on the as-of join would be the same without created
   timestamps, and wrong with them, since the join runs on ``a``, not ``ev``.)
7. The winner's original row number gathers the feature columns (``m`` values per feature are
   copied) straight into the spine's order.

Cost: ``O(n log n + m log m)`` for the sorts plus linear merges; extra memory is a few Int64 arrays
of length ``n`` and ``m`` per table (tables are processed one at a time) plus the output. Every step
is a vectorized Polars or NumPy operation. Feast's tie-break differs: it picks the latest created
timestamp even when that row was created after the spine time, which leaks a later correction into
training data; its file (dask) store also drops spine rows. See ``docs/point_in_time.md``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

import numpy as np
import polars as pl

__all__ = ["FeatureTable", "point_in_time_join"]

Frame = pl.DataFrame | pl.LazyFrame
JoinKeys = Sequence[str] | Mapping[str, str]
_Unit = Literal["us", "ns"]
_SEP = "__"


@dataclass(frozen=True)
class FeatureTable:
    """One feature table to join onto a spine.

    ``name`` prefixes the output columns (``{name}__{column}``). ``frame`` holds the keys, the event
    timestamp (``timestamp``), optionally a created timestamp (``created_timestamp``) and the
    feature columns. ``join_keys`` is a sequence of column names present in the spine and the
    table, or a mapping ``{spine column: table column}``. ``ttl`` limits how old a matched event may
    be (``ev ≥ spine time − ttl``); ``None`` means no limit.
    """

    name: str
    frame: Frame
    join_keys: JoinKeys
    timestamp: str = "event_timestamp"
    created_timestamp: str | None = None
    ttl: timedelta | None = None

    def key_pairs(self) -> list[tuple[str, str]]:
        """``[(spine column, table column), …]`` in the given order."""
        if isinstance(self.join_keys, Mapping):
            return [(str(s), str(t)) for s, t in self.join_keys.items()]
        if isinstance(self.join_keys, str):
            return [(self.join_keys, self.join_keys)]
        return [(str(k), str(k)) for k in self.join_keys]


def _ts_unit(dtype: pl.DataType) -> _Unit:
    if isinstance(dtype, pl.Datetime):
        return "ns" if dtype.time_unit == "ns" else "us"
    if dtype == pl.Date:
        return "us"
    raise TypeError(f"expected a Datetime or Date column, got {dtype}")


def _epoch(column: str, dtype: pl.DataType, unit: _Unit) -> pl.Expr:
    """Int64 instants in ``unit`` since the epoch (naive = UTC; aware: the instant)."""
    expr = pl.col(column)
    if dtype == pl.Date:
        expr = expr.cast(pl.Datetime(unit))
    return expr.dt.epoch(unit)


def _ttl_in(unit: _Unit, ttl: timedelta) -> int:
    us = ttl // timedelta(microseconds=1)
    return us * 1000 if unit == "ns" else us


def _key_dtype(name: str, spine: pl.DataType, table: pl.DataType) -> pl.DataType:
    """The common dtype both sides of one key are cast to."""

    def plain(d: pl.DataType) -> pl.DataType:
        return pl.String() if isinstance(d, pl.Categorical | pl.Enum) else d

    a, b = plain(spine), plain(table)
    if a == b:
        return a
    try:
        return pl.concat(
            [pl.DataFrame(schema={"k": a}), pl.DataFrame(schema={"k": b})], how="vertical_relaxed"
        ).schema["k"]
    except (pl.exceptions.PolarsError, TypeError) as exc:
        raise TypeError(f"join key {name!r}: spine dtype {spine} and table dtype {table} differ") from exc


def _validate(spine_schema: pl.Schema, spine_ts: str, tables: Sequence[FeatureTable]) -> None:
    if spine_ts not in spine_schema:
        raise ValueError(f"spine has no timestamp column {spine_ts!r}")
    _ts_unit(spine_schema[spine_ts])
    names: set[str] = set()
    for t in tables:
        if not t.name or _SEP in t.name:
            raise ValueError(f"table name {t.name!r} must be non-empty and must not contain {_SEP!r}")
        if t.name in names:
            raise ValueError(f"table name {t.name!r} is used twice")
        names.add(t.name)
        if t.ttl is not None and t.ttl < timedelta(0):
            raise ValueError(f"table {t.name!r}: ttl must be >= 0, got {t.ttl}")
        if not t.key_pairs():
            raise ValueError(f"table {t.name!r}: join_keys must not be empty")
        for s, _ in t.key_pairs():
            if s not in spine_schema:
                raise ValueError(f"table {t.name!r}: join key {s!r} is not a spine column")


def _codes(table_keys: pl.DataFrame, spine_keys: pl.DataFrame) -> tuple[pl.Series, pl.Series]:
    """Int64 entity codes of the table rows and of the spine rows (null: the spine key has no row).

    One integer key: ``key − min`` (no hashing). Otherwise: a hash join against the distinct keys.
    Both frames have the same column names and dtypes; table keys are non-null.
    """
    cols = table_keys.columns
    if len(cols) == 1 and table_keys.dtypes[0].is_integer() and table_keys.dtypes[0] != pl.UInt64:
        k = cols[0]
        lo, hi = table_keys[k].min(), table_keys[k].max()
        if lo is not None and hi is not None and int(hi) - int(lo) < 2**62:  # type: ignore[arg-type]
            table_codes = table_keys[k].cast(pl.Int64) - int(lo)  # type: ignore[arg-type]
            sc = spine_keys[k].cast(pl.Int64) - int(lo)  # type: ignore[arg-type]
            spine_codes = spine_keys.select(
                pl.when((sc >= 0) & (sc <= int(hi) - int(lo))).then(sc)  # type: ignore[arg-type]
            ).to_series()
            return table_codes.alias("_g"), spine_codes.alias("_g")
    distinct = table_keys.unique().with_row_index("_g").with_columns(pl.col("_g").cast(pl.Int64))
    table_codes = table_keys.join(distinct, on=cols, how="left", maintain_order="left")["_g"]
    spine_codes = spine_keys.join(distinct, on=cols, how="left", nulls_equal=False, maintain_order="left")[
        "_g"
    ]
    return table_codes, spine_codes


@dataclass
class _Prepared:
    """A table reduced to what the as-of join needs (see the module docstring).

    Positions ``p`` index the table rows sorted by (entity, ev, cr, row). ``on``/``best`` is the
    as-of table: visibility time (encoded with the entity when ``span`` is set) and the position of
    the best row visible from then on; ``g`` is its entity code (only without ``span``).
    """

    features: list[str]
    feature_frame: pl.DataFrame  # the feature columns in the table's original row order
    spine_codes: pl.Series  # entity code per spine row (input order), null = no table row
    on: np.ndarray
    best: np.ndarray
    g: np.ndarray | None
    ev_of: np.ndarray  # position -> event time
    src_of: np.ndarray  # position -> original table row
    lo: int
    span: int | None  # encoded: on = code * span + (time - lo)


_ENCODE_LIMIT = 2**62  # code * span must stay below this for the single-column encoding


def _prepare(t: FeatureTable, spine_df: pl.DataFrame, unit: _Unit) -> _Prepared:
    lf = t.frame.lazy()
    schema = lf.collect_schema()
    pairs = t.key_pairs()
    needed = [tc for _, tc in pairs] + [t.timestamp] + ([t.created_timestamp] if t.created_timestamp else [])
    missing = [c for c in needed if c not in schema]
    if missing:
        raise ValueError(f"table {t.name!r} lacks column(s) {missing}")
    if len({tc for _, tc in pairs}) != len(pairs) or len({s for s, _ in pairs}) != len(pairs):
        raise ValueError(f"table {t.name!r}: join keys must be unique")
    _ts_unit(schema[t.timestamp])
    reserved = set(needed)
    features = [c for c in schema.names() if c not in reserved]

    spine_schema = spine_df.schema
    dtypes = {s: _key_dtype(s, spine_schema[s], schema[tc]) for s, tc in pairs}
    key_names = [s for s, _ in pairs]  # table keys take the spine's names
    ev = _epoch(t.timestamp, schema[t.timestamp], unit)
    cols = [pl.col(tc).cast(dtypes[s]).alias(f"_k{i}") for i, (s, tc) in enumerate(pairs)]
    cols.append(ev.alias("_ev"))
    if t.created_timestamp:
        _ts_unit(schema[t.created_timestamp])
        # A null created timestamp counts as "created at its event time".
        cols.append(
            pl.coalesce(_epoch(t.created_timestamp, schema[t.created_timestamp], unit), ev).alias("_cr")
        )
    # One collect: the feature columns (original order) and the key/time projection share the scan.
    feature_frame, proj = pl.collect_all(
        [
            lf.select(features),
            lf.select(cols)
            .with_row_index("_src")
            .drop_nulls([f"_k{i}" for i in range(len(pairs))] + ["_ev"]),
        ]
    )
    proj = proj.rename({f"_k{i}": s for i, s in enumerate(key_names)})
    table_codes, spine_codes = _codes(
        proj.select(key_names), spine_df.select(pl.col(s).cast(dtypes[s]) for s in key_names)
    )
    has_cr = t.created_timestamp is not None
    work = pl.DataFrame([table_codes.alias("_g"), proj["_ev"], proj["_src"].cast(pl.Int64)])
    if has_cr:
        work = work.with_columns(proj["_cr"])
    del proj
    n = work.height
    lo = hi = 0
    if n:
        lo = int(work["_ev"].min())  # type: ignore[arg-type]
        hi = int(work["_cr"].max() if has_cr else work["_ev"].max())  # type: ignore[arg-type]
        hi = max(hi, int(work["_ev"].max()))  # type: ignore[arg-type]
    span = hi - lo + 1
    n_codes = int(work["_g"].max()) + 1 if n else 0  # type: ignore[arg-type]
    encoded = n_codes * span < _ENCODE_LIMIT
    k_of = np.empty(0, dtype=np.int64)
    if encoded:
        # Rank by (entity, ev) packed into one Int64, then cr and row number for ties; entity and
        # ev are recovered from the packed key, so only three columns are sorted.
        packed = work.select(
            (pl.col("_g") * span + (pl.col("_ev") - lo)).alias("_K"), *(["_cr"] if has_cr else []), "_src"
        )
        del work
        ranked = packed.sort(packed.columns)
        del packed
        k_of = ranked["_K"].to_numpy()
        g_of, ev_of = np.divmod(k_of, span)
        ev_of += lo
    else:
        ranked = work.sort(["_g", "_ev", *(["_cr"] if has_cr else []), "_src"])
        del work
        g_of, ev_of = ranked["_g"].to_numpy(), ranked["_ev"].to_numpy()
    src_of = ranked["_src"].to_numpy()
    g: np.ndarray | None = None
    if not has_cr:
        # Sorted by (entity, ev): every row is the best visible one from its ev on.
        on = k_of if encoded else ev_of
        best = np.arange(n, dtype=np.int64)
        g = None if encoded else g_of
    else:
        # Visible from a = max(ev, cr); the best visible row is a running max of p in a order.
        a = np.maximum(ev_of, ranked["_cr"].to_numpy())
        if encoded:
            key = pl.Series(g_of * span + (a - lo))
            order = key.arg_sort().to_numpy()
            on = key.to_numpy()[order]
        else:
            by_a = pl.DataFrame({"_g": g_of, "_a": a}).with_row_index("_p").sort(["_g", "_a"])
            order = by_a["_p"].cast(pl.Int64).to_numpy()
            on, g = by_a["_a"].to_numpy(), by_a["_g"].to_numpy()
        # No reset between entities: every p of entity g + 1 exceeds every p of entity g.
        best = np.maximum.accumulate(order.astype(np.int64, copy=False)) if n else order
    return _Prepared(
        features, feature_frame, spine_codes, on, best, g, ev_of, src_of, lo, span if encoded else None
    )


def _null_columns(t: FeatureTable, prep: _Prepared, height: int) -> list[pl.Series]:
    return [
        pl.Series(f"{t.name}{_SEP}{f}", [None] * height, dtype=prep.feature_frame.schema[f])
        for f in prep.features
    ]


def point_in_time_join(
    spine: Frame,
    tables: Sequence[FeatureTable],
    *,
    spine_timestamp: str = "event_timestamp",
) -> pl.DataFrame:
    """Attach to every spine row the feature values that were known at its timestamp.

    ``spine`` has the entity keys, ``spine_timestamp`` and any other columns (labels). Returns every
    spine row once, in order, unchanged, plus ``{table name}__{feature}`` columns; see the module
    docstring for the exact semantics (TTL, created-timestamp visibility, ties, nulls, time zones).
    """
    spine_df = spine.collect() if isinstance(spine, pl.LazyFrame) else spine
    schema = spine_df.schema
    _validate(schema, spine_timestamp, tables)
    units = {_ts_unit(schema[spine_timestamp])}
    for t in tables:
        tschema = t.frame.lazy().collect_schema()
        for c in (t.timestamp, t.created_timestamp):
            if c is not None and c in tschema and isinstance(tschema[c], pl.Datetime | pl.Date):
                units.add(_ts_unit(tschema[c]))
    unit: _Unit = "ns" if "ns" in units else "us"

    m = spine_df.height
    t_spine = spine_df.select(_epoch(spine_timestamp, schema[spine_timestamp], unit)).to_series()
    out_columns: list[pl.Series] = []
    taken = set(schema.names())
    for t in tables:
        prep = _prepare(t, spine_df, unit)
        names = [f"{t.name}{_SEP}{f}" for f in prep.features]
        clash = taken.intersection(names)
        if clash:
            raise ValueError(f"output column(s) {sorted(clash)} already exist")
        taken.update(names)
        if m == 0 or prep.on.size == 0:
            out_columns.extend(_null_columns(t, prep, m))
            continue
        winner = _match(t, prep, t_spine, unit)  # original table row per spine row, or -1
        idx = pl.select(pl.when(pl.lit(winner) >= 0).then(pl.lit(winner))).to_series()
        gathered = prep.feature_frame.select(pl.all().gather(idx))
        del prep
        out_columns.extend(s.alias(n) for s, n in zip(gathered.get_columns(), names, strict=True))
    return spine_df.with_columns(out_columns) if out_columns else spine_df


def _match(t: FeatureTable, prep: _Prepared, t_spine: pl.Series, unit: _Unit) -> np.ndarray:
    """For each spine row (input order): the original table row of its winner, or −1."""
    m = t_spine.len()
    left = pl.DataFrame(
        [pl.Series("_row", np.arange(m, dtype=np.int64)), prep.spine_codes.alias("_g"), t_spine.alias("_t")]
    ).drop_nulls(["_g", "_t"])
    right_cols = {"_on": prep.on, "_best": prep.best}
    if prep.span is not None:
        # One sorted Int64 column per side: code * span + (time − lo); before lo nothing is visible,
        # after the last time everything is (clip keeps the entity's range).
        left = left.filter(pl.col("_t") >= prep.lo).with_columns(
            (pl.col("_g") * prep.span + (pl.col("_t") - prep.lo).clip(upper_bound=prep.span - 1)).alias("_T")
        )
        left = left.sort("_T")
        right = pl.DataFrame(right_cols).with_columns(pl.col("_on").set_sorted())
        joined = left.join_asof(
            right, left_on="_T", right_on="_on", strategy="backward", check_sortedness=False
        )
        same_entity = (joined["_on"] >= joined["_g"] * prep.span).fill_null(False).to_numpy()
    else:
        left = left.sort("_t")
        right = pl.DataFrame({"_g": prep.g, **right_cols})
        with warnings.catch_warnings():
            # Sorted within each by-group by construction; Polars cannot check that itself.
            warnings.filterwarnings("ignore", message="Sortedness of columns cannot be checked")
            joined = left.join_asof(
                right, left_on="_t", right_on="_on", by="_g", strategy="backward", check_sortedness=False
            )
        same_entity = joined["_on"].is_not_null().to_numpy()
    best = joined["_best"].fill_null(0).to_numpy()
    rows = joined["_row"].to_numpy()
    hit = same_entity
    if t.ttl is not None:
        tq = joined["_t"].to_numpy()
        hit &= prep.ev_of[best] >= tq - _ttl_in(unit, t.ttl)
    winner = np.full(m, -1, dtype=np.int64)
    winner[rows[hit]] = prep.src_of[best[hit]]
    return winner
