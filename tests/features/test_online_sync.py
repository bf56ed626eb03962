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

from risk_assets.features.groups import GROUPS_BY_NAME
from risk_assets.features.ingestion import feature_log_path, group_layout
from risk_assets.features.offline_store import day_part_path
from risk_assets.features.online_audit import audit, expected_latest
from risk_assets.features.online_store import (
    SOURCE_BATCH,
    SOURCE_STREAM,
    OnlineStore,
    OnlineStoreError,
    OnlineStoreUnavailable,
)
from risk_assets.features.online_sync import STATE_PATH, SyncState, repair, sync
from risk_assets.features.online_tiles import KEY_SUFFIX as TILES_KEY_SUFFIX
from risk_assets.features.stream import output_schema
from risk_assets.features.sync_assets import online_offline_consistency, online_store_sync, sync_cron
from risk_assets.ingest.kafka_reader import OffsetRange
from risk_assets.lake import Lake
from risk_assets.names import feature_asset_key
from risk_assets.resources import LakeResource, RawEventSource, RedisResource
from risk_assets.sensors.online_resync import online_store_emptied_sensor
from risk_assets.simulator.config import SimConfig
from risk_assets.simulator.writers import write_history
from risk_assets.stack import launcher
from tests.conftest import asset_def

batch_features = asset_def(feature_asset_key("ato_user"))

START = datetime(2026, 7, 1, tzinfo=UTC)
GROUPS = [GROUPS_BY_NAME[n] for n in ("card_testing_device", "ato_user", "withdrawal_wallet")]
STREAMED = GROUPS[0]  # card_testing_device streams: it also has a feature log
DATA_NOW = START + timedelta(days=2)  # "now" for the audit's TTL rule: the end of the simulated data


