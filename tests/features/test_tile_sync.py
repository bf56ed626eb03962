"""The sync ships tiles built from the raw archive (real Redis, a lake on disk): values equal the
offline v2 engine, a second tick ships nothing, a rewritten hour rebuilds only its day."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from risk_assets.features import tiles as T
from risk_assets.features.groups import FEATURE_GROUPS, GROUPS_BY_NAME
from risk_assets.features.online_audit import audit_tiles
from risk_assets.features.online_store import OnlineStore
from risk_assets.features.online_sync import SyncState, sync
from risk_assets.features.online_tiles import TileStore, finish, tile_layout
from risk_assets.features.spine import compute_at
from risk_assets.features.tile_sync import archive_end, sync_tiles
from risk_assets.ingest.archive import EVENTS, LABELS
from risk_assets.ingest.archive_format import archive_part_path, to_archive_frame
from risk_assets.lake import Lake
from risk_assets.simulator.config import SimConfig
from risk_assets.simulator.generator import generate

START = datetime(2026, 8, 1, tzinfo=UTC)
NOW = START + timedelta(days=2)


def _write_hours(lake: Lake, frame: pl.DataFrame, dataset: str) -> None:
    hours = frame.with_columns(pl.col("ingest_ts").dt.truncate("1h").alias("_h"))
    for (hour,), part in hours.group_by("_h"):
        lake.write_parquet(to_archive_frame(part.drop("_h"), dataset), archive_part_path(dataset, hour))


@pytest.fixture
def archived(tmp_path) -> tuple[Lake, pl.DataFrame, pl.DataFrame]:
    out = generate(SimConfig(seed=4, start=START, hours=5, users=400, events_per_day=24_000))
    lake = Lake(str(tmp_path / "lake"))
    _write_hours(lake, out.events, EVENTS.dataset)
    _write_hours(lake, out.labels, LABELS.dataset)
    return lake, out.events, out.labels


def test_the_sync_ships_tiles_equal_to_the_offline_values_once(archived, session_stack, key_prefix) -> None:
    lake, events, labels = archived
    with OnlineStore.from_url(session_stack.redis_url, namespace=key_prefix) as store:
        first, shipped = sync_tiles(lake, store, FEATURE_GROUPS, {}, now=NOW)
        assert first.applied > 0 and all(d for d in first.days.values())
        assert {d for days in first.days.values() for d in days} >= {"2026-08-01"}
        again, more = sync_tiles(lake, store, FEATURE_GROUPS, shipped)  # now: the archive's end
        assert (again.tiles, more) == (0, {})
        end = archive_end(lake, FEATURE_GROUPS)  # archive days are arrival days: late events land later
        assert end is not None and START + timedelta(days=1) <= end <= events["ingest_ts"].max() + timedelta(
            days=1
        )
        ts = TileStore(store)
        rng = np.random.default_rng(2)
        for group in FEATURE_GROUPS:
            layout = tile_layout(group)
            keys = list(group.entity.keys)
            lab = labels if group.needs_labels else None
            last = (
                T.build_tiles(group, events, lab)
                .group_by(keys)
                .agg(pl.col("max_ts").max())
                .sort(keys)
                .head(30)
            )
            q = last["max_ts"].to_numpy() + rng.integers(1, 20 * 3600 * 1000, size=last.height)
            spine = last.select(keys).with_columns(pl.Series("event_ts", q).cast(pl.Datetime("ms", "UTC")))
            offline = compute_at(group, events, spine, lab)
            got = ts.read([(layout, tuple(r) if len(r) > 1 else r[0]) for r in last.select(keys).iter_rows()])
            for row, tl, t in zip(offline.iter_rows(named=True), got, q.tolist(), strict=True):
                values, exact = finish(layout, tl, t)
                assert exact
                for f, v in zip(group.feature_names, values, strict=True):
                    w = row[f]
                    assert (v is None) == (w is None), (group.name, f)
                    if isinstance(w, int):
                        assert v == w, (group.name, f, v, w)
                    elif w is not None:
                        assert v == pytest.approx(w, rel=1e-9, abs=1e-9), (group.name, f)

        # a rewritten hour (a late event arrived in it): only its day is rebuilt, the new tile wins
        hour = events["ingest_ts"].min().replace(minute=0, second=0, microsecond=0)
        part = events.filter(pl.col("ingest_ts").dt.truncate("1h") == hour)
        late = part.head(1).with_columns(
            pl.lit("ev_late_one").alias("event_id"),
            (pl.col("event_ts") + timedelta(seconds=1)).alias("event_ts"),
        )
        _write_hours(lake, pl.concat([part, late]), EVENTS.dataset)
        third, _ = sync_tiles(lake, store, FEATURE_GROUPS, shipped, now=NOW)
        assert {d for days in third.days.values() for d in days} == {"2026-08-01"}
        assert third.applied > 0


def test_sync_tick_records_the_tile_watermark(archived, session_stack, key_prefix) -> None:
    """``online_sync.sync`` ships tiles too and records their archive tokens with the epoch."""
    lake, _, _ = archived
    with OnlineStore.from_url(session_stack.redis_url, namespace=key_prefix) as store:
        res = sync(lake, store, FEATURE_GROUPS, now=NOW)
        assert res.full_resync and res.tiles.applied > 0
        state = SyncState.load(lake)
        assert state.tiles and state.epoch == store.epoch()
        res2 = sync(lake, store, FEATURE_GROUPS, now=NOW)
        assert not res2.full_resync and res2.tiles.tiles == 0


def test_the_audit_compares_served_values_at_t_with_the_offline_v2_values(
    archived, session_stack, key_prefix
) -> None:
    """After the sync the served values at t equal the offline v2 values at t; tiles of one group
    deleted from Redis (an emptied node) show up as mismatches of that group only."""
    lake, events, _ = archived
    t = events["event_ts"].max() + timedelta(minutes=3)
    with OnlineStore.from_url(session_stack.redis_url, namespace=key_prefix) as store:
        sync_tiles(lake, store, FEATURE_GROUPS, {}, now=NOW)
        clean = audit_tiles(lake, store, list(FEATURE_GROUPS), now=t, sample_per_group=50)
        assert sum(clean.sampled.values()) > 200
        assert clean.mismatch_rate == 0.0 and sum(clean.inexact.values()) == 0
        victim = tile_layout(GROUPS_BY_NAME["ato_ip"])
        ts = TileStore(store)
        for ip in events["ip"].unique().to_list():
            store.client.delete(ts.key(victim, ip))
        broken = audit_tiles(lake, store, list(FEATURE_GROUPS), now=t, sample_per_group=50)
        assert broken.mismatched["ato_ip"] > 0
        assert {g for g, n in broken.mismatched.items() if n} == {"ato_ip"}
