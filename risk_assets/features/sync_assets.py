"""The offline → online sync as a scheduled asset, with the consistency audit as its check."""

import dagster as dg

from risk_assets.features.assets import feature_asset_key
from risk_assets.features.groups import FEATURE_GROUPS
from risk_assets.features.online_audit import audit
from risk_assets.features.online_store import OnlineStore
from risk_assets.features.online_sync import sync
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
        f"state saved only after Redis acknowledged. Scheduled every {SYNC_EVERY_MINUTES} minutes."
    ),
    retry_policy=dg.RetryPolicy(max_retries=3, delay=15, backoff=dg.Backoff.EXPONENTIAL),
)
def online_store_sync(
    context: dg.AssetExecutionContext, lake: LakeResource, redis: RedisResource
) -> dg.MaterializeResult:
    with _store(redis) as store:
        result = sync(lake.lake(), store, list(FEATURE_GROUPS))
    context.log.info(
        "synced %d objects: %d rows offered, %d applied, %d not newer", result.objects, result.rows_offered,
        result.applied, result.skipped,
    )  # fmt: skip
    return dg.MaterializeResult(
        metadata={
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
