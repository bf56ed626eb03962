"""Shadow scoring in ``risk-serve`` as a real process: the registry's shadow pointer loads a
challenger that scores every event off the decision path; both scores reach ``risk.predictions``;
the champion's responses and decisions are exactly those it gives without a shadow."""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
import xgboost as xgb

from risk_assets.events.schema import RiskEvent
from risk_assets.features.online_store import OnlineStore
from risk_assets.lake import Lake
from risk_assets.models import registry
from risk_assets.serving.model_holder import LoadedModel, ModelHolder, load_version
from risk_assets.serving.prediction_log import PredictionLog
from risk_assets.serving.service_metrics import ServiceMetrics
from risk_assets.serving.shadow import ShadowItem, ShadowScorer
from tests.serving.test_serving import (
    FEATURES,
    SIGNAL,
    T0,
    event,
    expected_vector,
    manifest,
    online_events,
    read_predictions,
    register,
    start_service,
    stop_service,
    train_model,
    wait_for,
    write_online,
)

SIGNAL_NAME = SIGNAL.split("__")[1]
CHAMPION_FIELDS = ("score", "decision", "model_version", "reasons", "features_missing", "degraded")


def _shadow_model_info(c, version: str) -> bool:
    status, text = c.request("GET", "/metrics")
    return status == 200 and f'risk_shadow_model_info{{version="{version}"' in text


def test_shadow_scores_every_event_and_never_decides(session_stack, tmp_path: Path, key_prefix: str) -> None:
    lake = Lake(str(tmp_path / "lake"))
    v1 = register(lake, train_model(seed=1), created=T0)
    # The challenger ranks differently and its own thresholds would block everything: were it
    # deciding, every response would change.
    blocking = {**manifest(), "thresholds": {"review": 0.0, "block": 0.0}}
    challenger_bytes = train_model(seed=5, trees=4, depth=2)
    v2 = register(lake, challenger_bytes, champion=False, manifest=blocking, created=T0 + timedelta(1))
    svc = start_service(tmp_path, lake, session_stack.redis_url, session_stack.kafka, key_prefix)
    store = OnlineStore.from_url(session_stack.redis_url, namespace=key_prefix)
    try:
        c = svc.client()
        wait_for(lambda: c.request("GET", "/readyz")[0] == 200, what="readyz")
        signals = {n: (9.0 if n % 2 else 1.0) for n in range(30)}
        for n, value in signals.items():
            write_online(store, "ato_user", {"user_id": f"u_{n}"}, {SIGNAL_NAME: value})

        def events(tag: str) -> list[dict]:
            return [event("withdrawal", n=n, event_id=f"shadow-{tag}-{n}") for n in signals]

        without = [c.score(e)[1] for e in events("a")]
        assert {r["decision"] for r in without} == {"allow", "block"}

        registry.set_shadow(lake, v2, "try it on live traffic")
        wait_for(lambda: _shadow_model_info(c, v2), what="shadow loaded")
        shadowed_events = events("b")
        single = [c.score(e)[1] for e in shadowed_events[:20]]
        status, batch = c.request("POST", "/v1/score/batch", {"events": shadowed_events[20:]})
        assert status == 200, batch
        with_shadow = single + batch["results"]
        for a, b in zip(without, with_shadow, strict=True):
            assert {k: a[k] for k in CHAMPION_FIELDS} == {k: b[k] for k in CHAMPION_FIELDS}
            assert b["model_version"] == v1

        total = len(without) + len(with_shadow)
        wait_for(
            lambda: c.metrics()["risk_serve_prediction_log_sent_total"] >= total, what="prediction log acks"
        )
        m = c.metrics()
        assert m["risk_shadow_scored_total"] == len(with_shadow)
        assert m["risk_shadow_dropped_total"] == 0 and m["risk_shadow_unscored_total"] == 0

        ours = {e["event_id"]: e for e in events("a") + shadowed_events}
        messages = {m["event_id"]: m for m in read_predictions(session_stack.kafka) if m["event_id"] in ours}
        assert set(messages) == set(ours)
        challenger = xgb.Booster()
        challenger.load_model(bytearray(registry.load_model_bytes(lake, v2)))
        for ev, res in zip(shadowed_events, with_shadow, strict=True):
            msg = messages[ev["event_id"]]
            assert msg["model_version"] == v1 and msg["shadow_version"] == v2
            assert msg["score"] == res["score"] and msg["decision"] == res["decision"]
            written = online_events(
                "ato_user", {"user_id": ev["user_id"]}, {SIGNAL_NAME: signals[int(ev["user_id"][2:])]}
            )
            vec = expected_vector(ev, {"ato_user": written})
            want = float(challenger.inplace_predict(vec[None, :])[0])
            assert msg["shadow_score"] == pytest.approx(want, abs=1e-6)
            got = np.array([math.nan if v is None else v for v in msg["values"]])
            np.testing.assert_array_equal(got, vec)
        assert any(
            messages[e["event_id"]]["shadow_score"] != r["score"]
            for e, r in zip(shadowed_events, with_shadow, strict=True)
        )
        for ev in events("a"):
            assert "shadow_version" not in messages[ev["event_id"]]

        # Cleared: unloaded at the next poll; records carry no shadow again.
        registry.clear_shadow(lake, "done")
        wait_for(lambda: not _shadow_model_info(c, v2), what="shadow unloaded")
        late = event("withdrawal", n=3, event_id="shadow-c-3")
        assert c.score(late)[1]["decision"] == without[3]["decision"]
        wait_for(lambda: c.metrics()["risk_serve_prediction_log_sent_total"] >= total + 1, what="last ack")
        last = [m for m in read_predictions(session_stack.kafka) if m["event_id"] == "shadow-c-3"]
        assert len(last) == 1 and "shadow_version" not in last[0]
    finally:
        text = stop_service(svc)
        store.close()
    assert f"shadow: model {v2}" in text


