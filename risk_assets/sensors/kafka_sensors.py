"""Kafka sensors: watch a topic's end offsets and request one run per new exact offset range.

Each tick reads end offsets only (a sensor must never block on consuming), asks the instance how the
runs of inflight ranges went and which partitions have a run of the job queued or running, and lets
``offset_cursor.plan`` decide; the run does the reading. At most one run is in flight per
topic-partition, and it takes everything up to the end seen at the tick (≤ the max range size:
``RISK_STREAM_MAX_RANGE`` / ``RISK_INGEST_MAX_RANGE``, read at each tick), so a partition's ranges are
processed in offset order, partitions in parallel, and a backlog makes ranges larger, not runs more.
Nothing is committed to the broker: the sensor cursor is the only bookkeeping. A changed topic
incarnation or offsets going backwards fail the tick with :class:`OffsetIncident`, which states the
numbers and the cursor to set to accept the new incarnation (``offset_cursor`` module docstring).

The continuous stream worker (``risk-stream``) shares the partitions through the Redis handoff
(``streaming/handoff.py``): while a worker holds a partition's lease the sensor requests no new range
of it (failed ranges it requested before are still retried — the worker waits for them); with no
range of its own outstanding it adopts the worker's committed offset, so when the worker stops, the
sensor carries on from there; every tick records the sensor's progress for the worker to see.
With Redis unreachable the sensor goes on without the handoff (a warning): no worker can commit or
renew a lease then, and a range processed twice is harmless (idempotent writes).
"""

import os
import time
from typing import Any

import dagster as dg
from redis.exceptions import RedisError

from risk_assets.features.redis_client import connect
from risk_assets.features.stream_assets import feature_ingestion_job, stream_features_job
from risk_assets.names import EVENTS_TOPIC, FEATURES_TOPIC
from risk_assets.resources import KafkaResource, RedisResource
from risk_assets.sensors.offset_cursor import (
    OffsetCursor,
    Plan,
    Request,
    RunState,
    accept_incarnations,
    plan,
    tp_key,
)
from risk_assets.streaming.handoff import Handoff

RUN_KEY_TAG = "dagster/run_key"
INCARNATION_TAG = "risk/kafka_incarnation"


class OffsetIncident(Exception):
    """The log under a Kafka sensor is not the one its cursor describes: the sensor stops."""


