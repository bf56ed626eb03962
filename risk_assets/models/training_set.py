"""Point-in-time-correct training sets: mature labels, sampled negatives, every feature group joined
as it was known just before each event.

Pure Polars (no Dagster), so a data scientist builds the same set from a notebook::

    spec = TrainingSetSpec(as_of=datetime(2026, 11, 20, tzinfo=UTC))
    offline = {g.name: read_offline(lake, g) for g in groups}
    frame, manifest = build_training_set(spec, events, labels, offline, groups)

Rules:

* **Spine** — the money-moving events (withdrawals, card payments, P2P trades) with ``event_ts`` in
  ``[as_of − maturity − window, as_of − maturity)``: every event is at least ``maturity`` old, so its
  label had time to arrive.
* **Labels** — an event is positive iff a label for it has ``label_ts < as_of`` (known at the
  cutoff). Labels that arrive later do not exist for this set: rebuilding it later with the same
  ``as_of`` gives the same rows.
* **Negatives** — kept with probability ``negative_rate`` by a hash of ``event_id`` (deterministic);
  ``weight`` is ``1 / negative_rate`` for them and 1 for positives, so weighted metrics are unbiased.
* **Features** — ``point_in_time_join`` at ``event_ts − 1 ms`` (what the online store holds when the
  event arrives: the feature rows of earlier events, never of the event itself), honouring each row's
  ``created_ts`` (a value computed later than that instant is invisible) and the group's TTL.
  Request-time columns of the event itself (``REQUEST_FEATURES``) are added as the service computes
  them from the request.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import polars as pl

from risk_assets.features.point_in_time import FeatureTable, point_in_time_join
from risk_assets.features.spec import FeatureGroup
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
    """One ``FeatureTable`` per group from its offline rows (keys, event_ts, created_ts, features)."""
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
    offline: Mapping[str, pl.DataFrame | pl.LazyFrame],
    groups: Sequence[FeatureGroup],
) -> tuple[pl.DataFrame, dict]:
    """The training set frame (ids, label columns, model features) and its manifest."""
    spine = spine_and_labels(spec, events, labels).with_columns(
        (pl.col("event_ts") - timedelta(milliseconds=1)).alias("feature_as_of")
    )
    joined = point_in_time_join(spine, feature_tables(groups, offline), spine_timestamp="feature_as_of")
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
