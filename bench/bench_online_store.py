"""Benchmark of the online store against baselines measured in the same run, on the same Redis.

Usage::

    .venv/bin/python bench/bench_online_store.py [--entities 100000] [--features 50]

Starts its own redis-server through ``risk_assets.stack.launcher`` on free ports (stopped at the
end) unless ``REDIS_URL`` is set, in which case it uses that server under a fresh key prefix and
deletes only its own keys afterwards.

Measured, for N entities × F float features:

* writes: ``OnlineStore.write`` (Polars frame → packed rows → write-if-newer Lua, all rows applied;
  then the same rows newer; then a replay, all skipped) against
  (a) plain pipelined ``SET … PX`` of the same packed rows, no newer-check (packing not timed), and
  (b) a Feast-like layout: one hash per entity, one field per feature, pipelined ``HSET`` +
  ``PEXPIRE`` (building the field mappings from rows is timed, as a writer would have to);
* reads (p50/p99 over many calls): ``OnlineStore.read`` for 1 and 100 entities (one ``MGET`` +
  decoding into dicts) against (a) raw ``MGET`` of the same keys without decoding, (b) Feast-like
  pipelined ``HGETALL`` per entity decoded into dicts.

With ``--cluster``: single node against a local 3-primary Redis Cluster (``risk-stack up
--redis-cluster 3``), both started here, same rows: writes (fresh keys, all newer) and bulk reads
(``read_frame`` of every entity) in rows/s, serving reads (100 and 1 entities) p50/p99, for

* ``single``: one redis-server;
* ``cluster, per-slot (before)``: the cluster write path before per-node pipelining — per-slot
  script calls through redis-py's cluster pipeline (every command routed on its own);
* ``cluster, per-node (now)``: per-primary pipelines sent straight to each node, primaries in
  parallel.

Reads are the same in both cluster configurations (``mget_nonatomic``: one ``MGET`` per slot, one
pipeline per primary, all primaries written before any reply is read).

Then the stream state the same way (single; cluster with the plain per-key commands through the
routed pipeline, before; per-slot scripts in per-primary pipelines, now): ~27k simulated events
through ``process_events`` in micro-batches of 3,000, events/s.

Each configuration runs ``--repeat`` times in turn (interleaved, so load from other jobs hits all
alike); the best run of each is reported, with the load average before and after.

docs/design.md §6 reference (Feast 0.67 on this machine): materialize 3,252 rows/s; get_online_features
1 entity × 50 features p50 0.72 ms / p99 1.26 ms, 100 entities p99 151 ms.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import struct
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import redis

from risk_assets.features.groups import FEATURE_GROUPS
from risk_assets.features.online_store import GroupLayout, OnlineStore, key_slot
from risk_assets.features.stream import process_events
from risk_assets.features.stream_state import StreamState, stream_groups
from risk_assets.simulator.config import SimConfig
from risk_assets.simulator.generator import generate
from risk_assets.stack import launcher


def _percentiles(fn: Callable[[], object], iterations: int, warmup: int = 100) -> tuple[float, float, float]:
    """p50, p99 and mean latency of ``fn`` in milliseconds."""
    for _ in range(warmup):
        fn()
    samples = np.empty(iterations)
    clock = time.perf_counter_ns
    for i in range(iterations):
        t = clock()
        fn()
        samples[i] = clock() - t
    samples /= 1e6
    return float(np.percentile(samples, 50)), float(np.percentile(samples, 99)), float(samples.mean())


def _delete_prefix(client: redis.Redis, prefix: str) -> None:
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"{prefix}*", count=5000):
        batch.append(key)
        if len(batch) >= 5000:
            client.unlink(*batch)
            batch.clear()
    if batch:
        client.unlink(*batch)


def run(url: str, n: int, n_features: int, seed: int) -> None:
    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    layout = GroupLayout(
        "bench_group",
        "0123456789ab",
        "user",
        tuple(f"f{i:02d}" for i in range(n_features)),
        3600,
        ("user_id",),
    )
    rng = np.random.default_rng(seed)
    values = rng.random((n, n_features))
    event = datetime(2026, 3, 1, tzinfo=UTC)
    frame = pl.DataFrame(
        {"user_id": np.arange(n, dtype=np.int64), **{f: values[:, j] for j, f in enumerate(layout.features)}}
    ).with_columns(event_ts=pl.lit(event).cast(pl.Datetime("ms", "UTC")))
    newer = frame.with_columns(
        event_ts=pl.lit(datetime(2026, 3, 2, tzinfo=UTC)).cast(pl.Datetime("ms", "UTC"))
    )

    raw = redis.Redis.from_url(url)
    print(
        f"redis {raw.info('server')['redis_version']} at {url}; {n:,} entities × {n_features} features; "
        f"{os.cpu_count()} CPUs; client and server on this machine"
    )
    results: dict[str, float] = {}

    with OnlineStore.from_url(url, namespace=prefix) as store:
        # ---------------- writes ----------------
        def server_cpu() -> float:
            info = raw.info("cpu")
            return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

        def timed_write(label: str, data: pl.DataFrame) -> None:
            cpu0, srv0 = resource.getrusage(resource.RUSAGE_SELF), server_cpu()
            t = time.perf_counter()
            res = store.write(layout, data)
            dt = time.perf_counter() - t
            cpu1, srv1 = resource.getrusage(resource.RUSAGE_SELF), server_cpu()
            cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
            results[label] = n / dt
            print(
                f"  {label:38s} {n / dt:>10,.0f} rows/s  ({dt * 1000:4.0f} ms; CPU µs/row client "
                f"{cpu * 1e6 / n:4.2f}, redis {(srv1 - srv0) * 1e6 / n:4.2f}; "
                f"applied {res.applied:,}, skipped {res.skipped:,})"
            )

        print("\nwrites (rows/s, higher is better)")
        timed_write("ours: write-if-newer, fresh keys", frame)
        timed_write("ours: write-if-newer, all newer", newer)
        timed_write("ours: replay, all skipped", newer)

        keys, buf = store._pack(layout, frame, None)
        size = layout.row_size
        blobs = [buf[i : i + size] for i in range(0, len(buf), size)]
        base_keys = [f"{prefix}base:{k}" for k in keys]
        t = time.perf_counter()
        for i in range(0, n, 4096):
            pipe = raw.pipeline(transaction=False)
            for k, b in zip(base_keys[i : i + 4096], blobs[i : i + 4096], strict=True):
                pipe.execute_command("SET", k, b, "PX", 3_600_000)
            pipe.execute()
        results["base_set"] = n / (time.perf_counter() - t)
        print(f"  {'baseline a: pipelined SET PX, no check':38s} {results['base_set']:>10,.0f} rows/s")

        feast_keys = [f"{prefix}feast:user:{i}" for i in range(n)]
        names = [f"bench_group:{f}" for f in layout.features]
        pack = struct.Struct("<d").pack
        t = time.perf_counter()
        rows = frame.select(layout.features).iter_rows()
        for i in range(0, n, 512):
            pipe = raw.pipeline(transaction=False)
            for k in feast_keys[i : i + 512]:
                row = next(rows)
                pipe.hset(k, mapping={name: pack(v) for name, v in zip(names, row, strict=True)})
                pipe.pexpire(k, 3_600_000)
            pipe.execute()
        results["base_hset"] = n / (time.perf_counter() - t)
        print(f"  {'baseline b: Feast-like HSET per entity':38s} {results['base_hset']:>10,.0f} rows/s")
        w = results["ours: write-if-newer, all newer"]
        print(
            f"  ratio ours(all newer)/baseline a: {w / results['base_set']:.2f}x, "
            f"/baseline b: {w / results['base_hset']:.2f}x, /Feast materialize (3,252 rows/s): "
            f"{w / 3252:.0f}x"
        )

        # ---------------- reads ----------------
        print("\nreads (ms; p50 / p99 / mean over many calls, lower is better)")
        pick = random.Random(seed)
        unpack = struct.Struct("<d").unpack

        def ours(k: int) -> Callable[[], object]:
            # Touch .values: build the {feature: value} dicts, as the Feast-like baseline does.
            return lambda: [
                r.values for r in store.read([(layout, e) for e in pick.sample(range(n), k)]) if r
            ]

        def ours_vectors(k: int) -> Callable[[], object]:
            return lambda: [
                r.vector for r in store.read([(layout, e) for e in pick.sample(range(n), k)]) if r
            ]

        def raw_mget(k: int) -> Callable[[], object]:
            return lambda: raw.execute_command(
                "MGET", *[store.key(layout, e) for e in pick.sample(range(n), k)]
            )

        def feast(k: int) -> Callable[[], object]:
            def call() -> object:
                pipe = raw.pipeline(transaction=False)
                for e in pick.sample(range(n), k):
                    pipe.hgetall(feast_keys[e])
                return [{f.decode(): unpack(v)[0] for f, v in h.items()} for h in pipe.execute()]

            return call

        for k, iters in ((1, 5000), (100, 1000)):
            stats = {}
            for label, fn in (
                ("ours: read (MGET + decode)", ours(k)),
                ("ours: read, vectors (no dicts)", ours_vectors(k)),
                ("baseline a: raw MGET, no decode", raw_mget(k)),
                ("baseline b: Feast-like HGETALL", feast(k)),
            ):
                p50, p99, mean = _percentiles(fn, iters)
                stats[label] = (p50, p99)
                print(
                    f"  {k:>3} entit{'y' if k == 1 else 'ies'} × {n_features}: {label:32s} "
                    f"p50 {p50:6.3f}  p99 {p99:6.3f}  mean {mean:6.3f}"
                )
            o = stats["ours: read (MGET + decode)"]
            a = stats["baseline a: raw MGET, no decode"]
            b = stats["baseline b: Feast-like HGETALL"]
            print(
                f"      ratio p99 ours/baseline a: {o[1] / a[1]:.2f}x, ours/baseline b: {o[1] / b[1]:.2f}x; "
                f"baseline b p99/ours p99: {b[1] / o[1]:.1f}x"
            )

    _delete_prefix(raw, prefix)
    raw.close()


class PerKeyCommandsState(StreamState):
    """The stream state's cluster path before per-node pipelining (for comparison only): the plain
    per-key commands (ZADD, ZRANGEBYSCORE, ZREMRANGEBYSCORE, PEXPIRE) through the routed pipeline."""

    def _run_by_node(self, touched, read):  # type: ignore[no-untyped-def]
        return self._run_commands(touched, read)


def _stream_rounds(single_url: str, cluster_url: str, repeat: int) -> None:
    """Stream state: simulated events in micro-batches of 3,000 through ``process_events``."""
    cfg = SimConfig(hours=3, events_per_day=200_000, users=3000, start=datetime(2026, 11, 1, 10, tzinfo=UTC))
    events = generate(cfg).events.sort("ingest_ts", "event_id")
    events = events.with_columns(
        pl.lit(0, pl.Int32).alias("_partition"), pl.int_range(pl.len(), dtype=pl.Int64).alias("_offset")
    )
    groups = stream_groups(FEATURE_GROUPS)
    print(f"\nstream state: {events.height:,} events in micro-batches of 3,000 (events/s, best of {repeat})")
    best: dict[str, float] = {}
    for r in range(repeat):
        for label, cls, url in (
            ("single", StreamState, single_url),
            ("cluster, per-key commands (before)", PerKeyCommandsState, cluster_url),
            ("cluster, per-node scripts (now)", StreamState, cluster_url),
        ):
            with cls.from_url(url, groups, namespace=f"bench{r}") as state:
                state.mark_complete()
                t = time.perf_counter()
                for i in range(0, events.height, 3000):
                    process_events(events.slice(i, 3000), None, state)
                rate = events.height / (time.perf_counter() - t)
                state.client.flushall()
            best[label] = max(best.get(label, 0.0), rate)
            print(f"  round {r + 1} {label:36s} {rate:>10,.0f}")
    for label, rate in best.items():
        print(f"  best {label:37s} {rate:>10,.0f}")


class SlotPipelineStore(OnlineStore):
    """The cluster write path before per-node pipelining (for comparison only): per-slot script calls
    through redis-py's cluster pipeline, which routes every command itself."""

    def _pipelines(self, keys, buf, size):  # type: ignore[no-untyped-def]
        step = self.script_keys
        by_slot: dict[int, list[int]] = {}
        for i, k in enumerate(keys):
            by_slot.setdefault(key_slot(k), []).append(i)
        groups = [idx[j : j + step] for idx in by_slot.values() for j in range(0, len(idx), step)]
        calls = (([keys[i] for i in g], [buf[i * size : (i + 1) * size] for i in g]) for g in groups)
        for batch in self._batches(calls):
            yield None, batch

    def _concurrency(self) -> int:
        return self.write_concurrency


