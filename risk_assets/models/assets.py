"""Model assets: the point-in-time training set, the challenger, the guarded promotion, what serves.

Thin wiring around `training_set`, `training`, `promotion`, `registry` and `artifacts`; the daily
assets (built for the deployment's partitions by :func:`model_assets`) are "as of the end of that
day"."""

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
import numpy as np
import polars as pl

from risk_assets import plots
from risk_assets.automation import TRAINING_DAYS
from risk_assets.features.groups import FEATURE_GROUPS
from risk_assets.features.offline_store import read_offline
from risk_assets.lake import Lake
from risk_assets.models import registry
from risk_assets.models.artifacts import (
    MissingArtifact,
    read_challenger,
    read_training_set,
    training_set_paths,
    write_challenger,
)
from risk_assets.models.coverage import WindowCoverage, window_coverage
from risk_assets.models.exchange_spec import EXCHANGE_MODEL
from risk_assets.models.promotion import (
    ShadowRequirement,
    promote_or_shadow,
    recent_holdout,
    rollback,
)
from risk_assets.models.thresholds import MANIFEST_KEY as THRESHOLDS_KEY
from risk_assets.models.thresholds import ThresholdPolicy, choose_thresholds, manifest_thresholds
from risk_assets.models.training import (
    TrainingParams,
    drop_known_entities,
    feature_matrix,
    manifest_for,
    predict,
    train,
)
from risk_assets.models.training_set import (
    SPINE_COLUMNS,
    TrainingSetSpec,
    build_training_set,
    manifest_bytes,
    parquet_bytes,
)
from risk_assets.monitoring.artifacts import read_shadow_report
from risk_assets.names import (
    CHALLENGER_MODEL,
    CHALLENGER_SANITY_CHECK,
    DEPLOYED_MODEL,
    MODEL_PROMOTION,
    RAW_EVENTS,
    RAW_LABELS,
    ROW_COUNT,
    SERVING_MATCHES_CHAMPION_CHECK,
    TRAINING_CLASS_BALANCE_CHECK,
    TRAINING_POSITIVES_CHECK,
    TRAINING_SET,
    TRAINING_WINDOW_COVERAGE_CHECK,
    feature_asset_key,
)
from risk_assets.partitions import TimePartitions
from risk_assets.resources import LakeResource, RawEventSource, ScoringServiceResource
from risk_assets.run_config import RunConfig
from risk_assets.serving.service_probe import served_model_version

OWNER = "team:risk-ml"


class TrainingSetConfig(RunConfig):
    """Training window settings (editable in the Launchpad)."""

    window_days: int = 14
    """Days of events in the set."""
    maturity_days: int = 7
    """Every event is at least this old at the cutoff, so its label had time to arrive."""
    negative_rate: float = 1.0
    """Share of negatives kept (weights record it)."""


def _training_set(store: Lake, day: str) -> tuple[pl.DataFrame, dict[str, Any]]:
    try:
        return read_training_set(store, day)
    except MissingArtifact as exc:
        raise dg.Failure(str(exc)) from exc


