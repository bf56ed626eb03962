"""Account takeover: credential stuffing, a new device, security changes, then a fast withdrawal.

Signals: bursts of (failed) logins per user/device/ip, new devices/ips/countries for a user, many
users on one device, security changes shortly before withdrawals, new withdrawal addresses, and a
withdrawal volume out of proportion to the user's deposits. Label-derived: how often a device's or a
withdrawal address's recent events were confirmed fraud (labels used only 2 days after they arrive).
"""

from __future__ import annotations

from risk_assets.features.spec import (
    DEVICE,
    IP,
    USER,
    USER_WALLET,
    WALLET,
    FeatureGroup,
    Where,
    count,
    days,
    distinct_count,
    event_type,
    hours,
    label_count,
    label_rate,
    last_value,
    max_of,
    minutes,
    ratio,
    sum_of,
    time_since_last,
)

OWNER = "team:risk-ml"
LABEL_DELAY = days(2)

LOGIN = event_type("login")
FAILED = Where("success", "eq", False)
SECURITY = event_type("security_change")
TWO_FA_OFF = Where("change_type", "in", ("2fa_disable", "2fa_reset"))
WITHDRAWAL = event_type("withdrawal")
DEPOSIT = event_type("deposit")
USD = "amount_usd"

ato_user = FeatureGroup(
    name="ato_user",
    entity=USER,
    description="Per-user login, security-change and withdrawal behaviour for account takeover.",
    owner=OWNER,
    source_event_types=("login", "security_change", "deposit", "withdrawal"),
    features=(
        count("login_count_10m", minutes(10), LOGIN, description="Logins (any outcome) in 10 minutes."),
        count("login_count_1h", hours(1), LOGIN),
        count("login_count_24h", hours(24), LOGIN),
        count("failed_login_count_10m", minutes(10), LOGIN, FAILED),
        count("failed_login_count_1h", hours(1), LOGIN, FAILED),
        count("failed_login_count_24h", hours(24), LOGIN, FAILED),
        ratio("failed_login_share_1h", "failed_login_count_1h", "login_count_1h"),
        distinct_count("distinct_devices_24h", "device_id", hours(24)),
        distinct_count("distinct_devices_7d", "device_id", days(7)),
        distinct_count("distinct_ips_24h", "ip", hours(24)),
        distinct_count("distinct_ips_7d", "ip", days(7)),
        distinct_count("distinct_countries_24h", "ip_country", hours(24)),
        distinct_count("distinct_countries_7d", "ip_country", days(7)),
        distinct_count("distinct_asns_7d", "ip_asn", days(7)),
        ratio("devices_24h_vs_7d", "distinct_devices_24h", "distinct_devices_7d",
              description="Share of the week's devices seen in the last day (1.0 = all new today)."),
        count("security_change_count_1h", hours(1), SECURITY),
        count("security_change_count_24h", hours(24), SECURITY),
        count("twofa_off_count_24h", hours(24), SECURITY, TWO_FA_OFF),
        time_since_last("secs_since_security_change_30d", days(30), SECURITY,
                        description="Seconds since the previous security change (null: none in 30 days)."),
        time_since_last("secs_since_login_30d", days(30), LOGIN, Where("success", "eq", True)),
        # Last successful login network (ASN). Served online, so numeric: a String `last` value
        # (e.g. the country) stays offline-only; the online store holds numbers.
        last_value("last_login_asn_30d", "ip_asn", days(30), LOGIN, Where("success", "eq", True)),
        count("withdrawal_count_1h", hours(1), WITHDRAWAL),
        count("withdrawal_count_24h", hours(24), WITHDRAWAL),
        sum_of("withdrawal_usd_1h", USD, hours(1), WITHDRAWAL),
        sum_of("withdrawal_usd_24h", USD, hours(24), WITHDRAWAL),
        max_of("max_withdrawal_usd_24h", USD, hours(24), WITHDRAWAL),
        distinct_count("distinct_withdrawal_addresses_24h", "wallet_address", hours(24), WITHDRAWAL),
        distinct_count("distinct_withdrawal_addresses_7d", "wallet_address", days(7), WITHDRAWAL),
        sum_of("deposit_usd_30d", USD, days(30), DEPOSIT),
        ratio("withdrawal_24h_to_deposit_30d", "withdrawal_usd_24h", "deposit_usd_30d",
              description="Withdrawn USD (24h) over deposited USD (30d): drains show values ≫ 1."),
    ),
    ttl=days(30),
    tags={"scenario": "ato"},
)  # fmt: skip

