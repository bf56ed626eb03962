"""The guarded promotion gate: a challenger replaces the champion only when it is better on the same
recent holdout and safe to serve. Every decision lands in the registry's audit trail.

A challenger is promoted when **all** of these hold (``decide``):

* it passes the sanity checks (``sanity_failures``): predictions on the holdout are not empty,
  contain no NaN and are not constant (std > ``MIN_SCORE_STD``); every model feature is servable
  online by the model spec (``model``; default the exchange's): a request feature of the spec, or
  ``{group}__{feature}`` of one of its groups whose feature is numeric and a model input; the
  manifest's feature-group and request-feature versions equal the current definitions', and a
  manifest that names its spec names this one; the
  holdout does not overlap the challenger's own training period;
* and, when there is a champion, the challenger's ``metric`` (default: weighted average precision)
  on the holdout beats the champion's on the same holdout by at least ``margin`` (absolute).

* and, when a shadow period is required (``ShadowRequirement``: ``min_days`` / ``min_labelled``
  non-zero), the challenger was scored in shadow by risk-serve for at least ``min_days`` of event
  time with at least ``min_labelled`` matured (labelled) shadow-scored events
  (``shadow_failures`` on the ``shadow_comparison`` evidence); otherwise it is refused with reasons
  starting ``shadow:`` (the ``model_promotion`` asset then puts it in shadow when no shadow runs).

Without a champion, passing the sanity checks is enough. A challenger whose bytes, hash or
signature do not verify (``registry.verify_version``) is refused with that reason. A champion that
does not verify (corrupt or tampered) cannot be compared against: the gate says so in the audit
entry and judges the challenger as if there were no champion, so a healthy challenger can replace
a broken champion — the gate never crashes on it.

``rollback`` points the champion back at the previous version (or a given one). It goes through the
gate's checks — integrity, and the sanity checks on a holdout — but is not required to beat the
champion it replaces (that is what a rollback is for). ``force=True`` skips the holdout checks (an
emergency without a holdout at hand); it needs an ``operator`` and is audited as such. Integrity
is checked even when forced: the pointer never names bytes that do not verify.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import polars as pl

from risk_assets.features.spec import FeatureGroup
from risk_assets.lake import Lake
from risk_assets.models import metrics as mx
from risk_assets.models import registry
from risk_assets.models.exchange_spec import exchange_model
from risk_assets.models.model_spec import ModelSpec
from risk_assets.models.model_spec import servability_failures as spec_servability_failures
from risk_assets.models.training import LABEL, TIMESTAMP, load_booster, predict

DEFAULT_METRIC = "average_precision"
DEFAULT_MARGIN = 0.01
MIN_SCORE_STD = 1e-6


@dataclass(frozen=True)
class ShadowRequirement:
    """A shadow period the gate requires before a promotion (zeros: none required)."""

    min_days: float = 0.0
    min_labelled: int = 0

    @property
    def required(self) -> bool:
        return self.min_days > 0 or self.min_labelled > 0


SHADOW_REASON = "shadow:"


def shadow_failures(
    version: str, requirement: ShadowRequirement, evidence: dict[str, Any] | None
) -> list[str]:
    """Why ``version`` has not had the required shadow period. ``evidence``: the
    ``shadow_comparison`` report of that version (``shadow_days``, ``labelled``), ``None``: never
    shadowed. Each reason starts with ``shadow:``."""
    if not requirement.required:
        return []
    if not evidence or evidence.get("shadow_version") != version:
        return [f"{SHADOW_REASON} {version} has not been scored in shadow (a shadow period is required)"]
    days = float(evidence.get("shadow_days") or 0.0)
    labelled = int(evidence.get("labelled") or 0)
    out = []
    if days < requirement.min_days:
        out.append(f"{SHADOW_REASON} {days:.2f} days in shadow, {requirement.min_days:g} required")
    if labelled < requirement.min_labelled:
        out.append(
            f"{SHADOW_REASON} {labelled} labelled shadow-scored events, {requirement.min_labelled} required"
        )
    return out


def waits_for_shadow(decision: Decision) -> bool:
    """The gate refused only because the required shadow period is missing."""
    return (not decision.promote) and all(r.startswith(SHADOW_REASON) for r in decision.reasons)


@dataclass(frozen=True)
class Decision:
    """The gate's verdict: ``promote`` and every reason behind it (failed checks, metric gap)."""

    promote: bool
    reasons: list[str] = field(default_factory=list)


