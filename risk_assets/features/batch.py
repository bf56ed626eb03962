"""The batch feature engine: exact values of feature groups over a frame of raw events.

Pure Polars + NumPy, no Dagster. Semantics are those of :mod:`risk_assets.features.spec`; this
module only decides *how* to compute them fast.

How it works (one group):

1. Keep the group's events (source types, non-null keys, ``start − max_window < event_ts < end``),
   sort by (keys, event_ts, event_id) and number the entities ``e = 0, 1, …``.
2. Put every entity on one global integer time line: ``T = e·B + (event_ts − origin)`` with
   ``B > range + max_window``. ``T`` is sorted, and a window ``(T − w, T]`` never reaches another
   entity, so every sliding-window question becomes a binary search over one sorted array — no
   per-entity group-by anywhere.
3. The as-of rows are the last row of each run of equal ``T`` with ``event_ts ≥ start``.
4. Per feature (filters evaluated once per distinct filter set):
   A window with offset ``o`` is ``(T − o − w, T − o]``: every kind below evaluates its question
   at the virtual time ``T − o`` instead of ``T`` (``o = 0`` is the plain window).
   * count / sum / mean: prefix sums over the matching rows; window value =
     ``P[#S ≤ T − o] − P[#S ≤ T − o − w]`` (integer counts exact; sums in 80-bit long double);
   * min / max: Polars ``rolling_{min,max}_by`` over ``T`` (closed right, ties included); with an
     offset, null-valued query rows at ``T − o`` are merged into the rolled series;
   * distinct_count: each (entity, value, ts) occurrence contributes +1 on the interval
     ``[s, min(next occurrence, s + w))``; the value at ``T`` = #starts ≤ T − o − #ends ≤ T − o (exact);
   * last / time_since_last: binary search for the latest matching row at or before the as-of row
     (``last``) or strictly before ``T`` (``time_since_last``) — at or before ``T − o`` with an
     offset — then a window check;
   * label_count / label_rate: a matching event labelled (first qualifying label at ``K``)
     contributes on ``[max(s + o, K + D), s + o + w)``; counted with the same interval trick; the
     "matured" denominator counts the window's events with ``s ≤ T − D``;
   * ratio: elementwise, after its operands (``empty`` when the denominator is 0 or null).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl

from risk_assets.features.spec import (
    EVENT_TS,
    Aggregate,
    FeatureGroup,
    LabelAggregate,
    Ratio,
    Where,
    _ms,
)
from risk_assets.sources import EventSource, LabelSource

Frame = pl.LazyFrame | pl.DataFrame
_TS = pl.Datetime("ms", "UTC")
_I64_MAX = np.iinfo(np.int64).max
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _epoch_ms(t: datetime) -> int:
    """Milliseconds since the epoch, rounded up (``ts >= t`` ⇔ ``ts >= ceil(t)`` for integer-ms ts).

    Naive datetimes are taken as UTC.
    """
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return -(-(t - _EPOCH) // timedelta(milliseconds=1))


def _source_of(groups: Iterable[FeatureGroup]) -> EventSource:
    """The one event source of ``groups`` (groups of several sources are computed separately)."""
    sources = {g.source for g in groups}
    if len(sources) != 1:
        names = sorted(s.name for s in sources)
        raise ValueError(f"groups computed together must share one source, got {names}")
    return sources.pop()


def required_event_columns(groups: Iterable[FeatureGroup]) -> list[str]:
    """Columns of the groups' source the engine reads (projection push-down for scans): the id,
    time and event-type columns, the entity keys and every filtered or aggregated column."""
    groups = list(groups)
    src = _source_of(groups)
    cols = {src.id_column, src.timestamp}
    if src.event_type_column is not None:
        cols.add(src.event_type_column)
    for g in groups:
        cols.update(g.entity.keys)
        for f in g.features:
            if isinstance(f, Ratio):
                continue
            cols.update(w.column for w in f.where)
            if isinstance(f, Aggregate) and f.column is not None:
                cols.add(f.column)
    return [c for c in src.column_names if c in cols]


def _prepare_events(
    events: Frame, groups: Sequence[FeatureGroup], start_ms: int, end_ms: int
) -> pl.DataFrame:
    """One shared scan: needed columns, needed event types, (start − max lookback, end)."""
    src = _source_of(groups)
    lf = events.lazy()
    present = set(lf.collect_schema().names())
    for c in (src.timestamp, src.id_column):
        if c not in present:
            raise ValueError(f"events of source {src.name} lack the {c!r} column")
    cols = required_event_columns(groups)
    lookback = max(_ms(g.max_window) for g in groups)
    exprs = []
    for c in cols:
        dtype = src.dtype(c)
        exprs.append((pl.col(c) if c in present else pl.lit(None)).cast(dtype).alias(c))
    ts = pl.col(src.timestamp).dt.epoch("ms")
    keep = [ts > start_ms - lookback, ts < end_ms]
    if src.event_type_column is not None:
        types = sorted({t for g in groups for t in g.source_event_types})
        keep.insert(0, pl.col(src.event_type_column).is_in(types))
    df = lf.select(exprs).filter(*keep).collect()
    return _sort_by_time_and_id(df, src.timestamp, src.id_column)


def _sort_by_time_and_id(df: pl.DataFrame, ts_col: str = EVENT_TS, id_col: str = "event_id") -> pl.DataFrame:
    """Order rows by (time, id). Archive files already are; other inputs are usually
    sorted by time with ties in arbitrary order, so only the rows sharing a timestamp are re-sorted."""
    if df.height < 2:
        return df
    ts = df[ts_col].dt.epoch("ms").to_numpy()
    if np.any(ts[1:] < ts[:-1]):
        df = df[np.argsort(ts, kind="stable")]
        ts = df[ts_col].dt.epoch("ms").to_numpy()
    tie = np.zeros(len(ts), dtype=bool)
    tie[1:] = ts[1:] == ts[:-1]
    tie[:-1] |= tie[1:]
    if not tie.any():
        return df
    pos = np.flatnonzero(tie)
    ties = df[pos].with_row_index("_i")
    fixed = ties.sort([ts_col, id_col])["_i"].to_numpy()
    if np.all(fixed[1:] > fixed[:-1]):
        return df
    order = np.arange(df.height)
    order[pos] = pos[fixed]
    return df[order]


def _prepare_labels(labels: Frame | None, source: LabelSource | None) -> pl.DataFrame | None:
    if labels is None:
        return None
    if source is None:  # pragma: no cover - FeatureGroup refuses label aggregates without one
        raise ValueError("labels given without a label source")
    lf = labels.lazy()
    present = set(lf.collect_schema().names())
    for c in (source.key, source.timestamp):
        if c not in present:
            raise ValueError(f"labels of source {source.name} lack the {c!r} column")
    return lf.with_columns(pl.col(source.timestamp).cast(_TS)).collect()


class _Shared:
    """The shared scan and what every group reuses: epoch-ms timestamps, dense codes of columns
    (strings: codes follow the sorted order of the values, so sorting by code = sorting by value;
    null → −1) and evaluated filter masks."""

    def __init__(
        self, df: pl.DataFrame, labels: pl.DataFrame | None, source: EventSource,
        label_source: LabelSource | None = None,
    ) -> None:  # fmt: skip
        self.df = df
        self.labels = labels
        self.source = source
        self.label_source = label_source
        self.ts = df[source.timestamp].dt.epoch("ms").to_numpy().astype(np.int64, copy=False)
        self._codes: dict[str, np.ndarray] = {}
        self._masks: dict[tuple[Where, ...], np.ndarray] = {}

    def codes(self, column: str) -> np.ndarray:
        if column not in self._codes:
            s = self.df[column]
            if s.dtype == pl.String:
                # Hash join against the sorted distinct values (faster than a dense rank of strings).
                uniq = s.drop_nulls().unique().sort()
                mapping = pl.DataFrame({column: uniq, "_code": pl.int_range(len(uniq), eager=True)})
                joined = s.to_frame().join(mapping, on=column, how="left", maintain_order="left")
                codes = joined["_code"].fill_null(-1).to_numpy()
            elif s.dtype == pl.Boolean:
                codes = s.cast(pl.Int64).fill_null(-1).to_numpy()
            else:
                codes = (s.rank("dense").cast(pl.Int64) - 1).fill_null(-1).to_numpy()
            self._codes[column] = codes
        return self._codes[column]

    def masks(self, keys: Iterable[tuple[Where, ...]]) -> dict[tuple[Where, ...], np.ndarray]:
        """Boolean arrays over the shared frame for each filter set, new ones evaluated in one pass."""
        keys = list(dict.fromkeys(keys))
        todo = [k for k in keys if k not in self._masks]
        exprs = [pl.all_horizontal([w.expr() for w in k]).alias(f"m{i}") for i, k in enumerate(todo) if k]
        evaluated = self.df.select(exprs) if exprs else None
        for i, k in enumerate(todo):
            if not k:
                self._masks[k] = np.ones(self.df.height, dtype=bool)
            else:
                assert evaluated is not None
                self._masks[k] = evaluated[f"m{i}"].to_numpy()
        return {k: self._masks[k] for k in keys}


@dataclass
class _Timeline:
    """A group's events on the global entity-offset time line (arrays in timeline order)."""

    pos: np.ndarray  # shared-frame row of each timeline position
    t: np.ndarray  # int64 T per position, ascending
    eidx: np.ndarray  # entity number per position
    q: np.ndarray  # position of each as-of row (last position of its (entity, ts) run)
    f: np.ndarray  # first position of the same run
    tq: np.ndarray  # T of each as-of row
    origin: int  # event_ts origin (ms)
    span: int  # B: T = eidx·B + (event_ts − origin)
    _lw: dict[int, np.ndarray]

    @property
    def n(self) -> int:
        return len(self.t)

    def lower(self, w: int) -> np.ndarray:
        """Per as-of row: number of positions with ``T <= tq − w`` (start of its window)."""
        if w not in self._lw:
            self._lw[w] = np.searchsorted(self.t, self.tq - w, "right")
        return self._lw[w]

    def upper(self, o: int) -> np.ndarray:
        """Per as-of row: number of positions with ``T <= tq − o`` (end of a window with offset
        ``o``; ``q + 1`` when ``o = 0``)."""
        return self.q + 1 if o == 0 else self.lower(o)

    def window_sum(self, values: np.ndarray, w: int, o: int = 0) -> np.ndarray:
        """Per as-of row: sum of ``values`` (timeline order) over its window ``(tq − o − w, tq − o]``."""
        dtype = np.longdouble if values.dtype.kind == "f" else np.int64
        p = np.zeros(self.n + 1, dtype=dtype)
        np.cumsum(values, dtype=dtype, out=p[1:])
        return p[self.upper(o)] - p[self.lower(w + o)]

    def latest(self, sel: np.ndarray, upto: np.ndarray) -> np.ndarray:
        """Per entry of ``upto`` (positions, −1 allowed): latest position ≤ it with ``sel``, or −1."""
        if not self.n:
            return upto
        last = np.maximum.accumulate(np.where(sel, np.arange(self.n), -1))
        return np.where(upto >= 0, last[np.maximum(upto, 0)], -1)


