"""The user population and the fraudsters' infrastructure, fixed by the seed for a whole run.

Each legit user has habits that the hourly generators sample from: a heavy-tailed activity level, a
home country and time zone (diurnal pattern), 1–3 usual devices, a home IP on a residential network
(a few privacy-minded users on a VPN), an auth method, a lognormal typical amount, a personal mix of
event types, 0–2 own cards and 1–3 own withdrawal addresses on preferred assets/chains.

Fraud rings own devices, hosting/VPN IPs, mule wallet addresses (shared across their ATO cases) and
a few accounts for card testing; P2P scammers are accounts in the same id space as users.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from risk_assets.simulator import ids
from risk_assets.simulator.config import SimConfig
from risk_assets.simulator.world import (
    CARD_BINS,
    CHAINS,
    COUNTRIES,
    CRYPTO_ASSETS,
    DIURNAL,
    NETWORKS,
)

# Base mix of event types (login, security_change, deposit, withdrawal, card_payment, p2p_trade).
BASE_TYPE_MIX = np.array([0.42, 0.008, 0.17, 0.12, 0.14, 0.10])
MAX_DEVICES, MAX_CARDS, MAX_WALLETS = 3, 2, 3
AUTH_METHODS = ("password", "password_2fa", "sso")

# Top bits of the integers behind ids: keep legit, fraud-ring and scammer entities apart.
TAG_RING = 1 << 40
TAG_SCAMMER = 2 << 40
TAG_FRESH = 1 << 62  # ids created during a chunk (new devices, new addresses, fraud cards)


@dataclass(frozen=True)
class NetAddress:
    """One IP with its network: the triple every event carries."""

    ip: str
    asn: int
    country: str


@dataclass(frozen=True)
class FraudRing:
    """Infrastructure shared by the cases of one ring: the links a graph feature can find."""

    index: int
    devices: tuple[str, ...]
    ips: tuple[NetAddress, ...]
    mule_addresses: dict[int, tuple[str, ...]]  # chain index → addresses
    accounts: tuple[str, ...]  # accounts used for card testing


@dataclass(frozen=True)
class Scammer:
    """A P2P scam counterparty: an exchange account with a device and an IP."""

    user_id: str
    ring: int
    device_id: str
    net: NetAddress


@dataclass(frozen=True)
class Population:
    """Per-user habit arrays (index = user number) plus the fraud side."""

    seed: int
    n: int
    user_id: pl.Series
    user_ids: list[str]
    country: np.ndarray
    activity: np.ndarray
    hour_cdf: np.ndarray  # (24, n) cumulative user weights per UTC hour
    hour_volume: np.ndarray  # (24,) relative volume per UTC hour, mean 1
    type_cdf: np.ndarray  # (n, 6)
    n_devices: np.ndarray
    device_id: pl.Series  # n * MAX_DEVICES
    home_net: np.ndarray  # index into NETWORKS
    home_ip: np.ndarray  # int IPv4
    home_ip_str: pl.Series
    vpn: np.ndarray  # bool
    vpn_net: np.ndarray
    vpn_ip: np.ndarray
    auth: np.ndarray  # index into AUTH_METHODS
    amount_mu: np.ndarray
    amount_sigma: np.ndarray
    n_cards: np.ndarray
    card_id: pl.Series  # n * MAX_CARDS
    card_bin: pl.Series  # n * MAX_CARDS
    n_wallets: np.ndarray
    wallet_asset: np.ndarray  # (n, MAX_WALLETS) index into CRYPTO_ASSETS
    wallet_address: pl.Series  # n * MAX_WALLETS
    rings: tuple[FraudRing, ...]
    scammers: tuple[Scammer, ...]
    scammer_cdf: np.ndarray
    victim_cdf: np.ndarray  # ATO targets: active users with large balances

    def net_address(self, user: int) -> NetAddress:
        """The user's home IP triple."""
        net = int(self.home_net[user])
        return NetAddress(
            ids.ip_string(int(self.home_ip[user])),
            int(NETWORKS.asn[net]),
            NETWORKS.country_codes[int(NETWORKS.country[net])],
        )


def random_ip(rng: np.random.Generator, net: np.ndarray) -> np.ndarray:
    """Random IPv4 integers inside the /16 blocks of the given network indices."""
    net = np.asarray(net)
    return (NETWORKS.block[net] << 16) | rng.integers(1, 65_535, size=net.shape)


def random_net_address(rng: np.random.Generator, net: int) -> NetAddress:
    """A random IP in one network, as the triple."""
    ip = int(random_ip(rng, np.array([net]))[0])
    return NetAddress(
        ids.ip_string(ip), int(NETWORKS.asn[net]), NETWORKS.country_codes[int(NETWORKS.country[net])]
    )


def _pick(rng: np.random.Generator, p: np.ndarray, size: int) -> np.ndarray:
    return np.minimum(np.searchsorted(np.cumsum(p / p.sum()), rng.random(size), side="right"), len(p) - 1)


