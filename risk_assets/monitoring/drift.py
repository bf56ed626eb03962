"""Exact drift statistics on samples (NumPy + Polars only; no whylogs, no SciPy).

For reports where the raw values are at hand (a partition of features, a day of scores). Sketch-based
scores from stored profiles live in :func:`risk_assets.monitoring.profiles.drift_scores`.

Public interface::

    ks_2samp(a, b) -> (statistic, pvalue)
    chi2_homogeneity(ref_counts, cur_counts) -> (chi2, pvalue)
    psi(ref, cur) / psi_from_counts(ref_counts, cur_counts)
    hellinger(p_counts, q_counts) / hellinger_samples(ref, cur)
    column_drift(reference, current) -> ColumnDrift
    drift_report(reference, current, columns) -> DriftReport
    prediction_drift(ref_scores, cur_scores) -> ColumnDrift
    label_rate_drift(ref_rate, ref_n, cur_rate, cur_n) -> LabelRateDrift

Statistics
----------
* **KS** (numeric): ``D = sup |F_ref(x) − F_cur(x)|`` over the non-missing values, evaluated at every
  observed value (exact, ties handled). p-value: the asymptotic Kolmogorov distribution,
  ``Q(√(nm/(n+m))·D)`` with ``Q(λ) = 2 Σ (−1)^(k−1) e^(−2k²λ²)``, the limiting distribution (as R's
  ``ks.test(exact = FALSE)``; SciPy's ``method="asymp"`` uses a finite-n variant and differs by a few
  percent at n ≈ 100); it is conservative for discrete data (ties).
* **χ² test of homogeneity** (categorical): the 2×K table of category counts (null is a category),
  ``χ² = Σ (O − E)²/E`` with ``E`` from the pooled proportions, ``K − 1`` degrees of freedom; p-value
  ``Q((K−1)/2, χ²/2)`` (regularized upper incomplete gamma). Categories with fewer than
  ``MIN_CATEGORY_COUNT`` pooled occurrences are merged into one ``__other__`` bucket so the χ²
  approximation holds (and high-cardinality ids do not explode the table).
* **PSI** ``Σ (c_i − r_i)·ln(c_i / r_i)`` over bins: numeric columns use ``PSI_BINS`` (10) quantile bins
  of the *reference* non-missing values (duplicate edges merged, so a mostly-zero count feature gets
  fewer bins); categorical columns use the categories above. A missing (null/NaN) bin is added when
  either side has missing values, so a feature that stops being served shows up. Empty bins: a
  proportion below ``PSI_EPSILON`` (1e-4) is raised to ``PSI_EPSILON`` (no renormalisation) so the log
  stays finite; identical inputs give exactly 0.
* **Hellinger** ``H = √(1 − Σ √(p_i q_i))`` ∈ [0, 1]: 0 for identical distributions, 1 for disjoint
  ones. Numeric: ``HELLINGER_BINS`` (20) bins at quantiles of the *pooled* sample (robust to the heavy
  tails of amounts, and shared by both sides), plus the missing bin; categorical: category frequencies.
  Each sample's minimum is an extra edge, so two samples whose ranges do not overlap share no bin and
  get H = 1 exactly.

Category of a column (``DriftThresholds``; an effect size *and* significance are both required, so a
huge sample does not flag a tiny shift and a tiny sample does not flag noise):

* ``drift``: p < ``alpha`` (0.01) and PSI ≥ ``psi_drift`` (0.25);
* ``warn``:  p < ``alpha`` and PSI ≥ ``psi_warn`` (0.10);
* ``no_drift`` otherwise (also when either side has no rows).

``p`` is the KS p-value (numeric; combined by ``min`` with a two-proportion test on the missing rate,
which KS does not see) or the χ² p-value (categorical). The PSI bands are the industry convention
(< 0.1 stable, 0.1–0.25 moderate shift, > 0.25 significant); for a normal feature a mean shift of 0.5 sd
gives PSI ≈ 0.25 and 1 sd ≈ 1.0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import polars as pl

PSI_BINS = 10
PSI_EPSILON = 1e-4
HELLINGER_BINS = 20
MIN_CATEGORY_COUNT = 5
MAX_CATEGORIES = 100
OTHER = "__other__"
MISSING = "__missing__"

Kind = Literal["numeric", "categorical"]
Category = Literal["no_drift", "warn", "drift"]
ArrayLike = pl.Series | np.ndarray | Sequence[float]


@dataclass(frozen=True)
class DriftThresholds:
    """Thresholds of the drift category (see the module docstring)."""

    alpha: float = 0.01
    psi_warn: float = 0.10
    psi_drift: float = 0.25

    def categorize(self, pvalue: float, psi_value: float) -> Category:
        """``drift`` / ``warn`` / ``no_drift`` from a p-value and an effect size (PSI)."""
        if not (math.isfinite(pvalue) and math.isfinite(psi_value)) or pvalue >= self.alpha:
            return "no_drift"
        if psi_value >= self.psi_drift:
            return "drift"
        return "warn" if psi_value >= self.psi_warn else "no_drift"


DEFAULT_THRESHOLDS = DriftThresholds()


# -- distributions ---------------------------------------------------------------------------------


def kolmogorov_sf(x: float) -> float:
    """Survival function of the Kolmogorov distribution, ``P(K > x)``."""
    if x <= 0.0:
        return 1.0
    if x < 1.0:
        # Jacobi-theta form, fast and accurate for small x: P(K ≤ x) = √(2π)/x Σ e^(−(2k−1)²π²/(8x²)).
        s = sum(math.exp(-((2 * k - 1) ** 2) * math.pi**2 / (8 * x * x)) for k in range(1, 8))
        return min(1.0, max(0.0, 1.0 - math.sqrt(2 * math.pi) / x * s))
    s = sum((-1) ** (k - 1) * math.exp(-2 * k * k * x * x) for k in range(1, 101))
    return min(1.0, max(0.0, 2.0 * s))


def _gamma_series(a: float, x: float) -> float:
    """Regularized lower incomplete gamma P(a, x) by its series (x < a + 1)."""
    term = total = 1.0 / a
    ap = a
    for _ in range(10_000):
        ap += 1.0
        term *= x / ap
        total += term
        if abs(term) < abs(total) * 1e-15:
            break
    return total * math.exp(-x + a * math.log(x) - math.lgamma(a))


def _gamma_cf(a: float, x: float) -> float:
    """Regularized upper incomplete gamma Q(a, x) by Lentz's continued fraction (x ≥ a + 1)."""
    tiny = 1e-300
    b = x + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return math.exp(-x + a * math.log(x) - math.lgamma(a)) * h


