"""Declared sources: the events and labels a team brings, described in one place.

A :class:`EventSource` says what a stream of events looks like and where it lives: its columns and
their Polars types, the event-time column, the unique id column, an optional ingestion-time column,
an optional event-type column with its allowed values, the lake archive dataset, the Kafka topic,
the Snowflake table, and a schema version. A :class:`LabelSource` does the same for fraud labels and
says which events they condemn: the label column holding the labelled event's id (``key``), the time
from which a label is known (``timestamp``) and an optional type column.

Feature groups (:mod:`risk_assets.features.spec`) take a source and check their entity keys,
filters, columns and event types against it; the batch engine reads the source's columns, time
and id columns; label aggregates join the group's label source on its key.

The exchange simulator's events and labels are two declared sources among others:
:data:`EXCHANGE_EVENTS` and :data:`EXCHANGE_LABELS` (the archive layouts of ``raw_events`` and
``raw_labels``, unchanged). See ``docs/sources.md`` for declaring a new one.

Pure declarations: no Dagster, no I/O, nothing resolved from the environment.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from risk_assets.events.schema import (
    ARCHIVE_EVENT_COLUMNS,
    ARCHIVE_LABEL_COLUMNS,
    EVENT_TYPES,
    SCHEMA_VERSION,
    LabelType,
)
from risk_assets.names import EVENTS_TOPIC, LABELS_TOPIC, RAW_EVENTS, RAW_LABELS

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_TS_DTYPE = pl.Datetime("ms", "UTC")
_SUPPORTED = "String, Boolean, integer, float or Datetime"

Columns = tuple[tuple[str, pl.DataType], ...]


def _check_name(name: str, what: str) -> None:
    if not _NAME.match(name) or keyword.iskeyword(name):
        raise ValueError(f"{what} name {name!r} must be snake_case ([a-z][a-z0-9_]*, ≤ 63 chars)")


def _columns(owner: str, columns: Mapping[str, Any] | Columns) -> Columns:
    items = list(columns.items()) if isinstance(columns, Mapping) else list(columns)
    if not items:
        raise ValueError(f"source {owner}: needs columns")
    out = []
    seen = set()
    for name, dtype in items:
        if not isinstance(name, str) or not _COLUMN.match(name):
            raise ValueError(f"source {owner}: bad column name {name!r}")
        if name in seen:
            raise ValueError(f"source {owner}: duplicate column {name!r}")
        seen.add(name)
        dt = dtype() if isinstance(dtype, type) else dtype  # pl.String → pl.String()
        if not isinstance(dt, pl.DataType):
            raise ValueError(f"source {owner}: column {name!r} needs a Polars dtype, got {dtype!r}")
        if not (dt == pl.String or dt == pl.Boolean or dt.is_numeric() or isinstance(dt, pl.Datetime)):
            raise ValueError(f"source {owner}: column {name!r} has dtype {dt}; supported: {_SUPPORTED}")
        out.append((name, dt))
    return tuple(out)


def _need(owner: str, schema: Mapping[str, pl.DataType], column: str, what: str, kind: str) -> None:
    if column not in schema:
        raise ValueError(f"source {owner}: {what} column {column!r} is not one of its columns")
    dt = schema[column]
    ok = {
        "time": isinstance(dt, pl.Datetime),
        "text": dt == pl.String,
        "id": dt == pl.String or dt.is_integer(),
    }[kind]
    if not ok:
        raise ValueError(f"source {owner}: {what} column {column!r} has the wrong dtype {dt}")


def _check_required(
    owner: str, schema: Mapping[str, pl.DataType], required: tuple[str, ...], ingestion: str | None
) -> None:
    for c in required:
        if c not in schema or c == ingestion:
            raise ValueError(f"source {owner}: required column {c!r} is not one of its payload columns")


def _check_time_dtype(owner: str, schema: Mapping[str, pl.DataType], column: str) -> None:
    if schema[column] != _TS_DTYPE:
        raise ValueError(
            f"source {owner}: time column {column!r} must be Datetime('ms', 'UTC') (integer "
            f"milliseconds, the engines' time unit), got {schema[column]}"
        )


def _check_times(
    owner: str,
    schema: Mapping[str, pl.DataType],
    timestamp: str,
    ingestion_timestamp: str | None,
    required: tuple[str, ...],
) -> None:
    """The checks every declared source shares: required fields, its time columns."""
    _check_required(owner, schema, required, ingestion_timestamp)
    _need(owner, schema, timestamp, "timestamp", "time")
    _check_time_dtype(owner, schema, timestamp)
    if ingestion_timestamp is not None:
        _need(owner, schema, ingestion_timestamp, "ingestion-time", "time")
        _check_time_dtype(owner, schema, ingestion_timestamp)


def _check_kinds(
    owner: str,
    schema: Mapping[str, pl.DataType],
    column: str | None,
    values: tuple[str, ...],
    fields: tuple[str, str, str],
) -> None:
    """A kind column (event type, label type) and its allowed values: both or neither.
    ``fields``: the column's field name, the values' field name, the role in messages."""
    column_field, values_field, role = fields
    if column is None:
        if values:
            raise ValueError(f"source {owner}: {values_field} need a {column_field} to be declared")
        return
    _need(owner, schema, column, role, "text")
    if not values or len(set(values)) != len(values):
        raise ValueError(f"source {owner}: {values_field} must be non-empty and distinct")


def _check_schema_version(owner: str, version: object) -> None:
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValueError(f"source {owner}: schema_version must be an integer")
    if version < 1:
        raise ValueError(f"source {owner}: schema_version must be ≥ 1")


@dataclass(frozen=True)
class EventSource:
    """A declared stream of events (see the module docstring).

    ``columns`` maps every column to its Polars dtype (a mapping is accepted and kept in order).
    ``event_type_column`` (optional, String) with ``event_types`` (its allowed values) lets feature
    groups pick some types of events; without it a group sees every event of the source.
    ``archive_dataset``, ``topic`` and ``snowflake_table`` say where the data lives (any may be
    ``None`` for a source that is only, say, a lake dataset or a frame in a notebook).
    """

    name: str
    columns: Columns
    timestamp: str
    id_column: str
    ingestion_timestamp: str | None = None
    event_type_column: str | None = None
    event_types: tuple[str, ...] = ()
    archive_dataset: str | None = None
    topic: str | None = None
    snowflake_table: str | None = None
    schema_version: int = 1
    required: tuple[str, ...] = ()
    """Payload fields that must be present and non-null besides the time, id and event-type
    columns (the rest may be missing or null)."""
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        _check_name(self.name, "source")
        object.__setattr__(self, "columns", _columns(self.name, self.columns))
        object.__setattr__(self, "event_types", tuple(self.event_types))
        object.__setattr__(self, "required", tuple(self.required))
        schema = self.schema
        _check_times(self.name, schema, self.timestamp, self.ingestion_timestamp, self.required)
        _need(self.name, schema, self.id_column, "id", "id")
        _check_kinds(
            self.name,
            schema,
            self.event_type_column,
            self.event_types,
            ("event_type_column", "event_types", "event-type"),
        )
        _check_schema_version(self.name, self.schema_version)

    @property
    def schema(self) -> dict[str, pl.DataType]:
        """Column name → Polars dtype, in declaration order."""
        return dict(self.columns)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c for c, _ in self.columns)

    def dtype(self, column: str) -> pl.DataType:
        """The dtype of ``column``; a clear error naming the source when it has no such column."""
        for c, dt in self.columns:
            if c == column:
                return dt
        raise ValueError(f"{column!r} is not a column of source {self.name}")

    @property
    def reserved_columns(self) -> tuple[str, ...]:
        """Columns that are not attributes of an event (time, arrival time, id)."""
        return tuple(c for c in (self.timestamp, self.ingestion_timestamp, self.id_column) if c)

    def identity(self) -> dict[str, Any]:
        """What a feature group's version records of its source: name and schema version."""
        return {"name": self.name, "schema_version": self.schema_version}

    def metadata(self) -> dict[str, Any]:
        """JSON-friendly description (Dagster metadata, docs)."""
        return {
            "source": self.name,
            "schema_version": self.schema_version,
            "timestamp": self.timestamp,
            "id_column": self.id_column,
            "ingestion_timestamp": self.ingestion_timestamp,
            "event_type_column": self.event_type_column,
            "event_types": list(self.event_types),
            "archive_dataset": self.archive_dataset,
            "topic": self.topic,
            "snowflake_table": self.snowflake_table,
            "columns": {c: str(dt) for c, dt in self.columns},
        }


