"""Side-by-side benchmark against Feast on the same data, the same machine and the same Redis.

Usage::

    .venv/bin/python bench/bench_vs_feast.py [--spine 1000000] [--rows 3400000] [--entities 100000]
        [--online-entities 100000] [--online-features 50] [--feast-venv .state/feast-venv]
        [--skip-dask] [--skip-duckdb]

Feast runs in its own virtualenv (created with ``python3 -m venv`` and ``pip install
'feast[redis,duckdb]'`` from PyPI when missing; if that fails the error is printed and only our
side is measured — no number is ever made up). A Feast repo (``feature_store.yaml``, feature views,
a worker script) is generated under a temporary directory at run time.

Measured, each historical retrieval in its own fresh subprocess (time + peak RSS from ``VmHWM``):

(a) historical retrieval: ``point_in_time_join`` (Parquet scan + join) vs Feast
    ``get_historical_features(...).to_df()`` with the file (dask) and the duckdb offline stores;
    1M spine rows over 3 feature views (``--rows`` each, created timestamps, TTL 7 days); and the
    number of spine rows each returns;
(b) online reads: ``OnlineStore.read`` vs Feast ``get_online_features`` on 1 and 100 entities ×
    ``--online-features`` features: p50/p99 over many calls;
(c) sync throughput: ``OnlineStore.write`` of ``--online-entities`` × ``--online-features`` from a
    Polars frame vs Feast ``materialize`` of the same rows into the same Redis: rows/s.

Redis: ``REDIS_URL`` when set (our keys under a fresh prefix, Feast's under a fresh project; both
deleted afterwards), else a redis-server started by ``risk_assets.stack.launcher`` on free ports.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.parse
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_point_in_time as bpit

from risk_assets.features.online_store import GroupLayout, OnlineStore
from risk_assets.stack import launcher

ROOT = Path(__file__).resolve().parents[1]
ONLINE_TS = datetime(2026, 3, 1, tzinfo=UTC)

# --------------------------------------------------------------------------------------------
# Feast side: generated files (run with the Feast venv's python)

FEAST_WORKER = """
import json, sys, time
from datetime import datetime, timezone
from pathlib import Path


