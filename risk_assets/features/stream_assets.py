"""Stream feature assets: micro-batches over exact Kafka offset ranges, and buffer ingestion.

Two independent steps, each a thin wrapper around pure modules, so either can fail alone:

* ``stream_feature_buffer`` — one run per offset range of ``risk.events`` (requested by the Kafka
  sensor): validate, update the stream state in Redis, compute the stream groups' rows for the
  range's events (``stream.process_events``) and publish them to the ``risk.features`` topic.
* ``online_features`` + ``feature_log`` — one run per offset range of ``risk.features``: write the
  rows to the online store (write-if-newer) and the offline store's log (``ingestion.ingest_batch``).

A broken ingestion leaves rows waiting in the buffer topic; a broken computation leaves events in
the events topic; the sensors re-request failed ranges and never commit past them.

Both jobs run their step in the run worker's process (``in_process_executor``: no second process
spawn and code load per run), and every materialization reports how far its partition's log end
is past the range (``lag_offsets``, ``lag_seconds``) with a ``kafka_lag_within_bound`` check (WARN).
"""

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

import dagster as dg
import polars as pl

from risk_assets.automation import FEATURE_LOG_FRESHNESS, STREAM_FRESHNESS
from risk_assets.features.consistency import compare
from risk_assets.features.feature_buffer import publish
from risk_assets.features.groups import FEATURE_GROUPS
from risk_assets.features.ingestion import ingest_batch, read_feature_log
from risk_assets.features.offline_store import read_offline
from risk_assets.features.online_store import OnlineStore
from risk_assets.features.online_tiles import write_stream_tiles
from risk_assets.features.stream_state import StreamState, stream_groups
from risk_assets.features.stream_warm_start import (
    WarmStartResult,
    process_with_warm_start,
    warm_start_for_batch,
    warm_start_now,
)
from risk_assets.ingest.archive import EVENTS, decode_messages
from risk_assets.ingest.kafka_reader import (
    IncarnationChanged,
    KafkaRangeReader,
    KafkaReadError,
    Lag,
    OffsetRange,
)
from risk_assets.names import (
    EVENTS_TOPIC,
    EVENTS_TOPIC_ASSET,
    FEATURE_LOG,
    FEATURES_TOPIC,
    KAFKA_LAG_CHECK,
    LAG_OFFSETS,
    LAG_SECONDS,
    ONLINE_FEATURES,
    STREAM_BATCH_CONSISTENCY_CHECK,
    STREAM_FEATURE_BUFFER,
    feature_asset_key,
)
from risk_assets.resources import KafkaResource, LakeResource, RedisResource
from risk_assets.run_config import RunConfig

OWNER = "team:risk-data"

events_topic = dg.AssetSpec(
    EVENTS_TOPIC_ASSET,
    description=f"Kafka topic `{EVENTS_TOPIC}`: raw exchange events as produced (retention ~7 days).",
    group_name="ingest",
    owners=[OWNER],
    kinds={"kafka"},
)


class OffsetRangeConfig(RunConfig):
    """The exact offset range a run processes (set by the Kafka sensors)."""

    topic: str
    partition: int
    start: int
    end: int
    incarnation: str = ""
    """The topic incarnation the offsets belong to (set by the sensor); the run fails rather than
    read these offsets from another log. Empty: not checked."""

    lag_warn_offsets: int = 100_000
    """The lag check warns when more offsets than this are past the range at the run's end."""
    lag_warn_seconds: float = 60.0
    """…or when the oldest record past the range has waited longer than this."""

    def range(self) -> OffsetRange:
        return OffsetRange(self.topic, self.partition, self.start, self.end)


def _lag(reader: KafkaRangeReader, rng: OffsetRange) -> Lag:
    """The partition's lag past ``rng``, from a fresh look at its end (after the range's output).
    The output is already published: a broker that cannot say how far the end is now does not fail
    the run — the lag is reported as unknown (-1) and the check warns."""
    try:
        return reader.lag_after(rng, int(time.time() * 1000))
    except KafkaReadError:
        return Lag(-1, -1.0)


def lag_check(asset_key: str, lag: Lag, config: OffsetRangeConfig) -> dg.AssetCheckResult:
    """WARN when the partition's log end is further past the processed range than the bounds."""
    return dg.AssetCheckResult(
        asset_key=asset_key,
        check_name=KAFKA_LAG_CHECK,
        passed=0 <= lag.offsets <= config.lag_warn_offsets and lag.seconds <= config.lag_warn_seconds,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            LAG_OFFSETS: lag.offsets,
            LAG_SECONDS: lag.seconds,
            "max_offsets": config.lag_warn_offsets,
            "max_seconds": config.lag_warn_seconds,
            "partition": f"{config.topic}/{config.partition}",
        },
    )


def _lag_check_spec(asset_key: str, topic: str) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(
        KAFKA_LAG_CHECK,
        asset=asset_key,
        description=(
            f"After each run: offsets of the `{topic}` partition past its range and the age of the oldest "
            "of them; warns above the run's bounds (`lag_warn_offsets`, `lag_warn_seconds`)."
        ),
    )


