"""Monitoring building blocks: profiles, drift statistics and training/serving skew (no Dagster).

* :mod:`risk_assets.monitoring.profiles` — whylogs profiles of Polars frames (the only module that
  imports whylogs; import it explicitly, it is not loaded by this package);
* :mod:`risk_assets.monitoring.drift` — exact drift statistics on samples (KS, χ², PSI, Hellinger);
* :mod:`risk_assets.monitoring.skew` — row-level comparison of served vs recomputed features.
"""

from risk_assets.monitoring.drift import (
    ColumnDrift,
    DriftReport,
    DriftThresholds,
    LabelRateDrift,
    column_drift,
    drift_report,
    label_rate_drift,
    prediction_drift,
)
from risk_assets.monitoring.skew import FeatureSkew, SkewReport, row_level_skew

__all__ = [
    "ColumnDrift",
    "DriftReport",
    "DriftThresholds",
    "FeatureSkew",
    "LabelRateDrift",
    "SkewReport",
    "column_drift",
    "drift_report",
    "label_rate_drift",
    "prediction_drift",
    "row_level_skew",
]
