"""Pictures for asset pages: small PNG charts embedded in Markdown metadata.

Pure (NumPy + matplotlib's Agg backend, no Dagster). Each function returns a Markdown string holding
one image as a ``data:image/png;base64`` URI — Dagster renders it inline on the asset page
(``dg.MetadataValue.md``). Images are kept to tens of kilobytes (small figures, 80 dpi).
matplotlib is imported inside the functions, so loading the code location never pays for it.

Curves are computed here from weighted labels and scores (``weight``: sampled negatives count as the
population they stand for), with the same conventions as :mod:`risk_assets.models.metrics`.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

DPI = 80
POSITIVE = "#c0392b"
NEGATIVE = "#2c7fb8"


def _figure(width: float = 5.0, height: float = 3.2, rows: int = 1, cols: int = 1) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt.subplots(rows, cols, figsize=(width, height), dpi=DPI)


def _markdown(fig: Any, alt: str) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    return f"![{alt}](data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()})"


def _arrays(y: Any, s: Any, w: Any | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y = np.asarray(y).astype(bool)
    s = np.asarray(s, dtype=np.float64)
    w = np.ones(len(y)) if w is None else np.asarray(w, dtype=np.float64)
    keep = np.isfinite(s)
    return y[keep], s[keep], w[keep]


def precision_recall_points(y: Any, s: Any, w: Any | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) at every distinct score threshold, highest threshold first (weighted)."""
    y, s, w = _arrays(y, s, w)
    order = np.argsort(-s, kind="stable")
    y, s, w = y[order], s[order], w[order]
    tp = np.cumsum(w * y)
    fp = np.cumsum(w * ~y)
    last = np.r_[s[1:] != s[:-1], True]  # rows with equal scores are flagged together
    tp, fp = tp[last], fp[last]
    total = tp[-1] if len(tp) else 0.0
    recall = tp / total if total > 0 else np.zeros_like(tp)
    precision = tp / np.maximum(tp + fp, 1e-300)
    return recall, precision


def pr_curve(y: Any, s: Any, w: Any | None = None, *, title: str = "Precision–recall (test split)") -> str:
    """A precision–recall curve with the positive base rate as the no-skill line."""
    recall, precision = precision_recall_points(y, s, w)
    yy, _, ww = _arrays(y, s, w)
    base = float((ww * yy).sum() / ww.sum()) if len(ww) else 0.0
    fig, ax = _figure()
    ax.plot(recall, precision, color=POSITIVE, lw=1.6, drawstyle="steps-post")
    ax.axhline(base, color="grey", lw=0.8, ls="--", label=f"base rate {base:.3%}")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    return _markdown(fig, title)


def score_histogram(
    y: Any, s: Any, w: Any | None = None, *, bins: int = 40, title: str = "Scores by class (test split)"
) -> str:
    """Weighted score distributions of positives and negatives (log counts), on shared bins."""
    y, s, w = _arrays(y, s, w)
    edges = np.linspace(0.0, max(1e-9, float(s.max())) if len(s) else 1.0, bins + 1)
    fig, ax = _figure()
    ax.hist(s[~y], bins=edges, weights=w[~y], color=NEGATIVE, alpha=0.6, label="legit")
    ax.hist(s[y], bins=edges, weights=w[y], color=POSITIVE, alpha=0.8, label="fraud")
    ax.set_yscale("log")
    ax.set(xlabel="score", ylabel="events (weighted)", title=title)
    ax.legend(fontsize=8)
    return _markdown(fig, title)


def score_distribution(s: Any, *, bins: int = 40, title: str = "Served scores") -> str:
    """Histogram of unlabelled scores (log counts): what the service handed out."""
    s = np.asarray(s, dtype=np.float64)
    s = s[np.isfinite(s)]
    fig, ax = _figure()
    edges = np.linspace(0.0, max(1e-9, float(s.max())) if len(s) else 1.0, bins + 1)
    ax.hist(s, bins=edges, color=NEGATIVE, alpha=0.8)
    ax.set_yscale("log")
    ax.set(xlabel="score", ylabel="predictions", title=title)
    return _markdown(fig, title)


def calibration_curve(
    y: Any, s: Any, w: Any | None = None, *, bins: int = 10, title: str = "Calibration (test split)"
) -> str:
    """Observed fraud rate against mean score in score-quantile bins (log-log; diagonal = calibrated)."""
    y, s, w = _arrays(y, s, w)
    edges = np.unique(np.quantile(s, np.linspace(0, 1, bins + 1))) if len(s) else np.array([0.0, 1.0])
    idx = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, max(len(edges) - 2, 0))
    mean_s, rate = [], []
    for b in range(max(len(edges) - 1, 1)):
        m = idx == b
        if m.any() and w[m].sum() > 0:
            mean_s.append(float((w[m] * s[m]).sum() / w[m].sum()))
            rate.append(float((w[m] * y[m]).sum() / w[m].sum()))
    fig, ax = _figure(4.2, 3.4)
    lo = max(1e-6, min([*mean_s, *[r for r in rate if r > 0], 1e-4]))
    ax.plot([lo, 1], [lo, 1], color="grey", lw=0.8, ls="--")
    ax.plot(mean_s, [max(r, lo) for r in rate], "o-", color=POSITIVE, lw=1.4, ms=4)
    ax.set(xscale="log", yscale="log", xlabel="mean score", ylabel="observed fraud rate", title=title)
    ax.grid(alpha=0.3)
    return _markdown(fig, title)


def feature_histograms(
    reference: Mapping[str, Sequence[float] | np.ndarray],
    current: Mapping[str, Sequence[float] | np.ndarray],
    *,
    bins: int = 30,
    title: str = "Most drifted features: reference vs current",
) -> str:
    """Small multiples: each feature's reference and current distributions as densities on shared
    bins (nulls dropped; at most 6 features, in the given order)."""
    names = list(reference)[:6]
    if not names:
        return "_no drifted feature to show_"
    cols = 2 if len(names) > 1 else 1
    rows = (len(names) + cols - 1) // cols
    fig, axes = _figure(4.2 * cols, 2.4 * rows, rows, cols)
    axes = np.atleast_1d(axes).ravel()
    for ax, name in zip(axes, names, strict=False):
        ref = np.asarray(reference[name], dtype=np.float64)
        cur = np.asarray(current[name], dtype=np.float64)
        ref, cur = ref[np.isfinite(ref)], cur[np.isfinite(cur)]
        both = np.r_[ref, cur]
        if not len(both):
            ax.set_title(f"{name} (no values)", fontsize=8)
            continue
        lo, hi = np.quantile(both, [0.001, 0.999]) if len(both) > 10 else (both.min(), both.max())
        edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
        ax.hist(np.clip(ref, lo, hi), bins=edges, density=True, color=NEGATIVE, alpha=0.55, label="reference")
        ax.hist(np.clip(cur, lo, hi), bins=edges, density=True, color=POSITIVE, alpha=0.55, label="current")
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[len(names) :]:
        ax.axis("off")
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _markdown(fig, title)
