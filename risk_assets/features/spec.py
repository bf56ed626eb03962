"""The feature language: typed, frozen, serializable definitions of windowed aggregations.

A :class:`FeatureGroup` is a set of features about one :class:`Entity` (user, device, ip, card,
wallet, counterparty, or a composite such as user × wallet), computed from the events of the group's
``source_event_types``. Definitions hold no code: filters are :class:`Where` triples, so a group has a
canonical JSON form and a stable :attr:`FeatureGroup.version` hash. The spine-driven offline engine
(``risk_assets.features.spine``) and the tiles the online side merges (``risk_assets.features.tiles``)
MUST produce identical values under the semantics below (integers exactly; floating-point
sums/means/ratios up to rounding, rel. tolerance 1e-9); ``tests/features/test_semantics_v2_oracle.py``
checks both against a brute-force reading of this text.

Exact semantics (``SEMANTICS_VERSION`` = 2)
-------------------------------------------
v1 evaluated a window only at the entity's own events, with the event itself included, and nothing
brought a value forward to the time of scoring (a burst of failed logins at 09:00 still counted in
a 10-minute window at 14:00). v2 defines the value at any query time; what changed and why:
``docs/features.md``.

Every group reads one declared source (:mod:`risk_assets.sources`; the exchange events by
default). Below, ``event_ts``, ``event_id`` and ``event_type`` stand for the source's time, id and
event-type columns (``tx_ts``, ``tx_id``, ``tx_type`` for a card source); a source without an
event-type column feeds every event to its groups. Time is integer milliseconds
(``Datetime("ms", "UTC")``); output frames always name the as-of time ``event_ts``.

*Group stream.* The events of a group are the events whose ``event_type`` is in
``source_event_types`` and whose entity key columns are all non-null. Events of other types are
invisible to the group.

*Query times.* A feature has a value at *any* query time ``t`` (integer ms), not only at the
entity's own events: the spine-driven engine (:mod:`risk_assets.features.spine`) computes it at
any (entity key, ``t``) rows; serving finishes the windows from tiles
(:mod:`risk_assets.features.tiles`) at the scored event's time. Output frames name the query time
``event_ts``.

*Hops.* Every window ``w`` has a hop ``h`` (:func:`hop_for`): ``w <= 1h`` → 1 minute,
``1h < w <= 2d`` → 1 hour, ``w > 2d`` → 1 day; ``w`` must be a multiple of its hop (else the
definition is refused). ``floor_h(x) = x − (x mod h)``, epoch-aligned (UTC). Window starts are
resolved to hops, as Chronon's are, so that a window is a union of whole hop tiles (plus, with no
offset, the partial tile ``[floor_h(t), t)``) and the online side can be exact.

*Windows.* A feature with window ``w``, offset ``o`` (default 0) and hop ``h`` at query time ``t``
sees the entity's group events ``e`` that pass all of its filters (logical AND) and have

* ``o == 0``: ``floor_h(t) − w <= e.event_ts < t``;
* ``o > 0``:  ``floor_h(t − o) − w <= e.event_ts < floor_h(t − o)`` (both ends tile-aligned).

The end is EXCLUSIVE: events at ``t`` itself (the event being scored and any other event of the
same millisecond) are not in the window — the scored event has not reached the online store when
it is scored, so serving and training agree. A window covers between ``w`` and ``w + h`` of
history (``w + h`` right after a hop boundary, ``w`` just before the next one): a
``failed_login_count_10m`` at 14:00 of a user whose 8 failed logins were at 09:00 is 0. The offset
is an availability delay ("events of the 30 days ending 7 days ago": ``w = 30d``, ``o = 7d``); every
aggregation kind takes one. ``MIN_WINDOW <= w <= MAX_WINDOW`` (1 minute … 366 days) and
``0 <= o <= MAX_OFFSET`` (366 days), separately. A group's ``max_window`` is its longest ``w + o``;
``max_reach`` (``w + h + o``) is how far back a window can reach.

*Late events.* ``ingest_ts`` is ignored: offline values are *final*, computed from every event by
its event time, whatever the order or time of arrival. Online, a late event lands in its
event-time tile when it arrives; until then the online value differs from the offline one
(visible skew, never hidden).

*Stored per-event rows (offline store tables).* The batch engine (:mod:`risk_assets.features.batch`)
still writes one row per (entity, event time) for the offline store tables: those rows are
*snapshots* under the v1 rules (the window ``(t − o − w, t − o]`` right after the event, the event
itself included), kept for the stream path's equality checks and the point-in-time join of
snapshot tables until the tiled online store replaces them. Training sets and the skew audit do
not read them for group features: they compute v2 values at their own times with the spine engine.

*Filters.* ``Where(column, op, value)``. A row whose column is null fails every op except
``is_null`` (SQL three-valued logic, with unknown treated as false); ``ne``/``not_in`` therefore
also drop nulls.

*Ordering inside a millisecond.* Events are ordered by (``event_ts``, ``event_id``); only ``last``
depends on it.

*Aggregations* (over the window's matching events ``M``; "non-null" refers to ``column``):

============== ============================================================ ================ ==========
kind           value                                                        dtype            empty ``M``
============== ============================================================ ================ ==========
count          ``|M|``                                                      Int64            0
sum            sum of the non-null values (nulls count as 0)                Float64          0.0
mean           sum / number of non-null values                              Float64          null
min, max       min/max of the non-null values                               column dtype     null
distinct_count number of distinct 64-bit hashes of the non-null values      Int64            0
               (:func:`risk_assets.features.tiles.value_hash`: FNV-1a 64 of
               a canonical encoding + a 64-bit finalizer; the same on both
               sides, so online =
               offline exactly; below the true count only on a collision,
               probability about ``n² / 2⁶⁵`` for ``n`` distinct values)
last           value of the latest event in ``M`` whose value is non-null   column dtype     null
               (latest by (event_ts, event_id))
time_since_last ``(t - s) / 1000`` seconds, ``s`` = the greatest event_ts   Float64          null
               of ``M`` (every event of ``M`` is before ``t``)
ratio          ``numerator / denominator`` of two other (non-ratio)         Float64          —
               features of the group; when the denominator is 0 or null:
               null (``empty="null"``, the default) or 0.0
               (``empty="zero"``); otherwise null if the numerator is null
============== ============================================================ ================ ==========

*Label aggregates* (availability delay ``D``, ``0 <= D < w + o``; ``M`` is the window's matching
events, offset included). Labels come from the group's label source and join events on its key
column (``event_id`` for the exchange labels). Let ``k(e)`` be the time of the first label of event
``e`` passing ``label_where``. ``e`` is *labelled at t* if ``k(e) < t − D`` (strict, as the window
end). ``label_count`` = number of events of ``M`` labelled at ``t`` (Int64, 0 when none);
``label_rate`` = ``label_count / N`` (Float64, null when ``N = 0``) where ``N = |M|``
(``denominator="all"``, the default) or, with ``denominator="matured"``, ``N`` = the events of ``M``
with ``event_ts < floor_h(t − D)`` — the events whose hop tile ended at least ``D`` before ``t``,
old enough for their label to be known. (Tile-resolved on purpose: a tile keeps its event count,
not every event time, so the online side can apply this cutoff exactly; it is at most one hop
stricter than ``event_ts < t − D``.) No label with ``label_ts >= t − D`` can influence a value.
``label_ts`` (the label source's time column) is the only label time used (not its ingestion time).

*Helpers.* Any feature may be marked ``model_input=False`` (e.g. a ratio's operands): it is
computed, stored and synced like the others but is not a model input
(:attr:`FeatureGroup.model_feature_names`, which the training set, the trainer and risk-serve use).

*Versioning.* :attr:`FeatureGroup.version` is the first 12 hex digits of the SHA-256 of the canonical
JSON of everything that determines values (name, entity, source types, features, ttl, semantics
version; the source's and, with label aggregates, the label source's name and schema version unless
they are the exchange's), with keys sorted, features sorted by name, filters sorted, durations in
milliseconds.
Options at their default (offset 0, ``denominator="all"``, ``empty="null"``) are left out of the
canonical form, so definitions that do not use them keep their versions. Descriptions, owner, tags
and ``model_input`` are not values and do not change the version.
"""

