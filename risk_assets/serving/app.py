"""The ``risk-serve`` ASGI app (Starlette): real-time fraud scoring.

Routes (docs/serving.md has the full contract):

* ``POST /v1/score``        one event → ``{event_id, score, decision, model_version, reasons,
  features_missing, degraded}``  (bearer token)
* ``POST /v1/score/batch``  ``{"events": [...]}`` → ``{"model_version", "results": [...]}``  (bearer token)
* ``GET /healthz``          the process is up (open)
* ``GET /readyz``           200 when a champion is loaded and Redis answered recently with its epoch
  marker (not emptied), else 503 (open)
* ``GET /metrics``          Prometheus text format (open)
* ``GET /openapi.json``     OpenAPI 3.1 description of these routes; events are the event schema's
  JSON Schema (``risk_assets/events/jsonschema/risk_event.v1.json``) (open)

Abuse and overload (docs/serving.md, "Hardening"): bodies are read streamed and reading stops at
``max_body_bytes`` (413, connection closed; chunked bodies too) or after ``body_timeout_s`` (408);
any body that does not decode — invalid JSON, invalid UTF-8, nesting too deep, out-of-bounds
fields — is a 4xx with one (rate-limited) log line, never a 500; a client that disconnects
mid-request is counted as ``client_disconnect``, not as an internal error; requests the protocol
marked for shedding (``risk_assets.serving.protocol``) get 503 ``overloaded`` at once; a wrong
method gets 405 with ``Allow``.

The hot path runs on the event loop thread without hops to a thread pool: msgspec decoding into the
event schema, one Redis ``MGET`` (sync redis-py with a 50 ms socket timeout — a thread hop would
cost more than the round trip), a NumPy vector, one ``Booster.inplace_predict``; approximate
contributions (``pred_contribs`` + ``approx_contribs`` on a one-row ``DMatrix``) only for review and
block decisions. No logging, pandas or polars per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import json
import logging
import operator
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import xgboost as xgb
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from risk_assets.events.declared import event_payload_type
from risk_assets.events.schema import JSON_SCHEMA_DIR, RiskEvent
from risk_assets.features.online_store import OnlineStore
from risk_assets.lake import Lake
from risk_assets.models import registry
from risk_assets.models.model_spec import load_model_spec
from risk_assets.serving.config import ServeConfig
from risk_assets.serving.feature_fetch import FeatureFetcher, RedisBreaker
from risk_assets.serving.model_holder import LoadedModel, ModelHolder
from risk_assets.serving.prediction_log import PredictionLog
from risk_assets.serving.protocol import SHED_KEY, connection_metric_lines
from risk_assets.serving.service_metrics import ENV_METRICS_DIR, ServiceMetrics
from risk_assets.serving.shadow import ShadowItem, ShadowScorer
from risk_assets.sources import EXCHANGE_EVENTS, EventSource

log = logging.getLogger("risk_assets.serving")

JSON = "application/json"
_encode = msgspec.json.Encoder().encode
_decode_event = msgspec.json.Decoder(RiskEvent).decode


class BatchRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``/v1/score/batch``."""

    events: list[RiskEvent]


_decode_batch = msgspec.json.Decoder(BatchRequest).decode


def decoders(source: EventSource) -> tuple[Any, Any]:
    """``(decode one event, decode a batch body)`` for the served spec's event source: the
    exchange's hand-written schema, or the payload struct derived from a declared source (the
    archive's validation: unknown fields rejected, types and required fields checked)."""
    if source is EXCHANGE_EVENTS or source == EXCHANGE_EVENTS:
        return _decode_event, _decode_batch
    payload = event_payload_type(source)
    batch = msgspec.defstruct(
        f"{source.name}_batch", [("events", list[payload])], forbid_unknown_fields=True, module=__name__
    )
    return msgspec.json.Decoder(payload).decode, msgspec.json.Decoder(batch).decode


