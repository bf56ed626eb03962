"""Batch feature assets: offline store contents, idempotent days, single-run backfills, Snowflake."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import dagster as dg
import polars as pl
import pytest

from risk_assets.features.batch import compute_feature_groups
from risk_assets.features.groups import FEATURE_GROUPS
from risk_assets.features.offline_store import day_part_path, read_offline
from risk_assets.features.sharding import shards_for
from risk_assets.ingest.raw_reader import read_events
from risk_assets.lake import Lake
from risk_assets.names import (
    FEATURE_ROWS_CHECK,
    FEATURE_SCHEMA_CHECK,
    ROW_COUNT,
    SNOWFLAKE_RAW_EVENTS,
    SNOWFLAKE_RAW_LABELS,
    feature_asset_key,
)
from risk_assets.resources import LakeResource, RawEventSource
from risk_assets.simulator.config import SimConfig
from risk_assets.simulator.generator import generate
from risk_assets.simulator.writers import write_history
from tests.conftest import asset_def, fakesnow_server

batch_features = asset_def(feature_asset_key(FEATURE_GROUPS[0].name))
snowflake_raw_events = asset_def(SNOWFLAKE_RAW_EVENTS)
snowflake_raw_labels = asset_def(SNOWFLAKE_RAW_LABELS)

START = datetime(2026, 5, 1, tzinfo=UTC)
DAYS = 8
SIM = SimConfig(seed=5, start=START, hours=24 * DAYS, events_per_day=15_000, users=1_500)
FMT = "%Y-%m-%d"


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> tuple[Lake, pl.DataFrame, pl.DataFrame]:
    """Eight days of history written straight into the archive: the broker never saw them."""
    lake = Lake(str(tmp_path_factory.mktemp("lake")))
    write_history(SIM, lake)
    data = generate(SIM)
    return lake, data.events, data.labels


def run_days(lake: Lake, first: datetime, last: datetime, source: RawEventSource | None = None, **kw):
    return dg.materialize(
        [batch_features],
        resources={"lake": LakeResource(url=lake.url), "raw_event_source": source or RawEventSource()},
        tags={
            "dagster/asset_partition_range_start": first.strftime(FMT),
            "dagster/asset_partition_range_end": last.strftime(FMT),
        },
        **kw,
    )


def test_seven_day_backfill_is_one_run_and_matches_the_pure_computation(archive):
    lake, events, labels = archive
    first, last = START + timedelta(days=1), START + timedelta(days=7)
    result = run_days(lake, first, last)
    assert result.success
    # One run for the whole range (BackfillPolicy.single_run semantics: one step, all days).
    mats = result.asset_materializations_for_node("batch_features")
    assert {m.asset_key for m in mats} == {feature_asset_key(g.name) for g in FEATURE_GROUPS}

    end = last + timedelta(days=1)
    expected = compute_feature_groups(FEATURE_GROUPS, events, first, end, labels)
    for group in FEATURE_GROUPS:
        stored = read_offline(lake, group, first, end).collect().sort([*group.entity.keys, "event_ts"])
        assert stored.height == expected[group.name].height > 0, group.name
        assert stored.drop("created_ts").equals(expected[group.name]), group.name
        assert stored["created_ts"].null_count() == 0
        assert (stored["created_ts"] >= stored["event_ts"]).all()
        for d in range(7):
            assert lake.exists(day_part_path(group, first + timedelta(days=d)))


def test_a_ranged_backfill_records_each_days_own_figures_and_checks(archive):
    """One run for three days; the instance's event log holds one materialization per day with that
    day's own row count (not the range's), and the checks ran once per group."""
    lake, _, _ = archive
    first, last = START + timedelta(days=2), START + timedelta(days=4)
    instance = dg.DagsterInstance.ephemeral()
    assert run_days(lake, first, last, instance=instance).success
    group = FEATURE_GROUPS[0]
    records = instance.fetch_materializations(feature_asset_key(group.name), limit=10).records
    by_day = {r.asset_materialization.partition: r.asset_materialization.metadata for r in records}
    assert sorted(by_day) == [(first + timedelta(days=d)).strftime(FMT) for d in range(3)]
    counts = {day: meta[ROW_COUNT].value for day, meta in by_day.items()}
    for day, n in counts.items():
        stored = pl.read_parquet(lake.read_bytes(day_part_path(group, datetime.strptime(day, FMT))))
        assert n == stored.height > 0, day
        assert by_day[day]["entities"].value == stored.select(group.entity.keys).n_unique()
    assert len(set(counts.values())) == 3, counts
    checks = {
        (e.asset_key, e.check_name): e.passed
        for e in (
            ev.dagster_event.event_specific_data
            for ev in instance.all_logs(records[0].run_id)
            if ev.dagster_event and ev.dagster_event.event_type_value == "ASSET_CHECK_EVALUATION"
        )
    }
    for g in FEATURE_GROUPS:
        key = feature_asset_key(g.name)
        assert checks[(key, FEATURE_ROWS_CHECK)] is True
        assert checks[(key, FEATURE_SCHEMA_CHECK)] is True


def test_an_empty_day_fails_the_blocking_rows_check(tmp_path):
    """Days without archived events: the run writes empty days, and the blocking check fails."""
    lake = Lake(str(tmp_path / "empty_lake"))
    day = START + timedelta(days=40)
    result = run_days(lake, day, day, raise_on_error=False)
    evaluations = [e for e in result.get_asset_check_evaluations() if e.check_name == FEATURE_ROWS_CHECK]
    assert evaluations and not any(e.passed for e in evaluations)
    assert all(e.description and day.strftime(FMT) in e.description for e in evaluations)


def test_rematerializing_a_day_gives_the_same_bytes(archive):
    lake, _, _ = archive
    day = START + timedelta(days=3)
    assert run_days(lake, day, day).success
    digest = {
        g.name: hashlib.sha256(lake.read_bytes(day_part_path(g, day))).hexdigest() for g in FEATURE_GROUPS
    }
    assert run_days(lake, day, day).success
    again = {
        g.name: hashlib.sha256(lake.read_bytes(day_part_path(g, day))).hexdigest() for g in FEATURE_GROUPS
    }
    assert again == digest


def _digests(lake: Lake, days: list[datetime]) -> dict[tuple[str, str], str]:
    return {
        (g.name, f"{d:%Y-%m-%d}"): hashlib.sha256(lake.read_bytes(day_part_path(g, d))).hexdigest()
        for g in FEATURE_GROUPS
        for d in days
    }


def test_sharded_runs_write_the_same_bytes_as_one_shard(archive):
    """A three-day run in 1 shard (today's single scan), 4 shards, and shards derived from a row cap:
    every group's every day has the same bytes; the run records its shard count."""
    lake, _, _ = archive
    first, last = START + timedelta(days=4), START + timedelta(days=6)
    days = [first + timedelta(days=d) for d in range(3)]
    one = run_days(lake, first, last)
    assert one.success
    reference = _digests(lake, days)
    for config, shards in (({"shards": 4}, 4), ({"max_rows_in_memory": 30_000}, None)):
        result = run_days(lake, first, last, run_config={"ops": {"batch_features": {"config": config}}})
        assert result.success
        recorded = {
            m.metadata["shards"].value for m in result.asset_materializations_for_node("batch_features")
        }
        if shards is None:  # events of the window + lookback (archive starts at START) / 30k rows
            lookback = max(g.max_window for g in FEATURE_GROUPS)
            n = read_events(lake, first - lookback, last + timedelta(days=1), ["event_id"]).height
            shards = shards_for(n, 30_000)
            assert shards > 1
        assert recorded == {shards}
        assert _digests(lake, days) == reference, config
    for m in one.asset_materializations_for_node("batch_features"):
        assert m.metadata["shards"].value == 1


def _fakesnow_source(conn_kwargs: dict, **options: str) -> RawEventSource:
    """A Snowflake-backed raw event source on the fakesnow server, its database and schema created."""
    extra = {k: v for k, v in conn_kwargs.items() if k in ("host", "port", "protocol")}
    source = RawEventSource(
        backend="snowflake",
        snowflake_account="fake",
        snowflake_user="risk",
        snowflake_password="not-a-secret",
        snowflake_connection_args={**extra, "session_parameters": {"TIMEZONE": "UTC"}},
        **options,
    )
    with source.snowflake().get_connection() as conn:
        conn.cursor().execute("CREATE DATABASE IF NOT EXISTS RISK")
        conn.cursor().execute("CREATE SCHEMA IF NOT EXISTS RISK.RAW")
    return source


def test_snowflake_backend_gives_the_same_features(tmp_path):
    # fakesnow inserts slowly (~700 rows/s): a small archive of its own keeps this test short.
    lake = Lake(str(tmp_path / "lake"))
    write_history(SimConfig(seed=9, start=START, hours=48, events_per_day=2_500, users=400), lake)
    day = START + timedelta(days=1)
    with fakesnow_server() as conn_kwargs:
        source = _fakesnow_source(conn_kwargs)
        # Mirror the lookback (30 days max → all the history there is) into Snowflake.
        mirror = dg.materialize(
            [snowflake_raw_events],
            resources={"lake": LakeResource(url=lake.url), "raw_event_source": source},
            tags={
                "dagster/asset_partition_range_start": START.strftime("%Y-%m-%d-%H:%M"),
                "dagster/asset_partition_range_end": (day + timedelta(hours=23)).strftime("%Y-%m-%d-%H:%M"),
            },
        )
        assert mirror.success
        groups_without_labels = [g for g in FEATURE_GROUPS if not g.needs_labels]
        selection = [feature_asset_key(g.name) for g in groups_without_labels]
        other = Lake(str(tmp_path / "sf_lake"))
        result = dg.materialize(
            [batch_features],
            selection=selection,
            resources={"lake": LakeResource(url=other.url), "raw_event_source": source},
            partition_key=day.strftime(FMT),
        )
        assert result.success
    assert run_days(lake, day, day).success
    for group in groups_without_labels:
        from_lake = pl.read_parquet(lake.read_bytes(day_part_path(group, day)))
        from_snowflake = pl.read_parquet(other.read_bytes(day_part_path(group, day)))
        assert from_snowflake.height > 0
        assert from_snowflake.drop("created_ts").equals(from_lake.drop("created_ts")), group.name


def test_snowflake_compute_backend_writes_the_polars_offline_store(tmp_path):
    """``compute_backend="snowflake"``: the warehouse computes the groups (label aggregates
    included) from the mirrors; the lake's offline store gets the same rows as the Polars run."""
    lake = Lake(str(tmp_path / "lake"))
    write_history(SimConfig(seed=9, start=START, hours=48, events_per_day=2_500, users=400), lake)
    day = START + timedelta(days=1)
    with fakesnow_server() as conn_kwargs:
        source = _fakesnow_source(conn_kwargs, compute_backend="snowflake")
        mirror = dg.materialize(
            [snowflake_raw_events, snowflake_raw_labels],
            resources={"lake": LakeResource(url=lake.url), "raw_event_source": source},
            tags={
                "dagster/asset_partition_range_start": START.strftime("%Y-%m-%d-%H:%M"),
                "dagster/asset_partition_range_end": (day + timedelta(hours=23)).strftime("%Y-%m-%d-%H:%M"),
            },
        )
        assert mirror.success
        groups = [g for g in FEATURE_GROUPS if g.name in ("ato_user", "ato_device", "user_wallet")]
        assert any(g.needs_labels for g in groups)
        other = Lake(str(tmp_path / "sf_lake"))
        result = dg.materialize(
            [batch_features],
            selection=[feature_asset_key(g.name) for g in groups],
            resources={"lake": LakeResource(url=other.url), "raw_event_source": source},
            partition_key=day.strftime(FMT),
        )
        assert result.success
    for m in result.asset_materializations_for_node("batch_features"):
        assert m.metadata["compute_backend"].value == "snowflake"
    assert run_days(lake, day, day).success
    for group in groups:
        from_lake = pl.read_parquet(lake.read_bytes(day_part_path(group, day)))
        from_snowflake = pl.read_parquet(other.read_bytes(day_part_path(group, day)))
        assert from_snowflake.height == from_lake.height > 0
        assert from_snowflake.schema == from_lake.schema
        floats = [c for c, t in from_lake.schema.items() if t == pl.Float64]
        exact = [c for c in from_lake.columns if c not in floats]
        assert from_snowflake.select(exact).equals(from_lake.select(exact)), group.name
        for c in floats:
            a, b = from_lake[c], from_snowflake[c]
            assert a.is_null().equals(b.is_null()), c
            assert ((a - b).abs() <= 1e-9 * a.abs() + 1e-12).fill_null(True).all(), c