from __future__ import annotations

import hashlib
import json
import keyword
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property
from typing import Any, Literal, TypeAlias

import polars as pl

from risk_assets.sources import EXCHANGE_EVENTS, EXCHANGE_LABELS, EventSource, LabelSource

SEMANTICS_VERSION = 2
HOP_MINUTE = timedelta(minutes=1)
HOP_HOUR = timedelta(hours=1)
HOP_DAY = timedelta(days=1)
MIN_WINDOW = timedelta(minutes=1)
MAX_WINDOW = timedelta(days=366)
MAX_OFFSET = timedelta(days=366)
EVENT_TS = "event_ts"
_TS_DTYPE = pl.Datetime("ms", "UTC")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")

Scalar: TypeAlias = str | int | float | bool
FilterOp = Literal["eq", "ne", "in", "not_in", "gt", "ge", "lt", "le", "is_null", "not_null"]
AggKind = Literal["count", "sum", "mean", "min", "max", "distinct_count", "last", "time_since_last"]
LabelKind = Literal["label_count", "label_rate"]
LabelDenominator = Literal["all", "matured"]
RatioEmpty = Literal["null", "zero"]

_OPS: tuple[str, ...] = FilterOp.__args__  # type: ignore[attr-defined]
_NUMERIC_KINDS = ("sum", "mean", "min", "max")
_COLUMN_KINDS = ("sum", "mean", "min", "max", "distinct_count", "last")


