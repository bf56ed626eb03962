"""Throughput of the batch feature engine on the full starter set, vs. a naive per-entity loop.

Run: ``.venv/bin/python bench/bench_batch_features.py [--events-per-day 1000000] [--threads 1]``.

* Input: one simulated day from ``risk-sim`` (``SimConfig(hours=24)``), events and labels in the
  archive layout; as-of range = the whole day (no lookback data before the day).
* Engine: ``compute_feature_groups(FEATURE_GROUPS, …)`` — every group, every feature — best of
  ``--repeat`` runs. Throughput = input events / wall seconds.
* Baseline, measured in the same run: the brute-force reference loop of the tests (per entity, per
  as-of time, per feature: scan the window in Python) over a slice of the day
  (``--baseline-minutes``), and the engine over the same slice; the two outputs are compared value
  by value, so the baseline is also a correctness check at scale.
* ``--threads N`` sets ``POLARS_MAX_THREADS`` before Polars is imported (NumPy parts are
  single-threaded anyway); ``--threads 1`` gives the per-core figure.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from datetime import timedelta
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events-per-day", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="POLARS_MAX_THREADS (0: Polars default)")
    ap.add_argument("--baseline-minutes", type=int, default=5)
    args = ap.parse_args()
    if args.threads:
        os.environ["POLARS_MAX_THREADS"] = str(args.threads)
    # Import after setting the thread count; the tests hold the reference loop used as baseline.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import polars as pl

    from risk_assets.features.batch import compute_feature_groups
    from risk_assets.features.groups import FEATURE_GROUPS
    from risk_assets.simulator import SimConfig, generate
    from tests.features.test_batch_features import oracle

    cfg = SimConfig(hours=24, events_per_day=args.events_per_day)
    t = time.perf_counter()
    data = generate(cfg, workers=2)
    events, labels = data.events, data.labels
    print(f"simulated {events.height:,} events, {labels.height:,} labels in {time.perf_counter() - t:.1f} s")
    print(f"polars threads: {pl.thread_pool_size()}, groups: {len(FEATURE_GROUPS)}, "
          f"features: {sum(len(g.features) for g in FEATURE_GROUPS)}")  # fmt: skip

    best = math.inf
    out: dict[str, pl.DataFrame] = {}
    for _ in range(args.repeat):
        t = time.perf_counter()
        out = compute_feature_groups(FEATURE_GROUPS, events, cfg.start, cfg.end, labels)
        best = min(best, time.perf_counter() - t)
    rows = sum(f.height for f in out.values())
    values = sum(out[g.name].height * len(g.features) for g in FEATURE_GROUPS)
    print(f"engine, full day: {best:.2f} s → {events.height / best:,.0f} events/s, "
          f"{rows:,} feature rows, {values / best:,.0f} feature values/s")  # fmt: skip
    for g in FEATURE_GROUPS:
        print(f"  {g.name:22s} rows={out[g.name].height:>9,} features={len(g.features)}")

    # Baseline on a slice in the middle of the day, with the whole morning as lookback: same input
    # for both, outputs compared. Throughput counts the as-of events (those inside the slice).
    s0 = cfg.start + timedelta(hours=12)
    end = s0 + timedelta(minutes=args.baseline_minutes)
    sl = events.filter(pl.col("event_ts") < end)
    lab = labels.filter(pl.col("label_ts") < end)
    n_asof = sl.filter(pl.col("event_ts") >= s0).height
    t = time.perf_counter()
    fast = compute_feature_groups(FEATURE_GROUPS, sl, s0, end, lab)
    t_fast = time.perf_counter() - t
    rows_py = sl.with_columns(pl.col("event_ts").dt.epoch("ms")).to_dicts()
    lab_py = lab.with_columns(pl.col("label_ts").dt.epoch("ms")).to_dicts()
    t = time.perf_counter()
    s0_ms, end_ms = int(s0.timestamp() * 1000), int(end.timestamp() * 1000)
    slow = {g.name: oracle(g, rows_py, s0_ms, end_ms, lab_py) for g in FEATURE_GROUPS}
    t_slow = time.perf_counter() - t
    mismatches = 0
    for g in FEATURE_GROUPS:
        got = fast[g.name].with_columns(pl.col("event_ts").dt.epoch("ms")).to_dicts()
        exp = slow[g.name]
        mismatches += abs(len(got) - len(exp))
        for a, b in zip(got, exp, strict=False):
            for k, v in b.items():
                same = (
                    math.isclose(a[k], v, rel_tol=1e-9, abs_tol=1e-9)
                    if isinstance(v, float) and a[k] is not None
                    else a[k] == v
                )
                mismatches += not same
    print(f"slice {s0:%H:%M}+{args.baseline_minutes} min ({n_asof:,} as-of events, {sl.height:,} input "
          f"events): engine {t_fast:.3f} s, naive loop {t_slow:.2f} s ({n_asof / t_slow:,.0f} as-of "
          f"events/s); engine full day vs naive: ×{(events.height / best) / (n_asof / t_slow):,.0f}; "
          f"mismatching values: {mismatches}")  # fmt: skip


if __name__ == "__main__":
    main()
