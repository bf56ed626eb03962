"""Fraud-model metrics in plain NumPy (no scikit-learn), every one weighted by the training set's
``weight`` column so that sampled negatives (weight ``1 / negative_rate``) count as the population
they stand for.

Definitions (``docs/models.md`` has the long form); a *threshold* flags every row with
``score >= t``, so rows with equal scores are always flagged together:

* ``roc_auc`` — the weighted probability that a positive outscores a negative, ties counting half.
* ``average_precision`` — ``Σ_t (R_t − R_{t−1}) · P_t`` over the distinct scores from high to low
  (the step-wise area under the precision/recall curve, as scikit-learn defines it), with weighted
  precision and recall.
* ``recall_at_fpr`` — the highest weighted recall of any threshold whose weighted false-positive
  rate is at most ``max_fpr`` (0 if even the highest score exceeds it).
* ``precision_at_top_k`` — the share of positives among the ``k`` highest-scored cases (weighted
  cases; where the ``k``-th case falls inside a group of tied scores, that group counts
  proportionally — the expected value under a random tie-break). ``precision_at_top_k_per_day``
  applies it to every UTC day (the daily review queue) and pools the days: flagged positives over
  flagged cases.
* ``entity_precision_at_top_k_per_day`` — how fraud investigators count (cards, customers): on
  every UTC day each entity (the chosen entity column, e.g. ``user_id``) is one case, scored by the
  highest score of its rows that day and positive if any of its rows that day is; the day's
  precision is the positives among its ``k`` highest-scored entities divided by ``k`` (ties counted
  proportionally as above); the metric is the mean over the days. Entities count once, unweighted
  (with negative sampling the unsampled negatives are simply absent).
* ``expected_calibration_error`` — ``Σ_b W_b / W · |mean(y)_b − mean(score)_b|`` over 10 equal-width
  score bins on [0, 1] (the last bin closed), weighted means.

Undefined values (no positives, no negatives) are ``None`` so they serialize to JSON as ``null``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

DEFAULT_TOP_K = 50
DEFAULT_ENTITY_TOP_K = 100
FPR_POINTS: dict[str, float] = {"recall_at_1pct_fpr": 0.01, "recall_at_0_1pct_fpr": 0.001}
DAY_MS = 86_400_000


def _arrays(y: Any, score: Any, weight: Any | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    yy = np.asarray(y, dtype=bool).ravel()
    ss = np.asarray(score, dtype=np.float64).ravel()
    ww = np.ones(yy.shape[0]) if weight is None else np.asarray(weight, dtype=np.float64).ravel()
    if not (yy.shape == ss.shape == ww.shape):
        raise ValueError(f"y, score and weight differ in length: {yy.shape}, {ss.shape}, {ww.shape}")
    if np.isnan(ss).any():
        raise ValueError("scores contain NaN")
    if (ww < 0).any() or np.isnan(ww).any():
        raise ValueError("weights must be non-negative numbers")
    return yy, ss, ww


def _grouped_desc(
    y: np.ndarray, score: np.ndarray, weight: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per distinct score, highest first: (score, positive weight, negative weight)."""
    if score.size == 0:
        empty = np.zeros(0)
        return empty, empty, empty
    order = np.argsort(-score, kind="stable")
    s = score[order]
    pos = np.where(y[order], weight[order], 0.0)
    neg = np.where(y[order], 0.0, weight[order])
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    return s[starts], np.add.reduceat(pos, starts), np.add.reduceat(neg, starts)


def roc_auc(y: Any, score: Any, weight: Any | None = None) -> float | None:
    """Weighted AUC-ROC (ties count half); ``None`` without both classes."""
    yy, ss, ww = _arrays(y, score, weight)
    _, pos, neg = _grouped_desc(yy, ss, ww)
    p, n = pos.sum(), neg.sum()
    if p <= 0 or n <= 0:
        return None
    # Positives of a group beat every negative scored strictly lower (the groups after it).
    neg_below = n - np.cumsum(neg)
    return float((pos * neg_below).sum() + 0.5 * (pos * neg).sum()) / float(p * n)