class StreamBatchConfig(OffsetRangeConfig):
    """A micro-batch's range and its time sanity bound."""

    as_of_ms: int = 0
    """When the sensor first requested this range (epoch ms; 0: the run's start). Retries and
    replays of the range judge "too far in the future" against this same time."""
    future_bound_s: int = 300
    """Events whose time (or Kafka timestamp) is more than this after ``as_of_ms`` are rejected as
    ``future_timestamp`` instead of being published: a row from the future would win
    write-if-newer and freeze the entity's online value until real time catches up."""


STREAM_GROUPS = stream_groups(FEATURE_GROUPS)


@contextmanager
def _final_on_new_incarnation() -> Iterator[None]:
    """A range of another topic incarnation never becomes readable again: fail without retries."""
    try:
        yield
    except IncarnationChanged as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from exc


@dg.asset(
    key=STREAM_FEATURE_BUFFER,
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
    freshness_policy=STREAM_FRESHNESS,
    check_specs=[_lag_check_spec(STREAM_FEATURE_BUFFER, EVENTS_TOPIC)],
)
def stream_feature_buffer(
    context: dg.AssetExecutionContext,
    config: StreamBatchConfig,
    kafka: KafkaResource,
    redis: RedisResource,
    lake: LakeResource,
) -> dg.MaterializeResult:
    rng = config.range()
    t0 = time.time()
    with kafka.range_reader() as reader, _final_on_new_incarnation():
        incarnation = config.incarnation or reader.incarnation(rng.topic)
        reader.ensure_incarnation(rng.topic, incarnation)
        batch = reader.read(rng, complete=True)
        reader.ensure_incarnation(rng.topic, incarnation)
    as_of_ms = config.as_of_ms or int(t0 * 1000)
    decoded = decode_messages(batch, EVENTS, not_after_ms=as_of_ms + config.future_bound_s * 1000)
    reasons = Counter(reason for _, reason, _ in decoded.rejected)
    with StreamState.from_url(
        redis.url, STREAM_GROUPS, namespace=redis.namespace, cluster=redis.cluster
    ) as state:

        def warm() -> WarmStartResult:  # a cold state (Redis lost it): nothing published before this
            with kafka.range_reader() as tail_reader:
                return warm_start_for_batch(state, lake.lake(), tail_reader, rng, decoded.valid)

        tiles: dict[str, pl.DataFrame] = {}
        rows, warmed = process_with_warm_start(decoded.valid, STREAM_GROUPS, state, warm, tiles=tiles)
    # The tiles the range touched, complete as the state knows them, straight into the online store
    # (write-if-more-events: a replayed range writes nothing new). Before publishing: a failed write
    # fails the run, the sensor re-requests the range.
    with OnlineStore.from_url(redis.url, namespace=redis.namespace, cluster=redis.cluster) as store:
        written = write_stream_tiles(store, STREAM_GROUPS, tiles)
    for w in warmed:
        context.log.warning(
            "stream state was cold: warm start loaded %d archived + %d topic events since %s (committed: %s)",
            w.archive_events, w.kafka_events, w.since.isoformat(), w.committed,
        )  # fmt: skip
    published = publish(kafka.producer(), rows, FEATURES_TOPIC, groups=STREAM_GROUPS)
    with kafka.range_reader() as reader:
        lag = _lag(reader, rng)
    done = time.time()
    newest_ms = int(batch.timestamps_ms.max()) if len(batch) else int(done * 1000)
    context.log.info("%s: %d events → %d feature rows", rng.key(), decoded.valid.height, published)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": published,
            "events": decoded.valid.height,
            "rejected": len(decoded.rejected),
            **{f"rejected/{r}": n for r, n in sorted(reasons.items())},
            "offset_start": rng.start,
            "offset_end": rng.end,
            "kafka_incarnation": incarnation,
            "processing_seconds": done - t0,
            "newest_event_age_seconds": max(0.0, done - newest_ms / 1000),
            LAG_OFFSETS: lag.offsets,
            LAG_SECONDS: lag.seconds,
            "warm_starts": len(warmed),
            "warm_start_events": sum(w.archive_events + w.kafka_events for w in warmed),
            **{f"rows/{name}": frame.height for name, frame in rows.items()},
            "tiles_offered": written.tiles,
            "tiles_applied": written.applied,
        },
        check_results=[lag_check(STREAM_FEATURE_BUFFER, lag, config)],
    )


