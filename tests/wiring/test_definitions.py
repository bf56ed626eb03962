"""A snapshot of the code location's wiring: a forgotten asset, check, job, schedule or sensor, or a
partition start that does not follow the configuration, fails here in seconds, without services."""

from __future__ import annotations

import subprocess
import sys
from datetime import date

import dagster as dg

from risk_assets.definitions import build_definitions
from risk_assets.features.groups import FEATURE_GROUPS
from risk_assets.partitions import DATA_START_ENV, TimePartitions
from tests.conftest import DEFS

ASSETS = sorted(
    [
        "challenger_model",
        "deployed_model",
        "drift_report",
        "feature_catalog",
        "feature_log",
        "feature_profiles",
        "model_promotion",
        "online_features",
        "online_store_sync",
        "prediction_log",
        "raw_event_dead_letters",
        "raw_events",
        "raw_events_daily_profile",
        "raw_events_profile",
        "raw_label_dead_letters",
        "raw_labels",
        "realized_performance",
        "risk_events_topic",
        "service_health",
        "serving_skew",
        "shadow_comparison",
        "snowflake_raw_events",
        "snowflake_raw_labels",
        "stream_feature_buffer",
        "training_set",
        "training_set_profile",
        *[f"features/{g.name}" for g in FEATURE_GROUPS],
    ]
)
CHECKS = sorted(
    [
        "challenger_model:challenger_metrics_sane",
        "deployed_model:serving_matches_champion",
        "drift_report:drift_share_error",
        "drift_report:drift_share_warn",
        "drift_report:label_rate_stable",
        "drift_report:prediction_stable",
        "feature_log:stream_batch_consistency",
        "online_features:kafka_lag_within_bound",
        "stream_feature_buffer:kafka_lag_within_bound",
        "online_store_sync:online_offline_consistency",
        "raw_events:invalid_share_below_threshold",
        "raw_labels:invalid_share_below_threshold",
        "service_health:service_slo",
        "serving_skew:serving_skew_below_threshold",
        "training_set:training_class_balance",
        "training_set:training_positives",
        "training_set:training_window_coverage",
        *[
            f"features/{g.name}:{check}"
            for g in FEATURE_GROUPS
            for check in ("feature_null_shares", "feature_rows_per_day", "feature_schema")
        ],
    ]
)
JOBS = sorted(
    [
        "feature_ingestion_job",
        "model_rollback_job",
        "monitoring_daily_job",
        "online_sync_job",
        "raw_archive_job",
        "retraining_job",
        "service_health_job",
        "stream_features_job",
        "stream_state_warm_start_job",
    ]
)
SCHEDULES = {
    "online_sync_schedule": ("*/10 * * * *", "RUNNING"),
    "raw_archive_hourly_schedule": ("5 * * * *", "STOPPED"),
    "service_health_schedule": ("*/5 * * * *", "STOPPED"),
    "weekly_retraining_schedule": ("0 4 * * 1", "STOPPED"),
}
SENSORS = [
    "data_automation_sensor",
    "feature_ingestion_sensor",
    "monitoring_automation_sensor",
    "online_store_emptied_sensor",
    "retraining_sensor",
    "stream_features_sensor",
    "stream_worker_progress_sensor",
]
AUTOMATED = {f"features/{g.name}" for g in FEATURE_GROUPS} | {"training_set", "raw_events_daily_profile"}
AUTOMATED |= {"feature_catalog"}
AUTOMATED |= {"feature_profiles", "drift_report", "realized_performance"}
FRESHNESS = {
    "raw_events",
    "raw_labels",
    "feature_log",
    "online_store_sync",
    "online_features",
    "stream_feature_buffer",
}
HOURLY = {"raw_events", "raw_labels", "raw_event_dead_letters", "raw_label_dead_letters"}
HOURLY |= {"raw_events_profile", "snowflake_raw_events", "snowflake_raw_labels"}
DAILY = {"training_set", "challenger_model", "model_promotion", "raw_events_daily_profile"}
DAILY |= {"feature_profiles", "training_set_profile", "drift_report", "realized_performance"}
DAILY |= {f"features/{g.name}" for g in FEATURE_GROUPS}


def test_assets_checks_jobs_schedules_and_sensors() -> None:
    graph = DEFS.resolve_asset_graph()
    assert sorted(k.to_user_string() for k in graph.get_all_asset_keys()) == ASSETS
    checks = sorted(f"{k.asset_key.to_user_string()}:{k.name}" for k in graph.asset_check_keys)
    assert checks == CHECKS
    repo = DEFS.get_repository_def()
    assert sorted(j.name for j in repo.get_all_jobs() if not j.name.startswith("__")) == JOBS
    schedules = {s.name: (s.cron_schedule, s.default_status.value) for s in repo.schedule_defs}
    assert schedules == SCHEDULES
    assert sorted(s.name for s in repo.sensor_defs) == SENSORS


def test_automation_and_freshness_where_the_card_wants_them() -> None:
    graph = DEFS.resolve_asset_graph()
    automated = {k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).automation_condition}
    assert automated == AUTOMATED
    fresh = {k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).freshness_policy}
    assert fresh == FRESHNESS
    statuses = {s.name: s.default_status.value for s in DEFS.get_repository_def().sensor_defs}
    assert statuses["data_automation_sensor"] == "RUNNING"
    assert statuses["monitoring_automation_sensor"] == "STOPPED"


def test_partitions_follow_the_configured_data_start() -> None:
    defs = build_definitions(TimePartitions(date(2026, 10, 18)))
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        name, part = key.to_user_string(), graph.get(key).partitions_def
        if name in HOURLY:
            assert isinstance(part, dg.HourlyPartitionsDefinition), name
            assert part.get_first_partition_key() == "2026-10-18-00:00", name
        elif name in DAILY:
            assert isinstance(part, dg.DailyPartitionsDefinition), name
            assert part.get_first_partition_key() == "2026-10-18", name
        else:
            assert part is None, name


def test_the_code_location_reads_its_data_start_when_it_loads() -> None:
    """``defs`` is lazy: the environment is read when Dagster loads it, never at import."""
    code = (
        "import os; from risk_assets import definitions as d; "
        f"os.environ[{DATA_START_ENV!r}] = '2026-09-30'; "
        "print(d.defs().resolve_assets_def('training_set').partitions_def.get_first_partition_key())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("2026-09-30"), out.stdout + out.stderr