def recent_holdout(frame: pl.DataFrame, days: float = 2.0) -> pl.DataFrame:
    """The last ``days`` of a training-set frame (by ``event_ts``): a holdout every candidate is
    scored on. Build it from a training set newer than the challenger's training split."""
    end = frame[TIMESTAMP].max()
    return frame.filter(pl.col(TIMESTAMP) > end - timedelta(days=days))  # type: ignore[operator]


def servability_failures(
    features: Sequence[str],
    feature_groups: dict[str, str],
    groups: Sequence[FeatureGroup] | None = None,
    *,
    model: ModelSpec | None = None,
    request_features: dict[str, str] | None = None,
    spec_name: str | None = None,
) -> list[str]:
    """Why a model with these input features and recorded group versions cannot be served now by
    ``model`` (default: the exchange's spec, over ``groups`` when given): unknown or helper
    features, stale group or request-feature versions, a model trained for another spec."""
    spec = (
        exchange_model(groups) if model is None else (model if groups is None else model.with_groups(groups))
    )
    return spec_servability_failures(spec, features, feature_groups, request_features, spec_name)


def prediction_failures(scores: np.ndarray) -> list[str]:
    """Why these holdout predictions are unusable (empty, NaN, constant)."""
    if scores.size == 0:
        return ["no predictions on the holdout"]
    failures = []
    nan = int(np.isnan(scores).sum())
    if nan:
        failures.append(f"{nan} NaN predictions")
    finite = scores[np.isfinite(scores)]
    if finite.size and float(finite.std()) <= MIN_SCORE_STD:
        failures.append(f"constant predictions (std {float(finite.std()):.3g})")
    return failures


def evaluate_on_holdout(
    lake: Lake,
    version: str,
    holdout_frame: pl.DataFrame,
    *,
    k: int = mx.DEFAULT_TOP_K,
    model: ModelSpec | None = None,
) -> dict[str, Any]:
    """Load a registered version (hash-checked), score ``holdout_frame`` and return its ``metrics``
    (``metrics.evaluate``), ``prediction_stats`` and ``sanity_failures``."""
    manifest, data = registry.verify_version(lake, version)  # IntegrityError when it does not verify
    booster = load_booster(data)
    features: list[str] = list(manifest["features"])
    missing = [f for f in features if f not in holdout_frame.columns]
    # Missing columns are scored as NaN (XGBoost's missing value) and reported as a failure.
    frame = holdout_frame.with_columns(pl.lit(None, pl.Float64).alias(f) for f in missing)
    matrix = np.ascontiguousarray(
        frame.select(pl.col(f).cast(pl.Float32) for f in features).to_numpy(), dtype=np.float32
    )
    scores = predict(booster, matrix).astype(np.float64) if frame.height else np.zeros(0)
    failures = prediction_failures(scores)
    recorded = manifest.get("model_spec") or {}
    failures += servability_failures(
        features,
        dict(manifest.get("feature_groups", {})),
        model=model,
        request_features=recorded.get("request_features"),
        spec_name=recorded.get("name"),
    )
    if missing:
        failures.append(f"holdout lacks model features: {missing[:10]}")
    train_end = manifest.get("split", {}).get("train_end")
    if train_end and frame.height and frame[TIMESTAMP].min() < datetime.fromisoformat(train_end):
        failures.append(f"holdout starts before the model's training split ended ({train_end})")
    ok = bool(scores.size) and not np.isnan(scores).any()
    metrics = (
        mx.evaluate(
            frame[LABEL].to_numpy(),
            scores,
            frame["weight"].to_numpy(),
            frame[TIMESTAMP].to_numpy(),
            frame["scenario"].to_numpy(),
            k=k,
        )
        if ok
        else {}
    )
    stats = {
        "rows": int(scores.size),
        "nan": int(np.isnan(scores).sum()),
        "mean": float(np.nanmean(scores)) if ok else None,
        "std": float(np.nanstd(scores)) if ok else None,
        "min": float(np.nanmin(scores)) if ok else None,
        "max": float(np.nanmax(scores)) if ok else None,
    }
    return {"version": version, "metrics": metrics, "prediction_stats": stats, "sanity_failures": failures}


