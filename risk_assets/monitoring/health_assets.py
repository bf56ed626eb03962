"""Service health: the running scoring service's QPS, latency, errors, memory and CPU, with its SLO.

Thin wiring around :mod:`risk_assets.monitoring.service_health` (parsing and per-interval figures)
and :mod:`risk_assets.serving.service_probe` (the scrape). Thresholds: ``SLO_P99_MS`` (10 ms) and
``SLO_ERROR_RATE`` (1 %) for the check ``service_slo``.
"""

import time
from collections.abc import Iterator

import dagster as dg

from risk_assets.monitoring.artifacts import HEALTH_STATE, read_state, write_state
from risk_assets.monitoring.reports import metadata_float
from risk_assets.monitoring.service_health import ScrapeState, ServiceHealth, health, scrape_state
from risk_assets.names import DEPLOYED_MODEL, SERVICE_HEALTH, SERVICE_SLO_CHECK
from risk_assets.resources import LakeResource, ScoringServiceResource
from risk_assets.serving.service_probe import scrape_metrics

OWNER = "team:risk-ml"

SLO_P99_MS = 10.0
"""``service_slo`` fails when the p99 latency of ``/v1/score`` exceeds this (milliseconds)."""
SLO_ERROR_RATE = 0.01
"""``service_slo`` fails when more than this share of scoring requests got a 5xx answer."""


def slo_check(h: ServiceHealth) -> dg.AssetCheckResult:
    """``service_slo``: p99 of ``/v1/score`` ≤ ``SLO_P99_MS`` and error rate ≤ ``SLO_ERROR_RATE``
    (a figure that is NaN for lack of requests does not fail the check)."""
    p99 = h.latency_ms["p99"]
    p99_ok = not (p99 > SLO_P99_MS)
    err_ok = not (h.error_rate > SLO_ERROR_RATE)
    return dg.AssetCheckResult(
        check_name=SERVICE_SLO_CHECK,
        asset_key=SERVICE_HEALTH,
        passed=bool(p99_ok and err_ok),
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "latency_p99_ms": metadata_float(p99),
            "p99_threshold_ms": SLO_P99_MS,
            "error_rate": metadata_float(h.error_rate),
            "error_rate_threshold": SLO_ERROR_RATE,
            "requests": h.requests,
            "p99_ok": p99_ok,
            "error_rate_ok": err_ok,
        },
    )


@dg.asset(
    key=SERVICE_HEALTH,
    deps=[DEPLOYED_MODEL],
    group_name="serving",
    owners=[OWNER],
    kinds={"prometheus"},
    check_specs=[
        dg.AssetCheckSpec(
            SERVICE_SLO_CHECK,
            asset=SERVICE_HEALTH,
            description=(
                f"Fails when the p99 latency of /v1/score exceeds {SLO_P99_MS:g} ms or more than "
                f"{SLO_ERROR_RATE:.0%} of scoring requests fail with a 5xx, over the interval since "
                "the previous scrape (the process lifetime on the first scrape or after a restart)."
            ),
        )
    ],
    description=(
        "Health of the running scoring service from its `/metrics`: QPS, p50/p95/p99 latency of "
        "/v1/score (estimated from the histogram buckets), error rate, resident memory, CPU, served "
        "model version. Figures cover the interval since the previous scrape of the same process "
        "(kept in `monitoring/service_health/last_scrape.json`)."
    ),
)
def service_health(
    context: dg.AssetExecutionContext, lake: LakeResource, scoring_service: ScoringServiceResource
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """Scrape the service and record its health figures."""
    if not scoring_service.url:
        raise dg.Failure("RISK_SERVE_URL is empty: configure the scoring service URL to scrape it")
    store = lake.lake()
    try:
        text = scrape_metrics(scoring_service.url)
    except OSError as exc:
        raise dg.Failure(f"cannot scrape {scoring_service.url}/metrics: {exc}") from exc
    current = scrape_state(text, at=time.time())
    prev_raw = read_state(store, HEALTH_STATE)
    same_url = prev_raw.get("url") == scoring_service.url
    previous = ScrapeState.from_dict(prev_raw["state"]) if same_url else None
    h = health(current, previous)
    write_state(store, HEALTH_STATE, {"url": scoring_service.url, "state": current.to_dict()})
    context.log.info(
        "service %s: p99 %.2f ms, error rate %.4f, %s requests (%s)",
        scoring_service.url,
        h.latency_ms["p99"],
        h.error_rate,
        h.requests,
        h.window,
    )
    yield dg.MaterializeResult(
        metadata={
            **{k: (metadata_float(v) if isinstance(v, float | int) else v) for k, v in h.metadata().items()},
            "window": h.window,
            "model_version": h.model_version or "none",
            "url": scoring_service.url,
        }
    )
    yield slo_check(h)


service_health_job = dg.define_asset_job(
    "service_health_job",
    selection=dg.AssetSelection.assets(SERVICE_HEALTH),
    description="Scrape the scoring service's /metrics and check its SLO.",
)