def _loaded(lake: Lake, model: bytes, **kw: Any) -> LoadedModel:
    version = register(lake, model, champion=False, **kw)
    return load_version(lake, version, registry.load_manifest(lake, version)["model_sha256"])


def test_full_shadow_queue_drops_the_shadow_score_not_the_record(tmp_path: Path) -> None:
    """A full shadow queue: offer refuses at once and counts the events (the request path then logs
    the records itself); a queued item whose shadow is gone by the time it is scored is still
    logged, champion fields intact, without a shadow score."""
    lake = Lake(str(tmp_path))
    champ = _loaded(lake, train_model(seed=1), created=T0)
    shadow = _loaded(lake, train_model(seed=2, trees=5), created=T0 + timedelta(1))
    registry.set_shadow(lake, shadow.version, "test")
    holder = ModelHolder(lake, ServiceMetrics(), 60.0, role="shadow", pointer=registry.shadow)
    assert holder.check_once() and holder.current.version == shadow.version
    log = PredictionLog("127.0.0.1:1", "unused", queue_size=100)  # never started: records stay queued
    # Same feature list as the champion: the fetcher (online reads) is never consulted.
    scorer = ShadowScorer(holder, log, None, queue_size=2)  # type: ignore[arg-type]
    x = np.full((3, len(FEATURES)), np.nan)
    x[:, FEATURES.index(SIGNAL)] = [1.0, 6.0, 9.0]
    scores = np.asarray(champ.booster.inplace_predict(x), dtype=np.float64)
    evs = [event("login", n=i) for i in range(3)]
    decoded = [msgspec.json.decode(msgspec.json.encode(e), type=RiskEvent) for e in evs]
    item = ShadowItem(decoded, x, champ, scores, ["allow", "review", "block"], False, np.zeros(3), 1)
    assert scorer.offer(item) and scorer.offer(item)
    assert not scorer.offer(item) and scorer.dropped == 3

    scorer._process([item], holder.current)
    registry.clear_shadow(lake, "done")
    assert not holder.check_once() and holder.current is None
    scorer._process([item], holder.current)  # the shadow was cleared meanwhile
    records = [log.queue.get_nowait() for _ in range(6)]
    want = np.asarray(shadow.booster.inplace_predict(x), dtype=np.float64)
    for i, rec in enumerate(records):
        assert rec[3] == champ.version and rec[4] == scores[i % 3] and rec[5] == item.decisions[i % 3]
    assert [r[9] for r in records] == [shadow.version] * 3 + [None] * 3
    assert [r[10] for r in records[:3]] == want.tolist() and scorer.scored == 3 and scorer.unscored == 3


def test_shadow_with_another_feature_order_scores_its_own_columns(tmp_path: Path) -> None:
    """A challenger over a subset of the champion's inputs, in another order, is scored on exactly
    those columns of the champion's vector (no second online read)."""
    lake = Lake(str(tmp_path))
    champ = _loaded(lake, train_model(seed=1), created=T0)
    subset = [SIGNAL, *[f for f in FEATURES if f != SIGNAL][:40]][::-1]
    rng = np.random.default_rng(3)
    xs = rng.uniform(0, 10, size=(2000, len(subset)))
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 3, "nthread": 1},
        xgb.DMatrix(xs, label=(xs[:, subset.index(SIGNAL)] > 7).astype(float)),
        num_boost_round=10,
    )
    other = _loaded(
        lake, bytes(booster.save_raw("ubj")), manifest=manifest(subset), created=T0 + timedelta(2)
    )
    registry.set_shadow(lake, other.version, "subset")
    holder = ModelHolder(lake, ServiceMetrics(), 60.0, role="shadow", pointer=registry.shadow)
    assert holder.check_once()
    log = PredictionLog("127.0.0.1:1", "unused", queue_size=100)
    scorer = ShadowScorer(holder, log, None, queue_size=4)  # type: ignore[arg-type]
    x = rng.uniform(0, 10, size=(5, len(FEATURES)))
    evs = [msgspec.json.decode(msgspec.json.encode(event("login", n=i)), type=RiskEvent) for i in range(5)]
    scores = np.asarray(champ.booster.inplace_predict(x), dtype=np.float64)
    scorer._process([ShadowItem(evs, x, champ, scores, ["allow"] * 5, False, np.zeros(5), 1)], holder.current)
    records = [log.queue.get_nowait() for _ in range(5)]
    idx = [FEATURES.index(f) for f in subset]
    want = np.asarray(booster.inplace_predict(x[:, idx]), dtype=np.float64)
    assert [r[10] for r in records] == want.tolist()
    assert [r[4] for r in records] == scores.tolist()  # the champion's own scores, untouched
