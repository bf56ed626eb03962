"""The Launchpad config of the challenger mirrors the trainer's parameters exactly."""

from __future__ import annotations

import dataclasses

from risk_assets.models.assets import ModelTrainingConfig
from risk_assets.models.training import TrainingParams


def test_model_training_config_mirrors_training_params():
    params = {f.name: f.default for f in dataclasses.fields(TrainingParams) if f.name != "scale_pos_weight"}
    config = ModelTrainingConfig()
    assert config.model_dump() == params
    assert config.params() == TrainingParams()
