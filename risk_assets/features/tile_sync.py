"""Offline → online tiles: the sync ships tiles built from the offline data (the raw archive).

Pure Python (Polars, redis-py through ``online_tiles``), no Dagster. A tile never crosses a UTC day
(every hop — 1 minute, 1 hour, 1 day — divides a day), so the tiles of day ``D`` are
``tiles.build_tiles`` over the events of ``D`` alone (and, for label aggregates, every label known
now). They are written as batch tiles with write-if-more-events (``online_tiles.py``): a tile the
stream path already wrote whole is skipped on equal counts... except that the batch wins ties, so a
recomputed day (late labels, corrections) replaces it; a tile holding fewer events than the stored
one (the archive has not caught up with the stream yet) never goes back.

Watermark
---------
Like the row sync (``online_sync.py``) the watermark is the set of archive objects already shipped
with their version tokens (``Lake.versions``), here of the *raw* archives (events, and labels for
groups with label aggregates), kept in the same state file under ``tiles``. A changed or new
archive hour is read once to find the event days it holds (an hour holds late events of earlier
days; a label holds its event's time), and only those days are rebuilt. A full resync rebuilds
every day inside the groups' longest horizon (:attr:`TileLayout.ttl_ms`) back from ``now`` (by
default the end of the newest archived day, :func:`archive_end`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import polars as pl

from risk_assets.features.online_store import OnlineStore
from risk_assets.features.online_tiles import TileWriteResult, tile_layout, write_batch_tiles
from risk_assets.features.spec import FeatureGroup
from risk_assets.features.tiles import build_tiles
from risk_assets.ingest.archive import archive_spec
from risk_assets.ingest.raw_reader import read_source
from risk_assets.lake import Lake

__all__ = ["TileSyncResult", "archive_end", "archive_prefix", "changed_days", "ship_days", "sync_tiles"]

DAY = timedelta(days=1)


@dataclass
class TileSyncResult:
    """What one tile sync shipped."""

    days: dict[str, list[str]] = field(default_factory=dict)  # group -> ISO days rebuilt
    tiles: int = 0
    applied: int = 0
    skipped: int = 0
    events: int = 0
    seconds: float = 0.0

    def add(self, group: str, day: date, events: int, written: TileWriteResult) -> None:
        self.days.setdefault(group, []).append(day.isoformat())
        self.tiles += written.tiles
        self.applied += written.applied
        self.skipped += written.skipped
        self.events += events


def archive_prefix(dataset: str) -> str:
    """The lake prefix of an archive dataset's hourly objects."""
    return dataset.rstrip("/") + "/"


def _day_start(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


def changed_days(
    lake: Lake, group: FeatureGroup, synced: Mapping[str, str]
) -> tuple[set[date], dict[str, str]]:
    """Event days of ``group`` touched by archive objects (events; labels too for a label group)
    that are new or rewritten since ``synced``; and those objects' tokens."""
    days: set[date] = set()
    tokens: dict[str, str] = {}
    sources = [group.source, *([group.label_source] if group.needs_labels and group.label_source else [])]
    for src in sources:
        spec = archive_spec(src)
        current = lake.versions(archive_prefix(spec.dataset))
        changed = sorted(p for p, tok in current.items() if synced.get(p) != tok)
        if not changed:
            continue
        tokens.update({p: current[p] for p in changed})
        time_col = "event_ts" if src is group.label_source else spec.time_column
        frame = lake.scan(changed, schema=spec.columns)
        if time_col not in frame.collect_schema().names():
            # labels without their event's time: every day of the horizon may hold the event
            days |= set(_horizon_days(group, datetime.now(UTC)))
            continue
        stamps = frame.select(pl.col(time_col).cast(pl.Datetime("ms", "UTC")).dt.date().unique()).collect()
        days |= {d for d in stamps.to_series().to_list() if d is not None}
    return days, tokens


def _current_tokens(lake: Lake, group: FeatureGroup) -> dict[str, str]:
    out: dict[str, str] = {}
    sources = [group.source, *([group.label_source] if group.needs_labels and group.label_source else [])]
    for src in sources:
        out.update(lake.versions(archive_prefix(archive_spec(src).dataset)))
    return out


_DT = re.compile(r"/dt=(\d{4}-\d{2}-\d{2})/")


def archive_end(lake: Lake, groups: Sequence[FeatureGroup]) -> datetime | None:
    """The end of the newest archived day of the groups' event sources (from the object paths,
    ``…/dt=YYYY-MM-DD/…``; nothing is read); ``None`` when the archive is empty."""
    newest: date | None = None
    for spec in {archive_spec(g.source).dataset for g in groups}:
        for path in lake.versions(archive_prefix(spec)):
            m = _DT.search("/" + path)
            if m:
                d = date.fromisoformat(m.group(1))
                newest = d if newest is None or d > newest else newest
    return None if newest is None else _day_start(newest) + DAY


def _horizon_days(group: FeatureGroup, now: datetime) -> list[date]:
    """Event days whose tiles a query up to ``now`` can need: back to ``now − horizon``, plus one
    day, because ``now`` defaults to the END of the newest archived day while the queries it serves
    fall inside that day (a payment at 23:00 on day D with a 28-day window delayed 7 days needs day
    D − 35 when ``now`` is D + 1 and the horizon 36 days). The Lua write trims by each entity's
    newest tile, so the extra day costs nothing where it is not needed."""
    span = timedelta(milliseconds=tile_layout(group).ttl_ms)
    first = (now - span - DAY).date()
    return [first + timedelta(days=i) for i in range((now.date() - first).days + 1)]


def ship_days(
    lake: Lake,
    store: OnlineStore,
    group: FeatureGroup,
    days: Iterable[date],
    result: TileSyncResult,
    *,
    now: datetime | None = None,
) -> None:
    """Build and write the tiles of ``group`` for each event day (batch tiles)."""
    now = now or datetime.now(UTC)
    labels = None
    for d in sorted(set(days)):
        start = _day_start(d)
        events = read_source(lake, group.source, start, start + DAY)
        if group.needs_labels and labels is None:
            assert group.label_source is not None
            labels = read_source(lake, group.label_source, start - DAY, now + DAY)
        tiles = build_tiles(group, events, labels if group.needs_labels else None)
        result.add(group.name, d, events.height, write_batch_tiles(store, group, tiles))


def sync_tiles(
    lake: Lake,
    store: OnlineStore,
    groups: Sequence[FeatureGroup],
    synced: dict[str, str],
    *,
    full: bool = False,
    now: datetime | None = None,
) -> tuple[TileSyncResult, dict[str, str]]:
    """One tile sync over ``groups``: the days of changed archive objects (``full``: every day of
    the horizon). The horizon ends at ``now`` — by default the end of the newest archived day
    (a replayed past stays servable; in production that is today) or the wall clock when the
    archive is empty. Returns what was shipped and the archive tokens to record as shipped (the
    caller saves them only once the store's epoch is confirmed, as for rows)."""
    t0 = time.perf_counter()
    now = now or archive_end(lake, groups) or datetime.now(UTC)
    result = TileSyncResult()
    done: dict[str, str] = {}
    for group in groups:
        horizon = set(_horizon_days(group, now))
        if full:
            days, tokens = horizon, _current_tokens(lake, group)
        else:
            days, tokens = changed_days(lake, group, synced)
        ship_days(lake, store, group, days & horizon, result, now=now)
        done.update(tokens)
    result.seconds = time.perf_counter() - t0
    return result, done
