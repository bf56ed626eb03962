"""Batch feature assets: every feature group as a daily-partitioned asset in the offline store.

Thin wiring around ``batch.compute_feature_groups``, ``offline_store`` and ``quality``: one
multi-asset with one spec per group (so each group has its own lineage, owner, version and metadata
in the UI), subset to what the run selected. A run over a range of days reads the lookback it needs
once, computes every selected group over the whole range, and replaces each day (delete-then-write),
so re-running a day gives the same bytes (ranged backfills are cut into runs of ``DAYS_PER_RUN``
days, ``backfills.py``). The run's memory is bounded by its ``shards`` / ``max_rows_in_memory``
config (entity-hash shards computed in turn, ``features/sharding.py``; each group's output written
one day at a time), not by the window; the bytes written do not depend on the shard count. Each
day still gets its own figures (``context.add_asset_metadata(..., partition_key=day)``), so
plots across partitions show the days, not the run.

Checks per group: ``feature_rows_per_day`` (ERROR, blocking: a day without rows never flows on),
``feature_schema`` (ERROR: the written frame matches the definition), ``feature_null_shares`` (WARN:
a feature's null share moved more than 10 points from the previous week's).
"""

import hashlib
import time
from collections.abc import Iterator
from datetime import datetime, timedelta

import dagster as dg
import polars as pl

from risk_assets.automation import FEATURE_DAYS
from risk_assets.backfills import DAILY_BACKFILL, POOL_LAKE_BATCH
from risk_assets.features import snowflake_engine
from risk_assets.features.batch import required_event_columns
from risk_assets.features.catalog import catalog_frame, describe
from risk_assets.features.groups import FEATURE_GROUPS
from risk_assets.features.offline_store import (
    DAY,
    days_of,
    group_prefix,
    read_offline,
    write_days,
)
from risk_assets.features.quality import (
    NULL_SHARE_TOLERANCE,
    DayFigures,
    day_figures,
    null_share_shifts,
    null_shares,
    schema_problems,
)
from risk_assets.features.sharding import iter_sharded, shards_for
from risk_assets.features.spec import FeatureGroup
from risk_assets.lake import Lake
from risk_assets.names import (
    FEATURE_CATALOG,
    FEATURE_NULL_SHARES_CHECK,
    FEATURE_ROWS_CHECK,
    FEATURE_SCHEMA_CHECK,
    RAW_EVENTS,
    RAW_LABELS,
    ROW_COUNT,
    feature_asset_key,
)
from risk_assets.partitions import DAY_KEY_FORMAT, TimePartitions
from risk_assets.resources import LakeResource, RawEventSource
from risk_assets.run_config import RunConfig


class BatchFeaturesConfig(RunConfig):
    """How a batch feature run bounds its memory (``features/sharding.py``)."""

    shards: int = 1
    """Entity-hash shards computed in turn: each holds about 1/N of the window + lookback's events
    (1: every group over one shared scan, the whole window in memory). Output bytes do not depend on it."""

    max_rows_in_memory: int = 0
    """If set, at least ceil(events in window + lookback / this) shards (counted before the run
    reads anything); 0: no cap, ``shards`` alone decides."""


GROUPS_BY_KEY: dict[dg.AssetKey, FeatureGroup] = {feature_asset_key(g.name): g for g in FEATURE_GROUPS}
NULL_HISTORY = timedelta(days=7)
"""The null-share check compares the run's days with this much offline history before them."""


def _checks(group: FeatureGroup) -> list[dg.AssetCheckSpec]:
    key = feature_asset_key(group.name)
    return [
        dg.AssetCheckSpec(
            FEATURE_ROWS_CHECK,
            asset=key,
            blocking=True,
            description="Every day of the run has rows (an empty day stops downstream assets).",
        ),
        dg.AssetCheckSpec(
            FEATURE_SCHEMA_CHECK,
            asset=key,
            description="The written columns and types are exactly the group definition's schema.",
        ),
        dg.AssetCheckSpec(
            FEATURE_NULL_SHARES_CHECK,
            asset=key,
            description=(
                f"WARN when a feature's null share moved more than {NULL_SHARE_TOLERANCE:.0%} (absolute) "
                f"from the {NULL_HISTORY.days} days of offline history before the run."
            ),
        ),
    ]


