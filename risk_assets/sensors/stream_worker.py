"""``stream_worker_progress_sensor``: the continuous stream worker's progress, reported to Dagster.

The worker (``risk-stream``, outside Dagster) appends a record per committed range to a Redis stream
(``streaming/progress.py``). Every tick this sensor reads the records after its cursor (the last
stream id reported) and reports, per asset and partition, one ``AssetMaterialization`` of
``stream_feature_buffer`` / ``online_features`` / ``feature_log`` (offsets, rows, lag: the run path's
metadata keys) and the ``kafka_lag_within_bound`` check result — so lineage, the freshness policies
and the lag check see the worker's output exactly as they see the sensor-driven runs'. Reported
through ``SensorResult(asset_events=…)``: the daemon records them on the instance, no run is launched.
"""

import dagster as dg

from risk_assets.features.redis_client import connect
from risk_assets.names import FEATURE_LOG, KAFKA_LAG_CHECK, LAG_OFFSETS, LAG_SECONDS, ONLINE_FEATURES
from risk_assets.resources import RedisResource
from risk_assets.streaming import progress

LAG_WARN_OFFSETS = 100_000
"""The worker's lag check warns above this many offsets past its last committed range…"""
LAG_WARN_SECONDS = 60.0
"""…or when the oldest of them waited longer (the run path's defaults)."""


def progress_events(
    summaries: list[progress.Summary],
) -> list[dg.AssetMaterialization | dg.AssetCheckEvaluation]:
    """The Dagster events of the worker's progress summaries."""
    events: list[dg.AssetMaterialization | dg.AssetCheckEvaluation] = []
    for s in summaries:
        meta = {**s.metadata(), "mode": "stream_worker"}
        description = (
            f"risk-stream {s.worker}: {s.ranges} range(s) of {s.topic}/{s.partition}, "
            f"offsets [{s.offset_start:,}, {s.offset_end:,})"
        )
        events.append(dg.AssetMaterialization(asset_key=s.asset, description=description, metadata=meta))
        if s.asset == ONLINE_FEATURES:  # the worker's ingestion writes the feature log too
            log_meta = {k: v for k, v in meta.items() if k != "dagster/row_count"}
            events.append(
                dg.AssetMaterialization(
                    asset_key=FEATURE_LOG,
                    description=description,
                    metadata={**log_meta, "dagster/row_count": s.rows},
                )
            )
        events.append(
            dg.AssetCheckEvaluation(
                asset_key=dg.AssetKey(s.asset),
                check_name=KAFKA_LAG_CHECK,
                passed=0 <= s.lag_offsets <= LAG_WARN_OFFSETS and s.lag_seconds <= LAG_WARN_SECONDS,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={
                    LAG_OFFSETS: s.lag_offsets,
                    LAG_SECONDS: s.lag_seconds,
                    "max_offsets": LAG_WARN_OFFSETS,
                    "max_seconds": LAG_WARN_SECONDS,
                    "partition": f"{s.topic}/{s.partition}",
                },
            )
        )
    return events


@dg.sensor(
    name="stream_worker_progress_sensor",
    minimum_interval_seconds=10,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Every 10 s: the ranges the continuous stream worker (`risk-stream`) committed since the last "
        "tick, reported as materializations of `stream_feature_buffer`, `online_features` and "
        "`feature_log` with their `kafka_lag_within_bound` check results (no run is launched). "
        "Reports nothing while no worker runs."
    ),
)
def stream_worker_progress_sensor(context: dg.SensorEvaluationContext, redis: RedisResource):
    client = connect(redis.url, cluster=redis.cluster, socket_timeout=5.0)
    try:
        records = progress.read_after(client, redis.namespace, context.cursor or None)
    finally:
        client.close()
    if not records:
        return dg.SkipReason("no range committed by the stream worker since the last tick")
    events = progress_events(progress.summarize([r for _, r in records]))
    return dg.SensorResult(asset_events=events, cursor=records[-1][0])
