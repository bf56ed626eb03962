"""Where the model domain keeps its artifacts in the lake, and how they are read back.

Pure (no Dagster): the assets, the monitoring reports and notebooks read the same paths.

Layout::

    training_sets/as_of=YYYY-MM-DD/part-00000.parquet    a training set (as of the end of the day)
    training_sets/as_of=YYYY-MM-DD/manifest.json         its manifest (window, versions, counts, hash)
    models/challengers/as_of=YYYY-MM-DD.json             {"version": …} the day's trained challenger

The registry itself (versions, champion pointer, audit trail) is :mod:`risk_assets.models.registry`.
"""

from __future__ import annotations

import json
from typing import Any

import polars as pl

from risk_assets.lake import Lake

TRAINING_SETS = "training_sets"
CHALLENGERS = "models/challengers"


class MissingArtifact(FileNotFoundError):
    """An artifact a step needs was never written (the message says what to materialize)."""


def training_set_paths(as_of_day: str) -> tuple[str, str]:
    """Relative lake paths of a training set and its manifest."""
    base = f"{TRAINING_SETS}/as_of={as_of_day}"
    return f"{base}/part-00000.parquet", f"{base}/manifest.json"


def read_training_set(store: Lake, day: str) -> tuple[pl.DataFrame, dict[str, Any]]:
    """A materialized training set and its manifest (``MissingArtifact`` if it was never built)."""
    data_path, manifest_path = training_set_paths(day)
    if not store.exists(data_path):
        raise MissingArtifact(
            f"training set {store.uri(data_path)} is missing: materialize training_set for {day} first"
        )
    return pl.read_parquet(store.read_bytes(data_path)), json.loads(store.read_bytes(manifest_path))


def challenger_pointer_path(as_of_day: str) -> str:
    """Which registered version a day's training produced (written by ``challenger_model``)."""
    return f"{CHALLENGERS}/as_of={as_of_day}.json"


def write_challenger(store: Lake, as_of_day: str, version: str) -> None:
    """Record ``version`` as the challenger trained on the day's training set."""
    store.write_bytes(challenger_pointer_path(as_of_day), json.dumps({"version": version}).encode())


def read_challenger(store: Lake, as_of_day: str) -> str:
    """The challenger version trained on the day's training set (``MissingArtifact`` if none)."""
    path = challenger_pointer_path(as_of_day)
    if not store.exists(path):
        raise MissingArtifact(f"no challenger trained for {as_of_day}: materialize challenger_model first")
    return str(json.loads(store.read_bytes(path))["version"])
