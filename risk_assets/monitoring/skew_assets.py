"""Training/serving skew, row by row: served feature vectors against their offline recomputation.

Thin wiring around :mod:`risk_assets.monitoring.serving_replay` (the offline recomputation) and
:mod:`risk_assets.monitoring.skew` (the comparison); paths in :mod:`risk_assets.monitoring.artifacts`.
The check ``serving_skew_below_threshold`` fails above ``SKEW_ROW_SHARE_MAX`` (1 %).
"""

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import polars as pl

from risk_assets.features.groups import FEATURE_GROUPS, GROUPS_BY_NAME
from risk_assets.monitoring.artifacts import (
    SKEW_PREFIX,
    SKEW_STATE,
    prediction_log_files,
    read_state,
    write_state,
)
from risk_assets.monitoring.reports import skew_markdown
from risk_assets.monitoring.serving_replay import KEY, ModelManifests, recompute_features
from risk_assets.monitoring.skew import SkewReport, merge_reports, row_level_skew
from risk_assets.names import PREDICTION_LOG, ROW_COUNT, SERVING_SKEW, SERVING_SKEW_CHECK
from risk_assets.resources import LakeResource, RawEventSource
from risk_assets.run_config import RunConfig

OWNER = "team:risk-ml"
GROUP = "monitoring"

SKEW_ROW_SHARE_MAX = 0.01
"""``serving_skew_below_threshold`` fails when more than this share of compared rows has at least
one feature whose served value differs from the offline recomputation."""
SKEW_TOP_FEATURES = 10
"""Features reported as ``mismatch_rate/<feature>`` metadata (worst first)."""


class ServingSkewConfig(RunConfig):
    """Which logged predictions are compared."""

    sample_size: int = 5_000
    """At most this many of the new logged rows are compared (uniform sample, fixed seed)."""
    reset_cursor: bool = False
    """Compare every stored log range again instead of only the ranges added since the last run."""
    seed: int = 17


