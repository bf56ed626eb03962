"""whylogs profiles of Polars frames: build, merge, (de)serialize, summarize, compare.

This is the ONLY module of ``risk_assets`` that imports whylogs (a test enforces it). whylogs 1.6.4 is
the last release and unmaintained upstream; keeping it behind one small interface means a NumPy/pandas
incompatibility is patched in one place, and the library can be swapped (or vendored) without touching
assets, reports or notebooks. Everything else sees :class:`Profile` and Polars frames only.

Public interface::

    profile_frame(frame, columns=None, *, dataset_timestamp=None) -> Profile
    to_pandas(frame, columns=None) -> pd.DataFrame   (the conversion profile_frame uses)
    merge(profiles) -> Profile
    serialize(profile) -> bytes            deserialize(data) -> Profile
    summary(profile) -> pl.DataFrame       drift_scores(reference, current) -> pl.DataFrame

What a profile holds per column (whylogs' default schema): counts (n, null, NaN, inf), inferred
types, a KLL quantile sketch with mean/stddev/min/max (numeric and boolean columns), a HyperLogLog
cardinality estimate, and frequent items (strings, integers, booleans). Profiles of disjoint row sets
merge into the profile of their union: counts, min/max exactly, mean/stddev up to float rounding,
sketches within their error bounds.

Polars → whylogs conversion (one pandas frame per call; whylogs only reads pandas):

* floats → float64; Polars null and NaN both become NaN, which whylogs counts as null (``null_count``
  therefore counts null *or* NaN; ``nan_count`` is whylogs' own count and also includes the nulls of
  nullable integer columns — use ``null_count``);
* integers → int64, or pandas' nullable ``Int64`` when the column has nulls (so integers stay integers
  and keep their frequent items);
* strings, Categorical, Enum → pandas ``string`` dtype (whylogs' fast path; object dtype takes a
  per-element path that is ~2x slower);
* Date/Datetime → Int64 milliseconds since the epoch (instants, zone-independent); Duration and Time
  (of day) → Int64 milliseconds; Decimal → float64; booleans stay booleans;
* nested/binary/object columns are not profiled (skipped when ``columns`` is None, an error when asked
  for by name).

Determinism: counts, means, min/max, cardinality and frequent items are deterministic; the KLL sketch
compacts with random bits (datasketches exposes no seed), so quantiles of frames larger than the sketch
(a few thousand values) and the serialized bytes may differ between runs within the sketch's error
(≈1.3 % rank error at whylogs' k=256). Timestamps are fixed (``dataset_timestamp`` or the epoch), never
"now", so they do not add further variation.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

if TYPE_CHECKING:
    import pandas as pd
    from whylogs.core import DatasetProfileView


@functools.cache
def _libs() -> tuple[Any, Any]:
    """``(pandas, whylogs.core)``, imported on first use: together ~3 s of imports that every run
    worker of the code location (a stream micro-batch, say) would otherwise pay for nothing."""
    # whylogs 1.6.4 references ``np.unicode_`` (removed in NumPy 2.0) in whylogs/core/datatypes.py;
    # that is its only NumPy-2 incompatibility (docs/design.md §4). ``np.str_`` is the same type
    # under its new name. Alias it once, here, before whylogs is imported.
    if not hasattr(np, "unicode_"):
        np.unicode_ = np.str_  # type: ignore[attr-defined]
    # whylogs sends usage telemetry to stats.whylogs.com from a thread on import unless opted out
    # (any value of this variable opts out). A pipeline must not phone home; respect an explicit setting.
    os.environ.setdefault("WHYLOGS_NO_ANALYTICS", "1")
    import pandas
    import whylogs.core

    return pandas, whylogs.core


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
QUANTILES: dict[str, str] = {
    "p01": "distribution/q_01",
    "p25": "distribution/q_25",
    "p50": "distribution/median",
    "p75": "distribution/q_75",
    "p99": "distribution/q_99",
}
TOP_VALUES = 5

_TOP_DTYPE = pl.List(pl.Struct({"value": pl.String, "count": pl.Int64}))
SUMMARY_SCHEMA: dict[str, pl.DataType] = {
    "column": pl.String(),
    "inferred_type": pl.String(),
    "count": pl.Int64(),
    "null_count": pl.Int64(),
    "nan_count": pl.Int64(),
    "mean": pl.Float64(),
    "stddev": pl.Float64(),
    "min": pl.Float64(),
    "max": pl.Float64(),
    **{q: pl.Float64() for q in QUANTILES},
    "cardinality_est": pl.Float64(),
    "top_values": _TOP_DTYPE,
}
DRIFT_SCHEMA: dict[str, pl.DataType] = {
    "column": pl.String(),
    "algorithm": pl.String(),
    "statistic": pl.Float64(),
    "pvalue": pl.Float64(),
    "category": pl.String(),
}


@dataclass(frozen=True)
class Profile:
    """A whylogs profile of a frame (or of a merge of frames). Treat ``view`` as opaque outside here."""

    view: DatasetProfileView

    @property
    def columns(self) -> list[str]:
        """Profiled column names, sorted."""
        return sorted(self.view.get_columns())

    @property
    def rows(self) -> int:
        """Rows profiled (every column sees every row; 0 for an empty profile)."""
        cols = self.view.get_columns()
        if not cols:
            return 0
        counts = next(iter(cols.values())).get_metric("counts")
        return int(counts.n.value) if counts is not None else 0


def _to_pandas_column(s: pl.Series) -> pd.Series | None:
    """One Polars column as the pandas series whylogs profiles best; None if not profilable."""
    pd, _ = _libs()
    dt = s.dtype
    if dt.is_float() or isinstance(dt, pl.Decimal):
        return pd.Series(s.cast(pl.Float64).to_numpy(), name=s.name)
    if dt.is_integer():
        if s.null_count():
            values = s.cast(pl.Int64).fill_null(0).to_numpy()
            return pd.Series(pd.arrays.IntegerArray(values, s.is_null().to_numpy()), name=s.name)
        return pd.Series(s.cast(pl.Int64).to_numpy(), name=s.name)
    if dt == pl.Boolean:
        return s.to_pandas()
    if dt in (pl.String, pl.Categorical) or isinstance(dt, pl.Enum):
        return s.cast(pl.String).to_pandas().astype("string")
    if dt == pl.Time:  # nanoseconds since midnight → milliseconds
        return _to_pandas_column((s.cast(pl.Int64) // 1_000_000).rename(s.name))
    if dt.is_temporal():
        ms = s.dt.total_milliseconds() if isinstance(dt, pl.Duration) else s.dt.epoch("ms")
        return _to_pandas_column(ms.cast(pl.Int64).rename(s.name))
    if dt == pl.Null:
        return pd.Series([None] * s.len(), dtype="object", name=s.name)
    return None


def to_pandas(frame: pl.DataFrame, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """The pandas frame :func:`profile_frame` hands to whylogs (conversion rules in the module doc)."""
    pd, _ = _libs()
    if columns is None:
        pairs = [(c, _to_pandas_column(frame[c])) for c in frame.columns]
        data = {c: s for c, s in pairs if s is not None}
    else:
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise KeyError(f"columns not in frame: {missing}")
        data = {}
        for c in columns:
            s = _to_pandas_column(frame[c])
            if s is None:
                raise TypeError(f"column {c!r} of dtype {frame.schema[c]} cannot be profiled")
            data[c] = s
    return pd.DataFrame(data, index=pd.RangeIndex(frame.height))


def profile_frame(
    frame: pl.DataFrame,
    columns: Sequence[str] | None = None,
    *,
    dataset_timestamp: datetime | None = None,
) -> Profile:
    """Profile ``columns`` of ``frame`` (all profilable columns when None).

    ``dataset_timestamp`` (e.g. the partition start; naive means UTC) is stored in the profile; the
    epoch when absent, so two profiles of the same data never differ by the time they were made.
    """
    data = to_pandas(frame, columns)
    ts = dataset_timestamp or EPOCH
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    prof = _libs()[1].DatasetProfile(dataset_timestamp=ts, creation_timestamp=ts)
    if data.shape[1]:
        prof.track(pandas=data)
    return Profile(prof.view())


def _empty_view() -> DatasetProfileView:
    return _libs()[1].DatasetProfileView(columns={}, dataset_timestamp=EPOCH, creation_timestamp=EPOCH)


def merge(profiles: Iterable[Profile]) -> Profile:
    """The profile of the union of the profiled rows (an empty profile for no input)."""
    views = [p.view for p in profiles]
    if not views:
        return Profile(_empty_view())
    return Profile(functools.reduce(lambda a, b: a.merge(b), views))


def serialize(profile: Profile) -> bytes:
    """whylogs' protobuf encoding of the profile (the format whylogs tools read)."""
    return profile.view.serialize()


