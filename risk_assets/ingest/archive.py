"""Kafka messages → hourly archive partitions and dead letters (pure logic, no Dagster).

``build_archive`` turns the messages of an ingestion-time window into the exact contents of the
requested archive hours: valid records under the lateness policy of ``partitioning``, deduplicated
by id, and every rejected message with its reason. ``write_archive`` then replaces each requested
hour (records and dead letters) in the lake. Everything is computed before anything is written, so
a bad batch fails the run with the lake untouched; re-running the same hours gives the same bytes.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl

from risk_assets.events import validation
from risk_assets.events.declared import event_payload_type, label_payload_type
from risk_assets.events.schema import (
    MAX_EVENT_TS_MS,
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
from risk_assets.ingest.kafka_reader import TIMESTAMP_SLACK, MessageBatch, OffsetRange
from risk_assets.ingest.partitioning import (
    GRACE,
    HOUR,
    MAX_FUTURE_SKEW,
    archive_hour_expr,
    is_from_future_expr,
)
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


def _parse_valid(batch: MessageBatch, ok: np.ndarray, spec: ArchiveSpec) -> pl.DataFrame:
    """The validated payloads at ``ok`` parsed into the archive layout (plus ``_idx``, ``_partition``,
    ``_offset``); raises if Polars cannot parse them (the caller then goes message by message)."""
    values = batch.values
    body = b"\n".join([values[i] for i in ok.tolist()])
    ts_cols = [c for c, t in spec.columns.items() if t == pl.Datetime("ms", "UTC")]
    return (
        pl.read_ndjson(body, schema=spec.read_schema())
        .with_columns(
            pl.Series("_idx", ok, dtype=pl.Int64),
            pl.Series("_partition", batch.partitions[ok], dtype=pl.Int32),
            pl.Series("_offset", batch.offsets[ok], dtype=pl.Int64),
            pl.Series(spec.ingest_column, batch.timestamps_ms[ok], dtype=pl.Int64),
        )
        .with_columns(pl.col(c).cast(pl.Datetime("ms", "UTC")) for c in ts_cols)
    )


def _empty_valid(spec: ArchiveSpec) -> pl.DataFrame:
    return pl.DataFrame(
        schema={
            **spec.columns,
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
    their arrival are rejected as ``future_timestamp``; with ``not_after_ms`` (the stream's bound: the
    micro-batch's as-of time + a configurable margin), so are records whose time or Kafka timestamp is
    after it. This is
    the one gate between the broker and anything downstream (archive, stream features): no single
    message can fail it — any exception while decoding one message makes that message a reject.
    """
    outcome = validation.validate_payloads(batch.values, spec.payload_type, spec.type_field)
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
    arrived = spec.ingest_column
    future = is_from_future_expr(spec.time_column, arrived)
    why = f"{spec.time_column} more than the allowed skew after {arrived}"
    if not_after_ms is not None:
        limit = pl.lit(not_after_ms, dtype=pl.Int64).cast(pl.Datetime("ms", "UTC"))
        beyond = (pl.col(spec.time_column) > limit) | (pl.col(arrived) > limit)
        future = future | beyond
        why = f"{why}, or {spec.time_column}/{arrived} after {_iso_ms(not_after_ms)}"
    future_mask = valid.select(future).to_series()
    late = valid.filter(future_mask)["_idx"].to_list()
    rejected += [(int(i), validation.FUTURE_TIMESTAMP, why) for i in late]
    return DecodedMessages(valid.filter(~future_mask), rejected)


def _iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def _ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


