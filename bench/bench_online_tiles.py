"""Online state per entity: tiles (v2, what risk-serve finishes windows from) vs snapshot rows (v1).

Usage::

    .venv/bin/python bench/bench_online_tiles.py [--users 5000] [--events-per-day 150000] [--hours 24]
        [--sample 500]

Starts its own Redis (+ broker) through ``risk_assets.stack.launcher`` on free ports, simulates
``--hours`` of traffic, and per feature group writes (a) the v1 layout — one packed row per entity
(``OnlineStore.write``) — and (b) the tiles of the whole simulation (``tiles.build_tiles`` →
``TileStore.write``, older than each hop's horizon dropped on write). Then, for ``--sample``
entities per group, Redis ``MEMORY USAGE`` of both keys (bytes per entity, mean / p50 / p99), the
tiles per entity, and the time to read + finish the windows of one entity (the serving cost per
group, one entity at a time, one round trip each). Prints the load average.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=5000)
    ap.add_argument("--events-per-day", type=int, default=150_000)
    ap.add_argument("--hours", type=int, default=24)
    ap.add_argument("--sample", type=int, default=500)
    args = ap.parse_args()

    from risk_assets.features.groups import FEATURE_GROUPS
    from risk_assets.features.ingestion import group_layout
    from risk_assets.features.online_store import OnlineStore
    from risk_assets.features.online_tiles import TileStore, finish, tile_layout
    from risk_assets.features.tiles import build_tiles
    from risk_assets.simulator.config import SimConfig
    from risk_assets.simulator.generator import generate
    from risk_assets.stack import launcher

    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start", flush=True)
    t = time.perf_counter()
    sim = generate(
        SimConfig(
            seed=9,
            start=datetime(2026, 8, 1, tzinfo=UTC),
            hours=args.hours,
            users=args.users,
            events_per_day=args.events_per_day,
        )
    )
    events, labels = sim.events, sim.labels
    print(f"{events.height} events, {labels.height} labels simulated in {time.perf_counter() - t:.1f} s")
    work = Path(tempfile.mkdtemp(prefix="bench-tiles-"))
    config = launcher.StackConfig(
        state_dir=work / "stack", redis_port=launcher.free_port(), kafka_port=launcher.free_port()
    )
    saved = {k: os.environ.pop(k) for k in ("REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS") if k in os.environ}
    rng = np.random.default_rng(1)
    totals = {"rows": 0, "tiles": 0}
    try:
        endpoints = launcher.up(config)
        os.environ.update(saved)
        with OnlineStore.from_url(endpoints["REDIS_URL"], namespace="bench") as store:
            ts = TileStore(store)
            client = store.client
            print(
                f"\n{'group':22s} {'entities':>8s} {'row B':>7s} {'tiles B mean':>12s}"
                f" {'p50':>7s} {'p99':>7s} {'ratio':>6s} {'tiles/ent':>9s} {'max':>5s}"
                f" {'write tiles/s':>13s} {'read+finish µs':>14s}"
            )
            for g in FEATURE_GROUPS:
                keys = list(g.entity.keys)
                lab = labels if g.needs_labels else None
                t = time.perf_counter()
                tiles = build_tiles(g, events, lab)
                built_s = time.perf_counter() - t
                layout = tile_layout(g)
                t = time.perf_counter()
                res = ts.write(layout, tiles)
                write_s = time.perf_counter() - t
                ents = tiles.select(keys).unique().sort(keys)
                vals = rng.gamma(2.0, 2.0, size=(ents.height, len(g.feature_names)))
                rows = ents.with_columns(
                    pl.lit(datetime(2026, 8, 1, tzinfo=UTC)).cast(pl.Datetime("ms", "UTC")).alias("event_ts"),
                    *[pl.Series(f, vals[:, j]) for j, f in enumerate(g.feature_names)],
                )
                row_layout = group_layout(g)
                store.write(row_layout, rows)
                pick = ents.sample(min(args.sample, ents.height), seed=1).iter_rows()
                sample = [r if len(r) > 1 else r[0] for r in pick]
                row_bytes = [
                    int(client.memory_usage(store.key(row_layout, e), samples=0) or 0) for e in sample
                ]
                tile_bytes = np.array(ts.state_bytes(layout, sample))
                now = int(tiles["max_ts"].max()) + 60_000
                t = time.perf_counter()
                counts = []
                for e in sample:
                    got = ts.read([(layout, e)])[0]
                    finish(layout, got, now)
                    counts.append(len(got))
                per_read_us = (time.perf_counter() - t) / max(1, len(sample)) * 1e6
                totals["rows"] += int(np.sum(row_bytes))
                totals["tiles"] += int(tile_bytes.sum())
                print(
                    f"{g.name:22s} {ents.height:8d} {np.mean(row_bytes):7.0f} {tile_bytes.mean():12.0f}"
                    f" {np.percentile(tile_bytes, 50):7.0f} {np.percentile(tile_bytes, 99):7.0f}"
                    f" {tile_bytes.mean() / np.mean(row_bytes):6.1f} {np.mean(counts):9.1f}"
                    f" {layout.max_tiles:5d}"
                    f" {res.applied / write_s:13,.0f} {per_read_us:14.0f}"
                    f"   (build {tiles.height / built_s:,.0f} tiles/s)",
                    flush=True,
                )
        print(
            f"\nsampled entities, all groups: tiles {totals['tiles']:,} B vs rows {totals['rows']:,} B "
            f"= {totals['tiles'] / max(1, totals['rows']):.1f}x; load average {os.getloadavg()}"
        )
    finally:
        launcher.down(config)


if __name__ == "__main__":
    main()
