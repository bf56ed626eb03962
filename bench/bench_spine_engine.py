"""Throughput of the spine-driven v2 engine vs today's snapshot engine, on the same simulated day.

Run: ``.venv/bin/python bench/bench_spine_engine.py [--events-per-day 1000000] [--threads 1]``.

* Input: one simulated day from ``risk-sim`` (``SimConfig(hours=24)``), events and labels in the
  archive layout, the full starter set (every group, every feature).
* Snapshot engine (baseline, v1): ``batch.compute_feature_groups`` over the day — one row per
  (entity, event time) of every group.
* Spine engine (v2): ``spine.compute_at`` per group at *the same rows* (the snapshot output's keys
  and times used as the spine), so both produce the same number of values.
* Figures: process CPU time (``time.process_time``, all threads of the process) and wall time, best
  of ``--repeat``; events/s/core = input events / CPU seconds (every group over the day), spine
  rows/s = spine rows (all groups) / CPU seconds. ``--threads N`` sets ``POLARS_MAX_THREADS`` before
  Polars is imported (``--threads 1``: the per-core figure; NumPy parts are single-threaded).
* A second spine: the day's decision events (withdrawals, card payments, P2P trades) scored for
  every group at their own time — what a training set does.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def _best(fn, repeat: int):  # type: ignore[no-untyped-def]
    best_cpu = best_wall = float("inf")
    out = None
    for _ in range(repeat):
        c, w = time.process_time(), time.perf_counter()
        out = fn()
        best_cpu = min(best_cpu, time.process_time() - c)
        best_wall = min(best_wall, time.perf_counter() - w)
    return out, best_cpu, best_wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events-per-day", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="POLARS_MAX_THREADS (0: Polars default)")
    args = ap.parse_args()
    if args.threads:
        os.environ["POLARS_MAX_THREADS"] = str(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import polars as pl

    from risk_assets.features.batch import compute_feature_groups
    from risk_assets.features.groups import FEATURE_GROUPS
    from risk_assets.features.spine import compute_at
    from risk_assets.simulator import SimConfig, generate

    print(f"load average before: {os.getloadavg()}")
    cfg = SimConfig(hours=24, events_per_day=args.events_per_day)
    t = time.perf_counter()
    data = generate(cfg, workers=2)
    events, labels = data.events, data.labels
    n = events.height
    print(f"simulated {n:,} events, {labels.height:,} labels in {time.perf_counter() - t:.1f} s")
    print(f"polars threads: {pl.thread_pool_size()}, groups: {len(FEATURE_GROUPS)}, "
          f"features: {sum(len(g.features) for g in FEATURE_GROUPS)}")  # fmt: skip

    snap, s_cpu, s_wall = _best(
        lambda: compute_feature_groups(FEATURE_GROUPS, events, cfg.start, cfg.end, labels), args.repeat
    )
    rows = sum(f.height for f in snap.values())
    print(f"snapshot engine (v1), full day: cpu {s_cpu:.2f} s, wall {s_wall:.2f} s → "
          f"{n / s_cpu:,.0f} events/s/cpu-s, {rows / s_cpu:,.0f} rows/s ({rows:,} rows)")  # fmt: skip

    spines = {g.name: snap[g.name].select([*g.entity.keys, "event_ts"]) for g in FEATURE_GROUPS}

    def spine_all() -> dict[str, pl.DataFrame]:
        return {
            g.name: compute_at(g, events, spines[g.name], labels if g.needs_labels else None)
            for g in FEATURE_GROUPS
        }

    out, v_cpu, v_wall = _best(spine_all, args.repeat)
    assert sum(f.height for f in out.values()) == rows
    print(f"spine engine (v2), same rows:  cpu {v_cpu:.2f} s, wall {v_wall:.2f} s → "
          f"{n / v_cpu:,.0f} events/s/cpu-s, {rows / v_cpu:,.0f} spine rows/s")  # fmt: skip
    print(f"ratio spine/snapshot (events per cpu-s): {s_cpu / v_cpu:.2f}×")

    decisions = events.filter(pl.col("event_type").is_in(["withdrawal", "card_payment", "p2p_trade"]))

    def spine_decisions() -> int:
        total = 0
        for g in FEATURE_GROUPS:
            sp = decisions.select([*g.entity.keys, "event_ts"])
            total += compute_at(g, events, sp, labels if g.needs_labels else None).height
        return total

    d_rows, d_cpu, d_wall = _best(spine_decisions, args.repeat)
    print(f"spine engine (v2), decision spine ({decisions.height:,} events × {len(FEATURE_GROUPS)} groups): "
          f"cpu {d_cpu:.2f} s, wall {d_wall:.2f} s → {n / d_cpu:,.0f} events/s/cpu-s, "
          f"{d_rows / d_cpu:,.0f} spine rows/s")  # fmt: skip
    for g in FEATURE_GROUPS:
        c = time.process_time()
        compute_at(g, events, spines[g.name], labels if g.needs_labels else None)
        print(f"  {g.name:22s} rows={spines[g.name].height:>9,} features={len(g.features):>2} "
              f"cpu={time.process_time() - c:.2f} s")  # fmt: skip
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
