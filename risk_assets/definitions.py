"""The one ``dg.Definitions`` of the risk_assets code location: wiring only."""

from __future__ import annotations

import dagster as dg

from risk_assets.features.assets import batch_features
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
    online_store_emptied_sensor,
    online_store_sync,
    online_sync_job,
    online_sync_schedule,
)
from risk_assets.ingest.assets import (
    archive_job,
    raw_events_archive,
    raw_labels_archive,
    snowflake_raw_events,
)
from risk_assets.models.assets import (
    ScoringServiceResource,
    challenger_model,
    deployed_model,
    model_promotion,
    model_rollback_job,
    training_set,
)
from risk_assets.monitoring.assets import (
    drift_report_asset,
    feature_profiles,
    monitoring_daily_job,
    monitoring_daily_schedule,
    raw_events_daily_profile,
    raw_events_profile,
    realized_performance,
    training_set_profile,
)
from risk_assets.monitoring.serving_assets import (
    prediction_log,
    service_health,
    service_health_job,
    service_health_schedule,
    serving_skew,
)
from risk_assets.resources import KafkaResource, LakeResource, RawEventSource, RedisResource
from risk_assets.sensors.archive_schedule import raw_archive_hourly_schedule
from risk_assets.sensors.kafka_sensors import feature_ingestion_sensor, stream_features_sensor
from risk_assets.sensors.retraining import retraining_job, retraining_sensor, weekly_retraining_schedule

defs = dg.Definitions(
    assets=[
        events_topic,
        raw_events_archive,
        raw_labels_archive,
        snowflake_raw_events,
        batch_features,
        stream_feature_buffer,
        ingest_feature_buffer,
        online_store_sync,
        training_set,
        challenger_model,
        model_promotion,
        deployed_model,
        raw_events_profile,
        raw_events_daily_profile,
        feature_profiles,
        training_set_profile,
        drift_report_asset,
        realized_performance,
        prediction_log,
        serving_skew,
        service_health,
    ],
    asset_checks=[stream_batch_consistency, online_offline_consistency],
    jobs=[
        archive_job,
        stream_features_job,
        stream_state_warm_start_job,
        feature_ingestion_job,
        online_sync_job,
        model_rollback_job,
        monitoring_daily_job,
        retraining_job,
        service_health_job,
    ],
    schedules=[
        raw_archive_hourly_schedule,
        online_sync_schedule,
        monitoring_daily_schedule,
        weekly_retraining_schedule,
        service_health_schedule,
    ],
    sensors=[
        stream_features_sensor,
        feature_ingestion_sensor,
        retraining_sensor,
        online_store_emptied_sensor,
    ],
    resources={
        # s3:// lakes use the standard AWS chain (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, …).
        "lake": LakeResource(url=dg.EnvVar("RISK_LAKE_URL")),
        "kafka": KafkaResource(bootstrap_servers=dg.EnvVar("KAFKA_BOOTSTRAP_SERVERS")),
        "redis": RedisResource(url=dg.EnvVar("REDIS_URL")),
        # Optional: the URL of a running risk-serve, to confirm which model it serves.
        "scoring_service": ScoringServiceResource(url=dg.EnvVar("RISK_SERVE_URL")),
        # lake | snowflake; the Snowflake settings are only used with the snowflake backend.
        "raw_event_source": RawEventSource(
            backend=dg.EnvVar("RISK_RAW_EVENT_BACKEND"),
            snowflake_account=dg.EnvVar("SNOWFLAKE_ACCOUNT"),
            snowflake_user=dg.EnvVar("SNOWFLAKE_USER"),
            snowflake_password=dg.EnvVar("SNOWFLAKE_PASSWORD"),
        ),
    },
)
