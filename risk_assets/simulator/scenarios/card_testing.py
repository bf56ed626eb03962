"""Stolen payment details / card testing: many cards, few devices and IPs, mostly declined.

A ring account on 1–2 ring devices and 1–3 hosting IPs tries 15–60 stolen cards (issued in various
countries) with 1–2 small purchases each, seconds apart: before drift $0.50–3 with ~75% declines
(invalid_cvv, do_not_honor, expired_card, insufficient_funds); after drift $5–30 with ~35% declines.
Cards that worked then buy 2–5 times $150–900, and the crypto is withdrawn to a mule address.
Labels (for the ``1 − unlabelled_fraction`` of cases that are ever labelled): a ``chargeback`` per
approved payment, 3–45 days (median ``chargeback_median_days``, 12) after it. The first chargeback
makes the exchange review the case; ``case_review_median_hours`` (24 h; 1 h – 7 days) later the case
is confirmed and every declined attempt of the burst gets a ``fraud_attempt`` label. A case with no
approved payment gets no chargeback, so it is never confirmed. The cash-out withdrawal and the login
are never labelled.
Drift scenarios (``ctx.effects``): a new network replaces the ring's devices and IPs by fresh devices
and IPs of the new network; an amount factor scales the test payments (not the cash-out purchases).
"""

from __future__ import annotations

import numpy as np

from risk_assets.simulator.scenarios import (
    DAY_MS,
    HOUR_MS,
    MIN_MS,
    CaseContext,
    Row,
    base_row,
    crypto_amount,
    fiat_amount,
)
from risk_assets.simulator.world import CARD_BINS, CHAINS, COUNTRIES

SCENARIO = "card_testing"
DECLINE_REASONS = (
    ("invalid_cvv", "do_not_honor", "expired_card", "insufficient_funds"),
    [0.45, 0.3, 0.15, 0.1],
)
CARD_COUNTRY_P = np.array([c.weight for c in COUNTRIES]) ** 0.5


def card_testing_case(ctx: CaseContext, t0: int, case: str) -> list[Row]:
    """The rows of one card-testing case starting at ``t0`` (ms)."""
    rng = ctx.rng
    ring = ctx.ring()
    account = ctx.choice(ring.accounts)
    eff = ctx.effects
    if eff.network_asns:  # new_attack_network: fresh devices (a new device family) on a new network
        devices = [ctx.new_device() for _ in range(int(rng.integers(1, 3)))]
        nets = [eff.network_address(rng) for _ in range(int(rng.integers(1, 4)))]
    else:
        devices = [ctx.choice(ring.devices) for _ in range(int(rng.integers(1, 3)))]
        nets = [ctx.choice(ring.ips) for _ in range(int(rng.integers(1, 4)))]
    lo, hi, decline_p = (5.0, 30.0, 0.35) if ctx.drifted else (0.5, 3.0, 0.75)
    lo, hi = lo * eff.amount_factor, hi * eff.amount_factor
    labelled = ctx.labelled()

    rows: list[Row] = []
    t = t0
    rows.append(
        base_row("login", t, account, devices[0], nets[0], SCENARIO, case)
        | {"success": True, "auth_method": "password"}
    )

    def pay(ts: int, card: tuple[str, str, int], usd: float, approved: bool) -> Row:
        amount, currency, usd = fiat_amount(card[2], usd)
        row = base_row("card_payment", ts, account, ctx.choice(devices), ctx.choice(nets), SCENARIO, case) | {
            "amount": amount,
            "currency": currency,
            "amount_usd": usd,
            "card_id": card[0],
            "card_bin": card[1],
            "card_country": COUNTRIES[card[2]].code,
            "status": "approved" if approved else "declined",
            "decline_reason": None if approved else ctx.choice(*DECLINE_REASONS),
        }
        if approved and labelled:
            row["label_type"], row["label_ts"] = (
                "chargeback",
                ts + ctx.delay_ms(ctx.cfg.chargeback_median_days * DAY_MS, 0.5, 3 * DAY_MS, 45 * DAY_MS),
            )
        return row

    working = []
    p_country = CARD_COUNTRY_P / CARD_COUNTRY_P.sum()
    n_cards = int(rng.integers(15, 61))
    card_ids = ctx.new_cards(n_cards)
    countries = rng.choice(len(COUNTRIES), size=n_cards, p=p_country)
    for card_id, country in zip(card_ids, countries.tolist(), strict=True):
        card = (card_id, str(ctx.choice(CARD_BINS[country])), country)
        ok = False
        for _ in range(int(rng.integers(1, 3))):
            t += int(rng.integers(3_000, 20_000))
            approved = bool(rng.random() >= decline_p)
            rows.append(pay(t, card, float(rng.uniform(lo, hi)), approved))
            ok = ok or approved
            if approved:
                break
        if ok:
            working.append(card)

    total = 0.0
    if working:
        t += int(rng.integers(2 * MIN_MS, 15 * MIN_MS))
        for _ in range(int(rng.integers(2, 6))):
            t += int(rng.integers(20_000, 3 * MIN_MS))
            usd = float(rng.uniform(150.0, 900.0))
            total += usd
            rows.append(pay(t, ctx.choice(working), usd, True))
    if total:
        t += int(rng.integers(10 * MIN_MS, 60 * MIN_MS))
        asset = int(ctx.choice((2, 0), [0.7, 0.3]))  # USDT on tron or BTC
        chain = 2 if asset == 2 else 0
        amount, currency, usd = crypto_amount(asset, total * 0.95)
        rows.append(
            base_row("withdrawal", t, account, devices[0], nets[0], SCENARIO, case)
            | {
                "amount": amount,
                "currency": currency,
                "amount_usd": usd,
                "chain": CHAINS[chain],
                "wallet_address": ctx.choice(ring.mule_addresses[chain]),
            }
        )
    label_burst(ctx, rows)
    return rows


def label_burst(ctx: CaseContext, rows: list[Row]) -> None:
    """Label the declined attempts ``fraud_attempt`` when the case is confirmed: a review delay after
    its first chargeback (none: the case is never confirmed). The delay comes from the chunk's label
    stream, so the case's events are the same as without burst labels."""
    chargebacks = [r["label_ts"] for r in rows if r["label_type"] == "chargeback"]
    if not chargebacks:
        return
    review = ctx.label_delay_ms(ctx.cfg.case_review_median_hours * HOUR_MS, 0.8, HOUR_MS, 7 * DAY_MS)
    confirmed = min(chargebacks) + review
    for row in rows:
        if row["event_type"] == "card_payment" and row["status"] == "declined":
            row["label_type"], row["label_ts"] = "fraud_attempt", confirmed
