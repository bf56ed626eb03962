"""Ask a running risk-serve what it serves: its metrics text and the model version it reports.

Pure (standard library only): the ``deployed_model`` and ``service_health`` assets, tests and the
demo use it to confirm a promotion reached the service.
"""

from __future__ import annotations

import re
import time
import urllib.request

_MODEL_INFO = re.compile(r'risk_model_info\{[^}]*version="([^"]+)"')


def scrape_metrics(url: str, timeout_s: float = 5.0) -> str:
    """The service's ``/metrics`` text (``url`` is the service's base URL)."""
    with urllib.request.urlopen(f"{url.rstrip('/')}/metrics", timeout=timeout_s) as resp:
        return resp.read().decode()


def served_model_version(url: str, wait_for: str | None = None, timeout_s: float = 30.0) -> str | None:
    """The version the service reports in ``risk_model_info`` (waiting up to ``timeout_s`` for
    ``wait_for`` to appear, since services reload on their own poll interval)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            match = _MODEL_INFO.search(scrape_metrics(url))
            seen = match.group(1) if match else None
        except OSError:
            seen = None
        if wait_for is None or seen == wait_for or time.monotonic() > deadline:
            return seen
        time.sleep(1.0)
