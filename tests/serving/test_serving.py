"""``risk-serve`` as a real process: ``python -m risk_assets.serving.cli`` on a free port, talking to
the fixtures' real Redis and tansu broker, with a champion registered in a temporary lake.

Nothing is mocked: online features are written with ``OnlineStore.write``, predictions are read back
from ``risk.predictions``, Redis outages are real (SIGSTOP/SIGKILL of the test's own redis-server).
"""

from __future__ import annotations

import http.client
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import xgboost as xgb

from risk_assets.events.schema import ARCHIVE_EVENT_COLUMNS, ARCHIVE_LABEL_COLUMNS
from risk_assets.features.groups import FEATURE_GROUPS, GROUPS_BY_NAME
from risk_assets.features.online_store import SOURCE_BATCH, OnlineStore
from risk_assets.features.online_tiles import TileStore, tile_layout
from risk_assets.features.spine import compute_at
from risk_assets.features.tiles import build_tiles
from risk_assets.lake import Lake
from risk_assets.models import registry
from risk_assets.models.request_features import request_features
from risk_assets.models.training_set import model_feature_columns
from risk_assets.stack import launcher
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "s3cr3t-token-for-tests"
FEATURES = model_feature_columns(FEATURE_GROUPS)
# The toy models below score high exactly when this online feature is high.
SIGNAL = f"ato_user__{GROUPS_BY_NAME['ato_user'].feature_names[0]}"
SIGNAL_IDX = FEATURES.index(SIGNAL)
SIGNAL_NAME = SIGNAL.split("__")[1]
EMPTY_LABELS = pl.DataFrame(schema=ARCHIVE_LABEL_COLUMNS)
T0 = datetime(2026, 8, 1, 12, 0, tzinfo=UTC)


# ------------------------------------------------------------------------------------------------
# models and the registry


