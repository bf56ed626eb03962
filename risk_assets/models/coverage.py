"""Is a training window fully covered by its inputs? Feature days present, labels archived to the cutoff.

Pure (no Dagster). A training set built over a window whose feature days or label days were never
materialized is silently wrong (its rows see no features, or no positives); the training-set asset
turns :func:`window_coverage` into a blocking check so such a set never reaches training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from risk_assets.features.offline_store import PART, group_prefix
from risk_assets.features.spec import FeatureGroup
from risk_assets.lake import Lake
from risk_assets.names import RAW_LABELS

DAY = timedelta(days=1)


LABEL_SLACK = timedelta(days=1)
"""The label archive must reach this close to the cutoff (a quiet last day may have no label)."""


@dataclass(frozen=True)
class WindowCoverage:
    """Which inputs of a training window are present."""

    feature_days: int
    """Days of the window each feature group must have."""
    missing_feature_days: dict[str, list[str]] = field(default_factory=dict)
    """Per group: the window's days missing from the offline store."""
    labels_through: str | None = None
    """The newest archived label hour (``YYYY-MM-DD HH:00``), or None when no label was archived."""
    labels_needed_through: str = ""
    """How far the label archive must reach: the cutoff minus ``LABEL_SLACK``."""

    @property
    def labels_complete(self) -> bool:
        return self.labels_through is not None and self.labels_through >= self.labels_needed_through

    @property
    def complete(self) -> bool:
        return not self.missing_feature_days and self.labels_complete

    def summary(self) -> str:
        """One line an analyst can act on."""
        if self.complete:
            return "every feature day of the window is present and the label archive reaches the cutoff"
        parts = [
            f"{g}: {len(days)} of {self.feature_days} days missing (first {days[0]})"
            for g, days in sorted(self.missing_feature_days.items())
        ]
        if not self.labels_complete:
            parts.append(
                f"raw_labels archived through {self.labels_through or 'nothing'}, "
                f"needed through {self.labels_needed_through}"
            )
        return "; ".join(parts)


def _days(start: datetime, end: datetime) -> list[str]:
    d = start.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    out = []
    while d < end:
        out.append(d.strftime("%Y-%m-%d"))
        d += DAY
    return out


def window_coverage(
    lake: Lake,
    groups: Sequence[FeatureGroup],
    window_start: datetime,
    window_end: datetime,
    as_of: datetime,
) -> WindowCoverage:
    """The feature days of ``[window_start, window_end)`` missing from the offline store (one
    listing per group), and how far the label archive reaches towards ``as_of``."""
    days = _days(window_start, window_end)
    missing: dict[str, list[str]] = {}
    for g in groups:
        present = {p.split("dt=")[1][:10] for p in lake.list(group_prefix(g)) if p.endswith(PART)}
        gone = [d for d in days if d not in present]
        if gone:
            missing[g.name] = gone
    hours = sorted(
        f"{p.split('dt=')[1][:10]} {p.split('hour=')[1][:2]}:00"
        for p in lake.list(f"{RAW_LABELS}/")
        if "dt=" in p and "hour=" in p
    )
    needed = (as_of - LABEL_SLACK).astimezone(UTC).strftime("%Y-%m-%d %H:00")
    return WindowCoverage(
        feature_days=len(days),
        missing_feature_days=missing,
        labels_through=hours[-1] if hours else None,
        labels_needed_through=needed,
    )
