"""``risk-serve``: the real-time scoring service (Starlette under uvicorn).

Modules: ``config`` (environment), ``app`` (routes and the scoring path), ``feature_fetch`` (model
input vectors from Redis + the request, circuit breaker), ``model_holder`` (champion hot reload),
``prediction_log`` (bounded queue → Kafka ``risk.predictions``), ``service_metrics`` (Prometheus
text), ``cli`` (``risk-serve`` entry point). See docs/serving.md.
"""