def average_precision(y: Any, score: Any, weight: Any | None = None) -> float | None:
    """Weighted average precision (step-wise area under the PR curve); ``None`` without positives."""
    yy, ss, ww = _arrays(y, score, weight)
    _, pos, neg = _grouped_desc(yy, ss, ww)
    p = pos.sum()
    if p <= 0:
        return None
    tp, fp = np.cumsum(pos), np.cumsum(neg)
    flagged = tp + fp
    precision = np.divide(tp, flagged, out=np.zeros_like(tp), where=flagged > 0)
    return float((pos / p * precision).sum())


def recall_at_fpr(y: Any, score: Any, max_fpr: float, weight: Any | None = None) -> float | None:
    """Highest weighted recall of a threshold whose weighted FPR is ``<= max_fpr``."""
    yy, ss, ww = _arrays(y, score, weight)
    _, pos, neg = _grouped_desc(yy, ss, ww)
    p, n = pos.sum(), neg.sum()
    if p <= 0 or n <= 0:
        return None
    fpr = np.cumsum(neg) / n
    ok = fpr <= max_fpr * (1 + 1e-12)
    if not ok.any():
        return 0.0
    return float(np.cumsum(pos)[ok].max() / p)


def precision_at_top_k(y: Any, score: Any, k: float, weight: Any | None = None) -> tuple[float, float]:
    """(expected weighted positives, weighted cases) among the ``k`` highest-scored cases."""
    yy, ss, ww = _arrays(y, score, weight)
    _, pos, neg = _grouped_desc(yy, ss, ww)
    size = pos + neg
    before = np.cumsum(size) - size
    take = np.clip(k - before, 0.0, size)
    share = np.divide(take, size, out=np.zeros_like(take), where=size > 0)
    return float((share * pos).sum()), float(take.sum())


def precision_at_top_k_per_day(
    y: Any, score: Any, event_ts: Any, k: int = DEFAULT_TOP_K, weight: Any | None = None
) -> float | None:
    """Precision of a daily review queue of ``k`` cases: the top ``k`` of every UTC day, pooled."""
    yy, ss, ww = _arrays(y, score, weight)
    days = _day_numbers(event_ts, yy.shape[0])
    hits = cases = 0.0
    for day in np.unique(days):
        m = days == day
        h, c = precision_at_top_k(yy[m], ss[m], k, ww[m])
        hits, cases = hits + h, cases + c
    return hits / cases if cases > 0 else None


def entity_precision_at_top_k_per_day(
    y: Any, score: Any, event_ts: Any, entity: Any, k: int = DEFAULT_ENTITY_TOP_K
) -> float | None:
    """Per-entity precision of a daily review queue of ``k`` entities, averaged over the days (see
    the module docstring); ``None`` without rows. Rows with a null entity are left out."""
    yy, ss, _ = _arrays(y, score, None)
    ent = np.asarray(entity, dtype=object).ravel()
    if ent.shape != yy.shape:
        raise ValueError("entity differs in length from y")
    if k < 1:
        raise ValueError("k must be at least 1")
    days = _day_numbers(event_ts, yy.shape[0])
    known = np.array([e is not None for e in ent], dtype=bool)
    if not known.any():
        return None
    # (day, entity) cases: max score, any positive — one sort, then per-case reductions.
    codes = np.unique(ent[known].astype(str), return_inverse=True)[1]
    d, s, lab = days[known], ss[known], yy[known]
    order = np.lexsort((codes, d))
    d, c, s, lab = d[order], codes[order], s[order], lab[order]
    starts = np.flatnonzero(np.r_[True, (d[1:] != d[:-1]) | (c[1:] != c[:-1])])
    case_day = d[starts]
    case_score = np.maximum.reduceat(s, starts)
    case_pos = np.logical_or.reduceat(lab, starts)
    daily = []
    for day in np.unique(case_day):
        m = case_day == day
        hits, _ = precision_at_top_k(case_pos[m], case_score[m], k)
        daily.append(hits / k)
    return float(np.mean(daily))


