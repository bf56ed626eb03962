"""Cost of request-time features as definitions in training-set building: the same Python function
risk-serve calls, run once per spine row, against the former vectorized Polars expressions of the
exchange's ``req_*`` list (the baseline, measured in the same run).

Run: ``.venv/bin/python bench/bench_request_features.py [--rows 200000] [--repeat 3]``.

* Input: seeded exchange events of the simulator (money-moving and others), ``--rows`` rows.
* Figures: rows/s of ``EXCHANGE_REQUEST.frame`` (per-row function) and of the former expressions,
  best of ``--repeat``, their ratio, and the load average. Both give equal frames (checked).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import polars as pl

    from risk_assets.models.request_features import EXCHANGE_REQUEST
    from risk_assets.simulator.config import SimConfig
    from risk_assets.simulator.generator import generate

    former = {
        "req_amount_usd": pl.col("amount_usd").cast(pl.Float64),
        "req_is_withdrawal": (pl.col("event_type") == "withdrawal").cast(pl.Float64),
        "req_is_card_payment": (pl.col("event_type") == "card_payment").cast(pl.Float64),
        "req_is_p2p_trade": (pl.col("event_type") == "p2p_trade").cast(pl.Float64),
        "req_card_declined": (pl.col("status") == "declined").fill_null(False).cast(pl.Float64),
        "req_p2p_buy": (pl.col("side") == "buy").fill_null(False).cast(pl.Float64),
        "req_hour_of_day": pl.col("event_ts").dt.hour().cast(pl.Float64),
    }
    hours = max(1, args.rows // 8_000 + 1)
    events = generate(
        SimConfig(seed=3, start=datetime(2026, 8, 1, tzinfo=UTC), hours=hours, events_per_day=200_000)
    ).events.head(args.rows)

    def best(fn):
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t)
        return min(times), out

    t_def, a = best(lambda: EXCHANGE_REQUEST.frame(events))
    t_old, b = best(lambda: events.select(**former))
    assert a.equals(b), "the definition and the former expressions disagree"
    n = events.height
    print(
        f"rows {n:,}; definition (per-row function): {t_def:.3f} s = {n / t_def:,.0f} rows/s "
        f"({t_def / n * 1e6:.2f} µs/row)"
    )
    print(f"former Polars expressions (baseline): {t_old:.3f} s = {n / t_old:,.0f} rows/s")
    print(f"ratio definition/baseline: {t_def / t_old:.1f}x slower")
    print("load average:", " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
