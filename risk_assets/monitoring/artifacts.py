"""Where monitoring keeps its outputs in the lake, and its small JSON state files.

Pure (no Dagster): the monitoring assets write here, reports and notebooks read the same paths.

Layout::

    profiles/raw_events/dt=YYYY-MM-DD/hour=HH/profile.bin      hourly raw-event profile
    profiles/raw_events_daily/dt=YYYY-MM-DD/profile.bin        merge of the 24 hourly profiles
    profiles/features/{group}/v={version}/dt=YYYY-MM-DD/profile.bin
    profiles/training_sets/as_of=YYYY-MM-DD/profile.bin
    profiles/prediction_log/p={partition}/offsets={start:012d}-{end:012d}.bin
    monitoring/drift/dt=YYYY-MM-DD/report.{json,md}, columns.parquet
    monitoring/realized/dt=YYYY-MM-DD/report.json
    monitoring/prediction_log/p={partition}/offsets={start:012d}-{end:012d}.parquet   log rows
    monitoring/prediction_log/state.json           {topic, partitions: {p: next offset}}
    monitoring/prediction_log_dead_letters/p={partition}/offsets={start:012d}-{end:012d}.parquet
                                                   poison records: partition, offset, reason, error, value
    monitoring/serving_skew/state.json             {partitions: {p: next offset compared}}
    monitoring/serving_skew/at=YYYYMMDDTHHMMSS/report.json, features.parquet, examples.parquet
    monitoring/service_health/last_scrape.json     the previous scrape (for per-interval figures)
    monitoring/shadow/version={version}/report.json champion vs that shadow challenger on shadow
                                                   traffic (the newest run; read by the promotion gate)
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any

from risk_assets.ingest.kafka_reader import OffsetRange
from risk_assets.lake import Lake

LOG_PREFIX = "monitoring/prediction_log"
LOG_STATE = f"{LOG_PREFIX}/state.json"
LOG_DEAD_LETTERS = "monitoring/prediction_log_dead_letters"
SKEW_PREFIX = "monitoring/serving_skew"
SKEW_STATE = f"{SKEW_PREFIX}/state.json"
HEALTH_STATE = "monitoring/service_health/last_scrape.json"


def raw_events_profile_path(hour: datetime) -> str:
    """Lake path of one hour's raw-event profile."""
    return f"profiles/raw_events/dt={hour:%Y-%m-%d}/hour={hour:%H}/profile.bin"


def raw_events_daily_profile_path(day: str) -> str:
    """Lake path of one day's merged raw-event profile."""
    return f"profiles/raw_events_daily/dt={day}/profile.bin"


def feature_profile_path(group_name: str, version: str, day: str) -> str:
    """Lake path of one day's profile of one feature group (per group version)."""
    return f"profiles/features/{group_name}/v={version}/dt={day}/profile.bin"


def training_set_profile_path(as_of_day: str) -> str:
    """Lake path of a training set's profile."""
    return f"profiles/training_sets/as_of={as_of_day}/profile.bin"


def drift_report_paths(day: str) -> tuple[str, str, str]:
    """Lake paths of a day's drift report: (summary JSON, Markdown, per-column Parquet)."""
    base = f"monitoring/drift/dt={day}"
    return f"{base}/report.json", f"{base}/report.md", f"{base}/columns.parquet"


def realized_report_path(day: str) -> str:
    """Lake path of a day's delayed-label performance report (JSON)."""
    return f"monitoring/realized/dt={day}/report.json"


def _range_tag(rng: OffsetRange) -> str:
    return f"p={rng.partition}/offsets={rng.start:012d}-{rng.end:012d}"


def prediction_log_path(rng: OffsetRange) -> str:
    """Lake path of the log rows of one offset range (re-reading a range rewrites the same object)."""
    return f"{LOG_PREFIX}/{_range_tag(rng)}.parquet"


def prediction_log_dead_letter_path(rng: OffsetRange) -> str:
    """Lake path of the dead letters (poison records) of one offset range of the prediction log."""
    return f"{LOG_DEAD_LETTERS}/{_range_tag(rng)}.parquet"


def prediction_log_profile_path(rng: OffsetRange) -> str:
    """Lake path of the whylogs profile of one offset range of the prediction log."""
    return f"profiles/prediction_log/{_range_tag(rng)}.bin"


def shadow_report_path(version: str) -> str:
    """Lake path of the newest shadow comparison of one shadowed challenger."""
    return f"monitoring/shadow/version={version}/report.json"


def read_shadow_report(store: Lake, version: str) -> dict[str, Any] | None:
    """The newest shadow comparison of ``version`` (``None``: it was never compared)."""
    path = shadow_report_path(version)
    return json.loads(store.read_bytes(path)) if store.exists(path) else None


def prediction_log_files(store: Lake) -> list[tuple[int, int, int, str]]:
    """(partition, start, end, path) of every stored prediction-log range, in order."""
    out = []
    for path in store.list(f"{LOG_PREFIX}/"):
        name = path.rsplit("/", 2)
        if len(name) < 3 or not name[1].startswith("p=") or not name[2].startswith("offsets="):
            continue
        start, end = name[2][len("offsets=") : -len(".parquet")].split("-")
        out.append((int(name[1][2:]), int(start), int(end), path))
    return sorted(out)


def read_state(store: Lake, path: str) -> dict[str, Any]:
    """A JSON state file (``{}`` when it does not exist yet)."""
    return json.loads(store.read_bytes(path)) if store.exists(path) else {}


def write_state(store: Lake, path: str, state: dict[str, Any]) -> None:
    """Replace a JSON state file (one object, written whole)."""
    store.write_bytes(path, (json.dumps(state, indent=1, sort_keys=True) + "\n").encode())


def write_json(store: Lake, path: str, doc: dict[str, Any]) -> None:
    """Write a report as indented JSON (non-finite floats as null; other values via ``str``)."""
    text = json.dumps(json_safe(doc), indent=1, sort_keys=True, default=str) + "\n"
    store.write_bytes(path, text.encode())


def json_safe(x: Any) -> Any:
    """``x`` with non-finite floats replaced by None (JSON has no NaN)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(v) for v in x]
    return x
