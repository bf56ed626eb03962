"""Recent events per entity in Redis: the state of the stream feature engine.

Pure Python (redis-py + msgspec + Polars), no Dagster. The stream engine (``stream.py``) adds each
micro-batch of validated events here and reads back, for every entity the batch touched, the
entity's events inside the longest window of its groups. Values are then computed by the batch
engine itself over that frame, so the state only has to hold the *events*, never partial
aggregates — which is what makes stream values equal batch values (``docs/stream_features.md``).

Which groups stream
-------------------
:func:`stream_groups`: groups without label aggregates whose ``max_window`` (longest window +
offset) is at most ``STREAM_MAX_WINDOW`` (one day). Label groups need labels that arrive days later
and 7–30 day windows would make the state large; both are batch-only and reach the online store
through the offline → online sync.

Key layout (one Redis sorted set per entity key)
------------------------------------------------
::

    {namespace}:{{{entity}:{entity_key}}}:sev:{layout_version}
    e.g.  risk:{ip:10.1.2.3}:sev:5d41402abc4b

* The ``{entity:entity_key}`` hash tag is the online store's (same escaping, same slot): on Redis
  Cluster every key of one entity lives on one node, and all commands here are single-key.
* ``layout_version`` = 12 hex digits of the SHA-256 of the entity's stored layout (format, entity,
  event types, columns). Changing the stream groups' needed columns starts new, empty keys (warm
  them with :meth:`StreamState.add` over the archive's last ``max_window``); old keys expire.
* score = ``event_ts`` (ms); member = msgpack array (msgspec, deterministic)::

      [event_ts_ms, event_id, ingest_ts_ms, kafka_partition, kafka_offset, <columns...>]

  ``columns`` = :func:`~risk_assets.features.batch.required_event_columns` of the entity's stream
  groups minus ``event_id``/``event_ts`` and the key columns (the key is in the Redis key). The
  arrival triple (``ingest_ts``, partition, offset; ``-1`` when unknown, e.g. events loaded from the
  archive) lets the engine decide which events were *known* when a batch was processed, so a replayed
  range sees exactly what it saw the first time (see ``stream.py``). Because the member is a pure
  function of the message, re-adding the same message is a no-op (ZADD of an existing member). A
  re-sent event (same ``event_id``, another offset) is a second member; reads keep one copy per
  ``event_id`` (the earliest arrival).

Retention
---------
``retention = max_window + margin`` (``STATE_MARGIN``, 2 h by default). Per touched key and batch:
``ZADD`` the new members, ``ZRANGEBYSCORE`` the read range, then ``ZREMRANGEBYSCORE`` everything older
than (newest event of that key in the batch − retention) and ``PEXPIRE`` the key to ``retention``
(an idle entity's events are all outside any future window). The trim comes after the read so a late
event still sees whatever of its window is left. All of it for all touched keys is one pipelined
round trip (non-transactional; each command is single-key, so it works on a cluster too).

Epoch marker: a state that knows it is complete
-----------------------------------------------
The state is only right if it holds every recent event; a Redis restarted without persistence
comes back empty and would otherwise be filled again batch by batch while rows computed from the
partial windows are published as if nothing happened. So the state has an epoch marker
(``store_epoch.py``)::

    {namespace}:{epoch}:stream:{layouts}        layouts = 12 hex of the entity layout versions

committed by a warm start (``stream_warm_start.py``: the longest window's events from the archive
and the events topic) or declared by :meth:`StreamState.mark_complete` for a new deployment.
:meth:`StreamState.add_and_fetch` reads it at the start and at the end of its pipeline (the same
connection, so redis-py's reconnect after a restart re-runs both on the new server) and raises
:class:`StreamStateCold` — before anything is computed or published — when it is missing or changed.
Adding a stream group changes the layouts and hence the marker key: the first micro-batch after the
change finds no marker and warm-starts the new layout.
"""