def deserialize(data: bytes) -> Profile:
    """Inverse of :func:`serialize`."""
    return Profile(_libs()[1].DatasetProfileView.deserialize(data))


def _num(value: Any) -> float | None:
    """A finite float, or None (whylogs reports missing statistics as None or NaN)."""
    if value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _inferred_type(d: dict[str, Any]) -> str:
    kinds = {k: int(d.get(f"types/{k}", 0) or 0) for k in ("integral", "fractional", "boolean", "string")}
    kinds["object"] = int(d.get("types/object", 0) or 0) + int(d.get("types/tensor", 0) or 0)
    present = [k for k, v in kinds.items() if v]
    if not present:
        return "null"
    if set(present) == {"integral", "fractional"}:
        return "fractional"
    return present[0] if len(present) == 1 else "mixed"


def summary(profile: Profile) -> pl.DataFrame:
    """One row per profiled column (sorted by name), with the columns of :data:`SUMMARY_SCHEMA`.

    Distribution statistics are null for columns without numeric values; ``min``/``max`` are the
    exact extremes, quantiles come from the KLL sketch; ``top_values`` holds up to five frequent items
    (value as string, estimated count; by count, then value) where whylogs tracks them (strings,
    integers, booleans).
    """
    rows: list[dict[str, Any]] = []
    for name, col in sorted(profile.view.get_columns().items()):
        d = col.to_summary_dict()
        has_dist = int(d.get("distribution/n", 0) or 0) > 0
        # Ties come back in arbitrary order (e.g. after a serialization round trip): sort them.
        items = d.get("frequent_items/frequent_strings") or []
        top = sorted(((str(i.value), int(i.est)) for i in items), key=lambda vc: (-vc[1], vc[0]))
        row: dict[str, Any] = {
            "column": name,
            "inferred_type": _inferred_type(d),
            "count": int(d.get("counts/n", 0) or 0),
            "null_count": int(d.get("counts/null", 0) or 0),
            "nan_count": int(d.get("counts/nan", 0) or 0),
            "mean": _num(d.get("distribution/mean")) if has_dist else None,
            "stddev": _num(d.get("distribution/stddev")) if has_dist else None,
            "min": _num(d.get("distribution/min")) if has_dist else None,
            "max": _num(d.get("distribution/max")) if has_dist else None,
            **{q: _num(d.get(key)) if has_dist else None for q, key in QUANTILES.items()},
            "cardinality_est": _num(d.get("cardinality/est")),
            "top_values": [{"value": v, "count": c} for v, c in top[:TOP_VALUES]] or None,
        }
        rows.append(row)
    return pl.DataFrame(rows, schema=SUMMARY_SCHEMA)