def _timeline(group: FeatureGroup, sh: _Shared, start_ms: int, end_ms: int) -> _Timeline:
    keys = list(group.entity.keys)
    max_w = _ms(group.max_window)
    origin = start_ms - max_w
    type_col = group.source.event_type_column
    types = (Where(type_col, "in", tuple(group.source_event_types)),) if type_col else ()
    keep = (sh.ts > origin) & sh.masks([types])[types]
    for k in keys:
        keep &= sh.codes(k) >= 0
    rows = np.flatnonzero(keep)
    # Entity code: lexicographic over the key columns' sorted codes.
    ecode = np.zeros(len(rows), dtype=np.int64)
    for k in keys:
        c = sh.codes(k)
        width = int(c.max()) + 1 if len(c) else 1
        if len(rows) and int(ecode.max()) > (_I64_MAX - width) // width:
            raise ValueError(f"{group.name}: composite key space too large")
        ecode = ecode * width + c[rows]
    # The shared frame is sorted by (event_ts, event_id): a stable sort by entity gives
    # (keys, event_ts, event_id).
    order = np.argsort(ecode, kind="stable")
    ecode = ecode[order]
    pos = rows[order]
    n = len(pos)
    change = np.ones(n, dtype=bool)
    if n > 1:
        change[1:] = ecode[1:] != ecode[:-1]
    eidx = np.cumsum(change, dtype=np.int64) - 1
    ts = sh.ts[pos]
    span = (end_ms - origin) + max_w + 1
    n_entities = int(eidx[-1]) + 1 if n else 0
    if n_entities > _I64_MAX // span - 1:
        raise ValueError(f"{group.name}: too many entities × time range for one pass; split the range")
    t = eidx * span + (ts - origin)
    last = np.ones(n, dtype=bool)
    first = np.ones(n, dtype=bool)
    if n > 1:
        last[:-1] = t[1:] != t[:-1]
        first[1:] = last[:-1]
    q = np.flatnonzero(last & (ts >= start_ms))
    f = np.flatnonzero(first & (ts >= start_ms))
    return _Timeline(pos, t, eidx, q, f, t[q], origin, span, {})


