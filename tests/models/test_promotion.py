"""The promotion gate on real trained models in a real (local) registry: it refuses constant, unservable,
stale and worse challengers, accepts better ones, records every decision, and rolls back."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from risk_assets.features.groups import FEATURE_GROUPS
from risk_assets.lake import Lake
from risk_assets.models import registry
from risk_assets.models.promotion import (
    Decision,
    RollbackRefused,
    ShadowRequirement,
    decide,
    evaluate_on_holdout,
    prediction_failures,
    promote_if_better,
    promote_or_shadow,
    recent_holdout,
    rollback,
    servability_failures,
    shadow_failures,
    waits_for_shadow,
)
from risk_assets.models.request_features import REQUEST_FEATURE_NAMES
from risk_assets.models.scoring import champion_at
from risk_assets.models.training import TrainedModel, TrainingParams, manifest_for, train
from tests.models.test_model_training import FAST, simulated_training_set, trained_model

AUX = replace(FAST, n_estimators=60, early_stopping_rounds=15)


def test_decide_rules() -> None:
    good = {"average_precision": 0.50, "auc": 0.99}
    champ = {"average_precision": 0.45, "auc": 0.99}
    assert decide(good, None).promote
    assert decide(good, champ, margin=0.01).promote
    assert not decide(good, champ, margin=0.06).promote
    assert not decide(champ, good).promote
    assert decide(good, champ, metric="auc", margin=0.0).promote
    refused = decide(good, None, sanity=["constant predictions (std 0)"])
    assert refused == Decision(False, ["sanity: constant predictions (std 0)"])
    assert not decide(good, champ, sanity=["x"]).promote
    assert not decide({"average_precision": None}, None).promote


def test_sanity_checks() -> None:
    assert prediction_failures(np.zeros(0)) == ["no predictions on the holdout"]
    assert any("constant" in r for r in prediction_failures(np.full(10, 0.3)))
    assert any("NaN" in r for r in prediction_failures(np.array([0.1, np.nan, 0.4])))
    assert prediction_failures(np.array([0.1, 0.2])) == []
    versions = {g.name: g.version for g in FEATURE_GROUPS}
    ok = [*REQUEST_FEATURE_NAMES, "ato_user__login_count_1h", "p2p_counterparty__distinct_users_7d"]
    assert servability_failures(ok, versions) == []
    assert any("not servable" in r for r in servability_failures([*ok, "user_id"], versions))
    assert any("not servable" in r for r in servability_failures(["ato_user__no_such_feature"], versions))
    stale = {**versions, "ato_user": "000000000000"}
    assert any("'ato_user' is version" in r for r in servability_failures(ok, stale))
    assert any("lacks the version" in r for r in servability_failures(ok, {}))


def _register(lake: Lake, trained: TrainedModel, manifest_overrides: dict | None = None) -> str:
    s = simulated_training_set()
    manifest = {**manifest_for(trained, s.manifest, FEATURE_GROUPS), **(manifest_overrides or {})}
    return registry.register(lake, trained.model_bytes, manifest)


def test_gate_end_to_end(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    s = simulated_training_set()
    good = trained_model()
    features = s.manifest["features"]
    holdout = recent_holdout(s.frame, days=2.0)
    assert holdout["event_ts"].min() >= good.split.test_start
    assert holdout["is_fraud"].sum() > 50

    # 1. A constant model (it learned nothing: every feature flattened) is refused even without a
    #    champion.
    flat = s.frame.with_columns(pl.lit(0.0).alias(f) for f in features)
    constant = _register(lake, train(flat, features, AUX))
    d = promote_if_better(lake, constant, holdout)
    assert not d.promote and any("constant predictions" in r for r in d.reasons), d
    assert registry.champion(lake) is None

    # 2. A model reading a column the online store cannot serve is refused, however good it looks.
    leaky = s.frame.with_columns(pl.col("is_fraud").cast(pl.Float64).alias("label_leak"))
    leak = _register(lake, train(leaky, [*features[:10], "label_leak"], AUX))
    leak_holdout = recent_holdout(leaky, days=2.0)
    assert evaluate_on_holdout(lake, leak, leak_holdout)["metrics"]["average_precision"] > 0.99
    d = promote_if_better(lake, leak, leak_holdout)
    assert not d.promote and any("not servable" in r for r in d.reasons), d

    # 3. A model built on another version of a feature group than the current definitions: refused.
    stale_versions = {**manifest_for(good, s.manifest, FEATURE_GROUPS)["feature_groups"]}
    stale_versions["ato_user"] = "000000000000"
    stale = _register(lake, good, {"feature_groups": stale_versions, "note": "stale"})
    d = promote_if_better(lake, stale, holdout)
    assert not d.promote and any("'ato_user' is version" in r for r in d.reasons), d
    assert registry.champion(lake) is None

    # 4. A weak model (request features only): no champion yet and sane → promoted.
    weak_model = train(s.frame, list(REQUEST_FEATURE_NAMES), AUX)
    weak = _register(lake, weak_model)
    d = promote_if_better(lake, weak, holdout)
    assert d.promote, d
    assert registry.champion(lake).version == weak

    # 5. The full model beats it on the same holdout by more than the margin → promoted.
    best = _register(lake, good)
    d = promote_if_better(lake, best, holdout, margin=0.05)
    assert d.promote, d
    assert registry.champion(lake).version == best
    assert registry.champion(lake).previous == weak

    # 6. Worse challengers are refused: shuffled labels, and most features dropped.
    rng = np.random.default_rng(0)
    perm = rng.permutation(s.frame.height)
    shuffled_frame = s.frame.with_columns(
        pl.Series("is_fraud", s.frame["is_fraud"].to_numpy()[perm]),
        pl.Series("scenario", s.frame["scenario"].to_numpy()[perm]),
    )
    shuffled = _register(lake, train(shuffled_frame, features, AUX))
    d = promote_if_better(lake, shuffled, holdout)
    assert not d.promote and any("does not beat champion" in r for r in d.reasons), d
    d = promote_if_better(lake, weak, holdout)
    assert not d.promote and any("does not beat champion" in r for r in d.reasons), d
    assert registry.champion(lake).version == best

    # 7. The audit trail records every refusal (reasons + both metrics) and every promotion.
    trail = registry.audit_trail(lake)
    refusals = [e for e in trail if e["action"] == "refuse"]
    assert [e["version"] for e in refusals] == [constant, leak, stale, shuffled, weak]
    for e in refusals:
        assert e["reasons"] and e["challenger_metrics"] is not None
    assert refusals[-1]["champion"] == best
    assert (
        refusals[-1]["champion_metrics"]["average_precision"]
        > refusals[-1]["challenger_metrics"]["average_precision"]
    )
    assert refusals[0]["champion_metrics"] is None  # no champion at the time
    assert [e["version"] for e in trail if e["action"] == "promote"] == [weak, best]
    assert [e["version"] for e in trail if e["action"] == "gate_pass"] == [weak, best]

    # 8. Rollback: to the previous champion, then forward to a named version.
    back = rollback(lake, reason="alert volume doubled", holdout_frame=holdout)
    assert back.version == weak and registry.champion(lake).version == weak
    assert rollback(lake, to_version=best, reason="false alarm", holdout_frame=holdout).version == best
    rollbacks = [e for e in registry.audit_trail(lake) if e["action"] == "rollback"]
    assert [(e["version"], e["reason"]) for e in rollbacks] == [
        (weak, "alert volume doubled"),
        (best, "false alarm"),
    ]
    # Re-submitting the champion itself is a no-op.
    assert not promote_if_better(lake, best, holdout).promote


def test_rollback_without_history_fails(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no previous champion"):
        rollback(Lake(str(tmp_path)), reason="nothing to roll back")


def test_holdout_overlapping_training_is_refused(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path))
    s = simulated_training_set()
    version = _register(lake, trained_model())
    early = s.frame.filter(pl.col("event_ts") < trained_model().split.train_end)
    d = promote_if_better(lake, version, early.tail(20_000))
    assert not d.promote and any("before the model's training split ended" in r for r in d.reasons), d


def test_params_are_plain_values() -> None:
    """``TrainingParams`` holds only scalars (dates as ISO strings), so the Launchpad config can mirror it
    field by field."""
    from dataclasses import fields

    assert all(
        f.type in ("int", "float", "float | None", "bool", "str | None") for f in fields(TrainingParams)
    )


# ---- registry integrity (issue 9, D11) ------------------------------------------------------------


def _corrupt(lake: Lake, version: str) -> None:
    """Flip bytes in the middle of a version's model.ubj (the manifest keeps the old sha256)."""
    path = Path(lake.uri(registry.version_paths(version)[0]))
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(b ^ 0xFF for b in data[mid : mid + 64])
    path.write_bytes(bytes(data))


