"""Read exact offset ranges from Kafka: no consumer groups, no commits.

Every read names its topic, partition and ``[start, end)`` offsets, so a run can be replayed and
gives the same records. Two broker facts are handled here and nowhere else:

* **True end of a partition.** tansu 0.6 reports as high watermark the base offset of the last
  record *batch* + 1, not the last offset + 1 (docs/design.md §3). ``true_end`` fetches from
  ``high_watermark - 1`` and takes the last offset returned + 1; on a correct broker that fetch
  returns exactly one record and the result equals the reported watermark.
* **Finding offsets by time.** ``offsets_for_times`` is answered with 0 by tansu, so
  ``first_offset_at_or_after`` binary-searches message timestamps instead (a few single-message
  fetches). Timestamps are the producer's CreateTime and are assumed non-decreasing within
  ``TIMESTAMP_SLACK``; callers search from ``t - TIMESTAMP_SLACK`` and filter exactly. A probe
  takes the median timestamp of a few consecutive records, so one producer with a wrong clock
  cannot steer the search.
* **Which log this is.** Offsets only mean something within one *incarnation* of a topic: a
  broker that lost its data (tansu's memory engine after a restart) or a deleted and re-created
  topic starts again at offset 0. ``incarnation`` names it ``<cluster id>/<topic id>`` (the topic
  id is a UUID the broker assigns at creation); runs and cursors record it next to their offsets.
* **Fetch wait on a long log of small batches.** tansu's fetch cost grows with the number of record
  batches in the log, and a fetch that does not finish within ``fetch.wait.max.ms`` comes back
  empty — forever, at that setting (live traffic of ~4-message batches: empty fetches at 10 ms once
  the log held ~20–30k batches; 200 ms fails at ~250k batches). A short wait keeps reads prompt:
  on tansu every read of a range costs about one wait (measured: 33 ms per probe at 10 ms, 121 ms
  at 100 ms), since the next seek waits for the consumer's pending fetch. So the wait *adapts*: it
  starts at ``FETCH_WAIT_MS`` and, when a read sees no record for ``stall_seconds(wait)`` while its
  records must exist, the consumer is rebuilt with four times the wait (up to
  ``MAX_FETCH_WAIT_MS``). The wait learned is kept per bootstrap address for the process, so later
  readers start where the last one ended. Real Kafka answers such fetches at once; the wait is
  only ever raised on a broker that needs it.
"""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

TIMESTAMP_SLACK = timedelta(minutes=10)


PROBE_RECORDS = 15
"""Records per timestamp probe of the offset search; the probe's timestamp is their median."""

SEARCH_READS_WHOLE = 4_096
"""An offset search over at most this many offsets reads them in one fetch and probes in memory."""

FETCH_WAIT_MS = 10
"""Initial ``fetch.wait.max.ms`` of a reader (module docstring: it grows ×4 while fetches stall)."""
MAX_FETCH_WAIT_MS = 5_000
FRESH_CONSUMER_GRACE = 2.0
"""Extra seconds a new consumer gets for its first record before a read counts as stalled."""
"""Upper bound of the adaptive fetch wait."""

_learned_fetch_wait_ms: dict[str, int] = {}
"""Fetch wait that worked last, per bootstrap address (process-local; starts a new reader there)."""


def stall_seconds(wait_ms: int) -> float:
    """How long a read may see no record before its fetch wait is raised: a few fetch round trips."""
    return max(0.2, 5 * wait_ms / 1000)


class KafkaReadError(RuntimeError):
    """The broker did not return what was asked for within the deadline."""


class IncarnationChanged(KafkaReadError):
    """The topic is not the log a run (or cursor) started on: its offsets mean other records."""


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
        """Stable identifier, e.g. ``risk.events:0:100-250`` (metadata, object names; the sensors'
        run keys add the topic incarnation: ``offset_cursor.range_run_key``)."""
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


