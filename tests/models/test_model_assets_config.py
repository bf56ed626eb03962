"""The Launchpad config of the challenger mirrors the trainer's parameters and the threshold policy
exactly."""

from __future__ import annotations

import dataclasses

from risk_assets.models.assets import ModelTrainingConfig
from risk_assets.models.thresholds import ThresholdPolicy
from risk_assets.models.training import TrainingParams


def test_model_training_config_mirrors_training_params():
    params = {f.name: f.default for f in dataclasses.fields(TrainingParams) if f.name != "scale_pos_weight"}
    config = ModelTrainingConfig()
    policy = {f.name: f.default for f in dataclasses.fields(ThresholdPolicy)}
    assert config.model_dump() == {**params, **policy}
    assert config.params() == TrainingParams()
    assert config.threshold_policy() == ThresholdPolicy()
    assert ModelTrainingConfig(review_per_day=40.0).threshold_policy().review_per_day == 40.0
