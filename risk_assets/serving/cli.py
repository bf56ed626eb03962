"""``risk-serve [--host 127.0.0.1] [--port 8080] [--workers 1]``: run the scoring service.

Configuration comes from the environment (``risk_assets.serving.config``); it is validated here
first so a bad setting fails with one line and exit code 2 before any worker starts. Each uvicorn
worker then builds its app from the same environment (``app_from_env`` factory). uvloop + httptools,
no access log (the hot path must not log per request).
"""

from __future__ import annotations

import argparse
import logging
import sys

from risk_assets.serving.config import ConfigError, ServeConfig


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

    uvicorn.run(
        "risk_assets.serving.app:app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=max(1, args.workers),
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level=args.log_level,
        timeout_graceful_shutdown=10,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
