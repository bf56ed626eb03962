"""Monitoring assets: whylogs profiles, the daily drift report and delayed-label performance.

Thin wiring around :mod:`risk_assets.monitoring.profiles`, :mod:`risk_assets.monitoring.drift` and
:mod:`risk_assets.models.scoring`. Everything is written to the lake under ``profiles/`` and
``monitoring/`` and summarised as stable numeric metadata, which the retraining sensor
(:mod:`risk_assets.sensors.retraining`) reads from the instance.

Lake layout::

    profiles/raw_events/dt=YYYY-MM-DD/hour=HH/profile.bin      hourly raw-event profile
    profiles/raw_events_daily/dt=YYYY-MM-DD/profile.bin        merge of the 24 hourly profiles
    profiles/features/{group}/v={version}/dt=YYYY-MM-DD/profile.bin
    profiles/training_sets/as_of=YYYY-MM-DD/profile.bin
    monitoring/drift/dt=YYYY-MM-DD/report.{json,md}, columns.parquet
    monitoring/realized/dt=YYYY-MM-DD/report.json

Drift check thresholds (share of the champion's features in category ``drift``, see ``drift.py``):
``DRIFT_SHARE_WARN`` (0.20) → check ``drift_share_warn`` fails with severity WARN;
``DRIFT_SHARE_ERROR`` (0.40) → ``drift_share_error`` fails with severity ERROR.
"""

import io
import json
import math
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
import numpy as np
import polars as pl

from risk_assets.features.assets import DAILY, feature_asset_key
from risk_assets.features.groups import FEATURE_GROUPS
from risk_assets.features.offline_store import group_prefix, read_offline
from risk_assets.ingest.archive import EVENTS, read_archive
from risk_assets.ingest.assets import HOURLY
from risk_assets.lake import Lake
from risk_assets.models import registry
from risk_assets.models.assets import read_training_set, training_set_paths
from risk_assets.models.scoring import Scorer, champion_at, load_scorer, realized_metrics
from risk_assets.models.training_set import (
    SPINE_COLUMNS,
    TrainingSetSpec,
    build_training_set,
    spine_and_labels,
)
from risk_assets.monitoring import profiles
from risk_assets.monitoring.drift import DriftReport, drift_report, label_rate_drift, prediction_drift
from risk_assets.resources import LakeResource, RawEventSource

OWNER = "team:risk-ml"
GROUP = "monitoring"
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)

# Drift checks on the share of the champion's input features in category "drift".
DRIFT_SHARE_WARN = 0.20
"""``drift_share_warn`` fails (WARN) when more than this share of features drifted."""
DRIFT_SHARE_ERROR = 0.40
"""``drift_share_error`` fails (ERROR) when more than this share of features drifted."""
TOP_PSI = 10
"""Features whose PSI is reported as ``psi/<feature>`` metadata (highest PSI first)."""
REALIZED_METRICS = ("average_precision", "recall_at_1pct_fpr", "auc")
SCENARIOS = ("ato", "card_testing", "p2p_scam")


# -- lake paths ------------------------------------------------------------------------------------
def raw_events_profile_path(hour: datetime) -> str:
    """Lake path of one hour's raw-event profile."""
    return f"profiles/raw_events/dt={hour:%Y-%m-%d}/hour={hour:%H}/profile.bin"


def raw_events_daily_profile_path(day: str) -> str:
    """Lake path of one day's merged raw-event profile."""
    return f"profiles/raw_events_daily/dt={day}/profile.bin"


def feature_profile_path(group_name: str, version: str, day: str) -> str:
    """Lake path of one day's profile of one feature group (per group version)."""
    return f"profiles/features/{group_name}/v={version}/dt={day}/profile.bin"


def training_set_profile_path(as_of_day: str) -> str:
    """Lake path of a training set's profile."""
    return f"profiles/training_sets/as_of={as_of_day}/profile.bin"


