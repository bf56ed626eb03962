"""Point-in-time-correct training sets: mature labels, sampled negatives, every feature group
computed at each event's time (semantics v2) — for any model specification
(:mod:`risk_assets.models.model_spec`; the exchange's by default).

Pure Polars (no Dagster), so a data scientist builds the same set from a notebook::

    spec = TrainingSetSpec(as_of=datetime(2026, 11, 20, tzinfo=UTC))
    since = spec.start - feature_history(model.groups)
    events = source.events(lake, since, spec.end)   # every column the groups read
    labels = source.labels(lake, since, spec.as_of)
    frame, manifest = build_training_set(spec, events, labels, model=model)

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
* **Features** — every group's v2 value at the event's time, computed from the raw events by the
  spine-driven engine (:func:`risk_assets.features.spine.features_at`): windows end *before* the
  event time (the event itself and anything in its millisecond are not in them — what risk-serve
  finishes from the tiles when it scores the event), window starts floored to the hop. The spec's
  ``feature_lag_ms`` L moves the query time to ``event time − (L − 1) ms`` (the default L = 1 ms is
  exactly the exclusive end). No stored snapshot is joined: v1 joined the nearest offline row at
  ``event_ts − 1 ms``, the state right after the entity's *previous* event, never brought forward to
  the scoring time (a burst at 09:00 still counted in a 10-minute window at 14:00). Labels feed
  label aggregates only through their availability delay (``label_ts < t − D``): no future label
  leaks. An event whose key for a group is null gets nulls for that group. Request-time features
  are computed from each spine row by the very functions the service calls
  (:mod:`risk_assets.features.request`).
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

from risk_assets.features.point_in_time import FeatureTable
from risk_assets.features.request import request_frame
from risk_assets.features.spec import SEMANTICS_VERSION, FeatureGroup
from risk_assets.features.spine import features_at, history
from risk_assets.models.exchange_spec import SPINE_EVENT_TYPES, exchange_model
from risk_assets.models.model_spec import FRAME_ID, FRAME_TS, LABEL_COLUMNS, ModelSpec

__all__ = [
    "LABEL_COLUMNS",
    "SPINE_COLUMNS",
    "SPINE_EVENT_TYPES",
    "TrainingSetSpec",
    "build_training_set",
    "feature_history",
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


def feature_history(groups: Sequence[FeatureGroup]) -> timedelta:
    """Event history the features need before ``spec.start`` (longest window + hop + offset)."""
    return history(groups)


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
    """One ``FeatureTable`` per group from its offline rows (keys, event_ts, created_ts, features): the
    point-in-time join of stored snapshot rows (v1 rows of the offline store; kept for snapshot-type
    tables and comparisons — training sets compute group features with the spine engine)."""
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
    groups: Sequence[FeatureGroup] | None = None,
    *,
    model: ModelSpec | None = None,
) -> tuple[pl.DataFrame, dict]:
    """The training set frame (ids, label columns, model features) and its manifest, for ``model``
    (default: the exchange's spec) over ``groups`` (default: the model's groups).

    ``events``: the spine source's events with every column the groups read, covering
    ``[spec.start − feature_history(groups), spec.end)`` (less history gives smaller windows at the
    start of the set); ``labels``: the label source's labels known at ``spec.as_of`` of those events
    (from ``spec.start − history`` on)."""
    model = _model(model, groups)
    src = model.spine.source
    # v2 windows end before the query time: the default 1 ms lag is the exclusive end itself.
    shift = timedelta(milliseconds=model.timing.feature_lag_ms - 1)
    spine = spine_and_labels(spec, events, labels, model).with_columns(
        (pl.col(src.timestamp) - shift).alias("feature_at")
    )
    joined = features_at(spine, events, model.groups, labels, timestamp="feature_at")
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
