"""Names shared across modules: Kafka topics, asset keys, check names, metadata keys, run tags.

Pure constants (no Dagster import), so the pure modules, the simulator, the stack launcher and the
scoring service can use the topic names, and the writer and every reader of a Dagster name (a check,
a metadata key a sensor reads, an asset key another domain depends on) import the same constant.
A name used by one module only stays in that module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import dagster as dg

# -- Kafka topics ----------------------------------------------------------------------------------
EVENTS_TOPIC = "risk.events"
"""Raw exchange events as produced (retention ~7 days; the archive keeps everything)."""
LABELS_TOPIC = "risk.labels"
"""Fraud labels (chargebacks, confirmed ATO/scam reports), arriving days after their events."""
FEATURES_TOPIC = "risk.features"
"""The feature buffer: stream feature rows between computation and ingestion."""
PREDICTIONS_TOPIC = "risk.predictions"
"""The scoring service's prediction log."""
TOPICS: tuple[str, ...] = (EVENTS_TOPIC, LABELS_TOPIC, FEATURES_TOPIC, PREDICTIONS_TOPIC)

# -- asset keys (single-part keys are plain strings; feature groups are ``features/<group>``) --------
EVENTS_TOPIC_ASSET = "risk_events_topic"
RAW_EVENTS = "raw_events"
RAW_EVENT_DEAD_LETTERS = "raw_event_dead_letters"
RAW_LABELS = "raw_labels"
RAW_LABEL_DEAD_LETTERS = "raw_label_dead_letters"
SNOWFLAKE_RAW_EVENTS = "snowflake_raw_events"
SNOWFLAKE_RAW_LABELS = "snowflake_raw_labels"
FEATURES_PREFIX = "features"
"""Feature group assets are keyed ``[FEATURES_PREFIX, group name]``."""
FEATURE_CATALOG = "feature_catalog"
STREAM_FEATURE_BUFFER = "stream_feature_buffer"
ONLINE_FEATURES = "online_features"
FEATURE_LOG = "feature_log"
ONLINE_STORE_SYNC = "online_store_sync"
TRAINING_SET = "training_set"
CHALLENGER_MODEL = "challenger_model"
MODEL_PROMOTION = "model_promotion"
DEPLOYED_MODEL = "deployed_model"
RAW_EVENTS_PROFILE = "raw_events_profile"
RAW_EVENTS_DAILY_PROFILE = "raw_events_daily_profile"
FEATURE_PROFILES = "feature_profiles"
TRAINING_SET_PROFILE = "training_set_profile"
DRIFT_REPORT = "drift_report"
REALIZED_PERFORMANCE = "realized_performance"
PREDICTION_LOG = "prediction_log"
SERVING_SKEW = "serving_skew"
SHADOW_COMPARISON = "shadow_comparison"
SERVICE_HEALTH = "service_health"

# -- asset check names ------------------------------------------------------------------------------
INVALID_SHARE_CHECK = "invalid_share_below_threshold"
FEATURE_ROWS_CHECK = "feature_rows_per_day"
FEATURE_SCHEMA_CHECK = "feature_schema"
FEATURE_NULL_SHARES_CHECK = "feature_null_shares"
STREAM_BATCH_CONSISTENCY_CHECK = "stream_batch_consistency"
ONLINE_OFFLINE_CONSISTENCY_CHECK = "online_offline_consistency"
TRAINING_WINDOW_COVERAGE_CHECK = "training_window_coverage"
TRAINING_POSITIVES_CHECK = "training_positives"
TRAINING_CLASS_BALANCE_CHECK = "training_class_balance"
CHALLENGER_SANITY_CHECK = "challenger_metrics_sane"
SERVING_MATCHES_CHAMPION_CHECK = "serving_matches_champion"
DRIFT_SHARE_WARN_CHECK = "drift_share_warn"
DRIFT_SHARE_ERROR_CHECK = "drift_share_error"
PREDICTION_STABLE_CHECK = "prediction_stable"
LABEL_RATE_STABLE_CHECK = "label_rate_stable"
SERVING_SKEW_CHECK = "serving_skew_below_threshold"
SERVICE_SLO_CHECK = "service_slo"
KAFKA_LAG_CHECK = "kafka_lag_within_bound"
"""On the stream assets: the partition's log end is within a bound (offsets and seconds) of the run."""

# -- metadata keys read by another module (the retraining sensor reads monitoring's) ---------------
ROW_COUNT = "dagster/row_count"
SHARE_DRIFTED = "share_drifted"
PREDICTION_PSI = "prediction_psi"
LAG_OFFSETS = "lag_offsets"
"""Offsets of the partition past the range a stream/ingestion run processed, at the run's end."""
LAG_SECONDS = "lag_seconds"
"""How long the oldest record past that range has been in the log (0 when the run caught up)."""


def recent_key(pool: str | None, metric: str) -> str:
    """``realized_performance``'s realized ``metric`` over its recent pool: overall when ``pool`` is
    None (``recent/<metric>``), else for one scenario (``recent/<scenario>/<metric>``)."""
    return f"recent/{metric}" if pool is None else f"recent/{pool}/{metric}"


def drop_key(pool: str | None, metric: str) -> str:
    """``realized_performance``'s test-minus-realized drop of ``metric`` (``drop/[<scenario>/]<metric>``)."""
    return f"drop/{metric}" if pool is None else f"drop/{pool}/{metric}"


# -- run tags ---------------------------------------------------------------------------------------
RETRAIN_REASON_TAG = "risk/retrain_reason"
RETRAIN_TRIGGER_TAG = "risk/retrain_trigger"
RETRAIN_DAY_TAG = "risk/retrain_day"


def feature_asset_key(group_name: str) -> dg.AssetKey:
    """The asset key of a feature group, ``features/<group name>``."""
    import dagster as dg  # here, not at the top: pure modules import this module without Dagster

    return dg.AssetKey([FEATURES_PREFIX, group_name])
