"""The model registry in the lake: versions, their manifests, the champion pointer, an audit trail.

Layout (all under ``models/registry/`` of the lake, local or S3)::

    versions/{version}/model.ubj       the XGBoost booster in XGBoost's own format (UBJSON), no pickle
    versions/{version}/manifest.json   version, created_at, model_sha256, features (ordered, the model's
                                       input vector), feature_groups {name: version}, training_set
                                       {as_of, data_sha256}, params, metrics, metrics_by_scenario,
                                       training_seconds, and anything else the trainer records
    champion.json                      {"version", "model_sha256", "promoted_at", "reason", "previous"}
    shadow.json                        {"version", "model_sha256", "set_at", "reason"}: the challenger
                                       risk-serve scores in shadow (absent: no shadow)
    audit.jsonl                        one JSON line per promotion / rollback / refusal / shadow change

A version is immutable once written (its id includes the model's hash). The champion pointer is
one small object replaced atomically; the scoring service polls it and loads the version it names,
checking ``model_sha256`` before serving it.

Integrity (``verify_version``): every pointer change (``set_champion``, hence promotion and
rollback) first reads the version's bytes, checks them against the manifest's ``model_sha256`` and
loads them as a booster; a version that fails is never pointed at (``IntegrityError``, audited as
``pointer_refused``). A sha256 in the manifest only proves the bytes match the manifest, not who
wrote both: with ``RISK_MODEL_SIGNING_KEY`` set (read when called, never at import), ``register``
adds ``signature`` = HMAC-SHA256(key, the manifest's canonical JSON without ``signature``) and
``verify_version`` refuses a version whose signature is missing or wrong — so a booster altered
together with a consistent manifest is refused by the registry and by ``risk-serve``.
The shadow pointer (``set_shadow``) goes through the same ``verify_version``.

Champion timeline in event time: every ``promote`` / ``rollback`` audit entry carries
``effective_from`` (ISO, UTC), the event time from which that version serves. The rule: a promotion
by the daily ``model_promotion`` asset of partition D takes the training set's ``as_of`` (the
partition's window end, D + 1 day 00:00 UTC) — the model was trained on events before it and
serves the events after it, also when simulated days are replayed long after; a live manual
promotion or rollback takes the wall-clock time of the pointer change (the default). Each entry
owns ``[effective_from, ∞)`` until a *later audit entry* with an earlier or equal ``effective_from``
overrides it (a re-run promotion of an older partition takes over from its effective time on,
matching the pointer, which names the latest promotion). :func:`champion_timeline` resolves the
trail into non-overlapping spans; entries written before ``effective_from`` existed fall back to
their wall-clock ``at``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from risk_assets.lake import Lake

ROOT = "models/registry"
CHAMPION = f"{ROOT}/champion.json"
SHADOW = f"{ROOT}/shadow.json"
AUDIT = f"{ROOT}/audit.jsonl"
ENV_SIGNING_KEY = "RISK_MODEL_SIGNING_KEY"
SIGNATURE = "signature"


class IntegrityError(ValueError):
    """A version whose bytes, hash or signature cannot be trusted; ``reason`` is a short label
    (``missing``, ``sha_mismatch``, ``corrupt``, ``unsigned``, ``bad_signature``, ``bad_manifest``)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def signing_key_from_env(env: dict[str, str] | None = None) -> bytes | None:
    """The manifest signing key (``RISK_MODEL_SIGNING_KEY``), or ``None`` when signing is off."""
    raw = (os.environ if env is None else env).get(ENV_SIGNING_KEY, "")
    return raw.encode() if raw else None


def _resolve_key(signing_key: bytes | None) -> bytes | None:
    """``signing_key`` if given (``b""`` = explicitly off), else the environment's."""
    if signing_key is not None:
        return signing_key or None
    return signing_key_from_env()


def manifest_signature(manifest: dict[str, Any], key: bytes) -> str:
    """HMAC-SHA256 (hex) of the manifest's canonical JSON without its ``signature`` field."""
    body = {k: v for k, v in manifest.items() if k != SIGNATURE}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(key, canonical, hashlib.sha256).hexdigest()


def signature_failure(manifest: dict[str, Any], key: bytes | None) -> tuple[str, str] | None:
    """``(reason, message)`` when signing is on and the manifest's signature is missing or wrong."""
    if key is None:
        return None
    sig = manifest.get(SIGNATURE)
    if not isinstance(sig, str) or not sig:
        return "unsigned", f"manifest of {manifest.get('version')} carries no signature"
    if not hmac.compare_digest(sig, manifest_signature(manifest, key)):
        return "bad_signature", f"manifest of {manifest.get('version')}: signature does not verify"
    return None


def version_paths(version: str) -> tuple[str, str]:
    """Relative lake paths of a version's model and manifest."""
    return f"{ROOT}/versions/{version}/model.ubj", f"{ROOT}/versions/{version}/manifest.json"


def model_version_id(created: datetime, model_bytes: bytes) -> str:
    """``YYYYMMDDTHHMMSS-<12 hex of sha256(model)>``: sortable and content-addressed."""
    return f"{created.astimezone(UTC):%Y%m%dT%H%M%S}-{hashlib.sha256(model_bytes).hexdigest()[:12]}"


