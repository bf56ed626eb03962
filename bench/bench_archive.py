"""Archive throughput: Kafka → validated hourly Parquet, events/s, on this machine.

Starts its own broker (risk-stack on free ports, or uses KAFKA_BOOTSTRAP_SERVERS), replays N hours of
simulated traffic, then times each stage of the archive path on the same data:

* read:      exact offset ranges from the broker, as the asset does: per-hour ranges found by the
             median-probe search (``LogPositions.read_ranges``), records read with ``complete=True``
* read (time window): the former single time-window read (``read_time_window``), for comparison
* build:     validation + lateness policy + positional clock_skew rule + dedup + layout
* write:     zstd Parquet objects into a local lake (write_archive)
* end-to-end: the three together, as the asset does

Baseline, measured in the same run: a naive archiver that json-decodes each message into a dict,
validates with msgspec per message, and builds the frame from the list of dicts.

    .venv/bin/python bench/bench_archive.py [--hours 6] [--events-per-day 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import msgspec
import polars as pl

from risk_assets.events.schema import RiskEvent
from risk_assets.ingest.archive import EVENTS, LogPositions, build_archive, read_hours, write_archive
from risk_assets.ingest.kafka_reader import PROBE_RECORDS, KafkaRangeReader, MessageBatch
from risk_assets.ingest.partitioning import ingest_window
from risk_assets.lake import Lake
from risk_assets.names import EVENTS_TOPIC
from risk_assets.simulator.config import DEFAULT_START, SimConfig
from risk_assets.simulator.writers import make_producer, replay
from risk_assets.stack import launcher


def _ms(ts) -> int:
    return int(ts.timestamp() * 1000)


def naive_archive(values: list[bytes]) -> pl.DataFrame:
    decode = msgspec.json.Decoder(RiskEvent).decode
    rows = []
    for raw in values:
        try:
            decode(raw)
        except (msgspec.ValidationError, msgspec.DecodeError):
            continue
        rows.append(json.loads(raw))
    return pl.DataFrame(rows, infer_schema_length=None)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hours", type=int, default=6)
    ap.add_argument("--events-per-day", type=int, default=1_000_000)
    ap.add_argument("--partitions", type=int, default=1, help="partitions of the events topic")
    ap.add_argument(
        "--before",
        action="store_true",
        help="also time the former read (per-hour searches, partitions in turn)",
    )
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        cfg = None
        if not external:
            cfg = launcher.StackConfig(
                state_dir=Path(tmp) / "stack",
                redis_port=launcher.free_port(),
                kafka_port=launcher.free_port(),
                topic_partitions=args.partitions,
            )
            bootstrap = launcher.up(cfg)["KAFKA_BOOTSTRAP_SERVERS"]
        else:
            bootstrap = external
        try:
            sim = SimConfig(start=DEFAULT_START, hours=args.hours, events_per_day=args.events_per_day)
            stats = replay(sim, make_producer(bootstrap), bad_rate=0.002)
            print(f"replayed {stats.events:,} event messages in {stats.seconds:.1f}s")
            hours = [sim.start + timedelta(hours=i) for i in range(args.hours)]
            start, end = ingest_window(hours[0], hours[-1])

            t0 = time.perf_counter()
            with KafkaRangeReader(bootstrap) as reader:
                window, _ = reader.read_time_window(EVENTS_TOPIC, _ms(start), _ms(end))
            t_window = time.perf_counter() - t0
            if args.before:
                reader = KafkaRangeReader(bootstrap)
                t0 = time.perf_counter()
                positions = LogPositions(EVENTS_TOPIC, lambda p, t: reader.boundary(EVENTS_TOPIC, p, t))
                ranges = positions.read_ranges(reader.partitions(EVENTS_TOPIC), hours)
                old_search = time.perf_counter() - t0
                before = MessageBatch.concat([reader.read(r, complete=True) for r in ranges])
                old_read = time.perf_counter() - t0
                t0 = time.perf_counter()
                old_result = build_archive(before, EVENTS, hours, positions)
                old_build = time.perf_counter() - t0
                reader.close()
                print(
                    f"BEFORE (per-hour searches on the broker, partitions one by one): read {old_read:.2f}s "
                    f"(offset search {old_search:.2f}s), build {old_build:.2f}s, {len(before):,} messages"
                )
            reader = KafkaRangeReader(bootstrap)
            t0 = time.perf_counter()
            positions = LogPositions(EVENTS_TOPIC, lambda p, t: reader.boundary(EVENTS_TOPIC, p, t))
            partitions = reader.partitions(EVENTS_TOPIC)
            first, last = positions.hour_times(hours[0])[0], positions.hour_times(hours[-1])[1]
            # the two searches per partition read_hours makes (in parallel), timed apart
            reader.boundaries(EVENTS_TOPIC, {p: [first, last] for p in partitions})
            t_search = time.perf_counter() - t0
            batch, ranges = read_hours(
                positions,
                partitions,
                hours,
                lambda rs: reader.read_many(rs, complete=True, margin=2 * PROBE_RECORDS),
                lambda wanted: reader.boundaries(EVENTS_TOPIC, wanted),
            )
            t_read = time.perf_counter() - t0
            t0 = time.perf_counter()
            result = build_archive(batch, EVENTS, hours, positions)
            t_build = time.perf_counter() - t0
            if args.before:
                same = all(
                    result.records[h].equals(old_result.records[h])
                    and result.dead_letters[h].equals(old_result.dead_letters[h])
                    for h in hours
                )
                print(f"same archive contents as BEFORE: {same}")
            reader.close()
            t0 = time.perf_counter()
            write_archive(Lake(str(Path(tmp) / "lake")), EVENTS, result)
            t_write = time.perf_counter() - t0
            n = len(batch)
            total = t_read + t_build + t_write

            t0 = time.perf_counter()
            naive = naive_archive(batch.values)
            t_naive = time.perf_counter() - t0

            print(
                f"messages: {n:,} ({result.record_count:,} records, "
                f"{result.dead_letter_count:,} dead letters)"
            )
            print(
                f"read   {t_read:6.2f}s  {n / t_read:12,.0f} msg/s  (offset search {t_search:.2f}s, "
                f"{len(partitions)} partition(s) read at once)"
            )
            print(f"read (time window, before issue 9) {t_window:6.2f}s  {len(window):,} messages")
            print(f"build  {t_build:6.2f}s  {n / t_build:12,.0f} msg/s")
            print(f"write  {t_write:6.2f}s  {n / t_write:12,.0f} msg/s")
            print(f"end-to-end archive: {n / total:,.0f} events/s (goal ≥ 200,000)")
            print(f"load average: {os.getloadavg()}")
            print(
                f"baseline build (per-message dicts → frame, {naive.height:,} rows): {n / t_naive:,.0f} msg/s"
            )
            print(f"ratio build vs baseline: {t_naive / t_build:.1f}x")
        finally:
            if cfg is not None:
                launcher.down(cfg)


if __name__ == "__main__":
    main()