def drift_report_paths(day: str) -> tuple[str, str, str]:
    """Lake paths of a day's drift report: (summary JSON, Markdown, per-column Parquet)."""
    base = f"monitoring/drift/dt={day}"
    return f"{base}/report.json", f"{base}/report.md", f"{base}/columns.parquet"


def realized_report_path(day: str) -> str:
    """Lake path of a day's delayed-label performance report (JSON)."""
    return f"monitoring/realized/dt={day}/report.json"


def _day_start(day: str) -> datetime:
    return datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC)


def metadata_float(x: Any) -> float:
    """A float for metadata (NaN when undefined, so numeric keys stay numeric)."""
    try:
        f = float(x)
    except (TypeError, ValueError):
        return math.nan
    return f if math.isfinite(f) else math.nan


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    return x


def _profile_metadata(frame: pl.DataFrame, data: bytes, seconds: float) -> dict[str, Any]:
    return {
        "dagster/row_count": frame.height,
        "rows": frame.height,
        "columns": frame.width,
        "profile_bytes": len(data),
        "seconds": round(seconds, 3),
    }


# -- profiles --------------------------------------------------------------------------------------
@dg.asset(
    key="raw_events_profile",
    partitions_def=HOURLY,
    deps=["raw_events"],
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name=GROUP,
    owners=[OWNER],
    kinds={"whylogs", "polars"},
    description=(
        "whylogs profile of each archive hour of `raw_events` (counts, types, quantile sketches, "
        "cardinality, frequent items per column), serialized to "
        "`profiles/raw_events/dt=YYYY-MM-DD/hour=HH/profile.bin`. Profiles merge exactly into the "
        "daily profile, so no old data is ever re-read."
    ),
)
def raw_events_profile(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
    """Profile every archive hour of the run (one run covers a backfill range)."""
    store = lake.lake()
    window = context.partition_time_window
    hour = window.start.astimezone(UTC)
    rows = total_bytes = hours = 0
    columns = 0
    t0 = time.perf_counter()
    while hour < window.end:
        frame = read_archive(store, EVENTS.dataset, [hour]).collect()
        data = profiles.serialize(profiles.profile_frame(frame, dataset_timestamp=hour))
        store.write_bytes(raw_events_profile_path(hour), data)
        rows, total_bytes, hours = rows + frame.height, total_bytes + len(data), hours + 1
        columns = max(columns, frame.width)
        hour += HOUR
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": rows,
            "rows": rows,
            "columns": columns,
            "profile_bytes": total_bytes,
            "hours": hours,
            "seconds": round(time.perf_counter() - t0, 3),
            "path": store.uri(raw_events_profile_path(window.start.astimezone(UTC))),
        }
    )


@dg.asset(
    key="raw_events_daily_profile",
    partitions_def=DAILY,
    deps=[dg.AssetDep("raw_events_profile", partition_mapping=dg.TimeWindowPartitionMapping())],
    group_name=GROUP,
    owners=[OWNER],
    kinds={"whylogs"},
    description=(
        "The day's raw-event profile: the exact merge of its 24 hourly `raw_events_profile`s (counts "
        "and min/max exact, sketches within their error), at "
        "`profiles/raw_events_daily/dt=YYYY-MM-DD/profile.bin`. Fails if an hour is missing."
    ),
)
def raw_events_daily_profile(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
    """Merge the day's hourly profiles (never re-reads raw events)."""
    store = lake.lake()
    t0 = time.perf_counter()
    start = context.partition_time_window.start.astimezone(UTC)
    paths = [raw_events_profile_path(start + i * HOUR) for i in range(24)]
    missing = [p for p in paths if not store.exists(p)]
    if missing:
        raise dg.Failure(
            f"{len(missing)} hourly profiles missing (first: {missing[0]}); materialize them first"
        )
    merged = profiles.merge(profiles.deserialize(store.read_bytes(p)) for p in paths)
    data = profiles.serialize(merged)
    store.write_bytes(raw_events_daily_profile_path(context.partition_key), data)
    summary = profiles.summary(merged)
    rows = int(summary["count"].max() or 0) if summary.height else 0
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": rows,
            "rows": rows,
            "columns": summary.height,
            "profile_bytes": len(data),
            "hours": len(paths),
            "seconds": round(time.perf_counter() - t0, 3),
            "path": store.uri(raw_events_daily_profile_path(context.partition_key)),
        }
    )


