"""Stream/batch consistency: do streamed feature rows equal the batch definition's values?

Pure Polars. Rows are matched on (entity keys, ``event_ts``); a row is consistent when every feature
agrees (both null, or equal within ``rel_tol``). A deterministic sample of entities (by key hash)
keeps the check cheap on big days while staying reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from risk_assets.features.spec import FeatureGroup

REL_TOL = 1e-9


@dataclass(frozen=True)
class Consistency:
    """Outcome of one comparison."""

    group: str
    rows_compared: int
    rows_equal: int
    stream_rows_without_batch: int
    mismatches_by_feature: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.rows_equal / self.rows_compared if self.rows_compared else 1.0


def _same(feature: str, rel_tol: float) -> pl.Expr:
    a = pl.col(feature).cast(pl.Float64)
    b = pl.col(f"{feature}__batch").cast(pl.Float64)
    both_null = a.is_null() & b.is_null()
    close = (a - b).abs() <= rel_tol * b.abs() + rel_tol
    return both_null | (a.is_not_null() & b.is_not_null() & close)


def compare(
    group: FeatureGroup,
    stream: pl.DataFrame,
    batch: pl.DataFrame,
    *,
    sample_share: float = 1.0,
    seed: int = 0,
    rel_tol: float = REL_TOL,
) -> Consistency:
    """Compare stream rows with batch rows of ``group`` on a sample of entities."""
    keys = list(group.entity.keys)
    feats = list(group.feature_names)
    if sample_share < 1.0:
        threshold = int(sample_share * 2**32)
        pick = (pl.struct(keys).hash(seed) % 2**32) < threshold
        stream, batch = stream.filter(pick), batch.filter(pick)
    joined = stream.select([*keys, "event_ts", *feats]).join(
        batch.select([*keys, "event_ts", *feats]), on=[*keys, "event_ts"], how="left", suffix="__batch"
    )
    has_batch = pl.col("__present").is_not_null()
    joined = joined.join(
        batch.select([*keys, "event_ts"]).with_columns(pl.lit(True).alias("__present")),
        on=[*keys, "event_ts"],
        how="left",
    )
    matched = joined.filter(has_batch)
    flags = matched.select([_same(f, rel_tol).alias(f) for f in feats])
    equal_rows = flags.select(pl.all_horizontal(pl.all())).to_series().sum() if flags.height else 0
    return Consistency(
        group=group.name,
        rows_compared=matched.height,
        rows_equal=int(equal_rows),
        stream_rows_without_batch=joined.height - matched.height,
        mismatches_by_feature={
            f: int((~flags[f]).sum()) for f in feats if flags.height and (~flags[f]).any()
        },
    )