def train_model(seed: int = 0, trees: int = 20, depth: int = 3) -> bytes:
    """A small binary:logistic booster on the real feature list; high score iff SIGNAL > 5
    (a missing SIGNAL scores low)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 10, size=(3000, len(FEATURES)))
    x[rng.random(x.shape) < 0.3] = np.nan
    x[:, SIGNAL_IDX] = rng.uniform(0, 10, size=3000)
    unknown = rng.random(3000) < 0.3
    x[unknown, SIGNAL_IDX] = np.nan
    y = (x[:, SIGNAL_IDX] > 5).astype(float)  # NaN > 5 is False: an unknown signal is low risk
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": depth, "eta": 0.3, "nthread": 1, "seed": seed},
        xgb.DMatrix(x, label=y, missing=np.nan),
        num_boost_round=trees,
    )
    return bytes(booster.save_raw("ubj"))


def manifest(features: list[str] | None = None) -> dict[str, Any]:
    return {
        "features": features or FEATURES,
        "feature_groups": {g.name: g.version for g in FEATURE_GROUPS},
        "params": {"objective": "binary:logistic"},
    }


def point_at(lake: Lake, version: str, sha256: str | None = None) -> None:
    """Write the champion pointer directly, as a hand edit of the bucket would (``set_champion``
    refuses versions that do not verify; this is how a bad pointer reaches a running service)."""
    sha = sha256 or registry.load_manifest(lake, version)["model_sha256"]
    pointer = {
        "version": version,
        "model_sha256": sha,
        "promoted_at": "x",
        "reason": "hand edit",
        "previous": None,
    }
    lake.write_bytes(registry.CHAMPION, json.dumps(pointer).encode())


def register(lake: Lake, model_bytes: bytes, *, champion: bool = True, **kw: Any) -> str:
    created = kw.pop("created", None) or datetime.now(UTC)
    version = registry.register(lake, model_bytes, kw.pop("manifest", None) or manifest(), created=created)
    if champion:
        registry.set_champion(lake, version, "test")
    return version


# ------------------------------------------------------------------------------------------------
# the service process and a tiny HTTP client


class Client:
    """Keep-alive HTTP/1.1 client (one connection; one per thread)."""

    def __init__(self, port: int, token: str | None = TOKEN) -> None:
        self.port = port
        self.token = token
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def request(
        self, method: str, path: str, body: Any = None, *, raw: bytes | None = None, token: Any = ...
    ) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        tok = self.token if token is ... else token
        if tok is not None:
            headers["Authorization"] = f"Bearer {tok}"
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        for attempt in range(2):
            try:
                self.conn.request(method, path, body=data, headers=headers)
                resp = self.conn.getresponse()
                payload = resp.read()
                break
            except (ConnectionError, http.client.HTTPException):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                if attempt:
                    raise
        ctype = resp.getheader("content-type", "")
        return resp.status, (json.loads(payload) if "json" in ctype else payload.decode())

    def score(self, event: dict, **kw: Any) -> tuple[int, Any]:
        return self.request("POST", "/v1/score", event, **kw)

    def metrics(self) -> dict[str, float]:
        status, text = self.request("GET", "/metrics")
        assert status == 200
        return parse_metrics(text)


def parse_metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


@dataclass
class Service:
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(repr=False)

    def client(self, **kw: Any) -> Client:
        return Client(self.port, **kw)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_service(
    tmp: Path, lake: Lake, redis_url: str, kafka: str, namespace: str, *, synced: bool = True, **env: str
) -> Service:
    """risk-serve on a free port. With ``synced`` the namespace's online store is marked complete
    first (its epoch marker, what the offline → online sync commits): rows are written by the tests."""
    if synced:
        with OnlineStore.from_url(redis_url, namespace=namespace) as store:
            store.mark_complete()
    port = free_port()
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("RISK_", "REDIS_", "KAFKA_"))},
        "RISK_SERVE_TOKEN": TOKEN,
        "RISK_LAKE_URL": lake.url,
        "REDIS_URL": redis_url,
        "RISK_REDIS_NAMESPACE": namespace,
        "KAFKA_BOOTSTRAP_SERVERS": kafka,
        "RISK_MODEL_POLL_S": "0.2",
        "RISK_REDIS_PROBE_S": "0.2",
        "RISK_REVIEW_THRESHOLD": "0.5",
        "RISK_BLOCK_THRESHOLD": "0.9",
        **env,
    }
    log_path = tmp / f"serve-{port}.log"
    with log_path.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "risk_assets.serving.cli", "--port", str(port)],
            cwd=ROOT,
            env=full_env,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    svc = Service(port, proc, log_path, full_env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"risk-serve exited {proc.returncode}:\n{svc.log_text()}")
        try:
            status, _ = Client(port).request("GET", "/healthz")
            if status == 200:
                return svc
        except OSError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"risk-serve did not start:\n{svc.log_text()}")


def stop_service(svc: Service) -> str:
    svc.proc.send_signal(signal.SIGTERM)
    try:
        svc.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        svc.proc.kill()
        svc.proc.wait()
    text = svc.log_text()
    assert TOKEN not in text, "the bearer token leaked into the log"
    assert "Traceback" not in text, text
    return text


def wait_for(predicate: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# ------------------------------------------------------------------------------------------------
# events and online features


def event(kind: str = "withdrawal", n: int = 0, **over: Any) -> dict[str, Any]:
    base = {
        "event_id": f"ev_{kind}_{n}_{time.monotonic_ns()}",
        "event_ts": int(T0.timestamp() * 1000) + n,
        "user_id": f"u_{n}",
        "device_id": f"d_{n}",
        "ip": f"10.0.{n % 250}.1",
        "ip_country": "DE",
        "ip_asn": 3320,
    }
    typed = {
        "login": {"success": True, "auth_method": "password"},
        "withdrawal": {
            "amount": 0.5,
            "currency": "BTC",
            "amount_usd": 30_000.0,
            "wallet_address": f"bc1q{n}",
            "chain": "bitcoin",
        },
        "card_payment": {
            "amount": 50.0,
            "currency": "EUR",
            "amount_usd": 54.0,
            "card_id": f"c_{n}",
            "card_bin": "411111",
            "card_country": "DE",
            "status": "declined",
            "decline_reason": "invalid_cvv",
        },
    }[kind]
    return {"event_type": kind, **base, **typed, **over}


def online_events(group_name: str, key: dict[str, str], values: dict[str, float]) -> pl.DataFrame:
    """Events of ``group_name``'s entity ``key`` in the minutes before ``T0`` (archive layout): for
    ``ato_user`` as many logins as ``values[SIGNAL feature]`` (default 1) — the SIGNAL feature is
    its 10-minute login count — else one event of the group's first event type."""
    group = GROUPS_BY_NAME[group_name]
    kinds = [k for k in ("login", "withdrawal", "card_payment") if k in group.source_event_types]
    n = int(values.get(SIGNAL_NAME, 1)) if group_name == "ato_user" else 1
    rows = []
    for i in range(n):
        ev = event(kinds[0], 1000 + i, **key)
        ev["event_ts"] = int((T0 - timedelta(minutes=9)).timestamp() * 1000) + 10_000 * i
        ev["event_id"] = f"ev_{group_name}_{'_'.join(key.values())}_{i}"
        rows.append(ev)
    if not rows:
        return pl.DataFrame(schema=ARCHIVE_EVENT_COLUMNS)
    frame = pl.DataFrame(rows, infer_schema_length=None)
    frame = frame.with_columns(pl.col("event_ts").cast(pl.Datetime("ms", "UTC")))
    return frame.select(
        [
            (pl.col(c) if c in frame.columns else pl.lit(None)).cast(dt).alias(c)
            for c, dt in ARCHIVE_EVENT_COLUMNS.items()
        ]
    )


