"""When records reach the exchange's pipeline: the ingestion-delay model for events and labels.

Events: most arrive within seconds (network + client batching), ``late_fraction`` minutes to hours
late (lognormal around ``late_median_s``: mobile apps that were offline), ``very_late_fraction`` 1–36 h
late (beyond the archive's 1 h grace). Since each event's delay is independent, arrival order differs
from event-time order. Labels arrive from batch feeds: seconds to a few hours after ``label_ts``.
"""

from __future__ import annotations

import numpy as np

from risk_assets.simulator.config import SimConfig

HOUR_MS = 3_600_000


def event_ingest_delays(rng: np.random.Generator, n: int, cfg: SimConfig) -> np.ndarray:
    """Delay (ms, int64, > 0) between ``event_ts`` and ``ingest_ts`` for ``n`` events."""
    delay = 40.0 + rng.exponential(1_200.0, n)
    kind = rng.random(n)
    late = kind < cfg.late_fraction
    very_late = (kind >= cfg.late_fraction) & (kind < cfg.late_fraction + cfg.very_late_fraction)
    delay = np.where(late, rng.lognormal(np.log(cfg.late_median_s * 1000.0), 1.0, n), delay)
    delay = np.where(very_late, rng.uniform(1.0 * HOUR_MS, 36.0 * HOUR_MS, n), delay)
    return np.maximum(delay, 1.0).astype(np.int64)


def label_ingest_delays(rng: np.random.Generator, n: int) -> np.ndarray:
    """Delay (ms) between ``label_ts`` and the label's ``ingest_ts``: mostly seconds, 10% hours."""
    delay = 200.0 + rng.exponential(5_000.0, n)
    batch = rng.random(n) < 0.10
    delay = np.where(batch, rng.uniform(0.25 * HOUR_MS, 6.0 * HOUR_MS, n), delay)
    return delay.astype(np.int64)
