"""End-to-end proof of feature semantics v2 online: simulated traffic replayed in event-time order
through the real stream path (stream state + tiles in Redis) and scored by the real ``risk-serve``
process at each event's own time, before the event is ingested. The vectors the service logged to
``risk.predictions`` equal the offline v2 engine's values at those times for every stream-group
feature (integers exactly), every read exact; and a burst at 09:00 scored at 14:00 reads 0."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from risk_assets.features.groups import FEATURE_GROUPS
from risk_assets.features.online_store import OnlineStore
from risk_assets.features.online_tiles import write_stream_tiles
from risk_assets.features.spine import compute_at
from risk_assets.features.stream import process_events
from risk_assets.features.stream_state import StreamState, stream_groups
from risk_assets.lake import Lake
from risk_assets.simulator.config import SimConfig
from risk_assets.simulator.encoding import encode_events
from risk_assets.simulator.generator import generate
from tests.serving.test_serving import (
    FEATURES,
    read_predictions,
    register,
    start_service,
    stop_service,
    train_model,
    wait_for,
)

STREAM = stream_groups(FEATURE_GROUPS)
START = datetime(2026, 11, 2, 8, tzinfo=UTC)


def _scored(client, event: dict) -> dict | None:
    status, body = client.score(event)
    assert status == 200, body
    return None if body["degraded"] else body


def test_replayed_day_scored_by_risk_serve_equals_offline_v2(session_stack, tmp_path: Path, key_prefix: str):
    sim = generate(SimConfig(seed=21, hours=2, events_per_day=60_000, users=800, start=START)).events
    burst = pl.DataFrame(
        {
            "event_id": [f"ev_burst_{i}" for i in range(8)],
            "event_type": ["login"] * 8,
            "schema_version": [1] * 8,
            "event_ts": [START + timedelta(hours=1, seconds=3 * i) for i in range(8)],
            "user_id": ["u_burst"] * 8,
            "device_id": ["d_burst"] * 8,
            "ip": ["10.77.0.1"] * 8,
            "ip_country": ["DE"] * 8,
            "ip_asn": [3320] * 8,
            "success": [False] * 8,
            "auth_method": ["password"] * 8,
        }
    )
    events = pl.concat(
        [sim, burst.with_columns(pl.col("schema_version").cast(pl.Int16))], how="diagonal_relaxed"
    ).with_columns(
        pl.col("event_ts").cast(pl.Datetime("ms", "UTC")),
        pl.col("event_ts").cast(pl.Datetime("ms", "UTC")).alias("ingest_ts"),
    )
    events = events.sort("event_ts", "event_id").with_columns(
        pl.lit(0, pl.Int32).alias("_partition"), pl.int_range(pl.len(), dtype=pl.Int64).alias("_offset")
    )
    probe = events.filter(pl.col("event_id") == "ev_burst_0").with_columns(
        pl.lit("ev_probe_1400").alias("event_id"),
        (pl.col("event_ts") + timedelta(hours=5)).alias("event_ts"),
        pl.lit(True).alias("success"),
    )
    rng = np.random.default_rng(5)
    sample = set(rng.choice(np.arange(100, events.height), size=40, replace=False).tolist())
    payload = {
        e["event_id"]: e
        for e in map(json.loads, encode_events(pl.concat([events, probe], how="diagonal_relaxed")))
    }

    lake = Lake(str(tmp_path / "lake"))
    register(lake, train_model(seed=1))
    svc = start_service(
        tmp_path, lake, session_stack.redis_url, session_stack.kafka, key_prefix, RISK_REDIS_TIMEOUT_MS="500"
    )
    scored: list[str] = []
    try:
        client = svc.client()
        wait_for(lambda: client.request("GET", "/readyz")[0] == 200, what="readyz")
        with (
            StreamState.from_url(session_stack.redis_url, STREAM, namespace=key_prefix) as state,
            OnlineStore.from_url(session_stack.redis_url, namespace=key_prefix) as store,
        ):
            state.mark_complete()
            ts_ms = events["event_ts"].dt.epoch("ms").to_numpy()
            done = 0

            def ingest_until(stop: int) -> None:
                nonlocal done
                if stop > done:
                    tiles: dict[str, pl.DataFrame] = {}
                    process_events(events.slice(done, stop - done), None, state, tiles=tiles)
                    write_stream_tiles(store, STREAM, tiles)
                    done = stop

            for idx in sorted(sample):
                ingest_until(int(np.searchsorted(ts_ms, ts_ms[idx], side="left")))  # ties excluded
                eid = events["event_id"][idx]
                # a loaded box can time out a probe: score again once the breaker closed (the
                # state is unchanged, the last logged record of an event id is compared)
                body = wait_for(
                    lambda eid=eid: _scored(client, payload[eid]), timeout=20, what="not degraded"
                )
                scored.append(eid)
            ingest_until(events.height)  # the rest of the day, the burst included
            status, body = client.score(payload["ev_probe_1400"])
            assert status == 200, body
            scored.append("ev_probe_1400")
            state.delete_all()
        m = client.metrics()
        assert sum(v for k, v in m.items() if k.startswith("risk_serve_feature_inexact_reads_total")) == 0
        wait_for(lambda: client.metrics()["risk_serve_prediction_log_sent_total"] >= len(scored), what="log")
    finally:
        stop_service(svc)
    logged = {r["event_id"]: r for r in read_predictions(session_stack.kafka) if r["event_id"] in set(scored)}
    assert set(logged) == set(scored)

    everything = pl.concat([events, probe], how="diagonal_relaxed")
    rows = everything.filter(pl.col("event_id").is_in(scored)).sort("event_id")
    offline_events = events  # the probe is scored, never ingested
    checked = ints = 0
    for g in STREAM:
        offline = compute_at(g, offline_events, rows)
        for ev_id, row in zip(rows["event_id"], offline.iter_rows(named=True), strict=True):
            if any(row[k] is None for k in g.entity.keys):
                continue
            values = logged[ev_id]["values"]
            for f in g.feature_names:
                name = f"{g.name}__{f}"
                if name not in FEATURES:
                    continue
                got, want = values[FEATURES.index(name)], row[f]
                if want is None:
                    assert got is None, (ev_id, name, got)
                elif isinstance(want, int):
                    assert got == want, (ev_id, name, got, want)
                    ints += 1
                else:
                    assert abs(got - want) <= 1e-9 * max(1.0, abs(want)), (ev_id, name, got, want)
                checked += 1
    assert ints > 500 and checked > ints
    probe_values = logged["ev_probe_1400"]["values"]
    assert probe_values[FEATURES.index("ato_ip__failed_login_count_10m")] == 0
    ato_ip = next(g for g in STREAM if g.name == "ato_ip")
    at_nine = compute_at(
        ato_ip,
        offline_events,
        probe.with_columns(pl.col("event_ts") - timedelta(hours=5) + timedelta(minutes=1)),
    )
    assert at_nine["failed_login_count_10m"].to_list() == [8]
