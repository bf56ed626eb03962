"""Monitoring assets: hourly profiles merge into exact daily counts, the drift checks' two thresholds,
and the retraining sensor's triggers, cooldown, run keys and reason tags."""

from datetime import UTC, datetime, timedelta

import dagster as dg
import polars as pl
import pytest

from risk_assets.ingest.archive import EVENTS, read_archive
from risk_assets.lake import Lake
from risk_assets.monitoring import profiles
from risk_assets.monitoring.artifacts import raw_events_daily_profile_path, raw_events_profile_path
from risk_assets.monitoring.drift_assets import DRIFT_SHARE_ERROR, DRIFT_SHARE_WARN, drift_check_results
from risk_assets.names import (
    RAW_EVENTS_DAILY_PROFILE,
    RAW_EVENTS_PROFILE,
    RETRAIN_REASON_TAG,
    RETRAIN_TRIGGER_TAG,
    ROW_COUNT,
)
from risk_assets.resources import LakeResource
from risk_assets.sensors.retraining import (
    RETRAIN_RECALL_DROP,
    RetrainCursor,
    evaluate_triggers,
    retraining_sensor,
)
from risk_assets.simulator import SimConfig
from risk_assets.simulator.writers import write_history
from tests.conftest import asset_def

raw_events_profile = asset_def(RAW_EVENTS_PROFILE)
raw_events_daily_profile = asset_def(RAW_EVENTS_DAILY_PROFILE)

START = datetime(2026, 6, 1, tzinfo=UTC)
SIM = SimConfig(seed=3, start=START, hours=24, events_per_day=6_000, users=300)
DAY = "2026-06-01"