def peak_rss_mb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main():
    mode, repo = sys.argv[1], sys.argv[2]
    import pandas as pd
    from feast import FeatureStore

    store = FeatureStore(repo_path=repo)
    if mode == "historical":
        spine_path, refs = sys.argv[3], json.loads(sys.argv[4])
        t = time.perf_counter()
        entity_df = pd.read_parquet(spine_path)
        df = store.get_historical_features(entity_df=entity_df, features=refs).to_df()
        seconds = time.perf_counter() - t
        first = refs[0].split(":")[1]
        print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "rows": len(df),
                          "matched_first_table": int(df[first].notna().sum())}))
    elif mode == "materialize":
        start, end = datetime.fromisoformat(sys.argv[3]), datetime.fromisoformat(sys.argv[4])
        t = time.perf_counter()
        store.materialize(start_date=start, end_date=end, feature_views=["online_fv"])
        print(json.dumps({"seconds": time.perf_counter() - t, "peak_rss_mb": peak_rss_mb()}))
    elif mode == "online":
        refs, n_entities, seed = json.loads(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
        import random
        import numpy as np
        pick = random.Random(seed)
        out = {}
        for k, iters in ((1, 2000), (100, 200)):
            def call():
                rows = [{"user_id": e} for e in pick.sample(range(n_entities), k)]
                return store.get_online_features(features=refs, entity_rows=rows).to_dict()
            for _ in range(min(100, iters)):
                call()
            samples = []
            for _ in range(iters):
                t = time.perf_counter_ns()
                res = call()
                samples.append((time.perf_counter_ns() - t) / 1e6)
            assert res[refs[0].split(":")[1]][0] is not None, "online read returned nulls"
            out[str(k)] = [float(np.percentile(samples, 50)), float(np.percentile(samples, 99))]
        print(json.dumps(out))


main()
"""


def feast_definitions(data: Path, manifest: dict, online_parquet: Path, online_features: int) -> str:
    """``definitions.py`` of the generated Feast repo: one view per table + the online view."""
    lines = [
        "from datetime import timedelta",
        "from feast import Entity, FeatureView, Field, FileSource, ValueType",
        "from feast.types import Float64",
        "",
    ]
    for key in sorted({spec["key"] for spec in manifest["tables"].values()} | {"user_id"}):
        lines.append(f"{key} = Entity(name={key!r}, join_keys=[{key!r}], value_type=ValueType.INT64)")
    for name, spec in manifest["tables"].items():
        fields = ", ".join(f"Field(name={f!r}, dtype=Float64)" for f in spec["features"])
        lines.append(
            textwrap.dedent(
                f"""
                {name} = FeatureView(
                    name={name!r},
                    entities=[{spec["key"]}],
                    ttl=timedelta(days={bpit.TTL.days}),
                    schema=[{fields}],
                    source=FileSource(
                        path={str(data / f"{name}.parquet")!r},
                        timestamp_field="event_timestamp",
                        created_timestamp_column="created_timestamp",
                    ),
                    online=False,
                )
                """
            )
        )
    fields = ", ".join(f"Field(name='o{j:02d}', dtype=Float64)" for j in range(online_features))
    lines.append(
        textwrap.dedent(
            f"""
            online_fv = FeatureView(
                name="online_fv",
                entities=[user_id],
                ttl=timedelta(days=0),
                schema=[{fields}],
                source=FileSource(
                    path={str(online_parquet)!r},
                    timestamp_field="event_ts",
                    created_timestamp_column="created_ts",
                ),
                online=True,
            )
            """
        )
    )
    return "\n".join(lines)


def feast_yaml(project: str, offline: str, redis_url: str) -> str:
    parts = urllib.parse.urlsplit(redis_url)
    conn = f"{parts.hostname}:{parts.port or 6379}"
    if parts.password:
        conn += f",password={parts.password}"
    db = (parts.path or "/0").lstrip("/") or "0"
    conn += f",db={db}"
    return textwrap.dedent(
        f"""
        project: {project}
        registry: registry.db
        provider: local
        offline_store:
          type: {offline}
        online_store:
          type: redis
          connection_string: "{conn}"
        entity_key_serialization_version: 3
        """
    )


def ensure_feast(venv: Path) -> tuple[str | None, str]:
    """The Feast venv's python (installing Feast if needed) and its version, or (None, error)."""
    py = venv / "bin" / "python"
    probe = [str(py), "-c", "import feast; print(feast.__version__)"]
    if py.exists():
        r = subprocess.run(probe, capture_output=True, text=True, check=False)
        if r.returncode == 0:
            return str(py), r.stdout.strip()
    print(f"installing feast[redis,duckdb] into {venv} …", flush=True)
    steps = [
        [sys.executable if not shutil.which("python3") else "python3", "-m", "venv", str(venv)],
        [str(py), "-m", "pip", "install", "-q", "feast[redis,duckdb]"],
    ]
    for cmd in steps:
        r = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if r.returncode != 0:
            return None, f"{' '.join(cmd)} failed: {(r.stderr or r.stdout).strip()[-2000:]}"
    r = subprocess.run(probe, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        return None, r.stderr.strip()[-2000:]
    return str(py), r.stdout.strip()


def run_json(cmd: list[str], cwd: Path | None = None, timeout: float = 3600) -> dict:
    """Run ``cmd``; its last stdout line is JSON. Errors come back as ``{"error": …}``."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()
        return {"error": " | ".join(tail[-3:]) if tail else f"exit {r.returncode}"}
    return json.loads(r.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------
# our side


def _percentiles(fn: Callable[[], object], iterations: int, warmup: int = 100) -> tuple[float, float]:
    for _ in range(warmup):
        fn()
    samples = np.empty(iterations)
    for i in range(iterations):
        t = time.perf_counter_ns()
        fn()
        samples[i] = (time.perf_counter_ns() - t) / 1e6
    return float(np.percentile(samples, 50)), float(np.percentile(samples, 99))


def online_frame(n: int, n_features: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    values = rng.random((n, n_features))
    return pl.DataFrame(
        {"user_id": np.arange(n, dtype=np.int64), **{f"o{j:02d}": values[:, j] for j in range(n_features)}}
    ).with_columns(
        event_ts=pl.lit(ONLINE_TS).cast(pl.Datetime("us", "UTC")),
        created_ts=pl.lit(ONLINE_TS).cast(pl.Datetime("us", "UTC")),
    )


def fmt(res: dict, key: str, spec: str) -> str:
    return "n/a" if "error" in res or key not in res else format(res[key], spec)


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.1f}x"


def run(args: argparse.Namespace, redis_url: str, work: Path) -> None:
    print(f"{os.cpu_count()} CPUs; Redis {redis.Redis.from_url(redis_url).info('server')['redis_version']}")
    feast_py, feast_info = ensure_feast(args.feast_venv)
    print(f"feast: {feast_info if feast_py else 'NOT AVAILABLE: ' + feast_info}")

    data = work / "data"
    t = time.perf_counter()
    manifest = bpit.generate(
        data,
        spine=args.spine,
        rows=args.rows,
        tables=3,
        entities=args.entities,
        features=args.features,
    )
    online = online_frame(args.online_entities, args.online_features, 11)
    online_parquet = data / "online_fv.parquet"
    online.write_parquet(online_parquet)
    print(
        f"data: spine {args.spine:,} × 3 views of {args.rows:,} rows ({3 * args.rows:,} feature rows, "
        f"{args.features} features each, {args.entities:,} entities/key); online {args.online_entities:,} "
        f"entities × {args.online_features} features; generated in {time.perf_counter() - t:.1f} s"
    )
    refs = [f"{name}:{f}" for name, spec in manifest["tables"].items() for f in spec["features"]]
    project = f"bench_{uuid.uuid4().hex[:8]}"
    repos: dict[str, Path] = {}
    worker = work / "feast_worker.py"  # outside the repos: `feast apply` imports every .py in a repo
    worker.write_text(FEAST_WORKER)
    if feast_py:
        for offline in ("file", "duckdb"):
            repo = work / f"feast_repo_{offline}"
            repo.mkdir()
            (repo / "feature_store.yaml").write_text(feast_yaml(project, offline, redis_url))
            (repo / "definitions.py").write_text(
                feast_definitions(data, manifest, online_parquet, args.online_features)
            )
            feast_cli = str(Path(feast_py).parent / "feast")
            r = subprocess.run([feast_cli, "apply"], cwd=repo, capture_output=True, text=True, check=False)
            if r.returncode != 0:
                print(f"feast apply ({offline}) failed: {r.stderr.strip()[-1500:]}")
                continue
            repos[offline] = repo

    # (a) historical retrieval --------------------------------------------------------------
    print("\n(a) historical retrieval (each run in a fresh process: read Parquet + join)")
    ours_runs = [bpit.run_worker(["--worker", "ours", "--data", str(data)]) for _ in range(args.repeat)]
    ours_ok = [r for r in ours_runs if "error" not in r]
    if not ours_ok:
        print(f"  ours failed: {ours_runs[0]['error']}")
        ours = {"error": "failed"}
    else:
        ours = sorted(ours_ok, key=lambda r: r["seconds"])[len(ours_ok) // 2]
        ours["peak_rss_mb"] = max(r["peak_rss_mb"] for r in ours_ok)
    results = {"ours": ours}
    print(
        f"  {'ours: point_in_time_join':34s} {fmt(ours, 'seconds', '8.2f')} s  peak RSS "
        f"{fmt(ours, 'peak_rss_mb', '7,.0f')} MB  rows {fmt(ours, 'rows', ',')} of {args.spine:,}  "
        f"(median of {len(ours_ok)})"
    )
    for offline, skip in (("duckdb", args.skip_duckdb), ("file", args.skip_dask)):
        label = f"feast {offline}{' (dask)' if offline == 'file' else ''} offline store"
        if skip:
            print(f"  {label:34s} skipped (flag)")
            continue
        if offline not in repos:
            print(f"  {label:34s} not measured (Feast unavailable)")
            continue
        res = run_json(
            [
                feast_py,  # type: ignore[list-item]
                str(worker),
                "historical",
                str(repos[offline]),
                str(data / "spine.parquet"),
                json.dumps(refs),
            ],
            timeout=args.timeout,
        )
        results[offline] = res
        if "error" in res:
            print(f"  {label:34s} FAILED: {res['error'][-600:]}")
            continue
        print(
            f"  {label:34s} {res['seconds']:8.2f} s  peak RSS {res['peak_rss_mb']:7,.0f} MB  rows "
            f"{res['rows']:,} of {args.spine:,}"
        )
        if "error" not in ours:
            print(
                f"      ours vs {offline}: {res['seconds'] / ours['seconds']:.1f}x faster, peak memory "
                f"{ours['peak_rss_mb'] / res['peak_rss_mb']:.2f} of Feast's "
                f"(goal: ≥ 50x faster, ≤ 0.5 of the memory)"
            )

    # (c) sync / materialize -----------------------------------------------------------------
    print(f"\n(c) sync throughput: {args.online_entities:,} entities × {args.online_features} features")
    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    layout = GroupLayout(
        "online_fv",
        "0123456789ab",
        "user",
        tuple(f"o{j:02d}" for j in range(args.online_features)),
        0,
        ("user_id",),
    )
    raw = redis.Redis.from_url(redis_url)
    with OnlineStore.from_url(redis_url, namespace=prefix) as store:
        t = time.perf_counter()
        wr = store.write(layout, online.rename({"event_ts": "event_ts", "created_ts": "created_ts"}))
        ours_write = args.online_entities / (time.perf_counter() - t)
        print(f"  ours: OnlineStore.write          {ours_write:>12,.0f} rows/s (applied {wr.applied:,})")
        feast_write = None
        repo = repos.get("duckdb") or repos.get("file")
        if repo is not None:
            res = run_json(
                [
                    feast_py,  # type: ignore[list-item]
                    str(worker),
                    "materialize",
                    str(repo),
                    (ONLINE_TS - timedelta(days=1)).isoformat(),
                    (ONLINE_TS + timedelta(days=1)).isoformat(),
                ],
                timeout=args.timeout,
            )
            if "error" in res:
                print(f"  feast materialize FAILED: {res['error'][-600:]}")
            else:
                feast_write = args.online_entities / res["seconds"]
                print(
                    f"  feast materialize (in-process)  {feast_write:>12,.0f} rows/s "
                    f"({res['seconds']:.1f} s, offline store of repo {repo.name})"
                )
        print(f"  ratio ours/feast: {ratio(ours_write, feast_write)} (goal ≥ 10x)")

        # (b) online reads ----------------------------------------------------------------------
        print(f"\n(b) online reads × {args.online_features} features (ms, p50 / p99)")
        pick = random.Random(5)
        n = args.online_entities
        ours_lat = {}
        for k, iters in ((1, 5000), (100, 1000)):

            def read(k: int = k) -> object:
                return [r.values for r in store.read([(layout, e) for e in pick.sample(range(n), k)]) if r]

            assert read(), "ours: online read returned nothing"
            ours_lat[k] = _percentiles(read, iters)
        feast_lat: dict[str, list[float]] = {}
        if repo is not None and feast_write is not None:
            fres = run_json(
                [
                    feast_py,  # type: ignore[list-item]
                    str(worker),
                    "online",
                    str(repo),
                    json.dumps([f"online_fv:{f}" for f in layout.features]),
                    str(n),
                    "5",
                ],
                timeout=args.timeout,
            )
            if "error" in fres:
                print(f"  feast get_online_features FAILED: {fres['error'][-600:]}")
            else:
                feast_lat = fres
        for k in (1, 100):
            o = ours_lat[k]
            f = feast_lat.get(str(k))
            feast_txt = f"feast p50 {f[0]:7.3f} p99 {f[1]:7.3f}" if f else "feast n/a"
            print(
                f"  {k:>3} entit{'y' if k == 1 else 'ies'}: ours p50 {o[0]:7.3f} p99 {o[1]:7.3f} "
                f"| {feast_txt}"
                f" | p99 feast/ours {ratio(f[1] if f else None, o[1])} (goal ≥ 5x)"
            )
    # cleanup: our prefix and Feast's project keys (only ours, never a flush)
    for pattern in (f"{prefix}*", f"*{project}*"):
        batch = list(raw.scan_iter(match=pattern, count=5000))
        for i in range(0, len(batch), 5000):
            raw.unlink(*batch[i : i + 5000])
    raw.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spine", type=int, default=1_000_000)
    parser.add_argument("--rows", type=int, default=3_400_000, help="rows per feature view")
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--features", type=int, default=5, help="features per historical view")
    parser.add_argument("--online-entities", type=int, default=100_000)
    parser.add_argument("--online-features", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--feast-venv", type=Path, default=ROOT / ".state" / "feast-venv")
    parser.add_argument("--skip-dask", action="store_true", help="skip Feast's file (dask) store")
    parser.add_argument("--skip-duckdb", action="store_true", help="skip Feast's duckdb store")
    parser.add_argument("--timeout", type=float, default=3600, help="per Feast step, seconds")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-vs-feast-"))
    try:
        url = os.environ.get("REDIS_URL")
        if url:
            run(args, url, work)
            return
        config = launcher.StackConfig(
            state_dir=work / "stack", redis_port=launcher.free_port(), kafka_port=launcher.free_port()
        )
        try:
            env = launcher.up(config)
            run(args, env["REDIS_URL"], work)
        finally:
            launcher.down(config)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