def _json(status: int, body: Any) -> Response:
    return Response(_encode(body), status_code=status, media_type=JSON)


def _error(status: int, error: str, detail: str) -> Response:
    return _json(status, {"error": error, "detail": detail})


def build_lake(config: ServeConfig) -> Lake:
    """The registry's lake: a directory, or ``s3://`` with one boto3 client reused by every poll."""
    if not config.lake_url.startswith("s3://"):
        return Lake(str(Path(config.lake_url).expanduser().resolve()))
    import boto3

    options = {"aws_region": config.aws_region}
    if config.s3_endpoint_url:
        options["aws_endpoint_url"] = config.s3_endpoint_url
        options["aws_allow_http"] = str(config.s3_endpoint_url.startswith("http://")).lower()
    client = boto3.client("s3", endpoint_url=config.s3_endpoint_url or None, region_name=config.aws_region)
    return Lake(config.lake_url, storage_options=options, s3_client=client)


class ScoringService:
    """Everything one worker process holds: model, online store, breaker, prediction log, metrics."""

    def __init__(self, config: ServeConfig, lake: Lake | None = None) -> None:
        self.config = config
        self.metrics = ServiceMetrics()
        self.lake = lake or build_lake(config)
        self.model_spec = load_model_spec(config.model_spec)
        source = self.model_spec.spine.source
        self.event_id = operator.attrgetter(source.id_column)
        self.event_ts = operator.attrgetter(source.timestamp)
        self.decode_event, self.decode_batch = decoders(source)
        self.holder = ModelHolder(
            self.lake,
            self.metrics,
            config.poll_s,
            retry_s=config.model_retry_s,
            verify_s=config.model_verify_s,
            signing_key=config.signing_key,
            model=self.model_spec,
        )
        self.store = OnlineStore.from_url(
            config.redis_url,
            namespace=config.redis_namespace,
            connect_timeout_s=config.redis_timeout_s,
            socket_timeout_s=config.redis_timeout_s,
            retries=0,
            check=False,
            write_concurrency=1,
        )
        self.breaker = RedisBreaker(self.store, self.metrics, config.redis_probe_s)
        self.fetcher = FeatureFetcher(self.store, self.breaker, self.metrics)
        self.predictions = PredictionLog(
            config.kafka_bootstrap,
            config.prediction_topic,
            queue_size=config.prediction_queue,
            buffer_messages=config.prediction_buffer,
        )
        self.shadow: ShadowScorer | None = None
        if config.shadow_enabled:
            shadow_holder = ModelHolder(
                self.lake,
                self.metrics,
                config.poll_s,
                retry_s=config.model_retry_s,
                verify_s=config.model_verify_s,
                signing_key=config.signing_key,
                role="shadow",
                pointer=registry.shadow,
                model=self.model_spec,
            )
            # Its own fetcher (and throwaway counters): a shadow that needs online groups the
            # champion does not read fetches them in the shadow thread, not counted as requests.
            self.shadow = ShadowScorer(
                shadow_holder,
                self.predictions,
                FeatureFetcher(self.store, self.breaker, ServiceMetrics()),
                queue_size=config.shadow_queue,
                batch_rows=config.shadow_batch_rows,
                event_id=self.event_id,
                event_ts=self.event_ts,
            )
        self._auth = ("Bearer " + config.token).encode()
        self.metrics.gauges += [
            self.holder.info_lines,
            *([self.shadow.metric_lines] if self.shadow else []),
            self.predictions.metric_lines,
            self._gauge_lines,
            connection_metric_lines,
        ]

    # ---- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Probe Redis, load the champion, start the background threads."""
        self.breaker.probe()
        self.holder.start()
        self.breaker.start()
        self.predictions.start()
        if self.shadow is not None:
            self.shadow.start()
        gc.collect()
        gc.freeze()  # startup objects (model, modules) leave the GC's working set: shorter pauses

    def stop(self) -> None:
        """Stop the threads, score what the shadow queue holds, flush the prediction log (both
        bounded), close Redis."""
        self.holder.stop()
        if self.shadow is not None:
            self.shadow.stop()
        self.breaker.stop()
        self.predictions.stop()
        self.store.close()

    # ---- pieces of the request path -----------------------------------------------------------

    def authorized(self, request: Request) -> bool:
        """Constant-time bearer token check (the token is never logged or echoed)."""
        for name, value in request.scope["headers"]:
            if name == b"authorization":
                return hmac.compare_digest(value, self._auth)
        return False

    def thresholds(self, model: LoadedModel) -> tuple[float, float]:
        """``(review, block)`` of ``model``: its manifest's, unless the environment overrides them."""
        return self.config.thresholds(model.thresholds)

    @staticmethod
    def decide(score: float, review: float, block: float) -> str:
        """allow / review / block (review ≤ block)."""
        if score >= block:
            return "block"
        if score >= review:
            return "review"
        return "allow"

    def reasons(self, model: LoadedModel, rows: np.ndarray) -> list[list[dict[str, Any]]]:
        """Top positive contributions (log-odds units) per row: approximate SHAP on a DMatrix."""
        k = self.config.reasons_top_k
        if k == 0:
            return [[] for _ in range(len(rows))]
        dm = xgb.DMatrix(rows, missing=np.nan, nthread=1)
        contribs = model.booster.predict(
            dm, pred_contribs=True, approx_contribs=True, validate_features=False
        )
        names = model.plan.features
        out = []
        for c in contribs[:, :-1]:  # last column is the bias
            top = np.argpartition(-c, min(k, len(c) - 1))[:k] if len(c) > k else np.arange(len(c))
            top = top[np.argsort(-c[top])]
            out.append([{"feature": names[j], "contribution": float(c[j])} for j in top if c[j] > 0])
        return out

    def score_events(self, events: list[Any]) -> tuple[LoadedModel, list[dict[str, Any]]]:
        """Score decoded events: features, one prediction, decisions, reasons, prediction log."""
        model = self.holder.current  # read once: a concurrent swap does not affect this request
        if model is None:
            raise NoModel()
        x, degraded = self.fetcher.matrix(events, model.plan)
        scores = model.booster.inplace_predict(x, validate_features=False)
        missing = np.isnan(x).sum(axis=1)
        review, block = self.thresholds(model)
        decisions = [self.decide(float(s), review, block) for s in scores]
        flagged = [i for i, d in enumerate(decisions) if d != "allow"]
        reasons: dict[int, list[dict[str, Any]]] = {}
        if flagged:
            for i, r in zip(flagged, self.reasons(model, x[flagged]), strict=True):
                reasons[i] = r
        now_ms = time.time_ns() // 1_000_000
        counts = self.metrics.events_scored
        shadow = self.shadow
        event_id, event_ts = self.event_id, self.event_ts
        # With a shadow loaded the records go to the prediction log from the shadow thread, with
        # both scores; when its queue is full (or no shadow) they are logged here, as before.
        offer = None
        if (
            shadow is None
            or not shadow.active()
            or not shadow.offer(ShadowItem(events, x, model, scores, decisions, degraded, missing, now_ms))
        ):
            offer = self.predictions.offer
        results = []
        for i, ev in enumerate(events):
            score = float(scores[i])
            decision = decisions[i]
            counts[decision] += 1
            n_missing = int(missing[i])
            if offer is not None:
                offer(
                    (
                        event_id(ev),
                        event_ts(ev),
                        now_ms,
                        model.version,
                        score,
                        decision,
                        degraded,
                        n_missing,
                        x[i],
                        None,
                        None,
                    )
                )
            results.append(
                {
                    "event_id": event_id(ev),
                    "score": score,
                    "decision": decision,
                    "model_version": model.version,
                    "reasons": reasons.get(i, []),
                    "features_missing": n_missing,
                    "degraded": degraded,
                }
            )
        return model, results

    def _gauge_lines(self) -> list[str]:
        age = time.monotonic() - self.breaker.last_ok if self.breaker.last_ok else -1.0
        return [
            "# HELP risk_serve_redis_breaker_open 1 while the online store breaker is open (degraded).",
            "# TYPE risk_serve_redis_breaker_open gauge",
            f"risk_serve_redis_breaker_open {int(self.breaker.open)}",
            "# HELP risk_serve_redis_breaker_opened_total Times the breaker opened.",
            "# TYPE risk_serve_redis_breaker_opened_total counter",
            f"risk_serve_redis_breaker_opened_total {self.breaker.opened_total}",
            "# HELP risk_serve_redis_last_ok_age_seconds Seconds since Redis last answered (-1: never).",
            "# TYPE risk_serve_redis_last_ok_age_seconds gauge",
            f"risk_serve_redis_last_ok_age_seconds {age:.3f}",
            "# HELP risk_serve_ready 1 when /readyz answers 200.",
            "# TYPE risk_serve_ready gauge",
            f"risk_serve_ready {int(self.ready())}",
        ]

    def ready(self) -> bool:
        """A champion is loaded and Redis answered within ``redis_fresh_s``, holding its data
        (the online store's epoch marker is present)."""
        last = self.breaker.last_ok
        return (
            self.holder.current is not None
            and last > 0
            and time.monotonic() - last < self.config.redis_fresh_s
            and self.breaker.epoch_ok
        )


