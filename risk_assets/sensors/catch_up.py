"""Catch up the Kafka-driven jobs without a daemon: tick the sensors, run what they request.

What the daemon does continuously, done once, in this process, on a given instance: used by
``make demo`` and handy from a notebook after replaying traffic. Runs are real runs on the instance
(visible in the UI), with the same run keys and tags the daemon would give them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import dagster as dg


@dataclass
class CatchUpResult:
    runs: int = 0
    failed: list[str] = field(default_factory=list)
    cursors: dict[str, str | None] = field(default_factory=dict)


def catch_up(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    sensors: Sequence[dg.SensorDefinition],
    *,
    cursors: dict[str, str | None] | None = None,
    max_rounds: int = 50,
    progress: Callable[[str], None] = lambda _: None,
) -> CatchUpResult:
    """Tick ``sensors`` in order and execute their run requests until no sensor requests more."""
    result = CatchUpResult(cursors=dict(cursors or {}))
    resources = defs.resources or {}
    for _ in range(max_rounds):
        requested = 0
        for sensor in sensors:
            needed = {k: resources[k] for k in sensor.required_resource_keys}
            ctx = dg.build_sensor_context(
                instance=instance, cursor=result.cursors.get(sensor.name), resources=needed
            )
            data = sensor.evaluate_tick(ctx)
            result.cursors[sensor.name] = data.cursor
            job = defs.resolve_job_def(sensor.job_name)
            for req in data.run_requests or []:
                requested += 1
                run = job.execute_in_process(
                    run_config={
                        **req.run_config,
                        "loggers": {"console": {"config": {"log_level": "WARNING"}}},
                    },
                    instance=instance,
                    tags={**req.tags, "dagster/run_key": req.run_key, "dagster/sensor_name": sensor.name},
                    raise_on_error=False,
                )
                result.runs += 1
                if not run.success:
                    result.failed.append(req.run_key)
                progress(f"{sensor.name}: {req.run_key} {'ok' if run.success else 'FAILED'}")
        if requested == 0:
            return result
    return result
