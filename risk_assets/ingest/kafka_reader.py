"""Read exact offset ranges from Kafka: no consumer groups, no commits.

Every read names its topic, partition and ``[start, end)`` offsets, so a run can be replayed and
gives the same records. Two broker facts are handled here and nowhere else:

* **True end of a partition.** tansu 0.6 reports as high watermark the base offset of the last
  record *batch* + 1, not the last offset + 1 (DESIGN.md §3). ``true_end`` fetches from
  ``high_watermark - 1`` and takes the last offset returned + 1; on a correct broker that fetch
  returns exactly one record and the result equals the reported watermark.
* **Finding offsets by time.** ``offsets_for_times`` is answered with 0 by tansu, so
  ``first_offset_at_or_after`` binary-searches message timestamps instead (a few single-message
  fetches). Timestamps are the producer's CreateTime and are assumed non-decreasing within
  ``TIMESTAMP_SLACK``; callers search from ``t - TIMESTAMP_SLACK`` and filter exactly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

TIMESTAMP_SLACK = timedelta(minutes=10)


class KafkaReadError(RuntimeError):
    """The broker did not return what was asked for within the deadline."""


@dataclass(frozen=True)
class OffsetRange:
    """Offsets ``[start, end)`` of one topic partition."""

    topic: str
    partition: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return max(0, self.end - self.start)

    def key(self) -> str:
        """Stable identifier, e.g. ``risk.events:0:100-250`` (used as a run key)."""
        return f"{self.topic}:{self.partition}:{self.start}-{self.end}"


@dataclass(frozen=True)
class MessageBatch:
    """Messages of one or more ranges, as parallel arrays (values may be malformed bytes)."""

    partitions: np.ndarray  # int32
    offsets: np.ndarray  # int64
    timestamps_ms: np.ndarray  # int64, message timestamp (CreateTime)
    values: list[bytes]

    def __len__(self) -> int:
        return len(self.values)

    @staticmethod
    def concat(batches: list[MessageBatch]) -> MessageBatch:
        if not batches:
            return MessageBatch(np.empty(0, np.int32), np.empty(0, np.int64), np.empty(0, np.int64), [])
        values: list[bytes] = []
        for b in batches:
            values.extend(b.values)
        return MessageBatch(
            np.concatenate([b.partitions for b in batches]),
            np.concatenate([b.offsets for b in batches]),
            np.concatenate([b.timestamps_ms for b in batches]),
            values,
        )

    def select(self, mask: np.ndarray) -> MessageBatch:
        idx = np.flatnonzero(mask)
        return MessageBatch(
            self.partitions[idx], self.offsets[idx], self.timestamps_ms[idx], [self.values[i] for i in idx]
        )


class KafkaRangeReader:
    """Reads exact offset ranges with ``assign()`` + seek. Never joins a group, never commits."""

    def __init__(self, bootstrap_servers: str, *, timeout_s: float = 30.0, client_id: str = "risk-assets"):
        self.timeout_s = timeout_s
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap_servers,
                "client.id": client_id,
                # A group id is required by the client even for assign(); nothing is ever committed.
                "group.id": f"{client_id}-range-reader",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "fetch.max.bytes": 64 * 1024 * 1024,
                "max.partition.fetch.bytes": 16 * 1024 * 1024,
                "queued.min.messages": 200_000,
                # Reads are bounded ranges, not tails: a long-polling fetch would only delay the
                # next seek (binary search probes took 0.5 s each at the 500 ms default).
                "fetch.wait.max.ms": 10,
            }
        )

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> KafkaRangeReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- metadata ----------------------------------------------------------------------------
    def partitions(self, topic: str) -> list[int]:
        """Partition ids of ``topic``; raises if the topic does not exist."""
        md = self._consumer.list_topics(topic, timeout=self.timeout_s)
        t = md.topics.get(topic)
        if t is None or t.error is not None:
            raise KafkaReadError(f"topic {topic!r} not available: {t.error if t else 'missing'}")
        return sorted(t.partitions)

    def bounds(self, topic: str, partition: int) -> tuple[int, int]:
        """``(log start offset, true end offset)`` of a partition (see module docstring)."""
        low, high = self._consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=self.timeout_s, cached=False
        )
        return low, self.true_end(topic, partition, low, high)

    def true_end(self, topic: str, partition: int, low: int, reported_high: int) -> int:
        """The offset after the last record, correcting a watermark that stops at a batch base."""
        if reported_high <= low:
            return reported_high
        last = self._last_offset_from(topic, partition, reported_high - 1)
        return max(reported_high, last + 1)

    def _last_offset_from(self, topic: str, partition: int, offset: int) -> int:
        self._consumer.assign([TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + self.timeout_s
        last = offset - 1
        got_any = False
        try:
            while time.monotonic() < deadline:
                msgs = self._consumer.consume(10_000, timeout=0.2 if got_any else 1.0)
                if not msgs:
                    if got_any:
                        return last
                    continue
                for m in msgs:
                    err = m.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            continue
                        raise KafkaException(err)
                    got_any = True
                    last = max(last, m.offset())
        finally:
            self._consumer.unassign()
        if got_any:
            return last
        raise KafkaReadError(f"{topic}:{partition}: no record at offset {offset} within {self.timeout_s}s")

    def timestamp_at(self, topic: str, partition: int, offset: int) -> int:
        """Message timestamp (ms) of the record at ``offset``."""
        batch = self.read(OffsetRange(topic, partition, offset, offset + 1))
        return int(batch.timestamps_ms[0])

    def first_offset_at_or_after(self, topic: str, partition: int, ts_ms: int, low: int, end: int) -> int:
        """Smallest offset in ``[low, end]`` whose timestamp is ≥ ``ts_ms`` (``end`` if none).

        Binary search over message timestamps; exact when timestamps are non-decreasing.
        """
        lo, hi = low, end
        while lo < hi:
            mid = (lo + hi) // 2
            if self.timestamp_at(topic, partition, mid) < ts_ms:
                lo = mid + 1
            else:
                hi = mid
        return lo

    # -- data --------------------------------------------------------------------------------
    def read(self, rng: OffsetRange) -> MessageBatch:
        """All messages of ``rng``, in offset order. Raises if the broker does not deliver them all."""
        n = rng.size
        partitions = np.full(n, rng.partition, np.int32)
        offsets = np.empty(n, np.int64)
        stamps = np.empty(n, np.int64)
        values: list[bytes] = []
        if n == 0:
            return MessageBatch(partitions, offsets, stamps, values)
        self._consumer.assign([TopicPartition(rng.topic, rng.partition, rng.start)])
        deadline = time.monotonic() + self.timeout_s
        i = 0
        next_offset = rng.start
        try:
            while next_offset < rng.end:
                if time.monotonic() > deadline:
                    raise KafkaReadError(
                        f"{rng.key()}: broker delivered {i} of {n} messages within {self.timeout_s}s"
                    )
                msgs = self._consumer.consume(min(100_000, rng.end - next_offset), timeout=0.5)
                for m in msgs:
                    err = m.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            continue
                        raise KafkaException(err)
                    off = m.offset()
                    if off < next_offset:
                        continue  # re-delivered after a fetch retry
                    # Gaps (compaction, transaction markers) are offsets that do not exist: skip on.
                    if off >= rng.end:
                        next_offset = rng.end
                        break
                    offsets[i] = off
                    stamps[i] = m.timestamp()[1]
                    values.append(m.value() or b"")
                    i += 1
                    next_offset = off + 1
                if msgs:
                    deadline = time.monotonic() + self.timeout_s
        finally:
            self._consumer.unassign()
        return MessageBatch(partitions[:i], offsets[:i], stamps[:i], values)

    def read_time_window(
        self, topic: str, start_ms: int, end_ms: int
    ) -> tuple[MessageBatch, list[OffsetRange]]:
        """Every message of ``topic`` with timestamp in ``[start_ms, end_ms)``, and the ranges read.

        Searches from ``start_ms - TIMESTAMP_SLACK`` to ``end_ms + TIMESTAMP_SLACK`` so that slightly
        out-of-order producer timestamps are still found, then filters on the exact timestamp.
        """
        slack = int(TIMESTAMP_SLACK.total_seconds() * 1000)
        batches, ranges = [], []
        for p in self.partitions(topic):
            low, end = self.bounds(topic, p)
            if end <= low:
                continue
            a = self.first_offset_at_or_after(topic, p, start_ms - slack, low, end)
            b = self.first_offset_at_or_after(topic, p, end_ms + slack, a, end)
            rng = OffsetRange(topic, p, a, b)
            batch = self.read(rng)
            ranges.append(rng)
            batches.append(batch.select((batch.timestamps_ms >= start_ms) & (batch.timestamps_ms < end_ms)))
        return MessageBatch.concat(batches), ranges

    def latest_timestamp(self, topic: str) -> int | None:
        """Timestamp (ms) of the newest record over all partitions: how far the stream has got."""
        newest = None
        for p in self.partitions(topic):
            low, end = self.bounds(topic, p)
            if end > low:
                ts = self.timestamp_at(topic, p, end - 1)
                newest = ts if newest is None else max(newest, ts)
        return newest

    def log_start_timestamp(self, topic: str, partition: int) -> tuple[int, int | None]:
        """``(log start offset, its timestamp)`` — tells whether retention already dropped a window."""
        low, end = self.bounds(topic, partition)
        if end <= low:
            return low, None
        return low, self.timestamp_at(topic, partition, low)
