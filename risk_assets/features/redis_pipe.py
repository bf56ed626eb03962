"""A lean asyncio Redis pipe for risk-serve's read: one connection, RESP parsed by hiredis, replies
matched to requests in order. Pure Python (asyncio + hiredis), no Dagster.

``redis.asyncio`` costs about 150–200 µs of CPU per request on the scoring path (connection pool,
command packing, response futures per command; ``bench/bench_feature_fetch.py``). Reading the
online tiles needs much less: one write of pre-packed commands and one parse of the replies. This
pipe does exactly that for a single server (``redis://`` or ``unix://`` without TLS; anything else —
TLS, a cluster — keeps ``redis.asyncio``):

* one TCP/Unix connection, opened lazily in the running loop, with ``AUTH``/``SELECT`` from the URL;
* :meth:`AsyncPipe.execute` writes the commands of one request in one ``transport.write`` and
  awaits their replies; concurrent requests pipeline on the connection (RESP answers in order);
* a timeout (a loop timer: the replies that arrived are read first, so loop lag is not a timeout),
  a lost connection or a protocol error fails every waiting request with redis-py's
  ``TimeoutError``/``ConnectionError`` and drops the connection (the next request reconnects), so
  callers handle it exactly as a ``redis.asyncio`` failure (the breaker opens).
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections import deque
from typing import Any

import hiredis
from redis.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["AsyncPipe", "supports"]


def supports(url: str) -> bool:
    """Whether ``url`` is a plain single-server URL this pipe speaks (no TLS, no cluster)."""
    scheme = url.split("://", 1)[0].lower()
    return scheme in ("redis", "unix")


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.waiting: deque[tuple[asyncio.Future[list[Any]], int, list[Any]]] = deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.last_rx = 0.0  # loop time of the last bytes received

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.last_rx = asyncio.get_running_loop().time()
        self.reader.feed(data)
        waiting = self.waiting
        while waiting:
            reply = self.reader.gets()
            if reply is False:
                return
            fut, n, out = waiting[0]
            out.append(reply)
            if len(out) == n:
                waiting.popleft()
                if not fut.done():
                    fut.set_result(out)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(f"connection to Redis lost: {exc or 'closed by the server'}"))

    def fail(self, exc: Exception) -> None:
        self.closed = True
        while self.waiting:
            fut, _, _ = self.waiting.popleft()
            if not fut.done():
                fut.set_exception(exc)
        if self.transport is not None:
            self.transport.close()


class AsyncPipe:
    """One pipelined connection to a single Redis server (see the module docstring)."""

    def __init__(self, url: str, *, connect_timeout_s: float, timeout_s: float) -> None:
        if not supports(url):
            raise ValueError("AsyncPipe speaks redis:// and unix:// only")
        self._params = parse_url(url)
        self._unix = url.lower().startswith("unix://")
        if self._unix and not self._params.get("path"):
            self._params["path"] = urllib.parse.urlsplit(url).path
        self.connect_timeout_s = connect_timeout_s
        self.timeout_s = timeout_s
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None

    async def _connection(self) -> _Protocol:
        proto = self._proto
        if proto is not None and not proto.closed:
            return proto
        if self._connecting is not None:
            return await asyncio.shield(self._connecting)
        loop = asyncio.get_running_loop()
        self._connecting = loop.create_future()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                p = self._params
                if self._unix:
                    _, proto = await loop.create_unix_connection(_Protocol, p["path"])
                else:
                    _, proto = await loop.create_connection(
                        _Protocol, p.get("host", "localhost"), p.get("port", 6379)
                    )
                setup: list[tuple[Any, ...]] = []
                if p.get("password") is not None:
                    user = p.get("username")
                    setup.append(("AUTH", user, p["password"]) if user else ("AUTH", p["password"]))
                if p.get("db"):
                    setup.append(("SELECT", p["db"]))
                if setup:
                    for reply in await self._send(proto, setup):
                        if isinstance(reply, Exception):
                            raise RedisConnectionError(f"Redis refused the connection setup: {reply}")
        except TimeoutError:
            err = RedisTimeoutError("timeout connecting to Redis")
            self._connecting.set_exception(err)
            self._connecting.exception()  # retrieved: no "never retrieved" warning
            self._connecting = None
            raise err from None
        except OSError as exc:
            err = RedisConnectionError(f"cannot connect to Redis: {exc}")
            self._connecting.set_exception(err)
            self._connecting.exception()
            self._connecting = None
            raise err from None
        self._proto = proto
        self._connecting.set_result(proto)
        self._connecting = None
        return proto

    @staticmethod
    def _send(proto: _Protocol, commands: list[tuple[Any, ...]]) -> asyncio.Future[list[Any]]:
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        proto.waiting.append((fut, len(commands), []))
        assert proto.transport is not None
        proto.transport.write(b"".join(hiredis.pack_command(c) for c in commands))
        return fut

    async def execute(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """The replies of ``commands`` in order (an error reply is a ``ResponseError`` value).

        The timeout is a loop timer with socket-timeout semantics: it fails the request only when
        nothing arrived on the connection for ``timeout_s`` (a large batch's replies keep it alive),
        and the loop reads ready sockets before it runs due timers, so a busy loop (a burst of
        requests) is not mistaken for a slow Redis."""
        if not commands:
            return []
        proto = await self._connection()
        fut = self._send(proto, commands)
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle | None = None

        def expire() -> None:
            nonlocal timer
            if fut.done():
                return
            idle = loop.time() - proto.last_rx
            if idle < self.timeout_s:  # bytes are flowing (a large batch): a socket-style timeout
                timer = loop.call_later(self.timeout_s - idle, expire)
                return
            # the connection's later replies belong to nobody: drop it (every waiter fails)
            proto.fail(RedisTimeoutError(f"Redis sent nothing for {self.timeout_s * 1000:.0f} ms"))

        timer = loop.call_later(self.timeout_s, expire)
        try:
            return await fut
        finally:
            timer.cancel()

    def close(self) -> None:
        """Close the connection (waiting requests fail)."""
        if self._proto is not None:
            self._proto.fail(RedisConnectionError("pipe closed"))
            self._proto = None