def _ms(d: timedelta) -> int:
    """A duration in whole milliseconds (sub-millisecond durations are rejected)."""
    ms = d // timedelta(milliseconds=1)
    if timedelta(milliseconds=ms) != d:
        raise ValueError(f"durations must be whole milliseconds, got {d}")
    return ms


def format_window(d: timedelta) -> str:
    """Compact text of a duration: ``10m``, ``1h``, ``7d`` (falls back to ``…s``/``…ms``)."""
    ms = _ms(d)
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0 and ms >= size:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def minutes(n: int) -> timedelta:
    return timedelta(minutes=n)


def hours(n: int) -> timedelta:
    return timedelta(hours=n)


def days(n: int) -> timedelta:
    return timedelta(days=n)


def hop_for(window: timedelta) -> timedelta:
    """The hop (tile size) of a window: 1 minute up to 1 hour, 1 hour up to 2 days, 1 day beyond."""
    if window <= timedelta(hours=1):
        return HOP_MINUTE
    if window <= timedelta(days=2):
        return HOP_HOUR
    return HOP_DAY


def _check_window(owner: str, window: timedelta, offset: timedelta = timedelta(0)) -> None:
    _ms(window)
    _ms(offset)
    if not MIN_WINDOW <= window <= MAX_WINDOW:
        raise ValueError(f"{owner}: window {window} outside [{MIN_WINDOW}, {MAX_WINDOW}]")
    hop = hop_for(window)
    if window % hop:
        raise ValueError(
            f"{owner}: window {format_window(window)} is not a multiple of its hop {format_window(hop)} "
            "(windows up to 1h: whole minutes; up to 2d: whole hours; beyond: whole days)"
        )
    if not timedelta(0) <= offset <= MAX_OFFSET:
        raise ValueError(f"{owner}: offset {offset} outside [0, {MAX_OFFSET}]")


def _check_name(name: str, what: str) -> None:
    if not _NAME.match(name) or keyword.iskeyword(name):
        raise ValueError(f"{what} name {name!r} must be snake_case ([a-z][a-z0-9_]*, ≤ 63 chars)")


# --------------------------------------------------------------------------------------------
# Entities
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Entity:
    """What a feature group describes, identified by one or more columns (``keys``) of the group's
    source (checked when the entity is used in a :class:`FeatureGroup`)."""

    name: str
    keys: tuple[str, ...]

    def __post_init__(self) -> None:
        _check_name(self.name, "entity")
        if not self.keys or len(set(self.keys)) != len(self.keys):
            raise ValueError(f"entity {self.name}: keys must be a non-empty tuple of distinct columns")
        if EVENT_TS in self.keys:
            raise ValueError(f"entity {self.name}: {EVENT_TS!r} is reserved for the as-of time")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "keys": list(self.keys)}


USER = Entity("user", ("user_id",))
DEVICE = Entity("device", ("device_id",))
IP = Entity("ip", ("ip",))
CARD = Entity("card", ("card_id",))
WALLET = Entity("wallet", ("wallet_address",))
COUNTERPARTY = Entity("counterparty", ("counterparty_id",))
USER_WALLET = Entity("user_wallet", ("user_id", "wallet_address"))


# --------------------------------------------------------------------------------------------
# Filters
# --------------------------------------------------------------------------------------------
def _check_value(column: str, dtype: pl.DataType, value: Any) -> None:
    if dtype == pl.String:
        ok = isinstance(value, str)
    elif dtype == pl.Boolean:
        ok = isinstance(value, bool)
    elif dtype.is_numeric():
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        ok = False
    if not ok:
        raise ValueError(f"filter on {column!r} ({dtype}): value {value!r} has the wrong type")


