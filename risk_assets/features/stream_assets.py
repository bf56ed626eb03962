"""Stream feature assets: micro-batches over exact Kafka offset ranges, and buffer ingestion.

Two independent steps, each a thin wrapper around pure modules, so either can fail alone:

* ``stream_feature_buffer`` — one run per offset range of ``risk.events`` (requested by the Kafka
  sensor): validate, update the stream state in Redis, compute the stream groups' rows for the
  range's events (``stream.process_events``) and publish them to the ``risk.features`` topic.
* ``online_features`` + ``feature_log`` — one run per offset range of ``risk.features``: write the
  rows to the online store (write-if-newer) and the offline store's log (``ingestion.ingest_range``).

A broken ingestion leaves rows waiting in the buffer topic; a broken computation leaves events in
the events topic; the sensors re-request failed ranges and never commit past them.
"""

import time
from datetime import timedelta

import dagster as dg
import polars as pl

from risk_assets.features.assets import feature_asset_key
from risk_assets.features.consistency import compare
from risk_assets.features.feature_buffer import FEATURES_TOPIC, publish
from risk_assets.features.groups import FEATURE_GROUPS
from risk_assets.features.ingestion import ingest_range, read_feature_log
from risk_assets.features.offline_store import read_offline
from risk_assets.features.online_store import OnlineStore
from risk_assets.features.stream import process_events
from risk_assets.features.stream_state import StreamState, stream_groups
from risk_assets.ingest.archive import EVENTS, decode_messages
from risk_assets.ingest.kafka_reader import OffsetRange
from risk_assets.resources import KafkaResource, LakeResource, RedisResource

OWNER = "team:risk-data"

events_topic = dg.AssetSpec(
    "risk_events_topic",
    description="Kafka topic `risk.events`: raw exchange events as produced (retention ~7 days).",
    group_name="ingest",
    owners=[OWNER],
    kinds={"kafka"},
)


class OffsetRangeConfig(dg.Config):
    """The exact offset range a run processes (set by the Kafka sensors)."""

    topic: str
    partition: int
    start: int
    end: int

    def range(self) -> OffsetRange:
        return OffsetRange(self.topic, self.partition, self.start, self.end)


STREAM_GROUPS = stream_groups(FEATURE_GROUPS)


@dg.asset(
    key="stream_feature_buffer",
    deps=[events_topic.key],
    group_name="stream",
    owners=[OWNER],
    kinds={"kafka", "redis", "polars"},
    description=(
        "Stream feature rows published to Kafka topic `risk.features` — one materialization per "
        f"micro-batch (exact offset range of `risk.events`). Stream groups: "
        f"{', '.join(g.name for g in STREAM_GROUPS)} (windows ≤ 1 day, no labels); their values equal "
        "the batch definition's at the same as-of time (docs/stream_features.md)."
    ),
    retry_policy=dg.RetryPolicy(max_retries=2, delay=2, backoff=dg.Backoff.EXPONENTIAL),
)
def stream_feature_buffer(
    context: dg.AssetExecutionContext, config: OffsetRangeConfig, kafka: KafkaResource, redis: RedisResource
) -> dg.MaterializeResult:
    rng = config.range()
    t0 = time.time()
    with kafka.range_reader() as reader:
        batch = reader.read(rng)
    decoded = decode_messages(batch, EVENTS)
    with StreamState.from_url(
        redis.url, STREAM_GROUPS, namespace=redis.namespace, cluster=redis.cluster
    ) as state:
        rows = process_events(decoded.valid, STREAM_GROUPS, state)
    published = publish(kafka.producer(), rows, FEATURES_TOPIC, groups=STREAM_GROUPS)
    done = time.time()
    newest_ms = int(batch.timestamps_ms.max()) if len(batch) else int(done * 1000)
    context.log.info("%s: %d events → %d feature rows", rng.key(), decoded.valid.height, published)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": published,
            "events": decoded.valid.height,
            "rejected": len(decoded.rejected),
            "offset_start": rng.start,
            "offset_end": rng.end,
            "processing_seconds": done - t0,
            "lag_seconds": max(0.0, done - newest_ms / 1000),
            **{f"rows/{name}": frame.height for name, frame in rows.items()},
        }
    )