@dataclass(frozen=True)
class Lag:
    """How far a processed range is behind its partition's log end."""

    offsets: int
    seconds: float  # age of the oldest record past the range (0.0 when there is none)


class KafkaRangeReader:
    """Reads exact offset ranges with ``assign()`` + seek. Never joins a group, never commits."""

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        timeout_s: float = 30.0,
        client_id: str = "risk-assets",
        fetch_wait_ms: int | None = None,
    ):
        self.timeout_s = timeout_s
        self._bootstrap = bootstrap_servers
        self._client_id = client_id
        self.fetch_wait_ms = fetch_wait_ms or _learned_fetch_wait_ms.get(bootstrap_servers, FETCH_WAIT_MS)
        self.fetch_wait_raises = 0  # how often this reader raised its fetch wait
        self._incarnations: dict[str, str] = {}
        self._admin: Any = None  # confluent_kafka.admin.AdminClient, made on first use
        self._boundaries: dict[tuple[str, int, int], int] = {}
        # Timestamps of contiguous offset spans this reader has read (``_remember``): offset
        # searches inside them are answered here, without a broker round trip.
        self._stamps: dict[tuple[str, int], list[tuple[int, np.ndarray]]] = {}
        # Partition bounds are taken once per reader: one run works on one consistent snapshot of
        # the log (create a new reader to see newer data).
        self._bounds: dict[tuple[str, int], tuple[int, int]] = {}
        self._consumer = self._new_consumer()

    def _stall_after(self) -> float:
        """Seconds without a record before a read counts as stalled: ``stall_seconds`` of the
        wait, plus ``FRESH_CONSUMER_GRACE`` until this consumer has delivered its first record
        (connecting and finding the partition leaders is not a slow fetch; on a loaded machine it
        used to pass for one and raise the wait of every later read)."""
        return stall_seconds(self.fetch_wait_ms) + (FRESH_CONSUMER_GRACE if self._fresh else 0.0)

    def _new_consumer(self) -> Consumer:
        self._fresh = True
        return Consumer(
            {
                "bootstrap.servers": self._bootstrap,
                "client.id": self._client_id,
                # A group id is required by the client even for assign(); nothing is ever committed.
                "group.id": f"{self._client_id}-range-reader",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "fetch.max.bytes": 64 * 1024 * 1024,
                "max.partition.fetch.bytes": 16 * 1024 * 1024,
                "queued.min.messages": 200_000,
                # Reads are bounded ranges, not tails: a long-polling fetch only delays the next seek,
                # so the wait is short — but long enough for the broker to answer (adaptive, see
                # the module docstring).
                "fetch.wait.max.ms": self.fetch_wait_ms,
                # EOF events end the tail fetch of true_end() without waiting for an idle poll.
                "enable.partition.eof": True,
            }
        )

    def _stalled(self, tp: TopicPartition | list[TopicPartition]) -> bool:
        """No record arrived for ``stall_seconds``: rebuild the consumer with four times the fetch
        wait and re-assign ``tp`` (one or several partitions at their next offsets). False when the
        wait is already at its maximum (keep waiting)."""
        if self.fetch_wait_ms >= MAX_FETCH_WAIT_MS:
            return False
        self._consumer.close()
        self.fetch_wait_ms = min(MAX_FETCH_WAIT_MS, self.fetch_wait_ms * 4)
        self.fetch_wait_raises += 1
        _learned_fetch_wait_ms[self._bootstrap] = self.fetch_wait_ms
        self._consumer = self._new_consumer()
        self._consumer.assign(tp if isinstance(tp, list) else [tp])
        return True

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

    def incarnation(self, topic: str, *, fresh: bool = False) -> str:
        """``<cluster id>/<topic id>`` of ``topic``, as of this reader's first look (``fresh``: ask
        the broker again). Changes when the broker lost the topic or it was re-created."""
        if fresh or topic not in self._incarnations:
            from confluent_kafka import TopicCollection
            from confluent_kafka.admin import AdminClient

            if self._admin is None:
                self._admin = AdminClient({"bootstrap.servers": self._bootstrap, "log_level": 0})
            admin = self._admin
            md = admin.list_topics(topic, timeout=self.timeout_s)
            try:
                desc = admin.describe_topics(TopicCollection([topic]))[topic].result(timeout=self.timeout_s)
            except KafkaException as exc:
                raise KafkaReadError(f"topic {topic!r}: cannot describe it: {exc}") from None
            value = f"{md.cluster_id}/{desc.topic_id}"
            if fresh and topic in self._incarnations and self._incarnations[topic] != value:
                return value
            self._incarnations[topic] = value
        return self._incarnations[topic]

    def ensure_incarnation(self, topic: str, expected: str) -> None:
        """Raise :class:`IncarnationChanged` unless ``topic`` is still the log ``expected`` names —
        called after a read, so a broker that restarted mid-read fails the run instead of serving
        offsets of another log."""
        now = self.incarnation(topic, fresh=True)
        if now != expected:
            raise IncarnationChanged(
                f"topic {topic!r} changed incarnation during the run: {expected} → {now} "
                "(the broker lost its data or the topic was re-created); nothing was written"
            )

    def refresh(self) -> None:
        """Forget the partition bounds taken so far: the next :meth:`bounds` asks the broker again
        (a long-running consumer, like the stream worker, looks at the log end once per loop)."""
        self._bounds.clear()

    def bounds(self, topic: str, partition: int) -> tuple[int, int]:
        """``(log start offset, true end offset)`` of a partition, as of this reader's first look."""
        key = (topic, partition)
        if key not in self._bounds:
            low, high = self._consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=self.timeout_s, cached=False
            )
            self._bounds[key] = (low, self.true_end(topic, partition, low, high))
        return self._bounds[key]

    def true_end(self, topic: str, partition: int, low: int, reported_high: int) -> int:
        """The offset after the last record, correcting a watermark that stops at a batch base."""
        if reported_high <= low:
            return reported_high
        last = self._last_offset_from(topic, partition, reported_high - 1)
        return max(reported_high, last + 1)

    def _last_offset_from(self, topic: str, partition: int, offset: int) -> int:
        """Last offset of the first fetch from ``offset``: it returns at least the whole record
        batch that holds ``offset``, so any offset after it exists. Returning after that first fetch
        keeps the probe bounded on a live topic (draining until quiet would follow the tail)."""
        self._consumer.assign([TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + self.timeout_s
        stall_at = time.monotonic() + self._stall_after()
        try:
            while time.monotonic() < deadline:
                # consume(n, t) returns after n messages or t seconds, whichever comes first.
                records = [m for m in self._consumer.consume(100_000, timeout=0.02) if self._is_record(m)]
                if records:
                    self._fresh = False
                    return max(m.offset() for m in records)
                if time.monotonic() > stall_at:
                    self._stalled(TopicPartition(topic, partition, offset))
                    stall_at = time.monotonic() + self._stall_after()
        finally:
            self._consumer.unassign()
        raise KafkaReadError(f"{topic}:{partition}: no record at offset {offset} within {self.timeout_s}s")

    def lag_after(self, rng: OffsetRange, now_ms: int) -> Lag:
        """Offsets of the partition past ``rng`` and the age at ``now_ms`` of the first of them, as of
        this reader's look at the partition's end (take it after the range was processed)."""
        _, end = self.bounds(rng.topic, rng.partition)
        behind = max(0, end - rng.end)
        if not behind:
            return Lag(0, 0.0)
        first_waiting = self.timestamp_at(rng.topic, rng.partition, rng.end)
        return Lag(behind, max(0.0, (now_ms - first_waiting) / 1000))

    def timestamp_at(self, topic: str, partition: int, offset: int) -> int:
        """Message timestamp (ms) of the record at ``offset``."""
        batch = self.read(OffsetRange(topic, partition, offset, offset + 1))
        return int(batch.timestamps_ms[0])

    # -- timestamps already read ---------------------------------------------------------------
    REMEMBER_MIN_RECORDS = 1_000
    """Reads of at least this many records keep their timestamps (8 bytes a record) for searches."""

    def _remember(
        self, topic: str, partition: int, offsets: np.ndarray, stamps: np.ndarray, force: bool = False
    ) -> None:
        """Keep the timestamps of a read whose offsets are contiguous (every offset a record): of
        every ``read_many`` range (``force``), of other reads from ``REMEMBER_MIN_RECORDS`` on (the
        searches' own small probes are memoized as answers already)."""
        n = len(offsets)
        big = force or n >= self.REMEMBER_MIN_RECORDS
        if n and big and int(offsets[-1]) - int(offsets[0]) + 1 == n:
            self._stamps.setdefault((topic, partition), []).append((int(offsets[0]), stamps))

    def _known_stamps(self, topic: str, partition: int, start: int, stop: int) -> np.ndarray | None:
        """Timestamps of offsets ``[start, stop)`` if one remembered read holds them all."""
        for first, stamps in self._stamps.get((topic, partition), ()):
            if first <= start and stop <= first + len(stamps):
                return stamps[start - first : stop - first]
        return None

    def probe_timestamp(self, topic: str, partition: int, offset: int, end: int) -> int:
        """Median timestamp of the ``PROBE_RECORDS`` records from ``offset`` (fewer before ``end``):
        robust to a few records from a producer whose clock is far off (lagging or ahead)."""
        stop = max(min(end, offset + PROBE_RECORDS), offset + 1)
        known = self._known_stamps(topic, partition, offset, stop)
        if known is not None and len(known):
            return int(np.median(known))
        batch = self.read(OffsetRange(topic, partition, offset, stop))
        if not len(batch):
            raise KafkaReadError(f"{topic}:{partition}: no record from offset {offset}")
        return int(np.median(batch.timestamps_ms))

    def first_offset_at_or_after(self, topic: str, partition: int, ts_ms: int, low: int, end: int) -> int:
        """Smallest offset in ``[low, end]`` whose timestamp is ≥ ``ts_ms`` (``end`` if none).

        The search runs over probe timestamps (medians of ``PROBE_RECORDS`` records), then the answer
        is refined record by record: exact when timestamps are non-decreasing, and a few records off
        at most when a producer's clock is wrong next to the boundary. Steps alternate between
        interpolation (timestamps grow roughly linearly with offsets, so a handful of probes
        usually suffice) and bisection (which bounds the worst case at twice the bisection count).
        """
        lo, hi = low, end
        if lo >= hi:
            return lo
        if hi - lo <= SEARCH_READS_WHOLE and self._known_stamps(topic, partition, lo, hi) is None:
            # A short stretch costs one fetch: read it whole, and every probe below is answered
            # from its timestamps (same probes, same answer, one round trip instead of several).
            self.read(OffsetRange(topic, partition, lo, hi), remember=True)
        ts_lo = self.probe_timestamp(topic, partition, lo, end)
        if ts_lo >= ts_ms:
            return self._refine(topic, partition, ts_ms, lo, end)
        ts_hi = self.probe_timestamp(topic, partition, hi - 1, end)
        if ts_hi < ts_ms:
            return hi
        # Invariant: ts(lo) < ts_ms <= ts(hi - 1) … the answer is in (lo, hi - 1].
        hi -= 1
        interpolate = True
        while hi - lo > 1:
            if interpolate and ts_hi > ts_lo:
                frac = (ts_ms - ts_lo) / (ts_hi - ts_lo)
                mid = min(hi - 1, max(lo + 1, lo + int(frac * (hi - lo))))
            else:
                mid = (lo + hi) // 2
            interpolate = not interpolate
            ts_mid = self.probe_timestamp(topic, partition, mid, end)
            if ts_mid < ts_ms:
                lo, ts_lo = mid, ts_mid
            else:
                hi, ts_hi = mid, ts_mid
        return self._refine(topic, partition, ts_ms, hi, end)

    def _refine(self, topic: str, partition: int, ts_ms: int, approx: int, end: int) -> int:
        """First offset in ``[approx, approx + 2 * PROBE_RECORDS)`` with timestamp ≥ ``ts_ms``: the
        probe search stops at most ``PROBE_RECORDS`` records before the exact answer."""
        stop = min(end, approx + 2 * PROBE_RECORDS)
        known = self._known_stamps(topic, partition, approx, stop)
        if known is not None:
            hits = np.flatnonzero(known >= ts_ms)
            return approx + int(hits[0]) if len(hits) else stop
        batch = self.read(OffsetRange(topic, partition, approx, stop))
        hits = np.flatnonzero(batch.timestamps_ms >= ts_ms)
        return int(batch.offsets[hits[0]]) if len(hits) else stop

    # -- data --------------------------------------------------------------------------------
    def read(self, rng: OffsetRange, *, complete: bool = False, remember: bool = False) -> MessageBatch:
        """All messages of ``rng``, in offset order. Raises if the broker does not deliver them all.

        With ``complete``, every offset of the range must hold a record (true of the pipeline's
        topics: never compacted, no transactions): a range that comes back with holes — a broker
        that lost part of its log under the reader — raises instead of passing for a small range.
        """
        n = rng.size
        if n == 0:
            return MessageBatch(np.empty(0, np.int32), np.empty(0, np.int64), np.empty(0, np.int64), [])
        offsets: list[int] = []
        stamps: list[int] = []
        values: list[bytes] = []
        self._consumer.assign([TopicPartition(rng.topic, rng.partition, rng.start)])
        deadline = time.monotonic() + self.timeout_s
        stall_at = time.monotonic() + self._stall_after()
        next_offset = rng.start
        try:
            while next_offset < rng.end:
                if time.monotonic() > deadline:
                    raise KafkaReadError(
                        f"{rng.key()}: broker delivered {len(values)} of {n} messages "
                        f"within {self.timeout_s}s (fetch wait {self.fetch_wait_ms} ms)"
                    )
                # consume(n, t) returns after n messages or t seconds, whichever comes first.
                msgs = self._consumer.consume(min(100_000, rng.end - next_offset), timeout=0.05)
                if not msgs:
                    if time.monotonic() > stall_at:
                        self._stalled(TopicPartition(rng.topic, rng.partition, next_offset))
                        stall_at = time.monotonic() + self._stall_after()
                    continue
                deadline = time.monotonic() + self.timeout_s
                stall_at = time.monotonic() + stall_seconds(self.fetch_wait_ms)
                self._fresh = False
                msgs = [m for m in msgs if self._is_record(m)]
                # Re-deliveries after a fetch retry (offset < next) and records past the range are
                # dropped; gaps (compaction, transaction markers) are offsets that do not exist.
                msgs = [m for m in msgs if next_offset <= m.offset() < rng.end]
                if not msgs:
                    continue
                offsets += [m.offset() for m in msgs]
                stamps += [m.timestamp()[1] for m in msgs]
                values += [m.value() or b"" for m in msgs]
                next_offset = offsets[-1] + 1
        finally:
            self._consumer.unassign()
        if complete and len(values) != n:
            raise KafkaReadError(
                f"{rng.key()}: expected {n:,} records, the broker delivered {len(values):,} "
                "(offsets missing from the range)"
            )
        batch = MessageBatch(
            np.full(len(values), rng.partition, np.int32),
            np.asarray(offsets, np.int64),
            np.asarray(stamps, np.int64),
            values,
        )
        self._remember(rng.topic, rng.partition, batch.offsets, batch.timestamps_ms, remember)
        return batch

    def read_many(
        self, ranges: list[OffsetRange], *, complete: bool = False, margin: int = 0
    ) -> list[MessageBatch]:
        """All messages of several ranges (at most one per topic partition), read at once: one
        consumer is assigned every partition at its start offset, so the client fetches the
        partitions in parallel (one fetch request carries them all) instead of one after another.
        Same guarantees as :meth:`read`, per range; returns one batch per range, in order.

        ``margin``: also read up to that many records before and after each range (within the
        partition's bounds) and remember their timestamps, so offset searches near the range's
        edges are answered without the broker; the batches hold the ranges' messages only."""
        if margin:
            wide = [
                OffsetRange(
                    r.topic,
                    r.partition,
                    max(self.bounds(r.topic, r.partition)[0], r.start - margin),
                    min(self.bounds(r.topic, r.partition)[1], r.end + margin),
                )
                if r.size > 0
                else r
                for r in ranges
            ]
            out = []
            for r, batch in zip(ranges, self.read_many(wide, complete=complete), strict=True):
                out.append(
                    batch.select((batch.offsets >= r.start) & (batch.offsets < r.end))
                    if len(batch)
                    else batch
                )
            return out
        todo = [r for r in ranges if r.size > 0]
        keys = [(r.topic, r.partition) for r in todo]
        if len(set(keys)) != len(keys):
            raise ValueError("read_many takes at most one range per topic partition")
        if len(todo) <= 1:
            return [self.read(r, complete=complete, remember=True) for r in ranges]
        got: dict[tuple[str, int], tuple[list[int], list[int], list[bytes]]] = {k: ([], [], []) for k in keys}
        nxt = {(r.topic, r.partition): r.start for r in todo}
        stop = {(r.topic, r.partition): r.end for r in todo}

        def pending_keys() -> list[tuple[str, int]]:
            return [k for k in keys if nxt[k] < stop[k]]

        def pending() -> list[TopicPartition]:
            return [TopicPartition(t, p, nxt[(t, p)]) for t, p in pending_keys()]

        paused: list[TopicPartition] = []
        self._consumer.assign(pending())
        deadline = time.monotonic() + self.timeout_s
        stall_at = time.monotonic() + self._stall_after()
        try:
            while any(nxt[k] < stop[k] for k in keys):
                if time.monotonic() > deadline:
                    missing = ", ".join(
                        f"{t}:{p} {nxt[(t, p)]}/{stop[(t, p)]}"
                        for (t, p) in keys
                        if nxt[(t, p)] < stop[(t, p)]
                    )
                    raise KafkaReadError(
                        f"broker did not deliver the ranges within {self.timeout_s}s (next/end: {missing}; "
                        f"fetch wait {self.fetch_wait_ms} ms)"
                    )
                msgs = self._consumer.consume(100_000, timeout=0.05)
                if not msgs:
                    if time.monotonic() > stall_at:
                        self._stalled(pending())
                        stall_at = time.monotonic() + self._stall_after()
                    continue
                progressed = False
                for m in msgs:
                    if not self._is_record(m):
                        continue
                    k = (m.topic(), m.partition())
                    o = m.offset()
                    # Re-deliveries after a fetch retry and records past the range are dropped.
                    if k not in nxt or not nxt[k] <= o < stop[k]:
                        continue
                    offs, stamps, values = got[k]
                    offs.append(o)
                    stamps.append(m.timestamp()[1])
                    values.append(m.value() or b"")
                    nxt[k] = o + 1
                    progressed = True
                if progressed:
                    deadline = time.monotonic() + self.timeout_s
                    stall_at = time.monotonic() + stall_seconds(self.fetch_wait_ms)
                    self._fresh = False
                    done = [TopicPartition(t, p) for (t, p) in keys if nxt[(t, p)] >= stop[(t, p)]]
                    if done:
                        # Stop fetching finished partitions (their records past the range would
                        # only fill the client's queue); anything still delivered is dropped above.
                        with contextlib.suppress(KafkaException):
                            self._consumer.pause(done)
                            paused.extend(done)
                        for tp in done:  # paused once
                            stop[(tp.topic, tp.partition)] = -1
                            nxt[(tp.topic, tp.partition)] = 0
        finally:
            # librdkafka keeps a partition's pause across unassign/assign: resume first, or the
            # next read of that partition would see nothing and pass for a stall.
            with contextlib.suppress(KafkaException):
                self._consumer.resume(paused)
            self._consumer.unassign()
        out: dict[tuple[str, int], MessageBatch] = {}
        for r in todo:
            offs, stamps, values = got[(r.topic, r.partition)]
            if complete and len(values) != r.size:
                raise KafkaReadError(
                    f"{r.key()}: expected {r.size:,} records, the broker delivered {len(values):,} "
                    "(offsets missing from the range)"
                )
            batch = MessageBatch(
                np.full(len(values), r.partition, np.int32),
                np.asarray(offs, np.int64),
                np.asarray(stamps, np.int64),
                values,
            )
            self._remember(r.topic, r.partition, batch.offsets, batch.timestamps_ms, force=True)
            out[(r.topic, r.partition)] = batch
        empty = MessageBatch.concat([])
        return [out.get((r.topic, r.partition), empty) if r.size > 0 else empty for r in ranges]

    @staticmethod
    def _is_record(m: Message) -> bool:
        err = m.error()
        if err is None:
            return True
        if err.code() == KafkaError._PARTITION_EOF:
            return False
        raise KafkaException(err)

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

    def boundary(self, topic: str, partition: int, ts_ms: int) -> int:
        """``first_offset_at_or_after(ts_ms)`` over the partition as of this reader's snapshot
        (memoized). Boundaries already known for earlier and later times bracket the search (the
        answer is monotone in ``ts_ms`` where timestamps are), so a run's later boundaries cost a few
        probes; the refinement makes each answer exact wherever clocks are within the slack."""
        key = (topic, partition, ts_ms)
        if key not in self._boundaries:
            low, end = self.bounds(topic, partition)
            known = [(t, o) for (tp, p, t), o in self._boundaries.items() if tp == topic and p == partition]
            lo = max([o for t, o in known if t < ts_ms], default=low)
            hi = min([o for t, o in known if t > ts_ms], default=end)
            lo, hi = max(low, min(lo, hi)), min(end, max(hi + PROBE_RECORDS, lo))
            self._boundaries[key] = self.first_offset_at_or_after(topic, partition, ts_ms, lo, hi)
        return self._boundaries[key]

    def boundaries(self, topic: str, wanted: dict[int, list[int]]) -> dict[int, list[int]]:
        """``boundary`` for several partitions (``{partition: [ts_ms, …]}``), the partitions
        searched in parallel threads — an offset search is a chain of broker round trips, so
        partitions searched one after another cost their sum. Each thread has a reader of its own
        (a consumer is not shared between threads) working on this reader's snapshot of the
        partition bounds; the answers are memoized here as if searched here, in the given order."""
        for p in wanted:
            self.bounds(topic, p)  # one snapshot, taken here, for every thread
        todo = {p: ts for p, ts in wanted.items() if any((topic, p, t) not in self._boundaries for t in ts)}
        if len(todo) > 1:

            def search(p: int) -> KafkaRangeReader:
                fork = KafkaRangeReader(self._bootstrap, timeout_s=self.timeout_s, client_id=self._client_id,
                                        fetch_wait_ms=self.fetch_wait_ms)  # fmt: skip
                fork._bounds = {k: v for k, v in self._bounds.items() if k == (topic, p)}
                fork._boundaries = {k: v for k, v in self._boundaries.items() if k[:2] == (topic, p)}
                try:
                    for t in todo[p]:
                        fork.boundary(topic, p, t)
                finally:
                    fork.close()
                return fork

            with ThreadPoolExecutor(max_workers=len(todo), thread_name_prefix="offset-search") as pool:
                for fork in pool.map(search, sorted(todo)):
                    self._boundaries.update(fork._boundaries)
        return {p: [self.boundary(topic, p, t) for t in ts] for p, ts in wanted.items()}

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
