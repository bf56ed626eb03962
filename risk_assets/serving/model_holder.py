"""The champion model in memory, and its hot reload.

Protocol (see docs/serving.md): a watcher thread reads ``models/registry/champion.json`` every
``poll_s``. When ``(version, model_sha256)`` differs from the model being served (and from the last
version refused), it

1. reads ``model.ubj`` and checks its SHA-256 against the pointer's ``model_sha256`` (and the
   manifest's), → refusal ``sha_mismatch``;
2. loads the booster (XGBoost UBJSON, never pickle) → refusal ``corrupt``;
3. checks the manifest's ``features`` are all servable, with the deployed feature-group versions,
   and that the booster takes exactly that many inputs → refusal ``incompatible``;
4. predicts a probe batch (all-missing and all-zero rows) and requires finite probabilities in
   [0, 1] → refusal ``probe``;

then swaps it in with a single reference assignment (``holder.current = new``). A request reads
``holder.current`` once and uses that object to the end, so in-flight requests finish on the old
model and no request ever sees a half-loaded one.

With a manifest signing key (``RISK_MODEL_SIGNING_KEY``, see ``risk_assets.models.registry``) step 1
also requires the manifest's HMAC signature → refusal ``unsigned`` / ``bad_signature``: a booster
altered together with a consistent manifest is not served.

A refused version is logged and counted once, recorded as ``last_refused``, and the model already
in memory keeps serving. The refused ``(version, sha256)`` is retried every ``retry_s`` (the bytes
may be repaired in place: a re-upload, a restored backup) and served as soon as it verifies. When
nothing is in memory yet (a restart onto a corrupt champion, or an unreadable pointer) the holder
falls back to the newest earlier champion of the audit trail that verifies (``fallback`` is then
true, in ``/readyz`` and ``/metrics``) instead of answering every request with 503. Every
``verify_s`` the served champion's bytes in the lake are re-hashed, so a corruption is noticed
(logged once, ``risk_model_champion_intact 0``) while the process runs, not only at the next
restart.

The same class holds the shadow challenger (``role="shadow"``, pointer ``registry.shadow``): the same
verification steps and retries, but no fallback (nothing decides on it), its refusals counted as
``risk_serve_errors_total{kind="shadow_refused_<reason>"}``, and a cleared pointer unloads it.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xgboost as xgb

from risk_assets.lake import Lake
from risk_assets.models import registry
from risk_assets.models.exchange_spec import EXCHANGE_MODEL
from risk_assets.models.model_spec import ModelSpec
from risk_assets.models.model_spec import servability_failures as spec_servability_failures
from risk_assets.models.thresholds import manifest_thresholds
from risk_assets.serving.feature_fetch import FeaturePlan, UnservableFeatures, build_plan
from risk_assets.serving.service_metrics import ServiceMetrics

log = logging.getLogger("risk_assets.serving")


class ModelRefused(Exception):
    """A champion version that must not serve; ``reason`` is a short metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class LoadedModel:
    """One servable model version: immutable, shared by every request that picked it up."""

    version: str
    model_sha256: str
    booster: xgb.Booster = field(repr=False)
    plan: FeaturePlan = field(repr=False)
    manifest: dict[str, Any] = field(repr=False)
    loaded_at: float = 0.0
    thresholds: tuple[float, float] | None = None
    """``(review, block)`` from the manifest (``None``: a model trained before thresholds)."""

    @property
    def features(self) -> tuple[str, ...]:
        return self.plan.features


