"""The pipeline on a real 3-primary Redis Cluster (``risk-stack up --redis-cluster 3``), switched on by
the ``redis+cluster://`` URL alone: offline → online sync, stream ingestion and risk-serve scoring
give the single-node results, and a primary restarted empty is detected and resynced.

Nothing is mocked: the cluster is three ``redis-server`` processes started and joined by the
project's launcher; the single-node reference is the session's ordinary Redis.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from confluent_kafka import Producer
from redis.cluster import RedisCluster
from redis.connection import AbstractConnection

from risk_assets.features.feature_buffer import publish
from risk_assets.features.groups import FEATURE_GROUPS, GROUPS_BY_NAME
from risk_assets.features.ingestion import group_layout, ingest_range
from risk_assets.features.online_audit import expected_latest
from risk_assets.features.online_store import OnlineStore, OnlineStoreUnavailable, key_slot
from risk_assets.features.online_sync import sync
from risk_assets.features.stream import CREATED_TS, process_events
from risk_assets.features.stream_state import FetchRequest, StreamState, stream_groups
from risk_assets.features.sync_assets import online_offline_consistency, online_store_sync
from risk_assets.ingest.kafka_reader import KafkaRangeReader, OffsetRange
from risk_assets.lake import Lake
from risk_assets.names import FEATURES_TOPIC
from risk_assets.resources import LakeResource, RedisResource
from risk_assets.simulator.config import SimConfig
from risk_assets.simulator.generator import generate
from risk_assets.stack import launcher
from tests.conftest import DEFS
from tests.features.test_online_sync import GROUPS, _census, offline  # noqa: F401 - fixture
from tests.serving.test_serving import (
    SIGNAL,
    event,
    register,
    start_service,
    stop_service,
    train_model,
    wait_for,
    write_online,
)

STREAM = stream_groups(FEATURE_GROUPS)


def _online_frame(store: OnlineStore, lake: Lake, group) -> pl.DataFrame:
    """Every entity the offline store knows for ``group``, as Redis holds it (``written_ts`` — the
    wall clock of the write — left out), sorted by key."""
    keys = (
        expected_latest(lake, group).collect().select(list(group.entity.keys)).sort(list(group.entity.keys))
    )
    return store.read_frame(group_layout(group), keys).drop("written_ts")


def test_cluster_url_opens_a_cluster_client_with_a_marker_per_primary(cluster_stack, key_prefix):
    url = cluster_stack.redis_url
    assert url.startswith("redis+cluster://") and url.count(",") == 2
    with OnlineStore.from_url(url, namespace=key_prefix) as store:
        assert isinstance(store.client, RedisCluster) and len(store.client.get_primaries()) == 3
        token = store.mark_complete()
        keys = store.epoch_keys()
        owners = {store.client.nodes_manager.get_node_from_slot(key_slot(k)).name for k in keys}
        assert len(keys) == 3 and len(owners) == 3  # one marker on each primary
        assert [store.client.get(k).decode() for k in keys] == [token] * 3 and store.epoch() == token
        store.client.delete(keys[1])  # one primary's marker gone: the store is incomplete
        assert store.epoch() is None


def test_a_read_across_the_primaries_is_one_round_trip_per_node(cluster_stack, key_prefix, monkeypatch):
    """risk-serve's read (``OnlineStore.read``) of entities on all three primaries: one request
    written to each node's socket, every row back in order."""
    group = GROUPS_BY_NAME["ato_user"]
    layout = group_layout(group)
    users = [f"u{i}" for i in range(60)]
    rows = pl.DataFrame({"user_id": users, "event_ts": [datetime(2026, 11, 1, tzinfo=UTC)] * len(users)})
    rows = rows.with_columns([pl.lit(float(j)).alias(f) for j, f in enumerate(group.feature_names)])
    with OnlineStore.from_url(cluster_stack.redis_url, namespace=key_prefix) as store:
        assert store.write(layout, rows).applied == len(users)
        owners = {
            store.client.nodes_manager.get_node_from_slot(key_slot(store.key(layout, u))).port for u in users
        }
        assert len(owners) == 3
        sent: list[int] = []
        original = AbstractConnection.send_packed_command

        def counting(conn: AbstractConnection, command: object, check_health: bool = True) -> None:
            packed = b"".join(bytes(c) for c in command) if isinstance(command, list) else bytes(command)
            if b"MGET" in packed:  # not a health-check PING of an idle connection
                sent.append(conn.port)
            original(conn, command, check_health)

        monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
        got = store.read([(layout, u) for u in [*users, "nobody"]])
        monkeypatch.undo()
    assert sorted(sent) == sorted(owners)  # one request per primary, none twice
    assert [r.entity_key for r in got[:-1]] == [(u,) for u in users] and got[-1] is None
    assert all(r.vector == tuple(float(j) for j in range(len(group.feature_names))) for r in got[:-1])


