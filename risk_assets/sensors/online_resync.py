"""Resync the online store at once when Redis lost its data (its epoch marker is gone).

risk-serve is degraded and not ready while the marker is missing, so waiting for the next 10-minute
sync tick is not an option: this sensor requests the sync within 30 s. The sync itself decides what a
full resync is (``features/online_sync.py``).
"""

import dagster as dg

from risk_assets.features.online_store import OnlineStore, OnlineStoreUnavailable
from risk_assets.features.online_sync import SyncState, resync_reason
from risk_assets.features.sync_assets import online_sync_job
from risk_assets.resources import LakeResource, RedisResource


def _store(redis: RedisResource) -> OnlineStore:
    return OnlineStore.from_url(redis.url, namespace=redis.namespace, cluster=redis.cluster)


@dg.sensor(
    job=online_sync_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Starts the online sync at once when the online store's epoch marker is missing or not the "
        "sync's (Redis restarted empty, flushed, never synced): risk-serve is degraded and not ready "
        "until the resync commits the marker, so waiting for the next scheduled tick is not an option."
    ),
)
def online_store_emptied_sensor(
    context: dg.SensorEvaluationContext, lake: LakeResource, redis: RedisResource
) -> dg.RunRequest | dg.SkipReason:
    store_lake = lake.lake()
    try:
        with _store(redis) as store:
            reason = resync_reason(store_lake, store)
    except OnlineStoreUnavailable as exc:
        return dg.SkipReason(f"Redis unavailable: {exc}")
    if reason is None:
        return dg.SkipReason("the online store holds the synced epoch")
    state = SyncState.load(store_lake)
    context.log.warning("online store needs a full resync: %s", reason)
    # One run per (recorded epoch, last success): a later loss, after a successful resync, gets a
    # new key; a failed resync run is retried by its policy and by the schedule.
    return dg.RunRequest(
        run_key=f"online-resync:{state.epoch or 'none'}:{state.last_success or 'never'}",
        tags={"risk/resync_reason": reason[:200]},
    )
