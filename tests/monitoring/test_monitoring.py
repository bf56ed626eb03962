"""Monitoring building blocks: whylogs profiles, exact drift statistics, row-level skew.

Small frames only (a few thousand rows): the whole module runs in seconds.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from risk_assets.monitoring import drift as D
from risk_assets.monitoring import profiles as P
from risk_assets.monitoring.decisions import labels_within, weighted_rate
from risk_assets.monitoring.skew import row_level_skew

PACKAGE = Path(__file__).resolve().parents[2] / "risk_assets"


def mixed_frame(n: int = 2000, seed: int = 0) -> pl.DataFrame:
    """Ints, floats, strings, booleans and datetimes, each with some nulls."""
    rng = np.random.default_rng(seed)
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    frame = pl.DataFrame(
        {
            "amount": rng.lognormal(3, 1, n),
            "count_1h": rng.integers(0, 40, n),
            "country": rng.choice(["DE", "FR", "US", "BR", "NG"], n, p=[0.4, 0.25, 0.2, 0.1, 0.05]),
            "success": rng.random(n) < 0.9,
            "event_ts": [t0 + timedelta(seconds=int(s)) for s in rng.integers(0, 3600, n)],
        }
    )
    hole = pl.Series(rng.random(n) < 0.1)
    return frame.with_columns(
        pl.when(hole).then(None).otherwise(pl.col("amount")).alias("amount"),
        pl.when(pl.col("count_1h") > 36).then(None).otherwise(pl.col("count_1h")).alias("count_1h"),
        pl.when(hole.shift(1, fill_value=False)).then(None).otherwise(pl.col("country")).alias("country"),
    )


# -- profiles --------------------------------------------------------------------------------------


def test_summary_has_documented_columns_and_exact_counts() -> None:
    frame = mixed_frame()
    s = P.summary(P.profile_frame(frame)).sort("column")
    assert s.schema == pl.Schema(P.SUMMARY_SCHEMA)
    assert s["column"].to_list() == sorted(frame.columns)
    rows = {r["column"]: r for r in s.iter_rows(named=True)}
    for c in frame.columns:
        assert rows[c]["count"] == frame.height
        assert rows[c]["null_count"] == frame[c].null_count()
    amount = frame["amount"].drop_nulls()
    assert rows["amount"]["min"] == pytest.approx(amount.min(), rel=1e-12)
    assert rows["amount"]["max"] == pytest.approx(amount.max(), rel=1e-12)
    assert rows["amount"]["mean"] == pytest.approx(amount.mean(), rel=1e-9)
    assert rows["amount"]["stddev"] == pytest.approx(amount.std(), rel=1e-3)
    assert rows["amount"]["p01"] <= rows["amount"]["p50"] <= rows["amount"]["p99"]
    assert rows["count_1h"]["inferred_type"] == "integral"  # ints with nulls stay ints
    assert rows["count_1h"]["max"] == 36
    assert rows["country"]["inferred_type"] == "string"
    assert rows["country"]["mean"] is None
    top = {t["value"]: t["count"] for t in rows["country"]["top_values"]}
    expected = dict(frame["country"].drop_nulls().value_counts().iter_rows())
    assert top == {k: expected[k] for k in top} and len(top) == 5
    assert rows["country"]["cardinality_est"] == pytest.approx(5, abs=0.01)
    # Datetimes are profiled as epoch milliseconds.
    ts_ms = frame["event_ts"].dt.epoch("ms")
    assert rows["event_ts"]["min"] == ts_ms.min() and rows["event_ts"]["max"] == ts_ms.max()
    assert rows["success"]["mean"] == pytest.approx(frame["success"].mean())


def test_merge_of_halves_equals_profile_of_whole() -> None:
    frame = mixed_frame(3000, seed=1)
    whole = P.summary(P.profile_frame(frame)).sort("column")
    merged_profile = P.merge([P.profile_frame(frame[:1300]), P.profile_frame(frame[1300:])])
    merged = P.summary(merged_profile).sort("column")
    assert merged_profile.rows == frame.height
    exact = ["column", "inferred_type", "count", "null_count", "nan_count", "min", "max"]
    assert merged.select(exact).equals(whole.select(exact))
    for a, b in zip(merged.iter_rows(named=True), whole.iter_rows(named=True), strict=True):
        if b["mean"] is not None:
            assert a["mean"] == pytest.approx(b["mean"], rel=1e-9, abs=1e-12)
            assert a["stddev"] == pytest.approx(b["stddev"], rel=1e-6)
        assert a["cardinality_est"] == pytest.approx(b["cardinality_est"], rel=0.02)
    assert merged.filter(pl.col("column") == "country")["top_values"].equals(
        whole.filter(pl.col("column") == "country")["top_values"]
    )


def test_serialize_round_trip_and_empty_merge() -> None:
    profile = P.profile_frame(mixed_frame(500), dataset_timestamp=datetime(2026, 11, 1, 7))
    data = P.serialize(profile)
    assert isinstance(data, bytes) and len(data) > 0
    back = P.deserialize(data)
    assert back.columns == profile.columns and back.rows == 500
    assert P.summary(back).equals(P.summary(profile))
    assert back.view.dataset_timestamp == datetime(2026, 11, 1, 7, tzinfo=UTC)
    empty = P.merge([])
    assert empty.rows == 0 and P.summary(empty).height == 0
    assert P.summary(P.merge([empty, back])).equals(P.summary(profile))


def test_profile_column_selection() -> None:
    frame = mixed_frame(200).with_columns(pl.lit([1, 2]).alias("nested"))
    assert "nested" not in P.profile_frame(frame).columns  # unsupported dtypes skipped by default
    assert P.profile_frame(frame, ["amount", "country"]).columns == ["amount", "country"]
    with pytest.raises(TypeError, match="nested"):
        P.profile_frame(frame, ["nested"])
    with pytest.raises(KeyError):
        P.profile_frame(frame, ["nope"])


def test_whylogs_is_imported_only_in_profiles() -> None:
    pattern = re.compile(r"^\s*(import whylogs|from whylogs)", re.MULTILINE)
    importers = sorted(
        str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if pattern.search(p.read_text())
    )
    assert importers == ["monitoring/profiles.py"]


def test_whylogs_drift_scores_flag_shifted_column_only() -> None:
    rng = np.random.default_rng(3)
    n = 2000
    ref = pl.DataFrame(
        {
            "x": rng.normal(size=n),
            "y": rng.normal(size=n),
            "c": rng.choice(list("abcd"), n),
            "k": rng.choice(list("abcd"), n),
        }
    )
    cur = ref.sample(fraction=1.0, shuffle=True, seed=2).with_columns(
        pl.col("x") + 1.0, pl.Series("k", rng.choice(list("abcd"), n, p=[0.7, 0.1, 0.1, 0.1]))
    )
    scores = P.drift_scores(P.profile_frame(ref), P.profile_frame(cur))
    assert scores.schema == pl.Schema(P.DRIFT_SCHEMA)
    by = {r["column"]: r for r in scores.iter_rows(named=True)}
    assert by["x"]["algorithm"] == "ks" and by["x"]["category"] == "DRIFT"
    assert by["k"]["algorithm"] == "chi-square" and by["k"]["category"] == "DRIFT"
    assert by["y"]["category"] == "NO_DRIFT" and by["c"]["category"] == "NO_DRIFT"


# -- drift maths -----------------------------------------------------------------------------------


def brute_force_ks(a: np.ndarray, b: np.ndarray) -> float:
    """sup |F_a − F_b| by direct ECDF evaluation at every observed value."""
    return max(abs(np.mean(a <= t) - np.mean(b <= t)) for t in np.concatenate([a, b]))


@pytest.mark.parametrize("discrete", [False, True])
def test_ks_statistic_matches_direct_ecdf(discrete: bool) -> None:
    rng = np.random.default_rng(5)
    for n, m, shift in ((50, 70, 0.0), (300, 200, 0.3), (17, 400, 1.0)):
        a, b = rng.normal(size=n), rng.normal(size=m) + shift
        if discrete:
            a, b = np.round(a * 2), np.round(b * 2)  # many ties
        d, p = D.ks_2samp(a, b)
        assert d == pytest.approx(brute_force_ks(a, b), abs=1e-12)
        assert p == pytest.approx(D.kolmogorov_sf(math.sqrt(n * m / (n + m)) * d))
    # Nulls and NaN are ignored.
    assert D.ks_2samp(pl.Series([1.0, None, 2.0, float("nan")]), [1.0, 2.0]) == (0.0, 1.0)


def test_kolmogorov_and_chi2_tail_known_values() -> None:
    # Classical critical values of the Kolmogorov distribution.
    assert D.kolmogorov_sf(1.2238) == pytest.approx(0.10, abs=2e-4)
    assert D.kolmogorov_sf(1.3581) == pytest.approx(0.05, abs=2e-4)
    assert D.kolmogorov_sf(1.6276) == pytest.approx(0.01, abs=2e-4)
    # Both series agree where they meet.
    assert D.kolmogorov_sf(1 - 1e-12) == pytest.approx(D.kolmogorov_sf(1.0), abs=1e-9)
    for x in (0.01, 0.5, 1.0, 2.9, 3.0, 7.5, 20.0, 80.0):
        assert D.chi2_sf(x, 1) == pytest.approx(math.erfc(math.sqrt(x / 2)), rel=1e-9, abs=1e-300)
        assert D.chi2_sf(x, 2) == pytest.approx(math.exp(-x / 2), rel=1e-9)
        assert D.chi2_sf(x, 4) == pytest.approx(math.exp(-x / 2) * (1 + x / 2), rel=1e-9)
    assert D.chi2_sf(3.841458820694124, 1) == pytest.approx(0.05, rel=1e-9)


def test_chi2_homogeneity_by_hand() -> None:
    ref, cur = [10, 20, 30], [15, 15, 40]
    total = [25, 35, 70]
    stat = 0.0
    for row, n in ((ref, 60), (cur, 70)):
        for o, t in zip(row, total, strict=True):
            e = n * t / 130
            stat += (o - e) ** 2 / e
    got, p = D.chi2_homogeneity(ref, cur)
    assert got == pytest.approx(stat, rel=1e-12)
    assert p == pytest.approx(math.exp(-stat / 2), rel=1e-9)  # 2 degrees of freedom
    assert D.chi2_homogeneity([5, 0, 5], [3, 0, 3]) == pytest.approx((0.0, 1.0))  # empty category ignored


def test_psi_values() -> None:
    rng = np.random.default_rng(11)
    x = rng.normal(size=5000)
    assert D.psi(x, x) == pytest.approx(0.0, abs=1e-12)
    assert D.psi(x, rng.normal(size=5000)) < 0.02
    assert D.psi(x, rng.normal(size=5000) + 1.0) > 0.25
    # Empty bin: its proportion is floored at PSI_EPSILON.
    eps = D.PSI_EPSILON
    expected = (0.5 - 0.5) * 0 + (0.5 - eps) * math.log(0.5 / eps) + (eps - 0.5) * math.log(eps / 0.5)
    assert D.psi_from_counts([50, 50, 0], [50, 0, 50]) == pytest.approx(expected)


def test_hellinger_bounds() -> None:
    rng = np.random.default_rng(12)
    x = rng.normal(size=3000)
    assert D.hellinger_samples(x, x) == pytest.approx(0.0, abs=1e-12)
    assert D.hellinger_samples(x, x[:1000] + 100) == pytest.approx(1.0)
    assert D.hellinger_samples(rng.random(900), rng.random(500) - 2) == pytest.approx(1.0)
    assert D.hellinger([1, 2, 0], [0, 0, 4]) == pytest.approx(1.0)
    assert D.hellinger([1, 1], [1, 0]) == pytest.approx(math.sqrt(1 - math.sqrt(0.5)))
    for shift in (0.1, 0.5, 2.0):
        assert 0.0 < D.hellinger_samples(x, rng.normal(size=2000) + shift) < 1.0
    cats = pl.Series("c", ["a", "b"] * 100)
    assert D.column_drift(cats, pl.Series("c", ["x", "y"] * 50)).hellinger == pytest.approx(1.0)
    assert D.column_drift(cats, cats).hellinger == pytest.approx(0.0, abs=1e-12)


def test_no_false_alarms_on_same_distribution() -> None:
    drifted = 0
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        ref = pl.DataFrame({"x": rng.lognormal(size=2000), "c": rng.choice(list("abcde"), 2000)})
        cur = pl.DataFrame({"x": rng.lognormal(size=1500), "c": rng.choice(list("abcde"), 1500)})
        report = D.drift_report(ref, cur, ["x", "c"])
        drifted += sum(c.category == "drift" for c in report.columns)
    assert drifted <= 1


def test_detects_mean_shift_and_category_shift() -> None:
    rng = np.random.default_rng(21)
    ref = pl.Series("x", rng.normal(size=4000))
    half = D.column_drift(ref, pl.Series("x", rng.normal(size=4000) + 0.5))
    assert half.category in ("warn", "drift") and half.ks_pvalue < 1e-10
    assert D.column_drift(ref, pl.Series("x", rng.normal(size=4000) + 1.0)).category == "drift"
    cats = D.column_drift(
        pl.Series("c", rng.choice(list("abc"), 4000, p=[0.6, 0.3, 0.1])),
        pl.Series("c", rng.choice(list("abc"), 4000, p=[0.2, 0.3, 0.5])),
    )
    assert cats.kind == "categorical" and cats.category == "drift" and cats.chi2_pvalue < 1e-10


def test_tiny_shift_on_huge_sample_is_not_drift() -> None:
    rng = np.random.default_rng(22)
    res = D.column_drift(
        pl.Series("x", rng.normal(size=200_000)), pl.Series("x", rng.normal(size=200_000) + 0.03)
    )
    assert res.ks_pvalue < D.DEFAULT_THRESHOLDS.alpha  # significant …
    assert res.category == "no_drift"  # … but far too small to matter


def test_missing_rate_change_is_drift() -> None:
    rng = np.random.default_rng(23)
    ref = pl.Series("x", rng.normal(size=3000))
    cur = pl.Series("x", rng.normal(size=3000)).scatter(np.arange(0, 3000, 2), None)
    res = D.column_drift(ref, cur)
    assert res.cur_missing_rate == pytest.approx(0.5) and res.category == "drift"


def test_report_markdown_and_frame() -> None:
    ref = mixed_frame(2000, seed=2)
    cur = mixed_frame(2000, seed=3).with_columns(pl.col("amount") * 3)
    report = D.drift_report(ref, cur, ["amount", "count_1h", "country", "success", "event_ts"])
    assert report.drifted == ["amount"]
    assert report.share_drifted == pytest.approx(1 / 5)
    md = report.to_markdown()
    lines = md.splitlines()
    assert lines[0].startswith("**1 of 5 columns drifted**")
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 2 + 5 and all(line.count("|") == 11 for line in table)
    assert table[2].startswith("| `amount` |") and "**drift**" in table[2]
    frame = report.to_frame()
    assert frame.height == 5 and frame["category"].to_list().count("drift") == 1
    assert frame.filter(pl.col("column") == "country")["kind"].item() == "categorical"
    assert D.drift_report(ref, cur, []).share_drifted == 0.0


def test_prediction_and_label_rate_drift() -> None:
    rng = np.random.default_rng(25)
    same = D.prediction_drift(rng.beta(1, 20, 5000), rng.beta(1, 20, 5000))
    assert same.column == "score" and same.category == "no_drift"
    assert D.prediction_drift(rng.beta(1, 20, 5000), rng.beta(2, 5, 5000)).category == "drift"

    res = D.label_rate_drift(0.010, 100_000, 0.013, 50_000)
    pooled = (1000 + 650) / 150_000
    z = 0.003 / math.sqrt(pooled * (1 - pooled) * (1 / 100_000 + 1 / 50_000))
    assert res.z == pytest.approx(z)
    assert res.pvalue == pytest.approx(math.erfc(z / math.sqrt(2)))
    assert res.relative_change == pytest.approx(0.3) and res.category == "warn"
    assert D.label_rate_drift(0.01, 100_000, 0.02, 50_000).category == "drift"
    assert D.label_rate_drift(0.01, 1000, 0.02, 500).category == "no_drift"  # not significant
    with pytest.raises(ValueError):
        D.label_rate_drift(1.5, 10, 0.1, 10)


# -- skew ------------------------------------------------------------------------------------------


def feature_rows(n: int = 1000, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "event_id": [f"ev_{i:05d}" for i in range(n)],
            "amount_sum_1h": rng.lognormal(3, 1, n),
            "login_count_10m": rng.integers(1, 20, n),
            "country": rng.choice(["DE", "FR", "US"], n),
            "fail_ratio_1d": rng.random(n),
        }
    ).with_columns(  # a feature without history for some entities: null offline
        pl.when(pl.col("login_count_10m") < 3)
        .then(None)
        .otherwise(pl.col("fail_ratio_1d"))
        .alias("fail_ratio_1d")
    )


FEATURES = ["amount_sum_1h", "login_count_10m", "country", "fail_ratio_1d"]


def test_clean_pair_has_no_skew() -> None:
    recomputed = feature_rows()
    # The service packs float32 blobs (NaN for missing) and logs rows in its own order.
    served = recomputed.with_columns(
        pl.col("amount_sum_1h").cast(pl.Float32), pl.col("fail_ratio_1d").fill_null(float("nan"))
    ).sample(fraction=1.0, shuffle=True, seed=4)
    report = row_level_skew(served, recomputed, features=FEATURES)
    assert report.clean and report.share_rows_with_mismatch == 0.0
    assert report.rows_compared == 1000 and report.examples.height == 0
    assert report.mismatch_rates == dict.fromkeys(FEATURES, 0.0)
    assert report.worst_features() == []


def test_injected_unit_bug_is_caught() -> None:
    recomputed = feature_rows()
    served = recomputed.with_columns(pl.col("amount_sum_1h") * 100)  # cents vs dollars
    report = row_level_skew(served, recomputed, features=FEATURES)
    rates = report.mismatch_rates
    assert rates["amount_sum_1h"] == pytest.approx(1.0)
    assert all(rates[f] == 0.0 for f in FEATURES if f != "amount_sum_1h")
    assert report.share_rows_with_mismatch == pytest.approx(1.0)
    worst = report.worst_features()
    assert [w.feature for w in worst] == ["amount_sum_1h"] and worst[0].missing_mismatches == 0
    assert report.examples.height == 5 and set(report.examples["feature"]) == {"amount_sum_1h"}
    row = report.examples.row(0, named=True)
    assert float(row["served"]) == pytest.approx(100 * float(row["recomputed"]))
    assert "`amount_sum_1h` | 100.00%" in report.to_markdown()


def test_missing_values_and_unmatched_keys() -> None:
    recomputed = feature_rows(200)
    served = recomputed.with_columns(
        # served a value where offline has none (3 rows) and lost a value (2 rows)
        pl.when(pl.col("event_id").is_in(["ev_00000", "ev_00001", "ev_00002"]))
        .then(pl.lit(0.5))
        .otherwise(pl.col("fail_ratio_1d"))
        .alias("fail_ratio_1d"),
        pl.when(pl.col("event_id").is_in(["ev_00010", "ev_00011"]))
        .then(None)
        .otherwise(pl.col("country"))
        .alias("country"),
    )
    recomputed = recomputed.with_columns(
        pl.when(pl.col("event_id").is_in(["ev_00000", "ev_00001", "ev_00002"]))
        .then(None)
        .otherwise(pl.col("fail_ratio_1d"))
        .alias("fail_ratio_1d")
    )
    report = row_level_skew(served[:190], recomputed[5:], features=FEATURES)
    assert report.served_without_recomputed == 5 and report.recomputed_without_served == 10
    assert report.rows_compared == 185
    by = {f.feature: f for f in report.features}
    assert by["country"].mismatches == 2 and by["country"].missing_mismatches == 2
    assert by["fail_ratio_1d"].mismatches == 0  # the three rows are outside the compared keys
    full = row_level_skew(served, recomputed, features=FEATURES)
    assert {f.feature: f.mismatches for f in full.features}["fail_ratio_1d"] == 3
    assert full.rows_with_mismatch == 5
    with pytest.raises(ValueError, match="duplicate"):
        row_level_skew(pl.concat([served, served[:1]]), recomputed, features=FEATURES)
    with pytest.raises(KeyError):
        row_level_skew(served.drop("country"), recomputed, features=FEATURES)


def test_labels_within_counts_only_labels_that_arrived_within_the_maturity() -> None:
    t0 = datetime(2026, 5, 1, tzinfo=UTC)
    frame = pl.DataFrame(
        {
            "event_id": ["a", "b", "c", "d"],
            "event_ts": [t0, t0, t0 + timedelta(hours=1), t0],
            "weight": [1.0, 1.0, 2.0, 1.0],
            "is_fraud": [True, True, True, False],  # as a cutoff-based rule saw them
        }
    )
    labels = pl.DataFrame(
        {
            "event_id": ["a", "b", "b", "c"],
            # a: 1 ms inside 3 days; b: first of two labels 1 day after; c: exactly 3 days (too late)
            "label_ts": [
                t0 + timedelta(days=3) - timedelta(milliseconds=1),
                t0 + timedelta(days=5),
                t0 + timedelta(days=1),
                t0 + timedelta(hours=1, days=3),
            ],
        }
    )
    out = labels_within(frame, labels, timedelta(days=3))
    assert out["event_id"].to_list() == ["a", "b", "c", "d"]
    assert out["is_fraud"].to_list() == [True, True, False, False]
    assert weighted_rate(out) == 2 / 5
