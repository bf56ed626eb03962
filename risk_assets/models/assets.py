"""Model assets: the point-in-time training set, the challenger, the guarded promotion, what serves.

Thin wiring around `training_set`, `training`, `promotion` and `registry`; all daily partitions are
"as of the end of that day"."""

import json
import re
import time
import urllib.request
from datetime import timedelta

import dagster as dg
import polars as pl

from risk_assets.features.assets import DAILY, feature_asset_key
from risk_assets.features.groups import FEATURE_GROUPS
from risk_assets.features.offline_store import read_offline
from risk_assets.lake import Lake
from risk_assets.models import registry
from risk_assets.models.promotion import promote_if_better, recent_holdout, rollback
from risk_assets.models.training import TrainingParams, manifest_for, train
from risk_assets.models.training_set import (
    SPINE_COLUMNS,
    TrainingSetSpec,
    build_training_set,
    manifest_bytes,
    parquet_bytes,
)
from risk_assets.resources import LakeResource, RawEventSource

OWNER = "team:risk-ml"
TRAINING_SETS = "training_sets"


def training_set_paths(as_of_day: str) -> tuple[str, str]:
    """Relative lake paths of a training set and its manifest."""
    base = f"{TRAINING_SETS}/as_of={as_of_day}"
    return f"{base}/part-00000.parquet", f"{base}/manifest.json"


class TrainingSetConfig(dg.Config):
    """Training window settings (editable in the Launchpad)."""

    window_days: int = 14
    """Days of events in the set."""
    maturity_days: int = 7
    """Every event is at least this old at the cutoff, so its label had time to arrive."""
    negative_rate: float = 1.0
    """Share of negatives kept (weights record it)."""


@dg.asset(
    key="training_set",
    partitions_def=DAILY,
    deps=["raw_events", "raw_labels", *[feature_asset_key(g) for g in FEATURE_GROUPS]],
    group_name="training",
    owners=[OWNER],
    kinds={"polars", "parquet"},
    description=(
        "Point-in-time-correct training set as of the end of the partition day: withdrawals, card "
        "payments and P2P trades of a window ending `maturity_days` before the cutoff, labelled "
        "with the labels known at the cutoff, negatives sampled with weights, every feature group "
        "joined as the online store held it just before each event (no later value, no future "
        "label). `training_sets/as_of=YYYY-MM-DD/` with a manifest (window, versions, counts, hash)."
    ),
)
def training_set(
    context: dg.AssetExecutionContext,
    config: TrainingSetConfig,
    lake: LakeResource,
    raw_event_source: RawEventSource,
) -> dg.MaterializeResult:
    store = lake.lake()
    window = context.partition_time_window
    spec = TrainingSetSpec(
        as_of=window.end,
        window=timedelta(days=config.window_days),
        maturity=timedelta(days=config.maturity_days),
        negative_rate=config.negative_rate,
    )
    events = raw_event_source.events(store, spec.start, spec.end, list(SPINE_COLUMNS))
    labels = raw_event_source.labels(store, spec.start, spec.as_of)
    offline = {g.name: read_offline(store, g, spec.start - g.ttl, spec.end) for g in FEATURE_GROUPS}
    frame, manifest = build_training_set(spec, events, labels, offline, FEATURE_GROUPS)
    data_path, manifest_path = training_set_paths(context.partition_key)
    store.write_bytes(data_path, parquet_bytes(frame))
    store.write_bytes(manifest_path, manifest_bytes(manifest))
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": manifest["rows"],
            "positives": manifest["positives"],
            "positive_share": manifest["positive_share"],
            "features": len(manifest["features"]),
            **{f"positives/{k}": v for k, v in manifest["positives_by_scenario"].items()},
            "data_sha256": manifest["data_sha256"],
            "path": store.uri(data_path),
        }
    )


# -- models: challenger, promotion, deployment ---------------------------------------------------
CHALLENGERS = "models/challengers"


