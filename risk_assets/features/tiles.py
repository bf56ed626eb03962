"""Tiles: the partial aggregates both sides merge to finish v2 windows at any query time.

Pure Polars + NumPy + the standard library, no Dagster. Semantics are those of
:mod:`risk_assets.features.spec` (version 2); this module owns the window maths that the offline
engine (:mod:`risk_assets.features.spine`), the stream path, the online sync and risk-serve share —
there is no second copy of it anywhere.

Hops and windows (all times integer ms since the epoch, UTC)
------------------------------------------------------------
A windowed feature (window ``w``, offset ``o``) has the hop ``h = hop_for(w)`` (1 minute up to 1 h,
1 hour up to 2 days, 1 day beyond; ``w`` is a multiple of ``h``, checked by ``spec``);
``floor_h(x) = x − x mod h``. At query time ``t`` its matching events have

* ``o == 0``: ``floor_h(t) − w <= event_ts < t`` (:func:`window_bounds`),
* ``o > 0``:  ``floor_h(t − o) − w <= event_ts < floor_h(t − o)``.

A tile is ``(entity key, hop h, tile_start)`` with ``tile_start`` a multiple of ``h``; it holds the
partials of the group's features whose hop is ``h``, over the group events with
``tile_start <= event_ts < tile_start + h``. The tiles of a window at ``t`` are those with
``tile_start`` in :func:`tile_range` ``[lo, hi)``: for ``o == 0`` ``[floor_h(t) − w, floor_h(t) + h)``
— the last one is the *head* tile, which is exact only when it holds no event at or after ``t``
(:func:`head_is_exact`; tiles built from the events before ``t`` always are); for ``o > 0``
``[floor_h(t − o) − w, floor_h(t − o))``, all complete.

Tile frame (:func:`tile_schema`, :func:`build_tiles`)
-----------------------------------------------------
One row per (entity key, ``hop_ms``, ``tile_start``) holding at least one group event. Columns: the
entity key columns, ``hop_ms`` (Int64), ``tile_start`` (Int64, epoch ms), ``n_events`` (Int64, group
events in the tile, every event type of the group — the write-if-more-events counter),
``max_ts`` (Int64, latest event_ts in the tile — head exactness), then per feature ``f`` of that hop
(null in rows of another hop):

=================== ======================================= =========================================
kind                columns                                 merge over the window's tiles
=================== ======================================= =========================================
count               ``f__n`` Int64                          sum
sum                 ``f__sum`` Float64                      sum (0.0 when no tile)
mean                ``f__sum`` Float64, ``f__nn`` Int64     Σsum / Σnn, null when Σnn = 0
min / max           ``f__v`` column dtype (null: none)      min / max of the non-null
distinct_count      ``f__h`` List(UInt64), sorted, unique   size of the union
last                ``f__ts`` Int64, ``f__id`` id dtype,    value of the tile with the greatest
                    ``f__v`` column dtype                   ``(f__ts, f__id)`` among non-null ``f__ts``
time_since_last     ``f__ts`` Int64 (max matching ts)       ``(t − max f__ts) / 1000``
label_count         ``f__k`` List(Int64), sorted            number of ``k`` with ``k < t − D``
label_rate          ``f__k`` as above, ``f__n`` Int64       that / N, N = Σ``f__n`` ("all") or
                                                            Σ``f__n`` of the tiles with
                                                            ``tile_start + h <= floor_h(t − D)``
                                                            ("matured"); null when N = 0
ratio               (none: computed from its operands)
=================== ======================================= =========================================

``f__k`` holds, per matching event of the tile that has a label passing ``label_where``, the time
of its first such label (labels are rare, so the lists stay short); a label arriving later adds its
time to the event's tile. ``distinct_count`` counts distinct :func:`value_hash` values (FNV-1a 64
of a type-tagged canonical encoding + splitmix64 finalizer), the same on both sides, so online
equals offline exactly; below the true distinct count only on a 64-bit collision: about
``n² / 2⁶⁵`` expected colliding pairs among ``n`` distinct values (3·10⁻⁸ for a million).

API used by the online side
---------------------------
* :func:`tile_schema` / :func:`build_tiles` — tiles from raw events (+ labels): the sync ships
  them, the stream path builds the tiles of a micro-batch and merges them into stored ones with
  :func:`combine_tiles`.
* :func:`merge_at` — one entity, a handful of tiles (rows as mappings, e.g. ``frame.to_dicts()``
  or decoded from Redis), one query time: a ``{feature: value}`` dict in definition order. Plain
  Python over the slices of sorted tile lists (no Polars per request).
* :func:`head_is_exact` — whether those tiles give the exact v2 value at ``t``.
* :func:`finish_windows` — the vectorized version for a spine of (keys, ``event_ts``): a frame.
"""

