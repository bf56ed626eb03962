"""Model specifications: what they check when declared, what they change in a version, and how the
gate and the service refuse a model trained for another spec or on other request features."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import numpy as np
import polars as pl
import pytest
import xgboost as xgb

from examples.card_payments.definitions import (
    AMOUNT_VS_HABIT,
    CARD_FRAUD,
    CARD_MODEL,
    CARD_TX,
    PAYMENT_REQUEST,
    card_customer,
)
from risk_assets.features.request import RequestFeatures
from risk_assets.features.spec import Where
from risk_assets.lake import Lake
from risk_assets.models import registry
from risk_assets.models.exchange_spec import EXCHANGE_MODEL
from risk_assets.models.model_spec import LabelRule, ModelSpec, Spine, load_model_spec
from risk_assets.models.promotion import servability_failures
from risk_assets.models.training_set import TrainingSetSpec, build_training_set
from risk_assets.serving.model_holder import ModelRefused, load_version

T0 = datetime(2026, 5, 1, tzinfo=UTC)


def test_declaration_checks() -> None:
    with pytest.raises(ValueError, match="labels card_payments, not the spine's source exchange_events"):
        ModelSpec("m", Spine(EXCHANGE_MODEL.spine.source), LabelRule(CARD_FRAUD))
    with pytest.raises(ValueError, match="not in source card_payments"):
        Spine(CARD_TX, filters=(Where("event_type", "eq", "x"),))
    with pytest.raises(ValueError, match="keys on"):
        ModelSpec("m", Spine(CARD_TX), LabelRule(CARD_FRAUD), groups=EXCHANGE_MODEL.groups[:1])
    with pytest.raises(ValueError, match="not features of the spec's groups"):
        ModelSpec("m", Spine(CARD_TX), LabelRule(CARD_FRAUD), request=(AMOUNT_VS_HABIT,))
    with pytest.raises(ValueError, match="must be carried"):
        ModelSpec("m", Spine(CARD_TX), LabelRule(CARD_FRAUD), entity_column="customer_id")
    clash = RequestFeatures("c", ("amount",), ("customer_id",), lambda r: {"customer_id": 1.0})
    with pytest.raises(ValueError, match="clash with frame columns"):
        ModelSpec("m", Spine(CARD_TX, carry=("customer_id",)), LabelRule(CARD_FRAUD), request=(clash,))
    with pytest.raises(ValueError, match="with the same name"):
        ModelSpec("m", Spine(CARD_TX), LabelRule(CARD_FRAUD), request=(PAYMENT_REQUEST, PAYMENT_REQUEST))
    twin = RequestFeatures("twin", ("amount",), ("tx_amount",), lambda r: {"tx_amount": r["amount"]})
    with pytest.raises(ValueError, match="defined twice"):
        ModelSpec("m", Spine(CARD_TX), LabelRule(CARD_FRAUD), request=(PAYMENT_REQUEST, twin))


def test_versions_follow_the_contents() -> None:
    assert CARD_MODEL.version == CARD_MODEL.with_groups(CARD_MODEL.groups).version
    assert CARD_MODEL.version != CARD_MODEL.with_groups([card_customer]).version
    assert CARD_MODEL.version != CARD_MODEL.with_request([PAYMENT_REQUEST]).version
    assert load_model_spec("examples.card_payments.definitions:CARD_MODEL") is CARD_MODEL
    assert load_model_spec("") is EXCHANGE_MODEL
    with pytest.raises(ValueError, match="not a ModelSpec"):
        load_model_spec("examples.card_payments.definitions:CARD_TX")


def test_spine_filters_label_rule_and_layout_on_a_foreign_source() -> None:
    """Spine filters, label filters and the frame layout, with the card source's own names."""
    tx = pl.DataFrame(
        {
            "tx_id": ["a", "b", "c", "d"],
            "tx_ts": [T0 + timedelta(minutes=i) for i in range(4)],
            "ingested_at": [T0 + timedelta(minutes=i, seconds=1) for i in range(4)],
            "customer_id": ["c1", "c1", "c2", "c2"],
            "terminal_id": ["t1", "t2", "t1", "t2"],
            "amount": [10.0, 20.0, 30.0, 40.0],
            "channel": ["pos", "online", "pos", "pos"],
        },
        schema=CARD_TX.schema,
    )
    labels = pl.DataFrame(
        {
            "label_id": ["l1", "l2", "l3"],
            "tx_id": ["b", "c", "d"],
            "known_ts": [T0 + timedelta(days=1), T0 + timedelta(days=1), T0 + timedelta(days=9)],
            "fraud_scenario": ["stolen_card", "compromised_terminal", "stolen_card"],
            "ingested_at": [T0 + timedelta(days=1)] * 3,
        },
        schema=CARD_FRAUD.schema,
    )
    model = ModelSpec(
        "only_pos",
        Spine(CARD_TX, filters=(Where("channel", "eq", "pos"),), carry=("customer_id",)),
        LabelRule(CARD_FRAUD, filters=(Where("fraud_scenario", "eq", "compromised_terminal"),),
                  scenario_column="fraud_scenario"),
        request=(PAYMENT_REQUEST,),
        entity_column="customer_id",
    )  # fmt: skip
    spec = TrainingSetSpec(as_of=T0 + timedelta(days=8), window=timedelta(days=2), maturity=timedelta(days=7))
    frame, manifest = build_training_set(spec, tx, labels, {}, model=model)
    assert frame.columns[:6] == ["event_id", "event_ts", "customer_id", "is_fraud", "scenario", "weight"]
    assert frame["event_id"].to_list() == ["a", "c", "d"]  # the online payment is not in the spine
    # c: a compromised-terminal label known before as_of; d: a stolen-card label (filtered out) known later.
    assert frame["is_fraud"].to_list() == [False, True, False]
    assert frame["scenario"].to_list() == [None, "compromised_terminal", None]
    assert frame["tx_amount"].to_list() == [10.0, 30.0, 40.0]
    assert manifest["model_spec"] == model.identity() and manifest["features"] == model.feature_columns()


