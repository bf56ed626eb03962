"""Raw archive assets: Kafka topics drained into hourly Hive-style Parquet, with dead letters.

Thin wiring around ``archive.build_archive``: a run materializes a range of hours (one run for a
whole backfill range), reads the ingestion-time window those hours need from the broker by exact
offsets, and replaces each hour in the lake. The hourly assets are built for the deployment's
partitions (``partitions.TimePartitions``) by :func:`ingest_assets`.
"""

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import dagster as dg
import polars as pl

from risk_assets.automation import ARCHIVE_FRESHNESS
from risk_assets.backfills import HOURLY_BACKFILL, POOL_KAFKA_ARCHIVE, POOL_WAREHOUSE
from risk_assets.events.validation import REASONS
from risk_assets.ingest import raw_reader, snowflake_mirror
from risk_assets.ingest.archive import (
    EVENTS,
    LABELS,
    ArchiveSpec,
    LogPositions,
    archived_counts,
    build_archive,
    incarnation_gap,
    read_hours,
    read_ledger,
    record_incarnation,
    shrinking_hours,
    write_archive,
)
from risk_assets.ingest.kafka_reader import PROBE_RECORDS, KafkaRangeReader, KafkaReadError
from risk_assets.ingest.partitioning import GRACE, HOUR, archive_hours, ingest_window
from risk_assets.lake import Lake
from risk_assets.names import (
    INVALID_SHARE_CHECK,
    RAW_EVENTS,
    RAW_LABELS,
    SNOWFLAKE_RAW_EVENTS,
    SNOWFLAKE_RAW_LABELS,
)
from risk_assets.partitions import TimePartitions
from risk_assets.resources import KafkaResource, LakeResource, RawEventSource
from risk_assets.run_config import RunConfig
from risk_assets.sources import EXCHANGE_EVENTS, EXCHANGE_LABELS, EventSource, LabelSource

OWNER = "team:risk-data"


class ArchiveConfig(RunConfig):
    """Settings of an archive run, editable in the Launchpad."""

    max_invalid_share: float = 0.05
    """The invalid-share check fails when more than this share of an hour's messages is rejected."""
    force_replace: bool = False
    """Replace hours even when the new content has fewer records than the archive holds, or when
    the topic is a new incarnation whose log does not reach back to the window (the broker lost
    data). Audited: the run's metadata lists every forced hour with both counts."""


def _ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


def ensure_window_retained(reader: KafkaRangeReader, topic: str, start_ms: int) -> None:
    """Refuse to rebuild hours the broker's retention has already (partly) dropped.

    Replacing such an hour would overwrite the archive, the only full copy, with less data.
    """
    for p in reader.partitions(topic):
        low, low_ts = reader.log_start_timestamp(topic, p)
        if low > 0 and low_ts is not None and low_ts > start_ms:
            raise KafkaReadError(
                f"{topic}:{p} retention starts at offset {low} "
                f"({datetime.fromtimestamp(low_ts / 1000, UTC):%Y-%m-%d %H:%M}Z), after the requested "
                "window: the archive already holds the only full copy of these hours; not replacing it"
            )


