"""Health figures of a running ``risk-serve`` from its ``/metrics`` text (Prometheus format 0.0.4).

Pure: no Dagster, no HTTP. :func:`parse_prometheus` turns exposition text into samples,
:func:`scrape_state` keeps the cumulative series the health figures need, and :func:`health` turns
one scrape (optionally with the previous scrape of the same process) into numbers:

* **window** — with a previous scrape of the same process (same ``process_start_time_seconds``, no
  counter went down), every figure covers the interval between the two scrapes (counter and bucket
  deltas); otherwise it covers the process lifetime (``window`` = ``"lifetime"``). A restart between
  scrapes is detected and falls back to the lifetime figures.
* **requests** — scoring requests (``endpoint`` ``score`` + ``score_batch``) and their 5xx / 4xx
  responses; ``error_rate`` = 5xx / scoring requests (server failures: the SLO); ``client_error_rate``
  = 4xx / scoring requests (bad input, auth; reported, not an SLO breach). NaN without requests.
* **qps** — the service's own ``risk_serve_qps`` gauge (all endpoints, last 10 s) and
  ``request_rate`` = scoring requests / window seconds (needs a previous scrape; NaN otherwise).
* **latency** — p50/p95/p99 in milliseconds of ``risk_serve_request_duration_seconds{endpoint="score"}``
  estimated from the cumulative buckets like PromQL's ``histogram_quantile``: linear interpolation
  inside the bucket that holds the rank (from 0 for the first bucket); a rank in the ``+Inf`` bucket
  returns the largest finite bound (a lower bound of the true value). NaN without observations.
  Bucket bounds are 0.5, 1, 2, 3, 5, 7.5, 10, 25 ms …, so "p99 ≤ 10 ms" is decided exactly at a
  bound; inside a bucket the estimate can be off by up to the bucket width.
* **process** — resident memory (bytes), CPU seconds (cumulative, and ``cpu_cores`` = CPU seconds
  per wall second over the window), open fds, model version (``risk_model_info`` label), model
  feature count, degraded events, prediction-log drops.

Workers and replicas: one ``/metrics`` text of a multi-worker ``risk-serve`` already merges its
workers (``risk_assets.serving.service_metrics``; ``risk_serve_workers`` says how many live ones).
Replicas (pods) are separate scrapes: :func:`merge_states` sums their states into the service's
(counters, buckets, QPS, memory, CPU; earliest start; the model versions seen, comma-joined), so
:func:`health` of the merged state is the service's. A replica that restarts between two scrapes
makes a merged counter go down, and that interval falls back to lifetime figures.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

SCORING_ENDPOINTS = ("score", "score_batch")
LATENCY_METRIC = "risk_serve_request_duration_seconds"
QUANTILES = {"p50": 0.50, "p95": 0.95, "p99": 0.99}

_LINE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\S+)?$")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Sample:
    """One sample line: metric name, labels and value."""

    name: str
    labels: dict[str, str]
    value: float


def _unescape(value: str) -> str:
    return value.replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")


def _float(text: str) -> float:
    if text in ("+Inf", "Inf"):
        return math.inf
    if text == "-Inf":
        return -math.inf
    return float(text)  # "NaN" parses too


def parse_prometheus(text: str) -> list[Sample]:
    """Every sample of an exposition text (comments and blank lines skipped; a malformed line raises
    ``ValueError`` naming it)."""
    out: list[Sample] = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if m is None:
            raise ValueError(f"line {n}: not a Prometheus sample: {line[:120]!r}")
        labels = {k: _unescape(v) for k, v in _LABEL.findall(m.group(3) or "")}
        out.append(Sample(m.group(1), labels, _float(m.group(4))))
    return out


@dataclass
class ScrapeState:
    """The cumulative series one scrape contributes to the health figures (JSON-serializable via
    :meth:`to_dict`, so the previous scrape can be kept between runs)."""

    at: float  # wall-clock seconds of the scrape
    process_start: float = math.nan
    requests: dict[str, float] = field(default_factory=dict)  # "endpoint|code" -> count
    buckets: list[tuple[float, float]] = field(default_factory=list)  # (le, cumulative) of "score"
    latency_count: float = 0.0
    latency_sum: float = 0.0
    cpu_seconds: float = math.nan
    rss_bytes: float = math.nan
    open_fds: float = math.nan
    qps: float = math.nan
    model_version: str = ""
    model_features: float = math.nan
    degraded_events: float = 0.0
    prediction_log_dropped: float = 0.0
    events_scored: dict[str, float] = field(default_factory=dict)
    workers: float = math.nan  # live worker processes merged into this scrape
    replicas: int = 1  # scrapes merged by merge_states

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (infinite bounds as strings)."""
        d = dict(vars(self))
        d["buckets"] = [["+Inf" if math.isinf(le) else le, c] for le, c in self.buckets]
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScrapeState:
        """Inverse of :meth:`to_dict`."""
        d = {k: (math.nan if v is None else v) for k, v in d.items()}
        d["buckets"] = [(math.inf if le == "+Inf" else float(le), float(c)) for le, c in d["buckets"]]
        d["model_version"] = d.get("model_version") or ""
        return cls(**d)


