"""Batch scoring with a registered model version: the service's model, without the service.

Pure (no Dagster): monitoring needs the champion's scores on frames the service never saw (the
reference training set, a backfilled day) — for prediction drift and for delayed-label performance.
Scores are exactly what the service computes for the same feature vector: the same registry bytes
(hash-checked), the same feature order from the version's manifest, the same ``inplace_predict``.

Public interface::

    load_scorer(lake, version) -> Scorer
    champion_scorer(lake) -> Scorer | None
    champion_at(lake, at) -> str | None            (who was champion at an instant, from the audit)
    Scorer.score(frame) -> np.ndarray               (float64 probabilities; missing features → NaN)
    realized_metrics(frame, scores, label=...) -> dict   (``metrics.evaluate`` without by_scenario)
"""

from __future__ import annotations

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


def champion_at(lake: Lake, at: datetime) -> str | None:
    """The version that was champion at ``at``: the last ``promote``/``rollback`` of the audit trail
    recorded at or before ``at`` (wall-clock audit times). ``None`` when the trail does not reach back
    that far (history not kept, or ``at`` precedes the first promotion)."""
    at = at.astimezone(UTC)
    version = None
    for entry in registry.audit_trail(lake):
        if entry.get("action") not in ("promote", "rollback"):
            continue
        if datetime.fromisoformat(entry["at"]).astimezone(UTC) > at:
            break
        version = entry.get("version")
    return version


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