def _mask_key(where: tuple[Where, ...]) -> tuple[Where, ...]:
    return tuple(sorted(set(where), key=repr))


def _float_series(name: str, values: np.ndarray, valid: np.ndarray | None = None) -> pl.Series:
    v = values.astype(np.float64)
    if valid is not None:
        v = np.where(valid, v, np.nan)
        return pl.Series(name, v, dtype=pl.Float64, nan_to_null=True)
    return pl.Series(name, v, dtype=pl.Float64)


@dataclass
class _Occurrences:
    """Distinct-count structure of one (column, filter set): the first position of each run of
    equal (entity, value, ts), with the time gap to the previous and next such run of the same
    (entity, value). Independent of the window, so shared by all windows."""

    pos: np.ndarray
    gap_prev: np.ndarray  # T − T_prev (int64 max if none)
    gap_next: np.ndarray  # T_next − T (int64 max if none)


def _occurrences(tl: _Timeline, values: np.ndarray, sel: np.ndarray) -> _Occurrences:
    pos = np.flatnonzero(sel)
    if not len(pos):
        empty = np.zeros(0, dtype=np.int64)
        return _Occurrences(empty, empty, empty)
    v = values[pos]
    n = max(tl.n, 1)
    if int(v.max()) <= (_I64_MAX - n) // n:
        # (value, position) as one unique int64: sorting it groups by value and, because positions
        # are in (entity, time) order, by entity then time inside a value. Unique keys → any sort.
        key = pl.Series(v * n + pos).sort().to_numpy()
        v, pos = key // n, key % n
    else:  # pragma: no cover - more distinct values than int64 can combine with positions
        order = np.lexsort((pos, v))
        v, pos = v[order], pos[order]
    e = tl.eidx[pos]
    t = tl.t[pos]
    same = np.zeros(len(pos), dtype=bool)
    same[1:] = (v[1:] == v[:-1]) & (e[1:] == e[:-1])
    # Collapse runs at the same T (several events of one value in one millisecond).
    dup = np.zeros(len(pos), dtype=bool)
    dup[1:] = same[1:] & (t[1:] == t[:-1])
    pos, t, same = pos[~dup], t[~dup], same[~dup]
    big = np.iinfo(np.int64).max
    gap_prev = np.full(len(pos), big, dtype=np.int64)
    gap_next = np.full(len(pos), big, dtype=np.int64)
    if len(pos) > 1:
        d = t[1:] - t[:-1]
        gap_prev[1:] = np.where(same[1:], d, big)
        gap_next[:-1] = np.where(same[1:], d, big)
    return _Occurrences(pos, gap_prev, gap_next)