class ModelTrainingConfig(RunConfig):
    """XGBoost hyper-parameters and the time split (mirrors ``training.TrainingParams``)."""

    n_estimators: int = 400
    """Boosting rounds at most (early stopping usually ends sooner)."""
    max_depth: int = 6
    """Depth of each tree."""
    learning_rate: float = 0.05
    """Shrinkage of each tree's contribution."""
    subsample: float = 0.8
    """Share of training rows sampled per tree."""
    colsample_bytree: float = 0.8
    """Share of features sampled per tree."""
    min_child_weight: float = 1.0
    """Minimum (hessian) weight of a leaf."""
    reg_lambda: float = 1.0
    """L2 regularisation of leaf weights."""
    seed: int = 17
    """Random seed: the same set and settings give the same model bytes."""
    nthread: int = 2
    """XGBoost threads."""
    early_stopping_rounds: int = 50
    """Stop after this many rounds without a better validation average precision (0: never)."""
    train_fraction: float = 0.6
    """Share of the set's time span used for training (the oldest part)."""
    validation_fraction: float = 0.2
    """Share of the time span for validation (early stopping; 0: none, fixed rounds); test gets the rest."""
    gap_hours: float = 24.0
    """Hours dropped before validation and before test (label delay, cases straddling a boundary)."""
    top_k: int = 50
    """Daily review-queue size for the precision@k metric."""
    train_start: str | None = None
    """Date split (ISO 8601, naive = UTC): train window start (empty: the first row)."""
    train_end: str | None = None
    """Date split: train window end, exclusive (set with test_start to split by dates, not fractions)."""
    validation_start: str | None = None
    """Date split: validation window start (with validation_end; neither: no validation, fixed rounds)."""
    validation_end: str | None = None
    """Date split: validation window end, exclusive."""
    test_start: str | None = None
    """Date split: test window start."""
    test_end: str | None = None
    """Date split: test window end, exclusive (empty: through the last row)."""
    entity_column: str | None = None
    """Entity column of the per-entity daily precision@k (empty: the model spec's, user_id)."""
    entity_top_k: int = 100
    """Entities per day in the per-entity precision@k review queue."""
    drop_known_entities: bool = False
    """Drop from the test split the entities with a positive label in the train split."""
    review_fpr: float = 0.01
    """Threshold policy: weighted false-positive rate of `review` on the test split."""
    block_fpr: float = 0.001
    """Threshold policy: weighted false-positive rate of `block` on the test split."""
    review_per_day: float | None = None
    """Threshold policy: a daily review budget instead of `review_fpr` (events flagged per day)."""

    def params(self) -> TrainingParams:
        return TrainingParams(**self.model_dump(exclude=set(_POLICY_FIELDS)))

    def threshold_policy(self) -> ThresholdPolicy:
        return ThresholdPolicy(**self.model_dump(include=set(_POLICY_FIELDS)))


_POLICY_FIELDS = ("review_fpr", "block_fpr", "review_per_day")


def _metric_metadata(prefix: str, metrics: dict) -> dict[str, float]:
    return {f"{prefix}{k}": float(v) for k, v in metrics.items() if isinstance(v, int | float) and v == v}


class PromotionConfig(RunConfig):
    """The promotion gate's settings."""

    metric: str = "average_precision"
    """The holdout metric both models are compared on."""
    margin: float = 0.01
    """The challenger must beat the champion by at least this much (absolute) on the holdout."""
    holdout_days: float = 2.0
    """The most recent days of the training set, scored by both models."""
    min_shadow_days: float = 0.0
    """Require a shadow period: the candidate was scored in shadow by risk-serve for at least this
    many days of event time (the ``shadow_comparison`` report); 0 with ``min_shadow_labelled`` 0:
    no shadow period required."""
    min_shadow_labelled: int = 0
    """Require at least this many matured (labelled) shadow-scored events."""


MIN_POSITIVE_SHARE = 0.0001
MAX_POSITIVE_SHARE = 0.5
_DEFAULTS = TrainingSetConfig()
FEATURE_DAYS = dg.TimeWindowPartitionMapping(
    start_offset=-(_DEFAULTS.window_days + _DEFAULTS.maturity_days + 1),
    end_offset=-_DEFAULTS.maturity_days,
    allow_nonexistent_upstream_partitions=True,
)
"""The feature days a training set (as of the end of day d) reads with the default window: its events
of [d − maturity − window, d − maturity), each joined with up to a day (TTL) of older rows."""


def _training_set_checks(
    day: str, spec: TrainingSetSpec, manifest: dict[str, Any], coverage: WindowCoverage
) -> Iterator[dg.AssetCheckResult]:
    window = f"events {spec.start:%Y-%m-%d} .. {spec.end - timedelta(milliseconds=1):%Y-%m-%d}"
    yield dg.AssetCheckResult(
        check_name=TRAINING_WINDOW_COVERAGE_CHECK,
        asset_key=TRAINING_SET,
        passed=coverage.complete,
        metadata={
            "feature_days": coverage.feature_days,
            "groups_missing_days": len(coverage.missing_feature_days),
            "feature_days_missing": sum(len(d) for d in coverage.missing_feature_days.values()),
            "labels_through": coverage.labels_through or "-",
            "labels_needed_through": coverage.labels_needed_through,
        },
        description=None
        if coverage.complete
        else f"training set as of {day} ({window}): {coverage.summary()}; materialize them, then rebuild",
    )
    rows, positives = int(manifest["rows"]), int(manifest["positives"])
    yield dg.AssetCheckResult(
        check_name=TRAINING_POSITIVES_CHECK,
        asset_key=TRAINING_SET,
        passed=rows > 0 and positives > 0,
        metadata={ROW_COUNT: rows, "positives": positives},
        description=None
        if rows > 0 and positives > 0
        else f"training set as of {day} ({window}) has {rows} rows and {positives} mature positives: "
        "check raw_events/raw_labels for the window, or widen window_days",
    )
    share = float(manifest["positive_share"])
    balanced = MIN_POSITIVE_SHARE <= share <= MAX_POSITIVE_SHARE
    yield dg.AssetCheckResult(
        check_name=TRAINING_CLASS_BALANCE_CHECK,
        asset_key=TRAINING_SET,
        passed=balanced,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"positive_share": share, "min": MIN_POSITIVE_SHARE, "max": MAX_POSITIVE_SHARE},
        description=None if balanced else f"positive share {share:.4%} is outside the expected range",
    )


