"""Benchmark of ``point_in_time_join`` against a naive Polars baseline, in one run.

Usage::

    .venv/bin/python bench/bench_point_in_time.py [--spine 1000000] [--rows 3400000] [--tables 3]
        [--entities 100000] [--features 5] [--baseline-spine 50000] [--keep DIR]

Generates a spine (entity keys, ``event_timestamp``, a label) and ``--tables`` feature tables
(``event_timestamp``, ``created_timestamp`` = event time + 0–10 min, 5 % late corrections created
hours later, float features) as Parquet in a temporary directory, then measures every variant in a
fresh subprocess (one per measurement) that reads the Parquet files, joins and reports wall time
and peak RSS (``VmHWM`` from ``/proc/self/status``):

* ours: ``point_in_time_join`` over ``pl.scan_parquet`` inputs (read + join);
* baseline: equi-join on the key + filter (``ev ≤ t``, ``created ≤ t``, ``ev ≥ t − ttl``) + sort +
  group-by-last, on the first ``--baseline-spine`` spine rows (its cost is linear in the spine; the
  full-size time is extrapolated and labelled as such).

The same generator is used by ``bench/bench_vs_feast.py``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

START = datetime(2026, 1, 1, tzinfo=UTC)
DAYS = 30
TTL = timedelta(days=7)
ENTITY_COLUMNS = ("user_id", "device_id", "ip_id")


def table_names(n_tables: int) -> list[str]:
    return [f"fv{i}" for i in range(n_tables)]


def entity_of(i: int) -> str:
    return ENTITY_COLUMNS[i % len(ENTITY_COLUMNS)]


def generate(
    out: Path, *, spine: int, rows: int, tables: int, entities: int, features: int, seed: int = 7
) -> dict[str, object]:
    """Write ``spine.parquet`` and ``{name}.parquet`` per table under ``out``; return a manifest."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t0 = int(START.timestamp() * 1_000_000)
    span = DAYS * 86_400 * 1_000_000
    sec = 1_000_000
    manifest: dict[str, object] = {"spine": spine, "rows": rows, "tables": {}, "entities": entities}
    for i, name in enumerate(table_names(tables)):
        ev = t0 + rng.integers(0, span // sec, rows) * sec
        cr = ev + rng.integers(0, 600, rows) * sec
        late = rng.random(rows) < 0.05
        cr[late] += rng.integers(3600, 6 * 3600, int(late.sum())) * sec
        key = entity_of(i)
        frame = pl.DataFrame(
            {
                key: rng.integers(0, entities, rows),
                "event_timestamp": pl.Series(ev).cast(pl.Datetime("us", "UTC")),
                "created_timestamp": pl.Series(cr).cast(pl.Datetime("us", "UTC")),
                **{f"{name}_f{j}": rng.random(rows) for j in range(features)},
            }
        )
        frame.write_parquet(out / f"{name}.parquet", row_group_size=512 * 1024)
        manifest["tables"][name] = {"key": key, "features": [f"{name}_f{j}" for j in range(features)]}  # type: ignore[index]
    ts = t0 + rng.integers(7 * 86_400, DAYS * 86_400, spine) * sec  # skip the first week (TTL warm-up)
    spine_df = pl.DataFrame(
        {
            **{k: rng.integers(0, entities, spine) for k in ENTITY_COLUMNS[: min(tables, 3)]},
            "event_timestamp": pl.Series(ts).cast(pl.Datetime("us", "UTC")),
            "label": rng.integers(0, 2, spine).astype(np.int8),
        }
    )
    spine_df.write_parquet(out / "spine.parquet")
    (out / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---------------------------------------------------------------------------------------------
# workers (each runs in its own subprocess)


def worker_ours(data: Path) -> dict[str, object]:
    from risk_assets.features.point_in_time import FeatureTable, point_in_time_join

    manifest = json.loads((data / "manifest.json").read_text())
    t = time.perf_counter()
    tables = [
        FeatureTable(
            name,
            pl.scan_parquet(data / f"{name}.parquet"),
            [spec["key"]],
            created_timestamp="created_timestamp",
            ttl=TTL,
        )
        for name, spec in manifest["tables"].items()
    ]
    out = point_in_time_join(pl.scan_parquet(data / "spine.parquet"), tables)
    seconds = time.perf_counter() - t
    first = next(iter(manifest["tables"].values()))["features"][0]
    return {
        "seconds": seconds,
        "peak_rss_mb": peak_rss_mb(),
        "rows": out.height,
        "matched_first_table": int(out.select(pl.col(f"fv0__{first}").is_not_null().sum()).item()),
    }


def worker_baseline(data: Path, sample: int) -> dict[str, object]:
    manifest = json.loads((data / "manifest.json").read_text())
    t = time.perf_counter()
    spine = pl.read_parquet(data / "spine.parquet").head(sample).with_row_index("_i")
    out = spine
    for name, spec in manifest["tables"].items():
        key = spec["key"]
        table = pl.read_parquet(data / f"{name}.parquet")
        best = (
            spine.select("_i", key, "event_timestamp")
            .join(table, on=key, how="inner", suffix="_r")
            .filter(
                (pl.col("event_timestamp_r") <= pl.col("event_timestamp"))
                & (pl.col("created_timestamp") <= pl.col("event_timestamp"))
                & (pl.col("event_timestamp_r") >= pl.col("event_timestamp") - TTL)
            )
            .sort("_i", "event_timestamp_r", "created_timestamp")
            .group_by("_i")
            .agg(pl.col(spec["features"]).last().name.prefix(f"{name}__"))
        )
        out = out.join(best, on="_i", how="left", maintain_order="left")
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "rows": out.height}


def run_worker(args: list[str], python: str = sys.executable) -> dict[str, object]:
    """Run ``this file --worker …`` in a fresh process; its last stdout line is JSON."""
    proc = subprocess.run(
        [python, str(Path(__file__).resolve()), *args], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["exit " + str(proc.returncode)])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spine", type=int, default=1_000_000)
    parser.add_argument("--rows", type=int, default=3_400_000, help="rows per feature table")
    parser.add_argument("--tables", type=int, default=3)
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--features", type=int, default=5)
    parser.add_argument("--baseline-spine", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs of ours (best and median reported)")
    parser.add_argument("--keep", type=Path, default=None, help="write the data here and keep it")
    parser.add_argument("--worker", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "ours":
        print(json.dumps(worker_ours(args.data)))
        return
    if args.worker == "baseline":
        print(json.dumps(worker_baseline(args.data, args.baseline_spine)))
        return

    data = args.keep or Path(tempfile.mkdtemp(prefix="bench-pit-"))
    try:
        t = time.perf_counter()
        generate(
            data,
            spine=args.spine,
            rows=args.rows,
            tables=args.tables,
            entities=args.entities,
            features=args.features,
        )
        print(
            f"data: spine {args.spine:,} rows × {args.tables} tables of {args.rows:,} rows "
            f"({args.tables * args.rows:,} feature rows, {args.features} features each, "
            f"{args.entities:,} entities per key, TTL {TTL}) generated in {time.perf_counter() - t:.1f} s"
        )
        runs = [run_worker(["--worker", "ours", "--data", str(data)]) for _ in range(args.repeat)]
        if any("error" in r for r in runs):
            print("ours failed:", runs)
            return
        secs = sorted(float(r["seconds"]) for r in runs)  # type: ignore[arg-type]
        peak = max(float(r["peak_rss_mb"]) for r in runs)  # type: ignore[arg-type]
        print(
            f"ours: point_in_time_join (read Parquet + join), best {secs[0]:.2f} s, median "
            f"{secs[len(secs) // 2]:.2f} s over {len(secs)} runs; peak RSS {peak:,.0f} MB; rows out "
            f"{runs[0]['rows']:,} (spine {args.spine:,}); fv0 matched {runs[0]['matched_first_table']:,}"
        )
        b = run_worker(
            ["--worker", "baseline", "--data", str(data), "--baseline-spine", str(args.baseline_spine)]
        )
        if "error" in b:
            print("baseline failed:", b["error"])
            return
        scale = args.spine / min(args.baseline_spine, args.spine)
        est = float(b["seconds"]) * scale  # type: ignore[arg-type]
        print(
            f"baseline: join + filter + group-by on {min(args.baseline_spine, args.spine):,} spine rows: "
            f"{float(b['seconds']):.2f} s, peak RSS {float(b['peak_rss_mb']):,.0f} MB "  # type: ignore[arg-type]
            f"→ extrapolated to {args.spine:,} rows: {est:.1f} s (memory grows with the sample too)"
        )
        print(f"ratio: baseline (extrapolated) / ours (median) = {est / secs[len(secs) // 2]:.1f}x")
    finally:
        if args.keep is None:
            shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
