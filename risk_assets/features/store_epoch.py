"""Epoch markers: how a Redis-backed store notices that it was emptied.

Pure Python (redis-py), no Dagster. Used by the online store (``online_store.py``, committed by the
offline → online sync after a full resync) and by the stream state (``stream_state.py``, committed
by a warm start from the archive).

Why
---
A Redis restarted without persistence (or flushed, or failed over to an empty replica) answers
pings and accepts writes exactly like a healthy one, so a writer that only looks at its own
bookkeeping (the sync's list of objects already written, the stream's offsets) goes on writing
*increments* into an empty store and reports success. The marker is a key the store holds only while
its content is complete: every writer that needs completeness reads it, and its absence means "this
Redis does not hold what you think it holds".

Protocol (one marker key, one pending key, both under one hash tag)
------------------------------------------------------------------
::

    {namespace}:{epoch}:online              marker: the token of the complete epoch
    {namespace}:{epoch}:online:pending      the token of a full rewrite in progress

1. :meth:`EpochMarker.begin` — before a full rewrite (full resync, warm start): put a new random
   token in the pending key, or join the rewrite already in progress (its token is returned; two
   writers that both rewrite everything may share one epoch).
2. the caller writes *everything* (idempotent writes).
3. :meth:`EpochMarker.commit` — one Lua script: if the pending key still holds the token, the marker
   becomes the token and the pending key is deleted; if the marker already is the token (a partner
   that joined committed first) that is success too; otherwise (the pending key is gone: Redis lost
   its data while we were writing) nothing is set and ``False`` comes back — the caller must start
   over.

Because the pending key lives in the same Redis, it survives exactly as long as the data written
after it: if it is still there at commit time, every write made since :meth:`begin` is still there.
Incremental writers compare :meth:`read` before and after their work with the token they rely on.

The pending key expires after :data:`PENDING_TTL` (a crashed rewrite leaves nothing behind for
long). The marker has no TTL: under a ``volatile-*`` eviction policy it is never evicted; under
``allkeys-*`` an eviction of the marker causes a (safe, costly) full rewrite — run the online store
with ``noeviction`` or ``volatile-*``.

Cluster: one marker per primary
-------------------------------
On Redis Cluster the store is spread over several primaries, and any one of them can restart empty
while the others keep their data (and their marker). One marker would then only notice the loss of
its own node. So on a cluster there is one marker (and one pending key) **per primary**::

    {namespace}:{epoch.<i>}:online          marker on the primary that owns the slot of ``epoch.<i>``
    {namespace}:{epoch.<i>}:online:pending

``<i>`` is, for each primary, the smallest integer whose tag ``epoch.<i>`` hashes to a slot that
primary owns (deterministic for a given slot map; recomputed from the client's slot map on every
call, so a new primary gets its own marker). The marker and its pending key share their tag, so
each commit script stays in one slot. :meth:`EpochMarker.read` reads every primary's marker (one
pipelined ``GET`` per primary, sent to all at once) and returns the token only when all hold the
same one: a primary restarted empty — or added empty by a reshard — makes the store incomplete.
:meth:`begin` takes (or joins) the token on the first primary's pending key and sets it on the
others; :meth:`commit` commits on every primary and succeeds only if every one still held its
pending key. Standalone Redis keeps the single ``{epoch}`` marker. None of the tags contains ``:``,
so none can equal an entity tag ``{entity:key}``.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

__all__ = ["EPOCH_TAG", "PENDING_TTL", "EpochMarker", "epoch_key", "new_token", "primary_tags"]

EPOCH_TAG = "{epoch}"
PENDING_TTL = timedelta(days=7)

# KEYS[1] = pending key; ARGV[1] = new token, ARGV[2] = TTL ms. Returns the pending token (ours or
# the one of a rewrite already in progress).
_BEGIN_LUA = """
local cur = redis.call('GET', KEYS[1])
if cur then return cur end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ARGV[1]
"""
# KEYS[1] = marker, KEYS[2] = pending; ARGV[1] = token. 1 = the marker holds the token now.
_COMMIT_LUA = """
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('DEL', KEYS[2])
  return 1