def build_population(cfg: SimConfig) -> Population:
    """Draw the population and fraud infrastructure for ``cfg.seed`` (independent of the time range)."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([cfg.seed, 0xB0B])))
    n, seed = cfg.users, cfg.seed
    idx = np.arange(n, dtype=np.uint64)

    country = _pick(rng, np.array([c.weight for c in COUNTRIES]), n)
    offset = np.array([c.utc_offset for c in COUNTRIES])[country] + rng.integers(-2, 3, n)  # chronotype
    activity = rng.lognormal(0.0, 1.3, n)
    local = (np.arange(24)[:, None] + offset[None, :]) % 24
    weights = activity[None, :] * DIURNAL[local]
    hour_volume = weights.sum(axis=1)
    hour_volume = hour_volume / hour_volume.mean()
    hour_cdf = np.cumsum(weights, axis=1)
    hour_cdf /= hour_cdf[:, -1:]

    n_cards = _pick(rng, np.array([0.35, 0.45, 0.20]), n)
    mix = rng.dirichlet(BASE_TYPE_MIX * 30.0, n)
    mix[:, 4] = np.where(n_cards == 0, 0.0, mix[:, 4])
    type_cdf = np.cumsum(mix / mix.sum(axis=1, keepdims=True), axis=1)
    type_cdf[:, -1] = 1.0

    n_devices = 1 + _pick(rng, np.array([0.45, 0.40, 0.15]), n)
    dev_key = ids.seed_key(seed, ids.NS_DEVICE)
    device_id = ids.opaque_ids(
        "d_", np.repeat(idx, MAX_DEVICES) * 4 + np.tile(np.arange(MAX_DEVICES, dtype=np.uint64), n), dev_key
    )

    res = NETWORKS.residential_by_country
    home_net = np.array([res[c][rng.integers(len(res[c]))] for c in country])
    home_ip = random_ip(rng, home_net)
    vpn = rng.random(n) < cfg.vpn_user_fraction
    vpn_net = NETWORKS.hosting_idx[rng.integers(0, len(NETWORKS.hosting_idx), n)]
    vpn_ip = random_ip(rng, vpn_net)
    auth = _pick(rng, np.array([0.40, 0.55, 0.05]), n)

    amount_mu = rng.normal(np.log(80.0), 1.0, n)
    amount_sigma = rng.uniform(0.5, 1.0, n)

    card_key = ids.seed_key(seed, ids.NS_CARD)
    card_id = ids.opaque_ids(
        "c_", np.repeat(idx, MAX_CARDS) * 2 + np.tile(np.arange(MAX_CARDS, dtype=np.uint64), n), card_key
    )
    bins = np.array(CARD_BINS)  # (countries, 6)
    card_bin = pl.Series(
        "card_bin", bins[np.repeat(country, MAX_CARDS), rng.integers(0, bins.shape[1], n * MAX_CARDS)]
    )

    n_wallets = 1 + _pick(rng, np.array([0.5, 0.35, 0.15]), n)
    wallet_asset = _pick(rng, np.array([a.weight for a in CRYPTO_ASSETS]), n * MAX_WALLETS).reshape(
        n, MAX_WALLETS
    )
    chain_of = np.array([CHAINS.index(a.chain) for a in CRYPTO_ASSETS])
    addr_key = ids.seed_key(seed, ids.NS_ADDRESS)
    wallet_address = ids.addresses(
        np.arange(n * MAX_WALLETS, dtype=np.uint64), chain_of[wallet_asset.ravel()], addr_key
    )

    user_key = ids.seed_key(seed, ids.NS_USER)
    user_id = ids.opaque_ids("u_", idx, user_key, name="user_id")

    rings = []
    for r in range(cfg.fraud_rings):
        base = TAG_RING | (r << 20)
        devices = ids.opaque_ids("d_", base + np.arange(10, dtype=np.uint64), dev_key).to_list()
        nets = NETWORKS.hosting_idx[rng.integers(0, len(NETWORKS.hosting_idx), 8)]
        ips = tuple(random_net_address(rng, int(x)) for x in nets)
        mules = {
            c: tuple(
                ids.addresses(
                    base + c * 100 + np.arange(6, dtype=np.uint64), np.full(6, c), addr_key
                ).to_list()
            )
            for c in range(len(CHAINS))
        }
        accounts = ids.opaque_ids("u_", base + np.arange(8, dtype=np.uint64), user_key).to_list()
        rings.append(FraudRing(r, tuple(devices), ips, mules, tuple(accounts)))

    scammers = []
    for j in range(cfg.scam_counterparties):
        ring = int(rng.integers(cfg.fraud_rings)) if cfg.fraud_rings else 0
        uid = ids.opaque_id("u_", TAG_SCAMMER | j, user_key)
        dev = ids.opaque_id("d_", TAG_SCAMMER | j, dev_key)
        c = int(_pick(rng, np.array([c.weight for c in COUNTRIES]), 1)[0])
        net = int(res[c][rng.integers(len(res[c]))])
        scammers.append(Scammer(uid, ring, dev, random_net_address(rng, net)))
    scam_w = 1.0 / np.arange(1, len(scammers) + 1) ** 1.1  # a few scammers have most victims
    return Population(
        seed=seed,
        n=n,
        user_id=user_id,
        user_ids=user_id.to_list(),
        country=country,
        activity=activity,
        hour_cdf=hour_cdf,
        hour_volume=hour_volume,
        type_cdf=type_cdf,
        n_devices=n_devices,
        device_id=device_id,
        home_net=home_net,
        home_ip=home_ip,
        home_ip_str=ids.ip_strings(home_ip),
        vpn=vpn,
        vpn_net=vpn_net,
        vpn_ip=vpn_ip,
        auth=auth,
        amount_mu=amount_mu,
        amount_sigma=amount_sigma,
        n_cards=n_cards,
        card_id=card_id,
        card_bin=card_bin,
        n_wallets=n_wallets,
        wallet_asset=wallet_asset,
        wallet_address=wallet_address,
        rings=tuple(rings),
        scammers=tuple(scammers),
        scammer_cdf=np.cumsum(scam_w / scam_w.sum()),
        victim_cdf=np.cumsum(activity * np.exp(amount_mu)) / np.sum(activity * np.exp(amount_mu)),
    )
