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

import numpy as np
import polars as pl
import pytest

from examples.card_payments import pipeline
from examples.card_payments.definitions import AMOUNT_VS_HABIT, CARD_MODEL, PAYMENT_REQUEST
from risk_assets.features.offline_store import read_offline
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
    terminal_rows = read_offline(lake, CARD_MODEL.groups_by_name["card_terminal"]).collect()
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
        latest = (
            terminal_rows.filter(pl.col("terminal_id") == payment["terminal_id"]).sort("event_ts").tail(1)
        )
        assert row["card_terminal__risk_28d_d7"] == pytest.approx(latest["risk_28d_d7"][0])
