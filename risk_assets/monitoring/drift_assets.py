"""The daily drift report: the inputs and outputs of the model that served the day against its
training set (the model: ``attribution`` — the prediction log, else the champion timeline).

Thin wiring around :mod:`risk_assets.monitoring.drift` (statistics), :mod:`~risk_assets.monitoring.
decisions` (the current window, built like training sets) and :mod:`~risk_assets.monitoring.reports`
(the page). Paths in :mod:`risk_assets.monitoring.artifacts`.

Checks on the share of the champion's features in category ``drift`` (see ``drift.py``):
``DRIFT_SHARE_WARN`` (0.20) → ``drift_share_warn`` fails with severity WARN;
``DRIFT_SHARE_ERROR`` (0.40) → ``drift_share_error`` fails with severity ERROR.
"""

import math
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
import polars as pl

from risk_assets import plots
from risk_assets.automation import MONITORING_DAYS
from risk_assets.features.groups import FEATURE_GROUPS
from risk_assets.lake import Lake
from risk_assets.models.artifacts import MissingArtifact, read_training_set
from risk_assets.models.scoring import Scorer, champion_scorer, load_scorer
from risk_assets.models.training_set import SPINE_COLUMNS, TrainingSetSpec, spine_and_labels
from risk_assets.monitoring.artifacts import drift_report_paths, write_json
from risk_assets.monitoring.attribution import (
    attribute_versions,
    dominant_version,
    source_counts,
    version_counts,
)
from risk_assets.monitoring.decisions import decision_frame, labels_within, weighted_rate
from risk_assets.monitoring.drift import DriftReport, drift_report, label_rate_drift, prediction_drift
from risk_assets.monitoring.reports import drift_markdown, metadata_float
from risk_assets.names import (
    DRIFT_REPORT,
    DRIFT_SHARE_ERROR_CHECK,
    DRIFT_SHARE_WARN_CHECK,
    LABEL_RATE_STABLE_CHECK,
    PREDICTION_PSI,
    PREDICTION_STABLE_CHECK,
    RAW_EVENTS,
    RAW_LABELS,
    SHARE_DRIFTED,
    TRAINING_SET,
    feature_asset_key,
)
from risk_assets.partitions import TimePartitions
from risk_assets.resources import LakeResource, RawEventSource
from risk_assets.run_config import RunConfig

OWNER = "team:risk-ml"
GROUP = "monitoring"
DAY = timedelta(days=1)

DRIFT_SHARE_WARN = 0.20
"""``drift_share_warn`` fails (WARN) when more than this share of features drifted."""
DRIFT_SHARE_ERROR = 0.40
"""``drift_share_error`` fails (ERROR) when more than this share of features drifted."""
TOP_PSI = 10
"""Features whose PSI is reported as ``psi/<feature>`` metadata (highest PSI first)."""


def _champion(store: Lake) -> Scorer:
    scorer = champion_scorer(store)
    if scorer is None:
        raise dg.Failure("no champion yet: train and promote a model first (model_promotion)")
    return scorer


def serving_model(store: Lake, current: pl.DataFrame) -> tuple[Scorer, dict[str, Any]]:
    """The model that served most of the day's decisions (``attribution``: the prediction log,
    else the registry's champion timeline in event time, else the current champion), loaded, and
    ``{"versions": events per version, "sources": events per attribution source}``."""
    champ = _champion(store)
    attributed = attribute_versions(store, current.select("event_id", "event_ts"), champ.version)
    version = dominant_version(attributed) or champ.version
    scorer = champ if version == champ.version else load_scorer(store, version)
    return scorer, {"versions": version_counts(attributed), "sources": source_counts(attributed)}


def reference_day(scorer: Scorer) -> str:
    """Partition key of the training set the model was trained on (``as_of`` is the end of it)."""
    as_of = scorer.training_as_of
    if not as_of:
        raise dg.Failure(f"model {scorer.version} records no training set as_of")
    return (datetime.fromisoformat(as_of).astimezone(UTC) - DAY).strftime("%Y-%m-%d")


