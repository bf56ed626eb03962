"""A small seeded generator of card payments (written for this example, in the spirit of the
public card-fraud simulators): customers pay at terminals near home, fraud arrives in two
scenarios, and each fraud's label is known days after the payment.

* **Legitimate habits** — each customer has a home, a set of nearby terminals, a typical amount
  and a daily rate of payments; payments happen mostly in the daytime (06:00–23:00 UTC), a few
  online.
* **Compromised terminal** — every day some terminals (``compromised_share_per_day``) are compromised: every
  payment there in the next ``compromise_days`` days is fraudulent (amounts unchanged). A terminal's
  fraud rate, known with delay, is the signal.
* **Stolen card** — every day some customers (``stolen_share_per_day``) lose their card: in the next
  ``stolen_days`` days, a third of their payments are the thief's — 3–6 times their typical amount,
  mostly at night and online.
* **Labels** — every fraudulent payment gets one label (``fraud_scenario`` names the scenario)
  known ``label_delay_days`` later (uniform in the range); labels not yet known at the end of the
  simulation do not exist.

Deterministic for a seed (NumPy ``default_rng``). Returns Polars frames in the columns the
example's sources declare (``definitions.CARD_TX``, ``definitions.CARD_FRAUD``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl

DAY_MS = 86_400_000
TS = pl.Datetime("ms", "UTC")


@dataclass(frozen=True)
class CardConfig:
    """Size and fraud mix of a simulation."""

    seed: int = 7
    start: datetime = datetime(2026, 3, 2, tzinfo=UTC)
    days: int = 60
    customers: int = 2_000
    terminals: int = 400
    mean_tx_per_day: float = 1.5
    compromised_share_per_day: float = 0.002
    """Expected share of terminals compromised each day (a Poisson count)."""
    compromise_days: int = 21
    stolen_share_per_day: float = 0.001
    """Expected share of customers whose card is stolen each day (a Poisson count)."""
    stolen_days: int = 14
    label_delay_days: tuple[float, float] = (1.0, 7.0)

    @property
    def end(self) -> datetime:
        return self.start + timedelta(days=self.days)


@dataclass(frozen=True)
class CardData:
    transactions: pl.DataFrame
    labels: pl.DataFrame


def generate(cfg: CardConfig) -> CardData:
    """Transactions over ``[start, end)`` and the labels known before ``end``."""
    rng = np.random.default_rng(cfg.seed)
    start_ms = int(cfg.start.timestamp() * 1000)

    # Customers and terminals on a 100 × 100 map; each customer uses terminals within 15 units.
    cust_xy = rng.uniform(0, 100, size=(cfg.customers, 2))
    term_xy = rng.uniform(0, 100, size=(cfg.terminals, 2))
    amount_mean = rng.uniform(8, 90, cfg.customers)
    amount_sd = amount_mean * rng.uniform(0.2, 0.6, cfg.customers)
    rate = rng.uniform(0.2, 2 * cfg.mean_tx_per_day - 0.2, cfg.customers)
    dist = np.linalg.norm(cust_xy[:, None, :] - term_xy[None, :, :], axis=2)
    nearby = [np.flatnonzero(d < 15) for d in dist]
    nearby = [n if len(n) else np.argsort(d)[:3] for n, d in zip(nearby, dist, strict=True)]

    # Legitimate payments: per customer and day a Poisson count, daytime hours.
    counts = rng.poisson(np.tile(rate, cfg.days))  # day-major: index = day * customers + customer
    day = np.repeat(np.arange(cfg.days), cfg.customers)
    cust_of_slot = np.tile(np.arange(cfg.customers), cfg.days)
    cust = np.repeat(cust_of_slot, counts)
    tx_day = np.repeat(day, counts)
    n = len(cust)
    seconds = np.clip(rng.normal(14 * 3600, 4 * 3600, n), 6 * 3600, 23 * 3600 - 1)
    ts = start_ms + tx_day * DAY_MS + (seconds * 1000).astype(np.int64) + rng.integers(0, 1000, n)
    pick = rng.random(n)
    term = np.array(
        [nearby[c][int(p * len(nearby[c]))] for c, p in zip(cust, pick, strict=True)], dtype=np.int64
    )
    amount = np.abs(rng.normal(amount_mean[cust], amount_sd[cust])).round(2) + 0.5
    online = rng.random(n) < 0.1
    scenario = np.full(n, "", dtype=object)

    # Compromised terminals: every payment in the next compromise_days days is fraud.
    for d in range(cfg.days):
        k = min(cfg.terminals, rng.poisson(cfg.compromised_share_per_day * cfg.terminals))
        for t in rng.choice(cfg.terminals, k, replace=False):
            hit = (term == t) & (tx_day >= d) & (tx_day < d + cfg.compromise_days) & ~online
            scenario[hit & (scenario == "")] = "compromised_terminal"

    # Stolen cards: a third of the customer's payments in the next stolen_days days are the thief's.
    for d in range(cfg.days):
        k = min(cfg.customers, rng.poisson(cfg.stolen_share_per_day * cfg.customers))
        for c in rng.choice(cfg.customers, k, replace=False):
            idx = np.flatnonzero((cust == c) & (tx_day >= d) & (tx_day < d + cfg.stolen_days))
            idx = idx[scenario[idx] == ""]
            thief = idx[rng.random(len(idx)) < 1 / 3]
            if not len(thief):
                continue
            scenario[thief] = "stolen_card"
            amount[thief] = (amount[thief] * rng.uniform(3, 6, len(thief))).round(2)
            night = rng.random(len(thief)) < 0.7
            hour_ms = (rng.uniform(0, 5, len(thief)) * 3_600_000).astype(np.int64)
            ts[thief] = np.where(night, start_ms + tx_day[thief] * DAY_MS + hour_ms, ts[thief])
            online[thief] |= rng.random(len(thief)) < 0.6

    order = np.lexsort((np.arange(n), ts))
    ts, cust, term, amount, online, scenario = (a[order] for a in (ts, cust, term, amount, online, scenario))
    ingest = ts + rng.integers(5, 3_000, n)
    tx_ids = np.array([f"tx{i:08d}" for i in range(n)], dtype=object)
    transactions = pl.DataFrame(
        {
            "tx_id": tx_ids,
            "tx_ts": pl.Series(ts, dtype=pl.Int64).cast(TS),
            "ingested_at": pl.Series(ingest, dtype=pl.Int64).cast(TS),
            "customer_id": [f"cust{c:05d}" for c in cust],
            "terminal_id": [f"term{t:04d}" for t in term],
            "amount": amount.astype(np.float64),
            "channel": np.where(online, "online", "pos"),
        },
        schema={
            "tx_id": pl.String,
            "tx_ts": TS,
            "ingested_at": TS,
            "customer_id": pl.String,
            "terminal_id": pl.String,
            "amount": pl.Float64,
            "channel": pl.String,
        },
    )

    fraud = np.flatnonzero(scenario != "")
    lo, hi = cfg.label_delay_days
    known = ts[fraud] + (rng.uniform(lo, hi, len(fraud)) * DAY_MS).astype(np.int64)
    end_ms = int(cfg.end.timestamp() * 1000)
    keep = known < end_ms
    fraud, known = fraud[keep], known[keep]
    labels = pl.DataFrame(
        {
            "label_id": [f"lab{i:08d}" for i in range(len(fraud))],
            "tx_id": tx_ids[fraud],
            "known_ts": pl.Series(known, dtype=pl.Int64).cast(TS),
            "fraud_scenario": scenario[fraud].astype(str),
            "ingested_at": pl.Series(known + 1_000, dtype=pl.Int64).cast(TS),
        },
        schema={
            "label_id": pl.String,
            "tx_id": pl.String,
            "known_ts": TS,
            "fraud_scenario": pl.String,
            "ingested_at": TS,
        },
    ).sort("known_ts", "label_id")
    return CardData(transactions, labels)