def _booster(n: int) -> bytes:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, n))
    b = xgb.train({"objective": "binary:logistic", "nthread": 1}, xgb.DMatrix(x, label=x[:, 0] > 0), 3)
    return bytes(b.save_raw("ubj"))


def test_the_gate_and_the_service_refuse_another_spec_or_other_request_features(tmp_path) -> None:
    lake = Lake(str(tmp_path))
    features = CARD_MODEL.feature_columns()
    groups = {g.name: g.version for g in CARD_MODEL.groups}
    good = {"features": features, "feature_groups": groups, "model_spec": CARD_MODEL.identity()}
    version = registry.register(lake, _booster(len(features)), good)
    sha = registry.load_manifest(lake, version)["model_sha256"]
    loaded = load_version(lake, version, sha, model=CARD_MODEL)
    assert loaded.plan.n == len(features)
    assert [r.definition.name for r in loaded.plan.request] == [
        "card_payment_request",
        "card_amount_vs_habit",
    ]
    assert loaded.plan.width == loaded.plan.n  # the fetched mean is a model input already
    with pytest.raises(ModelRefused, match="trained for model spec 'card_payments', this is 'exchange'"):
        load_version(lake, version, sha)  # a service serving the exchange's spec
    stale = {**good, "model_spec": {**CARD_MODEL.identity(), "request_features": {
        "card_payment_request": "0" * 16, "card_amount_vs_habit": AMOUNT_VS_HABIT.version}}}  # fmt: skip
    old = registry.register(lake, _booster(len(features)), stale)
    with pytest.raises(ModelRefused, match="request features 'card_payment_request' are version 0000"):
        load_version(lake, old, registry.load_manifest(lake, old)["model_sha256"], model=CARD_MODEL)
    assert (
        servability_failures(
            features, groups, model=CARD_MODEL, request_features=CARD_MODEL.request_versions()
        )
        == []
    )
    reasons = servability_failures(
        features, groups, model=CARD_MODEL, request_features={"card_payment_request": "x"}, spec_name="other"
    )
    assert any("model spec 'other'" in r for r in reasons)
    assert any("request features 'card_payment_request' are version x" in r for r in reasons)
    assert any("lacks the version of request features 'card_amount_vs_habit'" in r for r in reasons)