from __future__ import annotations

import bisect
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from risk_assets.features.batch import _sort_by_time_and_id
from risk_assets.features.spec import (
    Aggregate,
    Feature,
    FeatureGroup,
    LabelAggregate,
    Ratio,
    Where,
    _ms,
)

HOP_MS = "hop_ms"
TILE_START = "tile_start"
N_EVENTS = "n_events"
MAX_TS = "max_ts"
SEP = "__"
_TS = "_ts"  # epoch-ms column of the prepared events

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# --------------------------------------------------------------------------------------------
# Window maths
# --------------------------------------------------------------------------------------------
def hop_ms(f: Aggregate | LabelAggregate) -> int:
    """The feature's hop in ms."""
    return _ms(f.hop)


def floor_to(x: int, h: int) -> int:
    """``x − x mod h`` (floors toward −∞, so negative times are aligned too)."""
    return x - x % h


def window_bounds(f: Aggregate | LabelAggregate, t: int) -> tuple[int, int]:
    """Event-time bounds ``[start, end)`` of the feature's window at query time ``t`` (ms)."""
    w, o, h = _ms(f.window), _ms(f.offset), hop_ms(f)
    if o == 0:
        return floor_to(t, h) - w, t
    end = floor_to(t - o, h)
    return end - w, end


def tile_range(f: Aggregate | LabelAggregate, t: int) -> tuple[int, int]:
    """``tile_start`` bounds ``[lo, hi)`` of the feature's tiles at ``t`` (the head tile included
    for ``o == 0``)."""
    w, o, h = _ms(f.window), _ms(f.offset), hop_ms(f)
    if o == 0:
        f0 = floor_to(t, h)
        return f0 - w, f0 + h
    end = floor_to(t - o, h)
    return end - w, end


def matured_before(f: LabelAggregate, t: int) -> int:
    """Events with ``event_ts`` below this are *matured* at ``t`` (``floor_h(t − D)``): their hop
    tile ended at least ``D`` before ``t``."""
    return floor_to(t - _ms(f.availability_delay), hop_ms(f))


def epoch_ms(t: datetime | int) -> int:
    """Epoch milliseconds of an aware (or naive = UTC) datetime; ints pass through."""
    if isinstance(t, int):
        return t
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return (t - _EPOCH) // timedelta(milliseconds=1)


# --------------------------------------------------------------------------------------------
# Deterministic value hashes (distinct_count)
# --------------------------------------------------------------------------------------------
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_M64 = (1 << 64) - 1


