"""Service metrics in the Prometheus text exposition format (version 0.0.4), written by hand.

Counters live in plain Python ints and lists: the request path runs on the event loop's one thread,
so an increment is a few nanoseconds and needs no lock; background threads (model watcher, Redis
probe, prediction-log drain) only touch counters of their own. Rendering walks everything once per
scrape.

Several workers, one service
----------------------------
With ``--workers N`` a scrape reaches whichever worker accepts the connection. So that ``/metrics``
is the *service's* (QPS, latency, counters of all workers), the workers share a directory
(``RISK_SERVE_METRICS_DIR``; ``risk-serve`` makes a fresh one per start), in the spirit of the
Prometheus client's multiprocess mode:

* every worker writes its own exposition text to ``<dir>/worker-<pid>-<start>.json`` once a second (from
  the event loop, the thread that owns the counters, so a snapshot is consistent) and again right
  before it answers a scrape; a write is a temp file + ``rename``, so readers never see half a file;
* the worker that answers merges every file (:func:`merge_expositions`): counters and histogram
  series are summed over all workers that ever ran (a worker that died keeps its last counts, so
  the service's counters never go down when uvicorn replaces a worker); gauges are combined over
  the live workers by a rule per series (:data:`GAUGE_RULES`: QPS, memory, fds, queue depth are
  summed; ``risk_serve_ready`` is the minimum — ready only when every worker is;
  ``risk_serve_redis_breaker_open`` the maximum …); ``process_start_time_seconds`` is the earliest
  start, and ``risk_serve_workers`` counts the live workers.

Other workers' figures are at most ~1 s old at a scrape; the answering worker's are exact. Replicas
(pods) are separate scrape targets; :mod:`risk_assets.monitoring.service_health` sums them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import resource
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable
from pathlib import Path

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

ENV_METRICS_DIR = "RISK_SERVE_METRICS_DIR"
"""Directory the workers of one service share for their metric snapshots (see the module docstring)."""

PUBLISH_INTERVAL_S = 1.0
"""How often each worker writes its snapshot when several share a directory."""

WORKERS_METRIC = "risk_serve_workers"

GAUGE_RULES: dict[str, str] = {
    "risk_serve_ready": "min",
    "risk_serve_redis_breaker_open": "max",
    "risk_serve_redis_last_ok_age_seconds": "max",
    "risk_model_info": "max",
    "risk_model_loaded_timestamp_seconds": "min",
    "risk_model_features": "max",
    "risk_model_pointer_checked_timestamp_seconds": "min",
    "risk_model_fallback": "max",
    "risk_model_champion_refused": "max",
    "risk_model_champion_intact": "min",
    "process_start_time_seconds": "min",
}
"""How a gauge of several live workers becomes one value; a gauge not listed here is summed
(``risk_serve_qps``, ``process_resident_memory_bytes``, ``process_open_fds``, queue depth, …).
``process_start_time_seconds`` is taken over every worker that ever ran (the service's start)."""


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
        self.feature_inexact: dict[str, int] = {}
        self.degraded_events = 0
        self.redis_failures: dict[str, int] = {}
        self.model_reloads: dict[str, int] = {"loaded": 0, "refused": 0}
        self.model_refusals: dict[str, int] = {}
        # Filled in by the app: callables read at scrape time.
        self.gauges: list[Callable[[], Iterable[str]]] = []
        # Set by share(): the directory where the workers of one service publish their snapshots.
        self.shared_dir: Path | None = None

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

    def share(self, directory: str | Path | None) -> None:
        """Publish this worker's snapshots to ``directory`` and merge all workers' on render.

        ``None`` or ``""`` keeps the metrics of this process only (one worker).
        """
        self.shared_dir = Path(directory) if directory else None
        if self.shared_dir is not None:
            self.shared_dir.mkdir(parents=True, exist_ok=True)

    def publish(self) -> None:
        """Write this worker's current snapshot to the shared directory (no-op when not shared)."""
        if self.shared_dir is not None:
            write_snapshot(self.shared_dir, os.getpid(), self.started, self.render_local())

    async def publish_periodically(self, interval_s: float = PUBLISH_INTERVAL_S) -> None:
        """Call :meth:`publish` every ``interval_s`` on the event loop until cancelled (then once more)."""
        if self.shared_dir is None:
            return
        try:
            while True:
                self.publish()
                await asyncio.sleep(interval_s)
        finally:
            with contextlib.suppress(OSError):
                self.publish()

    def render(self) -> str:
        """The exposition text of the service: this worker's, merged with its siblings' when shared."""
        if self.shared_dir is None:
            return self.render_local()
        self.publish()
        return merge_expositions(read_snapshots(self.shared_dir))

    def render_local(self) -> str:
        """The exposition text of this worker process alone."""
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
            "risk_serve_feature_inexact_reads_total",
            "counter",
            "Windows finished from tiles whose head tile already held events at or after the scored "
            "event's time (replay, clock skew, an event scored after ingestion): values not exact, by group.",
        )
        for group, n in sorted(self.feature_inexact.items()):
            out.append(f'risk_serve_feature_inexact_reads_total{{group="{group}"}} {n}')
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


