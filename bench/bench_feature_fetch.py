"""CPU per scored event of risk-serve's feature step: tiles finished at the event's time (v2) vs the
snapshot rows of v1, in one process, one event at a time (what a single request does).

Usage::

    .venv/bin/python bench/bench_feature_fetch.py [--users 20000] [--events 3000]

Starts its own Redis (+ broker) on free ports, preloads the same data as ``bench_serving.py``
(snapshot rows of every entity the events involve, tiles of the whole simulation), builds the
plan of the full starter set (every online feature of every group), then per event measures the
process CPU time (``time.process_time``) and wall time of

* **rows (v1)**: ``OnlineStore.read`` (blocking ``MGET``) + the packed rows into the vector — the
  feature step before the tiles (the baseline, measured in the same run);
* **tiles, async (v2)**: ``FeatureFetcher.matrix_async`` — one pipelined ``HGETALL`` through
  ``redis.asyncio`` and ``tiles.merge_at`` per group at the event's time — what risk-serve runs;
* **tiles, blocking**: ``FeatureFetcher.matrix`` (the shadow thread's path).

Prints µs per event and the ratio against the rows, and the load average: CPU time is far less
sensitive to other load on the machine than latency, but not immune (cache, frequency).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--events", type=int, default=3000)
    args = ap.parse_args()

    from bench_serving import preload_online, simulate_events

    from risk_assets.events.schema import RiskEvent
    from risk_assets.features.groups import FEATURE_GROUPS
    from risk_assets.features.online_store import OnlineStore
    from risk_assets.models.training_set import model_feature_columns
    from risk_assets.serving.feature_fetch import FeatureFetcher, RedisBreaker, build_plan
    from risk_assets.serving.service_metrics import ServiceMetrics
    from risk_assets.stack import launcher

    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start", flush=True)
    events, payloads, sim = simulate_events(args.users, args.events)
    decode = msgspec.json.Decoder(RiskEvent).decode
    evs = [decode(p) for p in payloads]
    work = Path(tempfile.mkdtemp(prefix="bench-fetch-"))
    config = launcher.StackConfig(
        state_dir=work / "stack", redis_port=launcher.free_port(), kafka_port=launcher.free_port()
    )
    saved = {k: os.environ.pop(k) for k in ("REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS") if k in os.environ}
    try:
        endpoints = launcher.up(config)
        os.environ.update(saved)
        store = OnlineStore.from_url(endpoints["REDIS_URL"], namespace="risk", socket_timeout_s=1.0)
        current = {g.name: g.version for g in FEATURE_GROUPS}
        rows, tiles = preload_online(store, events, sim, [current])
        store.mark_complete()
        print(f"{len(evs)} events; {rows} rows and {tiles} tiles preloaded", flush=True)
        plan = build_plan(model_feature_columns(FEATURE_GROUPS))
        metrics = ServiceMetrics()
        breaker = RedisBreaker(store, metrics, 5.0)
        breaker.probe()
        fetcher = FeatureFetcher(store, breaker, metrics)

        def rows_path(ev: object) -> None:
            x, reads, where = fetcher._prepare([ev], plan)  # same key extraction as the tiles path
            got = store.read([(gp.layout, key) for (_, key), (_, gp) in zip(reads, where, strict=True)])
            for (i, gp), fr in zip(where, got, strict=True):
                if fr is not None:
                    x[i, gp.dest] = np.asarray(fr.vector)[gp.src]

        def measure(name: str, run: object) -> tuple[float, float]:
            c0, w0 = time.process_time(), time.perf_counter()
            run()  # type: ignore[operator]
            cpu = (time.process_time() - c0) / len(evs) * 1e6
            wall = (time.perf_counter() - w0) / len(evs) * 1e6
            print(f"  {name:18s} CPU {cpu:7.0f} µs/event   wall {wall:7.0f} µs/event", flush=True)
            return cpu, wall

        async def tiles_async() -> None:
            for ev in evs:
                await fetcher.matrix_async([ev], plan)
            await store.aclose()  # the asyncio client belongs to this loop

        if os.environ.get("BENCH_PROFILE"):
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.enable()
            for ev in evs:
                fetcher.matrix([ev], plan)
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(14)
        results = {}
        for _ in range(2):  # second round: warm caches and connections
            results["rows (v1)"] = measure("rows (v1)", lambda: [rows_path(ev) for ev in evs])
            results["tiles, async (v2)"] = measure("tiles, async (v2)", lambda: asyncio.run(tiles_async()))
            results["tiles, blocking"] = measure(
                "tiles, blocking", lambda: [fetcher.matrix([ev], plan) for ev in evs]
            )
        base = results["rows (v1)"][0]
        for name, (cpu, _) in results.items():
            print(f"{name:18s} CPU per event {cpu:6.0f} µs = {cpu / base:4.2f}x the rows'")
        inexact = sum(metrics.feature_inexact.values())
        print(
            f"inexact reads (head tile held events at/after t): {inexact}"
            f" of {sum(metrics.feature_lookups.values())}"
        )
        print(f"load average {os.getloadavg()}")
        store.close()
    finally:
        launcher.down(config)


if __name__ == "__main__":
    main()
