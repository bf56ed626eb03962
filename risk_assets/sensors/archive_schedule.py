"""Hourly schedule for the raw archives: materialize each hour once it is final."""

import dagster as dg

from risk_assets.ingest.assets import ARCHIVE_LAG, HOURLY, archive_job


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
    hour = HOURLY.get_partition_key_for_timestamp(
        (context.scheduled_execution_time - ARCHIVE_LAG).timestamp()
    )
    return dg.RunRequest(run_key=f"archive:{hour}", partition_key=hour)
