"""The continuous stream worker: the sensor path's two steps in one long-running loop (pure, no Dagster).

Each loop, for the partitions it holds a lease on (``handoff.py``):

1. **events** — for each ``risk.events`` partition: the range ``[committed, min(end, committed +
   max_range))`` (or, after a crash, exactly the ``pending`` range it was processing, with the same
   as-of time) → ``decode_messages`` → ``process_with_warm_start`` (the stream state in Redis, the
   same engine and warm start as ``stream_feature_buffer``) → ``publish`` to ``risk.features``;
2. **ingestion** — for each ``risk.features`` partition: ``[committed, end)`` → ``ingest_batch``
   (online store write-if-newer, feature log, dead letters), then commit that range;
3. only then commit the events ranges of step 1: a committed events range has its rows in
   ``risk.features`` *and* in the online store.

A crash anywhere leaves the ranges uncommitted; the next worker replays them. Replays are harmless:
state members are pure functions of the messages, the rows come out the same (visibility is by
offset), the online store skips rows that are not newer, and the feature log returns exact
duplicates once. The incident rules are the sensors': a topic whose incarnation is not the one the
shared cursor records, or a cursor past the log end, stops the worker with the numbers
(:class:`StreamIncident`); an operator accepts the new log with ``--accept-incarnation``. Invalid
messages are rejected by the same decoder (counted; the archive dead-letters them), invalid buffer
rows go to the feature-buffer dead letters.

After each commit the worker appends a :class:`~risk_assets.streaming.progress.ProgressRecord` that
the ``stream_worker_progress_sensor`` reports to Dagster.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from risk_assets.features.feature_buffer import publish
from risk_assets.features.groups import FEATURE_GROUPS
from risk_assets.features.ingestion import ingest_batch, write_online
from risk_assets.features.online_store import OnlineStore
from risk_assets.features.online_tiles import write_stream_tiles
from risk_assets.features.redis_client import connect
from risk_assets.features.stream_state import StreamState, stream_groups
from risk_assets.features.stream_warm_start import (
    WarmStartResult,
    process_with_warm_start,
    warm_start_for_batch,
)
from risk_assets.ingest.archive import EVENTS, decode_messages
from risk_assets.ingest.kafka_reader import (
    IncarnationChanged,
    KafkaRangeReader,
    Lag,
    MessageBatch,
    OffsetRange,
)
from risk_assets.lake import Lake
from risk_assets.names import EVENTS_TOPIC, FEATURES_TOPIC, ONLINE_FEATURES, STREAM_FEATURE_BUFFER
from risk_assets.sensors.offset_cursor import tp_key
from risk_assets.streaming import progress
from risk_assets.streaming.handoff import LEASE_MS, Handoff, PartitionState

log = logging.getLogger("risk_assets.streaming")


class StreamIncident(RuntimeError):
    """The log under the worker is not the one the shared cursor describes: the worker stops."""


class LeaseLost(RuntimeError):
    """Another worker holds a partition this worker was processing: nothing of the range is committed."""


@dataclass
class WorkerSettings:
    """How the worker runs (``risk-stream`` options)."""

    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    max_range: int = 50_000
    """Largest events range per loop and partition (a backlog is taken in ranges of this size)."""
    ingest_max_range: int = 100_000
    lease_ms: int = LEASE_MS
    idle_sleep_s: float = 0.05
    """Pause when a loop found nothing new."""
    future_bound_s: int = 300
    """Events more than this after the range's as-of time are rejected (``future_timestamp``)."""
    log_every_s: float = 10.0
    """How often the feature log is written (and the buffer range committed); Redis is written every
    loop. Fewer, larger log objects, and less work per loop."""
    lag_every_s: float = 1.0
    """How often the lag past a committed range is measured (a fresh look at the log end)."""
    hold_after_publish_s: float = 0.0
    """Fault tests only: wait this long between publishing a range's rows and committing it."""