from __future__ import annotations

import gc
import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property
from types import TracebackType
from typing import Any, Self

import msgspec
import numpy as np
import polars as pl
import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import AskError, MovedError, RedisError
from redis.retry import Retry

from risk_assets.events.schema import ARCHIVE_EVENT_COLUMNS
from risk_assets.features.batch import required_event_columns
from risk_assets.features.online_store import encode_entity_key, redact_url
from risk_assets.features.redis_client import connect
from risk_assets.features.spec import EVENT_TS, Entity, FeatureGroup, _ms
from risk_assets.features.store_epoch import EpochMarker, epoch_key
from risk_assets.sources import EXCHANGE_EVENTS

__all__ = [
    "ARRIVAL_COLUMNS",
    "STATE_FORMAT_VERSION",
    "STATE_MARGIN",
    "STREAM_MAX_WINDOW",
    "EntityLayout",
    "FetchRequest",
    "StreamState",
    "StreamStateCold",
    "StreamStateError",
    "is_streamable",
    "stream_groups",
]

STATE_FORMAT_VERSION = 1
STREAM_MAX_WINDOW = timedelta(days=1)
STATE_MARGIN = timedelta(hours=2)
_TS = pl.Datetime("ms", "UTC")
# Columns the state returns besides the archive columns: where each event came from.
ARRIVAL_COLUMNS: dict[str, pl.DataType] = {"ingest_ts": _TS, "_partition": pl.Int32(), "_offset": pl.Int64()}
_HEAD = ("event_ts", "event_id", "ingest_ts", "_partition", "_offset")
_MEMBER_DTYPES: dict[str, pl.DataType] = {
    "event_ts": pl.Int64(),
    "ingest_ts": pl.Int64(),
    "_partition": pl.Int32(),
    "_offset": pl.Int64(),
}


class StreamStateError(RuntimeError):
    """A state operation failed (Redis unreachable or rejecting a command). One line, no password."""


class StreamStateCold(StreamStateError):
    """The state's epoch marker is missing or changed: Redis lost the state (restart, flush) or it
    was never warmed. Nothing computed from it may be published; warm it (``stream_warm_start``)."""


def is_streamable(group: FeatureGroup, max_window: timedelta = STREAM_MAX_WINDOW) -> bool:
    """Whether ``group`` is computed by the stream engine: no labels, ``max_window <= max_window``."""
    return not group.needs_labels and group.max_window <= max_window


def stream_groups(
    groups: Iterable[FeatureGroup], max_window: timedelta = STREAM_MAX_WINDOW
) -> tuple[FeatureGroup, ...]:
    """The groups of ``groups`` that stream (see :func:`is_streamable`), in the given order."""
    return tuple(g for g in groups if is_streamable(g, max_window))


@dataclass(frozen=True)
class EntityLayout:
    """What the state stores for one entity: the union of its stream groups' needs."""

    entity: Entity
    groups: tuple[str, ...]
    event_types: tuple[str, ...]
    columns: tuple[str, ...]  # stored payload columns (archive columns), after the head fields
    max_window_ms: int
    retention_ms: int
    max_hop_ms: int = 1  # the longest tile hop of its groups: reads reach the end of that tile

    @cached_property
    def version(self) -> str:
        """12 hex digits of the SHA-256 of the stored layout (part of every key)."""
        doc = {
            "format": STATE_FORMAT_VERSION,
            "entity": self.entity.to_dict(),
            "event_types": sorted(self.event_types),
            "columns": list(self.columns),
        }
        text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def frame_schema(self) -> dict[str, pl.DataType]:
        """Columns of the frames :meth:`StreamState.fetch` returns (archive order + arrival)."""
        cols = {"event_id", "event_ts", *self.entity.keys, *self.columns}
        out = {c: t for c, t in ARCHIVE_EVENT_COLUMNS.items() if c in cols and c != "ingest_ts"}
        return {**out, **ARRIVAL_COLUMNS}

    @classmethod
    def build(cls, entity: Entity, groups: Sequence[FeatureGroup], margin: timedelta) -> EntityLayout:
        foreign = sorted({g.source.name for g in groups if g.source != EXCHANGE_EVENTS})
        if foreign:
            raise ValueError(f"the stream path reads the exchange events only, not sources {foreign}")
        keys = set(entity.keys)
        needed = required_event_columns(groups)
        columns = tuple(c for c in needed if c not in keys and c not in ("event_id", EVENT_TS))
        types = tuple(sorted({t for g in groups for t in g.source_event_types}))
        max_w = max(_ms(g.max_window) for g in groups)
        max_hop = max((_ms(h) for g in groups for h in g.hops), default=1)
        return cls(entity, tuple(g.name for g in groups), types, columns, max_w, max_w + _ms(margin), max_hop)


