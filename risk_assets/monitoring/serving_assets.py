"""Serving monitoring assets: the prediction log in the lake, training/serving skew, service health.

Thin wiring around :mod:`risk_assets.monitoring.prediction_log_reader`,
:mod:`risk_assets.monitoring.skew` and :mod:`risk_assets.monitoring.service_health`.

Lake layout::

    monitoring/prediction_log/p={partition}/offsets={start:012d}-{end:012d}.parquet   log rows
    monitoring/prediction_log/state.json           {topic, partitions: {p: next offset}}
    profiles/prediction_log/p={partition}/offsets={start:012d}-{end:012d}.bin   whylogs profile
    monitoring/serving_skew/state.json             {partitions: {p: next offset compared}}
    monitoring/serving_skew/at=YYYYMMDDTHHMMSS/report.json, features.parquet, examples.parquet
    monitoring/service_health/last_scrape.json     the previous scrape (for per-interval figures)

Thresholds (module constants): ``SKEW_ROW_SHARE_MAX`` (1 %) for ``serving_skew_below_threshold``;
``SLO_P99_MS`` (10 ms) and ``SLO_ERROR_RATE`` (1 %) for ``service_slo``.
"""

import json
import math
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
import polars as pl

from risk_assets.features.groups import FEATURE_GROUPS, GROUPS_BY_NAME
from risk_assets.features.offline_store import read_offline
from risk_assets.features.point_in_time import point_in_time_join
from risk_assets.ingest.kafka_reader import KafkaReadError, OffsetRange
from risk_assets.lake import Lake
from risk_assets.models import registry
from risk_assets.models.assets import ScoringServiceResource
from risk_assets.models.request_features import REQUEST_FEATURES
from risk_assets.models.training_set import SPINE_COLUMNS, feature_tables
from risk_assets.monitoring import profiles
from risk_assets.monitoring.assets import metadata_float
from risk_assets.monitoring.prediction_log_reader import (
    BASE_COLUMNS,
    PREDICTION_TOPIC,
    read_prediction_range,
)
from risk_assets.monitoring.service_health import ScrapeState, ServiceHealth, health, scrape_state
from risk_assets.monitoring.skew import FeatureSkew, SkewReport, row_level_skew
from risk_assets.resources import KafkaResource, LakeResource, RawEventSource

OWNER = "team:risk-ml"
GROUP = "monitoring"

SKEW_ROW_SHARE_MAX = 0.01
"""``serving_skew_below_threshold`` fails when more than this share of compared rows has at least
one feature whose served value differs from the offline recomputation."""
SKEW_TOP_FEATURES = 10
"""Features reported as ``mismatch_rate/<feature>`` metadata (worst first)."""
SLO_P99_MS = 10.0
"""``service_slo`` fails when the p99 latency of ``/v1/score`` exceeds this (milliseconds)."""
SLO_ERROR_RATE = 0.01
"""``service_slo`` fails when more than this share of scoring requests got a 5xx answer."""

LOG_PREFIX = "monitoring/prediction_log"
LOG_STATE = f"{LOG_PREFIX}/state.json"
SKEW_PREFIX = "monitoring/serving_skew"
SKEW_STATE = f"{SKEW_PREFIX}/state.json"
HEALTH_STATE = "monitoring/service_health/last_scrape.json"
FEATURE_AS_OF = "feature_as_of"
KEY = "log_key"


# -- lake paths and state --------------------------------------------------------------------------
def _range_tag(rng: OffsetRange) -> str:
    return f"p={rng.partition}/offsets={rng.start:012d}-{rng.end:012d}"


def prediction_log_path(rng: OffsetRange) -> str:
    """Lake path of the log rows of one offset range (re-reading a range rewrites the same object)."""
    return f"{LOG_PREFIX}/{_range_tag(rng)}.parquet"


def prediction_log_profile_path(rng: OffsetRange) -> str:
    """Lake path of the whylogs profile of one offset range of the prediction log."""
    return f"profiles/prediction_log/{_range_tag(rng)}.bin"


def _read_state(store: Lake, path: str) -> dict[str, Any]:
    return json.loads(store.read_bytes(path)) if store.exists(path) else {}


def _write_state(store: Lake, path: str, state: dict[str, Any]) -> None:
    store.write_bytes(path, (json.dumps(state, indent=1, sort_keys=True) + "\n").encode())