@dataclass(frozen=True)
class Champion:
    version: str
    model_sha256: str
    promoted_at: str
    reason: str
    previous: str | None = None


def register(
    lake: Lake,
    model_bytes: bytes,
    manifest: dict[str, Any],
    created: datetime | None = None,
    *,
    signing_key: bytes | None = None,
) -> str:
    """Store a new version (model + manifest); returns its id. Never overwrites another version.
    The manifest is signed when a signing key is given or set in the environment."""
    created = created or datetime.now(UTC)
    version = model_version_id(created, model_bytes)
    model_path, manifest_path = version_paths(version)
    body = {
        **manifest,
        "version": version,
        "created_at": created.astimezone(UTC).isoformat(),
        "model_sha256": hashlib.sha256(model_bytes).hexdigest(),
    }
    body.pop(SIGNATURE, None)
    key = _resolve_key(signing_key)
    if key is not None:
        body[SIGNATURE] = manifest_signature(body, key)
    lake.write_bytes(model_path, model_bytes)
    lake.write_bytes(manifest_path, (json.dumps(body, indent=1, sort_keys=True) + "\n").encode())
    return version


def load_manifest(lake: Lake, version: str) -> dict[str, Any]:
    return json.loads(lake.read_bytes(version_paths(version)[1]))


def load_model_bytes(lake: Lake, version: str, expected_sha256: str | None = None) -> bytes:
    """The model bytes of ``version``; raises ``ValueError`` if they do not match the expected hash."""
    data = lake.read_bytes(version_paths(version)[0])
    if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise ValueError(f"model {version}: content does not match its recorded sha256")
    return data


