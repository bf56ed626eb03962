"""Replay served predictions through the offline pipeline: what *should* the service have used?

Pure (no Dagster). For logged predictions (one row per ``log_key`` with its ``event_id``), every
model input is recomputed exactly as training sets compute it — request features from the archived
event, each feature group point-in-time joined at ``event_ts − 1 ms`` honouring ``created_ts`` and
TTL — so :func:`risk_assets.monitoring.skew.row_level_skew` can compare it with what was served
(Chronon's approach: log what was served, replay it through the offline join).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import polars as pl

from risk_assets.features.offline_store import read_offline
from risk_assets.features.point_in_time import point_in_time_join
from risk_assets.features.request import request_frame
from risk_assets.features.spec import FeatureGroup
from risk_assets.ingest.raw_reader import RawDataSource
from risk_assets.lake import Lake
from risk_assets.models import registry
from risk_assets.models.request_features import REQUEST_FEATURE_SETS
from risk_assets.models.training_set import SPINE_COLUMNS, feature_tables

FEATURE_AS_OF = "feature_as_of"
KEY = "log_key"


class ModelManifests:
    """Manifests of model versions, read once per run from the registry."""

    def __init__(self, store: Lake) -> None:
        self.store = store
        self.cache: dict[str, dict[str, Any]] = {}

    def manifest(self, version: str) -> dict[str, Any]:
        """The version's manifest (``ValueError`` if the version is not in the registry)."""
        if version not in self.cache:
            try:
                self.cache[version] = registry.load_manifest(self.store, version)
            except FileNotFoundError as exc:
                raise ValueError(f"model version {version} is not in the registry") from exc
        return self.cache[version]

    def features(self, version: str) -> list[str]:
        """The version's model inputs, in order."""
        return list(self.manifest(version)["features"])


def recompute_features(
    store: Lake,
    source: RawDataSource,
    served: pl.DataFrame,
    features: list[str],
    groups: Sequence[FeatureGroup],
) -> tuple[pl.DataFrame, int]:
    """Offline recomputation of ``features`` for the logged rows ``served`` (``log_key``,
    ``event_id``): the event from the raw archive, request features from it, every group of ``groups``
    the features use point-in-time joined at ``event_ts − 1 ms`` honouring ``created_ts`` and TTL (the
    training-set rule). Returns (``log_key`` + features, rows whose event is not in the archive)."""
    if served.height == 0:
        return pl.DataFrame(schema={KEY: pl.String, **dict.fromkeys(features, pl.Float64)}), 0
    lo = served["event_ts"].min()
    hi = served["event_ts"].max()
    assert isinstance(lo, datetime) and isinstance(hi, datetime)
    events = source.events(store, lo, hi + timedelta(milliseconds=1), list(SPINE_COLUMNS)).unique(
        subset="event_id", keep="first"
    )
    spine = served.select(KEY, "event_id").join(events, on="event_id", how="inner", maintain_order="left")
    missing = served.height - spine.height
    spine = spine.with_columns((pl.col("event_ts") - timedelta(milliseconds=1)).alias(FEATURE_AS_OF))
    used = [g for g in groups if any(f.startswith(f"{g.name}__") for f in features)]
    offline = {g.name: read_offline(store, g, lo - g.ttl, hi + timedelta(milliseconds=1)) for g in used}
    joined = point_in_time_join(spine, feature_tables(used, offline), spine_timestamp=FEATURE_AS_OF)
    used_request = [r for r in REQUEST_FEATURE_SETS.values() if set(r.outputs) & set(features)]
    joined = request_frame(used_request, joined)  # the functions risk-serve calls
    out = joined.select(
        KEY,
        *[
            pl.col(f).cast(pl.Float64) if f in joined.columns else pl.lit(None, pl.Float64).alias(f)
            for f in features
        ],
    )
    return out, missing
