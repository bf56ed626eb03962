"""Online/offline consistency audit: does Redis hold each entity's latest offline value?

For a deterministic sample of entities per group, the expected online row is the newest row of the
offline store (batch days) and the stream's feature log together, by (event_ts, created_ts); the
audit reads the sampled entities from Redis in one round trip per group and counts mismatches:
missing online, a different as-of time, or a feature differing beyond a relative tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from risk_assets.features.ingestion import group_layout, read_feature_log
from risk_assets.features.offline_store import read_offline
from risk_assets.features.online_store import OnlineStore
from risk_assets.features.spec import FeatureGroup
from risk_assets.lake import Lake

REL_TOL = 1e-9


@dataclass
class GroupAudit:
    group: str
    sampled: int = 0
    missing_online: int = 0
    stale_or_newer: int = 0
    value_mismatch: int = 0

    @property
    def mismatched(self) -> int:
        return self.missing_online + self.stale_or_newer + self.value_mismatch


@dataclass
class AuditResult:
    groups: list[GroupAudit] = field(default_factory=list)

    @property
    def sampled(self) -> int:
        return sum(g.sampled for g in self.groups)

    @property
    def mismatch_rate(self) -> float:
        return sum(g.mismatched for g in self.groups) / self.sampled if self.sampled else 0.0


def expected_latest(lake: Lake, group: FeatureGroup) -> pl.LazyFrame:
    """Newest known row per entity across the offline store and the stream feature log."""
    keys = list(group.entity.keys)
    cols = [*keys, "event_ts", "created_ts", *group.feature_names]
    offline = read_offline(lake, group).select(cols)
    log = read_feature_log(lake, group).select(cols)
    both = pl.concat(
        [offline, log.with_columns(pl.col(c).cast(t) for c, t in offline.collect_schema().items())]
    )
    return both.sort([*keys, "event_ts", "created_ts"]).unique(subset=keys, keep="last", maintain_order=True)


def _equal(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= REL_TOL * abs(b) + REL_TOL


def audit(
    lake: Lake, store: OnlineStore, groups: list[FeatureGroup], *, sample_per_group: int = 500, seed: int = 7
) -> AuditResult:
    """Compare Redis with the offline latest values on a sample of entities of every group."""
    result = AuditResult()
    for group in groups:
        keys = list(group.entity.keys)
        latest = expected_latest(lake, group).collect()
        if latest.height > sample_per_group:
            latest = latest.sample(n=sample_per_group, seed=seed).sort(keys)
        report = GroupAudit(group.name, sampled=latest.height)
        layout = group_layout(group)
        entity_keys = [tuple(r) if len(keys) > 1 else r[0] for r in latest.select(keys).iter_rows()]
        online = store.read([(layout, k) for k in entity_keys])
        for row, got in zip(latest.iter_rows(named=True), online, strict=True):
            if got is None:
                report.missing_online += 1
            elif got.event_ts != row["event_ts"]:
                report.stale_or_newer += 1
            elif not all(
                _equal(got.values[f], None if row[f] is None else float(row[f])) for f in group.feature_names
            ):
                report.value_mismatch += 1
        result.groups.append(report)
    return result
