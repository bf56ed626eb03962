"""The simulator's configuration: one frozen dataclass, every knob with its default."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from risk_assets.simulator.drift import DriftScenario, validate_scenarios

DEFAULT_START = datetime(2026, 11, 1, tzinfo=UTC)


@dataclass(frozen=True)
class SimConfig:
    """What to simulate. Same config (including ``seed``) → byte-identical output.

    Time is cut into chunks of ``chunk_minutes`` starting at ``start``; each chunk draws from its own
    random stream keyed by (seed, chunk start), so chunks can be generated alone and in any order.
    Fraud rates are given per million legit events so the fraud share does not depend on volume.
    """

    seed: int = 7
    start: datetime = DEFAULT_START
    hours: int = 24
    events_per_day: int = 1_000_000
    users: int = 50_000
    chunk_minutes: int = 60
    # Fraud: expected cases (victims for the P2P scam) per million legit events.
    ato_cases_per_m: float = 220.0
    p2p_scam_victims_per_m: float = 500.0
    card_testing_cases_per_m: float = 40.0
    fraud_rings: int = 6
    scam_counterparties: int = 24
    # Share of fraud cases whose labels never arrive.
    unlabelled_fraction: float = 0.25
    # Card testing: a chargeback arrives ~``chargeback_median_days`` after each approved payment
    # (lognormal, 3–45 days); the case is confirmed ``case_review_median_hours`` after its first
    # chargeback (lognormal, 1 h – 7 days) and its declined attempts are labelled ``fraud_attempt`` then.
    chargeback_median_days: float = 12.0
    case_review_median_hours: float = 24.0
    # From this day (0-based, counted from ``start``) attackers change tactics; None: never.
    drift_day: int | None = None
    # Windows in which attacks or legit traffic change what monitors see (see ``drift.py``); none by
    # default.
    drift_scenarios: tuple[DriftScenario, ...] = ()
    # Ingestion delay mixture: most within seconds, ``late_fraction`` minutes..hours (lognormal,
    # median ``late_median_s``), ``very_late_fraction`` 1–36 h (mobile clients offline for long).
    late_fraction: float = 0.05
    late_median_s: float = 300.0
    very_late_fraction: float = 0.002
    # Legit behaviour that looks suspicious.
    travel_day_rate: float = 0.004
    new_device_day_rate: float = 0.003
    vpn_user_fraction: float = 0.04

    def __post_init__(self) -> None:
        start = self.start if self.start.tzinfo else self.start.replace(tzinfo=UTC)
        object.__setattr__(self, "start", start.astimezone(UTC))
        if self.start.minute or self.start.second or self.start.microsecond:
            raise ValueError(f"start must be on a whole hour, got {self.start}")
        if self.chunk_minutes <= 0 or 60 % self.chunk_minutes:
            raise ValueError("chunk_minutes must divide 60")
        if self.hours < 0 or self.users < 10 or self.events_per_day < 0:
            raise ValueError("hours >= 0, users >= 10 and events_per_day >= 0 are required")
        if self.fraud_rings < 1 or self.scam_counterparties < 1:
            raise ValueError("fraud_rings and scam_counterparties must be >= 1")
        if not 3.0 <= self.chargeback_median_days <= 45.0:
            raise ValueError("chargeback_median_days must be within [3, 45] (the delay's clip range)")
        if not 1.0 <= self.case_review_median_hours <= 168.0:
            raise ValueError("case_review_median_hours must be within [1, 168] (the delay's clip range)")
        object.__setattr__(self, "drift_scenarios", tuple(self.drift_scenarios))
        validate_scenarios(self.drift_scenarios)
        for name in ("unlabelled_fraction", "late_fraction", "very_late_fraction", "vpn_user_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")

    @property
    def end(self) -> datetime:
        """End (exclusive) of the simulated range."""
        return self.start + timedelta(hours=self.hours)

    @property
    def start_ms(self) -> int:
        return int(self.start.timestamp() * 1000)

    @property
    def end_ms(self) -> int:
        return int(self.end.timestamp() * 1000)

    @property
    def chunk_ms(self) -> int:
        return self.chunk_minutes * 60_000

    @property
    def n_chunks(self) -> int:
        return self.hours * 60 // self.chunk_minutes

    def chunk_starts_ms(self) -> list[int]:
        """Start (ms epoch) of every chunk of the range, in time order."""
        return [self.start_ms + i * self.chunk_ms for i in range(self.n_chunks)]

    def is_drifted(self, ts_ms: int) -> bool:
        """Whether attackers use their post-drift tactics at ``ts_ms``."""
        if self.drift_day is None:
            return False
        return ts_ms >= self.start_ms + self.drift_day * 86_400_000

    def with_(self, **changes: object) -> SimConfig:
        """A copy with some fields changed."""
        return replace(self, **changes)  # type: ignore[arg-type]
