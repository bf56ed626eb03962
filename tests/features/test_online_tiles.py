"""Online tiles on a real Redis (the session stack's, or the 3-primary cluster): round trip, values
equal to the offline v2 engine, write-if-more-events, bounded state, one round trip per node."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from redis.connection import AbstractConnection

from risk_assets.features import tiles as T
from risk_assets.features.groups import FEATURE_GROUPS, GROUPS_BY_NAME
from risk_assets.features.online_store import SOURCE_BATCH, SOURCE_STREAM, OnlineStore, key_slot
from risk_assets.features.online_tiles import TileStore, finish, tile_layout
from risk_assets.features.spine import compute_at
from risk_assets.simulator.config import SimConfig
from risk_assets.simulator.generator import generate

START = datetime(2026, 8, 1, tzinfo=UTC)
PLAIN = [g for g in FEATURE_GROUPS if not g.needs_labels]


@pytest.fixture(scope="module")
def sim() -> tuple[pl.DataFrame, pl.DataFrame]:
    out = generate(SimConfig(seed=3, start=START, hours=6, users=300, events_per_day=20_000))
    return out.events, out.labels


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def _equal(group, served: list, offline: dict) -> list[str]:
    """Names of the features whose served value differs from the offline one (ints exactly, floats
    to 1e-9 relative)."""
    bad = []
    for name, v in zip(group.feature_names, served, strict=True):
        w = offline[name]
        if v is None or w is None:
            if not (v is None and w is None):
                bad.append(f"{name}: served {v} offline {w}")
            continue
        if isinstance(w, int) and not isinstance(w, bool):
            if v != w:
                bad.append(f"{name}: served {v} offline {w}")
        elif not np.isclose(float(v), float(w), rtol=1e-9, atol=1e-9):
            bad.append(f"{name}: served {v} offline {w}")
    return bad


def _within_horizon(layout, built: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """The tiles the store keeps: per entity and hop, those not older than the hop's horizon behind
    the newest tile (computed here independently of the Lua script)."""
    hz = pl.DataFrame({"hop_ms": list(layout.horizon_ms), "_hz": list(layout.horizon_ms.values())})
    return (
        built.join(hz, on="hop_ms")
        .filter(pl.col("tile_start") >= pl.col("tile_start").max().over([*keys, "hop_ms"]) - pl.col("_hz"))
        .drop("_hz")
    )


def test_tiles_round_trip_and_finish_to_the_offline_v2_values(session_stack, key_prefix, sim) -> None:
    """Every group's tiles written to Redis (older than the horizon: dropped) and read back give, at
    query times at or after the entity's last event (up to a day and more later), exactly the
    offline v2 engine's values, every read exact."""
    events, labels = sim
    rng = np.random.default_rng(7)
    with OnlineStore.from_url(session_stack.redis_url, namespace=key_prefix) as store:
        ts = TileStore(store)
        for group in FEATURE_GROUPS:
            layout = tile_layout(group)
            lab = labels if group.needs_labels else None
            built = T.build_tiles(group, events, lab)
            assert built.height > 0, group.name
            keys = list(group.entity.keys)
            res = ts.write(layout, built, source=SOURCE_BATCH)
            kept = _within_horizon(layout, built, keys)
            assert (res.tiles, res.applied) == (built.height, kept.height), group.name
            ents = built.group_by(keys).agg(pl.col("max_ts").max().alias("_last")).sort(keys).head(40)
            offsets = rng.integers(1, 30 * 3600 * 1000, size=ents.height)
            offsets[:5] = [1, 60_000, 600_000, 3_600_000, 86_400_000][:5]
            qs = (ents["_last"].to_numpy() + offsets).tolist()
            spine = ents.select(keys).with_columns(
                pl.Series("event_ts", qs, dtype=pl.Int64).cast(pl.Datetime("ms", "UTC"))
            )
            offline = compute_at(group, events, spine, lab)
            got = ts.read([(layout, tuple(r) if len(r) > 1 else r[0]) for r in ents.select(keys).iter_rows()])
            for row, tl, q in zip(offline.iter_rows(named=True), got, qs, strict=True):
                values, is_exact = finish(layout, tl, q)
                assert is_exact, (group.name, q)
                assert _equal(group, values, row) == [], (group.name, row)


