"""`make demo`: the longest chain that exists, end to end, on the local stack.

1. start the stack (real Redis + Kafka-protocol broker) with ``risk-stack``;
2. replay simulated exchange traffic (events, labels, a little bad input) into the broker, with
   Kafka timestamps = simulated arrival times;
3. run the ``raw_archive_job`` for those hours on the Dagster instance in ``DAGSTER_HOME`` (so the
   runs show up in ``make dev``'s UI);
4. print what was produced and where.

Re-running is safe: if the broker already holds the demo's traffic it is not produced again, and
archiving an hour again replaces it with the same bytes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime, timedelta

import dagster as dg
import polars as pl

from risk_assets.events.schema import EVENTS_TOPIC
from risk_assets.ingest.archive import EVENTS, LABELS, dead_letter_part_path
from risk_assets.ingest.archive_format import archive_part_path
from risk_assets.ingest.kafka_reader import KafkaRangeReader
from risk_assets.lake import Lake
from risk_assets.simulator.config import SimConfig
from risk_assets.simulator.writers import make_producer, replay
from risk_assets.stack import launcher

DEMO_START = datetime(2026, 11, 1, tzinfo=UTC)
PARTITION_FMT = "%Y-%m-%d-%H:%M"


def step(msg: str) -> None:
    print(f"==> {msg}", flush=True)


def info(msg: str) -> None:
    print(f"    {msg}", flush=True)


def _events_in_broker(bootstrap: str) -> int:
    with KafkaRangeReader(bootstrap, timeout_s=10) as reader:
        return sum(reader.bounds(EVENTS_TOPIC, p)[1] for p in reader.partitions(EVENTS_TOPIC))


def run(hours: int, events_per_day: int, bad_rate: float, seed: int) -> int:
    t_all = time.perf_counter()
    step("starting the local stack (risk-stack up)")
    stack_cfg = launcher.StackConfig(state_dir=launcher.default_stack_dir())
    endpoints = launcher.up(stack_cfg)
    for k in ("REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS"):
        info(f"{k}={endpoints[k]}")
    os.environ.update({k: v for k, v in endpoints.items() if k in ("REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS")})
    lake_url = os.environ.setdefault("RISK_LAKE_URL", str(launcher.default_stack_dir().parent / "lake"))
    bootstrap = endpoints["KAFKA_BOOTSTRAP_SERVERS"]

    sim = SimConfig(seed=seed, start=DEMO_START, hours=hours, events_per_day=events_per_day)
    step(f"simulating {hours} h of exchange traffic from {DEMO_START:%Y-%m-%d %H:%M}Z into the broker")
    already = _events_in_broker(bootstrap)
    if already:
        info(f"the broker already holds {already:,} event messages: not producing them again")
    else:
        producer = make_producer(bootstrap)
        stats = replay(sim, producer, bad_rate=bad_rate, progress=lambda m: info(m))
        if stats.delivery_errors:
            print(f"demo: {stats.delivery_errors} messages were not delivered", file=sys.stderr)
            return 1
        info(
            f"produced {stats.events:,} event messages ({stats.bad:,} deliberately bad) and "
            f"{stats.labels:,} labels in {stats.seconds:.1f}s ({stats.events / stats.seconds:,.0f} msg/s)"
        )

    step(f"archiving hours {sim.start:%Y-%m-%d %H}:00 .. {sim.end - timedelta(hours=1):%H}:00 with Dagster")
    from risk_assets.definitions import defs  # after the environment is set: resources read EnvVars

    instance = dg.DagsterInstance.get()
    t0 = time.perf_counter()
    result = defs.resolve_job_def("raw_archive_job").execute_in_process(
        instance=instance,
        tags={
            "dagster/asset_partition_range_start": sim.start.strftime(PARTITION_FMT),
            "dagster/asset_partition_range_end": (sim.end - timedelta(hours=1)).strftime(PARTITION_FMT),
            "risk/source": "make-demo",
        },
        # The run's full log is in the UI; keep the terminal to the demo's own progress lines.
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        raise_on_error=False,
    )
    if not result.success:
        print("demo: the archive run failed; see the run in the UI (make dev)", file=sys.stderr)
        return 1
    info(f"run {result.run_id} succeeded in {time.perf_counter() - t0:.1f}s")

    lake = Lake(lake_url)
    hours_list = [sim.start + timedelta(hours=i) for i in range(hours)]
    events = pl.concat(
        [pl.read_parquet(lake.read_bytes(archive_part_path(EVENTS.dataset, h))) for h in hours_list]
    )
    labels = pl.concat(
        [pl.read_parquet(lake.read_bytes(archive_part_path(LABELS.dataset, h))) for h in hours_list]
    )
    dead = pl.concat([pl.read_parquet(lake.read_bytes(dead_letter_part_path(EVENTS, h))) for h in hours_list])

    step("summary")
    info(f"raw_events:   {events.height:,} events in {hours} hourly partitions")
    for row in events.group_by("event_type").len().sort("len", descending=True).iter_rows():
        info(f"    {row[0]:<16} {row[1]:>9,}")
    info(f"raw_labels:   {labels.height:,} fraud labels known within these hours")
    reasons = ", ".join(f"{r} {n}" for r, n in dead.group_by("reason").len().sort("reason").iter_rows())
    info(f"dead letters: {dead.height:,} ({reasons or 'none'})")
    info(f"lake:         {lake.uri(EVENTS.dataset)}/dt=…/hour=…/part-00000.parquet")
    info(f"Dagster home: {os.environ.get('DAGSTER_HOME', '(ephemeral)')}")
    info("UI:           make dev  →  http://127.0.0.1:3000  (assets raw_events, raw_labels; the run above)")
    info(f"done in {time.perf_counter() - t_all:.1f}s; stop the stack with `make stack-down`")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="risk-demo", description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=int, default=6)
    parser.add_argument("--events-per-day", type=int, default=1_000_000)
    parser.add_argument("--bad-rate", type=float, default=0.002)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    try:
        return run(args.hours, args.events_per_day, args.bad_rate, args.seed)
    except launcher.StackError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
