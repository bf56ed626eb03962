"""Measured adaptation: per drift scenario, how long until each detector fires and until the
automatic loop brings the model's average precision back (issue 14, item 5). Run by hand:

    .venv/bin/python bench/bench_adaptation.py                       # small scale, a few minutes
    .venv/bin/python bench/bench_adaptation.py --events-per-day 100000 --users 10000 --days 24

For each scenario a fresh lake gets the same simulated world (same seed: before the scenario's window
every scenario's traffic is byte-identical) with one drift scenario from ``--drift-day`` to the end,
and the loop runs day by day in *event time* with the project's own code, on an ephemeral Dagster
instance:

1. batch features for every day (the ``batch_features`` asset, one ranged run);
2. a champion: ``training_set`` → ``challenger_model`` → ``model_promotion`` for the day before the
   drift (so it serves from the drift's start, ``effective_from`` = the partition's end);
3. every day d from the drift on: ``drift_report`` and ``realized_performance`` for d (available at
   d + 1 00:00), then the retraining sensor's own decision (``sensors.retraining.evaluate_triggers`` on
   the two materializations' metadata, cooldown 24 h of event time); a request runs the retraining job
   (``training_set`` → ``challenger_model`` → ``model_promotion`` for d; the gate decides).

Detectors (the firing rules of the sensor and of the drift checks): **feature** share drifted ≥
``RETRAIN_SHARE_DRIFTED``; **prediction** PSI ≥ ``RETRAIN_PREDICTION_PSI``; **label rate** category
``drift`` (the ``label_rate_stable`` check fails ERROR; not a retraining trigger); **realized**
recall@1%FPR drop ≥ ``RETRAIN_RECALL_DROP`` (overall or a scenario with ≥ ``MIN_POSITIVES``).
Time to detect = end of the first day whose report fires − drift start (days of event time).

AP: each day's decision events scored by the model that served them (the registry's champion
timeline in event time), against the simulator's ground truth (every fraud, labelled or not). The
pre-drift value pools the days between the champion's training window and the drift. Recovery = the
end of the first day, after the AP fell below 90 % of it, whose AP is ≥ 90 % again (with the version
serving then); "no drop" when no day fell below 90 %. False alarms: detector firings and retraining
requests on the legit market event (not fraud) and on the control run without drift.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import polars as pl

from risk_assets.definitions import all_assets
from risk_assets.features.groups import FEATURE_GROUPS
from risk_assets.lake import Lake
from risk_assets.models import metrics as mx
from risk_assets.models import registry
from risk_assets.models.scoring import load_scorer, serving_versions
from risk_assets.models.training_set import TrainingSetSpec
from risk_assets.monitoring.decisions import decision_frame
from risk_assets.names import (
    CHALLENGER_MODEL,
    DRIFT_REPORT,
    MODEL_PROMOTION,
    PREDICTION_PSI,
    REALIZED_PERFORMANCE,
    SHARE_DRIFTED,
    TRAINING_SET,
    feature_asset_key,
)
from risk_assets.partitions import TimePartitions
from risk_assets.resources import LakeResource, RawEventSource
from risk_assets.sensors.retraining import (
    COOLDOWN,
    RETRAIN_PREDICTION_PSI,
    RETRAIN_SHARE_DRIFTED,
    evaluate_triggers,
)
from risk_assets.simulator import SimConfig
from risk_assets.simulator.drift import DriftScenario
from risk_assets.simulator.writers import write_history

DAY = timedelta(days=1)
START = datetime(2026, 10, 1, tzinfo=UTC)
DETECTORS = ("feature", "prediction", "label_rate", "realized")
RECOVERY = 0.9
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}

# (name, drift kind or None, target): every drift.py preset, the drift_day tactics change, a control.
SCENARIOS: tuple[tuple[str, str | None, str | None], ...] = (
    ("attack_surge/card_testing", "attack_surge", "card_testing"),
    ("attack_surge/ato", "attack_surge", "ato"),
    ("attack_surge/p2p_scam", "attack_surge", "p2p_scam"),
    ("new_attack_network/card_testing", "new_attack_network", "card_testing"),
    ("new_attack_network/ato", "new_attack_network", "ato"),
    ("attack_amount_shift/card_testing", "attack_amount_shift", "card_testing"),
    ("legit_market_event", "legit_market_event", None),
    ("tactics (drift_day)", "tactics", None),
    ("control (no drift)", None, None),
)


@dataclass
class Outcome:
    name: str
    fired: dict[str, float | None] = field(default_factory=lambda: dict.fromkeys(DETECTORS))
    firings: int = 0
    requests: int = 0
    promotions: int = 0
    pre_ap: float = math.nan
    min_ratio: float = math.nan
    recovery_days: float | None = None
    recovered_by: str = ""
    note: str = ""
    seconds: float = 0.0
    day_ap: list[tuple[str, float, int, str]] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)
    stale_ap: list[float] = field(default_factory=list)
    """AP of the first champion on the same days (what the loop changed)."""


def _meta(result: dg.ExecuteInProcessResult, node: str) -> dict[str, Any]:
    (mat,) = result.asset_materializations_for_node(node)
    return {k: getattr(v, "value", v) for k, v in mat.metadata.items()}


def _ground_truth(lake: Lake) -> pl.DataFrame:
    frames = [pl.read_parquet(io.BytesIO(lake.read_bytes(p))) for p in lake.list("sim_ground_truth")]
    return pl.concat(frames).select("event_id", pl.col("is_fraud").alias("truth"))


def sim_config(args: argparse.Namespace, kind: str | None, target: str | None) -> SimConfig:
    base = SimConfig(
        seed=args.seed,
        start=START,
        hours=24 * args.days,
        events_per_day=args.events_per_day,
        users=args.users,
        # fraud rates 3–5× the defaults (as the e2e test) so a day holds enough cases to measure
        ato_cases_per_m=660.0,
        p2p_scam_victims_per_m=1_500.0,
        card_testing_cases_per_m=200.0,
    )
    if kind is None:
        return base
    if kind == "tactics":
        return base.with_(drift_day=args.drift_day)
    drift = DriftScenario(
        kind=kind,  # type: ignore[arg-type]
        start=START + args.drift_day * DAY,
        end=START + args.days * DAY,
        target=target,
    )
    return base.with_(drift_scenarios=(drift,))


RETRAIN = [TRAINING_SET, CHALLENGER_MODEL, MODEL_PROMOTION]
# realized_performance lists only the days of its `recent/*` pool (what the sensor reads): the
# per-day table of older days (lookback 10) changes no trigger and costs the most.
MONITOR_CONFIG = {
    "ops": {REALIZED_PERFORMANCE: {"config": {"lookback_days": 3, "recent_days": 3}}},
    **QUIET,
}
# What write_history writes: removed from a copied baseline lake before a scenario's history goes in
# (an archive hour the scenario has no records for must not keep the baseline's).
SIMULATED = ("raw_events", "raw_labels", "raw_events_dead_letters", "sim_ground_truth", "sim_drift")


def _run_config(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "ops": {
            "training_set": {
                "config": {"window_days": args.window_days, "maturity_days": args.maturity_days}
            },
            "challenger_model": {
                "config": {"n_estimators": 200, "learning_rate": 0.1, "early_stopping_rounds": 30}
            },
        },
        **QUIET,
    }


class Runner:
    """``dg.materialize`` of the code location's own assets on one lake and one ephemeral instance."""

    def __init__(self, lake: Lake, assets: dict[str, Any], instance: dg.DagsterInstance) -> None:
        self.resources = {"lake": LakeResource(url=lake.url), "raw_event_source": RawEventSource()}
        self.assets, self.instance = assets, instance

    def __call__(self, keys: list[str], partition: str | None = None, **kw: Any) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            [self.assets[k] for k in keys],
            partition_key=partition,
            resources=self.resources,
            instance=self.instance,
            raise_on_error=True,
            **kw,
        )

    def features(self, first: int, last: int) -> None:
        """Batch features of days ``first`` .. ``last`` (indices) as one ranged run."""
        self(
            [feature_asset_key(FEATURE_GROUPS[0].name).to_user_string()],
            tags={
                "dagster/asset_partition_range_start": _key(first),
                "dagster/asset_partition_range_end": _key(last),
            },
            run_config=QUIET,
        )