def decide(
    challenger_metrics: dict[str, Any],
    champion_metrics: dict[str, Any] | None,
    *,
    metric: str = DEFAULT_METRIC,
    margin: float = DEFAULT_MARGIN,
    sanity: Sequence[str] = (),
) -> Decision:
    """Promote iff ``sanity`` (the failed checks) is empty and, with a champion, the challenger's
    ``metric`` is at least ``margin`` above the champion's (both measured on the same holdout)."""
    reasons = [f"sanity: {s}" for s in sanity]
    mine = challenger_metrics.get(metric)
    if mine is None:
        return Decision(False, [*reasons, f"challenger has no {metric} on the holdout"])
    theirs = None if champion_metrics is None else champion_metrics.get(metric)
    if champion_metrics is None:
        verdict = f"no champion yet; challenger {metric} {mine:.4f}, sanity checks passed"
    elif theirs is None:
        verdict = f"champion has no {metric} on the holdout; challenger {mine:.4f}"
    elif mine >= theirs + margin:
        verdict = f"challenger {metric} {mine:.4f} beats champion {theirs:.4f} by >= {margin}"
    else:
        reasons.append(f"challenger {metric} {mine:.4f} does not beat champion {theirs:.4f} by {margin}")
    return Decision(False, reasons) if reasons else Decision(True, [verdict])


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k != "by_scenario"}


def promote_if_better(
    lake: Lake,
    challenger_version: str,
    holdout_frame: pl.DataFrame,
    *,
    metric: str = DEFAULT_METRIC,
    margin: float = DEFAULT_MARGIN,
    k: int = mx.DEFAULT_TOP_K,
    effective_from: datetime | None = None,
    shadow: ShadowRequirement = ShadowRequirement(),
    shadow_evidence: dict[str, Any] | None = None,
    model: ModelSpec | None = None,
) -> Decision:
    """Score the challenger and the current champion on ``holdout_frame`` and apply ``decide``
    (plus :func:`shadow_failures` when ``shadow`` requires a period; ``shadow_evidence``: the
    challenger's ``shadow_comparison`` report). The audit trail gets one entry with the reasons
    and both metrics (``gate_pass`` or ``refuse``); a pass then moves the champion pointer
    (``registry.set_champion``, which audits a ``promote`` with ``effective_from``: the event time
    from which it serves, default now)."""
    current = registry.champion(lake)
    if current is not None and current.version == challenger_version:
        return Decision(False, [f"{challenger_version} is already the champion"])
    champion_integrity: str | None = None
    try:
        mine = evaluate_on_holdout(lake, challenger_version, holdout_frame, k=k, model=model)
    except registry.IntegrityError as exc:
        mine = {
            "metrics": {},
            "prediction_stats": None,
            "sanity_failures": [f"integrity ({exc.reason}): {exc}"],
        }
    theirs = None
    if current is not None:
        try:
            theirs = evaluate_on_holdout(lake, current.version, holdout_frame, k=k, model=model)
        except registry.IntegrityError as exc:
            champion_integrity = f"{exc.reason}: {exc}"
    decision = decide(
        mine["metrics"],
        theirs["metrics"] if theirs else None,
        metric=metric,
        margin=margin,
        sanity=mine["sanity_failures"],
    )
    waiting = shadow_failures(challenger_version, shadow, shadow_evidence)
    if waiting:
        kept = decision.reasons if not decision.promote else []
        decision = Decision(False, [*kept, *waiting])
    if champion_integrity is not None:
        note = f"champion {current.version} does not verify ({champion_integrity}); judged without it"  # type: ignore[union-attr]
        decision = Decision(decision.promote, [*decision.reasons, note])
    holdout = {
        "rows": holdout_frame.height,
        "positives": int(holdout_frame[LABEL].sum()) if holdout_frame.height else 0,
        "start": holdout_frame[TIMESTAMP].min().isoformat() if holdout_frame.height else None,  # type: ignore[union-attr]
        "end": holdout_frame[TIMESTAMP].max().isoformat() if holdout_frame.height else None,  # type: ignore[union-attr]
    }
    registry.append_audit(
        lake,
        {
            "action": "gate_pass" if decision.promote else "refuse",
            "version": challenger_version,
            "champion": current.version if current else None,
            "promote": decision.promote,
            "reasons": decision.reasons,
            "metric": metric,
            "margin": margin,
            "holdout": holdout,
            "challenger_metrics": _summary(mine["metrics"]),
            "champion_metrics": _summary(theirs["metrics"]) if theirs else None,
            "challenger_prediction_stats": mine["prediction_stats"],
            "champion_integrity": champion_integrity,
            "shadow_required": vars(shadow) if shadow.required else None,
            "shadow_evidence": _shadow_summary(shadow_evidence) if shadow.required else None,
        },
    )
    if decision.promote:
        registry.set_champion(
            lake, challenger_version, "; ".join(decision.reasons), effective_from=effective_from
        )
    return decision