@dataclass(frozen=True)
class Where:
    """A row filter ``column op value``; a null column value fails every op but ``is_null``.

    ``value`` is a scalar for comparisons, a tuple of scalars for ``in``/``not_in`` and ``None`` for
    ``is_null``/``not_null``. The column and the value's type are checked against the source of the
    :class:`FeatureGroup` the filter is used in (label filters: its label source); with ``columns``
    (a layout: column → dtype) they are also checked at once.
    """

    column: str
    op: FilterOp
    value: Scalar | tuple[Scalar, ...] | None = None
    columns: Mapping[str, pl.DataType] | None = field(default=None, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ValueError(f"unknown filter op {self.op!r}; expected one of {_OPS}")
        if self.op in ("is_null", "not_null"):
            if self.value is not None:
                raise ValueError(f"{self.op} takes no value")
        elif self.op in ("in", "not_in"):
            if isinstance(self.value, list):
                object.__setattr__(self, "value", tuple(self.value))
            if not isinstance(self.value, tuple) or not self.value:
                raise ValueError(f"{self.op} needs a non-empty tuple of values")
            # Membership is a set: canonical order makes equal filters equal.
            object.__setattr__(self, "value", tuple(sorted(set(self.value), key=repr)))
        elif self.value is None or isinstance(self.value, tuple):
            raise ValueError(f"{self.op} needs one scalar value")
        if self.columns is not None:
            self.check(self.columns)

    def check(self, columns: Mapping[str, pl.DataType], layout: str = "the layout") -> None:
        """Raise unless ``column`` is in ``columns`` and the value(s) fit its dtype."""
        if self.column not in columns:
            raise ValueError(f"filter column {self.column!r} is not in {layout}")
        if self.op in ("is_null", "not_null"):
            return
        for v in self.value if isinstance(self.value, tuple) else (self.value,):
            _check_value(self.column, columns[self.column], v)

    def values(self) -> tuple[Scalar, ...]:
        """The compared value(s) as a tuple (empty for ``is_null``/``not_null``)."""
        if self.value is None:
            return ()
        return self.value if isinstance(self.value, tuple) else (self.value,)

    def expr(self) -> pl.Expr:
        """The filter as a Polars boolean expression that is never null."""
        c = pl.col(self.column)
        v = self.value
        e: pl.Expr
        match self.op:
            case "is_null":
                return c.is_null()
            case "not_null":
                return c.is_not_null()
            case "eq":
                e = c == v
            case "ne":
                e = c != v
            case "in":
                e = c.is_in(list(v))  # type: ignore[arg-type]
            case "not_in":
                e = ~c.is_in(list(v))  # type: ignore[arg-type]
            case "gt":
                e = c > v
            case "ge":
                e = c >= v
            case "lt":
                e = c < v
            case "le":
                e = c <= v
        return (e & c.is_not_null()).fill_null(False)

    def matches(self, row: Mapping[str, Any]) -> bool:
        """The same predicate on one row (a dict): the reference semantics used by tests and docs."""
        x = row.get(self.column)
        if self.op == "is_null":
            return x is None
        if x is None:
            return False
        v = self.value
        match self.op:
            case "not_null":
                return True
            case "eq":
                return x == v
            case "ne":
                return x != v
            case "in":
                return x in v  # type: ignore[operator]
            case "not_in":
                return x not in v  # type: ignore[operator]
            case "gt":
                return x > v  # type: ignore[operator]
            case "ge":
                return x >= v  # type: ignore[operator]
            case "lt":
                return x < v  # type: ignore[operator]
            case "le":
                return x <= v  # type: ignore[operator]
        raise AssertionError(self.op)

    def to_dict(self) -> dict[str, Any]:
        v = list(self.value) if isinstance(self.value, tuple) else self.value
        return {"column": self.column, "op": self.op, "value": v}


def label_where(
    column: str, op: FilterOp, value: Scalar | tuple[Scalar, ...] | None = None, *,
    source: LabelSource = EXCHANGE_LABELS,
) -> Where:  # fmt: skip
    """A filter on a label source's columns (``label_type``, ``scenario``, … of the exchange labels
    by default) for label aggregates; checked against ``source`` at once."""
    return Where(column, op, value, columns=source.schema)


def event_type(*types: str, source: EventSource = EXCHANGE_EVENTS) -> Where:
    """Filter on the event-type column of ``source`` (one type → ``eq``, several → ``in``); the
    types must be among the source's declared event types."""
    if source.event_type_column is None:
        raise ValueError(f"source {source.name} declares no event-type column")
    unknown = set(types) - set(source.event_types)
    if not types or unknown:
        raise ValueError(f"unknown event types {sorted(unknown)} for source {source.name}")
    column = source.event_type_column
    return Where(column, "eq", types[0]) if len(types) == 1 else Where(column, "in", types)


def _canonical_filters(where: tuple[Where, ...]) -> list[dict[str, Any]]:
    # Filters are ANDed: their order carries no meaning, duplicates neither.
    docs = {json.dumps(w.to_dict(), sort_keys=True): w.to_dict() for w in where}
    return [docs[k] for k in sorted(docs)]


def _as_where_tuple(where: Any) -> tuple[Where, ...]:
    if isinstance(where, Where):
        return (where,)
    return tuple(where)


# --------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Aggregate:
    """A windowed aggregation of the entity's matching events (see the module docstring)."""

    name: str
    kind: AggKind
    window: timedelta
    column: str | None = None
    where: tuple[Where, ...] = ()
    description: str = field(default="", compare=False)
    offset: timedelta = timedelta(0)
    """Availability delay: the window ends ``offset`` before the as-of time."""
    model_input: bool = True
    """False for a helper (e.g. a ratio's operand): computed and stored, never a model input."""

    def __post_init__(self) -> None:
        _check_name(self.name, "feature")
        object.__setattr__(self, "where", _as_where_tuple(self.where))
        _check_window(self.name, self.window, self.offset)
        if self.kind not in AggKind.__args__:  # type: ignore[attr-defined]
            raise ValueError(f"{self.name}: unknown aggregation {self.kind!r}")
        if self.kind in _COLUMN_KINDS:
            # The column itself is checked against the group's source (FeatureGroup).
            if not isinstance(self.column, str) or not self.column:
                raise ValueError(f"{self.name}: {self.kind} needs a source column")
        elif self.column is not None:
            raise ValueError(f"{self.name}: {self.kind} takes no column")

    @property
    def windows(self) -> tuple[timedelta, ...]:
        return (self.window,)

    @property
    def lookback(self) -> timedelta:
        """``window + offset``; the window reaches at most one hop further back (:attr:`reach`)."""
        return self.window + self.offset

    @property
    def reach(self) -> timedelta:
        """How far before the query time the window can reach: ``window + hop + offset`` (the
        window start is floored to the hop)."""
        return self.window + self.hop + self.offset

    @property
    def hop(self) -> timedelta:
        """The window's hop (tile size, :func:`hop_for`): window starts are floored to it."""
        return hop_for(self.window)

    def dtype(self, source: EventSource = EXCHANGE_EVENTS) -> pl.DataType:
        """Polars dtype of the output column (``min``/``max``/``last``: the column's dtype in ``source``)."""
        if self.kind in ("count", "distinct_count"):
            return pl.Int64()
        if self.kind in ("sum", "mean", "time_since_last"):
            return pl.Float64()
        assert self.column is not None
        return source.dtype(self.column)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "aggregate",
            "name": self.name,
            "kind": self.kind,
            "column": self.column,
            "window_ms": _ms(self.window),
            "where": _canonical_filters(self.where),
        }
        if self.offset:  # absent when 0: versions of definitions without offsets are unchanged
            out["offset_ms"] = _ms(self.offset)
        return out


