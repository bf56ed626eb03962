"""Feature buffer → online store (Redis) + offline feature log (lake), one exact offset range at a time.

Pure Python, no Dagster: the ingestion job is a thin wrapper around :func:`ingest_range`, and the
sensor advances its cursor past a range only after :func:`ingest_range` returned.

Order of writes and failure behaviour
-------------------------------------
1. Read exactly ``[start, end)`` of one partition of the buffer topic and decode it
   (:func:`~risk_assets.features.feature_buffer.decode`). Undecodable messages are written to the
   lake's dead letters for the range and reported; they never block the range.
2. Online store, per group: write-if-newer by ``(event_ts, created_ts)``
   (:meth:`OnlineStore.write`). If Redis is unreachable this raises
   (:class:`~risk_assets.features.online_store.OnlineStoreUnavailable`) *before anything is written
   to the lake*: the cursor does not move, the rows stay in Kafka, the next run retries the range.
3. Offline feature log, per group: one Parquet object per (group, event date, range), each written
   atomically (temp file + rename, or one S3 PUT) — a reader never sees half an object.

Both writes are idempotent: the online store skips rows that are not newer, and the log objects of a
range have deterministic names, so re-ingesting the same range replaces the same objects with the
same contents. Ingesting ranges out of order is safe for the online store (an older row never
overwrites a newer one); the log simply holds both.

Offline log layout
------------------
::

    feature_log/{group}/v={version}/dt={YYYY-MM-DD}/offsets={topic}-{partition}-{start:012d}-{end:012d}.parquet

``dt`` is the UTC date of each row's ``event_ts`` (a range spanning midnight, or holding late rows,
writes one object per date it touches), so a point-in-time read of ``[start, end)`` prunes exactly
by date. Columns: ``group.schema()`` + ``created_ts``. Many small objects accumulate (one per range
and date); compacting a closed date is the offline store's business.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import numpy as np
import polars as pl

from risk_assets.features.feature_buffer import DecodedBuffer, decode
from risk_assets.features.groups import FEATURE_GROUPS
from risk_assets.features.online_store import GroupLayout, OnlineStore, WriteResult
from risk_assets.features.spec import EVENT_TS, FeatureGroup
from risk_assets.features.stream import CREATED_TS, output_schema
from risk_assets.ingest.kafka_reader import KafkaRangeReader, MessageBatch, OffsetRange
from risk_assets.lake import Lake

__all__ = [
    "DEAD_LETTER_DATASET",
    "FEATURE_LOG",
    "IngestResult",
    "dead_letter_path",
    "feature_log_path",
    "group_layout",
    "ingest_batch",
    "ingest_range",
    "read_feature_log",
]

FEATURE_LOG = "feature_log"
DEAD_LETTER_DATASET = "feature_buffer_dead_letters"
_TS = pl.Datetime("ms", "UTC")
DEAD_LETTER_COLUMNS: dict[str, pl.DataType] = {
    "topic": pl.String(),
    "kafka_partition": pl.Int32(),
    "kafka_offset": pl.Int64(),
    "message_ts": _TS,
    "reason": pl.String(),
    "error": pl.String(),
    "payload": pl.Binary(),
}


def group_layout(group: FeatureGroup) -> GroupLayout:
    """The online store layout of a feature group."""
    return GroupLayout(
        name=group.name,
        version=group.version,
        entity=group.entity.name,
        features=group.feature_names,
        ttl_s=int(group.ttl.total_seconds()),
        key_columns=group.entity.keys,
    )


def _range_tag(rng: OffsetRange) -> str:
    return f"offsets={rng.topic}-{rng.partition}-{rng.start:012d}-{rng.end:012d}.parquet"


def feature_log_path(group: FeatureGroup, day: date, rng: OffsetRange) -> str:
    """Relative lake path of the log object of ``group`` for one event date and one buffer range."""
    return f"{FEATURE_LOG}/{group.name}/v={group.version}/dt={day:%Y-%m-%d}/{_range_tag(rng)}"


def dead_letter_path(day: date, rng: OffsetRange) -> str:
    """Relative lake path of the dead letters of one buffer range (``day`` = date of its first message)."""
    return f"{DEAD_LETTER_DATASET}/dt={day:%Y-%m-%d}/{_range_tag(rng)}"


@dataclass(frozen=True)
class IngestResult:
    """What one :func:`ingest_range` call did."""

    range: OffsetRange
    messages: int
    rows: dict[str, int]
    online: dict[str, WriteResult]
    log_objects: list[str]
    rejected: int
    reasons: dict[str, int] = field(default_factory=dict)
    dead_letter_object: str | None = None

    @property
    def row_count(self) -> int:
        return sum(self.rows.values())


def _dead_letters(batch: MessageBatch, decoded: DecodedBuffer, rng: OffsetRange) -> pl.DataFrame:
    idx = np.asarray([r[0] for r in decoded.rejected], dtype=np.int64)
    return (
        pl.DataFrame(
            {
                "topic": [rng.topic] * len(idx),
                "kafka_partition": batch.partitions[idx],
                "kafka_offset": batch.offsets[idx],
                "message_ts": batch.timestamps_ms[idx],
                "reason": [r[1] for r in decoded.rejected],
                "error": [r[2] for r in decoded.rejected],
                "payload": [batch.values[i] for i in idx.tolist()],
            },
            schema_overrides={"message_ts": pl.Int64, "payload": pl.Binary},
        )
        .with_columns(pl.col("message_ts").cast(_TS))
        .select([pl.col(c).cast(t) for c, t in DEAD_LETTER_COLUMNS.items()])
    )


def write_online(
    batch: MessageBatch, store: OnlineStore, groups: Iterable[FeatureGroup] | None = None
) -> dict[str, WriteResult]:
    """Only the online half of :func:`ingest_batch`: decode and write-if-newer every valid row (the
    continuous worker writes Redis every loop and the feature log at a slower cadence)."""
    registry = {g.name: g for g in (FEATURE_GROUPS if groups is None else groups)}
    frames = {name: f for name, f in decode(batch, registry.values()).frames.items() if f.height}
    return {name: store.write(group_layout(registry[name]), f) for name, f in frames.items()}


def ingest_batch(
    batch: MessageBatch,
    rng: OffsetRange,
    store: OnlineStore,
    lake: Lake,
    groups: Iterable[FeatureGroup] | None = None,
    *,
    online: bool = True,
) -> IngestResult:
    """:func:`ingest_range` for messages already read (``batch`` must be exactly ``rng``).
    ``online=False``: the rows are already in the online store (:func:`write_online`); write the
    feature log and dead letters only."""
    registry = {g.name: g for g in (FEATURE_GROUPS if groups is None else groups)}
    decoded = decode(batch, registry.values())
    frames = {name: f for name, f in decoded.frames.items() if f.height}
    # 1. Online store first: if Redis is down this raises before the lake is touched.
    written = (
        {name: store.write(group_layout(registry[name]), f) for name, f in frames.items()} if online else {}
    )
    # 2. Offline log: one atomic object per (group, event date, range).
    objects: list[str] = []
    for name, f in sorted(frames.items()):
        g = registry[name]
        parts = f.with_columns(pl.col(EVENT_TS).dt.date().alias("_dt")).partition_by(
            "_dt", as_dict=True, maintain_order=True
        )
        for (day,), part in sorted(parts.items()):
            path = feature_log_path(g, day, rng)
            lake.write_parquet(part.drop("_dt"), path)
            objects.append(path)
    dead_path = None
    if decoded.rejected:
        first = datetime.fromtimestamp(int(batch.timestamps_ms[0]) / 1000, UTC).date()
        dead_path = dead_letter_path(first, rng)
        lake.write_parquet(_dead_letters(batch, decoded, rng), dead_path)
    return IngestResult(
        range=rng,
        messages=len(batch),
        rows={name: f.height for name, f in frames.items()},
        online=written,
        log_objects=objects,
        rejected=decoded.rejected_count,
        reasons=dict(Counter(r[1] for r in decoded.rejected)),
        dead_letter_object=dead_path,
    )


def ingest_range(
    reader: KafkaRangeReader,
    rng: OffsetRange,
    store: OnlineStore,
    lake: Lake,
    groups: Iterable[FeatureGroup] | None = None,
) -> IngestResult:
    """Read exactly ``rng`` of the buffer topic and write it online and to the offline log.

    ``groups``: the feature groups whose current versions are accepted (default ``FEATURE_GROUPS``).
    Idempotent; raises (without writing the log) when Redis is unreachable — see the module
    docstring. The caller acknowledges the range only after this returns.
    """
    return ingest_batch(reader.read(rng), rng, store, lake, groups)


def _epoch_ms(t: datetime) -> int:
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return -(-(t - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1))


def read_feature_log(
    lake: Lake,
    group: FeatureGroup,
    start: datetime | None = None,
    end: datetime | None = None,
) -> pl.LazyFrame:
    """The logged stream rows of ``group`` (current version) with ``start <= event_ts < end``.

    Objects are pruned by their ``dt`` (event date). Exact duplicates of (keys, event_ts,
    created_ts) — the same row ingested through overlapping ranges — appear once. Sorted by
    (keys, event_ts, created_ts). Columns: :func:`~risk_assets.features.stream.output_schema`.
    """
    schema = output_schema(group)
    prefix = f"{FEATURE_LOG}/{group.name}/v={group.version}"
    lo = None if start is None else datetime.fromtimestamp(_epoch_ms(start) / 1000, UTC).date()
    hi = None if end is None else datetime.fromtimestamp((_epoch_ms(end) - 1) / 1000, UTC).date()
    paths = []
    for p in lake.list(prefix):
        seg = next((s for s in p.split("/") if s.startswith("dt=")), None)
        if seg is None:
            continue
        day = date.fromisoformat(seg[3:])
        if (lo is None or day >= lo) and (hi is None or day <= hi):
            paths.append(p)
    if not paths:
        return pl.LazyFrame(schema=schema)
    lf = lake.scan(paths).select([pl.col(c).cast(t) for c, t in schema.items()])
    ts = pl.col(EVENT_TS).dt.epoch("ms")
    if start is not None:
        lf = lf.filter(ts >= _epoch_ms(start))
    if end is not None:
        lf = lf.filter(ts < _epoch_ms(end))
    keys = [*group.entity.keys, EVENT_TS, CREATED_TS]
    return lf.unique(subset=keys, keep="first").sort(keys)
