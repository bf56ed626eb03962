"""Fault injection on a real ``risk-serve`` process (issue 9): a corrupt or tampered champion, bodies
that do not decode, a client that disconnects, an oversize chunked body, a flood of half-open
sockets, a burst beyond the admission limit, a wrong method, the OpenAPI document.

Each test counts what went in and what came out: every request gets an answer of the documented
status (never a 500), and the model that serves is the one that verifies.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import socket
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from risk_assets.lake import Lake
from risk_assets.models import registry
from tests.serving.test_serving import (
    T0,
    TOKEN,
    Client,
    event,
    point_at,
    register,
    start_service,
    stop_service,
    train_model,
    wait_for,
)


def _corrupt(lake: Lake, version: str) -> bytes:
    """Flip 64 bytes in the middle of a version's model.ubj; returns the good bytes."""
    path = Path(lake.uri(registry.version_paths(version)[0]))
    good = path.read_bytes()
    data = bytearray(good)
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(b ^ 0xFF for b in data[mid : mid + 64])
    path.write_bytes(bytes(data))
    return good


def _raw(port: int, request: bytes, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes on a fresh connection; the status, headers and body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
        return int(lines[0].split()[1]), headers, body


def _post(path: str, body: bytes, *, token: str = TOKEN) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def _fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# ------------------------------------------------------------------------------------------------
# registry faults


def test_restart_onto_a_corrupt_champion_falls_back_then_serves_the_repair(
    session_stack, tmp_path: Path, key_prefix: str
) -> None:
    """D11: a corrupt champion at start → the last good champion serves (not 503 for everything);
    the refused (version, sha) is retried and served once its bytes are repaired; a corruption
    while running is noticed without a restart."""
    lake = Lake(str(tmp_path / "lake"))
    v1 = register(lake, train_model(seed=1), created=T0)
    v2 = register(lake, train_model(seed=2), created=T0 + timedelta(seconds=1))
    good = _corrupt(lake, v2)
    svc = start_service(
        tmp_path,
        lake,
        session_stack.redis_url,
        session_stack.kafka,
        key_prefix,
        RISK_MODEL_RETRY_S="0.3",
        RISK_MODEL_VERIFY_S="0.3",
    )
    try:
        c = svc.client()
        _, ready = wait_for(lambda: (r := c.request("GET", "/readyz"))[0] == 200 and r, what="ready")
        assert ready["model_version"] == v1 and ready["model_fallback"] is True
        assert ready["last_refused"] == v2 and ready["last_refusal_reason"] == "sha_mismatch"
        answers = [c.score(event("login", n=i)) for i in range(20)]
        assert [(s, b["model_version"]) for s, b in answers] == [(200, v1)] * 20
        time.sleep(1.0)  # several retries of the refused version, all failing the same way
        m = c.metrics()
        assert m["risk_model_fallback"] == 1 and m["risk_model_champion_refused"] == 1
        assert m['risk_serve_model_refusals_total{reason="sha_mismatch"}'] == 1  # counted once

        # Repair the bytes in place (same version, same sha): served without a pointer change.
        Path(lake.uri(registry.version_paths(v2)[0])).write_bytes(good)
        wait_for(lambda: c.score(event("login", n=100))[1]["model_version"] == v2, what="repaired v2")
        m = c.metrics()
        assert m["risk_model_fallback"] == 0 and m["risk_model_champion_refused"] == 0
        assert c.request("GET", "/readyz")[1]["model_fallback"] is False

        # Corrupted again while it serves: noticed (gauge + log) and the loaded copy keeps serving.
        _corrupt(lake, v2)
        wait_for(lambda: c.metrics()["risk_model_champion_intact"] == 0, what="corruption noticed")
        status, body = c.score(event("login", n=101))
        assert status == 200 and body["model_version"] == v2
        assert c.metrics().get('risk_serve_errors_total{kind="internal"}', 0) == 0
    finally:
        log_text = stop_service(svc)
    assert "serving the earlier champion" in log_text and "repaired" in log_text
    assert "no longer matches its sha256" in log_text
    assert log_text.count(f"refused champion {v2}") == 1


def test_restart_onto_an_unreadable_pointer_serves_the_last_champion(
    session_stack, tmp_path: Path, key_prefix: str
) -> None:
    """D11: champion.json truncated by a crashed hand edit → the last champion of the audit trail
    serves; a repaired pointer is picked up."""
    lake = Lake(str(tmp_path / "lake"))
    v1 = register(lake, train_model(seed=1), created=T0)
    pointer = lake.read_bytes(registry.CHAMPION)
    lake.write_bytes(registry.CHAMPION, pointer[: len(pointer) // 2])
    svc = start_service(
        tmp_path, lake, session_stack.redis_url, session_stack.kafka, key_prefix, RISK_MODEL_RETRY_S="0.3"
    )
    try:
        c = svc.client()
        _, ready = wait_for(lambda: (r := c.request("GET", "/readyz"))[0] == 200 and r, what="ready")
        assert ready["model_version"] == v1 and ready["model_fallback"] is True
        assert c.score(event("login", n=1))[1]["model_version"] == v1
        lake.write_bytes(registry.CHAMPION, pointer)
        wait_for(lambda: c.request("GET", "/readyz")[1]["model_fallback"] is False, what="pointer repaired")
        assert c.score(event("login", n=2))[1]["model_version"] == v1
    finally:
        log_text = stop_service(svc)
    assert log_text.count("cannot read the champion pointer") == 1


def test_tampered_champion_with_a_consistent_manifest_is_refused_when_signing(
    session_stack, tmp_path: Path, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """D11: a booster replaced together with its manifest's sha256 passes every hash check; with a
    signing key the service refuses it and keeps serving the signed champion."""
    key = "test-signing-key-0123456789"
    monkeypatch.setenv(registry.ENV_SIGNING_KEY, key)  # register() signs with it
    lake = Lake(str(tmp_path / "lake"))
    v1 = register(lake, train_model(seed=1), created=T0)
    v2 = register(lake, train_model(seed=2), champion=False, created=T0 + timedelta(seconds=1))
    svc = start_service(
        tmp_path,
        lake,
        session_stack.redis_url,
        session_stack.kafka,
        key_prefix,
        RISK_MODEL_SIGNING_KEY=key,
        RISK_MODEL_RETRY_S="0.3",
    )
    try:
        c = svc.client()
        wait_for(lambda: c.request("GET", "/readyz")[0] == 200, what="ready")
        assert c.score(event("login", n=1))[1]["model_version"] == v1
        # The attacker swaps v2's booster for their own and fixes the manifest's sha256.
        evil = train_model(seed=9, trees=5)
        model_path, manifest_path = registry.version_paths(v2)
        lake.write_bytes(model_path, evil)
        manifest = json.loads(lake.read_bytes(manifest_path))
        manifest["model_sha256"] = hashlib.sha256(evil).hexdigest()
        lake.write_bytes(manifest_path, json.dumps(manifest).encode())
        with pytest.raises(registry.IntegrityError, match="signature"):
            registry.set_champion(lake, v2, "tampered")
        point_at(lake, v2)  # the pointer written by hand, consistent with the tampered manifest
        wait_for(
            lambda: c.metrics().get('risk_serve_model_refusals_total{reason="bad_signature"}', 0) == 1,
            what="bad_signature refusal",
        )
        answers = [c.score(event("login", n=i)) for i in range(10)]
        assert {(s, b["model_version"]) for s, b in answers} == {(200, v1)}
    finally:
        stop_service(svc)


# ------------------------------------------------------------------------------------------------
# request faults (one service for the module)


@pytest.fixture(scope="module")
def guarded(session_stack, tmp_path_factory) -> Any:
    tmp = tmp_path_factory.mktemp("faults")
    lake = Lake(str(tmp / "lake"))
    version = register(lake, train_model(seed=1))
    namespace = f"test:faults{os.getpid()}:"
    svc = start_service(
        tmp,
        lake,
        session_stack.redis_url,
        session_stack.kafka,
        namespace,
        RISK_HEADER_TIMEOUT_S="1.5",
        RISK_MAX_CONNECTIONS="100",
        RISK_MAX_INFLIGHT="4",
        RISK_BODY_TIMEOUT_S="2",
    )
    wait_for(lambda: svc.client().request("GET", "/readyz")[0] == 200, what="readyz")
    yield svc, version
    stop_service(svc)


def test_undecodable_bodies_are_client_errors(guarded) -> None:
    """D12: invalid UTF-8, 1,500 nesting levels, event_ts ≥ 2^63 → 4xx with a reason, never a 500;
    a client that disconnects mid-body is not an internal error."""
    svc, _ = guarded
    good = json.dumps(event("login", n=1)).encode()
    cases = {
        "utf8": good.replace(b'"u_1"', b'"u_\xff\xfe"'),
        "nested_unknown_first": b'{"x":' + b"[" * 1500 + b"]" * 1500 + b"," + good[1:],
        "nested_unknown_last": good[:-1] + b',"x":' + b"[" * 1500 + b"]" * 1500 + b"}",
        "huge_ts": json.dumps(event("login", n=2, event_ts=2**63)).encode(),
        "huge_ts_beyond_u64": json.dumps(event("login", n=3, event_ts=2**70)).encode(),
    }
    before = svc.client().metrics()
    got = {}
    for name, body in cases.items():
        for path in ("/v1/score", "/v1/score/batch"):
            payload = body if path == "/v1/score" else b'{"events":[' + body + b"]}"
            status, _, answer = _raw(svc.port, _post(path, payload))
            got[(name, path)] = (status, json.loads(answer)["error"])
    assert got == {
        ("utf8", "/v1/score"): (400, "invalid_json"),
        ("utf8", "/v1/score/batch"): (400, "invalid_json"),
        ("nested_unknown_first", "/v1/score"): (400, "invalid_json"),
        ("nested_unknown_first", "/v1/score/batch"): (400, "invalid_json"),
        ("nested_unknown_last", "/v1/score"): (422, "validation"),
        ("nested_unknown_last", "/v1/score/batch"): (422, "validation"),
        ("huge_ts", "/v1/score"): (422, "validation"),
        ("huge_ts", "/v1/score/batch"): (422, "validation"),
        ("huge_ts_beyond_u64", "/v1/score"): (422, "validation"),
        ("huge_ts_beyond_u64", "/v1/score/batch"): (422, "validation"),
    }
    # A client that announces 1000 bytes, sends 10 and hangs up.
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", svc.port)) as s:
            s.sendall(_post("/v1/score", b"x" * 1000)[:-990])
            time.sleep(0.2)
    c = svc.client()
    wait_for(
        lambda: (
            c.metrics().get('risk_serve_errors_total{kind="client_disconnect"}', 0)
            >= before.get('risk_serve_errors_total{kind="client_disconnect"}', 0) + 3
        ),
        what="disconnects counted",
    )
    after = c.metrics()
    assert after.get('risk_serve_errors_total{kind="internal"}', 0) == 0
    assert not any(k.startswith("risk_serve_requests_total") and 'code="500"' in k for k in after)
    assert c.score(event("login", n=4))[0] == 200


def test_wrong_method_is_405_with_allow(guarded) -> None:
    """D20."""
    svc, _ = guarded
    status, headers, body = _raw(svc.port, b"GET /v1/score HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 405 and headers["allow"] == "POST" and json.loads(body)["error"] == "http_error"
    status, headers, _ = _raw(svc.port, b"DELETE /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 405 and set(headers["allow"].replace(" ", "").split(",")) == {"GET", "HEAD"}


def test_openapi_document_describes_the_endpoints(guarded) -> None:
    svc, _ = guarded
    status, doc = svc.client(token=None).request("GET", "/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.1")
    assert set(doc["paths"]) == {
        "/v1/score",
        "/v1/score/batch",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    }
    schemas = doc["components"]["schemas"]
    # Events are the event schema's JSON Schema, re-rooted: every reference resolves.
    committed = json.loads(
        (Path(registry.__file__).parents[1] / "events" / "jsonschema" / "risk_event.v1.json").read_text()
    )
    assert set(committed["$defs"]) <= set(schemas)
    assert schemas["Login"]["properties"]["event_ts"] == committed["$defs"]["Login"]["properties"]["event_ts"]
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            refs.extend(v for k, v in node.items() if k == "$ref")
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc)
    assert refs and all(r.startswith("#/components/schemas/") and r.split("/")[-1] in schemas for r in refs)
    score = doc["paths"]["/v1/score"]["post"]
    assert score["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/RiskEvent"
    }
    assert {"200", "400", "401", "413", "422", "503"} <= set(score["responses"])


def test_oversize_chunked_body_is_refused_at_the_limit(guarded) -> None:
    """D15: a 64 MiB chunked body gets 413 once 4 MiB have been read, and the server closes the
    connection instead of reading the rest."""
    svc, _ = guarded
    total = 64 * 1024 * 1024
    chunk = b"[" * 65536
    framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    head = (
        f"POST /v1/score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    sent = 0
    answer = b""
    with socket.create_connection(("127.0.0.1", svc.port), timeout=10) as s:
        s.sendall(head)
        try:
            while sent < total:
                s.sendall(framed)
                sent += len(chunk)
                if select.select([s], [], [], 0)[0]:
                    break
            answer = s.recv(65536)
            while answer and b"\r\n\r\n" not in answer:
                answer += s.recv(65536)
        except (BrokenPipeError, ConnectionResetError):
            pass
        if not answer:  # the server answered and closed while we were still sending
            try:
                answer = s.recv(65536)
            except OSError:
                answer = b""
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"connection: close" in answer.lower()
    assert sent < total // 2, f"the client pushed {sent} bytes before the 413"
    m = svc.client().metrics()
    assert m['risk_serve_requests_total{endpoint="score",code="413"}'] >= 1


def test_half_open_connection_flood_does_not_lock_out_a_healthy_client(guarded) -> None:
    """D14: 300 sockets that send half a request head. The connection cap (100) evicts idle ones so
    a healthy client still gets answers, the header timeout closes the rest, and the worker's file
    descriptors stay bounded."""
    svc, _ = guarded
    baseline_fds = _fd_count(svc.proc.pid)
    socks = []
    for _ in range(300):
        s = socket.create_connection(("127.0.0.1", svc.port), timeout=5)
        s.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Le")
        socks.append(s)
    try:
        c = Client(svc.port)
        for i in range(5):
            status, body = c.score(event("login", n=200 + i))
            assert status == 200 and body["decision"] in ("allow", "review", "block")
        assert _fd_count(svc.proc.pid) <= baseline_fds + 100 + 10
        # Every half-open socket is closed by the server (evicted or timed out), none answered.
        deadline = time.monotonic() + 10
        closed = 0
        for s in socks:
            s.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                data = s.recv(1024)
            except ConnectionResetError:
                data = b""
            except TimeoutError:
                continue
            closed += data == b""
        assert closed == len(socks)
        m = c.metrics()
        assert m['risk_serve_connections_closed_total{reason="evicted"}'] >= 200
        assert m['risk_serve_connections_closed_total{reason="header_timeout"}'] >= 1
        assert c.request("GET", "/healthz")[0] == 200
    finally:
        for s in socks:
            s.close()


def test_a_burst_beyond_the_admission_limit_is_shed_with_503(guarded) -> None:
    """D16: 60 batch requests arrive at once with 4 admitted at a time: the excess is answered 503
    ``overloaded`` with Retry-After at once (not queued), every request gets an answer, the
    admitted ones are scored, and the probes are never shed."""
    svc, _ = guarded
    batch = json.dumps({"events": [event("withdrawal", n=i) for i in range(200)]}).encode()
    request = _post("/v1/score/batch", batch)
    socks = [socket.create_connection(("127.0.0.1", svc.port), timeout=30) for _ in range(60)]
    barrier = threading.Barrier(len(socks))
    results: list[tuple[int, dict[str, str], bytes]] = []
    lock = threading.Lock()

    def fire(s: socket.socket) -> None:
        barrier.wait()
        s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        while len(body) < int(headers["content-length"]):
            body += s.recv(65536)
        with lock:
            results.append((int(lines[0].split()[1]), headers, body))

    threads = [threading.Thread(target=fire, args=(s,)) for s in socks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in socks:
        s.close()
    statuses = sorted(r[0] for r in results)
    assert len(results) == 60 and set(statuses) <= {200, 503}, statuses
    shed = [r for r in results if r[0] == 503]
    ok = [r for r in results if r[0] == 200]
    assert shed and ok, statuses
    for _, headers, body in shed:
        assert headers["retry-after"] == "1" and json.loads(body)["error"] == "overloaded"
    for _, _, body in ok:
        assert len(json.loads(body)["results"]) == 200
    m = svc.client().metrics()
    assert m['risk_serve_errors_total{kind="overloaded"}'] >= len(shed)
    assert svc.client().request("GET", "/readyz")[0] == 200
