"""The champion timeline in event time: who served simulated days, at the 1 ms edges of each
promotion, and realized performance / drift of a day evaluating the model that actually served it
(the prediction log where decisions were logged, otherwise the timeline)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import xgboost as xgb

from risk_assets.ingest.kafka_reader import OffsetRange
from risk_assets.lake import Lake
from risk_assets.models import registry
from risk_assets.models.scoring import champion_at, load_scorer, realized_metrics, serving_versions
from risk_assets.monitoring.artifacts import prediction_log_path
from risk_assets.monitoring.drift_assets import serving_model
from risk_assets.monitoring.performance import realized_performance
from tests.serving.test_serving import FEATURES, SIGNAL, manifest

D1 = datetime(2026, 6, 1, tzinfo=UTC)
DAY = timedelta(days=1)
MS = timedelta(milliseconds=1)


def _model(cut: float, seed: int) -> bytes:
    """A small booster on the real feature list that scores high iff SIGNAL > ``cut``: models with
    different cuts rank the simulated days' fraud differently."""
    rng = np.random.default_rng(seed)
    x = np.full((3000, len(FEATURES)), np.nan)
    x[:, FEATURES.index(SIGNAL)] = rng.uniform(0, 10, 3000)
    y = (x[:, FEATURES.index(SIGNAL)] > cut).astype(float)
    params = {"objective": "binary:logistic", "max_depth": 2, "eta": 0.3, "nthread": 1, "seed": seed}
    return bytes(xgb.train(params, xgb.DMatrix(x, label=y), num_boost_round=10).save_raw("ubj"))


def _versions(lake: Lake) -> tuple[str, str, str]:
    out = []
    for i, cut in enumerate([2.0, 8.0, 5.0]):
        out.append(registry.register(lake, _model(cut, i), manifest(), created=D1 + i * DAY))
    return out[0], out[1], out[2]


def test_champion_at_answers_who_served_at_the_edges(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path))
    v1, v2, v3 = _versions(lake)
    # Daily promotions of simulated days: v1 serves from D2 00:00, v2 from D4 00:00 (event time),
    # both recorded now (wall clock, months after).
    registry.set_champion(lake, v1, "day 1", effective_from=D1 + DAY)
    registry.set_champion(lake, v2, "day 3", effective_from=D1 + 3 * DAY)
    assert champion_at(lake, D1 + DAY - MS) is None
    assert champion_at(lake, D1 + DAY) == v1
    assert champion_at(lake, D1 + 3 * DAY - MS) == v1
    assert champion_at(lake, D1 + 3 * DAY) == v2
    assert champion_at(lake, D1 + 30 * DAY) == v2

    # A live rollback (effective now) changes only event times from now on.
    registry.set_champion(lake, v1, "live rollback", action="rollback")
    now = datetime.now(UTC)
    assert champion_at(lake, D1 + 3 * DAY) == v2
    assert champion_at(lake, now + timedelta(seconds=5)) == v1

    # A re-run promotion of an older partition takes over from its effective time on (the pointer
    # names it), the spans before stay.
    registry.set_champion(lake, v3, "re-run of day 2", effective_from=D1 + 2 * DAY)
    assert champion_at(lake, D1 + 2 * DAY - MS) == v1
    assert champion_at(lake, D1 + 2 * DAY) == v3
    assert champion_at(lake, D1 + 3 * DAY) == v3
    assert champion_at(lake, now + timedelta(seconds=5)) == v3
    assert registry.champion(lake).version == v3
    assert [v for _, v in registry.champion_timeline(lake)] == [v1, v3]

    # The vectorised form agrees with champion_at at every edge.
    probes = [D1 + DAY - MS, D1 + DAY, D1 + 2 * DAY - MS, D1 + 2 * DAY, D1 + 3 * DAY, now + DAY]
    series = pl.Series("event_ts", probes, dtype=pl.Datetime("ms", "UTC"))
    assert serving_versions(lake, series).to_list() == [champion_at(lake, t) for t in probes]


def test_entries_without_effective_from_fall_back_to_wall_clock(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path))
    v1, v2, _ = _versions(lake)
    registry.append_audit(lake, {"at": "2026-06-02T00:00:00+00:00", "action": "promote", "version": v1})
    registry.append_audit(lake, {"at": "2026-06-04T00:00:00+00:00", "action": "promote", "version": v2})
    assert champion_at(lake, datetime(2026, 6, 3, 23, 59, 59, 999_000, tzinfo=UTC)) == v1
    assert champion_at(lake, datetime(2026, 6, 4, tzinfo=UTC)) == v2