def load_version(
    lake: Lake,
    version: str,
    expected_sha256: str,
    signing_key: bytes | None = None,
    model: ModelSpec | None = None,
) -> LoadedModel:
    """Load and validate ``version``; raises :class:`ModelRefused` (never anything else for bad
    model content — lake I/O errors propagate as ``OSError``/botocore errors). ``signing_key``:
    require a valid manifest signature (``None``: signing off). ``model``: the service's model
    specification (default: the exchange's); a model trained for another spec, or on other
    versions of its groups or request features, is refused."""
    try:
        manifest = registry.load_manifest(lake, version)
    except FileNotFoundError:
        raise ModelRefused("missing", f"manifest of {version} is missing") from None
    except (ValueError, KeyError) as exc:
        raise ModelRefused("bad_manifest", f"manifest of {version} unreadable: {exc}") from None
    if not isinstance(manifest, dict):
        raise ModelRefused("bad_manifest", f"manifest of {version} is not an object")
    if manifest.get("model_sha256") not in (None, expected_sha256):
        raise ModelRefused("sha_mismatch", f"{version}: champion pointer sha256 differs from the manifest's")
    failure = registry.signature_failure(manifest, signing_key)
    if failure is not None:
        raise ModelRefused(*failure)
    try:
        data = registry.load_model_bytes(lake, version, expected_sha256)
    except FileNotFoundError:
        raise ModelRefused("missing", f"model.ubj of {version} is missing") from None
    except ValueError as exc:
        raise ModelRefused("sha_mismatch", str(exc)) from None
    booster = xgb.Booster()
    try:
        booster.load_model(bytearray(data))
    except Exception as exc:  # XGBoostError, or e.g. UnicodeDecodeError of the error text itself
        text = str(exc).strip()
        first = text.splitlines()[0][:200] if text else type(exc).__name__
        raise ModelRefused("corrupt", f"{version}: model.ubj does not load: {first}") from None
    booster.set_param({"nthread": 1})
    features = manifest.get("features")
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        raise ModelRefused("incompatible", f"{version}: manifest has no 'features' list")
    recorded = manifest.get("model_spec")
    if recorded is not None:
        if not isinstance(recorded, dict):
            raise ModelRefused("bad_manifest", f"manifest of {version}: model_spec is not an object")
        spec = model or EXCHANGE_MODEL
        failures = [
            f
            for f in spec_servability_failures(
                spec, features, {}, recorded.get("request_features") or {}, recorded.get("name")
            )
            if not f.startswith(("manifest lacks the version of feature group", "features not servable"))
        ]
        if failures:
            raise ModelRefused("incompatible", f"{version}: {failures[0]}")
    try:
        if model is None:
            plan = build_plan(features, manifest.get("feature_groups"))
        else:
            plan = build_plan(features, manifest.get("feature_groups"), model.groups_by_name, model.request)
    except UnservableFeatures as exc:
        raise ModelRefused("incompatible", f"{version}: {exc}") from None
    if booster.num_features() != plan.n:
        raise ModelRefused(
            "incompatible",
            f"{version}: booster takes {booster.num_features()} inputs, manifest lists {plan.n} features",
        )
    probe = np.vstack([np.full(plan.n, np.nan), np.zeros(plan.n)])
    try:
        scores = booster.inplace_predict(probe, validate_features=False)
    except xgb.core.XGBoostError as exc:
        raise ModelRefused("probe", f"{version}: probe prediction failed: {str(exc)[:200]}") from None
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (2,) or not np.all(np.isfinite(scores)) or scores.min() < 0 or scores.max() > 1:
        raise ModelRefused(
            "probe", f"{version}: probe scores {scores.tolist()} are not probabilities (objective?)"
        )
    try:
        thresholds = manifest_thresholds(manifest)
    except ValueError as exc:
        raise ModelRefused("incompatible", f"{version}: {exc}") from None
    return LoadedModel(version, expected_sha256, booster, plan, manifest, time.time(), thresholds)


