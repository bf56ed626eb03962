"""Entity-hash shards: a batch run whose peak memory is set by configuration, not by the window.

Pure Polars, no Dagster. Every aggregation of a feature group is per entity (``spec``), so a group's
values for an entity depend only on that entity's events (and the labels of those events). Split the
entities into ``N`` shards by a hash of the group's entity key columns, compute each shard alone,
and the union of the shards' outputs is exactly the unsharded output: sorted by (keys, event_ts) it
is the same frame, so the offline store's bytes are the same.

* A shard's events are read with the predicate ``hash(keys) % N == i`` (and non-null keys, the key
  set's event types) pushed into the Parquet scan (``raw_reader.scan_events``), so only about ``1/N``
  of the key set's events of the window + lookback is in memory at once.
* Labels are joined by the label source's key (the labelled event's id): a shard keeps the labels
  of its own events (a semi-join), which are all its label aggregates can use.
* Groups with different entity keys shard differently: groups are computed per key set, each key set
  in ``N`` shards (``N = 1``: every group over one shared scan, exactly the unsharded engine).
* Shard outputs are spilled to Parquet in a scratch directory and assembled one group at a time
  (``lazy=True``: handed over as a scan, which the asset collects one day at a time), so the run
  holds one shard's input, or one group-day's output, never the whole window's input.

The hash is Polars' ``Expr.hash`` with a fixed seed: stable within one Polars version, which is all
exactness needs (all shards of a run are computed by one process). Rows with a null key, or of
event types no group of the key set reads, are not read at all when sharding (the engine drops them).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path

import polars as pl

from risk_assets.features.batch import Frame, compute_feature_groups
from risk_assets.features.offline_store import with_created_ts
from risk_assets.features.spec import EVENT_TS, FeatureGroup

SHARD_SEED = 0x5EED
"""Seed of the key hash (any fixed value: the shards of one run must agree, nothing else)."""

ScanEvents = Callable[[pl.Expr | None], pl.LazyFrame]
"""Given a row predicate (``None``: every row), the events of the window and its lookback, lazily."""


def shard_expr(keys: Sequence[str], shards: int) -> pl.Expr:
    """The shard (``0 … shards − 1``) of each row: a hash of its entity key columns, modulo ``shards``."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    key = pl.concat_str([pl.col(k).cast(pl.String) for k in keys], separator="\x1f")
    return (key.hash(seed=SHARD_SEED) % shards).cast(pl.Int64)


def shards_for(rows: int, max_rows_in_memory: int) -> int:
    """The shard count that keeps one shard's input at or under ``max_rows_in_memory`` rows on
    average (``0``: no cap, one shard)."""
    if max_rows_in_memory < 0:
        raise ValueError("max_rows_in_memory must not be negative")
    if max_rows_in_memory == 0 or rows <= max_rows_in_memory:
        return 1
    return math.ceil(rows / max_rows_in_memory)


def groups_by_keys(groups: Sequence[FeatureGroup]) -> dict[tuple[str, ...], list[FeatureGroup]]:
    """The groups per entity key set (the unit that shards together), in first-seen order."""
    out: dict[tuple[str, ...], list[FeatureGroup]] = {}
    for g in groups:
        out.setdefault(tuple(g.entity.keys), []).append(g)
    return out


def _shard_predicate(groups: Sequence[FeatureGroup], keys: Sequence[str], shards: int, i: int) -> pl.Expr:
    """Rows of shard ``i`` the groups can use: non-null keys, the groups' event types (the engine
    drops every other row, so leaving them out of the scan changes nothing but memory)."""
    keep = [shard_expr(keys, shards) == i, *[pl.col(k).is_not_null() for k in keys]]
    src = groups[0].source
    if src.event_type_column is not None:
        types = sorted({t for g in groups for t in g.source_event_types})
        keep.append(pl.col(src.event_type_column).is_in(types))
    return pl.all_horizontal(keep)