def _key(i: int) -> str:
    return (START + i * DAY).strftime("%Y-%m-%d")


def baseline(args: argparse.Namespace, workdir: Path, assets: dict[str, Any]) -> tuple[Path, float]:
    """The world without drift, its features and the champion promoted for the day before the drift.
    Every scenario's traffic equals it before the drift (same seed), so each scenario starts from a
    copy and recomputes only the days from the drift on."""
    t0 = time.perf_counter()
    lake_dir = workdir / "baseline"
    lake = Lake(str(lake_dir))
    write_history(sim_config(args, None, None), lake)
    with dg.DagsterInstance.ephemeral() as instance:
        run = Runner(lake, assets, instance)
        run.features(0, args.days - 1)
        run(RETRAIN, _key(args.drift_day - 1), run_config=_run_config(args))
    if registry.champion(lake) is None:
        raise SystemExit("the baseline champion was not promoted")
    return lake_dir, time.perf_counter() - t0


def run_scenario(
    name: str, cfg: SimConfig, args: argparse.Namespace, base: Path, workdir: Path, assets: dict[str, Any]
) -> Outcome:
    t0 = time.perf_counter()
    out = Outcome(name)
    lake_dir = workdir / "lake"
    shutil.rmtree(lake_dir, ignore_errors=True)
    shutil.copytree(base, lake_dir)
    for dataset in SIMULATED:
        shutil.rmtree(lake_dir / dataset, ignore_errors=True)
    lake = Lake(str(lake_dir))
    write_history(cfg, lake)
    out.phases["simulate"] = time.perf_counter() - t0
    run_config = _run_config(args)
    champion = registry.champion(lake)
    assert champion is not None
    drift_start = START + args.drift_day * DAY
    days = [_key(i) for i in range(args.days)]
    with dg.DagsterInstance.ephemeral() as instance:
        run = Runner(lake, assets, instance)
        run.features(args.drift_day, args.days - 1)
        out.phases["features"] = time.perf_counter() - t0 - out.phases["simulate"]
        retrain = RETRAIN
        last_request: datetime | None = None
        for i in range(args.drift_day, args.days):
            day = days[i]
            seen = START + (i + 1) * DAY  # the day's reports exist at its end
            monitored = run([DRIFT_REPORT, REALIZED_PERFORMANCE], day, run_config=MONITOR_CONFIG)
            drift, realized = _meta(monitored, DRIFT_REPORT), _meta(monitored, REALIZED_PERFORMANCE)
            trigger = evaluate_triggers(day, drift, day, realized)
            fires = {
                "feature": float(drift.get(SHARE_DRIFTED, math.nan)) >= RETRAIN_SHARE_DRIFTED,
                "prediction": float(drift.get(PREDICTION_PSI, math.nan)) >= RETRAIN_PREDICTION_PSI,
                "label_rate": drift.get("label_rate_category") == "drift",
                "realized": trigger is not None and "realized_performance" in trigger.codes,
            }
            for det, hit in fires.items():
                out.firings += int(hit)
                if hit and out.fired[det] is None:
                    out.fired[det] = (seen - drift_start) / DAY
            if trigger is not None and (last_request is None or seen - last_request >= COOLDOWN):
                last_request = seen
                out.requests += 1
                promo = run(retrain, day, run_config=run_config)
                out.promotions += int(bool(_meta(promo, MODEL_PROMOTION)["promoted"]))

        out.phases["loop"] = time.perf_counter() - t0 - sum(out.phases.values())
        # AP per day against ground truth, each event scored by the model that served it.
        window_end = datetime.fromisoformat(
            load_scorer(lake, champion.version).manifest["training_set"]["window_end"]
        )
        end = START + args.days * DAY
        spec = TrainingSetSpec(as_of=end, window=end - window_end, maturity=timedelta(0))
        frame = decision_frame(lake, RawEventSource(), spec, FEATURE_GROUPS).join(
            _ground_truth(lake), on="event_id", how="left"
        )
        frame = frame.with_columns(
            serving_versions(lake, frame["event_ts"]),
            pl.col("event_ts").dt.truncate("1d").alias("_day"),
            pl.col("truth").fill_null(False),
        ).filter(pl.col("model_version").is_not_null() | (pl.col("event_ts") < drift_start))
        frame = frame.with_columns(pl.col("model_version").fill_null(champion.version))
        scores = np.zeros(frame.height)
        versions = frame["model_version"].to_numpy()
        for v in set(versions.tolist()):
            rows = versions == v
            scores[rows] = load_scorer(lake, v).score(frame.filter(pl.Series(rows)))
        y = frame["truth"].to_numpy()
        stale = load_scorer(lake, champion.version).score(frame)  # had nothing been promoted
        pre = (frame["event_ts"] < drift_start).to_numpy()
        out.pre_ap = mx.average_precision(y[pre], scores[pre]) if y[pre].any() else math.nan
        promoted_after = {v for _, v in registry.champion_timeline(lake) if v != champion.version}
        for i in range(args.drift_day, args.days):
            d = START + i * DAY
            m = (frame["_day"] == d).to_numpy()
            ap = mx.average_precision(y[m], scores[m]) if y[m].any() else math.nan
            served = frame.filter(pl.Series(m))["model_version"].mode().first() if m.any() else ""
            out.day_ap.append((d.strftime("%m-%d"), ap, int(y[m].sum()), served or ""))
            out.stale_ap.append(mx.average_precision(y[m], stale[m]) if y[m].any() else math.nan)
        recovery(out, promoted_after)
    out.seconds = time.perf_counter() - t0
    return out


