"""The one ``dg.Definitions`` of the risk_assets code location: wiring only."""

from __future__ import annotations

import dagster as dg

from risk_assets.features.assets import batch_features
from risk_assets.ingest.assets import (
    archive_job,
    raw_events_archive,
    raw_labels_archive,
    snowflake_raw_events,
)
from risk_assets.resources import KafkaResource, LakeResource, RawEventSource
from risk_assets.sensors.archive_schedule import raw_archive_hourly_schedule

defs = dg.Definitions(
    assets=[raw_events_archive, raw_labels_archive, snowflake_raw_events, batch_features],
    jobs=[archive_job],
    schedules=[raw_archive_hourly_schedule],
    resources={
        # s3:// lakes use the standard AWS chain (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, …).
        "lake": LakeResource(url=dg.EnvVar("RISK_LAKE_URL")),
        "kafka": KafkaResource(bootstrap_servers=dg.EnvVar("KAFKA_BOOTSTRAP_SERVERS")),
        # lake | snowflake; the Snowflake settings are only used with the snowflake backend.
        "raw_event_source": RawEventSource(
            backend=dg.EnvVar("RISK_RAW_EVENT_BACKEND"),
            snowflake_account=dg.EnvVar("SNOWFLAKE_ACCOUNT"),
            snowflake_user=dg.EnvVar("SNOWFLAKE_USER"),
            snowflake_password=dg.EnvVar("SNOWFLAKE_PASSWORD"),
        ),
    },
)
