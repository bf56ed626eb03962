"""The scoring service's prediction log (Kafka ``risk.predictions``) as Polars frames.

Pure: no Dagster. The service (``risk_assets/serving/prediction_log.py``) writes one JSON message per
scored event::

    {"event_id": "...", "event_ts": 1790000000000, "scored_at": 1790000000123,
     "model_version": "...", "score": 0.0123, "decision": "allow", "degraded": false,
     "features_missing": 12, "values": [0.0, 1.0, null, ...]}

``values`` is the scored input vector in the order of the ``features`` list of that
``model_version``'s manifest. :func:`read_prediction_range` reads an exact offset range
(:class:`~risk_assets.ingest.kafka_reader.OffsetRange`, replayable) and :func:`predictions_frame`
decodes messages into one frame:

* ``partition`` (Int32), ``offset`` (Int64): where the record sits in the topic (unique per row; a
  re-scored event appears once per scoring);
* ``event_id``, ``event_ts`` (Datetime ms UTC), ``scored_ts`` (Datetime ms UTC, from ``scored_at``),
  ``model_version``, ``score`` (Float64), ``decision``, ``degraded`` (Boolean),
  ``features_missing`` (Int64), ``shadow_version`` / ``shadow_score`` (the challenger risk-serve
  scored the event with in shadow and its score; null when no shadow scored it);
* one Float64 column per feature of the row's model version, named as in the manifest (``req_*``,
  ``{group}__{feature}``); ``null`` = missing. A range holding several versions gets the union of
  their features (first-seen version's order, then new names); a feature a row's version does not
  have is null for that row, so compare per version (``model_version``) with that version's list.

Poison records never stop a range: a message that cannot become a row — not JSON, invalid UTF-8,
nesting too deep, wrong fields, a timestamp outside the event schema's bounds (``event_ts`` ≥ 2^63
used to fail the frame build and with it the whole asset), a model version the registry does not
hold, a ``values`` length that does not match the manifest, or any other exception while decoding
it — is a **dead letter**: a row of :attr:`PredictionFrame.dead_letters` (partition, offset, reason
code, error text, the raw value) and counted in :attr:`PredictionFrame.malformed` with one example
error. The asset writes them next to the range (``artifacts.prediction_log_dead_letter_path``).
Reason codes (stable): ``invalid_json``, ``invalid_utf8``, ``too_deep``, ``schema``,
``timestamp_out_of_bounds``, ``unknown_model_version``, ``values_length``, ``other``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import msgspec
import numpy as np
import polars as pl

from risk_assets.events.schema import MAX_EVENT_TS_MS, MIN_EVENT_TS_MS
from risk_assets.ingest.kafka_reader import KafkaRangeReader, MessageBatch, OffsetRange

BASE_SCHEMA: dict[str, pl.DataType] = {
    "partition": pl.Int32(),
    "offset": pl.Int64(),
    "event_id": pl.String(),
    "event_ts": pl.Datetime("ms", "UTC"),
    "scored_ts": pl.Datetime("ms", "UTC"),
    "model_version": pl.String(),
    "score": pl.Float64(),
    "decision": pl.String(),
    "degraded": pl.Boolean(),
    "features_missing": pl.Int64(),
    "shadow_version": pl.String(),
    "shadow_score": pl.Float64(),
}
BASE_COLUMNS: tuple[str, ...] = tuple(BASE_SCHEMA)
DEAD_LETTER_SCHEMA: dict[str, pl.DataType] = {
    "partition": pl.Int32(),
    "offset": pl.Int64(),
    "reason": pl.String(),
    "error": pl.String(),
    "value": pl.Binary(),
}


class PoisonRecord(ValueError):
    """A prediction-log message that cannot become a row; ``reason`` is a stable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _reason(exc: BaseException) -> str:
    if isinstance(exc, PoisonRecord):
        return exc.reason
    if isinstance(exc, UnicodeDecodeError):
        return "invalid_utf8"
    if isinstance(exc, RecursionError):
        return "too_deep"
    if isinstance(exc, msgspec.ValidationError):
        return "schema"
    if isinstance(exc, msgspec.DecodeError):
        return "invalid_json"
    return "other"


class _Message(msgspec.Struct):
    """One ``risk.predictions`` value as read (``values`` may hold nulls)."""

    event_id: str
    event_ts: int
    scored_at: int
    model_version: str
    score: float
    decision: str
    values: list[float | None]
    degraded: bool = False
    features_missing: int = 0
    shadow_version: str | None = None
    shadow_score: float | None = None


_decode = msgspec.json.Decoder(_Message).decode


@dataclass(frozen=True)
class PredictionFrame:
    """Decoded prediction-log records and what could not be decoded."""

    frame: pl.DataFrame
    # version -> its ordered feature list (every version seen in ``frame``)
    features: dict[str, list[str]] = field(default_factory=dict)
    malformed: int = 0
    first_error: str = ""
    dead_letters: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=DEAD_LETTER_SCHEMA))

    def dead_letter_counts(self) -> dict[str, int]:
        """Dead letters by reason code."""
        if not self.dead_letters.height:
            return {}
        counts = self.dead_letters.group_by("reason").len().sort("reason")
        return dict(zip(counts["reason"].to_list(), counts["len"].to_list(), strict=True))

    @property
    def versions(self) -> list[str]:
        """Model versions seen, sorted."""
        return sorted(self.features)