class _Manifests:
    """Feature lists of model versions, read once per run from the registry."""

    def __init__(self, store: Lake) -> None:
        self.store = store
        self.cache: dict[str, dict[str, Any]] = {}

    def manifest(self, version: str) -> dict[str, Any]:
        if version not in self.cache:
            try:
                self.cache[version] = registry.load_manifest(self.store, version)
            except FileNotFoundError as exc:
                raise ValueError(f"model version {version} is not in the registry") from exc
        return self.cache[version]

    def features(self, version: str) -> list[str]:
        return list(self.manifest(version)["features"])


# -- prediction_log --------------------------------------------------------------------------------
class PredictionLogConfig(dg.Config):
    """Which topic to read and how much per run."""

    topic: str = PREDICTION_TOPIC
    max_messages_per_partition: int = 2_000_000
    """A run reads at most this many new messages per partition (the rest is read by the next run)."""


@dg.asset(
    key="prediction_log",
    group_name=GROUP,
    owners=[OWNER],
    kinds={"kafka", "polars", "whylogs"},
    description=(
        "The scoring service's prediction log (`risk.predictions`) in the lake: each run reads the "
        "offset range after the last one it stored (exact ranges, replayable), decodes the messages "
        "(event id, event/scored time, model version, score, decision, the served feature vector "
        "with names from the version's manifest) and writes "
        "`monitoring/prediction_log/p=P/offsets=START-END.parquet` plus a whylogs profile under "
        "`profiles/prediction_log/`. The cursor (`state.json`) moves only after the writes."
    ),
)
def prediction_log(
    context: dg.AssetExecutionContext, config: PredictionLogConfig, lake: LakeResource, kafka: KafkaResource
) -> dg.MaterializeResult:
    """Copy the new range of the prediction log into the lake and profile it."""
    store = lake.lake()
    t0 = time.perf_counter()
    state = _read_state(store, LOG_STATE)
    cursor: dict[str, int] = dict(state.get("partitions", {})) if state.get("topic") == config.topic else {}
    manifests = _Manifests(store)
    frames: list[pl.DataFrame] = []
    paths: list[str] = []
    malformed = retention_gaps = 0
    first_error = ""
    with kafka.range_reader() as reader:
        try:
            partitions = reader.partitions(config.topic)
        except KafkaReadError as exc:
            raise dg.Failure(f"prediction log topic {config.topic!r} is not readable: {exc}") from exc
        for p in partitions:
            low, end = reader.bounds(config.topic, p)
            start = int(cursor.get(str(p), low))
            if start < low:  # retention dropped records we never read
                retention_gaps += low - start
                context.log.warning("partition %d: %d records expired before they were read", p, low - start)
                start = low
            end = min(end, start + config.max_messages_per_partition)
            if end <= start:
                continue
            rng = OffsetRange(config.topic, p, start, end)
            try:
                decoded = read_prediction_range(reader, rng, manifests.features)
            except ValueError as exc:
                raise dg.Failure(f"{rng.key()}: {exc}") from exc
            malformed += decoded.malformed
            first_error = first_error or decoded.first_error
            frame = decoded.frame
            store.write_parquet(frame, prediction_log_path(rng))
            profile_cols = [c for c in frame.columns if c not in ("event_id", "partition", "offset")]
            data = profiles.serialize(profiles.profile_frame(frame, profile_cols))
            store.write_bytes(prediction_log_profile_path(rng), data)
            frames.append(frame)
            paths.append(prediction_log_path(rng))
            cursor[str(p)] = end
    _write_state(store, LOG_STATE, {"topic": config.topic, "partitions": cursor})

    rows = sum(f.height for f in frames)
    base = pl.concat([f.select(BASE_COLUMNS) for f in frames]) if frames else None
    versions = sorted(base["model_version"].unique().to_list()) if base is not None else []
    metadata: dict[str, Any] = {
        "dagster/row_count": rows,
        "rows": rows,
        "ranges": len(paths),
        "malformed": malformed,
        "retention_gap": retention_gaps,
        "model_versions": len(versions),
        "model_version_list": ", ".join(versions) or "-",
        "score_mean": metadata_float(base["score"].mean()) if base is not None and rows else math.nan,
        "degraded_share": metadata_float(base["degraded"].mean()) if base is not None and rows else math.nan,
        "seconds": 0.0,
    }
    for decision in ("allow", "review", "block"):
        share = (base["decision"] == decision).mean() if base is not None and rows else math.nan
        metadata[f"decision_share/{decision}"] = metadata_float(share)
    if first_error:
        metadata["first_malformed"] = first_error
    metadata["cursor"] = dg.MetadataValue.json(cursor)
    metadata["paths"] = dg.MetadataValue.md("\n".join(f"- `{store.uri(p)}`" for p in paths) or "-")
    metadata["seconds"] = round(time.perf_counter() - t0, 3)
    context.log.info("prediction_log: %d rows in %d ranges, %d malformed", rows, len(paths), malformed)
    return dg.MaterializeResult(metadata=metadata)