def _distinct(tl: _Timeline, occ: _Occurrences, w: int, o: int = 0) -> np.ndarray:
    """Distinct count: a run at T contributes on [T, min(T_next, T + w)); see the module docstring.
    With an offset the value at ``tq`` is that of the virtual time ``tq − o``."""
    start = np.zeros(tl.n, dtype=np.int64)
    start[occ.pos] = 1
    # Ended by the next run of the same value (that run's own start replaces it).
    start[occ.pos[occ.gap_prev < w]] -= 1
    # Ended by the window: counted at the as-of rows whose window start passed T.
    win_end = np.zeros(tl.n, dtype=np.int64)
    win_end[occ.pos[occ.gap_next >= w]] = 1
    ps = np.concatenate(([0], np.cumsum(start)))
    pe = np.concatenate(([0], np.cumsum(win_end)))
    return ps[tl.upper(o)] - pe[tl.lower(w + o)]


class _GroupEngine:
    """Computes one group's features over a timeline, sharing masks and distinct structures."""

    def __init__(self, group: FeatureGroup, tl: _Timeline, shared: _Shared):
        self.group = group
        self.tl = tl
        self.shared = shared
        self.labels = shared.labels
        keys = [_mask_key(f.where) for f in group.features if not isinstance(f, Ratio)]
        self.masks = {k: m[tl.pos] for k, m in shared.masks(keys).items()}
        self._columns: dict[str, pl.Series] = {}
        self._occ: dict[tuple[str, tuple[Where, ...]], _Occurrences] = {}

    def column(self, name: str) -> pl.Series:
        """A source column in timeline order."""
        if name not in self._columns:
            self._columns[name] = self.shared.df[name].gather(self.tl.pos)
        return self._columns[name]

    def aggregate(self, f: Aggregate) -> pl.Series:
        tl = self.tl
        w = _ms(f.window)
        o = _ms(f.offset)
        m = self.masks[_mask_key(f.where)]
        if f.kind == "count":
            return pl.Series(f.name, tl.window_sum(m, w, o), dtype=pl.Int64)
        if f.kind == "time_since_last":
            # Strictly before the as-of time; with an offset every event of the window is.
            p = tl.latest(m, tl.f - 1 if o == 0 else tl.upper(o) - 1)
            valid = (p >= 0) & (tl.t[p] > tl.tq - o - w)
            return _float_series(f.name, (tl.tq - tl.t[p]) / 1000.0, valid)
        assert f.column is not None
        col = self.column(f.column)
        if f.kind in ("sum", "mean"):
            vals = col.cast(pl.Float64).to_numpy()
            nn = m & ~np.isnan(vals)
            total = tl.window_sum(np.where(nn, vals, 0.0), w, o)
            if f.kind == "sum":
                return _float_series(f.name, total)
            k = tl.window_sum(nn, w, o)
            return _float_series(f.name, total / np.maximum(k, 1), k > 0)
        if f.kind in ("min", "max"):
            return self._rolling_extreme(f, col, m, w, o)
        nn_m = m & col.is_not_null().to_numpy()
        if f.kind == "last":
            src = tl.latest(nn_m, tl.q if o == 0 else tl.upper(o) - 1)
            valid = (src >= 0) & (tl.t[src] > tl.tq - o - w)
            vals = col.gather(np.maximum(src, 0)) if tl.n else col
            return pl.select(pl.when(pl.Series(valid)).then(vals)).to_series().alias(f.name)
        if f.kind == "distinct_count":
            key = (f.column, _mask_key(f.where))
            if key not in self._occ:
                values = self.shared.codes(f.column)[tl.pos]
                self._occ[key] = _occurrences(tl, values, nn_m)
            return pl.Series(f.name, _distinct(tl, self._occ[key], w, o), dtype=pl.Int64)
        raise AssertionError(f.kind)

    def _rolling_extreme(self, f: Aggregate, col: pl.Series, m: np.ndarray, w: int, o: int) -> pl.Series:
        """min / max: Polars' rolling window over ``T`` (closed right). With an offset the as-of
        rows are not event rows, so one query row per as-of row is merged in at ``tq − o`` (after
        the event rows of the same ``T``, with a null value that the rolling window ignores)."""
        tl = self.tl
        v = pl.col("v")
        rolled = v.rolling_min_by if f.kind == "min" else v.rolling_max_by
        values = pl.select(pl.when(pl.Series(m)).then(col)).to_series().alias("v")
        if o == 0:
            frame = pl.DataFrame({"v": values, "_t": tl.t})
            out = frame.select(rolled("_t", window_size=f"{w}i", closed="right")).to_series()
            return out.gather(tl.q).alias(f.name)
        nq = len(tl.q)
        t_all = np.concatenate([tl.t, tl.tq - o])
        order = np.argsort(t_all, kind="stable")  # events first at equal T (they come first)
        v_all = pl.concat([values, pl.Series("v", [None] * nq, dtype=col.dtype)])
        frame = pl.DataFrame({"v": v_all.gather(order), "_t": t_all[order]})
        out = frame.select(rolled("_t", window_size=f"{w}i", closed="right")).to_series()
        where_q = np.empty(len(order), dtype=np.int64)
        where_q[order] = np.arange(len(order))
        return out.gather(where_q[tl.n :]).alias(f.name)

    def label_aggregate(self, f: LabelAggregate) -> pl.Series:
        tl = self.tl
        w = _ms(f.window)
        o = _ms(f.offset)
        d = _ms(f.availability_delay)
        m = self.masks[_mask_key(f.where)]
        if self.labels is None:
            raise ValueError(f"feature {f.name} needs labels; pass labels=…")
        lsrc = self.group.label_source
        assert lsrc is not None
        known = _known_label_ts(self.labels, f, lsrc)
        id_col = self.group.source.id_column
        k = self.column(id_col).to_frame("_id").join(known, on="_id", how="left", maintain_order="left")["_k"]
        pos = np.flatnonzero(m & k.is_not_null().to_numpy())
        base = tl.eidx[pos] * tl.span
        rel = tl.t[pos] - base
        # Clamp far-away label times so that the arithmetic cannot overflow.
        kk = np.clip(k.to_numpy()[pos].astype(np.int64), tl.origin - 1, tl.origin + tl.span)
        # In the window for T in [s + o, s + o + w); labelled from K + D on.
        a_rel = np.maximum(rel + o, kk - tl.origin + d)
        keep = a_rel < rel + o + w
        # Labelled event j counts for as-of T in [a, b): first as-of row at or after each bound.
        a = np.searchsorted(tl.tq, (base + a_rel)[keep], "left")
        b = np.searchsorted(tl.tq, (tl.t[pos] + o + w)[keep], "left")
        nq = len(tl.q)
        delta = np.bincount(a, minlength=nq + 1) - np.bincount(b, minlength=nq + 1)
        labelled = np.cumsum(delta[:nq])
        if f.kind == "label_count":
            return pl.Series(f.name, labelled, dtype=pl.Int64)
        if f.denominator == "matured":
            # Events of the window with event_ts <= tq − D: (tq − o − w, tq − max(o, D)].
            p = np.zeros(tl.n + 1, dtype=np.int64)
            np.cumsum(m, dtype=np.int64, out=p[1:])
            n_events = np.maximum(p[tl.upper(max(o, d))] - p[tl.lower(w + o)], 0)
        else:
            n_events = tl.window_sum(m, w, o)
        return _float_series(f.name, labelled / np.maximum(n_events, 1), n_events > 0)