def write_online(
    store: OnlineStore, group_name: str, key: dict[str, str], values: dict[str, float]
) -> pl.DataFrame:
    """The tiles of :func:`online_events` written to the online store (as the sync does: batch
    tiles); returns the events (for :func:`expected_vector`)."""
    group = GROUPS_BY_NAME[group_name]
    events = online_events(group_name, key, values)
    labels = EMPTY_LABELS if group.needs_labels else None
    TileStore(store).write(tile_layout(group), build_tiles(group, events, labels), source=SOURCE_BATCH)
    return events


def expected_vector(ev: dict[str, Any], online: dict[str, pl.DataFrame]) -> np.ndarray:
    """The vector the service must build: request features + every online group of the model at
    the event's time, computed by the offline v2 engine over the events written (``online``: group
    → events; a group with none has empty windows: 0 counts, null means...)."""
    vec = np.full(len(FEATURES), np.nan)
    for name, value in request_features(ev).items():
        vec[FEATURES.index(name)] = value
    t = pl.Series([ev["event_ts"]], dtype=pl.Int64).cast(pl.Datetime("ms", "UTC"))
    for group in FEATURE_GROUPS:
        if any(ev.get(k) is None for k in group.entity.keys):
            continue
        spine = pl.DataFrame({k: [ev[k]] for k in group.entity.keys}).with_columns(t.alias("event_ts"))
        events = online.get(group.name, pl.DataFrame(schema=ARCHIVE_EVENT_COLUMNS))
        row = compute_at(group, events, spine, EMPTY_LABELS if group.needs_labels else None).row(
            0, named=True
        )
        for f in group.feature_names:
            name = f"{group.name}__{f}"
            if name in FEATURES:
                vec[FEATURES.index(name)] = np.nan if row[f] is None else float(row[f])
    return vec


def n_missing(ev: dict[str, Any], online: dict[str, pl.DataFrame]) -> int:
    """``features_missing`` the service must report."""
    return int(np.isnan(expected_vector(ev, online)).sum())


