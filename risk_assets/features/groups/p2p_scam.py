"""P2P scams: a scammer counterparty trades with many victims, asks for gift cards or mobile money,
and collects disputes; victims make unusually large trades with new counterparties.

Label-derived: the counterparty's confirmed scam rate over 30 days (labels ≥ 2 days old).
"""

from __future__ import annotations

from risk_assets.features.spec import (
    COUNTERPARTY,
    USER,
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
    sum_of,
    time_since_last,
)

OWNER = "team:risk-ml"
DISPUTED = Where("trade_status", "eq", "disputed")
RISKY_PAYMENT = Where("payment_method", "in", ("gift_card", "mobile_money"))
SELL = Where("side", "eq", "sell")
USD = "amount_usd"
SOURCES = ("p2p_trade",)

p2p_counterparty = FeatureGroup(
    name="p2p_counterparty",
    entity=COUNTERPARTY,
    description="Per counterparty: trade volume, victim fan-out, disputes and risky payment methods.",
    owner=OWNER,
    source_event_types=SOURCES,
    features=(
        count("trade_count_24h", hours(24)),
        count("trade_count_7d", days(7)),
        distinct_count("distinct_users_24h", "user_id", hours(24)),
        distinct_count("distinct_users_7d", "user_id", days(7),
                       description="Distinct users (potential victims) trading with the counterparty."),
        sum_of("trade_usd_24h", USD, hours(24)),
        count("disputed_count_7d", days(7), DISPUTED),
        ratio("disputed_share_7d", "disputed_count_7d", "trade_count_7d"),
        count("risky_payment_count_7d", days(7), RISKY_PAYMENT),
        ratio("risky_payment_share_7d", "risky_payment_count_7d", "trade_count_7d",
              description="Share of trades paid by gift card or mobile money."),
        distinct_count("distinct_payment_methods_7d", "payment_method", days(7)),
        distinct_count("distinct_countries_7d", "ip_country", days(7)),
        label_count("scam_label_count_30d", days(30), days(2)),
        label_rate("scam_label_rate_30d", days(30), days(2)),
    ),
    ttl=days(30),
    tags={"scenario": "p2p_scam"},
)  # fmt: skip

p2p_user = FeatureGroup(
    name="p2p_user",
    entity=USER,
    description="Per user: P2P activity and how unusual the latest trades are for this user.",
    owner=OWNER,
    source_event_types=SOURCES,
    features=(
        count("trade_count_24h", hours(24)),
        count("trade_count_7d", days(7)),
        distinct_count("distinct_counterparties_24h", "counterparty_id", hours(24)),
        distinct_count("distinct_counterparties_7d", "counterparty_id", days(7)),
        max_of("max_trade_usd_24h", USD, hours(24)),
        mean_of("mean_trade_usd_30d", USD, days(30)),
        ratio("max_trade_24h_vs_mean_30d", "max_trade_usd_24h", "mean_trade_usd_30d",
              description="Largest trade today over the user's 30-day mean trade."),
        sum_of("sell_usd_24h", USD, hours(24), SELL),
        count("risky_payment_count_7d", days(7), RISKY_PAYMENT),
        count("disputed_count_30d", days(30), DISPUTED),
        time_since_last("secs_since_previous_trade_30d", days(30)),
    ),
    ttl=days(30),
    tags={"scenario": "p2p_scam"},
)  # fmt: skip

P2P_SCAM_GROUPS: tuple[FeatureGroup, ...] = (p2p_counterparty, p2p_user)
