"""Decision frames: the events a model decided on, with features and labels as training sees them.

Pure (no Dagster). Monitoring compares what the champion sees today with what it was trained on, so
the current window must be built by the *same* code as training sets (``build_training_set``): the
same spine, the same spine-driven feature computation (v2), the same label rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import timedelta

import numpy as np
import polars as pl

from risk_assets.features.spec import FeatureGroup
from risk_assets.ingest.raw_reader import RawDataSource
from risk_assets.lake import Lake
from risk_assets.models.training_set import TrainingSetSpec, build_training_set, feature_history


def decision_frame(
    store: Lake, source: RawDataSource, spec: TrainingSetSpec, groups: Sequence[FeatureGroup]
) -> pl.DataFrame:
    """The decision events of ``spec``'s window with their features computed exactly as the
    training set computes them, and the labels known at ``spec.as_of`` (``build_training_set``)."""
    since = spec.start - feature_history(groups)
    events = source.events(store, since, spec.end)
    labels = source.labels(store, since, spec.as_of)
    frame, _ = build_training_set(spec, events, labels, groups)
    return frame


def weighted_rate(frame: pl.DataFrame) -> float:
    """Weighted positive share of a labelled frame (``is_fraud``, ``weight``); NaN when empty."""
    if frame.height == 0:
        return math.nan
    w = frame["weight"].to_numpy().astype(np.float64)
    return float((w * frame["is_fraud"].to_numpy()).sum() / w.sum())


def labels_within(frame: pl.DataFrame, labels: pl.DataFrame, maturity: timedelta) -> pl.DataFrame:
    """``frame`` (``event_id``, ``event_ts``) with ``is_fraud`` relabelled: a label arrived within
    ``maturity`` of its event (``label_ts < event_ts + maturity``).

    The same rule on both sides of a comparison makes label rates comparable: a training set's
    label rule (labels known at its cutoff) gives its older rows more time to mature than a recent
    day's, and fraud labels keep arriving for days, so raw rates differ without any drift.
    """
    first = labels.group_by("event_id").agg(pl.col("label_ts").min().alias("_first_label_ts"))
    arrived = pl.col("_first_label_ts").is_not_null() & (
        pl.col("_first_label_ts") < pl.col("event_ts") + maturity
    )
    return (
        frame.join(first, on="event_id", how="left", maintain_order="left")
        .with_columns(arrived.alias("is_fraud"))
        .drop("_first_label_ts")
    )
