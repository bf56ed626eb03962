"""``risk-serve [--host 127.0.0.1] [--port 8080] [--workers 1]``: run the scoring service.

Configuration comes from the environment (``risk_assets.serving.config``); it is validated here
first so a bad setting fails with one line and exit code 2 before any worker starts. Each uvicorn
worker then builds its app from the same environment (``app_from_env`` factory). uvloop + httptools
with the guards of ``risk_assets.serving.protocol`` (header timeout, connection cap, admission for
load shedding), no access log (the hot path must not log per request).

With more than one worker, the workers share a metrics directory so ``/metrics`` is the service's
(``risk_assets.serving.service_metrics``): ``$RISK_SERVE_METRICS_DIR`` if set (emptied of old
snapshots first), else a fresh temporary directory removed on exit.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from risk_assets.serving.config import ConfigError, ServeConfig
from risk_assets.serving.service_metrics import ENV_METRICS_DIR


@contextlib.contextmanager
def shared_metrics_dir(workers: int) -> Iterator[str | None]:
    """The metrics directory the workers will share (exported as ``RISK_SERVE_METRICS_DIR``)."""
    given = os.environ.get(ENV_METRICS_DIR)
    if given:
        directory = Path(given)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("worker-*.json"):  # snapshots of an earlier run of the service
            stale.unlink(missing_ok=True)
        yield given
        return
    if workers <= 1:
        yield None
        return
    made = tempfile.mkdtemp(prefix="risk-serve-metrics-")
    os.environ[ENV_METRICS_DIR] = made
    try:
        yield made
    finally:
        os.environ.pop(ENV_METRICS_DIR, None)
        shutil.rmtree(made, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``risk-serve``."""
    ap = argparse.ArgumentParser(prog="risk-serve", description="Real-time fraud scoring service.")
    ap.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    ap.add_argument("--port", type=int, default=8080, help="TCP port (default 8080)")
    ap.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    ap.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = ap.parse_args(argv)
    try:
        config = ServeConfig.from_env()
    except ConfigError as exc:
        print(f"risk-serve: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("risk_assets.serving").info(
        "risk-serve on %s:%d, %d worker(s); config %s", args.host, args.port, args.workers, config
    )
    import uvicorn

    with shared_metrics_dir(args.workers):
        uvicorn.run(
            "risk_assets.serving.app:app_from_env",
            factory=True,
            host=args.host,
            port=args.port,
            workers=max(1, args.workers),
            loop="uvloop",
            # uvicorn's httptools protocol + header timeout, connection cap, admission (protocol.py)
            http="risk_assets.serving.protocol:GuardedHttpToolsProtocol",
            timeout_keep_alive=config.keepalive_s,
            access_log=False,
            log_level=args.log_level,
            timeout_graceful_shutdown=10,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