def test_hourly_profiles_merge_into_exact_daily_counts(tmp_path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    write_history(SIM, lake, workers=1)
    resources = {"lake": LakeResource(url=lake.url)}
    hourly = dg.materialize(
        [raw_events_profile],
        resources=resources,
        tags={
            "dagster/asset_partition_range_start": f"{DAY}-00:00",
            "dagster/asset_partition_range_end": f"{DAY}-23:00",
        },
    )
    assert hourly.success
    daily = dg.materialize([raw_events_daily_profile], partition_key=DAY, resources=resources)
    assert daily.success

    hours = [START + timedelta(hours=h) for h in range(24)]
    raw = read_archive(lake, EVENTS.dataset, hours).collect()
    hour_rows = [
        profiles.summary(profiles.deserialize(lake.read_bytes(raw_events_profile_path(h))))
        .filter(pl.col("column") == "event_id")["count"]
        .item()
        for h in hours
    ]
    merged = profiles.summary(profiles.deserialize(lake.read_bytes(raw_events_daily_profile_path(DAY))))
    counts = dict(zip(merged["column"], merged["count"], strict=True))
    nulls = dict(zip(merged["column"], merged["null_count"], strict=True))
    assert counts["event_id"] == sum(hour_rows) == raw.height > 0
    for column in ("amount_usd", "device_id", "event_type"):
        assert counts[column] == raw.height
        assert nulls[column] == raw[column].null_count() + (
            raw[column].is_nan().sum() if raw[column].dtype.is_float() else 0
        )
    assert merged.filter(pl.col("column") == "amount_usd")["max"].item() == pytest.approx(
        raw["amount_usd"].max()
    )
    meta = daily.asset_materializations_for_node("raw_events_daily_profile")[0].metadata
    assert meta["rows"].value == raw.height and meta["hours"].value == 24
    assert meta["profile_bytes"].value > 0
    # One ranged run, yet each hour carries its own row count.
    per_hour = {
        m.partition: m.metadata[ROW_COUNT].value
        for m in hourly.asset_materializations_for_node("raw_events_profile")
    }
    assert [per_hour[h.strftime("%Y-%m-%d-%H:%M")] for h in hours] == hour_rows


@pytest.mark.parametrize(
    ("share", "warn_passes", "error_passes"),
    [
        (0.0, True, True),
        (DRIFT_SHARE_WARN, True, True),
        (DRIFT_SHARE_WARN + 0.01, False, True),
        (DRIFT_SHARE_ERROR, False, True),
        (DRIFT_SHARE_ERROR + 0.01, False, False),
    ],
)
def test_drift_checks_at_both_thresholds(share: float, warn_passes: bool, error_passes: bool) -> None:
    results = {r.check_name: r for r in drift_check_results(share, int(share * 100), 100)}
    assert results["drift_share_warn"].passed is warn_passes
    assert results["drift_share_warn"].severity == dg.AssetCheckSeverity.WARN
    assert results["drift_share_error"].passed is error_passes
    assert results["drift_share_error"].severity == dg.AssetCheckSeverity.ERROR


def _report(instance: dg.DagsterInstance, key: str, day: str, **metadata: float) -> None:
    instance.report_runless_asset_event(
        dg.AssetMaterialization(asset_key=key, partition=day, metadata=metadata)
    )


def test_triggers_need_enough_positives_and_a_real_drop() -> None:
    healthy = {"recent/positives": 200, "drop/recall_at_1pct_fpr": 0.05}
    assert (
        evaluate_triggers("2026-06-02", {"share_drifted": 0.1, "prediction_psi": 0.02}, "2026-06-02", healthy)
        is None
    )
    few = {"recent/ato/positives": 5, "drop/ato/recall_at_1pct_fpr": 0.9}
    assert evaluate_triggers(None, {}, "2026-06-02", few) is None
    bad = {"recent/ato/positives": 40, "drop/ato/recall_at_1pct_fpr": RETRAIN_RECALL_DROP + 0.1}
    t = evaluate_triggers("2026-06-01", {"prediction_psi": 0.4}, "2026-06-02", bad)
    assert t is not None and t.day == "2026-06-02"
    assert t.codes == ("prediction_drift", "realized_performance")
    assert t.run_key == "retrain:2026-06-02:prediction_drift+realized_performance"


def test_sensor_cooldown_run_key_and_reason_tags(dagster_instance: dg.DagsterInstance) -> None:
    instance = dagster_instance  # SQLite and PostgreSQL: the sensor reads materializations back
    assert isinstance(retraining_sensor(dg.build_sensor_context(instance=instance)), dg.SkipReason)
    _report(instance, "drift_report", "2026-06-03", share_drifted=0.05, prediction_psi=0.01)
    assert isinstance(retraining_sensor(dg.build_sensor_context(instance=instance)), dg.SkipReason)

    _report(instance, "drift_report", "2026-06-04", share_drifted=0.5, prediction_psi=0.01)
    first = retraining_sensor(dg.build_sensor_context(instance=instance))
    assert isinstance(first, dg.SensorResult)
    (req,) = first.run_requests
    assert req.partition_key == "2026-06-04"
    assert req.run_key == "retrain:2026-06-04:feature_drift"
    assert req.tags[RETRAIN_TRIGGER_TAG] == "feature_drift"
    assert "50.0% of features" in req.tags[RETRAIN_REASON_TAG]
    cursor = RetrainCursor.parse(first.cursor)
    assert cursor.last_run_key == req.run_key and cursor.last_reason == req.tags[RETRAIN_REASON_TAG]

    # A second tick within the cooldown, even with a new and worse trigger: no request.
    _report(instance, "drift_report", "2026-06-05", share_drifted=0.9, prediction_psi=0.9)
    second = retraining_sensor(dg.build_sensor_context(instance=instance, cursor=first.cursor))
    assert isinstance(second, dg.SkipReason) and "cooldown" in str(second.skip_message)

    # After the cooldown the pending trigger is requested, with its own run key and reason.
    expired = RetrainCursor(
        (datetime.now(UTC) - timedelta(hours=25)).isoformat(), cursor.last_run_key, cursor.last_reason
    )
    third = retraining_sensor(dg.build_sensor_context(instance=instance, cursor=expired.dumps()))
    assert isinstance(third, dg.SensorResult)
    (req3,) = third.run_requests
    assert req3.run_key == "retrain:2026-06-05:feature_drift+prediction_drift"
    assert "PSI 0.900" in req3.tags[RETRAIN_REASON_TAG]
