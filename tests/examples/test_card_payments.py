"""The card-payments example runs end to end, small: its own generator and declarations, the
project's archive, batch engine, offline store, training set, trainer, promotion gate, online sync
and a real risk-serve process on the test's own Redis and broker.

The served answer is checked against the model itself: the vector risk-serve logged for each
payment gives exactly the served score, its request features are the definitions' values on the
payload (the amount-vs-habit feature from the fetched 30-day mean in the same vector), and its
online features are the synced rows.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest

from examples.card_payments import pipeline
from examples.card_payments.definitions import (
    AMOUNT_VS_HABIT,
    CARD_FRAUD,
    CARD_MODEL,
    CARD_TX,
    PAYMENT_REQUEST,
)
from risk_assets.features import spine
from risk_assets.ingest.raw_reader import read_source
from risk_assets.lake import Lake
from risk_assets.models import registry
from risk_assets.models.training import load_booster
from risk_assets.names import PREDICTIONS_TOPIC
from tests.conftest import read_topic


@pytest.fixture(scope="module")
def report(tmp_path_factory, session_stack) -> tuple[dict, Lake]:
    state = tmp_path_factory.mktemp("card")
    out = pipeline.run(state, small=True, redis_url=session_stack.redis_url, kafka=session_stack.kafka)
    return out, Lake(str(state / "lake")), session_stack.kafka


def test_the_pipeline_archives_trains_and_promotes(report) -> None:
    out, lake, _ = report
    assert out["archive"]["card_payments"] == {"records": out["generated"]["transactions"], "dead_letters": 0}
    assert out["archive"]["card_fraud"] == {"records": out["generated"]["labels"], "dead_letters": 0}
    ts = out["training_set"]
    assert set(ts["positives_by_scenario"]) == {"compromised_terminal", "stolen_card"}
    test = out["model"]["test"]
    share = test["positives"] / test["rows"]
    # Far better than chance (the positive share) on the later, unseen weeks.
    assert test["average_precision"] > 5 * share
    assert test["entity_column"] == "customer_id" and test["entity_precision_at_top_k_per_day"] is not None
    assert out["promotion"]["promoted"]
    manifest = registry.load_manifest(lake, out["model"]["version"])
    assert manifest["model_spec"]["name"] == "card_payments"
    assert manifest["model_spec"]["request_features"] == CARD_MODEL.request_versions()
    assert manifest["features"] == CARD_MODEL.feature_columns()
    assert registry.champion(lake).version == out["model"]["version"]
    assert out["online_sync"]["by_group"] == {"card_customer": 600, "card_terminal": 150}


def test_risk_serve_scored_the_payments_with_the_spec(report) -> None:
    out, lake, kafka = report
    version = out["model"]["version"]
    features = CARD_MODEL.feature_columns()
    booster = load_booster(registry.load_model_bytes(lake, version))
    logged = {m["event_id"]: m for m in read_topic(kafka, PREDICTIONS_TOPIC) if m["model_version"] == version}
    for payment, served in zip(out["payments"], out["scored"], strict=True):
        assert served["model_version"] == version and served["event_id"] == payment["tx_id"]
        assert served["features_missing"] == 0 and not served["degraded"]
        values = logged[payment["tx_id"]]["values"]
        vector = np.array([np.nan if v is None else v for v in values], dtype=np.float32)
        assert served["score"] == pytest.approx(float(booster.inplace_predict(vector[None, :])[0]), abs=1e-6)
        row = dict(zip(features, values, strict=True))
        for name, want in PAYMENT_REQUEST.compute(payment).items():
            assert row[name] == want, name
        mean = row["card_customer__mean_amount_30d"]
        assert math.isclose(row["amount_over_mean_30d"], payment["amount"] / mean, rel_tol=1e-12)
        assert AMOUNT_VS_HABIT.compute(payment, {"card_customer__mean_amount_30d": mean}) == {
            "amount_over_mean_30d": row["amount_over_mean_30d"]
        }


def test_risk_serve_terminal_features_equal_the_offline_v2_values(report) -> None:
    """The served terminal features are the v2 values at the payment's own time: tiles finished by
    risk-serve equal the spine engine over the archive."""
    out, lake, kafka = report
    version = out["model"]["version"]
    features = CARD_MODEL.feature_columns()
    logged = {m["event_id"]: m for m in read_topic(kafka, PREDICTIONS_TOPIC) if m["model_version"] == version}
    terminal = CARD_MODEL.groups_by_name["card_terminal"]
    last_ms = max(p["tx_ts"] for p in out["payments"]) + 1
    first_ms = min(p["tx_ts"] for p in out["payments"])
    since = datetime.fromtimestamp(first_ms / 1000, UTC) - spine.history([terminal])
    until = datetime.fromtimestamp(last_ms / 1000, UTC)
    events = read_source(lake, CARD_TX, since, until)
    labels = read_source(lake, CARD_FRAUD, since, until)
    for payment in out["payments"]:
        row = dict(zip(features, logged[payment["tx_id"]]["values"], strict=True))
        # Served = the v2 value at the payment's own time, from the archive (spine engine).
        at = spine.features_at(
            pl.DataFrame({"terminal_id": [payment["terminal_id"]], "tx_ts": [payment["tx_ts"]]}).with_columns(
                pl.col("tx_ts").cast(pl.Datetime("ms", "UTC"))
            ),
            events,
            [terminal],
            labels,
            timestamp="tx_ts",
        )
        for name in terminal.model_feature_names:
            want = at[f"card_terminal__{name}"][0]
            got = row[f"card_terminal__{name}"]
            if want is None:
                assert got is None, name
            else:
                assert got == pytest.approx(want, rel=1e-9), name
