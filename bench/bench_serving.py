"""Open-loop latency benchmark of ``risk-serve`` with a baseline measured in the same run.

Usage::

    .venv/bin/python bench/bench_serving.py [--rates 200,500,1000,1500] [--seconds 20]
        [--baseline-rates 25,50,75] [--before-ref main] [--users 20000] [--trees 300] [--depth 6]

What it does, all on this machine:

1. starts its own Redis + tansu broker through ``risk_assets.stack.launcher`` on free ports;
2. trains a realistically sized champion (``--trees`` trees of depth ``--depth``, binary:logistic)
   on synthetic data over the real model input list (``model_feature_columns(FEATURE_GROUPS)``:
   7 request-time + 135 online features) and registers it in a temporary lake;
3. simulates traffic (``risk-sim``'s generator), keeps the money-moving and login events, and
   preloads the online tiles of the whole simulation (what risk-serve reads) and, for the services
   of ``--before-ref`` that read snapshot rows, random rows under their group versions;
4. writes the events as request bodies (JSONL) and runs ``bench/openloop.py`` (open
   loop, latency from the scheduled start) against ``risk-serve`` at each rate;
5. the **baseline**: the same service, same features, same model, but the naive scoring path —
   ``DMatrix`` + ``predict`` and exact SHAP (``pred_contribs=True``) on every request — started by
   this script (``--baseline-server``, a patched ``ScoringService.finish``; production code
   has no such switch);
6. ``--before-ref REF``: also the service as it was at git ``REF`` (its ``risk_assets`` extracted
   with ``git archive`` and imported from there), same stack, same model, same rates — a before/after
   of a serving change measured in one run;
7. prints p50/p99/p99.9/errors, server CPU per request (the server process's own CPU time, from its
   ``process_cpu_seconds_total``) and the load average per rate, and the highest rate with
   p99 < 10 ms per series.

On a machine with 2+ cores the load generator is pinned to CPU 0 and the server to CPU 1
(``taskset``), so the generator does not steal the server's core.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
OPENLOOP = Path(os.environ.get("OPENLOOP", str(Path(__file__).resolve().parent / "openloop.py")))
TOKEN = "bench-token"


# ------------------------------------------------------------------------------------------------
# baseline server (runs in its own process)


def run_baseline_server(port: int) -> None:
    """risk-serve with the naive scoring path: DMatrix + predict and exact SHAP for every event."""
    import uvicorn
    import xgboost as xgb

    from risk_assets.serving import app as app_module
    from risk_assets.serving.config import ServeConfig

    def naive_finish(
        self: Any, model: Any, events: list[Any], x: Any, degraded: bool
    ) -> list[dict[str, Any]]:
        dm = xgb.DMatrix(x, missing=np.nan)
        scores = model.booster.predict(dm, validate_features=False)
        contribs = model.booster.predict(dm, pred_contribs=True, validate_features=False)
        names = model.plan.features
        results = []
        now_ms = time.time_ns() // 1_000_000
        for i, ev in enumerate(events):
            score = float(scores[i])
            decision = self.decide(score, *self.thresholds(model))
            self.metrics.events_scored[decision] += 1
            c = contribs[i, :-1]
            top = np.argsort(-c)[: self.config.reasons_top_k]
            n_missing = int(np.isnan(x[i]).sum())
            self.predictions.offer(
                (
                    ev.event_id,
                    ev.event_ts,
                    now_ms,
                    model.version,
                    score,
                    decision,
                    degraded,
                    n_missing,
                    x[i],
                    None,
                    None,
                )
            )
            results.append(
                {
                    "event_id": ev.event_id,
                    "score": score,
                    "decision": decision,
                    "model_version": model.version,
                    "reasons": [{"feature": names[j], "contribution": float(c[j])} for j in top if c[j] > 0],
                    "features_missing": n_missing,
                    "degraded": degraded,
                }
            )
        return results

    app_module.ScoringService.finish = naive_finish  # type: ignore[method-assign]
    app = app_module.create_app(ServeConfig.from_env())
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


# ------------------------------------------------------------------------------------------------
# setup


def train_champion(features: list[str], trees: int, depth: int, seed: int = 11) -> bytes:
    """A binary:logistic booster of ``trees`` full-depth trees over ``features``."""
    import xgboost as xgb

    rng = np.random.default_rng(seed)
    n = 40_000
    x = rng.gamma(2.0, 2.0, size=(n, len(features)))
    x[rng.random(x.shape) < 0.2] = np.nan
    w = rng.normal(size=len(features)) * (rng.random(len(features)) < 0.3)
    margin = np.nan_to_num(x) @ w / np.sqrt(len(features)) + rng.normal(size=n)
    y = (margin > np.quantile(margin, 0.97)).astype(float)  # ~3% positives
    booster = xgb.train(
        {
            "objective": "binary:logistic",
            "max_depth": depth,
            "eta": 0.05,
            "nthread": 2,
            "seed": seed,
            "subsample": 0.8,
            "colsample_bytree": 0.8,
        },
        xgb.DMatrix(x, label=y, missing=np.nan),
        num_boost_round=trees,
    )
    return bytes(booster.save_raw("ubj"))


def simulate_events(users: int, limit: int) -> tuple[pl.DataFrame, list[bytes], pl.DataFrame]:
    """Simulated events (frame + JSON payloads), login and money-moving types, at most ``limit``;
    and every event and label of the simulation (the online tiles are built from them)."""
    from risk_assets.simulator.config import SimConfig
    from risk_assets.simulator.encoding import encode_events
    from risk_assets.simulator.generator import generate

    cfg = SimConfig(
        seed=5,
        start=datetime(2026, 8, 1, tzinfo=UTC),
        hours=6,
        users=users,
        events_per_day=max(100_000, users * 10),
    )
    out = generate(cfg)
    events = out.events.filter(
        pl.col("event_type").is_in(["login", "withdrawal", "card_payment", "p2p_trade", "deposit"])
    ).head(limit)
    return events, encode_events(events), out


def group_versions(src: Path) -> dict[str, str]:
    """``{group: version}`` of the feature groups as defined in the source tree ``src``."""
    code = "import json; from risk_assets.features.groups import FEATURE_GROUPS as G; "
    code += "print(json.dumps({g.name: g.version for g in G}))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=src, env={**os.environ, "PYTHONPATH": str(src)},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def preload_online(
    store: Any, events: pl.DataFrame, sim: Any, row_versions: list[dict[str, str]]
) -> tuple[int, int]:
    """Random online rows (v1 layout, what a service before the tiles reads) for every (group,
    entity) the events involve, and the tiles of the whole simulation (what risk-serve reads now);
    returns (rows, tiles) written."""
    from risk_assets.features.groups import FEATURE_GROUPS
    from risk_assets.features.ingestion import group_layout
    from risk_assets.features.online_tiles import TileStore, tile_layout
    from risk_assets.features.tiles import build_tiles

    rng = np.random.default_rng(3)
    written = tiles = 0
    ts = datetime(2026, 8, 1, tzinfo=UTC) - timedelta(minutes=5)
    tile_store = TileStore(store)
    for g in FEATURE_GROUPS:
        keys = list(g.entity.keys)
        ents = events.select(keys).drop_nulls().unique()
        if ents.height == 0:
            continue
        vals = rng.gamma(2.0, 2.0, size=(ents.height, len(g.feature_names)))
        frame = ents.with_columns(
            pl.lit(ts).cast(pl.Datetime("ms", "UTC")).alias("event_ts"),
            *[pl.Series(f, vals[:, j]) for j, f in enumerate(g.feature_names)],
        )
        for versions in row_versions:
            layout = replace(group_layout(g), version=versions.get(g.name, g.version))
            written += store.write(layout, frame).applied
        built = build_tiles(g, sim.events, sim.labels if g.needs_labels else None)
        tiles += tile_store.write(tile_layout(g), built).applied
    return written, tiles


def wait_ready(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"service on {port} not ready after {timeout} s")


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            out[k] = float(v)
    return out


def openloop(
    port: int, bodies: Path, rate: float, seconds: float, conns: int | None = None
) -> dict[str, Any]:
    """Run bench/openloop.py against ``/v1/score`` (``conns``: its connection count, default its own)."""
    cmd = [
        *pin(0),
        sys.executable,
        str(OPENLOOP),
        "--url",
        f"http://127.0.0.1:{port}/v1/score",
        "--bodies",
        str(bodies),
        "--header",
        f"Authorization: Bearer {TOKEN}",
        "--rate",
        str(rate),
        "--seconds",
        str(seconds),
        *(["--conns", str(conns)] if conns is not None else []),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def pin(cpu: int) -> list[str]:
    """``taskset -c cpu`` as a command prefix when there are 2+ cores and taskset exists."""
    if (os.cpu_count() or 1) >= 2 and shutil.which("taskset"):
        return ["taskset", "-c", str(cpu)]
    return []


def busy_cores() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as fh:
        vals = [float(v) for v in fh.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = vals[3] + vals[4]  # idle + iowait
    return (sum(vals) - idle) / tick, sum(vals) / tick


def run_series(name: str, port: int, bodies: Path, rates: list[int], seconds: float) -> list[dict[str, Any]]:
    rows = []
    openloop(port, bodies, 100, 3)  # warm-up (connections, caches, allocator)
    for rate in rates:
        before = scrape(port)
        busy0, _ = busy_cores()
        t0 = time.perf_counter()
        res = openloop(port, bodies, rate, seconds)
        wall = time.perf_counter() - t0
        busy1, _ = busy_cores()
        after = scrape(port)
        cpu = after["process_cpu_seconds_total"] - before["process_cpu_seconds_total"]
        res["server_cpu_share"] = round(cpu / seconds, 3)
        res["server_cpu_ms_per_request"] = round(cpu * 1000 / max(1, res["status"].get("200", 0)), 3)
        res["machine_busy_cores"] = round((busy1 - busy0) / wall, 2)
        res["errors"] = sum(v for k, v in res["status"].items() if k != "200")
        res["load1"] = round(os.getloadavg()[0], 2)
        rows.append(res)
        print(
            f"  {name:9s} rate {rate:5d}/s  achieved {res['achieved_rps']:7.1f}/s"
            f"  p50 {res['p50_ms']:7.2f} ms"
            f"  p99 {res['p99_ms']:8.2f} ms  p99.9 {res['p999_ms']:8.2f} ms  max {res['max_ms']:8.2f} ms"
            f"  errors {res['errors']}  server CPU {res['server_cpu_share']:.2f} core"
            f" ({res['server_cpu_ms_per_request']:.2f} ms/req)"
            f"  machine busy {res['machine_busy_cores']:.2f} of {os.cpu_count()} cores"
            f"  load {res['load1']:.2f}",
            flush=True,
        )
        if res["p99_ms"] > 1000 or res["achieved_rps"] < 0.9 * rate:
            print(f"  {name}: saturated, stopping this series", flush=True)
            break
    return rows


def best_rate(rows: list[dict[str, Any]], limit_ms: float = 10.0) -> int | None:
    ok = [r["rate"] for r in rows if r["p99_ms"] < limit_ms and r["errors"] == 0]
    return int(max(ok)) if ok else None


def start_server(
    env: dict[str, str], port: int, log: Path, baseline: bool, src: Path | None = None
) -> subprocess.Popen[bytes]:
    """The server on CPU 1; ``src``: import ``risk_assets`` from that tree (the ``--before-ref`` copy)."""
    if baseline:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--baseline-server", "--port", str(port)]
    else:
        cmd = [sys.executable, "-m", "risk_assets.serving.cli", "--port", str(port), "--log-level", "warning"]
    if src is not None:  # `python -m` puts the working directory first on sys.path
        env = {**env, "PYTHONPATH": str(src)}
    with log.open("wb") as fh:
        return subprocess.Popen(
            [*pin(1), *cmd], cwd=src or ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT
        )


def extract_ref(ref: str, dest: Path) -> Path:
    """``risk_assets`` as it is at git ``ref``, extracted under ``dest`` (a directory holding a
    ``risk_assets`` package is used as it is)."""
    if (Path(ref) / "risk_assets").is_dir():
        return Path(ref)
    dest.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "risk_assets"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="200,500,1000,1500")
    ap.add_argument("--baseline-rates", default="25,50,75", help="empty: no naive baseline series")
    ap.add_argument(
        "--before-ref",
        default="",
        help="git refs (or source trees), comma-separated, of services to compare with",
    )
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--trees", type=int, default=300)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--baseline-server", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.baseline_server:
        run_baseline_server(args.port)
        return

    from risk_assets.features.groups import FEATURE_GROUPS
    from risk_assets.features.online_store import OnlineStore
    from risk_assets.lake import Lake
    from risk_assets.models import registry
    from risk_assets.models.training_set import model_feature_columns
    from risk_assets.stack import launcher

    load1 = os.getloadavg()[0]
    print(
        f"machine: {os.cpu_count()} cores, load average {load1:.2f} at start "
        "(other work on the machine inflates the tails; see 'machine busy' per step)",
        flush=True,
    )
    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    config = launcher.StackConfig(
        state_dir=work / "stack", redis_port=launcher.free_port(), kafka_port=launcher.free_port()
    )
    saved = {k: os.environ.pop(k) for k in ("REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS") if k in os.environ}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        endpoints = launcher.up(config)
        os.environ.update(saved)
        features = model_feature_columns(FEATURE_GROUPS)
        t = time.perf_counter()
        model = train_champion(features, args.trees, args.depth)
        print(
            f"trained {args.trees} trees of depth {args.depth} on {len(features)} features "
            f"in {time.perf_counter() - t:.1f} s ({len(model) / 1e6:.1f} MB UBJ)",
            flush=True,
        )
        lake = Lake(str(work / "lake"))
        version = registry.register(
            lake,
            model,
            {
                "features": features,
                # no feature_groups: the services of --before-ref run other group versions
                "params": {"objective": "binary:logistic", "max_depth": args.depth, "trees": args.trees},
            },
        )
        registry.set_champion(lake, version, "bench")

        t = time.perf_counter()
        events, payloads, sim = simulate_events(args.users, args.events)
        with OnlineStore.from_url(endpoints["REDIS_URL"], namespace="risk") as store:
            befores = [
                extract_ref(ref, work / f"before{j}")
                for j, ref in enumerate(r for r in args.before_ref.split(",") if r)
            ]
            rows, tiles = preload_online(store, events, sim, [group_versions(b) for b in befores])
            store.mark_complete()  # as the sync would after a full resync: risk-serve is ready
        print(
            f"{events.height} events ({dict(events['event_type'].value_counts().iter_rows())}); "
            f"{rows} online rows and {tiles} tiles preloaded in {time.perf_counter() - t:.1f} s",
            flush=True,
        )
        bodies = work / "bodies.jsonl"
        bodies.write_bytes(b"\n".join(payloads) + b"\n")

        env = {
            **os.environ,
            "RISK_SERVE_TOKEN": TOKEN,
            "RISK_LAKE_URL": lake.url,
            "REDIS_URL": endpoints["REDIS_URL"],
            "KAFKA_BOOTSTRAP_SERVERS": endpoints["KAFKA_BOOTSTRAP_SERVERS"],
        }
        results: dict[str, list[dict[str, Any]]] = {}
        series: list[tuple[str, bool, str, Path | None]] = [("risk-serve", False, args.rates, None)]
        for ref, src in zip((r for r in args.before_ref.split(",") if r), befores, strict=True):
            series.append((f"before:{Path(ref).name or ref}"[:24], False, args.rates, src))
        if args.baseline_rates:
            series.append(("baseline", True, args.baseline_rates, None))
        for name, baseline, rates, src in series:
            port = launcher.free_port()
            log_name = name.replace(":", "_").replace("/", "_")
            proc = start_server(env, port, work / f"{log_name}.log", baseline, src)
            procs.append(proc)
            wait_ready(port)
            path = (
                "DMatrix+predict, exact SHAP on every request"
                if baseline
                else f"risk_assets from {src}"
                if src is not None
                else "inplace_predict, approximate reasons for review/block only"
            )
            print(f"{name}: {path}", flush=True)
            results[name] = run_series(name, port, bodies, [int(r) for r in rates.split(",")], args.seconds)
            m = scrape(port)
            decisions = {
                k.split('"')[1]: int(v)
                for k, v in m.items()
                if k.startswith("risk_serve_events_scored_total")
            }
            print(
                f"  {name}: decisions {decisions}; prediction log sent "
                f"{int(m['risk_serve_prediction_log_sent_total'])}, dropped "
                f"{int(m['risk_serve_prediction_log_dropped_total'])}; degraded "
                f"{int(m['risk_serve_redis_degraded_total'])}; RSS "
                f"{m['process_resident_memory_bytes'] / 1e6:.0f} MB",
                flush=True,
            )
            stop_server(proc)
            procs.remove(proc)

        print("\nsummary (p99 in ms by rate)")
        for name, rows_ in results.items():
            cells = "  ".join(f"{r['rate']}/s: {r['p99_ms']:.2f}" for r in rows_)
            print(f"  {name:10s} {cells}   highest rate with p99 < 10 ms: {best_rate(rows_)}")
        for other in (n for n in results if n != "risk-serve"):
            common = [r for r in results["risk-serve"] if r["rate"] in {b["rate"] for b in results[other]}]
            for r in common:
                b = next(x for x in results[other] if x["rate"] == r["rate"])
                print(
                    f"  at {r['rate']:.0f}/s: {other} p50 / p99 / server CPU per request are "
                    f"{b['p50_ms'] / r['p50_ms']:.2f}x / {b['p99_ms'] / r['p99_ms']:.2f}x / "
                    f"{b['server_cpu_ms_per_request'] / r['server_cpu_ms_per_request']:.2f}x risk-serve's"
                )
        (work / "results.json").write_text(json.dumps(results, indent=1))
        print(f"\nraw results: {work / 'results.json'}")
    finally:
        for proc in procs:
            stop_server(proc)
        launcher.down(config)


if __name__ == "__main__":
    main()