@dataclass(frozen=True)
class Ratio:
    """``numerator / denominator`` of two other features of the group, null when undefined."""

    name: str
    numerator: str
    denominator: str
    description: str = field(default="", compare=False)
    empty: RatioEmpty = "null"
    """Value when the denominator is 0 or null: ``"null"`` (default) or ``"zero"`` (0.0)."""
    model_input: bool = True

    def __post_init__(self) -> None:
        _check_name(self.name, "feature")
        if self.empty not in RatioEmpty.__args__:  # type: ignore[attr-defined]
            raise ValueError(f"{self.name}: empty must be one of {RatioEmpty.__args__}")  # type: ignore[attr-defined]

    @property
    def windows(self) -> tuple[timedelta, ...]:
        return ()

    @property
    def lookback(self) -> timedelta:
        return timedelta(0)

    @property
    def reach(self) -> timedelta:
        return timedelta(0)

    def dtype(self, source: EventSource = EXCHANGE_EVENTS) -> pl.DataType:
        return pl.Float64()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "ratio", "name": self.name, "numerator": self.numerator,
                               "denominator": self.denominator}  # fmt: skip
        if self.empty != "null":
            out["empty"] = self.empty
        return out


@dataclass(frozen=True)
class LabelAggregate:
    """Labelled-event count or share over a window, using only labels older than ``availability_delay``."""

    name: str
    kind: LabelKind
    window: timedelta
    availability_delay: timedelta
    where: tuple[Where, ...] = ()
    label_where: tuple[Where, ...] = ()
    description: str = field(default="", compare=False)
    offset: timedelta = timedelta(0)
    """The event window ends ``offset`` before the as-of time (labels still use ``t − D``)."""
    denominator: LabelDenominator = "all"
    """``label_rate`` only: ``"all"`` events of the window, or only the ``"matured"`` ones
    (``event_ts <= t − availability_delay``: old enough for their label to be known)."""
    model_input: bool = True

    def __post_init__(self) -> None:
        _check_name(self.name, "feature")
        object.__setattr__(self, "where", _as_where_tuple(self.where))
        object.__setattr__(self, "label_where", _as_where_tuple(self.label_where))
        _check_window(self.name, self.window, self.offset)
        if self.kind not in LabelKind.__args__:  # type: ignore[attr-defined]
            raise ValueError(f"{self.name}: unknown label aggregation {self.kind!r}")
        _ms(self.availability_delay)
        if not timedelta(0) <= self.availability_delay < self.window + self.offset:
            raise ValueError(f"{self.name}: availability_delay must be in [0, window + offset)")
        if self.denominator not in LabelDenominator.__args__:  # type: ignore[attr-defined]
            raise ValueError(f"{self.name}: denominator must be one of {LabelDenominator.__args__}")  # type: ignore[attr-defined]
        if self.denominator != "all" and self.kind != "label_rate":
            raise ValueError(f"{self.name}: a denominator applies to label_rate only")

    @property
    def windows(self) -> tuple[timedelta, ...]:
        return (self.window,)

    @property
    def lookback(self) -> timedelta:
        """``window + offset``; the window reaches at most one hop further back (:attr:`reach`)."""
        return self.window + self.offset

    @property
    def reach(self) -> timedelta:
        """How far before the query time the event window can reach: ``window + hop + offset``."""
        return self.window + self.hop + self.offset

    @property
    def hop(self) -> timedelta:
        """The window's hop (tile size, :func:`hop_for`): window starts are floored to it."""
        return hop_for(self.window)

    def dtype(self, source: EventSource = EXCHANGE_EVENTS) -> pl.DataType:
        return pl.Int64() if self.kind == "label_count" else pl.Float64()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "label_aggregate",
            "name": self.name,
            "kind": self.kind,
            "window_ms": _ms(self.window),
            "availability_delay_ms": _ms(self.availability_delay),
            "where": _canonical_filters(self.where),
            "label_where": _canonical_filters(self.label_where),
        }
        if self.offset:  # absent when default: versions of existing definitions are unchanged
            out["offset_ms"] = _ms(self.offset)
        if self.denominator != "all":
            out["denominator"] = self.denominator
        return out