_FAILED = {dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
_IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
TOPIC_TAG = "risk/topic"
PARTITION_TAG = "risk/partition"


def busy_partitions(instance: dg.DagsterInstance, job_name: str, topic: str) -> set[str]:
    """``topic/partition`` of every run of ``job_name`` over ``topic`` queued or running on the
    instance — whoever launched it (this sensor, a re-execution, a backfill by hand)."""
    runs = instance.get_runs(
        filters=dg.RunsFilter(job_name=job_name, statuses=_IN_FLIGHT, tags={TOPIC_TAG: topic})
    )
    return {tp_key(topic, int(r.tags[PARTITION_TAG])) for r in runs if PARTITION_TAG in r.tags}


def max_range_setting(env_var: str, default: int) -> int:
    """The max range size: ``env_var`` if set (read at each tick, never at import), else ``default``."""
    raw = os.environ.get(env_var, "").strip()
    if not raw:
        return default
    value = int(raw)
    if value <= 0:
        raise ValueError(f"{env_var} must be a positive number of offsets, got {raw!r}")
    return value


def _run_state(instance: dg.DagsterInstance, run_key: str) -> RunState:
    runs = instance.get_runs(filters=dg.RunsFilter(tags={RUN_KEY_TAG: run_key}), limit=1)
    if not runs:
        return "pending"
    if runs[0].status == dg.DagsterRunStatus.SUCCESS:
        return "success"
    return "failure" if runs[0].status in _FAILED else "pending"


def _adopt_worker_progress(
    cursor: OffsetCursor, handoff: Handoff, ends: dict[str, int], incarnation: str, now_ms: int
) -> tuple[set[str], list[str]]:
    """Partitions a live worker holds (``hold``), after moving the cursor of every partition with
    no unfinished range of its own up to the shared committed offset (what a worker did)."""
    hold: set[str] = set()
    notes: list[str] = []
    for tp, end in sorted(ends.items()):
        shared = handoff.read(tp)
        if shared.live_owner(now_ms):
            hold.add(tp)
        if shared.committed is None or shared.incarnation != incarnation:
            continue
        if cursor.incarnations.get(tp, incarnation) != incarnation or shared.committed > end:
            continue  # the incident rules decide
        mine = [i for i in cursor.inflight.values() if i.tp == tp]
        if any(not i.done for i in mine):
            continue
        frontier = max([cursor.committed.get(tp, 0), *(i.end for i in mine)])
        if shared.committed > frontier:
            for key in [k for k, i in cursor.inflight.items() if i.tp == tp]:
                del cursor.inflight[key]
            cursor.committed[tp] = shared.committed
            cursor.incarnations[tp] = incarnation
            notes.append(
                f"{tp}: the stream worker committed up to {shared.committed:,} (cursor was {frontier:,})"
            )
    return hold, notes


def _claim_and_sync(
    handoff: Handoff, p: Plan, ends: dict[str, int], incarnation: str, hold: set[str]
) -> list[Request]:
    """The plan's requests the handoff grants (new ranges only while no worker holds the partition;
    retries always), with the plan's cursor fixed for those refused; then record the sensor's progress."""
    requests = []
    for req in p.requests:
        tp = tp_key(req.range.topic, req.range.partition)
        owner = "" if req.attempt > 1 else handoff.sensor_claim(tp, int(time.time() * 1000), req.range.end)
        if owner:  # a worker took the partition since the start of this tick: leave it the range
            del p.cursor.inflight[req.run_key]
            hold.add(tp)
            continue
        requests.append(req)
    for tp in ends:
        if tp in p.cursor.committed:
            mine = [i.end for i in p.cursor.inflight.values() if i.tp == tp]
            handoff.sensor_sync(tp, p.cursor.committed[tp], max([p.cursor.committed[tp], *mine]), incarnation)
    return requests


def build_offset_range_sensor(
    name: str,
    topic: str,
    job: Any,  # an asset job (define_asset_job)
    op_name: str,
    *,
    max_range: int,
    interval_s: int,
    as_of_field: bool = False,
    max_range_env: str = "",
) -> dg.SensorDefinition:
    """A sensor requesting ``job`` runs over new offset ranges of ``topic`` (≤ ``max_range`` each,
    or ``$max_range_env``), one in flight per partition; with ``as_of_field``, each run's config also
    gets the range's first-request time (``as_of_ms``)."""

    @dg.sensor(
        name=name,
        job=job,
        minimum_interval_seconds=interval_s,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description=(
            f"Every {interval_s}s: read the end offsets of `{topic}` and, for each partition with no "
            f"`{job.name}` run in flight, request one run over everything new (≤ {max_range:,} offsets, "
            f"`{max_range_env}`; run key `topic@<topic id>:partition:start-end`): one partition's ranges "
            "run in offset order, partitions in parallel. The cursor commits a range only after its run "
            "succeeded; failed ranges are re-requested (3 attempts). A new topic incarnation or offsets "
            "going backwards stop it (failed tick)."
        ),
    )
    def _sensor(context: dg.SensorEvaluationContext, kafka: KafkaResource, redis: RedisResource):
        cursor = OffsetCursor.parse(context.cursor)
        with kafka.range_reader() as reader:
            incarnation = reader.incarnation(topic)
            bounds = {tp_key(topic, p): reader.bounds(topic, p) for p in reader.partitions(topic)}
        ends = {tp: end for tp, (_, end) in bounds.items()}
        starts = {tp: low for tp, (low, _) in bounds.items()}
        handoff: Handoff | None = None
        hold: set[str] = set()
        try:
            handoff = Handoff(connect(redis.url, cluster=redis.cluster, socket_timeout=5.0), redis.namespace)
            hold, adopted = _adopt_worker_progress(
                cursor, handoff, ends, incarnation, int(time.time() * 1000)
            )
        except RedisError as exc:
            handoff, adopted = None, []
            context.log.warning(f"stream worker handoff unavailable (Redis: {exc}); going on without it")
        for note in adopted:
            context.log.info(note)
        states = {
            i.run_key: _run_state(context.instance, i.run_key) for i in cursor.inflight.values() if not i.done
        }
        incarnations = dict.fromkeys(ends, incarnation)
        now_ms = int(time.time() * 1000)
        p = plan(
            cursor,
            ends,
            states,
            max_range=max_range_setting(max_range_env, max_range) if max_range_env else max_range,
            starts=starts,
            incarnations=incarnations,
            now_ms=now_ms,
            max_inflight=1,
            busy=busy_partitions(context.instance, job.name, topic),
            hold=hold,
        )
        for note in p.accepted:
            context.log.warning(note)
        if p.incidents:
            resume = accept_incarnations(context.cursor, {tp: incarnation for tp in ends})
            raise OffsetIncident(
                f"{name} stopped: " + " | ".join(p.incidents) + ". Nothing was requested and the cursor "
                "is unchanged. To accept the broker's current log, set the sensor cursor to: " + resume
            )
        for key in p.stuck:
            context.log.error(f"range {key} failed 3 times; re-execute it to let the cursor move on")
        requests = list(p.requests)
        if handoff is not None:
            try:
                requests = _claim_and_sync(handoff, p, ends, incarnation, hold)
            except RedisError as exc:
                context.log.warning(f"stream worker handoff unavailable (Redis: {exc}); going on without it")
        for req in requests:
            r = req.range
            yield dg.RunRequest(
                run_key=req.run_key,
                run_config={
                    "ops": {
                        op_name: {
                            "config": {
                                "topic": r.topic,
                                "partition": r.partition,
                                "start": r.start,
                                "end": r.end,
                                "incarnation": incarnation,
                                **({"as_of_ms": req.as_of_ms} if as_of_field else {}),
                            }
                        }
                    }
                },
                tags={
                    TOPIC_TAG: r.topic,
                    PARTITION_TAG: str(r.partition),
                    "risk/offset_range": f"{r.start}-{r.end}",
                    "risk/attempt": str(req.attempt),
                    INCARNATION_TAG: incarnation,
                },
            )
        context.update_cursor(p.cursor.dumps())
        if not requests:
            owned = f"; the stream worker owns the live tail of {sorted(hold)}" if hold else ""
            yield dg.SkipReason(f"no new offsets on {topic}; committed {p.cursor.committed}{owned}")

    return _sensor


stream_features_sensor = build_offset_range_sensor(
    "stream_features_sensor",
    EVENTS_TOPIC,
    stream_features_job,
    "stream_feature_buffer",
    max_range=50_000,
    interval_s=5,
    as_of_field=True,
    max_range_env="RISK_STREAM_MAX_RANGE",
)
feature_ingestion_sensor = build_offset_range_sensor(
    "feature_ingestion_sensor",
    FEATURES_TOPIC,
    feature_ingestion_job,
    "ingest_feature_buffer",
    max_range=100_000,
    interval_s=5,
    max_range_env="RISK_INGEST_MAX_RANGE",
)
