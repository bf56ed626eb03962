"""`make demo`: the longest chain that exists, end to end, on the local stack.

1. start the stack (real Redis + Kafka-protocol broker) with ``risk-stack`` and write 24 days of
   history straight into the archive;
2. replay simulated exchange traffic (events, labels, a little bad input) into the broker, with
   Kafka timestamps = simulated arrival times;
3. run the ``raw_archive_job`` for those hours on the Dagster instance in ``DAGSTER_HOME`` (so the
   runs show up in ``make dev``'s UI);
4. materialize every batch feature group for that day into the offline store;
5. catch up the stream path as the sensors would: micro-batches over exact offset ranges of
   ``risk.events`` → ``risk.features`` → online store (Redis) + feature log, then read one entity's
   features back from Redis;
6. training set, challenger, promotion gate; offline → online sync with its audit; a drift report,
   realized performance and the profiles of the last day; the feature catalog;
7. start ``risk-serve`` on the champion, score a few live events (frauds and legit ones), then
   confirm the deployed model against it, copy its prediction log to the lake and scrape its health;
8. print what was produced and where, and every asset check's verdict (a red one says why).

The history hours the simulator writes straight into the archive are reported to the instance as
materializations (runless events), so the UI shows the simulated days as materialized and nothing
before them (the partitions start at the first simulated day, ``RISK_DATA_START``).

Re-running is safe: if the broker already holds the demo's traffic it is not produced again, and
archiving an hour again replaces it with the same bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.request
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
import polars as pl

from risk_assets.features.groups import FEATURE_GROUPS
from risk_assets.features.ingestion import group_layout
from risk_assets.features.online_store import OnlineStore
from risk_assets.features.stream_state import stream_groups
from risk_assets.ingest.archive import EVENTS, LABELS, dead_letter_part_path
from risk_assets.ingest.archive_format import archive_part_path
from risk_assets.ingest.kafka_reader import KafkaRangeReader
from risk_assets.ingest.partitioning import archive_hours
from risk_assets.lake import Lake
from risk_assets.models import registry
from risk_assets.models.thresholds import MANIFEST_KEY as THRESHOLDS_KEY
from risk_assets.names import (
    DEPLOYED_MODEL,
    DRIFT_REPORT,
    EVENTS_TOPIC,
    FEATURE_CATALOG,
    FEATURE_PROFILES,
    ONLINE_STORE_SYNC,
    PREDICTION_LOG,
    RAW_EVENTS,
    RAW_EVENTS_DAILY_PROFILE,
    RAW_EVENTS_PROFILE,
    RAW_LABELS,
    REALIZED_PERFORMANCE,
    ROW_COUNT,
    SERVICE_HEALTH,
    TRAINING_SET_PROFILE,
    feature_asset_key,
)
from risk_assets.partitions import DATA_START_ENV, TimePartitions
from risk_assets.resources import LakeResource
from risk_assets.sensors.catch_up import catch_up
from risk_assets.sensors.kafka_sensors import feature_ingestion_sensor, stream_features_sensor
from risk_assets.serving.config import FALLBACK_BLOCK, FALLBACK_REVIEW
from risk_assets.simulator.config import SimConfig
from risk_assets.simulator.encoding import encode_events
from risk_assets.simulator.generator import generate
from risk_assets.simulator.writers import make_producer, replay, write_history
from risk_assets.stack import launcher

DEMO_START = datetime(2026, 11, 1, tzinfo=UTC)
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
# What `make` exports; set here too so `python -m risk_assets.demo` works on its own.
LOCAL_DEFAULTS = {
    "RISK_RAW_EVENT_BACKEND": "lake",
    "RISK_FEATURE_COMPUTE_BACKEND": "polars",
    "SNOWFLAKE_ACCOUNT": "",
    "SNOWFLAKE_USER": "",
    "SNOWFLAKE_PASSWORD": "",
    "RISK_SERVE_URL": "",
}
PARTITION_FMT = "%Y-%m-%d-%H:%M"
# The champion's training set: events of a TRAIN_WINDOW_DAYS window that ends LABEL_MATURITY_DAYS
# before the cutoff. The maturity is the slowest label type's: a card-testing burst's declined
# attempts are labelled `fraud_attempt` when the case is confirmed (first chargeback + review,
# 3.5–11 days after the burst) and chargebacks take ~12 days (median). Measured on the simulator
# (spine + labels, seed 7): before (14 days × 150k events, 7-day window, 3 days) 1,241 positives,
# 36 % of the window's fraud labelled, the label rate falling 0.70 % → 0.13 % from its oldest day to
# its newest — the test split (the newest days) scored the model against mostly missing labels.
# Now (24 days × 100k, 10-day window, 10 days) 2,937 positives, 67 % labelled, the rate following
# the ground truth on every day. The history holds window + maturity + 4 days of feature warm-up.
TRAIN_WINDOW_DAYS = 10
LABEL_MATURITY_DAYS = 10
MIN_WARM_UP_DAYS = 4


def step(msg: str) -> None:
    print(f"==> {msg}", flush=True)


def info(msg: str) -> None:
    print(f"    {msg}", flush=True)


def _events_in_broker(bootstrap: str) -> int:
    with KafkaRangeReader(bootstrap, timeout_s=10) as reader:
        return sum(reader.bounds(EVENTS_TOPIC, p)[1] for p in reader.partitions(EVENTS_TOPIC))


def _materialize(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    keys: set[dg.AssetKey],
    *,
    partition_key: str | None = None,
    partition_range: tuple[str, str] | None = None,
    config: dict | None = None,
) -> dg.ExecuteInProcessResult:
    """Materialize ``keys`` on ``instance`` as the UI would (one run), quietly; raise on failure."""
    tags = {"risk/source": "make-demo"}
    if partition_range:
        tags |= {
            "dagster/asset_partition_range_start": partition_range[0],
            "dagster/asset_partition_range_end": partition_range[1],
        }
    job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection=keys)
    result = job.execute_in_process(
        instance=instance,
        partition_key=partition_key,
        tags=tags,
        # The run's full log is in the UI; keep the terminal to the demo's own progress lines.
        run_config={**QUIET, **({"ops": config} if config else {})},
        raise_on_error=False,
    )
    if not result.success:
        raise DemoFailure(
            f"run {result.run_id} ({', '.join(k.to_user_string() for k in keys)}) failed: see the UI"
        )
    return result


class DemoFailure(RuntimeError):
    """A demo step failed; the message says where to look."""


def run(
    hours: int,
    events_per_day: int,
    history_days: int,
    history_events_per_day: int,
    bad_rate: float,
    seed: int,
) -> int:
    t_all = time.perf_counter()
    step("starting the local stack (risk-stack up)")
    # DAGSTER_STORAGE=postgres (Makefile): the instance in DAGSTER_HOME stores into PostgreSQL.
    with_postgres = os.environ.get("DAGSTER_STORAGE") == "postgres"
    # REDIS_CLUSTER=3 (Makefile): a local 3-primary Redis Cluster instead of one Redis.
    try:
        redis_cluster = int(os.environ.get("REDIS_CLUSTER") or 0)
    except ValueError:
        raise DemoFailure(
            f"REDIS_CLUSTER must be a number of primaries, not {os.environ['REDIS_CLUSTER']!r}"
        ) from None
    endpoints = launcher.up(
        launcher.StackConfig(
            state_dir=launcher.default_stack_dir(), with_postgres=with_postgres, redis_cluster=redis_cluster
        )
    )
    exported = ("REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS", "DAGSTER_PG_URL")
    for k in exported:
        if k in endpoints:
            info(f"{k}={endpoints[k]}")
    os.environ.update({k: v for k, v in endpoints.items() if k in exported})
    lake_url = os.environ.setdefault("RISK_LAKE_URL", str(launcher.default_stack_dir().parent / "lake"))
    for key, default in LOCAL_DEFAULTS.items():
        os.environ.setdefault(key, default)
    bootstrap = endpoints["KAFKA_BOOTSTRAP_SERVERS"]
    lake = LakeResource(url=lake_url).lake()

    if history_days < TRAIN_WINDOW_DAYS + LABEL_MATURITY_DAYS + MIN_WARM_UP_DAYS:
        raise DemoFailure(
            f"--history-days {history_days} is too short: the champion trains on a {TRAIN_WINDOW_DAYS}-day "
            f"window whose labels had {LABEL_MATURITY_DAYS} days to mature, after {MIN_WARM_UP_DAYS} days of "
            f"feature warm-up (at least {TRAIN_WINDOW_DAYS + LABEL_MATURITY_DAYS + MIN_WARM_UP_DAYS})"
        )
    history_start = DEMO_START - timedelta(days=history_days)
    history = SimConfig(
        seed=seed, start=history_start, hours=24 * history_days, events_per_day=history_events_per_day
    )
    step(f"writing {history_days} days of history from {history_start:%Y-%m-%d} straight into the archive")
    if lake.exists(archive_part_path(EVENTS.dataset, history_start)):
        info("already there (re-run): not writing it again")
    else:
        stats = write_history(history, lake, beyond_end="drop", progress=lambda m: info(m))
        info(
            f"{stats.events:,} events, {stats.labels:,} labels, {stats.partitions} partitions "
            f"in {stats.seconds:.1f}s"
        )

    live = history.with_(start=DEMO_START, hours=hours, events_per_day=events_per_day)
    step(f"simulating {hours} h of live traffic from {DEMO_START:%Y-%m-%d %H:%M}Z into the broker")
    already = _events_in_broker(bootstrap)
    if already:
        info(f"the broker already holds {already:,} event messages: not producing them again")
    else:
        stats = replay(live, make_producer(bootstrap), bad_rate=bad_rate, progress=lambda m: info(m))
        if stats.delivery_errors:
            raise DemoFailure(f"{stats.delivery_errors} messages were not delivered")
        info(
            f"produced {stats.events:,} event messages ({stats.bad:,} deliberately bad) and "
            f"{stats.labels:,} labels in {stats.seconds:.1f}s ({stats.events / stats.seconds:,.0f} msg/s)"
        )

    # After the environment is set (resources read their EnvVars at run time); the partitions start
    # at the first simulated day, as `make dev` shows them (RISK_DATA_START in the Makefile).
    from risk_assets.definitions import build_definitions

    data_start = os.environ.get(DATA_START_ENV, "")
    if data_start and data_start != f"{history_start:%Y-%m-%d}":
        info(f"note: {DATA_START_ENV}={data_start} but the simulated data starts {history_start:%Y-%m-%d}")
    defs = build_definitions(TimePartitions(history_start.date()))

    instance = dg.DagsterInstance.get()
    demo_started = datetime.now(UTC)
    reported = _report_history(instance, lake, history_start, DEMO_START)
    if reported:
        info(f"reported {reported} history hours of raw_events/raw_labels to the instance (UI partitions)")
    step(
        f"archiving the live hours {live.start:%Y-%m-%d %H}:00 .. "
        f"{live.end - timedelta(hours=1):%H}:00 from the broker"
    )
    t0 = time.perf_counter()
    _materialize(
        defs,
        instance,
        {
            dg.AssetKey(k)
            for k in ("raw_events", "raw_event_dead_letters", "raw_labels", "raw_label_dead_letters")
        },
        partition_range=(
            live.start.strftime(PARTITION_FMT),
            (live.end - timedelta(hours=1)).strftime(PARTITION_FMT),
        ),
    )
    info(f"done in {time.perf_counter() - t0:.1f}s")

    days = (f"{history_start:%Y-%m-%d}", f"{DEMO_START:%Y-%m-%d}")
    step(f"batch features: {len(FEATURE_GROUPS)} groups for {days[0]} .. {days[1]} as ONE backfill run")
    t0 = time.perf_counter()
    features = _materialize(
        defs, instance, {feature_asset_key(g.name) for g in FEATURE_GROUPS}, partition_range=days
    )
    # One materialization per (group, day), each with that day's own row count.
    feature_rows = sum(
        m.metadata[ROW_COUNT].value for m in features.asset_materializations_for_node("batch_features")
    )
    info(f"{feature_rows:,} feature rows in {time.perf_counter() - t0:.1f}s")

    as_of_day = f"{DEMO_START - timedelta(days=1):%Y-%m-%d}"
    step(
        f"training set as of {DEMO_START:%Y-%m-%d} 00:00 ({TRAIN_WINDOW_DAYS}-day window, labels mature "
        f"{LABEL_MATURITY_DAYS} days), challenger model, promotion gate"
    )
    t0 = time.perf_counter()
    trained = _materialize(
        defs,
        instance,
        {dg.AssetKey("training_set"), dg.AssetKey("challenger_model"), dg.AssetKey("model_promotion")},
        partition_key=as_of_day,
        config={
            "training_set": {
                "config": {"window_days": TRAIN_WINDOW_DAYS, "maturity_days": LABEL_MATURITY_DAYS}
            },
            "challenger_model": {"config": {"n_estimators": 300}},
        },
    )
    meta = {
        e.asset_key.path[-1]: e.materialization.metadata for e in trained.get_asset_materialization_events()
    }
    ts_meta, model_meta, promo_meta = meta["training_set"], meta["challenger_model"], meta["model_promotion"]
    info(
        f"training set: {ts_meta['dagster/row_count'].value:,} rows, {ts_meta['positives'].value:,} frauds "
        f"({ts_meta['positive_share'].value:.2%}), {ts_meta['features'].value} features"
    )
    info(
        f"challenger {model_meta['version'].value}: test AUC {model_meta['test/auc'].value:.3f}, "
        f"AP {model_meta['test/average_precision'].value:.3f}, "
        f"recall@1%FPR {model_meta['test/recall_at_1pct_fpr'].value:.3f}"
    )
    info(
        f"promotion: {'promoted' if promo_meta['promoted'].value else 'kept the champion'} "
        f"→ champion {promo_meta['champion'].value}"
    )
    info(f"done in {time.perf_counter() - t0:.1f}s")

    step("stream path: sensor ticks → micro-batches over exact offset ranges → risk.features → Redis")
    t0 = time.perf_counter()
    caught = catch_up(defs, instance, [stream_features_sensor, feature_ingestion_sensor], progress=info)
    if caught.failed:
        raise DemoFailure(f"stream runs failed: {caught.failed}")
    info(f"{caught.runs} runs in {time.perf_counter() - t0:.1f}s")

    step("offline → online sync (the 10-minute schedule, once) and its consistency audit")
    t0 = time.perf_counter()
    synced = _materialize(defs, instance, {dg.AssetKey(ONLINE_STORE_SYNC)})
    (sync_meta,) = [e.materialization.metadata for e in synced.get_asset_materialization_events()]
    (audit,) = synced.get_asset_check_evaluations()
    info(
        f"{sync_meta['dagster/row_count'].value:,} rows written, "
        f"{sync_meta['skipped_not_newer'].value:,} not newer; "
        f"audit mismatch rate {audit.metadata['mismatch_rate'].value:.2%} "
        f"on {audit.metadata['sampled'].value:,} entities ({'passed' if audit.passed else 'FAILED'}) "
        f"in {time.perf_counter() - t0:.1f}s"
    )

    step(f"daily monitoring of {as_of_day}: profiles, feature catalog, realized performance")
    t0 = time.perf_counter()
    day_start = DEMO_START - timedelta(days=1)
    _materialize(
        defs,
        instance,
        {dg.AssetKey(RAW_EVENTS_PROFILE)},
        partition_range=(
            day_start.strftime(PARTITION_FMT),
            (DEMO_START - timedelta(hours=1)).strftime(PARTITION_FMT),
        ),
    )
    _materialize(
        defs,
        instance,
        {
            dg.AssetKey(k)
            for k in (RAW_EVENTS_DAILY_PROFILE, FEATURE_PROFILES, TRAINING_SET_PROFILE, REALIZED_PERFORMANCE)
        },
        partition_key=as_of_day,
    )
    _materialize(defs, instance, {dg.AssetKey(FEATURE_CATALOG)})
    info(f"done in {time.perf_counter() - t0:.1f}s")

    step(f"drift report for {as_of_day}: that day's decisions vs the champion's training reference")
    t0 = time.perf_counter()
    drift = _materialize(defs, instance, {dg.AssetKey(DRIFT_REPORT)}, partition_key=as_of_day)
    (drift_meta,) = [e.materialization.metadata for e in drift.get_asset_materialization_events()]
    checks = {c.check_name: c.passed for c in drift.get_asset_check_evaluations()}
    info(
        f"{drift_meta['drifted'].value} of {drift_meta['features'].value} features drifted "
        f"(share {drift_meta['share_drifted'].value:.1%}), prediction PSI "
        f"{drift_meta['prediction_psi'].value:.3f}; checks {checks} in {time.perf_counter() - t0:.1f}s"
    )
    info(f"report: {drift_meta['path'].value} (and report.md beside it; markdown in the UI)")

    step("scoring service: risk-serve with the champion and the online store, scoring live events")
    info(_champion_thresholds(lake))
    with _risk_serve(endpoints, lake.url) as (base, token):
        for line in _score_sample(live, base, token):
            info(line)
        step("what serves: deployed model, prediction log, service health (against the running service)")
        t0 = time.perf_counter()
        os.environ["RISK_SERVE_URL"] = base
        try:
            serving = _materialize(
                defs, instance, {dg.AssetKey(k) for k in (DEPLOYED_MODEL, PREDICTION_LOG, SERVICE_HEALTH)}
            )
        finally:
            os.environ["RISK_SERVE_URL"] = ""
        smeta = {
            e.asset_key.path[-1]: e.materialization.metadata
            for e in serving.get_asset_materialization_events()
        }
        deployed = smeta[DEPLOYED_MODEL]
        info(
            f"deployed {deployed['champion'].value} (served: {deployed['served_version'].value}); "
            f"{smeta[PREDICTION_LOG][ROW_COUNT].value} predictions logged; in {time.perf_counter() - t0:.1f}s"
        )

    live_hours = archive_hours(live.start, live.end)
    events = pl.concat(
        [pl.read_parquet(lake.read_bytes(archive_part_path(EVENTS.dataset, h))) for h in live_hours]
    )
    labels = pl.concat(
        [pl.read_parquet(lake.read_bytes(archive_part_path(LABELS.dataset, h))) for h in live_hours]
    )
    dead = pl.concat([pl.read_parquet(lake.read_bytes(dead_letter_part_path(EVENTS, h))) for h in live_hours])

    step("summary")
    info(
        f"raw_events (live hours): {events.height:,} events; history: {history_days} days in the same archive"
    )
    for row in events.group_by("event_type").len().sort("len", descending=True).iter_rows():
        info(f"    {row[0]:<16} {row[1]:>9,}")
    info(f"raw_labels (live hours): {labels.height:,} fraud labels")
    reasons = ", ".join(f"{r} {n}" for r, n in dead.group_by("reason").len().sort("reason").iter_rows())
    info(f"dead letters: {dead.height:,} ({reasons or 'none'})")
    info(f"lake:         {lake.url}/  (raw_events/, features/, training_sets/, models/registry/)")
    info(f"features:     {feature_rows:,} rows in {len(FEATURE_GROUPS)} groups")
    sample = _online_sample(endpoints["REDIS_URL"], events)
    if sample:
        info(f"online store: Redis {endpoints['REDIS_URL']} — e.g. {sample}")
    info(f"Dagster home: {os.environ.get('DAGSTER_HOME', '(ephemeral)')}")
    info(_archive_partition_status(instance, TimePartitions(history_start.date()), live.end))
    for line in _check_summary(instance, demo_started):
        info(line)
    info("UI:           make dev  →  http://127.0.0.1:3000  (asset graph, the runs above, their metadata)")
    info(f"done in {time.perf_counter() - t_all:.1f}s; stop the stack with `make stack-down`")
    return 0


def _archive_partition_status(
    instance: dg.DagsterInstance, partitions: TimePartitions, until: datetime
) -> str:
    """What the UI's partition bar of ``raw_events`` shows: hours materialized vs hours that exist."""
    keys = partitions.hourly.get_partition_keys(current_time=until)
    done = instance.get_materialized_partitions(dg.AssetKey(RAW_EVENTS)) & set(keys)
    missing = [k for k in keys if k not in done]
    first_missing = f", first missing {missing[0]}" if missing else ""
    return (
        f"partitions:   raw_events {len(done):,} of {len(keys):,} hours materialized "
        f"({keys[0]} .. {keys[-1]}){first_missing}"
    )