ato_device = FeatureGroup(
    name="ato_device",
    entity=DEVICE,
    description="Per-device sharing and login bursts; confirmed-fraud rate of the device.",
    owner=OWNER,
    source_event_types=("login", "security_change", "withdrawal"),
    features=(
        distinct_count("distinct_users_24h", "user_id", hours(24),
                       description="Accounts seen on this device in 24h (account farms, stuffing)."),
        distinct_count("distinct_users_7d", "user_id", days(7)),
        count("login_count_1h", hours(1), LOGIN),
        count("failed_login_count_1h", hours(1), LOGIN, FAILED),
        distinct_count("distinct_login_users_1h", "user_id", hours(1), LOGIN),
        count("security_change_count_24h", hours(24), SECURITY),
        count("event_count_30d", days(30)),
        label_count("fraud_label_count_30d", days(30), LABEL_DELAY),
        label_rate("fraud_label_rate_30d", days(30), LABEL_DELAY,
                   description="Share of the device's 30-day events confirmed fraud (labels ≥ 2 days old)."),
    ),
    ttl=days(30),
    tags={"scenario": "ato"},
)  # fmt: skip

ato_ip = FeatureGroup(
    name="ato_ip",
    entity=IP,
    description="Per-IP login bursts and account fan-out (credential stuffing).",
    owner=OWNER,
    source_event_types=("login",),
    features=(
        count("login_count_10m", minutes(10)),
        count("login_count_1h", hours(1)),
        count("failed_login_count_10m", minutes(10), FAILED),
        count("failed_login_count_1h", hours(1), FAILED),
        ratio("failed_login_share_1h", "failed_login_count_1h", "login_count_1h"),
        distinct_count("distinct_users_1h", "user_id", hours(1)),
        distinct_count("distinct_users_24h", "user_id", hours(24)),
        distinct_count("distinct_devices_24h", "device_id", hours(24)),
    ),
    ttl=days(1),
    tags={"scenario": "ato"},
)  # fmt: skip

withdrawal_wallet = FeatureGroup(
    name="withdrawal_wallet",
    entity=WALLET,
    description="Per destination address: fan-in of users and USD, and its confirmed-fraud rate.",
    owner=OWNER,
    source_event_types=("withdrawal",),
    features=(
        count("withdrawal_count_24h", hours(24)),
        count("withdrawal_count_30d", days(30)),
        distinct_count("distinct_users_24h", "user_id", hours(24)),
        distinct_count("distinct_users_7d", "user_id", days(7)),
        sum_of("withdrawal_usd_24h", USD, hours(24)),
        label_count("fraud_label_count_30d", days(30), LABEL_DELAY),
        label_rate("fraud_label_rate_30d", days(30), LABEL_DELAY,
                   description="Share of withdrawals to this address in 30 days confirmed fraud."),
    ),
    ttl=days(30),
    tags={"scenario": "ato"},
)  # fmt: skip

user_wallet = FeatureGroup(
    name="user_wallet",
    entity=USER_WALLET,
    description="Per (user, destination address): is this a new address for the user?",
    owner=OWNER,
    source_event_types=("withdrawal",),
    features=(
        count("withdrawal_count_30d", days(30),
              description="Withdrawals by this user to this address in 30 days (1 = first time)."),
        time_since_last("secs_since_previous_withdrawal_30d", days(30)),
        sum_of("withdrawal_usd_30d", USD, days(30)),
    ),
    ttl=days(30),
    tags={"scenario": "ato"},
)  # fmt: skip

ATO_GROUPS: tuple[FeatureGroup, ...] = (ato_user, ato_device, ato_ip, withdrawal_wallet, user_wallet)
