"""Point-in-time-correct training sets: mature labels, sampled negatives, every feature group joined
as it was known just before each event — for any model specification
(:mod:`risk_assets.models.model_spec`; the exchange's by default).

Pure Polars (no Dagster), so a data scientist builds the same set from a notebook::

    spec = TrainingSetSpec(as_of=datetime(2026, 11, 20, tzinfo=UTC))
    offline = {g.name: read_offline(lake, g) for g in model.groups}
    frame, manifest = build_training_set(spec, events, labels, offline, model=model)

Rules (``model`` names the columns; the exchange's in brackets):

* **Spine** — the spine source's events passing the spine filters (withdrawals, card payments, P2P
  trades) with their time in ``[as_of − maturity − window, as_of − maturity)``: every event is at
  least ``maturity`` old, so its label had time to arrive.
* **Labels** — an event is positive iff a label of the label source passing the label filters
  points at it (its ``key`` = the event's id) with a label time ``< as_of`` (known at the cutoff).
  Labels that arrive later do not exist for this set: rebuilding it later with the same ``as_of``
  gives the same rows.
* **Negatives** — kept with probability ``negative_rate`` by a hash of the event id (deterministic);
  ``weight`` is ``1 / negative_rate`` for them and 1 for positives, so weighted metrics are unbiased.
* **Features** — ``point_in_time_join`` at the event time minus the spec's ``feature_lag_ms``
  (1 ms: what the online store holds when the event arrives: the feature rows of earlier events,
  never of the event itself), honouring each row's ``created_ts`` (a value computed later than that
  instant is invisible) and the group's TTL. Request-time features are computed from each spine row
  by the very functions the service calls (:mod:`risk_assets.features.request`).
* **Layout** — ``event_id``, ``event_ts`` (the spine's id and time, whatever the source calls them),
  the carried columns, ``is_fraud``, ``scenario``, ``weight``, the model features as Float64.
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
from risk_assets.features.request import request_frame
from risk_assets.features.spec import FeatureGroup
from risk_assets.models.exchange_spec import SPINE_EVENT_TYPES, exchange_model
from risk_assets.models.model_spec import FRAME_ID, FRAME_TS, LABEL_COLUMNS, ModelSpec

__all__ = [
    "LABEL_COLUMNS",
    "SPINE_COLUMNS",
    "SPINE_EVENT_TYPES",
    "TrainingSetSpec",
    "build_training_set",
    "feature_tables",
    "manifest_bytes",
    "model_feature_columns",
    "parquet_bytes",
    "spine_and_labels",
]

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
"""Exchange event columns a decision frame reads (monitoring); a spec's own are ``spine_columns()``."""


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


def _model(model: ModelSpec | None, groups: Sequence[FeatureGroup] | None) -> ModelSpec:
    if model is None:
        return exchange_model(groups)
    return model if groups is None else model.with_groups(groups)


def spine_and_labels(
    spec: TrainingSetSpec, events: pl.DataFrame, labels: pl.DataFrame, model: ModelSpec | None = None
) -> pl.DataFrame:
    """The spine: decision events of the window with their mature label and sampling weight (in
    the source's own column names, plus ``is_fraud``, ``scenario``, ``weight``)."""
    model = model or exchange_model()
    src, rule = model.spine.source, model.label
    ts, idc = src.timestamp, src.id_column
    cond = (pl.col(ts) >= spec.start) & (pl.col(ts) < spec.end)
    for w in model.spine.filters:
        cond = cond & w.expr()
    spine = events.filter(cond).select(model.spine_columns()).unique(subset=idc, keep="first").sort(ts, idc)
    lab = rule.source
    known_cond = pl.col(lab.timestamp) < spec.as_of
    for w in rule.filters:
        known_cond = known_cond & w.expr()
    scenario = (
        pl.col(rule.scenario_column).cast(pl.String).sort().first()
        if rule.scenario_column
        else pl.lit(lab.name, pl.String).first()
    )
    known = (
        labels.filter(known_cond)
        .group_by(lab.key)
        .agg(scenario.alias("scenario"))
        .with_columns(pl.lit(True).alias("is_fraud"))
    )
    if known.schema[lab.key] != spine.schema[idc]:
        known = known.with_columns(pl.col(lab.key).cast(spine.schema[idc]))
    spine = spine.join(known, left_on=idc, right_on=lab.key, how="left", maintain_order="left").with_columns(
        pl.col("is_fraud").fill_null(False)
    )
    if spec.negative_rate < 1.0:
        keep = (pl.col(idc).hash(spec.seed) % 1_000_000) < int(spec.negative_rate * 1_000_000)
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


def model_feature_columns(groups: Sequence[FeatureGroup], model: ModelSpec | None = None) -> list[str]:
    """Every model input column of a training set, in a stable order: the request features, then
    the numeric features of every group that are model inputs (helpers marked
    ``model_input=False`` — e.g. a ratio's operands — are stored and served, never model inputs).
    ``model``: whose request features (default the exchange's)."""
    return (model or exchange_model()).feature_columns(groups)


def build_training_set(
    spec: TrainingSetSpec,
    events: pl.DataFrame,
    labels: pl.DataFrame,
    offline: Mapping[str, pl.DataFrame | pl.LazyFrame],
    groups: Sequence[FeatureGroup] | None = None,
    *,
    model: ModelSpec | None = None,
) -> tuple[pl.DataFrame, dict]:
    """The training set frame (ids, label columns, model features) and its manifest, for ``model``
    (default: the exchange's spec) over ``groups`` (default: the model's groups)."""
    model = _model(model, groups)
    src = model.spine.source
    lag = timedelta(milliseconds=model.timing.feature_lag_ms)
    spine = spine_and_labels(spec, events, labels, model).with_columns(
        (pl.col(src.timestamp) - lag).alias("feature_as_of")
    )
    joined = point_in_time_join(spine, feature_tables(model.groups, offline), spine_timestamp="feature_as_of")
    features = model.feature_columns()
    joined = request_frame(model.request, joined)
    carried = [c for c in model.frame_columns if c not in (FRAME_ID, FRAME_TS)]
    frame = joined.select(
        pl.col(src.id_column).alias(FRAME_ID),
        pl.col(src.timestamp).alias(FRAME_TS),
        *carried,
        *LABEL_COLUMNS,
        *features,
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
        "feature_groups": {g.name: g.version for g in model.groups},
        "model_spec": model.identity(),
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
