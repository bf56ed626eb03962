"""The champion's latency with and without a shadow challenger, at a fixed request rate.

Usage::

    .venv/bin/python bench/bench_shadow.py [--rate 250] [--seconds 20] [--rounds 3]
        [--users 20000] [--events 20000] [--trees 300] [--depth 6]

What it does, all on this machine (the setup of ``bench_serving.py``, whose helpers it uses):

1. starts its own Redis + tansu broker on free ports;
2. trains a champion and a challenger of the same size (``--trees`` trees of depth ``--depth``,
   different seeds) over the real model input list and registers both in a temporary lake;
3. simulates traffic and preloads online rows for every entity it involves;
4. starts one ``risk-serve`` and runs ``bench/openloop.py`` at ``--rate`` for ``--seconds`` in
   alternating phases — shadow off (no shadow pointer), shadow on (``registry.set_shadow``, waits
   until the service reports it loaded) — ``--rounds`` times, so that machine noise hits both;
5. prints per phase p50/p99/p99.9 of the champion's responses (client side, open loop), an upper
   bound of the p99 of the server's own handler time (the request histogram's bucket edge: no
   client or kernel queueing, which dominates on a loaded machine), the service's CPU per request, the
   machine's busy cores and load average, the shadow's scored/dropped counters, and the ratio of
   the median p99 with shadow to without (the target: at most 1.10).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_serving as bs


def delta(before: dict[str, float], after: dict[str, float], key: str) -> int:
    return int(after.get(key, 0) - before.get(key, 0))


def handler_p99_ms(before: dict[str, float], after: dict[str, float]) -> float:
    """Upper bound (bucket edge, ms) of the p99 of the server's own ``score`` handler time in the
    phase: from the request histogram's delta (time in the handler, no client or kernel queueing)."""
    prefix = 'risk_serve_request_duration_seconds_bucket{endpoint="score",le="'
    edges = sorted(
        (float(k[len(prefix) : -2]), after[k] - before.get(k, 0.0))
        for k in after
        if k.startswith(prefix) and not k.endswith('+Inf"}')
    )
    total = after.get('risk_serve_request_duration_seconds_count{endpoint="score"}', 0.0) - before.get(
        'risk_serve_request_duration_seconds_count{endpoint="score"}', 0.0
    )
    for le, cumulative in edges:
        if total and cumulative >= 0.99 * total:
            return le * 1000
    return float("inf")


def phase(name: str, port: int, bodies: Path, rate: int, seconds: float) -> dict[str, Any]:
    before = bs.scrape(port)
    busy0, _ = bs.busy_cores()
    t0 = time.perf_counter()
    res = bs.openloop(port, bodies, rate, seconds)
    wall = time.perf_counter() - t0
    busy1, _ = bs.busy_cores()
    after = bs.scrape(port)
    cpu = after["process_cpu_seconds_total"] - before["process_cpu_seconds_total"]
    ok = max(1, res["status"].get("200", 0))
    res.update(
        name=name,
        errors=sum(v for k, v in res["status"].items() if k != "200"),
        cpu_ms_per_request=round(cpu * 1000 / ok, 3),
        busy_cores=round((busy1 - busy0) / wall, 2),
        load1=round(os.getloadavg()[0], 2),
        handler_p99_ms=handler_p99_ms(before, after),
        shadow_scored=delta(before, after, "risk_shadow_scored_total"),
        shadow_dropped=delta(before, after, "risk_shadow_dropped_total"),
    )
    print(
        f"  {name:10s} achieved {res['achieved_rps']:7.1f}/s  p50 {res['p50_ms']:6.2f} ms"
        f"  p99 {res['p99_ms']:7.2f} ms  p99.9 {res['p999_ms']:7.2f} ms  errors {res['errors']}"
        f"  handler p99 <= {res['handler_p99_ms']:g} ms"
        f"  server CPU {res['cpu_ms_per_request']:.2f} ms/req  machine busy {res['busy_cores']:.2f}"
        f"/{os.cpu_count()} cores  load1 {res['load1']:.2f}"
        f"  shadow scored {res['shadow_scored']} dropped {res['shadow_dropped']}",
        flush=True,
    )
    return res


def shadow_loaded(port: int, version: str) -> bool:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return f'risk_shadow_model_info{{version="{version}"' in r.read().decode()