@dg.asset(
    key=SERVING_SKEW,
    deps=[PREDICTION_LOG],
    group_name=GROUP,
    owners=[OWNER],
    kinds={"polars"},
    check_specs=[
        dg.AssetCheckSpec(
            SERVING_SKEW_CHECK,
            asset=SERVING_SKEW,
            description=(
                f"Fails when more than {SKEW_ROW_SHARE_MAX:.0%} of the compared logged predictions "
                "have a feature whose served value differs from the offline point-in-time recomputation."
            ),
        )
    ],
    description=(
        "Training/serving skew, row by row: for a sample of the predictions logged since the last "
        "run (the lake copy of `risk.predictions`), every model input is recomputed offline exactly "
        "as training sets compute it (request features from the archived event; each feature group "
        "point-in-time joined at `event_ts − 1 ms` honouring `created_ts` and TTL) and compared with "
        "the vector the service scored (`row_level_skew`, per model version). Degraded rows (Redis "
        "not consulted) are excluded. Run it after the offline store covers the logged events: "
        "a value computed after the request can legitimately differ (see docs/monitoring.md)."
    ),
)
def serving_skew(
    context: dg.AssetExecutionContext,
    config: ServingSkewConfig,
    lake: LakeResource,
    raw_event_source: RawEventSource,
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """Compare served feature vectors with their offline recomputation."""
    store = lake.lake()
    t0 = time.perf_counter()
    state = {} if config.reset_cursor else read_state(store, SKEW_STATE)
    cursor: dict[str, int] = dict(state.get("partitions", {}))
    files = [f for f in prediction_log_files(store) if f[2] > int(cursor.get(str(f[0]), 0))]
    new_cursor = dict(cursor)
    parts = []
    for p, _start, end, path in files:
        frame = store.scan([path]).collect()
        frame = frame.filter(pl.col("offset") >= int(cursor.get(str(p), 0)))
        parts.append(frame)
        new_cursor[str(p)] = max(int(new_cursor.get(str(p), 0)), end)
    logged = pl.concat(parts, how="diagonal_relaxed") if parts else pl.DataFrame()
    rows_logged = logged.height
    degraded = int(logged["degraded"].sum()) if rows_logged else 0
    if rows_logged:
        logged = logged.filter(~pl.col("degraded"))
        if logged.height > config.sample_size:
            logged = logged.sample(n=config.sample_size, seed=config.seed)
        logged = logged.with_columns(
            pl.format("{}:{}", pl.col("partition"), pl.col("offset")).alias(KEY)
        ).sort("partition", "offset")

    manifests = ModelManifests(store)
    reports: list[tuple[SkewReport, int]] = []
    without_event = 0
    skipped_versions: list[str] = []
    versions = sorted(logged["model_version"].unique().to_list()) if logged.height else []
    for version in versions:
        try:
            manifest = manifests.manifest(version)
        except ValueError:
            skipped_versions.append(version)
            continue
        groups = manifest.get("feature_groups") or {}
        stale = [n for n, v in groups.items() if n in GROUPS_BY_NAME and GROUPS_BY_NAME[n].version != v]
        if stale:  # its offline rows live under another group version: not recomputable here
            skipped_versions.append(version)
            continue
        features = list(manifest["features"])
        served = logged.filter(pl.col("model_version") == version)
        recomputed, missing = recompute_features(store, raw_event_source, served, features, FEATURE_GROUPS)
        without_event += missing
        report = row_level_skew(served, recomputed, key=KEY, features=features)
        reports.append((report, served.height))

    compared, bad, per_feature = merge_reports(reports)
    share = bad / compared if compared else 0.0
    worst = sorted((f for f in per_feature if f.mismatches), key=lambda f: (-f.mismatch_rate, f.feature))
    extra = {"rows_without_event": without_event, "rows_degraded": degraded}
    markdown = skew_markdown(compared, bad, worst[:SKEW_TOP_FEATURES], extra, SKEW_ROW_SHARE_MAX)

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    base = f"{SKEW_PREFIX}/at={stamp}"
    summary = {
        "rows_logged": rows_logged,
        "rows_compared": compared,
        "rows_with_mismatch": bad,
        "share_rows_with_mismatch": share,
        "threshold": SKEW_ROW_SHARE_MAX,
        "versions": versions,
        "skipped_versions": skipped_versions,
        "worst": [vars(f) for f in worst[:SKEW_TOP_FEATURES]],
        **extra,
    }
    store.write_bytes(f"{base}/report.json", (json.dumps(summary, indent=1, sort_keys=True) + "\n").encode())
    feature_frame = pl.DataFrame(
        [vars(f) for f in per_feature],
        schema={
            "feature": pl.String,
            "mismatches": pl.Int64,
            "missing_mismatches": pl.Int64,
            "mismatch_rate": pl.Float64,
            "max_abs_diff": pl.Float64,
        },
    )
    store.write_parquet(feature_frame, f"{base}/features.parquet")
    examples = [r.examples for r, _ in reports if r.examples.height]
    if examples:
        store.write_parquet(pl.concat(examples), f"{base}/examples.parquet")
    write_state(store, SKEW_STATE, {"partitions": new_cursor})

    metadata: dict[str, Any] = {
        ROW_COUNT: compared,
        "rows_logged": rows_logged,
        "rows_compared": compared,
        "rows_with_mismatch": bad,
        "share_rows_with_mismatch": share,
        "features_with_mismatch": len(worst),
        "rows_without_event": without_event,
        "rows_degraded": degraded,
        "model_versions": len(versions),
        "skipped_versions": len(skipped_versions),
        "worst_feature": worst[0].feature if worst else "-",
        **{f"mismatch_rate/{f.feature}": f.mismatch_rate for f in worst[:SKEW_TOP_FEATURES]},
        "report": dg.MetadataValue.md(markdown),
        "path": store.uri(f"{base}/report.json"),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    context.log.info("serving skew: %d/%d rows mismatch (%.2f%%)", bad, compared, 100 * share)
    yield dg.MaterializeResult(metadata=metadata)
    yield dg.AssetCheckResult(
        check_name=SERVING_SKEW_CHECK,
        asset_key=SERVING_SKEW,
        passed=bool(share <= SKEW_ROW_SHARE_MAX),
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "share_rows_with_mismatch": share,
            "threshold": SKEW_ROW_SHARE_MAX,
            "rows_compared": compared,
            "rows_with_mismatch": bad,
            "worst_feature": worst[0].feature if worst else "-",
            "worst_feature_rate": worst[0].mismatch_rate if worst else 0.0,
        },
        description=None if compared else "nothing new to compare",
    )