def _weak_and_best(lake: Lake) -> tuple[str, str, pl.DataFrame]:
    s = simulated_training_set()
    weak = _register(lake, train(s.frame, list(REQUEST_FEATURE_NAMES), AUX))
    best = _register(lake, trained_model())
    return weak, best, recent_holdout(s.frame, days=2.0)


def test_pointer_changes_check_bytes_and_sha(tmp_path: Path) -> None:
    """set_champion, promotion and rollback never point at a version whose bytes do not match its
    sha256: refused, audited, pointer unchanged."""
    lake = Lake(str(tmp_path))
    weak, best, holdout = _weak_and_best(lake)
    assert promote_if_better(lake, weak, holdout).promote
    _corrupt(lake, best)
    with pytest.raises(registry.IntegrityError, match="sha256") as info:
        registry.set_champion(lake, best, "direct")
    assert info.value.reason == "sha_mismatch"
    assert registry.champion(lake).version == weak
    d = promote_if_better(lake, best, holdout)
    assert not d.promote and any("integrity (sha_mismatch)" in r for r in d.reasons), d
    with pytest.raises(registry.IntegrityError):
        rollback(lake, to_version=best, reason="forced at a corrupt one", force=True, operator="ops")
    assert registry.champion(lake).version == weak
    refused = [e for e in registry.audit_trail(lake) if e["action"] == "pointer_refused"]
    assert [(e["version"], e["attempted"], e["integrity"]) for e in refused] == [
        (best, "promote", "sha_mismatch"),
        (best, "rollback", "sha_mismatch"),
    ]
    # A missing version is refused the same way.
    with pytest.raises(registry.IntegrityError, match="not in the registry"):
        registry.set_champion(lake, "20260101T000000-000000000000", "typo")