Feature: TypeAlias = Aggregate | Ratio | LabelAggregate


# Constructors: short, readable definitions. ``where`` takes any number of filters (ANDed);
# ``offset`` delays the window (it ends ``offset`` before the as-of time); ``model_input=False``
# marks a helper that is computed and stored but never fed to a model.
_ZERO = timedelta(0)


def count(
    name: str, window: timedelta, *where: Where, description: str = "", offset: timedelta = _ZERO,
    model_input: bool = True,
) -> Aggregate:  # fmt: skip
    """Number of matching events in the window."""
    return Aggregate(name, "count", window, None, where, description, offset, model_input)


def sum_of(
    name: str, column: str, window: timedelta, *where: Where, description: str = "",
    offset: timedelta = _ZERO, model_input: bool = True,
) -> Aggregate:  # fmt: skip
    """Sum of ``column`` over matching events (nulls as 0, 0.0 when empty)."""
    return Aggregate(name, "sum", window, column, where, description, offset, model_input)


def mean_of(
    name: str, column: str, window: timedelta, *where: Where, description: str = "",
    offset: timedelta = _ZERO, model_input: bool = True,
) -> Aggregate:  # fmt: skip
    """Mean of the non-null values of ``column`` (null when none)."""
    return Aggregate(name, "mean", window, column, where, description, offset, model_input)


def min_of(
    name: str, column: str, window: timedelta, *where: Where, description: str = "",
    offset: timedelta = _ZERO, model_input: bool = True,
) -> Aggregate:  # fmt: skip
    """Minimum of the non-null values of ``column`` (null when none)."""
    return Aggregate(name, "min", window, column, where, description, offset, model_input)


def max_of(
    name: str, column: str, window: timedelta, *where: Where, description: str = "",
    offset: timedelta = _ZERO, model_input: bool = True,
) -> Aggregate:  # fmt: skip
    """Maximum of the non-null values of ``column`` (null when none)."""
    return Aggregate(name, "max", window, column, where, description, offset, model_input)


def distinct_count(
    name: str, column: str, window: timedelta, *where: Where, description: str = "",
    offset: timedelta = _ZERO, model_input: bool = True,
) -> Aggregate:  # fmt: skip
    """Exact number of distinct non-null values of ``column`` in the window."""
    return Aggregate(name, "distinct_count", window, column, where, description, offset, model_input)


def last_value(
    name: str, column: str, window: timedelta, *where: Where, description: str = "",
    offset: timedelta = _ZERO, model_input: bool = True,
) -> Aggregate:  # fmt: skip
    """Latest non-null value of ``column`` in the window (ties by event_id)."""
    return Aggregate(name, "last", window, column, where, description, offset, model_input)


def time_since_last(
    name: str, window: timedelta, *where: Where, description: str = "", offset: timedelta = _ZERO,
    model_input: bool = True,
) -> Aggregate:  # fmt: skip
    """Seconds since the latest matching event strictly before the as-of time, within the window."""
    return Aggregate(name, "time_since_last", window, None, where, description, offset, model_input)


def ratio(
    name: str, numerator: str, denominator: str, description: str = "", *, empty: RatioEmpty = "null",
    model_input: bool = True,
) -> Ratio:  # fmt: skip
    """``numerator / denominator`` of two features of the same group; ``empty`` ("null" or "zero")
    when the denominator is 0 or null."""
    return Ratio(name, numerator, denominator, description, empty, model_input)


