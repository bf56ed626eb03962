"""Raw event and label schemas, version 1.

One JSON object per Kafka message. Timestamps are integer milliseconds since the Unix epoch, UTC.
The ``event_type`` field selects the struct; unknown fields are rejected so that producer bugs show
up in the dead-letter store instead of silently widening the archive. The archive stores the union
of all fields as one flat table (``ARCHIVE_EVENT_COLUMNS``), fields a type does not have are null.

The JSON Schema files under ``risk_assets/events/jsonschema/`` are generated from these structs
(``python -m risk_assets.events.schema``) and checked by a test, so code and document cannot drift.
Changing a field means a new ``SCHEMA_VERSION`` and a new schema file, never an edit in place.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal, get_args

import msgspec
import polars as pl

SCHEMA_VERSION = 1

# Bounds that make a value "impossible" rather than merely unusual.
MAX_AMOUNT_USD = 10_000_000.0
MIN_EVENT_TS_MS = 1_262_304_000_000  # 2010-01-01: the exchange did not exist before.
MAX_EVENT_TS_MS = 4_102_444_800_000  # 2100-01-01: a static sanity bound (Parquet, Polars and
# datetime all hold it); how far *ahead of arrival* a time may be is the ingestion's business
# (``partitioning.MAX_FUTURE_SKEW``, ``archive.decode_messages(not_after_ms=…)``).

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
TimestampMs = Annotated[int, msgspec.Meta(ge=MIN_EVENT_TS_MS, le=MAX_EVENT_TS_MS)]
Country = Annotated[str, msgspec.Meta(pattern="^[A-Z]{2}$")]
Currency = Annotated[str, msgspec.Meta(pattern="^[A-Z]{2,6}$")]
Amount = Annotated[float, msgspec.Meta(gt=0.0, le=MAX_AMOUNT_USD * 1_000)]
AmountUsd = Annotated[float, msgspec.Meta(gt=0.0, le=MAX_AMOUNT_USD)]
Asn = Annotated[int, msgspec.Meta(ge=1, le=4_294_967_295)]

EventType = Literal["login", "security_change", "deposit", "withdrawal", "card_payment", "p2p_trade"]
EVENT_TYPES: tuple[str, ...] = EventType.__args__  # type: ignore[attr-defined]


class _Event(msgspec.Struct, tag_field="event_type", forbid_unknown_fields=True, kw_only=True):
    """Fields every event carries: who, from where, when."""

    schema_version: Literal[1] = 1
    event_id: Id
    event_ts: TimestampMs
    user_id: Id
    device_id: Id
    ip: Annotated[str, msgspec.Meta(min_length=3, max_length=45)]
    ip_country: Country
    ip_asn: Asn


class Login(_Event, tag="login"):
    """A login attempt. ``success`` is false for a wrong password or a failed 2FA challenge."""

    success: bool
    auth_method: Literal["password", "password_2fa", "sso"]


class SecurityChange(_Event, tag="security_change"):
    """A change of a security setting: the classic first move after an account takeover."""

    change_type: Literal["password", "2fa_enable", "2fa_disable", "2fa_reset", "email", "phone"]


class Deposit(_Event, tag="deposit"):
    """Funds arriving: crypto from a wallet address, or fiat by bank transfer."""

    amount: Amount
    currency: Currency
    amount_usd: AmountUsd
    method: Literal["crypto", "bank_transfer"]
    wallet_address: Id | None = None


class Withdrawal(_Event, tag="withdrawal"):
    """Crypto leaving the exchange to an external wallet address."""

    amount: Amount
    currency: Currency
    amount_usd: AmountUsd
    wallet_address: Id
    chain: Literal["bitcoin", "ethereum", "tron", "solana"]


class CardPayment(_Event, tag="card_payment"):
    """A card purchase of crypto. ``card_id`` is a token of the card number, never the number."""

    amount: Amount
    currency: Currency
    amount_usd: AmountUsd
    card_id: Id
    card_bin: Annotated[str, msgspec.Meta(pattern="^[0-9]{6}$")]
    card_country: Country
    status: Literal["approved", "declined"]
    decline_reason: Literal["insufficient_funds", "do_not_honor", "invalid_cvv", "expired_card"] | None = None


class P2PTrade(_Event, tag="p2p_trade"):
    """A peer-to-peer trade with another user of the exchange (the counterparty)."""

    amount: Amount
    currency: Currency
    amount_usd: AmountUsd
    counterparty_id: Id
    side: Literal["buy", "sell"]
    payment_method: Literal["bank_transfer", "mobile_money", "gift_card", "cash"]
    trade_status: Literal["completed", "cancelled", "disputed"]


RiskEvent = Login | SecurityChange | Deposit | Withdrawal | CardPayment | P2PTrade

# ``fraud_attempt``: an event of a confirmed fraud case that moved no money (e.g. the declined payments
# of a card-testing burst), labelled when the case is confirmed.
LabelType = Literal["chargeback", "ato_report", "scam_report", "fraud_attempt"]
FraudScenario = Literal["ato", "p2p_scam", "card_testing"]
SCENARIOS: tuple[str, ...] = get_args(FraudScenario)
"""Every fraud scenario a label can name (per-scenario metrics and monitoring iterate over it)."""


class FraudLabel(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A confirmed fraud, known from ``label_ts`` on: the time the chargeback or report arrived.

    A label points at the event it condemns (``event_id``) and carries that event's time so that
    training can join on it without a lookup. Absence of a label is not proof of innocence:
    some frauds are never reported, and reports arrive hours to weeks late.
    """

    schema_version: Literal[1] = 1
    label_id: Id
    label_type: LabelType
    label_ts: TimestampMs
    event_id: Id
    event_ts: TimestampMs
    user_id: Id
    scenario: FraudScenario