def verify_version(
    lake: Lake, version: str, expected_sha256: str | None = None, *, signing_key: bytes | None = None
) -> tuple[dict[str, Any], bytes]:
    """The manifest and model bytes of ``version`` after checking them: the manifest parses, the
    bytes exist and match the manifest's ``model_sha256`` (and ``expected_sha256`` if given, e.g. a
    champion pointer's), the booster loads, and — with a signing key — the signature verifies.
    Raises :class:`IntegrityError`; lake I/O errors other than a missing object propagate."""
    model_path, manifest_path = version_paths(version)
    try:
        manifest = json.loads(lake.read_bytes(manifest_path))
    except FileNotFoundError:
        raise IntegrityError("missing", f"version {version} is not in the registry") from None
    except ValueError as exc:  # JSON or UTF-8 decoding
        raise IntegrityError("bad_manifest", f"manifest of {version} unreadable: {exc}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("model_sha256"), str):
        raise IntegrityError("bad_manifest", f"manifest of {version} has no model_sha256")
    if expected_sha256 is not None and manifest["model_sha256"] != expected_sha256:
        raise IntegrityError("sha_mismatch", f"{version}: the pointer's sha256 differs from the manifest's")
    failure = signature_failure(manifest, _resolve_key(signing_key))
    if failure is not None:
        raise IntegrityError(*failure)
    try:
        data = lake.read_bytes(model_path)
    except FileNotFoundError:
        raise IntegrityError("missing", f"model.ubj of {version} is missing") from None
    if hashlib.sha256(data).hexdigest() != manifest["model_sha256"]:
        raise IntegrityError("sha_mismatch", f"model {version}: content does not match its recorded sha256")
    import xgboost as xgb  # the registry is importable without loading XGBoost

    try:
        xgb.Booster(model_file=bytearray(data))
    except Exception as exc:  # XGBoostError, or a UnicodeDecodeError of the error text itself
        text = str(exc).strip()
        first = text.splitlines()[0][:200] if text else type(exc).__name__
        raise IntegrityError("corrupt", f"{version}: model.ubj does not load: {first}") from None
    return manifest, data


def list_versions(lake: Lake) -> list[str]:
    """Every registered version, oldest first."""
    return sorted(p.split("/")[3] for p in lake.list(f"{ROOT}/versions", suffix="manifest.json"))


def champion(lake: Lake) -> Champion | None:
    """The current champion, or ``None`` before the first promotion."""
    if not lake.exists(CHAMPION):
        return None
    return Champion(**json.loads(lake.read_bytes(CHAMPION)))


def set_champion(
    lake: Lake,
    version: str,
    reason: str,
    *,
    action: str = "promote",
    signing_key: bytes | None = None,
    audit: dict[str, Any] | None = None,
    effective_from: datetime | None = None,
) -> Champion:
    """Point the champion at ``version`` and append to the audit trail — only after
    :func:`verify_version` passed (bytes, sha256, loadable booster, signature when signing is on).
    A version that fails is audited as ``pointer_refused`` and raises :class:`IntegrityError`; the
    pointer is unchanged. ``audit``: extra fields for the audit entry (e.g. who forced a rollback).
    ``effective_from``: the event time from which the version serves (default: now; see the module
    docstring for the rule), recorded in the audit entry."""
    manifest = _verified(lake, version, reason, action, signing_key)
    try:
        current = champion(lake)
    except (ValueError, TypeError):  # an unreadable pointer is replaced, not a reason to stay stuck
        current = None
    new = Champion(
        version=version,
        model_sha256=manifest["model_sha256"],
        promoted_at=datetime.now(UTC).isoformat(),
        reason=reason,
        previous=current.version if current else None,
    )
    lake.write_bytes(CHAMPION, (json.dumps(vars(new), indent=1, sort_keys=True) + "\n").encode())
    effective = (effective_from or datetime.fromisoformat(new.promoted_at)).astimezone(UTC)
    append_audit(
        lake,
        {
            **(audit or {}),
            "action": action,
            "version": version,
            "previous": new.previous,
            "reason": reason,
            "effective_from": effective.isoformat(),
        },
    )
    return new


def _verified(
    lake: Lake, version: str, reason: str, action: str, signing_key: bytes | None
) -> dict[str, Any]:
    """The manifest of ``version`` after :func:`verify_version`; a failure is audited as
    ``pointer_refused`` (with the ``attempted`` action) and re-raised."""
    try:
        manifest, _ = verify_version(lake, version, signing_key=signing_key)
    except IntegrityError as exc:
        append_audit(
            lake,
            {
                "action": "pointer_refused",
                "attempted": action,
                "version": version,
                "reason": reason,
                "integrity": exc.reason,
                "detail": str(exc),
            },
        )
        raise
    return manifest


@dataclass(frozen=True)
class Shadow:
    """The shadow pointer: the challenger risk-serve scores off the decision path."""

    version: str
    model_sha256: str
    set_at: str
    reason: str


def shadow(lake: Lake) -> Shadow | None:
    """The shadowed challenger, or ``None`` when no shadow is set."""
    if not lake.exists(SHADOW):
        return None
    return Shadow(**json.loads(lake.read_bytes(SHADOW)))


def set_shadow(lake: Lake, version: str, reason: str, *, signing_key: bytes | None = None) -> Shadow:
    """Point the shadow at ``version`` with the same integrity checks as :func:`set_champion`
    (refusals audited as ``pointer_refused`` with ``attempted: shadow``); audited as ``shadow_set``.
    The champion itself cannot be its own shadow (``ValueError``)."""
    current = champion(lake)
    if current is not None and current.version == version:
        raise ValueError(f"{version} is the champion: a shadow is scored next to it, not as it")
    manifest = _verified(lake, version, reason, "shadow", signing_key)
    new = Shadow(version, manifest["model_sha256"], datetime.now(UTC).isoformat(), reason)
    lake.write_bytes(SHADOW, (json.dumps(vars(new), indent=1, sort_keys=True) + "\n").encode())
    append_audit(lake, {"action": "shadow_set", "version": version, "reason": reason})
    return new


def clear_shadow(lake: Lake, reason: str) -> str | None:
    """Stop shadowing (the services unload the shadow at their next poll); audited as
    ``shadow_cleared``. Returns the version that was shadowed (``None``: nothing was)."""
    current = shadow(lake)
    if current is None:
        return None
    lake.delete(SHADOW)
    append_audit(lake, {"action": "shadow_cleared", "version": current.version, "reason": reason})
    return current.version


def effective_time(entry: dict[str, Any]) -> datetime:
    """When, in event time, a ``promote``/``rollback`` entry started serving: its
    ``effective_from``, else (entries written before it existed) its wall-clock ``at``."""
    return datetime.fromisoformat(entry.get("effective_from") or entry["at"]).astimezone(UTC)


def champion_timeline(lake: Lake) -> list[tuple[datetime, str]]:
    """``[(start, version), ...]`` ascending: ``version`` served event times in ``[start, next
    start)`` (the last one to this day). Resolved from the audit trail by the module docstring's
    rule: a later entry overrides every span from its ``effective_from`` on."""
    entries = [
        (effective_time(e), e["version"])
        for e in audit_trail(lake)
        if e.get("action") in ("promote", "rollback") and isinstance(e.get("version"), str)
    ]
    spans: list[tuple[datetime, str]] = []
    owned_until: datetime | None = None  # spans from here on are owned by later entries
    for start, version in reversed(entries):
        if owned_until is None or start < owned_until:
            spans.append((start, version))
            owned_until = start
    return spans[::-1]


def append_audit(lake: Lake, entry: dict[str, Any]) -> None:
    """Append one event to ``audit.jsonl`` (read-modify-write of one small object; one writer at a
    time — promotions run as Dagster jobs, serialized by their run queue)."""
    line = json.dumps({"at": datetime.now(UTC).isoformat(), **entry}, sort_keys=True) + "\n"
    existing = lake.read_bytes(AUDIT) if lake.exists(AUDIT) else b""
    lake.write_bytes(AUDIT, existing + line.encode())


def audit_trail(lake: Lake) -> list[dict[str, Any]]:
    """Every promotion, rollback and refusal, oldest first."""
    if not lake.exists(AUDIT):
        return []
    return [json.loads(line) for line in lake.read_bytes(AUDIT).decode().splitlines() if line.strip()]