def empty_frame() -> pl.DataFrame:
    """A frame with the base columns and no rows."""
    return pl.DataFrame(schema=BASE_SCHEMA)


def predictions_frame(batch: MessageBatch, features_of: Callable[[str], Sequence[str]]) -> PredictionFrame:
    """Decode ``batch`` (see the module docstring); ``features_of(version)`` returns the manifest's
    ``features`` list of a version (called once per version). A ``ValueError``/``KeyError``/
    ``TypeError`` it raises (version not in the registry, manifest without ``features``) makes that
    version's records dead letters; anything else (lake I/O) propagates: the run fails and retries."""
    base: dict[str, list] = {c: [] for c in BASE_COLUMNS}
    per_version_rows: dict[str, list[int]] = {}
    per_version_values: dict[str, list[list[float | None]]] = {}
    features: dict[str, list[str]] = {}
    unknown: dict[str, str] = {}  # version -> why its manifest is unusable
    dead: dict[str, list] = {c: [] for c in DEAD_LETTER_SCHEMA}
    first_error = ""
    for i, raw in enumerate(batch.values):
        try:
            msg = _decode(raw)
            for name, ts in (("event_ts", msg.event_ts), ("scored_at", msg.scored_at)):
                if not MIN_EVENT_TS_MS <= ts <= MAX_EVENT_TS_MS:
                    raise PoisonRecord(
                        "timestamp_out_of_bounds", f"{name} {ts} outside the event schema's bounds"
                    )
            if not 0 <= msg.features_missing <= len(msg.values):
                raise PoisonRecord("schema", f"features_missing {msg.features_missing} out of range")
            if (msg.shadow_version is None) != (msg.shadow_score is None):
                raise PoisonRecord("schema", "shadow_version and shadow_score come together")
            version = msg.model_version
            if version in unknown:
                raise PoisonRecord("unknown_model_version", unknown[version])
            if version not in features:
                try:
                    features[version] = list(features_of(version))
                except (ValueError, KeyError, TypeError) as exc:
                    unknown[version] = f"model version {version!r}: {exc}"
                    raise PoisonRecord("unknown_model_version", unknown[version]) from None
            n = len(features[version])
            if len(msg.values) != n:
                raise PoisonRecord(
                    "values_length", f"{len(msg.values)} values, manifest of {version} lists {n}"
                )
        except Exception as exc:  # one poison record never stops the range
            text = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            dead["partition"].append(int(batch.partitions[i]))
            dead["offset"].append(int(batch.offsets[i]))
            dead["reason"].append(_reason(exc))
            dead["error"].append(text)
            dead["value"].append(bytes(raw))
            first_error = first_error or f"offset {int(batch.offsets[i])}: {text}"
            continue
        row = len(base["event_id"])
        base["partition"].append(int(batch.partitions[i]))
        base["offset"].append(int(batch.offsets[i]))
        base["event_id"].append(msg.event_id)
        base["event_ts"].append(msg.event_ts)
        base["scored_ts"].append(msg.scored_at)
        base["model_version"].append(msg.model_version)
        base["score"].append(msg.score)
        base["decision"].append(msg.decision)
        base["degraded"].append(msg.degraded)
        base["features_missing"].append(msg.features_missing)
        base["shadow_version"].append(msg.shadow_version)
        base["shadow_score"].append(msg.shadow_score)
        per_version_rows.setdefault(msg.model_version, []).append(row)
        per_version_values.setdefault(msg.model_version, []).append(msg.values)

    height = len(base["event_id"])
    frame = pl.DataFrame(
        {
            **{c: base[c] for c in BASE_COLUMNS if c not in ("event_ts", "scored_ts")},
            "event_ts": pl.Series(base["event_ts"], dtype=pl.Int64),
            "scored_ts": pl.Series(base["scored_ts"], dtype=pl.Int64),
        },
        schema_overrides={c: d for c, d in BASE_SCHEMA.items() if c not in ("event_ts", "scored_ts")},
    ).with_columns(pl.col("event_ts", "scored_ts").cast(pl.Datetime("ms", "UTC")))
    frame = frame.select(BASE_COLUMNS)

    # Union of the feature names, first-seen version's order first.
    names: list[str] = []
    seen: set[str] = set()
    for version in features:
        for f in features[version]:
            if f not in seen:
                seen.add(f)
                names.append(f)
    matrix = np.full((height, len(names)), np.nan)
    position = {f: j for j, f in enumerate(names)}
    for version, rows in per_version_rows.items():
        values = np.array(per_version_values[version], dtype=np.float64)  # None -> nan
        cols = [position[f] for f in features[version]]
        matrix[np.ix_(rows, cols)] = values.reshape(len(rows), len(cols))
    if names:
        feats = pl.DataFrame(
            {f: pl.Series(f, matrix[:, j], dtype=pl.Float64) for j, f in enumerate(names)}
        ).with_columns(pl.all().fill_nan(None))
        frame = pl.concat([frame, feats], how="horizontal")
    dead_letters = pl.DataFrame(dead, schema=DEAD_LETTER_SCHEMA)
    return PredictionFrame(frame, features, dead_letters.height, first_error, dead_letters)


def read_prediction_range(
    reader: KafkaRangeReader, rng: OffsetRange, features_of: Callable[[str], Sequence[str]]
) -> PredictionFrame:
    """Read exactly the offsets of ``rng`` and decode them (:func:`predictions_frame`)."""
    return predictions_frame(reader.read(rng), features_of)
