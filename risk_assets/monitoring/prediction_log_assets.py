"""The prediction log asset: the scoring service's ``risk.predictions`` copied into the lake.

Thin wiring around :mod:`risk_assets.monitoring.prediction_log_reader` (decoding) and
:mod:`risk_assets.monitoring.profiles`; paths and the cursor file in
:mod:`risk_assets.monitoring.artifacts`.
"""

import math
import time
from typing import Any

import dagster as dg
import polars as pl

from risk_assets import plots
from risk_assets.ingest.kafka_reader import KafkaReadError, OffsetRange
from risk_assets.monitoring import profiles
from risk_assets.monitoring.artifacts import (
    LOG_STATE,
    prediction_log_dead_letter_path,
    prediction_log_path,
    prediction_log_profile_path,
    read_state,
    write_state,
)
from risk_assets.monitoring.prediction_log_reader import BASE_COLUMNS, read_prediction_range
from risk_assets.monitoring.reports import metadata_float
from risk_assets.monitoring.serving_replay import ModelManifests
from risk_assets.names import PREDICTION_LOG, PREDICTIONS_TOPIC
from risk_assets.resources import KafkaResource, LakeResource
from risk_assets.run_config import RunConfig

OWNER = "team:risk-ml"
GROUP = "monitoring"


class PredictionLogConfig(RunConfig):
    """Which topic to read and how much per run."""

    topic: str = PREDICTIONS_TOPIC
    max_messages_per_partition: int = 2_000_000
    """A run reads at most this many new messages per partition (the rest is read by the next run)."""


@dg.asset(
    key=PREDICTION_LOG,
    group_name=GROUP,
    owners=[OWNER],
    kinds={"kafka", "polars", "whylogs"},
    description=(
        "The scoring service's prediction log (`risk.predictions`) in the lake: each run reads the "
        "offset range after the last one it stored (exact ranges, replayable), decodes the messages "
        "(event id, event/scored time, model version, score, decision, the shadow challenger's "
        "version and score when one scored the event in shadow, the served feature vector with "
        "names from the version's manifest) and writes "
        "`monitoring/prediction_log/p=P/offsets=START-END.parquet` plus a whylogs profile under "
        "`profiles/prediction_log/`. A record that cannot become a row (poison: not JSON, invalid "
        "UTF-8, impossible timestamp, unknown model version, ...) is a dead letter with its reason "
        "under `monitoring/prediction_log_dead_letters/` and never stops the run. The cursor "
        "(`state.json`) moves only after the writes."
    ),
)
def prediction_log(
    context: dg.AssetExecutionContext, config: PredictionLogConfig, lake: LakeResource, kafka: KafkaResource
) -> dg.MaterializeResult:
    """Copy the new range of the prediction log into the lake and profile it."""
    store = lake.lake()
    t0 = time.perf_counter()
    state = read_state(store, LOG_STATE)
    cursor: dict[str, int] = dict(state.get("partitions", {})) if state.get("topic") == config.topic else {}
    manifests = ModelManifests(store)
    frames: list[pl.DataFrame] = []
    paths: list[str] = []
    malformed = retention_gaps = 0
    first_error = ""
    dead_by_reason: dict[str, int] = {}
    dead_paths: list[str] = []
    with kafka.range_reader() as reader:
        try:
            partitions = reader.partitions(config.topic)
        except KafkaReadError as exc:
            raise dg.Failure(f"prediction log topic {config.topic!r} is not readable: {exc}") from exc
        for p in partitions:
            low, end = reader.bounds(config.topic, p)
            start = int(cursor.get(str(p), low))
            if start < low:  # retention dropped records we never read
                retention_gaps += low - start
                context.log.warning("partition %d: %d records expired before they were read", p, low - start)
                start = low
            end = min(end, start + config.max_messages_per_partition)
            if end <= start:
                continue
            rng = OffsetRange(config.topic, p, start, end)
            try:
                decoded = read_prediction_range(reader, rng, manifests.features)
            except ValueError as exc:
                raise dg.Failure(f"{rng.key()}: {exc}") from exc
            malformed += decoded.malformed
            first_error = first_error or decoded.first_error
            if decoded.dead_letters.height:
                store.write_parquet(decoded.dead_letters, prediction_log_dead_letter_path(rng))
                dead_paths.append(prediction_log_dead_letter_path(rng))
                for reason, n in decoded.dead_letter_counts().items():
                    dead_by_reason[reason] = dead_by_reason.get(reason, 0) + n
            frame = decoded.frame
            store.write_parquet(frame, prediction_log_path(rng))
            profile_cols = [c for c in frame.columns if c not in ("event_id", "partition", "offset")]
            data = profiles.serialize(profiles.profile_frame(frame, profile_cols))
            store.write_bytes(prediction_log_profile_path(rng), data)
            frames.append(frame)
            paths.append(prediction_log_path(rng))
            cursor[str(p)] = end
    write_state(store, LOG_STATE, {"topic": config.topic, "partitions": cursor})

    rows = sum(f.height for f in frames)
    base = pl.concat([f.select(BASE_COLUMNS) for f in frames]) if frames else None
    versions = sorted(base["model_version"].unique().to_list()) if base is not None else []
    metadata: dict[str, Any] = {
        "dagster/row_count": rows,
        "rows": rows,
        "ranges": len(paths),
        "malformed": malformed,
        "retention_gap": retention_gaps,
        "model_versions": len(versions),
        "model_version_list": ", ".join(versions) or "-",
        "shadow_scored": int(base["shadow_version"].is_not_null().sum()) if base is not None else 0,
        "score_mean": metadata_float(base["score"].mean()) if base is not None and rows else math.nan,
        "degraded_share": metadata_float(base["degraded"].mean()) if base is not None and rows else math.nan,
        "seconds": 0.0,
    }
    for decision in ("allow", "review", "block"):
        share = (base["decision"] == decision).mean() if base is not None and rows else math.nan
        metadata[f"decision_share/{decision}"] = metadata_float(share)
    if first_error:
        metadata["first_malformed"] = first_error
    metadata["dead_letters"] = malformed
    metadata["dead_letter_reasons"] = dg.MetadataValue.json(dead_by_reason)
    if dead_paths:
        metadata["dead_letter_paths"] = dg.MetadataValue.md(
            "\n".join(f"- `{store.uri(p)}`" for p in dead_paths)
        )
    if base is not None and rows:
        scores = base["score"].to_numpy()
        metadata["score_p50"] = metadata_float(base["score"].quantile(0.5))
        metadata["score_p99"] = metadata_float(base["score"].quantile(0.99))
        metadata["score_distribution"] = dg.MetadataValue.md(
            plots.score_distribution(scores, title=f"Served scores of this run ({rows:,} predictions)")
        )
    metadata["cursor"] = dg.MetadataValue.json(cursor)
    metadata["paths"] = dg.MetadataValue.md("\n".join(f"- `{store.uri(p)}`" for p in paths) or "-")
    metadata["seconds"] = round(time.perf_counter() - t0, 3)
    context.log.info(
        "prediction_log: %d rows in %d ranges, %d dead letters %s",
        rows,
        len(paths),
        malformed,
        dead_by_reason,
    )
    return dg.MaterializeResult(metadata=metadata)
