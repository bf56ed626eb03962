"""Champion against the shadowed challenger on the same live traffic, as labels mature.

Pure (no Dagster). Input: the lake copy of the prediction log (rows with ``shadow_version``: both
models scored the event, the champion decided) and the fraud labels known at ``as_of``. For one
shadow version:

* **shadow-scored events**: its rows, one per ``event_id`` (the first scoring); ``shadow_start`` /
  ``shadow_end`` the first / last ``event_ts``; ``shadow_days`` their distance in days (what the
  promotion gate's ``min_shadow_days`` reads);
* **matured**: those with ``event_ts + maturity <= as_of`` (their labels had time to arrive);
  positive iff a label with ``label_ts < as_of`` names the event (the training sets' label rule);
  ``labelled`` = their count (the gate's ``min_shadow_labelled``), ``positives`` among them;
* per model: average precision and AUC on the matured events (unweighted: live traffic is not
  sampled), and **at the champion's operating point** — the share of matured events the champion
  flagged (decision ``review`` or ``block``: its thresholds as served, overrides included) — the
  recall and precision of the champion's flags and of the challenger's top events at the same
  flag share (the same review volume).
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import polars as pl

from risk_assets.models import metrics as mx

DAY = timedelta(days=1)


def shadow_rows(log: pl.DataFrame, version: str) -> pl.DataFrame:
    """The prediction-log rows ``version`` scored in shadow, one per event (its first scoring)."""
    if log.height == 0 or "shadow_version" not in log.columns:
        return log.clear()
    return (
        log.filter(pl.col("shadow_version") == version)
        .sort("scored_ts")
        .unique("event_id", keep="first", maintain_order=True)
        .sort("event_ts")
    )


def _at_flag_share(y: np.ndarray, score: np.ndarray, share: float) -> tuple[float, float]:
    """(recall, precision) of the ``share`` highest scores (ties broken by order)."""
    n = round(share * y.size)
    positives = int(y.sum())
    if n == 0 or positives == 0:
        return (0.0 if positives else math.nan), math.nan
    top = np.argsort(-score, kind="stable")[:n]
    hits = int(y[top].sum())
    return hits / positives, hits / n


def compare_shadow(
    log: pl.DataFrame, labels: pl.DataFrame, version: str, *, as_of: datetime, maturity: timedelta
) -> dict[str, Any]:
    """The comparison of the module docstring for shadow ``version``. ``log``: prediction-log rows
    (``event_id``, ``event_ts``, ``scored_ts``, ``model_version``, ``score``, ``decision``,
    ``shadow_version``, ``shadow_score``); ``labels``: ``event_id``, ``label_ts``."""
    rows = shadow_rows(log, version)
    out: dict[str, Any] = {
        "shadow_version": version,
        "as_of": as_of.isoformat(),
        "maturity_days": maturity / DAY,
        "shadow_scored": rows.height,
        "shadow_start": None,
        "shadow_end": None,
        "shadow_days": 0.0,
        "labelled": 0,
        "positives": 0,
        "champion_versions": {},
        "champion": {},
        "challenger": {},
    }
    if rows.height == 0:
        return out
    start, end = rows["event_ts"].min(), rows["event_ts"].max()
    out["shadow_start"], out["shadow_end"] = start.isoformat(), end.isoformat()  # type: ignore[union-attr]
    out["shadow_days"] = (end - start) / DAY  # type: ignore[operator]
    counts = rows.group_by("model_version").len().sort("model_version")
    out["champion_versions"] = dict(zip(counts["model_version"], counts["len"], strict=True))
    matured = rows.filter(pl.col("event_ts") + maturity <= as_of)
    known = labels.filter(pl.col("label_ts") < as_of).select("event_id").unique()
    matured = matured.join(
        known.with_columns(pl.lit(True).alias("is_fraud")), on="event_id", how="left", maintain_order="left"
    ).with_columns(pl.col("is_fraud").fill_null(False))
    y = matured["is_fraud"].to_numpy().astype(bool)
    out["labelled"], out["positives"] = int(y.size), int(y.sum())
    if y.size == 0:
        return out
    champ = matured["score"].to_numpy().astype(np.float64)
    chall = matured["shadow_score"].to_numpy().astype(np.float64)
    flagged = (matured["decision"] != "allow").to_numpy()
    share = float(flagged.mean())
    positives = int(y.sum())
    champ_hits = int((flagged & y).sum())
    chall_recall, chall_precision = _at_flag_share(y, chall, share)
    out["flag_share"] = share
    out["champion"] = {
        "average_precision": mx.average_precision(y, champ),
        "auc": mx.roc_auc(y, champ),
        "recall_at_operating_point": champ_hits / positives if positives else math.nan,
        "precision_at_operating_point": champ_hits / int(flagged.sum()) if flagged.any() else math.nan,
    }
    out["challenger"] = {
        "average_precision": mx.average_precision(y, chall),
        "auc": mx.roc_auc(y, chall),
        "recall_at_operating_point": chall_recall,
        "precision_at_operating_point": chall_precision,
    }
    return out
