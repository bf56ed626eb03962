"""Online feature store on Redis: packed feature rows, write-if-newer, one-round-trip reads.

Used by stream ingestion, by the offline→online sync and by the scoring service. Pure Python (no
Dagster); a feature group is described by a plain :class:`GroupLayout`, never by the spec module.

Key layout
----------
One Redis string per (feature group version, entity key)::

    {namespace}:{{{entity}:{entity_key}}}:{group}:{version}
    e.g.  risk:{user:42}:user_txn_1h:3fa2c9d01b7e
          risk:{user_device:42|dev%7Bx%7D}:ud_stats:0c1d2e3f4a5b     (composite key)

* ``namespace`` — given to the store (``"risk"``; a trailing ``:`` is accepted, so a prefix such as
  ``"test:ab12:"`` works as is). It must not contain braces.
* ``{entity:entity_key}`` — the **hash tag**: Redis Cluster hashes only the text between the first
  ``{`` and the next ``}``, so every feature group of one entity lands in the same slot (and so on
  the same node). The entity key is the string form of each key column value (``str(int)`` for
  integers), percent-escaped (``%`` → ``%25``, ``{`` → ``%7B``, ``}`` → ``%7D``, ``|`` → ``%7C``) and,
  for composite keys, joined with ``|``. The escaping is injective, so distinct keys never collide,
  and the tag can never be cut short by a brace in the data. ``42`` and ``"42"`` are the same key.
* ``group`` and ``version`` — the feature group name (``[A-Za-z0-9_.-]``) and its 12-hex-char
  version: a new version of a group never reads rows packed for another feature list.

Value format (format version 2)
-------------------------------
A little-endian binary blob: a 28-byte header then the feature values in the layout's order::

    offset  size  field
    0       1     format version (uint8, = 2)
    1       8     event_ts_ms    (int64, ms since the epoch, UTC) — when the features were true
    9       8     created_ts_ms  (int64) — when this row was computed; breaks event_ts ties
    17      8     written_ts_ms  (int64) — when the writer sent it (informational, never compared)
    25      2     n_features     (uint16) — checked against the layout on read
    27      1     source         (uint8) — who computed the row: 0 stream, 1 batch; breaks ties
    28      8·n   values         (float64 each; NaN means null)

Format 1 (the same without ``source``, 27-byte header) is still read, as source 0, so rows written
before the upgrade stay readable until they are overwritten or expire; writers write format 2 only.

float64 rather than float32 so online values equal offline values bit for bit (the consistency
audit compares them). 50 features are 428 bytes; a read of 100 entities is one ``MGET`` of ~43 kB.
Values and timestamps live in one string, so one ``GET``/``MGET`` returns everything a scorer
needs (docs/design.md §4b: packed values keep many-entity reads near one round trip). Null and NaN are
not distinguished: both come back as ``None`` (in frames: null).

Write-if-newer
--------------
Rows are written by one Lua script (``EVALSHA``; loaded with ``SCRIPT LOAD`` when the store opens
and again whenever the server answers ``NOSCRIPT``) that, per key, compares the stored
``(event_ts, created_ts, source)`` with the new one lexicographically and writes only if the new
triple is strictly greater: a newer event wins; an equal event with a newer ``created_ts`` wins (a
late correction); on equal times a batch row (source 1, the offline store) wins over a stream row
(source 0) — the batch engine saw every event, the stream row may not have; an older or identical
row is skipped. One more rule for batch rows: a batch row with the same triple as the stored row
but different values replaces it (the offline store is the system of record for batch values: a
day recomputed after late events can change a value without changing its row's times). A stream
row with the same triple is skipped, so stream replays stay no-ops. A script runs atomically, so
concurrent writers cannot interleave between the compare and the set, whatever their order. Every
applied write sets the group's TTL (``SET … PX ttl``: the expiry counts from the write; skipped rows
do not refresh it; ``ttl_s = 0`` means no expiry). Replays are idempotent: writing the same rows
again changes nothing and reports them as skipped. Without a ``created_ts`` column,
``created_ts = event_ts``.

Before anything is sent, a batch is reduced to its newest row per entity (same ordering), so the
server never sees rows the batch itself supersedes. Rows are then sent as multi-key script calls
(``script_keys`` keys each, ~0.3 ms of Redis time so readers interleave between calls) in
non-transactional pipelines (``pipeline_rows`` rows each), ``write_concurrency`` pipelines in
flight. On a cluster the calls are grouped by hash slot (multi-key scripts must stay in one slot) and
the calls of one primary form that primary's pipelines, sent straight to the node and alternating
between the primaries so they work in parallel (``write_concurrency`` in flight per primary). The
cluster mode is chosen by the URL (``redis+cluster://``, ``redis_client.py``).

Failures
--------
Connections use short socket timeouts and redis-py's ``Retry`` with exponential backoff (a few
attempts). When Redis cannot be reached, :class:`OnlineStoreUnavailable` is raised with a one-line
message naming the URL without its password. Nothing is lost silently: a failed write raises, and
the exception's ``progress`` (a :class:`WriteResult`) says exactly how many rows were confirmed
applied or skipped, how many are *in doubt* (their script call was sent but its reply was an error
or never arrived — each script call is atomic unless Redis itself fails mid-script, e.g. OOM) and
how many were never sent. Because writes are idempotent, re-sending the whole batch is always safe.
redis-py may itself retry a pipeline after a dropped connection; rows a lost attempt applied are
then reported as skipped by the retry (the stored state is right either way).

Epoch marker
------------
``{namespace}:{epoch}:online`` holds a token while the store's content is complete
(``store_epoch.py``): the offline → online sync commits it after a full resync and compares it
with the epoch it recorded before every incremental tick; risk-serve reports ``degraded`` and is
not ready while it is missing. A Redis restarted without persistence loses it with everything else.

Thread safety: one :class:`OnlineStore` can be shared by threads (redis-py pools connections).
The ``*_async`` reads run on the event loop that first uses them, so an asyncio server never blocks
its loop on a Redis round trip: ``hgetall_async`` through the lean ``redis_pipe.AsyncPipe`` on a
single plain server, otherwise (and ``read_async``/``mget_async``) through a ``redis.asyncio``
client.
"""

