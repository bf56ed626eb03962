"""``risk-serve`` at about twice its capacity, with and without load shedding (issue 9, D16).

Usage::

    .venv/bin/python bench/bench_overload.py [--factor 2.0] [--seconds 15] [--conns 256]
        [--inflight 32] [--trees 300] [--depth 6] [--events 20000]

What it does, all on this machine:

1. starts its own Redis + tansu broker (``risk_assets.stack.launcher``, free ports), trains and
   registers a champion and preloads online rows exactly as ``bench/bench_serving.py`` does;
2. **capacity**: one ``risk-serve`` worker with shedding off is driven open-loop at a rate far
   above what it can do for a few seconds; the achieved rate of 200s is its capacity;
3. the same offered load — ``--factor`` × capacity, open loop (latency from each request's
   scheduled start, ``bench/openloop.py``) over ``--conns`` keep-alive connections — against
   - **no shedding**: ``RISK_MAX_INFLIGHT`` so large it never triggers (the behaviour before
     issue 9: every request queues),
   - **shedding**: ``RISK_MAX_INFLIGHT=--inflight``: requests beyond it get an immediate 503;
4. prints, per mode: p50/p99 of the accepted (200) requests, goodput, share shed, p99 of the 503s,
   and the load average (``os.getloadavg``) before and after;
5. pushes one 256 MiB chunked body at the service (D15) and prints the answer, how much the client
   managed to send, and the service's RSS before and after.

Figures depend on the machine and on what else runs on it: read them with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_serving import (  # bench/ is not a package: imported from its directory
    ROOT,
    TOKEN,
    openloop,
    preload_online,
    scrape,
    simulate_events,
    stop_server,
    train_champion,
    wait_ready,
)


def oversize_chunked(port: int, total_mib: int = 256) -> dict[str, Any]:
    """Push a ``total_mib`` chunked body; the answer's status line and how much was sent."""
    import select
    import socket

    chunk = b"[" * 65536
    framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    head = (
        f"POST /v1/score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    sent, answer = 0, b""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head)
        try:
            while sent < total_mib * 1024 * 1024:
                s.sendall(framed)
                sent += len(chunk)
                if select.select([s], [], [], 0)[0]:
                    break
            answer = s.recv(65536)
        except OSError:
            pass
    return {"status_line": answer.split(b"\r\n", 1)[0].decode(errors="replace"), "sent_mib": sent / 2**20}


def start(env: dict[str, str], port: int, log: Path, inflight: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "risk_assets.serving.cli", "--port", str(port), "--log-level", "warning"]
    with log.open("wb") as fh:
        return subprocess.Popen(
            cmd,
            cwd=ROOT,
            env={**env, "RISK_MAX_INFLIGHT": str(inflight)},
            stdout=fh,
            stderr=subprocess.STDOUT,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--factor", type=float, default=2.0, help="offered load / measured capacity")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--conns", type=int, default=256)
    ap.add_argument("--inflight", type=int, default=32, help="RISK_MAX_INFLIGHT of the shedding run")
    ap.add_argument("--probe-rate", type=float, default=6000.0, help="offered rate of the capacity probe")
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
    work = Path(tempfile.mkdtemp(prefix="bench-overload-"))
    config = launcher.StackConfig(
        state_dir=work / "stack", redis_port=launcher.free_port(), kafka_port=launcher.free_port()
    )
    saved = {k: os.environ.pop(k) for k in ("REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS") if k in os.environ}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        endpoints = launcher.up(config)
        os.environ.update(saved)
        features = model_feature_columns(FEATURE_GROUPS)
        model = train_champion(features, args.trees, args.depth)
        lake = Lake(str(work / "lake"))
        version = registry.register(
            lake,
            model,
            {
                "features": features,
                "feature_groups": {g.name: g.version for g in FEATURE_GROUPS},
                "params": {"objective": "binary:logistic", "max_depth": args.depth, "trees": args.trees},
            },
        )
        registry.set_champion(lake, version, "bench")
        events, payloads = simulate_events(args.users, args.events)
        with OnlineStore.from_url(endpoints["REDIS_URL"], namespace="risk") as store:
            preload_online(store, events)
            store.mark_complete()
        bodies = work / "bodies.jsonl"
        bodies.write_bytes(b"\n".join(payloads) + b"\n")
        env = {
            **os.environ,
            "RISK_SERVE_TOKEN": TOKEN,
            "RISK_LAKE_URL": lake.url,
            "REDIS_URL": endpoints["REDIS_URL"],
            "KAFKA_BOOTSTRAP_SERVERS": endpoints["KAFKA_BOOTSTRAP_SERVERS"],
        }

        # Capacity: shedding off, offered far above what one worker does.
        port = launcher.free_port()
        proc = start(env, port, work / "capacity.log", 1_000_000)
        procs.append(proc)
        wait_ready(port)
        openloop(port, bodies, 200, 3, 32)  # warm-up
        probe = openloop(port, bodies, args.probe_rate, 5, 64)
        capacity = probe["ok_rps"]
        stop_server(proc)
        procs.remove(proc)
        offered = round(capacity * args.factor)
        print(
            f"capacity (1 worker, shedding off): {capacity:.0f} req/s; offered {offered} req/s "
            f"({args.factor}x) for {args.seconds:.0f} s over {args.conns} connections",
            flush=True,
        )

        results = {}
        for mode, inflight in (("no shedding", 1_000_000), (f"shedding ({args.inflight})", args.inflight)):
            port = launcher.free_port()
            proc = start(env, port, work / f"{mode.split()[0]}.log", inflight)
            procs.append(proc)
            wait_ready(port)
            openloop(port, bodies, 200, 3, 32)  # warm-up
            load0 = os.getloadavg()
            t0 = time.perf_counter()
            res = openloop(port, bodies, offered, args.seconds, args.conns)
            wall = time.perf_counter() - t0
            load1 = os.getloadavg()
            m = scrape(port)
            res["load_before"], res["load_after"] = load0, load1
            res["wall_s"] = round(wall, 1)
            res["rss_mb"] = round(m["process_resident_memory_bytes"] / 1e6)
            results[mode] = res
            other = {k: v for k, v in res["status"].items() if k not in ("200", "503")}
            print(
                f"  {mode:14s} accepted p50 {res['ok_p50_ms']} ms  p99 {res['ok_p99_ms']} ms  "
                f"goodput {res['ok_rps']}/s  shed {res['shed_share']:.1%} (503 p99 {res['shed_p99_ms']} ms)  "
                f"other {other or 0}  wall {res['wall_s']} s  RSS {res['rss_mb']} MB  "
                f"load average {load0[0]:.2f} -> {load1[0]:.2f}",
                flush=True,
            )
            stop_server(proc)
            procs.remove(proc)
        port = launcher.free_port()
        proc = start(env, port, work / "oversize.log", 64)
        procs.append(proc)
        wait_ready(port)
        rss0 = scrape(port)["process_resident_memory_bytes"] / 1e6
        big = oversize_chunked(port)
        rss1 = scrape(port)["process_resident_memory_bytes"] / 1e6
        results["oversize_chunked"] = {**big, "rss_before_mb": round(rss0), "rss_after_mb": round(rss1)}
        print(
            f"  256 MiB chunked body: answer {big['status_line']!r} after the client sent "
            f"{big['sent_mib']:.1f} MiB; RSS {rss0:.0f} -> {rss1:.0f} MB",
            flush=True,
        )
        stop_server(proc)
        procs.remove(proc)
        (work / "results.json").write_text(
            json.dumps({"capacity": capacity, "offered": offered, **results}, indent=1)
        )
        print(f"raw results: {work / 'results.json'}")
    finally:
        for proc in procs:
            stop_server(proc)
        launcher.down(config)


if __name__ == "__main__":
    main()
