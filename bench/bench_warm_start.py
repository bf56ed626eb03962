"""Cost of a stream-state warm start (the recovery after a Redis loss) and of the epoch guard.

Usage::

    .venv/bin/python bench/bench_warm_start.py [--hours 26] [--events-per-day 1000000] [--users 50000]

Starts its own Redis through ``risk_assets.stack.launcher`` on a free port (stopped at the end) and
writes ``--hours`` of simulated history into a temporary lake archive with the simulator's archive
writer. Then, against the same Redis and in the same run:

* **baseline**: ``StreamState.add`` of the same events already in memory (what loading the state
  costs when the events are handed over — the Redis-side floor of any warm start);
* **warm start**: ``warm_start`` from the archive (``read_archive`` per 6 hours, filter, ``add``),
  then the epoch commit — what a micro-batch does when it finds the state cold;
* **epoch guard**: ``process_events`` on 10,000-event micro-batches against the warm state, whose
  pipeline carries the two marker reads, vs the same pipeline's cost reported per batch.

Prints wall and CPU seconds, events/s, the ratio warm start / baseline and the load average; the
machine is shared, so ratios measured in the same run are the figure to keep.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from risk_assets.features.groups import FEATURE_GROUPS
from risk_assets.features.stream import process_events
from risk_assets.features.stream_state import StreamState, stream_groups
from risk_assets.features.stream_warm_start import warm_start
from risk_assets.lake import Lake
from risk_assets.simulator.config import SimConfig
from risk_assets.simulator.generator import generate
from risk_assets.simulator.writers import write_history
from risk_assets.stack import launcher


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _redis_cpu(state: StreamState) -> float:
    info = state.client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=int, default=26)
    ap.add_argument("--events-per-day", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=50_000)
    args = ap.parse_args()
    print(f"load average at start: {os.getloadavg()}")
    work = Path(tempfile.mkdtemp(prefix="bench-warm-"))
    for k in ("REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS"):
        os.environ.pop(k, None)
    config = launcher.StackConfig(
        state_dir=work / "stack", redis_port=launcher.free_port(), kafka_port=launcher.free_port()
    )
    env = launcher.up(config)
    try:
        start = datetime(2026, 11, 1, tzinfo=UTC)
        cfg = SimConfig(start=start, hours=args.hours, events_per_day=args.events_per_day, users=args.users)
        lake = Lake(str(work / "lake"))
        t = time.perf_counter()
        write_history(cfg, lake)
        events = generate(cfg, workers=2).events
        print(
            f"history: {events.height:,} events over {args.hours} h archived "
            f"in {time.perf_counter() - t:.1f} s"
        )
        groups = stream_groups(FEATURE_GROUPS)

        base = StreamState.from_url(env["REDIS_URL"], groups, namespace="baseline")
        w0, c0, r0 = time.perf_counter(), _cpu(), _redis_cpu(base)
        members = sum(base.add(events.slice(i, 200_000)) for i in range(0, events.height, 200_000))
        b_wall, b_cpu, b_redis = time.perf_counter() - w0, _cpu() - c0, _redis_cpu(base) - r0
        print(
            f"baseline  add from memory: {members:,} members in {b_wall:.2f} s wall, "
            f"{b_cpu:.2f} s client CPU, "
            f"{b_redis:.2f} s Redis CPU ({events.height / b_wall:,.0f} events/s)"
        )

        state = StreamState.from_url(env["REDIS_URL"], groups, namespace="warm")
        end = cfg.end
        since = end - timedelta(milliseconds=state.retention_ms)
        w0, c0, r0 = time.perf_counter(), _cpu(), _redis_cpu(state)
        result = warm_start(state, lake, since=since, until=end - timedelta(hours=1), reader=None)
        w_wall, w_cpu, w_redis = time.perf_counter() - w0, _cpu() - c0, _redis_cpu(state) - r0
        print(
            f"warm start from the archive: {result.archive_events:,} events of {result.archive_hours} hours, "
            f"{result.members:,} members, committed={result.committed} in {w_wall:.2f} s wall, "
            f"{w_cpu:.2f} s client CPU, {w_redis:.2f} s Redis CPU "
            f"({result.archive_events / w_wall:,.0f} events/s)"
        )
        print(
            f"ratio warm start / baseline: wall {w_wall / b_wall:.2f}x, client CPU {w_cpu / b_cpu:.2f}x, "
            f"per event {w_wall / max(1, result.archive_events) * 1e6:.2f} µs vs "
            f"{b_wall / events.height * 1e6:.2f} µs"
        )

        # Micro-batches on the warm state: the guard is two GETs inside the batch's pipeline. The
        # same batches alternately with and without it (the private pipeline runner, for the bench).
        live = events.filter(pl.col("ingest_ts") >= end - timedelta(hours=1)).head(60_000)
        guarded, bare = [], []
        for rep in range(3):
            for i in range(0, live.height, 10_000):
                touched = state._touch(live.slice(i, 10_000), read=True)
                for guard, out in (
                    ((True, guarded), (False, bare)) if rep % 2 == 0 else ((False, bare), (True, guarded))
                ):
                    t = time.perf_counter()
                    state._run(touched, read=True, guard=guard)
                    out.append(time.perf_counter() - t)
        med = lambda xs: sorted(xs)[len(xs) // 2] * 1000  # noqa: E731
        print(
            f"state pipeline of a 10,000-event micro-batch: guarded median {med(guarded):.1f} ms, "
            f"unguarded {med(bare):.1f} ms ({len(guarded)} each, alternating)"
        )
        t = time.perf_counter()
        process_events(live.slice(0, 10_000), None, state)
        print(
            f"process_events, one guarded 10,000-event micro-batch: {(time.perf_counter() - t) * 1000:.0f} ms"
        )
        base.close()
        state.close()
    finally:
        launcher.down(config)
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