def _champion_thresholds(lake: Lake) -> str:
    """The champion's decision thresholds (chosen at training by its policy, in its manifest) and what
    they achieved on its test split."""
    champ = registry.champion(lake)
    if champ is None:
        raise DemoFailure("no champion to serve")
    t = registry.load_manifest(lake, champ.version).get(THRESHOLDS_KEY)
    if t is None:  # a champion registered before thresholds existed (an older .state/)
        return (
            f"thresholds: champion {champ.version} predates thresholds in the manifest; risk-serve "
            f"uses its fallback {FALLBACK_REVIEW} / {FALLBACK_BLOCK} (`make clean` starts afresh)"
        )
    r, b = t["review_point"], t["block_point"]
    return (
        f"thresholds (the model's): review ≥ {r['threshold']:.3g} (test FPR {r['fpr']:.2%}, recall "
        f"{r['recall']:.1%}, {r['flagged_per_day']:.0f}/day), block ≥ {b['threshold']:.3g} "
        f"(FPR {b['fpr']:.2%}, recall {b['recall']:.1%})"
    )


@contextlib.contextmanager
def _risk_serve(endpoints: dict[str, str], lake_url: str) -> Iterator[tuple[str, str]]:
    """Run risk-serve on the champion while the block runs: yields (base URL, bearer token)."""
    token, port = secrets.token_urlsafe(24), launcher.free_port()
    env = {
        **os.environ,
        **endpoints,
        "RISK_SERVE_TOKEN": token,
        "RISK_LAKE_URL": lake_url,
    }
    log_path = launcher.default_stack_dir() / "logs" / "risk-serve.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "wb")  # noqa: SIM115 - lives as long as the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "risk_assets.serving.cli", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise DemoFailure(f"risk-serve exited with {proc.returncode}; see {log.name}")
            try:
                with urllib.request.urlopen(f"{base}/readyz", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise DemoFailure(f"risk-serve was not ready within 60 s; see {log.name}")
            time.sleep(0.5)
        yield base, token
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _score_sample(live: SimConfig, base: str, token: str, per_class: int = 3) -> list[str]:
    """Score a few frauds and legit decisions of the live hours through the running risk-serve."""
    data = generate(live)
    decisions = data.events.filter(pl.col("event_type").is_in(["withdrawal", "card_payment", "p2p_trade"]))
    truth = data.ground_truth.select("event_id", "is_fraud", "scenario")
    picked = decisions.join(truth, on="event_id").sort("event_ts", "event_id")
    sample = pl.concat(
        [
            picked.filter(pl.col("is_fraud")).head(per_class),
            picked.filter(~pl.col("is_fraud")).head(per_class),
        ]
    )
    bodies = encode_events(sample.drop("is_fraud", "scenario"))
    lines = [f"risk-serve on {base} (POST /v1/score, bearer token; GET /metrics)"]
    for body, row in zip(bodies, sample.iter_rows(named=True), strict=True):
        req = urllib.request.Request(
            f"{base}/v1/score",
            data=body,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        t0 = time.perf_counter()
        with urllib.request.urlopen(req, timeout=10) as resp:
            out = json.load(resp)
        ms = (time.perf_counter() - t0) * 1000
        truth_s = f"fraud ({row['scenario']})" if row["is_fraud"] else "legit"
        top = out["reasons"][0]["feature"] if out["reasons"] else "-"
        verdict = f"score {out['score']:.4f} → {out['decision']:<6}"
        lines.append(f"{row['event_type']:<12} truth {truth_s:<20} {verdict} top reason {top} ({ms:.1f} ms)")
    return lines


def _report_history(instance: dg.DagsterInstance, lake: Lake, start: datetime, end: datetime) -> int:
    """Report the archive hours the simulator wrote directly as materializations of ``raw_events``
    and ``raw_labels`` (runless events with each hour's row count), once per instance."""
    first = start.strftime(PARTITION_FMT)
    if instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(RAW_EVENTS), asset_partitions=[first]), limit=1
    ).records:
        return 0
    hours = 0
    for hour in archive_hours(start, end):
        for dataset in (RAW_EVENTS, RAW_LABELS):
            path = archive_part_path(dataset, hour)
            if not lake.exists(path):
                continue
            rows = pl.read_parquet(lake.read_bytes(path)).height
            instance.report_runless_asset_event(
                dg.AssetMaterialization(
                    asset_key=dataset,
                    partition=hour.strftime(PARTITION_FMT),
                    metadata={ROW_COUNT: rows, "source": "risk-sim history (written straight to the lake)"},
                )
            )
        hours += 1
    return hours


