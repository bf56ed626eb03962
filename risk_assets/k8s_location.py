"""The risk_assets code location as deployed on Kubernetes: the same definitions, k8s executor.

``deploy/helm/values.yaml`` starts the code server with ``-m risk_assets.k8s_location``. Runs are
launched as Kubernetes Jobs by the ``K8sRunLauncher`` (instance config, in the Helm values), and
inside a run every step is its own Kubernetes Job (``k8s_job_executor``, configured here), so a
7-day feature backfill and a one-minute stream range get pods of their own size. Pod sizes per step
come from :data:`STEP_RESOURCES`, keyed by step (op) name; the rest of a step's pod (image, env,
secrets) is inherited from the run launcher.

Needs the ``k8s`` extra (``dagster-k8s``). Local runs keep :mod:`risk_assets.definitions`, whose
default executor runs steps in processes on the same machine. See docs/deploy.md.
"""

from __future__ import annotations

from typing import Any

import dagster as dg
from dagster_k8s import k8s_job_executor

from risk_assets.definitions import build_definitions
from risk_assets.partitions import TimePartitions


def _resources(cpu: str, memory: str, cpu_limit: str | None = None) -> dict[str, Any]:
    limits = {"memory": memory, **({"cpu": cpu_limit} if cpu_limit else {})}
    return {"container_config": {"resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": limits}}}


DEFAULT_STEP_RESOURCES = _resources("250m", "1Gi")
"""Pod size of a step not listed in :data:`STEP_RESOURCES` (profiles, checks, registry steps)."""

STEP_RESOURCES: dict[str, dict[str, Any]] = {
    # Polars over the archive: the memory-heavy runs (a week of days plus the groups' lookback).
    "batch_features": _resources("2", "8Gi", cpu_limit="4"),
    "training_set": _resources("1", "8Gi", cpu_limit="2"),
    "challenger_model": _resources("2", "4Gi", cpu_limit="4"),
    # A day of hours from Kafka per run (BackfillPolicy.multi_run(24)).
    "archive_raw_events": _resources("1", "4Gi"),
    "archive_raw_labels": _resources("250m", "1Gi"),
    # Stream ranges and ingestion: short, frequent, small.
    "stream_feature_buffer": _resources("500m", "1Gi"),
    "ingest_feature_buffer": _resources("500m", "1Gi"),
    "online_store_sync": _resources("1", "2Gi"),
}
"""Kubernetes ``resources`` per step (op) name; a step is one asset or multi-asset."""

EXECUTOR_CONFIG: dict[str, Any] = {
    # Steps of one run in parallel (the pools in the instance config bound runs across the cluster).
    "max_concurrent": 4,
    "step_k8s_config": DEFAULT_STEP_RESOURCES,
    "per_step_k8s_config": STEP_RESOURCES,
    # Step pods are garbage-collected with their run pod.
    "enable_owner_references": True,
}
"""The ``k8s_job_executor`` config every run of this location uses (validated in the tests)."""


@dg.definitions
def defs() -> dg.Definitions:
    """The local wiring (partitions from ``RISK_DATA_START``, read at load) with the k8s executor."""
    return dg.Definitions.merge(
        build_definitions(TimePartitions.from_env()),
        dg.Definitions(executor=k8s_job_executor.configured(EXECUTOR_CONFIG, name="k8s_steps")),
    )
