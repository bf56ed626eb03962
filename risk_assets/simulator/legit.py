"""Legitimate traffic for one chunk, fully vectorised (no Python loop per event).

Users are drawn in proportion to activity × their diurnal weight at this UTC hour, then each event
samples the user's own habits: event-type mix, usual devices, home/mobile/Wi-Fi IPs, typical amount,
cards and withdrawal addresses. Legit users also do things that look like fraud, so no single rule
separates the classes: whole days abroad (travel, decided per user and day), a new phone for a day,
VPN/hosting IPs (a few users always), brand-new devices, password/2FA changes, withdrawals 5–20× the
usual size and to new addresses, declined cards, gift-card P2P trades and disputes.
A market event (``drift.py``) adds events of its users through the same per-user habits, drawn by
activity alone (no diurnal weight) with larger amounts: :func:`market_event_events`.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from risk_assets.simulator import ids
from risk_assets.simulator.config import SimConfig
from risk_assets.simulator.drift import MARKET_TYPE_P, MARKET_TYPES, MarketPlan
from risk_assets.simulator.population import AUTH_METHODS, MAX_CARDS, MAX_DEVICES, MAX_WALLETS, Population
from risk_assets.simulator.world import (
    ASSET_CHAIN,
    ASSET_PRICE,
    CARD_PAYMENT,
    CHAINS,
    COUNTRIES,
    COUNTRY_CODES,
    CRYPTO_ASSETS,
    DEPOSIT,
    EVENT_TYPES,
    FIAT_USD,
    LOGIN,
    NETWORKS,
    P2P_TRADE,
    SECURITY_CHANGE,
    WITHDRAWAL,
)

CHANGE_TYPES = ("password", "2fa_enable", "2fa_disable", "2fa_reset", "email", "phone")
LEGIT_CHANGE_P = np.array([0.35, 0.20, 0.10, 0.10, 0.10, 0.15])
DECLINE_REASONS = ("insufficient_funds", "do_not_honor", "invalid_cvv", "expired_card")
LEGIT_DECLINE_P = np.array([0.60, 0.25, 0.05, 0.10])
PAYMENT_METHODS = ("bank_transfer", "mobile_money", "gift_card", "cash")
P2P_PM = np.array([0.63, 0.20, 0.02, 0.15])
P2P_PM_MOBILE = np.array([0.36, 0.50, 0.02, 0.12])
TRADE_STATUSES = ("completed", "cancelled", "disputed")
P2P_ASSET_P = np.array([0.20, 0.10, 0.50, 0.10, 0.05, 0.05])
AMOUNT_MULT = np.array([0.0, 0.0, 1.6, 1.3, 0.7, 1.0])  # by event type

_FIAT = tuple(COUNTRIES[i].fiat for i in range(len(COUNTRIES)))
COUNTRY_FX = np.array([FIAT_USD[f] for f in _FIAT])
_RES_LEN = np.array([len(r) for r in NETWORKS.residential_by_country])
_RES_TABLE = np.array([np.resize(r, _RES_LEN.max()) for r in NETWORKS.residential_by_country])

# Namespaces of per-(user, day) decisions.
_NS_TRAVEL, _NS_TRAVEL_TO, _NS_TRAVEL_NET, _NS_NEW_PHONE = 101, 102, 103, 104

# Columns of the wide (archive-shaped) frame every generator returns, in this order.
EVENT_COLUMNS: tuple[str, ...] = (
    "event_type",
    "event_ts",
    "user_id",
    "device_id",
    "ip",
    "ip_country",
    "ip_asn",
    "success",
    "auth_method",
    "change_type",
    "amount",
    "currency",
    "amount_usd",
    "method",
    "wallet_address",
    "chain",
    "card_id",
    "card_bin",
    "card_country",
    "status",
    "decline_reason",
    "counterparty_id",
    "side",
    "payment_method",
    "trade_status",
)
TYPE_FIELDS: dict[str, tuple[int, ...]] = {
    "success": (LOGIN,),
    "auth_method": (LOGIN,),
    "change_type": (SECURITY_CHANGE,),
    "amount": (DEPOSIT, WITHDRAWAL, CARD_PAYMENT, P2P_TRADE),
    "currency": (DEPOSIT, WITHDRAWAL, CARD_PAYMENT, P2P_TRADE),
    "amount_usd": (DEPOSIT, WITHDRAWAL, CARD_PAYMENT, P2P_TRADE),
    "method": (DEPOSIT,),
    "wallet_address": (DEPOSIT, WITHDRAWAL),
    "chain": (WITHDRAWAL,),
    "card_id": (CARD_PAYMENT,),
    "card_bin": (CARD_PAYMENT,),
    "card_country": (CARD_PAYMENT,),
    "status": (CARD_PAYMENT,),
    "decline_reason": (CARD_PAYMENT,),
    "counterparty_id": (P2P_TRADE,),
    "side": (P2P_TRADE,),
    "payment_method": (P2P_TRADE,),
    "trade_status": (P2P_TRADE,),
}


def _cat(values: tuple[str, ...], idx: np.ndarray, name: str) -> pl.Series:
    return pl.Series(name, values, dtype=pl.String).gather(idx)


def _pick(rng: np.random.Generator, p: np.ndarray, n: int) -> np.ndarray:
    return np.minimum(np.searchsorted(np.cumsum(p / p.sum()), rng.random(n), side="right"), len(p) - 1)


def round_amounts(usd: np.ndarray, unit_usd: np.ndarray, fiat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(amount in currency units, amount_usd), both rounded and strictly positive."""
    amount = usd / unit_usd
    amount = np.where(fiat, np.maximum(np.round(amount, 2), 0.01), np.maximum(np.round(amount, 8), 1e-8))
    return amount, np.maximum(np.round(usd, 2), 0.01)


