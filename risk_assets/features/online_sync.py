"""Offline → online sync: write every offline feature row that is newer than what Redis holds.

The watermark is not an event time. It is the set of offline objects (one per group, version and
day) already synced, with their version tokens (``Lake.versions``). A day that a batch run rewrote —
for instance because very late events arrived and the day was recomputed — has a new token, so
its rows are offered again. Popular feature stores track only event time and miss exactly those
rows. Per entity only the newest row of a changed object is sent, and the online store writes it
only if it is newer than the value already there (``(event_ts, created_ts)``, atomically in Redis).
Re-sending therefore never double-applies, and a skipped or failed tick is caught up by the next.

The state is a small JSON object in the lake, written only after Redis acknowledged every write of
the tick: nothing is marked synced that was not written.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import polars as pl

from risk_assets.features.ingestion import group_layout
from risk_assets.features.offline_store import group_prefix
from risk_assets.features.online_store import OnlineStore
from risk_assets.features.spec import FeatureGroup
from risk_assets.lake import Lake

STATE_PATH = "_state/online_sync.json"


@dataclass
class SyncState:
    """Version tokens of the offline objects already synced, by relative path."""

    synced: dict[str, str] = field(default_factory=dict)
    last_success: str | None = None

    @staticmethod
    def load(lake: Lake) -> SyncState:
        if not lake.exists(STATE_PATH):
            return SyncState()
        data = json.loads(lake.read_bytes(STATE_PATH))
        return SyncState(synced=dict(data.get("synced", {})), last_success=data.get("last_success"))

    def save(self, lake: Lake) -> None:
        body = {"synced": dict(sorted(self.synced.items())), "last_success": self.last_success}
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

    @property
    def lag_seconds(self) -> float | None:
        """How far the newest synced value trails the wall clock."""
        if self.newest_created is None:
            return None
        return max(0.0, (datetime.now(UTC) - self.newest_created).total_seconds())


def changed_objects(lake: Lake, group: FeatureGroup, state: SyncState) -> dict[str, str]:
    """Offline objects of ``group``'s current version that are new or rewritten since the last sync."""
    current = lake.versions(group_prefix(group))
    return {path: token for path, token in current.items() if state.synced.get(path) != token}


def newest_per_entity(frame: pl.DataFrame, group: FeatureGroup) -> pl.DataFrame:
    """The newest row (by event_ts, then created_ts) of every entity in ``frame``."""
    keys = list(group.entity.keys)
    return frame.sort([*keys, "event_ts", "created_ts"]).unique(subset=keys, keep="last", maintain_order=True)


def sync(
    lake: Lake, store: OnlineStore, groups: list[FeatureGroup], state: SyncState | None = None
) -> SyncResult:
    """One sync tick over ``groups``. Raises (without saving state) if Redis fails."""
    t0 = time.perf_counter()
    state = state or SyncState.load(lake)
    result = SyncResult()
    done: dict[str, str] = {}
    for group in groups:
        changed = changed_objects(lake, group, state)
        if not changed:
            continue
        frame = lake.scan(sorted(changed)).collect()
        latest = newest_per_entity(frame, group)
        written = store.write(
            group_layout(group),
            latest.select([*group.entity.keys, "event_ts", "created_ts", *group.feature_names]),
        )
        result.objects += len(changed)
        result.rows_offered += latest.height
        result.applied += written.applied
        result.skipped += written.skipped
        result.entities += latest.height
        result.by_group[group.name] = written.applied
        if latest.height:
            newest = latest["created_ts"].max()
            if newest is not None and (result.newest_created is None or newest > result.newest_created):
                result.newest_created = newest
        done.update(changed)
    state.synced.update(done)
    state.last_success = datetime.now(UTC).isoformat()
    state.save(lake)
    result.seconds = time.perf_counter() - t0
    return result
