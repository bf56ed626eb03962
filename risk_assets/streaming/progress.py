"""The stream worker's progress log: one record per committed range, read by a Dagster sensor.

Pure (Redis only, no Dagster). The worker appends a record to the Redis stream
``{namespace}:stream_progress`` (capped at ``MAX_RECORDS``) after each range it committed; the
``stream_worker_progress_sensor`` reads the records after its cursor (the last stream id it
reported) and turns :func:`summarize`'s summaries into materializations and lag check results of the
stream assets, so lineage and freshness stay in the Dagster graph while the worker runs outside it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

MAX_RECORDS = 100_000
"""Records kept in the Redis stream (approximate trim): hours of ranges at one per second."""


@dataclass(frozen=True)
class ProgressRecord:
    """A range the worker committed: its output was published before this was written."""

    asset: str  # the stream asset it materialized (stream_feature_buffer, online_features)
    topic: str
    partition: int
    start: int
    end: int
    incarnation: str
    messages: int
    rows: int
    rejected: int
    lag_offsets: int  # offsets of the partition past the range at the commit (-1: unknown)
    lag_seconds: float  # age of the oldest of them (0: caught up, -1: unknown)
    committed_ms: int
    seconds: float  # from reading the range to its commit
    worker: str
    objects: int = 0  # feature-log objects written (ingestion ranges)
    read_s: float = 0.0  # events ranges: reading the range,
    compute_s: float = 0.0  # decoding + the stream state and engine,
    publish_s: float = 0.0  # publishing the rows,
    ingest_s: float = 0.0  # writing the buffer's new rows to Redis (then the commit)


def progress_key(namespace: str) -> str:
    return f"{namespace}:stream_progress"


def append(client: Any, namespace: str, record: ProgressRecord) -> str:
    """XADD the record; returns its stream id."""
    values = {k: str(v) for k, v in asdict(record).items()}
    rid = client.xadd(progress_key(namespace), values, maxlen=MAX_RECORDS, approximate=True)
    return rid.decode() if isinstance(rid, bytes) else str(rid)


_TYPES = {f.name: f.type for f in fields(ProgressRecord)}


def _parse(values: dict) -> ProgressRecord:
    raw = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in values.items()
    }
    out: dict[str, Any] = {}
    for name, typ in _TYPES.items():
        if name not in raw:
            continue
        out[name] = int(raw[name]) if typ == "int" else float(raw[name]) if typ == "float" else raw[name]
    return ProgressRecord(**out)


def read_after(
    client: Any, namespace: str, after: str | None, count: int = 10_000
) -> list[tuple[str, ProgressRecord]]:
    """Records with a stream id after ``after`` (None/'': from the first kept), oldest first."""
    low = f"({after}" if after else "-"
    entries = client.xrange(progress_key(namespace), min=low, max="+", count=count)
    return [((rid.decode() if isinstance(rid, bytes) else rid), _parse(values)) for rid, values in entries]


@dataclass(frozen=True)
class Summary:
    """What the worker did to one asset on one partition between two sensor ticks."""

    asset: str
    topic: str
    partition: int
    ranges: int
    offset_start: int
    offset_end: int
    messages: int
    rows: int
    rejected: int
    objects: int
    lag_offsets: int  # as of the last range
    lag_seconds: float
    last_committed_ms: int
    incarnation: str
    worker: str
    max_range_seconds: float

    def metadata(self) -> dict[str, int | float | str]:
        """Stable numeric metadata keys (the run path's names where they mean the same)."""
        return {
            "dagster/row_count": self.rows,
            "messages": self.messages,
            "rejected": self.rejected,
            "ranges": self.ranges,
            "offset_start": self.offset_start,
            "offset_end": self.offset_end,
            "objects": self.objects,
            "lag_offsets": self.lag_offsets,
            "lag_seconds": self.lag_seconds,
            "max_range_seconds": self.max_range_seconds,
            "partition": f"{self.topic}/{self.partition}",
            "kafka_incarnation": self.incarnation,
            "worker": self.worker,
        }


def summarize(records: Sequence[ProgressRecord] | Iterable[ProgressRecord]) -> list[Summary]:
    """One summary per (asset, topic, partition), in first-seen order; ranges are contiguous per
    partition (the worker commits them in order), so ``[offset_start, offset_end)`` covers them."""
    groups: dict[tuple[str, str, int], list[ProgressRecord]] = {}
    for r in records:
        groups.setdefault((r.asset, r.topic, r.partition), []).append(r)
    out = []
    for (asset, topic, partition), rs in groups.items():
        last = rs[-1]
        out.append(
            Summary(
                asset=asset,
                topic=topic,
                partition=partition,
                ranges=len(rs),
                offset_start=min(r.start for r in rs),
                offset_end=max(r.end for r in rs),
                messages=sum(r.messages for r in rs),
                rows=sum(r.rows for r in rs),
                rejected=sum(r.rejected for r in rs),
                objects=sum(r.objects for r in rs),
                lag_offsets=last.lag_offsets,
                lag_seconds=last.lag_seconds,
                last_committed_ms=last.committed_ms,
                incarnation=last.incarnation,
                worker=last.worker,
                max_range_seconds=max(r.seconds for r in rs),
            )
        )
    return out