def test_gate_survives_a_corrupt_champion(tmp_path: Path) -> None:
    """A corrupt champion does not crash the gate: a healthy challenger replaces it, and the audit
    says the champion did not verify."""
    lake = Lake(str(tmp_path))
    weak, best, holdout = _weak_and_best(lake)
    assert promote_if_better(lake, weak, holdout).promote
    _corrupt(lake, weak)
    d = promote_if_better(lake, best, holdout)
    assert d.promote, d
    assert any(f"champion {weak} does not verify" in r for r in d.reasons), d
    assert registry.champion(lake).version == best
    entry = [e for e in registry.audit_trail(lake) if e["action"] == "gate_pass"][-1]
    assert entry["champion_integrity"].startswith("sha_mismatch")
    assert entry["champion_metrics"] is None


def test_rollback_goes_through_the_gate_unless_forced(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path))
    s = simulated_training_set()
    weak, best, holdout = _weak_and_best(lake)
    stale_versions = {**manifest_for(trained_model(), s.manifest, FEATURE_GROUPS)["feature_groups"]}
    stale_versions["ato_user"] = "000000000000"
    stale_manifest = {
        **manifest_for(trained_model(), s.manifest, FEATURE_GROUPS),
        "feature_groups": stale_versions,
    }
    # Same bytes as ``best``: a different creation time keeps the two version ids apart.
    stale = registry.register(
        lake, trained_model().model_bytes, stale_manifest, created=datetime(2026, 1, 1, tzinfo=UTC)
    )
    assert stale != best
    assert promote_if_better(lake, weak, holdout).promote
    assert promote_if_better(lake, best, holdout, margin=0.05).promote
    # A rollback to a version the gate refuses (built on another feature-group version): refused.
    with pytest.raises(RollbackRefused, match="'ato_user' is version"):
        rollback(lake, to_version=stale, reason="try the stale one", holdout_frame=holdout)
    assert registry.champion(lake).version == best
    # Without a holdout and not forced: the gate cannot run, nothing moves.
    with pytest.raises(ValueError, match="goes through the promotion gate"):
        rollback(lake, reason="no holdout")
    with pytest.raises(ValueError, match="operator"):
        rollback(lake, to_version=stale, reason="forced anonymously", force=True)
    assert registry.champion(lake).version == best
    # Forced by a named operator: allowed (integrity still checked) and audited as forced.
    assert (
        rollback(lake, to_version=stale, reason="incident 42", force=True, operator="alice").version == stale
    )
    trail = registry.audit_trail(lake)
    assert [e["version"] for e in trail if e["action"] == "rollback_refused"] == [stale]
    last = trail[-1]
    assert (last["action"], last["version"], last["forced"], last["operator"]) == (
        "rollback",
        stale,
        True,
        "alice",
    )