def _day_numbers(event_ts: Any, n: int) -> np.ndarray:
    """UTC day index of each timestamp (datetime64 array, Polars/NumPy datetimes or epoch ms)."""
    arr = np.asarray(event_ts)
    if arr.shape[0] != n:
        raise ValueError("event_ts differs in length from y")
    if np.issubdtype(arr.dtype, np.datetime64):
        return arr.astype("datetime64[D]").astype(np.int64)
    if arr.dtype == object:
        return np.array([np.datetime64(t.replace(tzinfo=None), "D").astype(np.int64) for t in arr])
    return arr.astype(np.int64) // DAY_MS


def expected_calibration_error(y: Any, score: Any, weight: Any | None = None, bins: int = 10) -> float | None:
    """Weighted ECE over ``bins`` equal-width bins of [0, 1] (scores must be probabilities)."""
    yy, ss, ww = _arrays(y, score, weight)
    total = ww.sum()
    if total <= 0:
        return None
    if (ss < 0).any() or (ss > 1).any():
        raise ValueError("calibration needs scores in [0, 1]")
    idx = np.minimum((ss * bins).astype(np.int64), bins - 1)
    w_bin = np.bincount(idx, weights=ww, minlength=bins)
    y_bin = np.bincount(idx, weights=ww * yy, minlength=bins)
    s_bin = np.bincount(idx, weights=ww * ss, minlength=bins)
    nz = w_bin > 0
    return float(np.abs(y_bin[nz] - s_bin[nz]).sum() / total)


def _metric_set(
    y: np.ndarray,
    score: np.ndarray,
    weight: np.ndarray,
    event_ts: Any,
    k: int,
    entity: np.ndarray | None = None,
    entity_k: int = DEFAULT_ENTITY_TOP_K,
) -> dict[str, float | int | None]:
    out: dict[str, float | int | None] = {
        "rows": int(y.shape[0]),
        "positives": int(y.sum()),
        "weighted_positive_share": float((weight * y).sum() / weight.sum()) if weight.sum() > 0 else None,
        "auc": roc_auc(y, score, weight),
        "average_precision": average_precision(y, score, weight),
    }
    for name, fpr in FPR_POINTS.items():
        out[name] = recall_at_fpr(y, score, fpr, weight)
    out["precision_at_top_k_per_day"] = precision_at_top_k_per_day(y, score, event_ts, k, weight)
    out["top_k"] = k
    out["ece"] = expected_calibration_error(y, score, weight)
    if entity is not None:
        out["entity_precision_at_top_k_per_day"] = entity_precision_at_top_k_per_day(
            y, score, event_ts, entity, entity_k
        )
        out["entity_top_k"] = entity_k
    return out


def evaluate(
    y: Any,
    score: Any,
    weight: Any | None,
    event_ts: Any,
    scenario: Sequence[str | None] | np.ndarray | None = None,
    *,
    k: int = DEFAULT_TOP_K,
    entity: Any | None = None,
    entity_k: int = DEFAULT_ENTITY_TOP_K,
) -> dict[str, Any]:
    """Every metric on the whole frame, plus ``by_scenario``: each scenario's positives against all
    negatives (other scenarios' positives left out), so a scenario's rank quality is not hidden by
    the others'. With ``entity`` (one id per row) the per-entity daily precision@``entity_k`` is
    added (``entity_precision_at_top_k_per_day``, ``entity_top_k``)."""
    yy, ss, ww = _arrays(y, score, weight)
    ts = np.asarray(event_ts)
    ent = None if entity is None else np.asarray(entity, dtype=object)
    out: dict[str, Any] = _metric_set(yy, ss, ww, ts, k, ent, entity_k)
    out["by_scenario"] = {}
    if scenario is not None:
        sc = np.asarray(scenario, dtype=object)
        names = sorted({s for s in sc[yy] if s is not None})
        for name in names:
            m = ~yy | (sc == name)
            sub_ent = None if ent is None else ent[m]
            out["by_scenario"][name] = _metric_set(yy[m], ss[m], ww[m], ts[m], k, sub_ent, entity_k)
    return out