@pytest.fixture
def offline(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    write_history(SimConfig(seed=3, start=START, hours=48, events_per_day=12_000, users=1_000), lake)
    res = {"lake": LakeResource(url=lake.url), "raw_event_source": RawEventSource()}
    for day in (START, START + timedelta(days=1)):
        assert dg.materialize(
            [batch_features],
            selection=[feature_asset_key(g.name) for g in GROUPS],
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


# ------------------------------------------------------------------------------------------------
# stores that notice they were emptied (issue 9: D6, D19, audit → repair)


def _census(lake: Lake, store: OnlineStore, groups=GROUPS) -> dict[str, tuple[int, int, int]]:
    """Per group: (entities the lake expects online, present online, present and equal) — every
    entity, not a sample."""
    full = audit(lake, store, list(groups), sample_per_group=None, now=DATA_NOW)
    return {g.group: (g.sampled, g.sampled - g.missing_online, g.sampled - g.mismatched) for g in full.groups}


def _online_keys(store: OnlineStore, prefix: str, *, tiles: bool = False) -> int:
    """Feature rows (or, with ``tiles``, v2 tile hashes) under the test's prefix, epoch marker keys
    excluded: a row or tile hash written twice under two keys would show up here."""
    suffix = TILES_KEY_SUFFIX.encode()
    return sum(
        1
        for k in store.client.scan_iter(match=f"{prefix}*", count=1000)
        if b"{epoch}" not in k and k.endswith(suffix) == tiles
    )


def _log_rows(lake: Lake, *, n: int, bump: float, same_times: bool) -> pl.DataFrame:
    """Stream rows of STREAMED for ``n`` devices, logged in the feature log. With ``same_times`` they
    sit at the offline rows' (event_ts, created_ts) with other values (a stream row the batch
    corrects); otherwise one minute after the device's newest offline row (newer than the batch)."""
    offline = expected_latest(lake, STREAMED).collect().sort("device_id").head(n)
    rows = offline.with_columns(pl.col("card_payment_count_1h") + bump)
    if not same_times:
        rows = rows.with_columns(
            pl.col("event_ts") + timedelta(minutes=1), pl.col("created_ts") + timedelta(minutes=1)
        )
    rows = rows.select([pl.col(c).cast(t) for c, t in output_schema(STREAMED).items()])
    day = rows["event_ts"].min().date()
    rng = OffsetRange("risk.features", 0, 0, n)
    lake.write_parquet(rows.filter(pl.col("event_ts").dt.date() == day), feature_log_path(STREAMED, day, rng))
    later = rows.filter(pl.col("event_ts").dt.date() != day)
    if later.height:
        lake.write_parquet(later, feature_log_path(STREAMED, later["event_ts"].min().date(), rng))
    return rows


def _rewrite_one_day_per_group(lake: Lake) -> None:
    """A batch re-run of the second day of every group (same content, new object versions)."""
    time.sleep(0.01)
    for g in GROUPS:
        path = day_part_path(g, START + timedelta(days=1))
        lake.write_parquet(pl.read_parquet(lake.read_bytes(path)), path)


def test_redis_restarted_between_ticks_gets_a_full_resync_not_an_empty_tick(offline, fresh_stack, key_prefix):
    """D6: the lake's watermark says everything was synced, but the new Redis holds nothing."""
    lake = offline
    logged = _log_rows(lake, n=40, bump=1000.0, same_times=False)
    with OnlineStore.from_url(fresh_stack.redis_url, namespace=key_prefix) as store:
        first = sync(lake, store, GROUPS)
        assert first.full_resync and first.objects == 6 and first.log_rows_offered == logged.height
        assert first.epoch is not None and store.epoch() == first.epoch == SyncState.load(lake).epoch
        expected = _census(lake, store)
        assert all(n > 0 and present == equal == n for n, present, equal in expected.values())
        tile_hashes = _online_keys(store, key_prefix, tiles=True)
        assert tile_hashes > 0

        fresh_stack.restart_redis()  # the same client reconnects to an empty server
        assert store.epoch() is None

        tick = sync(lake, store, GROUPS)
        assert tick.full_resync and "missing" in tick.reason  # before the fix: 0 objects offered
        assert tick.objects == 6 and tick.log_rows_offered == logged.height
        assert store.epoch() == tick.epoch != first.epoch
        census = _census(lake, store)
        assert census == expected  # 0 lost, 0 silently wrong: every entity back with its value
        assert _online_keys(store, key_prefix) == sum(n for n, _, _ in expected.values())  # 0 doubled
        assert _online_keys(store, key_prefix, tiles=True) == tile_hashes  # the tiles are back, once
        # The newer logged stream rows are what Redis serves for their devices (not the batch's).
        layout = group_layout(STREAMED)
        rows = store.read([(layout, d) for d in logged["device_id"].to_list()])
        assert [r.values["card_payment_count_1h"] for r in rows if r] == logged[
            "card_payment_count_1h"
        ].to_list()
        assert {r.source for r in rows if r} == {SOURCE_STREAM}

        calm = sync(lake, store, GROUPS)
        assert not calm.full_resync and (calm.objects, calm.applied) == (0, 0)


def test_redis_restarted_in_the_middle_of_a_tick_is_resynced_before_success(offline, fresh_stack, key_prefix):
    """D6 as measured: Redis killed mid-sync, redis-py reconnects to the empty server, the rest of the
    tick lands there. The tick must notice before it records anything."""
    lake = offline
    with OnlineStore.from_url(fresh_stack.redis_url, namespace=key_prefix) as store:
        sync(lake, store, GROUPS)
        expected = _census(lake, store)
        _rewrite_one_day_per_group(lake)

        real_write = store.write
        calls = []

        def write_then_restart(*args, **kwargs):
            result = real_write(*args, **kwargs)
            calls.append(result)
            if len(calls) == 1:  # after the first group's changed day: the operator's bad day
                fresh_stack.restart_redis()
            return result

        store.write = write_then_restart  # type: ignore[method-assign]
        tick = sync(lake, store, GROUPS)
        store.write = real_write  # type: ignore[method-assign]
        assert tick.full_resync and tick.passes == 2, tick  # before the fix: success with a third online
        assert "vanished" in tick.reason
        assert SyncState.load(lake).epoch == store.epoch() == tick.epoch
        assert _census(lake, store) == expected
        assert _online_keys(store, key_prefix) == sum(n for n, _, _ in expected.values())
        nothing_left = sync(lake, store, GROUPS)
        assert not nothing_left.full_resync and nothing_left.objects == 0


def test_a_stream_row_corrected_by_batch_at_equal_times_reaches_redis_and_the_audit_agrees(
    offline, fresh_stack, key_prefix
):
    """D19: stream rows ingested first, then the batch day with the same (event_ts, created_ts) and
    other values: the batch row must win in Redis and in the audit's expectation."""
    lake = offline
    logged = _log_rows(lake, n=25, bump=500.0, same_times=True)
    layout = group_layout(STREAMED)
    with OnlineStore.from_url(fresh_stack.redis_url, namespace=key_prefix) as store:
        assert store.write(layout, logged).applied == logged.height  # what stream ingestion did
        sync(lake, store, GROUPS)
        devices = logged["device_id"].to_list()
        rows = store.read([(layout, d) for d in devices])
        batch = expected_latest(lake, STREAMED).collect().filter(pl.col("device_id").is_in(devices))
        assert batch["_source"].unique().to_list() == [SOURCE_BATCH]
        assert [r.values["card_payment_count_1h"] for r in rows if r] == batch.sort("device_id")[
            "card_payment_count_1h"
        ].to_list()
        assert {r.source for r in rows if r} == {SOURCE_BATCH}
        full = audit(lake, store, [STREAMED], sample_per_group=None, now=DATA_NOW)
        assert full.mismatched == 0  # before the fix: the 25 devices kept their stale stream values


def test_a_failed_audit_repairs_the_affected_groups_and_says_what_it_did(offline, fresh_stack, key_prefix):
    """Item 3: damage a synced store three ways (rows deleted, rows stale, values rotten); the audit
    finds them, repair resyncs the affected groups only, and the store is whole again."""
    lake = offline
    with OnlineStore.from_url(fresh_stack.redis_url, namespace=key_prefix) as store:
        sync(lake, store, GROUPS)
        expected = _census(lake, store)
        client = store.client
        a, b = GROUPS[1], GROUPS[2]  # ato_user loses rows and gets stale ones; withdrawal_wallet rots
        users = expected_latest(lake, a).collect().sort("user_id")
        client.delete(*[store.key(group_layout(a), u) for u in users["user_id"].head(30).to_list()])
        stale = users.slice(30, 20).with_columns(pl.col("event_ts") - timedelta(hours=1))
        client.delete(*[store.key(group_layout(a), u) for u in stale["user_id"].to_list()])
        store.write(group_layout(a), stale, source=SOURCE_BATCH)
        wallets = expected_latest(lake, b).collect().sort("wallet_address")["wallet_address"].head(15)
        for w in wallets.to_list():
            key = store.key(group_layout(b), w)
            blob = bytearray(client.get(key))
            blob[-8:] = b"\xff" * 8  # the last feature becomes NaN: bytes changed, times intact
            client.set(key, bytes(blob))

        found = audit(lake, store, GROUPS, sample_per_group=None, now=DATA_NOW)
        by_group = {g.group: g for g in found.groups}
        assert (by_group[a.name].missing_online, by_group[a.name].stale_online) == (30, 20)
        assert by_group[b.name].value_mismatch == 15 and by_group[GROUPS[0].name].mismatched == 0

        fixed = repair(lake, store, GROUPS, found)
        assert sorted(fixed.groups) == sorted([a.name, b.name]) and not fixed.full_resync
        assert fixed.sampled_mismatched == 65 and fixed.applied == 65 and fixed.online_newer == 0
        assert _census(lake, store) == expected
        assert audit(lake, store, GROUPS, sample_per_group=None, now=DATA_NOW).mismatched == 0


def test_sync_asset_after_a_redis_restart_resyncs_and_repairs(offline, fresh_stack, key_prefix, monkeypatch):
    """The Dagster asset: a restart between ticks → full resync reported; rotten rows → repaired in
    the same run, and the check (run after it) passes."""
    import risk_assets.features.sync_assets as sync_assets

    monkeypatch.setattr(sync_assets, "FEATURE_GROUPS", tuple(GROUPS))
    res = {
        "lake": LakeResource(url=offline.url),
        "redis": RedisResource(url=fresh_stack.redis_url, namespace=key_prefix),
    }
    assert dg.materialize([online_store_sync], resources=res).success
    fresh_stack.restart_redis()
    result = dg.materialize([online_store_sync], resources=res)
    (mat,) = result.asset_materializations_for_node("online_store_sync")
    assert mat.metadata["full_resync"].value == 1 and mat.metadata["objects"].value == 6

    with OnlineStore.from_url(fresh_stack.redis_url, namespace=key_prefix) as store:
        layout = group_layout(GROUPS[1])
        users = expected_latest(offline, GROUPS[1]).collect()["user_id"].to_list()
        for u in users:  # every row of one group rots (values only): a sample of 500 sees it
            key = store.key(layout, u)
            blob = bytearray(store.client.get(key))
            blob[-8:] = b"\xff" * 8
            store.client.set(key, bytes(blob))
    result = dg.materialize([online_store_sync], resources=res)
    (mat,) = result.asset_materializations_for_node("online_store_sync")
    assert mat.metadata["full_resync"].value == 0 and mat.metadata["objects"].value == 0
    assert mat.metadata["audit_mismatched"].value > 0
    assert mat.metadata["repaired_groups"].value == 1 and mat.metadata["repaired_rows"].value == len(users)
    check = online_offline_consistency(**res)
    assert check.passed and check.metadata["mismatch_rate"].value == 0.0


def test_emptied_store_sensor_requests_a_resync_at_once(offline, fresh_stack, key_prefix):
    """The sensor notices a missing marker within a tick (not at the next scheduled sync) and goes
    quiet once the resync committed; each loss gets its own run key."""
    res = {
        "lake": LakeResource(url=offline.url),
        "redis": RedisResource(url=fresh_stack.redis_url, namespace=key_prefix),
    }

    def tick():
        with dg.build_sensor_context(resources=res) as ctx:
            return online_store_emptied_sensor(ctx)

    never = tick()
    assert isinstance(never, dg.RunRequest) and "missing" in never.tags["risk/resync_reason"]
    with OnlineStore.from_url(fresh_stack.redis_url, namespace=key_prefix) as store:
        sync(offline, store, GROUPS)
        assert isinstance(tick(), dg.SkipReason)
        fresh_stack.restart_redis()
        lost = tick()
        assert isinstance(lost, dg.RunRequest) and lost.run_key != never.run_key
        sync(offline, store, GROUPS)
        assert isinstance(tick(), dg.SkipReason)
