"""The HTTP protocol ``risk-serve`` runs: uvicorn's httptools protocol plus three guards uvicorn does
not have. ``risk-serve`` passes this class to uvicorn as its ``http`` implementation
(``risk_assets.serving.protocol:GuardedHttpToolsProtocol``).

* **Header timeout** (``RISK_HEADER_TIMEOUT_S``, default 5 s): a connection must deliver a complete
  request head within this time of opening, and again within this time of the first byte of each
  later request on a keep-alive connection; otherwise it is closed. Uvicorn's own
  ``timeout_keep_alive`` (``RISK_KEEPALIVE_S``) covers idle time *between* requests only, so before
  this a client that opened sockets and sent half a request held them forever (slowloris: 19,990
  half-open sockets exhausted the file descriptors).
* **Connection cap** (``RISK_MAX_CONNECTIONS``, default 1024 per worker, lowered to the soft
  ``RLIMIT_NOFILE`` minus 128 if that is smaller): a connection beyond the cap
  evicts the oldest connection that has no request in progress (idle keep-alive or still sending
  its head); when every connection has a request in progress the new one is closed at once. A flood
  of idle or half-open sockets therefore cannot lock out a healthy client.
* **Admission** (``RISK_MAX_INFLIGHT``, default 64 per worker): a request for ``/v1/…`` whose head
  arrives while more than this many requests are in progress (parsed, not yet answered) is marked
  ``risk.shed`` in its ASGI scope; the app answers it at once with 503 ``overloaded`` and
  ``Retry-After`` without reading its body or scoring it (load shedding: the accepted requests keep
  their latency instead of every request being answered late). Probes and ``/metrics`` are never
  shed.

Counters (``COUNTERS``) are exported by the app as ``risk_serve_connections_closed_total{reason}``
and ``risk_serve_connections_open``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from risk_assets.serving.config import ServeConfig

log = logging.getLogger("risk_assets.serving")

SHED_KEY = "risk.shed"
# reason -> connections this worker closed: header_timeout, evicted (idle one closed to admit a new
# one), refused (new one closed, every connection busy)
COUNTERS: dict[str, int] = {"header_timeout": 0, "evicted": 0, "refused": 0}
OPEN: list[int] = [0]


@dataclass(frozen=True)
class Limits:
    header_timeout_s: float
    max_connections: int
    max_inflight: int


FD_RESERVE = 128  # descriptors kept for Redis, Kafka, the lake, logs and the listening socket


def connection_cap(configured: int) -> int:
    """``configured``, but never so high that client sockets could exhaust the process's file
    descriptors (soft ``RLIMIT_NOFILE`` minus :data:`FD_RESERVE`)."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return configured
    return max(16, min(configured, soft - FD_RESERVE))


@functools.cache
def limits() -> Limits:
    """The guards' settings, read from the environment once per worker (at the first connection)."""
    cfg = ServeConfig.from_env()
    cap = connection_cap(cfg.max_connections)
    if cap < cfg.max_connections:
        log.warning(
            "RISK_MAX_CONNECTIONS %d lowered to %d: the file descriptor limit is too low for it",
            cfg.max_connections,
            cap,
        )
    return Limits(cfg.header_timeout_s, cap, cfg.max_inflight)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header timeout, a connection cap and admission marking."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = limits()
        self._header_timer: asyncio.TimerHandle | None = None
        self._opened = time.monotonic()

    # -- connection cap ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        OPEN[0] = len(self.connections)
        if len(self.connections) > self._limits.max_connections:
            victim = self._oldest_idle()
            if victim is None:
                COUNTERS["refused"] += 1
                transport.close()
                return
            COUNTERS["evicted"] += 1
            victim.transport.close()
        self._arm_header_timer()

    def _busy(self) -> bool:
        """A request of this connection is being answered (its head is complete)."""
        return self.cycle is not None and not self.cycle.response_complete

    def _oldest_idle(self) -> GuardedHttpToolsProtocol | None:
        best: GuardedHttpToolsProtocol | None = None
        for conn in self.connections:
            if conn is self or not isinstance(conn, GuardedHttpToolsProtocol) or conn._busy():
                continue
            if conn.transport.is_closing():
                continue
            if best is None or conn._opened < best._opened:
                best = conn
        return best

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)
        OPEN[0] = len(self.connections)

    # -- header timeout ------------------------------------------------------------------------
    def _arm_header_timer(self) -> None:
        if self._header_timer is None and not self.transport.is_closing():
            self._header_timer = self.loop.call_later(self._limits.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if not self._busy() and not self.transport.is_closing():
            COUNTERS["header_timeout"] += 1
            self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_header_timer()  # keeps an earlier deadline: trickling bytes does not extend it

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Between requests uvicorn's keep-alive timer runs; the next request's first byte re-arms ours.
        self._cancel_header_timer()

    # -- admission -----------------------------------------------------------------------------
    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        scope = self.scope
        super().on_headers_complete()  # creates the request's task (it has not run yet)
        path = scope.get("path", "")
        if path.startswith("/v1/") and len(self.tasks) > self._limits.max_inflight:
            scope[SHED_KEY] = True  # type: ignore[typeddict-unknown-key]


def connection_metric_lines() -> list[str]:
    """Prometheus lines for the guards (this worker's counts)."""
    out = [
        "# HELP risk_serve_connections_closed_total Connections closed by the guards, by reason.",
        "# TYPE risk_serve_connections_closed_total counter",
    ]
    out += [f'risk_serve_connections_closed_total{{reason="{r}"}} {n}' for r, n in sorted(COUNTERS.items())]
    out += [
        "# HELP risk_serve_connections_open Open client connections of this worker.",
        "# TYPE risk_serve_connections_open gauge",
        f"risk_serve_connections_open {OPEN[0]}",
    ]
    return out
