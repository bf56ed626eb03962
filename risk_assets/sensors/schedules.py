"""Every schedule of the platform: its cadence at a glance.

* ``raw_archive_hourly_schedule`` — each archive hour once it is final (STOPPED by default: it
  needs a broker with live traffic);
* ``online_sync_schedule`` — offline → online sync every 10 minutes (RUNNING by default);
* ``service_health_schedule`` — the scoring service's health and SLO every 5 minutes;
* ``weekly_retraining_schedule`` — a retraining floor under the retraining sensor.

The daily assets (features, training sets, profiles, drift, realized performance) are not on a
schedule: they carry automation conditions (``risk_assets/automation.py``) and run once their inputs
are complete. Partition keys are computed from the tick time (``partitions.hour_key`` /
``previous_day_key``), the same strings whatever the deployment's data start.
"""

import dagster as dg

from risk_assets.features.sync_assets import SYNC_EVERY_MINUTES, online_sync_job, sync_cron
from risk_assets.ingest.assets import ARCHIVE_LAG, archive_job
from risk_assets.monitoring.health_assets import service_health_job
from risk_assets.names import RETRAIN_DAY_TAG, RETRAIN_REASON_TAG, RETRAIN_TRIGGER_TAG
from risk_assets.partitions import hour_key, previous_day_key
from risk_assets.sensors.retraining import retraining_job


@dg.schedule(
    job=archive_job,
    cron_schedule="5 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description=(
        "Every hour at :05, archive the newest hour that is final (ended more than the lateness "
        "grace ago). Earlier hours re-run by backfill replace themselves idempotently."
    ),
)
def raw_archive_hourly_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    """Request the newest final archive hour."""
    hour = hour_key(context.scheduled_execution_time - ARCHIVE_LAG)
    return dg.RunRequest(run_key=f"archive:{hour}", partition_key=hour)


online_sync_schedule = dg.ScheduleDefinition(
    name="online_sync_schedule",
    job=online_sync_job,
    cron_schedule=sync_cron(),
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description=f"Sync the online store from the offline store every {SYNC_EVERY_MINUTES} minutes.",
)


@dg.schedule(
    job=service_health_job,
    cron_schedule="*/5 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Every 5 minutes: the scoring service's health and SLO over the last interval.",
)
def service_health_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    """One health scrape per tick."""
    return dg.RunRequest(run_key=f"service_health:{context.scheduled_execution_time:%Y%m%dT%H%M}")


@dg.schedule(
    job=retraining_job,
    cron_schedule="0 4 * * 1",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Every Monday 04:00 UTC: retrain on the previous day (a floor under the sensor).",
)
def weekly_retraining_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    """Request the weekly retraining run for the previous UTC day."""
    day = previous_day_key(context.scheduled_execution_time)
    return dg.RunRequest(
        run_key=f"retrain:{day}:weekly",
        partition_key=day,
        tags={
            RETRAIN_REASON_TAG: "weekly retraining floor",
            RETRAIN_TRIGGER_TAG: "weekly",
            RETRAIN_DAY_TAG: day,
        },
    )


SCHEDULES = [
    raw_archive_hourly_schedule,
    online_sync_schedule,
    service_health_schedule,
    weekly_retraining_schedule,
]
