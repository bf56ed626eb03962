"""The retraining loop: retrain when monitoring says the champion is stale, never more than once a day.

``retraining_sensor`` reads the latest ``drift_report`` and ``realized_performance`` materializations
from the instance (their metadata; nothing is recomputed in the sensor) and requests a
``retraining_job`` run (``training_set`` → ``challenger_model`` → ``model_promotion``; the guarded
promotion still decides whether the new model serves) for the newest monitored day when one of:

* ``share_drifted`` ≥ ``RETRAIN_SHARE_DRIFTED`` (feature drift),
* ``prediction_psi`` ≥ ``RETRAIN_PREDICTION_PSI`` (the score distribution moved),
* realized recall at 1% FPR of the current champion, pooled over the newest mature days out of its
  sample, is ``RETRAIN_RECALL_DROP`` below its test recall at training time — overall or for a
  scenario with at least ``MIN_POSITIVES`` realized positives (``drop/*`` metadata).

Cooldown: after a request no other is made for ``COOLDOWN`` (kept in the cursor with the reason), so
the loop cannot thrash while the new model trains or while the drift persists. ``run_key`` is
``retrain:{day}:{reason codes}``, so a (day, reason) pair is requested once however often it ticks.
The reason is in the run's tags (``risk/retrain_reason``, ``risk/retrain_trigger``) and the cursor.
``weekly_retraining_schedule`` retrains every Monday regardless (a floor).
"""

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg

from risk_assets.events.schema import SCENARIOS
from risk_assets.names import (
    CHALLENGER_MODEL,
    DRIFT_REPORT,
    MODEL_PROMOTION,
    PREDICTION_PSI,
    REALIZED_PERFORMANCE,
    RETRAIN_DAY_TAG,
    RETRAIN_REASON_TAG,
    RETRAIN_TRIGGER_TAG,
    SHARE_DRIFTED,
    TRAINING_SET,
    drop_key,
    recent_key,
)

RETRAIN_SHARE_DRIFTED = 0.20
"""Retrain when at least this share of the champion's features drifted (= the WARN check level)."""
RETRAIN_PREDICTION_PSI = 0.25
"""Retrain when the champion's score PSI reaches the conventional "significant shift" level."""
RETRAIN_RECALL_DROP = 0.20
"""Retrain when realized recall at 1% FPR is this much (absolute) below the champion's test value."""
MIN_POSITIVES = 20
"""Realized positives a pool (overall or per scenario) needs before its drop counts."""
COOLDOWN = timedelta(hours=24)
"""No second retraining request within this long of the previous one."""
RECALL = "recall_at_1pct_fpr"

retraining_job = dg.define_asset_job(
    "retraining_job",
    selection=dg.AssetSelection.assets(TRAINING_SET, CHALLENGER_MODEL, MODEL_PROMOTION),
    description="Build the day's training set, train a challenger, and run the guarded promotion.",
)


@dataclass(frozen=True)
class Trigger:
    """Why retraining is wanted: short codes (for the run key) and a human-readable reason."""

    day: str
    codes: tuple[str, ...]
    reasons: tuple[str, ...]

    @property
    def code(self) -> str:
        return "+".join(self.codes)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)

    @property
    def run_key(self) -> str:
        return f"retrain:{self.day}:{self.code}"


def _values(event: Any) -> tuple[str | None, dict[str, Any]]:
    """(partition, {metadata key: plain value}) of an ``EventLogEntry`` of a materialization."""
    if event is None or event.asset_materialization is None:
        return None, {}
    mat = event.asset_materialization
    return mat.partition, {k: getattr(v, "value", v) for k, v in mat.metadata.items()}


def _num(meta: dict[str, Any], key: str) -> float:
    try:
        f = float(meta[key])
    except (KeyError, TypeError, ValueError):
        return math.nan
    return f


