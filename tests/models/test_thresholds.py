"""Thresholds chosen by policy at training time (``models.thresholds``) and the service's override
rule (``ServeConfig.thresholds``), on hand-computed cases."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pytest

from risk_assets.models.thresholds import ThresholdPolicy, choose_thresholds, manifest_thresholds
from risk_assets.serving.config import FALLBACK_BLOCK, FALLBACK_REVIEW, ServeConfig

T0 = datetime(2026, 5, 1, tzinfo=UTC)


def _ts(n: int, days: int) -> np.ndarray:
    """``n`` timestamps spread over ``days`` days."""
    start = np.datetime64(T0.replace(tzinfo=None), "ms")
    return start + (np.arange(n) * days * 86_400_000 // max(n - 1, 1)).astype("timedelta64[ms]")


def test_fpr_policy_picks_the_lowest_score_within_the_weighted_target() -> None:
    # 10 negatives of weight 10 (a 1/10 sample) and 2 positives of weight 1.
    neg = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    scores = np.r_[neg, [0.95, 0.75]]
    y = np.r_[np.zeros(10, dtype=bool), [True, True]]
    w = np.r_[np.full(10, 10.0), [1.0, 1.0]]
    t = choose_thresholds(y, scores, w, _ts(12, 2), ThresholdPolicy(review_fpr=0.3, block_fpr=0.1))
    # block: FPR(0.9) = 10/100 = 0.1 ≤ 0.1, FPR(0.8) = 0.2 > 0.1 → 0.9
    assert t.block.threshold == 0.9 and t.block.fpr == pytest.approx(0.1) and t.block.recall == 0.5
    # review: FPR(0.7) = 0.3 ≤ 0.3, FPR(0.6) = 0.4 → 0.7; recall: 0.95 and 0.75 → 1.0
    assert t.review.threshold == 0.7 and t.review.fpr == pytest.approx(0.3) and t.review.recall == 1.0
    # flagged per day: (3 negatives × 10 + 2 positives) / 2 days
    assert t.days == 2 and t.review.flagged_per_day == pytest.approx(16.0)


def test_ties_never_push_the_rate_over_the_target_and_nothing_flagged_is_possible() -> None:
    scores = np.array([0.5, 0.5, 0.5, 0.1])
    y = np.array([0, 0, 1, 0], dtype=np.int64)  # any 0/1 dtype
    w = np.ones(4)
    t = choose_thresholds(y, scores, w, _ts(4, 1), ThresholdPolicy(review_fpr=0.5, block_fpr=0.4))
    # FPR(0.5) = 2/3 > 0.5: the tie cannot be split, so review must be above every score
    assert t.review.threshold > 0.5 and t.review.fpr == 0.0 and t.review.recall == 0.0
    assert t.block.threshold == t.review.threshold == math.nextafter(0.5, math.inf)


def test_daily_review_budget_and_block_never_below_review() -> None:
    rng = np.random.default_rng(7)
    scores = rng.random(1000)
    y = scores > 0.995
    t = choose_thresholds(
        y, scores, np.ones(1000), _ts(1000, 10), ThresholdPolicy(review_per_day=3.0, block_fpr=0.5)
    )
    assert t.review.flagged_per_day <= 3.0
    assert (scores >= t.review.threshold).sum() == 30  # distinct scores: exactly the budget × days
    assert t.review.threshold <= t.block.threshold  # a loose block target is clamped up to review
    manifest = {"thresholds": t.to_manifest()}
    assert manifest_thresholds(manifest) == (t.review.threshold, t.block.threshold)
    assert manifest["thresholds"]["policy"]["review_per_day"] == 3.0


def test_manifest_thresholds_validation() -> None:
    assert manifest_thresholds({"features": []}) is None  # models trained before thresholds
    for bad in ({"review": 0.9, "block": 0.1}, {"review": "x", "block": 0.2}, {"review": -0.1, "block": 0.2}):
        with pytest.raises(ValueError):
            manifest_thresholds({"thresholds": bad})
    with pytest.raises(ValueError):
        ThresholdPolicy(review_fpr=0.0)
    with pytest.raises(ValueError):
        choose_thresholds(np.ones(3, dtype=bool), np.ones(3), np.ones(3), _ts(3, 1))  # no negatives


def test_environment_overrides_win_each_on_its_own() -> None:
    model = (0.01, 0.2)
    assert ServeConfig(token="t").thresholds(model) == model
    assert ServeConfig(token="t").thresholds(None) == (FALLBACK_REVIEW, FALLBACK_BLOCK)
    assert ServeConfig(token="t", review_threshold=0.05).thresholds(model) == (0.05, 0.2)
    assert ServeConfig(token="t", review_threshold=0.5).thresholds(model) == (0.5, 0.5)  # block follows
    assert ServeConfig(token="t", block_threshold=0.005).thresholds(model) == (0.005, 0.005)
    env = {"RISK_SERVE_TOKEN": "t", "RISK_REVIEW_THRESHOLD": "0.3", "RISK_BLOCK_THRESHOLD": ""}
    assert ServeConfig.from_env(env).thresholds(model) == (0.3, 0.3)
