"""Each attack drift scenario of the simulator is detected by at least one monitor, end to end.

One world without drift (features of every day, a champion promoted for the day before the drift);
each attack scenario of ``simulator.drift.PRESETS`` then replays the same world with that scenario from the
drift day on (same seed: byte-identical before it), recomputes the features of its days, and runs
the real ``drift_report`` and ``realized_performance`` assets for them. A detector fires by the
retraining sensor's own rules (``sensors.retraining``: feature share drifted, prediction PSI,
realized recall drop) or by the ``label_rate_stable`` check's (label-rate category ``drift``).
The ``drift_day`` tactics change (labels only) is covered by ``test_drift_retraining_e2e``. The
card-testing amount shift is not detected (an expected failure, the reason below). How
fast each detector fires and how the retraining loop recovers is measured by
``bench/bench_adaptation.py`` (docs/monitoring.md).
"""

from __future__ import annotations

import math
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from risk_assets.lake import Lake
from risk_assets.models import registry
from risk_assets.names import (
    CHALLENGER_MODEL,
    DRIFT_REPORT,
    MODEL_PROMOTION,
    PREDICTION_PSI,
    REALIZED_PERFORMANCE,
    SHARE_DRIFTED,
    TRAINING_SET,
    feature_asset_key,
)
from risk_assets.resources import LakeResource, RawEventSource
from risk_assets.sensors.retraining import (
    RETRAIN_PREDICTION_PSI,
    RETRAIN_SHARE_DRIFTED,
    evaluate_triggers,
)
from risk_assets.simulator import SimConfig
from risk_assets.simulator.drift import PRESETS, DriftScenario
from risk_assets.simulator.writers import write_history
from tests.conftest import asset_def

DAY = timedelta(days=1)
START = datetime(2026, 10, 1, tzinfo=UTC)
DRIFT_DAY = 10
DAYS = 13  # the scenario runs over days 10–12
WORLD = SimConfig(
    seed=11,
    start=START,
    hours=24 * DAYS,
    events_per_day=8_000,
    users=800,
    # fraud rates 3–5× the defaults, as the other e2e tests, so a champion can be trained on a week
    ato_cases_per_m=660.0,
    p2p_scam_victims_per_m=1_500.0,
    card_testing_cases_per_m=200.0,
)
RUN_CONFIG = {
    "ops": {
        "training_set": {"config": {"window_days": 7, "maturity_days": 2}},
        "challenger_model": {
            "config": {"n_estimators": 200, "learning_rate": 0.1, "early_stopping_rounds": 30}
        },
    }
}
SIMULATED = ("raw_events", "raw_labels", "sim_ground_truth", "sim_drift")
FEATURES = asset_def(feature_asset_key("ato_user"))
MODEL = [asset_def(TRAINING_SET), asset_def(CHALLENGER_MODEL), asset_def(MODEL_PROMOTION)]
MONITORS = [asset_def(DRIFT_REPORT), asset_def(REALIZED_PERFORMANCE)]


def _key(i: int) -> str:
    return (START + i * DAY).strftime("%Y-%m-%d")


def _materialize(lake: Lake, assets: list, **kw: Any) -> dg.ExecuteInProcessResult:
    result = dg.materialize(
        assets, resources={"lake": LakeResource(url=lake.url), "raw_event_source": RawEventSource()}, **kw
    )
    assert result.success
    return result


def _features(lake: Lake, first: int, last: int) -> None:
    tags = {
        "dagster/asset_partition_range_start": _key(first),
        "dagster/asset_partition_range_end": _key(last),
    }
    _materialize(lake, [FEATURES], tags=tags)


def _meta(result: dg.ExecuteInProcessResult, node: str) -> dict[str, Any]:
    (mat,) = result.asset_materializations_for_node(node)
    return {k: getattr(v, "value", v) for k, v in mat.metadata.items()}


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The world without drift: archive, features of every day, the champion serving from the drift
    day on (promoted for the day before it)."""
    root = tmp_path_factory.mktemp("baseline") / "lake"
    lake = Lake(str(root))
    write_history(WORLD, lake)
    _features(lake, 0, DAYS - 1)
    _materialize(lake, MODEL, partition_key=_key(DRIFT_DAY - 1), run_config=RUN_CONFIG)
    assert registry.champion(lake) is not None
    return root


def fired(drift: dict[str, Any], realized: dict[str, Any], day: str) -> set[str]:
    """The detectors that fire on one day's drift report and realized performance."""
    trigger = evaluate_triggers(day, drift, day, realized)
    out = set()
    if float(drift[SHARE_DRIFTED]) >= RETRAIN_SHARE_DRIFTED:
        out.add("feature")
    psi = float(drift[PREDICTION_PSI])
    if math.isfinite(psi) and psi >= RETRAIN_PREDICTION_PSI:
        out.add("prediction")
    if drift["label_rate_category"] == "drift":
        out.add("label_rate")
    if trigger is not None and "realized_performance" in trigger.codes:
        out.add("realized")
    return out


# The attack scenarios (the legit market event is not fraud: the bench counts its false alarms).
ATTACKS = [pytest.param(k, t, id=f"{k}-{t}") for k, t in PRESETS if k != "legit_market_event"]
# Feature and prediction drift can fire on the first day; the label rate of a day is measured
# `maturity` (2) days later, and realized performance needs mature days: the first and third day.
MONITORED = (DRIFT_DAY, DRIFT_DAY + 2)
MONITOR_CONFIG = {"ops": {REALIZED_PERFORMANCE: {"config": {"lookback_days": 3, "recent_days": 3}}}}


@pytest.mark.parametrize(("kind", "target"), ATTACKS)
def test_each_drift_scenario_is_detected_by_a_monitor(baseline: Path, tmp_path: Path, kind, target) -> None:
    root = tmp_path / "lake"
    shutil.copytree(baseline, root)
    for dataset in SIMULATED:  # the scenario's archive replaces the baseline's entirely
        shutil.rmtree(root / dataset, ignore_errors=True)
    lake = Lake(str(root))
    scenario = DriftScenario(kind, START + DRIFT_DAY * DAY, START + DAYS * DAY, target=target)
    write_history(WORLD.with_(drift_scenarios=(scenario,)), lake)
    _features(lake, DRIFT_DAY, DAYS - 1)

    by_day = {}
    for i in MONITORED:
        result = _materialize(lake, MONITORS, partition_key=_key(i), run_config=MONITOR_CONFIG)
        drift, realized = _meta(result, DRIFT_REPORT), _meta(result, REALIZED_PERFORMANCE)
        by_day[_key(i)] = fired(drift, realized, _key(i))
        label_rate = f"{drift['label_rate']:.4f} vs {drift['label_rate_reference']:.4f}"
        print(
            f"{kind}/{target} {_key(i)}: share drifted {drift[SHARE_DRIFTED]:.2f}, prediction PSI "
            f"{drift[PREDICTION_PSI]:.3f}, label rate {label_rate} ({drift['label_rate_category']}), "
            f"fired {sorted(by_day[_key(i)])}"
        )
    detected = set().union(*by_day.values())
    assert detected, f"{kind}/{target}: no detector fired on days {sorted(by_day)}"
