"""The offline → online sync as a scheduled asset, with the consistency audit as its check.

The asset syncs (a full resync when the online store's epoch marker says Redis was emptied), then
audits a sample and, when the audit finds repairable mismatches, resyncs the affected groups in
full (``online_sync.repair``); the check audits again afterwards."""

import dagster as dg

from risk_assets.features.assets import feature_asset_key
from risk_assets.features.groups import FEATURE_GROUPS
from risk_assets.features.online_audit import audit
from risk_assets.features.online_store import OnlineStore, OnlineStoreUnavailable
from risk_assets.features.online_sync import SyncState, repair, resync_reason, sync
from risk_assets.resources import LakeResource, RedisResource

SYNC_EVERY_MINUTES = 10
MAX_MISMATCH_RATE = 0.01
OWNER = "team:risk-data"


def sync_cron(minutes: int = SYNC_EVERY_MINUTES) -> str:
    """Cron for a sync every ``minutes`` (10–15, the online store's freshness promise)."""
    if not 10 <= minutes <= 15:
        raise ValueError(f"the online sync runs every 10 to 15 minutes, not {minutes}")
    return f"*/{minutes} * * * *"


def _store(redis: RedisResource) -> OnlineStore:
    return OnlineStore.from_url(redis.url, namespace=redis.namespace, cluster=redis.cluster)


@dg.asset(
    key="online_store_sync",
    deps=[feature_asset_key(g) for g in FEATURE_GROUPS],
    group_name="serving",
    owners=[OWNER],
    kinds={"redis"},
    description=(
        "Offline → online sync: every offline feature row newer than Redis's value, per entity, "
        "including rows of days recomputed for late events (the watermark is the set of offline "
        "objects synced, not an event time). Write-if-newer, so re-sends never double-apply; "
        "state saved only after Redis acknowledged. A missing epoch marker (Redis emptied) means a "
        "full resync of every object and the stream feature log; a failed audit resyncs the "
        f"affected groups. Scheduled every {SYNC_EVERY_MINUTES} minutes."
    ),
    retry_policy=dg.RetryPolicy(max_retries=3, delay=15, backoff=dg.Backoff.EXPONENTIAL),
)
def online_store_sync(
    context: dg.AssetExecutionContext, lake: LakeResource, redis: RedisResource
) -> dg.MaterializeResult:
    groups = list(FEATURE_GROUPS)
    store_lake = lake.lake()
    with _store(redis) as store:
        result = sync(store_lake, store, groups)
        checked = audit(store_lake, store, groups)
        repaired = repair(store_lake, store, groups, checked)
    context.log.info(
        "synced %d objects: %d rows offered, %d applied, %d not newer", result.objects, result.rows_offered,
        result.applied, result.skipped,
    )  # fmt: skip
    if result.full_resync:
        context.log.warning("full resync (%s) in %d pass(es)", result.reason, result.passes)
    if repaired.groups:
        context.log.warning(
            "audit found %d of %d sampled entities mismatched; resynced %s: %d rows rewritten",
            checked.mismatched, checked.sampled, ", ".join(repaired.groups), repaired.applied,
        )  # fmt: skip
    return dg.MaterializeResult(
        metadata={
            "full_resync": int(result.full_resync),
            "sync_passes": result.passes,
            "log_rows_offered": result.log_rows_offered,
            "audit_mismatch_rate": checked.mismatch_rate,
            "audit_mismatched": checked.mismatched,
            "repaired_groups": len(repaired.groups),
            "repaired_rows": repaired.applied,
            "repair_online_newer": repaired.online_newer,
            "dagster/row_count": result.applied,
            "rows_offered": result.rows_offered,
            "skipped_not_newer": result.skipped,
            "entities": result.entities,
            "objects": result.objects,
            "lag_seconds": result.lag_seconds if result.lag_seconds is not None else 0.0,
            "sync_seconds": result.seconds,
        }
    )


@dg.asset_check(
    asset="online_store_sync",
    description=(
        "Samples entities of every feature group and compares Redis with the newest offline value "
        f"(batch days + stream log). Fails above {MAX_MISMATCH_RATE:.0%} mismatches."
    ),
)
def online_offline_consistency(lake: LakeResource, redis: RedisResource) -> dg.AssetCheckResult:
    with _store(redis) as store:
        result = audit(lake.lake(), store, list(FEATURE_GROUPS))
    return dg.AssetCheckResult(
        passed=result.mismatch_rate <= MAX_MISMATCH_RATE,
        metadata={
            "mismatch_rate": result.mismatch_rate,
            "sampled": result.sampled,
            "missing_online": sum(g.missing_online for g in result.groups),
            "stale_or_newer": sum(g.stale_or_newer for g in result.groups),
            "newer_online": sum(g.newer_online for g in result.groups),
            "expired_online": sum(g.expired_online for g in result.groups),
            "value_mismatch": sum(g.value_mismatch for g in result.groups),
            "threshold": MAX_MISMATCH_RATE,
        },
    )


online_sync_job = dg.define_asset_job(
    "online_sync_job",
    selection=dg.AssetSelection.assets("online_store_sync"),
    description="Offline → online sync and its consistency audit.",
)
online_sync_schedule = dg.ScheduleDefinition(
    name="online_sync_schedule",
    job=online_sync_job,
    cron_schedule=sync_cron(),
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description=f"Sync the online store from the offline store every {SYNC_EVERY_MINUTES} minutes.",
)


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
