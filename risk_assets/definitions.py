"""The ``dg.Definitions`` of the risk_assets code location: wiring only.

``defs`` is loaded lazily (``@dg.definitions``): the partitions start at the deployment's data start
(``RISK_DATA_START``, read when the code location loads, never at import), and every other setting
reaches the resources through ``dg.EnvVar`` at run time. :func:`build_definitions` is the same
wiring for explicit partitions (tests, notebooks, the demo).
"""

from __future__ import annotations

import dagster as dg

from risk_assets.automation import automation_sensors
from risk_assets.features.assets import build_batch_features, feature_catalog
from risk_assets.features.stream_assets import (
    events_topic,
    feature_ingestion_job,
    ingest_feature_buffer,
    stream_batch_consistency,
    stream_feature_buffer,
    stream_features_job,
    stream_state_warm_start_job,
)
from risk_assets.features.sync_assets import (
    online_offline_consistency,
    online_store_sync,
    online_sync_job,
)
from risk_assets.ingest.assets import archive_job, ingest_assets
from risk_assets.models.assets import deployed_model, model_assets, model_rollback_job
from risk_assets.monitoring.drift_assets import build_drift_report
from risk_assets.monitoring.health_assets import service_health, service_health_job
from risk_assets.monitoring.performance_assets import build_realized_performance, monitoring_daily_job
from risk_assets.monitoring.prediction_log_assets import prediction_log
from risk_assets.monitoring.profile_assets import profile_assets
from risk_assets.monitoring.shadow_assets import shadow_comparison
from risk_assets.monitoring.skew_assets import serving_skew
from risk_assets.names import (
    CHALLENGER_MODEL,
    DRIFT_REPORT,
    FEATURE_PROFILES,
    MODEL_PROMOTION,
    RAW_EVENTS_DAILY_PROFILE,
    REALIZED_PERFORMANCE,
)
from risk_assets.partitions import TimePartitions
from risk_assets.resources import (
    KafkaResource,
    LakeResource,
    RawEventSource,
    RedisResource,
    ScoringServiceResource,
)
from risk_assets.sensors.kafka_sensors import feature_ingestion_sensor, stream_features_sensor
from risk_assets.sensors.online_resync import online_store_emptied_sensor
from risk_assets.sensors.retraining import retraining_job, retraining_sensor
from risk_assets.sensors.schedules import SCHEDULES
from risk_assets.sensors.stream_worker import stream_worker_progress_sensor


def env_resources() -> dict[str, dg.ConfigurableResource]:
    """Every resource, configured from the environment through ``dg.EnvVar`` (read at run time)."""
    return {
        # s3:// lakes use the standard AWS chain (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, …).
        "lake": LakeResource(url=dg.EnvVar("RISK_LAKE_URL")),
        "kafka": KafkaResource(bootstrap_servers=dg.EnvVar("KAFKA_BOOTSTRAP_SERVERS")),
        "redis": RedisResource(url=dg.EnvVar("REDIS_URL")),
        # Optional: the URL of a running risk-serve, to confirm which model it serves.
        "scoring_service": ScoringServiceResource(url=dg.EnvVar("RISK_SERVE_URL")),
        # lake | snowflake (raw events read from); polars | snowflake (features computed by); the
        # Snowflake settings are only used with a snowflake backend.
        "raw_event_source": RawEventSource(
            backend=dg.EnvVar("RISK_RAW_EVENT_BACKEND"),
            compute_backend=dg.EnvVar("RISK_FEATURE_COMPUTE_BACKEND"),
            snowflake_account=dg.EnvVar("SNOWFLAKE_ACCOUNT"),
            snowflake_user=dg.EnvVar("SNOWFLAKE_USER"),
            snowflake_password=dg.EnvVar("SNOWFLAKE_PASSWORD"),
        ),
    }


def all_assets(partitions: TimePartitions) -> list[dg.AssetsDefinition | dg.AssetSpec]:
    """Every asset of the code location, partitioned from ``partitions.start``, in flow order."""
    return [
        # ingest: Kafka → hourly archive (+ its Snowflake mirror)
        events_topic,
        *ingest_assets(partitions),
        # features: batch (daily), stream (offset ranges), offline → online sync
        build_batch_features(partitions),
        feature_catalog,
        stream_feature_buffer,
        ingest_feature_buffer,
        online_store_sync,
        # models: training set → challenger → guarded promotion → what serves
        *model_assets(partitions),
        deployed_model,
        # monitoring: profiles, drift, realized performance, prediction log, skew, health
        *profile_assets(partitions),
        build_drift_report(partitions),
        build_realized_performance(partitions),
        prediction_log,
        serving_skew,
        shadow_comparison,
        service_health,
    ]


ASSET_CHECKS = [stream_batch_consistency, online_offline_consistency]
JOBS = [
    archive_job,
    stream_features_job,
    feature_ingestion_job,
    online_sync_job,
    model_rollback_job,
    monitoring_daily_job,
    retraining_job,
    service_health_job,
    stream_state_warm_start_job,
]
SENSORS = [
    stream_features_sensor,
    feature_ingestion_sensor,
    stream_worker_progress_sensor,
    retraining_sensor,
    online_store_emptied_sensor,
    *automation_sensors(
        data=dg.AssetSelection.groups("features", "training")
        - dg.AssetSelection.assets(CHALLENGER_MODEL, MODEL_PROMOTION)
        | dg.AssetSelection.assets(RAW_EVENTS_DAILY_PROFILE, FEATURE_PROFILES),
        monitoring=dg.AssetSelection.assets(DRIFT_REPORT, REALIZED_PERFORMANCE),
    ),
]


def build_definitions(partitions: TimePartitions) -> dg.Definitions:
    """Every asset, check, job, schedule and sensor, with partitions starting at ``partitions.start``
    and the resources of :func:`env_resources`."""
    return dg.Definitions(
        assets=all_assets(partitions),
        asset_checks=ASSET_CHECKS,
        jobs=JOBS,
        schedules=SCHEDULES,
        sensors=SENSORS,
        resources=env_resources(),
    )


@dg.definitions
def defs() -> dg.Definitions:
    """The code location, partitioned from ``RISK_DATA_START`` (read now, at load time)."""
    return build_definitions(TimePartitions.from_env())