# --------------------------------------------------------------------------------------------
# several workers: snapshots in a shared directory, merged on scrape


_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{.*\})?\s+(\S+)$")


def write_snapshot(directory: Path, pid: int, started: float, text: str) -> None:
    """Atomically replace ``<directory>/worker-<pid>-<start ms>.json`` with this worker's text.

    The start time in the name keeps a dead worker's file (and counts) when its pid is reused.
    """
    stem = f"worker-{pid}-{int(started * 1000)}"
    path = directory / f"{stem}.json"
    tmp = directory / f".{stem}.json.tmp"
    tmp.write_text(json.dumps({"pid": pid, "started": started, "text": text}))
    tmp.replace(path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by the uvicorn master) is not alive
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def read_snapshots(directory: Path) -> list[tuple[str, bool]]:
    """``(exposition text, worker alive)`` of every snapshot in ``directory`` (unreadable files skipped)."""
    snaps: list[dict] = []
    for path in sorted(directory.glob("worker-*.json")):
        try:
            snaps.append(json.loads(path.read_text()))
        except (OSError, ValueError):  # removed or replaced while listing: the next scrape has it
            continue
    newest: dict[int, float] = {}  # a reused pid: only its newest worker can be alive
    for snap in snaps:
        newest[snap["pid"]] = max(newest.get(snap["pid"], snap["started"]), snap["started"])
    return [(s["text"], s["started"] == newest[s["pid"]] and _pid_alive(int(s["pid"]))) for s in snaps]


def _family_of(name: str, types: dict[str, str]) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        base = name.removesuffix(suffix)
        if base != name and types.get(base) == "histogram":
            return base
    return name


def _fmt_merged(v: float) -> str:
    return str(int(v)) if v == v and abs(v) < 2**53 and float(v).is_integer() else _fmt(float(v))


def _combine(rule: str, values: list[float]) -> float:
    if rule == "min":
        return min(values)
    if rule == "max":
        return max(values)
    return sum(values)


def merge_expositions(snapshots: Iterable[tuple[str, bool]]) -> str:
    """One exposition text from several workers' (see the module docstring for the rules).

    ``snapshots`` are ``(text, alive)`` pairs. Series keep the order of their first appearance;
    ``# HELP``/``# TYPE`` lines are emitted once per family, and ``risk_serve_workers`` is appended.
    """
    comments: dict[str, list[str]] = {}
    types: dict[str, str] = {}
    order: list[tuple[str, str]] = []  # (family, series key)
    values: dict[str, list[tuple[float, bool]]] = {}
    family_order: list[str] = []
    live = 0
    for text, alive in snapshots:
        live += int(alive)
        for line in text.splitlines():
            if line.startswith("# "):
                parts = line.split(" ", 3)
                if len(parts) >= 3:
                    family = parts[2]
                    if family not in comments:
                        comments[family] = []
                        family_order.append(family)
                    if line not in comments[family]:
                        comments[family].append(line)
                    if parts[1] == "TYPE" and len(parts) == 4:
                        types[family] = parts[3]
                continue
            m = _SAMPLE.match(line.strip())
            if m is None:
                continue
            key = f"{m.group(1)}{m.group(2) or ''}"
            if key not in values:
                values[key] = []
                order.append((_family_of(m.group(1), types), key))
            values[key].append((float(m.group(3)), alive))
    by_family: dict[str, list[str]] = {}
    for family, key in order:
        kind = types.get(family, "untyped")
        series = values[key]
        name = key.split("{", 1)[0]
        if kind in ("counter", "histogram") or name == "process_start_time_seconds":
            merged = _combine(GAUGE_RULES.get(name, "sum"), [v for v, _ in series])
        else:
            alive_values = [v for v, alive in series if alive]
            if not alive_values:
                continue  # a gauge of workers that are gone says nothing about the service
            merged = _combine(GAUGE_RULES.get(name, "sum"), alive_values)
        by_family.setdefault(family, []).append(f"{key} {_fmt_merged(merged)}")
    out: list[str] = []
    for family in family_order + [f for f in by_family if f not in comments]:
        if family in by_family:
            out.extend(comments.get(family, []))
            out.extend(by_family[family])
    out.append(f"# HELP {WORKERS_METRIC} Live worker processes whose metrics this text merges.")
    out.append(f"# TYPE {WORKERS_METRIC} gauge")
    out.append(f"{WORKERS_METRIC} {live}")
    return "\n".join(out) + "\n"
