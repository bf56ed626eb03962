"""Fraud scenarios with ground truth: account takeover, P2P scam, card testing.

Fraud cases are rare (tens per simulated hour at 1M events/day), so each case is built by a plain
Python function that returns its event rows in time order. Every row carries, besides the event
fields, the ground truth (``scenario``, ``case_id``) and its label plan (``label_type``, ``label_ts``,
null when the row is never labelled). :class:`CaseContext` holds what the builders share, including
the effects of an active attack drift scenario (``ctx.effects``: a new network and device family,
an amount factor; see ``drift.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from risk_assets.simulator import ids
from risk_assets.simulator.config import SimConfig
from risk_assets.simulator.drift import NO_EFFECTS, AttackEffects
from risk_assets.simulator.population import MAX_DEVICES, FraudRing, NetAddress, Population
from risk_assets.simulator.world import COUNTRIES, CRYPTO_ASSETS, FIAT_USD

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
MIN_MS = 60_000

Row = dict[str, Any]


@dataclass
class CaseContext:
    """Shared state for the cases of one chunk."""

    cfg: SimConfig
    pop: Population
    rng: np.random.Generator
    fresh: ids.FreshIds
    chunk_start_ms: int
    drifted: bool
    label_rng: np.random.Generator  # label-only draws: they never shift the events' random stream
    effects: AttackEffects = NO_EFFECTS  # of the drift scenario active on the cases being built

    # -- choices --------------------------------------------------------------------------------
    def pick_cdf(self, cdf: np.ndarray) -> int:
        """An index drawn from a cumulative distribution."""
        return int(min(np.searchsorted(cdf, self.rng.random(), side="right"), len(cdf) - 1))

    def choice(self, options: tuple | list, p: list[float] | None = None) -> Any:
        """One of ``options`` (with optional probabilities)."""
        i = int(self.rng.choice(len(options), p=p)) if p is not None else int(self.rng.integers(len(options)))
        return options[i]

    def ring(self) -> FraudRing:
        return self.pop.rings[int(self.rng.integers(len(self.pop.rings)))]

    def labelled(self) -> bool:
        """Whether this case's labels will ever arrive."""
        return bool(self.rng.random() >= self.cfg.unlabelled_fraction)

    def delay_ms(self, median_ms: float, sigma: float, lo_ms: float, hi_ms: float) -> int:
        """A lognormal delay clipped to ``[lo, hi]``."""
        return int(np.clip(self.rng.lognormal(np.log(median_ms), sigma), lo_ms, hi_ms))

    def label_delay_ms(self, median_ms: float, sigma: float, lo_ms: float, hi_ms: float) -> int:
        """:meth:`delay_ms` drawn from the label stream."""
        return int(np.clip(self.label_rng.lognormal(np.log(median_ms), sigma), lo_ms, hi_ms))

    # -- fresh entities -------------------------------------------------------------------------
    def new_device(self) -> str:
        return ids.opaque_id("d_", self.fresh.one(), ids.seed_key(self.cfg.seed, ids.NS_DEVICE))

    def new_cards(self, k: int) -> list[str]:
        return ids.opaque_ids("c_", self.fresh.take(k), ids.seed_key(self.cfg.seed, ids.NS_CARD)).to_list()

    # -- the victim's usual footprint -----------------------------------------------------------
    def usual_device(self, user: int) -> str:
        return self.pop.device_id[user * MAX_DEVICES]

    def usual_net(self, user: int) -> NetAddress:
        return self.pop.net_address(user)

    def user_asset(self, user: int) -> int:
        """One of the user's preferred crypto assets (index into CRYPTO_ASSETS)."""
        return int(self.pop.wallet_asset[user, int(self.rng.integers(self.pop.n_wallets[user]))])


def base_row(
    etype: str, ts: int, user_id: str, device: str, net: NetAddress, scenario: str, case_id: str
) -> Row:
    """The fields every fraud row has."""
    return {
        "event_type": etype,
        "event_ts": int(ts),
        "user_id": user_id,
        "device_id": device,
        "ip": net.ip,
        "ip_country": net.country,
        "ip_asn": net.asn,
        "scenario": scenario,
        "case_id": case_id,
        "label_type": None,
        "label_ts": None,
    }


def crypto_amount(asset: int, usd: float) -> tuple[float, str, float]:
    """(amount in asset units, currency, amount_usd) for a USD value."""
    a = CRYPTO_ASSETS[asset]
    usd = max(round(usd, 2), 0.01)
    return max(round(usd / a.price_usd, 8), 1e-8), a.currency, usd


def fiat_amount(country: int, usd: float) -> tuple[float, str, float]:
    """(amount in the country's fiat, currency, amount_usd) for a USD value."""
    fiat = COUNTRIES[country].fiat
    usd = max(round(usd, 2), 0.01)
    return max(round(usd / FIAT_USD[fiat], 2), 0.01), fiat, usd


def case_id(scenario: str, chunk_start_ms: int, k: int) -> str:
    """Readable, unique case id: scenario, chunk start minute, case number."""
    return f"{scenario}-{chunk_start_ms // MIN_MS}-{k}"
