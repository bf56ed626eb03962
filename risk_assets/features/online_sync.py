"""Offline → online sync: write every offline feature row that is newer than what Redis holds.

The watermark is not an event time. It is the set of offline objects (one per group, version and
day) already synced, with their version tokens (``Lake.versions``). A day that a batch run rewrote —
for instance because very late events arrived and the day was recomputed — has a new token, so
its rows are offered again. Popular feature stores track only event time and miss exactly those
rows. Per entity only the newest row of a changed object is sent, and the online store writes it
only if it is newer than the value already there (``(event_ts, created_ts, source)``, atomically in
Redis; batch rows are written as ``SOURCE_BATCH`` and win ties with stream rows). Re-sending
therefore never double-applies, and a skipped or failed tick is caught up by the next.

Tiles (feature semantics v2, what risk-serve reads): every tick also ships the tiles of the event
days whose raw archive objects changed, built from the archive (``tile_sync.py``; a full resync
ships every day inside the groups' horizon), as batch tiles with write-if-more-events. Their
watermark (``tiles`` in the state) moves with the rows' under the same epoch rules. The snapshot
rows are still shipped for the row audit (``online_audit.py``); risk-serve no longer reads them.

A watermark kept in the lake says what was *sent*, not what Redis still *holds*: a Redis restarted
without persistence comes back empty and an incremental tick would top it up with a few changed
days and report success. So the sync also records the **epoch** it synced into — the token of the
online store's epoch marker (``store_epoch.py``), a key that exists only while the store's content
is complete:

* marker present and equal to the state's epoch → **incremental tick** (changed objects only); the
  marker is read again after the writes, and if it vanished or changed meanwhile (Redis restarted
  mid-tick and redis-py reconnected to the empty server) the tick turns into a full resync;
* marker missing (emptied, flushed, new) or different (another incarnation, a lost state file) →
  **full resync**: every object of every group and the stream feature log (``feature_log/…``, the
  newest logged stream row per entity, written as ``SOURCE_STREAM``) are written again, then the
  marker is committed — only if its pending key survived the whole resync, i.e. nothing was lost
  while it ran; otherwise the resync starts over (bounded by ``max_passes``, then it raises).

The state is a small JSON object in the lake, written only after Redis acknowledged every write of
the tick and the epoch was confirmed: nothing is marked synced that was not written into the store
as it is now.

Repair (:func:`repair`): when the consistency audit (``online_audit.py``) finds mismatches, the
affected groups are resynced in full (every object and the log — which rewrites the sampled
mismatched entities with everything else), their state entries are refreshed, and what was
rewritten is reported. A row whose online value is *newer* than anything in the lake is left alone
and counted (write-if-newer cannot and should not take it back).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import polars as pl

from risk_assets.features.ingestion import group_layout, read_feature_log
from risk_assets.features.offline_store import group_prefix
from risk_assets.features.online_audit import AuditResult
from risk_assets.features.online_store import SOURCE_BATCH, SOURCE_STREAM, OnlineStore, OnlineStoreError
from risk_assets.features.spec import FeatureGroup
from risk_assets.features.tile_sync import TileSyncResult, sync_tiles
from risk_assets.lake import Lake

__all__ = [
    "STATE_PATH",
    "RepairResult",
    "SyncResult",
    "SyncState",
    "changed_objects",
    "newest_per_entity",
    "repair",
    "resync_reason",
    "sync",
]

STATE_PATH = "_state/online_sync.json"
MAX_PASSES = 3


@dataclass
class SyncState:
    """Version tokens of the offline objects already synced, by relative path, and the online
    store epoch they were synced into."""

    synced: dict[str, str] = field(default_factory=dict)
    last_success: str | None = None
    epoch: str | None = None
    last_full_resync: str | None = None
    tiles: dict[str, str] = field(default_factory=dict)  # raw archive objects shipped as tiles

    @staticmethod
    def load(lake: Lake) -> SyncState:
        if not lake.exists(STATE_PATH):
            return SyncState()
        data = json.loads(lake.read_bytes(STATE_PATH))
        return SyncState(
            synced=dict(data.get("synced", {})),
            last_success=data.get("last_success"),
            epoch=data.get("epoch"),
            last_full_resync=data.get("last_full_resync"),
            tiles=dict(data.get("tiles", {})),
        )

    def save(self, lake: Lake) -> None:
        body = {
            "epoch": self.epoch,
            "last_success": self.last_success,
            "last_full_resync": self.last_full_resync,
            "synced": dict(sorted(self.synced.items())),
            "tiles": dict(sorted(self.tiles.items())),
        }
        lake.write_bytes(STATE_PATH, json.dumps(body, indent=1).encode())


@dataclass
class SyncResult:
    objects: int = 0
    rows_offered: int = 0
    applied: int = 0
    skipped: int = 0
    entities: int = 0
    newest_created: datetime | None = None
    seconds: float = 0.0
    by_group: dict[str, int] = field(default_factory=dict)
    full_resync: bool = False
    reason: str = ""  # why a full resync ran ("" for an incremental tick)
    epoch: str | None = None  # the epoch the rows were written into
    passes: int = 0  # 1 normally; more when Redis lost its data during a pass
    log_rows_offered: int = 0  # stream feature-log rows offered by a full resync
    log_applied: int = 0
    tiles: TileSyncResult = field(default_factory=TileSyncResult)  # tiles shipped (tile_sync.py)

    @property
    def lag_seconds(self) -> float | None:
        """How far the newest synced value trails the wall clock."""
        if self.newest_created is None:
            return None
        return max(0.0, (datetime.now(UTC) - self.newest_created).total_seconds())


@dataclass
class RepairResult:
    """What :func:`repair` did after a failed audit."""

    groups: list[str] = field(default_factory=list)  # groups resynced in full
    sampled_mismatched: int = 0  # mismatched entities in the audit's sample
    online_newer: int = 0  # of those, online rows newer than the lake's (left alone)
    rows_offered: int = 0
    applied: int = 0  # rows rewritten (the sampled mismatched ones among them)
    full_resync: bool = False  # the marker was gone: the whole store was resynced instead
    seconds: float = 0.0


def resync_reason(lake: Lake, store: OnlineStore) -> str | None:
    """Why the store needs a full resync now — its epoch marker is missing, or is not the epoch the
    sync state recorded — or ``None``. Cheap (one ``GET``, one small lake read): a sensor can poll
    it so an emptied Redis is resynced within a minute instead of at the next scheduled tick."""
    marker = store.epoch()
    if marker is None:
        return "the online store's epoch marker is missing (Redis emptied, flushed or never synced)"
    state = SyncState.load(lake)
    if marker != state.epoch:
        return f"the online store's epoch {marker} is not the one the sync recorded ({state.epoch})"
    return None


def changed_objects(lake: Lake, group: FeatureGroup, state: SyncState) -> dict[str, str]:
    """Offline objects of ``group``'s current version that are new or rewritten since the last sync."""
    current = lake.versions(group_prefix(group))
    return {path: token for path, token in current.items() if state.synced.get(path) != token}