def _shadow_summary(evidence: dict[str, Any] | None) -> dict[str, Any] | None:
    keys = ("shadow_version", "shadow_days", "labelled", "positives", "champion", "challenger")
    return {k: evidence.get(k) for k in keys} if evidence else None


def promote_or_shadow(
    lake: Lake,
    challenger_version: str,
    holdout_frame: pl.DataFrame,
    *,
    requirement: ShadowRequirement,
    evidence_of: Callable[[str], dict[str, Any] | None],
    label: str,
    metric: str = DEFAULT_METRIC,
    margin: float = DEFAULT_MARGIN,
    effective_from: datetime | None = None,
    model: ModelSpec | None = None,
) -> tuple[Decision, str, str]:
    """The daily promotion with an optional shadow period: ``(decision, candidate, note)``.

    Without a requirement: :func:`promote_if_better` of the challenger. With one, the candidate is
    the challenger already in shadow if any (the one accumulating evidence), else the day's
    challenger; ``evidence_of(version)`` gives its ``shadow_comparison`` report. A promoted shadow is
    cleared; a challenger refused only for the missing shadow period is put in shadow when none
    runs (``registry.set_shadow``, audited). ``label`` names the caller in the audit reasons."""
    shadowed = registry.shadow(lake) if requirement.required else None
    candidate = shadowed.version if shadowed else challenger_version
    decision = promote_if_better(
        lake,
        candidate,
        holdout_frame,
        metric=metric,
        margin=margin,
        effective_from=effective_from,
        shadow=requirement,
        shadow_evidence=evidence_of(candidate) if requirement.required else None,
        model=model,
    )
    note = "-"
    if decision.promote and shadowed:
        registry.clear_shadow(lake, f"promoted to champion by {label}")
        note = f"{candidate} promoted after its shadow period; shadow cleared"
    elif requirement.required and shadowed is None and waits_for_shadow(decision):
        registry.set_shadow(lake, candidate, f"shadow period required ({label})")
        note = f"{candidate} passed the holdout checks: now scored in shadow"
    elif shadowed:
        note = f"{candidate} in shadow: {'; '.join(decision.reasons)}"
    return decision, candidate, note


class RollbackRefused(ValueError):
    """A rollback the gate did not allow (its reasons are audited as ``rollback_refused``)."""


def rollback(
    lake: Lake,
    to_version: str | None = None,
    reason: str = "manual rollback",
    *,
    holdout_frame: pl.DataFrame | None = None,
    force: bool = False,
    operator: str = "",
    k: int = mx.DEFAULT_TOP_K,
    effective_from: datetime | None = None,
    model: ModelSpec | None = None,
) -> registry.Champion:
    """Point the champion back at ``to_version``, or at the version the current champion replaced.

    Not forced: the target must pass the gate's checks on ``holdout_frame`` (integrity, non-empty,
    non-NaN, non-constant predictions, servable with the current feature-group versions, holdout
    after its training split) — else :class:`RollbackRefused`, audited. Forced: ``operator`` is
    required, the holdout checks are skipped, the audit entry records ``forced`` and the operator.
    Integrity (bytes, sha256, signature) is checked either way (``registry.set_champion``).
    ``effective_from``: the event time from which the restored version serves (default now)."""
    current = registry.champion(lake)
    target = to_version
    if target is None:
        if current is None or current.previous is None:
            raise ValueError("no previous champion to roll back to")
        target = current.previous
    if force:
        if not operator.strip():
            raise ValueError("a forced rollback needs the operator's name (it is audited)")
        return registry.set_champion(
            lake,
            target,
            reason,
            action="rollback",
            audit={"forced": True, "operator": operator},
            effective_from=effective_from,
        )
    if holdout_frame is None:
        raise ValueError(
            "a rollback goes through the promotion gate: give a holdout frame, or force=True with an operator"
        )
    try:
        failures = evaluate_on_holdout(lake, target, holdout_frame, k=k, model=model)["sanity_failures"]
    except registry.IntegrityError as exc:
        failures = [f"integrity ({exc.reason}): {exc}"]
    if failures:
        registry.append_audit(
            lake,
            {
                "action": "rollback_refused",
                "version": target,
                "reason": reason,
                "reasons": failures,
                "champion": current.version if current else None,
            },
        )
        raise RollbackRefused(f"rollback to {target} refused by the gate: {'; '.join(failures)}")
    return registry.set_champion(
        lake,
        target,
        reason,
        action="rollback",
        audit={"forced": False, "operator": operator or None},
        effective_from=effective_from,
    )
