"""``/metrics`` of a multi-worker ``risk-serve`` is the service's, not the answering worker's.

A real ``risk-serve --workers 2`` (uvicorn, two processes behind one socket) on the session stack's
Redis and broker; requests arrive on many connections so both workers serve some; every scrape,
whichever worker answers it, must report the same service totals — also after a worker is killed and
replaced. The merge rules themselves and the replica sum of ``service_health`` are checked as pure
functions on hand-written exposition texts.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from risk_assets.features.online_store import OnlineStore
from risk_assets.lake import Lake
from risk_assets.monitoring.service_health import health, merge_states, parse_prometheus, scrape_state
from risk_assets.serving.service_metrics import (
    ServiceMetrics,
    merge_expositions,
    read_snapshots,
    write_snapshot,
)
from tests.conftest import free_port
from tests.serving.test_serving import TOKEN, Client, event, register, train_model

ROOT = Path(__file__).resolve().parents[2]
SCORED = 'risk_serve_requests_total{endpoint="score",code="200"}'
LATENCY_COUNT = 'risk_serve_request_duration_seconds_count{endpoint="score"}'


def values(text: str) -> dict[str, float]:
    """``series -> value`` of an exposition text (series written exactly as in the text)."""
    out: dict[str, float] = {}
    for s in parse_prometheus(text):
        labels = ",".join(f'{k}="{v}"' for k, v in s.labels.items())
        out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def worker_text(requests: int, qps: float, ready: int, start: float, rss: int) -> str:
    """A worker's own exposition text (the real renderer), with the given gauge values."""
    m = ServiceMetrics()
    m.started = start
    for _ in range(requests):
        m.request("score", 200)
        m.latency["score"].observe(0.0015)
    ready_lines = ["# HELP risk_serve_ready 1 when ready.", "# TYPE risk_serve_ready gauge"]
    m.gauges.append(lambda: [*ready_lines, f"risk_serve_ready {ready}"])
    fixed = {"risk_serve_qps": qps, "process_resident_memory_bytes": rss}
    lines = []
    for line in m.render_local().splitlines():
        name = line.split(" ", 1)[0]
        lines.append(f"{name} {fixed[name]}" if name in fixed else line)
    return "\n".join(lines)


def test_merge_sums_counters_of_every_worker_and_combines_live_gauges() -> None:
    a = worker_text(30, qps=3.0, ready=1, start=1000.0, rss=100)
    b = worker_text(12, qps=2.0, ready=0, start=1005.0, rss=50)
    gone = worker_text(5, qps=9.0, ready=1, start=990.0, rss=70)  # died; uvicorn replaced it
    merged = merge_expositions([(a, True), (b, True), (gone, False)])
    v = values(merged)
    assert v[SCORED] == 30 + 12 + 5  # counters: every worker that ever ran
    assert v[LATENCY_COUNT] == 47
    assert v['risk_serve_request_duration_seconds_bucket{endpoint="score",le="0.002"}'] == 47
    assert v["risk_serve_qps"] == 5.0  # gauges: live workers only, summed
    assert v["process_resident_memory_bytes"] == 150
    assert v["risk_serve_ready"] == 0  # ready only when every live worker is
    assert v["process_start_time_seconds"] == 990.0  # the service's start: the earliest worker
    assert v["risk_serve_workers"] == 2
    # Still valid exposition text: one HELP/TYPE per family, and service_health reads it.
    assert merged.count("# TYPE risk_serve_requests_total counter") == 1
    st = scrape_state(merged, at=2000.0)
    assert st.workers == 2 and health(st).requests == 47


def test_a_reused_pid_keeps_the_dead_workers_counts(tmp_path: Path) -> None:
    old = worker_text(7, qps=1.0, ready=1, start=1000.0, rss=10)
    new = worker_text(3, qps=2.0, ready=1, start=2000.0, rss=20)
    write_snapshot(tmp_path, os.getpid(), 1000.0, old)  # a worker that died; its pid came back
    write_snapshot(tmp_path, os.getpid(), 2000.0, new)
    snaps = read_snapshots(tmp_path)
    assert sorted(alive for _, alive in snaps) == [False, True]
    v = values(merge_expositions(snaps))
    assert v[SCORED] == 10 and v["risk_serve_qps"] == 2.0 and v["risk_serve_workers"] == 1