def _challenger_sanity(
    metrics: dict[str, Any], y: np.ndarray, scores: np.ndarray, w: np.ndarray
) -> dg.AssetCheckResult:
    auc = float(metrics.get("auc", float("nan")))
    ap = float(metrics.get("average_precision", float("nan")))
    base = float((w * y).sum() / w.sum()) if len(w) and w.sum() > 0 else float("nan")
    spread = float(np.nanstd(scores)) if len(scores) else 0.0
    problems = []
    if not auc > 0.5:
        problems.append(f"test AUC {auc:.3f} is not above 0.5")
    if not ap > base:
        problems.append(f"test AP {ap:.4f} is not above the base rate {base:.4f}")
    if not spread > 0:
        problems.append("test scores are constant")
    return dg.AssetCheckResult(
        check_name=CHALLENGER_SANITY_CHECK,
        asset_key=CHALLENGER_MODEL,
        passed=not problems,
        metadata={"auc": auc, "average_precision": ap, "base_rate": base, "score_std": spread},
        description="; ".join(problems) or None,
    )


def model_assets(partitions: TimePartitions) -> list[dg.AssetsDefinition]:
    """The model domain's daily assets: training set, challenger, promotion."""

    @dg.asset(
        key=TRAINING_SET,
        partitions_def=partitions.daily,
        automation_condition=TRAINING_DAYS,
        deps=[
            RAW_EVENTS,
            RAW_LABELS,
            *[dg.AssetDep(feature_asset_key(g.name), partition_mapping=FEATURE_DAYS) for g in FEATURE_GROUPS],
        ],
        check_specs=[
            dg.AssetCheckSpec(
                TRAINING_WINDOW_COVERAGE_CHECK,
                asset=TRAINING_SET,
                blocking=True,
                description=(
                    "Every feature day of the window is in the offline store for every group and the label "
                    "archive reaches the cutoff; a set built over missing inputs never reaches training."
                ),
            ),
            dg.AssetCheckSpec(
                TRAINING_POSITIVES_CHECK,
                asset=TRAINING_SET,
                blocking=True,
                description="The set has rows and at least one mature positive label.",
            ),
            dg.AssetCheckSpec(
                TRAINING_CLASS_BALANCE_CHECK,
                asset=TRAINING_SET,
                description=(
                    f"WARN when the positive share is outside [{MIN_POSITIVE_SHARE:.2%}, "
                    f"{MAX_POSITIVE_SHARE:.0%}] (labels missing, or the spine is not the decisions it "
                    "should be)."
                ),
            ),
        ],
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
    ) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
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
        coverage = window_coverage(store, FEATURE_GROUPS, spec.start, spec.end, spec.as_of)
        yield dg.MaterializeResult(
            metadata={
                ROW_COUNT: manifest["rows"],
                "positives": manifest["positives"],
                "positive_share": manifest["positive_share"],
                "features": len(manifest["features"]),
                **{f"positives/{k}": v for k, v in manifest["positives_by_scenario"].items()},
                "window": f"{spec.start:%Y-%m-%d} .. {spec.end - timedelta(milliseconds=1):%Y-%m-%d}",
                "data_sha256": manifest["data_sha256"],
                "path": store.uri(data_path),
            }
        )
        yield from _training_set_checks(context.partition_key, spec, manifest, coverage)

    @dg.asset(
        key=CHALLENGER_MODEL,
        partitions_def=partitions.daily,
        deps=[TRAINING_SET],
        check_specs=[
            dg.AssetCheckSpec(
                CHALLENGER_SANITY_CHECK,
                asset=CHALLENGER_MODEL,
                description=(
                    "Test metrics are sane: AUC above 0.5, average precision above the base rate, "
                    "scores not constant (a broken model never reaches the promotion gate unnoticed)."
                ),
            )
        ],
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
    ) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
        store = lake.lake()
        frame, ts_manifest = _training_set(store, context.partition_key)
        try:
            trained = train(frame, list(ts_manifest["features"]), config.params())
        except ValueError as exc:
            raise dg.Failure(
                f"cannot train on the training set as of {context.partition_key} (events "
                f"{ts_manifest['window_start'][:10]} .. {ts_manifest['window_end'][:10]}, "
                f"{frame.height} rows, {ts_manifest['positives']} positives): {exc}. Materialize a "
                "longer window or more days of features and labels, then train again."
            ) from exc
        parts = trained.split.parts(frame)
        test = parts["test"]
        if trained.params.drop_known_entities and trained.params.entity_column:
            test = drop_known_entities(parts["train"], test, trained.params.entity_column)
        scores = predict(trained.booster, feature_matrix(test, trained.features))
        y, w = test["is_fraud"].to_numpy(), test["weight"].to_numpy()
        thresholds = choose_thresholds(y, scores, w, test["event_ts"].to_numpy(), config.threshold_policy())
        manifest = manifest_for(trained, ts_manifest, EXCHANGE_MODEL)
        manifest[THRESHOLDS_KEY] = thresholds.to_manifest()
        version = registry.register(store, trained.model_bytes, manifest)
        write_challenger(store, context.partition_key, version)
        context.log.info(
            "registered %s (test AP %.4f)", version, trained.metrics.get("average_precision", float("nan"))
        )
        per_scenario = {
            f"{scenario}/{k}": float(v)
            for scenario, m in trained.metrics_by_scenario.items()
            for k, v in m.items()
            if k in ("auc", "average_precision", "recall_at_1pct_fpr") and isinstance(v, int | float)
        }
        yield dg.MaterializeResult(
            metadata={
                "version": version,
                **_metric_metadata("test/", trained.metrics),
                **per_scenario,
                "threshold/review": thresholds.review.threshold,
                "threshold/block": thresholds.block.threshold,
                "threshold/review_recall": thresholds.review.recall,
                "threshold/block_recall": thresholds.block.recall,
                "threshold/review_per_day": thresholds.review.flagged_per_day,
                "best_iteration": trained.best_iteration,
                "training_seconds": trained.training_seconds,
                ROW_COUNT: frame.height,
                "pr_curve": dg.MetadataValue.md(plots.pr_curve(y, scores, w)),
                "score_histogram": dg.MetadataValue.md(plots.score_histogram(y, scores, w)),
                "calibration": dg.MetadataValue.md(plots.calibration_curve(y, scores, w)),
            }
        )
        yield _challenger_sanity(trained.metrics, y, scores, w)

    @dg.asset(
        key=MODEL_PROMOTION,
        partitions_def=partitions.daily,
        deps=[CHALLENGER_MODEL],
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
        frame, _ = _training_set(store, context.partition_key)
        try:
            challenger = read_challenger(store, context.partition_key)
        except MissingArtifact as exc:
            raise dg.Failure(str(exc)) from exc
        decision, candidate, shadow_note = promote_or_shadow(
            store,
            challenger,
            recent_holdout(frame, config.holdout_days),
            requirement=ShadowRequirement(config.min_shadow_days, config.min_shadow_labelled),
            evidence_of=lambda version: read_shadow_report(store, version),
            label=f"model_promotion {context.partition_key}",
            metric=config.metric,
            margin=config.margin,
            # the rule (registry docstring): it serves the events after its training set's as-of
            effective_from=context.partition_time_window.end,
        )
        current = registry.champion(store)
        served = manifest_thresholds(registry.load_manifest(store, current.version)) if current else None
        return dg.MaterializeResult(
            metadata={
                "promoted": decision.promote,
                "candidate": candidate,
                "shadow": shadow_note,
                "champion_threshold/review": served[0] if served else math.nan,
                "champion_threshold/block": served[1] if served else math.nan,
                "challenger": challenger,
                "champion": current.version if current else "none",
                "reasons": dg.MetadataValue.md("\n".join(f"- {r}" for r in decision.reasons) or "-"),
                "audit_trail": dg.MetadataValue.md(_audit_markdown(store)),
            }
        )

    return [training_set, challenger_model, model_promotion]


def _audit_markdown(store: Lake, last: int = 10) -> str:
    rows = registry.audit_trail(store)[-last:]
    lines = ["| at | action | version | serves from (event time) | reasons |", "|---|---|---|---|---|"]
    for r in rows:
        reasons = (
            "; ".join(r.get("reasons", [])) if isinstance(r.get("reasons"), list) else r.get("reason", "")
        )
        effective = (r.get("effective_from") or "")[:19]
        lines.append(f"| {r['at'][:19]} | {r['action']} | {r.get('version', '')} | {effective} | {reasons} |")
    return "\n".join(lines)


@dg.asset(
    key=DEPLOYED_MODEL,
    deps=[MODEL_PROMOTION],
    check_specs=[
        dg.AssetCheckSpec(
            SERVING_MATCHES_CHAMPION_CHECK,
            asset=DEPLOYED_MODEL,
            description=(
                "The running scoring service reports the registry's champion (RISK_SERVE_URL); "
                "passes with a note when no service URL is configured."
            ),
        )
    ],
    group_name="serving",
    owners=[OWNER],
    kinds={"xgboost"},
    description=(
        "Which model serves: the registry's champion pointer (services poll it and hot-reload), "
        "confirmed against the running scoring service's /metrics when its URL is configured."
    ),
)
def deployed_model(
    lake: LakeResource, scoring_service: ScoringServiceResource
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
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
    served = None
    if scoring_service.url:
        served = served_model_version(scoring_service.url, wait_for=current.version)
        metadata["served_version"] = served or "unknown"
        metadata["serving_matches_champion"] = served == current.version
    yield dg.MaterializeResult(metadata=metadata)
    yield dg.AssetCheckResult(
        check_name=SERVING_MATCHES_CHAMPION_CHECK,
        asset_key=DEPLOYED_MODEL,
        passed=not scoring_service.url or served == current.version,
        metadata={"champion": current.version, "served": served or "-"},
        description=None
        if scoring_service.url
        else "RISK_SERVE_URL is not set: which model serves was not checked",
    )


class RollbackConfig(RunConfig):
    to_version: str = ""
    """Empty: the version the current champion replaced."""
    reason: str = "manual rollback"
    holdout_as_of: str = ""
    """The training set (``YYYY-MM-DD``) whose recent days are the gate's holdout for the target."""
    holdout_days: float = 2.0
    force: bool = False
    """Skip the holdout checks (integrity is still checked); needs ``operator``; audited."""
    operator: str = ""
    effective_from: str = ""
    """Event time from which the restored version serves (ISO 8601, naive = UTC; empty: now — a
    live rollback). Set it when rolling back simulated or replayed days."""


@dg.op(
    description=(
        "Point the champion back at the previous version (or `to_version`) through the gate's checks "
        "on the `holdout_as_of` training set's recent days, or forced by a named operator; audited."
    )
)
def rollback_champion(context: dg.OpExecutionContext, config: RollbackConfig, lake: LakeResource) -> None:
    store = lake.lake()
    holdout = None
    if config.holdout_as_of and not config.force:
        frame, _ = _training_set(store, config.holdout_as_of)
        holdout = recent_holdout(frame, config.holdout_days)
    try:
        new = rollback(
            store,
            config.to_version or None,
            config.reason,
            holdout_frame=holdout,
            force=config.force,
            operator=config.operator,
            effective_from=_utc(config.effective_from) if config.effective_from else None,
        )
    except ValueError as exc:  # refused by the gate or the integrity check (audited), or misconfigured
        raise dg.Failure(str(exc)) from exc
    context.log.info("champion is now %s (was %s)", new.version, new.previous)


def _utc(text: str) -> datetime:
    ts = datetime.fromisoformat(text)
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts


@dg.job(description="Roll the serving model back; services hot-reload the restored champion.")
def model_rollback_job() -> None:
    rollback_champion()