end
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
return 0
"""


def new_token() -> str:
    """A fresh random epoch token (24 hex chars)."""
    return secrets.token_hex(12)


def epoch_key(prefix: str, name: str) -> str:
    """The marker key of ``name`` (``online``, ``stream:<layouts>``) under a key prefix ending in ``:``."""
    if not prefix.endswith(":"):
        prefix += ":"
    return f"{prefix}{EPOCH_TAG}:{name}"


class EpochMarker:
    """The marker key (and its pending key) on one Redis; on a Cluster one pair per primary.

    Methods raise redis-py errors; the stores translate them into their own exceptions.
    """

    def __init__(self, client: redis.Redis | RedisCluster, key: str) -> None:
        if EPOCH_TAG not in key:
            raise ValueError(f"epoch marker key {key!r} must contain the tag {EPOCH_TAG}")
        self.client = client
        self.key = key
        self.pending_key = key + ":pending"
        self._cluster = isinstance(client, RedisCluster)
        self._begin = client.register_script(_BEGIN_LUA)
        self._commit = client.register_script(_COMMIT_LUA)

    def keys(self) -> list[str]:
        """The marker keys: ``[key]`` on one server, one per primary (see the module docstring)."""
        if not self._cluster:
            return [self.key]
        return [self.key.replace(EPOCH_TAG, "{" + tag + "}") for tag in primary_tags(self.client)]

    def read(self) -> str | None:
        """The committed token, ``None`` when a marker is missing (an emptied or new store; on a
        cluster: any primary's marker missing, or the primaries disagreeing)."""
        if not self._cluster:
            value = self.client.get(self.key)
            return None if value is None else _text(value)
        pipe = self.client.pipeline()
        for k in self.keys():
            pipe.get(k)
        values = {None if v is None else _text(v) for v in pipe.execute()}
        return values.pop() if len(values) == 1 else None

    def begin(self) -> str:
        """Start (or join) a full rewrite; returns the token to :meth:`commit` afterwards."""
        ttl_ms = int(PENDING_TTL.total_seconds() * 1000)
        first, *others = self.keys()
        token = _text(self._begin(keys=[first + ":pending"], args=[new_token(), ttl_ms]))
        for k in others:
            self.client.set(k + ":pending", token, px=ttl_ms)
        return token

    def commit(self, token: str) -> bool:
        """Make ``token`` the marker if nothing was lost since :meth:`begin`; ``False`` otherwise
        (on a cluster: on every primary, so a primary that lost its pending key fails the commit)."""
        ok = True
        for k in self.keys():
            ok = bool(self._commit(keys=[k, k + ":pending"], args=[token])) and ok
        return ok

    def declare(self) -> str:
        """Declare the present content complete (a new deployment with no history, tests)."""
        token = self.begin()
        if not self.commit(token):  # pragma: no cover - only if Redis restarts between two calls
            raise redis.ConnectionError(f"epoch marker {self.key} lost between begin and commit")
        return token

    def delete(self) -> None:
        """Remove the marker(s) and any pending rewrite (the content is no longer complete)."""
        for k in self.keys():
            self.client.delete(k)
            self.client.delete(k + ":pending")


def primary_tags(client: RedisCluster) -> list[str]:
    """One hash tag per primary of ``client``'s slot map: for each primary the first ``epoch.<i>``
    (i = 0, 1, …) whose slot it owns; in the order of ``i``."""
    slots = client.nodes_manager.slots_cache
    owners = {nodes[0].name for nodes in slots.values() if nodes}
    found: dict[str, str] = {}
    i = 0
    while len(found) < len(owners) and i < 1_000_000:
        tag = f"epoch.{i}"
        nodes = slots.get(key_slot(tag.encode()))
        if nodes:
            found.setdefault(nodes[0].name, tag)
        i += 1
    return list(found.values())


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
