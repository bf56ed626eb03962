"""Kafka messages → hourly archive partitions and dead letters (pure logic, no Dagster).

``build_archive`` turns the messages of an ingestion-time window into the exact contents of the
requested archive hours: valid records under the lateness policy of ``partitioning``, deduplicated
by id, and every rejected message with its reason. ``write_archive`` then replaces each requested
hour (records and dead letters) in the lake. Everything is computed before anything is written, so
a bad batch fails the run with the lake untouched; re-running the same hours gives the same bytes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl

from risk_assets.events import validation
from risk_assets.events.schema import (
    PAYLOAD_EVENT_COLUMNS,
    PAYLOAD_LABEL_COLUMNS,
    FraudLabel,
    RiskEvent,
)
from risk_assets.ingest.archive_format import (
    PART_FILE,
    archive_columns,
    archive_part_path,
    to_archive_frame,
)
from risk_assets.ingest.kafka_reader import MessageBatch
from risk_assets.ingest.partitioning import archive_hour_expr, is_from_future_expr
from risk_assets.lake import Lake, hive_hour_path
from risk_assets.names import (
    EVENTS_TOPIC,
    LABELS_TOPIC,
    RAW_EVENT_DEAD_LETTERS,
    RAW_EVENTS,
    RAW_LABEL_DEAD_LETTERS,
    RAW_LABELS,
)

DEAD_LETTER_COLUMNS: dict[str, pl.DataType] = {
    "topic": pl.String,
    "kafka_partition": pl.Int32,
    "kafka_offset": pl.Int64,
    "ingest_ts": pl.Datetime("ms", "UTC"),
    "reason": pl.String,
    "error": pl.String,
    "payload": pl.Binary,
}


@dataclass(frozen=True)
class ArchiveSpec:
    """What one raw archive is made of: its topic, payload schema, time and id columns."""

    dataset: str
    dead_letter_dataset: str
    topic: str
    payload_type: Any
    time_column: str
    id_column: str
    payload_columns: tuple[str, ...]

    def read_schema(self) -> dict[str, pl.DataType]:
        """Schema for reading the JSON payloads: timestamps arrive as integer milliseconds."""
        cols = archive_columns(self.dataset)
        return {
            c: (pl.Int64 if cols[c] == pl.Datetime("ms", "UTC") or cols[c] == pl.Int16 else cols[c])
            for c in self.payload_columns
        }


EVENTS = ArchiveSpec(
    dataset=RAW_EVENTS,
    dead_letter_dataset=RAW_EVENT_DEAD_LETTERS,
    topic=EVENTS_TOPIC,
    payload_type=RiskEvent,
    time_column="event_ts",
    id_column="event_id",
    payload_columns=PAYLOAD_EVENT_COLUMNS,
)
LABELS = ArchiveSpec(
    dataset=RAW_LABELS,
    dead_letter_dataset=RAW_LABEL_DEAD_LETTERS,
    topic=LABELS_TOPIC,
    payload_type=FraudLabel,
    time_column="label_ts",
    id_column="label_id",
    payload_columns=PAYLOAD_LABEL_COLUMNS,
)


@dataclass
class ArchiveHours:
    """The full contents of some archive hours: records and dead letters per hour."""

    records: dict[datetime, pl.DataFrame]
    dead_letters: dict[datetime, pl.DataFrame]
    messages_read: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def record_count(self) -> int:
        return sum(df.height for df in self.records.values())

    @property
    def dead_letter_count(self) -> int:
        return sum(df.height for df in self.dead_letters.values())

    @property
    def invalid_share(self) -> float:
        """Share of the messages assigned to these hours that went to the dead-letter store."""
        total = self.record_count + self.dead_letter_count
        return self.dead_letter_count / total if total else 0.0


def _dead_letters(topic: str, batch: MessageBatch, idx: np.ndarray, reasons: list[str], errors: list[str]):
    return pl.DataFrame(
        {
            "topic": [topic] * len(idx),
            "kafka_partition": batch.partitions[idx],
            "kafka_offset": batch.offsets[idx],
            "ingest_ts": batch.timestamps_ms[idx],
            "reason": reasons,
            "error": errors,
            "payload": [batch.values[i] for i in idx],
        },
        schema_overrides={"ingest_ts": pl.Int64, "payload": pl.Binary},
    ).with_columns(pl.col("ingest_ts").cast(pl.Datetime("ms", "UTC")))


@dataclass(frozen=True)
class DecodedMessages:
    """Messages split into valid records and rejects (before any hour or dedup logic).

    ``valid`` has the archive columns of the dataset plus ``_idx`` (position in the batch),
    ``_partition`` and ``_offset``; ``rejected`` holds ``(index, reason, error)`` triples.
    """

    valid: pl.DataFrame
    rejected: list[tuple[int, str, str]]


def _parse_valid(batch: MessageBatch, ok: np.ndarray, spec: ArchiveSpec) -> pl.DataFrame:
    """The validated payloads at ``ok`` parsed into the archive layout (plus ``_idx``, ``_partition``,
    ``_offset``); raises if Polars cannot parse them (the caller then goes message by message)."""
    values = batch.values
    body = b"\n".join([values[i] for i in ok.tolist()])
    ts_cols = [c for c, t in archive_columns(spec.dataset).items() if t == pl.Datetime("ms", "UTC")]
    return (
        pl.read_ndjson(body, schema=spec.read_schema())
        .with_columns(
            pl.Series("_idx", ok, dtype=pl.Int64),
            pl.Series("_partition", batch.partitions[ok], dtype=pl.Int32),
            pl.Series("_offset", batch.offsets[ok], dtype=pl.Int64),
            pl.Series("ingest_ts", batch.timestamps_ms[ok], dtype=pl.Int64),
        )
        .with_columns(pl.col(c).cast(pl.Datetime("ms", "UTC")) for c in ts_cols)
    )


def _empty_valid(spec: ArchiveSpec) -> pl.DataFrame:
    return pl.DataFrame(
        schema={
            **archive_columns(spec.dataset),
            "_idx": pl.Int64,
            "_partition": pl.Int32,
            "_offset": pl.Int64,
        }
    )


def decode_messages(
    batch: MessageBatch, spec: ArchiveSpec, *, not_after_ms: int | None = None
) -> DecodedMessages:
    """Validate every payload of ``batch`` and parse the valid ones into the archive layout.

    ``ingest_ts`` is the Kafka message timestamp. Records whose time claims to be too far after
    their arrival are rejected as ``future_timestamp``; with ``not_after_ms`` (the stream's bound,
    see :func:`future_limit_ms`), so are records whose time or Kafka timestamp is after it. This is
    the one gate between the broker and anything downstream (archive, stream features): no single
    message can fail it — any exception while decoding one message makes that message a reject.
    """
    outcome = validation.validate_payloads(batch.values, spec.payload_type)
    ok = np.asarray(outcome.valid, dtype=np.int64)
    rejected = list(outcome.rejected)
    valid = _empty_valid(spec)
    if len(ok):
        try:
            valid = _parse_valid(batch, ok, spec)
        except Exception:  # some payload the schema accepted but Polars cannot parse: find it
            parts = []
            for i in ok.tolist():
                one = np.asarray([i], dtype=np.int64)
                try:
                    parts.append(_parse_valid(batch, one, spec))
                except Exception as exc:
                    rejected.append((i, validation.UNDECODABLE, f"{type(exc).__name__}: {exc}"[:500]))
            valid = pl.concat(parts) if parts else valid
    # Records claiming a time too far after their arrival are rejected.
    future = is_from_future_expr(spec.time_column, "ingest_ts")
    why = f"{spec.time_column} more than the allowed skew after ingest_ts"
    if not_after_ms is not None:
        limit = pl.lit(not_after_ms).cast(pl.Datetime("ms", "UTC"))
        beyond = (pl.col(spec.time_column) > limit) | (pl.col("ingest_ts") > limit)
        future = future | beyond
        why = f"{why}, or {spec.time_column}/ingest_ts after {_iso_ms(not_after_ms)}"
    future_mask = valid.select(future).to_series()
    late = valid.filter(future_mask)["_idx"].to_list()
    rejected += [(int(i), validation.FUTURE_TIMESTAMP, why) for i in late]
    return DecodedMessages(valid.filter(~future_mask), rejected)


def _iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def future_limit_ms(batch: MessageBatch, now_ms: int, bound: timedelta) -> int:
    """The newest time a stream micro-batch accepts: ``min(now, median message timestamp) + bound``.

    The median of the batch's own Kafka timestamps makes a replay of the range decide exactly as the
    first run did (``now`` only caps it, for a batch whose producers all run ahead); one producer
    with a clock days ahead cannot move the median of a batch.
    """
    if len(batch) == 0:
        return now_ms + int(bound.total_seconds() * 1000)
    ref = min(now_ms, int(np.median(batch.timestamps_ms)))
    return ref + int(bound.total_seconds() * 1000)


def build_archive(batch: MessageBatch, spec: ArchiveSpec, hours: list[datetime]) -> ArchiveHours:
    """Validate ``batch`` and return the complete contents of ``hours`` (UTC hour starts).

    ``batch`` must hold every message ingested in ``partitioning.ingest_window(hours[0], hours[-1])``;
    records and dead letters that belong to other hours are left out (they belong to those hours).
    """
    wanted = sorted({h.astimezone(UTC) for h in hours})
    decoded = decode_messages(batch, spec)
    valid = decoded.valid

    # Duplicates: within an archive hour the first copy (lowest partition, offset) wins.
    valid = valid.with_columns(archive_hour_expr(spec.time_column, "ingest_ts").alias("_hour")).sort(
        "_partition", "_offset"
    )
    first = valid.select(pl.struct("_hour", spec.id_column).is_first_distinct()).to_series()
    dups = valid.filter(~first)
    valid = valid.filter(first)

    rejected = decoded.rejected
    dup_idx = dups["_idx"].to_numpy()
    dead = _dead_letters(
        spec.topic,
        batch,
        np.concatenate([np.asarray([r[0] for r in rejected], dtype=np.int64), dup_idx]).astype(np.int64),
        [r[1] for r in rejected] + [validation.DUPLICATE] * len(dup_idx),
        [r[2] for r in rejected] + [f"duplicate {spec.id_column} in the same archive hour"] * len(dup_idx),
    ).with_columns(pl.col("ingest_ts").dt.truncate("1h").alias("_hour"))

    wanted_series = pl.Series(wanted, dtype=pl.Datetime("ms", "UTC"))
    valid = valid.filter(pl.col("_hour").is_in(wanted_series.implode()))
    dead = dead.filter(pl.col("_hour").is_in(wanted_series.implode()))

    valid_by_hour = valid.partition_by("_hour", as_dict=True)
    dead_parts = dead.sort("kafka_partition", "kafka_offset").partition_by("_hour", as_dict=True)
    records = {h: to_archive_frame(valid_by_hour.get((h,), valid.clear()), spec.dataset) for h in wanted}
    dead_by_hour = {h: dead_parts.get((h,), dead.clear()).select(list(DEAD_LETTER_COLUMNS)) for h in wanted}
    reasons = Counter(dead["reason"].to_list())
    return ArchiveHours(records, dead_by_hour, messages_read=len(batch), reasons=reasons)


def dead_letter_part_path(spec: ArchiveSpec, hour: datetime) -> str:
    """Relative lake path of one hour of dead letters."""
    return f"{hive_hour_path(spec.dead_letter_dataset, hour)}/{PART_FILE}"


def write_archive(lake: Lake, spec: ArchiveSpec, hours: ArchiveHours) -> int:
    """Replace every hour of ``hours`` in the lake (records and dead letters). Returns bytes written."""
    written = 0
    for hour, frame in sorted(hours.records.items()):
        written += lake.write_parquet(frame, archive_part_path(spec.dataset, hour))
        written += lake.write_parquet(hours.dead_letters[hour], dead_letter_part_path(spec, hour))
    return written


def read_archive(lake: Lake, dataset: str, hours: list[datetime]) -> pl.LazyFrame:
    """Lazily read the archive ``dataset`` for the given hours (hours never written are skipped)."""
    paths = [archive_part_path(dataset, h) for h in hours]
    present = [p for p in paths if lake.exists(p)]
    return lake.scan(present, schema=archive_columns(dataset))
