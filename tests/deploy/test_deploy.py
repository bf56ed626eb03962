"""The production deployment in ``deploy/`` checked against Dagster's own config schemas.

No cluster runs here, so the Helm values are rendered into instance config the way the chart's
templates do (``_run-launcher.tpl``, ``_postgresql.tpl``, ``_concurrency.tpl`` of chart 1.13.x; only
the keys this project sets, and an unknown key fails the test) and validated with the real schemas:
``K8sRunLauncher.config_type()`` (dagster-k8s), ``DagsterPostgresStorage.config_type()``, the
instance's ``concurrency`` section (by loading a real ``DagsterInstance``), and the k8s_job_executor
config of every job of ``risk_assets.k8s_location`` (``dg.validate_run_config``). The PostgreSQL
part is also connected for real: the chart's ``postgres_db`` form, with its ``scheme``, against the
session's PostgreSQL.
"""

from __future__ import annotations

import importlib
import shutil
import tomllib
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from dagster_k8s import K8sRunLauncher, k8s_job_executor
from dagster_postgres import DagsterPostgresStorage

from risk_assets import backfills
from risk_assets.features.stream_assets import feature_ingestion_job, stream_features_job
from risk_assets.stack import postgres

ROOT = Path(__file__).resolve().parents[2]
VALUES = yaml.safe_load((ROOT / "deploy" / "helm" / "values.yaml").read_text())
NAMESPACE = "risk"

# Every EnvVar of the definitions' resources, so run config can be resolved without a cluster.
RESOURCE_ENV = {
    "RISK_LAKE_URL": "s3://risk-lake/lake",
    "KAFKA_BOOTSTRAP_SERVERS": "kafka:9092",
    "REDIS_URL": "redis://redis:6379/0",
    "RISK_SERVE_URL": "http://risk-serve",
    "RISK_RAW_EVENT_BACKEND": "lake",
    "RISK_FEATURE_COMPUTE_BACKEND": "polars",
    "SNOWFLAKE_ACCOUNT": "",
    "SNOWFLAKE_USER": "",
    "SNOWFLAKE_PASSWORD": "",
}
# What the chart puts into the environment of the daemon and run pods for the instance config.
CHART_ENV = {
    "DAGSTER_HOME": "/opt/dagster/dagster_home",
    "DAGSTER_K8S_INSTANCE_CONFIG_MAP": "risk-dagster-instance",
    "DAGSTER_K8S_PG_PASSWORD_SECRET": "dagster-postgresql-secret",
    "DAGSTER_K8S_PIPELINE_RUN_ENV_CONFIGMAP": "risk-dagster-pipeline-env",
    "DAGSTER_PG_PASSWORD": "",
}


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {**RESOURCE_ENV, **CHART_ENV}.items():
        monkeypatch.setenv(key, value)


def validate(schema: Any, value: Any) -> None:
    """Validate ``value`` against a Dagster config ``schema`` (public API: an op with that schema)."""

    @dg.op(config_schema=schema)
    def probe() -> None: ...

    @dg.job
    def validation_job() -> None:
        probe()

    dg.validate_run_config(validation_job, {"ops": {"probe": {"config": value}}})


def _names(items: list[dict[str, str]]) -> list[str]:
    return [i["name"] for i in items if "name" in i]


def render_run_launcher(values: dict[str, Any]) -> dict[str, Any]:
    """``run_launcher.config`` as the chart's ``dagsterYaml.runLauncher.k8s`` template renders it."""
    k = values["runLauncher"]["config"]["k8sRunLauncher"]
    rendered = {
        "loadInclusterConfig", "kubeconfigFile", "jobNamespace", "imagePullPolicy", "image",
        "envConfigMaps", "envSecrets", "envVars", "volumeMounts", "volumes",
    }  # fmt: skip
    assert set(k) <= rendered, f"keys the chart template does not render: {set(k) - rendered}"
    config: dict[str, Any] = {
        "load_incluster_config": k["loadInclusterConfig"],
        "job_namespace": k.get("jobNamespace") or NAMESPACE,
        "image_pull_policy": k["imagePullPolicy"],
        "service_account_name": "risk-dagster",
        "dagster_home": {"env": "DAGSTER_HOME"},
        "instance_config_map": {"env": "DAGSTER_K8S_INSTANCE_CONFIG_MAP"},
        "postgres_password_secret": {"env": "DAGSTER_K8S_PG_PASSWORD_SECRET"},
        "env_config_maps": [
            {"env": "DAGSTER_K8S_PIPELINE_RUN_ENV_CONFIGMAP"},
            *_names(k.get("envConfigMaps", [])),
        ],
    }
    if k.get("kubeconfigFile"):
        config["kubeconfig_file"] = k["kubeconfigFile"]
    if k.get("envSecrets"):
        config["env_secrets"] = _names(k["envSecrets"])
    for key, name in (("envVars", "env_vars"), ("volumeMounts", "volume_mounts"), ("volumes", "volumes")):
        if k.get(key):
            config[name] = k[key]
    return config


