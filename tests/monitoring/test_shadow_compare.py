"""Champion vs shadow challenger on shadow-scored live traffic as labels mature (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl

from risk_assets.models import metrics as mx
from risk_assets.monitoring.shadow_compare import compare_shadow

T0 = datetime(2026, 6, 1, tzinfo=UTC)
DAY = timedelta(days=1)


def _log(n: int = 4000, seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    fraud = rng.random(n) < 0.05
    champ = np.clip(0.3 * fraud + rng.normal(0.2, 0.15, n), 0, 1)  # noisy
    chall = np.clip(0.5 * fraud + rng.normal(0.2, 0.10, n), 0, 1)  # sharper
    ts = [T0 + timedelta(seconds=float(s)) for s in np.sort(rng.uniform(0, 10 * 86_400, n))]
    decision = np.where(champ >= 0.45, "review", "allow")
    log = pl.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(n)],
            "event_ts": pl.Series(ts, dtype=pl.Datetime("ms", "UTC")),
            "scored_ts": pl.Series(ts, dtype=pl.Datetime("ms", "UTC")),
            "model_version": ["champ"] * n,
            "score": champ,
            "decision": decision,
            "shadow_version": ["chall"] * n,
            "shadow_score": chall,
        }
    )
    # A chargeback two days after each fraud.
    labels = log.filter(pl.Series(fraud)).select("event_id", (pl.col("event_ts") + 2 * DAY).alias("label_ts"))
    return log, labels, fraud


def test_compare_shadow_on_matured_events() -> None:
    log, labels, fraud = _log()
    # Another shadow version's rows and a re-scoring of an event must not count.
    other = log.head(50).with_columns(pl.lit("older").alias("shadow_version"))
    later = pl.col("scored_ts") + timedelta(seconds=1)
    rescored = log.head(1).with_columns(later, pl.lit(0.99).alias("shadow_score"))
    as_of = T0 + 9 * DAY
    maturity = 3 * DAY
    out = compare_shadow(pl.concat([log, other, rescored]), labels, "chall", as_of=as_of, maturity=maturity)

    assert out["shadow_scored"] == log.height
    span = (log["event_ts"].max() - log["event_ts"].min()) / DAY
    assert out["shadow_days"] == span and 9.9 < span <= 10
    mature = (log["event_ts"] + maturity <= as_of).to_numpy()
    known = (log["event_ts"] + 2 * DAY < as_of).to_numpy() & fraud
    assert out["labelled"] == int(mature.sum())
    assert out["positives"] == int((mature & known).sum())
    y = known[mature]
    champ, chall = log["score"].to_numpy()[mature], log["shadow_score"].to_numpy()[mature]
    assert out["champion"]["average_precision"] == mx.average_precision(y, champ)
    assert out["challenger"]["average_precision"] == mx.average_precision(y, chall)
    assert out["challenger"]["average_precision"] > out["champion"]["average_precision"]
    # The champion's operating point: its own flags; the challenger at the same flag share.
    flagged = (log["decision"] != "allow").to_numpy()[mature]
    assert out["flag_share"] == flagged.mean()
    assert out["champion"]["recall_at_operating_point"] == (flagged & y).sum() / y.sum()
    top = np.argsort(-chall, kind="stable")[: round(flagged.mean() * y.size)]
    assert out["challenger"]["recall_at_operating_point"] == y[top].sum() / y.sum()
    assert out["champion_versions"] == {"champ": log.height}


def test_nothing_shadowed_or_nothing_matured() -> None:
    log, labels, _ = _log(200)
    none = compare_shadow(log, labels, "never-shadowed", as_of=T0 + 30 * DAY, maturity=DAY)
    assert none["shadow_scored"] == 0 and none["labelled"] == 0 and none["shadow_days"] == 0.0
    early = compare_shadow(log, labels, "chall", as_of=T0 + DAY, maturity=7 * DAY)
    assert early["shadow_scored"] == 200 and early["labelled"] == 0 and early["challenger"] == {}


def test_read_shadow_log_skips_ranges_without_shadow_columns(tmp_path) -> None:
    """Ranges stored before shadow scoring existed have no shadow columns: skipped, not an error;
    only rows a shadow scored are returned."""
    from risk_assets.ingest.kafka_reader import OffsetRange
    from risk_assets.lake import Lake
    from risk_assets.monitoring.artifacts import prediction_log_path
    from risk_assets.monitoring.shadow_assets import read_shadow_log

    lake = Lake(str(tmp_path))
    log, _, _ = _log(10)
    old = log.drop("shadow_version", "shadow_score").with_columns(pl.lit(0.0).alias("f1"))
    new = log.with_columns(
        pl.when(pl.int_range(pl.len()) < 4).then(pl.col("shadow_version")).alias("shadow_version"),
        pl.lit(1.0).alias("f2"),
    )
    lake.write_parquet(old, prediction_log_path(OffsetRange("t", 0, 0, 10)))
    lake.write_parquet(new, prediction_log_path(OffsetRange("t", 0, 10, 20)))
    got = read_shadow_log(lake)
    assert got["event_id"].to_list() == log["event_id"].head(4).to_list()
    assert got["shadow_version"].to_list() == ["chall"] * 4
