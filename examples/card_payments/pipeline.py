"""One command for the card-payments domain, end to end on the project's own pure functions and
real services::

    .venv/bin/python -m examples.card_payments.pipeline [--small] [--state-dir DIR]

1. **generate** payments and labels (``generator.py``, seeded);
2. **archive** them as the stream path does: JSON payloads validated by the structs derived from
   the declared sources, hourly Parquet under ``card_payments/`` and ``card_fraud/`` (dead letters
   beside them) — ``ingest.archive.build_archive`` / ``write_archive``;
3. **backfill** the feature groups from the archive (``read_source`` → ``compute_feature_groups``
   → ``with_created_ts`` → ``write_days``): the functions the ``batch_features`` asset calls;
4. **training set** for ``CARD_MODEL`` (``build_training_set(model=…)``), **train** (``train``),
   **register** and **promote** through the gate (``promote_if_better(model=…)``);
5. start Redis and the broker (``risk-stack``'s launcher, under the state dir) unless endpoints are
   given, **sync** the offline store to Redis (``online_sync.sync``);
6. start a real **risk-serve** with ``RISK_MODEL_SPEC=examples.card_payments.definitions:CARD_MODEL``
   and **score** a payment at the riskiest terminal and an ordinary one.

Prints a JSON report (rows, metrics, the promotion decision, the scores) and stops what it
started. ``run()`` is the same as a function (the CI test calls it with ``small=True``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import polars as pl

from examples.card_payments.definitions import CARD_FRAUD, CARD_MODEL, CARD_TX
from examples.card_payments.generator import CardConfig, CardData, generate
from risk_assets.features.batch import compute_feature_groups
from risk_assets.features.offline_store import days_of, read_offline, with_created_ts, write_days
from risk_assets.features.online_store import OnlineStore
from risk_assets.features.online_sync import sync
from risk_assets.features.spec import FeatureGroup
from risk_assets.ingest.archive import archive_spec, build_archive, write_archive
from risk_assets.ingest.kafka_reader import MessageBatch
from risk_assets.ingest.partitioning import archive_hours
from risk_assets.ingest.raw_reader import read_source
from risk_assets.lake import Lake
from risk_assets.models import registry
from risk_assets.models.model_spec import ModelSpec
from risk_assets.models.promotion import promote_if_better, recent_holdout
from risk_assets.models.training import TrainedModel, TrainingParams, manifest_for, train
from risk_assets.models.training_set import TrainingSetSpec, build_training_set
from risk_assets.serving.process import ServeProcess
from risk_assets.sources import EventSource, LabelSource
from risk_assets.stack import launcher

ROOT = Path(__file__).resolve().parents[2]
SPEC_REF = "examples.card_payments.definitions:CARD_MODEL"
NAMESPACE = "cards"
TOKEN = "card-example-token"

SMALL = CardConfig(days=45, customers=600, terminals=150)
FULL = CardConfig()
SMALL_PARAMS = TrainingParams(
    n_estimators=60, max_depth=4, learning_rate=0.2, early_stopping_rounds=15, top_k=20
)


@dataclass(frozen=True)
class Plan:
    """Which windows the run uses (defaults fit the generator's label delays)."""

    cfg: CardConfig = FULL
    maturity: timedelta = timedelta(days=7)
    """Labels arrive within 7 days: the training window ends a week before the cutoff."""
    warmup: timedelta = timedelta(days=14)
    """History before the training window, so its first events have feature history."""
    params: TrainingParams = field(
        default_factory=lambda: TrainingParams(
            n_estimators=200, max_depth=4, learning_rate=0.1, early_stopping_rounds=30, top_k=20
        )
    )

    @property
    def as_of(self) -> datetime:
        return self.cfg.end

    @property
    def window(self) -> timedelta:
        return self.cfg.end - self.maturity - (self.cfg.start + self.warmup)


# ---- 2. archive ---------------------------------------------------------------------------------


def _payloads(frame: pl.DataFrame, source: EventSource | LabelSource) -> tuple[list[bytes], np.ndarray]:
    """JSON payloads (times as epoch ms, the ingestion time left out) and arrival times (ms)."""
    ingest = source.ingestion_timestamp
    assert ingest is not None
    cols = [c for c in source.column_names if c != ingest]
    rows = frame.select(
        pl.col(c).dt.epoch("ms") if isinstance(frame.schema[c], pl.Datetime) else pl.col(c) for c in cols
    )
    encode = msgspec.json.Encoder().encode
    values = [encode({k: v for k, v in r.items() if v is not None}) for r in rows.iter_rows(named=True)]
    return values, frame[ingest].dt.epoch("ms").to_numpy().astype(np.int64)


def archive(lake: Lake, data: CardData) -> dict[str, dict[str, int]]:
    """Archive payments and labels through the declared sources' validation; per source the
    records written and the dead letters."""
    out = {}
    for source, frame in ((CARD_TX, data.transactions), (CARD_FRAUD, data.labels)):
        spec = archive_spec(source)
        values, arrived = _payloads(frame, source)
        n = len(values)
        batch = MessageBatch(np.zeros(n, np.int32), np.arange(n, dtype=np.int64), arrived, values)
        first = datetime.fromtimestamp(int(arrived.min()) // 1000, UTC) if n else datetime.now(UTC)
        last = datetime.fromtimestamp(int(arrived.max()) // 1000, UTC) if n else first
        hours = archive_hours(first, last + timedelta(hours=1))
        result = build_archive(batch, spec, hours)
        write_archive(lake, spec, result)
        out[source.name] = {"records": result.record_count, "dead_letters": result.dead_letter_count}
    return out


# ---- 3. backfill ----------------------------------------------------------------------------------


def backfill(lake: Lake, groups: Sequence[FeatureGroup], start: datetime, end: datetime) -> dict[str, int]:
    """Compute ``groups`` for ``[start, end)`` from the archive and replace those days of the
    offline store (what the ``batch_features`` asset does for the exchange); rows per group."""
    history = max(g.max_window for g in groups)
    events = read_source(lake, CARD_TX, start - history, end)
    labels = read_source(lake, CARD_FRAUD, start - history, end)
    computed = compute_feature_groups(groups, events, start, end, labels)
    rows = {}
    for g in groups:
        frame = with_created_ts(computed[g.name], g, events)
        write_days(lake, g, frame, days_of(start, end))
        rows[g.name] = frame.height
    return rows


# ---- 4. training set, training, promotion -----------------------------------------------------------


def training_set(lake: Lake, model: ModelSpec, plan: Plan) -> tuple[pl.DataFrame, dict]:
    """The training set of ``model`` as of the plan's cutoff, from the archive and offline store."""
    spec = TrainingSetSpec(as_of=plan.as_of, window=plan.window, maturity=plan.maturity)
    events = read_source(lake, CARD_TX, spec.start, spec.end)
    labels = read_source(lake, CARD_FRAUD, spec.start, spec.as_of)
    offline = {g.name: read_offline(lake, g, spec.start - g.ttl, spec.end) for g in model.groups}
    return build_training_set(spec, events, labels, offline, model=model)


def train_and_register(
    lake: Lake, frame: pl.DataFrame, manifest: dict, model: ModelSpec, params: TrainingParams
) -> tuple[TrainedModel, str]:
    trained = train(frame, model=model, params=params)
    version = registry.register(lake, trained.model_bytes, manifest_for(trained, manifest, model))
    return trained, version


# ---- 6. serving --------------------------------------------------------------------------------------


def sample_payments(lake: Lake, data: CardData, redis_url: str) -> list[dict[str, Any]]:
    """Two payments to score after the simulation: at the terminal with the highest delayed fraud
    rate online (at night, 4× the customer's habit) and an ordinary one."""
    end_ms = int(data.transactions["tx_ts"].max().timestamp() * 1000) + 60_000  # type: ignore[union-attr]
    terminal_rows = read_offline(lake, CARD_MODEL.groups_by_name["card_terminal"]).collect()
    risky = terminal_rows.sort("event_ts").group_by("terminal_id").last().sort("risk_28d_d7").tail(1)
    last = data.transactions.sort("tx_ts").tail(1).row(0, named=True)
    night_ms = (end_ms // 86_400_000 + 1) * 86_400_000 + 2 * 3_600_000  # 02:00 UTC next day
    return [
        {
            "tx_id": "example-risky",
            "tx_ts": night_ms,
            "customer_id": last["customer_id"],
            "terminal_id": risky["terminal_id"][0],
            "amount": round(4 * float(last["amount"]), 2),
            "channel": "pos",
        },
        {
            "tx_id": "example-ordinary",
            "tx_ts": end_ms,
            "customer_id": last["customer_id"],
            "terminal_id": last["terminal_id"],
            "amount": float(last["amount"]),
            "channel": last["channel"],
        },
    ]


def serve_env(lake: Lake, redis_url: str, kafka: str) -> dict[str, str]:
    return {
        "RISK_SERVE_TOKEN": TOKEN,
        "RISK_LAKE_URL": lake.url,
        "REDIS_URL": redis_url,
        "RISK_REDIS_NAMESPACE": NAMESPACE,
        "KAFKA_BOOTSTRAP_SERVERS": kafka,
        "RISK_MODEL_SPEC": SPEC_REF,
        "RISK_SHADOW": "0",
    }


# ---- the command -----------------------------------------------------------------------------------


def run(
    state_dir: Path, *, small: bool = False, redis_url: str | None = None, kafka: str | None = None
) -> dict:
    """Everything above; returns the report. Starts (and stops) its own Redis and broker under
    ``state_dir/stack`` unless ``redis_url`` and ``kafka`` are given."""
    t0 = time.perf_counter()
    plan = Plan(cfg=SMALL, params=SMALL_PARAMS) if small else Plan()
    lake_dir = state_dir / "lake"
    shutil.rmtree(lake_dir, ignore_errors=True)
    lake = Lake(str(lake_dir))
    report: dict[str, Any] = {
        "config": {
            "days": plan.cfg.days,
            "customers": plan.cfg.customers,
            "terminals": plan.cfg.terminals,
            "seed": plan.cfg.seed,
        }
    }
    data = generate(plan.cfg)
    report["generated"] = {"transactions": data.transactions.height, "labels": data.labels.height}
    report["archive"] = archive(lake, data)
    report["offline_rows"] = backfill(lake, CARD_MODEL.groups, plan.cfg.start, plan.cfg.end)
    frame, ts_manifest = training_set(lake, CARD_MODEL, plan)
    report["training_set"] = {
        k: ts_manifest[k]
        for k in ("rows", "positives", "positives_by_scenario", "window_start", "window_end")
    }
    trained, version = train_and_register(lake, frame, ts_manifest, CARD_MODEL, plan.params)
    report["model"] = {
        "version": version,
        "features": len(trained.features),
        "best_iteration": trained.best_iteration,
        "test": {
            k: trained.metrics.get(k)
            for k in (
                "average_precision",
                "auc",
                "precision_at_top_k_per_day",
                "top_k",
                "entity_precision_at_top_k_per_day",
                "entity_top_k",
                "entity_column",
                "rows",
                "positives",
            )
        },
        "test_by_scenario": {s: m.get("average_precision") for s, m in trained.metrics_by_scenario.items()},
        "top_features": dict(list(trained.feature_importance.items())[:6]),
    }
    decision = promote_if_better(lake, version, recent_holdout(frame), model=CARD_MODEL)
    report["promotion"] = {"promoted": decision.promote, "reasons": decision.reasons}
    if not decision.promote:
        raise RuntimeError(f"the gate refused the card model: {decision.reasons}")

    stack_config = None
    if redis_url is None or kafka is None:
        stack_config = launcher.StackConfig(
            state_dir=state_dir / "stack",
            redis_port=launcher.free_port(),
            kafka_port=launcher.free_port(),
            with_s3=False,
        )
        endpoints = launcher.up(stack_config)
        redis_url, kafka = endpoints["REDIS_URL"], endpoints["KAFKA_BOOTSTRAP_SERVERS"]
    try:
        with OnlineStore.from_url(redis_url, namespace=NAMESPACE) as store:
            synced = sync(lake, store, CARD_MODEL.groups)
        report["online_sync"] = {
            "entities": synced.entities,
            "applied": synced.applied,
            "by_group": synced.by_group,
        }
        payments = sample_payments(lake, data, redis_url)
        with ServeProcess.start(
            serve_env(lake, redis_url, kafka), state_dir / "serve.log", cwd=ROOT, pythonpath=ROOT
        ) as svc:
            report["scored"] = [svc.score(p) for p in payments]
        report["payments"] = payments
    finally:
        if stack_config is not None:
            launcher.down(stack_config)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="examples.card_payments.pipeline", description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="45 days, 600 customers, 150 terminals (CI size)")
    ap.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where the lake and services live (default: a temporary directory, removed afterwards)",
    )
    args = ap.parse_args(argv)
    if args.state_dir is not None:
        args.state_dir.mkdir(parents=True, exist_ok=True)
        report = run(args.state_dir, small=args.small)
    else:
        with tempfile.TemporaryDirectory(prefix="card-example-") as tmp:
            report = run(Path(tmp), small=args.small)
    json.dump(report, sys.stdout, indent=1, default=str)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
