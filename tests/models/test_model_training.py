"""Metrics against brute-force definitions, the time split, reproducible training, and an end-to-end
run on simulated traffic: simulator → training set (features at each event's time, v2) → XGBoost,
compared with the hand-written rules baseline on the same test split."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
import pytest

from risk_assets.features.groups import FEATURE_GROUPS
from risk_assets.models import metrics as mx
from risk_assets.models.rules_baseline import evaluate_rules, score_rules
from risk_assets.models.training import (
    TrainedModel,
    TrainingParams,
    feature_matrix,
    load_booster,
    manifest_for,
    predict,
    time_split,
    train,
)
from risk_assets.models.training_set import TrainingSetSpec, build_training_set
from risk_assets.simulator import SimConfig, generate

# ---------------------------------------------------------------------------------------------
# Simulated data shared with tests/test_promotion.py (built once per process).
# Fraud rates are 3–5× the simulator's defaults so a 14-day window of a 2,500-user exchange holds a
# few hundred labelled cases; maturity 4 days lets most ATO and half the P2P reports arrive (card
# chargebacks take ~12 days: few of them are known at the cutoff, as in production).
START = datetime(2026, 11, 1, tzinfo=UTC)
SIM = SimConfig(
    seed=11,
    start=START,
    hours=24 * 18,
    events_per_day=30_000,
    users=2_500,
    ato_cases_per_m=660.0,
    p2p_scam_victims_per_m=1_500.0,
    card_testing_cases_per_m=200.0,
)
SPEC = TrainingSetSpec(as_of=SIM.end, window=timedelta(days=12), maturity=timedelta(days=4))
FAST = TrainingParams(n_estimators=200, learning_rate=0.1, early_stopping_rounds=30)


@dataclass(frozen=True)
class SimulatedSet:
    frame: pl.DataFrame
    manifest: dict[str, Any]
    truth: pl.DataFrame  # event_id, truth (simulator ground truth), truth_scenario
    events: int


@functools.cache
def simulated_training_set() -> SimulatedSet:
    """A point-in-time training set over simulated traffic, built exactly as the assets build it."""
    data = generate(SIM, workers=2)
    frame, manifest = build_training_set(SPEC, data.events, data.labels, FEATURE_GROUPS)
    truth = data.ground_truth.select(
        "event_id", pl.col("is_fraud").alias("truth"), pl.col("scenario").alias("truth_scenario")
    )
    return SimulatedSet(frame, manifest, truth, data.events.height)


@functools.cache
def trained_model() -> TrainedModel:
    s = simulated_training_set()
    return train(s.frame, s.manifest["features"], FAST)


# ---------------------------------------------------------------------------------------------
# Brute-force metric definitions (loops over rows / pairs / thresholds; no shared code).
def bf_auc(y: np.ndarray, s: np.ndarray, w: np.ndarray) -> float:
    num = den = 0.0
    for i in np.flatnonzero(y):
        for j in np.flatnonzero(~y):
            den += w[i] * w[j]
            num += w[i] * w[j] * (1.0 if s[i] > s[j] else 0.5 if s[i] == s[j] else 0.0)
    return num / den


def bf_curve(y: np.ndarray, s: np.ndarray, w: np.ndarray) -> list[tuple[float, float, float]]:
    """(threshold, weighted recall, weighted precision, weighted FPR) for every distinct score."""
    p, n = (w * y).sum(), (w * ~y).sum()
    out = []
    for t in sorted(set(s.tolist()), reverse=True):
        flag = s >= t
        tp, fp = (w * (flag & y)).sum(), (w * (flag & ~y)).sum()
        out.append((tp / p, tp / (tp + fp) if tp + fp > 0 else 0.0, fp / n))
    return out


def bf_ap(y: np.ndarray, s: np.ndarray, w: np.ndarray) -> float:
    ap, prev = 0.0, 0.0
    for recall, precision, _ in bf_curve(y, s, w):
        ap += (recall - prev) * precision
        prev = recall
    return ap


def bf_recall_at_fpr(y: np.ndarray, s: np.ndarray, w: np.ndarray, max_fpr: float) -> float:
    return max([0.0] + [r for r, _, f in bf_curve(y, s, w) if f <= max_fpr])


def bf_topk_precision(y: list[bool], s: list[float], k: int) -> float:
    """Expected precision of the top k over every tie-break order (all permutations)."""
    vals = []
    for perm in itertools.permutations(range(len(y))):
        order = sorted(perm, key=lambda i: -s[i])  # stable: ties keep the permutation's order
        top = order[:k]
        vals.append(sum(y[i] for i in top) / len(top))
    return float(np.mean(vals))


def bf_ece(y: np.ndarray, s: np.ndarray, w: np.ndarray, bins: int = 10) -> float:
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        m = (s >= lo) & ((s < hi) if b < bins - 1 else (s <= hi))
        if w[m].sum() > 0:
            total += abs((w[m] * y[m]).sum() - (w[m] * s[m]).sum())
    return total / w.sum()


def random_case(rng: np.random.Generator, n: int, ties: bool) -> tuple[np.ndarray, ...]:
    y = rng.random(n) < 0.3
    y[0], y[1] = True, False
    s = rng.integers(0, 6, n) / 5.0 if ties else rng.random(n)
    s = np.clip(s + 0.3 * y * rng.random(n), 0, 1)
    w = rng.choice([1.0, 2.0, 5.0, 0.5], n)
    return y, s, w


@pytest.mark.parametrize("seed", range(12))
def test_metrics_match_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y, s, w = random_case(rng, int(rng.integers(5, 60)), ties=seed % 2 == 0)
    for weight in (w, np.ones_like(w)):
        assert mx.roc_auc(y, s, weight) == pytest.approx(bf_auc(y, s, weight), abs=1e-12)
        assert mx.average_precision(y, s, weight) == pytest.approx(bf_ap(y, s, weight), abs=1e-12)
        for fpr in (0.0, 0.01, 0.1, 0.3):
            got = mx.recall_at_fpr(y, s, fpr, weight)
            assert got == pytest.approx(bf_recall_at_fpr(y, s, weight, fpr), abs=1e-12)
        assert mx.expected_calibration_error(y, s, weight) == pytest.approx(bf_ece(y, s, weight), abs=1e-12)


def test_weights_equal_replicating_rows() -> None:
    rng = np.random.default_rng(5)
    y, s, _ = random_case(rng, 40, ties=True)
    w = rng.integers(1, 4, 40).astype(float)
    rep = np.repeat(np.arange(40), w.astype(int))
    for fn in (mx.roc_auc, mx.average_precision, mx.expected_calibration_error):
        assert fn(y, s, w) == pytest.approx(fn(y[rep], s[rep]), abs=1e-12)
    assert mx.recall_at_fpr(y, s, 0.1, w) == pytest.approx(mx.recall_at_fpr(y[rep], s[rep], 0.1))
    assert mx.precision_at_top_k(y, s, 7, w) == pytest.approx(mx.precision_at_top_k(y[rep], s[rep], 7))


@pytest.mark.parametrize("seed", range(8))
def test_top_k_is_the_expected_precision_over_tie_breaks(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    n = 7
    y = rng.random(n) < 0.5
    s = rng.integers(0, 3, n).astype(float)
    for k in (1, 3, 5, 7, 9):
        hits, cases = mx.precision_at_top_k(y, s, k)
        assert cases == min(k, n)
        assert hits / cases == pytest.approx(bf_topk_precision(y.tolist(), s.tolist(), k), abs=1e-12)


def test_top_k_per_day_pools_daily_queues() -> None:
    day = np.datetime64("2026-11-03T00:00", "ms")
    ts = np.array([day + np.timedelta64(h, "h") for h in (1, 2, 3, 4, 25, 26, 27)])
    y = np.array([True, False, True, False, False, False, True])
    s = np.array([0.9, 0.8, 0.7, 0.1, 0.9, 0.5, 0.4])
    # day 1 top-2: 0.9 (pos), 0.8 (neg) → 1 hit; day 2 top-2: 0.9 (neg), 0.5 (neg) → 0 hits.
    assert mx.precision_at_top_k_per_day(y, s, ts, k=2) == pytest.approx(1 / 4)
    assert mx.precision_at_top_k_per_day(y, s, ts.astype(np.int64), k=3) == pytest.approx(3 / 6)


def test_known_values_and_undefined_cases() -> None:
    y = np.array([True, True, False, False])
    assert mx.roc_auc(y, [0.9, 0.8, 0.2, 0.1]) == 1.0
    assert mx.roc_auc(y, [0.1, 0.2, 0.8, 0.9]) == 0.0
    assert mx.roc_auc(y, [0.5] * 4) == 0.5
    assert mx.average_precision(y, [0.9, 0.8, 0.2, 0.1]) == 1.0
    assert mx.average_precision(y, [0.5] * 4) == 0.5
    assert mx.recall_at_fpr(y, [0.9, 0.8, 0.2, 0.1], 0.0) == 1.0
    assert mx.roc_auc([False, False], [0.1, 0.2]) is None
    assert mx.average_precision([False, False], [0.1, 0.2]) is None
    assert mx.expected_calibration_error([True, False], [1.0, 0.0]) == 0.0
    with pytest.raises(ValueError, match="NaN"):
        mx.roc_auc(y, [0.1, np.nan, 0.2, 0.3])


def test_evaluate_by_scenario_is_one_scenario_against_all_negatives() -> None:
    rng = np.random.default_rng(3)
    n = 400
    y = rng.random(n) < 0.2
    sc = np.where(y, rng.choice(["ato", "p2p_scam"], n), None)
    s, w = rng.random(n) + 0.2 * y, rng.choice([1.0, 4.0], n)
    ts = np.datetime64("2026-11-01", "ms") + rng.integers(0, 3 * 86_400_000, n).astype("timedelta64[ms]")
    out = mx.evaluate(y, np.clip(s, 0, 1), w, ts, sc, k=10)
    for name in ("ato", "p2p_scam"):
        m = ~y | (sc == name)
        sub = out["by_scenario"][name]
        assert sub["positives"] == int((y & (sc == name)).sum())
        assert sub["auc"] == pytest.approx(mx.roc_auc(y[m], s[m], w[m]))
        assert sub["average_precision"] == pytest.approx(mx.average_precision(y[m], s[m], w[m]))
    assert json.loads(json.dumps(out)) == out  # JSON-safe (manifest, audit trail)


# ---------------------------------------------------------------------------------------------
def synthetic_frame(n: int = 6_000, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(size=n)) > 2.6
    ts = np.datetime64("2026-11-01T00:00", "ms") + np.sort(rng.integers(0, 10 * 86_400_000, n)).astype(
        "timedelta64[ms]"
    )
    return pl.DataFrame(
        {
            "event_id": [f"e{i:06d}" for i in range(n)],
            "event_ts": ts,
            "is_fraud": y,
            "scenario": np.where(y, "ato", None),
            "weight": np.ones(n),
            **{f"f{j}": x[:, j] for j in range(4)},
        }
    ).with_columns(pl.col("event_ts").dt.replace_time_zone("UTC"))


def test_time_split_respects_the_gap_and_never_shuffles() -> None:
    frame = synthetic_frame()
    params = TrainingParams(gap_hours=24)
    bounds, tr, va, te = time_split(frame, params)
    gap = timedelta(hours=24)
    assert va["event_ts"].min() >= tr["event_ts"].max() + gap
    assert te["event_ts"].min() >= va["event_ts"].max() + gap
    assert te["event_ts"].min() >= tr["event_ts"].max() + gap
    assert bounds.validation_start - bounds.train_end == gap == bounds.test_start - bounds.validation_end
    dropped = frame.height - tr.height - va.height - te.height
    in_gaps = frame.filter(
        pl.col("event_ts").is_between(bounds.train_end, bounds.validation_start, closed="left")
        | pl.col("event_ts").is_between(bounds.validation_end, bounds.test_start, closed="left")
    )
    assert dropped == in_gaps.height > 0
    assert bounds.rows == {"train": tr.height, "validation": va.height, "test": te.height}
    with pytest.raises(ValueError, match="too short"):
        time_split(frame, TrainingParams(gap_hours=24 * 6))


def test_training_is_reproducible_and_the_seed_matters() -> None:
    frame = synthetic_frame()
    params = TrainingParams(n_estimators=40, early_stopping_rounds=10, nthread=2)
    a = train(frame, ["f0", "f1", "f2", "f3"], params)
    b = train(frame.sample(fraction=1.0, shuffle=True, seed=1), ["f0", "f1", "f2", "f3"], params)
    assert a.model_bytes == b.model_bytes
    c = train(
        frame, ["f0", "f1", "f2", "f3"], TrainingParams(n_estimators=40, early_stopping_rounds=10, seed=3)
    )
    assert c.model_bytes != a.model_bytes
    # The stored bytes are the scored model; inplace predictions agree with a DMatrix prediction.
    booster = load_booster(a.model_bytes)
    x = feature_matrix(frame, a.features)
    import xgboost as xgb

    assert np.allclose(predict(booster, x), booster.predict(xgb.DMatrix(x, feature_names=a.features)))
    assert predict(booster, x[0]).shape == (1,)
    assert a.metrics["auc"] > 0.8


def test_prior_correction_keeps_scores_calibrated() -> None:
    """Up-weighting positives inflates the odds; the model shifts its base margin back, so the mean
    score tracks the positive rate instead of sitting near 0.5."""
    frame = synthetic_frame(n=8_000, seed=2)
    m = train(frame, ["f0", "f1", "f2", "f3"], TrainingParams(n_estimators=60, early_stopping_rounds=20))
    assert m.scale_pos_weight > 10
    _, _, _, te = time_split(frame, m.params)
    scores = predict(m.booster, feature_matrix(te, m.features))
    assert scores.mean() == pytest.approx(te["is_fraud"].mean(), rel=0.5)
    assert m.metrics["ece"] < 0.05


# ---------------------------------------------------------------------------------------------
KEYS = (
    "auc",
    "average_precision",
    "recall_at_1pct_fpr",
    "recall_at_0_1pct_fpr",
    "precision_at_top_k_per_day",
    "ece",
)


def _fmt(m: dict[str, Any]) -> str:
    return " ".join(f"{k}={m[k]:.4f}" if m.get(k) is not None else f"{k}=n/a" for k in KEYS)


def test_end_to_end_model_beats_rules_on_simulated_traffic() -> None:
    s = simulated_training_set()
    m = trained_model()
    _, _, _, test = time_split(s.frame.sort("event_ts", "event_id"), m.params)
    rules = evaluate_rules(test, k=m.params.top_k)
    # Against the labels known at the cutoff (what the gate sees).
    print(
        f"\nsim {SIM.hours // 24} days, {s.events:,} events; set {s.manifest['rows']:,} rows, "
        f"{s.manifest['positives']} positives {s.manifest['positives_by_scenario']}; "
        f"split {m.split.rows} positives {m.split.positives}; "
        f"best iteration {m.best_iteration}, {m.training_seconds:.1f}s"
    )
    print(f"model  test: {_fmt(m.metrics)}")
    print(f"rules  test: {_fmt(rules)}")
    for name, sub in m.metrics_by_scenario.items():
        print(f"model  {name} ({sub['positives']} pos): {_fmt(sub)}")
        print(f"rules  {name}: {_fmt(rules['by_scenario'][name])}")
    assert m.metrics["auc"] > 0.95
    assert m.metrics["average_precision"] > 2 * rules["average_precision"]
    assert m.metrics["recall_at_1pct_fpr"] > rules["recall_at_1pct_fpr"]
    assert m.metrics["ece"] < 0.01
    for name, sub in m.metrics_by_scenario.items():
        assert sub["auc"] > 0.9, name
        assert sub["average_precision"] > rules["by_scenario"][name]["average_precision"], name

    # Against the simulator's ground truth (unlabelled fraud counted as fraud): reported, see docs.
    truth = test.join(s.truth, on="event_id", how="left", maintain_order="left")
    scores = predict(m.booster, feature_matrix(truth, m.features))
    args = (truth["truth"].to_numpy(), truth["weight"].to_numpy(), truth["event_ts"].to_numpy())
    sc = truth["truth_scenario"].to_numpy()
    for label, sc_scores in (("model", scores), ("rules", score_rules(truth))):
        out = mx.evaluate(args[0], sc_scores, args[1], args[2], sc, k=m.params.top_k)
        print(f"{label}  truth: {_fmt(out)}")
        for name, sub in out["by_scenario"].items():
            print(f"{label}  truth {name} ({sub['positives']} pos): {_fmt(sub)}")

    # The registry manifest carries what the gate and the serving side need.
    manifest = manifest_for(m, s.manifest, FEATURE_GROUPS)
    assert manifest["features"] == s.manifest["features"]
    assert manifest["training_set"]["data_sha256"] == s.manifest["data_sha256"]
    assert manifest["feature_groups"] == {
        g.name: g.version for g in FEATURE_GROUPS if any(f.startswith(f"{g.name}__") for f in m.features)
    }
    assert json.loads(json.dumps(manifest)) == manifest
    assert sum(m.feature_importance.values()) == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------
# Label dtypes, date splits, optional validation, per-entity precision@k, known entities
def with_users(frame: pl.DataFrame, n_users: int = 300, seed: int = 4) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return frame.with_columns(pl.Series("user_id", [f"u{i}" for i in rng.integers(0, n_users, frame.height)]))


@pytest.mark.parametrize("dtype", [pl.Int8, pl.Int64, pl.Boolean, pl.Float64])
def test_label_dtypes_give_the_same_weighting_and_model(dtype: pl.DataType) -> None:
    """Before: ``~y`` on an integer label is a bitwise NOT (scale_pos_weight became ~1, class
    weighting silently off) and a float label crashed with a TypeError."""
    frame = synthetic_frame(n=3_000, seed=6)
    params = TrainingParams(n_estimators=15, early_stopping_rounds=5)
    reference = train(frame, ["f0", "f1", "f2", "f3"], params)
    assert reference.scale_pos_weight > 10
    m = train(frame.with_columns(pl.col("is_fraud").cast(dtype)), ["f0", "f1", "f2", "f3"], params)
    assert m.scale_pos_weight == reference.scale_pos_weight
    assert m.model_bytes == reference.model_bytes
    assert m.metrics == reference.metrics


@pytest.mark.parametrize(
    ("values", "dtype"),
    [([0, 2], pl.Int64), ([0.0, 0.5], pl.Float64), ([0, None], pl.Int8), (["0", "1"], pl.String)],
)
def test_labels_other_than_0_1_are_refused(values: list, dtype: pl.DataType) -> None:
    frame = synthetic_frame(n=2, seed=1).with_columns(pl.Series("is_fraud", values, dtype=dtype))
    with pytest.raises(ValueError, match="label column"):
        train(frame, ["f0"], TrainingParams())


def test_date_split_uses_the_given_windows_and_no_validation_means_fixed_rounds() -> None:
    frame = with_users(synthetic_frame())  # 2026-11-01 .. 11-11
    params = TrainingParams(
        n_estimators=25, early_stopping_rounds=3, train_start="2026-11-01T12:00:00",
        train_end="2026-11-06", test_start="2026-11-07", test_end="2026-11-10T00:00:00+00:00",
    )  # fmt: skip
    bounds, tr, va, te = time_split(frame, params)
    ts = frame["event_ts"]
    utc = lambda s: datetime.fromisoformat(s).replace(tzinfo=UTC)  # noqa: E731
    assert tr.height == frame.filter(ts.is_between(utc("2026-11-01T12:00"), utc("2026-11-06"), "left")).height
    assert te.height == frame.filter(ts.is_between(utc("2026-11-07"), utc("2026-11-10"), "left")).height
    assert va.height == 0 and not bounds.has_validation
    assert tr["event_ts"].min() >= utc("2026-11-01T12:00") and tr["event_ts"].max() < utc("2026-11-06")
    assert te["event_ts"].min() >= utc("2026-11-07") and te["event_ts"].max() < utc("2026-11-10")
    m = train(frame, ["f0", "f1", "f2", "f3"], params)
    assert m.booster.num_boosted_rounds() == 25 and m.best_iteration == 24  # no early stopping
    assert m.validation_metrics == {}
    assert m.split.rows == {"train": tr.height, "validation": 0, "test": te.height}
    assert m.split.to_dict()["mode"] == "dates" and m.split.to_dict()["test_end"].startswith("2026-11-10")
    assert m.metrics["rows"] == te.height
    # With validation dates: early stopping on that window.
    with_val = dataclasses.replace(params, validation_start="2026-11-06", validation_end="2026-11-07")
    _, _, va2, _ = time_split(frame, with_val)
    assert va2.height == frame.filter(ts.is_between(utc("2026-11-06"), utc("2026-11-07"), "left")).height > 0
    assert train(frame, ["f0", "f1", "f2", "f3"], with_val).validation_metrics["rows"] == va2.height


@pytest.mark.parametrize(
    ("dates", "message"),
    [
        ({"train_end": "2026-11-06"}, "train_end and test_start"),
        ({"train_end": "2026-11-08", "test_start": "2026-11-07"}, "out of order"),
        ({"train_end": "2026-11-05", "validation_start": "2026-11-05", "test_start": "2026-11-07"}, "both"),
        ({"train_end": "2026-11-05", "test_start": "not a date"}, "ISO 8601"),
        ({"train_fraction": 0.6, "validation_fraction": -0.1}, "validation_fraction"),
    ],
)
def test_bad_splits_are_refused(dates: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainingParams(**dates)


def test_fraction_split_without_validation_trains_fixed_rounds() -> None:
    frame = synthetic_frame()
    params = TrainingParams(n_estimators=12, validation_fraction=0.0, gap_hours=24)
    bounds, tr, va, te = time_split(frame, params)
    assert va.height == 0 and not bounds.has_validation
    assert te["event_ts"].min() >= tr["event_ts"].max() + timedelta(hours=24)
    assert (
        tr.height + te.height
        == frame.height
        - frame.filter(
            pl.col("event_ts").is_between(bounds.train_end, bounds.test_start, closed="left")
        ).height
    )
    m = train(frame, ["f0", "f1", "f2", "f3"], params)
    assert m.booster.num_boosted_rounds() == 12 and m.metrics["rows"] == te.height


def test_entity_precision_at_k_per_day_hand_computed() -> None:
    """Day 1 entities (max score, any positive): A (0.9, +), B (0.8, −), C (0.7, +), D (0.1, −);
    day 2: B (0.95, +), E (0.6, +), A (0.3, −). Top-2 → 1/2 and 2/2, mean 0.75; top-3 → 2/3 and
    2/3; top-5 → 2/5 and 2/5 (÷ k even on a short day). Transactions would give 1/4 at k=2."""
    d1, d2 = np.datetime64("2026-11-03T01:00", "ms"), np.datetime64("2026-11-04T05:00", "ms")
    rows = [
        ("A", 0.9, False, d1), ("A", 0.2, True, d1), ("B", 0.8, False, d1), ("C", 0.7, True, d1),
        ("D", 0.1, False, d1), (None, 0.99, True, d1),
        ("A", 0.3, False, d2), ("B", 0.95, True, d2), ("E", 0.5, True, d2), ("E", 0.6, False, d2),
    ]  # fmt: skip
    ent, s, y, ts = (np.array([r[i] for r in rows], dtype=object if i == 0 else None) for i in range(4))
    ts = ts.astype("datetime64[ms]")
    assert mx.entity_precision_at_top_k_per_day(y, s, ts, ent, k=2) == pytest.approx(0.75)
    assert mx.entity_precision_at_top_k_per_day(y, s, ts, ent, k=3) == pytest.approx(2 / 3)
    assert mx.entity_precision_at_top_k_per_day(y, s, ts, ent, k=5) == pytest.approx(0.4)
    known = ent != None  # noqa: E711
    assert mx.precision_at_top_k_per_day(y[known], s[known], ts[known], k=2) == pytest.approx(1 / 4)
    out = mx.evaluate(y, s, None, ts, None, k=2, entity=ent, entity_k=2)
    assert out["entity_precision_at_top_k_per_day"] == pytest.approx(0.75) and out["entity_top_k"] == 2


def test_trainer_reports_entity_precision_and_can_drop_known_entities() -> None:
    frame = with_users(synthetic_frame(n=8_000, seed=3), n_users=400)
    features = ["f0", "f1", "f2", "f3"]
    params = TrainingParams(n_estimators=20, early_stopping_rounds=5, entity_top_k=20)
    m = train(frame, features, params)
    _, tr, _, te = time_split(frame, params)
    scores = predict(m.booster, feature_matrix(te, features))
    expected = mx.entity_precision_at_top_k_per_day(
        te["is_fraud"].to_numpy(), scores, te["event_ts"].to_numpy(), te["user_id"].to_list(), 20
    )
    assert m.metrics["entity_precision_at_top_k_per_day"] == pytest.approx(expected)
    assert m.metrics["entity_column"] == "user_id" and m.metrics["entity_top_k"] == 20
    assert "entity_precision_at_top_k_per_day" in manifest_for(m, {}, [])["metrics"]

    dropped = train(frame, features, dataclasses.replace(params, drop_known_entities=True))
    known = set(tr.filter("is_fraud")["user_id"])
    kept = te.filter(~pl.col("user_id").is_in(list(known)))
    assert known and 0 < kept.height < te.height
    assert dropped.metrics["rows"] == kept.height == dropped.split.rows["test"]
    assert dropped.split.to_dict()["dropped_known_entities"] == te.height - kept.height
    assert dropped.model_bytes == m.model_bytes  # the model is the same; only the test rows differ
    # Without the entity column the metric is reported as not computed.
    plain = train(synthetic_frame(n=3_000, seed=6), features, TrainingParams(n_estimators=5))
    assert plain.metrics["entity_precision_at_top_k_per_day"] is None


def test_a_model_trained_on_a_helper_feature_gets_no_manifest() -> None:
    """The trainer's side of helper features: manifest_for refuses a model whose inputs name one."""
    from risk_assets.features.spec import USER, FeatureGroup, count, days, hours, ratio, sum_of

    group = FeatureGroup(
        name="g", entity=USER, description="d", owner="o", source_event_types=("login", "withdrawal"),
        features=(count("n", hours(1), model_input=False), sum_of("usd", "amount_usd", days(1)),
                  ratio("usd_per_n", "usd", "n")),
    )  # fmt: skip
    frame = synthetic_frame(n=3_000, seed=6).rename({"f0": "g__n", "f1": "g__usd", "f2": "g__usd_per_n"})
    params = TrainingParams(n_estimators=5)
    with pytest.raises(ValueError, match="helper"):
        manifest_for(train(frame, ["g__n", "g__usd", "g__usd_per_n"], params), {}, [group])
    ok = manifest_for(train(frame, ["g__usd", "g__usd_per_n"], params), {}, [group])
    assert ok["feature_groups"] == {"g": group.version}
