"""Static reference data of the simulated world: countries, networks (ASNs), currencies, prices.

Everything here is a constant table; the random choices that use it live in the population, legit and
scenario modules. ASN numbers are real operators (so that a reader recognises "residential ISP" vs.
"hosting/VPN"); IP blocks are derived deterministically from the ASN and are not the real allocations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from risk_assets.events.schema import EVENT_TYPES

EVENT_TYPE_INDEX: dict[str, int] = {t: i for i, t in enumerate(EVENT_TYPES)}
LOGIN, SECURITY_CHANGE, DEPOSIT, WITHDRAWAL, CARD_PAYMENT, P2P_TRADE = range(6)
assert EVENT_TYPES == ("login", "security_change", "deposit", "withdrawal", "card_payment", "p2p_trade")


@dataclass(frozen=True)
class CountryInfo:
    """A customer country: population share, UTC offset (hours), fiat currency, residential ASNs."""

    code: str
    weight: float
    utc_offset: int
    fiat: str
    asns: tuple[int, ...]
    mobile_money: bool = False  # P2P payments by mobile money are common there


COUNTRIES: tuple[CountryInfo, ...] = (
    CountryInfo("US", 0.20, -5, "USD", (7922, 7018, 701, 20115, 21928)),
    CountryInfo("GB", 0.07, 0, "GBP", (2856, 5089, 5607)),
    CountryInfo("DE", 0.07, 1, "EUR", (3320, 3209, 6805)),
    CountryInfo("FR", 0.05, 1, "EUR", (3215, 12322, 5410)),
    CountryInfo("ES", 0.04, 1, "EUR", (3352, 12479)),
    CountryInfo("IT", 0.04, 1, "EUR", (3269, 30722)),
    CountryInfo("NL", 0.03, 1, "EUR", (1136, 33915)),
    CountryInfo("BR", 0.07, -3, "BRL", (28573, 18881, 26599)),
    CountryInfo("NG", 0.06, 1, "NGN", (29465, 37148), mobile_money=True),
    CountryInfo("KE", 0.02, 3, "KES", (33771, 36866), mobile_money=True),
    CountryInfo("IN", 0.07, 5, "INR", (55836, 24560, 45609)),
    CountryInfo("TR", 0.05, 3, "TRY", (9121, 15897)),
    CountryInfo("JP", 0.04, 9, "JPY", (2516, 4713)),
    CountryInfo("KR", 0.03, 9, "KRW", (4766, 9318)),
    CountryInfo("AU", 0.03, 10, "AUD", (1221, 4804)),
    CountryInfo("CA", 0.03, -5, "CAD", (812, 577)),
    CountryInfo("MX", 0.03, -6, "MXN", (8151, 28548)),
    CountryInfo("PH", 0.03, 8, "PHP", (9299, 132199), mobile_money=True),
    CountryInfo("VN", 0.02, 7, "VND", (7552, 45899)),
    CountryInfo("AR", 0.02, -3, "ARS", (7303, 22927)),
)
COUNTRY_CODES: tuple[str, ...] = tuple(c.code for c in COUNTRIES)

# Hosting / VPN exit networks: what fraud infrastructure (and some privacy-minded legit users) use.
HOSTING_ASNS: tuple[tuple[int, str], ...] = (
    (14061, "US"),  # DigitalOcean
    (16509, "US"),  # Amazon
    (20473, "US"),  # Vultr
    (24940, "DE"),  # Hetzner
    (51167, "DE"),  # Contabo
    (16276, "FR"),  # OVH
    (9009, "GB"),  # M247
    (212238, "GB"),  # Datacamp
    (60068, "NL"),  # CDN77
    (63949, "NL"),  # Akamai/Linode
)

# Networks attackers move to in a ``new_attack_network`` drift scenario: residential / mobile ISPs of
# countries where the exchange has no customers (residential proxies). Kept apart from ``NETWORKS``
# so that adding one never changes the population's draws.
NEW_ATTACK_NETWORKS: dict[str, tuple[int, ...]] = {
    "ID": (7713, 23693, 17974),  # Telkom Indonesia, Telkomsel, Telkomnet
    "RU": (8402, 12389, 31133),  # Beeline, Rostelecom, MegaFon
    "EG": (8452, 24863),  # TE Data, Link Egypt
}

FIAT_USD: dict[str, float] = {
    "USD": 1.0,
    "GBP": 1.27,
    "EUR": 1.08,
    "BRL": 0.18,
    "NGN": 0.00065,
    "KES": 0.0077,
    "INR": 0.012,
    "TRY": 0.029,
    "JPY": 0.0066,
    "KRW": 0.00072,
    "AUD": 0.65,
    "CAD": 0.73,
    "MXN": 0.055,
    "PHP": 0.017,
    "VND": 0.000039,
    "ARS": 0.001,
}


@dataclass(frozen=True)
class CryptoAsset:
    """A currency on a chain (USDT exists on several), with its fixed simulated USD price."""

    currency: str
    chain: str
    price_usd: float
    weight: float


CRYPTO_ASSETS: tuple[CryptoAsset, ...] = (
    CryptoAsset("BTC", "bitcoin", 90_000.0, 0.30),
    CryptoAsset("ETH", "ethereum", 3_000.0, 0.22),
    CryptoAsset("USDT", "tron", 1.0, 0.20),
    CryptoAsset("USDT", "ethereum", 1.0, 0.10),
    CryptoAsset("SOL", "solana", 150.0, 0.10),
    CryptoAsset("USDC", "solana", 1.0, 0.08),
)
CHAINS: tuple[str, ...] = ("bitcoin", "ethereum", "tron", "solana")
ASSET_CHAIN = np.array([CHAINS.index(a.chain) for a in CRYPTO_ASSETS], dtype=np.int64)
ASSET_PRICE = np.array([a.price_usd for a in CRYPTO_ASSETS])

# Relative activity by local hour of day (0..23): quiet nights, busy evenings.
DIURNAL = np.array(
    [
        0.30,
        0.18,
        0.11,
        0.08,
        0.08,
        0.11,
        0.25,
        0.50,
        0.80,
        0.95,
        1.00,
        1.00,
        1.05,
        1.00,
        0.98,
        1.00,
        1.05,
        1.10,
        1.20,
        1.30,
        1.32,
        1.20,
        0.90,
        0.55,
    ]
)


# --- The network table: every ASN the simulator uses, residential first, then hosting. -----------
@dataclass(frozen=True)
class Networks:
    """Flat arrays over all ASNs: number, country index, hosting flag and a derived /16 IP block."""

    asn: np.ndarray  # int64
    country: np.ndarray  # int64 index into COUNTRY_CODES_ALL
    hosting: np.ndarray  # bool
    block: np.ndarray  # int64: the first two octets as a << 8 | b
    country_codes: tuple[str, ...]  # customer countries first, then hosting-only countries
    residential_by_country: list[np.ndarray]  # ASN indices per customer country
    hosting_idx: np.ndarray  # ASN indices of hosting networks


def asn_block(asn: int) -> int:
    """A stable pseudo /16 block for an ASN: first octet in 11..223 (not 127), second 0..255."""
    h = (asn * 2_654_435_761) & 0xFFFFFFFF
    a = 11 + h % 213
    if a == 127:
        a = 128
    return (a << 8) | ((h >> 8) & 0xFF)


def _build_networks() -> Networks:
    codes = list(COUNTRY_CODES)
    asn, country, hosting = [], [], []
    residential: list[np.ndarray] = []
    for ci, c in enumerate(COUNTRIES):
        start = len(asn)
        for a in c.asns:
            asn.append(a)
            country.append(ci)
            hosting.append(False)
        residential.append(np.arange(start, len(asn)))
    hstart = len(asn)
    for a, cc in HOSTING_ASNS:
        if cc not in codes:
            codes.append(cc)
        asn.append(a)
        country.append(codes.index(cc))
        hosting.append(True)
    return Networks(
        asn=np.array(asn, dtype=np.int64),
        country=np.array(country, dtype=np.int64),
        hosting=np.array(hosting, dtype=bool),
        block=np.array([asn_block(a) for a in asn], dtype=np.int64),
        country_codes=tuple(codes),
        residential_by_country=residential,
        hosting_idx=np.arange(hstart, len(asn)),
    )


NETWORKS = _build_networks()


def card_bins(country_index: int) -> tuple[str, ...]:
    """Six plausible 6-digit card BINs (Visa 4…, Mastercard 5…) issued in a country."""
    return tuple(
        f"{4 if k % 2 == 0 else 5}{(country_index * 7919 + k * 10_459) % 100_000:05d}" for k in range(6)
    )


CARD_BINS: tuple[tuple[str, ...], ...] = tuple(card_bins(i) for i in range(len(COUNTRIES)))