def build_archive_asset(spec: ArchiveSpec, partitions: TimePartitions) -> dg.AssetsDefinition:
    """The multi-asset that archives ``spec.topic`` into ``spec.dataset`` + its dead letters."""
    what = "events" if spec is EVENTS else "fraud labels"

    @dg.multi_asset(
        name=f"archive_{spec.dataset}",
        specs=[
            dg.AssetSpec(
                spec.dataset,
                description=(
                    f"Every valid raw {what} record from Kafka topic `{spec.topic}`, one Hive-style Parquet "
                    f"object per hour of `{spec.time_column}` (`{spec.dataset}/dt=YYYY-MM-DD/hour=HH/`). "
                    f"Records arriving more than {GRACE} after their hour ends land in the hour that was "
                    "open when they arrived (see docs/archive.md). Deduplicated by id within an hour."
                ),
                group_name="ingest",
                owners=[OWNER],
                kinds={"kafka", "parquet", "polars"},
                metadata={"topic": spec.topic, "lake_path": f"{spec.dataset}/dt=YYYY-MM-DD/hour=HH"},
                freshness_policy=ARCHIVE_FRESHNESS,
            ),
            dg.AssetSpec(
                spec.dead_letter_dataset,
                description=(
                    f"Messages of `{spec.topic}` rejected on the way to `{spec.dataset}`, with the raw "
                    "payload, Kafka coordinates and a reason code (malformed JSON, missing/unknown field, "
                    "wrong type, "
                    "invalid value, future timestamp, duplicate …), by hour of ingestion."
                ),
                group_name="ingest",
                owners=[OWNER],
                kinds={"parquet"},
            ),
        ],
        check_specs=[
            dg.AssetCheckSpec(
                INVALID_SHARE_CHECK,
                asset=spec.dataset,
                description="Fails when the share of rejected messages passes `max_invalid_share`.",
            )
        ],
        partitions_def=partitions.hourly,
        backfill_policy=HOURLY_BACKFILL,
        pool=POOL_KAFKA_ARCHIVE,
        retry_policy=dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL),
    )
    def _archive(
        context: dg.AssetExecutionContext, config: ArchiveConfig, lake: LakeResource, kafka: KafkaResource
    ):
        hours = archive_hours(context.partition_time_window.start, context.partition_time_window.end)
        start, _ = ingest_window(hours[0], hours[-1])
        store = lake.lake()
        with kafka.range_reader() as reader:
            incarnation = reader.incarnation(spec.topic)
            ensure_window_retained(reader, spec.topic, _ms(start))
            partitions = reader.partitions(spec.topic)
            starts = [reader.log_start_timestamp(spec.topic, p)[1] for p in partitions]
            log_start = min((t for t in starts if t is not None), default=None)
            positions = LogPositions(spec.topic, lambda p, t: reader.boundary(spec.topic, p, t))
            batch, ranges = read_hours(
                positions,
                partitions,
                hours,
                lambda rs: reader.read_many(rs, complete=True, margin=2 * PROBE_RECORDS),
                lambda wanted: reader.boundaries(spec.topic, wanted),
            )
            result = build_archive(batch, spec, hours, positions)
            stream_ts = reader.latest_timestamp(spec.topic) or 0
            # A broker that restarted while we read serves another log: fail, write nothing.
            reader.ensure_incarnation(spec.topic, incarnation)
        store_ledger = read_ledger(store, spec.dataset)
        counts = archived_counts(store, spec.dataset, hours)
        shrinks = shrinking_hours(counts, result)
        # Hours already archived are protected by the shrink guard; hours archived for the first time
        # from a log that does not reach back to them would be an empty (or partial) success.
        new_hours = [h for h in hours if h not in counts]
        gap = None
        if new_hours:
            first_new, _ = ingest_window(new_hours[0], new_hours[0])
            gap = incarnation_gap(store_ledger, incarnation, log_start, _ms(first_new))
            if gap:
                gap = (
                    f"{gap} (hours not archived yet: {', '.join(f'{h:%Y-%m-%d %H}:00Z' for h in new_hours)})"
                )
        if (gap or shrinks) and not config.force_replace:
            problems = ([gap] if gap else []) + (
                [f"{len(shrinks)} archived hour(s) would shrink: " + "; ".join(map(str, shrinks))]
                if shrinks
                else []
            )
            raise dg.Failure(
                description="Not replacing archived hours (set force_replace to override, audited): "
                + " | ".join(problems),
                metadata={
                    "kafka_incarnation": incarnation,
                    "known_incarnations": ", ".join(sorted(store_ledger.get("incarnations", {}))),
                    "kafka_ranges": ", ".join(r.key() for r in ranges),
                    **{f"shrink/{x.hour:%Y-%m-%dT%H}": f"{x.archived} -> {x.new}" for x in shrinks},
                },
                allow_retries=False,
            )
        if gap or shrinks:
            context.log.warning("force_replace: %s; shrinking hours: %s", gap, "; ".join(map(str, shrinks)))
        bytes_written = write_archive(store, spec, result)
        record_incarnation(store, spec.dataset, incarnation, log_start)
        # An hour is final once the stream has moved past its end + GRACE; open hours may still grow.
        open_hours = sum(1 for h in hours if _ms(h + HOUR + GRACE) > stream_ts)
        context.log.info(
            "archived %d hours: %d records, %d dead letters from %d messages in %s (incarnation %s)",
            len(hours),
            result.record_count,
            result.dead_letter_count,
            result.messages_read,
            ", ".join(r.key() for r in ranges) or "no ranges",
            incarnation,
        )
        forced = {
            "forced_replace": bool(gap or shrinks),
            **({"forced_gap": gap} if gap else {}),
            **{f"forced_shrink/{x.hour:%Y-%m-%dT%H}": f"{x.archived} -> {x.new}" for x in shrinks},
        }
        yield dg.MaterializeResult(
            asset_key=spec.dataset,
            metadata={
                "dagster/row_count": result.record_count,
                "hours": len(hours),
                "messages_read": result.messages_read,
                "dead_letters": result.dead_letter_count,
                "invalid_share": result.invalid_share,
                "open_hours": open_hours,
                "bytes_written": bytes_written,
                "stream_lag_s": max(0.0, (_ms(hours[-1] + HOUR) - stream_ts) / 1000),
                "kafka_ranges": ", ".join(r.key() for r in ranges),
                "kafka_incarnation": incarnation,
                **forced,
            },
        )
        yield dg.MaterializeResult(
            asset_key=spec.dead_letter_dataset,
            metadata={
                "dagster/row_count": result.dead_letter_count,
                **{f"reason/{r}": int(result.reasons.get(r, 0)) for r in REASONS},
            },
        )
        yield dg.AssetCheckResult(
            check_name=INVALID_SHARE_CHECK,
            asset_key=spec.dataset,
            passed=result.invalid_share <= config.max_invalid_share,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={
                "invalid_share": result.invalid_share,
                "threshold": config.max_invalid_share,
                "dead_letters": result.dead_letter_count,
            },
        )

    return _archive