@dataclass(frozen=True)
class LabelSource:
    """A declared stream of fraud labels for the events of the source named ``events``.

    ``key`` is the label column holding the id of the labelled event (joined to the event
    source's ``id_column``); ``timestamp`` is when the label became known (the only label time a
    delayed label aggregate uses); ``type_column`` (optional) with ``label_types`` names kinds of
    labels (chargeback, report, …) that label filters may pick.
    """

    name: str
    events: str
    columns: Columns
    key: str
    timestamp: str
    type_column: str | None = None
    label_types: tuple[str, ...] = ()
    ingestion_timestamp: str | None = None
    id_column: str | None = None
    """A unique id of each label (needed to archive labels from a topic: duplicates are dropped)."""
    archive_dataset: str | None = None
    topic: str | None = None
    snowflake_table: str | None = None
    schema_version: int = 1
    required: tuple[str, ...] = ()
    """Payload fields that must be present and non-null besides the key, time, id and type columns."""
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        _check_name(self.name, "label source")
        _check_name(self.events, "event source")
        object.__setattr__(self, "columns", _columns(self.name, self.columns))
        object.__setattr__(self, "label_types", tuple(self.label_types))
        object.__setattr__(self, "required", tuple(self.required))
        schema = self.schema
        if self.id_column is not None:
            _need(self.name, schema, self.id_column, "id", "id")
        _need(self.name, schema, self.key, "key", "id")
        _check_times(self.name, schema, self.timestamp, self.ingestion_timestamp, self.required)
        _check_kinds(
            self.name,
            schema,
            self.type_column,
            self.label_types,
            ("type_column", "label_types", "label-type"),
        )
        _check_schema_version(self.name, self.schema_version)

    @property
    def schema(self) -> dict[str, pl.DataType]:
        return dict(self.columns)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c for c, _ in self.columns)

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "schema_version": self.schema_version}

    def metadata(self) -> dict[str, Any]:
        return {
            "label_source": self.name,
            "events": self.events,
            "schema_version": self.schema_version,
            "key": self.key,
            "timestamp": self.timestamp,
            "type_column": self.type_column,
            "label_types": list(self.label_types),
            "archive_dataset": self.archive_dataset,
            "topic": self.topic,
            "snowflake_table": self.snowflake_table,
            "columns": {c: str(dt) for c, dt in self.columns},
        }


