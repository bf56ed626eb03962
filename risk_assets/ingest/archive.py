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
from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl

from risk_assets.events import validation
from risk_assets.events.declared import event_payload_type, label_payload_type
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
    to_layout,
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
from risk_assets.sources import EXCHANGE_EVENTS, EXCHANGE_LABELS, EventSource, LabelSource

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
    """What one raw archive is made of: its topic, payload schema, time and id columns.

    ``layout`` (column → dtype pairs) is the archive's columns; empty for the built-in datasets,
    whose layout is ``archive_format``'s. ``ingest_column`` is where the message's arrival time
    goes; ``type_field`` names the event-type field (reason ``unknown_event_type``).
    """

    dataset: str
    dead_letter_dataset: str
    topic: str
    payload_type: Any
    time_column: str
    id_column: str
    payload_columns: tuple[str, ...]
    layout: tuple[tuple[str, pl.DataType], ...] = ()
    ingest_column: str = "ingest_ts"
    type_field: str | None = "event_type"

    @property
    def columns(self) -> dict[str, pl.DataType]:
        """The archive's columns and dtypes, in order."""
        return dict(self.layout) if self.layout else archive_columns(self.dataset)

    def read_schema(self) -> dict[str, pl.DataType]:
        """Schema for reading the JSON payloads: timestamps arrive as integer milliseconds."""
        cols = self.columns
        return {
            c: (pl.Int64 if cols[c] == pl.Datetime("ms", "UTC") or cols[c] == pl.Int16 else cols[c])
            for c in self.payload_columns
        }

    def to_archive(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Cast, order and sort records into this archive's layout (sorted by time, id)."""
        return to_layout(frame, self.columns, (self.time_column, self.id_column))


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


def _declared_spec(
    source: EventSource | LabelSource, id_column: str | None, type_field: str | None, payload_type: Any
) -> ArchiveSpec:
    if source.archive_dataset is None or source.topic is None:
        raise ValueError(f"source {source.name} declares no archive dataset or topic to archive from")
    if source.ingestion_timestamp is None:
        raise ValueError(f"source {source.name} declares no ingestion-time column (the arrival time)")
    if id_column is None:
        raise ValueError(f"source {source.name} declares no id column (duplicates are dropped by id)")
    names = {source.archive_dataset, f"{source.archive_dataset}_dead_letters"}
    if names & {RAW_EVENTS, RAW_LABELS, RAW_EVENT_DEAD_LETTERS, RAW_LABEL_DEAD_LETTERS}:
        raise ValueError(f"source {source.name}: archive dataset {source.archive_dataset!r} is taken")
    return ArchiveSpec(
        dataset=source.archive_dataset,
        dead_letter_dataset=f"{source.archive_dataset}_dead_letters",
        topic=source.topic,
        payload_type=payload_type,
        time_column=source.timestamp,
        id_column=id_column,
        payload_columns=tuple(c for c in source.column_names if c != source.ingestion_timestamp),
        layout=source.columns,
        ingest_column=source.ingestion_timestamp,
        type_field=type_field,
    )


def archive_spec(source: EventSource | LabelSource) -> ArchiveSpec:
    """The archive of a declared source: the exchange's own specs for the exchange sources (same
    layout, same bytes), otherwise one derived from the declaration — payloads validated by
    :mod:`risk_assets.events.declared`, records in ``{archive_dataset}/…``, rejects (with the same
    reason codes) in ``{archive_dataset}_dead_letters/…``."""
    if source == EXCHANGE_EVENTS:
        return EVENTS
    if source == EXCHANGE_LABELS:
        return LABELS
    if isinstance(source, EventSource):
        return _declared_spec(source, source.id_column, source.event_type_column, event_payload_type(source))
    return _declared_spec(source, source.id_column, source.type_column, label_payload_type(source))


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


def decode_messages(batch: MessageBatch, spec: ArchiveSpec) -> DecodedMessages:
    """Validate every payload of ``batch`` and parse the valid ones into the archive layout.

    ``ingest_ts`` is the Kafka message timestamp. Records whose time claims to be too far after
    their arrival are rejected as ``future_timestamp``. This is the one gate between the broker and
    anything downstream (archive, stream features).
    """
    outcome = validation.validate_payloads(batch.values, spec.payload_type, spec.type_field)
    ok = np.asarray(outcome.valid, dtype=np.int64)
    if len(ok):
        values = batch.values
        body = b"\n".join([values[i] for i in ok.tolist()])
        ts_cols = [c for c, t in spec.columns.items() if t == pl.Datetime("ms", "UTC")]
        valid = (
            pl.read_ndjson(body, schema=spec.read_schema())
            .with_columns(
                pl.Series("_idx", ok),
                pl.Series("_partition", batch.partitions[ok]),
                pl.Series("_offset", batch.offsets[ok]),
                pl.Series(spec.ingest_column, batch.timestamps_ms[ok]),
            )
            .with_columns(pl.col(c).cast(pl.Datetime("ms", "UTC")) for c in ts_cols)
        )
    else:
        valid = pl.DataFrame(
            schema={
                **spec.columns,
                "_idx": pl.Int64,
                "_partition": pl.Int32,
                "_offset": pl.Int64,
            }
        )
    # Records claiming a time too far after their arrival are rejected.
    future_mask = valid.select(is_from_future_expr(spec.time_column, spec.ingest_column)).to_series()
    rejected = list(outcome.rejected) + [
        (
            int(i),
            validation.FUTURE_TIMESTAMP,
            f"{spec.time_column} more than the allowed skew after {spec.ingest_column}",
        )
        for i in valid.filter(future_mask)["_idx"].to_list()
    ]
    return DecodedMessages(valid.filter(~future_mask), rejected)


def build_archive(batch: MessageBatch, spec: ArchiveSpec, hours: list[datetime]) -> ArchiveHours:
    """Validate ``batch`` and return the complete contents of ``hours`` (UTC hour starts).

    ``batch`` must hold every message ingested in ``partitioning.ingest_window(hours[0], hours[-1])``;
    records and dead letters that belong to other hours are left out (they belong to those hours).
    """
    wanted = sorted({h.astimezone(UTC) for h in hours})
    decoded = decode_messages(batch, spec)
    valid = decoded.valid

    # Duplicates: within an archive hour the first copy (lowest partition, offset) wins.
    valid = valid.with_columns(archive_hour_expr(spec.time_column, spec.ingest_column).alias("_hour")).sort(
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
    records = {h: spec.to_archive(valid_by_hour.get((h,), valid.clear())) for h in wanted}
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


def read_archive(
    lake: Lake, dataset: str, hours: list[datetime], columns: dict[str, pl.DataType] | None = None
) -> pl.LazyFrame:
    """Lazily read the archive ``dataset`` for the given hours (hours never written are skipped);
    ``columns``: the layout of a declared source's archive (``archive_spec(source).columns``)."""
    paths = [archive_part_path(dataset, h) for h in hours]
    present = [p for p in paths if lake.exists(p)]
    return lake.scan(present, schema=columns or archive_columns(dataset))
