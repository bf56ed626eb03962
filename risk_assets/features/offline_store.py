"""The offline feature store: full history of every feature group in the lake, as Parquet.

Layout (one object per group, version and UTC day, written whole and replaced whole)::

    features/{group}/v={version}/dt=YYYY-MM-DD/part-00000.parquet

One row per (entity key, as-of ``event_ts``) with the group's feature columns and ``created_ts``: the
time the value could first be known — the arrival (``ingest_ts``) of the latest-arriving group event
of that entity at that ``event_ts``. Point-in-time joins use it to refuse values that did not exist
yet at a training example's time. A new version of a group lives beside the old one (``v=``), so a
changed definition never mixes with history computed under the old one.

The stream path writes its own log (``feature_log/…``, see ``ingestion.py``); readers choose.
Everything here is plain Polars on a ``Lake``: the same calls work from a notebook.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl

from risk_assets.features.spec import FeatureGroup
from risk_assets.lake import Lake

DATASET = "features"
CREATED_TS = "created_ts"
DAY = timedelta(days=1)
PART = "part-00000.parquet"


def group_prefix(group: FeatureGroup) -> str:
    """``features/{group}/v={version}``: every day of one version of one group."""
    return f"{DATASET}/{group.name}/v={group.version}"


def day_part_path(group: FeatureGroup, day: datetime) -> str:
    """Relative lake path of one day of a group."""
    return f"{group_prefix(group)}/dt={day:%Y-%m-%d}/{PART}"


def offline_schema(group: FeatureGroup) -> dict[str, pl.DataType]:
    """Columns of the offline store of ``group``: its feature schema plus ``created_ts``."""
    return {**group.schema(), CREATED_TS: pl.Datetime("ms", "UTC")}


def with_created_ts(
    rows: pl.DataFrame, group: FeatureGroup, events: pl.DataFrame | pl.LazyFrame
) -> pl.DataFrame:
    """Add ``created_ts`` to feature rows: the latest arrival time (the source's ingestion-time
    column, ``ingest_ts`` for the exchange) among the group's events of that entity at that
    ``event_ts`` (the moment the row's triggering events had all arrived). A source that declares
    no ingestion time gives null ``created_ts`` (point-in-time joins then take the event time)."""
    src = group.source
    keys = list(group.entity.keys)
    lf = events.lazy()
    if src.event_type_column is not None:
        lf = lf.filter(pl.col(src.event_type_column).is_in(list(group.source_event_types)))
    arrival = (
        pl.col(src.ingestion_timestamp).max()
        if src.ingestion_timestamp is not None
        else pl.lit(None, dtype=pl.Datetime("ms", "UTC")).first()
    )
    arrivals = lf.group_by([*keys, pl.col(src.timestamp).alias("event_ts")]).agg(
        arrival.cast(pl.Datetime("ms", "UTC")).alias(CREATED_TS)
    )
    out = rows.lazy().join(arrivals, on=[*keys, "event_ts"], how="left", nulls_equal=False)
    return out.select(list(offline_schema(group))).collect()


def days_of(start: datetime, end: datetime) -> list[datetime]:
    """UTC day starts covering ``[start, end)``."""
    day = start.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    out = []
    while day < end:
        out.append(day)
        day += DAY
    return out


def write_days(
    lake: Lake, group: FeatureGroup, rows: pl.DataFrame, days: list[datetime]
) -> dict[datetime, int]:
    """Replace each of ``days`` of ``group`` with its rows from ``rows`` (an empty day is written too,
    so a re-run that finds nothing clears what an earlier run wrote). Returns rows per day."""
    schema = offline_schema(group)
    rows = rows.select(list(schema)).sort([*group.entity.keys, "event_ts"])
    by_day = rows.with_columns(pl.col("event_ts").dt.truncate("1d").alias("_day")).partition_by(
        "_day", as_dict=True, include_key=False
    )
    counts = {}
    for day in days:
        frame = by_day.get((day,), pl.DataFrame(schema=schema))
        lake.write_parquet(frame, day_part_path(group, day))
        counts[day] = frame.height
    return counts


def read_offline(
    lake: Lake, group: FeatureGroup, start: datetime | None = None, end: datetime | None = None
) -> pl.LazyFrame:
    """Lazily read a group's offline history, optionally only as-of times in ``[start, end)``."""
    paths = [p for p in lake.list(group_prefix(group)) if p.endswith(PART)]
    if start is not None or end is not None:
        lo = start.astimezone(UTC).strftime("%Y-%m-%d") if start else "0000-00-00"
        hi = end.astimezone(UTC).strftime("%Y-%m-%d") if end else "9999-99-99"
        paths = [p for p in paths if lo <= p.split("dt=")[1][:10] <= hi]
    frame = lake.scan(paths, schema=offline_schema(group))
    if start is not None:
        frame = frame.filter(pl.col("event_ts") >= start)
    if end is not None:
        frame = frame.filter(pl.col("event_ts") < end)
    return frame
