"""Data quality of feature-group days: per-day figures, schema conformance, null shares vs history.

Pure Polars (no Dagster). The batch feature asset reports :func:`day_figures` per partition (so a
ranged backfill still leaves each day its own numbers) and turns :func:`schema_problems` and
:func:`null_share_shifts` into asset checks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

import polars as pl

from risk_assets.features.spec import FeatureGroup

NULL_SHARE_TOLERANCE = 0.10
"""A feature's null share may move this much (absolute) from its history before the check warns."""


@dataclass(frozen=True)
class DayFigures:
    """One feature-group day: what an analyst plots across partitions."""

    rows: int
    entities: int
    null_share: float
    """Mean over the group's features of each feature's share of null values (0 on an empty day)."""
    null_shares: dict[str, float]
    """Per feature: its share of null values that day (empty on an empty day)."""


def null_shares(group: FeatureGroup, frame: pl.DataFrame | pl.LazyFrame) -> tuple[int, dict[str, float]]:
    """(rows, per-feature null share) of a frame of the group's rows (``{}`` when it has no rows)."""
    features = list(group.feature_names)
    stats = frame.lazy().select(pl.len().alias("_n"), *[pl.col(f).null_count() for f in features]).collect()
    n = int(stats["_n"][0])
    if n == 0:
        return 0, {}
    return n, {f: int(stats[f][0]) / n for f in features}


def day_figures(
    group: FeatureGroup, rows: pl.DataFrame, days: Iterable[datetime]
) -> dict[datetime, DayFigures]:
    """Per UTC day of ``days``: rows, distinct entities and null shares of the group's ``rows``."""
    keys = list(group.entity.keys)
    tagged = rows.with_columns(pl.col("event_ts").dt.truncate("1d").alias("_day"))
    parts = tagged.partition_by("_day", as_dict=True, include_key=False) if rows.height else {}
    out = {}
    for day in days:
        frame = parts.get((day,))
        if frame is None or frame.height == 0:
            out[day] = DayFigures(0, 0, 0.0, {})
            continue
        n, shares = null_shares(group, frame)
        out[day] = DayFigures(n, frame.select(keys).n_unique(), sum(shares.values()) / len(shares), shares)
    return out


def schema_problems(group: FeatureGroup, schema: Mapping[str, pl.DataType]) -> list[str]:
    """Differences between a written frame's schema and the group's definition (empty: conforms)."""
    expected = dict(group.schema())
    problems = [f"missing column {c}" for c in expected if c not in schema]
    problems += [f"unexpected column {c}" for c in schema if c not in expected and c != "created_ts"]
    problems += [
        f"{c}: {schema[c]} instead of {dtype}"
        for c, dtype in expected.items()
        if c in schema and schema[c] != dtype
    ]
    return problems


def null_share_shifts(
    current: Mapping[str, float], history: Mapping[str, float], tolerance: float = NULL_SHARE_TOLERANCE
) -> dict[str, tuple[float, float]]:
    """Features whose null share moved more than ``tolerance`` from history: ``{feature: (history,
    current)}``. Features without history (a new group, the first days) are not judged."""
    return {
        f: (history[f], share)
        for f, share in current.items()
        if f in history and abs(share - history[f]) > tolerance
    }
