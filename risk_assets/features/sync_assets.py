"""The offline → online sync as a scheduled asset, with the consistency audit as its check.

The asset syncs (a full resync when the online store's epoch marker says Redis was emptied), then
audits a sample and, when the audit finds repairable mismatches, resyncs the affected groups in
full (``online_sync.repair``); the check audits again afterwards."""

import dagster as dg

from risk_assets.automation import ONLINE_SYNC_FRESHNESS
from risk_assets.features.groups import FEATURE_GROUPS
from risk_assets.features.online_audit import audit, audit_tiles
from risk_assets.features.online_store import OnlineStore
from risk_assets.features.online_sync import repair, sync
from risk_assets.names import ONLINE_OFFLINE_CONSISTENCY_CHECK, ONLINE_STORE_SYNC, feature_asset_key
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
    key=ONLINE_STORE_SYNC,
    freshness_policy=ONLINE_SYNC_FRESHNESS,
    deps=[feature_asset_key(g.name) for g in FEATURE_GROUPS],
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
            "tiles_offered": result.tiles.tiles,
            "tiles_applied": result.tiles.applied,
            "tile_days": sum(len(d) for d in result.tiles.days.values()),
            "tile_sync_seconds": result.tiles.seconds,
        }
    )


@dg.asset_check(
    asset=ONLINE_STORE_SYNC,
    name=ONLINE_OFFLINE_CONSISTENCY_CHECK,
    description=(
        "Samples entities of every feature group and compares Redis with the newest offline value "
        "(batch days + stream log), and the value risk-serve serves now (tiles finished at t) with "
        f"the offline v2 value at t. Fails above {MAX_MISMATCH_RATE:.0%} mismatches in either."
    ),
)
def online_offline_consistency(lake: LakeResource, redis: RedisResource) -> dg.AssetCheckResult:
    with _store(redis) as store:
        result = audit(lake.lake(), store, list(FEATURE_GROUPS))
        served = audit_tiles(lake.lake(), store, list(FEATURE_GROUPS))
    return dg.AssetCheckResult(
        passed=result.mismatch_rate <= MAX_MISMATCH_RATE and served.mismatch_rate <= MAX_MISMATCH_RATE,
        metadata={
            "mismatch_rate": result.mismatch_rate,
            "sampled": result.sampled,
            "missing_online": sum(g.missing_online for g in result.groups),
            "stale_or_newer": sum(g.stale_or_newer for g in result.groups),
            "newer_online": sum(g.newer_online for g in result.groups),
            "expired_online": sum(g.expired_online for g in result.groups),
            "value_mismatch": sum(g.value_mismatch for g in result.groups),
            "threshold": MAX_MISMATCH_RATE,
            # served value at t (tiles finished now) vs the offline v2 value at t
            "served_vs_offline_v2_mismatch_rate": served.mismatch_rate,
            "served_vs_offline_v2_sampled": sum(served.sampled.values()),
            "served_vs_offline_v2_mismatched": sum(served.mismatched.values()),
            "served_inexact_reads": sum(served.inexact.values()),
        },
    )


online_sync_job = dg.define_asset_job(
    "online_sync_job",
    selection=dg.AssetSelection.assets(ONLINE_STORE_SYNC),
    description="Offline → online sync and its consistency audit.",
)
