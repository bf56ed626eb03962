"""Training assets: the point-in-time training set (daily, as of the end of the partition day)."""

from datetime import timedelta

import dagster as dg

from risk_assets.features.assets import DAILY, feature_asset_key
from risk_assets.features.definitions import FEATURE_GROUPS
from risk_assets.features.offline_store import read_offline
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
