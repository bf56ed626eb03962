"""How the continuous stream worker and the Kafka sensors share a topic-partition (pure, Redis only).

One Redis hash per topic-partition, ``{namespace}:stream_handoff:{topic}/{partition}``, is the
shared cursor. Every change is one Lua script on that one key (atomic, Redis Cluster safe):

* ``committed``  — every offset below is processed and its output published, by whoever did it.
* ``incarnation`` — the topic incarnation (``<cluster id>/<topic id>``) the offsets belong to.
* ``owner`` / ``lease_until_ms`` — the worker that owns the live tail, and until when (a lease the
  worker renews every loop; ``LEASE_MS`` by default). Expired = nobody.
* ``sensor_frontier`` / ``sensor_committed`` — how far the sensor has requested ranges and how far
  its runs have succeeded (written at every sensor tick).
* ``pending`` — the range the worker is processing: ``start end as_of_ms``. A worker restarted after
  a crash processes exactly this range again, judged against the same as-of time.

Rules (the worker owns the live tail; the sensors do catch-up and backfill):

1. A **sensor** requests a *new* range only through :meth:`Handoff.sensor_claim`, which refuses while
   a worker holds a live lease (the partition is then "busy"). Retries of a range it already
   requested are not claims: they run even under a lease, because the worker waits for them.
2. A **worker** takes a partition with :meth:`Handoff.acquire` (refused while another worker's lease
   is live), then processes nothing until the sensor has no range outstanding
   (``sensor_committed >= sensor_frontier``), and starts at ``committed``.
3. Only the lease holder commits (:meth:`Handoff.commit`), and only contiguously
   (``committed == start``): a worker that lost its lease (paused past it) cannot move the cursor.
4. The sensor syncs at every tick (:meth:`Handoff.sensor_sync`): its committed offset raises the
   shared ``committed``; with no range of its own outstanding it adopts a higher shared ``committed``
   (what a worker did while it was idle), so after a worker stops, the sensor resumes where it left.

Replays are harmless either way: the stream state's members are pure functions of the messages,
the online store writes if newer, and the feature log returns exact duplicates once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LEASE_MS = 15_000
"""A worker's lease: it renews it every loop; a worker silent this long has lost its partitions."""

_ACQUIRE = """
local owner = redis.call('HGET', KEYS[1], 'owner')
local until_ms = tonumber(redis.call('HGET', KEYS[1], 'lease_until_ms') or '0')
local now = tonumber(ARGV[2])
if owner and owner ~= '' and owner ~= ARGV[1] and until_ms > now then
  return {0, owner, tostring(until_ms)}
end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'lease_until_ms', tostring(now + tonumber(ARGV[3])))
return {1, ARGV[1], tostring(now + tonumber(ARGV[3]))}
"""

_RELEASE = """
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'owner', '', 'lease_until_ms', '0')
  return 1
end
return 0
"""

# ARGV: owner, now_ms, start, end, incarnation. Returns {status, committed}.
_COMMIT = """
local owner = redis.call('HGET', KEYS[1], 'owner')
local until_ms = tonumber(redis.call('HGET', KEYS[1], 'lease_until_ms') or '0')
if owner ~= ARGV[1] or until_ms <= tonumber(ARGV[2]) then
  return {'lost_lease', redis.call('HGET', KEYS[1], 'committed') or ''}
end
local inc = redis.call('HGET', KEYS[1], 'incarnation')
if inc and inc ~= '' and inc ~= ARGV[5] then return {'incarnation', inc} end
local committed = redis.call('HGET', KEYS[1], 'committed') or ARGV[3]
if committed ~= ARGV[3] then return {'not_contiguous', committed} end
redis.call('HSET', KEYS[1], 'committed', ARGV[4], 'incarnation', ARGV[5], 'pending', '')
return {'ok', ARGV[4]}
"""

# ARGV: owner, now_ms, pending. Only the lease holder records its pending range.
_PENDING = """
local owner = redis.call('HGET', KEYS[1], 'owner')
local until_ms = tonumber(redis.call('HGET', KEYS[1], 'lease_until_ms') or '0')
if owner ~= ARGV[1] or until_ms <= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'pending', ARGV[3])
return 1
"""

# ARGV: now_ms, frontier. Refused (returns the owner) while a worker's lease is live.
_SENSOR_CLAIM = """
local owner = redis.call('HGET', KEYS[1], 'owner')
local until_ms = tonumber(redis.call('HGET', KEYS[1], 'lease_until_ms') or '0')
if owner and owner ~= '' and until_ms > tonumber(ARGV[1]) then return {0, owner} end
local f = tonumber(redis.call('HGET', KEYS[1], 'sensor_frontier') or '0')
if tonumber(ARGV[2]) > f then redis.call('HSET', KEYS[1], 'sensor_frontier', ARGV[2]) end
return {1, ''}
"""