def newest_per_entity(frame: pl.DataFrame, group: FeatureGroup) -> pl.DataFrame:
    """The newest row (by event_ts, then created_ts) of every entity in ``frame``."""
    keys = list(group.entity.keys)
    return frame.sort([*keys, "event_ts", "created_ts"]).unique(subset=keys, keep="last", maintain_order=True)


def _columns(group: FeatureGroup) -> list[str]:
    return [*group.entity.keys, "event_ts", "created_ts", *group.feature_names]


def _write_objects(
    lake: Lake, store: OnlineStore, group: FeatureGroup, paths: Iterable[str], result: SyncResult
) -> None:
    """Newest row per entity of the offline objects ``paths`` → Redis as batch rows."""
    paths = sorted(paths)
    if not paths:
        return
    latest = newest_per_entity(lake.scan(paths).select(_columns(group)).collect(), group)
    written = store.write(group_layout(group), latest, source=SOURCE_BATCH)
    result.objects += len(paths)
    result.rows_offered += latest.height
    result.applied += written.applied
    result.skipped += written.skipped
    result.entities += latest.height
    result.by_group[group.name] = result.by_group.get(group.name, 0) + written.applied
    if latest.height:
        newest = latest["created_ts"].max()
        if newest is not None and (result.newest_created is None or newest > result.newest_created):
            result.newest_created = newest  # type: ignore[assignment]


def _write_log(lake: Lake, store: OnlineStore, group: FeatureGroup, result: SyncResult) -> None:
    """Newest logged stream row per entity → Redis as stream rows (a full resync only)."""
    log = read_feature_log(lake, group).select(_columns(group)).collect()
    if log.height == 0:
        return
    latest = newest_per_entity(log, group)
    written = store.write(group_layout(group), latest, source=SOURCE_STREAM)
    result.log_rows_offered += latest.height
    result.log_applied += written.applied
    result.applied += written.applied
    result.skipped += written.skipped
    result.by_group[group.name] = result.by_group.get(group.name, 0) + written.applied