def _mix(z: int) -> int:
    """splitmix64's finalizer (avalanche) on a 64-bit int."""
    z ^= z >> 30
    z = (z * 0xBF58476D1CE4E5B9) & _M64
    z ^= z >> 27
    z = (z * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _encode(value: Any) -> bytes:
    if isinstance(value, bool):
        return b"b\x01" if value else b"b\x00"
    if isinstance(value, int):
        return b"i" + struct.pack("<Q", value & _M64)
    if isinstance(value, float):
        return b"f" + struct.pack("<d", value + 0.0)  # -0.0 → 0.0: equal values, one hash
    if isinstance(value, str):
        return b"s" + value.encode("utf-8")
    if isinstance(value, datetime):
        return b"i" + struct.pack("<Q", epoch_ms(value) & _M64)
    raise TypeError(f"cannot hash a {type(value).__name__} for distinct_count")


def value_hash(value: Any) -> int:
    """64-bit hash (unsigned int) of one non-null value: FNV-1a 64 over a type-tagged canonical
    encoding (``s`` + UTF-8 for strings; ``i`` + 8 little-endian bytes for integers and datetimes
    in epoch ms; ``f`` + the IEEE-754 bytes for floats, ``-0.0`` as ``0.0``; ``b`` + one byte for
    booleans), then splitmix64's finalizer. Stable across processes, platforms and versions;
    :func:`hash_series` computes the same values vectorized."""
    h = _FNV_OFFSET
    for b in _encode(value):
        h = ((h ^ b) * _FNV_PRIME) & _M64
    return _mix(h)


def _fnv_rows(data: np.ndarray, offsets: np.ndarray, tag: int) -> np.ndarray:
    """FNV-1a 64 of ``tag`` + bytes ``data[offsets[i]:offsets[i + 1]]`` for every i, vectorized over
    rows (one pass per byte position, over the rows still that long)."""
    n = len(offsets) - 1
    lengths = np.diff(offsets)
    order = np.argsort(-lengths, kind="stable")  # longest first: row j is active in a prefix
    start = offsets[:-1][order]
    ln = lengths[order]
    prime = np.uint64(_FNV_PRIME)
    h = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    h = (h ^ np.uint64(tag)) * prime
    longest = int(ln[0]) if n else 0
    for j in range(longest):
        k = int(np.searchsorted(-ln, -j, "left"))  # rows with length > j
        if k == 0:
            break
        h[:k] = (h[:k] ^ data[start[:k] + j].astype(np.uint64)) * prime
    out = np.empty(n, dtype=np.uint64)
    out[order] = h
    return out


def _mix_array(z: np.ndarray) -> np.ndarray:
    z = z ^ (z >> np.uint64(30))
    z = z * np.uint64(0xBF58476D1CE4E5B9)
    z = z ^ (z >> np.uint64(27))
    z = z * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def hash_series(s: pl.Series) -> pl.Series:
    """:func:`value_hash` of every value, vectorized (UInt64; null stays null)."""
    valid = s.is_not_null().to_numpy()
    out = np.zeros(len(s), dtype=np.uint64)
    vals = s.drop_nulls()
    if len(vals):
        dt = s.dtype
        if dt == pl.String:
            arr = pa.chunked_array(vals.to_arrow()).cast(pa.large_binary()).combine_chunks()
            _, off, data = arr.buffers()
            offsets = np.frombuffer(off, dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1]
            raw = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
            h = _fnv_rows(raw, offsets, ord("s"))
        else:
            if dt == pl.Boolean:
                tag, width, v = ord("b"), 1, vals.cast(pl.UInt8).to_numpy().astype(np.uint8)
            elif dt.is_float():
                f = vals.cast(pl.Float64).to_numpy() + 0.0
                tag, width, v = ord("f"), 8, f.astype("<f8")
            elif dt.is_integer():
                tag, width, v = ord("i"), 8, vals.cast(pl.Int64, wrap_numerical=True).to_numpy().astype("<i8")
            elif isinstance(dt, pl.Datetime):
                ms = vals.cast(pl.Datetime("ms", "UTC")).dt.epoch("ms").to_numpy()
                tag, width, v = ord("i"), 8, ms.astype("<i8")
            else:
                raise TypeError(f"cannot hash a {dt} column for distinct_count")
            raw = np.ascontiguousarray(v).view(np.uint8)
            h = _fnv_rows(raw, np.arange(0, len(vals) * width + 1, width, dtype=np.int64), tag)
        out[valid] = _mix_array(h)
    return (
        pl.Series(s.name, out, dtype=pl.UInt64)
        .to_frame()
        .select(pl.when(pl.Series(valid)).then(pl.col(s.name)))
        .to_series()
    )


# --------------------------------------------------------------------------------------------
# Group events
# --------------------------------------------------------------------------------------------
def _needed_columns(group: FeatureGroup) -> list[str]:
    src = group.source
    cols = {src.id_column, src.timestamp, *group.entity.keys}
    if src.event_type_column is not None:
        cols.add(src.event_type_column)
    for f in group.features:
        if isinstance(f, Ratio):
            continue
        cols.update(w.column for w in f.where)
        if isinstance(f, Aggregate) and f.column is not None:
            cols.add(f.column)
    return [c for c in src.column_names if c in cols]


def mask_name(i: int) -> str:
    return f"_m{i}"


def _filter_expr(where: tuple[Where, ...]) -> pl.Expr:
    if not where:
        return pl.lit(True)
    return pl.all_horizontal([w.expr() for w in where])


def first_label_times(
    group: FeatureGroup, f: LabelAggregate, labels: pl.DataFrame | pl.LazyFrame
) -> pl.DataFrame:
    """Per labelled event id (``_id``): the time (``_k``, epoch ms) of its first label passing
    ``f.label_where``."""
    lsrc = group.label_source
    assert lsrc is not None
    lf = labels.lazy()
    present = set(lf.collect_schema().names())
    for c in (lsrc.key, lsrc.timestamp):
        if c not in present:
            raise ValueError(f"labels of source {lsrc.name} lack the {c!r} column")
    if f.label_where:
        lf = lf.filter(_filter_expr(f.label_where))
    return (
        lf.group_by(pl.col(lsrc.key).cast(group.source.dtype(group.source.id_column)).alias("_id"))
        .agg(pl.col(lsrc.timestamp).cast(pl.Datetime("ms", "UTC")).dt.epoch("ms").min().alias("_k"))
        .collect()
    )


def prepare_events(
    group: FeatureGroup,
    events: pl.DataFrame | pl.LazyFrame,
    labels: pl.DataFrame | pl.LazyFrame | None = None,
) -> pl.DataFrame:
    """The group's events with what both engines need, sorted by (``_ts``, id).

    Keeps the events of ``source_event_types`` with non-null keys; columns: the needed source
    columns (missing optional ones as null), ``_ts`` (epoch ms), per non-ratio feature ``i`` of
    ``group.features`` a boolean ``_m{i}`` (its filters), ``_h{i}`` (UInt64 value hash, distinct
    counts) and ``_k{i}`` (first qualifying label time or null, label aggregates)."""
    src = group.source
    lf = events.lazy()
    present = set(lf.collect_schema().names())
    for c in (src.timestamp, src.id_column):
        if c not in present:
            raise ValueError(f"events of source {src.name} lack the {c!r} column")
    exprs = [
        (pl.col(c) if c in present else pl.lit(None)).cast(src.dtype(c)).alias(c)
        for c in _needed_columns(group)
    ]
    keep = [pl.col(k).is_not_null() for k in group.entity.keys]
    if src.event_type_column is not None:
        keep.append(pl.col(src.event_type_column).is_in(list(group.source_event_types)))
    df = (
        lf.select(exprs)
        .filter(*keep)
        .with_columns(pl.col(src.timestamp).cast(pl.Datetime("ms", "UTC")).dt.epoch("ms").alias(_TS))
        .collect()
    )
    # Usually sorted by time already: only the rows sharing a millisecond are re-sorted by id.
    df = _sort_by_time_and_id(df, src.timestamp, src.id_column)
    extra: list[pl.Expr | pl.Series] = []
    hashed: dict[str, pl.Series] = {}
    for i, f in enumerate(group.features):
        if isinstance(f, Ratio):
            continue
        extra.append(_filter_expr(f.where).alias(mask_name(i)))
        if isinstance(f, Aggregate) and f.kind == "distinct_count":
            assert f.column is not None
            if f.column not in hashed:
                hashed[f.column] = hash_series(df[f.column])
            extra.append(hashed[f.column].alias(f"_h{i}"))
    df = df.with_columns(extra)
    label_feats = [(i, f) for i, f in enumerate(group.features) if isinstance(f, LabelAggregate)]
    if label_feats:
        if labels is None:
            raise ValueError(f"{group.name}: label aggregates need labels; pass labels=…")
        for i, f in label_feats:
            known = first_label_times(group, f, labels).rename({"_id": src.id_column, "_k": f"_k{i}"})
            df = df.join(known, on=src.id_column, how="left", maintain_order="left")
    return df


# --------------------------------------------------------------------------------------------
# Tile schema and construction
# --------------------------------------------------------------------------------------------
def partial_columns(group: FeatureGroup, f: Feature) -> dict[str, pl.DataType]:
    """The tile columns of one feature and their dtypes (empty for a ratio)."""
    src = group.source
    n = f.name + SEP
    if isinstance(f, Ratio):
        return {}
    if isinstance(f, LabelAggregate):
        out: dict[str, pl.DataType] = {n + "k": pl.List(pl.Int64)}
        if f.kind == "label_rate":
            out[n + "n"] = pl.Int64()
        return out
    match f.kind:
        case "count":
            return {n + "n": pl.Int64()}
        case "sum":
            return {n + "sum": pl.Float64()}
        case "mean":
            return {n + "sum": pl.Float64(), n + "nn": pl.Int64()}
        case "min" | "max":
            assert f.column is not None
            return {n + "v": src.dtype(f.column)}
        case "distinct_count":
            return {n + "h": pl.List(pl.UInt64)}
        case "last":
            assert f.column is not None
            return {n + "ts": pl.Int64(), n + "id": src.dtype(src.id_column), n + "v": src.dtype(f.column)}
        case "time_since_last":
            return {n + "ts": pl.Int64()}
    raise AssertionError(f.kind)


def tile_schema(group: FeatureGroup) -> dict[str, pl.DataType]:
    """Columns of the group's tile frame, in order (see the module docstring)."""
    out: dict[str, pl.DataType] = {k: group.source.dtype(k) for k in group.entity.keys}
    out.update({HOP_MS: pl.Int64(), TILE_START: pl.Int64(), N_EVENTS: pl.Int64(), MAX_TS: pl.Int64()})
    for f in group.features:
        out.update(partial_columns(group, f))
    return out


def _partial_exprs(group: FeatureGroup, i: int, f: Aggregate | LabelAggregate) -> list[pl.Expr]:
    n = f.name + SEP
    m = pl.col(mask_name(i))
    if isinstance(f, LabelAggregate):
        k = pl.col(f"_k{i}")
        out = [k.filter(m & k.is_not_null()).sort().alias(n + "k")]
        if f.kind == "label_rate":
            out.append(m.sum().cast(pl.Int64).alias(n + "n"))
        return out
    if f.kind == "count":
        return [m.sum().cast(pl.Int64).alias(n + "n")]
    if f.kind == "time_since_last":
        return [pl.col(_TS).filter(m).max().alias(n + "ts")]
    assert f.column is not None
    c = pl.col(f.column)
    match f.kind:
        case "sum":
            return [c.cast(pl.Float64).filter(m).sum().alias(n + "sum")]
        case "mean":
            return [
                c.cast(pl.Float64).filter(m).sum().alias(n + "sum"),
                (m & c.is_not_null()).sum().cast(pl.Int64).alias(n + "nn"),
            ]
        case "min":
            return [c.filter(m).min().alias(n + "v")]
        case "max":
            return [c.filter(m).max().alias(n + "v")]
        case "distinct_count":
            h = pl.col(f"_h{i}")
            return [h.filter(m & h.is_not_null()).unique().sort().alias(n + "h")]
        case "last":
            sel = m & c.is_not_null()
            # Rows are sorted by (event_ts, event_id) and group_by keeps the order within a group.
            return [
                pl.col(_TS).filter(sel).last().alias(n + "ts"),
                pl.col(group.source.id_column).filter(sel).last().alias(n + "id"),
                c.filter(sel).last().alias(n + "v"),
            ]
    raise AssertionError(f.kind)


def tiles_from_prepared(group: FeatureGroup, df: pl.DataFrame) -> pl.DataFrame:
    """:func:`build_tiles` over events already through :func:`prepare_events`."""
    keys = list(group.entity.keys)
    schema = tile_schema(group)
    frames = []
    for hop in group.hops:
        h = _ms(hop)
        aggs = [pl.len().cast(pl.Int64).alias(N_EVENTS), pl.col(_TS).max().alias(MAX_TS)]
        for i, f in enumerate(group.features):
            if not isinstance(f, Ratio) and hop_ms(f) == h:
                aggs.extend(_partial_exprs(group, i, f))
        frames.append(
            df.with_columns((pl.col(_TS) - pl.col(_TS) % h).alias(TILE_START))
            .group_by([*keys, TILE_START])
            .agg(aggs)
            .with_columns(pl.lit(h, dtype=pl.Int64).alias(HOP_MS))
        )
    out = pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame(schema=schema)
    out = out.select(
        [(pl.col(c) if c in out.columns else pl.lit(None)).cast(dt).alias(c) for c, dt in schema.items()]
    )
    return out.sort([*keys, HOP_MS, TILE_START])


def build_tiles(
    group: FeatureGroup,
    events: pl.DataFrame | pl.LazyFrame,
    labels: pl.DataFrame | pl.LazyFrame | None = None,
) -> pl.DataFrame:
    """The group's tiles over ``events`` (source layout; ``labels`` in the label source layout,
    required when the group has label aggregates): one row per (entity key, ``hop_ms``,
    ``tile_start``) with at least one group event, columns :func:`tile_schema`, sorted by
    (keys, ``hop_ms``, ``tile_start``). Deterministic: the same events give the same frame."""
    return tiles_from_prepared(group, prepare_events(group, events, labels))


def combine_tiles(group: FeatureGroup, tiles: pl.DataFrame) -> pl.DataFrame:
    """Merge rows of the same (keys, ``hop_ms``, ``tile_start``) built from *disjoint* sets of
    events (e.g. a stored tile and the tile of new events) into one row each: counts and sums
    add, min/max/last/max_ts take the extreme, hash and label lists unite (hashes deduplicated)."""
    keys = [*group.entity.keys, HOP_MS, TILE_START]
    aggs: list[pl.Expr] = [pl.col(N_EVENTS).sum(), pl.col(MAX_TS).max()]
    for f in group.features:
        if isinstance(f, Ratio):
            continue
        n = f.name + SEP
        if isinstance(f, LabelAggregate):
            aggs.append(pl.col(n + "k").list.explode(keep_nulls=False, empty_as_null=False).sort())
            if f.kind == "label_rate":
                aggs.append(pl.col(n + "n").sum())
            continue
        match f.kind:
            case "count":
                aggs.append(pl.col(n + "n").sum())
            case "sum":
                aggs.append(pl.col(n + "sum").sum())
            case "mean":
                aggs.extend([pl.col(n + "sum").sum(), pl.col(n + "nn").sum()])
            case "min":
                aggs.append(pl.col(n + "v").min())
            case "max":
                aggs.append(pl.col(n + "v").max())
            case "distinct_count":
                aggs.append(
                    pl.col(n + "h").list.explode(keep_nulls=False, empty_as_null=False).unique().sort()
                )
            case "last":
                # Nulls sort first, so the last row holds the greatest non-null (ts, id) if any.
                aggs.extend(pl.col(n + p).sort_by([n + "ts", n + "id"]).last() for p in ("ts", "id", "v"))
            case "time_since_last":
                aggs.append(pl.col(n + "ts").max())
    schema = tile_schema(group)
    out = tiles.group_by(keys).agg(aggs)
    hop_of = {
        c: hop_ms(f) for f in group.features if not isinstance(f, Ratio) for c in partial_columns(group, f)
    }
    return out.select(
        [
            (pl.when(pl.col(HOP_MS) == hop_of[c]).then(pl.col(c)) if c in hop_of else pl.col(c))
            .cast(dt)
            .alias(c)
            for c, dt in schema.items()
        ]
    ).sort(keys)


# --------------------------------------------------------------------------------------------
# Finishing windows: one entity, one query time (serving)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _FeaturePlan:
    name: str
    kind: str
    hop: int
    w: int
    o: int
    d: int
    cols: tuple[str, ...]
    matured: bool


@dataclass(frozen=True)
class _Plan:
    features: tuple[_FeaturePlan, ...]
    ratios: tuple[Ratio, ...]
    names: tuple[str, ...]


_PLANS: dict[int, tuple[FeatureGroup, _Plan]] = {}


def _plan(group: FeatureGroup) -> _Plan:
    """The group's merge plan, cached by identity (hashing a group per request would cost more
    than the merge)."""
    hit = _PLANS.get(id(group))
    if hit is not None and hit[0] is group:
        return hit[1]
    plan = _make_plan(group)
    if len(_PLANS) > 1024:
        _PLANS.clear()
    _PLANS[id(group)] = (group, plan)
    return plan


def _make_plan(group: FeatureGroup) -> _Plan:
    feats = []
    for f in group.features:
        if isinstance(f, Ratio):
            continue
        d = _ms(f.availability_delay) if isinstance(f, LabelAggregate) else 0
        matured = isinstance(f, LabelAggregate) and f.denominator == "matured"
        feats.append(
            _FeaturePlan(
                f.name,
                f.kind,
                hop_ms(f),
                _ms(f.window),
                _ms(f.offset),
                d,
                tuple(partial_columns(group, f)),
                matured,
            )
        )
    ratios = tuple(f for f in group.features if isinstance(f, Ratio))
    return _Plan(tuple(feats), ratios, group.feature_names)


def ratio_value(f: Ratio, num: Any, den: Any) -> float | None:
    """A ratio from its operands' values (the spec's ``empty`` rule)."""
    if den is None or den == 0:
        return 0.0 if f.empty == "zero" else None
    if num is None:
        return None
    return float(num) / float(den)


def head_is_exact(tiles: Iterable[Mapping[str, Any]], t: int) -> bool:
    """True when no tile covering ``t`` (``tile_start <= t < tile_start + hop_ms``) holds an event at
    or after ``t``: then :func:`merge_at` returns the exact v2 values (given every event before
    ``t`` is in the tiles)."""
    for r in tiles:
        s = r[TILE_START]
        if s <= t < s + r[HOP_MS] and r[MAX_TS] is not None and r[MAX_TS] >= t:
            return False
    return True


def merge_at(group: FeatureGroup, tiles: Iterable[Mapping[str, Any]], t: int | datetime) -> dict[str, Any]:
    """Feature values of ONE entity at query time ``t`` (epoch ms or datetime) from its tiles.

    ``tiles``: rows of the tile frame of this entity (mappings with ``hop_ms``, ``tile_start`` and
    the partial columns; any order; rows outside the windows are ignored). For ``o == 0`` the head
    tile (``tile_start = floor_h(t)``) is taken whole: exact when :func:`head_is_exact`.
    Returns ``{feature name: value}`` in definition order, values as in the offline frame
    (int for counts, float, the column's Python value for min/max/last, None for null)."""
    t = epoch_ms(t)
    plan = _plan(group)
    by_hop: dict[int, list[Mapping[str, Any]]] = {}
    for r in tiles:
        by_hop.setdefault(r[HOP_MS], []).append(r)
    starts: dict[int, list[int]] = {}
    for h, rows in by_hop.items():
        rows.sort(key=lambda r: r[TILE_START])
        starts[h] = [r[TILE_START] for r in rows]
    values: dict[str, Any] = {}
    for p in plan.features:
        rows = by_hop.get(p.hop, [])
        st = starts.get(p.hop, [])
        if p.o == 0:
            f0 = t - t % p.hop
            lo, hi = f0 - p.w, f0 + p.hop
        else:
            end = (t - p.o) - (t - p.o) % p.hop
            lo, hi = end - p.w, end
        sel = rows[bisect.bisect_left(st, lo) : bisect.bisect_left(st, hi)]
        values[p.name] = _merge_one(p, sel, t)
    for f in plan.ratios:
        values[f.name] = ratio_value(f, values[f.numerator], values[f.denominator])
    return {n: values[n] for n in plan.names}


def _merge_one(p: _FeaturePlan, rows: Sequence[Mapping[str, Any]], t: int) -> Any:
    c = p.cols
    kind = p.kind
    if kind == "count":
        return sum(r[c[0]] or 0 for r in rows)
    if kind == "sum":
        return math.fsum(r[c[0]] or 0.0 for r in rows)
    if kind == "mean":
        nn = sum(r[c[1]] or 0 for r in rows)
        return math.fsum(r[c[0]] or 0.0 for r in rows) / nn if nn else None
    if kind in ("min", "max"):
        vals = [r[c[0]] for r in rows if r[c[0]] is not None]
        if not vals:
            return None
        return min(vals) if kind == "min" else max(vals)
    if kind == "distinct_count":
        seen: set[int] = set()
        for r in rows:
            if r[c[0]]:
                seen.update(r[c[0]])
        return len(seen)
    if kind == "last":
        best = None
        for r in rows:
            ts = r[c[0]]
            if ts is not None and (best is None or (ts, r[c[1]]) > (best[c[0]], best[c[1]])):
                best = r
        return None if best is None else best[c[2]]
    if kind == "time_since_last":
        tss = [r[c[0]] for r in rows if r[c[0]] is not None]
        return (t - max(tss)) / 1000.0 if tss else None
    # label aggregates: a label counts when k < t − D
    cut = t - p.d
    labelled = sum(bisect.bisect_left(r[c[0]], cut) for r in rows if r[c[0]])
    if kind == "label_count":
        return labelled
    if p.matured:
        m = cut - cut % p.hop
        n = sum(r[c[1]] or 0 for r in rows if r[TILE_START] + p.hop <= m)
    else:
        n = sum(r[c[1]] or 0 for r in rows)
    return labelled / n if n else None


# --------------------------------------------------------------------------------------------
# Finishing windows: a spine of (keys, time) at once (vectorized)
# --------------------------------------------------------------------------------------------
def finish_windows(
    group: FeatureGroup, tiles: pl.DataFrame, spine: pl.DataFrame, *, timestamp: str = "event_ts"
) -> pl.DataFrame:
    """:func:`merge_at` for every row of ``spine`` (entity keys + ``timestamp``, a Datetime) at
    once: one row per spine row, in order, with ``group.schema()`` (``event_ts`` = the query time).
    Head tiles are taken whole, as in :func:`merge_at`. Vectorized (``ranges.py``)."""
    from risk_assets.features.ranges import Layout, WindowSpec

    keys = list(group.entity.keys)
    sp = spine.select(
        [
            *(pl.col(k).cast(group.source.dtype(k)) for k in keys),
            pl.col(timestamp).cast(pl.Datetime("ms", "UTC")),
        ]
    ).rename({timestamp: "event_ts"} if timestamp != "event_ts" else {})
    q_t = sp["event_ts"].dt.epoch("ms").fill_null(0).to_numpy()
    null_t = sp["event_ts"].is_null().to_numpy()
    uniq = (
        tiles.select(keys)
        .unique(maintain_order=True)
        .with_row_index("_e")
        .with_columns(pl.col("_e").cast(pl.Int64))
    )
    q_e = sp.select(keys).join(uniq, on=keys, how="left", maintain_order="left", nulls_equal=False)["_e"]
    q_e = np.where(null_t, -1, q_e.fill_null(-1).to_numpy())
    values: dict[str, pl.Series] = {}
    plan = _plan(group)
    for h in {p.hop for p in plan.features}:
        layer = tiles.filter(pl.col(HOP_MS) == h).join(uniq, on=keys, how="left").sort(["_e", TILE_START])
        e = layer["_e"].to_numpy()
        lay = Layout(e, layer[TILE_START].to_numpy(), q_e, q_t, points=False, max_reach=_ms(group.max_reach))
        for p in plan.features:
            if p.hop == h:
                values[p.name] = _finish_one(p, WindowSpec(p.w, p.o, p.hop), lay, layer, q_t)
    for f in plan.ratios:
        from risk_assets.features.spine import _ratio

        values[f.name] = _ratio(f, values[f.numerator], values[f.denominator])
    out = sp.with_columns([values[n].alias(n) for n in plan.names])
    return out.select([pl.col(c).cast(dt) for c, dt in group.schema().items()])


def _finish_one(p: _FeaturePlan, ws: Any, lay: Any, layer: pl.DataFrame, q_t: np.ndarray) -> pl.Series:
    c = p.cols
    name = p.name

    def ints(col: str) -> np.ndarray:
        return layer[col].fill_null(0).to_numpy().astype(np.int64)

    def floats(values: np.ndarray, valid: np.ndarray | None = None) -> pl.Series:
        v = values.astype(np.float64)
        if valid is None:
            return pl.Series(name, v, dtype=pl.Float64)
        return pl.Series(name, np.where(valid, v, np.nan), dtype=pl.Float64, nan_to_null=True)

    if p.kind == "count":
        return pl.Series(name, lay.count(ws, ints(c[0])), dtype=pl.Int64)
    if p.kind in ("sum", "mean"):
        total = lay.fsum(ws, layer[c[0]].fill_null(0.0).to_numpy())
        if p.kind == "sum":
            return floats(total)
        nn = lay.count(ws, ints(c[1]))
        return floats(total / np.maximum(nn, 1), nn > 0)
    if p.kind in ("min", "max"):
        col = layer[c[0]]
        raw = col.fill_null(0).to_numpy().astype(np.float64 if col.dtype.is_float() else np.int64)
        v, ok = lay.extreme(ws, raw, col.is_not_null().to_numpy(), p.kind)
        s = pl.Series(name, v)
        return pl.select(pl.when(pl.Series(ok)).then(s).cast(col.dtype)).to_series().alias(name)
    if p.kind == "distinct_count":
        ex = layer.select(pl.int_range(pl.len()).alias("_i"), pl.col(c[0])).explode(c[0]).drop_nulls()
        codes = np.unique(ex[c[0]].to_numpy(), return_inverse=True)[1].astype(np.int64).reshape(-1)
        return pl.Series(name, lay.distinct(ws, ex["_i"].to_numpy(), codes), dtype=pl.Int64)
    if p.kind in ("last", "time_since_last"):
        ts = layer[c[0]]
        pos, ok = lay.latest(ws, ts.is_not_null().to_numpy())
        if p.kind == "time_since_last":
            tsv = ts.fill_null(0).to_numpy()
            return floats((q_t - tsv[pos]) / 1000.0 if lay.n else np.zeros(len(q_t)), ok)
        vals = (
            layer[c[2]].gather(pos) if lay.n else pl.Series(name, [None] * len(q_t), dtype=layer[c[2]].dtype)
        )
        return pl.select(pl.when(pl.Series(ok)).then(vals)).to_series().alias(name)
    # label aggregates
    ex = layer.select(pl.int_range(pl.len()).alias("_i"), pl.col(c[0])).explode(c[0]).drop_nulls()
    labelled = lay.labelled(ws, ex["_i"].to_numpy(), ex[c[0]].to_numpy().astype(np.int64), p.d)
    if p.kind == "label_count":
        return pl.Series(name, labelled, dtype=pl.Int64)
    n = lay.matured(ws, ints(c[1]), p.d) if p.matured else lay.count(ws, ints(c[1]))
    return floats(labelled / np.maximum(n, 1), n > 0)
