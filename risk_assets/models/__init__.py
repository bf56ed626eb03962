"""Training sets, models and the model registry."""