def render_postgres(values: dict[str, Any]) -> dict[str, Any]:
    """The storages' config as the chart's ``dagsterYaml.postgresql.config`` renders it."""
    pg = values["postgresql"]
    db = {
        "username": pg["postgresqlUsername"],
        "password": {"env": "DAGSTER_PG_PASSWORD"},
        "hostname": pg["postgresqlHost"],
        "db_name": pg["postgresqlDatabase"],
        "port": pg["service"]["port"],
        "params": pg.get("postgresqlParams") or {},
    }
    if pg.get("postgresqlScheme"):
        db["scheme"] = pg["postgresqlScheme"]
    return {"postgres_db": db}


def render_concurrency(values: dict[str, Any]) -> dict[str, Any]:
    """``concurrency`` as the chart's ``dagsterYaml.concurrency`` template renders it."""
    c = values["concurrency"]
    assert set(c) <= {"pools", "runs"} and set(c["pools"]) <= {"defaultLimit", "granularity"}
    qrc = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert "maxConcurrentRuns" not in qrc and not qrc.get("tagConcurrencyLimits")  # the chart fails on both
    limits = [
        {"key": t["key"], **({"value": t["value"]} if "value" in t else {}), "limit": t["limit"]}
        for t in c["runs"].get("tagConcurrencyLimits", [])
    ]
    return {
        "pools": {"default_limit": c["pools"]["defaultLimit"], "granularity": c["pools"]["granularity"]},
        "runs": {"max_concurrent_runs": c["runs"]["maxConcurrentRuns"], "tag_concurrency_limits": limits},
    }


def load_instance(tmp_path: Path, text: str) -> dg.DagsterInstance:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text(text)
    return dg.DagsterInstance.from_config(str(home))


# ------------------------------------------------------------------------------------------------


def test_run_launcher_values_match_the_k8s_run_launcher_schema() -> None:
    assert VALUES["runLauncher"]["type"] == "K8sRunLauncher"
    config = render_run_launcher(VALUES)
    validate(K8sRunLauncher.config_type(), config)
    assert config["env_config_maps"][1:] == ["risk-env"] and config["env_secrets"] == ["risk-secrets"]
    # The validation is real: a misspelt field is refused.
    with pytest.raises(dg.DagsterInvalidConfigError, match="load_in_cluster_config"):
        validate(K8sRunLauncher.config_type(), {**config, "load_in_cluster_config": True})


def test_postgres_values_name_the_psycopg2_driver_and_connect(tmp_path: Path, postgres_stack) -> None:
    rendered = render_postgres(VALUES)
    validate(DagsterPostgresStorage.config_type(), rendered)
    assert rendered["postgres_db"]["scheme"] == postgres.DRIVER_SCHEME
    # The same postgres_db form with its scheme, against a real server (local host, port, no TLS).
    port = postgres_stack.config.postgres_port
    assert postgres.ensure_database(port, "deploy_check", 10.0) in (True, False)
    local = {
        **rendered["postgres_db"],
        "username": postgres.SUPERUSER,
        "hostname": "127.0.0.1",
        "port": port,
        "db_name": "deploy_check",
        "params": {},
    }
    instance = load_instance(tmp_path, yaml.safe_dump({"storage": {"postgres": {"postgres_db": local}}}))
    try:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert instance.get_runs() == []
    finally:
        instance.dispose()