@dataclass
class LogPositions:
    """Where the messages of each archive hour sit in the log: the positional half of the rule that
    makes an hour's content independent of how hours are grouped into runs.

    ``boundary(partition, t_ms)`` is the first offset whose timestamp is ≥ ``t_ms`` (the broker
    reader's memoized search over the partition). Hour H's messages are searched in
    ``[boundary(H − MAX_FUTURE_SKEW − SLACK), boundary(H + 1 h + GRACE + SLACK))`` — its *range*;
    a message whose hour's range does not hold its offset (its producer's clock was off by more than
    the slack) is a ``clock_skew`` dead letter of its *positional hour*, the hour H with
    ``boundary(H) ≤ offset < boundary(H + 1 h)``. Either way it is in exactly one hour, and that
    hour is found by every run that covers it.

    **The run's span** (``spans``, set by :func:`read_hours` once the run's messages are read):
    per partition ``(t_lo, o_lo, t_hi, o_hi)`` — the run read offsets ``[o_lo, o_hi)`` =
    ``[boundary(t_lo), boundary(t_hi))``. Boundaries are monotone in ``t`` (the reader brackets every
    search by the boundaries it already knows), so any boundary for ``t <= t_lo`` is ``<= o_lo`` and
    any for ``t >= t_hi`` is ``>= o_hi``: for the offsets the run holds, comparing with ``o_lo`` /
    ``o_hi`` gives the same answer as comparing with the boundary itself. ``at`` uses that instead of
    searching the log beyond the span (the neighbouring hours' ranges, the positional grid), and the
    boundaries inside the span are answered from the timestamps already read.
    """

    topic: str
    boundary: Callable[[int, int], int]
    spans: dict[int, tuple[int, int, int, int]] = field(default_factory=dict)

    def at(self, partition: int, t_ms: int) -> int:
        """``boundary(partition, t_ms)``, clamped to the run's span (see the class docstring)."""
        span = self.spans.get(partition)
        if span is not None:
            t_lo, o_lo, t_hi, o_hi = span
            if t_ms <= t_lo:
                return o_lo
            if t_ms >= t_hi:
                return o_hi
        return self.boundary(partition, t_ms)

    @staticmethod
    def hour_times(hour: datetime) -> tuple[int, int]:
        """``(start, end)`` times (epoch ms) whose boundaries make hour ``hour``'s range."""
        slack = TIMESTAMP_SLACK
        return _ms(hour - MAX_FUTURE_SKEW - slack), _ms(hour + HOUR + GRACE + slack)

    def hour_range(self, partition: int, hour: datetime) -> OffsetRange:
        t_start, t_end = self.hour_times(hour)
        start = self.at(partition, t_start)
        end = self.at(partition, t_end)
        return OffsetRange(self.topic, partition, start, max(start, end))

    def read_ranges(self, partitions: list[int], hours: list[datetime]) -> list[OffsetRange]:
        """One range per partition covering every wanted hour's range."""
        out = []
        for p in partitions:
            rs = [self.hour_range(p, h) for h in hours]
            out.append(OffsetRange(self.topic, p, min(r.start for r in rs), max(r.end for r in rs)))
        return out

    def found(self, partitions: np.ndarray, offsets: np.ndarray, hours_ms: np.ndarray) -> np.ndarray:
        """Per message: does its hour's range hold its offset? (``hours_ms``: hour starts in epoch
        ms; an hour outside ``[1970, MAX_EVENT_TS_MS]`` is never found.)"""
        out = np.zeros(len(offsets), dtype=bool)
        if not len(offsets):
            return out
        sane = (hours_ms >= 0) & (hours_ms <= MAX_EVENT_TS_MS)
        pairs, inverse = np.unique(
            np.stack([partitions.astype(np.int64), hours_ms.astype(np.int64)], axis=1),
            axis=0,
            return_inverse=True,
        )
        lo = np.zeros(len(pairs), dtype=np.int64)
        hi = np.zeros(len(pairs), dtype=np.int64)
        for k, (p, h) in enumerate(pairs.tolist()):
            if 0 <= h <= MAX_EVENT_TS_MS:
                r = self.hour_range(p, datetime.fromtimestamp(h / 1000, UTC))
                lo[k], hi[k] = r.start, r.end
        inverse = inverse.reshape(-1)
        out[:] = sane & (offsets >= lo[inverse]) & (offsets < hi[inverse])
        return out

    def positional_hours(self, partitions: np.ndarray, offsets: np.ndarray, grid: list[datetime]) -> list:
        """Per message: the hour of ``grid`` whose ``[boundary(H), boundary(H + 1 h))`` holds it."""
        out: list[datetime] = []
        starts: dict[int, np.ndarray] = {}
        for p, o in zip(partitions.tolist(), offsets.tolist(), strict=True):
            if p not in starts:
                starts[p] = np.asarray([self.at(p, _ms(h)) for h in grid], dtype=np.int64)
            i = int(np.searchsorted(starts[p], o, side="right")) - 1
            out.append(grid[max(0, i)])
        return out


