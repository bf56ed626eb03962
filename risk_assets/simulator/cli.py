"""``risk-sim``: the simulator's command line (history → lake, replay/live → Kafka).

Environment defaults are read inside :func:`main` only: ``RISK_LAKE_URL`` (else ``.state/lake``) and
``KAFKA_BOOTSTRAP_SERVERS`` (else ``127.0.0.1:9092``).
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime

from risk_assets.simulator.config import DEFAULT_START, SimConfig
from risk_assets.simulator.drift import parse_scenario


def _day(text: str) -> datetime:
    """An ISO date or hour-aligned datetime, taken as UTC."""
    ts = datetime.fromisoformat(text)
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="risk-sim", description="Deterministic crypto-exchange traffic with fraud."
    )
    sub = parser.add_subparsers(dest="mode", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--seed", type=int, default=7)
        p.add_argument("--users", type=int, default=50_000)
        p.add_argument("--events-per-day", type=int, default=1_000_000)
        p.add_argument(
            "--drift-day", type=int, default=None, help="day (0-based from --start) attackers change tactics"
        )
        p.add_argument("--unlabelled-fraction", type=float, default=0.25)
        p.add_argument(
            "--chargeback-median-days", type=float, default=12.0, help="card-testing chargeback delay"
        )
        p.add_argument(
            "--case-review-median-hours",
            type=float,
            default=24.0,
            help="from a card-testing case's first chargeback to fraud_attempt labels on its declines",
        )
        p.add_argument(
            "--drift-scenario",
            action="append",
            default=[],
            metavar="KIND[:k=v,...]",
            help="a drift scenario (repeatable): attack_surge, new_attack_network, attack_amount_shift or "
            "legit_market_event, e.g. attack_surge:start=2,days=1,target=card_testing,rate_factor=20 "
            "(start/end: days after --start or ISO times; see docs/simulator.md)",
        )

    h = sub.add_parser("history", help="write N simulated days into the lake's archive layout")
    common(h)
    h.add_argument("--lake", default=None, help="lake root: path or s3://bucket/prefix (env RISK_LAKE_URL)")
    h.add_argument("--start", type=_day, default=DEFAULT_START)
    h.add_argument("--days", type=int, default=1)
    h.add_argument("--hours", type=int, default=None, help="instead of --days")
    h.add_argument(
        "--beyond-end",
        choices=("keep", "drop"),
        default="keep",
        help="records whose archive hour is after the range: write them (keep) or drop them",
    )
    h.add_argument("--workers", type=int, default=2)

    r = sub.add_parser(
        "replay", help="produce a simulated range to Kafka, timestamps = simulated ingest time"
    )
    common(r)
    r.add_argument("--bootstrap-servers", default=None)
    r.add_argument("--start", type=_day, required=True)
    r.add_argument("--hours", type=int, default=1)
    r.add_argument("--bad-rate", type=float, default=0.0)
    r.add_argument("--manifest", default=None, help="write the bad-input manifest to this Parquet file")
    r.add_argument("--events-topic", default=None)
    r.add_argument("--labels-topic", default=None)

    lv = sub.add_parser("live", help="produce to Kafka at a target rate, paced by the wall clock")
    common(lv)
    lv.add_argument("--bootstrap-servers", default=None)
    lv.add_argument("--rate", type=float, default=2_000.0, help="events per second")
    lv.add_argument(
        "--seconds", type=float, default=None, help="stop after this long (default: run until killed)"
    )
    lv.add_argument("--start", type=_day, default=DEFAULT_START, help="anchor of --drift-day")
    lv.add_argument("--bad-rate", type=float, default=0.0)
    lv.add_argument("--manifest", default=None)
    lv.add_argument("--events-topic", default=None)
    lv.add_argument("--labels-topic", default=None)
    return parser


def _config(args: argparse.Namespace, hours: int) -> SimConfig:
    return SimConfig(
        seed=args.seed,
        start=args.start,
        hours=hours,
        events_per_day=args.events_per_day,
        users=args.users,
        drift_day=args.drift_day,
        drift_scenarios=tuple(parse_scenario(spec, args.start) for spec in args.drift_scenario),
        unlabelled_fraction=args.unlabelled_fraction,
        chargeback_median_days=args.chargeback_median_days,
        case_review_median_hours=args.case_review_median_hours,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``risk-sim``."""
    from risk_assets.lake import Lake
    from risk_assets.names import EVENTS_TOPIC, LABELS_TOPIC
    from risk_assets.simulator import writers

    parser = build_parser()
    args = parser.parse_args(argv)

    def config(hours: int) -> SimConfig:
        try:
            return _config(args, hours)
        except ValueError as exc:  # a bad drift scenario or knob: usage error, nothing generated
            parser.error(str(exc))

    if args.mode == "history":
        lake = Lake(args.lake or os.environ.get("RISK_LAKE_URL") or ".state/lake")
        cfg = config(args.hours if args.hours is not None else args.days * 24)
        _progress(f"history: {cfg.hours} h from {cfg.start:%Y-%m-%d %H:%M} into {lake.url} (seed {cfg.seed})")
        stats = writers.write_history(
            cfg, lake, beyond_end=args.beyond_end, workers=args.workers, progress=_progress
        )
        print(
            f"history: {stats.events:,} events ({stats.fraud_events:,} fraud), {stats.labels:,} labels, "
            f"{stats.partitions:,} partitions, {stats.bytes / 1e6:,.1f} MB, dropped beyond end "
            f"{stats.dropped_beyond_end:,}; {stats.seconds:.1f}s "
            f"({stats.events / max(stats.seconds, 1e-9):,.0f} ev/s incl. writing; "
            f"{stats.write_seconds:.1f}s in Parquet writes)"
        )
        return 0

    cfg = config(args.hours if args.mode == "replay" else 24)
    servers = args.bootstrap_servers or os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or "127.0.0.1:9092"
    producer = writers.make_producer(servers)
    topics = {
        "events_topic": args.events_topic or EVENTS_TOPIC,
        "labels_topic": args.labels_topic or LABELS_TOPIC,
    }
    if args.mode == "replay":
        stats = writers.replay(cfg, producer, bad_rate=args.bad_rate, progress=_progress, **topics)
    else:
        stats = writers.live(
            cfg,
            producer,
            rate=args.rate,
            seconds=args.seconds,
            bad_rate=args.bad_rate,
            progress=_progress,
            **topics,
        )
    if args.manifest:
        stats.manifest.write_parquet(args.manifest)
    print(
        f"{args.mode}: {stats.events:,} events, {stats.labels:,} labels, {stats.bad:,} bad, "
        f"{stats.skipped:,} outside the window, {stats.delivery_errors:,} delivery errors, "
        f"{stats.seconds:.1f}s ({stats.events / max(stats.seconds, 1e-9):,.0f} msg/s)"
    )
    return 1 if stats.delivery_errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
