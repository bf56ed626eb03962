"""Configuration of ``risk-serve``: one frozen dataclass, read from the environment by the app
factory (never at import), so every uvicorn worker builds the same config from the same variables.

=============================  ==========================================  =====================
variable                       meaning                                     default
=============================  ==========================================  =====================
``RISK_SERVE_TOKEN``           bearer token clients must send (required)   —
``RISK_LAKE_URL``              lake holding ``models/registry/``           ``.state/lake``
``S3_ENDPOINT_URL``            S3 endpoint when the lake is ``s3://``      (AWS)
``AWS_REGION``                 S3 region                                   ``us-east-1``
``REDIS_URL``                  online store Redis                          ``redis://127.0.0.1:16379/0``
``RISK_REDIS_NAMESPACE``       online store key namespace                  ``risk``
``RISK_REDIS_TIMEOUT_MS``      Redis connect + socket timeout              ``50``
``RISK_REDIS_PROBE_S``         breaker probe / readiness ping interval     ``0.5``
``RISK_REDIS_FRESH_S``         readiness: Redis answered within this       ``10``
``KAFKA_BOOTSTRAP_SERVERS``    broker for the prediction log               ``127.0.0.1:19092``
``RISK_PREDICTION_TOPIC``      prediction log topic                        ``risk.predictions``
``RISK_PREDICTION_QUEUE``      bounded prediction-log queue (messages)     ``10000``
``RISK_PREDICTION_BUFFER``     librdkafka in-memory buffer (messages)      ``100000``
``RISK_REVIEW_THRESHOLD``      override: score ≥ this → ``review``         (the model's)
``RISK_BLOCK_THRESHOLD``       override: score ≥ this → ``block``          (the model's)
``RISK_MODEL_POLL_S``          champion pointer poll interval              ``2``
``RISK_REASONS_TOP_K``         reasons returned for review/block           ``5``
``RISK_MAX_BATCH``             events per ``/v1/score/batch`` request      ``1000``
``RISK_MAX_BODY_BYTES``        request body limit (read streamed, stops    ``4194304``
                               at the limit, chunked bodies too)
``RISK_BODY_TIMEOUT_S``        whole request body must arrive within       ``10``
``RISK_HEADER_TIMEOUT_S``      a request head must arrive within           ``5``
``RISK_KEEPALIVE_S``           idle keep-alive connection closed after     ``5``
``RISK_MAX_CONNECTIONS``       open connections per worker (idle evicted)  ``1024``
``RISK_MAX_INFLIGHT``          scoring requests in progress per worker;    ``64``
                               beyond: immediate 503 ``overloaded``
``RISK_MODEL_RETRY_S``         retry a refused champion every              ``10``
``RISK_MODEL_VERIFY_S``        re-hash the served champion's bytes every   ``60``
``RISK_MODEL_SIGNING_KEY``     require HMAC-signed manifests (unset: off)  —
``RISK_SHADOW``                score the registry's shadow challenger      ``1``
                               (``0``: never load it)
``RISK_SHADOW_QUEUE``          bounded shadow queue (requests); full:      ``2000``
                               logged without a shadow score, counted
``RISK_SHADOW_BATCH_ROWS``     rows per shadow ``inplace_predict``         ``512``
``RISK_MODEL_SPEC``            the model specification served, as          (the exchange's)
                               ``module:attribute`` of a ``ModelSpec``
                               (its source's payloads are the requests)
=============================  ==========================================  =====================

Decision thresholds belong to the model: chosen at training by its policy and stored in its manifest
(``risk_assets.models.thresholds``), they change at hot reload together with the model. The two
variables are explicit overrides; a model without thresholds (trained before they existed) uses
``FALLBACK_REVIEW`` / ``FALLBACK_BLOCK``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from risk_assets.models.registry import ENV_SIGNING_KEY
from risk_assets.names import PREDICTIONS_TOPIC

FALLBACK_REVIEW = 0.5
FALLBACK_BLOCK = 0.9


class ConfigError(ValueError):
    """The environment does not describe a valid service configuration (one-line message)."""


def _num(env: Mapping[str, str], name: str, default: float, *, integer: bool = False) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    return _parse(name, raw, integer)


def _optional(env: Mapping[str, str], name: str) -> float | None:
    raw = env.get(name, "").strip()
    return _parse(name, raw, False) if raw else None


def _parse(name: str, raw: str, integer: bool) -> float:
    try:
        return int(raw) if integer else float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a {'whole ' if integer else ''}number, got {raw!r}") from None


@dataclass(frozen=True)
class ServeConfig:
    """Everything the service needs; see the module docstring for the environment variables."""

    token: str = field(repr=False)
    lake_url: str = ".state/lake"
    s3_endpoint_url: str = ""
    aws_region: str = "us-east-1"
    redis_url: str = field(default="redis://127.0.0.1:16379/0", repr=False)
    redis_namespace: str = "risk"
    redis_timeout_s: float = 0.05
    redis_probe_s: float = 0.5
    redis_fresh_s: float = 10.0
    kafka_bootstrap: str = "127.0.0.1:19092"
    prediction_topic: str = PREDICTIONS_TOPIC
    prediction_queue: int = 10_000
    prediction_buffer: int = 100_000
    review_threshold: float | None = None
    """Override of the model's review threshold (``None``: the model's)."""
    block_threshold: float | None = None
    """Override of the model's block threshold (``None``: the model's)."""
    poll_s: float = 2.0
    reasons_top_k: int = 5
    max_batch: int = 1000
    max_body_bytes: int = 4 * 1024 * 1024
    body_timeout_s: float = 10.0
    header_timeout_s: float = 5.0
    keepalive_s: float = 5.0
    max_connections: int = 1024
    max_inflight: int = 64
    model_retry_s: float = 10.0
    model_verify_s: float = 60.0
    signing_key: bytes | None = field(default=None, repr=False)
    shadow_enabled: bool = True
    shadow_queue: int = 2_000
    shadow_batch_rows: int = 512
    model_spec: str = ""
    """``module:attribute`` of the served ``ModelSpec`` (empty: the exchange's)."""

    def __post_init__(self) -> None:
        if not self.token:
            raise ConfigError("RISK_SERVE_TOKEN must be set (the bearer token clients send)")
        for name in ("review_threshold", "block_threshold"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= v <= 1.0:
                raise ConfigError(f"RISK_{name.upper()} must be within [0, 1], got {v}")
        if None not in (self.review_threshold, self.block_threshold) and (
            self.review_threshold > self.block_threshold  # type: ignore[operator]
        ):
            raise ConfigError(
                "thresholds must satisfy RISK_REVIEW_THRESHOLD <= RISK_BLOCK_THRESHOLD, got "
                f"{self.review_threshold} and {self.block_threshold}"
            )
        for name in (
            "redis_timeout_s",
            "redis_probe_s",
            "redis_fresh_s",
            "poll_s",
            "body_timeout_s",
            "header_timeout_s",
            "keepalive_s",
            "model_retry_s",
            "model_verify_s",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0")
        for name in (
            "prediction_queue",
            "prediction_buffer",
            "max_batch",
            "max_body_bytes",
            "max_connections",
            "max_inflight",
            "shadow_queue",
            "shadow_batch_rows",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
        if self.reasons_top_k < 0:
            raise ConfigError("RISK_REASONS_TOP_K must be >= 0")
        if self.model_spec and ":" not in self.model_spec:
            raise ConfigError(f"RISK_MODEL_SPEC must be module:attribute, got {self.model_spec!r}")

    def thresholds(self, model: tuple[float, float] | None) -> tuple[float, float]:
        """``(review, block)`` for a model's own thresholds: overrides win, each on its own; the
        pair is kept ordered (an override above the other threshold moves it along)."""
        review, block = model if model is not None else (FALLBACK_REVIEW, FALLBACK_BLOCK)
        if self.review_threshold is not None:
            review = self.review_threshold
            block = max(block, review) if self.block_threshold is None else block
        if self.block_threshold is not None:
            block = self.block_threshold
            review = min(review, block) if self.review_threshold is None else review
        return review, block

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServeConfig:
        """Build the config from ``env`` (default ``os.environ``); raises :class:`ConfigError`."""
        e = os.environ if env is None else env
        return cls(
            token=e.get("RISK_SERVE_TOKEN", ""),
            lake_url=e.get("RISK_LAKE_URL", "") or ".state/lake",
            s3_endpoint_url=e.get("S3_ENDPOINT_URL", ""),
            aws_region=e.get("AWS_REGION", "") or "us-east-1",
            redis_url=e.get("REDIS_URL", "") or "redis://127.0.0.1:16379/0",
            redis_namespace=e.get("RISK_REDIS_NAMESPACE", "") or "risk",
            redis_timeout_s=_num(e, "RISK_REDIS_TIMEOUT_MS", 50) / 1000.0,
            redis_probe_s=_num(e, "RISK_REDIS_PROBE_S", 0.5),
            redis_fresh_s=_num(e, "RISK_REDIS_FRESH_S", 10.0),
            kafka_bootstrap=e.get("KAFKA_BOOTSTRAP_SERVERS", "") or "127.0.0.1:19092",
            prediction_topic=e.get("RISK_PREDICTION_TOPIC", "") or PREDICTIONS_TOPIC,
            prediction_queue=int(_num(e, "RISK_PREDICTION_QUEUE", 10_000, integer=True)),
            prediction_buffer=int(_num(e, "RISK_PREDICTION_BUFFER", 100_000, integer=True)),
            review_threshold=_optional(e, "RISK_REVIEW_THRESHOLD"),
            block_threshold=_optional(e, "RISK_BLOCK_THRESHOLD"),
            poll_s=_num(e, "RISK_MODEL_POLL_S", 2.0),
            reasons_top_k=int(_num(e, "RISK_REASONS_TOP_K", 5, integer=True)),
            max_batch=int(_num(e, "RISK_MAX_BATCH", 1000, integer=True)),
            max_body_bytes=int(_num(e, "RISK_MAX_BODY_BYTES", 4 * 1024 * 1024, integer=True)),
            body_timeout_s=_num(e, "RISK_BODY_TIMEOUT_S", 10.0),
            header_timeout_s=_num(e, "RISK_HEADER_TIMEOUT_S", 5.0),
            keepalive_s=_num(e, "RISK_KEEPALIVE_S", 5.0),
            max_connections=int(_num(e, "RISK_MAX_CONNECTIONS", 1024, integer=True)),
            max_inflight=int(_num(e, "RISK_MAX_INFLIGHT", 64, integer=True)),
            model_retry_s=_num(e, "RISK_MODEL_RETRY_S", 10.0),
            model_verify_s=_num(e, "RISK_MODEL_VERIFY_S", 60.0),
            signing_key=e.get(ENV_SIGNING_KEY, "").encode() or None,
            shadow_enabled=e.get("RISK_SHADOW", "1").strip().lower() not in ("0", "false", "no", "off"),
            shadow_queue=int(_num(e, "RISK_SHADOW_QUEUE", 2_000, integer=True)),
            shadow_batch_rows=int(_num(e, "RISK_SHADOW_BATCH_ROWS", 512, integer=True)),
            model_spec=e.get("RISK_MODEL_SPEC", "").strip(),
        )
