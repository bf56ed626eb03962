"""The time partitions of every partitioned asset: archive hours and feature/model days, in UTC.

One place for the partition shapes, and their start is the *data's* start, not a constant: the
first day the deployment holds events (``RISK_DATA_START``, ``YYYY-MM-DD``), so the UI shows the
days that exist as materialized and nothing before them, and "Materialize all" offers exactly the
data's range. The start is read when the code location loads (``definitions.py`` builds every
partitioned asset from one :class:`TimePartitions`), never at import.

Partition keys are the same strings whatever the start (``2026-11-01-07:00`` for an hour,
``2026-11-01`` for a day), so moving the start earlier never renames a partition.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cached_property

import dagster as dg

DATA_START_ENV = "RISK_DATA_START"
"""Environment variable holding the first day of data (``YYYY-MM-DD``, UTC)."""
DEFAULT_DATA_START = date(2026, 1, 1)
"""Used when ``RISK_DATA_START`` is unset (the Makefile sets it for the local demo's data)."""
HOUR_KEY_FORMAT = "%Y-%m-%d-%H:%M"
DAY_KEY_FORMAT = "%Y-%m-%d"


@dataclass(frozen=True)
class TimePartitions:
    """Hourly and daily UTC partitions starting at ``start`` (the first day of data)."""

    start: date

    @cached_property
    def hourly(self) -> dg.HourlyPartitionsDefinition:
        """Archive hours (``raw_events``, ``raw_labels``, hourly profiles)."""
        return dg.HourlyPartitionsDefinition(
            start_date=self.start.strftime("%Y-%m-%d-00:00"), timezone="UTC", fmt=HOUR_KEY_FORMAT
        )

    @cached_property
    def daily(self) -> dg.DailyPartitionsDefinition:
        """Feature days, training-set/model days ("as of the end of the day"), monitoring days."""
        return dg.DailyPartitionsDefinition(
            start_date=self.start.strftime(DAY_KEY_FORMAT), timezone="UTC", fmt=DAY_KEY_FORMAT
        )

    @property
    def start_time(self) -> datetime:
        return datetime(self.start.year, self.start.month, self.start.day, tzinfo=UTC)

    @classmethod
    def from_env(cls) -> TimePartitions:
        """Partitions from ``RISK_DATA_START`` (call at load time, e.g. in ``definitions.py``)."""
        raw = dg.EnvVar(DATA_START_ENV).get_value() or ""
        if not raw.strip():
            return cls(DEFAULT_DATA_START)
        try:
            return cls(date.fromisoformat(raw.strip()))
        except ValueError as exc:
            raise ValueError(f"{DATA_START_ENV}={raw!r} is not a date (expected YYYY-MM-DD)") from exc


def hour_key(t: datetime) -> str:
    """The hourly partition key of the hour holding ``t`` (UTC)."""
    t = t.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return t.strftime(HOUR_KEY_FORMAT)


def day_key(t: datetime) -> str:
    """The daily partition key of the UTC day holding ``t``."""
    return t.astimezone(UTC).strftime(DAY_KEY_FORMAT)


def previous_day_key(t: datetime) -> str:
    """The daily partition key of the UTC day before the one holding ``t`` (schedules use it)."""
    return day_key(t - timedelta(days=1))
