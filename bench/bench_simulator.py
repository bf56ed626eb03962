"""Throughput of risk-sim: generation alone, history writing incl. Parquet, vs. a naive baseline.

Run: ``.venv/bin/python bench/bench_simulator.py [--events-per-day 1000000] [--workers 2]``.
The baseline is what the simulator must not be: a Python loop that builds one dict per event with
the standard ``random`` module (same kind of choices: user by activity, type, device, IP, amount),
measured on a small sample in the same run. Generation is also measured with drift scenarios active
all day (an ATO surge, card testing from a new network, a market event: ~30 % more events, ~20× the
fraud cases built in Python), against the default configuration in the same run. Every figure comes
with its CPU time per event (process time, so other load on the machine inflates it less than wall
time) and the load average.
"""

from __future__ import annotations

import argparse
import bisect
import os
import random
import tempfile
import time
from datetime import timedelta

from risk_assets.lake import Lake
from risk_assets.simulator import SimConfig, build_population, generate
from risk_assets.simulator.drift import DriftScenario
from risk_assets.simulator.writers import write_history


def _load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _best_generate(cfg: SimConfig, pop: object, workers: int, repeat: int) -> tuple[int, float, float]:
    """(events, best wall seconds, CPU seconds of that run) over ``repeat`` runs."""
    best, cpu, n = float("inf"), 0.0, 0
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        data = generate(cfg, pop, workers=workers)  # type: ignore[arg-type]
        wall = time.perf_counter() - w
        if wall < best:
            best, cpu, n = wall, time.process_time() - c, data.events.height
    return n, best, cpu


def naive_events(n: int, users: int, seed: int) -> list[dict]:
    """A per-event Python loop generator (the baseline)."""
    rnd = random.Random(seed)
    weights = [rnd.lognormvariate(0, 1.3) for _ in range(users)]
    cum = []
    total = 0.0
    for w in weights:
        total += w
        cum.append(total)
    types = ["login", "security_change", "deposit", "withdrawal", "card_payment", "p2p_trade"]
    out = []
    t0 = 1_793_491_200_000
    for i in range(n):
        u = bisect.bisect_right(cum, rnd.random() * total)
        etype = rnd.choices(types, weights=[42, 1, 17, 12, 14, 10])[0]
        ev = {
            "event_id": f"ev_{i:016x}",
            "event_type": etype,
            "event_ts": t0 + rnd.randrange(3_600_000),
            "user_id": f"u_{u:016x}",
            "device_id": f"d_{u * 4 + rnd.randrange(3):016x}",
            "ip": ".".join(
                str(x) for x in (rnd.randrange(11, 224), rnd.randrange(256), rnd.randrange(256), 7)
            ),
            "ip_country": rnd.choice(["US", "DE", "GB", "BR"]),
            "ip_asn": rnd.choice([7922, 3320, 2856]),
        }
        if etype not in ("login", "security_change"):
            usd = rnd.lognormvariate(4.4, 0.8)
            ev.update(amount=round(usd, 2), currency="USD", amount_usd=round(usd, 2))
        ev["ingest_ts"] = ev["event_ts"] + int(rnd.expovariate(1 / 1200))
        out.append(ev)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events-per-day", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    cfg = SimConfig(hours=24, events_per_day=args.events_per_day, users=args.users)

    t = time.perf_counter()
    pop = build_population(cfg)
    print(f"population: {cfg.users:,} users in {time.perf_counter() - t:.2f}s")

    print(_load())
    for workers in sorted({1, args.workers}):
        n, best, cpu = _best_generate(cfg, pop, workers, args.repeat)
        print(
            f"generate 1 day, workers={workers}: {n:,} events in {best:.2f}s (best of {args.repeat}) "
            f"= {n / best:,.0f} events/s, {cpu / n * 1e6:.2f} µs CPU/event; {_load()}"
        )
        if workers == 1:
            one_thread = n / best

    day = (cfg.start, cfg.start + timedelta(days=1))
    drifted = cfg.with_(
        drift_scenarios=(
            DriftScenario("attack_surge", *day, target="ato"),
            DriftScenario("new_attack_network", *day, target="card_testing"),
            DriftScenario("legit_market_event", *day),
        )
    )
    dn, dbest, dcpu = _best_generate(drifted, pop, 1, args.repeat)
    print(
        f"generate 1 day with 3 drift scenarios all day, workers=1: {dn:,} events in {dbest:.2f}s "
        f"= {dn / dbest:,.0f} events/s ({dn / dbest / one_thread:.2f}x the default config), "
        f"{dcpu / dn * 1e6:.2f} µs CPU/event; {_load()}"
    )

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        stats = write_history(cfg, Lake(tmp), workers=args.workers)
        el = time.perf_counter() - t
    print(
        f"history 1 day incl. Parquet: {stats.events:,} events, {stats.partitions} partitions, "
        f"{stats.bytes / 1e6:.0f} MB in {el:.2f}s = {stats.events / el:,.0f} events/s"
    )

    sample = 100_000
    t = time.perf_counter()
    naive_events(sample, cfg.users, 7)
    naive = sample / (time.perf_counter() - t)
    print(f"naive per-event Python loop: {naive:,.0f} events/s ({sample:,} events)")
    print(f"speed-up of vectorised generation: {n / best / naive:.1f}x")


if __name__ == "__main__":
    main()
