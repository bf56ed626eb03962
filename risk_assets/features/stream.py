"""The stream feature engine: one validated micro-batch of events → feature rows of its as-of times.

Pure Python, no Dagster (the Kafka sensor and the stream job are thin wrappers around
:func:`process_events`). Values are not maintained incrementally: for every entity the batch touches,
the engine reads the entity's recent events from :class:`~risk_assets.features.stream_state.StreamState`
and calls the SAME :func:`~risk_assets.features.batch.compute_feature_groups` the offline pipeline
uses, restricted to the as-of times of the batch's own events. Equal inputs therefore give equal
values by construction; the only way stream and batch can differ is the *input*: events that had not
arrived yet when a row was computed.

Contract
--------
For a stream row of entity ``k`` at as-of time ``t``: if every event of ``k`` with ``event_ts`` in
``(t − offset − window, t − offset]`` (offset 0 unless the feature has one) was *known* when the batch
was processed, the value equals the batch value at
``t`` (exactly for counts/distinct counts/min/max/last, up to float rounding for sums, means and
ratios — both sides run the same code on the same rows, so in practice bit-identical).

*Known* = already in the state or in the batch, filtered to a deterministic visibility rule so that a
replay sees the same inputs as the first run:

* an event from a Kafka partition present in the batch is visible iff its offset is ≤ the batch's
  highest offset in that partition (offsets are arrival order);
* any other event (other partitions, or events without offsets such as an archive warm-up) is
  visible iff its ``ingest_ts`` ≤ the batch's highest ``ingest_ts``.

Lateness policy
---------------
* A late or out-of-order event (inside a batch or across batches) produces its own as-of row at its
  ``event_ts``, computed from everything visible at processing time — including events *after* it in
  event time, which do not affect it (windows look backwards only).
* Rows already emitted are not recomputed when an event lands inside their window later. Their
  online values may stay stale until the entity's next event (whose row is newer and wins by
  write-if-newer) or the offline → online sync; the offline store's batch recomputation holds the
  final values.
* An event older than the state's retention (``max_window + STATE_MARGIN``) relative to its entity's
  newest event may find its window partly trimmed: its row is computed from what is left (same rule).

Output
------
Per group: one row per (entity key, ``event_ts``) among the batch's events of the group (source event
types, non-null keys), sorted by (keys, ``event_ts``), columns ``group.schema()`` + ``created_ts`` =
the max ``ingest_ts`` of the batch's events of that group, entity and ``event_ts`` (a function of the
batch, so a replay gives identical rows, and a later correction of the same ``event_ts`` has a larger
``created_ts`` and wins in the online store).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl

from risk_assets.features.batch import compute_feature_groups
from risk_assets.features.spec import EVENT_TS, FeatureGroup
from risk_assets.features.stream_state import StreamState
from risk_assets.features.tiles import HOP_MS, TILE_START, build_tiles, tile_schema

__all__ = ["CREATED_TS", "output_schema", "process_events", "touched_tiles", "visible_mask"]

CREATED_TS = "created_ts"
_TS = pl.Datetime("ms", "UTC")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def output_schema(group: FeatureGroup) -> dict[str, pl.DataType]:
    """Columns of a stream row (and of a feature buffer row): ``group.schema()`` + ``created_ts``."""
    return {**group.schema(), CREATED_TS: _TS}


def _empty(group: FeatureGroup) -> pl.DataFrame:
    return pl.DataFrame(schema=output_schema(group))


def visible_mask(state_events: pl.DataFrame, batch: pl.DataFrame) -> pl.Series:
    """Which of ``state_events`` (frames of :meth:`StreamState.add_and_fetch`) the batch may see.

    See the module docstring: offsets decide within the batch's own partitions, ``ingest_ts``
    elsewhere. The batch's own events are always visible.
    """
    cutoff = batch["ingest_ts"].cast(_TS).max()
    by_time = pl.col("ingest_ts") <= pl.lit(cutoff, dtype=_TS)
    if "_partition" not in batch.columns or "_offset" not in batch.columns:
        return state_events.select(by_time.alias("visible")).to_series()
    maxoff = (
        batch.filter(pl.col("_partition") >= 0)
        .group_by("_partition")
        .agg(pl.col("_offset").max().alias("_max_offset"))
        .with_columns(pl.col("_partition").cast(pl.Int32))
    )
    if maxoff.height == 0:
        return state_events.select(by_time.alias("visible")).to_series()
    joined = state_events.select("_partition", "_offset", "ingest_ts").join(
        maxoff, on="_partition", how="left", maintain_order="left"
    )
    rule = (
        pl.when(pl.col("_max_offset").is_not_null())
        .then(pl.col("_offset") <= pl.col("_max_offset"))
        .otherwise(by_time)
    )
    return joined.select(rule.alias("visible")).to_series()


def _new_as_of(group: FeatureGroup, batch: pl.DataFrame) -> pl.DataFrame:
    """(keys, event_ts, created_ts) of the batch's own rows of ``group``."""
    keys = list(group.entity.keys)
    return (
        batch.lazy()
        .filter(
            pl.col("event_type").is_in(list(group.source_event_types)),
            *[pl.col(k).is_not_null() for k in keys],
        )
        .group_by([*keys, EVENT_TS])
        .agg(pl.col("ingest_ts").max().alias(CREATED_TS))
        .collect()
    )