# -- serving_skew ----------------------------------------------------------------------------------
def _log_files(store: Lake) -> list[tuple[int, int, int, str]]:
    """(partition, start, end, path) of every stored prediction-log range."""
    out = []
    for path in store.list(f"{LOG_PREFIX}/"):
        name = path.rsplit("/", 2)
        if len(name) < 3 or not name[1].startswith("p=") or not name[2].startswith("offsets="):
            continue
        start, end = name[2][len("offsets=") : -len(".parquet")].split("-")
        out.append((int(name[1][2:]), int(start), int(end), path))
    return sorted(out)


def recompute_features(
    store: Lake,
    source: RawEventSource,
    served: pl.DataFrame,
    features: list[str],
) -> tuple[pl.DataFrame, int]:
    """Offline recomputation of ``features`` for the logged rows ``served`` (``log_key``,
    ``event_id``): the event from the raw archive, request features from it, every online group
    point-in-time joined at ``event_ts − 1 ms`` honouring ``created_ts`` and TTL (the training-set
    rule). Returns (``log_key`` + features, rows whose event is not in the archive)."""
    if served.height == 0:
        return pl.DataFrame(schema={KEY: pl.String, **dict.fromkeys(features, pl.Float64)}), 0
    lo = served["event_ts"].min()
    hi = served["event_ts"].max()
    assert isinstance(lo, datetime) and isinstance(hi, datetime)
    events = source.events(store, lo, hi + timedelta(milliseconds=1), list(SPINE_COLUMNS)).unique(
        subset="event_id", keep="first"
    )
    spine = served.select(KEY, "event_id").join(events, on="event_id", how="inner", maintain_order="left")
    missing = served.height - spine.height
    spine = spine.with_columns((pl.col("event_ts") - timedelta(milliseconds=1)).alias(FEATURE_AS_OF))
    groups = [g for g in FEATURE_GROUPS if any(f.startswith(f"{g.name}__") for f in features)]
    offline = {g.name: read_offline(store, g, lo - g.ttl, hi + timedelta(milliseconds=1)) for g in groups}
    joined = point_in_time_join(spine, feature_tables(groups, offline), spine_timestamp=FEATURE_AS_OF)
    joined = joined.with_columns(**{k: v for k, v in REQUEST_FEATURES.items() if k in features})
    out = joined.select(
        KEY,
        *[
            pl.col(f).cast(pl.Float64) if f in joined.columns else pl.lit(None, pl.Float64).alias(f)
            for f in features
        ],
    )
    return out, missing


def merge_reports(reports: list[tuple[SkewReport, int]]) -> tuple[int, int, list[FeatureSkew]]:
    """(rows compared, rows with a mismatch, per-feature skew) over per-version reports; a feature's
    rate is over the rows of the versions that have it."""
    compared = sum(r.rows_compared for r, _ in reports)
    bad = sum(r.rows_with_mismatch for r, _ in reports)
    acc: dict[str, list[float]] = {}
    diffs: dict[str, float | None] = {}
    for r, _ in reports:
        for f in r.features:
            a = acc.setdefault(f.feature, [0, 0, 0])
            a[0] += f.mismatches
            a[1] += f.missing_mismatches
            a[2] += r.rows_compared
            if f.max_abs_diff is not None:
                prev = diffs.get(f.feature)
                diffs[f.feature] = f.max_abs_diff if prev is None else max(prev, f.max_abs_diff)
    merged = [
        FeatureSkew(name, int(m), int(o), m / n if n else 0.0, diffs.get(name))
        for name, (m, o, n) in acc.items()
    ]
    return compared, bad, merged


def _skew_markdown(compared: int, bad: int, worst: list[FeatureSkew], extra: dict[str, int]) -> str:
    share = bad / compared if compared else 0.0
    lines = [
        f"**{bad} of {compared} compared rows ({share:.2%}) have a mismatching feature** "
        f"(threshold {SKEW_ROW_SHARE_MAX:.0%}); {extra['rows_without_event']} logged rows without an "
        f"archived event, {extra['rows_degraded']} degraded rows excluded.",
    ]
    if worst:
        lines += ["", "| feature | mismatch rate | mismatches | of which missing | max abs diff |"]
        lines.append("|---|---:|---:|---:|---:|")
        for f in worst:
            diff = "–" if f.max_abs_diff is None else f"{f.max_abs_diff:.4g}"
            lines.append(
                f"| `{f.feature}` | {f.mismatch_rate:.2%} | {f.mismatches} | {f.missing_mismatches} "
                f"| {diff} |"
            )
    return "\n".join(lines)


