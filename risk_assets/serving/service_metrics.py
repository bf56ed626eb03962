"""Service metrics in the Prometheus text exposition format (version 0.0.4), written by hand.

Counters live in plain Python ints and lists: the request path runs on the event loop's one thread,
so an increment is a few nanoseconds and needs no lock; background threads (model watcher, Redis
probe, prediction-log drain) only touch counters of their own. Rendering walks everything once per
scrape. ``/metrics`` of a multi-worker server shows the worker that answered (see docs/serving.md).
"""

from __future__ import annotations

import os
import resource
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable

LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)
QPS_WINDOW_S = 10
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt(v: float) -> str:
    if v != v:
        return "NaN"
    if v in (float("inf"), float("-inf")):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v)) if isinstance(v, float) else str(v)


class Histogram:
    """A fixed-bucket latency histogram (seconds)."""

    __slots__ = ("buckets", "count", "counts", "sum")

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        """Record one observation."""
        self.counts[bisect_left(self.buckets, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def lines(self, name: str, labels: str) -> Iterable[str]:
        """Cumulative bucket, sum and count lines (``labels`` without braces, may be empty)."""
        sep = "," if labels else ""
        acc = 0
        for le, c in zip(self.buckets, self.counts, strict=False):
            acc += c
            yield f'{name}_bucket{{{labels}{sep}le="{le}"}} {acc}'
        yield f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}'
        wrap = f"{{{labels}}}" if labels else ""
        yield f"{name}_sum{wrap} {_fmt(self.sum)}"
        yield f"{name}_count{wrap} {self.count}"


class RateWindow:
    """Requests per second over the last ``QPS_WINDOW_S`` whole seconds (a ring of 1 s slots)."""

    __slots__ = ("second", "slots")

    def __init__(self) -> None:
        self.slots = [0] * (QPS_WINDOW_S + 1)
        self.second = int(time.monotonic())

    def _advance(self, now: int) -> None:
        gap = now - self.second
        if gap > 0:
            for i in range(1, min(gap, len(self.slots)) + 1):
                self.slots[(self.second + i) % len(self.slots)] = 0
            self.second = now

    def add(self, n: int = 1) -> None:
        """Count ``n`` requests now."""
        now = int(time.monotonic())
        if now != self.second:
            self._advance(now)
        self.slots[now % len(self.slots)] += n

    def rate(self) -> float:
        """Mean rate over the last ``QPS_WINDOW_S`` complete seconds."""
        now = int(time.monotonic())
        self._advance(now)
        cur = now % len(self.slots)
        return sum(v for i, v in enumerate(self.slots) if i != cur) / QPS_WINDOW_S


class ServiceMetrics:
    """Every series ``/metrics`` exposes; the app and its helpers increment the attributes."""

    def __init__(self) -> None:
        self.started = time.time()
        self.requests: dict[tuple[str, int], int] = {}
        self.latency: dict[str, Histogram] = {"score": Histogram(), "score_batch": Histogram()}
        self.events_scored: dict[str, int] = {"allow": 0, "review": 0, "block": 0}
        self.errors: dict[str, int] = {}
        self.rate = RateWindow()
        self.feature_lookups: dict[str, int] = {}
        self.feature_misses: dict[str, int] = {}
        self.degraded_events = 0
        self.redis_failures: dict[str, int] = {}
        self.model_reloads: dict[str, int] = {"loaded": 0, "refused": 0}
        self.model_refusals: dict[str, int] = {}
        # Filled in by the app: callables read at scrape time.
        self.gauges: list[Callable[[], Iterable[str]]] = []

    def request(self, endpoint: str, status: int) -> None:
        """Count one finished request."""
        key = (endpoint, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        self.rate.add()

    def error(self, kind: str) -> None:
        """Count one error of ``kind`` (``invalid_json``, ``validation``, ``unauthorized``, …)."""
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def refused(self, reason: str) -> None:
        """Count a refused model (``sha_mismatch``, ``corrupt``, ``incompatible``, ``probe``, …)."""
        self.model_reloads["refused"] += 1
        self.model_refusals[reason] = self.model_refusals.get(reason, 0) + 1

    def render(self) -> str:
        """The whole exposition text."""
        out: list[str] = []

        def family(name: str, kind: str, help_: str) -> None:
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")

        family("risk_serve_requests_total", "counter", "HTTP requests by endpoint and status code.")
        for (endpoint, status), n in sorted(self.requests.items()):
            out.append(f'risk_serve_requests_total{{endpoint="{endpoint}",code="{status}"}} {n}')
        family("risk_serve_qps", "gauge", f"Requests per second over the last {QPS_WINDOW_S} s (derived).")
        out.append(f"risk_serve_qps {_fmt(self.rate.rate())}")
        family(
            "risk_serve_request_duration_seconds",
            "histogram",
            "Time from request receipt to response body, scoring endpoints.",
        )
        for endpoint, hist in self.latency.items():
            out.extend(hist.lines("risk_serve_request_duration_seconds", f'endpoint="{endpoint}"'))
        family("risk_serve_events_scored_total", "counter", "Scored events by decision.")
        for decision, n in self.events_scored.items():
            out.append(f'risk_serve_events_scored_total{{decision="{decision}"}} {n}')
        family("risk_serve_errors_total", "counter", "Failed requests by kind.")
        for kind, n in sorted(self.errors.items()):
            out.append(f'risk_serve_errors_total{{kind="{_esc(kind)}"}} {n}')
        family("risk_serve_feature_lookups_total", "counter", "Online feature rows requested, by group.")
        for group, n in sorted(self.feature_lookups.items()):
            out.append(f'risk_serve_feature_lookups_total{{group="{group}"}} {n}')
        family(
            "risk_serve_feature_misses_total",
            "counter",
            "Online feature rows requested but absent or expired in Redis, by group.",
        )
        for group, n in sorted(self.feature_misses.items()):
            out.append(f'risk_serve_feature_misses_total{{group="{group}"}} {n}')
        family(
            "risk_serve_redis_degraded_total",
            "counter",
            "Events scored without online features because Redis was unavailable.",
        )
        out.append(f"risk_serve_redis_degraded_total {self.degraded_events}")
        family("risk_serve_redis_failures_total", "counter", "Failed Redis reads/probes by kind.")
        for kind, n in sorted(self.redis_failures.items()):
            out.append(f'risk_serve_redis_failures_total{{kind="{_esc(kind)}"}} {n}')
        family("risk_serve_model_reloads_total", "counter", "Champion loads by result (loaded/refused).")
        for result, n in self.model_reloads.items():
            out.append(f'risk_serve_model_reloads_total{{result="{result}"}} {n}')
        family("risk_serve_model_refusals_total", "counter", "Refused champion versions by reason.")
        for reason, n in sorted(self.model_refusals.items()):
            out.append(f'risk_serve_model_refusals_total{{reason="{_esc(reason)}"}} {n}')
        for gauge in self.gauges:
            out.extend(gauge())
        out.extend(process_lines(self.started))
        return "\n".join(out) + "\n"


def process_lines(started: float) -> list[str]:
    """Standard ``process_*`` series from ``/proc/self`` and ``getrusage``."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    try:
        with open("/proc/self/statm", "rb") as fh:
            rss = int(fh.read().split()[1]) * _PAGE
    except OSError:  # pragma: no cover - non-Linux: peak RSS (kB on Linux, bytes on macOS)
        rss = usage.ru_maxrss * 1024
    try:
        fds = len(os.listdir("/proc/self/fd"))
    except OSError:  # pragma: no cover
        fds = -1
    return [
        "# HELP process_resident_memory_bytes Resident memory size in bytes.",
        "# TYPE process_resident_memory_bytes gauge",
        f"process_resident_memory_bytes {rss}",
        "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.",
        "# TYPE process_cpu_seconds_total counter",
        f"process_cpu_seconds_total {_fmt(usage.ru_utime + usage.ru_stime)}",
        "# HELP process_open_fds Number of open file descriptors.",
        "# TYPE process_open_fds gauge",
        f"process_open_fds {fds}",
        "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.",
        "# TYPE process_start_time_seconds gauge",
        f"process_start_time_seconds {_fmt(started)}",
    ]
