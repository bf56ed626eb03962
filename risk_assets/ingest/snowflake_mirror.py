"""The raw-event archive mirrored in Snowflake, for batch features computed next to the warehouse.

``write_hours`` replaces a range of hours in the table (DELETE by time range, then INSERT in
batches: the same rows for the same hours, so re-runs are idempotent). ``read_events`` selects a time
range as Arrow and hands it to Polars. Values always travel as bind parameters; the only text spliced
into SQL is the table name, which must be a plain (optionally dotted) identifier.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import polars as pl

from risk_assets.events.schema import ARCHIVE_EVENT_COLUMNS

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*){0,2}$")
INSERT_BATCH = 5_000

_SQL_TYPES = {
    pl.String: "VARCHAR",
    pl.Boolean: "BOOLEAN",
    pl.Float64: "DOUBLE",
    pl.Int16: "NUMBER(5,0)",
    pl.Int64: "NUMBER(19,0)",
}


def _table(name: str) -> str:
    if not _IDENT.match(name):
        raise ValueError(f"not a plain Snowflake identifier: {name!r}")
    return name.upper()


def _sql_type(dtype: pl.DataType) -> str:
    if isinstance(dtype, pl.Datetime):
        return "TIMESTAMP_NTZ(3)"  # UTC wall time; Snowflake NTZ carries no zone
    return _SQL_TYPES[type(dtype)] if type(dtype) in _SQL_TYPES else _SQL_TYPES[dtype]


def create_table_sql(table: str) -> str:
    """``CREATE TABLE IF NOT EXISTS`` for the archive layout."""
    cols = ", ".join(f"{c.upper()} {_sql_type(t)}" for c, t in ARCHIVE_EVENT_COLUMNS.items())
    return f"CREATE TABLE IF NOT EXISTS {_table(table)} ({cols})"


def _naive_utc(ts: datetime) -> datetime:
    return ts.astimezone(UTC).replace(tzinfo=None)


def write_hours(cursor: Any, table: str, events: pl.DataFrame, start: datetime, end: datetime) -> int:
    """Replace the rows with ``event_ts`` in ``[start, end)`` by ``events`` (archive layout)."""
    name = _table(table)
    cursor.execute(create_table_sql(table))
    cursor.execute(
        f"DELETE FROM {name} WHERE EVENT_TS >= %s AND EVENT_TS < %s", (_naive_utc(start), _naive_utc(end))
    )
    cols = list(ARCHIVE_EVENT_COLUMNS)
    frame = events.select(cols).with_columns(
        pl.col(c).dt.replace_time_zone(None)
        for c, t in ARCHIVE_EVENT_COLUMNS.items()
        if isinstance(t, pl.Datetime)
    )
    placeholders = ", ".join(["%s"] * len(cols))
    sql = f"INSERT INTO {name} ({', '.join(c.upper() for c in cols)}) VALUES ({placeholders})"
    rows = frame.rows()
    for i in range(0, len(rows), INSERT_BATCH):
        cursor.executemany(sql, rows[i : i + INSERT_BATCH])
    return len(rows)


def read_events(
    cursor: Any, table: str, start: datetime, end: datetime, columns: Sequence[str] | None = None
) -> pl.DataFrame:
    """Events with ``event_ts`` in ``[start, end)`` as a Polars frame in the archive layout, each
    ``event_id`` once (the first-arrived copy, as ``raw_reader.read_events``)."""
    wanted = list(columns or ARCHIVE_EVENT_COLUMNS)
    cols = wanted + [c for c in ("event_id", "ingest_ts") if c not in wanted]
    unknown = set(cols) - set(ARCHIVE_EVENT_COLUMNS)
    if unknown:
        raise ValueError(f"unknown archive columns: {sorted(unknown)}")
    cursor.execute(
        f"SELECT {', '.join(c.upper() for c in cols)} FROM {_table(table)} "
        "WHERE EVENT_TS >= %s AND EVENT_TS < %s",
        (_naive_utc(start), _naive_utc(end)),
    )
    arrow = cursor.fetch_arrow_all()
    if arrow is None:
        return pl.DataFrame(schema={c: ARCHIVE_EVENT_COLUMNS[c] for c in wanted})
    frame = pl.from_arrow(arrow).rename({c.upper(): c for c in cols})
    frame = frame.select(
        (
            pl.col(c).dt.replace_time_zone("UTC").dt.cast_time_unit("ms")
            if isinstance(ARCHIVE_EVENT_COLUMNS[c], pl.Datetime)
            else pl.col(c).cast(ARCHIVE_EVENT_COLUMNS[c])
        )
        for c in cols
    )
    return frame.filter(pl.col("ingest_ts").rank("ordinal").over("event_id") == 1).select(wanted)
