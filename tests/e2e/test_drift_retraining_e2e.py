"""The monitoring → retraining loop end to end, with real Dagster materializations on one instance.

Simulated history (20 days, attackers change tactics on day 10) → batch features → a champion
trained and promoted on pre-drift data → drift report + realized performance on a stable day (no
alarm, no retraining) and after the drift (the sensor requests retraining, reason in the tags) → the
requested run (training set, challenger, guarded promotion) → the new champion beats the stale one
on days after its training window, measured against the simulator's ground truth.

What the simulated drift changes (``risk_assets/simulator/scenarios``): only the fraud cases' tactics
(ATO from a fresh device on a residential IP with slower, smaller withdrawals; card testing with
larger amounts and fewer declines; P2P payment methods). Legit traffic — > 95 % of decision events —
does not change, so the day's feature and score distributions barely move: the drift report stays
below its thresholds (its "drifted" features are warm-up effects of 30-day windows in a 20-day
simulation). The loop is closed by the delayed labels: the stale champion's realized ATO recall at
1 % FPR falls from ~1.0 at training to ~0.5–0.7 once post-drift labels mature.
"""

import io
import time
from datetime import UTC, datetime, timedelta

import dagster as dg
import polars as pl
import pytest

from risk_assets.features.groups import FEATURE_GROUPS
from risk_assets.lake import Lake
from risk_assets.models import metrics as mx
from risk_assets.models import registry
from risk_assets.models.scoring import load_scorer
from risk_assets.models.training_set import TrainingSetSpec
from risk_assets.monitoring.decisions import decision_frame
from risk_assets.names import (
    CHALLENGER_MODEL,
    DRIFT_REPORT,
    MODEL_PROMOTION,
    REALIZED_PERFORMANCE,
    RETRAIN_REASON_TAG,
    RETRAIN_TRIGGER_TAG,
    TRAINING_SET,
    feature_asset_key,
)
from risk_assets.resources import LakeResource, RawEventSource
from risk_assets.sensors.retraining import retraining_sensor
from risk_assets.simulator import SimConfig
from risk_assets.simulator.writers import write_history
from tests.conftest import asset_def

batch_features = asset_def(feature_asset_key("ato_user"))
training_set = asset_def(TRAINING_SET)
challenger_model = asset_def(CHALLENGER_MODEL)
model_promotion = asset_def(MODEL_PROMOTION)
drift_report_asset = asset_def(DRIFT_REPORT)
realized_performance = asset_def(REALIZED_PERFORMANCE)

START = datetime(2026, 10, 1, tzinfo=UTC)
DAYS = 20
DRIFT_DAY = 10
# Fraud rates 3–7× the defaults (as tests/test_model_training.py) so a week holds hundreds of cases.
SIM = SimConfig(
    seed=11,
    start=START,
    hours=24 * DAYS,
    events_per_day=25_000,
    users=2_500,
    ato_cases_per_m=660.0,
    p2p_scam_victims_per_m=1_500.0,
    card_testing_cases_per_m=200.0,
    drift_day=DRIFT_DAY,
)
CHAMPION_DAY = "2026-10-09"  # as of the end of Oct 9 → events of Oct 1–7 (window 7, maturity 2)
STABLE_DAY = "2026-10-09"
DRIFTED_DAY = "2026-10-18"  # retrain on events of Oct 10–16 (drift from Oct 11)
RUN_CONFIG = {
    "ops": {
        "training_set": {"config": {"window_days": 7, "maturity_days": 2}},
        "challenger_model": {
            "config": {"n_estimators": 200, "learning_rate": 0.1, "early_stopping_rounds": 30}
        },
    }
}


def _day(i: int) -> datetime:
    return START + timedelta(days=i)


def _ground_truth(lake: Lake) -> pl.DataFrame:
    paths = list(lake.list("sim_ground_truth"))
    return pl.concat([pl.read_parquet(io.BytesIO(lake.read_bytes(p))) for p in paths]).select(
        "event_id", pl.col("is_fraud").alias("truth")
    )