def test_sync_on_the_cluster_equals_the_single_node_result(offline, cluster_stack, session_stack, key_prefix):  # noqa: F811
    lake = offline
    with (
        OnlineStore.from_url(cluster_stack.redis_url, namespace=key_prefix) as cluster,
        OnlineStore.from_url(session_stack.redis_url, namespace=key_prefix) as single,
    ):
        on_cluster = sync(lake, cluster, GROUPS)
        on_single = sync(lake, single, GROUPS)
        assert on_cluster.full_resync and on_cluster.epoch is not None and cluster.epoch() == on_cluster.epoch
        assert (on_cluster.objects, on_cluster.rows_offered, on_cluster.applied) == (
            on_single.objects,
            on_single.rows_offered,
            on_single.applied,
        )
        for group in GROUPS:
            got, want = _online_frame(cluster, lake, group), _online_frame(single, lake, group)
            assert got.height > 0 and got["present"].all()
            assert got.equals(want), group.name
        # the rows really are spread over the three primaries
        slots = cluster.client.nodes_manager
        layout = group_layout(GROUPS[1])
        keys = expected_latest(lake, GROUPS[1]).collect()[GROUPS[1].entity.keys[0]].to_list()
        nodes = {slots.get_node_from_slot(key_slot(cluster.key(layout, k))).name for k in keys}
        assert len(nodes) == 3


def test_a_primary_restarted_empty_is_detected_and_resynced(offline, fresh_cluster, key_prefix):  # noqa: F811
    """One of three primaries loses its data; the other two keep theirs and their markers. Before
    the per-primary markers the single ``{epoch}`` marker lived on one node: losing another node
    went unnoticed and the next tick synced nothing."""
    lake = offline
    with OnlineStore.from_url(fresh_cluster.redis_url, namespace=key_prefix) as store:
        first = sync(lake, store, GROUPS)
        assert first.full_resync and store.epoch() == first.epoch
        expected = _census(lake, store)
        assert all(n > 0 and present == equal == n for n, present, equal in expected.values())

        # Restart a primary that does NOT own the slot of ``{epoch}``, where the single marker lived.
        single_marker_owner = store.client.nodes_manager.get_node_from_slot(key_slot(store.epoch_key))
        ports = [fresh_cluster.config.port(s) for s in fresh_cluster.config.redis_nodes]
        victim = next(i for i, p in enumerate(ports) if p != single_marker_owner.port)
        fresh_cluster.restart_redis_node(victim)

        assert store.epoch() is None  # detected
        damaged = _census(lake, store)
        assert any(present < n for n, present, _ in damaged.values())  # rows really were lost

        tick = sync(lake, store, GROUPS)
        assert tick.full_resync and "missing" in tick.reason
        assert store.epoch() == tick.epoch != first.epoch
        assert _census(lake, store) == expected  # every entity back with its value
        calm = sync(lake, store, GROUPS)
        assert not calm.full_resync and (calm.objects, calm.applied) == (0, 0)


