"""Point-in-time-correct training sets: mature labels, sampled negatives, every feature group
computed at each event's time (semantics v2).

Pure Polars (no Dagster), so a data scientist builds the same set from a notebook::

    spec = TrainingSetSpec(as_of=datetime(2026, 11, 20, tzinfo=UTC))
    events = source.events(lake, spec.start - history(groups), spec.end)   # every column
    labels = source.labels(lake, spec.start - history(groups), spec.as_of)
    frame, manifest = build_training_set(spec, events, labels, groups)

Rules:

* **Spine** — the money-moving events (withdrawals, card payments, P2P trades) with ``event_ts`` in
  ``[as_of − maturity − window, as_of − maturity)``: every event is at least ``maturity`` old, so its
  label had time to arrive.
* **Labels** — an event is positive iff a label for it has ``label_ts < as_of`` (known at the
  cutoff). Labels that arrive later do not exist for this set: rebuilding it later with the same
  ``as_of`` gives the same rows.
* **Negatives** — kept with probability ``negative_rate`` by a hash of ``event_id`` (deterministic);
  ``weight`` is ``1 / negative_rate`` for them and 1 for positives, so weighted metrics are unbiased.
* **Features** — every group's v2 value at the event's time ``event_ts``, computed from the raw
  events by the spine-driven engine (:func:`risk_assets.features.spine.features_at`): windows end
  *before* ``event_ts`` (the event itself and anything at its millisecond are not in them — what
  risk-serve finishes from the tiles when it scores the event), window starts floored to the hop.
  No stored snapshot is joined: v1 joined the nearest offline row at ``event_ts − 1 ms``, i.e. the
  state right after the entity's *previous* event, never brought forward to the scoring time
  (a burst at 09:00 still counted in a 10-minute window at 14:00). Labels feed label aggregates
  only through their availability delay (``label_ts < t − D``), so no future label leaks.
  An event whose key for a group is null gets nulls for that group. Request-time columns of the
  event itself (``REQUEST_FEATURES``) are added as the service computes them from the request.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import polars as pl

from risk_assets.features.point_in_time import FeatureTable
from risk_assets.features.spec import SEMANTICS_VERSION, FeatureGroup
from risk_assets.features.spine import features_at, history
from risk_assets.models.request_features import REQUEST_FEATURES

SPINE_EVENT_TYPES = ("withdrawal", "card_payment", "p2p_trade")
SPINE_COLUMNS = (
    "event_id",
    "event_type",
    "event_ts",
    "user_id",
    "device_id",
    "ip",
    "card_id",
    "wallet_address",
    "counterparty_id",
    "amount_usd",
    "status",
    "side",
)
LABEL_COLUMNS = ("is_fraud", "scenario", "weight")


@dataclass(frozen=True)
class TrainingSetSpec:
    """Which training set to build."""

    as_of: datetime
    window: timedelta = timedelta(days=14)
    maturity: timedelta = timedelta(days=7)
    negative_rate: float = 1.0
    seed: int = 17

    @property
    def end(self) -> datetime:
        return self.as_of - self.maturity

    @property
    def start(self) -> datetime:
        return self.end - self.window

    def to_dict(self) -> dict[str, str | float | int]:
        return {
            "as_of": self.as_of.astimezone(UTC).isoformat(),
            "window_start": self.start.astimezone(UTC).isoformat(),
            "window_end": self.end.astimezone(UTC).isoformat(),
            "maturity_days": self.maturity / timedelta(days=1),
            "negative_rate": self.negative_rate,
            "seed": self.seed,
        }


def feature_history(groups: Sequence[FeatureGroup]) -> timedelta:
    """Event history the features need before ``spec.start`` (longest window + hop + offset)."""
    return history(groups)


def spine_and_labels(spec: TrainingSetSpec, events: pl.DataFrame, labels: pl.DataFrame) -> pl.DataFrame:
    """The spine: decision events of the window with their mature label and sampling weight."""
    spine = (
        events.filter(
            pl.col("event_type").is_in(list(SPINE_EVENT_TYPES))
            & (pl.col("event_ts") >= spec.start)
            & (pl.col("event_ts") < spec.end)
        )
        .select(list(SPINE_COLUMNS))
        .unique(subset="event_id", keep="first")
        .sort("event_ts", "event_id")
    )
    known = (
        labels.filter(pl.col("label_ts") < spec.as_of)
        .group_by("event_id")
        .agg(pl.col("scenario").sort().first())
        .with_columns(pl.lit(True).alias("is_fraud"))
    )
    spine = spine.join(known, on="event_id", how="left", maintain_order="left").with_columns(
        pl.col("is_fraud").fill_null(False)
    )
    if spec.negative_rate < 1.0:
        keep = (pl.col("event_id").hash(spec.seed) % 1_000_000) < int(spec.negative_rate * 1_000_000)
        spine = spine.filter(pl.col("is_fraud") | keep)
    weight = pl.when(pl.col("is_fraud")).then(1.0).otherwise(1.0 / spec.negative_rate)
    return spine.with_columns(weight.alias("weight"))


def feature_tables(
    groups: Sequence[FeatureGroup], offline: Mapping[str, pl.DataFrame | pl.LazyFrame]
) -> list[FeatureTable]:
    """One ``FeatureTable`` per group from its offline rows (keys, event_ts, created_ts, features): the
    point-in-time join of stored snapshot rows (v1 rows of the offline store; kept for snapshot-type
    tables and for comparisons — training sets compute group features with the spine engine)."""
    return [
        FeatureTable(
            name=g.name,
            frame=offline[g.name],
            join_keys=list(g.entity.keys),
            timestamp="event_ts",
            created_timestamp="created_ts",
            ttl=g.ttl,
        )
        for g in groups
    ]


def model_feature_columns(groups: Sequence[FeatureGroup]) -> list[str]:
    """Every model input column of a training set, in a stable order: the request features, then
    the numeric features of every group that are model inputs (helpers marked
    ``model_input=False`` — e.g. a ratio's operands — are stored and served, never model inputs)."""
    numeric = [f"{g.name}__{f}" for g in groups for f in g.model_feature_names if g.schema()[f].is_numeric()]
    return [*REQUEST_FEATURES, *numeric]


def build_training_set(
    spec: TrainingSetSpec,
    events: pl.DataFrame,
    labels: pl.DataFrame,
    groups: Sequence[FeatureGroup],
) -> tuple[pl.DataFrame, dict]:
    """The training set frame (ids, label columns, model features) and its manifest.

    ``events``: every column the groups read, covering ``[spec.start − feature_history(groups),
    spec.end)`` (less history gives smaller windows at the start of the set); ``labels``: the
    labels known at ``spec.as_of`` of those events (label_ts from ``spec.start − history`` on)."""
    spine = spine_and_labels(spec, events, labels)
    joined = features_at(spine, events, groups, labels)
    features = model_feature_columns(groups)
    frame = joined.with_columns(**REQUEST_FEATURES).select(
        "event_id", "event_ts", "event_type", "user_id", *LABEL_COLUMNS, *features
    )
    frame = frame.with_columns(pl.col(c).cast(pl.Float64) for c in features)
    data = parquet_bytes(frame)
    positives = int(frame["is_fraud"].sum())
    manifest = {
        **spec.to_dict(),
        "rows": frame.height,
        "positives": positives,
        "negatives": frame.height - positives,
        "positive_share": positives / frame.height if frame.height else 0.0,
        "positives_by_scenario": {
            k: v
            for k, v in frame.filter(pl.col("is_fraud"))
            .group_by("scenario")
            .len()
            .sort("scenario")
            .iter_rows()
        },
        "feature_groups": {g.name: g.version for g in groups},
        "semantics_version": SEMANTICS_VERSION,
        "features": features,
        "data_sha256": hashlib.sha256(data).hexdigest(),
    }
    return frame, manifest


def parquet_bytes(frame: pl.DataFrame) -> bytes:
    """The deterministic Parquet encoding used for training sets (same frame → same bytes)."""
    buf = io.BytesIO()
    frame.write_parquet(buf, compression="zstd", statistics=True)
    return buf.getvalue()


def manifest_bytes(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
