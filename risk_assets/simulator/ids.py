"""Deterministic, opaque identifiers: event/user/device/card ids, wallet addresses, IP strings.

An id is a bijective 64-bit mix (splitmix64 finaliser) of a unique integer ("what it is": a namespace
tag, a chunk, a counter) XOR a key derived from the seed. A bijection of unique inputs is unique, so
ids never collide within a seed, yet look random and carry no ordering or label information.
Everything is vectorised over NumPy arrays; the scalar helpers wrap the vector ones.
"""

from __future__ import annotations

import numpy as np
import polars as pl

_M64 = (1 << 64) - 1
_HEX = b"0123456789abcdef"
_BECH32 = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_BASE58 = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"

# Namespace tags (top byte of the integer that is mixed) so different kinds of ids never share inputs.
NS_EVENT, NS_LABEL, NS_USER, NS_DEVICE, NS_CARD, NS_ADDRESS, NS_BAD, NS_SALT = range(1, 9)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 (a bijection of 2**64)."""
    z = np.asarray(x, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def seed_key(seed: int, namespace: int) -> np.uint64:
    """A 64-bit key per (seed, namespace): XOR-ed into inputs before mixing."""
    return mix64(np.array([(seed * 0x100000001B3 + namespace * 0x9E3779B97F4A7C15) & _M64], np.uint64))[0]


def unit_hash(seed: int, namespace: int, values: np.ndarray) -> np.ndarray:
    """Deterministic uniforms in [0, 1) from integers (for per-user-per-day decisions)."""
    h = mix64(np.asarray(values, dtype=np.uint64) ^ seed_key(seed, namespace))
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _chars(values: np.ndarray, alphabet: bytes, width: int, salt: int = 0) -> np.ndarray:
    """(n, width) uint8 matrix of characters drawn from ``alphabet`` by hashing ``values``."""
    v = np.asarray(values, dtype=np.uint64)
    out = np.empty((v.shape[0], width), dtype=np.uint8)
    table = np.frombuffer(alphabet, dtype=np.uint8)
    bits = max(1, (len(alphabet) - 1).bit_length())
    per_word = 64 // bits
    mask = np.uint64((1 << bits) - 1)
    col = 0
    word = 0
    while col < width:
        h = (
            v
            if (word == 0 and salt == 0 and len(alphabet) == 16)
            else mix64(v ^ np.uint64((salt + word) * 0x632BE59BD9B4E019 & _M64))
        )
        for j in range(min(per_word, width - col)):
            digit = (h >> np.uint64(64 - bits * (j + 1))) & mask
            out[:, col] = table[digit.astype(np.int64) % len(alphabet)]
            col += 1
        word += 1
    return out


def _to_series(prefix: bytes, body: np.ndarray, name: str) -> pl.Series:
    n, w = body.shape
    full = np.empty((n, len(prefix) + w), dtype=np.uint8)
    full[:, : len(prefix)] = np.frombuffer(prefix, dtype=np.uint8)
    full[:, len(prefix) :] = body
    return pl.Series(name, full.view(f"S{len(prefix) + w}").ravel()).cast(pl.String)


def opaque_ids(prefix: str, values: np.ndarray, key: np.uint64, name: str = "id") -> pl.Series:
    """``prefix`` + 16 hex digits of mix(values XOR key): unique for unique values."""
    h = mix64(np.asarray(values, dtype=np.uint64) ^ key)
    return _to_series(prefix.encode(), _chars(h, _HEX, 16), name)


def opaque_id(prefix: str, value: int, key: np.uint64) -> str:
    """Scalar :func:`opaque_ids`."""
    return opaque_ids(prefix, np.array([value], dtype=np.uint64), key)[0]


_ADDRESS_FORMATS: dict[int, tuple[bytes, bytes, int]] = {
    0: (b"bc1q", _BECH32, 38),  # bitcoin (bech32 P2WPKH)
    1: (b"0x", _HEX, 40),  # ethereum
    2: (b"T", _BASE58, 33),  # tron
    3: (b"", _BASE58, 44),  # solana
}


def addresses(
    values: np.ndarray, chain: np.ndarray, key: np.uint64, name: str = "wallet_address"
) -> pl.Series:
    """Wallet addresses in the format of each row's chain index (see ``world.CHAINS``)."""
    v = mix64(np.asarray(values, dtype=np.uint64) ^ key)
    chain = np.asarray(chain, dtype=np.int64)
    out = pl.Series(name, [None] * len(v), dtype=pl.String)
    for c, (prefix, alphabet, width) in _ADDRESS_FORMATS.items():
        idx = np.flatnonzero(chain == c)
        if idx.size:
            out = out.scatter(idx, _to_series(prefix, _chars(v[idx], alphabet, width, salt=c + 1), name))
    return out


def address(value: int, chain: int, key: np.uint64) -> str:
    """Scalar :func:`addresses`."""
    return addresses(np.array([value], np.uint64), np.array([chain]), key)[0]


def ip_strings(ip: np.ndarray, name: str = "ip") -> pl.Series:
    """Dotted-quad strings of IPv4 addresses given as integers."""
    s = pl.Series(name, np.asarray(ip, dtype=np.int64))
    return pl.select(
        pl.concat_str(
            [(s // (1 << 24)) % 256, (s // (1 << 16)) % 256, (s // 256) % 256, s % 256], separator="."
        ).alias(name)
    ).to_series()


def ip_string(ip: int) -> str:
    """Scalar :func:`ip_strings`."""
    return f"{(ip >> 24) & 255}.{(ip >> 16) & 255}.{(ip >> 8) & 255}.{ip & 255}"


class FreshIds:
    """Allocator of never-before-used integers within one chunk (new devices, addresses, cards…).

    Values are ``TAG_FRESH | chunk_minute << 24 | counter``: unique across chunks and within one.
    """

    TAG = 1 << 62

    def __init__(self, chunk_start_ms: int) -> None:
        self._base = self.TAG | ((chunk_start_ms // 60_000) << 24)
        self._next = 0

    def take(self, k: int) -> np.ndarray:
        """``k`` new integers (uint64)."""
        out = np.arange(self._next, self._next + k, dtype=np.uint64) + np.uint64(self._base)
        self._next += k
        return out

    def one(self) -> int:
        """One new integer."""
        return int(self.take(1)[0])
