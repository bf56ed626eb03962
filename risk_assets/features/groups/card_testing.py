"""Card testing: many small card payments with stolen cards from few devices/ips, mostly declined.

Signals: payment and decline bursts per card/device/ip/user, many cards (and card countries/BINs) per
device or ip, small amounts, CVV declines. Label-derived: the card's confirmed chargeback rate.
"""

from __future__ import annotations

from risk_assets.features.spec import (
    CARD,
    DEVICE,
    IP,
    USER,
    FeatureGroup,
    Where,
    count,
    days,
    distinct_count,
    hours,
    label_rate,
    max_of,
    mean_of,
    min_of,
    minutes,
    ratio,
    time_since_last,
)

OWNER = "team:risk-ml"
DECLINED = Where("status", "eq", "declined")
CVV = Where("decline_reason", "eq", "invalid_cvv")
SMALL = Where("amount_usd", "le", 5.0)
USD = "amount_usd"
SOURCES = ("card_payment",)


def _burst_features() -> tuple:
    """Payment/decline bursts shared by the device and ip groups."""
    return (
        count("card_payment_count_10m", minutes(10)),
        count("card_payment_count_1h", hours(1)),
        count("decline_count_10m", minutes(10), DECLINED),
        count("decline_count_1h", hours(1), DECLINED),
        ratio("decline_rate_10m", "decline_count_10m", "card_payment_count_10m"),
        ratio("decline_rate_1h", "decline_count_1h", "card_payment_count_1h"),
        count("cvv_decline_count_1h", hours(1), CVV),
        count("small_payment_count_1h", hours(1), SMALL),
        distinct_count("distinct_cards_1h", "card_id", hours(1)),
        distinct_count("distinct_cards_24h", "card_id", hours(24)),
        distinct_count("distinct_card_countries_24h", "card_country", hours(24)),
        distinct_count("distinct_card_bins_24h", "card_bin", hours(24)),
        mean_of("mean_amount_usd_1h", USD, hours(1)),
        max_of("max_amount_usd_1h", USD, hours(1)),
        min_of("min_amount_usd_1h", USD, hours(1)),
    )


card_testing_card = FeatureGroup(
    name="card_testing_card",
    entity=CARD,
    description="Per card: payment/decline bursts and spread over devices, users and ips.",
    owner=OWNER,
    source_event_types=SOURCES,
    features=(
        count("card_payment_count_10m", minutes(10)),
        count("card_payment_count_1h", hours(1)),
        count("card_payment_count_24h", hours(24)),
        count("decline_count_10m", minutes(10), DECLINED),
        count("decline_count_1h", hours(1), DECLINED),
        ratio("decline_rate_1h", "decline_count_1h", "card_payment_count_1h"),
        distinct_count("distinct_devices_24h", "device_id", hours(24)),
        distinct_count("distinct_users_24h", "user_id", hours(24)),
        distinct_count("distinct_ips_24h", "ip", hours(24)),
        mean_of("mean_amount_usd_24h", USD, hours(24)),
        max_of("max_amount_usd_24h", USD, hours(24)),
        time_since_last("secs_since_previous_payment_24h", hours(24)),
        label_rate("chargeback_rate_30d", days(30), days(2),
                   description="Share of the card's 30-day payments with a label at least 2 days old."),
    ),
    ttl=days(7),
    tags={"scenario": "card_testing"},
)  # fmt: skip

card_testing_device = FeatureGroup(
    name="card_testing_device",
    entity=DEVICE,
    description="Per device: card payment bursts, declines, and how many different cards it uses.",
    owner=OWNER,
    source_event_types=SOURCES,
    features=_burst_features(),
    ttl=days(1),
    tags={"scenario": "card_testing"},
)

card_testing_ip = FeatureGroup(
    name="card_testing_ip",
    entity=IP,
    description="Per ip: card payment bursts, declines, cards and devices behind one address.",
    owner=OWNER,
    source_event_types=SOURCES,
    features=(*_burst_features(), distinct_count("distinct_devices_1h", "device_id", hours(1))),
    ttl=days(1),
    tags={"scenario": "card_testing"},
)

card_testing_user = FeatureGroup(
    name="card_testing_user",
    entity=USER,
    description="Per user: card payments, declines and card churn compared with the user's habits.",
    owner=OWNER,
    source_event_types=SOURCES,
    features=(
        count("card_payment_count_1h", hours(1)),
        count("card_payment_count_24h", hours(24)),
        count("decline_count_24h", hours(24), DECLINED),
        ratio("decline_rate_24h", "decline_count_24h", "card_payment_count_24h"),
        distinct_count("distinct_cards_24h", "card_id", hours(24)),
        distinct_count("distinct_cards_7d", "card_id", days(7)),
        distinct_count("distinct_card_countries_7d", "card_country", days(7)),
        mean_of("mean_amount_usd_30d", USD, days(30)),
        max_of("max_amount_usd_24h", USD, hours(24)),
        ratio("max_24h_vs_mean_30d", "max_amount_usd_24h", "mean_amount_usd_30d"),
    ),
    ttl=days(30),
    tags={"scenario": "card_testing"},
)

CARD_TESTING_GROUPS: tuple[FeatureGroup, ...] = (
    card_testing_card,
    card_testing_device,
    card_testing_ip,
    card_testing_user,
)