def gammaincc(a: float, x: float) -> float:
    """Regularized upper incomplete gamma ``Q(a, x) = Γ(a, x)/Γ(a)`` for ``a > 0``, ``x ≥ 0``."""
    if x <= 0.0:
        return 1.0
    if x < a + 1.0:
        return max(0.0, 1.0 - _gamma_series(a, x))
    return min(1.0, _gamma_cf(a, x))


def chi2_sf(statistic: float, dof: int) -> float:
    """``P(χ²_dof > statistic)``."""
    if dof <= 0:
        return 1.0
    return gammaincc(dof / 2.0, statistic / 2.0)


# -- statistics ------------------------------------------------------------------------------------


def _finite(values: ArrayLike) -> np.ndarray:
    """Non-missing values as float64 (null and NaN dropped)."""
    if isinstance(values, pl.Series):
        values = values.cast(pl.Float64).drop_nulls().to_numpy()
    arr = np.asarray(values, dtype=np.float64)
    return arr[~np.isnan(arr)]


def ks_2samp(a: ArrayLike, b: ArrayLike) -> tuple[float, float]:
    """Two-sample KS statistic and asymptotic p-value over the non-missing values (NaN if empty)."""
    x, y = np.sort(_finite(a)), np.sort(_finite(b))
    n, m = x.size, y.size
    if n == 0 or m == 0:
        return math.nan, math.nan
    grid = np.concatenate([x, y])
    d = float(np.max(np.abs(np.searchsorted(x, grid, "right") / n - np.searchsorted(y, grid, "right") / m)))
    return d, kolmogorov_sf(math.sqrt(n * m / (n + m)) * d)


