"""The exact physical layout of the raw archives, shared by every writer.

Both the Kafka → archive assets and the simulator's ``history`` mode write through these functions,
so an hour written either way has the same columns, types, order and bytes for the same records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

import polars as pl

from risk_assets.events.schema import ARCHIVE_EVENT_COLUMNS, ARCHIVE_LABEL_COLUMNS
from risk_assets.lake import hive_hour_path
from risk_assets.names import RAW_EVENTS, RAW_LABELS

PART_FILE = "part-00000.parquet"

_LAYOUTS: dict[str, tuple[dict[str, pl.DataType], tuple[str, ...]]] = {
    RAW_EVENTS: (ARCHIVE_EVENT_COLUMNS, ("event_ts", "event_id")),
    RAW_LABELS: (ARCHIVE_LABEL_COLUMNS, ("label_ts", "label_id")),
}


def archive_columns(dataset: str) -> dict[str, pl.DataType]:
    """Column names and types of an archive dataset (``raw_events`` or ``raw_labels``)."""
    return _LAYOUTS[dataset][0]


def to_archive_frame(frame: pl.DataFrame, dataset: str) -> pl.DataFrame:
    """Cast, order and sort ``frame`` into the archive layout of ``dataset``.

    Missing optional columns become nulls; extra columns are dropped; rows are sorted by
    (time, id) so that the same records always produce the same bytes.
    """
    columns, sort_keys = _LAYOUTS[dataset]
    return to_layout(frame, columns, sort_keys)


def to_layout(
    frame: pl.DataFrame, columns: Mapping[str, pl.DataType], sort_keys: Sequence[str]
) -> pl.DataFrame:
    """:func:`to_archive_frame` for any layout (a declared source's archive: its columns, sorted by
    its time and id columns)."""
    exprs = [
        (pl.col(name) if name in frame.columns else pl.lit(None)).cast(dtype).alias(name)
        for name, dtype in columns.items()
    ]
    return frame.select(exprs).sort(list(sort_keys))


def archive_part_path(dataset: str, hour: datetime) -> str:
    """Relative lake path of the one Parquet object holding ``dataset`` for ``hour``."""
    return f"{hive_hour_path(dataset, hour)}/{PART_FILE}"
