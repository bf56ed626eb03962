"""The model registry in the lake: versions, their manifests, the champion pointer, an audit trail.

Layout (all under ``models/registry/`` of the lake, local or S3)::

    versions/{version}/model.ubj       the XGBoost booster in XGBoost's own format (UBJSON), no pickle
    versions/{version}/manifest.json   version, created_at, model_sha256, features (ordered, the model's
                                       input vector), feature_groups {name: version}, training_set
                                       {as_of, data_sha256}, params, metrics, metrics_by_scenario,
                                       training_seconds, and anything else the trainer records
    champion.json                      {"version", "model_sha256", "promoted_at", "reason", "previous"}
    audit.jsonl                        one JSON line per promotion / rollback / refusal

A version is immutable once written (its id includes the model's hash). The champion pointer is
one small object replaced atomically; the scoring service polls it and loads the version it names,
checking ``model_sha256`` before serving it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from risk_assets.lake import Lake

ROOT = "models/registry"
CHAMPION = f"{ROOT}/champion.json"
AUDIT = f"{ROOT}/audit.jsonl"


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
    lake: Lake, model_bytes: bytes, manifest: dict[str, Any], created: datetime | None = None
) -> str:
    """Store a new version (model + manifest); returns its id. Never overwrites another version."""
    created = created or datetime.now(UTC)
    version = model_version_id(created, model_bytes)
    model_path, manifest_path = version_paths(version)
    body = {
        **manifest,
        "version": version,
        "created_at": created.astimezone(UTC).isoformat(),
        "model_sha256": hashlib.sha256(model_bytes).hexdigest(),
    }
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


def list_versions(lake: Lake) -> list[str]:
    """Every registered version, oldest first."""
    return sorted(p.split("/")[3] for p in lake.list(f"{ROOT}/versions", suffix="manifest.json"))


def champion(lake: Lake) -> Champion | None:
    """The current champion, or ``None`` before the first promotion."""
    if not lake.exists(CHAMPION):
        return None
    return Champion(**json.loads(lake.read_bytes(CHAMPION)))


def set_champion(lake: Lake, version: str, reason: str, *, action: str = "promote") -> Champion:
    """Point the champion at ``version`` (which must exist) and append to the audit trail."""
    manifest = load_manifest(lake, version)
    current = champion(lake)
    new = Champion(
        version=version,
        model_sha256=manifest["model_sha256"],
        promoted_at=datetime.now(UTC).isoformat(),
        reason=reason,
        previous=current.version if current else None,
    )
    lake.write_bytes(CHAMPION, (json.dumps(vars(new), indent=1, sort_keys=True) + "\n").encode())
    append_audit(lake, {"action": action, "version": version, "previous": new.previous, "reason": reason})
    return new


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
