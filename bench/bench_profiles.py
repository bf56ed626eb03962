"""Cost of whylogs profiling per hourly partition, vs ``polars.DataFrame.describe()`` in the same run.

Run: ``.venv/bin/python bench/bench_profiles.py [--events-per-day 1000000] [--repeat 3] [--threads 0]``.

* Input: one simulated hour of raw events (``risk-sim``: ``SimConfig(hours=1)``, archive layout, 28
  columns: ids and categoricals as strings, amounts, booleans, timestamps), and one feature frame: the
  widest group of the starter feature set computed by the batch engine over that hour.
* Measured per frame (best of ``--repeat``): ``profile_frame`` (Polars → pandas conversion + whylogs
  tracking; the conversion alone is also reported), the serialized profile size (what a partition's
  profile costs in the lake), ``summary`` of the profile, and the baseline ``frame.describe()``
  (exact count/null/mean/std/min/quantiles/max per column; no sketches, nothing mergeable).
* Then: merging 24 hourly profiles into a day (and the day profile's size), and the exact
  ``drift_report`` on the feature frame vs whylogs' ``drift_scores`` on two profiles.
* ``--threads N`` sets ``POLARS_MAX_THREADS`` before Polars is imported (whylogs is single-threaded).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def best_of(repeat: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    """(best wall time in seconds, last result) over ``repeat`` calls."""
    best, out = math.inf, None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events-per-day", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="POLARS_MAX_THREADS (0: Polars default)")
    args = ap.parse_args()
    if args.threads:
        os.environ["POLARS_MAX_THREADS"] = str(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import polars as pl

    from risk_assets.features.batch import compute_feature_groups
    from risk_assets.features.groups import FEATURE_GROUPS
    from risk_assets.monitoring import drift, profiles
    from risk_assets.simulator import SimConfig, generate

    cfg = SimConfig(hours=1, events_per_day=args.events_per_day)
    t = time.perf_counter()
    data = generate(cfg)
    events = data.events
    print(f"simulated one hour: {events.height:,} events × {events.width} columns "
          f"in {time.perf_counter() - t:.2f} s; polars threads {pl.thread_pool_size()}")  # fmt: skip
    feats = compute_feature_groups(FEATURE_GROUPS, events, cfg.start, cfg.end, data.labels)
    name, features = max(feats.items(), key=lambda kv: kv[1].width)
    print(f"feature frame: group {name!r}, {features.height:,} rows × {features.width} columns")

    profiles.profile_frame(events.head(100))  # warm-up (imports, first-call costs)
    profiles.drift_scores(*(2 * [profiles.profile_frame(events.head(100))]))
    print()
    header = (
        f"{'frame':10s} {'rows':>8s} {'cols':>4s} | {'profile s':>9s} {'rows/s':>10s} {'(convert s)':>11s} "
        f"| {'bytes':>9s} {'B/row':>6s} | {'summary s':>9s} | {'describe s':>10s} {'rows/s':>11s} "
        f"{'profile/describe':>16s}"
    )
    print(header)
    print("-" * len(header))
    hourly: dict[str, Any] = {}
    for label, frame in (("events", events), ("features", features)):
        t_prof, prof = best_of(args.repeat, lambda f=frame: profiles.profile_frame(f))
        t_conv, _ = best_of(args.repeat, lambda f=frame: profiles.to_pandas(f))
        size = len(profiles.serialize(prof))
        t_sum, _ = best_of(args.repeat, lambda p=prof: profiles.summary(p))
        t_desc, _ = best_of(args.repeat, lambda f=frame: f.describe())
        hourly[label] = prof
        n = frame.height
        print(
            f"{label:10s} {n:>8,} {frame.width:>4d} | {t_prof:>9.3f} {n / t_prof:>10,.0f} {t_conv:>11.3f} "
            f"| {size:>9,} {size / n:>6.1f} | {t_sum:>9.3f} | {t_desc:>10.4f} {n / t_desc:>11,.0f} "
            f"{t_prof / t_desc:>15.0f}x"
        )

    print()
    day = [profiles.deserialize(profiles.serialize(hourly["events"])) for _ in range(24)]
    t_merge, merged = best_of(args.repeat, lambda: profiles.merge(day))
    print(f"merge 24 hourly event profiles: {t_merge:.3f} s; day profile {len(profiles.serialize(merged)):,} "
          f"bytes for {merged.rows:,} rows")  # fmt: skip

    half = features.height // 2
    ref_f, cur_f = features[:half], features[half:]
    cols = [c for c in features.columns if c not in ("event_ts",)]
    t_exact, rep = best_of(args.repeat, lambda: drift.drift_report(ref_f, cur_f, cols))
    p_ref, p_cur = profiles.profile_frame(ref_f, cols), profiles.profile_frame(cur_f, cols)
    t_wl, scores = best_of(args.repeat, lambda: profiles.drift_scores(p_ref, p_cur))
    print(f"drift, {len(cols)} feature columns, {half:,} vs {features.height - half:,} rows: "
          f"exact drift_report {t_exact:.3f} s ({len(rep.drifted)} drift); "
          f"whylogs drift_scores on profiles {t_wl:.3f} s "
          f"({(scores['category'] == 'DRIFT').sum()} DRIFT)")  # fmt: skip


if __name__ == "__main__":
    main()
