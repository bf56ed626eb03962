"""Raw events and labels of a time range, read back from the hourly archive (pure, no Dagster).

The archive is partitioned by *arrival-adjusted* hour (``partitioning``): very late records land in
a later hour than their event time. A reader wanting every event of ``[start, end)`` therefore
reads ``LATE_READ`` further and filters on event time. Mobile clients can be offline for a day and a
half; events later than this are archived but not seen by these readers (docs/features.md).

The archive deduplicates by id within an hour only: a producer's resend that arrives after the grace
period lands in a later hour than the first copy. Readers therefore deduplicate across hours
(:func:`first_copies`: the copy that arrived first wins, as within an hour), so batch features never
count a resent event twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Protocol

import polars as pl

from risk_assets.ingest.archive import EVENTS, LABELS, archive_spec, read_archive
from risk_assets.ingest.partitioning import GRACE, archive_hours
from risk_assets.lake import Lake
from risk_assets.sources import EventSource, LabelSource

LATE_READ = timedelta(days=2)


class RawDataSource(Protocol):
    """Where raw events and labels are read from: the lake archive or a warehouse mirror.

    ``RawEventSource`` (the Dagster resource) implements it; pure code that needs raw data takes a
    ``RawDataSource`` so that it runs the same in a notebook.
    """

    def events(
        self, lake: Lake, start: datetime, end: datetime, columns: Sequence[str] | None = None
    ) -> pl.DataFrame:
        """Every valid event with ``event_ts`` in ``[start, end)`` (``columns`` only)."""
        ...

    def labels(self, lake: Lake, start: datetime, end: datetime) -> pl.DataFrame:
        """Every fraud label with ``label_ts`` in ``[start, end)``."""
        ...


def first_copies(frame: pl.LazyFrame, id_column: str, ingest_column: str = "ingest_ts") -> pl.LazyFrame:
    """One row per id: the copy with the earliest arrival (``ingest_ts``; two copies of one id never
    share an arrival time across hours: the hour is a function of it); row order is kept."""
    return frame.filter(pl.col(ingest_column).rank("ordinal").over(id_column) == 1)


def read_events(
    lake: Lake, start: datetime, end: datetime, columns: Sequence[str] | None = None
) -> pl.DataFrame:
    """Every valid archived event with ``event_ts`` in ``[start, end)`` (``columns`` only), each
    ``event_id`` once (resends in later archive hours removed)."""
    frame = read_archive(lake, EVENTS.dataset, archive_hours(start, end + GRACE + LATE_READ))
    frame = first_copies(frame.filter((pl.col("event_ts") >= start) & (pl.col("event_ts") < end)), "event_id")
    return (frame.select(list(columns)) if columns else frame).collect()


def read_labels(lake: Lake, start: datetime, end: datetime) -> pl.DataFrame:
    """Every archived fraud label with ``label_ts`` in ``[start, end)``, each ``label_id`` once."""
    frame = read_archive(lake, LABELS.dataset, archive_hours(start, end + GRACE + LATE_READ))
    frame = frame.filter((pl.col("label_ts") >= start) & (pl.col("label_ts") < end))
    return first_copies(frame, "label_id").collect()


def read_source(
    lake: Lake,
    source: EventSource | LabelSource,
    start: datetime,
    end: datetime,
    columns: Sequence[str] | None = None,
) -> pl.DataFrame:
    """Every archived record of a declared source (events or labels, ``archive_spec(source)``)
    with its time column in ``[start, end)``, each id once — the same reading rule as
    :func:`read_events` (late hours read, resends removed) for any source."""
    spec = archive_spec(source)
    frame = read_archive(lake, spec.dataset, archive_hours(start, end + GRACE + LATE_READ), spec.columns)
    ts = pl.col(spec.time_column)
    frame = first_copies(frame.filter((ts >= start) & (ts < end)), spec.id_column, spec.ingest_column)
    return (frame.select(list(columns)) if columns else frame).collect()