@dataclass(frozen=True)
class FetchRequest:
    """Read ``(lo_ms, hi_ms]`` of one entity key's events (``key`` = tuple of key column values)."""

    entity: str
    key: tuple[Any, ...]
    lo_ms: int
    hi_ms: int


@dataclass
class _Touched:
    """Per entity: the touched keys of one batch and what to send for each."""

    layout: EntityLayout
    keys: list[tuple[Any, ...]] = field(default_factory=list)
    redis_keys: list[str] = field(default_factory=list)
    members: list[list[bytes]] = field(default_factory=list)
    scores: list[np.ndarray] = field(default_factory=list)
    read_lo: list[int] = field(default_factory=list)
    read_hi: list[int] = field(default_factory=list)


@contextmanager
def _no_gc() -> Iterator[None]:
    """Pause the cyclic GC while millions of small immutable objects are created (they hold no
    cycles; letting the collector walk them tripled decode time)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


# KEYS = sorted-set keys; ARGV[1] = retention (ms), ARGV[2] = '1' to read; then per key:
# n, read_lo, read_hi, trim_below, and n (score, member) pairs. Returns per key the members with
# read_lo < score <= read_hi (read after the add, before the trim), or an empty array.
UPDATE_LUA = """
local ret = ARGV[1]
local read = ARGV[2] == '1'
local out = {}
local p = 3
for i = 1, #KEYS do
  local k = KEYS[i]
  local n = tonumber(ARGV[p])
  local lo, hi, cut = ARGV[p + 1], ARGV[p + 2], ARGV[p + 3]
  p = p + 4
  local j = 0
  while j < n do
    local m = math.min(n - j, 200)
    local args = {}
    for q = 0, 2 * m - 1 do
      args[q + 1] = ARGV[p + 2 * j + q]
    end
    redis.call('ZADD', k, unpack(args))
    j = j + m
  end
  p = p + 2 * n
  if read then
    out[i] = redis.call('ZRANGEBYSCORE', k, '(' .. lo, hi)
  else
    out[i] = {}
  end
  redis.call('ZREMRANGEBYSCORE', k, '-inf', '(' .. cut)
  redis.call('PEXPIRE', k, ret)
