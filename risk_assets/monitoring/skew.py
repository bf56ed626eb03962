"""Training/serving skew, row by row: did the service use the values the offline pipeline computes?

Pure Polars. ``served`` holds, per request (one row per ``key``, e.g. ``event_id``), the feature values
the scoring service used (from its prediction log); ``recomputed`` holds the same features recomputed
offline — the point-in-time join of the offline store at the request time — for the same keys. This
module only compares; building ``recomputed`` is the caller's job (Chronon's approach: log what was
served, replay it through the offline join).

Equality of one value pair (``served`` s, ``recomputed`` r):

* missing = null **or NaN**, on either side. Missing vs missing is *equal*: a service that packs
  features as float32 blobs writes NaN where the offline store has null, and that is not skew.
* missing vs a value is a mismatch (e.g. a feature the online store did not have yet);
* numbers (any numeric dtype on both sides, compared as Float64): equal when ``s == r`` (so ±inf
  match themselves) or ``|s − r| ≤ abs_tol + rel_tol · max(|s|, |r|)`` (symmetric, like
  ``math.isclose``); the defaults (1e-6, 1e-9) tolerate float32 packing of float64 values;
* other dtypes: exact equality when both sides have the same dtype, otherwise both are cast to String.

Rows are matched on ``key``; keys present on one side only are counted (``served_without_recomputed``,
``recomputed_without_served``) and excluded from the rates. Duplicate keys are an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import polars as pl

REL_TOL = 1e-6
ABS_TOL = 1e-9
MAX_EXAMPLES = 5
_R = "__recomputed"

EXAMPLE_SCHEMA: dict[str, pl.DataType] = {
    "key": pl.String(),
    "feature": pl.String(),
    "served": pl.String(),
    "recomputed": pl.String(),
}


@dataclass(frozen=True)
class FeatureSkew:
    """Mismatch counts of one feature over the compared rows."""

    feature: str
    mismatches: int
    # Of ``mismatches``: a value on one side and a missing value on the other.
    missing_mismatches: int
    mismatch_rate: float
    # Largest |served − recomputed| among numeric pairs with values on both sides (None if not numeric).
    max_abs_diff: float | None


@dataclass(frozen=True)
class SkewReport:
    """Outcome of :func:`row_level_skew`."""

    key: str
    rows_served: int
    rows_recomputed: int
    rows_compared: int
    served_without_recomputed: int
    recomputed_without_served: int
    rows_with_mismatch: int
    features: list[FeatureSkew]
    # Up to ``max_examples`` mismatching rows per feature: key, feature, served, recomputed (as text).
    examples: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=EXAMPLE_SCHEMA))

    @property
    def share_rows_with_mismatch(self) -> float:
        """Share of compared rows where at least one feature differs (0 when nothing was compared)."""
        return self.rows_with_mismatch / self.rows_compared if self.rows_compared else 0.0

    @property
    def mismatch_rates(self) -> dict[str, float]:
        """``{feature: mismatch rate}`` in input order."""
        return {f.feature: f.mismatch_rate for f in self.features}

    def worst_features(self, n: int = 5) -> list[FeatureSkew]:
        """The ``n`` features with the highest mismatch rate (only those with mismatches)."""
        bad = [f for f in self.features if f.mismatches]
        return sorted(bad, key=lambda f: (-f.mismatch_rate, f.feature))[:n]

    @property
    def clean(self) -> bool:
        """No mismatch on any compared row."""
        return self.rows_with_mismatch == 0

    def to_frame(self) -> pl.DataFrame:
        """One row per feature: feature, mismatches, missing_mismatches, mismatch_rate, max_abs_diff."""
        return pl.DataFrame(
            [vars(f) for f in self.features],
            schema={
                "feature": pl.String,
                "mismatches": pl.Int64,
                "missing_mismatches": pl.Int64,
                "mismatch_rate": pl.Float64,
                "max_abs_diff": pl.Float64,
            },
        )

    def to_markdown(self, n: int = 10) -> str:
        """A short Markdown summary (worst features first) for Dagster metadata."""
        lines = [
            f"**{self.rows_with_mismatch} of {self.rows_compared} rows "
            f"({self.share_rows_with_mismatch:.2%}) have a mismatching feature**; "
            f"{self.served_without_recomputed} served rows without a recomputation.",
        ]
        lines += feature_skew_table(self.worst_features(n))
        return "\n".join(lines)


def _missing(col: str, dtype: pl.DataType) -> pl.Expr:
    e = pl.col(col)
    return (e.is_null() | e.is_nan()) if dtype.is_float() else e.is_null()


def _compare_exprs(
    feature: str, served_dtype: pl.DataType, recomputed_dtype: pl.DataType, rel_tol: float, abs_tol: float
) -> tuple[pl.Expr, pl.Expr, pl.Expr | None]:
    """(mismatch, missing-vs-value mismatch, |diff| or None) expressions for one feature."""
    s_col, r_col = feature, f"{feature}{_R}"
    s_miss, r_miss = _missing(s_col, served_dtype), _missing(r_col, recomputed_dtype)
    one_missing = s_miss ^ r_miss
    both_present = ~s_miss & ~r_miss
    numeric = (served_dtype.is_numeric() or isinstance(served_dtype, pl.Decimal)) and (
        recomputed_dtype.is_numeric() or isinstance(recomputed_dtype, pl.Decimal)
    )
    if numeric:
        s, r = pl.col(s_col).cast(pl.Float64), pl.col(r_col).cast(pl.Float64)
        diff = (s - r).abs()
        close = (s == r) | (diff <= abs_tol + rel_tol * pl.max_horizontal(s.abs(), r.abs()))
        value_mismatch = both_present & ~close
        return one_missing | value_mismatch, one_missing, pl.when(both_present).then(diff)
    if served_dtype == recomputed_dtype:
        s, r = pl.col(s_col), pl.col(r_col)
    else:
        s, r = pl.col(s_col).cast(pl.String), pl.col(r_col).cast(pl.String)
    return one_missing | (both_present & (s != r)), one_missing, None


def row_level_skew(
    served: pl.DataFrame,
    recomputed: pl.DataFrame,
    *,
    key: str = "event_id",
    features: Sequence[str],
    rel_tol: float = REL_TOL,
    abs_tol: float = ABS_TOL,
    max_examples: int = MAX_EXAMPLES,
) -> SkewReport:
    """Compare served and recomputed feature values row by row (see the module docstring)."""
    features = list(features)
    for name, frame in (("served", served), ("recomputed", recomputed)):
        missing = [c for c in (key, *features) if c not in frame.columns]
        if missing:
            raise KeyError(f"{name} frame lacks columns {missing}")
        if frame[key].n_unique() != frame.height:
            raise ValueError(f"{name} frame has duplicate {key!r} values; expected one row per key")
    if key in features:
        raise ValueError("the key cannot also be a feature")

    s = served.select([key, *features])
    r = recomputed.select([key, *features]).rename({f: f"{f}{_R}" for f in features})
    joined = s.join(r, on=key, how="inner", maintain_order="left")
    served_only = s.height - joined.height
    recomputed_only = r.height - joined.height

    exprs: list[pl.Expr] = []
    diffs: dict[str, bool] = {}
    for f in features:
        mismatch, one_missing, diff = _compare_exprs(
            f, served.schema[f], recomputed.schema[f], rel_tol, abs_tol
        )
        exprs += [mismatch.alias(f"m::{f}"), one_missing.alias(f"o::{f}")]
        if diff is not None:
            exprs.append(diff.alias(f"d::{f}"))
        diffs[f] = diff is not None
    flags = joined.select(pl.col(key), *exprs)

    n = joined.height
    stats = flags.select(
        *[pl.col(f"m::{f}").sum().alias(f"m::{f}") for f in features],
        *[(pl.col(f"m::{f}") & pl.col(f"o::{f}")).sum().alias(f"o::{f}") for f in features],
        *[pl.col(f"d::{f}").max().alias(f"d::{f}") for f in features if diffs[f]],
        pl.any_horizontal([pl.col(f"m::{f}") for f in features]).sum().alias("__any")
        if features
        else pl.lit(0).alias("__any"),
    ).row(0, named=True)

    per_feature = []
    for f in features:
        m = int(stats[f"m::{f}"] or 0)
        d = stats.get(f"d::{f}")
        per_feature.append(
            FeatureSkew(
                feature=f,
                mismatches=m,
                missing_mismatches=int(stats[f"o::{f}"] or 0),
                mismatch_rate=m / n if n else 0.0,
                max_abs_diff=float(d) if diffs[f] and d is not None else None,
            )
        )

    examples = [
        joined.filter(flags[f"m::{f}"])
        .head(max_examples)
        .select(
            pl.col(key).cast(pl.String).alias("key"),
            pl.lit(f).alias("feature"),
            pl.col(f).cast(pl.String).alias("served"),
            pl.col(f"{f}{_R}").cast(pl.String).alias("recomputed"),
        )
        for f in features
        if stats[f"m::{f}"]
    ]
    return SkewReport(
        key=key,
        rows_served=served.height,
        rows_recomputed=recomputed.height,
        rows_compared=n,
        served_without_recomputed=served_only,
        recomputed_without_served=recomputed_only,
        rows_with_mismatch=int(stats["__any"] or 0),
        features=per_feature,
        examples=pl.concat(examples) if examples else pl.DataFrame(schema=EXAMPLE_SCHEMA),
    )


def feature_skew_table(features: Sequence[FeatureSkew]) -> list[str]:
    """Markdown lines of a per-feature skew table (nothing when ``features`` is empty)."""
    if not features:
        return []
    lines = ["", "| feature | mismatch rate | mismatches | of which missing | max abs diff |"]
    lines.append("|---|---:|---:|---:|---:|")
    for f in features:
        diff = "–" if f.max_abs_diff is None else f"{f.max_abs_diff:.4g}"
        lines.append(
            f"| `{f.feature}` | {f.mismatch_rate:.2%} | {f.mismatches} | {f.missing_mismatches} | {diff} |"
        )
    return lines


def merge_reports(reports: list[tuple[SkewReport, int]]) -> tuple[int, int, list[FeatureSkew]]:
    """(rows compared, rows with a mismatch, per-feature skew) over per-version reports; a feature's
    rate is over the rows of the versions that have it."""
    compared = sum(r.rows_compared for r, _ in reports)
    bad = sum(r.rows_with_mismatch for r, _ in reports)
    acc: dict[str, list[float]] = {}
    diffs: dict[str, float | None] = {}
    for r, _ in reports:
        for f in r.features:
            a = acc.setdefault(f.feature, [0, 0, 0])
            a[0] += f.mismatches
            a[1] += f.missing_mismatches
            a[2] += r.rows_compared
            if f.max_abs_diff is not None:
                prev = diffs.get(f.feature)
                diffs[f.feature] = f.max_abs_diff if prev is None else max(prev, f.max_abs_diff)
    merged = [
        FeatureSkew(name, int(m), int(o), m / n if n else 0.0, diffs.get(name))
        for name, (m, o, n) in acc.items()
    ]
    return compared, bad, merged