def read_predictions(bootstrap: str, topic: str = "risk.predictions", idle_s: float = 1.5) -> list[dict]:
    """Every message of partition 0 from offset 0, until nothing arrives for ``idle_s``."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "test-serving", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    out = []
    last = time.monotonic()
    try:
        while time.monotonic() - last < idle_s:
            for msg in consumer.consume(500, timeout=0.2):
                if msg.error() is None:
                    out.append(json.loads(msg.value()))
                    last = time.monotonic()
    finally:
        consumer.close()
    return out


# ------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def shared(session_stack, tmp_path_factory) -> Iterator[tuple[Service, Lake, str, OnlineStore, str]]:
    """One service on the session stack with champion A, for the read-only tests."""
    tmp = tmp_path_factory.mktemp("serve")
    lake = Lake(str(tmp / "lake"))
    version = register(lake, train_model(seed=1))
    namespace = f"test:serve{os.getpid()}:"
    svc = start_service(tmp, lake, session_stack.redis_url, session_stack.kafka, namespace)
    store = OnlineStore.from_url(session_stack.redis_url, namespace=namespace)
    wait_for(lambda: svc.client().request("GET", "/readyz")[0] == 200, what="readyz")
    yield svc, lake, version, store, session_stack.kafka
    stop_service(svc)
    client = store.client
    keys = list(client.scan_iter(match=f"{namespace}*", count=1000))
    if keys:
        client.delete(*keys)
    store.close()


# ------------------------------------------------------------------------------------------------
# tests


def test_score_round_trip_reads_online_features(shared) -> None:
    svc, lake, version, store, _ = shared
    c = svc.client()
    ev = event("withdrawal", n=101)
    status, before = c.score(ev)
    assert status == 200, before
    assert set(before) == {
        "event_id",
        "score",
        "decision",
        "model_version",
        "reasons",
        "features_missing",
        "degraded",
    }
    assert before["model_version"] == version and before["degraded"] is False
    assert before["event_id"] == ev["event_id"]
    # No tiles yet: every window is empty (counts 0, means null), as offline.
    assert before["features_missing"] == n_missing(ev, {})

    # Events of the event's user (9 logins in the last 10 minutes: the signal high), wallet and
    # user × wallet, as tiles; the service finishes the windows at the event's time.
    online = {
        "ato_user": write_online(store, "ato_user", {"user_id": ev["user_id"]}, {SIGNAL_NAME: 9.0}),
        "withdrawal_wallet": write_online(
            store, "withdrawal_wallet", {"wallet_address": ev["wallet_address"]}, {}
        ),
        "user_wallet": write_online(
            store, "user_wallet", {"user_id": ev["user_id"], "wallet_address": ev["wallet_address"]}, {}
        ),
    }
    ev2 = {**ev, "event_id": ev["event_id"] + "-2"}
    status, after = c.score(ev2)
    assert status == 200, after
    assert after["features_missing"] == n_missing(ev2, online)

    # The exact score of the exact vector: order and values are what the model was trained on.
    booster = xgb.Booster()
    booster.load_model(bytearray(registry.load_model_bytes(lake, version)))
    vec = expected_vector(ev2, online)
    want = float(booster.inplace_predict(vec[None, :])[0])
    assert after["score"] == pytest.approx(want, abs=1e-6)
    assert before["score"] < 0.5 < 0.9 < after["score"]
    assert (before["decision"], after["decision"]) == ("allow", "block")
    assert before["reasons"] == []
    assert after["reasons"] and after["reasons"][0]["feature"] == SIGNAL
    assert all(r["contribution"] > 0 for r in after["reasons"])

    # A low signal value turns the decision back to allow.
    write_online(store, "ato_user", {"user_id": "u_low"}, {SIGNAL_NAME: 0})
    status, low = c.score(event("withdrawal", n=102, user_id="u_low"))
    assert status == 200 and low["decision"] == "allow" and low["score"] < 0.5


def test_batch_endpoint_scores_each_event(shared) -> None:
    svc, _, version, store, _ = shared
    c = svc.client()
    write_online(store, "ato_user", {"user_id": "u_batch_hi"}, {SIGNAL_NAME: 9.0})
    events = [
        event("withdrawal", n=201, user_id="u_batch_hi"),
        event("login", n=202),
        event("card_payment", n=203),
    ]
    status, body = c.request("POST", "/v1/score/batch", {"events": events})
    assert status == 200, body
    assert body["model_version"] == version
    results = body["results"]
    assert [r["event_id"] for r in results] == [e["event_id"] for e in events]
    assert results[0]["decision"] == "block" and results[0]["reasons"]
    singles = [c.score(e)[1] for e in events]
    for r, s in zip(results, singles, strict=True):
        assert r["score"] == pytest.approx(s["score"], abs=1e-6)
        assert r["features_missing"] == s["features_missing"]
    status, empty = c.request("POST", "/v1/score/batch", {"events": []})
    assert status == 200 and empty["results"] == []
    status, bad = c.request("POST", "/v1/score/batch", {"events": [events[0], {"event_type": "login"}]})
    assert status == 422 and "$.events[1]" in bad["detail"]


def test_auth_is_required(shared) -> None:
    svc = shared[0]
    ev = event("login", n=301)
    assert svc.client(token=None).score(ev)[0] == 401
    status, body = svc.client(token="wrong").score(ev)
    assert status == 401 and TOKEN not in json.dumps(body)
    assert svc.client(token=None).request("POST", "/v1/score/batch", {"events": [ev]})[0] == 401
    # Health, readiness and metrics are open.
    for path in ("/healthz", "/readyz", "/metrics"):
        assert svc.client(token=None).request("GET", path)[0] == 200


def test_bad_input_is_422_naming_the_field(shared) -> None:
    c = shared[0].client()
    status, body = c.request("POST", "/v1/score", raw=b'{"event_type": "login", ')
    assert status == 422 and body["error"] == "invalid_json"
    ev = event("withdrawal", n=401)
    del ev["wallet_address"]
    status, body = c.score(ev)
    assert status == 422 and body["error"] == "validation" and "wallet_address" in body["detail"]
    status, body = c.score({**event("login", n=402), "event_ts": "yesterday"})
    assert status == 422 and "event_ts" in body["detail"]
    status, body = c.score({**event("login", n=403), "event_type": "teleport"})
    assert status == 422 and "event_type" in body["detail"]
    status, body = c.score({**event("login", n=404), "surprise": 1})
    assert status == 422 and "surprise" in body["detail"]
    assert "Traceback" not in json.dumps(body)


def test_metrics_expose_the_series(shared) -> None:
    svc, _, version, _, _ = shared
    c = svc.client()
    for i in range(5):
        assert c.score(event("login", n=500 + i))[0] == 200
    c.score({"nope": 1})
    m = c.metrics()
    assert m['risk_serve_requests_total{endpoint="score",code="200"}'] >= 5
    assert m['risk_serve_requests_total{endpoint="score",code="422"}'] >= 1
    assert m['risk_serve_errors_total{kind="validation"}'] >= 1
    assert "risk_serve_qps" in m
    assert m['risk_serve_request_duration_seconds_bucket{endpoint="score",le="+Inf"}'] >= 5
    assert 'risk_serve_request_duration_seconds_bucket{endpoint="score",le="0.0005"}' in m
    assert m['risk_serve_request_duration_seconds_count{endpoint="score"}'] >= 5
    assert m['risk_serve_feature_misses_total{group="ato_device"}'] >= 1
    assert m["risk_serve_redis_degraded_total"] == 0
    assert m["risk_serve_prediction_log_dropped_total"] == 0
    assert m["process_resident_memory_bytes"] > 10_000_000
    assert m["process_cpu_seconds_total"] > 0
    assert m[f'risk_model_info{{version="{version}",sha256="{version[-12:]}"}}'] == 1
    assert m['risk_serve_model_reloads_total{result="loaded"}'] == 1


def test_prediction_log_reaches_kafka(shared) -> None:
    svc, lake, version, _, kafka = shared
    c = svc.client()
    events = [event("card_payment", n=600 + i) for i in range(20)]
    results = [c.score(e)[1] for e in events]
    wait_for(lambda: c.metrics()["risk_serve_prediction_log_sent_total"] >= 20, what="prediction log acks")
    ours = {e["event_id"] for e in events}
    messages = {m["event_id"]: m for m in read_predictions(kafka) if m["event_id"] in ours}
    assert set(messages) == ours
    features = registry.load_manifest(lake, version)["features"]
    for ev, res in zip(events, results, strict=True):
        msg = messages[ev["event_id"]]
        assert msg["model_version"] == version and msg["event_ts"] == ev["event_ts"]
        assert msg["score"] == res["score"] and msg["decision"] == res["decision"]
        assert msg["scored_at"] > ev["event_ts"]
        assert len(msg["values"]) == len(features)
        assert sum(v is None for v in msg["values"]) == res["features_missing"]
        vec = expected_vector(ev, {})
        got = np.array([math.nan if v is None else v for v in msg["values"]])
        np.testing.assert_array_equal(got, vec)


def test_hot_reload_under_load_and_refusals(session_stack, tmp_path: Path, key_prefix: str) -> None:
    lake = Lake(str(tmp_path / "lake"))
    v1 = register(lake, train_model(seed=1), created=T0)
    svc = start_service(tmp_path, lake, session_stack.redis_url, session_stack.kafka, key_prefix)
    try:
        wait_for(lambda: svc.client().request("GET", "/readyz")[0] == 200, what="readyz")
        stop = threading.Event()
        seen: list[tuple[float, str]] = []
        failures: list[Any] = []

        def hammer(k: int) -> None:
            c = svc.client()
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    status, body = c.score(event("withdrawal", n=k * 100_000 + i))
                except Exception as exc:  # a dropped connection counts as a failure
                    failures.append(repr(exc))
                    continue
                if status != 200:
                    failures.append((status, body))
                else:
                    seen.append((time.monotonic(), body["model_version"]))

        threads = [threading.Thread(target=hammer, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        v2 = register(lake, train_model(seed=2, trees=40, depth=4), created=T0 + timedelta(seconds=1))
        switched_at = time.monotonic()
        wait_for(lambda: seen and seen[-1][1] == v2, what="responses from the new version")
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join()
        assert failures == []
        versions = [v for _, v in seen]
        assert versions.count(v1) > 10 and versions.count(v2) > 10
        first_v2 = versions.index(v2)
        # After the swap no request is served by the old model any more (one in flight at most per thread).
        assert versions[first_v2 + 8 :].count(v1) == 0
        assert all(t >= switched_at for t, v in seen if v == v2)

        c = svc.client()
        # Garbage bytes with a matching sha256: registered properly, but not a model. The registry
        # refuses to point at it (set_champion loads the booster); a hand-edited pointer does.
        garbage = np.random.default_rng(3).bytes(4096)
        v3 = register(lake, garbage, champion=False, created=T0 + timedelta(seconds=2))
        with pytest.raises(registry.IntegrityError, match="does not load"):
            registry.set_champion(lake, v3, "garbage")
        point_at(lake, v3)
        wait_for(
            lambda: c.metrics().get('risk_serve_model_refusals_total{reason="corrupt"}', 0) == 1,
            what="corrupt refusal",
        )
        assert c.score(event("login", n=1))[1]["model_version"] == v2
        # A pointer whose sha256 does not match the bytes.
        v4 = register(lake, train_model(seed=4), champion=False, created=T0 + timedelta(seconds=3))
        pointer = json.loads(lake.read_bytes(registry.CHAMPION))
        pointer.update(version=v4, model_sha256="0" * 64)
        lake.write_bytes(registry.CHAMPION, json.dumps(pointer).encode())
        wait_for(
            lambda: c.metrics().get('risk_serve_model_refusals_total{reason="sha_mismatch"}', 0) == 1,
            what="sha mismatch refusal",
        )
        # A model whose manifest asks for a feature the service cannot produce.
        register(
            lake,
            train_model(seed=5),
            created=T0 + timedelta(seconds=4),
            manifest=manifest([*FEATURES[:-1], "mystery_group__x"]),
        )
        wait_for(
            lambda: c.metrics().get('risk_serve_model_refusals_total{reason="incompatible"}', 0) == 1,
            what="incompatible refusal",
        )
        status, body = c.score(event("login", n=2))
        assert status == 200 and body["model_version"] == v2
        m = c.metrics()
        assert m['risk_serve_model_reloads_total{result="refused"}'] == 3
        assert m['risk_serve_model_reloads_total{result="loaded"}'] == 2
        assert m[f'risk_model_info{{version="{v2}",sha256="{v2[-12:]}"}}'] == 1
        assert v3 not in json.dumps(m)
        # Back to a good version: served again.
        registry.set_champion(lake, v1, "rollback", action="rollback")
        wait_for(lambda: c.score(event("login", n=3))[1]["model_version"] == v1, what="rollback")
    finally:
        log_text = stop_service(svc)
    assert "refused champion" in log_text and "corrupt" in log_text and "sha_mismatch" in log_text


def test_thresholds_travel_with_the_model_through_hot_reload(
    session_stack, tmp_path: Path, key_prefix: str
) -> None:
    """Decisions use the served model's manifest thresholds, swapped with it; no environment value."""
    lake = Lake(str(tmp_path / "lake"))

    def with_thresholds(review: float, block: float) -> dict[str, Any]:
        return {**manifest(), "thresholds": {"review": review, "block": block}}

    # review 0, block above 1: every score is a review
    v1 = register(lake, train_model(seed=1), manifest=with_thresholds(0.0, 1.5), created=T0)
    svc = start_service(
        tmp_path,
        lake,
        session_stack.redis_url,
        session_stack.kafka,
        key_prefix,
        RISK_REVIEW_THRESHOLD="",
        RISK_BLOCK_THRESHOLD="",
    )
    try:
        c = svc.client()
        wait_for(lambda: c.request("GET", "/readyz")[0] == 200, what="readyz")
        assert c.request("GET", "/readyz")[1]["thresholds"] == {"review": 0.0, "block": 1.5}
        status, body = c.score(event("withdrawal", n=1))
        assert (status, body["model_version"], body["decision"]) == (200, v1, "review")

        # the next champion blocks everything: its thresholds arrive with it
        v2 = register(
            lake, train_model(seed=2), manifest=with_thresholds(0.0, 0.0), created=T0 + timedelta(1)
        )
        wait_for(lambda: c.score(event("withdrawal", n=2))[1]["model_version"] == v2, what="swap to v2")
        assert c.score(event("withdrawal", n=3))[1]["decision"] == "block"
        assert c.request("GET", "/readyz")[1]["thresholds"] == {"review": 0.0, "block": 0.0}

        # thresholds that make no sense refuse the model: the last good one keeps serving
        register(lake, train_model(seed=3), manifest=with_thresholds(0.9, 0.1), created=T0 + timedelta(2))
        wait_for(
            lambda: c.metrics().get('risk_serve_model_refusals_total{reason="incompatible"}', 0) == 1,
            what="refusal of inverted thresholds",
        )
        status, body = c.score(event("withdrawal", n=4))
        assert (body["model_version"], body["decision"]) == (v2, "block")
    finally:
        stop_service(svc)


