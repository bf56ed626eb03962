"""The stream path writes tiles (real Redis: stream state + online tiles): complete per tile,
idempotent under replay, and what risk-serve's fetcher finishes at an event's own time equals the
offline v2 engine at that time when every earlier event was ingested first."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import msgspec
import numpy as np
import polars as pl
import pytest

from risk_assets.events.schema import RiskEvent
from risk_assets.features import tiles as T
from risk_assets.features.groups import FEATURE_GROUPS
from risk_assets.features.online_store import OnlineStore
from risk_assets.features.online_tiles import TileStore, finish, tile_layout, write_stream_tiles
from risk_assets.features.spine import compute_at
from risk_assets.features.stream import process_events
from risk_assets.features.stream_state import StreamState, stream_groups
from risk_assets.serving.feature_fetch import FeatureFetcher, RedisBreaker, build_plan
from risk_assets.serving.service_metrics import ServiceMetrics
from risk_assets.simulator.config import SimConfig
from risk_assets.simulator.encoding import encode_events
from risk_assets.simulator.generator import generate

STREAM = stream_groups(FEATURE_GROUPS)
START = datetime(2026, 11, 1, 10, tzinfo=UTC)


@pytest.fixture
def stores(session_stack, key_prefix: str) -> Iterator[tuple[StreamState, OnlineStore]]:
    with (
        StreamState.from_url(session_stack.redis_url, STREAM, namespace=key_prefix) as state,
        OnlineStore.from_url(session_stack.redis_url, namespace=key_prefix) as store,
    ):
        state.mark_complete()
        store.mark_complete()
        yield state, store
        state.delete_all()
        keys = list(store.client.scan_iter(match=f"{key_prefix}*", count=1000))
        if keys:
            store.client.delete(*keys)


@pytest.fixture(scope="module")
def sim() -> pl.DataFrame:
    """2 hours of traffic, in ingest order with Kafka-like offsets (one partition)."""
    cfg = SimConfig(hours=2, events_per_day=100_000, users=1500, start=START)
    events = generate(cfg).events.sort("ingest_ts", "event_id")
    return events.with_columns(
        pl.lit(0, pl.Int32).alias("_partition"), pl.int_range(pl.len(), dtype=pl.Int64).alias("_offset")
    )


def _stream(state: StreamState, store: OnlineStore, batch: pl.DataFrame) -> int:
    tiles: dict[str, pl.DataFrame] = {}
    process_events(batch, None, state, tiles=tiles)
    return write_stream_tiles(store, STREAM, tiles).applied


def test_stream_tiles_equal_batch_tiles_and_replays_write_nothing(stores, sim) -> None:
    state, store = stores
    chunk = 2500
    for i in range(0, sim.height, chunk):
        _stream(state, store, sim.slice(i, chunk))
    # a replay of an early range (sees only what it saw then) and of the last one: nothing applied
    assert _stream(state, store, sim.slice(chunk, chunk)) == 0
    assert _stream(state, store, sim.slice((sim.height - 1) // chunk * chunk, chunk)) == 0
    ts = TileStore(store)
    for group in STREAM:
        layout = tile_layout(group)
        keys = list(group.entity.keys)
        built = T.build_tiles(group, sim)
        hz = pl.DataFrame({"hop_ms": list(layout.horizon_ms), "_hz": list(layout.horizon_ms.values())})
        kept = built.join(hz, on="hop_ms").filter(
            pl.col("tile_start") >= pl.col("tile_start").max().over([*keys, "hop_ms"]) - pl.col("_hz")
        )
        ents = kept.select(keys).unique().sort(keys).head(150)
        got = ts.read([(layout, tuple(r) if len(r) > 1 else r[0]) for r in ents.iter_rows()])
        for ent, tl in zip(ents.iter_rows(), got, strict=True):
            want = kept.filter(*[pl.col(k) == v for k, v in zip(keys, ent, strict=True)])
            assert sorted((r["hop_ms"], r["tile_start"], r["n_events"]) for r in tl) == sorted(
                want.select("hop_ms", "tile_start", "n_events").iter_rows()
            ), (group.name, ent)
        # values at a time after the last event equal the offline v2 engine's
        last = ents.join(
            built.group_by(keys).agg(pl.col("max_ts").max().alias("_t")), on=keys, how="left"
        ).with_columns((pl.col("_t") + 90_000).cast(pl.Datetime("ms", "UTC")).alias("event_ts"))
        offline = compute_at(group, sim, last)
        for row, tl, t in zip(offline.iter_rows(named=True), got, last["_t"] + 90_000, strict=True):
            values, exact = finish(layout, tl, t)
            assert exact
            assert values == [row[f] for f in group.feature_names] or np.allclose(
                [np.nan if v is None else v for v in values],
                [np.nan if row[f] is None else row[f] for f in group.feature_names],
                rtol=1e-9,
                equal_nan=True,
            ), (group.name, row)


def test_events_scored_at_their_own_times_equal_the_offline_v2_values(stores, sim) -> None:
    """A replay in event-time order through the stream path; before each sampled event is ingested,
    risk-serve's fetcher scores it: every stream-group feature equals the offline v2 value at the
    event's time (integers exactly), every read exact."""
    state, store = stores
    events = sim.sort("event_ts", "event_id").with_columns(
        pl.int_range(pl.len(), dtype=pl.Int64).alias("_offset")
    )
    rng = np.random.default_rng(11)
    sample = np.sort(rng.choice(np.arange(200, events.height), size=60, replace=False))
    features = [f"{g.name}__{f}" for g in STREAM for f in g.feature_names if f not in g.helper_feature_names]
    plan = build_plan(features, groups={g.name: g for g in STREAM})
    metrics = ServiceMetrics()
    breaker = RedisBreaker(store, metrics, 1.0)
    assert breaker.probe() and breaker.epoch_ok
    fetcher = FeatureFetcher(store, breaker, metrics)
    decode = msgspec.json.Decoder(RiskEvent).decode
    payloads = encode_events(events)
    ts_ms = events["event_ts"].dt.epoch("ms").to_numpy()
    done = 0
    scored: list[tuple[int, np.ndarray]] = []
    for idx in sample:
        first_same = int(np.searchsorted(ts_ms, ts_ms[idx], side="left"))  # ties are not in the window
        if first_same > done:
            _stream(state, store, events.slice(done, first_same - done))
            done = first_same
        x, degraded = fetcher.matrix([decode(payloads[idx])], plan)
        assert not degraded
        scored.append((int(idx), x[0]))
    assert sum(metrics.feature_inexact.values()) == 0
    spine_rows = events[[i for i, _ in scored]]
    checked = 0
    for g in STREAM:
        offline = compute_at(g, events, spine_rows)
        for (i, vec), row in zip(scored, offline.iter_rows(named=True), strict=True):
            if any(events[i, k] is None for k in g.entity.keys):
                continue
            for f in g.feature_names:
                name = f"{g.name}__{f}"
                if name not in features:
                    continue
                got, want = vec[features.index(name)], row[f]
                if want is None:
                    assert np.isnan(got), (g.name, f, i)
                elif isinstance(want, int):
                    assert got == want, (g.name, f, i, got, want)
                else:
                    assert got == pytest.approx(want, rel=1e-9, abs=1e-9), (g.name, f, i)
                checked += 1
    assert checked > 1000