def test_the_code_locations_sync_runs_on_the_cluster_from_redis_url_alone(
    offline,  # noqa: F811
    fresh_cluster,
    monkeypatch,
):
    """The definitions' own ``redis`` resource (``RedisResource(url=EnvVar("REDIS_URL"))``, no cluster
    flag) with only ``REDIS_URL`` set to the cluster: the sync asset and its check work on it."""
    import risk_assets.features.sync_assets as sync_assets

    monkeypatch.setattr(sync_assets, "FEATURE_GROUPS", tuple(GROUPS))
    monkeypatch.setenv("REDIS_URL", fresh_cluster.redis_url)
    redis_resource = DEFS.resources["redis"]
    assert redis_resource.cluster is False  # nothing but the URL says "cluster"
    res = {"lake": LakeResource(url=offline.url), "redis": redis_resource}
    result = dg.materialize([online_store_sync], resources=res)
    assert result.success
    (mat,) = result.asset_materializations_for_node("online_store_sync")
    assert mat.metadata["full_resync"].value == 1 and mat.metadata["objects"].value == 6
    check = online_offline_consistency(
        lake=res["lake"], redis=RedisResource(url=fresh_cluster.redis_url, namespace=redis_resource.namespace)
    )
    assert (
        check.passed and check.metadata["mismatch_rate"].value == 0.0 and check.metadata["sampled"].value > 0
    )
    with OnlineStore.from_url(fresh_cluster.redis_url, namespace=redis_resource.namespace) as store:
        assert isinstance(store.client, RedisCluster) and len(store.epoch_keys()) == 3
        assert store.epoch() is not None


def test_a_write_with_one_primary_down_fails_with_exact_progress_and_a_resend_completes(
    fresh_cluster, key_prefix
):
    """Per-node pipelines: the dead primary's rows are in doubt, the others' applied, the counts add
    up; after the primary is back (empty) re-sending the batch completes it."""
    group = GROUPS_BY_NAME["ato_user"]
    layout = group_layout(group)
    users = [f"u{i}" for i in range(3000)]
    rows = pl.DataFrame({"user_id": users, "event_ts": [datetime(2026, 11, 1, tzinfo=UTC)] * len(users)})
    rows = rows.with_columns([pl.lit(1.0).alias(f) for f in group.feature_names])
    config = fresh_cluster.config
    with OnlineStore.from_url(fresh_cluster.redis_url, namespace=key_prefix, retries=1) as store:
        node = config.redis_nodes[1]
        pid = launcher.pids(config)[node]
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while node in launcher.pids(config):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        with pytest.raises(OnlineStoreUnavailable) as err:
            store.write(layout, rows)
        progress = err.value.progress
        assert progress is not None and progress.rows == len(users)
        assert progress.applied + progress.skipped + progress.in_doubt + progress.not_sent == len(users)
        on_dead = sum(
            1
            for u in users
            if store.client.nodes_manager.get_node_from_slot(key_slot(store.key(layout, u))).port
            == config.port(node)
        )
        assert progress.applied == len(users) - on_dead and progress.in_doubt == on_dead > 0

        saved = os.environ.pop("REDIS_URL", None)
        try:
            launcher.up(config)  # the primary back, empty, with its slots
        finally:
            if saved is not None:
                os.environ["REDIS_URL"] = saved
        again = store.write(layout, rows)
        assert (again.applied, again.skipped) == (on_dead, len(users) - on_dead)
        assert store.read_frame(layout, rows.select("user_id"))["present"].all()


@pytest.fixture(scope="module")
def events() -> pl.DataFrame:
    cfg = SimConfig(hours=1, events_per_day=100_000, users=1500, start=datetime(2026, 11, 1, 12, tzinfo=UTC))
    ev = generate(cfg).events.sort("ingest_ts", "event_id")
    return ev.with_columns(
        pl.lit(0, pl.Int32).alias("_partition"), pl.int_range(pl.len(), dtype=pl.Int64).alias("_offset")
    )