def recovery(out: Outcome, promoted: set[str]) -> None:
    """Fill ``min_ratio``, ``recovery_days``/``recovered_by`` and ``note`` from ``out.day_ap`` (one
    entry per day from the drift's start). Recovered = the end of the first day from which every
    day's AP stays >= RECOVERY x the pre-drift AP through the end of the run, after some day fell
    below it; by a retrained model when a version promoted after the drift served that day."""
    ratios = [ap / out.pre_ap if out.pre_ap else math.nan for _, ap, _, _ in out.day_ap]
    out.min_ratio = float(np.nanmin(ratios)) if ratios else math.nan
    low = [i for i, r in enumerate(ratios) if not r >= RECOVERY]
    if not low:
        out.note = "no drop"
    elif low[-1] == len(ratios) - 1:
        out.note = f"not recovered (last day {ratios[-1]:.2f})"
    else:
        first = low[-1] + 1
        out.recovery_days = float(first + 1)
        out.recovered_by = "retrained" if out.day_ap[first][3] in promoted else "stale champion"


def _days(v: float | None) -> str:
    return "-" if v is None else f"{v:g} d"


def table(outcomes: list[Outcome], args: argparse.Namespace) -> str:
    head = (
        "| scenario | feature | prediction | label rate | realized | AP pre-drift | min AP / pre | "
        "90 % recovery | retrain requests / promotions | firings | s |"
    )
    lines = [head, "|" + "---|" * 11]
    for o in outcomes:
        rec = o.note if o.recovery_days is None else f"{o.recovery_days:g} d ({o.recovered_by})"
        lines.append(
            f"| {o.name} | {_days(o.fired['feature'])} | {_days(o.fired['prediction'])} | "
            f"{_days(o.fired['label_rate'])} | {_days(o.fired['realized'])} | {o.pre_ap:.3f} | "
            f"{o.min_ratio:.2f} | {rec} | {o.requests} / {o.promotions} | {o.firings} | {o.seconds:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--days", type=int, default=18, help="simulated days")
    p.add_argument("--drift-day", type=int, default=10, help="first day of the drift (0-based)")
    p.add_argument("--events-per-day", type=int, default=10_000)
    p.add_argument("--users", type=int, default=1_000)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--window-days", type=int, default=7, help="the retraining job's training window")
    p.add_argument("--maturity-days", type=int, default=2, help="the retraining job's label maturity")
    p.add_argument("--only", action="append", default=[], help="scenario name prefix (repeatable)")
    p.add_argument("--keep", action="store_true", help="keep the lakes (printed)")
    args = p.parse_args(argv)
    if args.drift_day < args.window_days + args.maturity_days + 1 or args.drift_day >= args.days:
        p.error("need window + maturity + 1 <= drift-day < days")
    os.environ.setdefault("POLARS_MAX_THREADS", "2")
    dg_assets = {
        k.to_user_string(): a
        for a in all_assets(TimePartitions(START.date()))
        if isinstance(a, dg.AssetsDefinition)
        for k in a.keys
    }
    chosen = [s for s in SCENARIOS if not args.only or any(s[0].startswith(o) for o in args.only)]
    print(
        f"bench_adaptation: {len(chosen)} scenarios, {args.days} days × {args.events_per_day:,} events/day, "
        f"{args.users:,} users, drift from day {args.drift_day}, retraining window {args.window_days} d / "
        f"maturity {args.maturity_days} d; load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}",
        flush=True,
    )
    workdir = Path(tempfile.mkdtemp(prefix="bench_adaptation_"))
    outcomes = []
    try:
        base, seconds = baseline(args, workdir, dg_assets)
        print(f"  baseline (no drift, features of every day, champion): {seconds:.0f}s", flush=True)
        for name, kind, target in chosen:
            sub = workdir / name.split(" ")[0].replace("/", "_")
            sub.mkdir(parents=True, exist_ok=True)
            o = run_scenario(name, sim_config(args, kind, target), args, base, sub, dg_assets)
            outcomes.append(o)
            phases = ", ".join(f"{k} {v:.0f}s" for k, v in o.phases.items())
            daily = ", ".join(
                f"{d} {ap:.2f} ({n}, {v[-6:]}; stale {st:.2f})"
                for (d, ap, n, v), st in zip(o.day_ap, o.stale_ap, strict=True)
            )
            print(
                f"  {name}: {o.seconds:.0f}s ({phases}); fired {o.fired}; AP pre {o.pre_ap:.3f}; {daily}",
                flush=True,
            )
    finally:
        if args.keep:
            print(f"lakes kept under {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(table(outcomes, args))
    print(f"\nload average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