from __future__ import annotations

import hashlib
import re
import struct
import threading
import urllib.parse
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import cached_property
from numbers import Integral
from types import TracebackType
from typing import Any, Self

import numpy as np
import polars as pl
import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.crc import key_slot as _redis_key_slot
from redis.exceptions import AskError, MovedError, NoScriptError, RedisError, ResponseError
from redis.retry import Retry

from risk_assets.features.redis_client import connect, connect_async
from risk_assets.features.redis_pipe import AsyncPipe
from risk_assets.features.redis_pipe import supports as supports_pipe
from risk_assets.features.store_epoch import EpochMarker, epoch_key

__all__ = [
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "SOURCE_BATCH",
    "SOURCE_NAMES",
    "SOURCE_STREAM",
    "FeatureRow",
    "GroupLayout",
    "OnlineStore",
    "OnlineStoreError",
    "OnlineStoreUnavailable",
    "WriteResult",
    "encode_entity_key",
    "key_slot",
    "redact_url",
]

FORMAT_VERSION = 2
ASYNC_MIN_TIMEOUT_S = 0.2  # floor of the asyncio client's read timeout (see OnlineStore.from_url)
_HEADER = struct.Struct("<BqqqHB")
HEADER_SIZE = _HEADER.size  # 28
_HEADER_V1 = struct.Struct("<BqqqH")  # format 1: no source byte (read as SOURCE_STREAM)
# Who computed a row; the rank breaks (event_ts, created_ts) ties: batch corrections win.
SOURCE_STREAM = 0
SOURCE_BATCH = 1
SOURCE_NAMES = {SOURCE_STREAM: "stream", SOURCE_BATCH: "batch"}
EntityKey = tuple[str | int, ...]
_Call = tuple[list[str], list[bytes]]  # keys and packed rows of one script call

ONLINE_EPOCH = "online"
_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")
_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_.:\-]+$")
_VERSION_RE = re.compile(r"^[0-9a-f]{12}$")
_ESCAPES = (("%", "%25"), ("{", "%7B"), ("}", "%7D"), ("|", "%7C"))
_ESCAPE_TABLE = str.maketrans({a: b for a, b in _ESCAPES})
_KEY_SEPARATOR = "|"

# KEYS = the rows' keys; ARGV[1] = TTL in ms as a string ('0': none; kept a string so SET does
# not format a number per key); ARGV[1 + i] = packed row for KEYS[i].
# Returns the number of rows applied. Timestamps are read with Redis' bundled `struct` library;
# int64 milliseconds are exact in Lua's doubles up to 2^53 (year ~287,000). Order: (event_ts,
# created_ts, source) strictly greater wins; a stored format-1 row has source 0; a batch row (source
# 1) with an equal triple replaces the stored row when the values (byte 29 on) differ.
WRITE_IF_NEWER_LUA = """
local ttl = ARGV[1]
local has_ttl = ttl ~= '0'
local applied = 0
for i = 1, #KEYS do
  local new = ARGV[i + 1]
  local cur = redis.call('GET', KEYS[i])
  local win = true
  if cur and #cur >= 17 then
    local ce, cc = struct.unpack('<i8i8', cur, 2)
    local ne, nc = struct.unpack('<i8i8', new, 2)
    if ne ~= ce then
      win = ne > ce
    elseif nc ~= cc then
      win = nc > cc
    else
      local cs = 0
      if string.byte(cur, 1) >= 2 and #cur >= 28 then cs = string.byte(cur, 28) end
      local ns = string.byte(new, 28)
      if ns ~= cs then
        win = ns > cs
      else
        win = ns == 1 and string.sub(new, 29) ~= string.sub(cur, 29)
      end
    end
  end
  if win then
    if has_ttl then
      redis.call('SET', KEYS[i], new, 'PX', ttl)
    else
      redis.call('SET', KEYS[i], new)
    end
    applied = applied + 1
  end
end
return applied
"""
_WRITE_SHA = hashlib.sha1(WRITE_IF_NEWER_LUA.encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# errors


class OnlineStoreError(RuntimeError):
    """An online-store operation failed. ``str(err)`` is one line and never contains a password.

    For writes, ``progress`` tells what was confirmed before the failure (see module docstring).
    """

    def __init__(self, message: str, progress: WriteResult | None = None) -> None:
        super().__init__(" ".join(str(message).split()))
        self.progress = progress


class OnlineStoreUnavailable(OnlineStoreError):
    """Redis could not be reached (after the bounded retry policy)."""


# --------------------------------------------------------------------------------------------
# layout, rows, results


@dataclass(frozen=True)
class GroupLayout:
    """How one feature group version is stored: what the writer and the reader must agree on.

    ``key_columns`` names the entity's key column(s) in frames; empty means one column named like
    the entity. ``ttl_s`` is the Redis expiry of a row after its last applied write (0: none).
    """

    name: str
    version: str
    entity: str
    features: tuple[str, ...]
    ttl_s: int
    key_columns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))
        object.__setattr__(self, "key_columns", tuple(self.key_columns) or (self.entity,))
        for what, value in (("group name", self.name), ("entity", self.entity)):
            if not _NAME_RE.match(value):
                raise ValueError(f"{what} {value!r} must match [A-Za-z0-9_.-]+")
        if not _VERSION_RE.match(self.version):
            raise ValueError(
                f"version {self.version!r} of group {self.name!r} must be 12 lowercase hex chars"
            )
        if not self.features or len(set(self.features)) != len(self.features):
            raise ValueError(f"group {self.name!r}: features must be non-empty and unique")
        if len(self.features) > 0xFFFF:
            raise ValueError(f"group {self.name!r}: at most 65535 features")
        reserved = {"event_ts", "created_ts", "written_ts", *self.key_columns}
        clash = reserved.intersection(self.features)
        if clash:
            raise ValueError(f"group {self.name!r}: feature names clash with key/timestamp columns {clash}")
        if len(set(self.key_columns)) != len(self.key_columns):
            raise ValueError(f"group {self.name!r}: key columns must be unique")
        if not isinstance(self.ttl_s, Integral) or self.ttl_s < 0:
            raise ValueError(f"group {self.name!r}: ttl_s must be an integer >= 0")

    @cached_property
    def row_size(self) -> int:
        """Bytes of one packed row."""
        return HEADER_SIZE + 8 * len(self.features)

    @cached_property
    def row_dtype(self) -> np.dtype:
        """NumPy structured dtype of one packed row (packed, little-endian)."""
        return np.dtype(
            [
                ("format", "u1"),
                ("event_ts", "<i8"),
                ("created_ts", "<i8"),
                ("written_ts", "<i8"),
                ("n", "<u2"),
                ("source", "u1"),
                ("values", "<f8", (len(self.features),)),
            ]
        )

    @cached_property
    def _tag_head(self) -> str:
        return "{" + self.entity + ":"

    @cached_property
    def _key_tail(self) -> str:
        return f"}}:{self.name}:{self.version}"

    @cached_property
    def _values_struct(self) -> struct.Struct:
        return struct.Struct(f"<{len(self.features)}d")