def _cluster_round(label: str, store: OnlineStore, n: int, n_features: int, seed: int) -> dict[str, float]:
    layout = GroupLayout(
        "bench_group",
        "0123456789ab",
        "user",
        tuple(f"f{i:02d}" for i in range(n_features)),
        3600,
        ("user_id",),
    )
    values = np.random.default_rng(seed).random((n, n_features))
    frame = pl.DataFrame(
        {"user_id": np.arange(n, dtype=np.int64), **{f: values[:, j] for j, f in enumerate(layout.features)}}
    ).with_columns(event_ts=pl.lit(datetime(2026, 3, 1, tzinfo=UTC)).cast(pl.Datetime("ms", "UTC")))
    newer = frame.with_columns(
        event_ts=pl.lit(datetime(2026, 3, 2, tzinfo=UTC)).cast(pl.Datetime("ms", "UTC"))
    )
    out: dict[str, float] = {}
    t = time.perf_counter()
    res = store.write(layout, frame)
    out["write fresh"] = n / (time.perf_counter() - t)
    assert res.applied == n, res
    t = time.perf_counter()
    res = store.write(layout, newer)
    out["write newer"] = n / (time.perf_counter() - t)
    assert res.applied == n, res
    t = time.perf_counter()
    got = store.read_frame(layout, frame.select("user_id"))
    out["read_frame"] = n / (time.perf_counter() - t)
    assert got["present"].all()
    pick = random.Random(seed)
    for k, iters in ((100, 500), (1, 2000)):
        p50, p99, _ = _percentiles(
            lambda k=k: store.read([(layout, e) for e in pick.sample(range(n), k)]), iters, warmup=50
        )
        out[f"read {k} p50 ms"], out[f"read {k} p99 ms"] = p50, p99
    return out


