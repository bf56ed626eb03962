"""Online tiles in Redis: the partial aggregates risk-serve merges to finish every window at request time.

Pure Python (redis-py, msgspec, Polars), no Dagster. The window maths is :mod:`risk_assets.features.tiles`
(hops, tile partials, ``build_tiles``, ``merge_at``); this module only stores tiles and reads them
back, so online and offline merge the very same partials.

Key layout
----------
One Redis hash per (entity, feature group version)::

    {namespace}:{{{entity}:{entity_key}}}:{group}:{version}:tiles
    e.g.  risk:{user:42}:ato_user:3fa2c9d01b7e:tiles

The hash tag and the key escaping are the online store's (:meth:`OnlineStore.key`): every group of
one entity lives in one slot of a Redis Cluster. Fields are ``"{hop_ms}:{tile_start}"`` (ASCII
decimal, ``tile_start`` in epoch ms), one per tile holding at least one group event.

Tile value
----------
A 17-byte little-endian header, then the tile's partial columns as one MessagePack array::

    offset  size  field
    0       8     n_events  (int64) — group events in the tile: write-if-more-events compares it
    8       1     source    (uint8) — 0 stream, 1 batch (the offline sync); batch wins ties
    9       8     max_ts    (int64) — latest event_ts in the tile (head-tile exactness at serving)
    17      …     MessagePack array of the partial columns of the features whose hop is ``hop_ms``,
                  in :func:`tiles.tile_schema` order (ints, floats, strings, null, lists)

Bounded state, idempotent writes
--------------------------------
Tiles are written by one Lua script per entity key (``EVALSHA``, atomic): per field, a tile
replaces the stored one only if it holds more events (``n_events`` strictly greater); on equal
counts a batch tile replaces (the offline store is the system of record: a recomputed day may carry
late labels without more events), a stream tile is skipped (replays are no-ops). The same script
drops, per hop ``h``, every tile older than the group's horizon for that hop: ``tile_start <
newest_tile_start(h) − horizon(h)`` with ``horizon(h) = max(window + offset over the features of
hop h) + h`` — no window finished at or after the newest event reads them — and never writes such a
tile. Every applied write sets the key's expiry to the longest horizon (after that, every window of
the entity is empty anyway). State per entity is therefore at most ``Σ_h horizon(h) / h`` tiles,
usually far fewer (tiles exist only where the entity had events).

Reads
-----
:meth:`TileStore.read` / :meth:`TileStore.read_async`: ``HGETALL`` of every requested (group, entity)
in one pipeline — one round trip, one per node on a Redis Cluster (redis-py's cluster pipeline groups
commands by node). :func:`finish` turns one entity's tiles into the group's values at ``t`` with
``tiles.merge_at`` and says whether the read was exact (``tiles.head_is_exact``: the head tile held no
event at or after ``t``).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import msgspec
import polars as pl
from redis.exceptions import NoScriptError, RedisError

from risk_assets.features import tiles as T
from risk_assets.features.online_store import (
    SOURCE_BATCH,
    SOURCE_NAMES,
    SOURCE_STREAM,
    EntityKey,
    GroupLayout,
    OnlineStore,
    OnlineStoreError,
    _translate,
)
from risk_assets.features.spec import FeatureGroup, Ratio, _ms

__all__ = [
    "TILE_HEADER_SIZE",
    "TileLayout",
    "TileStore",
    "TileWriteResult",
    "decode_tile",
    "encode_tile",
    "finish",
    "tile_layout",
]

KEY_SUFFIX = ":tiles"
_HEADER = struct.Struct("<qBq")
TILE_HEADER_SIZE = _HEADER.size  # 17
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode

# KEYS[1] = the entity's tile hash; ARGV[1] = TTL ms ('0': none); ARGV[2] = number of hops H;
# ARGV[3 .. 2 + 2H] = (hop_ms, horizon_ms) pairs; then (field, value) pairs of the tiles to write.
# Returns the number of tiles applied. Tile starts (~1.8e12) are exact in Lua's doubles.
WRITE_IF_MORE_EVENTS_LUA = """
local ttl = ARGV[1]
local nh = tonumber(ARGV[2])
local horizon = {}
for i = 0, nh - 1 do horizon[ARGV[3 + 2 * i]] = tonumber(ARGV[4 + 2 * i]) end
local first = 3 + 2 * nh
local newest = {}
local stored = redis.call('HKEYS', KEYS[1])
local function note(f)
  local h, s = string.match(f, '^(%d+):(%-?%d+)$')
  if h == nil then return nil, nil end
  s = tonumber(s)
  if newest[h] == nil or s > newest[h] then newest[h] = s end
  return h, s