def _known_label_ts(labels: pl.DataFrame, f: LabelAggregate, source: LabelSource) -> pl.DataFrame:
    """Per labelled event id (``_id``): the earliest label time (ms) among labels passing
    ``f.label_where``."""
    lf = labels.lazy()
    if f.label_where:
        lf = lf.filter(pl.all_horizontal([w.expr() for w in f.label_where]))
    return (
        lf.group_by(pl.col(source.key).alias("_id"))
        .agg(pl.col(source.timestamp).dt.epoch("ms").min().alias("_k"))
        .collect()
    )


def _ratio(f: Ratio, num: pl.Series, den: pl.Series) -> pl.Series:
    n = num.cast(pl.Float64)
    d = den.cast(pl.Float64)
    defined = d.is_not_null() & (d != 0)
    empty = pl.lit(0.0 if f.empty == "zero" else None, dtype=pl.Float64)
    return (
        pl.select(pl.when(defined & n.is_not_null()).then(n / d).when(~defined).then(empty).otherwise(None))
        .to_series()
        .alias(f.name)
    )


def _compute_prepared(
    group: FeatureGroup,
    shared: _Shared,
    start_ms: int,
    end_ms: int,
) -> pl.DataFrame:
    tl = _timeline(group, shared, start_ms, end_ms)
    engine = _GroupEngine(group, tl, shared)
    cols: dict[str, pl.Series] = {}
    for f in group.features:
        if isinstance(f, Aggregate):
            cols[f.name] = engine.aggregate(f)
        elif isinstance(f, LabelAggregate):
            cols[f.name] = engine.label_aggregate(f)
    for f in group.features:
        if isinstance(f, Ratio):
            cols[f.name] = _ratio(f, cols[f.numerator], cols[f.denominator])
    ts_col = group.source.timestamp
    out = shared.df.select([*group.entity.keys, pl.col(ts_col).alias(EVENT_TS)])[tl.pos[tl.q]]
    out = out.with_columns([cols[f.name].alias(f.name) for f in group.features])
    return out.select([pl.col(c).cast(dt) for c, dt in group.schema().items()])


