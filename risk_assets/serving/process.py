"""``risk-serve`` as a child process: start it on a free port with a given environment, wait until
it is ready, post JSON to it, stop it. Used by the worked examples (``examples/``) and their tests —
the real service process, not an in-process app.

Standard library only (``http.client``, ``subprocess``); the service itself reads its configuration
from the environment passed here (``risk_assets.serving.config``).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from risk_assets.stack.launcher import free_port


@dataclass
class ServeProcess:
    """A running ``risk-serve``; ``with ServeProcess.start(...) as svc:`` stops it on exit."""

    port: int
    token: str = field(repr=False)
    proc: subprocess.Popen[bytes] = field(repr=False)
    log_path: Path

    @classmethod
    def start(
        cls,
        env: dict[str, str],
        log_path: Path,
        *,
        cwd: Path | None = None,
        pythonpath: Path | None = None,
        ready_timeout_s: float = 60.0,
    ) -> ServeProcess:
        """Start ``python -m risk_assets.serving.cli`` with ``env`` (on top of this process's
        environment without its ``RISK_``/``REDIS_``/``KAFKA_`` variables) and wait until
        ``/readyz`` answers 200. ``pythonpath`` is prepended to ``PYTHONPATH`` (e.g. the repository
        root, so ``RISK_MODEL_SPEC`` can name ``examples.…``)."""
        port = free_port()
        full = {k: v for k, v in os.environ.items() if not k.startswith(("RISK_", "REDIS_", "KAFKA_"))}
        full.update(env)
        if pythonpath is not None:
            full["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(pythonpath), full.get("PYTHONPATH", "")) if p
            )
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as fh:
            proc = subprocess.Popen(
                [sys.executable, "-m", "risk_assets.serving.cli", "--port", str(port)],
                cwd=cwd,
                env=full,
                stdout=fh,
                stderr=subprocess.STDOUT,
            )
        svc = cls(port, full.get("RISK_SERVE_TOKEN", ""), proc, log_path)
        deadline = time.monotonic() + ready_timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"risk-serve exited {proc.returncode}:\n{svc.log_text()}")
            try:
                status, last = svc.request("GET", "/readyz")
                if status == 200:
                    return svc
            except OSError:
                pass
            time.sleep(0.1)
        svc.stop()
        raise RuntimeError(f"risk-serve not ready within {ready_timeout_s}s ({last}):\n{svc.log_text()}")

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One HTTP request; JSON in and out."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"}
            conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
        finally:
            conn.close()
        ctype = resp.getheader("content-type", "")
        return resp.status, (json.loads(payload) if "json" in ctype else payload.decode())

    def score(self, event: dict[str, Any]) -> dict[str, Any]:
        """``POST /v1/score``; raises on a non-200 answer."""
        status, body = self.request("POST", "/v1/score", event)
        if status != 200:
            raise RuntimeError(f"risk-serve answered {status}: {body}")
        return body

    def score_batch(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        """``POST /v1/score/batch``; raises on a non-200 answer."""
        status, body = self.request("POST", "/v1/score/batch", {"events": events})
        if status != 200:
            raise RuntimeError(f"risk-serve answered {status}: {body}")
        return body

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """SIGTERM (the service flushes its prediction log), SIGKILL after 15 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