end
for _, f in ipairs(stored) do note(f) end
for j = first, #ARGV, 2 do note(ARGV[j]) end
local applied = 0
for j = first, #ARGV, 2 do
  local f = ARGV[j]
  local new = ARGV[j + 1]
  local h, s = string.match(f, '^(%d+):(%-?%d+)$')
  s = tonumber(s)
  if horizon[h] ~= nil and s >= newest[h] - horizon[h] then
    local cur = redis.call('HGET', KEYS[1], f)
    local win = true
    if cur then
      local cn = struct.unpack('<i8', cur)
      local nn = struct.unpack('<i8', new)
      if nn ~= cn then win = nn > cn else win = string.byte(new, 9) == 1 end
    end
    if win then
      redis.call('HSET', KEYS[1], f, new)
      applied = applied + 1
    end
  end
end
local dead = {}
for _, f in ipairs(stored) do
  local h, s = string.match(f, '^(%d+):(%-?%d+)$')
  if h == nil or horizon[h] == nil or tonumber(s) < newest[h] - horizon[h] then
    dead[#dead + 1] = f
  end
end
for i = 1, #dead, 1000 do
  redis.call('HDEL', KEYS[1], unpack(dead, i, math.min(i + 999, #dead)))
end
if applied > 0 and ttl ~= '0' then redis.call('PEXPIRE', KEYS[1], ttl) end
return applied
"""
_WRITE_SHA = hashlib.sha1(WRITE_IF_MORE_EVENTS_LUA.encode()).hexdigest()


@dataclass(frozen=True)
class TileLayout:
    """How one feature group version's tiles are stored and merged."""

    group: FeatureGroup
    rows: GroupLayout  # names the key (group, version, entity, key columns); its features are unused
    columns: Mapping[int, tuple[str, ...]]  # hop_ms -> partial columns of that hop, in schema order
    horizon_ms: Mapping[int, int]  # hop_ms -> max(window + offset) + hop over the hop's features
    ttl_ms: int  # the longest horizon: the key's expiry after its last applied write

    @property
    def name(self) -> str:
        return self.group.name

    @property
    def key_columns(self) -> tuple[str, ...]:
        return self.rows.key_columns

    @property
    def max_tiles(self) -> int:
        """Upper bound of tiles per entity (every hop's horizon full)."""
        return sum(hz // h + 1 for h, hz in self.horizon_ms.items())


@lru_cache(maxsize=256)
def tile_layout(group: FeatureGroup) -> TileLayout:
    """The online tile layout of ``group`` (cached per group definition)."""
    columns: dict[int, list[str]] = {}
    horizon: dict[int, int] = {}
    for f in group.features:
        if isinstance(f, Ratio):
            continue
        h = T.hop_ms(f)
        columns.setdefault(h, []).extend(T.partial_columns(group, f))
        horizon[h] = max(horizon.get(h, 0), _ms(f.window) + _ms(f.offset) + h)
    rows = GroupLayout(
        name=group.name,
        version=group.version,
        entity=group.entity.name,
        features=group.feature_names,
        ttl_s=0,
        key_columns=group.entity.keys,
    )
    return TileLayout(
        group=group,
        rows=rows,
        columns={h: tuple(c) for h, c in columns.items()},
        horizon_ms=horizon,
        ttl_ms=max(horizon.values(), default=0),
    )


# --------------------------------------------------------------------------------------------
# encoding


def field_name(hop: int, tile_start: int) -> bytes:
    """The hash field of a tile."""
    return b"%d:%d" % (hop, tile_start)


def encode_tile(layout: TileLayout, row: Mapping[str, Any], source: int) -> tuple[bytes, bytes]:
    """``(field, value)`` of one tile-frame row (a mapping with ``hop_ms``, ``tile_start``,
    ``n_events``, ``max_ts`` and the partial columns)."""
    hop = row[T.HOP_MS]
    cols = layout.columns[hop]
    head = _HEADER.pack(row[T.N_EVENTS], source, row[T.MAX_TS])
    return field_name(hop, row[T.TILE_START]), head + _encode([row[c] for c in cols])


def decode_tile(layout: TileLayout, name: bytes, blob: bytes) -> dict[str, Any]:
    """One stored tile as a tile-frame row mapping (only its hop's partial columns) plus ``source``."""
    hop_s, _, start_s = name.partition(b":")
    hop = int(hop_s)
    cols = layout.columns.get(hop)
    if cols is None or len(blob) < TILE_HEADER_SIZE:
        raise OnlineStoreError(
            f"group {layout.name!r}@{layout.group.version}: stored tile {name!r} does not match the layout"
        )
    n, source, max_ts = _HEADER.unpack_from(blob)
    values = _decode(blob[TILE_HEADER_SIZE:])
    if len(values) != len(cols):
        raise OnlineStoreError(
            f"group {layout.name!r}@{layout.group.version}: tile {name!r} has {len(values)} partials, "
            f"the layout {len(cols)}"
        )
    row = dict(zip(cols, values, strict=True))
    row[T.HOP_MS] = hop
    row[T.TILE_START] = int(start_s)
    row[T.N_EVENTS] = n
    row[T.MAX_TS] = max_ts
    row["source"] = source
    return row


def finish(layout: TileLayout, tiles: Sequence[Mapping[str, Any]], t: int) -> tuple[list[Any], bool]:
    """The group's feature values at ``t`` (epoch ms) from one entity's tiles, in feature order, and
    whether the read was exact (no tile covering ``t`` held an event at or after ``t``)."""
    values = T.merge_at(layout.group, tiles, t)
    return list(values.values()), T.head_is_exact(tiles, t)


# --------------------------------------------------------------------------------------------
# the store


@dataclass
class TileWriteResult:
    """Counts of one tile write."""

    tiles: int = 0
    keys: int = 0
    applied: int = 0
    skipped: int = 0  # fewer events than stored (or equal, stream), or beyond the horizon

    def add(self, other: TileWriteResult) -> TileWriteResult:
        return TileWriteResult(
            self.tiles + other.tiles,
            self.keys + other.keys,
            self.applied + other.applied,
            self.skipped + other.skipped,
        )


@dataclass
class TileStore:
    """Tiles of feature groups in the online store's Redis (same client, namespace, key escaping)."""

    store: OnlineStore
    pipeline_keys: int = 512
    _loaded: bool = field(default=False, repr=False)

    def key(self, layout: TileLayout, entity_key: EntityKey | str | int) -> str:
        """The Redis key of ``layout``'s tile hash for ``entity_key``."""
        return self.store.key(layout.rows, entity_key) + KEY_SUFFIX

    # ---- write --------------------------------------------------------------------------------

    def write(
        self, layout: TileLayout, frame: pl.DataFrame, *, source: int = SOURCE_STREAM
    ) -> TileWriteResult:
        """Write a tile frame (``tiles.tile_schema`` columns, e.g. from ``tiles.build_tiles``) with
        write-if-more-events; the frame must hold each (key, hop, tile_start) once. Raises
        :class:`OnlineStoreError` on failure (re-sending is always safe: the writes are idempotent)."""
        if source not in SOURCE_NAMES:
            raise ValueError(f"source must be one of {sorted(SOURCE_NAMES)}, not {source!r}")
        if frame.height == 0:
            return TileWriteResult()
        group = layout.group
        ids = [*group.entity.keys, T.HOP_MS, T.TILE_START]
        if frame.select(ids).is_duplicated().any():
            raise ValueError(f"group {layout.name!r}: tile frame holds a (key, hop, tile_start) twice")
        redis_keys = self.store.entity_keys(layout.rows, frame) + KEY_SUFFIX
        keyed = frame.with_columns(redis_keys.alias("__key")).sort(["__key", T.HOP_MS, T.TILE_START])
        unknown = set(frame[T.HOP_MS].unique().to_list()) - set(layout.columns)
        if unknown:
            raise ValueError(f"group {layout.name!r}: no feature has hop(s) {sorted(unknown)} ms")
        calls: list[tuple[str, list[bytes]]] = []
        current: str | None = None
        args: list[bytes] = []
        for row in keyed.iter_rows(named=True):
            k = row["__key"]
            if k != current:
                if current is not None:
                    calls.append((current, args))
                current, args = k, []
            args.extend(encode_tile(layout, row, source))
        if current is not None:
            calls.append((current, args))
        prefix: list[Any] = [str(layout.ttl_ms), len(layout.horizon_ms)]
        for h, hz in sorted(layout.horizon_ms.items()):
            prefix += [h, hz]
        result = TileWriteResult(tiles=frame.height, keys=len(calls))
        for i in range(0, len(calls), self.pipeline_keys):
            batch = calls[i : i + self.pipeline_keys]
            outcomes = self._run(prefix, batch)
            applied = sum(int(o) for o in outcomes)
            result.applied += applied
            result.skipped += sum(len(a) // 2 for _, a in batch) - applied
        return result

    def _run(self, prefix: list[Any], batch: list[tuple[str, list[bytes]]]) -> list[Any]:
        client = self.store.client
        if not self._loaded:
            self.store._call(lambda: client.script_load(WRITE_IF_MORE_EVENTS_LUA), "script load")
            self._loaded = True

        def send(calls: list[tuple[str, list[bytes]]]) -> list[Any]:
            pipe = client.pipeline(transaction=False) if not _is_cluster(client) else client.pipeline()
            for k, a in calls:
                pipe.execute_command("EVALSHA", _WRITE_SHA, 1, k, *prefix, *a)
            return pipe.execute(raise_on_error=False)

        outcomes = self.store._call(lambda: send(batch), "tile write")
        redo = [j for j, o in enumerate(outcomes) if isinstance(o, NoScriptError)]
        if redo:  # a restarted or failed-over server lost the script cache
            if _is_cluster(client):
                client.script_load(WRITE_IF_MORE_EVENTS_LUA, target_nodes=client.ALL_NODES)
            else:
                client.script_load(WRITE_IF_MORE_EVENTS_LUA)
            again = self.store._call(lambda: send([batch[j] for j in redo]), "tile write")
            for j, o in zip(redo, again, strict=True):
                outcomes[j] = o
        bad = next((o for o in outcomes if isinstance(o, Exception)), None)
        if bad is not None:
            if isinstance(bad, RedisError):
                raise _translate(bad, self.store.url, "tile write")
            raise OnlineStoreError(f"tile write to {self.store.url} failed: {bad}")
        return outcomes

    # ---- read ---------------------------------------------------------------------------------

    def read(
        self, requests: Sequence[tuple[TileLayout, EntityKey | str | int]]
    ) -> list[list[dict[str, Any]]]:
        """The stored tiles of every (group, entity) requested, in one round trip (one per node on a
        cluster); an entity without tiles gives ``[]``."""
        if not requests:
            return []
        keys = [self.key(layout, ek) for layout, ek in requests]
        client = self.store.client

        def fetch() -> list[Any]:
            pipe = client.pipeline(transaction=False) if not _is_cluster(client) else client.pipeline()
            for k in keys:
                pipe.hgetall(k)
            return pipe.execute()

        raw = self.store._call(fetch, "tile read")
        return [_decode_all(layout, h) for (layout, _), h in zip(requests, raw, strict=True)]

    async def read_async(
        self, requests: Sequence[tuple[TileLayout, EntityKey | str | int]]
    ) -> list[list[dict[str, Any]]]:
        """:meth:`read` on an event loop (``redis.asyncio``; see ``OnlineStore.read_async``)."""
        if not requests:
            return []
        keys = [self.key(layout, ek) for layout, ek in requests]
        raw = await self.store.hgetall_async(keys)
        return [_decode_all(layout, h) for (layout, _), h in zip(requests, raw, strict=True)]

    def state_bytes(self, layout: TileLayout, entity_keys: Sequence[EntityKey | str | int]) -> list[int]:
        """Redis ``MEMORY USAGE`` of each entity's tile hash (0 when absent)."""
        client = self.store.client
        out = []
        for ek in entity_keys:
            n = self.store._call(lambda ek=ek: client.memory_usage(self.key(layout, ek), samples=0), "memory")
            out.append(int(n or 0))
        return out


def write_stream_tiles(
    store: OnlineStore, groups: Sequence[FeatureGroup], tiles: Mapping[str, pl.DataFrame]
) -> TileWriteResult:
    """Write the stream path's tiles (``stream.process_events(tiles=…)``) as stream tiles."""
    ts = TileStore(store)
    total = TileWriteResult()
    for g in groups:
        frame = tiles.get(g.name)
        if frame is not None and frame.height:
            total = total.add(ts.write(tile_layout(g), frame, source=SOURCE_STREAM))
    return total


def write_batch_tiles(store: OnlineStore, group: FeatureGroup, tiles: pl.DataFrame) -> TileWriteResult:
    """Write tiles the offline side built (the sync) as batch tiles (they win ties)."""
    return TileStore(store).write(tile_layout(group), tiles, source=SOURCE_BATCH)


def _decode_all(layout: TileLayout, h: Mapping[bytes, bytes] | None) -> list[dict[str, Any]]:
    if not h:
        return []
    return [decode_tile(layout, k, v) for k, v in h.items()]


def _is_cluster(client: Any) -> bool:
    return hasattr(client, "nodes_manager")


__all__ += [
    "KEY_SUFFIX",
    "SOURCE_BATCH",
    "SOURCE_STREAM",
    "WRITE_IF_MORE_EVENTS_LUA",
    "field_name",
    "write_batch_tiles",
    "write_stream_tiles",
]