def compute_feature_groups(
    groups: Sequence[FeatureGroup],
    events: Frame,
    start: datetime,
    end: datetime,
    labels: Frame | None = None,
) -> dict[str, pl.DataFrame]:
    """Compute several groups over one shared scan of ``events``; returns ``{group name: frame}``.

    The groups share one declared source (:mod:`risk_assets.sources`). ``events`` has that
    source's columns (its time and id columns are required; missing optional columns are read as
    null) and must cover ``(start − max_window, end)`` for exact values at the start of the range;
    events outside that span are ignored. ``labels`` (the groups' label source layout: its key,
    its time column and the columns of any label filter) is needed by groups with label
    aggregates; every label given is eligible, subject to each feature's availability delay.
    Output frames name the as-of time ``event_ts`` whatever the source calls its time column.
    """
    groups = list(groups)
    names = [g.name for g in groups]
    if len(set(names)) != len(names):
        raise ValueError("feature group names must be unique")
    start_ms, end_ms = _epoch_ms(start), _epoch_ms(end)
    if end_ms < start_ms:
        raise ValueError("end must not be before start")
    if not groups:
        return {}
    df = _prepare_events(events, groups, start_ms, end_ms)
    labelled = [g for g in groups if g.needs_labels]
    label_sources = {g.label_source for g in labelled}
    if len(label_sources) > 1:
        raise ValueError("groups computed together must share one label source")
    lsrc = label_sources.pop() if label_sources else None
    lab = _prepare_labels(labels, lsrc) if labelled else None
    shared = _Shared(df, lab, _source_of(groups), lsrc)
    return {g.name: _compute_prepared(g, shared, start_ms, end_ms) for g in groups}


def compute_feature_group(
    group: FeatureGroup,
    events: Frame,
    start: datetime,
    end: datetime,
    labels: Frame | None = None,
) -> pl.DataFrame:
    """Compute one feature group for the as-of range ``[start, end)``.

    Returns one row per (entity key, event_ts) with ``start <= event_ts < end`` among the group's
    events, sorted by (keys, event_ts), with the columns of ``group.schema()``. See
    :func:`compute_feature_groups` for the input contract.
    """
    return compute_feature_groups([group], events, start, end, labels)[group.name]
