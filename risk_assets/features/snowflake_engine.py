"""Run the compiled feature SQL in Snowflake: the warehouse computes, only results come back.

``compute_feature_group`` executes :func:`~risk_assets.features.snowflake_sql.compile_group` on a
DB-API cursor (snowflake-connector-python; fakesnow in tests) and returns the result as a Polars
frame with the group's schema — the same frame ``batch.compute_feature_group`` returns for the same
events and labels. ``materialize_offline`` keeps the result inside Snowflake instead: it replaces the
as-of range ``[start, end)`` of the group's offline-store table (``DELETE`` by range, then
``INSERT … SELECT`` of the compiled query), so re-runs are idempotent and nothing travels.
``offline_table_name`` names that table after the group and its version (a new definition writes a
new table, as the lake's versioned paths).

No Dagster here: notebooks call these with a connector cursor.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import polars as pl

from risk_assets.features.offline_store import CREATED_TS, offline_schema
from risk_assets.features.snowflake_sql import compile_group, epoch_ms, naive_utc, quote_ident, quote_table
from risk_assets.features.spec import EVENT_TS, FeatureGroup
from risk_assets.ingest.snowflake_mirror import sql_type


def _to_frame(arrow: Any, columns: tuple[str, ...], schema: dict[str, pl.DataType]) -> pl.DataFrame:
    if arrow is None:
        return pl.DataFrame(schema=schema)
    frame = pl.from_arrow(arrow)
    assert isinstance(frame, pl.DataFrame)
    frame = frame.rename(dict(zip(frame.columns, columns, strict=True)))
    return frame.select(
        (
            pl.col(c).dt.replace_time_zone("UTC").dt.cast_time_unit("ms").cast(dt)
            if isinstance(dt, pl.Datetime)
            else pl.col(c).cast(dt)
        )
        for c, dt in schema.items()
    )


def compute_feature_group(
    cursor: Any,
    group: FeatureGroup,
    start: datetime,
    end: datetime,
    events_table: str,
    labels_table: str | None = None,
    *,
    created_ts: bool = False,
) -> pl.DataFrame:
    """``group`` for as-of times in ``[start, end)``, computed in Snowflake from the raw-event mirror
    (and the label mirror for label aggregates); rows sorted by (keys, ``event_ts``), columns of
    ``group.schema()`` (plus ``created_ts`` when asked: the offline store's layout)."""
    q = compile_group(group, events_table, start, end, labels_table, created_ts=created_ts)
    cursor.execute(q.sql, q.params)
    schema = offline_schema(group) if created_ts else group.schema()
    frame = _to_frame(cursor.fetch_arrow_all(), q.columns, schema)
    # The warehouse sorted already; re-sorting here makes the order independent of its collation.
    return frame.sort([*group.entity.keys, EVENT_TS], maintain_order=True)


def offline_table_name(group: FeatureGroup, prefix: str = "FEATURES") -> str:
    """The group's offline-store table: ``<PREFIX>_<GROUP>_<VERSION>`` (upper-case)."""
    return f"{prefix}_{group.name}_{group.version}".upper()


def create_offline_table_sql(group: FeatureGroup, table: str) -> str:
    """``CREATE TABLE IF NOT EXISTS`` with the offline store's columns (``offline_schema``)."""
    cols = ", ".join(f"{quote_ident(c)} {sql_type(t)}" for c, t in offline_schema(group).items())
    return f"CREATE TABLE IF NOT EXISTS {quote_table(table)} ({cols})"


def materialize_offline(
    cursor: Any,
    group: FeatureGroup,
    start: datetime,
    end: datetime,
    events_table: str,
    offline_table: str,
    labels_table: str | None = None,
) -> int:
    """Replace the rows of ``[start, end)`` in the Snowflake offline-store table ``offline_table``
    with ``group`` computed in the warehouse (nothing leaves it). Returns the rows inserted."""
    q = compile_group(group, events_table, start, end, labels_table, created_ts=True)
    table = quote_table(offline_table)
    cols = ", ".join(quote_ident(c) for c in q.columns)
    ts = quote_ident(EVENT_TS)
    cursor.execute(create_offline_table_sql(group, offline_table))
    cursor.execute(
        f"DELETE FROM {table} WHERE {ts} >= %s AND {ts} < %s",
        (naive_utc(epoch_ms(start)), naive_utc(epoch_ms(end))),
    )
    cursor.execute(f"INSERT INTO {table} ({cols}) {q.sql}", q.params)
    cursor.execute(
        f"SELECT COUNT(*) FROM {table} WHERE {ts} >= %s AND {ts} < %s",
        (naive_utc(epoch_ms(start)), naive_utc(epoch_ms(end))),
    )
    return int(cursor.fetchone()[0])


def read_offline(
    cursor: Any, group: FeatureGroup, offline_table: str, start: datetime, end: datetime
) -> pl.DataFrame:
    """The offline-store rows of ``[start, end)`` from the Snowflake table, in the lake's layout."""
    schema = offline_schema(group)
    ts = quote_ident(EVENT_TS)
    cursor.execute(
        f"SELECT {', '.join(quote_ident(c) for c in schema)} FROM {quote_table(offline_table)} "
        f"WHERE {ts} >= %s AND {ts} < %s",
        (naive_utc(epoch_ms(start)), naive_utc(epoch_ms(end))),
    )
    frame = _to_frame(cursor.fetch_arrow_all(), tuple(schema), schema)
    return frame.sort([*group.entity.keys, EVENT_TS], maintain_order=True)


__all__ = [
    "CREATED_TS",
    "compute_feature_group",
    "create_offline_table_sql",
    "materialize_offline",
    "offline_table_name",
    "read_offline",
]
