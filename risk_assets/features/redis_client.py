"""One Redis client for a URL: a standalone server or a Redis Cluster, chosen by the URL's scheme.

Pure Python (redis-py), no Dagster. Every reader and writer of the online store and the stream state
(the sync, stream ingestion, the warm start, the resync sensor, risk-serve) opens its client here, so
``REDIS_URL`` alone decides the mode:

==========================================================  ==========================================
``redis://host:port/0``, ``rediss://…``, ``unix://…``        one server (``redis.Redis``)
``redis+cluster://host:port[,host:port…]``                   Redis Cluster (``RedisCluster``); the
``rediss+cluster://…``                                       hosts are seed nodes, the rest is found
==========================================================  ==========================================

A cluster URL has no database number (a cluster only has database 0); user, password and query
options (``?ssl_cert_reqs=…``) are passed on as for ``redis://``. The mode can also be forced with
``cluster=True`` (``RedisResource.cluster``) for a plain ``redis://`` seed URL.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
from redis.cluster import ClusterNode, RedisCluster

__all__ = ["CLUSTER_SCHEMES", "connect", "connect_async", "is_cluster_url"]

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
"""Cluster URL scheme → the redis-py scheme of its seed nodes."""


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster (``redis+cluster://`` or ``rediss+cluster://``)."""
    return url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


def connect(url: str, *, cluster: bool = False, **options: Any) -> redis.Redis | RedisCluster:
    """A redis-py client for ``url``: ``RedisCluster`` for a cluster URL or with ``cluster``,
    ``redis.Redis`` otherwise. ``options`` go to the client (timeouts, retry, …).

    Raises ``ValueError`` for a malformed URL and redis-py errors when a cluster's seed nodes cannot
    be reached (a cluster client reads the slot map on construction).
    """
    seeds = _cluster_seeds(url, cluster)
    if seeds is None:
        return redis.Redis.from_url(url, **options)
    first, nodes = seeds
    if not nodes:
        return RedisCluster.from_url(first, **options)
    return RedisCluster.from_url(first, startup_nodes=[ClusterNode(h, p) for h, p in nodes], **options)


def connect_async(
    url: str, *, cluster: bool = False, **options: Any
) -> redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster:
    """The asyncio twin of :func:`connect` (``redis.asyncio``), for readers on an event loop
    (risk-serve's request path): same URL rules, same options. A cluster client reads its slot map
    on first use (``await client.initialize()`` to do it now)."""
    seeds = _cluster_seeds(url, cluster)
    if seeds is None:
        return redis.asyncio.Redis.from_url(url, **options)
    first, nodes = seeds
    cls = redis.asyncio.cluster.RedisCluster
    if not nodes:
        return cls.from_url(first, **options)
    return cls.from_url(
        first, startup_nodes=[redis.asyncio.cluster.ClusterNode(h, p) for h, p in nodes], **options
    )


def _cluster_seeds(url: str, cluster: bool) -> tuple[str, list[tuple[str, int]]] | None:
    """``None`` for a one-server URL; else the first seed's redis-py URL and the seed nodes (empty:
    a plain ``redis://`` URL forced to cluster mode, the URL is the seed)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError("a Redis URL needs a scheme (redis://, rediss://, unix://, redis+cluster://)")
    base = CLUSTER_SCHEMES.get(scheme.lower())
    if base is None:
        return (url, []) if cluster else None
    parts = urllib.parse.urlsplit(f"{base}://{rest}")
    auth, _, hosts = parts.netloc.rpartition("@")
    seeds = [h.strip() for h in hosts.split(",") if h.strip()]
    if not seeds:
        raise ValueError("a redis+cluster:// URL needs at least one host:port")
    if parts.path not in ("", "/", "/0"):
        raise ValueError("a Redis Cluster has only database 0; drop the path from the URL")
    first = f"{base}://{auth + '@' if auth else ''}{seeds[0]}"
    if parts.query:
        first += f"?{parts.query}"
    return first, [_host_port(s) for s in seeds]


def _host_port(seed: str) -> tuple[str, int]:
    host, _, port = seed.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"cluster seed {seed!r} must be host:port")
    return host.strip("[]"), int(port)