def test_service_health_sums_replicas() -> None:
    r1 = scrape_state(worker_text(40, 4.0, 1, 1000.0, 100), at=1100.0)
    r2 = scrape_state(worker_text(10, 1.0, 1, 1050.0, 100), at=1101.0)
    service = merge_states([r1, r2])
    assert service.replicas == 2 and service.qps == 5.0 and service.process_start == 1000.0
    h = health(service)
    assert h.requests == 50 and h.replicas == 2 and h.latency_observations == 50
    # The next scrape of both: the interval figures are the service's.
    r1b = scrape_state(worker_text(70, 4.0, 1, 1000.0, 100), at=1160.0)
    r2b = scrape_state(worker_text(30, 1.0, 1, 1050.0, 100), at=1161.0)
    later = health(merge_states([r1b, r2b]), service)
    assert later.window == "since_last_scrape" and later.requests == 50
    assert later.request_rate == pytest.approx(50 / 60)
    with pytest.raises(ValueError):
        merge_states([])


# ------------------------------------------------------------------------------------------------
# a real two-worker service


def start_two_workers(tmp: Path, lake: Lake, redis_url: str, kafka: str, namespace: str):
    # The namespace's online store is declared complete (what the offline -> online sync commits):
    # without its epoch marker risk-serve is degraded and never ready.
    with OnlineStore.from_url(redis_url, namespace=namespace) as store:
        store.mark_complete()
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("RISK_", "REDIS_", "KAFKA_"))},
        "RISK_SERVE_TOKEN": TOKEN,
        "RISK_LAKE_URL": lake.url,
        "REDIS_URL": redis_url,
        "RISK_REDIS_NAMESPACE": namespace,
        "KAFKA_BOOTSTRAP_SERVERS": kafka,
        "RISK_MODEL_POLL_S": "0.5",
        "RISK_REDIS_PROBE_S": "0.2",
        "RISK_SERVE_METRICS_DIR": str(tmp / "metrics"),
    }
    log = tmp / "serve.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "risk_assets.serving.cli", "--port", str(port), "--workers", "2"],
            cwd=ROOT,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"risk-serve exited {proc.returncode}:\n{log.read_text()}")
        try:
            if Client(port).request("GET", "/readyz")[0] == 200 and len(snapshots(tmp)) == 2:
                return port, proc, log
        except OSError:
            pass
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"risk-serve --workers 2 did not become ready:\n{log.read_text()}")


def snapshots(tmp: Path) -> dict[int, dict[str, float]]:
    """pid -> series of each worker's own snapshot file."""
    out = {}
    for path in (tmp / "metrics").glob("worker-*.json"):
        snap = json.loads(path.read_text())
        out[snap["pid"]] = values(snap["text"])
    return out


def scrape(port: int) -> dict[str, float]:
    status, text = Client(port).request("GET", "/metrics")  # a new connection: any worker may answer
    assert status == 200
    return values(text)


@pytest.mark.timeout(180)
def test_two_workers_every_scrape_reports_the_service(session_stack, tmp_path: Path, key_prefix) -> None:
    lake = Lake(str(tmp_path / "lake"))
    register(lake, train_model(seed=3))
    stack = session_stack
    port, proc, log = start_two_workers(tmp_path, lake, stack.redis_url, stack.kafka, key_prefix)
    try:
        n = 0
        for _conn in range(60):  # many short connections so both workers take some
            c = Client(port)
            for _ in range(4):
                status, body = c.score(event(n=n))
                assert status == 200, body
                n += 1
            c.conn.close()
        time.sleep(1.5)  # every worker has published since its last request
        per_worker = snapshots(tmp_path)
        served = sorted(w.get(SCORED, 0.0) for w in per_worker.values())
        assert len(served) == 2 and served[0] > 0, f"both workers must serve: {served}"
        assert sum(served) == n

        seen = [scrape(port) for _ in range(12)]
        assert {s[SCORED] for s in seen} == {n}, [s[SCORED] for s in seen]
        assert {s[LATENCY_COUNT] for s in seen} == {n}
        assert {s["risk_serve_workers"] for s in seen} == {2}
        text = Client(port).request("GET", "/metrics")[1]
        h = health(scrape_state(text, at=time.time()))
        assert h.requests == n and h.workers == 2 and h.latency_observations == n
        assert not math.isnan(h.latency_ms["p99"])

        # A worker dies: uvicorn starts another; the service's counters do not go back.
        victim = max(per_worker, key=lambda pid: per_worker[pid].get(SCORED, 0.0))
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            live = scrape(port)
            if live["risk_serve_workers"] == 2 and len(snapshots(tmp_path)) == 3:
                break
            time.sleep(0.3)
        else:
            raise AssertionError(f"the killed worker was not replaced:\n{log.read_text()[-2000:]}")
        c = Client(port)
        for _ in range(10):
            assert c.score(event(n=n))[0] == 200
            n += 1
        time.sleep(1.5)
        after = [scrape(port) for _ in range(6)]
        assert {s[SCORED] for s in after} == {n}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