@dg.asset(
    key="feature_profiles",
    partitions_def=DAILY,
    deps=[feature_asset_key(g) for g in FEATURE_GROUPS],
    group_name=GROUP,
    owners=[OWNER],
    kinds={"whylogs", "polars"},
    description=(
        "One whylogs profile per feature group of the day's offline-store rows, at "
        "`profiles/features/{group}/v={version}/dt=YYYY-MM-DD/profile.bin` (per group version, so "
        "a redefined group never mixes with its old profiles)."
    ),
)
def feature_profiles(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
    """Profile each feature group's offline rows of the partition day."""
    store = lake.lake()
    window = context.partition_time_window
    t0 = time.perf_counter()
    metadata: dict[str, Any] = {}
    rows = total_bytes = columns = 0
    for g in FEATURE_GROUPS:
        frame = read_offline(store, g, window.start, window.end).collect()
        data = profiles.serialize(profiles.profile_frame(frame, dataset_timestamp=window.start))
        store.write_bytes(feature_profile_path(g.name, g.version, context.partition_key), data)
        metadata[f"rows/{g.name}"] = frame.height
        metadata[f"profile_bytes/{g.name}"] = len(data)
        rows, total_bytes, columns = rows + frame.height, total_bytes + len(data), columns + frame.width
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": rows,
            "rows": rows,
            "columns": columns,
            "groups": len(FEATURE_GROUPS),
            "profile_bytes": total_bytes,
            "seconds": round(time.perf_counter() - t0, 3),
            **metadata,
            "path": store.uri(f"profiles/features/*/dt={context.partition_key}/profile.bin"),
            "offline_store": store.uri(group_prefix(FEATURE_GROUPS[0]).rsplit("/", 2)[0]),
        }
    )