def scrape_state(text: str, at: float, endpoint: str = "score") -> ScrapeState:
    """The :class:`ScrapeState` of one ``/metrics`` text scraped at ``at`` (epoch seconds)."""
    st = ScrapeState(at=at)
    buckets: dict[float, float] = {}
    for s in parse_prometheus(text):
        if s.name == "risk_serve_requests_total":
            st.requests[f"{s.labels.get('endpoint', '')}|{s.labels.get('code', '')}"] = s.value
        elif s.name == f"{LATENCY_METRIC}_bucket" and s.labels.get("endpoint") == endpoint:
            buckets[_float(s.labels["le"])] = s.value
        elif s.name == f"{LATENCY_METRIC}_count" and s.labels.get("endpoint") == endpoint:
            st.latency_count = s.value
        elif s.name == f"{LATENCY_METRIC}_sum" and s.labels.get("endpoint") == endpoint:
            st.latency_sum = s.value
        elif s.name == "process_cpu_seconds_total":
            st.cpu_seconds = s.value
        elif s.name == "process_resident_memory_bytes":
            st.rss_bytes = s.value
        elif s.name == "process_open_fds":
            st.open_fds = s.value
        elif s.name == "process_start_time_seconds":
            st.process_start = s.value
        elif s.name == "risk_serve_qps":
            st.qps = s.value
        elif s.name == "risk_model_info" and s.value == 1:
            st.model_version = s.labels.get("version", "")
        elif s.name == "risk_model_features":
            st.model_features = s.value
        elif s.name == "risk_serve_redis_degraded_total":
            st.degraded_events = s.value
        elif s.name == "risk_serve_prediction_log_dropped_total":
            st.prediction_log_dropped = s.value
        elif s.name == "risk_serve_events_scored_total":
            st.events_scored[s.labels.get("decision", "")] = s.value
        elif s.name == "risk_serve_workers":
            st.workers = s.value
    st.buckets = sorted(buckets.items())
    if math.isnan(st.workers) and not math.isnan(st.process_start):
        st.workers = 1.0  # a single-process service (no shared metrics directory)
    return st


def _nansum(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(sum(finite)) if finite else math.nan


def _add(dicts: list[dict[Any, float]]) -> dict[Any, float]:
    out: dict[Any, float] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0.0) + v
    return out


def merge_states(states: list[ScrapeState]) -> ScrapeState:
    """The service's state from one scrape per replica (see the module docstring)."""
    if not states:
        raise ValueError("merge_states needs at least one scrape")
    if len(states) == 1:
        return states[0]
    starts = [s.process_start for s in states if not math.isnan(s.process_start)]
    versions = sorted({s.model_version for s in states if s.model_version})
    features = [s.model_features for s in states if not math.isnan(s.model_features)]
    return ScrapeState(
        at=max(s.at for s in states),
        process_start=min(starts) if len(starts) == len(states) else math.nan,
        requests=_add([s.requests for s in states]),
        buckets=sorted(_add([dict(s.buckets) for s in states]).items()),
        latency_count=sum(s.latency_count for s in states),
        latency_sum=sum(s.latency_sum for s in states),
        cpu_seconds=_nansum([s.cpu_seconds for s in states]),
        rss_bytes=_nansum([s.rss_bytes for s in states]),
        open_fds=_nansum([s.open_fds for s in states]),
        qps=_nansum([s.qps for s in states]),
        model_version=",".join(versions),
        model_features=max(features) if features else math.nan,
        degraded_events=sum(s.degraded_events for s in states),
        prediction_log_dropped=sum(s.prediction_log_dropped for s in states),
        events_scored=_add([s.events_scored for s in states]),
        workers=_nansum([s.workers for s in states]),
        replicas=sum(s.replicas for s in states),
    )


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Quantile ``q`` of a cumulative histogram ``[(upper bound, cumulative count), …]`` (sorted,
    ending with ``+Inf``), estimated like PromQL's ``histogram_quantile``; NaN when empty."""
    if not buckets or not 0 <= q <= 1:
        return math.nan
    total = buckets[-1][1]
    if total <= 0:
        return math.nan
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank and count > prev_count:
            if math.isinf(le):  # the rank lies above every finite bound
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = (le if not math.isinf(le) else prev_le), count
    return prev_le