def _days(n_days: int, per_day: int = 1500, seed: int = 0) -> pl.DataFrame:
    """Decision events of ``n_days`` simulated days from D1: the toy models' signal feature,
    labels that follow it noisily."""
    rng = np.random.default_rng(seed)
    n = n_days * per_day
    signal = rng.uniform(0, 10, n)
    fraud = (signal + rng.normal(0, 2.5, n)) > 8.5
    ts = [D1 + timedelta(seconds=float(s)) for s in np.sort(rng.uniform(0, n_days * 86_400, n))]
    return pl.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(n)],
            "event_ts": pl.Series(ts, dtype=pl.Datetime("ms", "UTC")),
            "is_fraud": fraud,
            "weight": np.ones(n),
            "scenario": np.where(fraud, "ato", "none"),
            SIGNAL: signal,
        }
    )


def test_realized_performance_and_drift_use_the_model_that_served(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path))
    v1, v2, _ = _versions(lake)
    registry.set_champion(lake, v1, "day 1", effective_from=D1 + DAY)
    registry.set_champion(lake, v2, "day 3", effective_from=D1 + 3 * DAY)
    frame = _days(5)
    s1, s2 = load_scorer(lake, v1), load_scorer(lake, v2)
    keys = ("rows", "positives", "average_precision")

    def day(i: int) -> pl.DataFrame:
        return frame.filter((pl.col("event_ts") >= D1 + i * DAY) & (pl.col("event_ts") < D1 + (i + 1) * DAY))

    before, after = day(2), day(3)  # the day before the second promotion, the day it took effect
    ap = {
        v: realized_metrics(before, s.score(before), keys=keys)["average_precision"]
        for v, s in [(v1, s1), (v2, s2)]
    }
    assert abs(ap[v1] - ap[v2]) > 1e-3  # the two models are distinguishable on this day

    perf = realized_performance(lake, frame, s2, newest=D1 + 5 * DAY, lookback_days=5, recent_days=2)
    by_day = {r["day"]: r for r in perf.per_day}
    assert by_day["2026-06-03"]["version"] == v1 and by_day["2026-06-03"]["versions"] == {v1: before.height}
    assert by_day["2026-06-03"]["sources"] == {"timeline": before.height}
    assert by_day["2026-06-03"]["average_precision"] == ap[v1]
    assert by_day["2026-06-04"]["version"] == v2
    want = realized_metrics(after, s2.score(after), keys=keys)["average_precision"]
    assert by_day["2026-06-04"]["average_precision"] == want
    # Day 1 (D2) was served by v1 from 00:00 on; D1 precedes the timeline: the current champion.
    assert by_day["2026-06-02"]["versions"] == {v1: day(1).height}
    assert by_day["2026-06-01"]["sources"] == {"current": day(0).height}

    # Drift of the day before the second promotion compares the model that served it: v1.
    scorer, served = serving_model(lake, before)
    assert scorer.version == v1 and served["versions"] == {v1: before.height}
    assert serving_model(lake, after)[0].version == v2

    # Where decisions were logged, the log's model_version wins over the timeline: a live service
    # that hot-reloaded v2 early scored the last 100 events of the day before with it.
    logged = before.tail(100)
    log_rows = pl.DataFrame(
        {
            "partition": pl.Series([0] * 100, dtype=pl.Int32),
            "offset": pl.Series(range(100), dtype=pl.Int64),
            "event_id": logged["event_id"],
            "event_ts": logged["event_ts"],
            "scored_ts": logged["event_ts"],
            "model_version": [v2] * 100,
            "score": s2.score(logged),
            "decision": ["allow"] * 100,
        }
    )
    lake.write_parquet(log_rows, prediction_log_path(OffsetRange("risk.predictions", 0, 0, 100)))
    perf = realized_performance(lake, frame, s2, newest=D1 + 5 * DAY, lookback_days=5, recent_days=2)
    row = {r["day"]: r for r in perf.per_day}["2026-06-03"]
    assert row["versions"] == {v1: before.height - 100, v2: 100}
    assert row["sources"] == {"logged": 100, "timeline": before.height - 100}
    mixed = s1.score(before)
    mixed[-100:] = s2.score(logged)
    assert row["average_precision"] == realized_metrics(before, mixed, keys=keys)["average_precision"]
    assert serving_model(lake, before)[0].version == v1  # still the one that served most of it