@dg.asset(
    key="training_set_profile",
    partitions_def=DAILY,
    deps=["training_set"],
    group_name=GROUP,
    owners=[OWNER],
    kinds={"whylogs"},
    description=(
        "whylogs profile of the day's training set (every model feature, labels and weights), at "
        "`profiles/training_sets/as_of=YYYY-MM-DD/profile.bin`: the reference a model was fit on."
    ),
)
def training_set_profile(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
    """Profile the partition's training set."""
    store = lake.lake()
    t0 = time.perf_counter()
    frame = pl.read_parquet(io.BytesIO(store.read_bytes(training_set_paths(context.partition_key)[0])))
    data = profiles.serialize(
        profiles.profile_frame(frame, dataset_timestamp=context.partition_time_window.end)
    )
    store.write_bytes(training_set_profile_path(context.partition_key), data)
    return dg.MaterializeResult(
        metadata={
            **_profile_metadata(frame, data, time.perf_counter() - t0),
            "path": store.uri(training_set_profile_path(context.partition_key)),
        }
    )


# -- decision frames -------------------------------------------------------------------------------
def decision_frame(
    store: Lake,
    source: RawEventSource,
    spec: TrainingSetSpec,
) -> pl.DataFrame:
    """The decision events of ``spec``'s window with their features joined point-in-time exactly as
    the training set joins them, and the labels known at ``spec.as_of`` (``build_training_set``)."""
    events = source.events(store, spec.start, spec.end, list(SPINE_COLUMNS))
    labels = source.labels(store, spec.start, spec.as_of)
    offline = {g.name: read_offline(store, g, spec.start - g.ttl, spec.end) for g in FEATURE_GROUPS}
    frame, _ = build_training_set(spec, events, labels, offline, FEATURE_GROUPS)
    return frame


def weighted_rate(frame: pl.DataFrame) -> float:
    """Weighted positive share of a labelled frame (``is_fraud``, ``weight``); NaN when empty."""
    if frame.height == 0:
        return math.nan
    w = frame["weight"].to_numpy().astype(np.float64)
    return float((w * frame["is_fraud"].to_numpy()).sum() / w.sum())


def _champion(store: Lake) -> Scorer:
    current = registry.champion(store)
    if current is None:
        raise dg.Failure("no champion yet: train and promote a model first (model_promotion)")
    return load_scorer(store, current.version)


def reference_day(scorer: Scorer) -> str:
    """Partition key of the training set the model was trained on (``as_of`` is the end of it)."""
    as_of = scorer.training_as_of
    if not as_of:
        raise dg.Failure(f"model {scorer.version} records no training set as_of")
    return (datetime.fromisoformat(as_of).astimezone(UTC) - DAY).strftime("%Y-%m-%d")


# -- drift report ----------------------------------------------------------------------------------
def drift_check_results(share_drifted: float, drifted: int, features: int) -> list[dg.AssetCheckResult]:
    """The two drift checks for a report: WARN above ``DRIFT_SHARE_WARN``, ERROR above
    ``DRIFT_SHARE_ERROR`` (a share equal to a threshold passes)."""
    out = []
    for name, threshold, severity in (
        ("drift_share_warn", DRIFT_SHARE_WARN, dg.AssetCheckSeverity.WARN),
        ("drift_share_error", DRIFT_SHARE_ERROR, dg.AssetCheckSeverity.ERROR),
    ):
        out.append(
            dg.AssetCheckResult(
                check_name=name,
                asset_key="drift_report",
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


class DriftReportConfig(dg.Config):
    """Settings of the daily drift report."""

    label_maturity_days: int = -1
    """Label-rate drift is measured on the day this many days before the partition (labels known at
    its end); -1: the champion's training-set maturity, so both rates had the same time to arrive."""


def _markdown(report: DriftReport, summary: dict[str, Any]) -> str:
    head = [
        f"**Champion** `{summary['champion']}` vs its training set as of {summary['reference_day']} "
        f"({summary['rows_reference']:,} rows) — current {summary['rows_current']:,} decision events.",
        "",
        f"- share of features drifted: **{summary['share_drifted']:.1%}** "
        f"(warn > {DRIFT_SHARE_WARN:.0%}, error > {DRIFT_SHARE_ERROR:.0%})",
        f"- prediction drift: PSI {summary['prediction_psi']:.4f}, KS {summary['prediction_ks']:.4f}, "
        f"**{summary['prediction_category']}**",
        f"- label rate ({summary['label_day']}, labels known at the cutoff): "
        f"{_pct(summary['label_rate'])} vs reference {_pct(summary['label_rate_reference'])} "
        f"(p {summary['label_rate_pvalue']:.3g}, **{summary['label_rate_category']}**)",
        "",
    ]
    return "\n".join(head) + report.to_markdown()


def _pct(x: float | None) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.3%}"


@dg.asset(
    key="drift_report",
    partitions_def=DAILY,
    deps=["training_set", *[feature_asset_key(g) for g in FEATURE_GROUPS], "raw_events", "raw_labels"],
    group_name=GROUP,
    owners=[OWNER],
    kinds={"polars"},
    check_specs=[
        dg.AssetCheckSpec(
            "drift_share_warn",
            asset="drift_report",
            description=f"WARN when more than {DRIFT_SHARE_WARN:.0%} of the champion's features drifted.",
        ),
        dg.AssetCheckSpec(
            "drift_share_error",
            asset="drift_report",
            description=f"ERROR when more than {DRIFT_SHARE_ERROR:.0%} of the champion's features drifted.",
        ),
    ],
    description=(
        "Daily drift of the champion's inputs and outputs. Current window: the day's decision events "
        "with features joined point-in-time exactly as training sets join them (`build_training_set`, "
        "window = the day, maturity 0). Reference: the training set the champion was trained on (its "
        "manifest's `as_of`). Per feature KS/χ² + PSI + Hellinger + category; prediction drift of "
        "the champion's scores (reference: its out-of-sample validation+test rows); label-rate drift "
        "on the newest day whose labels are as mature as the reference's. Written to "
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
    scorer = _champion(store)
    ref_day = reference_day(scorer)
    reference, ref_manifest = read_training_set(store, ref_day)
    current = decision_frame(
        store, raw_event_source, TrainingSetSpec(as_of=window.end, window=DAY, maturity=timedelta(0))
    )
    if current.height == 0:
        raise dg.Failure(f"no decision events on {day}: is the archive / offline store materialized?")
    features = [f for f in scorer.features if f in reference.columns and f in current.columns]
    report = drift_report(reference, current, features)

    # Prediction drift: the champion's scores on its out-of-sample reference rows vs today.
    split_start = (scorer.manifest.get("split") or {}).get("validation_start")
    ref_oos = reference
    if split_start:
        ref_oos = reference.filter(pl.col("event_ts") >= datetime.fromisoformat(split_start))
    pred = prediction_drift(scorer.score(ref_oos), scorer.score(current))

    # Label-rate drift on the newest day whose labels are as mature as the reference's.
    maturity = config.label_maturity_days
    if maturity < 0:
        maturity = math.ceil(float(ref_manifest.get("maturity_days", 7)))
    label_day = window.start - maturity * DAY
    label_spec = TrainingSetSpec(as_of=window.end, window=DAY, maturity=window.end - (label_day + DAY))
    label_events = raw_event_source.events(store, label_spec.start, label_spec.end, list(SPINE_COLUMNS))
    label_frame = spine_and_labels(
        label_spec, label_events, raw_event_source.labels(store, label_spec.start, label_spec.as_of)
    )
    ref_rate, cur_rate = weighted_rate(reference), weighted_rate(label_frame)
    labels_known = label_frame.height > 0 and reference.height > 0
    lrd = label_rate_drift(ref_rate, reference.height, cur_rate, label_frame.height) if labels_known else None

    psi_by_feature = sorted(
        ((c.column, c.psi) for c in report.columns if math.isfinite(c.psi)), key=lambda kv: -kv[1]
    )
    summary: dict[str, Any] = {
        "day": day,
        "champion": scorer.version,
        "reference_day": ref_day,
        "rows_reference": reference.height,
        "rows_current": current.height,
        "features": len(features),
        "drifted": len(report.drifted),
        "warned": sum(1 for c in report.columns if c.category == "warn"),
        "share_drifted": report.share_drifted,
        "drifted_features": report.drifted,
        "prediction_psi": metadata_float(pred.psi),
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
    markdown = _markdown(report, summary)
    json_path, md_path, parquet_path = drift_report_paths(day)
    store.write_bytes(json_path, (json.dumps(_json_safe(summary), indent=1, sort_keys=True) + "\n").encode())
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
            "share_drifted": report.share_drifted,
            "prediction_psi": summary["prediction_psi"],
            "prediction_ks": summary["prediction_ks"],
            "prediction_category": pred.category,
            "label_rate": metadata_float(cur_rate),
            "label_rate_reference": metadata_float(ref_rate),
            "label_rate_pvalue": summary["label_rate_pvalue"],
            "label_rate_category": summary["label_rate_category"],
            "label_day": summary["label_day"],
            "champion": scorer.version,
            "reference_day": ref_day,
            "seconds": seconds,
            **{f"psi/{name}": metadata_float(v) for name, v in psi_by_feature[:TOP_PSI]},
            "report": dg.MetadataValue.md(markdown),
            "path": store.uri(json_path),
        }
    )
    yield from drift_check_results(report.share_drifted, len(report.drifted), len(features))


# -- delayed-label performance ---------------------------------------------------------------------
class RealizedPerformanceConfig(dg.Config):
    """Which past days are scored against the labels known at the end of the partition day."""

    maturity_days: int = 2
    """A day is scored once its youngest event is this old (its labels had time to arrive)."""
    lookback_days: int = 10
    """Mature days shown per partition (newest first)."""
    recent_days: int = 3
    """The newest mature days pooled into the ``recent/*`` figures the retraining sensor reads
    (only days after the current champion's training window, i.e. out of its sample)."""


def _pooled(frame: pl.DataFrame, scores: np.ndarray) -> dict[str, Any]:
    out: dict[str, Any] = realized_metrics(frame, scores, keys=("rows", "positives", *REALIZED_METRICS))
    by: dict[str, dict[str, Any]] = {}
    y = frame["is_fraud"].to_numpy() if frame.height else np.zeros(0, dtype=bool)
    sc = frame["scenario"].to_numpy() if frame.height else np.zeros(0, dtype=object)
    for name in SCENARIOS:
        m = ~y | (sc == name)
        by[name] = (
            realized_metrics(
                frame.filter(pl.Series(m)), scores[m], keys=("rows", "positives", *REALIZED_METRICS)
            )
            if frame.height
            else {}
        )
    out["by_scenario"] = by
    return out


@dg.asset(
    key="realized_performance",
    partitions_def=DAILY,
    deps=["raw_events", "raw_labels", *[feature_asset_key(g) for g in FEATURE_GROUPS], "model_promotion"],
    group_name=GROUP,
    owners=[OWNER],
    kinds={"xgboost", "polars"},
    description=(
        "Delayed-label performance: each mature past day's decision events (features joined "
        "point-in-time), scored by the model that was champion at the end of that day (from the "
        "registry's audit trail; the current champion when the trail does not reach back) and "
        "evaluated against the labels known at the end of the partition day: average precision, "
        "recall at 1% FPR, AUC, overall and per scenario. `recent/*` pools the newest mature days "
        "out of the current champion's sample, scored by the current champion, with `drop/*` = its "
        "test metric at training minus the realized one (what the retraining sensor reads). "
        "`day/*` is the newest mature day (plotted per partition in the UI)."
    ),
)
def realized_performance(
    context: dg.AssetExecutionContext,
    config: RealizedPerformanceConfig,
    lake: LakeResource,
    raw_event_source: RawEventSource,
) -> dg.MaterializeResult:
    """Score mature past days and measure them against the labels known now."""
    store = lake.lake()
    t0 = time.perf_counter()
    scorer = _champion(store)
    as_of = context.partition_time_window.end
    newest = as_of - config.maturity_days * DAY  # end (exclusive) of the newest mature day
    spec = TrainingSetSpec(
        as_of=as_of, window=config.lookback_days * DAY, maturity=timedelta(days=config.maturity_days)
    )
    frame = decision_frame(store, raw_event_source, spec)
    frame = frame.with_columns(pl.col("event_ts").dt.truncate("1d").alias("_day"))
    scorers: dict[str, Scorer] = {scorer.version: scorer}
    per_day: list[dict[str, Any]] = []
    for i in range(config.lookback_days):
        start = newest - (i + 1) * DAY
        part = frame.filter(pl.col("_day") == start)
        version = champion_at(store, start + DAY) or scorer.version
        if version not in scorers:
            scorers[version] = load_scorer(store, version)
        m = realized_metrics(
            part, scorers[version].score(part), keys=("rows", "positives", *REALIZED_METRICS)
        )
        per_day.append({"day": start.strftime("%Y-%m-%d"), "version": version, **m})

    # The recent pool: newest mature days after the current champion's training window.
    window_end = (scorer.manifest.get("training_set") or {}).get("window_end")
    out_of_sample = datetime.fromisoformat(window_end) if window_end else newest - config.recent_days * DAY
    recent_start = max(newest - config.recent_days * DAY, out_of_sample)
    recent = frame.filter(pl.col("event_ts") >= recent_start)
    pooled = _pooled(recent, scorer.score(recent))
    recent_days = max(0, round((newest - recent_start) / DAY)) if recent.height else 0
    baseline = scorer.manifest.get("metrics") or {}
    baseline_by = scorer.manifest.get("metrics_by_scenario") or {}

    def drop(base: Any, realized: Any) -> float:
        return metadata_float(base) - metadata_float(realized)

    metadata: dict[str, Any] = {
        "dagster/row_count": frame.height,
        "champion": scorer.version,
        "recent/days": recent_days,
        "recent/rows": int(pooled.get("rows") or 0),
        "recent/positives": int(pooled.get("positives") or 0),
        "seconds": 0.0,
    }
    for k in REALIZED_METRICS:
        metadata[f"recent/{k}"] = metadata_float(pooled.get(k))
        metadata[f"baseline/{k}"] = metadata_float(baseline.get(k))
        metadata[f"drop/{k}"] = drop(baseline.get(k), pooled.get(k))
    for name in SCENARIOS:
        sub = pooled["by_scenario"].get(name) or {}
        metadata[f"recent/{name}/positives"] = int(sub.get("positives") or 0)
        for k in ("average_precision", "recall_at_1pct_fpr"):
            metadata[f"recent/{name}/{k}"] = metadata_float(sub.get(k))
            metadata[f"drop/{name}/{k}"] = drop((baseline_by.get(name) or {}).get(k), sub.get(k))
    newest_day = per_day[0] if per_day else {}
    metadata["day/date"] = newest_day.get("day", "")
    metadata["day/positives"] = int(newest_day.get("positives") or 0)
    for k in REALIZED_METRICS:
        metadata[f"day/{k}"] = metadata_float(newest_day.get(k))
    lines = [
        "| day | model | rows | positives | AP | recall@1%FPR | AUC |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in per_day:
        lines.append(
            f"| {r['day']} | `{r['version'][-12:]}` | {r.get('rows', 0)} | {r.get('positives', 0)} "
            f"| {_fmt(r.get('average_precision'))} | {_fmt(r.get('recall_at_1pct_fpr'))} "
            f"| {_fmt(r.get('auc'))} |"
        )
    metadata["per_day"] = dg.MetadataValue.md("\n".join(lines))
    report = {
        "day": context.partition_key,
        "champion": scorer.version,
        "per_day": per_day,
        "recent": pooled,
        "recent_start": recent_start.isoformat(),
        "baseline": baseline,
        "baseline_by_scenario": baseline_by,
    }
    path = realized_report_path(context.partition_key)
    store.write_bytes(
        path, (json.dumps(_json_safe(report), indent=1, sort_keys=True, default=str) + "\n").encode()
    )
    metadata["path"] = store.uri(path)
    metadata["seconds"] = round(time.perf_counter() - t0, 3)
    return dg.MaterializeResult(metadata=metadata)


def _fmt(x: Any) -> str:
    f = metadata_float(x)
    return "–" if math.isnan(f) else f"{f:.3f}"


monitoring_daily_job = dg.define_asset_job(
    "monitoring_daily_job",
    selection=dg.AssetSelection.assets(
        "raw_events_daily_profile", "feature_profiles", "drift_report", "realized_performance"
    ),
    description=(
        "The day's monitoring: merged raw-event profile, feature profiles, drift, realized performance."
    ),
)


@dg.schedule(
    job=monitoring_daily_job,
    cron_schedule="30 2 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Every day at 02:30 UTC, monitor the previous day (its hours are final by then).",
)
def monitoring_daily_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    """Request the daily monitoring run for the previous UTC day."""
    day = (context.scheduled_execution_time - DAY).strftime("%Y-%m-%d")
    return dg.RunRequest(run_key=f"monitoring:{day}", partition_key=day)