def _collect(lf: pl.LazyFrame) -> pl.DataFrame:
    return lf.collect(engine="streaming")


def iter_sharded(
    groups: Sequence[FeatureGroup],
    scan_events: ScanEvents,
    start: datetime,
    end: datetime,
    shards: int = 1,
    labels: Frame | None = None,
    created_ts: bool = False,
    scratch: Path | None = None,
    on_shard: Callable[[tuple[str, ...], int, int], None] | None = None,
    lazy: bool = False,
) -> Iterator[tuple[FeatureGroup, pl.DataFrame | pl.LazyFrame]]:
    """Compute ``groups`` over ``[start, end)`` shard by shard; yield each group's whole output, one
    group at a time (``(group, frame)``, frames as ``compute_feature_groups`` gives them).

    ``scan_events(predicate)`` reads the events (``None``: all of them, used when ``shards == 1``).
    ``created_ts``: add the offline store's ``created_ts`` from each shard's own events (the events
    must then carry the source's ingestion-time column). ``scratch``: where shard outputs are
    spilled (default: a temporary directory, removed at the end). ``on_shard(keys, shard, rows)`` is
    called after each shard is read, with its event count. ``lazy``: yield a ``LazyFrame`` over the
    spilled shard outputs instead (unsorted; valid until the next group is requested), so that a
    consumer can collect one day at a time and never hold a group's whole output.
    """
    groups = list(groups)
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    lab = None if labels is None or not any(g.needs_labels for g in groups) else labels.lazy().collect()

    def finish(results: dict[str, pl.DataFrame], events: pl.DataFrame, gs: list[FeatureGroup]) -> None:
        if created_ts:
            for g in gs:
                results[g.name] = with_created_ts(results[g.name], g, events)

    if shards == 1:
        events = _collect(scan_events(None))
        if on_shard is not None:
            on_shard((), 0, events.height)
        results = compute_feature_groups(groups, events, start, end, lab)
        finish(results, events, groups)
        del events
        for g in groups:
            frame = results.pop(g.name)
            yield g, frame.lazy() if lazy else frame
        return

    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        root = Path(tmp)
        for keys, gs in groups_by_keys(groups).items():
            for i in range(shards):
                events = _collect(scan_events(_shard_predicate(gs, keys, shards, i)))
                if on_shard is not None:
                    on_shard(keys, i, events.height)
                shard_labels = None
                if lab is not None and any(g.needs_labels for g in gs):
                    lsrc = next(g.label_source for g in gs if g.label_source is not None)
                    ids = events.select(pl.col(gs[0].source.id_column).alias(lsrc.key))
                    shard_labels = lab.join(ids, on=lsrc.key, how="semi")
                results = compute_feature_groups(gs, events, start, end, shard_labels)
                finish(results, events, gs)
                del events, shard_labels
                for g in gs:
                    results.pop(g.name).write_parquet(root / f"{g.name}.{i:05d}.parquet")
            for g in gs:
                paths = [root / f"{g.name}.{i:05d}.parquet" for i in range(shards)]
                if lazy:
                    yield g, pl.scan_parquet(paths)
                else:
                    yield g, pl.read_parquet(paths).sort([*keys, EVENT_TS])
                for p in paths:
                    p.unlink()


def compute_feature_groups_sharded(
    groups: Sequence[FeatureGroup],
    events: Frame,
    start: datetime,
    end: datetime,
    labels: Frame | None = None,
    shards: int = 1,
) -> dict[str, pl.DataFrame]:
    """``compute_feature_groups`` in ``shards`` entity-hash shards: the same frames. Pass a lazy
    scan (``pl.scan_parquet``) as ``events`` for each shard to read only its rows."""
    lf = events.lazy()
    scan: ScanEvents = lambda p: lf if p is None else lf.filter(p)  # noqa: E731
    return {g.name: frame for g, frame in iter_sharded(groups, scan, start, end, shards, labels)}