end
return out
"""


def _array_header(n: int) -> bytes:
    """msgpack array32 header: the members of a read are decoded as ONE array (one C call)."""
    return b"\xdd" + n.to_bytes(4, "big")


class StreamState:
    """The stream engine's per-entity event state in Redis (standalone or Cluster).

    ``groups`` must be streamable (:func:`is_streamable` with ``max_window``); they fix the stored
    layout per entity. Build with :meth:`from_url` or pass a redis-py client.
    """

    def __init__(
        self,
        client: redis.Redis | RedisCluster,
        groups: Iterable[FeatureGroup],
        *,
        namespace: str = "risk",
        margin: timedelta = STATE_MARGIN,
        max_window: timedelta = STREAM_MAX_WINDOW,
        url: str = "redis://?",
        script_keys: int = 128,
    ) -> None:
        groups = tuple(groups)
        if not groups:
            raise ValueError("StreamState needs at least one stream group")
        bad = [g.name for g in groups if not is_streamable(g, max_window)]
        if bad:
            raise ValueError(f"groups {bad} do not stream (label aggregates or max_window > {max_window})")
        if "{" in namespace or "}" in namespace:
            raise ValueError("namespace must not contain braces")
        self._client = client
        self._url = redact_url(url)
        self.groups: tuple[FeatureGroup, ...] = groups
        self._prefix = namespace if namespace.endswith(":") else namespace + ":"
        by_entity: dict[Entity, list[FeatureGroup]] = {}
        for g in groups:
            by_entity.setdefault(g.entity, []).append(g)
        names = [e.name for e in by_entity]
        if len(set(names)) != len(names):
            raise ValueError(f"two entities share a name with different keys: {names}")
        self.layouts: dict[str, EntityLayout] = {
            e.name: EntityLayout.build(e, gs, margin) for e, gs in by_entity.items()
        }
        self._encoder = msgspec.msgpack.Encoder()
        self.script_keys = script_keys
        self._script = client.register_script(UPDATE_LUA)
        self._epoch = EpochMarker(client, epoch_key(self._prefix, f"stream:{self.layouts_version}"))

    @cached_property
    def layouts_version(self) -> str:
        """12 hex digits naming the set of entity layouts (part of the epoch marker's key)."""
        text = ",".join(sorted(f"{name}={lay.version}" for name, lay in self.layouts.items()))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def retention_ms(self) -> int:
        """The longest retention of the state's layouts (longest window + margin)."""
        return max(lay.retention_ms for lay in self.layouts.values())

    @property
    def max_window_ms(self) -> int:
        """The longest window of the state's groups."""
        return max(lay.max_window_ms for lay in self.layouts.values())

    @classmethod
    def from_url(
        cls,
        url: str,
        groups: Iterable[FeatureGroup],
        *,
        namespace: str = "risk",
        cluster: bool = False,
        margin: timedelta = STATE_MARGIN,
        socket_timeout_s: float = 5.0,
        retries: int = 3,
    ) -> StreamState:
        """A state on ``url`` with bounded timeouts and exponential-backoff retries (like the store);
        ``redis+cluster://`` URLs (or ``cluster=True``) open Redis Cluster (``redis_client.py``)."""
        options: dict[str, Any] = {
            "socket_connect_timeout": 1.0,
            "socket_timeout": socket_timeout_s,
            "retry": Retry(ExponentialBackoff(cap=0.5, base=0.025), retries),
        }
        client = connect(url, cluster=cluster, **options)
        return cls(client, groups, namespace=namespace, margin=margin, url=url)

    @property
    def client(self) -> redis.Redis | RedisCluster:
        return self._client

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ---- epoch marker -------------------------------------------------------------------------

    @property
    def epoch_key(self) -> str:
        """The Redis key of the state's epoch marker."""
        return self._epoch.key

    def epoch(self) -> str | None:
        """The committed epoch token; ``None`` when the state is not known to be complete."""
        return self._guarded(self._epoch.read, "epoch read")

    def begin_epoch(self) -> str:
        """Start (or join) a warm start; pass the token to :meth:`commit_epoch` afterwards."""
        return self._guarded(self._epoch.begin, "epoch begin")

    def commit_epoch(self, token: str) -> bool:
        """Mark the state complete under ``token``; ``False`` if Redis lost data since the begin."""
        return self._guarded(lambda: self._epoch.commit(token), "epoch commit")

    def mark_complete(self) -> str:
        """Declare the present state complete: a new deployment with no history to load, or tests."""
        return self._guarded(self._epoch.declare, "epoch declare")

    def _guarded(self, fn: Any, what: str) -> Any:
        try:
            return fn()
        except RedisError as exc:
            raise self._error(exc, what) from None

    # ---- keys ---------------------------------------------------------------------------------

    def key(self, entity: str, entity_key: tuple[Any, ...] | str | int) -> str:
        """The Redis key of one entity key's sorted set."""
        layout = self.layouts[entity]
        return f"{self._prefix}{{{entity}:{encode_entity_key(entity_key)}}}:sev:{layout.version}"

    # ---- encoding -----------------------------------------------------------------------------

    def _entity_events(self, layout: EntityLayout, events: pl.DataFrame) -> pl.DataFrame:
        """The events the entity stores: its event types, non-null keys; columns in member order,
        timestamps as int ms, unknown arrival as -1, one row per (event_id, arrival)."""
        keys = list(layout.entity.keys)
        present = set(events.columns)
        missing = [c for c in ("event_id", "event_type", EVENT_TS, "ingest_ts", *keys) if c not in present]
        if missing:
            raise ValueError(f"events lack column(s) {missing}")

        def col(c: str) -> pl.Expr:
            dtype = ARCHIVE_EVENT_COLUMNS[c]
            return (pl.col(c) if c in present else pl.lit(None)).cast(dtype).alias(c)

        arrival = [
            pl.col("ingest_ts").cast(_TS).dt.epoch("ms").alias("ingest_ts"),
            (pl.col("_partition") if "_partition" in present else pl.lit(-1))
            .cast(pl.Int64)
            .alias("_partition"),
            (pl.col("_offset") if "_offset" in present else pl.lit(-1)).cast(pl.Int64).alias("_offset"),
        ]
        return (
            events.lazy()
            .filter(
                pl.col("event_type").is_in(list(layout.event_types)), *[pl.col(k).is_not_null() for k in keys]
            )
            .select(
                *[col(k) for k in keys],
                pl.col(EVENT_TS).cast(_TS).dt.epoch("ms").alias(EVENT_TS),
                pl.col("event_id").cast(pl.String),
                *arrival,
                *[col(c) for c in layout.columns],
            )
            .with_columns(pl.col("ingest_ts").fill_null(-1))
            .unique(
                subset=["event_id", "ingest_ts", "_partition", "_offset"], keep="first", maintain_order=True
            )
            .collect()
        )

    def _touch(self, events: pl.DataFrame, read: bool) -> list[_Touched]:
        out = []
        for name, layout in self.layouts.items():
            keys = list(layout.entity.keys)
            df = self._entity_events(layout, events)
            if df.height == 0:
                continue
            df = df.sort(keys, maintain_order=True)
            change = (
                df.select(pl.any_horizontal([pl.col(k) != pl.col(k).shift(1) for k in keys]).fill_null(True))
                .to_series()
                .to_numpy()
            )
            rows = df.select(*_HEAD, *layout.columns).rows()
            enc = self._encoder.encode
            with _no_gc():
                members = [enc(r) for r in rows]
            ts = df[EVENT_TS].to_numpy()
            bounds = np.r_[np.flatnonzero(change), df.height]
            key_rows = df.select(keys)[bounds[:-1]].rows()
            t = _Touched(layout)
            for j, kv in enumerate(key_rows):
                a, b = int(bounds[j]), int(bounds[j + 1])
                t.keys.append(kv)
                t.redis_keys.append(self.key(name, kv))
                t.members.append(members[a:b])
                seg = ts[a:b]
                t.scores.append(seg)
                if read:
                    # to the end of the longest-hop tile of the newest event: the stream path
                    # rebuilds whole tiles (a late event's tile holds later events too)
                    hi, hop = int(seg.max()), layout.max_hop_ms
                    t.read_lo.append(int(seg.min()) - layout.max_window_ms)
                    t.read_hi.append(hi - hi % hop + hop - 1)
            out.append(t)
        return out

    # ---- operations ---------------------------------------------------------------------------

    def add(self, events: pl.DataFrame) -> int:
        """Add events (archive layout incl. ``ingest_ts``; optional ``_partition``/``_offset``) to the
        state, trimming and refreshing expiry as a batch does; nothing is read back. Use it to warm
        the state from the archive. Returns the number of members sent (existing ones are no-ops)."""
        touched = self._touch(events, read=False)
        self._run(touched, read=False)
        return sum(len(m) for t in touched for m in t.members)

    def add_and_fetch(self, events: pl.DataFrame) -> dict[str, pl.DataFrame]:
        """Add ``events`` and return, per entity name, the stored events of every touched entity key
        with ``event_ts`` in ``(min new ts − max_window, end of the longest-hop tile of the max new
        ts]`` of that key — one frame per
        entity in :attr:`EntityLayout.frame_schema`, one row per ``event_id`` (earliest arrival).
        One pipelined round trip for everything, framed by two reads of the epoch marker: raises
        :class:`StreamStateCold` when it is missing or changed (the events are added all the same;
        adding is idempotent)."""
        touched = self._touch(events, read=True)
        replies = self._run(touched, read=True, guard=True)
        return {
            t.layout.entity.name: self._decode(t.layout, t.keys, r)
            for t, r in zip(touched, replies, strict=True)
        }

    def fetch(self, requests: Sequence[FetchRequest]) -> dict[str, pl.DataFrame]:
        """Read stored events without writing anything: per entity, the events of each request's key
        in ``(lo_ms, hi_ms]`` (same frame shape as :meth:`add_and_fetch`)."""
        by_entity: dict[str, list[FetchRequest]] = {}
        for r in requests:
            by_entity.setdefault(r.entity, []).append(r)
        pipe = self._pipeline()
        for name, reqs in by_entity.items():
            for r in reqs:
                pipe.zrangebyscore(self.key(name, r.key), f"({r.lo_ms}", r.hi_ms)
        replies = self._execute(pipe, "fetch")
        out, i = {}, 0
        for name, reqs in by_entity.items():
            out[name] = self._decode(self.layouts[name], [r.key for r in reqs], replies[i : i + len(reqs)])
            i += len(reqs)
        return out

    def members(self, entity: str, entity_key: tuple[Any, ...] | str | int) -> list[tuple[bytes, float]]:
        """Raw ``(member, score)`` pairs of one key (inspection and tests)."""
        key = self.key(entity, entity_key)
        try:
            return self._client.zrange(key, 0, -1, withscores=True)
        except RedisError as exc:
            raise self._error(exc, "read") from None

    def delete_all(self) -> int:
        """Delete every state key of this namespace (all layouts) and the epoch marker: the state is
        then cold. For tests and resets."""
        n = 0
        try:
            self._epoch.delete()
            for k in self._client.scan_iter(match=f"{self._prefix}{{*}}:sev:*", count=1000):
                n += self._client.delete(k)
        except RedisError as exc:
            raise self._error(exc, "delete") from None
        return n

    # ---- plumbing -----------------------------------------------------------------------------

    def _pipeline(self) -> Any:
        if isinstance(self._client, RedisCluster):
            return self._client.pipeline()
        return self._client.pipeline(transaction=False)

    def _check_epoch(self, first: Any, last: Any) -> None:
        if first is None or last is None or first != last:
            what = "missing" if first is None or last is None else "changed during the batch"
            raise StreamStateCold(
                f"stream state on Redis at {self._url}: epoch marker {self._epoch.key} is {what} "
                "(Redis lost the state or it was never warmed); warm it from the archive before "
                "anything is published"
            )

    def _run(self, touched: list[_Touched], read: bool, guard: bool = False) -> list[list[list[bytes]]]:
        """Per key: ZADD the new members, [ZRANGEBYSCORE the read range,] trim, PEXPIRE.

        Standalone Redis: one pipeline of multi-key script calls (``script_keys`` keys each), so the
        client packs a few dozen commands instead of four per key. Cluster: the same script calls,
        each within one hash slot, in one pipeline per primary sent straight to that node, the
        primaries in parallel (:meth:`_run_by_node`). Same effect either way. With ``guard`` the
        epoch marker is read before and after (see the module docstring).
        """
        if isinstance(self._client, RedisCluster):
            first = self._guarded(self._epoch.read, "epoch read") if guard else None
            out = self._run_by_node(touched, read)
            if guard:
                self._check_epoch(first, self._guarded(self._epoch.read, "epoch read"))
            return out
        pipe = self._pipeline()
        if guard:
            pipe.get(self._epoch.key)
        for t in touched:
            n = len(t.redis_keys)
            for a in range(0, n, self.script_keys):
                idx = range(a, min(a + self.script_keys, n))
                self._script(
                    keys=[t.redis_keys[i] for i in idx], args=self._script_args(t, idx, read), client=pipe
                )
        if guard:
            pipe.get(self._epoch.key)
        replies = self._execute(pipe, "update")
        if guard:
            self._check_epoch(replies[0], replies[-1])
            replies = replies[1:-1]
        if not read:
            return []
        out, pos = [], 0
        for t in touched:
            n = len(t.redis_keys)
            calls = (n + self.script_keys - 1) // self.script_keys
            merged: list[list[bytes]] = []
            for r in replies[pos : pos + calls]:
                merged.extend(r)
            out.append(merged)
            pos += calls
        return out

    def _script_args(self, t: _Touched, idx: Sequence[int], read: bool) -> list[Any]:
        args: list[Any] = [t.layout.retention_ms, "1" if read else "0"]
        for i in idx:
            scores = t.scores[i]
            lo = t.read_lo[i] if read else 0
            hi = t.read_hi[i] if read else 0
            args += (len(scores), lo, hi, int(scores.max()) - t.layout.retention_ms)
            for sc, m in zip(scores.tolist(), t.members[i], strict=True):
                args += (sc, m)
        return args

    def _run_by_node(self, touched: list[_Touched], read: bool) -> list[list[list[bytes]]]:
        """Cluster: script calls grouped by slot (a multi-key script must stay in one), one
        non-transactional pipeline per primary on that node's own connection, primaries in
        parallel. A slot that moved since the slot map was read (MOVED/ASK) makes the whole batch
        run again through redis-py's routing (every command here is idempotent)."""
        owner = self._client.nodes_manager.get_node_from_slot
        per_node: dict[str, tuple[Any, list[tuple[int, list[int]]]]] = {}
        for ti, t in enumerate(touched):
            by_slot: dict[int, list[int]] = {}
            for i, key in enumerate(t.redis_keys):
                by_slot.setdefault(key_slot(key.encode()), []).append(i)
            for slot, idx in by_slot.items():
                calls = per_node.setdefault(owner(slot).name, (owner(slot), []))[1]
                calls.extend(
                    (ti, idx[a : a + self.script_keys]) for a in range(0, len(idx), self.script_keys)
                )

        def run(node: Any, calls: list[tuple[int, list[int]]]) -> list[Any]:
            pipe = self._client.get_redis_connection(node).pipeline(transaction=False)
            for ti, idx in calls:
                t = touched[ti]
                self._script(
                    keys=[t.redis_keys[i] for i in idx], args=self._script_args(t, idx, read), client=pipe
                )
            return pipe.execute(raise_on_error=False)

        jobs = list(per_node.values())
        try:
            if len(jobs) < 2:
                replies = [run(node, calls) for node, calls in jobs]
            else:
                with ThreadPoolExecutor(len(jobs), thread_name_prefix="stream-state") as pool:
                    replies = list(pool.map(lambda job: run(*job), jobs))
        except RedisError as exc:
            raise self._error(exc, "update") from None
        flat = [r for rs in replies for r in rs]
        if any(isinstance(r, MovedError | AskError) for r in flat):
            self._client.nodes_manager.initialize()
            return self._run_commands(touched, read)
        bad = next((r for r in flat if isinstance(r, Exception)), None)
        if bad is not None:
            raise self._error(bad, "update")  # type: ignore[arg-type]
        if not read:
            return []
        out: list[list[list[bytes]]] = [[[] for _ in t.redis_keys] for t in touched]
        for (_, calls), answers in zip(jobs, replies, strict=True):
            for (ti, idx), answer in zip(calls, answers, strict=True):
                for i, members in zip(idx, answer, strict=True):
                    out[ti][i] = members
        return out

    def _run_commands(self, touched: list[_Touched], read: bool) -> list[list[list[bytes]]]:
        pipe = self._pipeline()
        per_key = 4 if read else 3
        for t in touched:
            ret = t.layout.retention_ms
            for i, key in enumerate(t.redis_keys):
                scores = t.scores[i]
                mapping_args: list[Any] = []
                for s, m in zip(scores.tolist(), t.members[i], strict=True):
                    mapping_args += (s, m)
                pipe.execute_command("ZADD", key, *mapping_args)
                if read:
                    pipe.execute_command("ZRANGEBYSCORE", key, f"({t.read_lo[i]}", t.read_hi[i])
                pipe.execute_command("ZREMRANGEBYSCORE", key, "-inf", f"({int(scores.max()) - ret}")
                pipe.execute_command("PEXPIRE", key, ret)
        replies = self._execute(pipe, "update")
        if not read:
            return []
        out, pos = [], 0
        for t in touched:
            n = len(t.redis_keys)
            out.append([replies[pos + i * per_key + 1] for i in range(n)])
            pos += n * per_key
        return out

    def _execute(self, pipe: Any, what: str) -> list[Any]:
        try:
            return pipe.execute()
        except RedisError as exc:
            raise self._error(exc, what) from None

    def _error(self, exc: RedisError, what: str) -> StreamStateError:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        return StreamStateError(
            f"stream state {what} on Redis at {self._url} failed: {type(exc).__name__}: {detail}"
        )

    def _decode(
        self, layout: EntityLayout, keys: Sequence[tuple[Any, ...]], replies: Sequence[list[bytes]]
    ) -> pl.DataFrame:
        schema = layout.frame_schema
        counts = [len(r) for r in replies]
        total = sum(counts)
        if total == 0:
            return pl.DataFrame(schema=schema)
        names = [*_HEAD, *layout.columns]
        reps = np.repeat(np.arange(len(keys)), counts)
        data: dict[str, pl.Series] = {}
        for j, k in enumerate(layout.entity.keys):
            kvals = pl.Series(k, [kv[j] for kv in keys], dtype=ARCHIVE_EVENT_COLUMNS[k])
            data[k] = kvals.gather(reps)
        # The GC stays off until the decoded rows are freed again (by reference counting): a
        # collection in between would walk every one of them.
        with _no_gc():
            buf = b"".join([_array_header(total), *[m for r in replies for m in r]])
            rows = msgspec.msgpack.decode(buf)
            cols = list(zip(*rows, strict=True))
            del rows
            for name, values in zip(names, cols, strict=True):
                data[name] = pl.Series(
                    name, values, dtype=_MEMBER_DTYPES.get(name) or ARCHIVE_EVENT_COLUMNS[name]
                )
            del cols
        frame = pl.DataFrame(data).with_columns(pl.col("event_ts", "ingest_ts").cast(_TS))
        # One copy per event_id: the earliest arrival (a re-sent event is a second member).
        if frame["event_id"].n_unique() != frame.height:
            frame = frame.sort("ingest_ts", "_partition", "_offset").unique(
                subset="event_id", keep="first", maintain_order=True
            )
        return frame.select(list(schema))