def touched_tiles(group: FeatureGroup, seen: pl.DataFrame, batch: pl.DataFrame) -> pl.DataFrame:
    """The complete tiles (``tiles.build_tiles`` over every visible event of the entity) of every
    (entity, hop, tile) that one of the batch's own events of ``group`` falls into.

    ``seen``: the visible state events of the entities the batch touched (they include the batch's
    own). A tile holds every event of its time span the state knows, so it only ever grows between
    micro-batches, and a replayed range (same visible events) builds the same tile: written with
    write-if-more-events (``online_tiles.py``) the stream path is exact per tile and idempotent."""
    keys = list(group.entity.keys)
    own = batch.filter(
        pl.col("event_type").is_in(list(group.source_event_types)), *[pl.col(k).is_not_null() for k in keys]
    ).select(*keys, pl.col(EVENT_TS).dt.epoch("ms").alias("_t"))
    built = build_tiles(group, seen)
    if own.height == 0 or built.height == 0:
        return built.clear()
    hops = built.select(pl.col(HOP_MS).unique())
    wanted = (
        own.join(hops, how="cross")
        .select(*keys, HOP_MS, (pl.col("_t") - pl.col("_t") % pl.col(HOP_MS)).alias(TILE_START))
        .unique()
    )
    cast = [pl.col(c).cast(built.schema[c]) for c in (*keys, HOP_MS, TILE_START)]
    return built.join(wanted.select(cast), on=[*keys, HOP_MS, TILE_START], how="semi", maintain_order="left")


def process_events(
    events: pl.DataFrame,
    groups: Sequence[FeatureGroup] | None,
    state: StreamState,
    *,
    tiles: dict[str, pl.DataFrame] | None = None,
) -> dict[str, pl.DataFrame]:
    """Add a validated micro-batch to ``state`` and compute the stream rows of its as-of times.

    ``events``: the valid frame of :func:`risk_assets.ingest.archive.decode_messages` (archive
    layout incl. ``ingest_ts``; ``_partition``/``_offset`` are used when present). ``groups``: a
    subset of ``state.groups`` (``None``: all of them). Returns ``{group name: frame}`` for every
    requested group (empty frames included) in :func:`output_schema`. See the module docstring for
    the contract, the visibility rule and the lateness policy. Raises
    :class:`~risk_assets.features.stream_state.StreamStateError` when Redis fails.

    ``tiles``: when given, filled with ``{group name: tile frame}`` — the complete tiles the batch's
    events fall into (:func:`touched_tiles`), for the online tile store.
    """
    groups = tuple(state.groups if groups is None else groups)
    unknown = [g.name for g in groups if g not in state.groups]
    if unknown:
        raise ValueError(f"groups {unknown} are not part of the stream state's groups")
    if tiles is not None:
        tiles.clear()
        tiles.update({g.name: pl.DataFrame(schema=tile_schema(g)) for g in groups})
    if events.height == 0 or not groups:
        return {g.name: _empty(g) for g in groups}
    batch = events.with_columns(pl.col(EVENT_TS).cast(_TS), pl.col("ingest_ts").cast(_TS))
    if batch["ingest_ts"].null_count() or batch[EVENT_TS].null_count():
        raise ValueError("events must have non-null event_ts and ingest_ts")
    fetched = state.add_and_fetch(batch)
    out: dict[str, pl.DataFrame] = {}
    for entity_name, frame in fetched.items():
        mine = [g for g in groups if g.entity.name == entity_name]
        if not mine:
            continue
        seen = frame.filter(visible_mask(frame, batch))
        new = {g.name: _new_as_of(g, batch) for g in mine}
        ts_all = np.concatenate([n[EVENT_TS].dt.epoch("ms").to_numpy() for n in new.values()])
        if len(ts_all) == 0:
            continue
        start = _EPOCH + timedelta(milliseconds=int(ts_all.min()))
        end = _EPOCH + timedelta(milliseconds=int(ts_all.max()) + 1)
        values = compute_feature_groups(mine, seen, start, end)
        if tiles is not None:
            for g in mine:
                tiles[g.name] = touched_tiles(g, seen, batch)
        for g in mine:
            keys = [*g.entity.keys, EVENT_TS]
            rows = values[g.name].join(new[g.name], on=keys, how="inner", maintain_order="left")
            out[g.name] = rows.select([pl.col(c).cast(t) for c, t in output_schema(g).items()])
    return {g.name: out.get(g.name, _empty(g)) for g in groups}
