"""Request-time features are definitions executed by the same code in training and serving.

* the exchange's definition gives the values the former fixed Polars expressions gave (the oracle
  below is that former code, kept here verbatim);
* a training set's request columns equal, event by event, the vector a real ``risk-serve`` process
  scored for the same events (read back from its prediction log);
* definitions are versioned by their code, validated, and can read fetched features; calendar
  features (weekend, night) are expressible.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import msgspec
import numpy as np
import polars as pl
import pytest
import xgboost as xgb

from risk_assets.features.online_store import OnlineStore
from risk_assets.features.request import RequestFeatures, calendar
from risk_assets.lake import Lake
from risk_assets.models import registry
from risk_assets.models.exchange_spec import EXCHANGE_MODEL
from risk_assets.models.request_features import EXCHANGE_REQUEST, REQUEST_FEATURE_NAMES, request_features
from risk_assets.models.training_set import TrainingSetSpec, build_training_set
from risk_assets.names import PREDICTIONS_TOPIC
from risk_assets.serving.process import ServeProcess
from risk_assets.simulator.config import SimConfig
from risk_assets.simulator.encoding import encode_events
from risk_assets.simulator.generator import generate
from risk_assets.sources import EXCHANGE_LABELS
from tests.conftest import read_topic

START = datetime(2026, 8, 1, tzinfo=UTC)

# The former vectorized form, kept as the oracle of the exchange definition's values.
FORMER = {
    "req_amount_usd": pl.col("amount_usd").cast(pl.Float64),
    "req_is_withdrawal": (pl.col("event_type") == "withdrawal").cast(pl.Float64),
    "req_is_card_payment": (pl.col("event_type") == "card_payment").cast(pl.Float64),
    "req_is_p2p_trade": (pl.col("event_type") == "p2p_trade").cast(pl.Float64),
    "req_card_declined": (pl.col("status") == "declined").fill_null(False).cast(pl.Float64),
    "req_p2p_buy": (pl.col("side") == "buy").fill_null(False).cast(pl.Float64),
    "req_hour_of_day": pl.col("event_ts").dt.hour().cast(pl.Float64),
}


@pytest.fixture(scope="module")
def events() -> pl.DataFrame:
    return generate(SimConfig(seed=2, start=START, hours=3, users=400)).events


def test_exchange_definition_equals_the_former_expressions(events: pl.DataFrame) -> None:
    sample = events.head(6_000)
    assert set(sample["event_type"]) >= {"login", "withdrawal", "card_payment", "p2p_trade"}
    got = EXCHANGE_REQUEST.frame(sample)
    assert got.columns == list(REQUEST_FEATURE_NAMES)
    want = sample.select(**FORMER)
    assert got.equals(want)
    # The scalar path on the JSON payloads (what the service decodes) gives the same numbers.
    payloads = [msgspec.json.decode(b) for b in encode_events(sample)]
    for row, payload in zip(want.iter_rows(named=True), payloads, strict=True):
        scalar = EXCHANGE_REQUEST.compute(payload)
        for name, a in scalar.items():
            b = row[name]
            assert (b is None and math.isnan(a)) or a == b, (name, a, b, payload)


def test_missing_amount_is_nan_and_hour_from_epoch_ms() -> None:
    f = request_features({"event_type": "login", "event_ts": 1_790_000_000_000})
    assert math.isnan(f["req_amount_usd"])
    assert f["req_hour_of_day"] == float(datetime.fromtimestamp(1_790_000_000, UTC).hour)


def _weekend_night(request):
    c = calendar(request["ts"], tz="Europe/Paris", night=(22, 6))
    return {"is_weekend": c["is_weekend"], "is_night": c["is_night"], "hour_paris": c["hour"]}


def test_definitions_are_versioned_by_code_and_validated() -> None:
    a = RequestFeatures("cal", ("ts",), ("is_weekend", "is_night", "hour_paris"), _weekend_night)

    def other(request):
        return {"is_weekend": 0.0, "is_night": 0.0, "hour_paris": 0.0}

    b = RequestFeatures("cal", ("ts",), ("is_weekend", "is_night", "hour_paris"), other)
    assert a.version != b.version
    assert a.version != RequestFeatures("cal", ("ts",), a.outputs, _weekend_night, revision=2).version
    assert a.version == RequestFeatures("cal", ("ts",), a.outputs, _weekend_night).version
    # Saturday 2026-08-01 23:30 Paris = 21:30 UTC: weekend and night; Monday 12:00 Paris: neither.
    sat = int(datetime(2026, 8, 1, 21, 30, tzinfo=UTC).timestamp() * 1000)
    mon = int(datetime(2026, 8, 3, 10, 0, tzinfo=UTC).timestamp() * 1000)
    assert a.compute({"ts": sat}) == {"is_weekend": 1.0, "is_night": 1.0, "hour_paris": 23.0}
    assert a.compute({"ts": mon}) == {"is_weekend": 0.0, "is_night": 0.0, "hour_paris": 12.0}
    frame = pl.DataFrame({"ts": [datetime(2026, 8, 1, 21, 30, tzinfo=UTC)]}).with_columns(
        pl.col("ts").cast(pl.Datetime("ms", "UTC"))
    )
    assert a.frame(frame).row(0) == (1.0, 1.0, 23.0)  # a Datetime column reaches fn as epoch ms
    with pytest.raises(ValueError, match="'__'"):
        RequestFeatures("x", ("ts",), ("a__b",), _weekend_night)
    with pytest.raises(ValueError, match="returned no"):
        RequestFeatures("x", ("ts",), ("missing",), _weekend_night).compute({"ts": sat})
    with pytest.raises(ValueError, match="not columns of exchange_events"):
        EXCHANGE_MODEL.with_request([a])


def test_fetched_features_reach_the_function() -> None:
    def share(request, fetched):
        n = fetched["g__n"]
        return {"amount_share": request["amount"] / n if n and not math.isnan(n) else None}

    r = RequestFeatures("share", ("amount",), ("amount_share",), share, fetched=("g__n",))
    frame = pl.DataFrame({"amount": [10.0, 5.0, 1.0], "g__n": [4.0, None, 0.0]})
    assert r.frame(frame)["amount_share"].to_list() == [2.5, None, None]
    assert r.compute({"amount": 10.0}, {"g__n": 4.0}) == {"amount_share": 2.5}


def _request_only_model(n: int) -> bytes:
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 24, size=(2_000, n))
    y = (x[:, -1] > 12).astype(float)
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 3, "nthread": 1, "seed": 0},
        xgb.DMatrix(x, label=y),
        num_boost_round=10,
    )
    return bytes(booster.save_raw("ubj"))


def test_training_set_request_columns_equal_what_risk_serve_scored(events, fresh_stack, tmp_path) -> None:
    """Real traffic (simulated exchange events as JSON) through the real risk-serve process: the
    vector it logged for every event equals the training set's request columns for that event."""
    lake = Lake(str(tmp_path / "lake"))
    features = list(REQUEST_FEATURE_NAMES)
    manifest = {
        "features": features,
        "feature_groups": {},
        "model_spec": EXCHANGE_MODEL.identity(),
        "params": {"objective": "binary:logistic"},
    }
    version = registry.register(lake, _request_only_model(len(features)), manifest)
    registry.set_champion(lake, version, "test")
    namespace = "test:reqfeat:"
    with OnlineStore.from_url(fresh_stack.redis_url, namespace=namespace) as store:
        store.mark_complete()

    sample = events.filter(pl.col("event_type").is_in(["withdrawal", "card_payment", "p2p_trade"])).head(400)
    payloads = [msgspec.json.decode(b) for b in encode_events(sample)]
    env = {
        "RISK_SERVE_TOKEN": "t0ken",
        "RISK_LAKE_URL": lake.url,
        "REDIS_URL": fresh_stack.redis_url,
        "RISK_REDIS_NAMESPACE": namespace,
        "KAFKA_BOOTSTRAP_SERVERS": fresh_stack.kafka,
        "RISK_SHADOW": "0",
    }
    with ServeProcess.start(env, tmp_path / "serve.log") as svc:
        for i in range(0, len(payloads), 100):
            body = svc.score_batch(payloads[i : i + 100])
            assert body["model_version"] == version
    served = {m["event_id"]: m["values"] for m in read_topic(fresh_stack.kafka, PREDICTIONS_TOPIC)}
    assert len(served) == sample.height

    spec = TrainingSetSpec(
        as_of=START + timedelta(days=2), window=timedelta(days=1), maturity=timedelta(days=1)
    )
    labels = pl.DataFrame(schema=EXCHANGE_LABELS.schema)
    frame, ts_manifest = build_training_set(spec, sample, labels, {}, groups=[])
    assert ts_manifest["features"] == features and frame.height == sample.height
    for row in frame.iter_rows(named=True):
        logged = served[row["event_id"]]
        for name, value in zip(features, logged, strict=True):
            want = row[name]
            assert value == want, (row["event_id"], name, value, want)