@dg.multi_asset(
    name="ingest_feature_buffer",
    specs=[
        dg.AssetSpec(
            ONLINE_FEATURES,
            deps=[STREAM_FEATURE_BUFFER],
            group_name="stream",
            owners=[OWNER],
            kinds={"redis"},
            freshness_policy=STREAM_FRESHNESS,
            description=(
                "The online store in Redis: latest value of every feature group per entity "
                "(write-if-newer; docs/online_store.md). Fed by buffer ingestion (and the offline sync)."
            ),
        ),
        dg.AssetSpec(
            FEATURE_LOG,
            deps=[STREAM_FEATURE_BUFFER],
            freshness_policy=FEATURE_LOG_FRESHNESS,
            group_name="stream",
            owners=[OWNER],
            kinds={"parquet"},
            description=(
                "The offline store's log of streamed feature rows, one Parquet object per (group, "
                "buffer offset range): `feature_log/{group}/v={version}/…` (re-ingesting replaces)."
            ),
        ),
    ],
    check_specs=[_lag_check_spec(ONLINE_FEATURES, FEATURES_TOPIC)],
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
        with _final_on_new_incarnation():
            incarnation = config.incarnation or reader.incarnation(rng.topic)
            reader.ensure_incarnation(rng.topic, incarnation)
            batch = reader.read(rng, complete=True)
            reader.ensure_incarnation(rng.topic, incarnation)  # before anything is written
        result = ingest_batch(batch, rng, store, lake.lake(), FEATURE_GROUPS)
    with kafka.range_reader() as tail:
        lag = _lag(tail, rng)
    applied = sum(w.applied for w in result.online.values())
    skipped = sum(w.skipped for w in result.online.values())
    context.log.info(
        "%s: %d rows, %d applied online, %d rejected", rng.key(), result.row_count, applied, result.rejected
    )
    yield dg.MaterializeResult(
        asset_key=ONLINE_FEATURES,
        metadata={
            "dagster/row_count": applied,
            "rows": result.row_count,
            "skipped_not_newer": skipped,
            "offset_start": rng.start,
            "offset_end": rng.end,
            LAG_OFFSETS: lag.offsets,
            LAG_SECONDS: lag.seconds,
        },
        check_results=[lag_check(ONLINE_FEATURES, lag, config)],
    )
    yield dg.MaterializeResult(
        asset_key=FEATURE_LOG,
        metadata={
            "dagster/row_count": result.row_count,
            "objects": len(result.log_objects),
            "rejected": result.rejected,
            "offset_start": rng.start,
            "offset_end": rng.end,
            "kafka_incarnation": incarnation,
            LAG_OFFSETS: lag.offsets,
            LAG_SECONDS: lag.seconds,
        },
    )


CONSISTENCY_THRESHOLD = 0.99
CONSISTENCY_DAYS = 2
CONSISTENCY_SAMPLE = 0.25


@dg.asset_check(
    asset=FEATURE_LOG,
    name=STREAM_BATCH_CONSISTENCY_CHECK,
    additional_deps=[feature_asset_key(g.name) for g in STREAM_GROUPS],
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
    selection=dg.AssetSelection.assets(STREAM_FEATURE_BUFFER),
    description="One stream micro-batch over an exact offset range of risk.events.",
    executor_def=dg.in_process_executor,
)
feature_ingestion_job = dg.define_asset_job(
    "feature_ingestion_job",
    # Without the stream/batch consistency check: it reads days of the offline store, a cost no
    # micro-batch should pay (run it from the asset's checks, or in a job of its own).
    selection=dg.AssetSelection.assets(ONLINE_FEATURES, FEATURE_LOG)
    - dg.AssetSelection.checks(dg.AssetCheckKey(dg.AssetKey(FEATURE_LOG), STREAM_BATCH_CONSISTENCY_CHECK)),
    description="Ingest one exact offset range of risk.features into the online store and the feature log.",
    executor_def=dg.in_process_executor,
)


class WarmStartConfig(dg.Config):
    """Options of a stream-state warm start."""

    allow_gaps: bool = False
    """Commit the epoch even if part of the window is neither archived nor in the topic (rows of
    the next day may then be computed from partial windows)."""
    as_of: str = ""
    """ISO-8601 time to warm for (empty: now) — a replay of past traffic."""


@dg.op(
    description=(
        "Warm the stream state in Redis for the present: the streamed groups' longest window (+ margin) "
        "of events from the archive, and the tail of `risk.events` not archived yet; then commit its "
        "epoch marker. Run it after adding a stream group or losing Redis (micro-batches also warm a "
        "cold state themselves before publishing anything)."
    )
)
def warm_stream_state(
    context: dg.OpExecutionContext,
    config: WarmStartConfig,
    kafka: KafkaResource,
    redis: RedisResource,
    lake: LakeResource,
) -> None:
    state = StreamState.from_url(redis.url, STREAM_GROUPS, namespace=redis.namespace, cluster=redis.cluster)
    with state, kafka.range_reader() as reader:
        as_of = datetime.fromisoformat(config.as_of) if config.as_of else None
        result = warm_start_now(state, lake.lake(), reader, now=as_of, allow_gaps=config.allow_gaps)
    context.log.info(
        "warm start since %s: %d archive hours, %d archived + %d topic events, %d members, %.1f s",
        result.since.isoformat(), result.archive_hours, result.archive_events, result.kafka_events,
        result.members, result.seconds,
    )  # fmt: skip
    if not result.committed:
        raise dg.Failure("Redis lost its data while the stream state was being warmed; run it again")


@dg.job(description="Warm the stream state from the archive and the events topic (see the op).")
def stream_state_warm_start_job() -> None:
    warm_stream_state()
