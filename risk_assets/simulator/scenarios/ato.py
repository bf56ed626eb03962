"""Account takeover: a fraud ring logs into a victim's account and drains it.

Before drift: ring devices and hosting/VPN IPs (usually another country than the victim's), often a
few failed logins first, a security change (2FA disable/reset, email, password, phone) within
minutes, then 1–3 fast withdrawals (1–5 min apart) of 5–40× the victim's typical amount to the ring's
mule addresses (shared across the ring's cases).
After drift: a brand-new device on a residential IP in the victim's own country (residential proxy),
rarely a failed login, and 2–5 smaller withdrawals spaced 30 min – 4 h apart.
Labels: one ``ato_report`` per case event, 1 h – 14 days (median ~20 h) after the last event.
Drift scenarios (``ctx.effects``): a new network puts each case on a fresh device and an IP of the
new network; an amount factor scales the drain.
"""

from __future__ import annotations

import numpy as np

from risk_assets.simulator.population import random_net_address
from risk_assets.simulator.scenarios import HOUR_MS, MIN_MS, CaseContext, Row, base_row, crypto_amount
from risk_assets.simulator.world import ASSET_CHAIN, CHAINS, NETWORKS

SCENARIO = "ato"


def ato_case(ctx: CaseContext, t0: int, case: str) -> list[Row]:
    """The rows of one account-takeover case starting at ``t0`` (ms)."""
    rng, pop = ctx.rng, ctx.pop
    victim = ctx.pick_cdf(pop.victim_cdf)
    uid = pop.user_ids[victim]
    ring = ctx.ring()
    if ctx.drifted:
        device = ctx.new_device()
        res = NETWORKS.residential_by_country[int(pop.country[victim])]
        net = random_net_address(rng, int(res[rng.integers(len(res))]))
        n_fail = int(rng.choice(2, p=[0.8, 0.2]))
        n_withdrawals, gap = int(rng.integers(2, 6)), (30 * MIN_MS, 4 * HOUR_MS)
        drain = np.exp(pop.amount_mu[victim]) * rng.uniform(3.0, 15.0)
    else:
        device = ctx.choice(ring.devices)
        net = ctx.choice(ring.ips)
        n_fail = int(rng.choice(5, p=[0.4, 0.2, 0.2, 0.1, 0.1]))
        n_withdrawals, gap = int(rng.integers(1, 4)), (1 * MIN_MS, 5 * MIN_MS)
        drain = np.exp(pop.amount_mu[victim]) * rng.uniform(5.0, 40.0)
    eff = ctx.effects
    if eff.network_asns:  # new_attack_network: a new device family on a new network
        device, net = ctx.new_device(), eff.network_address(rng)
    if eff.amount_factor != 1.0:
        drain *= eff.amount_factor

    rows: list[Row] = []
    t = t0
    auth = ("password", "password_2fa", "sso")[int(pop.auth[victim])]
    for _ in range(n_fail):
        rows.append(
            base_row("login", t, uid, device, net, SCENARIO, case) | {"success": False, "auth_method": auth}
        )
        t += int(rng.integers(5_000, 60_000))
    rows.append(
        base_row("login", t, uid, device, net, SCENARIO, case) | {"success": True, "auth_method": auth}
    )
    t += int(rng.integers(MIN_MS, 10 * MIN_MS))
    if auth == "password_2fa":
        change = ctx.choice(("2fa_disable", "2fa_reset", "email"), [0.5, 0.3, 0.2])
    else:
        change = ctx.choice(("email", "password", "phone", "2fa_enable"), [0.45, 0.35, 0.1, 0.1])
    rows.append(base_row("security_change", t, uid, device, net, SCENARIO, case) | {"change_type": change})
    if rng.random() < 0.3:
        t += int(rng.integers(20_000, 3 * MIN_MS))
        extra = ctx.choice(("password", "email", "phone"))
        rows.append(base_row("security_change", t, uid, device, net, SCENARIO, case) | {"change_type": extra})

    asset = ctx.user_asset(victim)
    chain = int(ASSET_CHAIN[asset])
    shares = rng.dirichlet(np.ones(n_withdrawals) * 3.0)
    for share in shares:
        t += int(rng.integers(*gap))
        amount, currency, usd = crypto_amount(asset, float(drain * share))
        rows.append(
            base_row("withdrawal", t, uid, device, net, SCENARIO, case)
            | {
                "amount": amount,
                "currency": currency,
                "amount_usd": usd,
                "chain": CHAINS[chain],
                "wallet_address": ctx.choice(ring.mule_addresses[chain]),
            }
        )
    if ctx.labelled():
        label_ts = t + ctx.delay_ms(20 * HOUR_MS, 1.0, 1 * HOUR_MS, 14 * 24 * HOUR_MS)
        for row in rows:
            row["label_type"], row["label_ts"] = "ato_report", label_ts
    return rows
