"""Where generated records go: the lake (``history``) or Kafka (``replay``, ``live``).

All three stream chunk by chunk in bounded memory. They rely on the generator's watermark property:
records from the chunk starting at ``t`` have every time key ``>= t``, so after that chunk all keys
``< t + chunk`` are final and can be written (archive hours, ground-truth days) or produced (messages
in ingest-time order).

Records beyond the simulated range (``history``): events ingested after the grace period and labels
that arrive days to weeks later have archive hours after ``cfg.end``. By default (``beyond_end=
"keep"``) they are written to those later hours too, so the lake holds every generated record and
row counts equal the generated counts; ``"drop"`` keeps only archive hours inside the range (the
archive as it would look at ``cfg.end``). Either way a run owns every partition it writes: a later
run over an adjacent range replaces, not merges, the hours both touch.
``replay`` produces only messages ingested before ``cfg.end``: it stands in for the live traffic of
that window, and later arrivals belong to a later window.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import polars as pl

from risk_assets.ingest.archive_format import archive_part_path, to_archive_frame
from risk_assets.ingest.partitioning import archive_hour_expr
from risk_assets.lake import Lake, hive_day_path
from risk_assets.names import EVENTS_TOPIC, LABELS_TOPIC, RAW_EVENTS, RAW_LABELS
from risk_assets.simulator.config import SimConfig
from risk_assets.simulator.drift import (
    assigned_population,
    drift_manifest,
    merge_population,
    observed_population,
)
from risk_assets.simulator.encoding import MANIFEST_SCHEMA, MessageBatch, event_batch, label_batch
from risk_assets.simulator.generator import SimulatedData, generate_chunk, iter_chunks
from risk_assets.simulator.population import build_population

GROUND_TRUTH = "sim_ground_truth"
# Ground truth of the drift scenarios (drift.py): one file each per history run, replaced by the next.
DRIFT_SCENARIOS_PATH = "sim_drift/scenarios.parquet"
DRIFT_POPULATION_PATH = "sim_drift/population.parquet"
Progress = Callable[[str], None]
_HOUR = "_archive_hour"


def _quiet(_: str) -> None:
    return None


@dataclass
class HistoryStats:
    """What ``write_history`` wrote."""

    events: int = 0
    labels: int = 0
    ground_truth: int = 0
    fraud_events: int = 0
    partitions: int = 0
    bytes: int = 0
    dropped_beyond_end: int = 0
    seconds: float = 0.0  # wall time of the whole run
    write_seconds: float = 0.0  # of which flushing partitions (generation overlaps on threads)
    hours_written: list[datetime] = field(default_factory=list)


class _HourlyPartitioner:
    """Buffers records until their archive hour is final, then writes each hour once."""

    def __init__(self, lake: Lake, dataset: str, stats: HistoryStats, end: datetime | None) -> None:
        self.lake, self.dataset, self.stats, self.end = lake, dataset, stats, end
        self.pending: list[pl.DataFrame] = []

    def add(self, frame: pl.DataFrame, hour: pl.Expr) -> None:
        frame = frame.with_columns(hour.alias(_HOUR))
        if self.end is not None:
            beyond = frame.filter(pl.col(_HOUR) >= self.end)
            self.stats.dropped_beyond_end += beyond.height
            frame = frame.filter(pl.col(_HOUR) < self.end)
        self.pending.append(frame)

    def flush(self, before: datetime | None) -> int:
        """Write every hour ``< before`` (all when ``None``); returns rows written."""
        if not self.pending:
            return 0
        frame = pl.concat(self.pending)
        ready = frame if before is None else frame.filter(pl.col(_HOUR) < before)
        self.pending = [] if before is None else [frame.filter(pl.col(_HOUR) >= before)]
        for (hour,), part in sorted(ready.partition_by(_HOUR, as_dict=True).items()):
            path = archive_part_path(self.dataset, hour)
            self.stats.bytes += self.lake.write_parquet(to_archive_frame(part, self.dataset), path)
            self.stats.partitions += 1
            if self.dataset == RAW_EVENTS:
                self.stats.hours_written.append(hour)
        return ready.height


class _DailyGroundTruth:
    """Ground truth by event day: ``sim_ground_truth/dt=YYYY-MM-DD/part-00000.parquet``."""

    def __init__(self, lake: Lake, stats: HistoryStats) -> None:
        self.lake, self.stats = lake, stats
        self.pending: list[pl.DataFrame] = []

    def add(self, frame: pl.DataFrame) -> None:
        self.pending.append(frame.with_columns(pl.col("event_ts").dt.truncate("1d").alias("_day")))

    def flush(self, before: datetime | None) -> None:
        if not self.pending:
            return
        frame = pl.concat(self.pending)
        complete = pl.col("_day") + pl.duration(days=1) <= before if before is not None else pl.lit(True)
        ready = frame.filter(complete)
        self.pending = [frame.filter(~complete)] if before is not None else []
        for (day,), part in sorted(ready.partition_by("_day", as_dict=True).items()):
            out = part.drop("_day").sort("event_ts", "event_id")
            self.stats.bytes += self.lake.write_parquet(
                out, f"{hive_day_path(GROUND_TRUTH, day)}/part-00000.parquet"
            )
            self.stats.partitions += 1


def write_history(
    cfg: SimConfig,
    lake: Lake,
    *,
    beyond_end: Literal["keep", "drop"] = "keep",
    workers: int = 2,
    progress: Progress = _quiet,
) -> HistoryStats:
    """Generate ``cfg``'s range and write ``raw_events``, ``raw_labels`` and the ground truth
    (``sim_ground_truth/`` by event day; ``sim_drift/`` scenarios and population, empty without
    drift scenarios, so that a lake never keeps the drift ground truth of an earlier run)."""
    stats = HistoryStats()
    end = cfg.end if beyond_end == "drop" else None
    events = _HourlyPartitioner(lake, RAW_EVENTS, stats, end)
    labels = _HourlyPartitioner(lake, RAW_LABELS, stats, end)
    truth = _DailyGroundTruth(lake, stats)
    pop = build_population(cfg)
    t0 = time.perf_counter()
    last = t0
    chunks = iter_chunks(cfg, pop, workers)
    drift_entities = [assigned_population(cfg.seed, cfg.drift_scenarios, pop)]
    for start_ms, data in chunks:
        if cfg.drift_scenarios:
            drift_entities.append(observed_population(data.events, data.ground_truth))
        stats.events += data.events.height
        stats.labels += data.labels.height
        stats.ground_truth += data.ground_truth.height
        stats.fraud_events += int(data.ground_truth["is_fraud"].sum())
        events.add(data.events, archive_hour_expr())
        labels.add(data.labels, archive_hour_expr("label_ts", "ingest_ts"))
        truth.add(data.ground_truth)
        next_ms = start_ms + cfg.chunk_ms
        if next_ms % 86_400_000 == 0 or next_ms == cfg.end_ms:  # flush once per simulated day
            w0 = time.perf_counter()
            watermark = datetime.fromtimestamp(next_ms / 1000, UTC)
            events.flush(watermark)
            labels.flush(watermark)
            truth.flush(watermark)
            stats.write_seconds += time.perf_counter() - w0
            now = time.perf_counter()
            progress(
                f"history: up to {watermark:%Y-%m-%d %H:%M} | {stats.events:,} events "
                f"({stats.fraud_events:,} fraud), {stats.labels:,} labels | "
                f"{stats.events / max(now - t0, 1e-9):,.0f} ev/s overall, last step {now - last:.1f}s"
            )
            last = now
    w0 = time.perf_counter()
    events.flush(None)
    labels.flush(None)
    truth.flush(None)
    stats.bytes += lake.write_parquet(drift_manifest(cfg.drift_scenarios), DRIFT_SCENARIOS_PATH)
    stats.bytes += lake.write_parquet(merge_population(drift_entities), DRIFT_POPULATION_PATH)
    stats.write_seconds += time.perf_counter() - w0
    stats.seconds = time.perf_counter() - t0
    return stats


# --- Kafka -----------------------------------------------------------------------------------------
@dataclass
class ProduceStats:
    """What a Kafka run produced."""

    events: int = 0
    labels: int = 0
    bad: int = 0
    delivery_errors: int = 0
    skipped: int = 0  # generated but outside the produced window
    seconds: float = 0.0
    manifest: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=MANIFEST_SCHEMA))


def make_producer(bootstrap_servers: str, **overrides: Any) -> Any:
    """A confluent-kafka producer tuned for throughput (batching, no compression: tansu-safe)."""
    from confluent_kafka import Producer

    conf = {
        "bootstrap.servers": bootstrap_servers,
        "linger.ms": 20,
        "batch.num.messages": 10_000,
        "queue.buffering.max.messages": 500_000,
        "enable.idempotence": False,
        "acks": "all",
    }
    conf.update(overrides)
    return Producer(conf)


class _Sender:
    """Produces batches, retrying on a full local queue and counting delivery errors."""

    def __init__(self, producer: Any, stats: ProduceStats, set_timestamps: bool) -> None:
        self.producer, self.stats, self.set_timestamps = producer, stats, set_timestamps

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self.stats.delivery_errors += 1

    def send(self, topic: str, batch: MessageBatch, start: int = 0, stop: int | None = None) -> int:
        produce, poll = self.producer.produce, self.producer.poll
        stop = len(batch) if stop is None else stop
        for i in range(start, stop):
            kwargs = {"timestamp": batch.timestamps[i]} if self.set_timestamps else {}
            while True:
                try:
                    produce(
                        topic,
                        value=batch.values[i],
                        key=batch.keys[i],
                        on_delivery=self._on_delivery,
                        **kwargs,
                    )
                    break
                except BufferError:
                    poll(0.05)
            if i % 5_000 == 0:
                poll(0)
        return stop - start


def _upto(timestamps: list[int], ts: int) -> int:
    """Number of leading messages of a ts-sorted batch with timestamp ``<= ts``."""
    return bisect.bisect_right(timestamps, ts)


def _ordered_messages(
    cfg: SimConfig, chunks: Iterator[tuple[int, SimulatedData]], bad_rate: float, stats: ProduceStats
) -> Iterator[tuple[MessageBatch, MessageBatch]]:
    """(events, labels) batches in ingest order, one per chunk: the messages ingested in
    ``[chunk start, chunk end)``, final once that chunk is generated. Whatever is still pending when
    ``chunks`` ends (ingested after the last chunk) is counted in ``stats.skipped``."""
    pending_events: list[pl.DataFrame] = []
    pending_labels: list[pl.DataFrame] = []
    for start_ms, data in chunks:
        watermark = datetime.fromtimestamp((start_ms + cfg.chunk_ms) / 1000, UTC)
        ev, lb = pl.concat([*pending_events, data.events]), pl.concat([*pending_labels, data.labels])
        pending_events = [ev.filter(pl.col("ingest_ts") >= watermark)]
        pending_labels = [lb.filter(pl.col("ingest_ts") >= watermark)]
        yield (
            event_batch(ev.filter(pl.col("ingest_ts") < watermark), bad_rate, cfg.seed, start_ms // 60_000),
            label_batch(lb.filter(pl.col("ingest_ts") < watermark)),
        )
    stats.skipped += sum(f.height for f in pending_events + pending_labels)


def replay(
    cfg: SimConfig,
    producer: Any,
    *,
    bad_rate: float = 0.0,
    events_topic: str = EVENTS_TOPIC,
    labels_topic: str = LABELS_TOPIC,
    workers: int = 2,
    progress: Progress = _quiet,
) -> ProduceStats:
    """Produce the range as fast as possible, Kafka timestamp = simulated ``ingest_ts``, in ingest order.

    Only messages ingested inside ``[cfg.start, cfg.end)`` are produced (later ones are counted in
    ``skipped``). Bad input, if any, goes to the events topic and is listed in ``stats.manifest``
    (``stream_index`` = position among the produced event messages).
    """
    stats = ProduceStats()
    sender = _Sender(producer, stats, set_timestamps=True)
    manifests = []
    t0 = time.perf_counter()
    chunks = iter_chunks(cfg, build_population(cfg), workers)
    for events, labels in _ordered_messages(cfg, chunks, bad_rate, stats):
        if events.manifest.height:
            manifests.append(events.manifest.with_columns(pl.col("stream_index") + stats.events))
        stats.events += sender.send(events_topic, events)
        stats.labels += sender.send(labels_topic, labels)
        stats.bad += events.manifest.height
        if events.timestamps:
            el = time.perf_counter() - t0
            progress(
                f"replay: up to {datetime.fromtimestamp(events.timestamps[-1] / 1000, UTC):%Y-%m-%d %H:%M} | "
                f"{stats.events:,} events, {stats.labels:,} labels, {stats.bad:,} bad | "
                f"{stats.events / el:,.0f} msg/s"
            )
    stats.delivery_errors += producer.flush(60)
    stats.seconds = time.perf_counter() - t0
    if manifests:
        stats.manifest = pl.concat(manifests)
    return stats


def live(
    cfg: SimConfig,
    producer: Any,
    *,
    rate: float,
    seconds: float | None = None,
    bad_rate: float = 0.0,
    events_topic: str = EVENTS_TOPIC,
    labels_topic: str = LABELS_TOPIC,
    progress: Progress = _quiet,
    clock: Callable[[], float] = time.time,
) -> ProduceStats:
    """Produce at ``rate`` events/s on average, paced by the wall clock, for ``seconds`` (or forever).

    Simulated time is wall time: one-minute chunks (volume ``rate * 60`` legit events each) are
    generated one minute ahead on a background thread, and every message is produced when the clock
    reaches its simulated ``ingest_ts``; Kafka stamps it at produce time. Messages due before the
    start are skipped. ``cfg.start`` only anchors ``drift_day``; drift-scenario windows are absolute
    times, so give them in wall-clock time to see them live.
    """
    cfg = cfg.with_(chunk_minutes=1)
    pop = build_population(cfg)
    stats = ProduceStats()
    sender = _Sender(producer, stats, set_timestamps=False)
    start_ms = int(clock() * 1000)
    deadline_ms = None if seconds is None else start_ms + int(seconds * 1000)

    def minutes() -> Iterator[tuple[int, SimulatedData]]:
        m = start_ms - start_ms % 60_000
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="risk-sim-live") as pool:
            fut = pool.submit(generate_chunk, cfg, pop, m, rate * 60.0)
            while True:
                data = fut.result()
                fut = pool.submit(generate_chunk, cfg, pop, m + 60_000, rate * 60.0)
                yield m, data
                m += 60_000

    manifests = []
    last_report = start_ms
    done = False
    minute_chunks = minutes()
    for events, labels in _ordered_messages(cfg, minute_chunks, bad_rate, stats):
        e_pos, l_pos = _upto(events.timestamps, start_ms - 1), _upto(labels.timestamps, start_ms - 1)
        stats.skipped += e_pos + l_pos
        e_first, produced_before = e_pos, stats.events
        while e_pos < len(events) or l_pos < len(labels):
            now = int(clock() * 1000)
            if deadline_ms is not None and now >= deadline_ms:
                done = True
                break
            e_hi, l_hi = _upto(events.timestamps, now), _upto(labels.timestamps, now)
            if e_hi > e_pos:
                stats.events += sender.send(events_topic, events, e_pos, e_hi)
                e_pos = e_hi
            if l_hi > l_pos:
                stats.labels += sender.send(labels_topic, labels, l_pos, l_hi)
                l_pos = l_hi
            producer.poll(0)
            if now - last_report >= 10_000:
                el = (now - start_ms) / 1000
                progress(
                    f"live: {el:,.0f}s | {stats.events:,} events ({stats.events / el:,.0f}/s), "
                    f"{stats.labels:,} labels"
                )
                last_report = now
            upcoming = [
                t[i] for t, i in ((events.timestamps, e_pos), (labels.timestamps, l_pos)) if i < len(t)
            ]
            if upcoming:
                time.sleep(min(max(min(upcoming) - int(clock() * 1000), 1), 50) / 1000)
        m = events.manifest.filter((pl.col("stream_index") >= e_first) & (pl.col("stream_index") < e_pos))
        if m.height:
            manifests.append(m.with_columns(pl.col("stream_index") - e_first + produced_before))
            stats.bad += m.height
        if done:
            break
    minute_chunks.close()  # stops the background generator thread
    stats.delivery_errors += producer.flush(30)
    stats.seconds = (int(clock() * 1000) - start_ms) / 1000
    if manifests:
        stats.manifest = pl.concat(manifests)
    return stats