def chi2_homogeneity(ref_counts: ArrayLike, cur_counts: ArrayLike) -> tuple[float, float]:
    """χ² test of homogeneity of two count vectors over the same categories: (statistic, p-value).

    Categories empty on both sides are ignored; ``dof = (non-empty categories) − 1``.
    """
    r = np.asarray(ref_counts, dtype=np.float64)
    c = np.asarray(cur_counts, dtype=np.float64)
    keep = (r + c) > 0
    r, c = r[keep], c[keep]
    nr, nc = r.sum(), c.sum()
    if nr == 0 or nc == 0:
        return math.nan, math.nan
    if r.size < 2:
        return 0.0, 1.0
    pooled = (r + c) / (nr + nc)
    er, ec = nr * pooled, nc * pooled
    stat = float(((r - er) ** 2 / er).sum() + ((c - ec) ** 2 / ec).sum())
    return stat, chi2_sf(stat, r.size - 1)


def psi_from_counts(ref_counts: ArrayLike, cur_counts: ArrayLike, eps: float = PSI_EPSILON) -> float:
    """PSI of two count vectors over the same bins (proportions floored at ``eps``)."""
    r = np.asarray(ref_counts, dtype=np.float64)
    c = np.asarray(cur_counts, dtype=np.float64)
    if r.sum() == 0 or c.sum() == 0:
        return math.nan
    p = np.maximum(r / r.sum(), eps)
    q = np.maximum(c / c.sum(), eps)
    return float(np.sum((q - p) * np.log(q / p)))


def hellinger(p_counts: ArrayLike, q_counts: ArrayLike) -> float:
    """Hellinger distance of two count (or probability) vectors over the same bins, in [0, 1]."""
    p = np.asarray(p_counts, dtype=np.float64)
    q = np.asarray(q_counts, dtype=np.float64)
    if p.sum() == 0 or q.sum() == 0:
        return math.nan
    bc = float(np.sum(np.sqrt(p / p.sum() * (q / q.sum()))))
    return math.sqrt(max(0.0, 1.0 - min(bc, 1.0)))


def _missing(values: pl.Series) -> int:
    n = values.null_count()
    if values.dtype.is_float():
        n += int(values.is_nan().sum() or 0)
    return n


def _bin_counts(
    values: np.ndarray, inner_edges: np.ndarray, n_missing: int, with_missing: bool
) -> np.ndarray:
    counts = np.bincount(np.searchsorted(inner_edges, values, "right"), minlength=inner_edges.size + 1)
    return np.append(counts, n_missing) if with_missing else counts


def psi(reference: ArrayLike, current: ArrayLike, bins: int = PSI_BINS, eps: float = PSI_EPSILON) -> float:
    """Numeric PSI with ``bins`` quantile bins of the reference (plus a missing bin when needed)."""
    ref_s, cur_s = _as_float_series(reference), _as_float_series(current)
    r, c = _finite(ref_s), _finite(cur_s)
    mr, mc = ref_s.len() - r.size, cur_s.len() - c.size
    if r.size == 0:
        return math.nan
    edges = np.unique(np.quantile(r, np.linspace(0, 1, bins + 1)[1:-1]))
    wm = bool(mr or mc)
    return psi_from_counts(_bin_counts(r, edges, mr, wm), _bin_counts(c, edges, mc, wm), eps)


