"""The spine-driven offline engine: any feature group at any (entity keys, time) rows, exactly
under semantics v2 (:mod:`risk_assets.features.spec`).

Pure Polars + NumPy, no Dagster. Training sets (features at each labelled event's time), the skew
audit (features at the served time) and backfills call :func:`compute_at`; it never joins stored
snapshots. How (one group, ``n`` events, ``m`` spine rows):

1. :func:`risk_assets.features.tiles.prepare_events` keeps the group's events (types, non-null
   keys), evaluates every feature's filters once, hashes distinct-count columns (the 64-bit
   :func:`~risk_assets.features.tiles.value_hash` the online tiles use) and attaches first label
   times; events are sorted by (entity, event_ts, event_id).
2. Spine keys get the events' entity numbers (a hash join; unknown keys: empty windows).
3. Every feature is a query over :class:`risk_assets.features.ranges.Layout`: one ``searchsorted``
   pair per distinct (window, offset, hop) finds each spine row's run of events; counts/sums/means
   are prefix-sum differences, min/max a sparse table, last/time-since-last the latest selected
   event of the run, distinct counts and label aggregates interval counts (see ``ranges.py``).

Cost: ``O(n log n + m log n)``, all vectorized; memory a few arrays of length ``n`` and ``m`` (a
min/max sparse table holds ``n · log2(longest run)`` values).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import numpy as np
import polars as pl

from risk_assets.features.ranges import Layout, WindowSpec
from risk_assets.features.spec import EVENT_TS, Aggregate, FeatureGroup, LabelAggregate, Ratio, _ms
from risk_assets.features.tiles import _TS, hop_ms, mask_name, prepare_events

Frame = pl.DataFrame | pl.LazyFrame
_TS_DTYPE = pl.Datetime("ms", "UTC")


def window_spec(f: Aggregate | LabelAggregate) -> WindowSpec:
    return WindowSpec(_ms(f.window), _ms(f.offset), hop_ms(f))


def _spine_frame(group: FeatureGroup, spine: Frame, timestamp: str) -> pl.DataFrame:
    df = spine.lazy().collect() if isinstance(spine, pl.LazyFrame) else spine
    missing = [c for c in (*group.entity.keys, timestamp) if c not in df.columns]
    if missing:
        raise ValueError(f"{group.name}: spine lacks column(s) {missing}")
    if not isinstance(df.schema[timestamp], pl.Datetime | pl.Date):
        raise ValueError(f"spine column {timestamp!r} must be a Datetime, got {df.schema[timestamp]}")
    keys = [pl.col(k).cast(group.source.dtype(k)) for k in group.entity.keys]
    return df.select([*keys, pl.col(timestamp).cast(_TS_DTYPE).alias(EVENT_TS)])


def _entity_numbers(
    keys: list[str], events: pl.DataFrame, spine: pl.DataFrame
) -> tuple[np.ndarray, np.ndarray]:
    """Entity number per event (arbitrary order) and per spine row (−1: no event)."""
    if not events.height:
        return np.zeros(0, dtype=np.int64), np.full(spine.height, -1, dtype=np.int64)
    uniq = (
        events.select(keys)
        .unique(maintain_order=True)
        .with_row_index("_e")
        .with_columns(pl.col("_e").cast(pl.Int64))
    )
    ev = events.select(keys).join(uniq, on=keys, how="left", maintain_order="left")["_e"].to_numpy()
    sp = spine.select(keys).join(uniq, on=keys, how="left", maintain_order="left", nulls_equal=False)
    return ev, sp["_e"].fill_null(-1).to_numpy()


def compute_prepared(group: FeatureGroup, events: pl.DataFrame, spine: pl.DataFrame) -> dict[str, pl.Series]:
    """Feature columns (spine order) from prepared events (:func:`tiles.prepare_events`) and a
    spine of (keys, ``event_ts``)."""
    keys = list(group.entity.keys)
    e_of, q_e = _entity_numbers(keys, events, spine)
    order = np.argsort(e_of, kind="stable")  # events are (ts, id)-sorted: → (entity, ts, id)
    # Keys, ids and filter-only columns are done with (entity numbers, masks): gather the rest only.
    used = {f.column for f in group.features if isinstance(f, Aggregate) and f.column is not None}
    keep = [c for c in events.columns if c.startswith("_") or c in used]
    ev = events.select(keep)[order] if events.height else events.select(keep)
    eidx = e_of[order]
    ts = ev[_TS].to_numpy().astype(np.int64, copy=False) if ev.height else np.zeros(0, dtype=np.int64)
    q_t = spine[EVENT_TS].dt.epoch("ms").fill_null(np.iinfo(np.int64).min // 4).to_numpy()
    q_e = np.where(spine[EVENT_TS].is_null().to_numpy(), -1, q_e)
    lay = Layout(eidx, ts, q_e, q_t, points=True, max_reach=_ms(group.max_reach))
    cols: dict[str, pl.Series] = {}
    prefixes: dict[tuple[str, object], np.ndarray] = {}
    for i, f in enumerate(group.features):
        if isinstance(f, Ratio):
            continue
        ws = window_spec(f)
        m = ev[mask_name(i)].to_numpy() if ev.height else np.zeros(0, dtype=bool)
        if isinstance(f, LabelAggregate):
            k = ev[f"_k{i}"]
            item = np.flatnonzero(m & k.is_not_null().to_numpy())
            labelled = lay.labelled(ws, item, k.to_numpy()[item].astype(np.int64), _ms(f.availability_delay))
            if f.kind == "label_count":
                cols[f.name] = pl.Series(f.name, labelled, dtype=pl.Int64)
                continue
            if f.denominator == "matured":
                n = lay.matured(ws, m, _ms(f.availability_delay))
            else:
                n = lay.count(ws, m)
            cols[f.name] = _floats(f.name, labelled / np.maximum(n, 1), n > 0)
            continue
        cols[f.name] = _aggregate(f, i, ws, lay, ev, m, q_t, prefixes)
    for f in group.features:
        if isinstance(f, Ratio):
            cols[f.name] = _ratio(f, cols[f.numerator], cols[f.denominator])
    return cols


def _floats(name: str, values: np.ndarray, valid: np.ndarray | None = None) -> pl.Series:
    v = values.astype(np.float64)
    if valid is None:
        return pl.Series(name, v, dtype=pl.Float64)
    return pl.Series(name, np.where(valid, v, np.nan), dtype=pl.Float64, nan_to_null=True)


def _aggregate(
    f: Aggregate, i: int, ws: WindowSpec, lay: Layout, ev: pl.DataFrame, m: np.ndarray, q_t: np.ndarray,
    prefixes: dict[tuple[str, object], np.ndarray],
) -> pl.Series:  # fmt: skip
    if f.kind == "count":
        return pl.Series(f.name, lay.count(ws, m), dtype=pl.Int64)
    if f.kind == "time_since_last":
        p, ok = lay.latest(ws, m)
        return _floats(f.name, (q_t - lay.x[p]) / 1000.0 if lay.n else np.zeros(len(q_t)), ok)
    assert f.column is not None
    col = ev[f.column]
    nn = m & col.is_not_null().to_numpy() if ev.height else m
    if f.kind in ("sum", "mean"):
        key = (f.column, i)
        vals = np.where(nn, col.cast(pl.Float64).fill_null(0.0).to_numpy(), 0.0) if ev.height else np.zeros(0)
        prefixes[key] = lay.float_prefix(vals)
        total = lay.fsum(ws, vals, prefixes[key])
        if f.kind == "sum":
            return _floats(f.name, total)
        k = lay.count(ws, nn)
        return _floats(f.name, total / np.maximum(k, 1), k > 0)
    if f.kind in ("min", "max"):
        dtype = col.dtype
        raw = col.fill_null(0).to_numpy() if ev.height else np.zeros(0, dtype=np.int64)
        raw = raw.astype(np.float64 if dtype.is_float() else np.int64)
        v, ok = lay.extreme(ws, raw, nn, f.kind)
        s = pl.Series(f.name, v).cast(dtype, strict=False) if dtype.is_float() else pl.Series(f.name, v)
        return pl.select(pl.when(pl.Series(ok)).then(s).cast(dtype)).to_series().alias(f.name)
    if f.kind == "last":
        p, ok = lay.latest(ws, nn)
        vals = col.gather(p) if ev.height else pl.Series(f.name, [None] * len(q_t), dtype=col.dtype)
        return pl.select(pl.when(pl.Series(ok)).then(vals)).to_series().alias(f.name)
    if f.kind == "distinct_count":
        code_key, item_key = ("_codes", f.column), ("_items", f.column)
        if code_key not in prefixes:
            # Per column, shared by its features: every event ordered by (value hash, event) — one
            # stable sort; a feature takes its selected events in that order.
            code = ev[f"_h{i}"].fill_null(0).to_numpy()
            prefixes[code_key] = code
            prefixes[item_key] = np.argsort(code, kind="stable")
        code, items = prefixes[code_key], prefixes[item_key]
        item_s = items[nn[items]]
        counts = lay.distinct(ws, item_s, code[item_s], grouped=True, unique_items=True)
        return pl.Series(f.name, counts, dtype=pl.Int64)
    raise AssertionError(f.kind)


def _ratio(f: Ratio, num: pl.Series, den: pl.Series) -> pl.Series:
    n = num.cast(pl.Float64)
    d = den.cast(pl.Float64)
    defined = d.is_not_null() & (d != 0)
    empty = pl.lit(0.0 if f.empty == "zero" else None, dtype=pl.Float64)
    out = pl.select(pl.when(defined & n.is_not_null()).then(n / d).when(~defined).then(empty).otherwise(None))
    return out.to_series().alias(f.name)


def compute_at(
    group: FeatureGroup,
    events: Frame,
    spine: Frame,
    labels: Frame | None = None,
    *,
    timestamp: str = EVENT_TS,
) -> pl.DataFrame:
    """The group's v2 values at every spine row.

    ``events``: the group's source layout, covering ``[min spine time − max_reach, max spine
    time)`` for exact values (other events are harmless: a window never sees them); any order —
    values are final, late events included. ``spine``: the entity key columns and ``timestamp``
    (a Datetime; any other columns are ignored); any order, duplicates allowed. ``labels``: the
    label source layout, required when the group has label aggregates.

    Returns one row per spine row, in spine order: the key columns, ``event_ts`` (the query time)
    and the features, with ``group.schema()``. A row whose key has no event gets empty-window
    values (0 counts, null means, …); so does a null key or time.
    """
    sp = _spine_frame(group, spine, timestamp)
    ev = prepare_events(group, events, labels)
    if group.needs_labels and labels is None:
        raise ValueError(f"{group.name}: label aggregates need labels; pass labels=…")
    cols = compute_prepared(group, ev, sp)
    out = sp.with_columns([cols[f.name].alias(f.name) for f in group.features])
    # A row without an entity (a null key) or without a time has no value at all, not an empty window.
    absent = pl.any_horizontal([pl.col(c).is_null() for c in (*group.entity.keys, EVENT_TS)])
    out = out.with_columns([pl.when(~absent).then(pl.col(f.name)).alias(f.name) for f in group.features])
    return out.select([pl.col(c).cast(dt) for c, dt in group.schema().items()])


def history(groups: Sequence[FeatureGroup]) -> timedelta:
    """How much event history before the first query time :func:`features_at` needs: the longest
    ``max_reach`` of ``groups`` (window + hop + offset)."""
    return max((g.max_reach for g in groups), default=timedelta(0))


def features_at(
    spine: pl.DataFrame,
    events: Frame,
    groups: Sequence[FeatureGroup],
    labels: Frame | None = None,
    *,
    timestamp: str = EVENT_TS,
    prefix: bool = True,
) -> pl.DataFrame:
    """``spine`` (any columns, including every group's entity keys and ``timestamp``) with every
    feature of ``groups`` at the row's time appended as ``{group}__{feature}`` (``prefix``) — the
    v2 value at that time: the event being scored (and anything at its millisecond) is not in its
    own windows. ``events`` must cover ``[min time − history(groups), max time)``; ``labels`` the
    labels of those events (groups with label aggregates). Spine rows keep their order."""
    ev = events.collect() if isinstance(events, pl.LazyFrame) else events
    lab = labels.collect() if isinstance(labels, pl.LazyFrame) else labels
    out = [spine]
    for g in groups:
        vals = compute_at(g, ev, spine, lab if g.needs_labels else None, timestamp=timestamp)
        names = {f: f"{g.name}__{f}" if prefix else f for f in g.feature_names}
        out.append(vals.select([pl.col(f).alias(n) for f, n in names.items()]))
    return pl.concat(out, how="horizontal")