@dataclass(frozen=True)
class ServiceHealth:
    """Health figures of one scrape (see the module docstring for the definitions)."""

    window: str  # "since_last_scrape" | "lifetime"
    window_seconds: float
    model_version: str
    requests: float
    server_errors: float
    client_errors: float
    error_rate: float
    client_error_rate: float
    qps: float
    request_rate: float
    latency_ms: dict[str, float]
    latency_mean_ms: float
    latency_observations: float
    rss_bytes: float
    cpu_seconds: float
    cpu_cores: float
    open_fds: float
    model_features: float
    degraded_events: float
    prediction_log_dropped: float
    events_scored: dict[str, float]
    workers: float = math.nan
    replicas: int = 1

    def metadata(self) -> dict[str, float | int | str]:
        """Flat metadata with stable keys (numbers are floats; NaN when undefined)."""
        return {
            "window_seconds": self.window_seconds,
            "requests": self.requests,
            "server_errors": self.server_errors,
            "client_errors": self.client_errors,
            "error_rate": self.error_rate,
            "client_error_rate": self.client_error_rate,
            "qps": self.qps,
            "request_rate": self.request_rate,
            **{f"latency_{k}_ms": v for k, v in self.latency_ms.items()},
            "latency_mean_ms": self.latency_mean_ms,
            "latency_observations": self.latency_observations,
            "memory_rss_mb": self.rss_bytes / 2**20,
            "cpu_seconds": self.cpu_seconds,
            "cpu_cores": self.cpu_cores,
            "open_fds": self.open_fds,
            "model_features": self.model_features,
            "degraded_events": self.degraded_events,
            "prediction_log_dropped": self.prediction_log_dropped,
            "workers": self.workers,
            "replicas": float(self.replicas),
            **{f"events_scored/{k}": v for k, v in sorted(self.events_scored.items())},
        }


def _same_process(cur: ScrapeState, prev: ScrapeState | None) -> bool:
    if prev is None or not cur.at > prev.at:
        return False
    if cur.process_start != prev.process_start:  # NaN never equals itself: never the same process
        return False
    if cur.latency_count < prev.latency_count:
        return False
    return all(cur.requests.get(k, 0.0) >= v for k, v in prev.requests.items())


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def health(current: ScrapeState, previous: ScrapeState | None = None) -> ServiceHealth:
    """Health figures of ``current``, over the interval since ``previous`` when that was a scrape of
    the same process, else over the process lifetime."""
    delta = _same_process(current, previous)
    prev = previous if delta and previous is not None else ScrapeState(at=current.process_start)

    def d(cur: float, old: float) -> float:
        return cur - old if delta else cur

    requests = server = client = 0.0
    for key, value in current.requests.items():
        endpoint, _, code = key.partition("|")
        if endpoint not in SCORING_ENDPOINTS:
            continue
        n = d(value, prev.requests.get(key, 0.0))
        requests += n
        if code.startswith("5"):
            server += n
        elif code.startswith("4"):
            client += n
    old_buckets = dict(prev.buckets) if delta else {}
    buckets = [(le, c - old_buckets.get(le, 0.0)) for le, c in current.buckets]
    observations = d(current.latency_count, prev.latency_count)
    seconds = current.at - prev.at if delta else current.at - current.process_start
    return ServiceHealth(
        window="since_last_scrape" if delta else "lifetime",
        window_seconds=float(seconds) if math.isfinite(seconds) else math.nan,
        model_version=current.model_version,
        requests=requests,
        server_errors=server,
        client_errors=client,
        error_rate=_ratio(server, requests),
        client_error_rate=_ratio(client, requests),
        qps=current.qps,
        request_rate=_ratio(requests, seconds) if delta else math.nan,
        latency_ms={k: histogram_quantile(q, buckets) * 1000 for k, q in QUANTILES.items()},
        latency_mean_ms=_ratio(d(current.latency_sum, prev.latency_sum), observations) * 1000,
        latency_observations=observations,
        rss_bytes=current.rss_bytes,
        cpu_seconds=current.cpu_seconds,
        cpu_cores=_ratio(d(current.cpu_seconds, prev.cpu_seconds if delta else 0.0), seconds),
        open_fds=current.open_fds,
        model_features=current.model_features,
        degraded_events=d(current.degraded_events, prev.degraded_events),
        prediction_log_dropped=d(current.prediction_log_dropped, prev.prediction_log_dropped),
        events_scored={k: d(v, prev.events_scored.get(k, 0.0)) for k, v in current.events_scored.items()},
        workers=current.workers,
        replicas=current.replicas,
    )
