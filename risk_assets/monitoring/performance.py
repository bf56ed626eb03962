"""Delayed-label performance: how well did the models that served actually do, once labels came?

Pure (no Dagster). A day is *mature* once its youngest event is ``maturity`` old (its labels had time
to arrive). Each event of a mature day is scored by the model that actually served it
(:mod:`risk_assets.monitoring.attribution`: the prediction log's ``model_version`` where the decision
was logged, otherwise the registry's champion timeline at its ``event_ts``, otherwise the current
champion) and the day is evaluated against the labels known now. The *recent pool* — the newest
mature days out of the current champion's training sample — is what the retraining sensor compares
with the champion's test metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import polars as pl

from risk_assets.events.schema import SCENARIOS
from risk_assets.lake import Lake
from risk_assets.models.scoring import Scorer, load_scorer, realized_metrics
from risk_assets.monitoring.attribution import (
    SOURCE,
    attribute_versions,
    dominant_version,
    source_counts,
    version_counts,
)

DAY = timedelta(days=1)
REALIZED_METRICS = ("average_precision", "recall_at_1pct_fpr", "auc")
SCENARIO_METRICS = ("average_precision", "recall_at_1pct_fpr")


def pooled_metrics(frame: pl.DataFrame, scores: np.ndarray) -> dict[str, Any]:
    """Realized metrics of ``scores`` on ``frame``, overall and per scenario (``by_scenario``: each
    scenario's positives against every negative)."""
    keys = ("rows", "positives", *REALIZED_METRICS)
    out: dict[str, Any] = realized_metrics(frame, scores, keys=keys)
    by: dict[str, dict[str, Any]] = {}
    y = frame["is_fraud"].to_numpy() if frame.height else np.zeros(0, dtype=bool)
    sc = frame["scenario"].to_numpy() if frame.height else np.zeros(0, dtype=object)
    for name in SCENARIOS:
        m = ~y | (sc == name)
        by[name] = realized_metrics(frame.filter(pl.Series(m)), scores[m], keys=keys) if frame.height else {}
    out["by_scenario"] = by
    return out


@dataclass(frozen=True)
class RealizedPerformance:
    """The figures of one realized-performance evaluation."""

    per_day: list[dict[str, Any]]
    """Newest mature day first: ``day``, ``version`` (the model that served most of its events),
    ``versions`` (events per serving model), ``sources`` (events per attribution source) and the
    realized metrics of the scores of the models that served them."""
    recent: dict[str, Any]
    """The recent pool scored by the current champion (:func:`pooled_metrics`)."""
    recent_start: datetime
    recent_days: int
    baseline: dict[str, Any]
    """The current champion's test metrics at training time (its manifest)."""
    baseline_by_scenario: dict[str, Any]


def realized_performance(
    store: Lake,
    frame: pl.DataFrame,
    champion: Scorer,
    *,
    newest: datetime,
    lookback_days: int,
    recent_days: int,
) -> RealizedPerformance:
    """Evaluate the ``lookback_days`` mature days ending at ``newest`` (exclusive) of ``frame`` (a
    decision frame with labels, :func:`~risk_assets.monitoring.decisions.decision_frame`)."""
    frame = frame.with_columns(pl.col("event_ts").dt.truncate("1d").alias("_day"))
    attributed = attribute_versions(store, frame.select("event_id", "event_ts"), champion.version)
    frame = frame.with_columns(attributed["model_version"], attributed[SOURCE])
    scorers: dict[str, Scorer] = {champion.version: champion}
    per_day: list[dict[str, Any]] = []
    for i in range(lookback_days):
        start = newest - (i + 1) * DAY
        part = frame.filter(pl.col("_day") == start)
        scores = np.zeros(part.height, dtype=np.float64)
        versions = part["model_version"].to_numpy() if part.height else np.zeros(0, dtype=object)
        for version in version_counts(part):
            if version not in scorers:
                scorers[version] = load_scorer(store, version)
            rows = versions == version
            scores[rows] = scorers[version].score(part.filter(pl.Series(rows)))
        m = realized_metrics(part, scores, keys=("rows", "positives", *REALIZED_METRICS))
        per_day.append(
            {
                "day": start.strftime("%Y-%m-%d"),
                "version": dominant_version(part) or champion.version,
                "versions": version_counts(part),
                "sources": source_counts(part),
                **m,
            }
        )

    # The recent pool: newest mature days after the current champion's training window.
    window_end = (champion.manifest.get("training_set") or {}).get("window_end")
    out_of_sample = datetime.fromisoformat(window_end) if window_end else newest - recent_days * DAY
    recent_start = max(newest - recent_days * DAY, out_of_sample)
    recent = frame.filter(pl.col("event_ts") >= recent_start)
    pooled = pooled_metrics(recent, champion.score(recent))
    return RealizedPerformance(
        per_day=per_day,
        recent=pooled,
        recent_start=recent_start,
        recent_days=max(0, round((newest - recent_start) / DAY)) if recent.height else 0,
        baseline=champion.manifest.get("metrics") or {},
        baseline_by_scenario=champion.manifest.get("metrics_by_scenario") or {},
    )
