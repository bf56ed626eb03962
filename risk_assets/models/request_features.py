"""The exchange's request-time features: one :class:`~risk_assets.features.request.RequestFeatures`
definition (``EXCHANGE_REQUEST``), executed by the same function in training-set building and in
``risk-serve`` (``tests/models/test_request_features.py`` proves it on real traffic through the real
service process).

``request_features(event)`` is the definition's function on one event (JSON-schema dict:
``event_ts`` in epoch ms); ``REQUEST_FEATURE_NAMES`` its outputs in model order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from risk_assets.features.request import RequestFeatures


def _hour(event_ts: int) -> float:
    return float((int(event_ts) // 3_600_000) % 24)  # epoch milliseconds, as in the JSON schema


def request_features(event: Mapping[str, Any]) -> dict[str, float]:
    """The request-time features of one exchange event (JSON-schema dict: ``event_ts`` in epoch ms)."""
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


EXCHANGE_REQUEST = RequestFeatures(
    name="exchange_request",
    inputs=("event_type", "event_ts", "amount_usd", "status", "side"),
    outputs=(
        "req_amount_usd",
        "req_is_withdrawal",
        "req_is_card_payment",
        "req_is_p2p_trade",
        "req_card_declined",
        "req_p2p_buy",
        "req_hour_of_day",
    ),
    fn=request_features,
    description="Amount, event kind, card decline, P2P side and UTC hour of the scored event.",
    owner="risk-platform",
)
"""The exchange's request-time features (the former fixed ``req_*`` list, same values)."""

REQUEST_FEATURE_NAMES: tuple[str, ...] = EXCHANGE_REQUEST.outputs

REQUEST_FEATURE_SETS: dict[str, RequestFeatures] = {EXCHANGE_REQUEST.name: EXCHANGE_REQUEST}
"""The request-feature definitions this code location ships, by name (like ``GROUPS_BY_NAME``)."""
