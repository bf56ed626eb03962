"""Decision thresholds chosen at training time by a declared policy, carried in the model's manifest.

Pure (no Dagster). Scores are calibrated probabilities at a base rate of a few per mille, so a fixed
``0.5 / 0.9`` reviews nothing; the operating points belong to the model and change with it. A
policy states what the fraud team wants — a false-positive rate for *review* and for *block*, or a
daily review budget — and :func:`choose_thresholds` turns it into score thresholds on out-of-sample
rows (the test split), with what each threshold achieves there (FPR, recall, flagged per day).

Weights count: training sets down-sample negatives and weight the kept ones, so every rate here is
weighted. A threshold ``t`` flags ``score >= t``; the chosen ``t`` is the *lowest* score whose
weighted FPR (or flagged-per-day) is within the target, so ties never push a rate over it. When even
the highest score is over the target, the threshold is just above it: nothing is flagged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

MANIFEST_KEY = "thresholds"
"""Key of the thresholds block in a model manifest (read by risk-serve at every (re)load)."""


@dataclass(frozen=True)
class ThresholdPolicy:
    """What the operating points must achieve on out-of-sample rows."""

    review_fpr: float = 0.01
    """Weighted false-positive rate of ``review`` (ignored when ``review_per_day`` is set)."""
    block_fpr: float = 0.001
    """Weighted false-positive rate of ``block``."""
    review_per_day: float | None = None
    """Daily review budget: at most this many events flagged (review or block) per day on average."""

    def __post_init__(self) -> None:
        for name in ("review_fpr", "block_fpr"):
            v = getattr(self, name)
            if not 0.0 < v < 1.0:
                raise ValueError(f"{name} must be within (0, 1), got {v}")
        if self.review_per_day is not None and not self.review_per_day > 0:
            raise ValueError(f"review_per_day must be > 0, got {self.review_per_day}")


@dataclass(frozen=True)
class OperatingPoint:
    """A threshold and what it achieved on the rows it was chosen on (weighted)."""

    threshold: float
    fpr: float
    recall: float
    flagged_per_day: float


@dataclass(frozen=True)
class Thresholds:
    """``review`` ≤ ``block`` score thresholds and the policy that chose them (a block target looser
    than review's is raised to the review threshold: block flags a subset of review)."""

    review: OperatingPoint
    block: OperatingPoint
    policy: ThresholdPolicy
    rows: int
    days: float

    def to_manifest(self) -> dict[str, Any]:
        """The manifest block (plain JSON)."""
        return {
            "review": self.review.threshold,
            "block": self.block.threshold,
            "policy": asdict(self.policy),
            "measured_on": {"rows": self.rows, "days": self.days},
            "review_point": asdict(self.review),
            "block_point": asdict(self.block),
        }


def _lowest_threshold_within(scores: np.ndarray, amount: np.ndarray, limit: float) -> float:
    """The lowest distinct score ``t`` with ``amount[scores >= t].sum() <= limit`` (just above the
    highest score when even that one exceeds the limit)."""
    order = np.argsort(-scores, kind="stable")
    s, a = scores[order], amount[order]
    cum = np.cumsum(a)
    last_of_tie = np.r_[s[1:] != s[:-1], True]  # cumulative amount at t = value at the tie's last row
    distinct, at = s[last_of_tie], cum[last_of_tie]
    within = np.nonzero(at <= limit * (1 + 1e-12))[0]  # sums of weights carry rounding
    if len(within) == 0:
        return float(np.nextafter(s[0], np.inf))
    return float(distinct[within[-1]])  # `at` is non-decreasing: the last one within is the lowest t


def _point(t: float, scores: np.ndarray, y: np.ndarray, w: np.ndarray, days: float) -> OperatingPoint:
    flagged = scores >= t
    neg, pos = w[~y].sum(), w[y].sum()
    return OperatingPoint(
        threshold=t,
        fpr=float(w[flagged & ~y].sum() / neg) if neg else math.nan,
        recall=float(w[flagged & y].sum() / pos) if pos else math.nan,
        flagged_per_day=float(w[flagged].sum() / days),
    )


def choose_thresholds(
    y: np.ndarray,
    scores: np.ndarray,
    weight: np.ndarray,
    event_ts: np.ndarray,
    policy: ThresholdPolicy | None = None,
) -> Thresholds:
    """Thresholds meeting ``policy`` on these rows (labels ``y``, any 0/1 or boolean dtype).

    ``event_ts`` (datetime64) gives the number of days for the daily budget: the span of the rows
    rounded up to whole days (at least one).
    """
    policy = policy or ThresholdPolicy()
    y = np.asarray(y).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    w = np.asarray(weight, dtype=np.float64)
    if not (len(y) == len(scores) == len(w) == len(event_ts)) or len(y) == 0:
        raise ValueError("y, scores, weight and event_ts must be non-empty and of one length")
    if not (~y).any():
        raise ValueError("thresholds need negatives to measure a false-positive rate")
    ts = np.asarray(event_ts).astype("datetime64[ms]").astype(np.int64)
    days = max(1.0, math.ceil((ts.max() - ts.min()) / 86_400_000))
    neg_w, total_neg = np.where(y, 0.0, w), w[~y].sum()
    block_t = _lowest_threshold_within(scores, neg_w, policy.block_fpr * total_neg)
    if policy.review_per_day is not None:
        review_t = _lowest_threshold_within(scores, w, policy.review_per_day * days)
    else:
        review_t = _lowest_threshold_within(scores, neg_w, policy.review_fpr * total_neg)
    block_t = max(block_t, review_t)  # block flags a subset of review
    return Thresholds(
        review=_point(review_t, scores, y, w, days),
        block=_point(block_t, scores, y, w, days),
        policy=policy,
        rows=len(y),
        days=days,
    )


def manifest_thresholds(manifest: Mapping[str, Any]) -> tuple[float, float] | None:
    """``(review, block)`` from a model manifest; ``None`` when it has none (older models).

    Raises ``ValueError`` when the block is there but not ``0 <= review <= block <= 1``.
    """
    block = manifest.get(MANIFEST_KEY)
    if block is None:
        return None
    try:
        review, blk = float(block["review"]), float(block["block"])
    except (TypeError, KeyError, ValueError) as exc:
        raise ValueError(f"manifest thresholds unreadable: {exc!r}") from None
    # A threshold just above 1 is legal: it flags nothing (see ``choose_thresholds``).
    if not (math.isfinite(review) and math.isfinite(blk) and 0.0 <= review <= blk):
        raise ValueError(f"manifest thresholds must satisfy 0 <= review <= block, got {review}, {blk}")
    return review, blk