def _resync_groups(
    lake: Lake, store: OnlineStore, groups: Sequence[FeatureGroup], result: SyncResult
) -> dict[str, str]:
    """Write every offline object and the feature log of ``groups``; returns the objects' tokens."""
    done: dict[str, str] = {}
    for group in groups:
        current = lake.versions(group_prefix(group))
        _write_objects(lake, store, group, current, result)
        _write_log(lake, store, group, result)
        done.update(current)
    return done


def _finish(lake: Lake, state: SyncState, result: SyncResult, t0: float) -> SyncResult:
    now = datetime.now(UTC).isoformat()
    state.last_success = now
    if result.full_resync:
        state.last_full_resync = now
    state.save(lake)
    result.seconds = time.perf_counter() - t0
    return result


def sync(
    lake: Lake,
    store: OnlineStore,
    groups: Sequence[FeatureGroup],
    state: SyncState | None = None,
    *,
    max_passes: int = MAX_PASSES,
    now: datetime | None = None,
) -> SyncResult:
    """One sync tick over ``groups``: incremental, or a full resync when the store's epoch marker is
    missing or not the state's (see the module docstring). Raises (without saving state) if Redis
    fails, or if it loses its data in each of ``max_passes`` passes."""
    t0 = time.perf_counter()
    state = state or SyncState.load(lake)
    result = SyncResult()
    for _ in range(max_passes):
        result.passes += 1
        marker = store.epoch()
        if marker is not None and marker == state.epoch and not result.full_resync:
            done: dict[str, str] = {}
            for group in groups:
                changed = changed_objects(lake, group, state)
                _write_objects(lake, store, group, changed, result)
                done.update(changed)
            result.tiles, tiles_done = sync_tiles(lake, store, groups, state.tiles, now=now)
            if store.epoch() == marker:
                state.synced.update(done)
                state.tiles.update(tiles_done)
                result.epoch = marker
                return _finish(lake, state, result, t0)
            result.reason = "the epoch marker vanished during an incremental tick (Redis lost its data)"
            result.full_resync = True
            continue
        result.full_resync = True
        if not result.reason:
            result.reason = (
                "the epoch marker is missing (Redis emptied or never synced)"
                if marker is None
                else f"the epoch marker {marker} is not the state's {state.epoch}"
            )
        token = store.begin_epoch() if marker is None else marker
        done = _resync_groups(lake, store, groups, result)
        result.tiles, tiles_done = sync_tiles(lake, store, groups, {}, full=True, now=now)
        committed = store.commit_epoch(token) if marker is None else store.epoch() == marker
        if committed:
            state.synced = done
            state.tiles = tiles_done
            state.epoch = token
            result.epoch = token
            return _finish(lake, state, result, t0)
        result.reason += "; Redis lost its data again during the resync"
    raise OnlineStoreError(
        f"online sync: the store at {store.url} lost its data during each of {max_passes} passes "
        f"({result.reason}); nothing recorded as synced"
    )


def repair(
    lake: Lake,
    store: OnlineStore,
    groups: Sequence[FeatureGroup],
    audit_result: AuditResult,
    state: SyncState | None = None,
) -> RepairResult:
    """Repair what a failed audit found: resync the affected groups in full (objects and log),
    which rewrites the sampled mismatched entities with all others; refresh their state entries.
    When the epoch marker is gone the whole store is resynced (:func:`sync`). Raises like
    :func:`sync`."""
    t0 = time.perf_counter()
    state = state or SyncState.load(lake)
    audits = {a.group: a for a in audit_result.groups}
    affected = [g for g in groups if g.name in audits and audits[g.name].repairable]
    out = RepairResult(
        groups=[g.name for g in affected],
        sampled_mismatched=sum(a.mismatched for a in audits.values()),
        online_newer=sum(a.newer_online for a in audits.values()),
    )
    if not affected:
        return out
    marker = store.epoch()
    if marker is None or marker != state.epoch:
        full = sync(lake, store, groups, state)
        out.full_resync, out.rows_offered, out.applied = True, full.rows_offered, full.applied
        out.groups = [g.name for g in groups]
    else:
        result = SyncResult()
        done = _resync_groups(lake, store, affected, result)
        if store.epoch() != marker:  # lost during the repair: the next sync resyncs everything
            raise OnlineStoreError(
                f"online repair: the store at {store.url} lost its data during the repair; "
                "the next sync tick resyncs it in full"
            )
        state.synced.update(done)
        state.save(lake)
        out.rows_offered, out.applied = result.rows_offered + result.log_rows_offered, result.applied
    out.seconds = time.perf_counter() - t0
    return out