def drift_check_results(share_drifted: float, drifted: int, features: int) -> list[dg.AssetCheckResult]:
    """The two drift checks for a report: WARN above ``DRIFT_SHARE_WARN``, ERROR above
    ``DRIFT_SHARE_ERROR`` (a share equal to a threshold passes)."""
    out = []
    for name, threshold, severity in (
        (DRIFT_SHARE_WARN_CHECK, DRIFT_SHARE_WARN, dg.AssetCheckSeverity.WARN),
        (DRIFT_SHARE_ERROR_CHECK, DRIFT_SHARE_ERROR, dg.AssetCheckSeverity.ERROR),
    ):
        out.append(
            dg.AssetCheckResult(
                check_name=name,
                asset_key=DRIFT_REPORT,
                passed=bool(share_drifted <= threshold),
                severity=severity,
                metadata={
                    "share_drifted": share_drifted,
                    "threshold": threshold,
                    "drifted": drifted,
                    "features": features,
                },
            )
        )
    return out


def category_check(name: str, category: str, metadata: dict[str, Any]) -> dg.AssetCheckResult:
    """A check that agrees with the report's text: passes on ``no_drift``, fails WARN on ``warn``,
    ERROR on ``drift``; an ``unknown`` category (nothing to compare) passes with a note."""
    severity = dg.AssetCheckSeverity.ERROR if category == "drift" else dg.AssetCheckSeverity.WARN
    return dg.AssetCheckResult(
        check_name=name,
        asset_key=DRIFT_REPORT,
        passed=category in ("no_drift", "unknown"),
        severity=severity,
        metadata={**metadata, "category": category},
        description="nothing to compare yet (no mature labels)" if category == "unknown" else None,
    )


def _drifted_histograms(
    report: DriftReport,
    reference: pl.DataFrame,
    current: pl.DataFrame,
    psi_by_feature: list[tuple[str, float]],
) -> str:
    """Reference vs current distributions of the (up to 6) numeric features with the highest PSI
    among those not in category ``no_drift`` (or the highest PSI overall when none drifted)."""
    kinds = {c.column: (c.kind, c.category) for c in report.columns}
    numeric = [n for n, _ in psi_by_feature if kinds.get(n, ("", ""))[0] == "numeric"]
    moved = [n for n in numeric if kinds[n][1] != "no_drift"] or numeric
    names = moved[:6]
    return plots.feature_histograms(
        {n: reference[n].cast(pl.Float64).to_numpy() for n in names},
        {n: current[n].cast(pl.Float64).to_numpy() for n in names},
        title="Highest-PSI features: training reference vs this day",
    )


class DriftReportConfig(RunConfig):
    """Settings of the daily drift report."""

    label_maturity_days: int = -1
    """Label-rate drift is measured on the day this many days before the partition (labels known at
    its end); -1: the champion's training-set maturity, so both rates had the same time to arrive."""