def wait(predicate: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=int, default=250)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--trees", type=int, default=300)
    ap.add_argument("--depth", type=int, default=6)
    args = ap.parse_args()

    from risk_assets.features.groups import FEATURE_GROUPS
    from risk_assets.features.online_store import OnlineStore
    from risk_assets.lake import Lake
    from risk_assets.models import registry
    from risk_assets.models.training_set import model_feature_columns
    from risk_assets.stack import launcher

    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()} at start", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-shadow-"))
    config = launcher.StackConfig(
        state_dir=work / "stack", redis_port=launcher.free_port(), kafka_port=launcher.free_port()
    )
    saved = {k: os.environ.pop(k) for k in ("REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS") if k in os.environ}
    proc: subprocess.Popen[bytes] | None = None
    try:
        endpoints = launcher.up(config)
        os.environ.update(saved)
        features = model_feature_columns(FEATURE_GROUPS)
        lake = Lake(str(work / "lake"))
        meta = {
            "features": features,
            "feature_groups": {g.name: g.version for g in FEATURE_GROUPS},
            "params": {"objective": "binary:logistic", "max_depth": args.depth, "trees": args.trees},
        }
        champion = registry.register(lake, bs.train_champion(features, args.trees, args.depth, 11), meta)
        registry.set_champion(lake, champion, "bench")
        challenger = registry.register(lake, bs.train_champion(features, args.trees, args.depth, 12), meta)
        size = f"{args.trees} trees, depth {args.depth}"
        print(f"champion {champion}, challenger {challenger} ({size})", flush=True)

        events, payloads = bs.simulate_events(args.users, args.events)
        with OnlineStore.from_url(endpoints["REDIS_URL"], namespace="risk") as store:
            bs.preload_online(store, events)
            store.mark_complete()
        bodies = work / "bodies.jsonl"
        bodies.write_bytes(b"\n".join(payloads) + b"\n")
        env = {
            **os.environ,
            "RISK_SERVE_TOKEN": bs.TOKEN,
            "RISK_LAKE_URL": lake.url,
            "REDIS_URL": endpoints["REDIS_URL"],
            "KAFKA_BOOTSTRAP_SERVERS": endpoints["KAFKA_BOOTSTRAP_SERVERS"],
            "RISK_MODEL_POLL_S": "0.5",
        }
        port = launcher.free_port()
        proc = bs.start_server(env, port, work / "risk-serve.log", baseline=False)
        bs.wait_ready(port)
        bs.openloop(port, bodies, 100, 3)  # warm-up
        rows: list[dict[str, Any]] = []
        print(f"rate {args.rate}/s, {args.seconds:g} s per phase, {args.rounds} rounds", flush=True)
        for _ in range(args.rounds):
            registry.clear_shadow(lake, "bench: off")
            wait(lambda: not shadow_loaded(port, challenger), "shadow unloaded")
            rows.append(phase("no shadow", port, bodies, args.rate, args.seconds))
            registry.set_shadow(lake, challenger, "bench: on")
            wait(lambda: shadow_loaded(port, challenger), "shadow loaded")
            rows.append(phase("shadow", port, bodies, args.rate, args.seconds))
        m = bs.scrape(port)
        print(
            f"prediction log sent {int(m['risk_serve_prediction_log_sent_total'])}, dropped "
            f"{int(m['risk_serve_prediction_log_dropped_total'])}; RSS "
            f"{m['process_resident_memory_bytes'] / 1e6:.0f} MB",
            flush=True,
        )
        off = [r for r in rows if r["name"] == "no shadow"]
        on = [r for r in rows if r["name"] == "shadow"]
        summary = {}
        for key in ("p50_ms", "p99_ms", "p999_ms", "handler_p99_ms", "cpu_ms_per_request"):
            a, b = statistics.median(r[key] for r in off), statistics.median(r[key] for r in on)
            summary[key] = (a, b)
            print(f"median {key:20s} no shadow {a:7.2f}  shadow {b:7.2f}  ratio {b / a:5.2f}", flush=True)
        ratio = summary["p99_ms"][1] / summary["p99_ms"][0]
        print(
            f"champion p99 with shadow / without: {ratio:.2f} (target <= 1.10: "
            f"{'met' if ratio <= 1.10 else 'NOT met'}); load average at end {os.getloadavg()}",
            flush=True,
        )
    finally:
        if proc is not None:
            bs.stop_server(proc)
        launcher.down(config)


if __name__ == "__main__":
    main()