# Flat archive layout: every field of every event type, plus the columns the pipeline adds.
_STR = pl.String
ARCHIVE_EVENT_COLUMNS: dict[str, pl.DataType] = {
    "event_id": _STR,
    "event_type": _STR,
    "schema_version": pl.Int16,
    "event_ts": pl.Datetime("ms", "UTC"),
    "user_id": _STR,
    "device_id": _STR,
    "ip": _STR,
    "ip_country": _STR,
    "ip_asn": pl.Int64,
    "success": pl.Boolean,
    "auth_method": _STR,
    "change_type": _STR,
    "amount": pl.Float64,
    "currency": _STR,
    "amount_usd": pl.Float64,
    "method": _STR,
    "wallet_address": _STR,
    "chain": _STR,
    "card_id": _STR,
    "card_bin": _STR,
    "card_country": _STR,
    "status": _STR,
    "decline_reason": _STR,
    "counterparty_id": _STR,
    "side": _STR,
    "payment_method": _STR,
    "trade_status": _STR,
    # Added on ingestion, not part of the payload.
    "ingest_ts": pl.Datetime("ms", "UTC"),
}
# Columns of the JSON payload (everything but what ingestion adds).
PAYLOAD_EVENT_COLUMNS: tuple[str, ...] = tuple(c for c in ARCHIVE_EVENT_COLUMNS if c != "ingest_ts")

ARCHIVE_LABEL_COLUMNS: dict[str, pl.DataType] = {
    "label_id": _STR,
    "label_type": _STR,
    "schema_version": pl.Int16,
    "label_ts": pl.Datetime("ms", "UTC"),
    "event_id": _STR,
    "event_ts": pl.Datetime("ms", "UTC"),
    "user_id": _STR,
    "scenario": _STR,
    "ingest_ts": pl.Datetime("ms", "UTC"),
}
PAYLOAD_LABEL_COLUMNS: tuple[str, ...] = tuple(c for c in ARCHIVE_LABEL_COLUMNS if c != "ingest_ts")

JSON_SCHEMA_DIR = Path(__file__).with_name("jsonschema")


def json_schemas() -> dict[str, dict]:
    """The JSON Schema documents of this version, by file name."""
    return {
        f"risk_event.v{SCHEMA_VERSION}.json": msgspec.json.schema(RiskEvent),
        f"fraud_label.v{SCHEMA_VERSION}.json": msgspec.json.schema(FraudLabel),
    }


def write_json_schemas(directory: Path = JSON_SCHEMA_DIR) -> list[Path]:
    """Regenerate the JSON Schema files from the structs."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, doc in json_schemas().items():
        path = directory / name
        path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written


if __name__ == "__main__":
    for p in write_json_schemas():
        print(p)