def test_burst_at_nine_reads_zero_at_two_through_the_stream(stores) -> None:
    """8 failed logins at 09:00 through the stream path: the 10-minute failed-login count is 8 at
    09:05 and 0 at 14:00 (the issue's example), on the served side and the offline side."""
    state, store = stores
    day = datetime(2026, 11, 3, tzinfo=UTC)
    rows = [
        {
            "event_id": f"burst{i}",
            "event_type": "login",
            "schema_version": 1,
            "event_ts": day + timedelta(hours=9, seconds=3 * i),
            "ingest_ts": day + timedelta(hours=9, seconds=3 * i + 1),
            "user_id": "u_burst",
            "device_id": "d_burst",
            "ip": "10.9.9.9",
            "success": False,
            "auth_method": "password",
            "_partition": 0,
            "_offset": i,
        }
        for i in range(8)
    ]
    batch = pl.DataFrame(rows).with_columns(
        pl.col("event_ts", "ingest_ts").cast(pl.Datetime("ms", "UTC")),
        pl.col("_partition").cast(pl.Int32),
        pl.col("schema_version").cast(pl.Int16),
    )
    assert _stream(state, store, batch) > 0
    group = next(g for g in STREAM if g.name == "ato_ip")
    layout = tile_layout(group)
    name = "failed_login_count_10m"
    tiles = TileStore(store).read([(layout, "10.9.9.9")])[0]
    at = {h: int((day + timedelta(hours=h, minutes=m)).timestamp() * 1000) for h, m in ((9, 5), (14, 0))}
    served = {h: finish(layout, tiles, t)[0][group.feature_names.index(name)] for h, t in at.items()}
    spine = pl.DataFrame({"ip": ["10.9.9.9"] * 2, "event_ts": list(at.values())}).with_columns(
        pl.col("event_ts").cast(pl.Datetime("ms", "UTC"))
    )
    offline = compute_at(group, batch, spine)[name].to_list()
    assert served == {9: 8, 14: 0} and offline == [8, 0]
