"""What the card-payments team declares to onboard: its events, its labels, its feature groups, its
request-time features and its model specification. Nothing else in the code base changes.

Pure declarations (no I/O): ``risk-serve`` imports this module by ``RISK_MODEL_SPEC=
examples.card_payments.definitions:CARD_MODEL``.
"""

from __future__ import annotations

import math

import polars as pl

from risk_assets.features.request import RequestFeatures, calendar
from risk_assets.features.spec import (
    Entity,
    FeatureGroup,
    Where,
    count,
    days,
    distinct_count,
    hours,
    label_count,
    label_rate,
    max_of,
    mean_of,
    ratio,
)
from risk_assets.models.model_spec import LabelRule, ModelSpec, Spine
from risk_assets.sources import EventSource, LabelSource

TS = pl.Datetime("ms", "UTC")

# ---- events and labels ------------------------------------------------------------------------

CARD_TX = EventSource(
    name="card_payments",
    columns={
        "tx_id": pl.String,
        "tx_ts": TS,
        "ingested_at": TS,
        "customer_id": pl.String,
        "terminal_id": pl.String,
        "amount": pl.Float64,
        "channel": pl.String,
    },
    timestamp="tx_ts",
    id_column="tx_id",
    ingestion_timestamp="ingested_at",
    archive_dataset="card_payments",
    topic="cards.payments",
    required=("customer_id", "terminal_id", "amount"),
    description="Card payments of customers at terminals.",
)
CARD_FRAUD = LabelSource(
    name="card_fraud",
    events="card_payments",
    columns={
        "label_id": pl.String,
        "tx_id": pl.String,
        "known_ts": TS,
        "fraud_scenario": pl.String,
        "ingested_at": TS,
    },
    key="tx_id",
    timestamp="known_ts",
    type_column="fraud_scenario",
    label_types=("compromised_terminal", "stolen_card"),
    ingestion_timestamp="ingested_at",
    id_column="label_id",
    archive_dataset="card_fraud",
    topic="cards.fraud",
    description="Confirmed fraudulent payments, known days after the payment.",
)

# ---- feature groups -------------------------------------------------------------------------------

CUSTOMER = Entity("customer", ("customer_id",))
TERMINAL = Entity("terminal", ("terminal_id",))
ONLINE = Where("channel", "eq", "online")

card_customer = FeatureGroup(
    name="card_customer",
    entity=CUSTOMER,
    description="The customer's spending habits: counts and amounts over 1, 7 and 30 days.",
    owner="card-risk",
    source_event_types=(),
    features=(
        count("n_tx_1h", hours(1)),
        count("n_tx_1d", days(1)),
        count("n_tx_7d", days(7)),
        count("n_tx_30d", days(30)),
        mean_of("mean_amount_1d", "amount", days(1)),
        mean_of("mean_amount_7d", "amount", days(7)),
        mean_of("mean_amount_30d", "amount", days(30)),
        max_of("max_amount_30d", "amount", days(30)),
        count("n_online_1d", days(1), ONLINE),
        distinct_count("terminals_7d", "terminal_id", days(7)),
    ),
    ttl=days(30),
    source=CARD_TX,
)

# The delayed terminal windows: payments of the terminal between 7 and 7 + N days ago, and how many
# of them are known to be fraud now (their labels had a week to arrive).
card_terminal = FeatureGroup(
    name="card_terminal",
    entity=TERMINAL,
    description="The terminal's volume and its fraud rate over windows delayed by a week.",
    owner="card-risk",
    source_event_types=(),
    features=(
        count("n_tx_1d", days(1)),
        count("n_tx_7d_d7", days(7), offset=days(7), model_input=False),
        label_count("n_fraud_7d_d7", days(7), hours(1), offset=days(7), model_input=False),
        ratio("risk_7d_d7", "n_fraud_7d_d7", "n_tx_7d_d7", empty="zero"),
        count("n_tx_28d_d7", days(28), offset=days(7), model_input=False),
        label_count("n_fraud_28d_d7", days(28), hours(1), offset=days(7), model_input=False),
        ratio("risk_28d_d7", "n_fraud_28d_d7", "n_tx_28d_d7", empty="zero"),
        label_rate("matured_rate_7d", days(7), days(3), denominator="matured"),
    ),
    ttl=days(35),
    source=CARD_TX,
    label_source=CARD_FRAUD,
)

CARD_GROUPS = (card_customer, card_terminal)

# ---- request-time features ------------------------------------------------------------------------


def payment_request(request):
    """Amount, channel and calendar of the payment itself (hours in the customer's time zone)."""
    cal = calendar(request["tx_ts"], tz="Europe/Paris", night=(0, 6))
    return {
        "tx_amount": request["amount"],
        "is_online": float(request.get("channel") == "online"),
        "hour_local": cal["hour"],
        "is_weekend": cal["is_weekend"],
        "is_night": cal["is_night"],
    }


PAYMENT_REQUEST = RequestFeatures(
    name="card_payment_request",
    inputs=("tx_ts", "amount", "channel"),
    outputs=("tx_amount", "is_online", "hour_local", "is_weekend", "is_night"),
    fn=payment_request,
    description="The payment's amount, channel, local hour, weekend and night flags.",
    owner="card-risk",
)


def amount_vs_habit(request, fetched):
    """The payment's amount over the customer's 30-day mean amount (fetched online)."""
    mean = fetched["card_customer__mean_amount_30d"]
    if mean is None or math.isnan(mean) or mean <= 0:
        return {"amount_over_mean_30d": None}
    return {"amount_over_mean_30d": request["amount"] / mean}


AMOUNT_VS_HABIT = RequestFeatures(
    name="card_amount_vs_habit",
    inputs=("amount",),
    outputs=("amount_over_mean_30d",),
    fn=amount_vs_habit,
    fetched=("card_customer__mean_amount_30d",),
    description="Amount relative to the customer's habit (a request feature reading a fetched one).",
    owner="card-risk",
)

# ---- the model ------------------------------------------------------------------------------------

CARD_MODEL = ModelSpec(
    name="card_payments",
    spine=Spine(CARD_TX, carry=("customer_id", "terminal_id")),
    label=LabelRule(CARD_FRAUD, scenario_column="fraud_scenario"),
    groups=CARD_GROUPS,
    request=(PAYMENT_REQUEST, AMOUNT_VS_HABIT),
    entity_column="customer_id",
    description="Card-payment fraud: every payment scored, labels by payment id.",
)

__all__ = ["CARD_FRAUD", "CARD_GROUPS", "CARD_MODEL", "CARD_TX", "card_customer", "card_terminal"]