def test_a_request_feature_that_reads_a_fetched_helper_gets_an_extra_column(
    tmp_path, session_stack, key_prefix
) -> None:
    """A definition reading a fetched feature the model does not use: the plan reads it anyway."""
    only_ratio = RequestFeatures(
        "ratio_only",
        ("amount",),
        ("amount_over_n_30d",),
        lambda r, f: {"amount_over_n_30d": r["amount"] / f["card_customer__n_tx_30d"]},
        fetched=("card_customer__n_tx_30d",),
    )
    model = CARD_MODEL.with_request([only_ratio])
    lake = Lake(str(tmp_path))
    features = ["amount_over_n_30d", "card_customer__mean_amount_7d"]
    manifest = {"features": features, "feature_groups": {"card_customer": card_customer.version},
                "model_spec": model.identity()}  # fmt: skip
    version = registry.register(lake, _booster(2), manifest)
    loaded = load_version(lake, version, registry.load_manifest(lake, version)["model_sha256"], model=model)
    assert (loaded.plan.n, loaded.plan.width) == (2, 3)
    (rp,) = loaded.plan.request
    assert rp.dest == (0,) and rp.fetched == (("card_customer__n_tx_30d", 2),)

    # Through the service's fetcher on a real Redis: the helper is read, the ratio computed from it,
    # and the matrix handed to the model has the model's two columns only.
    from risk_assets.events.declared import event_payload_type
    from risk_assets.features.ingestion import group_layout
    from risk_assets.features.online_store import OnlineStore
    from risk_assets.serving.feature_fetch import FeatureFetcher, RedisBreaker
    from risk_assets.serving.service_metrics import ServiceMetrics

    with OnlineStore.from_url(session_stack.redis_url, namespace=key_prefix) as store:
        row = {"customer_id": "c9", "event_ts": T0, **dict.fromkeys(card_customer.feature_names, 2.0)}
        row["n_tx_30d"], row["mean_amount_7d"] = 8.0, 5.0
        store.write(group_layout(card_customer), [row])
        store.mark_complete()
        metrics = ServiceMetrics()
        breaker = RedisBreaker(store, metrics, probe_s=1.0)
        breaker.probe()
        payload = {"tx_id": "x", "tx_ts": 1, "customer_id": "c9", "terminal_id": "t", "amount": 20.0}
        ev = msgspec.json.decode(msgspec.json.encode(payload), type=event_payload_type(CARD_TX))
        x, degraded = FeatureFetcher(store, breaker, metrics).matrix([ev], loaded.plan)
        assert not degraded and x.shape == (1, 2) and x.flags.c_contiguous
        assert x[0].tolist() == [2.5, 5.0]


def test_the_service_decodes_and_documents_the_spec_source() -> None:
    from risk_assets.serving.app import decoders, openapi_document

    decode, decode_batch = decoders(CARD_TX)
    ev = decode(b'{"tx_id": "t", "tx_ts": 5, "customer_id": "c", "terminal_id": "x", "amount": 1.5}')
    assert (ev.tx_id, ev.tx_ts, ev.channel) == ("t", 5, None)
    with pytest.raises(msgspec.ValidationError, match="Object contains unknown field `user_id`"):
        decode(
            b'{"tx_id": "t", "tx_ts": 5, "customer_id": "c", "terminal_id": "x", "amount": 1, "user_id": "u"}'
        )
    with pytest.raises(msgspec.ValidationError, match="missing required field `amount`"):
        decode_batch(b'{"events": [{"tx_id": "t", "tx_ts": 5, "customer_id": "c", "terminal_id": "x"}]}')
    doc = openapi_document(CARD_TX)
    payload = doc["components"]["schemas"]["card_payments_payload"]
    assert set(payload["properties"]) == {"tx_id", "tx_ts", "customer_id", "terminal_id", "amount", "channel"}