def evaluate_triggers(
    drift_day: str | None, drift: dict[str, Any], realized_day: str | None, realized: dict[str, Any]
) -> Trigger | None:
    """The retraining trigger implied by the latest monitoring metadata, or ``None``."""
    codes: list[str] = []
    reasons: list[str] = []
    share, psi = _num(drift, SHARE_DRIFTED), _num(drift, PREDICTION_PSI)
    if share >= RETRAIN_SHARE_DRIFTED:
        codes.append("feature_drift")
        reasons.append(
            f"feature drift on {drift_day}: {share:.1%} of features >= {RETRAIN_SHARE_DRIFTED:.0%}"
        )
    if psi >= RETRAIN_PREDICTION_PSI:
        codes.append("prediction_drift")
        reasons.append(f"prediction drift on {drift_day}: PSI {psi:.3f} >= {RETRAIN_PREDICTION_PSI}")
    degraded = []
    for pool in (None, *SCENARIOS):
        name = pool or "overall"
        positives = _num(realized, recent_key(pool, "positives"))
        drop = _num(realized, drop_key(pool, RECALL))
        value_key = recent_key(pool, RECALL)
        if positives >= MIN_POSITIVES and drop >= RETRAIN_RECALL_DROP:
            degraded.append(
                f"{name} recall@1%FPR {_num(realized, value_key):.3f} is {drop:.3f} below test "
                f"({int(positives)} positives)"
            )
    if degraded:
        codes.append("realized_performance")
        reasons.append(f"realized performance as of {realized_day}: " + ", ".join(degraded))
    if not codes:
        return None
    day = max(d for d in (drift_day, realized_day) if d)
    return Trigger(day, tuple(codes), tuple(reasons))


@dataclass(frozen=True)
class RetrainCursor:
    """Sensor state: when and why the last request was made."""

    last_request_at: str | None = None
    last_run_key: str | None = None
    last_reason: str | None = None

    @staticmethod
    def parse(raw: str | None) -> "RetrainCursor":
        return RetrainCursor(**json.loads(raw)) if raw else RetrainCursor()

    def dumps(self) -> str:
        return json.dumps(vars(self), sort_keys=True)

    def cooling_down(self, now: datetime) -> bool:
        if not self.last_request_at:
            return False
        return now - datetime.fromisoformat(self.last_request_at) < COOLDOWN


@dg.sensor(
    name="retraining_sensor",
    job=retraining_job,
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description=(
        f"Requests `retraining_job` for the newest monitored day when drift (share drifted ≥ "
        f"{RETRAIN_SHARE_DRIFTED:.0%} or prediction PSI ≥ {RETRAIN_PREDICTION_PSI}) or realized "
        f"recall@1%FPR ({RETRAIN_RECALL_DROP} below test, ≥ {MIN_POSITIVES} positives) crosses its "
        f"threshold; at most once per {COOLDOWN}; reason in the `{RETRAIN_REASON_TAG}` tag and the cursor."
    ),
)
def retraining_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
    """Read the latest monitoring materializations and decide."""
    cursor = RetrainCursor.parse(context.cursor)
    now = datetime.now(UTC)
    instance = context.instance
    drift_day, drift = _values(instance.get_latest_materialization_event(dg.AssetKey(DRIFT_REPORT)))
    realized_day, realized = _values(
        instance.get_latest_materialization_event(dg.AssetKey(REALIZED_PERFORMANCE))
    )
    trigger = evaluate_triggers(drift_day, drift, realized_day, realized)
    if trigger is None:
        return dg.SkipReason(f"no retraining trigger (drift {drift_day}, realized {realized_day})")
    if cursor.cooling_down(now):
        return dg.SkipReason(
            f"cooldown: last request {cursor.last_run_key} at {cursor.last_request_at}; "
            f"pending trigger: {trigger.reason}"
        )
    request = dg.RunRequest(
        run_key=trigger.run_key,
        partition_key=trigger.day,
        tags={
            RETRAIN_REASON_TAG: trigger.reason[:1000],
            RETRAIN_TRIGGER_TAG: trigger.code,
            RETRAIN_DAY_TAG: trigger.day,
        },
    )
    new = RetrainCursor(now.isoformat(), trigger.run_key, trigger.reason)
    context.log.info(f"requesting {trigger.run_key}: {trigger.reason}")
    return dg.SensorResult(run_requests=[request], cursor=new.dumps())