@dataclass
class LoopResult:
    events: int = 0
    rows: int = 0
    ingested: int = 0
    ranges: list[OffsetRange] = field(default_factory=list)
    waiting: dict[str, str] = field(default_factory=dict)  # tp -> why it was not processed


@dataclass
class _Unlogged:
    """Buffer ranges of one partition written to Redis but not to the feature log yet (not committed)."""

    start: int
    end: int
    incarnation: str
    since: float  # monotonic time of the first
    batches: list[MessageBatch] = field(default_factory=list)


@dataclass(frozen=True)
class _Computed:
    """An events range computed and published, not committed yet."""

    range: OffsetRange
    events: int
    rows: int
    rejected: int
    t0: float
    phases: dict[str, float]


def make_producer(bootstrap_servers: str) -> Any:
    """A producer that waits for full acknowledgement (``KafkaResource.producer``'s settings, with
    a 1 ms linger: the worker flushes every loop)."""
    from confluent_kafka import Producer

    return Producer(
        {"bootstrap.servers": bootstrap_servers, "acks": "all", "linger.ms": 1, "client.id": "risk-stream"}
    )


class StreamWorker:
    """Consumes ``risk.events`` and ``risk.features`` continuously (module docstring)."""

    def __init__(
        self,
        bootstrap_servers: str,
        redis_url: str,
        lake: Lake,
        *,
        namespace: str = "risk",
        cluster: bool = False,
        settings: WorkerSettings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings or WorkerSettings()
        self.lake = lake
        self.namespace = namespace
        self.clock = clock
        self.groups = stream_groups(FEATURE_GROUPS)
        self.reader = KafkaRangeReader(bootstrap_servers, client_id="risk-stream")
        self.bootstrap = bootstrap_servers
        self.producer = make_producer(bootstrap_servers)
        self.redis = connect(redis_url, cluster=cluster, socket_timeout=5.0)
        self.handoff = Handoff(self.redis, namespace)
        self.state = StreamState.from_url(redis_url, self.groups, namespace=namespace, cluster=cluster)
        self.store = OnlineStore.from_url(redis_url, namespace=namespace, cluster=cluster)
        self.owned: set[str] = set()
        self._last_lag: dict[str, float] = {}
        self._lag: dict[str, Lag] = {}
        self._unlogged: dict[str, _Unlogged] = {}  # buffer rows in Redis, not in the feature log yet

    # -- lifecycle ---------------------------------------------------------------------------------
    def close(self) -> None:
        for tp in sorted(self._unlogged):  # a clean stop leaves nothing to replay
            try:
                self._flush_log(tp)
            except Exception:
                log.exception("%s: feature log not written at stop; the next worker replays it", tp)
        for tp in sorted(self.owned):
            try:
                self.handoff.release(tp, self.settings.worker_id)
            except Exception:  # closing: the lease expires anyway
                log.warning("could not release %s", tp)
        self.owned.clear()
        self.reader.close()
        self.state.close()
        self.store.close()
        self.producer.flush(5)

    def __enter__(self) -> StreamWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, stop: threading.Event | None = None, *, seconds: float | None = None) -> None:
        """Loop until ``stop`` is set (or ``seconds`` passed); raises :class:`StreamIncident`."""
        stop = stop or threading.Event()
        deadline = None if seconds is None else time.monotonic() + seconds
        failures = 0
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            try:
                result = self.step()
                failures = 0
            except IncarnationChanged as exc:
                raise StreamIncident(str(exc)) from exc
            except StreamIncident:
                raise
            except LeaseLost as exc:
                log.warning("%s", exc)
                continue
            except Exception:  # a broker/Redis/lake outage: nothing committed, try again
                failures += 1
                log.exception("loop failed (%d in a row); nothing was committed, retrying", failures)
                stop.wait(min(10.0, 0.5 * 2 ** min(failures, 5)))
                continue
            if not result.ranges:
                stop.wait(self.settings.idle_sleep_s)

    # -- one loop ----------------------------------------------------------------------------------
    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _partitions(self, topic: str) -> list[str]:
        return [tp_key(topic, p) for p in self.reader.partitions(topic)]

    def _acquire(self, tps: list[str], incarnations: dict[str, str], result: LoopResult) -> dict[str, int]:
        """Take/renew the lease of every partition; returns the committed offset of those ready."""
        ready: dict[str, int] = {}
        now = self._now_ms()
        for tp in tps:
            topic, partition = tp.rsplit("/", 1)
            holder = self.handoff.acquire(tp, self.settings.worker_id, now, self.settings.lease_ms)
            if holder:
                if tp in self.owned:
                    log.warning("%s: lease taken over by %s", tp, holder)
                self.owned.discard(tp)
                result.waiting[tp] = f"held by worker {holder}"
                continue
            if tp not in self.owned:
                log.info("%s: lease acquired by %s", tp, self.settings.worker_id)
            self.owned.add(tp)
            st = self.handoff.read(tp)
            low, end = self.reader.bounds(topic, int(partition))
            self._check_incident(tp, st, incarnations[topic], low, end)
            if st.sensor_outstanding:
                result.waiting[tp] = (
                    f"waiting for the sensor's runs up to offset {st.sensor_frontier:,} "
                    f"(succeeded up to {st.sensor_committed:,})"
                )
                continue
            ready[tp] = low if st.committed is None else st.committed
        return ready

    def _check_incident(self, tp: str, st: PartitionState, incarnation: str, low: int, end: int) -> None:
        if st.incarnation and st.incarnation != incarnation:
            raise StreamIncident(
                f"{tp}: topic incarnation changed {st.incarnation} → {incarnation}: the shared cursor "
                f"committed {st.committed or 0:,} (pending {st.pending}) on the old log; the new log holds "
                f"offsets [{low:,}, {end:,}). Records of the old log past the committed offset were never "
                f"processed from it. Nothing was read or written. To accept the new log, start the worker "
                f"once with --accept-incarnation (it starts {tp} at offset {low:,})"
            )
        if st.committed is not None and st.committed > end:
            raise StreamIncident(
                f"{tp}: offsets went backwards on incarnation {incarnation}: the shared cursor committed "
                f"{st.committed:,} but the log ends at {end:,}. Nothing was read or written"
            )

    def accept_incarnations(self) -> list[str]:
        """Point every partition whose shared cursor names another incarnation (or is past the log
        end) at the current log's first offset — an operator's decision after an incident."""
        notes = []
        for topic in (EVENTS_TOPIC, FEATURES_TOPIC):
            incarnation = self.reader.incarnation(topic, fresh=True)
            for tp in self._partitions(topic):
                st = self.handoff.read(tp)
                low, end = self.reader.bounds(topic, int(tp.rsplit("/", 1)[1]))
                stale = st.incarnation and st.incarnation != incarnation
                if stale or (st.committed is not None and st.committed > end):
                    self.handoff.reset(tp, incarnation, low)
                    notes.append(
                        f"{tp}: accepted incarnation {incarnation} (was {st.incarnation or '?'}, committed "
                        f"{st.committed or 0:,}); starting at offset {low:,} of the new log (end {end:,})"
                    )
        return notes

    def step(self) -> LoopResult:
        """One loop: process what is new on every partition held, commit, report progress."""
        result = LoopResult()
        self.reader.refresh()
        incarnations = {t: self.reader.incarnation(t, fresh=True) for t in (EVENTS_TOPIC, FEATURES_TOPIC)}
        event_tps = self._partitions(EVENTS_TOPIC)
        feature_tps = self._partitions(FEATURES_TOPIC)
        ready = self._acquire(event_tps + feature_tps, incarnations, result)
        if any(tp not in ready for tp in feature_tps):
            # Without every buffer partition, rows published now could not reach Redis before the
            # events range commits: process nothing of the events either.
            return result

        computed: list[_Computed] = []
        for tp in event_tps:
            if tp in ready:
                done = self._compute(tp, ready[tp], incarnations[EVENTS_TOPIC])
                if done is not None:
                    computed.append(done)
        if computed and self.settings.hold_after_publish_s:
            time.sleep(self.settings.hold_after_publish_s)
        # Ingest every buffer partition up to its end now (our rows are in it: publish flushed).
        self.reader.refresh()
        t_ingest = self.clock()
        for tp in feature_tps:
            result.ingested += self._ingest(tp, ready[tp], incarnations[FEATURES_TOPIC], result)
        for c in computed:
            c.phases["ingest_s"] = self.clock() - t_ingest
        for c in computed:
            inc = incarnations[EVENTS_TOPIC]
            self._commit(
                c.range, inc, STREAM_FEATURE_BUFFER, c.events, c.rows, c.rejected, c.t0, phases=c.phases
            )
            result.ranges.append(c.range)
            result.events += c.events
            result.rows += c.rows
        return result

    def _compute(
        self, tp: str, committed: int, incarnation: str
    ) -> tuple[OffsetRange, int, int, int, float] | None:
        topic, partition = tp.rsplit("/", 1)
        st = self.handoff.read(tp)
        _, end = self.reader.bounds(topic, int(partition))
        now = self._now_ms()
        if st.pending and st.pending[0] == committed:
            start, stop, as_of_ms = st.pending  # a range a previous worker did not commit: the same again
        else:
            start, stop, as_of_ms = committed, min(end, committed + self.settings.max_range), now
            if stop <= start:
                return None
            if not self.handoff.set_pending(tp, self.settings.worker_id, now, start, stop, as_of_ms):
                raise LeaseLost(f"{tp}: lease lost before range {start}-{stop}")
        t0 = self.clock()
        rng = OffsetRange(topic, int(partition), start, stop)
        batch = self.reader.read(rng, complete=True)
        self.reader.ensure_incarnation(topic, incarnation)
        t_read = self.clock()
        decoded = decode_messages(batch, EVENTS, not_after_ms=as_of_ms + self.settings.future_bound_s * 1000)

        def warm() -> WarmStartResult:
            with KafkaRangeReader(self.bootstrap, client_id="risk-stream-warm") as tail:
                return warm_start_for_batch(self.state, self.lake, tail, rng, decoded.valid)

        tiles: dict[str, Any] = {}
        rows, warmed = process_with_warm_start(decoded.valid, self.groups, self.state, warm, tiles=tiles)
        for w in warmed:
            log.warning(
                "cold stream state: warm start loaded %d archived + %d topic events since %s (committed %s)",
                w.archive_events,
                w.kafka_events,
                w.since.isoformat(),
                w.committed,
            )
        # Renew the lease before publishing: a worker that lost it publishes nothing.
        if self.handoff.acquire(tp, self.settings.worker_id, self._now_ms(), self.settings.lease_ms):
            raise LeaseLost(f"{tp}: lease lost while computing {rng.key()}; nothing published")
        t_computed = self.clock()
        # The complete tiles the range touched, straight into the online store (write-if-more-events:
        # a range computed again writes nothing new); risk-serve finishes windows from them.
        write_stream_tiles(self.store, self.groups, tiles)
        published = publish(self.producer, rows, FEATURES_TOPIC, groups=self.groups)
        phases = {
            "read_s": t_read - t0,
            "compute_s": t_computed - t_read,
            "publish_s": self.clock() - t_computed,
        }
        return _Computed(rng, decoded.valid.height, published, len(decoded.rejected), t0, phases)

    def _ingest(self, tp: str, committed: int, incarnation: str, result: LoopResult) -> int:
        """Write the partition's new buffer rows to Redis now; the feature log (and the commit of
        the buffer range) every ``log_every_s`` or ``ingest_max_range`` offsets."""
        topic, partition = tp.rsplit("/", 1)
        un = self._unlogged.get(tp)
        if un is not None and (un.start != committed or un.incarnation != incarnation):
            del self._unlogged[tp]  # the shared cursor moved under us (a lease lost): start again there
            un = None
        frontier = un.end if un is not None else committed
        _, end = self.reader.bounds(topic, int(partition))
        stop = min(end, frontier + self.settings.ingest_max_range)
        messages = 0
        if stop > frontier:
            rng = OffsetRange(topic, int(partition), frontier, stop)
            batch = self.reader.read(rng, complete=True)
            self.reader.ensure_incarnation(topic, incarnation)  # before anything is written
            write_online(batch, self.store, FEATURE_GROUPS)
            if un is None:
                un = self._unlogged[tp] = _Unlogged(committed, committed, incarnation, time.monotonic())
            un.batches.append(batch)
            un.end = stop
            result.ranges.append(rng)
            messages = len(batch)
        if un is not None and (
            time.monotonic() - un.since >= self.settings.log_every_s
            or un.end - un.start >= self.settings.ingest_max_range
        ):
            self._flush_log(tp)
        return messages

    def _flush_log(self, tp: str) -> None:
        """Write the feature log of the rows already in Redis, then commit that buffer range."""
        un = self._unlogged.pop(tp)
        topic, partition = tp.rsplit("/", 1)
        rng = OffsetRange(topic, int(partition), un.start, un.end)
        t0 = self.clock()
        batch = MessageBatch.concat(un.batches)
        ingested = ingest_batch(batch, rng, self.store, self.lake, FEATURE_GROUPS, online=False)
        self._commit(
            rng, un.incarnation, ONLINE_FEATURES, len(batch), ingested.row_count, ingested.rejected, t0,
            objects=len(ingested.log_objects),
        )  # fmt: skip

    def _commit(
        self,
        rng: OffsetRange,
        incarnation: str,
        asset: str,
        messages: int,
        rows: int,
        rejected: int,
        t0: float,
        *,
        objects: int = 0,
        phases: dict[str, float] | None = None,
    ) -> None:
        tp = tp_key(rng.topic, rng.partition)
        status, value = self.handoff.commit(
            tp, self.settings.worker_id, self._now_ms(), rng.start, rng.end, incarnation
        )
        if status == "incarnation":
            raise StreamIncident(f"{tp}: the shared cursor moved to incarnation {value} under the worker")
        if status != "ok":
            raise LeaseLost(
                f"{tp}: commit of {rng.key()} refused ({status}, committed {value}); it will be replayed"
            )
        lag = self._lag_after(rng)
        done = self.clock()
        progress.append(
            self.redis,
            self.namespace,
            progress.ProgressRecord(
                asset=asset,
                topic=rng.topic,
                partition=rng.partition,
                start=rng.start,
                end=rng.end,
                incarnation=incarnation,
                messages=messages,
                rows=rows,
                rejected=rejected,
                lag_offsets=lag.offsets,
                lag_seconds=lag.seconds,
                committed_ms=int(done * 1000),
                seconds=done - t0,
                worker=self.settings.worker_id,
                objects=objects,
                **(phases or {}),
            ),
        )

    def _lag_after(self, rng: OffsetRange) -> Lag:
        """The lag past a committed range, measured at most every ``lag_every_s`` per partition
        (in between: the last measurement)."""
        tp = tp_key(rng.topic, rng.partition)
        now = time.monotonic()
        if now - self._last_lag.get(tp, 0.0) >= self.settings.lag_every_s:
            self._last_lag[tp] = now
            try:
                with KafkaRangeReader(self.bootstrap, client_id="risk-stream-lag") as fresh:
                    self._lag[tp] = fresh.lag_after(rng, self._now_ms())
            except Exception:  # the output is committed; an unknown lag is reported as -1
                self._lag[tp] = Lag(-1, -1.0)
        return self._lag.get(tp, Lag(-1, -1.0))