def drift_scores(reference: Profile, current: Profile) -> pl.DataFrame:
    """whylogs' per-column drift test of ``current`` against ``reference``.

    Uses ``calculate_drift_scores``' default choice: the KS test on the KLL sketches for columns with a
    distribution (numeric, boolean), chi-square on frequent items otherwise. ``category`` is whylogs'
    p-value banding: ``DRIFT`` (p < 0.05), ``POSSIBLE_DRIFT`` (0.05 ≤ p < 0.15), ``NO_DRIFT``. Pure
    significance: on large partitions a practically irrelevant shift is "DRIFT" — gate alerts on an
    effect size too (see :mod:`risk_assets.monitoring.drift`). Columns present in both profiles that
    whylogs cannot score get a row with nulls.
    """
    # whylogs.viz pulls in scipy.stats (~2 s of imports): loaded only when drift is scored.
    _libs()
    from whylogs.viz.drift.column_drift_algorithms import calculate_drift_scores

    scores = calculate_drift_scores(
        target_view=current.view, reference_view=reference.view, with_thresholds=True
    )
    rows = []
    for name in sorted(scores):
        s = scores[name] or {}
        rows.append(
            {
                "column": name,
                "algorithm": s.get("algorithm"),
                "statistic": _num(s.get("statistic")),
                "pvalue": _num(s.get("pvalue")),
                "category": s.get("drift_category"),
            }
        )
    return pl.DataFrame(rows, schema=DRIFT_SCHEMA)
