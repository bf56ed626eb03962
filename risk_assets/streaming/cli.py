"""``risk-stream``: run the continuous stream worker (``python -m risk_assets.streaming.cli``).

Configuration from the environment, like the code location: ``KAFKA_BOOTSTRAP_SERVERS``,
``REDIS_URL`` (``redis+cluster://`` for a cluster), ``RISK_LAKE_URL`` (``s3://`` lakes use the
standard AWS chain). Exit codes: 0 after SIGTERM/SIGINT (leases released), 2 bad configuration,
3 an incident (topic incarnation changed, offsets went backwards; the message has the numbers).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from risk_assets.lake import Lake


def _lake(url: str) -> Lake:
    if url.startswith("s3://"):
        from risk_assets.resources import LakeResource  # brings dagster-aws's S3 client

        return LakeResource(url=url).lake()
    from pathlib import Path

    return Lake(str(Path(url).expanduser().resolve()))


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``risk-stream``."""
    from risk_assets.streaming.worker import StreamIncident, StreamWorker, WorkerSettings

    defaults = WorkerSettings()
    ap = argparse.ArgumentParser(prog="risk-stream", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--worker-id",
        default=defaults.worker_id,
        help="lease holder name (default host:pid); a restarted worker with the same id takes "
        "its partitions back at once instead of waiting for the lease to expire",
    )
    ap.add_argument("--max-range", type=int, default=defaults.max_range, help="events per range and loop")
    ap.add_argument("--lease-ms", type=int, default=defaults.lease_ms)
    ap.add_argument(
        "--seconds", type=float, default=None, help="stop after this long (default: run until SIGTERM)"
    )
    ap.add_argument(
        "--accept-incarnation",
        action="store_true",
        help="after an incident: start partitions whose log changed at the new log's first offset",
    )
    ap.add_argument("--hold-after-publish", type=float, default=0.0, help=argparse.SUPPRESS)  # fault tests
    ap.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    missing = [v for v in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "RISK_LAKE_URL") if not os.environ.get(v)]
    if missing:
        print(
            f"risk-stream: set {', '.join(missing)} (e.g. source .state/stack/endpoints.env)", file=sys.stderr
        )
        return 2
    settings = WorkerSettings(
        worker_id=args.worker_id,
        max_range=args.max_range,
        lease_ms=args.lease_ms,
        hold_after_publish_s=args.hold_after_publish,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    worker = StreamWorker(
        os.environ["KAFKA_BOOTSTRAP_SERVERS"],
        os.environ["REDIS_URL"],
        _lake(os.environ["RISK_LAKE_URL"]),
        settings=settings,
    )
    log = logging.getLogger("risk_assets.streaming")
    with worker:
        if args.accept_incarnation:
            for note in worker.accept_incarnations():
                log.warning(note)
        log.info("risk-stream %s: consuming the live tail", settings.worker_id)
        try:
            worker.run(stop, seconds=args.seconds)
        except StreamIncident as exc:
            print(f"risk-stream stopped: {exc}", file=sys.stderr)
            return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
