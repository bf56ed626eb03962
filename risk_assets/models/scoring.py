"""Batch scoring with a registered model version: the service's model, without the service.

Pure (no Dagster): monitoring needs the champion's scores on frames the service never saw (the
reference training set, a backfilled day) — for prediction drift and for delayed-label performance.
Scores are exactly what the service computes for the same feature vector: the same registry bytes
(hash-checked), the same feature order from the version's manifest, the same ``inplace_predict``.

Public interface::

    load_scorer(lake, version) -> Scorer
    champion_scorer(lake) -> Scorer | None
    champion_at(lake, at) -> str | None            (who served event time ``at``: the registry's timeline)
    serving_versions(lake, event_ts) -> pl.Series   (the same for a column of event times)
    Scorer.score(frame) -> np.ndarray               (float64 probabilities; missing features → NaN)
    realized_metrics(frame, scores, label=...) -> dict   (``metrics.evaluate`` without by_scenario)
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from risk_assets.lake import Lake
from risk_assets.models import metrics as mx
from risk_assets.models import registry
from risk_assets.models.training import feature_matrix, load_booster, predict

if TYPE_CHECKING:
    import xgboost as xgb

# Rows scored per ``inplace_predict`` call (bounds the float32 matrix held in memory at once).
BATCH_ROWS = 200_000


@dataclass(frozen=True)
class Scorer:
    """A registered version loaded for batch scoring."""

    version: str
    features: list[str]
    booster: xgb.Booster
    manifest: dict[str, Any] = field(repr=False)

    @property
    def training_as_of(self) -> str | None:
        """ISO ``as_of`` of the training set the version was trained on (from its manifest)."""
        return (self.manifest.get("training_set") or {}).get("as_of")

    def score(self, frame: pl.DataFrame) -> np.ndarray:
        """Fraud probabilities (float64) for every row of ``frame``; model features the frame lacks
        are scored as missing (NaN), as the service does when the online store has no value."""
        if frame.height == 0:
            return np.zeros(0, dtype=np.float64)
        missing = [f for f in self.features if f not in frame.columns]
        if missing:
            frame = frame.with_columns(pl.lit(None, pl.Float64).alias(f) for f in missing)
        out = [
            predict(self.booster, feature_matrix(frame.slice(i, BATCH_ROWS), self.features))
            for i in range(0, frame.height, BATCH_ROWS)
        ]
        return np.concatenate(out).astype(np.float64)


def load_scorer(lake: Lake, version: str, nthread: int = 2) -> Scorer:
    """Load ``version`` from the registry (its bytes checked against the manifest's sha256)."""
    manifest = registry.load_manifest(lake, version)
    booster = load_booster(
        registry.load_model_bytes(lake, version, manifest.get("model_sha256")), nthread=nthread
    )
    return Scorer(version, list(manifest["features"]), booster, manifest)


def champion_scorer(lake: Lake, nthread: int = 2) -> Scorer | None:
    """The current champion, loaded; ``None`` before the first promotion."""
    current = registry.champion(lake)
    return load_scorer(lake, current.version, nthread) if current else None


def champion_at(
    lake: Lake, at: datetime, timeline: Sequence[tuple[datetime, str]] | None = None
) -> str | None:
    """The version that served event time ``at``: the span of the registry's champion timeline
    (``registry.champion_timeline``: each promotion's ``effective_from`` in event time, or its
    wall-clock ``at`` for entries written before ``effective_from`` existed) holding ``at`` — a
    span starts *at* its ``effective_from`` (inclusive). ``None`` when the trail does not reach back
    that far. ``timeline``: an already resolved timeline (saves re-reading the audit trail)."""
    spans = registry.champion_timeline(lake) if timeline is None else timeline
    starts = [s for s, _ in spans]
    i = bisect.bisect_right(starts, at.astimezone(UTC))
    return spans[i - 1][1] if i else None


def serving_versions(
    lake: Lake, event_ts: pl.Series, timeline: Sequence[tuple[datetime, str]] | None = None
) -> pl.Series:
    """:func:`champion_at` for every value of ``event_ts`` (Datetime; null where the timeline does
    not reach back), as a String series named ``model_version``."""
    spans = registry.champion_timeline(lake) if timeline is None else timeline
    if not spans or event_ts.len() == 0:
        return pl.Series("model_version", [None] * event_ts.len(), dtype=pl.String)
    starts = np.array([int(s.timestamp() * 1_000_000) for s, _ in spans], dtype=np.int64)
    ts = event_ts.dt.replace_time_zone(None) if event_ts.dtype.time_zone else event_ts  # type: ignore[union-attr]
    micros = ts.dt.cast_time_unit("us").cast(pl.Int64).to_numpy()
    idx = np.searchsorted(starts, micros, side="right") - 1
    names = np.array([v for _, v in spans], dtype=object)
    out = np.where(idx >= 0, names[np.clip(idx, 0, None)], None)
    return pl.Series("model_version", out.tolist(), dtype=pl.String)


def realized_metrics(
    frame: pl.DataFrame,
    scores: np.ndarray,
    *,
    label: str = "is_fraud",
    weight: str | None = "weight",
    k: int = mx.DEFAULT_TOP_K,
    keys: Sequence[str] | None = None,
) -> dict[str, Any]:
    """``metrics.evaluate`` of ``scores`` against ``frame[label]`` (weighted by ``frame[weight]`` when
    present), without the per-scenario breakdown; ``keys`` restricts the output."""
    if frame.height == 0:
        return {"rows": 0, "positives": 0}
    w = frame[weight].to_numpy() if weight and weight in frame.columns else None
    out = mx.evaluate(frame[label].to_numpy(), scores, w, frame["event_ts"].to_numpy(), None, k=k)
    out.pop("by_scenario", None)
    return {key: out.get(key) for key in keys} if keys else out