@dataclass(frozen=True, slots=True)
class FeatureRow:
    """One feature group row read back.

    ``values`` maps feature name → float (``None`` for null/NaN); ``vector`` is the same values in
    the layout's feature order as floats with NaN for null — what a model wants, and free (the dict
    is built on each access of ``values``). ``source`` says who computed it (``SOURCE_STREAM`` or
    ``SOURCE_BATCH``).
    """

    group: str
    version: str
    entity_key: EntityKey
    features: tuple[str, ...]
    vector: tuple[float, ...]
    event_ts_ms: int
    created_ts_ms: int
    written_ts_ms: int
    source: int = SOURCE_STREAM

    @property
    def values(self) -> dict[str, float | None]:
        """Feature name → value, ``None`` for null (NaN)."""
        vals = self.vector
        total = sum(vals)  # NaN (or inf - inf) poisons the sum: then check value by value
        if total == total:
            return dict(zip(self.features, vals))  # noqa: B905 - same length by construction
        return dict(zip(self.features, [None if v != v else v for v in vals]))  # noqa: B905

    @property
    def event_ts(self) -> datetime:
        """When the feature values were true (UTC)."""
        return datetime.fromtimestamp(self.event_ts_ms / 1000, UTC)

    @property
    def created_ts(self) -> datetime:
        """When the row was computed (UTC); breaks ties between equal event times."""
        return datetime.fromtimestamp(self.created_ts_ms / 1000, UTC)

    @property
    def written_ts(self) -> datetime:
        """When the applied write was sent (UTC); informational."""
        return datetime.fromtimestamp(self.written_ts_ms / 1000, UTC)


@dataclass(frozen=True)
class WriteResult:
    """Row counts of one :meth:`OnlineStore.write` call.

    ``rows`` = ``superseded`` (dropped in the batch: an entity had a newer row in it) + ``applied``
    (newer than what Redis held) + ``skipped`` (not newer: Redis kept its row) + ``in_doubt`` +
    ``not_sent``. The last two are non-zero only on the ``progress`` of a raised error.
    """

    rows: int
    superseded: int = 0
    applied: int = 0
    skipped: int = 0
    in_doubt: int = 0
    not_sent: int = 0


# --------------------------------------------------------------------------------------------
# keys


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (safe for messages and logs)."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.password is None:
            netloc = parts.netloc
        else:
            user = parts.username or ""
            host = parts.hostname or ""
            if ":" in host:
                host = f"[{host}]"
            netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        query = [(k, "***" if k.lower() == "password" else v) for k, v in query]
        return urllib.parse.urlunsplit(
            (parts.scheme, netloc, parts.path, urllib.parse.urlencode(query), parts.fragment)
        )
    except ValueError:
        # e.g. a cluster URL with several seeds (``h1:1,h2:2`` is no valid port): redact by hand.
        scheme, sep, rest = url.partition("://")
        head = re.split(r"[/?#]", rest, maxsplit=1)[0]
        auth, at, hosts = head.rpartition("@")
        if not sep or not hosts:
            return "<unparseable redis url>"
        user = auth.split(":", 1)[0] if at else ""
        return f"{scheme}://{user + ':***@' if at else ''}{hosts}{'/…' if rest[len(head) :] else ''}"


def _escape(part: str | int) -> str:
    kind = type(part)
    if kind is int:
        return str(part)
    if kind is str:
        return part.translate(_ESCAPE_TABLE)  # type: ignore[union-attr]
    if isinstance(part, bool) or not isinstance(part, str | Integral):
        raise TypeError(f"entity key parts must be str or int, got {type(part).__name__}: {part!r}")
    return str(int(part)) if isinstance(part, Integral) else part.translate(_ESCAPE_TABLE)


def encode_entity_key(entity_key: EntityKey | str | int) -> str:
    """The escaped, ``|``-joined form of an entity key as it appears inside the hash tag."""
    parts = entity_key if isinstance(entity_key, tuple) else (entity_key,)
    return _KEY_SEPARATOR.join(_escape(p) for p in parts)


def key_slot(key: str | bytes) -> int:
    """The Redis Cluster slot of ``key``: CRC16/XMODEM of its hash tag mod 16384 (``CLUSTER KEYSLOT``)."""
    return _redis_key_slot(key.encode() if isinstance(key, str) else key)