def test_signed_manifests_refuse_a_consistent_tamper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A booster replaced together with a consistent manifest sha256 passes the hash check; with a
    signing key the signature catches it."""
    import hashlib
    import json

    lake = Lake(str(tmp_path))
    s = simulated_training_set()
    monkeypatch.setenv(registry.ENV_SIGNING_KEY, "k" * 32)
    weak = _register(lake, train(s.frame, list(REQUEST_FEATURE_NAMES), AUX))
    target = _register(lake, trained_model())
    manifest, _ = registry.verify_version(lake, target)
    assert manifest[registry.SIGNATURE] == registry.manifest_signature(manifest, b"k" * 32)
    # Tamper: the target's booster becomes the weak one, the manifest's sha256 follows it.
    model_path, manifest_path = registry.version_paths(target)
    other = lake.read_bytes(registry.version_paths(weak)[0])
    lake.write_bytes(model_path, other)
    tampered = {**manifest, "model_sha256": hashlib.sha256(other).hexdigest()}
    lake.write_bytes(manifest_path, json.dumps(tampered).encode())
    with pytest.raises(registry.IntegrityError) as info:
        registry.set_champion(lake, target, "tampered")
    assert info.value.reason == "bad_signature"
    assert registry.champion(lake) is None
    # Without the key the tamper is invisible (a sha256 is not a signature): that is why the key exists.
    monkeypatch.delenv(registry.ENV_SIGNING_KEY)
    registry.verify_version(lake, target)
    # With the key, an unsigned manifest is refused as well.
    monkeypatch.setenv(registry.ENV_SIGNING_KEY, "k" * 32)
    unsigned = registry.register(lake, other, {"features": []}, signing_key=b"")
    with pytest.raises(registry.IntegrityError) as info:
        registry.verify_version(lake, unsigned)
    assert info.value.reason == "unsigned"


def test_gate_requires_a_shadow_period_when_configured(tmp_path: Path) -> None:
    """With a shadow period required, a challenger that beats the champion on the holdout is still
    refused until its shadow evidence (days in shadow, labelled shadow-scored events) is enough;
    the reasons say so, the audit records the requirement, the pointer stays; with enough evidence
    it is promoted and the promotion carries its effective_from (event time)."""
    lake = Lake(str(tmp_path))
    weak, best, holdout = _weak_and_best(lake)
    assert promote_if_better(lake, weak, holdout).promote
    need = ShadowRequirement(min_days=3.0, min_labelled=500)

    d = promote_if_better(lake, best, holdout, margin=0.05, shadow=need, shadow_evidence=None)
    assert not d.promote and waits_for_shadow(d), d
    assert any("has not been scored in shadow" in r for r in d.reasons), d
    assert registry.champion(lake).version == weak

    short = {"shadow_version": best, "shadow_days": 1.5, "labelled": 120}
    d = promote_if_better(lake, best, holdout, margin=0.05, shadow=need, shadow_evidence=short)
    assert not d.promote and waits_for_shadow(d), d
    assert any("1.50 days in shadow, 3 required" in r for r in d.reasons), d
    assert any("120 labelled shadow-scored events, 500 required" in r for r in d.reasons), d
    entry = registry.audit_trail(lake)[-1]
    assert entry["action"] == "refuse" and entry["shadow_required"] == {"min_days": 3.0, "min_labelled": 500}
    assert entry["shadow_evidence"]["shadow_days"] == 1.5
    # Evidence of another version does not count.
    other = {"shadow_version": weak, "shadow_days": 9.0, "labelled": 9000}
    assert not promote_if_better(lake, best, holdout, margin=0.05, shadow=need, shadow_evidence=other).promote
    # A challenger that loses on the holdout is not "waiting for its shadow": other reasons too.
    d = promote_if_better(lake, weak, holdout, shadow=need, shadow_evidence=None)
    assert not d.promote and not waits_for_shadow(d)

    enough = {"shadow_version": best, "shadow_days": 3.2, "labelled": 800}
    served_from = datetime(2026, 6, 10, tzinfo=UTC)
    d = promote_if_better(
        lake, best, holdout, margin=0.05, shadow=need, shadow_evidence=enough, effective_from=served_from
    )
    assert d.promote, d
    assert registry.champion(lake).version == best
    promote = [e for e in registry.audit_trail(lake) if e["action"] == "promote"][-1]
    assert promote["version"] == best and promote["effective_from"] == served_from.isoformat()
    # Without a requirement the evidence is not consulted.
    assert shadow_failures(best, ShadowRequirement(), None) == []


def test_shadow_pointer_has_the_champions_integrity_checks(tmp_path: Path) -> None:
    """set_shadow verifies bytes and sha like set_champion (refusal audited, pointer unchanged),
    refuses the champion itself, and clear_shadow removes the pointer (audited)."""
    lake = Lake(str(tmp_path))
    weak, best, holdout = _weak_and_best(lake)
    assert promote_if_better(lake, weak, holdout).promote
    with pytest.raises(ValueError, match="is the champion"):
        registry.set_shadow(lake, weak, "no")
    assert registry.set_shadow(lake, best, "try it").version == best
    assert registry.shadow(lake).version == best
    third = _register(lake, train(simulated_training_set().frame, list(REQUEST_FEATURE_NAMES)[:4], AUX))
    _corrupt(lake, third)
    with pytest.raises(registry.IntegrityError) as info:
        registry.set_shadow(lake, third, "corrupt")
    assert info.value.reason == "sha_mismatch"
    assert registry.shadow(lake).version == best
    refused = registry.audit_trail(lake)[-1]
    assert (refused["action"], refused["attempted"]) == ("pointer_refused", "shadow")
    assert refused["version"] == third
    assert registry.clear_shadow(lake, "done") == best
    assert registry.shadow(lake) is None and registry.clear_shadow(lake, "again") is None
    actions = [e["action"] for e in registry.audit_trail(lake)]
    assert actions[-3:] == ["shadow_set", "pointer_refused", "shadow_cleared"]


def test_daily_promotion_puts_a_challenger_in_shadow_then_promotes_it(tmp_path: Path) -> None:
    """The model_promotion flow with a shadow period required: the day's better challenger is
    refused only for its missing shadow period and put in shadow; the next day the shadow (not the
    new day's challenger) is the candidate, refused while its evidence is short, then promoted at
    the partition's event time and the shadow cleared."""
    lake = Lake(str(tmp_path))
    weak, best, holdout = _weak_and_best(lake)
    assert promote_if_better(lake, weak, holdout, effective_from=datetime(2026, 6, 1, tzinfo=UTC)).promote
    need = ShadowRequirement(min_days=2.0, min_labelled=100)
    evidence: dict[str, dict] = {}
    kw = {"requirement": need, "evidence_of": evidence.get, "margin": 0.05}

    d, candidate, note = promote_or_shadow(lake, best, holdout, label="day 1", **kw)
    assert not d.promote and candidate == best and "now scored in shadow" in note
    assert registry.shadow(lake).version == best and registry.champion(lake).version == weak

    # Day 2: another challenger arrives, but the shadow is the candidate; its evidence is short.
    evidence[best] = {"shadow_version": best, "shadow_days": 1.0, "labelled": 40}
    d, candidate, note = promote_or_shadow(lake, weak, holdout, label="day 2", **kw)
    assert not d.promote and candidate == best and note.startswith(f"{best} in shadow")
    assert registry.shadow(lake).version == best

    evidence[best] = {"shadow_version": best, "shadow_days": 2.5, "labelled": 300}
    day_end = datetime(2026, 6, 4, tzinfo=UTC)
    d, candidate, note = promote_or_shadow(lake, weak, holdout, label="day 3", effective_from=day_end, **kw)
    assert d.promote and candidate == best and "shadow cleared" in note
    assert registry.champion(lake).version == best and registry.shadow(lake) is None
    assert champion_at(lake, day_end) == best
    assert champion_at(lake, day_end - timedelta(milliseconds=1)) == weak

    # Without a requirement: the day's challenger, no shadow involved.
    d, candidate, note = promote_or_shadow(
        lake, weak, holdout, requirement=ShadowRequirement(), evidence_of=evidence.get, label="day 4"
    )
    assert candidate == weak and note == "-" and registry.shadow(lake) is None