def legit_events(
    cfg: SimConfig,
    pop: Population,
    chunk_start_ms: int,
    n: int,
    rng: np.random.Generator,
    fresh: ids.FreshIds,
) -> pl.DataFrame:
    """``n`` legit events with ``event_ts`` (int ms) inside the chunk starting at ``chunk_start_ms``."""
    utc_hour = (chunk_start_ms // 3_600_000) % 24
    # Sorted uniforms make the binary search cache-friendly; the order of rows carries no meaning
    # (each row gets an independent random timestamp and the chunk is sorted by time afterwards).
    user = np.searchsorted(pop.hour_cdf[utc_hour], np.sort(rng.random(n)), side="right").clip(0, pop.n - 1)
    etype = (rng.random(n)[:, None] > pop.type_cdf[user]).sum(axis=1).clip(0, 5)
    ts = chunk_start_ms + rng.integers(0, cfg.chunk_ms, n)
    return legit_frame(cfg, pop, chunk_start_ms, user, etype, ts, rng, fresh)


def market_event_events(
    cfg: SimConfig,
    pop: Population,
    chunk_start_ms: int,
    n: int,
    plan: MarketPlan,
    rng: np.random.Generator,
    fresh: ids.FreshIds,
) -> pl.DataFrame:
    """``n`` extra legit events of a market event's users (``plan``): drawn by activity alone (no
    diurnal weight: nights as busy as days), mostly money moves, amounts × a lognormal factor around
    ``plan.amount_median``. Otherwise the users' own habits (devices, networks, addresses)."""
    user = plan.users[
        np.searchsorted(plan.cdf, np.sort(rng.random(n)), side="right").clip(0, plan.users.size - 1)
    ]
    etype = np.array([EVENT_TYPES.index(t) for t in MARKET_TYPES])[_pick(rng, MARKET_TYPE_P, n)]
    ts = chunk_start_ms + rng.integers(0, cfg.chunk_ms, n)
    scale = rng.lognormal(np.log(plan.amount_median), 0.5, n)
    return legit_frame(cfg, pop, chunk_start_ms, user, etype, ts, rng, fresh, amount_scale=scale)


def legit_frame(
    cfg: SimConfig,
    pop: Population,
    chunk_start_ms: int,
    user: np.ndarray,
    etype: np.ndarray,
    ts: np.ndarray,
    rng: np.random.Generator,
    fresh: ids.FreshIds,
    amount_scale: np.ndarray | None = None,
) -> pl.DataFrame:
    """The events of the given users, types and times (int ms), each sampling the user's habits."""
    n = user.size
    utc_hour = (chunk_start_ms // 3_600_000) % 24
    home = pop.country[user]

    # -- device: usual ones (primary most often), a new phone for a day, rarely a brand-new one.
    k = (rng.random(n) ** 2 * pop.n_devices[user]).astype(np.int64)
    device = pop.device_id.gather(user * MAX_DEVICES + k)
    day = ts // 86_400_000
    uday = (user.astype(np.uint64) << np.uint64(20)) | day.astype(np.uint64)
    new_phone = ids.unit_hash(cfg.seed, _NS_NEW_PHONE, uday) < cfg.new_device_day_rate
    brand_new = rng.random(n) < 0.002
    dev_key = ids.seed_key(cfg.seed, ids.NS_DEVICE)
    if new_phone.any():
        idx = np.flatnonzero(new_phone)
        device = device.scatter(
            idx, ids.opaque_ids("d_", (np.uint64(3) << np.uint64(56)) | uday[idx], dev_key)
        )
    if brand_new.any():
        idx = np.flatnonzero(brand_new)
        device = device.scatter(idx, ids.opaque_ids("d_", fresh.take(idx.size), dev_key))

    # -- network: home IP, mobile carrier or other Wi-Fi at home; whole days abroad; VPN users.
    r = rng.random(n)
    res_pick = _RES_TABLE[home, (rng.random(n) * _RES_LEN[home]).astype(np.int64)]
    at_home = r < 0.70
    net = np.where(at_home, pop.home_net[user], res_pick)
    ip = np.where(at_home, pop.home_ip[user], (NETWORKS.block[res_pick] << 16) | rng.integers(1, 65_535, n))
    travel = ids.unit_hash(cfg.seed, _NS_TRAVEL, uday) < cfg.travel_day_rate
    if travel.any():
        t = np.flatnonzero(travel)
        c = len(COUNTRIES)
        dest = (
            home[t] + 1 + (ids.unit_hash(cfg.seed, _NS_TRAVEL_TO, uday[t]) * (c - 1)).astype(np.int64)
        ) % c
        hn = ids.unit_hash(cfg.seed, _NS_TRAVEL_NET, uday[t])
        tnet = _RES_TABLE[dest, (hn * _RES_LEN[dest]).astype(np.int64)]
        net[t] = tnet
        ip[t] = (NETWORKS.block[tnet] << 16) | (1 + (hn * 2**40).astype(np.int64) % 65_534)
    on_vpn = pop.vpn[user] & (rng.random(n) < 0.5)
    net = np.where(on_vpn, pop.vpn_net[user], net)
    ip = np.where(on_vpn, pop.vpn_ip[user], ip)
    at_home &= ~on_vpn & ~travel
    ip_str = pop.home_ip_str.gather(user)
    away = np.flatnonzero(~at_home)
    if away.size:
        ip_str = ip_str.scatter(away, ids.ip_strings(ip[away]))

    # -- per-type payload fields.
    fail_p = 0.03 + 0.12 * (brand_new | new_phone)
    success = rng.random(n) >= fail_p
    change = _pick(rng, LEGIT_CHANGE_P, n)
    usd = np.exp(pop.amount_mu[user] + pop.amount_sigma[user] * rng.standard_normal(n)) * AMOUNT_MULT[etype]
    if amount_scale is not None:
        usd = usd * amount_scale
    big = (etype == WITHDRAWAL) & (rng.random(n) < 0.01)
    usd = np.where(big, usd * rng.uniform(5.0, 20.0, n), usd).clip(0.5, 2_000_000.0)

    wk = (rng.random(n) * pop.n_wallets[user]).astype(np.int64)
    asset = pop.wallet_asset[user, wk]
    p2p_asset = _pick(rng, P2P_ASSET_P, n)
    crypto_deposit = rng.random(n) < 0.55
    fiat_tx = (etype == CARD_PAYMENT) | ((etype == DEPOSIT) & ~crypto_deposit)
    asset = np.where(etype == P2P_TRADE, p2p_asset, asset)
    unit = np.where(fiat_tx, COUNTRY_FX[home], ASSET_PRICE[asset])
    amount, amount_usd = round_amounts(usd, unit, fiat_tx)
    currency = np.where(
        fiat_tx,
        pl.Series(_FIAT).gather(home).to_numpy(),
        np.array([a.currency for a in CRYPTO_ASSETS])[asset],
    )

    addr = pop.wallet_address.gather(user * MAX_WALLETS + wk)
    new_addr = ((etype == WITHDRAWAL) & (rng.random(n) < 0.04)) | ((etype == DEPOSIT) & (rng.random(n) < 0.5))
    if new_addr.any():
        idx = np.flatnonzero(new_addr)
        addr = addr.scatter(
            idx,
            ids.addresses(
                fresh.take(idx.size), ASSET_CHAIN[asset[idx]], ids.seed_key(cfg.seed, ids.NS_ADDRESS)
            ),
        )

    ck = (rng.random(n) * np.maximum(pop.n_cards[user], 1)).astype(np.int64)
    card_slot = user * MAX_CARDS + ck
    declined = rng.random(n) < 0.04
    reason = _pick(rng, LEGIT_DECLINE_P, n)
    cp = np.zeros(n, dtype=np.int64)
    p2p = np.flatnonzero(etype == P2P_TRADE)
    cp[p2p] = np.searchsorted(pop.hour_cdf[utc_hour], rng.random(p2p.size), side="right").clip(0, pop.n - 1)
    cp = np.where(cp == user, (cp + 1) % pop.n, cp)
    mm = np.array([c.mobile_money for c in COUNTRIES])[home]
    pm = np.where(mm, _pick(rng, P2P_PM_MOBILE, n), _pick(rng, P2P_PM, n))
    trade_status = _pick(rng, np.array([0.93, 0.06, 0.01]), n)

    frame = pl.DataFrame(
        [
            _cat(EVENT_TYPES, etype, "event_type"),
            pl.Series("event_ts", ts),
            pop.user_id.gather(user).alias("user_id"),
            device.alias("device_id"),
            ip_str.alias("ip"),
            _cat(NETWORKS.country_codes, NETWORKS.country[net], "ip_country"),
            pl.Series("ip_asn", NETWORKS.asn[net]),
            pl.Series("success", success),
            _cat(AUTH_METHODS, pop.auth[user], "auth_method"),
            _cat(CHANGE_TYPES, change, "change_type"),
            pl.Series("amount", amount),
            pl.Series("currency", currency, dtype=pl.String),
            pl.Series("amount_usd", amount_usd),
            _cat(("crypto", "bank_transfer"), (~crypto_deposit).astype(np.int64), "method"),
            addr.alias("wallet_address"),
            _cat(CHAINS, ASSET_CHAIN[asset], "chain"),
            pop.card_id.gather(card_slot).alias("card_id"),
            pop.card_bin.gather(card_slot).alias("card_bin"),
            _cat(COUNTRY_CODES, home, "card_country"),
            _cat(("approved", "declined"), declined.astype(np.int64), "status"),
            _cat(DECLINE_REASONS, reason, "decline_reason"),
            pop.user_id.gather(cp).alias("counterparty_id"),
            _cat(("buy", "sell"), (rng.random(n) < 0.5).astype(np.int64), "side"),
            _cat(PAYMENT_METHODS, pm, "payment_method"),
            _cat(TRADE_STATUSES, trade_status, "trade_status"),
        ]
    )
    return apply_type_nulls(
        frame,
        extra={
            "wallet_address": pl.col("method") == "crypto",
            "decline_reason": pl.col("status") == "declined",
        },
    )


def apply_type_nulls(frame: pl.DataFrame, extra: dict[str, pl.Expr] | None = None) -> pl.DataFrame:
    """Null every field the row's event type does not have (plus optional extra conditions)."""
    type_idx = pl.col("event_type")
    exprs = []
    for name, types in TYPE_FIELDS.items():
        cond = type_idx.is_in([EVENT_TYPES[t] for t in types])
        if extra and name in extra:
            # Deposits only carry an address when they are crypto; only declines have a reason.
            cond = cond & (extra[name] | ~type_idx.is_in(["deposit", "card_payment"]))
        exprs.append(pl.when(cond).then(pl.col(name)).otherwise(None).alias(name))
    return frame.with_columns(exprs)