# On the production storage only (PostgreSQL): a second SQLite pass would add two minutes to CI
# for code paths the SQLite tests already cover.
@pytest.mark.parametrize("dagster_storage", ["postgres"], indirect=True)
def test_drift_triggers_retraining_and_the_new_champion_is_better(tmp_path, dagster_instance) -> None:
    t0 = time.perf_counter()
    lake = Lake(str(tmp_path / "lake"))
    write_history(SIM, lake)
    resources = {"lake": LakeResource(url=lake.url), "raw_event_source": RawEventSource()}
    instance = dagster_instance

    def run(assets: list, partition: str, **kw) -> dg.ExecuteInProcessResult:
        result = dg.materialize(assets, partition_key=partition, resources=resources, instance=instance, **kw)
        assert result.success
        return result

    features = dg.materialize(
        [batch_features],
        resources=resources,
        instance=instance,
        tags={
            "dagster/asset_partition_range_start": START.strftime("%Y-%m-%d"),
            "dagster/asset_partition_range_end": _day(DAYS - 1).strftime("%Y-%m-%d"),
        },
    )
    assert features.success
    t_setup = time.perf_counter() - t0

    # 1. A champion trained and promoted on pre-drift data.
    run([training_set, challenger_model, model_promotion], CHAMPION_DAY, run_config=RUN_CONFIG)
    stale = registry.champion(lake)
    assert stale is not None

    # 2. A stable day: no check fails, the sensor requests nothing.
    stable = run([drift_report_asset, realized_performance], STABLE_DAY)
    checks = {e.check_name: e for e in stable.get_asset_check_evaluations()}
    assert checks["drift_share_warn"].passed and checks["drift_share_error"].passed
    drift_meta = stable.asset_materializations_for_node("drift_report")[0].metadata
    print(
        f"\nstable {STABLE_DAY}: share_drifted {drift_meta['share_drifted'].value:.3f}, "
        f"prediction PSI {drift_meta['prediction_psi'].value:.4f}"
    )
    tick = retraining_sensor(dg.build_sensor_context(instance=instance))
    assert isinstance(tick, dg.SkipReason), tick

    # 3. After the drift: the delayed labels show the champion degrading; the sensor asks to retrain.
    drifted = run([drift_report_asset, realized_performance], DRIFTED_DAY)
    drift_meta = drifted.asset_materializations_for_node("drift_report")[0].metadata
    real_meta = drifted.asset_materializations_for_node("realized_performance")[0].metadata
    print(
        f"drifted {DRIFTED_DAY}: share_drifted {drift_meta['share_drifted'].value:.3f}, "
        f"prediction PSI {drift_meta['prediction_psi'].value:.4f}, "
        f"label rate {drift_meta['label_rate'].value:.4f} vs {drift_meta['label_rate_reference'].value:.4f}"
    )
    print(
        "realized (recent {} days, {} positives): recall@1%FPR {:.3f} (test {:.3f}), "
        "ATO {:.3f} (drop {:.3f}, {} positives), AP {:.3f} (test {:.3f})".format(
            real_meta["recent/days"].value,
            real_meta["recent/positives"].value,
            real_meta["recent/recall_at_1pct_fpr"].value,
            real_meta["baseline/recall_at_1pct_fpr"].value,
            real_meta["recent/ato/recall_at_1pct_fpr"].value,
            real_meta["drop/ato/recall_at_1pct_fpr"].value,
            real_meta["recent/ato/positives"].value,
            real_meta["recent/average_precision"].value,
            real_meta["baseline/average_precision"].value,
        )
    )
    context = dg.build_sensor_context(instance=instance)
    tick = retraining_sensor(context)
    assert isinstance(tick, dg.SensorResult), tick
    (request,) = tick.run_requests
    assert request.partition_key == DRIFTED_DAY
    assert request.run_key.startswith(f"retrain:{DRIFTED_DAY}:")
    assert "realized_performance" in request.tags[RETRAIN_TRIGGER_TAG]
    print(f"retrain requested: {request.run_key} — {request.tags[RETRAIN_REASON_TAG]}")
    again = retraining_sensor(dg.build_sensor_context(instance=instance, cursor=tick.cursor))
    assert isinstance(again, dg.SkipReason) and "cooldown" in str(again.skip_message)

    # 4. The requested run: training set as of the drifted day, challenger, guarded promotion.
    promo = run(
        [training_set, challenger_model, model_promotion],
        request.partition_key,
        run_config=RUN_CONFIG,
        tags=request.tags,
    )
    promo_meta = promo.asset_materializations_for_node("model_promotion")[0].metadata
    assert promo_meta["promoted"].value is True, promo_meta["reasons"].value
    fresh = registry.champion(lake)
    assert fresh is not None and fresh.version != stale.version

    # 5. Held out: the days after the new model's training window (its events end on Oct 16: Oct 17–20), vs
    # the simulator's ground truth (every fraud, reported or not).
    window_end = datetime.fromisoformat(
        load_scorer(lake, fresh.version).manifest["training_set"]["window_end"]
    )
    spec = TrainingSetSpec(as_of=_day(DAYS), window=_day(DAYS) - window_end, maturity=timedelta(0))
    holdout = decision_frame(lake, RawEventSource(), spec, FEATURE_GROUPS).join(
        _ground_truth(lake), on="event_id", how="left"
    )
    y = holdout["truth"].fill_null(False).to_numpy()
    figures = {}
    for name, version in (("stale", stale.version), ("retrained", fresh.version)):
        s = load_scorer(lake, version).score(holdout)
        figures[name] = (mx.average_precision(y, s), mx.recall_at_fpr(y, s, 0.01), mx.roc_auc(y, s))
        print(
            f"{name:9s} {version}: days {window_end:%m-%d}..{_day(DAYS - 1):%m-%d} ({holdout.height:,} "
            f"events, {int(y.sum())} frauds): AP {figures[name][0]:.3f}, recall@1%FPR "
            f"{figures[name][1]:.3f}, AUC {figures[name][2]:.3f}"
        )
    assert figures["retrained"][0] > figures["stale"][0] + 0.1
    assert figures["retrained"][1] > figures["stale"][1] + 0.1
    print(f"setup {t_setup:.1f}s, total {time.perf_counter() - t0:.1f}s")