def build_drift_report(partitions: TimePartitions) -> dg.AssetsDefinition:
    """The daily ``drift_report`` asset with its checks."""

    @dg.asset(
        key=DRIFT_REPORT,
        partitions_def=partitions.daily,
        automation_condition=MONITORING_DAYS,
        deps=[TRAINING_SET, *[feature_asset_key(g.name) for g in FEATURE_GROUPS], RAW_EVENTS, RAW_LABELS],
        group_name=GROUP,
        owners=[OWNER],
        kinds={"polars"},
        check_specs=[
            dg.AssetCheckSpec(
                DRIFT_SHARE_WARN_CHECK,
                asset=DRIFT_REPORT,
                description=f"WARN when more than {DRIFT_SHARE_WARN:.0%} of the champion's features drifted.",
            ),
            dg.AssetCheckSpec(
                DRIFT_SHARE_ERROR_CHECK,
                asset=DRIFT_REPORT,
                description=(
                    f"ERROR when more than {DRIFT_SHARE_ERROR:.0%} of the champion's features drifted."
                ),
            ),
            dg.AssetCheckSpec(
                PREDICTION_STABLE_CHECK,
                asset=DRIFT_REPORT,
                description="The champion's score distribution: WARN on category warn, ERROR on drift.",
            ),
            dg.AssetCheckSpec(
                LABEL_RATE_STABLE_CHECK,
                asset=DRIFT_REPORT,
                description="The mature label rate against the reference: WARN on warn, ERROR on drift.",
            ),
        ],
        description=(
            "Daily drift of the inputs and outputs of the model that served the day (the prediction "
            "log's model versions, else the registry's champion timeline in event time; the one that "
            "served most of the day's decisions — `champion` in the metadata). Current window: the "
            "day's decision events "
            "with features joined point-in-time exactly as training sets join them (`build_training_set`, "
            "window = the day, maturity 0). Reference: the training set that model was trained on (its "
            "manifest's `as_of`). Per feature KS/χ² + PSI + Hellinger + category; prediction drift of "
            "its scores (reference: its out-of-sample validation+test rows); label-rate drift "
            "of the newest day whose labels had `maturity` days to arrive vs the reference, both "
            "counting only labels that arrived within `maturity` of their event. Written to "
            "`monitoring/drift/dt=YYYY-MM-DD/` (JSON, Markdown, Parquet)."
        ),
    )
    def drift_report_asset(
        context: dg.AssetExecutionContext,
        config: DriftReportConfig,
        lake: LakeResource,
        raw_event_source: RawEventSource,
    ) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
        """Compare the day's decision events with the champion's training set."""
        store = lake.lake()
        t0 = time.perf_counter()
        day = context.partition_key
        window = context.partition_time_window
        current = decision_frame(
            store,
            raw_event_source,
            TrainingSetSpec(as_of=window.end, window=DAY, maturity=timedelta(0)),
            FEATURE_GROUPS,
        )
        if current.height == 0:
            raise dg.Failure(f"no decision events on {day}: is the archive / offline store materialized?")
        scorer, served = serving_model(store, current)
        ref_day = reference_day(scorer)
        try:
            reference, ref_manifest = read_training_set(store, ref_day)
        except MissingArtifact as exc:
            raise dg.Failure(str(exc)) from exc
        features = [f for f in scorer.features if f in reference.columns and f in current.columns]
        report = drift_report(reference, current, features)

        # Prediction drift: the serving model's scores on its out-of-sample reference rows vs today.
        split_start = (scorer.manifest.get("split") or {}).get("validation_start")
        ref_oos = reference
        if split_start:
            ref_oos = reference.filter(pl.col("event_ts") >= datetime.fromisoformat(split_start))
        pred = prediction_drift(scorer.score(ref_oos), scorer.score(current))

        # Label-rate drift on the newest day whose labels are as mature as the reference's.
        maturity = config.label_maturity_days
        if maturity < 0:
            maturity = math.ceil(float(ref_manifest.get("maturity_days", 7)))
        # Both sides count a label only if it arrived within `maturity` of its event.
        label_day = window.start - maturity * DAY
        label_spec = TrainingSetSpec(as_of=window.end, window=DAY, maturity=window.end - (label_day + DAY))
        label_events = raw_event_source.events(store, label_spec.start, label_spec.end, list(SPINE_COLUMNS))
        day_labels = raw_event_source.labels(store, label_spec.start, label_spec.as_of)
        label_frame = labels_within(
            spine_and_labels(label_spec, label_events, day_labels), day_labels, maturity * DAY
        )
        ref_labelled = reference.select("event_id", "event_ts", "weight")
        if reference.height:
            ref_start, ref_end = reference["event_ts"].min(), reference["event_ts"].max()
            ref_labels = raw_event_source.labels(store, ref_start, ref_end + maturity * DAY)
            ref_labelled = labels_within(ref_labelled, ref_labels, maturity * DAY)
        ref_rate, cur_rate = weighted_rate(ref_labelled), weighted_rate(label_frame)
        labels_known = label_frame.height > 0 and reference.height > 0
        lrd = (
            label_rate_drift(ref_rate, reference.height, cur_rate, label_frame.height)
            if labels_known
            else None
        )

        psi_by_feature = sorted(
            ((c.column, c.psi) for c in report.columns if math.isfinite(c.psi)), key=lambda kv: -kv[1]
        )
        summary: dict[str, Any] = {
            "day": day,
            "champion": scorer.version,
            "served_versions": served["versions"],
            "version_sources": served["sources"],
            "reference_day": ref_day,
            "rows_reference": reference.height,
            "rows_current": current.height,
            "features": len(features),
            "drifted": len(report.drifted),
            "warned": sum(1 for c in report.columns if c.category == "warn"),
            SHARE_DRIFTED: report.share_drifted,
            "drifted_features": report.drifted,
            PREDICTION_PSI: metadata_float(pred.psi),
            "prediction_ks": metadata_float(pred.ks),
            "prediction_hellinger": metadata_float(pred.hellinger),
            "prediction_category": pred.category,
            "label_day": label_day.strftime("%Y-%m-%d"),
            "label_rate": cur_rate,
            "label_rate_reference": ref_rate,
            "label_rate_rows": label_frame.height,
            "label_rate_pvalue": metadata_float(lrd.pvalue) if lrd else math.nan,
            "label_rate_relative_change": metadata_float(lrd.relative_change) if lrd else math.nan,
            "label_rate_category": lrd.category if lrd else "unknown",
            "top_psi": dict(psi_by_feature[:TOP_PSI]),
            "thresholds": {"warn": DRIFT_SHARE_WARN, "error": DRIFT_SHARE_ERROR},
        }
        markdown = drift_markdown(report, summary)
        json_path, md_path, parquet_path = drift_report_paths(day)
        write_json(store, json_path, summary)
        store.write_bytes(md_path, markdown.encode())
        store.write_parquet(report.to_frame(), parquet_path)
        seconds = round(time.perf_counter() - t0, 3)
        context.log.info(
            "drift %s: %d/%d features drifted, prediction PSI %.4f, %.1fs",
            day,
            len(report.drifted),
            len(features),
            pred.psi,
            seconds,
        )
        yield dg.MaterializeResult(
            metadata={
                "dagster/row_count": current.height,
                "rows_current": current.height,
                "rows_reference": reference.height,
                "features": len(features),
                "drifted": len(report.drifted),
                "warned": summary["warned"],
                SHARE_DRIFTED: report.share_drifted,
                PREDICTION_PSI: summary[PREDICTION_PSI],
                "prediction_ks": summary["prediction_ks"],
                "prediction_category": pred.category,
                "label_rate": metadata_float(cur_rate),
                "label_rate_reference": metadata_float(ref_rate),
                "label_rate_pvalue": summary["label_rate_pvalue"],
                "label_rate_category": summary["label_rate_category"],
                "label_day": summary["label_day"],
                "champion": scorer.version,
                "served_versions": dg.MetadataValue.json(served["versions"]),
                "reference_day": ref_day,
                "seconds": seconds,
                **{f"psi/{name}": metadata_float(v) for name, v in psi_by_feature[:TOP_PSI]},
                "report": dg.MetadataValue.md(markdown),
                "drifted_histograms": dg.MetadataValue.md(
                    _drifted_histograms(report, reference, current, psi_by_feature)
                ),
                "path": store.uri(json_path),
            }
        )
        yield from drift_check_results(report.share_drifted, len(report.drifted), len(features))
        yield category_check(
            PREDICTION_STABLE_CHECK, pred.category, {PREDICTION_PSI: summary[PREDICTION_PSI]}
        )
        yield category_check(
            LABEL_RATE_STABLE_CHECK,
            summary["label_rate_category"],
            {"label_rate": metadata_float(cur_rate), "label_rate_reference": metadata_float(ref_rate)},
        )

    return drift_report_asset
