"""Which model served each decision: the prediction log where the decision was logged, otherwise the
registry's champion timeline in event time.

Pure (no Dagster). Monitoring evaluates the model that actually served — realized performance scores
each event with it, drift compares a day with the training set of the model that served most of it —
instead of today's champion:

1. **logged**: the ``model_version`` of the event's first record in the lake copy of the prediction
   log (``monitoring/prediction_log/``): what risk-serve really scored it with, hot reloads included;
2. **timeline**: otherwise ``registry.champion_timeline`` at the event's ``event_ts`` (each
   promotion's ``effective_from``; simulated or backfilled days have no log);
3. **current**: otherwise (the timeline does not reach back) the current champion.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta

import polars as pl

from risk_assets.lake import Lake
from risk_assets.models import registry
from risk_assets.models.scoring import serving_versions
from risk_assets.monitoring.artifacts import prediction_log_files

SOURCE = "version_source"
MS = timedelta(milliseconds=1)


def logged_versions(store: Lake, start: datetime, end: datetime) -> pl.DataFrame:
    """``event_id`` → ``model_version`` of the first logged scoring of each event with ``event_ts``
    in ``[start, end)`` (columns ``event_id``, ``model_version``; empty without a log)."""
    files = [path for *_, path in prediction_log_files(store)]
    empty = pl.DataFrame(schema={"event_id": pl.String, "model_version": pl.String})
    if not files:
        return empty
    parts = [
        store.scan([path])
        .select("event_id", "event_ts", "scored_ts", "model_version")
        .filter((pl.col("event_ts") >= start) & (pl.col("event_ts") < end))
        for path in files
    ]
    rows = pl.concat(parts).collect()
    if rows.height == 0:
        return empty
    return (
        rows.sort("scored_ts")
        .group_by("event_id", maintain_order=True)
        .agg(pl.col("model_version").first())
        .select("event_id", "model_version")
    )


def attribute_versions(store: Lake, frame: pl.DataFrame, current: str | None) -> pl.DataFrame:
    """``frame`` (``event_id``, ``event_ts``) with ``model_version`` (who served each event) and
    ``version_source`` (``logged`` / ``timeline`` / ``current``), by the module docstring's rules."""
    if frame.height == 0:
        return frame.with_columns(
            pl.lit(None, pl.String).alias("model_version"), pl.lit(None, pl.String).alias(SOURCE)
        )
    lo, hi = frame["event_ts"].min(), frame["event_ts"].max()
    logged = logged_versions(store, lo, hi + MS)  # type: ignore[operator]
    timeline = registry.champion_timeline(store)
    out = frame.join(
        logged.rename({"model_version": "_logged"}), on="event_id", how="left", maintain_order="left"
    ).with_columns(serving_versions(store, frame["event_ts"], timeline).alias("_timeline"))
    return out.with_columns(
        pl.coalesce("_logged", "_timeline", pl.lit(current, pl.String)).alias("model_version"),
        pl.when(pl.col("_logged").is_not_null())
        .then(pl.lit("logged"))
        .when(pl.col("_timeline").is_not_null())
        .then(pl.lit("timeline"))
        .otherwise(pl.lit("current"))
        .alias(SOURCE),
    ).drop("_logged", "_timeline")


def dominant_version(attributed: pl.DataFrame) -> str | None:
    """The version that served most rows of an attributed frame (ties: the newest version id)."""
    counts = Counter(v for v in attributed["model_version"].to_list() if v is not None)
    if not counts:
        return None
    return max(counts.items(), key=lambda kv: (kv[1], kv[0]))[0]


def version_counts(attributed: pl.DataFrame) -> dict[str, int]:
    """Rows per serving version (sorted by version)."""
    counts = Counter(v for v in attributed["model_version"].to_list() if v is not None)
    return dict(sorted(counts.items()))


def source_counts(attributed: pl.DataFrame) -> dict[str, int]:
    """Rows per attribution source (``logged`` / ``timeline`` / ``current``)."""
    return dict(sorted(Counter(attributed[SOURCE].to_list()).items()))
