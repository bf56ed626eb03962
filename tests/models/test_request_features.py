"""Training and serving compute request-time features the same way."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from risk_assets.models.request_features import REQUEST_FEATURE_NAMES, REQUEST_FEATURES, request_features
from risk_assets.simulator.config import SimConfig
from risk_assets.simulator.encoding import encode_events
from risk_assets.simulator.generator import generate


def test_scalar_and_vectorized_forms_agree_on_simulated_traffic():
    import msgspec

    events = generate(SimConfig(seed=2, start=datetime(2026, 8, 1, tzinfo=UTC), hours=2, users=500)).events
    events = events.head(5_000)
    vectorized = events.select(**REQUEST_FEATURES)
    payloads = [msgspec.json.decode(b) for b in encode_events(events)]
    assert {p["event_type"] for p in payloads} >= {"login", "withdrawal", "card_payment", "p2p_trade"}
    for row, payload in zip(vectorized.iter_rows(named=True), payloads, strict=True):
        scalar = request_features(payload)
        assert list(scalar) == list(REQUEST_FEATURE_NAMES)
        for name in REQUEST_FEATURE_NAMES:
            a, b = scalar[name], row[name]
            assert (b is None and math.isnan(a)) or a == b, (name, a, b, payload)


def test_missing_amount_is_nan_and_hour_from_epoch_ms():
    f = request_features({"event_type": "login", "event_ts": 1_790_000_000_000})
    assert math.isnan(f["req_amount_usd"])
    assert f["req_hour_of_day"] == float(datetime.fromtimestamp(1_790_000_000, UTC).hour)
