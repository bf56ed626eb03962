"""P2P scam: scam counterparties (a few with many victims) lure users into bad P2P trades.

The victim trades from their usual device and home IP, but out of habit: buy side, 3–15× their
typical amount, 1–3 trades minutes to hours apart, paid by gift card or mobile money before drift
(bank transfer and mobile money after drift), 40% of trades disputed. Half the time the scammer then
withdraws to the ring's mule address from its own device (fraud rows of the same case, unlabelled).
Labels: one ``scam_report`` per victim trade, 1–20 days (median 3 days) after the last trade.
Drift scenarios (``ctx.effects``): an amount factor scales the victim's trades.
"""

from __future__ import annotations

import numpy as np

from risk_assets.simulator.scenarios import (
    DAY_MS,
    MIN_MS,
    CaseContext,
    Row,
    base_row,
    crypto_amount,
)
from risk_assets.simulator.world import ASSET_CHAIN, CHAINS

SCENARIO = "p2p_scam"
PRE_DRIFT_PM = (("gift_card", "mobile_money", "bank_transfer"), [0.6, 0.3, 0.1])
POST_DRIFT_PM = (("bank_transfer", "mobile_money", "gift_card"), [0.6, 0.35, 0.05])
P2P_ASSETS = (2, 3, 0)  # USDT on tron, USDT on ethereum, BTC


def p2p_scam_case(ctx: CaseContext, t0: int, case: str) -> list[Row]:
    """The rows of one P2P scam victimisation starting at ``t0`` (ms)."""
    rng, pop = ctx.rng, ctx.pop
    utc_hour = (t0 // 3_600_000) % 24
    victim = ctx.pick_cdf(pop.hour_cdf[utc_hour])
    uid = pop.user_ids[victim]
    scammer = pop.scammers[ctx.pick_cdf(pop.scammer_cdf)]
    device, net = ctx.usual_device(victim), ctx.usual_net(victim)
    methods, p = POST_DRIFT_PM if ctx.drifted else PRE_DRIFT_PM
    asset = int(ctx.choice(P2P_ASSETS, [0.6, 0.2, 0.2]))

    rows: list[Row] = []
    t = t0
    total = 0.0
    for i in range(int(rng.choice(3, p=[0.6, 0.3, 0.1])) + 1):
        if i:
            t += int(rng.integers(5 * MIN_MS, 6 * 60 * MIN_MS))
        usd = float(np.exp(pop.amount_mu[victim]) * rng.uniform(3.0, 15.0))
        if ctx.effects.amount_factor != 1.0:  # attack_amount_shift
            usd *= ctx.effects.amount_factor
        amount, currency, usd = crypto_amount(asset, usd)
        total += usd
        rows.append(
            base_row("p2p_trade", t, uid, device, net, SCENARIO, case)
            | {
                "amount": amount,
                "currency": currency,
                "amount_usd": usd,
                "counterparty_id": scammer.user_id,
                "side": "buy",
                "payment_method": ctx.choice(methods, p),
                "trade_status": "disputed" if rng.random() < 0.4 else "completed",
            }
        )
    if ctx.labelled():
        label_ts = t + ctx.delay_ms(3 * DAY_MS, 0.6, 1 * DAY_MS, 20 * DAY_MS)
        for row in rows:
            row["label_type"], row["label_ts"] = "scam_report", label_ts
    if rng.random() < 0.5:
        t += int(rng.integers(10 * MIN_MS, 120 * MIN_MS))
        chain = int(ASSET_CHAIN[asset])
        amount, currency, usd = crypto_amount(asset, total * 0.97)
        rows.append(
            base_row("withdrawal", t, scammer.user_id, scammer.device_id, scammer.net, SCENARIO, case)
            | {
                "amount": amount,
                "currency": currency,
                "amount_usd": usd,
                "chain": CHAINS[chain],
                "wallet_address": ctx.choice(pop.rings[scammer.ring].mule_addresses[chain]),
            }
        )
    return rows
