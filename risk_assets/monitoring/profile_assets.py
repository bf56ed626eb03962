"""Profile assets: whylogs profiles of the raw archive, the feature groups and the training sets.

Thin wiring around :mod:`risk_assets.monitoring.profiles` (the only whylogs import); paths in
:mod:`risk_assets.monitoring.artifacts`. Hourly profiles merge exactly into daily ones, so no old
data is ever re-read. Built for the deployment's partitions by :func:`profile_assets`.
"""

import time
from datetime import UTC, timedelta
from typing import Any

import dagster as dg
import polars as pl

from risk_assets.automation import PROFILE_DAYS
from risk_assets.features.groups import FEATURE_GROUPS
from risk_assets.features.offline_store import group_prefix, read_offline
from risk_assets.ingest.archive import EVENTS, read_archive
from risk_assets.lake import Lake
from risk_assets.models.artifacts import MissingArtifact, read_training_set
from risk_assets.monitoring import profiles
from risk_assets.monitoring.artifacts import (
    feature_profile_path,
    raw_events_daily_profile_path,
    raw_events_profile_path,
    training_set_profile_path,
)
from risk_assets.names import (
    FEATURE_PROFILES,
    RAW_EVENTS,
    RAW_EVENTS_DAILY_PROFILE,
    RAW_EVENTS_PROFILE,
    ROW_COUNT,
    TRAINING_SET,
    TRAINING_SET_PROFILE,
    feature_asset_key,
)
from risk_assets.partitions import TimePartitions, hour_key
from risk_assets.resources import LakeResource

OWNER = "team:risk-ml"
GROUP = "monitoring"
HOUR = timedelta(hours=1)


def _profile_metadata(frame: pl.DataFrame, data: bytes, seconds: float) -> dict[str, Any]:
    return {
        "dagster/row_count": frame.height,
        "rows": frame.height,
        "columns": frame.width,
        "profile_bytes": len(data),
        "seconds": round(seconds, 3),
    }


def _read_training_frame(store: Lake, day: str) -> pl.DataFrame:
    try:
        return read_training_set(store, day)[0]
    except MissingArtifact as exc:
        raise dg.Failure(str(exc)) from exc


def profile_assets(partitions: TimePartitions) -> list[dg.AssetsDefinition]:
    """Hourly raw-event profiles, their daily merge, feature-group and training-set profiles."""

    @dg.asset(
        key=RAW_EVENTS_PROFILE,
        partitions_def=partitions.hourly,
        deps=[RAW_EVENTS],
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
            context.add_asset_metadata(
                {
                    ROW_COUNT: frame.height,
                    "profile_bytes": len(data),
                    "path": store.uri(raw_events_profile_path(hour)),
                },
                partition_key=hour_key(hour),
            )
            rows, total_bytes, hours = rows + frame.height, total_bytes + len(data), hours + 1
            columns = max(columns, frame.width)
            hour += HOUR
        return dg.MaterializeResult(
            metadata={
                "run_rows": rows,
                "columns": columns,
                "run_profile_bytes": total_bytes,
                "run_hours": hours,
                "seconds": round(time.perf_counter() - t0, 3),
            }
        )

    @dg.asset(
        key=RAW_EVENTS_DAILY_PROFILE,
        partitions_def=partitions.daily,
        automation_condition=PROFILE_DAYS,
        deps=[dg.AssetDep(RAW_EVENTS_PROFILE, partition_mapping=dg.TimeWindowPartitionMapping())],
        group_name=GROUP,
        owners=[OWNER],
        kinds={"whylogs"},
        description=(
            "The day's raw-event profile: the exact merge of its 24 hourly `raw_events_profile`s (counts "
            "and min/max exact, sketches within their error), at "
            "`profiles/raw_events_daily/dt=YYYY-MM-DD/profile.bin`. Fails if an hour is missing."
        ),
    )
    def raw_events_daily_profile(
        context: dg.AssetExecutionContext, lake: LakeResource
    ) -> dg.MaterializeResult:
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
        key=FEATURE_PROFILES,
        partitions_def=partitions.daily,
        automation_condition=PROFILE_DAYS,
        deps=[feature_asset_key(g.name) for g in FEATURE_GROUPS],
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
        key=TRAINING_SET_PROFILE,
        partitions_def=partitions.daily,
        deps=[TRAINING_SET],
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
        frame = _read_training_frame(store, context.partition_key)
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

    return [raw_events_profile, raw_events_daily_profile, feature_profiles, training_set_profile]
