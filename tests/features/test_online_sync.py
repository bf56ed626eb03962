"""Offline → online sync: late rows, idempotent re-runs, caught-up ticks, Redis outages, the audit."""

from __future__ import annotations

import os
import signal
import time
from datetime import UTC, datetime, timedelta

import dagster as dg
import polars as pl
import pytest
import redis

from risk_assets.features.assets import batch_features, feature_asset_key
from risk_assets.features.groups import GROUPS_BY_NAME
from risk_assets.features.ingestion import group_layout
from risk_assets.features.offline_store import day_part_path
from risk_assets.features.online_audit import audit
from risk_assets.features.online_store import OnlineStore, OnlineStoreError, OnlineStoreUnavailable
from risk_assets.features.online_sync import STATE_PATH, SyncState, sync
from risk_assets.features.sync_assets import online_offline_consistency, online_store_sync, sync_cron
from risk_assets.lake import Lake
from risk_assets.resources import LakeResource, RawEventSource, RedisResource
from risk_assets.simulator.config import SimConfig
from risk_assets.simulator.writers import write_history
from risk_assets.stack import launcher

START = datetime(2026, 7, 1, tzinfo=UTC)
GROUPS = [GROUPS_BY_NAME[n] for n in ("card_testing_device", "ato_user", "withdrawal_wallet")]


@pytest.fixture
def offline(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    write_history(SimConfig(seed=3, start=START, hours=48, events_per_day=12_000, users=1_000), lake)
    res = {"lake": LakeResource(url=lake.url), "raw_event_source": RawEventSource()}
    for day in (START, START + timedelta(days=1)):
        assert dg.materialize(
            [batch_features],
            selection=[feature_asset_key(g) for g in GROUPS],
            resources=res,
            partition_key=f"{day:%Y-%m-%d}",
        ).success
    return lake


def test_sync_is_idempotent_and_picks_up_rewritten_days(offline, fresh_stack, key_prefix):
    lake = offline
    with OnlineStore.from_url(fresh_stack.redis_url, namespace=key_prefix) as store:
        first = sync(lake, store, GROUPS)
        assert first.objects == 6 and first.applied == first.rows_offered > 0
        assert audit(lake, store, GROUPS).mismatch_rate == 0.0

        again = sync(lake, store, GROUPS)
        assert (again.objects, again.applied) == (0, 0)

        # A late correction on the OLDER day, for a device not seen since: its row gets a new value
        # and a later created_ts. An event-time watermark (newest event_ts synced) is already past it.
        group = GROUPS[0]
        day0 = pl.read_parquet(lake.read_bytes(day_part_path(group, START)))
        day1 = pl.read_parquet(lake.read_bytes(day_part_path(group, START + timedelta(days=1))))
        watermark = day1["event_ts"].max()
        only_day0 = day0.filter(~pl.col("device_id").is_in(day1["device_id"].implode()))
        last = only_day0.sort("event_ts").tail(1)
        device, ts = last["device_id"][0], last["event_ts"][0]
        assert ts < watermark, "an event-time watermark would never look at this row again"
        target = (pl.col("device_id") == device) & (pl.col("event_ts") == ts)
        fixed = day0.with_columns(
            pl.when(target)
            .then(pl.col("card_payment_count_1h") + 100)
            .otherwise(pl.col("card_payment_count_1h")),
            pl.when(target).then(pl.col("created_ts") + timedelta(hours=30)).otherwise(pl.col("created_ts")),
        )
        time.sleep(0.01)
        lake.write_parquet(fixed, day_part_path(group, START))
        late = sync(lake, store, GROUPS)
        assert late.objects == 1 and late.applied == 1
        (row,) = store.read([(group_layout(group), device)])
        assert (
            row is not None and row.values["card_payment_count_1h"] == last["card_payment_count_1h"][0] + 100
        )
        assert audit(lake, store, GROUPS).mismatch_rate == 0.0


def test_redis_failing_in_the_middle_of_a_sync_loses_nothing_and_applies_nothing_twice(
    offline, fresh_stack, key_prefix
):
    lake = offline
    admin = redis.Redis.from_url(fresh_stack.redis_url)
    with OnlineStore.from_url(fresh_stack.redis_url, namespace=key_prefix) as store:
        real_write = store.write
        calls = []

        def write_then_fill_memory(*args, **kwargs):
            result = real_write(*args, **kwargs)
            calls.append(result)
            if len(calls) == 1:  # after the first group: Redis starts refusing writes (OOM)
                admin.config_set("maxmemory-policy", "noeviction")
                admin.config_set("maxmemory", 1)
            return result

        store.write = write_then_fill_memory  # type: ignore[method-assign]
        try:
            with pytest.raises(OnlineStoreError, match=r"(?i)memory|OOM"):
                sync(lake, store, GROUPS)
        finally:
            admin.config_set("maxmemory", 0)
        assert not lake.exists(STATE_PATH), "a failed tick must not mark anything synced"
        first_group_rows = calls[0].applied
        assert first_group_rows > 0

        store.write = real_write  # type: ignore[method-assign]
        retry = sync(lake, store, GROUPS)
        # The rows written before the failure are offered again and skipped: nothing applied twice.
        assert retry.by_group[GROUPS[0].name] == 0
        assert retry.skipped >= first_group_rows
        assert retry.objects == 6
        assert audit(lake, store, GROUPS).mismatch_rate == 0.0


def test_redis_outage_fails_the_tick_and_the_next_one_catches_up(
    offline, fresh_stack, key_prefix, monkeypatch
):
    lake = offline
    os.kill(launcher.pids(fresh_stack.config)["redis"], signal.SIGKILL)
    time.sleep(0.2)
    with (
        pytest.raises(OnlineStoreUnavailable),
        OnlineStore.from_url(fresh_stack.redis_url, namespace=key_prefix, check=False) as store,
    ):
        sync(lake, store, GROUPS)
    assert not lake.exists(STATE_PATH), "nothing may be marked synced when Redis failed"
    for key in ("REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS"):
        monkeypatch.delenv(key, raising=False)
    launcher.up(fresh_stack.config)
    with OnlineStore.from_url(fresh_stack.redis_url, namespace=key_prefix) as store:
        caught_up = sync(lake, store, GROUPS)
        assert caught_up.objects == 6 and caught_up.applied > 0
        assert set(SyncState.load(lake).synced) == {
            day_part_path(g, START + timedelta(days=d)) for g in GROUPS for d in (0, 1)
        }


def test_sync_asset_and_audit_check_in_dagster(offline, fresh_stack, key_prefix, monkeypatch):
    import risk_assets.features.sync_assets as sync_assets

    monkeypatch.setattr(sync_assets, "FEATURE_GROUPS", tuple(GROUPS))
    res = {
        "lake": LakeResource(url=offline.url),
        "redis": RedisResource(url=fresh_stack.redis_url, namespace=key_prefix),
    }
    result = dg.materialize([online_store_sync], resources=res)
    assert result.success
    (mat,) = result.asset_materializations_for_node("online_store_sync")
    assert mat.metadata["dagster/row_count"].value > 0
    assert mat.metadata["objects"].value == 6
    check = online_offline_consistency(**res)
    assert check.passed and check.metadata["mismatch_rate"].value == 0.0
    assert check.metadata["sampled"].value > 0


def test_sync_cadence_is_bounded():
    assert sync_cron() == "*/10 * * * *" and sync_cron(15) == "*/15 * * * *"
    with pytest.raises(ValueError):
        sync_cron(5)
