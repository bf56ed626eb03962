"""Online/offline consistency audit: does Redis hold each entity's latest offline value?

For a deterministic sample of entities per group, the expected online row is the newest row of the
offline store (batch days) and the stream's feature log together, in the online store's own order
(``online_store.py``): by ``(event_ts, created_ts, source)`` with batch rows (source 1) above stream
rows (source 0) on equal times — so a batch correction of a stream row at the same times is what the
audit expects, exactly as write-if-newer keeps it. The audit reads the sampled entities from Redis in
one round trip per group and counts mismatches: missing online, an older online row (stale), a newer
online row than anything in the lake, or a feature differing beyond a relative tolerance.

Rows expire in Redis (``SET … PX ttl`` from their last write), so an absent row whose expected
``event_ts`` is older than ``now − ttl`` is not a mismatch (``expired_online``): it may have expired
legitimately. A present one is compared all the same.

A failed audit is not only a red light: ``online_sync.repair`` resyncs the affected groups.

Tiles (semantics v2, what risk-serve serves): :func:`audit_tiles` compares, for a deterministic
sample of the entities with events in the last day, the value risk-serve would serve at ``t``
(``now``: the tiles finished with ``online_tiles.finish``) with the offline v2 value at ``t``
(``spine.compute_at`` over the archived events of the group's horizon), feature by feature —
staleness (a tile behind the archive), missing tiles and reads that are not exact are all counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl

from risk_assets.features.ingestion import group_layout, read_feature_log
from risk_assets.features.offline_store import read_offline
from risk_assets.features.online_store import SOURCE_BATCH, SOURCE_STREAM, OnlineStore
from risk_assets.features.online_tiles import TileStore, finish, tile_layout
from risk_assets.features.spec import FeatureGroup
from risk_assets.features.spine import compute_at
from risk_assets.ingest.raw_reader import read_source
from risk_assets.lake import Lake

__all__ = [
    "REL_TOL",
    "SOURCE_COLUMN",
    "AuditResult",
    "GroupAudit",
    "TileAudit",
    "audit",
    "audit_tiles",
    "expected_latest",
]

REL_TOL = 1e-9
SOURCE_COLUMN = "_source"  # in expected_latest: SOURCE_BATCH (offline store) or SOURCE_STREAM (log)
MAX_KEYS_REPORTED = 20


@dataclass
class GroupAudit:
    group: str
    sampled: int = 0
    missing_online: int = 0
    stale_online: int = 0  # online row older than the expected one
    newer_online: int = 0  # online row newer than anything in the lake (left alone by repair)
    value_mismatch: int = 0
    expired_online: int = 0  # absent, but older than the group's TTL: not a mismatch
    mismatched_keys: list[Any] = field(default_factory=list)  # the first few, for reports

    @property
    def stale_or_newer(self) -> int:
        return self.stale_online + self.newer_online

    @property
    def mismatched(self) -> int:
        return self.missing_online + self.stale_or_newer + self.value_mismatch

    @property
    def repairable(self) -> int:
        """Mismatches a rewrite from the lake fixes (all but online rows newer than the lake's)."""
        return self.missing_online + self.stale_online + self.value_mismatch


@dataclass
class AuditResult:
    groups: list[GroupAudit] = field(default_factory=list)

    @property
    def sampled(self) -> int:
        return sum(g.sampled for g in self.groups)

    @property
    def mismatched(self) -> int:
        return sum(g.mismatched for g in self.groups)

    @property
    def mismatch_rate(self) -> float:
        return self.mismatched / self.sampled if self.sampled else 0.0


def expected_latest(lake: Lake, group: FeatureGroup) -> pl.LazyFrame:
    """Newest known row per entity across the offline store and the stream feature log, by
    ``(event_ts, created_ts, source)`` with batch above stream; ``_source`` says which won."""
    keys = list(group.entity.keys)
    cols = [*keys, "event_ts", "created_ts", *group.feature_names]
    offline = read_offline(lake, group).select(cols)
    log = read_feature_log(lake, group).select(cols)
    schema = offline.collect_schema()
    both = pl.concat(
        [
            offline.with_columns(pl.lit(SOURCE_BATCH, pl.UInt8).alias(SOURCE_COLUMN)),
            log.with_columns(*[pl.col(c).cast(t) for c, t in schema.items()]).with_columns(
                pl.lit(SOURCE_STREAM, pl.UInt8).alias(SOURCE_COLUMN)
            ),
        ]
    )
    order = [*keys, "event_ts", "created_ts", SOURCE_COLUMN]
    return both.sort(order).unique(subset=keys, keep="last", maintain_order=True)


def _equal(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= REL_TOL * abs(b) + REL_TOL


def audit(
    lake: Lake,
    store: OnlineStore,
    groups: list[FeatureGroup],
    *,
    sample_per_group: int | None = 500,
    seed: int = 7,
    now: datetime | None = None,
) -> AuditResult:
    """Compare Redis with the lake's latest values on a sample of entities of every group
    (``sample_per_group=None``: every entity). ``now`` (default: the wall clock) decides which
    absent rows may have expired."""
    now_ms = int((now or datetime.now(UTC)).timestamp() * 1000)
    result = AuditResult()
    for group in groups:
        ttl_ms = int(group.ttl.total_seconds() * 1000)
        keys = list(group.entity.keys)
        latest = expected_latest(lake, group).collect()
        if sample_per_group is not None and latest.height > sample_per_group:
            latest = latest.sample(n=sample_per_group, seed=seed).sort(keys)
        latest = latest.with_columns(
            pl.col("event_ts").dt.epoch("ms").alias("_e"), pl.col("created_ts").dt.epoch("ms").alias("_c")
        )
        report = GroupAudit(group.name, sampled=latest.height)
        layout = group_layout(group)
        entity_keys = [tuple(r) if len(keys) > 1 else r[0] for r in latest.select(keys).iter_rows()]
        online = store.read([(layout, k) for k in entity_keys])
        for key, row, got in zip(entity_keys, latest.iter_rows(named=True), online, strict=True):
            bad = True
            if got is None and ttl_ms and row["_e"] < now_ms - ttl_ms:
                report.expired_online += 1
                bad = False
            elif got is None:
                report.missing_online += 1
            elif (got.event_ts_ms, got.created_ts_ms) < (row["_e"], row["_c"]):
                report.stale_online += 1
            elif (got.event_ts_ms, got.created_ts_ms) > (row["_e"], row["_c"]):
                report.newer_online += 1
            elif not all(
                _equal(got.values[f], None if row[f] is None else float(row[f])) for f in group.feature_names
            ):
                report.value_mismatch += 1
            else:
                bad = False
            if bad and len(report.mismatched_keys) < MAX_KEYS_REPORTED:
                report.mismatched_keys.append(key)
        result.groups.append(report)
    return result


@dataclass
class TileAudit:
    """Served (tiles finished at ``t``) vs offline v2 at ``t``, per group, over sampled entities."""

    t: datetime
    sampled: dict[str, int] = field(default_factory=dict)
    mismatched: dict[str, int] = field(default_factory=dict)  # entities with any feature differing
    inexact: dict[str, int] = field(default_factory=dict)  # head tile held events at/after t
    mismatched_keys: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def mismatch_rate(self) -> float:
        n = sum(self.sampled.values())
        return sum(self.mismatched.values()) / n if n else 0.0


def audit_tiles(
    lake: Lake,
    store: OnlineStore,
    groups: list[FeatureGroup],
    *,
    now: datetime | None = None,
    sample_per_group: int = 200,
) -> TileAudit:
    """Compare what risk-serve serves at ``now`` with the offline v2 value at ``now`` (see the
    module docstring) for up to ``sample_per_group`` entities per group with events in the last day
    (a deterministic sample: the smallest key hashes)."""
    now = now or datetime.now(UTC)
    t = int(now.timestamp() * 1000)
    out = TileAudit(now)
    tiles = TileStore(store)
    for group in groups:
        layout = tile_layout(group)
        keys = list(group.entity.keys)
        start = now - timedelta(milliseconds=layout.ttl_ms)
        events = read_source(lake, group.source, start, now)
        recent = events.filter(pl.col(group.source.timestamp) >= now - timedelta(days=1))
        ents = (
            recent.select(keys).drop_nulls().unique()
            .with_columns(pl.struct(keys).hash(seed=7).alias("_h")).sort("_h").head(sample_per_group)
        )  # fmt: skip
        if ents.height == 0:
            continue
        labels = None
        if group.needs_labels and group.label_source is not None:
            labels = read_source(lake, group.label_source, start, now + timedelta(days=1))
        spine = ents.select(keys).with_columns(pl.lit(now).cast(pl.Datetime("ms", "UTC")).alias("event_ts"))
        offline = compute_at(group, events, spine, labels)
        entity_keys = [tuple(r) if len(keys) > 1 else r[0] for r in ents.select(keys).iter_rows()]
        served = tiles.read([(layout, k) for k in entity_keys])
        bad = inexact = 0
        for key, row, got in zip(entity_keys, offline.iter_rows(named=True), served, strict=True):
            values, exact = finish(layout, got, t)
            inexact += not exact
            same = all(
                _equal(None if v is None else float(v), None if row[f] is None else float(row[f]))
                for f, v in zip(group.feature_names, values, strict=True)
            )
            if not same:
                bad += 1
                if len(out.mismatched_keys.setdefault(group.name, [])) < MAX_KEYS_REPORTED:
                    out.mismatched_keys[group.name].append(key)
        out.sampled[group.name] = ents.height
        out.mismatched[group.name] = bad
        out.inexact[group.name] = inexact
    return out