def read_hours(
    positions: LogPositions,
    partitions: list[int],
    hours: list[datetime],
    read_many: Callable[[list[OffsetRange]], list[MessageBatch]],
    search_many: Callable[[dict[int, list[int]]], Any] | None = None,
) -> tuple[MessageBatch, list[OffsetRange]]:
    """Every message of the ranges of ``hours`` (sorted UTC hour starts) on ``partitions``, and
    the ranges read: ``build_archive``'s input.

    Two offset searches per partition — the first hour's range start and the last hour's range
    end; with ``search_many`` (``KafkaRangeReader.boundaries``) the partitions are searched in
    parallel and ``positions.boundary`` then finds the answers memoized — then one read of every
    partition's span at once (``read_many``: the partitions are fetched in parallel, every offset
    must hold a record). The span is recorded in ``positions``, so the other hours' boundaries are
    found in the timestamps just read and the hours beyond the run compare with the span's ends
    (:class:`LogPositions`). Should a boundary inside the span still land outside it (off-clock
    records at the span's end), the missing offsets are read too.
    """
    first, last = positions.hour_times(hours[0])[0], positions.hour_times(hours[-1])[1]
    if search_many is not None:  # the partitions' searches in parallel
        search_many({p: [first, last] for p in partitions})
    spans = []
    for p in partitions:
        o_lo = positions.boundary(p, first)
        o_hi = max(o_lo, positions.boundary(p, last))
        spans.append(OffsetRange(positions.topic, p, o_lo, o_hi))
    batches = read_many(spans)
    positions.spans.update({r.partition: (first, r.start, last, r.end) for r in spans})
    ranges = positions.read_ranges(partitions, hours)
    extra: list[OffsetRange] = []
    for r, span in zip(ranges, spans, strict=True):
        if r.start < span.start:
            extra.append(OffsetRange(r.topic, r.partition, r.start, span.start))
        if r.end > span.end:
            extra.append(OffsetRange(r.topic, r.partition, span.end, r.end))
    for rng in extra:  # rare: at most one range per partition and side, read one by one
        batches += read_many([rng])
    read = [
        OffsetRange(positions.topic, r.partition, min(r.start, s.start), max(r.end, s.end))
        for r, s in zip(ranges, spans, strict=True)
    ]
    batch = MessageBatch.concat(batches)
    if extra:  # keep (partition, offset) order
        batch = _reorder(batch, np.lexsort((batch.offsets, batch.partitions)))
    return batch, read


def _reorder(batch: MessageBatch, order: np.ndarray) -> MessageBatch:
    return MessageBatch(
        batch.partitions[order],
        batch.offsets[order],
        batch.timestamps_ms[order],
        [batch.values[i] for i in order],
    )


def _hour_ms(ts_ms: np.ndarray) -> np.ndarray:
    """Start (epoch ms) of the UTC hour of each timestamp."""
    return np.floor_divide(ts_ms.astype(np.int64), 3_600_000) * 3_600_000


def build_archive(
    batch: MessageBatch, spec: ArchiveSpec, hours: list[datetime], positions: LogPositions | None = None
) -> ArchiveHours:
    """Validate ``batch`` and return the complete contents of ``hours`` (UTC hour starts).

    ``batch`` must hold every message of the hours' ranges (``positions.read_ranges``; without
    ``positions``: every message ingested in ``partitioning.ingest_window(hours[0], hours[-1])``);
    records and dead letters that belong to other hours are left out (they belong to those hours).
    With ``positions``, messages outside their hour's range are ``clock_skew`` dead letters of their
    positional hour (see :class:`LogPositions`), so the result for an hour does not depend on which
    other hours are built with it.
    """
    wanted = sorted({h.astimezone(UTC) for h in hours})
    decoded = decode_messages(batch, spec)
    valid = decoded.valid.with_columns(archive_hour_expr(spec.time_column, spec.ingest_column).alias("_hour"))
    rejected = list(decoded.rejected)
    rej_idx = np.asarray([r[0] for r in rejected], dtype=np.int64)
    rej_hours = _hour_ms(batch.timestamps_ms[rej_idx])
    orphan_idx = np.empty(0, np.int64)
    if positions is not None:
        hours_ms = valid["_hour"].dt.epoch("ms").to_numpy().astype(np.int64)
        found = positions.found(valid["_partition"].to_numpy(), valid["_offset"].to_numpy(), hours_ms)
        orphan_idx = valid.filter(~pl.Series(found))["_idx"].to_numpy()
        valid = valid.filter(pl.Series(found))
        rej_found = positions.found(batch.partitions[rej_idx], batch.offsets[rej_idx], rej_hours)
        orphan_idx = np.concatenate([orphan_idx, rej_idx[~rej_found]]).astype(np.int64)
        rejected = [r for r, f in zip(rejected, rej_found.tolist(), strict=True) if f]
        rej_idx, rej_hours = rej_idx[rej_found], rej_hours[rej_found]

    # Duplicates: within an archive hour the first copy (lowest partition, offset) wins; the other
    # copies are dead letters of that same hour.
    valid = valid.sort("_partition", "_offset")
    first = valid.select(pl.struct("_hour", spec.id_column).is_first_distinct()).to_series()
    dups = valid.filter(~first)
    valid = valid.filter(first)

    dup_idx = dups["_idx"].to_numpy()
    orphan_hours = np.empty(0, np.int64)
    if len(orphan_idx):
        grid_start = wanted[0] - 3 * HOUR
        grid = [grid_start + i * HOUR for i in range(int((wanted[-1] - grid_start) / HOUR) + 5)]
        orphan_hours = np.asarray(
            [
                _ms(h)
                for h in positions.positional_hours(  # type: ignore[union-attr]
                    batch.partitions[orphan_idx], batch.offsets[orphan_idx], grid
                )
            ],
            dtype=np.int64,
        )
    skew_msg = (
        f"Kafka timestamp inconsistent with the message's position in the log (producer clock off by "
        f"more than {TIMESTAMP_SLACK}): archived as a dead letter of the hour of its position"
    )
    dead = _dead_letters(
        spec.topic,
        batch,
        np.concatenate([rej_idx, dup_idx, orphan_idx]).astype(np.int64),
        [r[1] for r in rejected]
        + [validation.DUPLICATE] * len(dup_idx)
        + [validation.CLOCK_SKEW] * len(orphan_idx),
        [r[2] for r in rejected]
        + [f"duplicate {spec.id_column} in the same archive hour"] * len(dup_idx)
        + [skew_msg] * len(orphan_idx),
    ).with_columns(
        pl.Series(
            "_hour",
            np.concatenate(
                [rej_hours, dups["_hour"].dt.epoch("ms").to_numpy().astype(np.int64), orphan_hours]
            ),
            dtype=pl.Int64,
        ).cast(pl.Datetime("ms", "UTC"))
    )

    wanted_series = pl.Series(wanted, dtype=pl.Datetime("ms", "UTC"))
    valid = valid.filter(pl.col("_hour").is_in(wanted_series.implode()))
    dead = dead.filter(pl.col("_hour").is_in(wanted_series.implode()))

    valid_by_hour = valid.partition_by("_hour", as_dict=True)
    dead_parts = dead.sort("kafka_partition", "kafka_offset").partition_by("_hour", as_dict=True)
    records = {h: spec.to_archive(valid_by_hour.get((h,), valid.clear())) for h in wanted}
    dead_by_hour = {
        h: dead_parts.get((h,), dead.clear()).select(
            pl.col(c).cast(t) for c, t in DEAD_LETTER_COLUMNS.items()
        )
        for h in wanted
    }
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


