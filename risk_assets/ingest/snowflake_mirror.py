"""The raw-event archive mirrored in Snowflake, for batch features computed next to the warehouse.

Every function takes the declared ``source`` (:mod:`risk_assets.sources`) whose layout the table
holds: the exchange events by default, any declared event source otherwise (its columns, time, id
and ingestion-time columns).

``write_hours`` replaces a range of hours in the table (DELETE by time range, then INSERT … SELECT
from a bound JSON array in batches: the same rows for the same hours, so re-runs are idempotent).
``read_events`` selects a time range as Arrow and hands it to Polars. Values always travel as bind
parameters; the only text spliced into SQL is the table name, which must be a plain (optionally
dotted) identifier, and column names, which must be plain snake_case names.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import polars as pl

from risk_assets.sources import EXCHANGE_EVENTS, EventSource, LabelSource

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*){0,2}$")
INSERT_BATCH = 5_000

_SQL_TYPES = {
    pl.String: "VARCHAR",
    pl.Boolean: "BOOLEAN",
    pl.Float64: "DOUBLE",
    pl.Float32: "FLOAT",
    pl.Int8: "NUMBER(3,0)",
    pl.Int16: "NUMBER(5,0)",
    pl.Int32: "NUMBER(10,0)",
    pl.Int64: "NUMBER(19,0)",
    pl.UInt8: "NUMBER(3,0)",
    pl.UInt16: "NUMBER(5,0)",
    pl.UInt32: "NUMBER(10,0)",
    pl.UInt64: "NUMBER(20,0)",
}


def _table(name: str) -> str:
    if not _IDENT.match(name):
        raise ValueError(f"not a plain Snowflake identifier: {name!r}")
    return name.upper()


def sql_type(dtype: pl.DataType) -> str:
    if isinstance(dtype, pl.Datetime):
        return "TIMESTAMP_NTZ(3)"  # UTC wall time; Snowflake NTZ carries no zone
    return _SQL_TYPES[type(dtype)] if type(dtype) in _SQL_TYPES else _SQL_TYPES[dtype]


def create_table_sql(table: str, source: EventSource | LabelSource = EXCHANGE_EVENTS) -> str:
    """``CREATE TABLE IF NOT EXISTS`` for the source's archive layout."""
    cols = ", ".join(f"{c.upper()} {sql_type(t)}" for c, t in source.columns)
    return f"CREATE TABLE IF NOT EXISTS {_table(table)} ({cols})"


def _field(name: str) -> str:
    """A JSON field name in a path expression (``value:name``): a plain lower-case identifier."""
    if not re.match(r"^[a-z_][a-z0-9_]*$", name):
        raise ValueError(f"not a plain column name: {name!r}")
    return name


def _naive_utc(ts: datetime) -> datetime:
    return ts.astimezone(UTC).replace(tzinfo=None)


def write_hours(
    cursor: Any,
    table: str,
    events: pl.DataFrame,
    start: datetime,
    end: datetime,
    source: EventSource | LabelSource = EXCHANGE_EVENTS,
    batch_rows: int = INSERT_BATCH,
) -> int:
    """Replace the rows with event time in ``[start, end)`` by ``events`` (the source's layout; a
    label source's layout mirrors labels by ``label_ts`` the same way), ``batch_rows`` rows per
    INSERT statement."""
    name = _table(table)
    ts = _table(source.timestamp)  # a column name is spliced too: it must be a plain identifier
    cursor.execute(create_table_sql(table, source))
    cursor.execute(f"DELETE FROM {name} WHERE {ts} >= %s AND {ts} < %s", (_naive_utc(start), _naive_utc(end)))
    cols = list(source.column_names)
    # One JSON array per batch, bound as a single parameter and unpacked in the warehouse
    # (FLATTEN + typed casts): one statement per batch instead of a multi-row VALUES list, which the
    # fakesnow server parses at ~100 rows/s and which real Snowflake also handles slower.
    frame = events.select(cols).with_columns(
        pl.col(c).dt.replace_time_zone(None).dt.strftime("%Y-%m-%dT%H:%M:%S%.3f")
        for c, t in source.columns
        if isinstance(t, pl.Datetime)
    )
    fields = ", ".join(f"f.value:{_field(c)}::{sql_type(t)}" for c, t in source.columns)
    sql = (
        f"INSERT INTO {name} ({', '.join(_table(c) for c in cols)}) "
        f"SELECT {fields} FROM TABLE(FLATTEN(INPUT => PARSE_JSON(%s))) f"
    )
    for i in range(0, frame.height, batch_rows):
        cursor.execute(sql, (frame.slice(i, batch_rows).write_json(),))
    rows = frame
    return rows.height


def read_events(
    cursor: Any,
    table: str,
    start: datetime,
    end: datetime,
    columns: Sequence[str] | None = None,
    source: EventSource = EXCHANGE_EVENTS,
) -> pl.DataFrame:
    """Events with event time in ``[start, end)`` as a Polars frame in the source's layout, each id
    once (the first-arrived copy, as ``raw_reader.read_events``; a source without an ingestion-time
    column: the first row read)."""
    layout = source.schema
    wanted = list(columns or layout)
    arrival = [source.ingestion_timestamp] if source.ingestion_timestamp else []
    cols = wanted + [c for c in (source.id_column, *arrival) if c not in wanted]
    unknown = set(cols) - set(layout)
    if unknown:
        raise ValueError(f"unknown columns of source {source.name}: {sorted(unknown)}")
    ts = _table(source.timestamp)
    cursor.execute(
        f"SELECT {', '.join(_table(c) for c in cols)} FROM {_table(table)} WHERE {ts} >= %s AND {ts} < %s",
        (_naive_utc(start), _naive_utc(end)),
    )
    arrow = cursor.fetch_arrow_all()
    if arrow is None:
        return pl.DataFrame(schema={c: layout[c] for c in wanted})
    frame = pl.from_arrow(arrow).rename({c.upper(): c for c in cols})
    frame = frame.select(
        (
            pl.col(c).dt.replace_time_zone("UTC").dt.cast_time_unit("ms")
            if isinstance(layout[c], pl.Datetime)
            else pl.col(c).cast(layout[c])
        )
        for c in cols
    )
    first = pl.col(arrival[0]).rank("ordinal") if arrival else pl.int_range(pl.len())
    return frame.filter(first.over(source.id_column) == (1 if arrival else 0)).select(wanted)