def challenger_pointer_path(as_of_day: str) -> str:
    """Which registered version a day's training produced (written by ``challenger_model``)."""
    return f"{CHALLENGERS}/as_of={as_of_day}.json"


class ModelTrainingConfig(dg.Config):
    """XGBoost hyper-parameters and the time split (mirrors ``training.TrainingParams``)."""

    n_estimators: int = 400
    max_depth: int = 6
    learning_rate: float = 0.05
    subsample: float = 0.8
    colsample_bytree: float = 0.8
    min_child_weight: float = 1.0
    reg_lambda: float = 1.0
    seed: int = 17
    nthread: int = 2
    early_stopping_rounds: int = 50
    train_fraction: float = 0.6
    validation_fraction: float = 0.2
    gap_hours: float = 24.0
    top_k: int = 50

    def params(self) -> TrainingParams:
        return TrainingParams(**self.model_dump())


def read_training_set(store: Lake, day: str) -> tuple[pl.DataFrame, dict]:
    """A materialized training set and its manifest (a clear failure if it was never built)."""
    data_path, manifest_path = training_set_paths(day)
    if not store.exists(data_path):
        raise dg.Failure(f"training set {store.uri(data_path)} is missing: materialize training_set first")
    return pl.read_parquet(store.read_bytes(data_path)), json.loads(store.read_bytes(manifest_path))


def _metric_metadata(prefix: str, metrics: dict) -> dict[str, float]:
    return {f"{prefix}{k}": float(v) for k, v in metrics.items() if isinstance(v, int | float) and v == v}


@dg.asset(
    key="challenger_model",
    partitions_def=DAILY,
    deps=["training_set"],
    group_name="training",
    owners=[OWNER],
    kinds={"xgboost"},
    description=(
        "An XGBoost model trained on the day's training set with a time-based split (train, a gap for "
        "label delay, validation with early stopping, test), class imbalance weighted, seeded. "
        "Registered in the lake registry (XGBoost's own format + manifest); test metrics as metadata."
    ),
)
def challenger_model(
    context: dg.AssetExecutionContext, config: ModelTrainingConfig, lake: LakeResource
) -> dg.MaterializeResult:
    store = lake.lake()
    frame, ts_manifest = read_training_set(store, context.partition_key)
    trained = train(frame, list(ts_manifest["features"]), config.params())
    version = registry.register(
        store, trained.model_bytes, manifest_for(trained, ts_manifest, FEATURE_GROUPS)
    )
    store.write_bytes(
        challenger_pointer_path(context.partition_key), json.dumps({"version": version}).encode()
    )
    context.log.info(
        "registered %s (test AP %.4f)", version, trained.metrics.get("average_precision", float("nan"))
    )
    per_scenario = {
        f"{scenario}/{k}": float(v)
        for scenario, m in trained.metrics_by_scenario.items()
        for k, v in m.items()
        if k in ("auc", "average_precision", "recall_at_1pct_fpr") and isinstance(v, int | float)
    }
    return dg.MaterializeResult(
        metadata={
            "version": version,
            **_metric_metadata("test/", trained.metrics),
            **per_scenario,
            "best_iteration": trained.best_iteration,
            "training_seconds": trained.training_seconds,
            "dagster/row_count": frame.height,
        }
    )


class PromotionConfig(dg.Config):
    """The promotion gate's settings."""

    metric: str = "average_precision"
    margin: float = 0.01
    """The challenger must beat the champion by at least this much (absolute) on the holdout."""
    holdout_days: float = 2.0
    """The most recent days of the training set, scored by both models."""