def _check_summary(instance: dg.DagsterInstance, since: datetime) -> list[str]:
    """Every asset check evaluated by this demo's runs: the latest verdict per check, reds explained."""
    latest: dict[tuple[str, str], Any] = {}
    records = instance.get_run_records(dg.RunsFilter(created_after=since), ascending=True)
    for record in records:
        for entry in instance.all_logs(
            record.dagster_run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
        ):
            ev = entry.dagster_event.event_specific_data
            latest[(ev.asset_key.to_user_string(), ev.check_name)] = ev
    failed = [(k, ev) for k, ev in sorted(latest.items()) if not ev.passed]
    lines = [f"checks:       {len(latest) - len(failed)} of {len(latest)} passed"]
    for (asset, check), ev in failed:
        why = ev.description or ", ".join(
            f"{k}={getattr(v, 'value', v)}" for k, v in list(ev.metadata.items())[:3]
        )
        lines.append(f"  {ev.severity.value:<5} {asset}:{check} — {why}")
    return lines


def _online_sample(redis_url: str, events: pl.DataFrame) -> str | None:
    """One busy device's card-testing features as the scoring service will read them."""
    group = next(g for g in stream_groups(FEATURE_GROUPS) if g.name == "card_testing_device")
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
    parser.add_argument("--hours", type=int, default=6, help="live hours through the broker")
    parser.add_argument("--events-per-day", type=int, default=1_000_000, help="live traffic volume")
    parser.add_argument("--history-days", type=int, default=24, help="history written to the archive")
    parser.add_argument("--history-events-per-day", type=int, default=100_000)
    parser.add_argument("--bad-rate", type=float, default=0.002)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    try:
        return run(
            args.hours,
            args.events_per_day,
            args.history_days,
            args.history_events_per_day,
            args.bad_rate,
            args.seed,
        )
    except (launcher.StackError, DemoFailure) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
