"""Decision frames: the events a model decided on, with features and labels as training sees them.

Pure (no Dagster). Monitoring compares what the champion sees today with what it was trained on, so
the current window must be built by the *same* code as training sets (``build_training_set``): the
same spine, the same point-in-time join, the same label rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import polars as pl

from risk_assets.features.offline_store import read_offline
from risk_assets.features.spec import FeatureGroup
from risk_assets.ingest.raw_reader import RawDataSource
from risk_assets.lake import Lake
from risk_assets.models.training_set import SPINE_COLUMNS, TrainingSetSpec, build_training_set


def decision_frame(
    store: Lake, source: RawDataSource, spec: TrainingSetSpec, groups: Sequence[FeatureGroup]
) -> pl.DataFrame:
    """The decision events of ``spec``'s window with their features joined point-in-time exactly as
    the training set joins them, and the labels known at ``spec.as_of`` (``build_training_set``)."""
    events = source.events(store, spec.start, spec.end, list(SPINE_COLUMNS))
    labels = source.labels(store, spec.start, spec.as_of)
    offline = {g.name: read_offline(store, g, spec.start - g.ttl, spec.end) for g in groups}
    frame, _ = build_training_set(spec, events, labels, offline, groups)
    return frame


def weighted_rate(frame: pl.DataFrame) -> float:
    """Weighted positive share of a labelled frame (``is_fraud``, ``weight``); NaN when empty."""
    if frame.height == 0:
        return math.nan
    w = frame["weight"].to_numpy().astype(np.float64)
    return float((w * frame["is_fraud"].to_numpy()).sum() / w.sum())
