"""Freshness of stream features end to end: event produced → feature value readable in Redis.

Usage::

    .venv/bin/python bench/bench_stream_freshness.py [--rate 2000] [--seconds 20] [--cadence 1.0]
        [--warm-hours 0] [--warm-events-per-day 1000000]
    .venv/bin/python bench/bench_stream_freshness.py --mode daemon [--rate 200] [--seconds 120]
        [--partitions 1] [--drain 300] [--code-dir DIR]

    .venv/bin/python bench/bench_stream_freshness.py --mode worker [--rate 2000] [--seconds 60]

``--mode worker`` measures the continuous stream worker (``risk-stream``, a subprocess) with the
same sampling as the daemon mode, and its per-range breakdown from its progress log (wait before
the loop took the range, read, compute, publish, ingest, commit).

``--mode daemon`` measures the path production runs: the real ``dagster-daemon`` with both Kafka
sensors on, launching a run per range (run worker process, code load, step) — see
:func:`run_daemon`. ``--code-dir`` loads the code location from another checkout of this
repository (e.g. ``git archive main | tar -x -C /tmp/main`` to measure the version before a change).

The default ``--mode engine`` measures the engine alone, without Dagster:

Starts its own Redis + broker through ``risk_assets.stack.launcher`` on free ports (stopped at the
end; endpoints in the environment are ignored). A child process produces simulated events to
``risk.events`` at ``--rate`` events/s (``risk_assets.simulator.writers.live``; Kafka timestamp =
produce time). The main process mimics the sensor + runs, every ``--cadence`` seconds:

    new offset range of risk.events → decode_messages → process_events (state in Redis)
    → publish to risk.features → ingest_range (online store + offline log in a temp lake)

Freshness of an event = (time ``ingest_range`` returned, i.e. its rows are readable in Redis) −
(its Kafka timestamp), for the events of the stream groups' source types. Each tick also reads a
sample of the written entities back from Redis and checks the stored row is at least as new as the
event (counted as ``readback_misses``; expected 0).

``--warm-hours H`` first loads H hours of simulated history (``--warm-events-per-day``, same
population as the live producer) into the stream state, so micro-batches read realistic windows.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
from confluent_kafka import Consumer, TopicPartition

from risk_assets.features.feature_buffer import publish
from risk_assets.features.groups import FEATURE_GROUPS
from risk_assets.features.ingestion import group_layout, ingest_range
from risk_assets.features.online_store import OnlineStore
from risk_assets.features.stream import process_events
from risk_assets.features.stream_state import StreamState, stream_groups
from risk_assets.ingest.archive import EVENTS, decode_messages
from risk_assets.ingest.kafka_reader import KafkaRangeReader, OffsetRange
from risk_assets.lake import Lake
from risk_assets.names import EVENTS_TOPIC, FEATURES_TOPIC, ONLINE_FEATURES, STREAM_FEATURE_BUFFER
from risk_assets.simulator import writers
from risk_assets.simulator.config import SimConfig
from risk_assets.simulator.generator import generate
from risk_assets.stack import launcher


def _produce(bootstrap: str, rate: float, seconds: float, users: int) -> None:
    producer = writers.make_producer(bootstrap, **{"linger.ms": 5})
    stats = writers.live(SimConfig(users=users), producer, rate=rate, seconds=seconds)
    print(
        f"producer: {stats.events:,} events in {stats.seconds:.1f}s, {stats.delivery_errors} delivery errors"
    )


def _pct(values: list[float] | np.ndarray) -> str:
    a = np.asarray(values, dtype=float)
    if not len(a):
        return "n/a"
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return f"p50 {p50:,.0f} ms, p95 {p95:,.0f} ms, p99 {p99:,.0f} ms, max {a.max():,.0f} ms"


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} ({os.cpu_count()} CPUs)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("engine", "daemon", "worker"), default="engine")
    ap.add_argument("--rate", type=float, default=2000.0, help="events/s produced")
    ap.add_argument("--seconds", type=float, default=20.0, help="how long to produce")
    ap.add_argument("--cadence", type=float, default=1.0, help="seconds between sensor ticks (engine)")
    ap.add_argument("--users", type=int, default=50_000)
    ap.add_argument("--warm-hours", type=int, default=0)
    ap.add_argument("--warm-events-per-day", type=int, default=1_000_000)
    ap.add_argument("--partitions", type=int, default=1, help="partitions of the topics (daemon)")
    ap.add_argument("--drain", type=float, default=300.0, help="seconds to wait for the tail (daemon)")
    ap.add_argument("--code-dir", type=Path, default=None, help="checkout to load the code from (daemon)")
    args = ap.parse_args()
    print(f"start: {_load()}")
    if args.mode == "daemon":
        run_daemon(args)
    elif args.mode == "worker":
        run_worker(args)
    else:
        run_engine(args)
    print(f"end: {_load()}")


def run_engine(args: argparse.Namespace) -> None:
    for var in ("REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS", "S3_ENDPOINT_URL"):
        os.environ.pop(var, None)
    work = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    config = launcher.StackConfig(
        state_dir=work / "stack", redis_port=launcher.free_port(), kafka_port=launcher.free_port()
    )
    env = launcher.up(config)
    print(f"stack: redis {env['REDIS_URL']}, kafka {env['KAFKA_BOOTSTRAP_SERVERS']}")
    groups = stream_groups(FEATURE_GROUPS)
    print(f"stream groups: {[g.name for g in groups]}; cadence {args.cadence:.2f}s; rate {args.rate:,.0f}/s")
    kafka = env["KAFKA_BOOTSTRAP_SERVERS"]
    state = StreamState.from_url(env["REDIS_URL"], groups, namespace="bench")
    store = OnlineStore.from_url(env["REDIS_URL"], namespace="bench")
    lake = Lake(str(work / "lake"))
    stream_types = sorted({t for g in groups for t in g.source_event_types})
    try:
        if args.warm_hours:
            now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
            cfg = SimConfig(
                start=now - timedelta(hours=args.warm_hours - 1),
                hours=args.warm_hours,
                events_per_day=args.warm_events_per_day,
                users=args.users,
            )
            t0 = time.perf_counter()
            history = generate(cfg, workers=2).events.filter(pl.col("ingest_ts") < datetime.now(UTC))
            t1 = time.perf_counter()
            for i in range(0, history.height, 50_000):
                state.add(history.slice(i, 50_000))
            print(
                f"warm state: {history.height:,} events of {args.warm_hours}h generated in {t1 - t0:.1f}s, "
                f"added in {time.perf_counter() - t1:.1f}s"
            )
        state.mark_complete()  # the generated history (or none) is the whole past of this bench

        # spawn, not fork: forking after Polars' thread pool started can deadlock the child.
        proc = mp.get_context("spawn").Process(
            target=_produce, args=(kafka, args.rate, args.seconds, args.users), daemon=True
        )
        proc.start()
        producer = writers.make_producer(kafka, **{"linger.ms": 1})
        watermarks = Consumer({"bootstrap.servers": kafka, "group.id": "bench-watermarks"})
        ev_cursor = feat_cursor = 0
        fresh: list[np.ndarray] = []
        ticks: list[dict[str, float]] = []
        misses = checked = 0
        idle_after_exit = 0
        next_tick = time.monotonic()
        deadline = next_tick + args.seconds + 60
        while True:
            next_tick += args.cadence
            time.sleep(max(0.0, next_tick - time.monotonic()))
            t_start = time.perf_counter()
            with KafkaRangeReader(kafka, timeout_s=30) as reader:
                # The reported high watermark, not reader.bounds(): on a topic being written
                # continuously, bounds()' true-end probe follows the growing tail (see the docs).
                # On tansu the reported mark may stop at the last record batch's base offset;
                # the rest of that batch is simply read at the next tick.
                end = watermarks.get_watermark_offsets(
                    TopicPartition(EVENTS_TOPIC, 0), timeout=10, cached=False
                )[1]
                if not proc.is_alive():  # producer done: the log no longer grows, drain to the true end
                    end = max(end, reader.bounds(EVENTS_TOPIC, 0)[1])
                if end == ev_cursor:
                    if time.monotonic() > deadline:
                        raise RuntimeError("no events arrived: the producer process is stuck or failed")
                    if not proc.is_alive():
                        idle_after_exit += 1
                        if idle_after_exit >= 2:
                            break
                    continue
                batch = reader.read(OffsetRange(EVENTS_TOPIC, 0, ev_cursor, end))
                t_read = time.perf_counter()
                decoded = decode_messages(batch, EVENTS)
                rows = process_events(decoded.valid, None, state)
                t_proc = time.perf_counter()
                n_rows = publish(producer, rows)
                t_pub = time.perf_counter()
            with KafkaRangeReader(kafka, timeout_s=30) as reader:
                f_end = reader.bounds(FEATURES_TOPIC, 0)[1]
                result = ingest_range(reader, OffsetRange(FEATURES_TOPIC, 0, feat_cursor, f_end), store, lake)
            done_ms = time.time() * 1000
            t_done = time.perf_counter()
            ev_cursor, feat_cursor = end, f_end
            valid = decoded.valid
            mask = valid["event_type"].is_in(stream_types).to_numpy()
            fresh.append(done_ms - valid["ingest_ts"].dt.epoch("ms").to_numpy()[mask])
            # Read back a sample: the stored row must be at least as new as the event.
            for g in groups:
                sample = rows[g.name].head(20)
                if not sample.height:
                    continue
                key_col = g.entity.keys[0]
                got = store.read([(group_layout(g), k) for k in sample[key_col].to_list()])
                for r, ts in zip(got, sample["event_ts"].to_list(), strict=True):
                    checked += 1
                    misses += r is None or r.event_ts < ts
            ticks.append(
                {
                    "events": len(batch),
                    "rows": n_rows,
                    "read": t_read - t_start,
                    "process": t_proc - t_read,
                    "publish": t_pub - t_proc,
                    "ingest": t_done - t_pub,
                    "total": t_done - t_start,
                    "rejected": result.rejected,
                }
            )
        proc.join(10)
        watermarks.close()
        all_fresh = np.concatenate(fresh) if fresh else np.empty(0)
        t = pl.DataFrame(ticks)
        n_events = int(t["events"].sum())
        print(f"ticks: {t.height}, events: {n_events:,}, feature rows: {int(t['rows'].sum()):,}")
        print(f"events per micro-batch: mean {t['events'].mean():,.0f}, max {t['events'].max():,}")
        for col in ("read", "process", "publish", "ingest", "total"):
            print(f"  {col:>8}: {_pct(t[col].to_numpy() * 1000)}")
        busy = float(t["total"].sum())
        proc_time = float(t["process"].sum())
        print(
            f"throughput: {n_events / proc_time:,.0f} events/s in process_events, "
            f"{n_events / busy:,.0f} events/s for the whole tick (read → ingest)"
        )
        print(f"freshness (produce → readable in Redis), {len(all_fresh):,} stream events: {_pct(all_fresh)}")
        print(f"readback checks: {checked}, misses: {misses}")
    finally:
        state.close()
        store.close()
        launcher.down(config)


DAEMON_DOC = """Daemon mode: the stack, a DAGSTER_HOME with the repository's dagster.yaml, both Kafka
sensors started (``dagster sensor start``) and ``dagster-daemon run``; the runs it launches are
ordinary run worker processes. A child process produces live traffic at ``--rate`` for
``--seconds`` (Kafka timestamp = produce time). The bench tails ``risk.events`` itself, samples
events of the first stream group (up to ~5/s) and polls the online store every 0.25 s until the
entity's row is at least as new as the event: freshness = that moment − the event's Kafka
timestamp. Samples still not visible ``--drain`` seconds after the producer stopped are reported as
unresolved (their freshness is at least the elapsed time). Run figures (queue = created → started,
run = started → ended) come from the instance."""


def run_daemon(args: argparse.Namespace) -> None:
    for var in ("REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS", "S3_ENDPOINT_URL", "DAGSTER_PG_URL"):
        os.environ.pop(var, None)
    root = Path(__file__).resolve().parents[1]
    code = (args.code_dir or root).resolve()
    work = Path(tempfile.mkdtemp(prefix="bench-daemon-"))
    config = launcher.StackConfig(
        state_dir=work / "stack",
        redis_port=launcher.free_port(),
        kafka_port=launcher.free_port(),
        topic_partitions=args.partitions,
    )
    env = launcher.up(config)
    home = work / "dagster_home"
    home.mkdir()
    shutil.copy(root / "dagster.yaml", home / "dagster.yaml")
    child_env = {
        **os.environ,
        **env,
        "DAGSTER_HOME": str(home),
        "RISK_LAKE_URL": str(work / "lake"),
        "PYTHONPATH": str(code),
    }
    bin_dir = Path(sys.executable).parent
    workspace = code / "workspace.yaml"
    print(f"code: {code}; stack: {env['KAFKA_BOOTSTRAP_SERVERS']}, {args.partitions} partition(s)")
    print(DAEMON_DOC.splitlines()[0])
    daemon = None
    try:
        for sensor in ("stream_features_sensor", "feature_ingestion_sensor"):
            subprocess.run(
                [str(bin_dir / "dagster"), "sensor", "start", sensor, "-w", str(workspace)],
                env=child_env,
                cwd=code,
                check=True,
                capture_output=True,
            )
        daemon = subprocess.Popen(
            [str(bin_dir / "dagster-daemon"), "run", "-w", str(workspace)],
            env=child_env,
            cwd=code,
            stdout=(work / "daemon.log").open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _measure_daemon(args, env, home, work)
    finally:
        if daemon is not None:
            os.killpg(daemon.pid, signal.SIGTERM)
            try:
                daemon.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(daemon.pid, signal.SIGKILL)
        launcher.down(config)
        print(f"daemon log: {work / 'daemon.log'}")


def _measure_daemon(args: argparse.Namespace, env: dict[str, str], home: Path, work: Path) -> None:
    stamps = _measure_freshness(args, env)
    _daemon_breakdown(home, stamps)


def _measure_freshness(args: argparse.Namespace, env: dict[str, str]) -> dict[int, np.ndarray]:
    """Produce, sample, poll Redis (``DAEMON_DOC``); returns each partition's Kafka timestamps (s)
    by offset, for the breakdowns."""
    kafka = env["KAFKA_BOOTSTRAP_SERVERS"]
    group = stream_groups(FEATURE_GROUPS)[0]
    layout = group_layout(group)
    key_col = group.entity.keys[0]
    store = OnlineStore.from_url(env["REDIS_URL"])
    watermarks = Consumer({"bootstrap.servers": kafka, "group.id": "bench-watermarks"})
    proc = mp.get_context("spawn").Process(
        target=_produce, args=(kafka, args.rate, args.seconds, args.users), daemon=True
    )
    t_start = time.time()
    proc.start()
    cursors = dict.fromkeys(range(args.partitions), 0)
    stamps: dict[int, list[np.ndarray]] = {p: [] for p in cursors}
    pending: list[tuple[str, datetime, float]] = []  # (entity, event_ts, kafka ts in s)
    fresh: list[float] = []
    every = max(1, int(args.rate // 5))
    seen = 0
    stop_at: float | None = None
    with KafkaRangeReader(kafka, timeout_s=30) as reader:
        while True:
            now = time.time()
            if stop_at is None and not proc.is_alive():
                stop_at = now + args.drain
            for p in cursors:
                end = watermarks.get_watermark_offsets(
                    TopicPartition(EVENTS_TOPIC, p), timeout=10, cached=False
                )[1]
                if end <= cursors[p]:
                    continue
                batch = reader.read(OffsetRange(EVENTS_TOPIC, p, cursors[p], end))
                cursors[p] = end
                stamps[p].append(batch.timestamps_ms / 1000.0)
                valid = decode_messages(batch, EVENTS).valid
                mine = valid.filter(
                    pl.col("event_type").is_in(sorted(group.source_event_types)),
                    pl.col(key_col).is_not_null(),
                )
                for key, ts, produced in mine.select(key_col, "event_ts", "ingest_ts").iter_rows():
                    seen += 1
                    if seen % every == 0:
                        pending.append((str(key), ts, produced.timestamp()))
            if pending:
                got = store.read([(layout, k) for k, _, _ in pending])
                still = []
                for (k, ts, produced), row in zip(pending, got, strict=True):
                    if row is not None and row.event_ts >= ts:
                        fresh.append(now - produced)
                    else:
                        still.append((k, ts, produced))
                pending = still
            if stop_at is not None and (not pending or now > stop_at):
                break
            time.sleep(0.25)
    watermarks.close()
    store.close()
    a = np.asarray(fresh)
    print(f"producer ran {args.seconds:.0f}s at {args.rate:,.0f}/s; elapsed {time.time() - t_start:.0f}s")
    if len(a):
        p50, p95, p99 = np.percentile(a, [50, 95, 99])
        print(
            f"freshness produce → Redis, {len(a)} sampled events: p50 {p50:.1f} s, p95 {p95:.1f} s, "
            f"p99 {p99:.1f} s, max {a.max():.1f} s"
        )
    oldest = max((time.time() - produced for _, _, produced in pending), default=0.0)
    print(f"unresolved samples: {len(pending)} (oldest waiting {oldest:.0f} s)")
    return {p: np.concatenate(v) if v else np.empty(0) for p, v in stamps.items()}


def _pcts(name: str, values: list[float]) -> str:
    if not values:
        return f"{name} n/a"
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return f"{name} p50 {p50:.2f} / p95 {p95:.2f} / p99 {p99:.2f} s"


def _daemon_breakdown(home: Path, stamps: dict[int, np.ndarray]) -> None:
    """Per run: tick (first offset produced → run created; stream runs), queue (created → started),
    launch (started → step started: run worker spawn + code load), step (step started → run ended:
    read, compute, publish or ingest)."""
    import dagster as dg

    os.environ["DAGSTER_HOME"] = str(home)
    with dg.DagsterInstance.get() as instance:
        for job in ("stream_features_job", "feature_ingestion_job"):
            records = instance.get_run_records(filters=dg.RunsFilter(job_name=job))
            runs = [r.dagster_run for r in records]
            tick, queue, launch, step = [], [], [], []
            for r in records:
                created = r.create_timestamp.timestamp()
                tags = r.dagster_run.tags
                if job == "stream_features_job" and "risk/offset_range" in tags:
                    start = int(tags["risk/offset_range"].split("-")[0])
                    ts = stamps.get(int(tags.get("risk/partition", 0)), np.empty(0))
                    if start < len(ts):
                        tick.append(created - float(ts[start]))
                if not r.start_time:
                    continue
                queue.append(r.start_time - created)
                steps = instance.all_logs(r.dagster_run.run_id, of_type=dg.DagsterEventType.STEP_START)
                if steps and r.end_time:
                    launch.append(steps[0].timestamp - r.start_time)
                    step.append(r.end_time - steps[0].timestamp)
            ok = sum(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
            sizes = [
                int(r.tags["risk/offset_range"].split("-")[1])
                - int(r.tags["risk/offset_range"].split("-")[0])
                for r in runs
                if "risk/offset_range" in r.tags
            ]
            print(
                f"{job}: {len(runs)} runs ({ok} succeeded); range size mean {np.mean(sizes or [0]):,.0f}, "
                f"max {max(sizes or [0]):,}"
            )
            parts = (("tick", tick), ("queue", queue), ("launch", launch), ("step", step))
            print("  " + "; ".join(_pcts(n, v) for n, v in parts))


def run_worker(args: argparse.Namespace) -> None:
    """The continuous worker (``risk-stream``) on its own stack, measured like the daemon mode."""
    for var in ("REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS", "S3_ENDPOINT_URL", "DAGSTER_PG_URL"):
        os.environ.pop(var, None)
    work = Path(tempfile.mkdtemp(prefix="bench-worker-"))
    config = launcher.StackConfig(
        state_dir=work / "stack",
        redis_port=launcher.free_port(),
        kafka_port=launcher.free_port(),
        topic_partitions=args.partitions,
    )
    env = launcher.up(config)
    child_env = {**os.environ, **env, "RISK_LAKE_URL": str(work / "lake")}
    print(f"stack: {env['KAFKA_BOOTSTRAP_SERVERS']}, {args.partitions} partition(s); worker: risk-stream")
    log_path = work / "worker.log"
    worker = subprocess.Popen(
        [str(Path(sys.executable).parent / "risk-stream"), "--worker-id", "bench"],
        env=child_env,
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        from risk_assets.features.redis_client import connect
        from risk_assets.streaming import progress
        from risk_assets.streaming.handoff import Handoff

        handoff = Handoff(connect(env["REDIS_URL"]))
        deadline = time.monotonic() + 120
        while not handoff.read(f"{EVENTS_TOPIC}/0").owner:  # the worker holds its partitions
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"risk-stream did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.2)
        stamps = _measure_freshness(args, env)
        records = [r for _, r in progress.read_after(handoff.client, "risk", None, count=1_000_000)]
        _worker_breakdown(records, stamps)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
        launcher.down(config)
        print(f"worker log: {log_path}")


def _worker_breakdown(records: list, stamps: dict[int, np.ndarray]) -> None:
    """Per events range: wait (its first event produced → the loop started reading it), read,
    compute (decode + state + engine), publish, ingest (the buffer's new rows into Redis), and the
    whole range (read → commit); per feature-log write (every ~10 s); range sizes and the lag."""
    events = [r for r in records if r.asset == STREAM_FEATURE_BUFFER]
    ingests = [r for r in records if r.asset == ONLINE_FEATURES]
    wait = []
    for r in events:
        ts = stamps.get(r.partition, np.empty(0))
        if r.start < len(ts):
            wait.append(r.committed_ms / 1000 - r.seconds - float(ts[r.start]))
    sizes = [r.end - r.start for r in events] or [0]
    lag_offsets = max((r.lag_offsets for r in events), default=0)
    lag_seconds = max((r.lag_seconds for r in events), default=0.0)
    print(
        f"worker: {len(events)} events ranges (size mean {np.mean(sizes):,.0f}, max {max(sizes):,}), "
        f"{len(ingests)} feature-log writes; lag at commit max {lag_offsets:,} offsets, {lag_seconds:.1f} s"
    )
    parts = (
        ("wait", wait),
        ("read", [r.read_s for r in events]),
        ("compute", [r.compute_s for r in events]),
        ("publish", [r.publish_s for r in events]),
        ("ingest", [r.ingest_s for r in events]),
        ("range", [r.seconds for r in events]),
        ("feature log", [r.seconds for r in ingests]),
    )
    for name, values in parts:
        print("  " + _pcts(name, values))


if __name__ == "__main__":
    main()