def hellinger_samples(reference: ArrayLike, current: ArrayLike, bins: int = HELLINGER_BINS) -> float:
    """Numeric Hellinger distance over ``bins`` pooled-quantile bins (plus a missing bin when needed)."""
    ref_s, cur_s = _as_float_series(reference), _as_float_series(current)
    r, c = _finite(ref_s), _finite(cur_s)
    mr, mc = ref_s.len() - r.size, cur_s.len() - c.size
    if r.size + c.size == 0:
        return hellinger([mr], [mc])
    edges = np.quantile(np.concatenate([r, c]), np.linspace(0, 1, bins + 1)[1:-1])
    # Each sample's minimum is an edge too, so samples with separated supports share no bin (H = 1).
    edges = np.unique(np.concatenate([edges, [r.min()] if r.size else [], [c.min()] if c.size else []]))
    wm = bool(mr or mc)
    return hellinger(_bin_counts(r, edges, mr, wm), _bin_counts(c, edges, mc, wm))


def _as_float_series(values: ArrayLike) -> pl.Series:
    if isinstance(values, pl.Series):
        if values.dtype.is_temporal():
            values = values.to_physical()
        return values.cast(pl.Float64)
    return pl.Series(np.asarray(values, dtype=np.float64))


def two_proportion_pvalue(k1: float, n1: float, k2: float, n2: float) -> float:
    """Two-sided p-value of the pooled two-proportion z-test (NaN without rows, 1.0 if no variance)."""
    if n1 <= 0 or n2 <= 0:
        return math.nan
    pooled = (k1 + k2) / (n1 + n2)
    var = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    if var <= 0:
        return 1.0
    z = (k2 / n2 - k1 / n1) / math.sqrt(var)
    return math.erfc(abs(z) / math.sqrt(2))


# -- per column ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ColumnDrift:
    """Drift of one column; ``ks*`` are set for numeric columns, ``chi2*`` for categorical ones."""

    column: str
    kind: Kind
    n_ref: int
    n_cur: int
    ref_missing_rate: float
    cur_missing_rate: float
    ks: float | None
    ks_pvalue: float | None
    chi2: float | None
    chi2_pvalue: float | None
    psi: float
    hellinger: float
    category: Category

    @property
    def pvalue(self) -> float:
        """The p-value the category used (KS or χ²; NaN when not computable)."""
        p = self.ks_pvalue if self.kind == "numeric" else self.chi2_pvalue
        return math.nan if p is None else p


def kind_of(dtype: pl.DataType) -> Kind:
    """Numeric for numbers and times (compared on their physical value), categorical otherwise."""
    return "numeric" if dtype.is_numeric() or dtype.is_temporal() else "categorical"


