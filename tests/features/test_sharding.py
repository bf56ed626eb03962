"""Entity-hash shards: sharded batch features are the unsharded frames, bit for bit; a shard reads
only its own rows from the archive."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from risk_assets.features.batch import compute_feature_groups
from risk_assets.features.groups import FEATURE_GROUPS
from risk_assets.features.sharding import (
    compute_feature_groups_sharded,
    groups_by_keys,
    iter_sharded,
    shard_expr,
    shards_for,
)
from risk_assets.features.spec import LabelAggregate
from risk_assets.ingest.raw_reader import scan_events
from risk_assets.lake import Lake
from risk_assets.simulator.config import SimConfig
from risk_assets.simulator.generator import generate
from risk_assets.simulator.writers import write_history

START = datetime(2026, 5, 1, tzinfo=UTC)
SIM = SimConfig(seed=11, start=START, hours=24 * 4, events_per_day=8_000, users=800)
FIRST, END = START + timedelta(days=1), START + timedelta(days=4)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[pl.DataFrame, pl.DataFrame, str]:
    d = generate(SIM)
    path = str(tmp_path_factory.mktemp("events") / "events.parquet")
    d.events.write_parquet(path)
    return d.events, d.labels, path


@pytest.fixture(scope="module")
def unsharded(data) -> dict[str, pl.DataFrame]:
    events, labels, _ = data
    return compute_feature_groups(FEATURE_GROUPS, events, FIRST, END, labels)


@pytest.mark.parametrize("shards", [1, 3, 8])
def test_sharded_frames_equal_the_unsharded_ones_for_every_group(data, unsharded, shards):
    """Every exchange group (all entity key sets, label aggregates included) over three days read
    from a Parquet scan: the sharded frames equal the single-pass frames exactly (``equals``
    compares values bit for bit and the row order)."""
    _, labels, path = data
    got = compute_feature_groups_sharded(FEATURE_GROUPS, pl.scan_parquet(path), FIRST, END, labels, shards)
    assert set(got) == set(unsharded)
    for g in FEATURE_GROUPS:
        assert unsharded[g.name].height > 0, g.name
        assert got[g.name].equals(unsharded[g.name]), (g.name, shards)
    labelled = [(g.name, f.name) for g in FEATURE_GROUPS for f in g.features if isinstance(f, LabelAggregate)]
    assert labelled, "the starter set has label aggregates"
    # The label aggregates are not trivially zero/empty, so their equality means something.
    assert any(got[gn][fn].fill_null(0).sum() > 0 for gn, fn in labelled)


def test_float_window_sums_depend_on_the_entity_alone(data):
    """One entity computed with every other entity on the time line and alone: the same bits.
    (Before per-entity prefix sums, the global long-double cumsum carried other entities' rounding
    into the last digit of ``sum``/``mean`` features.)"""
    events, labels, _ = data
    group = next(g for g in FEATURE_GROUPS if g.name == "ato_user")
    busiest = events.group_by("user_id").len().sort(["len", "user_id"], descending=True)["user_id"].head(25)
    together = compute_feature_groups([group], events, FIRST, END, labels)[group.name]
    floats = [c for c, dt in group.schema().items() if dt == pl.Float64]
    assert floats
    for user in busiest:
        alone = compute_feature_groups([group], events.filter(pl.col("user_id") == user), FIRST, END, labels)[
            group.name
        ]
        assert alone.height > 0
        assert alone.equals(together.filter(pl.col("user_id") == user)), user


def test_shards_partition_the_rows_and_are_pushed_into_the_archive_scan(tmp_path):
    """Through ``raw_reader.scan_events``: the shards of a key set are disjoint, together they are
    every event, and each is a fair fraction; the predicate sits in the Parquet scan."""
    lake = Lake(str(tmp_path / "lake"))
    cfg = SimConfig(seed=3, start=START, hours=24, events_per_day=6_000, users=600)
    write_history(cfg, lake)
    whole = scan_events(lake, cfg.start, cfg.end, ["event_id", "user_id"]).collect()
    n = 4
    parts = [
        scan_events(lake, cfg.start, cfg.end, ["event_id", "user_id"], shard_expr(["user_id"], n) == i)
        for i in range(n)
    ]
    assert "SELECTION" in parts[0].explain() or "selection" in parts[0].explain().lower()
    frames = [p.collect() for p in parts]
    ids = [set(f["event_id"]) for f in frames]
    assert sum(len(s) for s in ids) == whole.height == len(set().union(*ids))
    users = [set(f["user_id"].drop_nulls()) for f in frames]
    assert all(not (users[i] & users[j]) for i in range(n) for j in range(i + 1, n))
    assert all(whole.height / n / 2 < f.height < whole.height / n * 2 for f in frames)


def test_groups_with_different_keys_shard_separately(data):
    """Each key set reads its own shards: N reads per key set, each with the shard's event count."""
    events, labels, _ = data
    reads: list[tuple[tuple[str, ...], int, int]] = []
    lf = events.lazy()
    out = dict(
        iter_sharded(
            FEATURE_GROUPS,
            lambda p: lf if p is None else lf.filter(p),
            FIRST,
            END,
            shards=2,
            labels=labels,
            on_shard=lambda k, i, rows: reads.append((k, i, rows)),
        )
    )
    key_sets = groups_by_keys(FEATURE_GROUPS)
    assert len(key_sets) > 1
    assert [(k, i) for k, i, _ in reads] == [(k, i) for k in key_sets for i in range(2)]
    for k, gs in key_sets.items():
        # Each key set's shards together read exactly its usable events: non-null keys, its types.
        types = {t for g in gs for t in g.source_event_types}
        usable = events.filter(pl.col("event_type").is_in(types), *[pl.col(c).is_not_null() for c in k])
        assert sum(r for kk, _, r in reads if kk == k) == usable.height, k
    assert min(sum(r for kk, _, r in reads if kk == k) for k in key_sets) < events.height / 2
    assert {g.name for g in out} == {g.name for g in FEATURE_GROUPS}


def test_shard_count_from_a_row_cap():
    assert shards_for(1_000, 0) == 1
    assert shards_for(1_000, 1_000) == 1
    assert shards_for(1_001, 1_000) == 2
    assert shards_for(30_000_000, 4_000_000) == 8
    with pytest.raises(ValueError):
        shards_for(10, -1)
    with pytest.raises(ValueError):
        shard_expr(["user_id"], 0)