def _escape_expr(expr: pl.Expr) -> pl.Expr:
    out = expr.cast(pl.String)
    for raw, escaped in _ESCAPES:
        out = out.str.replace_all(raw, escaped, literal=True)
    return out


def _check_key_dtype(layout: GroupLayout, name: str, dtype: pl.DataType) -> None:
    if not (dtype.is_integer() or dtype in (pl.String, pl.Categorical) or isinstance(dtype, pl.Enum)):
        raise TypeError(
            f"group {layout.name!r}: key column {name!r} must be an integer or string column, not {dtype}"
        )


def _to_epoch_ms(frame: pl.DataFrame, column: str, layout: GroupLayout) -> pl.Expr:
    dtype = frame.schema[column]
    if not isinstance(dtype, pl.Datetime):
        raise TypeError(f"group {layout.name!r}: {column!r} must be a Datetime column (UTC), not {dtype}")
    # Naive datetimes are taken as UTC (the project's convention); aware ones are converted.
    return pl.col(column).dt.epoch("ms")


# --------------------------------------------------------------------------------------------
# the store


class OnlineStore:
    """Feature rows in Redis (standalone or Cluster); see the module docstring for the format.

    Build with :meth:`from_url`. Use as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        client: redis.Redis | RedisCluster,
        namespace: str = "risk",
        *,
        url: str = "redis://?",
        script_keys: int = 128,
        pipeline_rows: int = 4096,
        write_concurrency: int = 2,
    ) -> None:
        if not _NAMESPACE_RE.match(namespace):
            raise ValueError(f"namespace {namespace!r} must match [A-Za-z0-9_.:-]+ (no braces)")
        if script_keys < 1 or pipeline_rows < 1:
            raise ValueError("script_keys and pipeline_rows must be >= 1")
        self._client = client
        self._cluster = isinstance(client, RedisCluster)
        self._url = redact_url(url)
        self.namespace = namespace
        self._prefix = namespace if namespace.endswith(":") else namespace + ":"
        self.script_keys = script_keys
        self.pipeline_rows = pipeline_rows
        self.write_concurrency = max(1, write_concurrency)
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._epoch = EpochMarker(client, epoch_key(self._prefix, ONLINE_EPOCH))
        self._async_connect: tuple[str, bool, dict[str, Any]] | None = None
        self._aclient: Any = None
        self._apipe: AsyncPipe | None = None
        self._read_timeout_s = 1.0

    # ---- construction -----------------------------------------------------------------------

    @classmethod
    def from_url(
        cls,
        url: str,
        namespace: str = "risk",
        *,
        cluster: bool = False,
        connect_timeout_s: float = 1.0,
        socket_timeout_s: float = 5.0,
        retries: int = 3,
        check: bool = True,
        script_keys: int = 128,
        pipeline_rows: int = 4096,
        write_concurrency: int = 2,
    ) -> OnlineStore:
        """Open a store on ``url``: ``redis://``, ``rediss://`` or ``unix://`` for one server,
        ``redis+cluster://host:port[,host:port…]`` for Redis Cluster (``redis_client.py``;
        ``cluster=True`` forces Cluster for a ``redis://`` seed URL).

        Each operation is tried ``retries + 1`` times with exponential backoff (25 ms doubling,
        capped at 500 ms) on connection errors and timeouts; a blocked server therefore surfaces
        after at most about ``(retries + 1) * (connect_timeout_s + socket_timeout_s) + 1 s``, a
        refused connection after well under a second. With ``check`` the server is pinged and the
        write script loaded now, so an unreachable URL fails here rather than at first use.
        """
        retry = Retry(ExponentialBackoff(cap=0.5, base=0.025), retries)
        options: dict[str, Any] = {
            "socket_connect_timeout": connect_timeout_s,
            "socket_timeout": socket_timeout_s,
            "retry": retry,
            "health_check_interval": 30,
        }
        safe = redact_url(url)
        try:
            client = connect(url, cluster=cluster, **options)
        except RedisError as exc:
            raise _translate(exc, safe, "connect") from None
        except ValueError as exc:
            raise OnlineStoreError(f"invalid Redis URL {safe}: {exc}") from None
        store = cls(
            client,
            namespace,
            url=url,
            script_keys=script_keys,
            pipeline_rows=pipeline_rows,
            write_concurrency=write_concurrency,
        )
        async_options = {k: v for k, v in options.items() if k != "retry"}
        # On an event loop the read timeout also runs while the loop is busy with other requests:
        # a 50 ms budget would open the breaker on loop lag under a burst, not on a slow Redis.
        async_options["socket_timeout"] = max(socket_timeout_s, ASYNC_MIN_TIMEOUT_S)
        store._async_connect = (url, cluster, async_options)
        store._read_timeout_s = socket_timeout_s
        if check:
            try:
                store.ping()
                store._load_script()
            except BaseException:
                store.close()
                raise
        return store

    @property
    def url(self) -> str:
        """The server URL without password."""
        return self._url

    @property
    def client(self) -> redis.Redis | RedisCluster:
        """The underlying redis-py client (for inspection and tests)."""
        return self._client

    def ping(self) -> None:
        """Raise :class:`OnlineStoreUnavailable` unless the server answers."""
        self._call(self._client.ping, "ping")

    # ---- epoch marker (store_epoch.py) --------------------------------------------------------

    @property
    def epoch_key(self) -> str:
        """The Redis key of the store's epoch marker (on a cluster the name the per-primary keys are
        derived from: see :meth:`epoch_keys`)."""
        return self._epoch.key

    def epoch_keys(self) -> list[str]:
        """The marker keys actually used: ``[epoch_key]`` on one server, one per primary on a cluster."""
        return self._call(self._epoch.keys, "epoch keys")

    def epoch(self) -> str | None:
        """The committed epoch token; ``None`` when the marker is missing (emptied or never synced)."""
        return self._call(self._epoch.read, "epoch read")

    def begin_epoch(self) -> str:
        """Start (or join) a full rewrite of the store; pass the token to :meth:`commit_epoch`."""
        return self._call(self._epoch.begin, "epoch begin")

    def commit_epoch(self, token: str) -> bool:
        """Mark the store complete under ``token``; ``False`` if Redis lost data since the begin."""
        return self._call(lambda: self._epoch.commit(token), "epoch commit")

    def mark_complete(self) -> str:
        """Declare the present content complete (a new deployment whose rows were written by other
        means, tests). Returns the new token."""
        return self._call(self._epoch.declare, "epoch declare")

    def close(self) -> None:
        """Stop the writer threads and release the client's connections."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        kind = "cluster" if self._cluster else "standalone"
        return f"OnlineStore({self._url}, namespace={self.namespace!r}, {kind})"

    # ---- keys -------------------------------------------------------------------------------

    def key(self, layout: GroupLayout, entity_key: EntityKey | str | int) -> str:
        """The Redis key of ``layout``'s row for ``entity_key`` (a tuple for composite keys)."""
        parts = entity_key if type(entity_key) is tuple else (entity_key,)
        if len(parts) != len(layout.key_columns):
            raise ValueError(
                f"group {layout.name!r} has key columns {layout.key_columns}, got entity key {entity_key!r}"
            )
        encoded = _escape(parts[0]) if len(parts) == 1 else _KEY_SEPARATOR.join(map(_escape, parts))
        return self._prefix + layout._tag_head + encoded + layout._key_tail

    def _key_frame_expr(self, layout: GroupLayout) -> pl.Expr:
        tag = pl.concat_str([_escape_expr(pl.col(c)) for c in layout.key_columns], separator=_KEY_SEPARATOR)
        return pl.concat_str(
            [pl.lit(f"{self._prefix}{{{layout.entity}:"), tag, pl.lit(f"}}:{layout.name}:{layout.version}")]
        )

    def entity_keys(self, layout: GroupLayout, frame: pl.DataFrame) -> pl.Series:
        """The Redis keys (:meth:`key`) of every row of ``frame`` (its key columns), vectorized."""
        return self._keys_of(layout, frame)

    def _keys_of(self, layout: GroupLayout, frame: pl.DataFrame) -> pl.Series:
        missing = [c for c in layout.key_columns if c not in frame.columns]
        if missing:
            raise ValueError(f"group {layout.name!r}: frame lacks key column(s) {missing}")
        for c in layout.key_columns:
            _check_key_dtype(layout, c, frame.schema[c])
            if frame[c].null_count():
                raise ValueError(f"group {layout.name!r}: key column {c!r} has nulls")
        return frame.select(self._key_frame_expr(layout).alias("key")).to_series()

    # ---- write ------------------------------------------------------------------------------

    def write(
        self,
        layout: GroupLayout,
        data: pl.DataFrame | Sequence[Mapping[str, Any]],
        *,
        written_at: datetime | None = None,
        source: int = SOURCE_STREAM,
    ) -> WriteResult:
        """Write rows of one feature group if newer than what Redis holds; return the counts.

        ``data`` has the key column(s), ``event_ts`` (Datetime, UTC; naive taken as UTC), an
        optional ``created_ts`` (default: ``event_ts``) and every feature column (numeric; null or
        NaN for missing); other columns are ignored. A list of row mappings is accepted too.
        ``source`` is who computed the rows: ``SOURCE_STREAM`` (default) or ``SOURCE_BATCH`` (the
        offline store; wins ties, see the module docstring).
        Raises :class:`OnlineStoreError` (or :class:`OnlineStoreUnavailable`) with ``progress`` on
        failure; see the module docstring.
        """
        if source not in SOURCE_NAMES:
            raise ValueError(f"source must be one of {sorted(SOURCE_NAMES)}, not {source!r}")
        frame = data if isinstance(data, pl.DataFrame) else pl.DataFrame(list(data), infer_schema_length=None)
        n_in = frame.height
        if n_in == 0:
            return WriteResult(rows=0)
        keys, buf = self._pack(layout, frame, written_at, source)
        result = WriteResult(rows=n_in, superseded=n_in - len(keys))
        return self._send(layout, keys, buf, result)

    def _pack(
        self, layout: GroupLayout, frame: pl.DataFrame, written_at: datetime | None, source: int
    ) -> tuple[list[str], bytes]:
        """Keys and the packed rows (one buffer, ``layout.row_size`` bytes per key), newest per entity."""
        missing = [c for c in ("event_ts", *layout.features) if c not in frame.columns]
        if missing:
            raise ValueError(f"group {layout.name!r}: frame lacks column(s) {missing}")
        for f in layout.features:
            dtype = frame.schema[f]
            if not (dtype.is_numeric() or dtype == pl.Null or dtype == pl.Boolean):
                raise TypeError(f"group {layout.name!r}: feature {f!r} must be numeric, not {dtype}")
        has_created = "created_ts" in frame.columns
        event = _to_epoch_ms(frame, "event_ts", layout)
        created = _to_epoch_ms(frame, "created_ts", layout) if has_created else event
        key_series = self._keys_of(layout, frame)
        work = frame.select(
            key_series,
            event.alias("__e"),
            created.alias("__c"),
            *[pl.col(f).cast(pl.Float64) for f in layout.features],
        )
        if work["__e"].null_count() or work["__c"].null_count():
            raise ValueError(f"group {layout.name!r}: event_ts/created_ts must not be null")
        if work["key"].n_unique() != work.height:
            # Newest row per entity (by event_ts, then created_ts): the batch never supersedes itself.
            work = work.sort(["__e", "__c"]).unique(subset="key", keep="last", maintain_order=True)
        rows = np.empty(work.height, dtype=layout.row_dtype)
        rows["format"] = FORMAT_VERSION
        rows["event_ts"] = work["__e"].to_numpy()
        rows["created_ts"] = work["__c"].to_numpy()
        stamp = written_at if written_at is not None else datetime.now(UTC)
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=UTC)
        rows["written_ts"] = int(stamp.timestamp() * 1000)
        rows["n"] = len(layout.features)
        rows["source"] = source
        rows["values"] = work.select(layout.features).to_numpy(order="c")  # nulls → NaN
        return work["key"].to_list(), rows.tobytes()

    def _pipelines(self, keys: list[str], buf: bytes, size: int) -> Iterator[tuple[Any, list[_Call]]]:
        """Rows as ``(node, pipeline)``: pipelines of ~``pipeline_rows`` rows of multi-key script
        calls (``script_keys`` keys each). Standalone: node ``None``. Cluster: every call stays in one
        hash slot (a multi-key script must) and every pipeline holds the calls of ONE primary (it is
        sent straight to that node: no per-command routing); the nodes' pipelines alternate, so
        the primaries work in parallel."""
        step = self.script_keys
        if not self._cluster:
            calls = (
                (
                    keys[i : i + step],
                    [buf[o : o + size] for o in range(i * size, min(i + step, len(keys)) * size, size)],
                )
                for i in range(0, len(keys), step)
            )
            for batch in self._batches(calls):
                yield None, batch
            return
        by_slot: dict[int, list[int]] = {}
        for i, k in enumerate(keys):
            by_slot.setdefault(key_slot(k), []).append(i)
        by_node: dict[str, tuple[Any, list[list[int]]]] = {}
        slot_owner = self._client.nodes_manager.get_node_from_slot
        for slot, idx in by_slot.items():
            node = slot_owner(slot)
            groups = by_node.setdefault(node.name, (node, []))[1]
            groups.extend(idx[j : j + step] for j in range(0, len(idx), step))
        streams = [
            (
                node,
                self._batches(
                    ([keys[i] for i in g], [buf[i * size : (i + 1) * size] for i in g]) for g in gs
                ),
            )
            for node, gs in by_node.values()
        ]
        while streams:  # round robin over the primaries
            alive = []
            for node, it in streams:
                batch = next(it, None)
                if batch is not None:
                    yield node, batch
                    alive.append((node, it))
            streams = alive

    def _batches(self, calls: Iterator[_Call]) -> Iterator[list[_Call]]:
        batch: list[_Call] = []
        rows = 0
        for call in calls:
            if batch and rows + len(call[0]) > self.pipeline_rows:
                yield batch
                batch, rows = [], 0
            batch.append(call)
            rows += len(call[0])
        if batch:
            yield batch

    def _send(self, layout: GroupLayout, keys: list[str], buf: bytes, result: WriteResult) -> WriteResult:
        """Run the pipelines, up to ``write_concurrency`` in flight; count, or raise with progress."""
        ttl_ms = int(layout.ttl_s) * 1000
        applied = skipped = in_doubt = 0
        errors: list[BaseException] = []
        in_flight: deque[tuple[Future[list[Any]], list[_Call]]] = deque()

        def settle(fut: Future[list[Any]], batch: list[_Call]) -> None:
            nonlocal applied, skipped, in_doubt
            try:
                outcomes = fut.result()
            except RedisError as exc:
                errors.append(exc)
                in_doubt += sum(len(ks) for ks, _ in batch)
                return
            for (ks, _), out in zip(batch, outcomes, strict=True):
                if isinstance(out, Exception):
                    errors.append(out)
                    in_doubt += len(ks)
                else:
                    applied += int(out)
                    skipped += len(ks) - int(out)

        executor = self._writer_pool()
        limit = self._concurrency()
        for node, batch in self._pipelines(keys, buf, layout.row_size):
            if errors:
                break
            if executor is None:
                fut: Future[list[Any]] = Future()
                try:
                    fut.set_result(self._run_script_calls(ttl_ms, batch, node))
                except RedisError as exc:
                    fut.set_exception(exc)
            else:
                while len(in_flight) >= limit:
                    settle(*in_flight.popleft())
                fut = executor.submit(self._run_script_calls, ttl_ms, batch, node)
            in_flight.append((fut, batch))
            if executor is None:
                settle(*in_flight.popleft())
        while in_flight:
            settle(*in_flight.popleft())
        if not errors:
            return replace(result, applied=applied, skipped=skipped)
        progress = replace(
            result,
            applied=applied,
            skipped=skipped,
            in_doubt=in_doubt,
            not_sent=len(keys) - applied - skipped - in_doubt,
        )
        what = f"write of group {layout.name!r} ({in_doubt} row(s) in doubt, {progress.not_sent} not sent)"
        first = errors[0]
        if isinstance(first, RedisError):
            raise _translate(first, self._url, what, progress) from None
        raise OnlineStoreError(f"{what} to {self._url} failed: {first}", progress)  # pragma: no cover

    def _concurrency(self) -> int:
        """Pipelines in flight: ``write_concurrency``, per primary on a cluster."""
        if not self._cluster:
            return self.write_concurrency
        return self.write_concurrency * max(1, len(self._client.get_primaries()))

    def _writer_pool(self) -> ThreadPoolExecutor | None:
        if self.write_concurrency <= 1:
            return None
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self._concurrency(), thread_name_prefix="online-store")
            return self._executor

    def _run_script_calls(self, ttl_ms: int, calls: list[_Call], node: Any = None) -> list[Any]:
        """Run the calls in one non-transactional pipeline (on a cluster: straight to ``node``);
        re-run once those that hit NOSCRIPT, and — on a cluster — through redis-py's routing those
        answered MOVED/ASK (a slot moved since the slot map was read: the map is refreshed)."""
        outcomes = self._pipeline_evalsha(ttl_ms, calls, node)
        retry_idx = [j for j, out in enumerate(outcomes) if isinstance(out, NoScriptError)]
        if retry_idx:
            loader = self._client if node is None else self._client.get_redis_connection(node)
            loader.script_load(WRITE_IF_NEWER_LUA)
            again = self._pipeline_evalsha(ttl_ms, [calls[j] for j in retry_idx], node)
            for j, out in zip(retry_idx, again, strict=True):
                outcomes[j] = out
        moved = [j for j, out in enumerate(outcomes) if isinstance(out, MovedError | AskError)]
        if node is not None and moved:
            self._client.nodes_manager.initialize()
            again = self._pipeline_evalsha(ttl_ms, [calls[j] for j in moved], None)
            for j, out in zip(moved, again, strict=True):
                outcomes[j] = out
        return outcomes

    def _pipeline_evalsha(self, ttl_ms: int, calls: list[_Call], node: Any = None) -> list[Any]:
        if node is not None:
            pipe = self._client.get_redis_connection(node).pipeline(transaction=False)
        elif self._cluster:
            pipe = self._client.pipeline()
        else:
            pipe = self._client.pipeline(transaction=False)
        for ks, bs in calls:
            pipe.execute_command("EVALSHA", _WRITE_SHA, len(ks), *ks, ttl_ms, *bs)
        return pipe.execute(raise_on_error=False)

    def _load_script(self) -> None:
        sha = self._call(lambda: self._client.script_load(WRITE_IF_NEWER_LUA), "script load")
        if sha != _WRITE_SHA:  # pragma: no cover - would mean a broken server
            raise OnlineStoreError(f"SCRIPT LOAD on {self._url} returned {sha}, expected {_WRITE_SHA}")

    # ---- read -------------------------------------------------------------------------------

    def read(self, requests: Sequence[tuple[GroupLayout, EntityKey | str | int]]) -> list[FeatureRow | None]:
        """Rows of any groups for any entities in ONE round trip (one ``MGET``; on a cluster one
        pipelined ``MGET`` per slot); ``None`` where a row is absent or expired. Order follows
        ``requests``.
        """
        if not requests:
            return []
        keys = [self.key(layout, ek) for layout, ek in requests]
        raw = self._mget(keys)
        out: list[FeatureRow | None] = []
        for (layout, ek), blob in zip(requests, raw, strict=True):
            out.append(None if blob is None else _decode(layout, ek, blob))
        return out

    async def read_async(
        self, requests: Sequence[tuple[GroupLayout, EntityKey | str | int]]
    ) -> list[FeatureRow | None]:
        """:meth:`read` for an event loop (``redis.asyncio``): the loop serves other requests while
        the ``MGET`` is in flight instead of blocking on the socket. The asyncio client is opened on
        first use, in the calling loop (a store built with :meth:`from_url`); it does not retry
        (the caller's breaker decides). Same keys, same decoding, same errors as :meth:`read`."""
        if not requests:
            return []
        keys = [self.key(layout, ek) for layout, ek in requests]
        raw = await self.mget_async(keys)
        out: list[FeatureRow | None] = []
        for (layout, ek), blob in zip(requests, raw, strict=True):
            out.append(None if blob is None else _decode(layout, ek, blob))
        return out

    async def mget_async(self, keys: list[str]) -> list[bytes | None]:
        """Raw values of ``keys`` in one round trip (per node on a cluster), on the event loop."""
        client = self._async_client()
        try:
            if self._cluster:
                return await client.mget_nonatomic(keys)
            return await client.execute_command("MGET", *keys)
        except RedisError as exc:
            raise _translate(exc, self._url, "read") from None

    async def hgetall_async(self, keys: list[str]) -> list[dict[bytes, bytes]]:
        """``HGETALL`` of every key in one pipeline (one round trip; per node on a cluster), on the
        event loop (the online tiles, ``online_tiles.py``). A single plain server is read through
        the lean :class:`~risk_assets.features.redis_pipe.AsyncPipe`; TLS and clusters through
        ``redis.asyncio``."""
        pipe = self._pipe()
        if pipe is not None:
            try:
                replies = await pipe.execute([("HGETALL", k) for k in keys])
            except RedisError as exc:
                raise _translate(exc, self._url, "read") from None
            out: list[dict[bytes, bytes]] = []
            for r in replies:
                if isinstance(r, Exception):
                    raise _translate(r, self._url, "read")  # type: ignore[arg-type]
                it = iter(r)
                out.append(dict(zip(it, it, strict=True)))
            return out
        client = self._async_client()
        try:
            pipe = client.pipeline() if self._cluster else client.pipeline(transaction=False)
            for k in keys:
                pipe.hgetall(k)
            return await pipe.execute()
        except RedisError as exc:
            raise _translate(exc, self._url, "read") from None

    def _pipe(self) -> AsyncPipe | None:
        if self._apipe is None and self._async_connect is not None and not self._cluster:
            url, cluster, options = self._async_connect
            if not cluster and supports_pipe(url):
                self._apipe = AsyncPipe(
                    url,
                    connect_timeout_s=float(options.get("socket_connect_timeout") or 1.0),
                    timeout_s=self._read_timeout_s,  # the configured one: loop lag is not counted
                )
        return self._apipe

    def _async_client(self) -> Any:
        client = self._aclient
        if client is None:
            if self._async_connect is None:
                raise OnlineStoreError("asynchronous reads need a store opened with OnlineStore.from_url")
            url, cluster, options = self._async_connect
            try:
                client = self._aclient = connect_async(url, cluster=cluster, **options)
            except ValueError as exc:  # pragma: no cover - from_url parsed the same URL already
                raise OnlineStoreError(f"invalid Redis URL {self._url}: {exc}") from None
        return client

    async def aclose(self) -> None:
        """Close the asyncio client (in the loop that used it); the sync client stays open."""
        client, self._aclient = self._aclient, None
        if client is not None:
            await client.aclose()
        pipe, self._apipe = self._apipe, None
        if pipe is not None:
            pipe.close()

    def _mget(self, keys: list[str]) -> list[bytes | None]:
        if self._cluster:
            return self._call(lambda: self._client.mget_nonatomic(keys), "read")
        return self._call(lambda: self._client.execute_command("MGET", *keys), "read")

    def read_frame(self, layout: GroupLayout, keys: pl.DataFrame, *, chunk: int = 10_000) -> pl.DataFrame:
        """Rows of one group for the entities in ``keys`` (its key columns) as a frame, for audits.

        Columns: the key columns, ``present`` (bool), ``event_ts``, ``created_ts``, ``written_ts``
        (Datetime ms UTC; null when absent) and the features (Float64; null when null/NaN or
        absent). One row per input row, in input order. Large inputs are fetched as a pipeline of
        ``MGET``s of ``chunk`` keys.
        """
        key_list = self._keys_of(layout, keys).to_list()
        raw: list[bytes | None] = []
        if self._cluster:
            raw = self._mget(key_list)
        elif key_list:

            def fetch() -> list[Any]:
                pipe = self._client.pipeline(transaction=False)
                for i in range(0, len(key_list), chunk):
                    pipe.execute_command("MGET", *key_list[i : i + chunk])
                return pipe.execute()

            for part in self._call(fetch, "read"):
                raw.extend(part)
        present = np.fromiter((b is not None for b in raw), dtype=bool, count=len(raw))
        size = layout.row_size
        found = [b for b in raw if b is not None]
        if any(len(b) == size - 1 and b[0] == 1 for b in found):  # format 1: insert source 0
            found = [_v1_as_v2(b) if len(b) == size - 1 and b[0] == 1 else b for b in found]
        bad = next((b for b in found if len(b) != size or b[0] != FORMAT_VERSION), None)
        if bad is not None:
            raise OnlineStoreError(
                f"group {layout.name!r}@{layout.version}: stored row of {len(bad)} bytes (format {bad[0]}) "
                f"does not match the layout ({size} bytes, format {FORMAT_VERSION})"
            )
        rows = np.frombuffer(b"".join(found), dtype=layout.row_dtype)
        n = len(raw)

        def spread(values: np.ndarray, fill: Any) -> np.ndarray:
            full = np.full((n, *values.shape[1:]), fill, dtype=values.dtype)
            full[present] = values
            return full

        cols: dict[str, Any] = {c: keys[c] for c in layout.key_columns}
        cols["present"] = pl.Series("present", present, dtype=pl.Boolean)
        for name in ("event_ts", "created_ts", "written_ts"):
            cols[name] = pl.Series(name, spread(rows[name], 0), dtype=pl.Int64)
        values = spread(rows["values"], np.nan) if n else np.empty((0, len(layout.features)))
        for j, f in enumerate(layout.features):
            cols[f] = pl.Series(f, values[:, j], dtype=pl.Float64)
        stamp = pl.Datetime("ms", "UTC")
        return pl.DataFrame(cols).with_columns(
            *[
                pl.when(pl.col("present")).then(pl.col(t).cast(stamp)).otherwise(None).alias(t)
                for t in ("event_ts", "created_ts", "written_ts")
            ],
            *[pl.col(f).fill_nan(None) for f in layout.features],
        )

    # ---- plumbing ---------------------------------------------------------------------------

    def _call(self, fn: Any, what: str) -> Any:
        try:
            return fn()
        except RedisError as exc:
            raise _translate(exc, self._url, what) from None


