"""Request-time features: what the scoring service computes from the event itself.

Two forms of one definition: ``REQUEST_FEATURES`` (Polars expressions, for training sets) and
``request_features(event)`` (plain Python on one event dict, for the service's hot path, where a
one-row DataFrame would cost more than the model). ``tests/models/test_request_features.py`` checks that
both agree on simulated traffic; change them together.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import polars as pl

REQUEST_FEATURES: dict[str, pl.Expr] = {
    "req_amount_usd": pl.col("amount_usd").cast(pl.Float64),
    "req_is_withdrawal": (pl.col("event_type") == "withdrawal").cast(pl.Float64),
    "req_is_card_payment": (pl.col("event_type") == "card_payment").cast(pl.Float64),
    "req_is_p2p_trade": (pl.col("event_type") == "p2p_trade").cast(pl.Float64),
    "req_card_declined": (pl.col("status") == "declined").fill_null(False).cast(pl.Float64),
    "req_p2p_buy": (pl.col("side") == "buy").fill_null(False).cast(pl.Float64),
    "req_hour_of_day": pl.col("event_ts").dt.hour().cast(pl.Float64),
}
REQUEST_FEATURE_NAMES: tuple[str, ...] = tuple(REQUEST_FEATURES)


def _hour(event_ts: Any) -> float:
    if isinstance(event_ts, datetime):
        ts = event_ts if event_ts.tzinfo else event_ts.replace(tzinfo=UTC)
        return float(ts.astimezone(UTC).hour)
    return float((int(event_ts) // 3_600_000) % 24)  # epoch milliseconds, as in the JSON schema


def request_features(event: Mapping[str, Any]) -> dict[str, float]:
    """The request-time features of one event (JSON-schema dict: ``event_ts`` in epoch ms)."""
    amount = event.get("amount_usd")
    etype = event.get("event_type")
    return {
        "req_amount_usd": float("nan") if amount is None else float(amount),
        "req_is_withdrawal": float(etype == "withdrawal"),
        "req_is_card_payment": float(etype == "card_payment"),
        "req_is_p2p_trade": float(etype == "p2p_trade"),
        "req_card_declined": float(event.get("status") == "declined"),
        "req_p2p_buy": float(event.get("side") == "buy"),
        "req_hour_of_day": _hour(event["event_ts"]),
    }