def _spec(group: FeatureGroup) -> dg.AssetSpec:
    deps = [dg.AssetDep(RAW_EVENTS)]
    if group.needs_labels:
        deps.append(dg.AssetDep(RAW_LABELS))
    schema = group.schema()
    column_docs = {
        f.name: describe(f, group.source_event_types, group.source.event_type_column) for f in group.features
    }
    column_docs |= {k: f"Entity key ({group.entity.name})." for k in group.entity.keys}
    column_docs["event_ts"] = "The as-of time: the entity's event this row's values are as of."
    return dg.AssetSpec(
        feature_asset_key(group.name),
        description=(
            f"{group.description}\n\nEntity `{group.entity.name}` ({', '.join(group.entity.keys)}), "
            f"{len(group.feature_names)} features, windows up to {group.metadata()['max_window']}, "
            f"version `{group.version}`. One row per (entity, as-of event time) with `created_ts`; "
            f"lake path `{group_prefix(group)}/dt=YYYY-MM-DD/`."
        ),
        group_name="features",
        owners=[group.owner],
        kinds={"polars", "parquet"},
        deps=deps,
        tags={k: v for k, v in group.tags},
        metadata={
            **{k: v for k, v in group.metadata().items() if k != "columns"},
            "dagster/column_schema": dg.TableSchema(
                columns=[
                    dg.TableColumn(name, str(dtype), description=column_docs.get(name, ""))
                    for name, dtype in schema.items()
                ]
                + [
                    dg.TableColumn(
                        "created_ts",
                        "Datetime(ms, UTC)",
                        description="When the value could first be known (arrival of its latest event).",
                    )
                ]
            ),
        },
        code_version=group.version,
        automation_condition=FEATURE_DAYS,
    )


def build_batch_features(partitions: TimePartitions) -> dg.AssetsDefinition:
    """The daily multi-asset computing every feature group (one spec per group)."""

    @dg.multi_asset(
        name="batch_features",
        specs=[_spec(g) for g in FEATURE_GROUPS],
        check_specs=[c for g in FEATURE_GROUPS for c in _checks(g)],
        partitions_def=partitions.daily,
        can_subset=True,
        backfill_policy=DAILY_BACKFILL,
        pool=POOL_LAKE_BATCH,
        retry_policy=dg.RetryPolicy(max_retries=1, delay=10),
    )
    def batch_features(
        context: dg.AssetExecutionContext,
        config: BatchFeaturesConfig,
        lake: LakeResource,
        raw_event_source: RawEventSource,
    ) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
        """Compute the selected feature groups for the run's days from the raw archive."""
        selected = sorted(context.selected_asset_keys, key=lambda k: k.to_string())
        groups = [GROUPS_BY_KEY[k] for k in selected]
        window = context.partition_time_window
        lookback = max(g.max_window for g in groups)
        store = lake.lake()
        t0 = time.perf_counter()
        columns = sorted({*required_event_columns(groups), "ingest_ts"})

        def scan(predicate: pl.Expr | None) -> pl.LazyFrame:
            return raw_event_source.scan_events(
                store, window.start - lookback, window.end, columns, predicate
            )

        shards = config.shards
        read: dict[tuple[str, ...], int] = {}
        days = days_of(window.start, window.end)
        if raw_event_source.computes_in_snowflake():
            sharded = _computed_in_snowflake(context, raw_event_source, groups, window.start, window.end)
        else:
            if config.max_rows_in_memory:
                rows_in_window = int(scan(None).select(pl.len()).collect().item())
                shards = max(shards, shards_for(rows_in_window, config.max_rows_in_memory))
            labels = None
            if any(g.needs_labels for g in groups):
                labels = raw_event_source.labels(store, window.start - lookback, window.end)

            def on_shard(keys: tuple[str, ...], shard: int, rows: int) -> None:
                read[keys] = read.get(keys, 0) + rows
                context.log.info(
                    "shard %d/%d of %s: %d events", shard + 1, shards, ",".join(keys) or "all", rows
                )

            sharded = iter_sharded(
                groups,
                scan,
                window.start,
                window.end,
                shards,
                labels,
                created_ts=True,
                on_shard=on_shard,
                lazy=True,
            )
        for group, output in sharded:
            key = feature_asset_key(group.name)
            # One day of one group in memory at a time; sorted and written exactly as a whole run.
            figures: dict[datetime, DayFigures] = {}
            for day in days:
                rows = output.filter((pl.col("event_ts") >= day) & (pl.col("event_ts") < day + DAY)).collect()
                write_days(store, group, rows, [day])
                figures |= day_figures(group, rows, [day])
                del rows
            for day, f in figures.items():
                context.add_asset_metadata(
                    {ROW_COUNT: f.rows, "entities": f.entities, "null_share": f.null_share},
                    asset_key=key,
                    partition_key=day.strftime(DAY_KEY_FORMAT),
                )
            yield dg.MaterializeResult(
                asset_key=key,
                metadata={
                    "version": group.version,
                    "run_days": len(days),
                    "run_rows": sum(f.rows for f in figures.values()),
                    "events_read": read.get(tuple(group.entity.keys), read.get((), 0)),
                    "shards": shards,
                    "compute_backend": raw_event_source.compute_backend,
                    "compute_seconds": time.perf_counter() - t0,
                },
            )
            yield from _check_results(context, store, group, output, figures, window.start)
        context.log.info(
            "computed %d groups in %d shard(s) over %s lookback in %.1fs",
            len(groups),
            shards,
            lookback,
            time.perf_counter() - t0,
        )

    return batch_features