class NoModel(Exception):
    """No champion has been loaded yet."""


# Client errors a decoder can raise besides msgspec's own: invalid UTF-8 in a string
# (UnicodeDecodeError, a ValueError), nesting deeper than msgspec's recursion limit (RecursionError).
_CLIENT_DECODE_ERRORS = (msgspec.MsgspecError, ValueError, RecursionError)


class _OncePerKind:
    """One log line per kind of client error, then at most one a minute with the count since."""

    def __init__(self, every_s: float = 60.0) -> None:
        self.every_s = every_s
        self._last: dict[str, float] = {}
        self._since: dict[str, int] = {}

    def __call__(self, kind: str, detail: str) -> None:
        now = time.monotonic()
        self._since[kind] = self._since.get(kind, 0) + 1
        if now - self._last.get(kind, -1e9) >= self.every_s:
            log.warning("client error %s (%d since last line): %s", kind, self._since[kind], detail[:200])
            self._last[kind] = now
            self._since[kind] = 0


def openapi_document(source: EventSource | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the service; events are the event schema's JSON Schema (for a
    declared source: the JSON Schema of its payload struct)."""
    if source is None or source == EXCHANGE_EVENTS:
        event_schema = json.loads((JSON_SCHEMA_DIR / "risk_event.v1.json").read_text())
    else:
        event_schema = msgspec.json.schema(event_payload_type(source))
    defs = event_schema.pop("$defs", {})

    def rebase(node: Any) -> Any:  # "#/$defs/X" -> "#/components/schemas/X"
        if isinstance(node, dict):
            return {
                k: (v.replace("#/$defs/", "#/components/schemas/") if k == "$ref" else rebase(v))
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [rebase(v) for v in node]
        if isinstance(node, str) and node.startswith("#/$defs/"):
            return node.replace("#/$defs/", "#/components/schemas/")
        return node

    schemas: dict[str, Any] = {name: rebase(d) for name, d in defs.items()}
    schemas["RiskEvent"] = rebase(event_schema)
    ref = {"$ref": "#/components/schemas/RiskEvent"}
    schemas["BatchRequest"] = {
        "type": "object",
        "properties": {"events": {"type": "array", "items": ref}},
        "required": ["events"],
        "additionalProperties": False,
    }
    schemas["Reason"] = {
        "type": "object",
        "properties": {"feature": {"type": "string"}, "contribution": {"type": "number"}},
        "required": ["feature", "contribution"],
    }
    schemas["ScoreResult"] = {
        "type": "object",
        "properties": {
            "event_id": {"type": "string"},
            "score": {"type": "number", "minimum": 0, "maximum": 1},
            "decision": {"type": "string", "enum": ["allow", "review", "block"]},
            "model_version": {"type": "string"},
            "reasons": {"type": "array", "items": {"$ref": "#/components/schemas/Reason"}},
            "features_missing": {"type": "integer", "minimum": 0},
            "degraded": {"type": "boolean"},
        },
        "required": [
            "event_id",
            "score",
            "decision",
            "model_version",
            "reasons",
            "features_missing",
            "degraded",
        ],
    }
    schemas["BatchResult"] = {
        "type": "object",
        "properties": {
            "model_version": {"type": ["string", "null"]},
            "results": {"type": "array", "items": {"$ref": "#/components/schemas/ScoreResult"}},
        },
        "required": ["model_version", "results"],
    }
    schemas["Error"] = {
        "type": "object",
        "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
        "required": ["error", "detail"],
    }

    def err(description: str) -> dict[str, Any]:
        return {
            "description": description,
            "content": {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}},
        }

    def ok(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
        return {"description": description, "content": {JSON: {"schema": schema}}}

    scoring_errors = {
        "400": err("body is not JSON, not UTF-8, or nested too deeply (invalid_json)"),
        "401": err("missing or invalid bearer token"),
        "408": err("the body did not arrive in time"),
        "413": err("body larger than the limit, or too many events"),
        "422": err("the JSON does not match the event schema (validation)"),
        "503": err("no model loaded yet (no_model), or overloaded (Retry-After)"),
    }
    status_obj = {"type": "object", "additionalProperties": True}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "risk-serve",
            "version": "1",
            "description": "Real-time fraud scoring; events follow the risk_event.v1 JSON Schema.",
        },
        "paths": {
            "/v1/score": {
                "post": {
                    "operationId": "score",
                    "security": [{"bearer": []}],
                    "requestBody": {"required": True, "content": {JSON: {"schema": ref}}},
                    "responses": {"200": ok({"$ref": "#/components/schemas/ScoreResult"}), **scoring_errors},
                }
            },
            "/v1/score/batch": {
                "post": {
                    "operationId": "score_batch",
                    "security": [{"bearer": []}],
                    "requestBody": {
                        "required": True,
                        "content": {JSON: {"schema": {"$ref": "#/components/schemas/BatchRequest"}}},
                    },
                    "responses": {"200": ok({"$ref": "#/components/schemas/BatchResult"}), **scoring_errors},
                }
            },
            "/healthz": {"get": {"operationId": "healthz", "responses": {"200": ok(status_obj)}}},
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "responses": {"200": ok(status_obj, "ready"), "503": ok(status_obj, "not ready")},
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "responses": {
                        "200": {"description": "Prometheus text format", "content": {"text/plain": {}}}
                    },
                }
            },
            "/openapi.json": {"get": {"operationId": "openapi", "responses": {"200": ok(status_obj)}}},
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def create_app(
    config: ServeConfig, *, lake: Lake | None = None, metrics_dir: str | Path | None = None
) -> ASGIApp:
    """The ASGI app for ``config``: the Starlette app behind the shedding guard (threads start in
    the lifespan, not here). ``.state.service`` is the :class:`ScoringService`.

    ``metrics_dir``: the directory this service's workers share so ``/metrics`` merges them all
    (see :mod:`risk_assets.serving.service_metrics`); ``None`` for this process's metrics only.
    """
    svc = ScoringService(config, lake)
    metrics = svc.metrics
    metrics.share(metrics_dir)
    max_body = config.max_body_bytes

    client_error_log = _OncePerKind()
    too_large = f"request body exceeds {max_body} bytes"

    def body_too_large(endpoint: str) -> Response:
        metrics.error("body_too_large")
        metrics.request(endpoint, 413)
        client_error_log("body_too_large", too_large)
        # Connection: close — the rest of the body is never read; the connection cannot be reused.
        return Response(
            _encode({"error": "body_too_large", "detail": too_large}),
            status_code=413,
            media_type=JSON,
            headers={"Connection": "close"},
        )

    async def read_body(request: Request, endpoint: str) -> bytes | Response:
        if not svc.authorized(request):
            metrics.error("unauthorized")
            metrics.request(endpoint, 401)
            return Response(
                _encode({"error": "unauthorized", "detail": "missing or invalid bearer token"}),
                status_code=401,
                media_type=JSON,
                headers={"WWW-Authenticate": "Bearer"},
            )
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body:
            return body_too_large(endpoint)
        # Streamed: stop at the limit (a chunked body has no Content-Length to check up front).
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(config.body_timeout_s):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > max_body:
                        return body_too_large(endpoint)
                    chunks.append(chunk)
        except TimeoutError:
            metrics.error("body_timeout")
            metrics.request(endpoint, 408)
            client_error_log("body_timeout", f"body not received within {config.body_timeout_s}s")
            return Response(
                _encode({"error": "body_timeout", "detail": "request body not received in time"}),
                status_code=408,
                media_type=JSON,
                headers={"Connection": "close"},
            )
        except ClientDisconnect:
            metrics.error("client_disconnect")
            metrics.request(endpoint, 499)
            return Response(b"", status_code=499)  # nobody reads it; uvicorn drops it
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def invalid(endpoint: str, exc: BaseException) -> Response:
        """A body that does not decode: 422 ``validation`` when it is JSON that breaks the schema
        (including out-of-bounds values such as ``event_ts``), 422 ``invalid_json`` for a JSON
        syntax error, 400 ``invalid_json`` for bytes msgspec cannot even read as JSON text (invalid
        UTF-8, nesting too deep)."""
        if isinstance(exc, msgspec.ValidationError):
            kind, status = "validation", 422
        elif isinstance(exc, msgspec.DecodeError):
            kind, status = "invalid_json", 422
        else:
            kind, status = "invalid_json", 400
        detail = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        if isinstance(exc, UnicodeDecodeError):
            detail = f"invalid UTF-8 at byte {exc.start}"
        elif isinstance(exc, RecursionError):
            detail = "JSON nested too deeply"
        metrics.error(kind)
        metrics.request(endpoint, status)
        client_error_log(kind, f"{endpoint}: {detail}")
        return _error(status, kind, detail)

    def failure(endpoint: str, exc: BaseException) -> Response:
        if isinstance(exc, NoModel):
            metrics.error("no_model")
            metrics.request(endpoint, 503)
            return _error(503, "no_model", "no champion model is loaded yet")
        metrics.error("internal")
        metrics.request(endpoint, 500)
        log.error("internal error on %s: %s: %s", endpoint, type(exc).__name__, exc)
        return _error(500, "internal", "internal error; see the service log")

    async def score(request: Request) -> Response:
        t0 = time.perf_counter()
        body = await read_body(request, "score")
        if isinstance(body, Response):
            return body
        try:
            event = svc.decode_event(body)
        except _CLIENT_DECODE_ERRORS as exc:
            return invalid("score", exc)
        try:
            _, results = svc.score_events([event])
            payload = _encode(results[0])
        except Exception as exc:
            return failure("score", exc)
        metrics.request("score", 200)
        metrics.latency["score"].observe(time.perf_counter() - t0)
        return Response(payload, media_type=JSON)

    async def score_batch(request: Request) -> Response:
        t0 = time.perf_counter()
        body = await read_body(request, "score_batch")
        if isinstance(body, Response):
            return body
        try:
            batch = svc.decode_batch(body)
        except _CLIENT_DECODE_ERRORS as exc:
            return invalid("score_batch", exc)
        if len(batch.events) > config.max_batch:
            metrics.error("batch_too_large")
            metrics.request("score_batch", 413)
            return _error(413, "batch_too_large", f"at most {config.max_batch} events per batch")
        try:
            if batch.events:
                model, results = svc.score_events(batch.events)
                version: str | None = model.version
            else:
                cur = svc.holder.current
                version, results = (cur.version if cur else None), []
            payload = _encode({"model_version": version, "results": results})
        except Exception as exc:
            return failure("score_batch", exc)
        metrics.request("score_batch", 200)
        metrics.latency["score_batch"].observe(time.perf_counter() - t0)
        return Response(payload, media_type=JSON)

    async def healthz(_: Request) -> Response:
        metrics.request("healthz", 200)
        return _json(200, {"status": "ok"})

    async def readyz(_: Request) -> Response:
        cur = svc.holder.current
        body = {
            "model_version": cur.version if cur else None,
            "model_fallback": svc.holder.fallback,
            "thresholds": dict(zip(("review", "block"), svc.thresholds(cur), strict=True)) if cur else None,
            "redis": svc.breaker.status,
            "last_refused": svc.holder.last_refused[0] if svc.holder.last_refused else None,
            "last_refusal_reason": svc.holder.last_refusal_reason,
        }
        status = 200 if svc.ready() else 503
        metrics.request("readyz", status)
        return _json(status, {"status": "ready" if status == 200 else "not_ready", **body})

    async def metrics_endpoint(_: Request) -> Response:
        metrics.request("metrics", 200)
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    openapi_body = _encode(openapi_document(svc.model_spec.spine.source))

    async def openapi(_: Request) -> Response:
        metrics.request("openapi", 200)
        return Response(openapi_body, media_type=JSON)

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        metrics.error(f"http_{exc.status_code}")
        response = _error(exc.status_code, "http_error", str(exc.detail))
        if exc.headers:  # e.g. 405's Allow
            response.headers.update(exc.headers)
        return response

    async def server_error(_: Request, exc: Exception) -> Response:
        if isinstance(exc, ClientDisconnect):  # the client went away: not our error
            metrics.error("client_disconnect")
            return Response(b"", status_code=499)
        metrics.error("internal")
        log.error("unhandled error: %s: %s", type(exc).__name__, exc)
        return _error(500, "internal", "internal error; see the service log")

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        svc.start()
        publisher = asyncio.create_task(metrics.publish_periodically())  # no-op unless shared
        try:
            yield
        finally:
            publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publisher
            svc.stop()

    app = Starlette(
        routes=[
            Route("/v1/score", score, methods=["POST"]),
            Route("/v1/score/batch", score_batch, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: server_error},
        lifespan=lifespan,
    )
    app.state.service = svc
    shed_body = _encode({"error": "overloaded", "detail": "too many requests in progress; retry shortly"})
    shed_headers = [
        (b"content-type", JSON.encode()),
        (b"content-length", str(len(shed_body)).encode()),
        (b"retry-after", b"1"),
    ]
    endpoints = {"/v1/score": "score", "/v1/score/batch": "score_batch"}

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        """Requests the protocol marked for shedding get 503 at once (body unread, nothing scored)."""
        if scope.get(SHED_KEY):
            metrics.error("overloaded")
            metrics.request(endpoints.get(scope.get("path", ""), "other"), 503)
            await send({"type": "http.response.start", "status": 503, "headers": shed_headers})
            await send({"type": "http.response.body", "body": shed_body})
            return
        await app(scope, receive, send)

    guarded.state = app.state  # type: ignore[attr-defined]
    guarded.app = app  # type: ignore[attr-defined]
    return guarded


def app_from_env() -> ASGIApp:
    """uvicorn factory (``risk_assets.serving.app:app_from_env``): config from the environment."""
    return create_app(ServeConfig.from_env(), metrics_dir=os.environ.get(ENV_METRICS_DIR) or None)
