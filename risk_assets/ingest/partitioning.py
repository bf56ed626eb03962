"""Which hourly archive partition an event belongs to: the documented lateness policy.

Kafka orders messages by arrival; the archive is partitioned by event time. Every record gets
exactly one hour, decided from its event time and its ingestion time (the Kafka message timestamp):

* **On time or slightly late** — ingested before the end of its event hour plus ``GRACE``: the
  record lands in the hour of its event time.
* **Very late** — ingested after that: it lands in the hour of ``ingest_ts - GRACE``, i.e. the
  earliest hour that was still open when it arrived. It keeps its true ``event_ts``, so a reader that
  needs every event of an old hour scans a few later partitions and filters on ``event_ts``; nothing
  is lost and a closed hour never changes after its grace period.
* **From the future** — ``event_ts`` more than ``MAX_FUTURE_SKEW`` after ``ingest_ts``: invalid, sent to
  the dead-letter store.

Consequences: hour H is final once the stream has passed ``H_end + GRACE``, and materializing hour H
needs the messages ingested in ``[H_start - MAX_FUTURE_SKEW, H_end + GRACE)`` — a bounded read.
Dead letters (whose event time may be unreadable) go to the hour of their ingestion time.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl

GRACE = timedelta(hours=1)
MAX_FUTURE_SKEW = timedelta(minutes=5)
HOUR = timedelta(hours=1)


def hour_floor(ts: datetime) -> datetime:
    """The start of the UTC hour containing ``ts`` (naive values are taken as UTC)."""
    ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    return ts.replace(minute=0, second=0, microsecond=0)


def archive_hours(start: datetime, end: datetime) -> list[datetime]:
    """Hour starts covering ``[start, end)``."""
    t = hour_floor(start)
    out = []
    while t < end:
        out.append(t)
        t += HOUR
    return out


def ingest_window(first_hour: datetime, last_hour: datetime) -> tuple[datetime, datetime]:
    """Ingestion-time window ``[start, end)`` that holds every record of hours first..last."""
    return hour_floor(first_hour) - MAX_FUTURE_SKEW, hour_floor(last_hour) + HOUR + GRACE


def archive_hour_expr(
    event_ts: str = "event_ts", ingest_ts: str = "ingest_ts", grace: timedelta = GRACE
) -> pl.Expr:
    """Polars expression: the archive hour (UTC datetime) of each record under the lateness policy."""
    event_hour = pl.col(event_ts).dt.truncate("1h")
    on_time = pl.col(ingest_ts) < event_hour + HOUR + grace
    return pl.when(on_time).then(event_hour).otherwise((pl.col(ingest_ts) - grace).dt.truncate("1h"))


def is_from_future_expr(event_ts: str = "event_ts", ingest_ts: str = "ingest_ts") -> pl.Expr:
    """Polars expression: true where the event claims a time too far after its arrival."""
    return pl.col(event_ts) > pl.col(ingest_ts) + MAX_FUTURE_SKEW
