"""Throughput of the batch engine on a declared (non-exchange) source: card payments.

Run: ``.venv/bin/python bench/bench_sources.py [--transactions 2000000] [--days 120] [--repeat 3]``.

* Input: seeded card transactions in the card source's own layout (``tx_id``, ``tx_ts``,
  ``customer_id``, ``terminal_id``, ``amount``, ``tx_type`` ∈ {purchase, refund}, ``entry_mode``)
  spread uniformly over ``--days`` days (``--customers`` customers, ``--terminals`` terminals), and
  fraud labels on ~1% of them (``transaction_id``, ``known_ts`` 0–14 days later).
* Groups: the three card groups of ``tests/features/test_sources.py`` (customer: 14 features;
  terminal: delayed 1/7/30-day fraud-rate windows and 90-day chargeback rate; customer × terminal),
  computed in one scan with ``compute_feature_groups`` for the last 30 days (the rest is lookback).
* Figure: input transactions / wall seconds, best of ``--repeat``; load average printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--transactions", type=int, default=2_000_000)
    ap.add_argument("--days", type=int, default=120)
    ap.add_argument("--customers", type=int, default=50_000)
    ap.add_argument("--terminals", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import numpy as np
    import polars as pl

    from risk_assets.features.batch import compute_feature_groups
    from tests.features.test_sources import (
        CARD_FRAUD,
        CARD_TX,
        customer_group,
        customer_terminal_group,
        terminal_group,
    )

    rng = np.random.default_rng(7)
    n = args.transactions
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    t0_ms = int(t0.timestamp() * 1000)
    ts = np.sort(t0_ms + rng.integers(0, args.days * 86_400_000, n))
    tx = pl.DataFrame(
        {
            "tx_id": [f"tx{i:09d}" for i in range(n)],
            "tx_ts": ts,
            "ingested_at": ts + rng.integers(0, 5_000, n),
            "customer_id": [f"c{i}" for i in rng.integers(0, args.customers, n)],
            "terminal_id": [f"t{i}" for i in rng.integers(0, args.terminals, n)],
            "amount": np.round(rng.lognormal(3.5, 1.0, n), 2),
            "tx_type": np.where(rng.random(n) < 0.05, "refund", "purchase"),
            "entry_mode": rng.choice(["chip", "online", "swipe"], n),
        }
    ).with_columns(pl.col("tx_ts", "ingested_at").cast(pl.Datetime("ms", "UTC")))
    tx = tx.select([pl.col(c).cast(t) for c, t in CARD_TX.columns])
    fraud_idx = np.flatnonzero(rng.random(n) < 0.01)
    known = ts[fraud_idx] + rng.integers(0, 14 * 86_400_000, len(fraud_idx))
    labels = pl.DataFrame(
        {
            "label_id": [f"fr{i}" for i in range(len(fraud_idx))],
            "transaction_id": tx["tx_id"].gather(fraud_idx),
            "known_ts": known,
            "fraud_kind": rng.choice(["chargeback", "customer_report"], len(fraud_idx)),
            "confirmed": rng.random(len(fraud_idx)) < 0.8,
            "ingested_at": known,
        }
    ).with_columns(pl.col("known_ts", "ingested_at").cast(pl.Datetime("ms", "UTC")))
    labels = labels.select([pl.col(c).cast(t) for c, t in CARD_FRAUD.columns])

    groups = [customer_group(), terminal_group(), customer_terminal_group()]
    end = t0 + timedelta(days=args.days)
    start = end - timedelta(days=30)
    best = float("inf")
    rows = 0
    for _ in range(args.repeat):
        t = time.perf_counter()
        out = compute_feature_groups(groups, tx, start, end, labels)
        best = min(best, time.perf_counter() - t)
        rows = sum(f.height for f in out.values())
    features = sum(len(g.features) for g in groups)
    print(
        f"card source: {n:,} transactions ({args.days} days, {args.customers:,} customers, "
        f"{args.terminals:,} terminals), {len(groups)} groups / {features} features, "
        f"{rows:,} output rows (last 30 days)"
    )
    print(f"best of {args.repeat}: {best:.2f} s = {n / best:,.0f} transactions/s")
    print(f"load average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
