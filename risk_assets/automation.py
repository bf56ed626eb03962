"""When assets materialize by themselves: declarative automation conditions and freshness policies.

One place for the platform's cadence besides the schedules (``sensors/schedules.py``):

* feature days are computed once their day's archive hours are all in (``on_cron`` waits for every
  dependency partition to be updated after the tick), the training set after them;
* the daily profiles after their hours and features;
* drift and realized performance after the training set — they need a champion, so their sensor
  starts STOPPED and is switched on once a model serves;
* freshness policies on what must stay fresh: the archive (hourly), the stream feature log and the
  online store (the 10–15 minute sync promise).

Evaluated by Dagster's automation sensors (``automation_sensors``) in the daemon.
"""

from __future__ import annotations

from datetime import timedelta

import dagster as dg

FEATURE_DAYS = dg.AutomationCondition.on_cron("30 1 * * *")
"""A feature day at 01:30 UTC, once every archive hour of it was materialized after the tick."""
TRAINING_DAYS = dg.AutomationCondition.on_cron("0 3 * * *")
"""The day's training set at 03:00 UTC, once its feature days are in."""
PROFILE_DAYS = dg.AutomationCondition.on_cron("30 2 * * *")
"""The day's merged raw-event profile and feature profiles at 02:30 UTC."""
MONITORING_DAYS = dg.AutomationCondition.on_cron("30 3 * * *")
"""Drift and realized performance at 03:30 UTC, after the day's training set."""

ARCHIVE_FRESHNESS = dg.FreshnessPolicy.time_window(
    warn_window=timedelta(hours=2), fail_window=timedelta(hours=3)
)
"""An archive hour is final an hour (grace) after it ends; two without a new one is late."""
FEATURE_LOG_FRESHNESS = dg.FreshnessPolicy.time_window(
    warn_window=timedelta(minutes=5), fail_window=timedelta(minutes=15)
)
"""The stream path publishes micro-batches every few seconds under live traffic."""
STREAM_FRESHNESS = dg.FreshnessPolicy.time_window(
    warn_window=timedelta(minutes=2), fail_window=timedelta(minutes=10)
)
"""Stream micro-batches and buffer ingestion under live traffic: a run every few seconds per
partition. Stale = no run in that long (the stream fell behind, the sensors stopped, or no
traffic); the ``kafka_lag_within_bound`` check tells which, with the lag in offsets and seconds."""
ONLINE_SYNC_FRESHNESS = dg.FreshnessPolicy.time_window(
    warn_window=timedelta(minutes=15), fail_window=timedelta(minutes=30)
)
"""The offline → online sync runs every 10 minutes (the store's 10–15 minute promise)."""


def automation_sensors(data: dg.AssetSelection, monitoring: dg.AssetSelection) -> list[dg.SensorDefinition]:
    """Two automation sensors: data assets (RUNNING by default: safe, they only compute what their
    inputs allow) and model monitoring (STOPPED until a champion serves)."""
    return [
        dg.AutomationConditionSensorDefinition(
            "data_automation_sensor",
            target=data,
            default_status=dg.DefaultSensorStatus.RUNNING,
            minimum_interval_seconds=60,
            description="Feature days, training sets and daily profiles once their inputs are complete.",
        ),
        dg.AutomationConditionSensorDefinition(
            "monitoring_automation_sensor",
            target=monitoring,
            default_status=dg.DefaultSensorStatus.STOPPED,
            minimum_interval_seconds=60,
            description="Daily drift and realized performance (switch on once a champion serves).",
        ),
    ]
