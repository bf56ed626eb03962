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

Cluster: the marker and its pending key share the hash tag ``{epoch}`` (one slot, so the commit
script may touch both). ``{epoch}`` has no ``:`` and can never equal an entity tag
``{entity:key}``.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

import redis
from redis.cluster import RedisCluster

__all__ = ["EPOCH_TAG", "PENDING_TTL", "EpochMarker", "epoch_key", "new_token"]

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
    """One marker key (and its pending key) on one Redis (standalone or Cluster).

    Methods raise redis-py errors; the stores translate them into their own exceptions.
    """

    def __init__(self, client: redis.Redis | RedisCluster, key: str) -> None:
        self.client = client
        self.key = key
        self.pending_key = key + ":pending"
        self._begin = client.register_script(_BEGIN_LUA)
        self._commit = client.register_script(_COMMIT_LUA)

    def read(self) -> str | None:
        """The committed token, ``None`` when the marker is missing (an emptied or new store)."""
        value = self.client.get(self.key)
        return None if value is None else _text(value)

    def begin(self) -> str:
        """Start (or join) a full rewrite; returns the token to :meth:`commit` afterwards."""
        ttl_ms = int(PENDING_TTL.total_seconds() * 1000)
        return _text(self._begin(keys=[self.pending_key], args=[new_token(), ttl_ms]))

    def commit(self, token: str) -> bool:
        """Make ``token`` the marker if nothing was lost since :meth:`begin`; ``False`` otherwise."""
        return bool(self._commit(keys=[self.key, self.pending_key], args=[token]))

    def declare(self) -> str:
        """Declare the present content complete (a new deployment with no history, tests)."""
        token = self.begin()
        if not self.commit(token):  # pragma: no cover - only if Redis restarts between two calls
            raise redis.ConnectionError(f"epoch marker {self.key} lost between begin and commit")
        return token

    def delete(self) -> None:
        """Remove the marker and any pending rewrite (the content is no longer complete)."""
        self.client.delete(self.key)
        self.client.delete(self.pending_key)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
