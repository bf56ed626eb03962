"""The shadow comparison asset: champion vs the shadowed challenger on the same live traffic.

Thin wiring around :mod:`risk_assets.monitoring.shadow_compare`; reports under
``monitoring/shadow/version={v}/report.json`` (:mod:`risk_assets.monitoring.artifacts`), which the
promotion gate reads when it requires a shadow period.
"""

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
import polars as pl

from risk_assets.models import registry
from risk_assets.monitoring.artifacts import prediction_log_files, shadow_report_path, write_json
from risk_assets.monitoring.reports import metadata_float
from risk_assets.monitoring.shadow_compare import compare_shadow
from risk_assets.names import PREDICTION_LOG, RAW_LABELS, ROW_COUNT, SHADOW_COMPARISON
from risk_assets.resources import LakeResource, RawEventSource
from risk_assets.run_config import RunConfig

OWNER = "team:risk-ml"
GROUP = "monitoring"
LOG_COLUMNS = ("event_id", "event_ts", "scored_ts", "model_version", "score", "decision")
SHADOW_COLUMNS = {"shadow_version": pl.String, "shadow_score": pl.Float64}


class ShadowComparisonConfig(RunConfig):
    """Which labels count."""

    maturity_days: float = 7.0
    """A shadow-scored event is compared once it is this old (its label had time to arrive)."""
    as_of: str = ""
    """Labels known before this instant (ISO 8601, naive = UTC); empty: now."""


def read_shadow_log(store: Any) -> pl.DataFrame:
    """The shadow-scored rows of every stored prediction-log range (base columns only; ranges
    written before shadow scoring existed have none)."""
    parts = []
    for *_, path in prediction_log_files(store):
        lazy = store.scan([path])
        names = lazy.collect_schema().names()
        if "shadow_version" not in names:
            continue
        parts.append(
            lazy.select(*LOG_COLUMNS, *SHADOW_COLUMNS)
            .filter(pl.col("shadow_version").is_not_null())
            .collect()
        )
    if not parts:
        return pl.DataFrame(schema={c: pl.Null for c in (*LOG_COLUMNS, *SHADOW_COLUMNS)})
    return pl.concat(parts)


@dg.asset(
    key=SHADOW_COMPARISON,
    deps=[PREDICTION_LOG, RAW_LABELS],
    group_name=GROUP,
    owners=[OWNER],
    kinds={"polars"},
    description=(
        "Champion vs shadow challenger on the same live traffic: the prediction log's rows that "
        "risk-serve scored with a challenger in shadow (`shadow_version`, `shadow_score`), once "
        "`maturity_days` old, against the fraud labels known now — average precision, AUC, and "
        "recall/precision at the champion's operating point (its flag share; the challenger's top "
        "events at the same share). One report per shadowed version under "
        "`monitoring/shadow/version=V/`; `shadow_days` and `labelled` are what the promotion gate's "
        "shadow requirement reads."
    ),
)
def shadow_comparison(
    context: dg.AssetExecutionContext,
    config: ShadowComparisonConfig,
    lake: LakeResource,
    raw_event_source: RawEventSource,
) -> dg.MaterializeResult:
    """Compare the champion and every shadowed challenger on shadow-scored, matured events."""
    store = lake.lake()
    t0 = time.perf_counter()
    as_of = datetime.fromisoformat(config.as_of) if config.as_of else datetime.now(UTC)
    as_of = as_of.replace(tzinfo=UTC) if as_of.tzinfo is None else as_of.astimezone(UTC)
    log = read_shadow_log(store)
    current = registry.shadow(store)
    seen = set(log["shadow_version"].drop_nulls().to_list())
    versions = sorted(seen | ({current.version} if current else set()))
    labels = (
        raw_event_source.labels(store, log["event_ts"].min(), as_of)  # type: ignore[arg-type]
        if log.height
        else pl.DataFrame(schema={"event_id": pl.String, "label_ts": pl.Datetime("ms", "UTC")})
    )
    reports = {}
    for version in versions:
        maturity = timedelta(days=config.maturity_days)
        report = compare_shadow(log, labels, version, as_of=as_of, maturity=maturity)
        write_json(store, shadow_report_path(version), report)
        reports[version] = report
    focus = reports.get(current.version) if current else None
    metadata: dict[str, Any] = {
        ROW_COUNT: log.height,
        "shadow_versions": ", ".join(versions) or "-",
        "current_shadow": current.version if current else "none",
        "seconds": 0.0,
    }
    if focus:
        metadata["shadow_days"] = metadata_float(focus["shadow_days"])
        metadata["labelled"] = focus["labelled"]
        metadata["positives"] = focus["positives"]
        for side in ("champion", "challenger"):
            for k, v in (focus.get(side) or {}).items():
                metadata[f"{side}/{k}"] = metadata_float(v)
        metadata["path"] = store.uri(shadow_report_path(current.version))  # type: ignore[union-attr]
    metadata["seconds"] = round(time.perf_counter() - t0, 3)
    context.log.info("shadow comparison: %d shadow-scored rows, versions %s", log.height, versions)
    return dg.MaterializeResult(metadata=metadata)