def _category_counts(ref: pl.Series, cur: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """Aligned category counts (null → ``__missing__``, rare/overflow categories → ``__other__``)."""

    def counts(s: pl.Series) -> pl.DataFrame:
        v = s.cast(pl.String).fill_null(MISSING)
        return v.value_counts(name="n").rename({v.name: "cat"})

    table = (
        counts(ref.rename("v"))
        .join(counts(cur.rename("v")), on="cat", how="full", coalesce=True, suffix="_cur")
        .fill_null(0)
        .with_columns((pl.col("n") + pl.col("n_cur")).alias("total"))
        .sort(["total", "cat"], descending=[True, False])
    )
    rank = pl.int_range(pl.len())
    rare = (pl.col("total") < MIN_CATEGORY_COUNT) | (rank >= MAX_CATEGORIES)
    table = (
        table.with_columns(pl.when(rare & (pl.col("cat") != MISSING)).then(pl.lit(OTHER)).otherwise("cat"))
        .group_by("cat", maintain_order=True)
        .agg(pl.col("n").sum(), pl.col("n_cur").sum())
    )
    return table["n"].to_numpy(), table["n_cur"].to_numpy()


def column_drift(
    reference: pl.Series,
    current: pl.Series,
    *,
    kind: Kind | None = None,
    thresholds: DriftThresholds = DEFAULT_THRESHOLDS,
) -> ColumnDrift:
    """All statistics and the category of ``current`` vs ``reference`` (named after ``reference``)."""
    kind = kind or kind_of(reference.dtype)
    n_ref, n_cur = reference.len(), current.len()
    m_ref = _missing(reference) if n_ref else 0
    m_cur = _missing(current) if n_cur else 0
    ks = ks_p = chi2 = chi2_p = None
    if kind == "numeric":
        ks, ks_p = ks_2samp(_as_float_series(reference), _as_float_series(current))
        psi_value = psi(reference, current)
        hell = hellinger_samples(reference, current)
        # KS ignores missing values; a change of the missing rate is tested on its own.
        p_missing = two_proportion_pvalue(m_ref, n_ref, m_cur, n_cur)
        p = min((x for x in (ks_p, p_missing) if not math.isnan(x)), default=math.nan)
    else:
        r, c = _category_counts(reference, current)
        chi2, chi2_p = chi2_homogeneity(r, c)
        psi_value = psi_from_counts(r, c)
        hell = hellinger(r, c)
        p = chi2_p
    return ColumnDrift(
        column=reference.name,
        kind=kind,
        n_ref=n_ref,
        n_cur=n_cur,
        ref_missing_rate=m_ref / n_ref if n_ref else math.nan,
        cur_missing_rate=m_cur / n_cur if n_cur else math.nan,
        ks=ks,
        ks_pvalue=ks_p,
        chi2=chi2,
        chi2_pvalue=chi2_p,
        psi=psi_value,
        hellinger=hell,
        category=thresholds.categorize(p, psi_value),
    )


def prediction_drift(
    ref_scores: ArrayLike, cur_scores: ArrayLike, *, thresholds: DriftThresholds = DEFAULT_THRESHOLDS
) -> ColumnDrift:
    """Drift of the model's score distribution (numeric statistics on the scores)."""
    ref = _as_float_series(ref_scores).rename("score")
    cur = _as_float_series(cur_scores).rename("score")
    return column_drift(ref, cur, kind="numeric", thresholds=thresholds)


@dataclass(frozen=True)
class LabelRateDrift:
    """Change of the positive-label (fraud) rate, two-proportion z-test.

    ``category``: ``drift`` when p < ``alpha`` and the relative change ``|cur/ref − 1|`` ≥ 0.5, ``warn``
    when p < ``alpha`` and it is ≥ 0.2, else ``no_drift``.
    """

    ref_rate: float
    ref_n: int
    cur_rate: float
    cur_n: int
    z: float
    pvalue: float
    relative_change: float
    category: Category


LABEL_RATE_WARN = 0.2
LABEL_RATE_DRIFT = 0.5


def label_rate_drift(
    ref_rate: float, ref_n: int, cur_rate: float, cur_n: int, *, alpha: float = DEFAULT_THRESHOLDS.alpha
) -> LabelRateDrift:
    """Has the label rate moved? ``ref_rate`` over ``ref_n`` labelled rows vs ``cur_rate`` over ``cur_n``."""
    for r in (ref_rate, cur_rate):
        if not 0.0 <= r <= 1.0:
            raise ValueError(f"rates must be within [0, 1], got {r}")
    pvalue = two_proportion_pvalue(ref_rate * ref_n, ref_n, cur_rate * cur_n, cur_n)
    pooled = (ref_rate * ref_n + cur_rate * cur_n) / (ref_n + cur_n) if ref_n + cur_n else 0.0
    var = pooled * (1 - pooled) * (1 / ref_n + 1 / cur_n) if ref_n and cur_n else 0.0
    z = (cur_rate - ref_rate) / math.sqrt(var) if var > 0 else 0.0
    rel = (cur_rate / ref_rate - 1.0) if ref_rate > 0 else (math.inf if cur_rate > 0 else 0.0)
    category: Category = "no_drift"
    if not math.isnan(pvalue) and pvalue < alpha:
        if abs(rel) >= LABEL_RATE_DRIFT:
            category = "drift"
        elif abs(rel) >= LABEL_RATE_WARN:
            category = "warn"
    return LabelRateDrift(ref_rate, ref_n, cur_rate, cur_n, z, pvalue, rel, category)


# -- report ----------------------------------------------------------------------------------------


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if x != 0 and abs(x) < 10 ** (-digits):
        return f"{x:.1e}"
    return f"{x:.{digits}f}"


@dataclass(frozen=True)
class DriftReport:
    """Per-column drift of a frame against a reference frame."""

    columns: list[ColumnDrift]
    thresholds: DriftThresholds = field(default=DEFAULT_THRESHOLDS)

    @property
    def drifted(self) -> list[str]:
        """Columns in category ``drift``."""
        return [c.column for c in self.columns if c.category == "drift"]

    @property
    def share_drifted(self) -> float:
        """Share of columns in category ``drift`` (0 for an empty report)."""
        return len(self.drifted) / len(self.columns) if self.columns else 0.0

    def to_frame(self) -> pl.DataFrame:
        """One row per column with every field of :class:`ColumnDrift`."""
        schema = {
            "column": pl.String,
            "kind": pl.String,
            "n_ref": pl.Int64,
            "n_cur": pl.Int64,
            **{
                k: pl.Float64
                for k in ("ref_missing_rate", "cur_missing_rate", "ks", "ks_pvalue", "chi2", "chi2_pvalue")
            },
            "psi": pl.Float64,
            "hellinger": pl.Float64,
            "category": pl.String,
        }
        return pl.DataFrame([asdict(c) for c in self.columns], schema=schema)

    def to_markdown(self) -> str:
        """A Markdown table (worst first) for Dagster metadata (``dg.MetadataValue.md``)."""
        order = {"drift": 0, "warn": 1, "no_drift": 2}
        rows = sorted(self.columns, key=lambda c: (order[c.category], -(c.psi if c.psi == c.psi else 0)))
        t = self.thresholds
        lines = [
            f"**{len(self.drifted)} of {len(self.columns)} columns drifted** "
            f"(share {self.share_drifted:.1%}; drift: p < {t.alpha} and PSI ≥ {t.psi_drift}, "
            f"warn: p < {t.alpha} and PSI ≥ {t.psi_warn})",
            "",
            "| column | kind | n ref | n cur | missing ref → cur | statistic | p-value | PSI | Hellinger "
            "| category |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for c in rows:
            stat = f"KS {_fmt(c.ks)}" if c.kind == "numeric" else f"χ² {_fmt(c.chi2, 1)}"
            miss = f"{_fmt(c.ref_missing_rate * 100, 1)}% → {_fmt(c.cur_missing_rate * 100, 1)}%"
            cat = f"**{c.category}**" if c.category != "no_drift" else c.category
            lines.append(
                f"| `{c.column}` | {c.kind} | {c.n_ref} | {c.n_cur} | {miss} | {stat} | {_fmt(c.pvalue)} "
                f"| {_fmt(c.psi)} | {_fmt(c.hellinger)} | {cat} |"
            )
        return "\n".join(lines)


def drift_report(
    reference: pl.DataFrame,
    current: pl.DataFrame,
    columns: Sequence[str] | None = None,
    *,
    thresholds: DriftThresholds = DEFAULT_THRESHOLDS,
) -> DriftReport:
    """:func:`column_drift` for every column in ``columns`` (default: the columns both frames have)."""
    if columns is None:
        columns = [c for c in reference.columns if c in current.columns]
    missing = [c for c in columns if c not in reference.columns or c not in current.columns]
    if missing:
        raise KeyError(f"columns missing from reference or current: {missing}")
    return DriftReport(
        [column_drift(reference[c], current[c], thresholds=thresholds) for c in columns], thresholds
    )
