"""Batch feature assets: every feature group as a daily-partitioned asset in the offline store.

Thin wiring around ``batch.compute_feature_groups`` and ``offline_store``: one multi-asset with one
spec per group (so each group has its own lineage, owner, version and metadata in the UI), subset
to what the run selected. A run over a range of days reads the lookback it needs once, computes
every selected group over the whole range, and replaces each day (delete-then-write), so a 30-day
backfill is a single run and re-running a day gives the same bytes.
"""

import time

import dagster as dg
import polars as pl

from risk_assets.backfills import DAILY_BACKFILL, POOL_LAKE_BATCH
from risk_assets.features.batch import compute_feature_groups, required_event_columns
from risk_assets.features.groups import FEATURE_GROUPS
from risk_assets.features.offline_store import day_part_path, days_of, with_created_ts, write_days
from risk_assets.features.spec import FeatureGroup
from risk_assets.resources import LakeResource, RawEventSource

DAILY = dg.DailyPartitionsDefinition(start_date="2026-01-01", timezone="UTC")
GROUPS_BY_KEY: dict[dg.AssetKey, FeatureGroup] = {
    dg.AssetKey(["features", g.name]): g for g in FEATURE_GROUPS
}


def feature_asset_key(group: FeatureGroup) -> dg.AssetKey:
    """``features/<group name>``."""
    return dg.AssetKey(["features", group.name])


def _spec(group: FeatureGroup) -> dg.AssetSpec:
    deps = [dg.AssetDep("raw_events")]
    if group.needs_labels:
        deps.append(dg.AssetDep("raw_labels"))
    schema = group.schema()
    return dg.AssetSpec(
        feature_asset_key(group),
        description=(
            f"{group.description}\n\nEntity `{group.entity.name}` ({', '.join(group.entity.keys)}), "
            f"{len(group.feature_names)} features, windows up to {group.metadata()['max_window']}, "
            f"version `{group.version}`. One row per (entity, as-of event time) with `created_ts`; "
            f"lake path `{day_part_path(group, DAILY.start).rsplit('/dt=', 1)[0]}/dt=YYYY-MM-DD/`."
        ),
        group_name="features",
        owners=[group.owner],
        kinds={"polars", "parquet"},
        deps=deps,
        tags={k: v for k, v in group.tags},
        metadata={
            **{k: v for k, v in group.metadata().items() if k != "columns"},
            "dagster/column_schema": dg.TableSchema(
                columns=[dg.TableColumn(name, str(dtype)) for name, dtype in schema.items()]
                + [dg.TableColumn("created_ts", "Datetime(ms, UTC)")]
            ),
        },
        code_version=group.version,
    )


@dg.multi_asset(
    name="batch_features",
    specs=[_spec(g) for g in FEATURE_GROUPS],
    partitions_def=DAILY,
    can_subset=True,
    backfill_policy=DAILY_BACKFILL,
    pool=POOL_LAKE_BATCH,
    retry_policy=dg.RetryPolicy(max_retries=1, delay=10),
)
def batch_features(context: dg.AssetExecutionContext, lake: LakeResource, raw_event_source: RawEventSource):
    """Compute the selected feature groups for the run's days from the raw archive."""
    groups = [GROUPS_BY_KEY[k] for k in sorted(context.selected_asset_keys, key=lambda k: k.to_string())]
    window = context.partition_time_window
    lookback = max(g.max_window for g in groups)
    store = lake.lake()
    t0 = time.perf_counter()
    columns = sorted({*required_event_columns(groups), "ingest_ts"})
    events = raw_event_source.events(store, window.start - lookback, window.end, columns)
    labels = None
    if any(g.needs_labels for g in groups):
        labels = raw_event_source.labels(store, window.start - lookback, window.end)
    t_read = time.perf_counter() - t0
    t0 = time.perf_counter()
    results = compute_feature_groups(groups, events, window.start, window.end, labels)
    t_compute = time.perf_counter() - t0
    days = days_of(window.start, window.end)
    context.log.info(
        "read %d events (%s lookback) in %.1fs, computed %d groups in %.1fs",
        events.height,
        lookback,
        t_read,
        len(groups),
        t_compute,
    )
    for group in groups:
        rows = with_created_ts(results[group.name], group, events)
        counts = write_days(store, group, rows, days)
        features = list(group.feature_names)
        null_share = (
            rows.select(pl.mean_horizontal(pl.col(features).is_null().mean())).item() if rows.height else 0.0
        )
        yield dg.MaterializeResult(
            asset_key=feature_asset_key(group),
            metadata={
                "dagster/row_count": rows.height,
                "entities": rows.select(group.entity.keys).n_unique() if rows.height else 0,
                "days": len(days),
                "events_read": events.height,
                "null_share": float(null_share or 0.0),
                "compute_seconds": t_compute,
                "version": group.version,
                "rows_per_day_max": max(counts.values(), default=0),
            },
        )