def _computed_in_snowflake(
    context: dg.AssetExecutionContext,
    source: RawEventSource,
    groups: list[FeatureGroup],
    start: datetime,
    end: datetime,
) -> Iterator[tuple[FeatureGroup, pl.LazyFrame]]:
    """Each group computed by the warehouse (``snowflake_engine.materialize_offline``: the compiled
    SQL over the raw-event and label mirrors, written into the group's Snowflake offline-store
    table), then the result rows — only those — read back for the lake's offline store."""
    with source.snowflake().get_connection() as conn:
        cursor = conn.cursor()
        for group in groups:
            table = snowflake_engine.offline_table_name(group, source.snowflake_offline_prefix)
            labels = source.snowflake_labels_table if group.needs_labels else None
            t0 = time.perf_counter()
            rows = snowflake_engine.materialize_offline(
                cursor, group, start, end, source.snowflake_table, table, labels
            )
            context.log.info("%s: %d rows computed in Snowflake into %s in %.1fs", group.name, rows, table,
                             time.perf_counter() - t0)  # fmt: skip
            yield group, snowflake_engine.read_offline(cursor, group, table, start, end).lazy()


def _check_results(
    context: dg.AssetExecutionContext,
    store: Lake,
    group: FeatureGroup,
    rows: pl.LazyFrame,
    figures: dict[datetime, DayFigures],
    start: datetime,
) -> Iterator[dg.AssetCheckResult]:
    key = feature_asset_key(group.name)
    selected = context.selected_asset_check_keys
    if dg.AssetCheckKey(key, FEATURE_ROWS_CHECK) in selected:
        empty = [f"{d:%Y-%m-%d}" for d, f in figures.items() if f.rows == 0]
        yield dg.AssetCheckResult(
            check_name=FEATURE_ROWS_CHECK,
            asset_key=key,
            passed=not empty,
            metadata={
                "days": len(figures),
                "empty_days": len(empty),
                "first_empty": empty[0] if empty else "-",
            },
            description=f"no rows on {', '.join(empty)}: is the archive materialized for those days?"
            if empty
            else None,
        )
    if dg.AssetCheckKey(key, FEATURE_SCHEMA_CHECK) in selected:
        problems = schema_problems(group, rows.collect_schema())
        yield dg.AssetCheckResult(
            check_name=FEATURE_SCHEMA_CHECK,
            asset_key=key,
            passed=not problems,
            metadata={"problems": len(problems), "columns": len(rows.collect_schema())},
            description="; ".join(problems) or None,
        )
    if dg.AssetCheckKey(key, FEATURE_NULL_SHARES_CHECK) in selected:
        _, current = null_shares(group, rows)
        _, history = null_shares(group, read_offline(store, group, start - NULL_HISTORY, start))
        shifts = null_share_shifts(current, history)
        worst = max(shifts.items(), key=lambda kv: abs(kv[1][1] - kv[1][0]), default=None)
        yield dg.AssetCheckResult(
            check_name=FEATURE_NULL_SHARES_CHECK,
            asset_key=key,
            passed=not shifts,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "features_shifted": len(shifts),
                "features_compared": len(set(current) & set(history)),
                "tolerance": NULL_SHARE_TOLERANCE,
            },
            description=(
                f"{worst[0]}: null share {worst[1][0]:.1%} in history → {worst[1][1]:.1%}" if worst else None
            ),
        )


CATALOG_PATH = "features/catalog.parquet"


@dg.asset(
    key=FEATURE_CATALOG,
    group_name="features",
    owners=["team:risk-data"],
    kinds={"polars", "parquet"},
    code_version=hashlib.sha256(",".join(g.version for g in FEATURE_GROUPS).encode()).hexdigest()[:12],
    automation_condition=dg.AutomationCondition.missing() | dg.AutomationCondition.code_version_changed(),
    description=(
        "Every feature of every group: group, version, entity, kind, window, dtype, owner and a "
        "description generated from its definition (prefixed by the author's own). Written to "
        f"`{CATALOG_PATH}`; rematerialized whenever a group's version changes."
    ),
)
def feature_catalog(lake: LakeResource) -> dg.MaterializeResult:
    """Write the catalog and show it as a table."""
    frame = catalog_frame(FEATURE_GROUPS)
    store = lake.lake()
    store.write_parquet(frame, CATALOG_PATH)
    shown = ["feature", "version", "kind", "window", "description"]
    return dg.MaterializeResult(
        metadata={
            ROW_COUNT: frame.height,
            "groups": len(FEATURE_GROUPS),
            "catalog": dg.MetadataValue.table(
                records=[dg.TableRecord(r) for r in frame.select(shown).iter_rows(named=True)],
                schema=dg.TableSchema(columns=[dg.TableColumn(c, "string") for c in shown]),
            ),
            "path": store.uri(CATALOG_PATH),
        }
    )