def _v1_as_v2(blob: bytes) -> bytes:
    """A format-1 row as format 2 (source 0 inserted after the header)."""
    return b"\x02" + blob[1:27] + b"\x00" + blob[27:]


def _decode(layout: GroupLayout, entity_key: EntityKey | str | int, blob: bytes) -> FeatureRow:
    size = len(blob)
    if size == layout.row_size:
        fmt, event_ms, created_ms, written_ms, n, source = _HEADER.unpack_from(blob)
        offset = HEADER_SIZE
    elif size == layout.row_size - 1 and blob[:1] == b"\x01":
        fmt, event_ms, created_ms, written_ms, n = _HEADER_V1.unpack_from(blob)
        source, offset, fmt = SOURCE_STREAM, _HEADER_V1.size, FORMAT_VERSION
    else:
        raise OnlineStoreError(
            f"group {layout.name!r}@{layout.version}: stored row has {size} bytes, "
            f"layout expects {layout.row_size}"
        )
    if fmt != FORMAT_VERSION or n != len(layout.features):
        raise OnlineStoreError(
            f"group {layout.name!r}@{layout.version}: stored row format {fmt} with {n} features does not "
            f"match the layout (format {FORMAT_VERSION}, {len(layout.features)} features)"
        )
    vals = layout._values_struct.unpack_from(blob, offset)
    ek = entity_key if type(entity_key) is tuple else (entity_key,)
    return FeatureRow(
        layout.name, layout.version, ek, layout.features, vals, event_ms, created_ms, written_ms, source
    )


def _translate(
    exc: RedisError, safe_url: str, what: str, progress: WriteResult | None = None
) -> OnlineStoreError:
    """A one-line store error for a redis-py exception (no password: redis-py messages name
    host:port only, and we add the redacted URL)."""
    detail = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return OnlineStoreUnavailable(
            f"Redis online store at {safe_url} is unavailable ({what} failed after retries): "
            f"{type(exc).__name__}: {detail}",
            progress,
        )
    if isinstance(exc, ResponseError):
        return OnlineStoreError(f"Redis at {safe_url} rejected {what}: {detail}", progress)
    return OnlineStoreError(f"{what} on Redis at {safe_url} failed: {type(exc).__name__}: {detail}", progress)