def test_concurrency_values_and_local_instance_load(tmp_path: Path) -> None:
    rendered = render_concurrency(VALUES)
    instance = load_instance(tmp_path, yaml.safe_dump({"concurrency": rendered}))
    cfg = instance.get_concurrency_config()
    assert cfg.pool_config.default_pool_limit == 2 and cfg.pool_config.pool_granularity.value == "run"
    assert cfg.run_queue_config.max_concurrent_runs == 40
    instance.dispose()
    # The local dagster.yaml (SQLite) and its PostgreSQL variant load too.
    shutil.rmtree(tmp_path / "home")
    local = load_instance(tmp_path, (ROOT / "dagster.yaml").read_text())
    assert local.get_concurrency_config().pool_config.default_pool_limit == 1
    local.dispose()


def test_k8s_location_executor_config_is_valid_for_every_job() -> None:
    args = VALUES["dagster-user-deployments"]["deployments"][0]["dagsterApiGrpcArgs"]
    assert args[0] == "-m"
    location = importlib.import_module(args[1])
    defs: dg.Definitions = location.defs()  # lazy: loaded as the code server loads it
    jobs = [j for j in defs.resolve_all_job_defs() if not j.name.startswith("__")]
    # The stream micro-batch jobs keep their own in-process executor: one step per run, run in the
    # run pod itself (a step pod per micro-batch would add a pod start to every range's freshness).
    micro_batch = {stream_features_job.name, feature_ingestion_job.name}
    assert micro_batch <= {j.name for j in jobs}
    checked = 0
    for job in jobs:
        if job.name in micro_batch:
            assert job.executor_def.name == dg.in_process_executor.name
            continue
        assert job.executor_def.name == "k8s_steps"
        try:
            resolved = dg.validate_run_config(job, {})
        except dg.DagsterInvalidConfigError as exc:  # jobs whose ops need run config (stream ranges)
            assert all("execution" not in e.message for e in exc.errors), exc
            continue
        executor_config = resolved["execution"]["k8s_steps"]
        assert executor_config["max_concurrent"] == location.EXECUTOR_CONFIG["max_concurrent"]
        assert executor_config["per_step_k8s_config"].keys() == location.STEP_RESOURCES.keys()
        checked += 1
    assert checked >= 5
    # Per-step pod sizes name real steps (a typo would silently fall back to the default size).
    ops = {a.node_def.name for a in defs.resolve_asset_graph().assets_defs if a.is_executable}
    assert set(location.STEP_RESOURCES) <= ops, set(location.STEP_RESOURCES) - ops
    # The same config against k8s_job_executor's own schema; a misspelt field is refused.
    schema = k8s_job_executor.config_schema.as_field()
    validate(schema, location.EXECUTOR_CONFIG)
    with pytest.raises(dg.DagsterInvalidConfigError, match="max_concurent"):
        validate(schema, {**location.EXECUTOR_CONFIG, "max_concurent": 2})


def test_backfill_policies_and_pools_of_the_ranged_assets() -> None:
    from tests.conftest import DEFS

    assets = {a.node_def.name: a for a in DEFS.resolve_asset_graph().assets_defs if a.is_executable}
    hourly = backfills.HOURLY_BACKFILL
    assert assets["archive_raw_events"].backfill_policy == hourly
    assert assets["snowflake_raw_events"].backfill_policy == hourly
    assert assets["batch_features"].backfill_policy == backfills.DAILY_BACKFILL
    assert backfills.DAILY_BACKFILL.max_partitions_per_run == backfills.DAYS_PER_RUN
    pools = {a.node_def.pool for a in assets.values()} - {None}
    assert pools == set(backfills.POOLS)


def test_risk_serve_manifest_is_its_own_deployment_with_readiness() -> None:
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "k8s" / "risk-serve.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"Deployment", "Service", "PodDisruptionBudget"}
    dep, svc = kinds["Deployment"], kinds["Service"]
    pod = dep["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert container["command"][0] in scripts and scripts["risk-serve"] == "risk_assets.serving.cli:main"
    port = int(container["command"][container["command"].index("--port") + 1])
    assert container["command"][container["command"].index("--host") + 1] == "0.0.0.0"
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert named["http"] == port
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert (
        container["image"].split(":")[0]
        == VALUES["dagster-user-deployments"]["deployments"][0]["image"]["repository"]
    )  # the same image as the code location
    labels = pod["metadata"]["labels"]
    assert all(labels[k] == v for k, v in dep["spec"]["selector"]["matchLabels"].items())
    assert all(labels[k] == v for k, v in svc["spec"]["selector"].items())
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
