"""Is a training window fully covered by its inputs? Feature days and label days present in the lake.

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


@dataclass(frozen=True)
class WindowCoverage:
    """Which input days of a training window are present."""

    feature_days: int
    """Days each feature group must have (the window, plus its TTL of lookback)."""
    missing_feature_days: dict[str, list[str]] = field(default_factory=dict)
    """Per group: the days missing from the offline store."""
    label_days: int = 0
    missing_label_days: list[str] = field(default_factory=list)
    """Days from the window start to the cutoff without any archived label hour."""

    @property
    def complete(self) -> bool:
        return not self.missing_feature_days and not self.missing_label_days

    def summary(self) -> str:
        """One line an analyst can act on."""
        if self.complete:
            return "every feature day and label day of the window is present"
        parts = [
            f"{g}: {len(days)} of {self.feature_days} days missing (first {days[0]})"
            for g, days in sorted(self.missing_feature_days.items())
        ]
        if self.missing_label_days:
            parts.append(
                f"raw_labels: {len(self.missing_label_days)} of {self.label_days} days without labels "
                f"(first {self.missing_label_days[0]})"
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
    """Feature days ``[window_start − ttl, window_end)`` of every group and label days
    ``[window_start, as_of)`` that are missing from the lake (one listing per group)."""
    missing: dict[str, list[str]] = {}
    expected_features = 0
    for g in groups:
        days = _days(window_start - g.ttl, window_end)
        expected_features = max(expected_features, len(days))
        present = {p.split("dt=")[1][:10] for p in lake.list(group_prefix(g)) if p.endswith(PART)}
        gone = [d for d in days if d not in present]
        if gone:
            missing[g.name] = gone
    label_days = _days(window_start, as_of)
    labelled = {p.split("dt=")[1][:10] for p in lake.list(f"{RAW_LABELS}/") if "dt=" in p}
    return WindowCoverage(
        feature_days=expected_features,
        missing_feature_days=missing,
        label_days=len(label_days),
        missing_label_days=[d for d in label_days if d not in labelled],
    )