@dg.asset(
    key="model_promotion",
    partitions_def=DAILY,
    deps=["challenger_model"],
    group_name="training",
    owners=[OWNER],
    kinds={"xgboost"},
    description=(
        "The guarded promotion gate: the day's challenger replaces the champion only if it beats it "
        "by `margin` on the same recent holdout and passes the sanity checks (predictions not empty "
        "or constant, every feature servable online, feature-group versions current). Every decision "
        "is appended to the registry's audit trail (shown here)."
    ),
)
def model_promotion(
    context: dg.AssetExecutionContext, config: PromotionConfig, lake: LakeResource
) -> dg.MaterializeResult:
    store = lake.lake()
    frame, _ = read_training_set(store, context.partition_key)
    challenger = json.loads(store.read_bytes(challenger_pointer_path(context.partition_key)))["version"]
    decision = promote_if_better(
        store,
        challenger,
        recent_holdout(frame, config.holdout_days),
        metric=config.metric,
        margin=config.margin,
    )
    current = registry.champion(store)
    return dg.MaterializeResult(
        metadata={
            "promoted": decision.promote,
            "challenger": challenger,
            "champion": current.version if current else "none",
            "reasons": dg.MetadataValue.md("\n".join(f"- {r}" for r in decision.reasons) or "-"),
            "audit_trail": dg.MetadataValue.md(_audit_markdown(store)),
        }
    )


def _audit_markdown(store: Lake, last: int = 10) -> str:
    rows = registry.audit_trail(store)[-last:]
    lines = ["| at | action | version | reasons |", "|---|---|---|---|"]
    for r in rows:
        reasons = (
            "; ".join(r.get("reasons", [])) if isinstance(r.get("reasons"), list) else r.get("reason", "")
        )
        lines.append(f"| {r['at'][:19]} | {r['action']} | {r.get('version', '')} | {reasons} |")
    return "\n".join(lines)


class ScoringServiceResource(dg.ConfigurableResource):
    """Where the scoring service runs (empty: not checked)."""

    url: str = ""


@dg.asset(
    key="deployed_model",
    deps=["model_promotion"],
    group_name="serving",
    owners=[OWNER],
    kinds={"xgboost"},
    description=(
        "Which model serves: the registry's champion pointer (services poll it and hot-reload), "
        "confirmed against the running scoring service's /metrics when its URL is configured."
    ),
)
def deployed_model(lake: LakeResource, scoring_service: ScoringServiceResource) -> dg.MaterializeResult:
    store = lake.lake()
    current = registry.champion(store)
    if current is None:
        raise dg.Failure("no champion yet: materialize model_promotion first")
    metadata: dict[str, object] = {
        "champion": current.version,
        "promoted_at": current.promoted_at,
        "previous": current.previous or "none",
        "audit_trail": dg.MetadataValue.md(_audit_markdown(store)),
    }
    if scoring_service.url:
        served = served_model_version(scoring_service.url, wait_for=current.version)
        metadata["served_version"] = served or "unknown"
        metadata["serving_matches_champion"] = served == current.version
    return dg.MaterializeResult(metadata=metadata)


def served_model_version(url: str, wait_for: str | None = None, timeout_s: float = 30.0) -> str | None:
    """The version the service reports in ``risk_model_info`` (waiting up to ``timeout_s`` for
    ``wait_for`` to appear, since services reload on their own poll interval)."""
    deadline = time.monotonic() + timeout_s
    seen = None
    while True:
        try:
            with urllib.request.urlopen(f"{url.rstrip('/')}/metrics", timeout=5) as resp:
                text = resp.read().decode()
            match = re.search(r'risk_model_info\{[^}]*version="([^"]+)"', text)
            seen = match.group(1) if match else None
        except OSError:
            seen = None
        if wait_for is None or seen == wait_for or time.monotonic() > deadline:
            return seen
        time.sleep(1.0)


class RollbackConfig(dg.Config):
    to_version: str = ""
    """Empty: the version the current champion replaced."""
    reason: str = "manual rollback"


@dg.op(description="Point the champion back at the previous version (or `to_version`), audited.")
def rollback_champion(context: dg.OpExecutionContext, config: RollbackConfig, lake: LakeResource) -> None:
    new = rollback(lake.lake(), config.to_version or None, config.reason)
    context.log.info("champion is now %s (was %s)", new.version, new.previous)


@dg.job(description="Roll the serving model back; services hot-reload the restored champion.")
def model_rollback_job() -> None:
    rollback_champion()