EXCHANGE_EVENTS = EventSource(
    name="exchange_events",
    columns=ARCHIVE_EVENT_COLUMNS,
    timestamp="event_ts",
    id_column="event_id",
    ingestion_timestamp="ingest_ts",
    event_type_column="event_type",
    event_types=EVENT_TYPES,
    archive_dataset=RAW_EVENTS,
    topic=EVENTS_TOPIC,
    snowflake_table="RAW_EVENTS",
    schema_version=SCHEMA_VERSION,
    description="The exchange's events (simulator or production): logins, security changes, "
    "deposits, withdrawals, card payments, P2P trades — the raw_events archive layout.",
)
"""The exchange events: the ``raw_events`` archive layout, topic ``risk.events``."""

EXCHANGE_LABELS = LabelSource(
    name="exchange_labels",
    events=EXCHANGE_EVENTS.name,
    columns=ARCHIVE_LABEL_COLUMNS,
    key="event_id",
    timestamp="label_ts",
    type_column="label_type",
    label_types=LabelType.__args__,  # type: ignore[attr-defined]
    ingestion_timestamp="ingest_ts",
    id_column="label_id",
    archive_dataset=RAW_LABELS,
    topic=LABELS_TOPIC,
    schema_version=SCHEMA_VERSION,
    description="Chargebacks and confirmed fraud reports for exchange events, keyed on event_id.",
)
"""The exchange labels: the ``raw_labels`` archive layout, topic ``risk.labels``."""

EVENT_SOURCES: dict[str, EventSource] = {EXCHANGE_EVENTS.name: EXCHANGE_EVENTS}
"""The event sources this code location ships (the exchange); teams declare theirs beside it."""
LABEL_SOURCES: dict[str, LabelSource] = {EXCHANGE_LABELS.name: EXCHANGE_LABELS}
