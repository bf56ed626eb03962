"""The continuous stream worker (``risk-stream``): the sensor path's engine, state and rules in one
long-running process that owns the live tail of the topics (docs/stream_features.md)."""