def test_write_if_more_events_and_ties(session_stack, key_prefix, sim) -> None:
    """A tile with more events replaces, fewer is skipped; on equal counts a batch tile replaces
    and a stream tile is skipped, so replays and the sync never double count."""
    events, _ = sim
    group = GROUPS_BY_NAME["ato_ip"]
    layout = tile_layout(group)
    full = T.build_tiles(group, events)
    ip = full.group_by("ip").agg(pl.col("n_events").sum()).sort("n_events", descending=True)["ip"][0]
    mine = events.filter(pl.col("ip") == ip).sort("event_ts")
    mine = mine.filter(pl.col("event_ts") >= mine["event_ts"].max() - timedelta(minutes=50))  # in horizon
    assert mine.height >= 4
    half = T.build_tiles(group, mine.head(mine.height // 2))
    whole = T.build_tiles(group, mine)
    with OnlineStore.from_url(session_stack.redis_url, namespace=key_prefix) as store:
        ts = TileStore(store)
        first = ts.write(layout, whole, source=SOURCE_STREAM)
        assert first.applied == whole.height
        again = ts.write(layout, whole, source=SOURCE_STREAM)  # a replay
        assert (again.applied, again.skipped) == (0, whole.height)
        older = ts.write(layout, half, source=SOURCE_BATCH)  # fewer events: never goes back
        changed = half.join(whole, on=["ip", "hop_ms", "tile_start", "n_events"], how="anti").height
        assert older.applied == half.height - changed
        tie = ts.write(layout, whole, source=SOURCE_BATCH)  # equal counts: batch wins
        assert tie.applied == whole.height
        stored = ts.read([(layout, ip)])[0]
        assert {r["source"] for r in stored} == {SOURCE_BATCH}
        assert sorted((r["hop_ms"], r["tile_start"], r["n_events"]) for r in stored) == sorted(
            whole.select("hop_ms", "tile_start", "n_events").iter_rows()
        )


def test_state_is_bounded_by_the_horizon_and_the_burst_reads_zero(session_stack, key_prefix) -> None:
    """Tiles older than the hop's horizon behind the newest tile are dropped on write (and never
    written); 8 failed logins at 09:00 read 0 in the 10-minute count at 14:00 and 8 at 09:05."""
    group = GROUPS_BY_NAME["ato_ip"]
    layout = tile_layout(group)
    day = datetime(2026, 8, 3, tzinfo=UTC)
    burst = [day + timedelta(hours=9, seconds=5 * i) for i in range(8)]
    later = [day + timedelta(hours=14, minutes=30)]
    early = [day - timedelta(days=3)]  # beyond every horizon of the group (1 h and 25 h)

    def frame(times: list[datetime], start: int) -> pl.DataFrame:
        n = len(times)
        return pl.DataFrame(
            {
                "event_id": [f"e{start + i}" for i in range(n)],
                "event_type": ["login"] * n,
                "event_ts": pl.Series(times, dtype=pl.Datetime("ms", "UTC")),
                "ip": ["10.0.0.1"] * n,
                "user_id": [f"u{i % 3}" for i in range(n)],
                "device_id": ["d1"] * n,
                "success": [False] * n,
            }
        )

    with OnlineStore.from_url(session_stack.redis_url, namespace=key_prefix) as store:
        ts = TileStore(store)
        ts.write(layout, T.build_tiles(group, frame(early, 0)))
        ts.write(layout, T.build_tiles(group, frame(burst, 10)))
        stored = ts.read([(layout, "10.0.0.1")])[0]
        assert min(r["tile_start"] for r in stored) >= _ms(day)  # the 3-day-old tiles were dropped
        assert len(stored) <= layout.max_tiles
        count_10m = next(f.name for f in group.features if getattr(f, "kind", "") == "count"
                         and f.window == timedelta(minutes=10))  # fmt: skip
        i10 = group.feature_names.index(count_10m)
        at_0905, exact = finish(layout, stored, _ms(day + timedelta(hours=9, minutes=5)))
        assert exact and at_0905[i10] == 8
        at_1400, exact = finish(layout, stored, _ms(day + timedelta(hours=14)))
        assert exact and at_1400[i10] == 0
        before = ts.state_bytes(layout, ["10.0.0.1"])[0]
        assert before > 0
        ts.write(layout, T.build_tiles(group, frame(later, 30)))
        stored = ts.read([(layout, "10.0.0.1")])[0]
        minute_tiles = [r for r in stored if r["hop_ms"] == 60_000]
        assert [r["tile_start"] for r in minute_tiles] == [_ms(later[0])]  # 09:00 minutes beyond 1 h
        assert ts.state_bytes(layout, ["nobody"]) == [0]
        ttl = store.client.pttl(ts.key(layout, "10.0.0.1"))
        assert 0 < ttl <= layout.ttl_ms


def test_async_read_equals_sync_read(session_stack, key_prefix, sim) -> None:
    """risk-serve's read (redis.asyncio, one pipeline) returns what the blocking read returns."""
    events, _ = sim
    reqs = []
    with OnlineStore.from_url(session_stack.redis_url, namespace=key_prefix) as store:
        ts = TileStore(store)
        for group in PLAIN[:3]:
            layout = tile_layout(group)
            built = T.build_tiles(group, events)
            ts.write(layout, built)
            for r in built.select(list(group.entity.keys)).unique().head(5).iter_rows():
                reqs.append((layout, r if len(r) > 1 else r[0]))
        reqs.append((tile_layout(PLAIN[0]), "nobody"))

        async def both() -> list:
            try:
                return await ts.read_async(reqs)
            finally:
                await store.aclose()

        got = asyncio.run(both())
        want = ts.read(reqs)
    assert got == want and got[-1] == [] and all(got[:-1])


def test_cluster_read_is_one_round_trip_per_node(cluster_stack, key_prefix, sim, monkeypatch) -> None:
    """On a 3-primary cluster the tiles of entities on every primary come back in one pipelined
    request per node, equal to what was written."""
    events, _ = sim
    group = GROUPS_BY_NAME["ato_user"]
    layout = tile_layout(group)
    built = T.build_tiles(group, events)
    users = built["user_id"].unique().sort().head(60).to_list()
    with OnlineStore.from_url(cluster_stack.redis_url, namespace=key_prefix) as store:
        ts = TileStore(store)
        built = _within_horizon(layout, built.filter(pl.col("user_id").is_in(users)), ["user_id"])
        res = ts.write(layout, built)
        assert res.applied == res.tiles
        owners = {
            store.client.nodes_manager.get_node_from_slot(key_slot(ts.key(layout, u))).port for u in users
        }
        assert len(owners) == 3
        sent: list[int] = []
        original = AbstractConnection.send_packed_command

        def counting(conn: AbstractConnection, command: object, check_health: bool = True) -> None:
            packed = b"".join(bytes(c) for c in command) if isinstance(command, list) else bytes(command)
            if b"HGETALL" in packed:
                sent.append(conn.port)
            original(conn, command, check_health)

        monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
        got = ts.read([(layout, u) for u in users])
        monkeypatch.undo()
    assert sorted(sent) == sorted(owners)
    for u, tl in zip(users, got, strict=True):
        want = built.filter(pl.col("user_id") == u)
        assert sorted((r["hop_ms"], r["tile_start"], r["n_events"]) for r in tl) == sorted(
            want.select("hop_ms", "tile_start", "n_events").iter_rows()
        )


def test_async_pipe_selects_the_urls_database(session_stack, key_prefix, sim) -> None:
    """The lean asyncio pipe honours the URL's database (``SELECT``), as the blocking client does."""
    events, _ = sim
    group = GROUPS_BY_NAME["ato_ip"]
    layout = tile_layout(group)
    url = session_stack.redis_url.rsplit("/", 1)[0] + "/3"
    with OnlineStore.from_url(url, namespace=key_prefix) as store:
        ts = TileStore(store)
        ts.write(layout, T.build_tiles(group, events))
        ips = events["ip"].unique().sort().head(5).to_list()

        async def read() -> list:
            try:
                return await ts.read_async([(layout, ip) for ip in ips])
            finally:
                await store.aclose()

        got = asyncio.run(read())
        assert got == ts.read([(layout, ip) for ip in ips]) and all(got)
        with OnlineStore.from_url(session_stack.redis_url, namespace=key_prefix) as db0:
            assert TileStore(db0).read([(layout, ips[0])]) == [[]]  # nothing landed in database 0
        store.client.delete(*[ts.key(layout, ip) for ip in events["ip"].unique().to_list()])
