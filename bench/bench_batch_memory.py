"""Peak memory and time of a batch feature run in 1, 4, 8 entity-hash shards (``features/sharding.py``).

Run: ``.venv/bin/python bench/bench_batch_memory.py [--days 4] [--events-per-day 250000]
[--run-days 2] [--shards 1,4,8]``.

* Input: ``--days`` of simulated history (``risk-sim``) written into an archive in a temporary lake.
* One run = what the ``batch_features`` asset does for the last ``--run-days`` days: every group,
  events read from the archive with the lookback (up to 30 days, clipped to the archive's start, so
  the whole history is read), labels, ``created_ts``, ``write_days`` into the offline store.
* Each shard count runs in a fresh subprocess; peak RSS = ``resource.getrusage(RUSAGE_SELF)
  .ru_maxrss`` of that process at the end (the interpreter and imports included). The runs' offline
  store files are hashed: the digests must agree across shard counts.
* Projection for a 30-day backfill at 1M events/day: the 1-shard peak grows with the events read
  (window + 30-day lookback = 60 days); the N-shard peak is the per-shard input plus one group's
  output for the window, both printed per event and extrapolated linearly.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    import polars as pl

    from risk_assets.features.batch import required_event_columns
    from risk_assets.features.groups import FEATURE_GROUPS
    from risk_assets.features.offline_store import day_part_path, days_of, write_days
    from risk_assets.features.sharding import iter_sharded
    from risk_assets.ingest.raw_reader import read_labels, scan_events
    from risk_assets.lake import Lake
    from risk_assets.simulator import SimConfig

    imports_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cfg = SimConfig(hours=24 * args.days, events_per_day=args.events_per_day)
    lake = Lake(args.lake)
    start = cfg.start + timedelta(days=args.days - args.run_days)
    end = cfg.start + timedelta(days=args.days)
    lookback = max(g.max_window for g in FEATURE_GROUPS)
    columns = sorted({*required_event_columns(FEATURE_GROUPS), "ingest_ts"})
    t = time.perf_counter()
    labels = read_labels(lake, start - lookback, end)
    read = [0]

    def scan(predicate: pl.Expr | None) -> pl.LazyFrame:
        return scan_events(lake, start - lookback, end, columns, predicate)

    def on_shard(keys: tuple[str, ...], shard: int, rows: int) -> None:
        read[0] = max(read[0], rows)

    days = days_of(start, end)
    out_rows = 0
    for group, output in iter_sharded(
        FEATURE_GROUPS, scan, start, end, args.shards, labels, created_ts=True, on_shard=on_shard, lazy=True
    ):
        for d in days:  # as the asset: one day of one group in memory
            rows = output.filter((pl.col("event_ts") >= d) & (pl.col("event_ts") < d + timedelta(days=1)))
            rows = rows.collect()
            write_days(lake, group, rows, [d])
            out_rows = max(out_rows, rows.height)
    seconds = time.perf_counter() - t
    digest = hashlib.sha256()
    for group in sorted(FEATURE_GROUPS, key=lambda g: g.name):
        for d in days:
            digest.update(lake.read_bytes(day_part_path(group, d)))
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "shards": args.shards,
                "seconds": seconds,
                "peak_mib": peak_kib / 1024,
                "imports_mib": imports_kib / 1024,
                "largest_shard_events": read[0],
                "largest_group_day_rows": out_rows,
                "digest": digest.hexdigest()[:16],
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--days", type=int, default=4)
    ap.add_argument("--events-per-day", type=int, default=250_000)
    ap.add_argument("--run-days", type=int, default=2)
    ap.add_argument("--shards", default="1,4,8")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--write", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--lake", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.shards = int(args.shards)
        child(args)
        return
    if args.write:
        sys.path.insert(0, str(ROOT))
        from risk_assets.lake import Lake
        from risk_assets.simulator import SimConfig
        from risk_assets.simulator.writers import write_history

        write_history(SimConfig(hours=24 * args.days, events_per_day=args.events_per_day), Lake(args.lake))
        return
    # The parent stays small: Linux keeps ru_maxrss across fork + exec, so a child forked from a
    # parent that had simulated the archive would report the parent's peak. The archive is written
    # by a child too.
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        cmd = [sys.executable, __file__, "--write", "--lake", tmp, "--days", str(args.days)]
        subprocess.run([*cmd, "--events-per-day", str(args.events_per_day)], check=True)
        print(
            f"archive: {args.days} days × {args.events_per_day:,} events/day "
            f"in {time.perf_counter() - t:.0f} s"
        )
        print(
            f"run: last {args.run_days} days, lookback read from the archive start "
            f"({args.days} days of events)"
        )
        results = []
        for n in [int(s) for s in args.shards.split(",")]:
            cmd = [sys.executable, __file__, "--child", "--lake", tmp, "--shards", str(n)]
            cmd += ["--days", str(args.days), "--events-per-day", str(args.events_per_day)]
            cmd += ["--run-days", str(args.run_days)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            results.append(r)
            print(
                f"shards={n:>2}: {r['seconds']:6.1f} s, peak RSS {r['peak_mib']:7.0f} MiB, largest shard "
                f"{r['largest_shard_events']:>10,} events, largest group-day "
                f"{r['largest_group_day_rows']:,} rows, "
                f"offline bytes sha256 {r['digest']}"
            )
        same = len({r["digest"] for r in results}) == 1
        print(f"offline store bytes identical across shard counts: {same}")
        # Projection: peak(N) = floor + per_event × events read ÷ N, fitted on the two smallest
        # shard counts (the floor: interpreter, imports, labels, one group-day of output; it grows
        # with a day's events, not with the window); events read scale linearly.
        by = {r["shards"]: r for r in results}
        ns = sorted(by)
        if len(ns) > 1:
            n0, n1 = ns[0], ns[1]
            per = (by[n0]["peak_mib"] - by[n1]["peak_mib"]) / (1 / n0 - 1 / n1)
            floor = by[n0]["peak_mib"] - per / n0
            read_events = args.days * args.events_per_day
            a = per / read_events
            day_scale = 1_000_000 / args.events_per_day
            print(f"fit: floor {floor:.0f} MiB (imports {by[n0]['imports_mib']:.0f} MiB) + "
                  f"{a * 1024 * 1024:.0f} bytes/event read ÷ shards")  # fmt: skip
            # 30-day backfill at 1M/day, 7 days per run (DAILY_BACKFILL) → 37M events read per run;
            # the floor part above the imports scales with a day's events.
            imports = by[n0]["imports_mib"]
            floor_1m = imports + max(floor - imports, 0.0) * day_scale
            for n in (1, 4, 8, 16, 32):
                gib = (floor_1m + a * 37_000_000 / n) / 1024
                print(f"  projected run of a 30-day backfill at 1M events/day (7 days + 30-day lookback "
                      f"= 37M events read), {n:>2} shards: ~{gib:,.1f} GiB")  # fmt: skip
        print(f"load average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