def _stream(url: str, namespace: str, events: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """Two micro-batches through the stream engine with its state on ``url``: the rows produced."""
    with StreamState.from_url(url, STREAM, namespace=namespace) as state:
        state.mark_complete()  # a new deployment: no history before these events
        half = events.height // 2
        first = process_events(events.slice(0, half), None, state)
        second = process_events(events.slice(half), None, state)
        rows = {name: pl.concat([first[name], second[name]]) for name in first}
        state.delete_all()
    return rows


def test_stream_ingestion_into_the_cluster_equals_single_node(
    events, cluster_stack, session_stack, key_prefix, tmp_path: Path
):
    on_cluster = _stream(cluster_stack.redis_url, key_prefix + "state", events)
    on_single = _stream(session_stack.redis_url, key_prefix + "state", events)
    for name, rows in on_single.items():
        keys = [*GROUPS_BY_NAME[name].entity.keys, "event_ts", CREATED_TS]
        assert on_cluster[name].sort(keys).equals(rows.sort(keys)), name
    assert sum(r.height for r in on_cluster.values()) > 0

    # The rows through the real feature buffer topic into the cluster's online store.
    producer = Producer({"bootstrap.servers": cluster_stack.kafka, "linger.ms": 5, "acks": "all"})
    n = publish(producer, on_cluster)
    with KafkaRangeReader(cluster_stack.kafka, timeout_s=10) as reader:
        _, hi = reader.bounds(FEATURES_TOPIC, 0)
        rng = OffsetRange(FEATURES_TOPIC, 0, hi - n, hi)
        with (
            OnlineStore.from_url(cluster_stack.redis_url, namespace=key_prefix) as cluster,
            OnlineStore.from_url(session_stack.redis_url, namespace=key_prefix) as single,
        ):
            result = ingest_range(reader, rng, cluster, Lake(str(tmp_path / "lake")))
            assert result.row_count == n and result.rejected == 0
            for name, rows in on_single.items():
                group = GROUPS_BY_NAME[name]
                single.write(group_layout(group), rows)  # the single-node reference
                keys = rows.select(list(group.entity.keys)).unique().sort(list(group.entity.keys))
                got = cluster.read_frame(group_layout(group), keys).drop("written_ts")
                want = single.read_frame(group_layout(group), keys).drop("written_ts")
                assert got["present"].all() and got.equals(want), name


def test_warm_start_adds_and_fetches_on_the_cluster_like_single_node(
    events, cluster_stack, session_stack, key_prefix
):
    """The warm start's path (``add``: update scripts without reads) and ``fetch`` on the cluster."""
    requests: list[FetchRequest] = []
    frames = []
    for url in (cluster_stack.redis_url, session_stack.redis_url):
        with StreamState.from_url(url, STREAM, namespace=key_prefix + "warm") as state:
            sent = state.add(events)
            assert sent > 0
            if not requests:
                lo = int(events["event_ts"].min().timestamp() * 1000) - 1
                hi = int(events["event_ts"].max().timestamp() * 1000)
                for name, layout in state.layouts.items():
                    keys = list(layout.entity.keys)
                    sample = events.select(keys).drop_nulls().unique().sort(keys).head(200)
                    requests += [FetchRequest(name, tuple(k), lo, hi) for k in sample.rows()]
            frames.append(state.fetch(requests))
            state.delete_all()
    on_cluster, on_single = frames
    assert on_cluster.keys() == on_single.keys() and sum(f.height for f in on_cluster.values()) > 0
    for name, frame in on_single.items():
        assert on_cluster[name].equals(frame), name


def test_risk_serve_scores_from_the_cluster_like_single_node(
    cluster_stack, session_stack, tmp_path, key_prefix
):
    """Before: "Keys in request don't hash to the same slot" — risk-serve's MGET spans slots."""
    lake = Lake(str(tmp_path / "lake"))
    register(lake, train_model(seed=1))
    ev = event("withdrawal", n=7)
    services = []
    try:
        answers = []
        for stack, sub in ((cluster_stack, "c"), (session_stack, "s")):
            ns = f"{key_prefix}{sub}:"
            (tmp_path / sub).mkdir()
            svc = start_service(tmp_path / sub, lake, stack.redis_url, stack.kafka, ns)
            services.append(svc)
            with OnlineStore.from_url(stack.redis_url, namespace=ns) as store:
                # rows of three entities (three hash tags, in general on three primaries)
                write_online(store, "ato_user", {"user_id": ev["user_id"]}, {SIGNAL.split("__")[1]: 9.0})
                write_online(store, "withdrawal_wallet", {"wallet_address": ev["wallet_address"]}, {})
                write_online(
                    store,
                    "user_wallet",
                    {"user_id": ev["user_id"], "wallet_address": ev["wallet_address"]},
                    {},
                )
            wait_for(lambda s=svc: s.client().request("GET", "/readyz")[0] == 200, what="readyz")
            status, body = svc.client().score({**ev, "event_id": f"{ev['event_id']}-{sub}"})
            assert status == 200, body
            answers.append(body)
        on_cluster, on_single = answers
        assert on_cluster["degraded"] is False and on_cluster["decision"] == "block"
        assert on_cluster["score"] == on_single["score"]
        assert on_cluster["features_missing"] == on_single["features_missing"]
        assert on_cluster["reasons"] == on_single["reasons"]
    finally:
        for svc in services:
            stop_service(svc)