# ARGV: sensor_committed, sensor_frontier, incarnation. Returns the shared committed offset.
_SENSOR_SYNC = """
local inc = redis.call('HGET', KEYS[1], 'incarnation')
if inc and inc ~= '' and inc ~= ARGV[3] then
  -- the sensor is on another incarnation (an operator accepted it): its offsets are the truth
  redis.call('HSET', KEYS[1], 'committed', ARGV[1], 'pending', '')
else
  local shared = tonumber(redis.call('HGET', KEYS[1], 'committed') or '-1')
  if tonumber(ARGV[1]) > shared then redis.call('HSET', KEYS[1], 'committed', ARGV[1]) end
end
redis.call('HSET', KEYS[1], 'incarnation', ARGV[3], 'sensor_committed', ARGV[1], 'sensor_frontier', ARGV[2])
return redis.call('HGET', KEYS[1], 'committed')
"""


@dataclass(frozen=True)
class PartitionState:
    """The shared cursor of one topic-partition as read from Redis."""

    committed: int | None
    incarnation: str
    owner: str
    lease_until_ms: int
    sensor_frontier: int
    sensor_committed: int
    pending: tuple[int, int, int] | None  # (start, end, as_of_ms)

    def live_owner(self, now_ms: int) -> str:
        """The worker holding a live lease, or ''."""
        return self.owner if self.owner and self.lease_until_ms > now_ms else ""

    @property
    def sensor_outstanding(self) -> bool:
        """The sensor requested ranges that have not succeeded yet."""
        return self.sensor_frontier > self.sensor_committed


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Handoff:
    """The shared cursors and leases of the stream worker and the sensors (module docstring)."""

    def __init__(self, client: Any, namespace: str = "risk") -> None:
        self.client = client
        self.namespace = namespace
        self._scripts = {
            name: client.register_script(src)
            for name, src in (
                ("acquire", _ACQUIRE),
                ("release", _RELEASE),
                ("commit", _COMMIT),
                ("pending", _PENDING),
                ("claim", _SENSOR_CLAIM),
                ("sync", _SENSOR_SYNC),
            )
        }

    def key(self, tp: str) -> str:
        return f"{self.namespace}:stream_handoff:{{{tp}}}"

    def _run(self, name: str, tp: str, *args: Any) -> Any:
        return self._scripts[name](keys=[self.key(tp)], args=[str(a) for a in args])

    def read(self, tp: str) -> PartitionState:
        raw = {_s(k): _s(v) for k, v in self.client.hgetall(self.key(tp)).items()}
        pending = None
        if raw.get("pending"):
            start, end, as_of = (int(x) for x in raw["pending"].split())
            pending = (start, end, as_of)
        return PartitionState(
            committed=int(raw["committed"]) if raw.get("committed") else None,
            incarnation=raw.get("incarnation", ""),
            owner=raw.get("owner", ""),
            lease_until_ms=int(raw.get("lease_until_ms") or 0),
            sensor_frontier=int(raw.get("sensor_frontier") or 0),
            sensor_committed=int(raw.get("sensor_committed") or 0),
            pending=pending,
        )

    # -- the worker --------------------------------------------------------------------------------
    def acquire(self, tp: str, owner: str, now_ms: int, lease_ms: int = LEASE_MS) -> str:
        """Take or renew the lease; returns '' on success, else the live owner holding it."""
        ok, holder, _ = self._run("acquire", tp, owner, now_ms, lease_ms)
        return "" if int(ok) else _s(holder)

    def release(self, tp: str, owner: str) -> bool:
        return bool(self._run("release", tp, owner))

    def set_pending(self, tp: str, owner: str, now_ms: int, start: int, end: int, as_of_ms: int) -> bool:
        """Record the range being processed (only the lease holder can); False: the lease is lost."""
        return bool(self._run("pending", tp, owner, now_ms, f"{start} {end} {as_of_ms}"))

    def commit(
        self, tp: str, owner: str, now_ms: int, start: int, end: int, incarnation: str
    ) -> tuple[str, str]:
        """Move ``committed`` from ``start`` to ``end``; returns ``("ok", end)`` or the refusal
        (``lost_lease``, ``incarnation``, ``not_contiguous``) with the value that refused it."""
        status, value = self._run("commit", tp, owner, now_ms, start, end, incarnation)
        return _s(status), _s(value)

    def reset(self, tp: str, incarnation: str, committed: int) -> None:
        """An operator's decision (``risk-stream --accept-incarnation``): the partition's offsets now
        belong to ``incarnation`` and processing starts at ``committed``."""
        self.client.hset(
            self.key(tp),
            mapping={
                "incarnation": incarnation,
                "committed": committed,
                "pending": "",
                "sensor_frontier": committed,
                "sensor_committed": committed,
            },
        )

    # -- the sensors -------------------------------------------------------------------------------
    def sensor_claim(self, tp: str, now_ms: int, frontier: int) -> str:
        """Before requesting a new range up to ``frontier``: '' if granted, else the worker holding
        the live tail (request nothing for the partition)."""
        ok, owner = self._run("claim", tp, now_ms, frontier)
        return "" if int(ok) else _s(owner)

    def sensor_sync(self, tp: str, committed: int, frontier: int, incarnation: str) -> int:
        """Record the sensor's progress; returns the shared committed offset (rule 4)."""
        return int(_s(self._run("sync", tp, committed, frontier, incarnation)))
