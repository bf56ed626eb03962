"""Delayed-label performance: each mature day scored by the model that served it, against the
labels known now; the recent pool the retraining sensor reads.

Thin wiring around :mod:`risk_assets.monitoring.performance`; the metadata keys the retraining sensor
reads come from :mod:`risk_assets.names` (``recent_key``, ``drop_key``).
"""

import time
from datetime import timedelta
from typing import Any

import dagster as dg

from risk_assets.automation import MONITORING_DAYS
from risk_assets.events.schema import SCENARIOS
from risk_assets.features.groups import FEATURE_GROUPS
from risk_assets.models.scoring import champion_scorer
from risk_assets.models.training_set import TrainingSetSpec
from risk_assets.monitoring.artifacts import realized_report_path, write_json
from risk_assets.monitoring.decisions import decision_frame
from risk_assets.monitoring.performance import (
    REALIZED_METRICS,
    SCENARIO_METRICS,
    realized_performance,
)
from risk_assets.monitoring.reports import metadata_float, realized_table_markdown
from risk_assets.names import (
    DRIFT_REPORT,
    FEATURE_PROFILES,
    MODEL_PROMOTION,
    RAW_EVENTS,
    RAW_EVENTS_DAILY_PROFILE,
    RAW_LABELS,
    REALIZED_PERFORMANCE,
    ROW_COUNT,
    drop_key,
    feature_asset_key,
    recent_key,
)
from risk_assets.partitions import TimePartitions
from risk_assets.resources import LakeResource, RawEventSource
from risk_assets.run_config import RunConfig

OWNER = "team:risk-ml"
GROUP = "monitoring"
DAY = timedelta(days=1)


class RealizedPerformanceConfig(RunConfig):
    """Which past days are scored against the labels known at the end of the partition day."""

    maturity_days: int = 2
    """A day is scored once its youngest event is this old (its labels had time to arrive)."""
    lookback_days: int = 10
    """Mature days shown per partition (newest first)."""
    recent_days: int = 3
    """The newest mature days pooled into the ``recent/*`` figures the retraining sensor reads
    (only days after the current champion's training window, i.e. out of its sample)."""


def build_realized_performance(partitions: TimePartitions) -> dg.AssetsDefinition:
    """The daily ``realized_performance`` asset."""

    @dg.asset(
        key=REALIZED_PERFORMANCE,
        partitions_def=partitions.daily,
        automation_condition=MONITORING_DAYS,
        deps=[RAW_EVENTS, RAW_LABELS, *[feature_asset_key(g.name) for g in FEATURE_GROUPS], MODEL_PROMOTION],
        group_name=GROUP,
        owners=[OWNER],
        kinds={"xgboost", "polars"},
        description=(
            "Delayed-label performance: each mature past day's decision events (features joined "
            "point-in-time), each scored by the model that served it (the prediction log's model "
            "version where the decision was logged, else the registry's champion timeline in event "
            "time, else the current champion) and "
            "evaluated against the labels known at the end of the partition day: average precision, "
            "recall at 1% FPR, AUC, overall and per scenario. `recent/*` pools the newest mature days "
            "out of the current champion's sample, scored by the current champion, with `drop/*` = its "
            "test metric at training minus the realized one (what the retraining sensor reads). "
            "`day/*` is the newest mature day (plotted per partition in the UI)."
        ),
    )
    def realized_performance_asset(
        context: dg.AssetExecutionContext,
        config: RealizedPerformanceConfig,
        lake: LakeResource,
        raw_event_source: RawEventSource,
    ) -> dg.MaterializeResult:
        """Score mature past days and measure them against the labels known now."""
        store = lake.lake()
        t0 = time.perf_counter()
        scorer = champion_scorer(store)
        if scorer is None:
            raise dg.Failure("no champion yet: train and promote a model first (model_promotion)")
        as_of = context.partition_time_window.end
        newest = as_of - config.maturity_days * DAY  # end (exclusive) of the newest mature day
        spec = TrainingSetSpec(
            as_of=as_of, window=config.lookback_days * DAY, maturity=timedelta(days=config.maturity_days)
        )
        frame = decision_frame(store, raw_event_source, spec, FEATURE_GROUPS)
        perf = realized_performance(
            store,
            frame,
            scorer,
            newest=newest,
            lookback_days=config.lookback_days,
            recent_days=config.recent_days,
        )
        pooled = perf.recent

        def drop(base: Any, realized: Any) -> float:
            return metadata_float(base) - metadata_float(realized)

        metadata: dict[str, Any] = {
            ROW_COUNT: frame.height,
            "champion": scorer.version,
            "recent/days": perf.recent_days,
            "recent/rows": int(pooled.get("rows") or 0),
            recent_key(None, "positives"): int(pooled.get("positives") or 0),
            "seconds": 0.0,
        }
        for k in REALIZED_METRICS:
            metadata[recent_key(None, k)] = metadata_float(pooled.get(k))
            metadata[f"baseline/{k}"] = metadata_float(perf.baseline.get(k))
            metadata[drop_key(None, k)] = drop(perf.baseline.get(k), pooled.get(k))
        for name in SCENARIOS:
            sub = pooled["by_scenario"].get(name) or {}
            metadata[recent_key(name, "positives")] = int(sub.get("positives") or 0)
            for k in SCENARIO_METRICS:
                metadata[recent_key(name, k)] = metadata_float(sub.get(k))
                metadata[drop_key(name, k)] = drop(
                    (perf.baseline_by_scenario.get(name) or {}).get(k), sub.get(k)
                )
        newest_day = perf.per_day[0] if perf.per_day else {}
        metadata["day/date"] = newest_day.get("day", "")
        metadata["day/positives"] = int(newest_day.get("positives") or 0)
        for k in REALIZED_METRICS:
            metadata[f"day/{k}"] = metadata_float(newest_day.get(k))
        metadata["per_day"] = dg.MetadataValue.md(realized_table_markdown(perf.per_day))
        path = realized_report_path(context.partition_key)
        write_json(
            store,
            path,
            {
                "day": context.partition_key,
                "champion": scorer.version,
                "per_day": perf.per_day,
                "recent": pooled,
                "recent_start": perf.recent_start.isoformat(),
                "baseline": perf.baseline,
                "baseline_by_scenario": perf.baseline_by_scenario,
            },
        )
        metadata["path"] = store.uri(path)
        metadata["seconds"] = round(time.perf_counter() - t0, 3)
        return dg.MaterializeResult(metadata=metadata)

    return realized_performance_asset


monitoring_daily_job = dg.define_asset_job(
    "monitoring_daily_job",
    selection=dg.AssetSelection.assets(
        RAW_EVENTS_DAILY_PROFILE, FEATURE_PROFILES, DRIFT_REPORT, REALIZED_PERFORMANCE
    ),
    description=(
        "The day's monitoring: merged raw-event profile, feature profiles, drift, realized performance."
    ),
)