class ModelHolder:
    """Holds the served model and reloads it when the champion pointer changes."""

    def __init__(
        self,
        lake: Lake,
        metrics: ServiceMetrics,
        poll_s: float,
        *,
        retry_s: float = 10.0,
        verify_s: float = 60.0,
        signing_key: bytes | None = None,
        max_fallbacks: int = 5,
        role: str = "champion",
        pointer: Callable[[Lake], Any] = registry.champion,
        model: ModelSpec | None = None,
    ) -> None:
        self.model = model
        self.role = role
        self.pointer = pointer
        self.lake = lake
        self.metrics = metrics
        self.poll_s = poll_s
        self.retry_s = retry_s
        self.verify_s = verify_s
        self.signing_key = signing_key
        self.max_fallbacks = max_fallbacks
        self.current: LoadedModel | None = None
        self.fallback = False  # serving an earlier champion because the current one was refused
        self.champion_intact = True  # the served champion's bytes in the lake still match
        self.last_refused: tuple[str, str] | None = None
        self.last_refusal_reason: str | None = None
        self.last_check_ok = 0.0
        self._refused_at = 0.0
        self._verified_at = 0.0
        self._pointer_error_logged = False
        self._io_error_logged: tuple[str, str] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check_once(self) -> bool:
        """Read the pointer; load and swap in a new champion if it changed (or a refused one was
        repaired). True if swapped."""
        try:
            champ = self.pointer(self.lake)
        except Exception as exc:
            self.metrics.error(f"{self.role}_pointer")
            if not self._pointer_error_logged:
                log.warning("cannot read the %s pointer: %s: %s", self.role, type(exc).__name__, exc)
                self._pointer_error_logged = True
            content_error = isinstance(exc, ValueError | TypeError | KeyError)  # not lake I/O
            now = time.monotonic()
            if (
                self.current is None
                and content_error
                and self.role == "champion"
                and now - self._refused_at >= self.retry_s
            ):
                self._refused_at = now
                self._fall_back("(unreadable champion.json)")
            return False
        self._pointer_error_logged = False
        self.last_check_ok = time.time()
        if champ is None:
            if self.role != "champion" and self.current is not None:
                log.info("%s pointer cleared: %s unloaded", self.role, self.current.version)
                self.current = None
                self.last_refused = None
                self.last_refusal_reason = None
            return False
        wanted = (champ.version, champ.model_sha256)
        cur = self.current
        now = time.monotonic()
        if cur is not None and (cur.version, cur.model_sha256) == wanted and not self.fallback:
            if now - self._verified_at >= self.verify_s:
                self._verify_served(cur)
            return False
        if wanted == self.last_refused and now - self._refused_at < self.retry_s:
            return False
        try:
            model = load_version(self.lake, champ.version, champ.model_sha256, self.signing_key, self.model)
        except ModelRefused as exc:
            self._refused(wanted, exc, cur)
            return False
        except Exception as exc:  # lake I/O trouble: retry at the next poll, say it once
            self.metrics.error("model_load_io")
            if self._io_error_logged != wanted:
                self._io_error_logged = wanted
                log.warning("could not read %s %s: %s: %s", self.role, champ.version, type(exc).__name__, exc)
            return False
        repaired = wanted == self.last_refused
        self._swap(model, cur)
        if repaired:
            log.warning("%s %s verifies again (repaired): serving it", self.role, model.version)
        return True

    def _swap(self, model: LoadedModel, previous: LoadedModel | None, *, fallback: bool = False) -> None:
        self.current = model  # the atomic swap
        self.fallback = fallback
        self.champion_intact = True
        self._verified_at = time.monotonic()
        if not fallback:
            self.last_refused = None
            self.last_refusal_reason = None
        if self.role == "champion":
            self.metrics.model_reloads["loaded"] += 1
        log.info(
            "%s model %s (%d features, previous %s%s)",
            "serving" if self.role == "champion" else f"{self.role}:",
            model.version,
            model.plan.n,
            previous.version if previous else "none",
            ", fallback" if fallback else "",
        )

    def _refused(self, wanted: tuple[str, str], exc: ModelRefused, cur: LoadedModel | None) -> None:
        new = wanted != self.last_refused or exc.reason != self.last_refusal_reason
        self.last_refused = wanted
        self.last_refusal_reason = exc.reason
        self._refused_at = time.monotonic()
        if new:  # a retry that fails the same way is neither logged nor counted again
            if self.role == "champion":
                self.metrics.refused(exc.reason)
            else:
                self.metrics.error(f"{self.role}_refused_{exc.reason}")
            log.error(
                "refused %s %s (%s): %s; still serving %s; retrying every %gs",
                self.role,
                wanted[0],
                exc.reason,
                exc,
                cur.version if cur else "nothing",
                self.retry_s,
            )
        if cur is None and self.role == "champion":
            self._fall_back(wanted[0])

    def _fall_back(self, refused_version: str) -> None:
        """Nothing in memory and the champion refused: serve the newest earlier champion that verifies."""
        try:
            trail = registry.audit_trail(self.lake)
        except Exception as exc:
            log.warning("no fallback: cannot read the audit trail: %s: %s", type(exc).__name__, exc)
            return
        seen = {refused_version}
        tried = 0
        for entry in reversed(trail):
            version = entry.get("version")
            if entry.get("action") not in ("promote", "rollback") or not isinstance(version, str):
                continue
            if version in seen:
                continue
            seen.add(version)
            tried += 1
            if tried > self.max_fallbacks:
                break
            try:
                sha = registry.load_manifest(self.lake, version).get("model_sha256", "")
                model = load_version(self.lake, version, sha, self.signing_key, self.model)
            except Exception as exc:
                log.warning("fallback candidate %s refused: %s", version, exc)
                continue
            log.warning(
                "champion %s refused: serving the earlier champion %s as a fallback", refused_version, version
            )
            self._swap(model, None, fallback=True)
            return
        log.error("no earlier champion verifies: nothing to serve until the champion is repaired")

    def _verify_served(self, cur: LoadedModel) -> None:
        """Re-hash the served champion's bytes in the lake; log a change of state once."""
        self._verified_at = time.monotonic()
        try:
            registry.load_model_bytes(self.lake, cur.version, cur.model_sha256)
            intact = True
        except ValueError:
            intact = False
        except Exception:  # lake I/O: not a verdict about the bytes
            return
        if intact != self.champion_intact:
            if intact:
                log.warning("champion %s bytes in the lake match again", cur.version)
            else:
                self.metrics.error(f"{self.role}_corrupt_in_lake")
                log.error(
                    "champion %s: model.ubj in the lake no longer matches its sha256 (still serving the "
                    "copy loaded at %s; a restart would fall back)",
                    cur.version,
                    time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(cur.loaded_at)),
                )
        self.champion_intact = intact

    def start(self) -> None:
        """Load the champion now (if any), then keep polling in a daemon thread."""
        self.check_once()
        name = "model-watcher" if self.role == "champion" else f"{self.role}-watcher"
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.check_once()

    def info_lines(self) -> list[str]:
        """Model gauges for ``/metrics``."""
        cur = self.current
        out = [
            "# HELP risk_model_info The model version being served (value 1).",
            "# TYPE risk_model_info gauge",
        ]
        if cur is not None:
            out.append(f'risk_model_info{{version="{cur.version}",sha256="{cur.model_sha256[:12]}"}} 1')
        out += [
            "# HELP risk_model_loaded_timestamp_seconds When the served model was swapped in.",
            "# TYPE risk_model_loaded_timestamp_seconds gauge",
            f"risk_model_loaded_timestamp_seconds {cur.loaded_at if cur else 0}",
            "# HELP risk_model_features Number of model input features.",
            "# TYPE risk_model_features gauge",
            f"risk_model_features {cur.plan.n if cur else 0}",
            "# HELP risk_model_pointer_checked_timestamp_seconds Last successful read of champion.json.",
            "# TYPE risk_model_pointer_checked_timestamp_seconds gauge",
            f"risk_model_pointer_checked_timestamp_seconds {self.last_check_ok}",
            "# HELP risk_model_fallback 1 while an earlier champion serves (the current one was refused).",
            "# TYPE risk_model_fallback gauge",
            f"risk_model_fallback {int(self.fallback)}",
            "# HELP risk_model_champion_intact 0 when the served champion's lake bytes stopped matching.",
            "# TYPE risk_model_champion_intact gauge",
            f"risk_model_champion_intact {int(self.champion_intact)}",
            "# HELP risk_model_champion_refused 1 while the champion pointer names a refused version.",
            "# TYPE risk_model_champion_refused gauge",
            f"risk_model_champion_refused {int(self.last_refused is not None)}",
        ]
        return out


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 (helper for tests and tools)."""
    return hashlib.sha256(data).hexdigest()