# -- guards: the archive is the system of record ----------------------------------------------


def archived_counts(lake: Lake, dataset: str, hours: list[datetime]) -> dict[datetime, int]:
    """Record count of every hour of ``hours`` the lake already holds (hours never written: absent)."""
    out = {}
    for h in hours:
        path = archive_part_path(dataset, h)
        if lake.exists(path):
            out[h] = int(lake.scan([path]).select(pl.len()).collect().item())
    return out


@dataclass(frozen=True)
class Shrink:
    """An hour whose new content has fewer records than the archive holds."""

    hour: datetime
    archived: int
    new: int

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H}:00Z {self.archived:,} → {self.new:,}"


def shrinking_hours(archived: dict[datetime, int], result: ArchiveHours) -> list[Shrink]:
    """Hours that the run would replace with fewer records than the archive holds."""
    return [
        Shrink(h, archived[h], frame.height)
        for h, frame in sorted(result.records.items())
        if h in archived and frame.height < archived[h]
    ]


def ledger_path(dataset: str) -> str:
    """The archive's ledger of the topic incarnations it has archived from (a small JSON object)."""
    return f"_archive_ledger/{dataset}.json"


def read_ledger(lake: Lake, dataset: str) -> dict[str, Any]:
    path = ledger_path(dataset)
    return json.loads(lake.read_bytes(path)) if lake.exists(path) else {"incarnations": {}}


def record_incarnation(lake: Lake, dataset: str, incarnation: str, log_start_ms: int | None) -> None:
    """Add ``incarnation`` to the ledger (kept with the timestamp its log starts at)."""
    ledger = read_ledger(lake, dataset)
    if incarnation not in ledger["incarnations"]:
        ledger["incarnations"][incarnation] = {"log_start_ms": log_start_ms}
        lake.write_bytes(ledger_path(dataset), json.dumps(ledger, sort_keys=True, indent=1).encode())


def incarnation_gap(
    ledger: dict[str, Any], incarnation: str, log_start_ms: int | None, window_start_ms: int
) -> str | None:
    """Why a run on ``incarnation`` cannot prove its window complete, or ``None``.

    A topic incarnation the archive has never read from, while it has read from others, means the
    broker lost the topic (or it was re-created): whatever the old log held before the new one
    starts is gone from Kafka. Hours whose ingestion window starts before the new log's first
    timestamp (or any window, when the new log is empty) cannot be rebuilt completely from it.
    """
    known = ledger.get("incarnations", {})
    if not known or incarnation in known:
        return None
    if log_start_ms is not None and log_start_ms <= window_start_ms:
        return None
    starts = "is empty" if log_start_ms is None else f"starts at {_iso_ms(log_start_ms)}"
    return (
        f"topic incarnation {incarnation} is new (the archive read from {', '.join(sorted(known))}) and its "
        f"log {starts}, after the window start {_iso_ms(window_start_ms)}: messages the old log held "
        "in this window are not in the broker any more"
    )