def label_count(
    name: str,
    window: timedelta,
    availability_delay: timedelta,
    *where: Where,
    label_filters: tuple[Where, ...] = (),
    description: str = "",
    offset: timedelta = _ZERO,
    model_input: bool = True,
) -> LabelAggregate:
    """Matching events in the window with a label known at least ``availability_delay`` ago."""
    return LabelAggregate(
        name, "label_count", window, availability_delay, where, label_filters, description, offset, "all",
        model_input,
    )  # fmt: skip


def label_rate(
    name: str,
    window: timedelta,
    availability_delay: timedelta,
    *where: Where,
    label_filters: tuple[Where, ...] = (),
    description: str = "",
    offset: timedelta = _ZERO,
    denominator: LabelDenominator = "all",
    model_input: bool = True,
) -> LabelAggregate:
    """Share of matching events in the window with a label known at least ``availability_delay``
    ago; ``denominator="matured"`` divides by the window's events with ``event_ts <= t − delay``
    only (those whose label could be known)."""
    return LabelAggregate(
        name, "label_rate", window, availability_delay, where, label_filters, description, offset,
        denominator, model_input,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Feature groups
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FeatureGroup:
    """A named, versioned set of features about one entity, computed from the events of one declared
    source (:mod:`risk_assets.sources`; the exchange events by default).

    ``source_event_types``: the event types of the source the group reads (every declared type is
    allowed; a source without an event-type column takes ``()``: every event). ``label_source``:
    where label aggregates find their labels (default: the exchange labels for the exchange
    source; required for another source when the group has label aggregates). Entity keys, filter
    columns and values, aggregated columns and event types are checked against the source, label
    filters against the label source.
    """

    name: str
    entity: Entity
    description: str
    owner: str
    source_event_types: tuple[str, ...]
    features: tuple[Feature, ...]
    ttl: timedelta = timedelta(days=1)
    tags: tuple[tuple[str, str], ...] = ()
    source: EventSource = EXCHANGE_EVENTS
    label_source: LabelSource | None = None

    def __post_init__(self) -> None:
        _check_name(self.name, "feature group")
        if isinstance(self.tags, Mapping):
            object.__setattr__(self, "tags", tuple(sorted(self.tags.items())))
        object.__setattr__(self, "source_event_types", tuple(self.source_event_types))
        object.__setattr__(self, "features", tuple(self.features))
        src = self.source
        if not isinstance(src, EventSource):
            raise ValueError(f"{self.name}: source must be an EventSource, got {type(src).__name__}")
        if src.event_type_column is None:
            if self.source_event_types:
                raise ValueError(f"{self.name}: source {src.name} has no event types; use ()")
        else:
            unknown = set(self.source_event_types) - set(src.event_types)
            if not self.source_event_types or unknown:
                raise ValueError(
                    f"{self.name}: bad source_event_types for source {src.name} (unknown: {sorted(unknown)})"
                )
        if not self.features:
            raise ValueError(f"{self.name}: a group needs features")
        _ms(self.ttl)
        if self.ttl <= timedelta(0):
            raise ValueError(f"{self.name}: ttl must be positive")
        for k in self.entity.keys:
            if k not in src.schema or k == src.timestamp:
                raise ValueError(
                    f"{self.name}: entity {self.entity.name} key {k!r} is not a column of source {src.name}"
                )
        if self.label_source is None and src == EXCHANGE_EVENTS and self.needs_labels:
            object.__setattr__(self, "label_source", EXCHANGE_LABELS)
        if self.needs_labels and self.label_source is None:
            raise ValueError(f"{self.name}: label aggregates need a label_source for source {src.name}")
        if self.label_source is not None and self.label_source.events != src.name:
            raise ValueError(
                f"{self.name}: label source {self.label_source.name} labels {self.label_source.events}, "
                f"not {src.name}"
            )
        reserved = {*self.entity.keys, EVENT_TS}
        names = [f.name for f in self.features]
        dupes = {n for n in names if names.count(n) > 1} | (set(names) & reserved)
        if dupes:
            raise ValueError(f"{self.name}: duplicate or reserved feature names {sorted(dupes)}")
        by_name = {f.name: f for f in self.features}
        for f in self.features:
            if isinstance(f, Ratio):
                for ref in (f.numerator, f.denominator):
                    if ref not in by_name or isinstance(by_name[ref], Ratio):
                        raise ValueError(f"{self.name}.{f.name}: {ref!r} is not a non-ratio feature")
                continue
            self._check_columns(f)

    def _check_columns(self, f: Aggregate | LabelAggregate) -> None:
        """A feature's filters and column against the source (label filters: the label source)."""
        src = self.source
        owner = f"{self.name}.{f.name}"
        layout = f"source {src.name}"
        if isinstance(f, Aggregate) and f.column is not None:
            if f.column not in src.schema:
                raise ValueError(f"{owner}: {f.column!r} is not a column of {layout}")
            if f.kind in _NUMERIC_KINDS and not src.dtype(f.column).is_numeric():
                raise ValueError(f"{owner}: {f.kind} needs a numeric column, got {f.column}")
        for w in f.where:
            try:
                w.check(src.schema, layout)
            except ValueError as exc:
                raise ValueError(f"{owner}: {exc}") from None
            if w.column != src.event_type_column:
                continue
            unknown = set(w.values()) - set(src.event_types)
            if unknown:
                raise ValueError(f"{owner}: unknown event types {sorted(unknown)} for {layout}")
            if w.op in ("eq", "in") and not set(w.values()) & set(self.source_event_types):
                raise ValueError(f"{owner}: filters on event types outside source_event_types")
        if isinstance(f, LabelAggregate):
            assert self.label_source is not None
            lsrc = self.label_source
            for w in f.label_where:
                try:
                    w.check(lsrc.schema, f"label source {lsrc.name}")
                except ValueError as exc:
                    raise ValueError(f"{owner}: label filter: {exc}") from None
                if w.column == lsrc.type_column:
                    unknown = set(w.values()) - set(lsrc.label_types)
                    if unknown:
                        raise ValueError(f"{owner}: unknown label types {sorted(unknown)}")

    # -- derived properties -------------------------------------------------------------------
    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def windows(self) -> tuple[timedelta, ...]:
        """Distinct windows used by the group's features, ascending."""
        return tuple(sorted({w for f in self.features for w in f.windows}))

    @property
    def max_window(self) -> timedelta:
        """Longest ``window + offset`` of the group's features: the lookback the engine needs
        before the first as-of time (the longest window when no feature has an offset)."""
        return max(f.lookback for f in self.features)

    @property
    def max_reach(self) -> timedelta:
        """Longest ``window + hop + offset``: how far before a query time the v2 windows can reach
        (the history a spine-driven computation needs)."""
        return max(f.reach for f in self.features)

    @property
    def hops(self) -> tuple[timedelta, ...]:
        """Distinct hops of the group's windowed features, ascending (one tile layer each)."""
        return tuple(sorted({f.hop for f in self.features if not isinstance(f, Ratio)}))

    @property
    def helper_feature_names(self) -> tuple[str, ...]:
        """Features marked ``model_input=False``: stored and served, never model inputs."""
        return tuple(f.name for f in self.features if not f.model_input)

    @property
    def model_feature_names(self) -> tuple[str, ...]:
        """The features that are model inputs (helpers marked ``model_input=False`` left out)."""
        return tuple(f.name for f in self.features if f.model_input)

    @property
    def needs_labels(self) -> bool:
        return any(isinstance(f, LabelAggregate) for f in self.features)

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    def schema(self) -> dict[str, pl.DataType]:
        """Output columns and their Polars dtypes, in output order."""
        out: dict[str, pl.DataType] = {k: self.source.dtype(k) for k in self.entity.keys}
        out[EVENT_TS] = _TS_DTYPE
        for f in self.features:
            out[f.name] = f.dtype(self.source)
        return out

    # -- identity -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The canonical definition: everything that determines values, nothing that does not.

        The exchange sources are left out (every definition that predates declared sources keeps
        its version); another source, and its label source when the group uses labels, are in
        by name and schema version."""
        out: dict[str, Any] = {
            "semantics_version": SEMANTICS_VERSION,
            "name": self.name,
            "entity": self.entity.to_dict(),
            "source_event_types": sorted(set(self.source_event_types)),
            "features": sorted((f.to_dict() for f in self.features), key=lambda d: d["name"]),
            "ttl_ms": _ms(self.ttl),
        }
        if self.source != EXCHANGE_EVENTS:
            out["source"] = self.source.identity()
        if self.needs_labels and self.label_source != EXCHANGE_LABELS:
            assert self.label_source is not None
            out["label_source"] = self.label_source.identity()
        return out

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)

    @cached_property
    def version(self) -> str:
        """12 hex digits of the SHA-256 of :meth:`canonical_json`; stable across processes."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:12]

    def metadata(self) -> dict[str, Any]:
        """JSON-friendly description for Dagster asset metadata and docs."""
        return {
            "feature_group": self.name,
            "version": self.version,
            "description": self.description,
            "owner": self.owner,
            "source": self.source.name,
            **({"label_source": self.label_source.name} if self.needs_labels and self.label_source else {}),
            "entity": self.entity.name,
            "keys": list(self.entity.keys),
            "source_event_types": list(self.source_event_types),
            "windows": [format_window(w) for w in self.windows],
            "max_window": format_window(self.max_window),
            "ttl": format_window(self.ttl),
            "feature_count": len(self.features),
            "needs_labels": self.needs_labels,
            "tags": dict(self.tags),
            "columns": {name: str(dtype) for name, dtype in self.schema().items()},
            "feature_descriptions": {f.name: f.description for f in self.features if f.description},
            **({"helper_features": list(helpers)} if (helpers := self.helper_feature_names) else {}),
        }