@dg.multi_asset(
    name="ingest_feature_buffer",
    specs=[
        dg.AssetSpec(
            "online_features",
            deps=["stream_feature_buffer"],
            group_name="stream",
            owners=[OWNER],
            kinds={"redis"},
            description=(
                "The online store in Redis: latest value of every feature group per entity "
                "(write-if-newer; docs/online_store.md). Fed by buffer ingestion (and the offline sync)."
            ),
        ),
        dg.AssetSpec(
            "feature_log",
            deps=["stream_feature_buffer"],
            group_name="stream",
            owners=[OWNER],
            kinds={"parquet"},
            description=(
                "The offline store's log of streamed feature rows, one Parquet object per (group, "
                "buffer offset range): `feature_log/{group}/v={version}/…` (re-ingesting replaces)."
            ),
        ),
    ],
    retry_policy=dg.RetryPolicy(max_retries=3, delay=2, backoff=dg.Backoff.EXPONENTIAL),
)
def ingest_feature_buffer(
    context: dg.AssetExecutionContext,
    config: OffsetRangeConfig,
    kafka: KafkaResource,
    redis: RedisResource,
    lake: LakeResource,
):
    """Write one offset range of `risk.features` to the online store and the feature log."""
    rng = config.range()
    with (
        kafka.range_reader() as reader,
        OnlineStore.from_url(redis.url, namespace=redis.namespace, cluster=redis.cluster) as store,
    ):
        result = ingest_range(reader, rng, store, lake.lake(), FEATURE_GROUPS)
    applied = sum(w.applied for w in result.online.values())
    skipped = sum(w.skipped for w in result.online.values())
    context.log.info(
        "%s: %d rows, %d applied online, %d rejected", rng.key(), result.row_count, applied, result.rejected
    )
    yield dg.MaterializeResult(
        asset_key="online_features",
        metadata={"dagster/row_count": applied, "rows": result.row_count, "skipped_not_newer": skipped},
    )
    yield dg.MaterializeResult(
        asset_key="feature_log",
        metadata={
            "dagster/row_count": result.row_count,
            "objects": len(result.log_objects),
            "rejected": result.rejected,
            "offset_start": rng.start,
            "offset_end": rng.end,
        },
    )


CONSISTENCY_THRESHOLD = 0.99
CONSISTENCY_DAYS = 2
CONSISTENCY_SAMPLE = 0.25


@dg.asset_check(
    asset="feature_log",
    additional_deps=[feature_asset_key(g) for g in STREAM_GROUPS],
    description=(
        f"Stream/batch consistency: on a {CONSISTENCY_SAMPLE:.0%} sample of entities of the last "
        f"{CONSISTENCY_DAYS} batch days, the share of streamed rows whose every feature equals the batch "
        f"value at the same as-of time. Fails below {CONSISTENCY_THRESHOLD:.0%} (or with nothing to compare)."
    ),
)
def stream_batch_consistency(lake: LakeResource) -> dg.AssetCheckResult:
    store = lake.lake()
    results = []
    for group in STREAM_GROUPS:
        batch = read_offline(store, group).collect()
        if batch.height == 0:
            continue
        end = batch["event_ts"].max().replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
        start = end - timedelta(days=CONSISTENCY_DAYS)
        batch = batch.filter(pl.col("event_ts") >= start)
        stream = read_feature_log(store, group, start, end).collect()
        results.append(compare(group, stream, batch, sample_share=CONSISTENCY_SAMPLE))
    compared = sum(r.rows_compared for r in results)
    rate = sum(r.rows_equal for r in results) / compared if compared else 0.0
    return dg.AssetCheckResult(
        passed=compared > 0 and rate >= CONSISTENCY_THRESHOLD,
        severity=dg.AssetCheckSeverity.ERROR if compared else dg.AssetCheckSeverity.WARN,
        metadata={
            "consistency_rate": rate,
            "rows_compared": compared,
            "threshold": CONSISTENCY_THRESHOLD,
            **{f"rate/{r.group}": r.rate for r in results},
            **{f"stream_rows_without_batch/{r.group}": r.stream_rows_without_batch for r in results},
        },
    )


stream_features_job = dg.define_asset_job(
    "stream_features_job",
    selection=dg.AssetSelection.assets("stream_feature_buffer"),
    description="One stream micro-batch over an exact offset range of risk.events.",
)
feature_ingestion_job = dg.define_asset_job(
    "feature_ingestion_job",
    selection=dg.AssetSelection.assets("online_features", "feature_log"),
    description="Ingest one exact offset range of risk.features into the online store and the feature log.",
)