class ServingSkewConfig(dg.Config):
    """Which logged predictions are compared."""

    sample_size: int = 5_000
    """At most this many of the new logged rows are compared (uniform sample, fixed seed)."""
    reset_cursor: bool = False
    """Compare every stored log range again instead of only the ranges added since the last run."""
    seed: int = 17


@dg.asset(
    key="serving_skew",
    deps=["prediction_log"],
    group_name=GROUP,
    owners=[OWNER],
    kinds={"polars"},
    check_specs=[
        dg.AssetCheckSpec(
            "serving_skew_below_threshold",
            asset="serving_skew",
            description=(
                f"Fails when more than {SKEW_ROW_SHARE_MAX:.0%} of the compared logged predictions "
                "have a feature whose served value differs from the offline point-in-time recomputation."
            ),
        )
    ],
    description=(
        "Training/serving skew, row by row: for a sample of the predictions logged since the last "
        "run (the lake copy of `risk.predictions`), every model input is recomputed offline exactly "
        "as training sets compute it (request features from the archived event; each feature group "
        "point-in-time joined at `event_ts − 1 ms` honouring `created_ts` and TTL) and compared with "
        "the vector the service scored (`row_level_skew`, per model version). Degraded rows (Redis "
        "not consulted) are excluded. Run it after the offline store covers the logged events: "
        "a value computed after the request can legitimately differ (see docs/monitoring.md)."
    ),
)
def serving_skew(
    context: dg.AssetExecutionContext,
    config: ServingSkewConfig,
    lake: LakeResource,
    raw_event_source: RawEventSource,
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """Compare served feature vectors with their offline recomputation."""
    store = lake.lake()
    t0 = time.perf_counter()
    state = {} if config.reset_cursor else _read_state(store, SKEW_STATE)
    cursor: dict[str, int] = dict(state.get("partitions", {}))
    files = [f for f in _log_files(store) if f[2] > int(cursor.get(str(f[0]), 0))]
    new_cursor = dict(cursor)
    parts = []
    for p, _start, end, path in files:
        frame = store.scan([path]).collect()
        frame = frame.filter(pl.col("offset") >= int(cursor.get(str(p), 0)))
        parts.append(frame)
        new_cursor[str(p)] = max(int(new_cursor.get(str(p), 0)), end)
    logged = pl.concat(parts, how="diagonal_relaxed") if parts else pl.DataFrame()
    rows_logged = logged.height
    degraded = int(logged["degraded"].sum()) if rows_logged else 0
    if rows_logged:
        logged = logged.filter(~pl.col("degraded"))
        if logged.height > config.sample_size:
            logged = logged.sample(n=config.sample_size, seed=config.seed)
        logged = logged.with_columns(
            pl.format("{}:{}", pl.col("partition"), pl.col("offset")).alias(KEY)
        ).sort("partition", "offset")

    manifests = _Manifests(store)
    reports: list[tuple[SkewReport, int]] = []
    without_event = 0
    skipped_versions: list[str] = []
    versions = sorted(logged["model_version"].unique().to_list()) if logged.height else []
    for version in versions:
        try:
            manifest = manifests.manifest(version)
        except ValueError:
            skipped_versions.append(version)
            continue
        groups = manifest.get("feature_groups") or {}
        stale = [n for n, v in groups.items() if n in GROUPS_BY_NAME and GROUPS_BY_NAME[n].version != v]
        if stale:  # its offline rows live under another group version: not recomputable here
            skipped_versions.append(version)
            continue
        features = list(manifest["features"])
        served = logged.filter(pl.col("model_version") == version)
        recomputed, missing = recompute_features(store, raw_event_source, served, features)
        without_event += missing
        report = row_level_skew(served, recomputed, key=KEY, features=features)
        reports.append((report, served.height))

    compared, bad, per_feature = merge_reports(reports)
    share = bad / compared if compared else 0.0
    worst = sorted((f for f in per_feature if f.mismatches), key=lambda f: (-f.mismatch_rate, f.feature))
    extra = {"rows_without_event": without_event, "rows_degraded": degraded}
    markdown = _skew_markdown(compared, bad, worst[:SKEW_TOP_FEATURES], extra)

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    base = f"{SKEW_PREFIX}/at={stamp}"
    summary = {
        "rows_logged": rows_logged,
        "rows_compared": compared,
        "rows_with_mismatch": bad,
        "share_rows_with_mismatch": share,
        "threshold": SKEW_ROW_SHARE_MAX,
        "versions": versions,
        "skipped_versions": skipped_versions,
        "worst": [vars(f) for f in worst[:SKEW_TOP_FEATURES]],
        **extra,
    }
    store.write_bytes(f"{base}/report.json", (json.dumps(summary, indent=1, sort_keys=True) + "\n").encode())
    feature_frame = pl.DataFrame(
        [vars(f) for f in per_feature],
        schema={
            "feature": pl.String,
            "mismatches": pl.Int64,
            "missing_mismatches": pl.Int64,
            "mismatch_rate": pl.Float64,
            "max_abs_diff": pl.Float64,
        },
    )
    store.write_parquet(feature_frame, f"{base}/features.parquet")
    examples = [r.examples for r, _ in reports if r.examples.height]
    if examples:
        store.write_parquet(pl.concat(examples), f"{base}/examples.parquet")
    _write_state(store, SKEW_STATE, {"partitions": new_cursor})

    metadata: dict[str, Any] = {
        "dagster/row_count": compared,
        "rows_logged": rows_logged,
        "rows_compared": compared,
        "rows_with_mismatch": bad,
        "share_rows_with_mismatch": share,
        "features_with_mismatch": len(worst),
        "rows_without_event": without_event,
        "rows_degraded": degraded,
        "model_versions": len(versions),
        "skipped_versions": len(skipped_versions),
        "worst_feature": worst[0].feature if worst else "-",
        **{f"mismatch_rate/{f.feature}": f.mismatch_rate for f in worst[:SKEW_TOP_FEATURES]},
        "report": dg.MetadataValue.md(markdown),
        "path": store.uri(f"{base}/report.json"),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    context.log.info("serving skew: %d/%d rows mismatch (%.2f%%)", bad, compared, 100 * share)
    yield dg.MaterializeResult(metadata=metadata)
    yield dg.AssetCheckResult(
        check_name="serving_skew_below_threshold",
        asset_key="serving_skew",
        passed=bool(share <= SKEW_ROW_SHARE_MAX),
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "share_rows_with_mismatch": share,
            "threshold": SKEW_ROW_SHARE_MAX,
            "rows_compared": compared,
            "rows_with_mismatch": bad,
            "worst_feature": worst[0].feature if worst else "-",
            "worst_feature_rate": worst[0].mismatch_rate if worst else 0.0,
        },
        description=None if compared else "nothing new to compare",
    )


# -- service_health --------------------------------------------------------------------------------
def scrape_metrics(url: str, timeout_s: float = 5.0) -> str:
    """The ``/metrics`` text of the service at ``url``."""
    with urllib.request.urlopen(f"{url.rstrip('/')}/metrics", timeout=timeout_s) as resp:
        return resp.read().decode()


def slo_check(h: ServiceHealth) -> dg.AssetCheckResult:
    """``service_slo``: p99 of ``/v1/score`` ≤ ``SLO_P99_MS`` and error rate ≤ ``SLO_ERROR_RATE``
    (a figure that is NaN for lack of requests does not fail the check)."""
    p99 = h.latency_ms["p99"]
    p99_ok = not (p99 > SLO_P99_MS)
    err_ok = not (h.error_rate > SLO_ERROR_RATE)
    return dg.AssetCheckResult(
        check_name="service_slo",
        asset_key="service_health",
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
    key="service_health",
    deps=["deployed_model"],
    group_name="serving",
    owners=[OWNER],
    kinds={"prometheus"},
    check_specs=[
        dg.AssetCheckSpec(
            "service_slo",
            asset="service_health",
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
    prev_raw = _read_state(store, HEALTH_STATE)
    same_url = prev_raw.get("url") == scoring_service.url
    previous = ScrapeState.from_dict(prev_raw["state"]) if same_url else None
    h = health(current, previous)
    _write_state(store, HEALTH_STATE, {"url": scoring_service.url, "state": current.to_dict()})
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
    selection=dg.AssetSelection.assets("service_health"),
    description="Scrape the scoring service's /metrics and check its SLO.",
)


@dg.schedule(
    job=service_health_job,
    cron_schedule="*/5 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Every 5 minutes: the scoring service's health and SLO over the last interval.",
)
def service_health_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    """One health scrape per tick."""
    return dg.RunRequest(run_key=f"service_health:{context.scheduled_execution_time:%Y%m%dT%H%M}")
