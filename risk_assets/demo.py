"""`make demo`: the longest chain that exists, end to end, on the local stack.

1. start the stack (real Redis + Kafka-protocol broker) with ``risk-stack``;
2. replay simulated exchange traffic (events, labels, a little bad input) into the broker, with
   Kafka timestamps = simulated arrival times;
3. run the ``raw_archive_job`` for those hours on the Dagster instance in ``DAGSTER_HOME`` (so the
   runs show up in ``make dev``'s UI);
4. materialize every batch feature group for that day into the offline store;
5. catch up the stream path as the sensors would: micro-batches over exact offset ranges of
   ``risk.events`` → ``risk.features`` → online store (Redis) + feature log, then read one entity's
   features back from Redis;
6. print what was produced and where.

Re-running is safe: if the broker already holds the demo's traffic it is not produced again, and
archiving an hour again replaces it with the same bytes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from datetime import UTC, datetime, timedelta

import dagster as dg
import polars as pl

from risk_assets.events.schema import EVENTS_TOPIC
from risk_assets.features.assets import feature_asset_key
from risk_assets.features.definitions import FEATURE_GROUPS
from risk_assets.features.ingestion import group_layout
from risk_assets.features.online_store import OnlineStore
from risk_assets.features.stream_assets import STREAM_GROUPS
from risk_assets.ingest.archive import EVENTS, LABELS, dead_letter_part_path
from risk_assets.ingest.archive_format import archive_part_path
from risk_assets.ingest.kafka_reader import KafkaRangeReader
from risk_assets.lake import Lake
from risk_assets.sensors.catch_up import catch_up
from risk_assets.sensors.kafka_sensors import feature_ingestion_sensor, stream_features_sensor
from risk_assets.simulator.config import SimConfig
from risk_assets.simulator.writers import make_producer, replay
from risk_assets.stack import launcher

DEMO_START = datetime(2026, 11, 1, tzinfo=UTC)
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
# What `make` exports; set here too so `python -m risk_assets.demo` works on its own.
LOCAL_DEFAULTS = {
    "RISK_RAW_EVENT_BACKEND": "lake",
    "SNOWFLAKE_ACCOUNT": "",
    "SNOWFLAKE_USER": "",
    "SNOWFLAKE_PASSWORD": "",
}
PARTITION_FMT = "%Y-%m-%d-%H:%M"


def step(msg: str) -> None:
    print(f"==> {msg}", flush=True)


def info(msg: str) -> None:
    print(f"    {msg}", flush=True)


def _events_in_broker(bootstrap: str) -> int:
    with KafkaRangeReader(bootstrap, timeout_s=10) as reader:
        return sum(reader.bounds(EVENTS_TOPIC, p)[1] for p in reader.partitions(EVENTS_TOPIC))


def run(hours: int, events_per_day: int, bad_rate: float, seed: int) -> int:
    t_all = time.perf_counter()
    step("starting the local stack (risk-stack up)")
    stack_cfg = launcher.StackConfig(state_dir=launcher.default_stack_dir())
    endpoints = launcher.up(stack_cfg)
    for k in ("REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS"):
        info(f"{k}={endpoints[k]}")
    os.environ.update({k: v for k, v in endpoints.items() if k in ("REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS")})
    lake_url = os.environ.setdefault("RISK_LAKE_URL", str(launcher.default_stack_dir().parent / "lake"))
    for key, default in LOCAL_DEFAULTS.items():
        os.environ.setdefault(key, default)
    bootstrap = endpoints["KAFKA_BOOTSTRAP_SERVERS"]

    sim = SimConfig(seed=seed, start=DEMO_START, hours=hours, events_per_day=events_per_day)
    step(f"simulating {hours} h of exchange traffic from {DEMO_START:%Y-%m-%d %H:%M}Z into the broker")
    already = _events_in_broker(bootstrap)
    if already:
        info(f"the broker already holds {already:,} event messages: not producing them again")
    else:
        producer = make_producer(bootstrap)
        stats = replay(sim, producer, bad_rate=bad_rate, progress=lambda m: info(m))
        if stats.delivery_errors:
            print(f"demo: {stats.delivery_errors} messages were not delivered", file=sys.stderr)
            return 1
        info(
            f"produced {stats.events:,} event messages ({stats.bad:,} deliberately bad) and "
            f"{stats.labels:,} labels in {stats.seconds:.1f}s ({stats.events / stats.seconds:,.0f} msg/s)"
        )

    step(f"archiving hours {sim.start:%Y-%m-%d %H}:00 .. {sim.end - timedelta(hours=1):%H}:00 with Dagster")
    from risk_assets.definitions import defs  # after the environment is set: resources read EnvVars

    instance = dg.DagsterInstance.get()
    t0 = time.perf_counter()
    result = defs.resolve_job_def("raw_archive_job").execute_in_process(
        instance=instance,
        tags={
            "dagster/asset_partition_range_start": sim.start.strftime(PARTITION_FMT),
            "dagster/asset_partition_range_end": (sim.end - timedelta(hours=1)).strftime(PARTITION_FMT),
            "risk/source": "make-demo",
        },
        # The run's full log is in the UI; keep the terminal to the demo's own progress lines.
        run_config=QUIET,
        raise_on_error=False,
    )
    if not result.success:
        print("demo: the archive run failed; see the run in the UI (make dev)", file=sys.stderr)
        return 1
    info(f"run {result.run_id} succeeded in {time.perf_counter() - t0:.1f}s")

    day = sim.start.replace(hour=0)
    step(f"computing {len(FEATURE_GROUPS)} batch feature groups for {day:%Y-%m-%d} (offline store)")
    t0 = time.perf_counter()
    features = (
        defs.resolve_implicit_global_asset_job_def()
        .get_subset(asset_selection={feature_asset_key(g) for g in FEATURE_GROUPS})
        .execute_in_process(
            instance=instance, partition_key=f"{day:%Y-%m-%d}", run_config=QUIET, raise_on_error=False
        )
    )
    if not features.success:
        print("demo: the batch feature run failed; see the run in the UI (make dev)", file=sys.stderr)
        return 1
    feature_rows = {
        m.asset_key.path[-1]: m.metadata["dagster/row_count"].value
        for m in features.asset_materializations_for_node("batch_features")
    }
    info(f"{sum(feature_rows.values()):,} feature rows in {time.perf_counter() - t0:.1f}s")

    step("stream path: sensor ticks → micro-batches over exact offset ranges → risk.features → Redis")
    t0 = time.perf_counter()
    caught = catch_up(defs, instance, [stream_features_sensor, feature_ingestion_sensor], progress=info)
    if caught.failed:
        print(f"demo: stream runs failed: {caught.failed}", file=sys.stderr)
        return 1
    info(f"{caught.runs} runs in {time.perf_counter() - t0:.1f}s")

    lake = Lake(lake_url)
    hours_list = [sim.start + timedelta(hours=i) for i in range(hours)]
    events = pl.concat(
        [pl.read_parquet(lake.read_bytes(archive_part_path(EVENTS.dataset, h))) for h in hours_list]
    )
    labels = pl.concat(
        [pl.read_parquet(lake.read_bytes(archive_part_path(LABELS.dataset, h))) for h in hours_list]
    )
    dead = pl.concat([pl.read_parquet(lake.read_bytes(dead_letter_part_path(EVENTS, h))) for h in hours_list])

    step("summary")
    info(f"raw_events:   {events.height:,} events in {hours} hourly partitions")
    for row in events.group_by("event_type").len().sort("len", descending=True).iter_rows():
        info(f"    {row[0]:<16} {row[1]:>9,}")
    info(f"raw_labels:   {labels.height:,} fraud labels known within these hours")
    reasons = ", ".join(f"{r} {n}" for r, n in dead.group_by("reason").len().sort("reason").iter_rows())
    info(f"dead letters: {dead.height:,} ({reasons or 'none'})")
    info(f"lake:         {lake.uri(EVENTS.dataset)}/dt=…/hour=…/part-00000.parquet")
    total_rows = sum(feature_rows.values())
    info(f"features:     {total_rows:,} rows in {len(feature_rows)} groups → {lake.uri('features')}/")
    for name, n in sorted(feature_rows.items()):
        info(f"    {name:<22} {n:>9,}")
    sample = _online_sample(endpoints["REDIS_URL"], events)
    if sample:
        info(f"online store: Redis {endpoints['REDIS_URL']} — e.g. {sample}")
    info(f"Dagster home: {os.environ.get('DAGSTER_HOME', '(ephemeral)')}")
    info("UI:           make dev  →  http://127.0.0.1:3000  (asset graph, the runs above, their metadata)")
    info(f"done in {time.perf_counter() - t_all:.1f}s; stop the stack with `make stack-down`")
    return 0


def _online_sample(redis_url: str, events: pl.DataFrame) -> str | None:
    """One busy device's card-testing features as the scoring service will read them."""
    group = next(g for g in STREAM_GROUPS if g.name == "card_testing_device")
    busiest = (
        events.filter(pl.col("event_type").is_in(list(group.source_event_types)))
        .group_by("device_id")
        .len()
        .sort(["len", "device_id"], descending=[True, False])
    )
    if busiest.height == 0:
        return None
    device = busiest["device_id"][0]
    with OnlineStore.from_url(redis_url) as store:
        (row,) = store.read([(group_layout(group), device)])
    if row is None:
        return None
    shown = ", ".join(f"{k}={v:g}" for k, v in list(row.values.items())[:4] if v is not None)
    return f"{group.name}[{device}] @ {row.event_ts:%H:%M:%S}: {shown}, …"


def main(argv: list[str] | None = None) -> int:
    # Dagster flags backfill_policy as beta on every import; the demo's output is for people.
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    parser = argparse.ArgumentParser(prog="risk-demo", description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=int, default=6)
    parser.add_argument("--events-per-day", type=int, default=1_000_000)
    parser.add_argument("--bad-rate", type=float, default=0.002)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    try:
        return run(args.hours, args.events_per_day, args.bad_rate, args.seed)
    except launcher.StackError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