archive_job = dg.define_asset_job(
    "raw_archive_job",
    selection=dg.AssetSelection.assets(
        EVENTS.dataset, EVENTS.dead_letter_dataset, LABELS.dataset, LABELS.dead_letter_dataset
    ),
    description="Drain the events and labels topics into the hourly raw archives.",
)

# Hours become final GRACE after they end; the schedule archives the newest final hour.
ARCHIVE_LAG = HOUR + GRACE + timedelta(minutes=5)


def build_snowflake_mirror_asset(
    partitions: TimePartitions,
    *,
    key: dg.AssetKey,
    upstream: dg.AssetKey,
    source: EventSource | LabelSource,
    read: Callable[[Lake, datetime, datetime], pl.DataFrame],
    table: Callable[[RawEventSource], str],
    description: str,
) -> dg.AssetsDefinition:
    """An hourly Snowflake mirror of one lake archive (delete-then-insert by hour of the source's
    time column, so re-runs are idempotent)."""

    @dg.asset(
        key=key,
        deps=[upstream],
        partitions_def=partitions.hourly,
        backfill_policy=HOURLY_BACKFILL,
        pool=POOL_WAREHOUSE,
        group_name="warehouse",
        owners=[OWNER],
        kinds={"snowflake"},
        description=description,
    )
    def snowflake_mirror_hours(
        context: dg.AssetExecutionContext, lake: LakeResource, raw_event_source: RawEventSource
    ) -> dg.MaterializeResult:
        window = context.partition_time_window
        frame = read(lake.lake(), window.start, window.end)
        with raw_event_source.snowflake().get_connection() as conn:
            rows = snowflake_mirror.write_hours(
                conn.cursor(), table(raw_event_source), frame, window.start, window.end, source
            )
        return dg.MaterializeResult(
            metadata={"dagster/row_count": rows, "hours": len(archive_hours(window.start, window.end))}
        )

    return snowflake_mirror_hours


def ingest_assets(partitions: TimePartitions) -> list[dg.AssetsDefinition]:
    """The ingest domain's partitioned assets for ``partitions``: both archives and their mirrors."""
    return [
        build_archive_asset(EVENTS, partitions),
        build_archive_asset(LABELS, partitions),
        build_snowflake_mirror_asset(
            partitions,
            key=SNOWFLAKE_RAW_EVENTS,
            upstream=RAW_EVENTS,
            source=EXCHANGE_EVENTS,
            read=raw_reader.read_events,
            table=lambda r: r.snowflake_table,
            description=(
                "The raw-event archive mirrored into the Snowflake table `RAW_EVENTS` (by event hour; "
                "delete-then-insert, so re-runs are idempotent), for batch features computed in the "
                "warehouse (`RawEventSource.backend = snowflake`). Needs the SNOWFLAKE_* settings."
            ),
        ),
        build_snowflake_mirror_asset(
            partitions,
            key=SNOWFLAKE_RAW_LABELS,
            upstream=RAW_LABELS,
            source=EXCHANGE_LABELS,
            read=raw_reader.read_labels,
            table=lambda r: r.snowflake_labels_table,
            description=(
                "The fraud-label archive mirrored into the Snowflake table `RAW_LABELS` (by `label_ts` "
                "hour; delete-then-insert), read by label aggregates when features are computed in the "
                "warehouse (`RISK_FEATURE_COMPUTE_BACKEND=snowflake`). Needs the SNOWFLAKE_* settings."
            ),
        ),
    ]