def test_redis_outage_degrades_then_recovers(fresh_stack, tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    version = register(lake, train_model(seed=1))
    ns = "risk"
    svc = start_service(tmp_path, lake, fresh_stack.redis_url, fresh_stack.kafka, ns, RISK_REDIS_FRESH_S="2")
    store = OnlineStore.from_url(fresh_stack.redis_url, namespace=ns)
    try:
        c = svc.client()
        wait_for(lambda: c.request("GET", "/readyz")[0] == 200, what="readyz")
        write_online(store, "ato_user", {"user_id": "u_out"}, {SIGNAL.split("__")[1]: 9.0})
        ev = event("withdrawal", n=7, user_id="u_out")
        status, ok = c.score(ev)
        assert status == 200 and ok["degraded"] is False and ok["decision"] == "block"
        redis_pid = launcher.pids(fresh_stack.config)["redis"]

        # 1) Redis hangs (SIGSTOP): bounded timeout once, then the breaker answers at once.
        os.kill(redis_pid, signal.SIGSTOP)
        try:
            times = []
            for i in range(30):
                t = time.perf_counter()
                status, body = c.score({**ev, "event_id": f"hang-{i}"})
                times.append(time.perf_counter() - t)
                assert status == 200, body
                assert body["degraded"] is True and body["model_version"] == version
                assert body["features_missing"] == len(FEATURES) - len(request_features(ev))
            assert max(times) < 0.5
            assert sorted(times)[len(times) // 2] < 0.02  # breaker open: no timeout per request
            wait_for(lambda: c.request("GET", "/readyz")[0] == 503, timeout=15, what="not ready")
        finally:
            os.kill(redis_pid, signal.SIGCONT)
        wait_for(lambda: c.score(ev)[1]["degraded"] is False, what="recovery after SIGCONT")
        assert c.score(ev)[1]["decision"] == "block"
        assert c.request("GET", "/readyz")[0] == 200

        # 2) Redis dies (SIGKILL): refused connections, degraded; then a new server on the port.
        os.kill(redis_pid, signal.SIGKILL)
        wait_for(lambda: c.score(ev)[1]["degraded"] is True, what="degraded after kill")
        status, body = c.request("POST", "/v1/score/batch", {"events": [ev, event("login", n=8)]})
        assert status == 200 and all(r["degraded"] for r in body["results"])
        m = c.metrics()
        assert m["risk_serve_redis_degraded_total"] >= 32
        assert m["risk_serve_redis_breaker_opened_total"] >= 2
        wait_for(lambda: "redis" not in launcher.pids(fresh_stack.config), what="redis-server gone")
        launcher.up(fresh_stack.config)  # restarts only the dead redis, on the same port
        wait_for(lambda: c.metrics()["risk_serve_redis_breaker_open"] == 0, timeout=15, what="breaker closed")
        # 3) The new server answers but is empty (D18): the user's row is gone (allow), and that is
        # not a healthy answer — degraded and not ready until the sync has resynced the store.
        status, body = c.score(ev)
        assert status == 200 and body["decision"] == "allow" and body["degraded"] is True
        status, ready = c.request("GET", "/readyz")
        assert (status, ready["redis"]) == (503, "no_epoch")
        assert c.metrics()["risk_serve_online_store_epoch_ok"] == 0
        store.mark_complete()  # what the sync commits after its full resync
        wait_for(lambda: c.score(ev)[1]["degraded"] is False, timeout=15, what="recovery after resync")
        assert c.request("GET", "/readyz")[0] == 200 and c.metrics()["risk_serve_online_store_epoch_ok"] == 1
    finally:
        store.close()
        stop_service(svc)


def test_full_prediction_queue_drops_and_counts(session_stack, tmp_path: Path, key_prefix: str) -> None:
    lake = Lake(str(tmp_path / "lake"))
    register(lake, train_model(seed=1))
    dead_broker = f"127.0.0.1:{free_port()}"
    svc = start_service(
        tmp_path,
        lake,
        session_stack.redis_url,
        dead_broker,
        key_prefix,
        RISK_PREDICTION_QUEUE="5",
        RISK_PREDICTION_BUFFER="3",
    )
    try:
        c = svc.client()
        t = time.perf_counter()
        for i in range(60):
            status, body = c.score(event("login", n=900 + i))
            assert status == 200, body
        assert time.perf_counter() - t < 10
        m = c.metrics()
        assert m["risk_serve_prediction_log_dropped_total"] >= 60 - 5 - 3 - 1
        accepted = m["risk_serve_prediction_log_enqueued_total"]
        assert accepted + m["risk_serve_prediction_log_dropped_total"] == 60
        assert m["risk_serve_prediction_log_queue_depth"] <= 5
        assert m['risk_serve_events_scored_total{decision="allow"}'] == 60
    finally:
        stop_service(svc)


def test_refuses_to_start_without_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISK_")}
    proc = subprocess.run(
        [sys.executable, "-m", "risk_assets.serving.cli", "--port", str(free_port())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "RISK_SERVE_TOKEN" in proc.stderr


def test_blocking_read_mode_serves_the_same_vector(session_stack, tmp_path: Path, key_prefix: str) -> None:
    """``RISK_REDIS_ASYNC=0`` (the blocking read on the loop) finishes the same windows: the same
    score and missing count as the default asyncio read, from the same tiles."""
    lake = Lake(str(tmp_path / "lake"))
    register(lake, train_model(seed=1))
    ev = event("withdrawal", n=901)
    answers = []
    with OnlineStore.from_url(session_stack.redis_url, namespace=key_prefix) as store:
        online = {"ato_user": write_online(store, "ato_user", {"user_id": ev["user_id"]}, {SIGNAL_NAME: 9.0})}
    for mode in ("1", "0"):
        (tmp_path / mode).mkdir()
        svc = start_service(
            tmp_path / mode,
            lake,
            session_stack.redis_url,
            session_stack.kafka,
            key_prefix,
            RISK_REDIS_ASYNC=mode,
        )
        try:
            c = svc.client()
            wait_for(lambda c=c: c.request("GET", "/readyz")[0] == 200, what="readyz")
            status, body = c.score({**ev, "event_id": f"{ev['event_id']}-{mode}"})
            assert status == 200 and body["degraded"] is False, body
            answers.append(body)
        finally:
            stop_service(svc)
    assert answers[0]["score"] == answers[1]["score"] and answers[0]["decision"] == "block"
    assert answers[0]["features_missing"] == answers[1]["features_missing"] == n_missing(ev, online)