def run_cluster(single_url: str, cluster_url: str, n: int, n_features: int, seed: int, repeat: int) -> None:
    """Single node vs 3-primary cluster (before/after per-node pipelining); best of ``repeat``.
    Both servers must be the bench's own: they are flushed between rounds."""
    print(f"{n:,} entities × {n_features} features; {os.cpu_count()} CPUs; load average {os.getloadavg()}")
    configs = (
        ("single", OnlineStore, single_url),
        ("cluster, per-slot (before)", SlotPipelineStore, cluster_url),
        ("cluster, per-node (now)", OnlineStore, cluster_url),
    )
    best: dict[str, dict[str, float]] = {}
    for r in range(repeat):
        for label, cls, url in configs:
            prefix = f"bench:{uuid.uuid4().hex[:8]}:"
            with cls.from_url(url, namespace=prefix) as store:
                got = _cluster_round(label, store, n, n_features, seed + r)
                # The bench started these servers itself: empty them between rounds.
                store.client.flushall()
            prev = best.setdefault(label, got)
            for metric, v in got.items():
                prev[metric] = min(prev[metric], v) if metric.endswith("ms") else max(prev[metric], v)
            print(
                f"  round {r + 1} {label:28s} "
                + ", ".join(
                    f"{m} {v:,.0f}" if not m.endswith("ms") else f"{m} {v:.2f}" for m, v in got.items()
                )
            )
    metrics = list(next(iter(best.values())))
    print(f"\nbest of {repeat} (rows/s, higher is better; ms lower is better)")
    print(f"  {'':28s} " + "  ".join(f"{m:>14s}" for m in metrics))
    for label, vals in best.items():
        print(
            f"  {label:28s} "
            + "  ".join(
                f"{vals[m]:>14,.0f}" if not m.endswith("ms") else f"{vals[m]:>14.2f}" for m in metrics
            )
        )
    single = best["single"]
    for label in ("cluster, per-slot (before)", "cluster, per-node (now)"):
        print(
            f"  single/{label}: write fresh {single['write fresh'] / best[label]['write fresh']:.1f}x, "
            f"write newer {single['write newer'] / best[label]['write newer']:.1f}x, "
            f"read_frame {single['read_frame'] / best[label]['read_frame']:.1f}x"
        )
    _stream_rounds(single_url, cluster_url, repeat)
    print(f"load average after: {os.getloadavg()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--cluster", action="store_true", help="single node vs 3-primary Redis Cluster")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per configuration with --cluster")
    args = parser.parse_args()
    if args.cluster:
        main_cluster(args)
        return
    url = os.environ.get("REDIS_URL")
    if url:
        run(url, args.entities, args.features, args.seed)
        return
    state = Path(tempfile.mkdtemp(prefix="bench-online-store-"))
    config = launcher.StackConfig(
        state_dir=state, redis_port=launcher.free_port(), kafka_port=launcher.free_port()
    )
    try:
        env = launcher.up(config)
        run(env["REDIS_URL"], args.entities, args.features, args.seed)
    finally:
        launcher.down(config)
        shutil.rmtree(state, ignore_errors=True)


def main_cluster(args: argparse.Namespace) -> None:
    """Start a single redis-server and a 3-primary cluster through the launcher, compare, stop."""
    state = Path(tempfile.mkdtemp(prefix="bench-online-cluster-"))
    single = launcher.StackConfig(
        state_dir=state / "single", redis_port=launcher.free_port(), kafka_port=launcher.free_port()
    )
    base = launcher.free_cluster_port(3)
    cluster = launcher.StackConfig(
        state_dir=state / "cluster", redis_port=base, redis_cluster=3, kafka_port=launcher.free_port()
    )
    saved = os.environ.pop("REDIS_URL", None)
    try:
        single_url = launcher.up(single)["REDIS_URL"]
        cluster_url = launcher.up(cluster)["REDIS_URL"]
        run_cluster(single_url, cluster_url, args.entities, args.features, args.seed, args.repeat)
    finally:
        launcher.down(cluster)
        launcher.down(single)
        shutil.rmtree(state, ignore_errors=True)
        if saved is not None:
            os.environ["REDIS_URL"] = saved


if __name__ == "__main__":
    main()
