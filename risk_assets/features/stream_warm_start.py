"""Warm start of the stream state: load the longest window's events, then commit its epoch marker.

Pure Python (Polars, the lake archive reader, the Kafka range reader), no Dagster. Needed when the
stream state is cold — its epoch marker is missing (``stream_state.py``): Redis restarted without
persistence or was flushed, a stream group was added or changed (new layouts, new marker key), or
a new deployment starts on a topic that already holds history. Until the marker is back, a
micro-batch publishes nothing (:func:`process_with_warm_start`).

Where the events come from
--------------------------
The state must hold, per entity, every event of the last ``retention`` (longest window + margin) up
to the micro-batch being processed. Two sources, read through the existing readers:

1. **The archive** (``raw_events``, hourly, the system of record; ``ingest.archive.read_archive``):
   every archived hour from ``since`` on, events with ``event_ts >= since`` and
   ``ingest_ts < kafka_from``. They carry no Kafka position (``_partition = _offset = -1``), so the
   engine's visibility rule sees them by ``ingest_ts`` — they all arrived before the batch.
2. **The events topic** (``KafkaRangeReader``): what the archive cannot hold yet — the current hour,
   hours not archived yet, gaps. ``kafka_from`` = the start of the first missing archive hour (or
   ``until``, the batch's first arrival, if that is earlier) minus ``MAX_FUTURE_SKEW`` and the
   reader's ``TIMESTAMP_SLACK``: every event ingested before the first missing hour (minus the
   allowed future skew) lives in an archived hour (``ingest.partitioning``). Per partition the
   topic is read from the first offset with a timestamp ≥ ``kafka_from`` up to ``upto[partition]``
   (the batch's first offset for its own partition — the batch adds its own events) or the end.
   These members are byte-identical to the ones the micro-batches add, so later batches re-adding
   them are no-ops. Archive events that the topic delivers too (same ``event_id`` and ``ingest_ts``)
   are dropped from the archive side.

If neither source can cover the window — an archive hour missing and the topic's retention already
past it, or no reader and the archive not reaching ``until`` — the warm start raises
:class:`WarmStartIncomplete` (nothing committed: rows would be computed from a partial window),
unless ``allow_gaps`` (an operator who accepts it; the result says what was missing).

The commit is the epoch protocol's (``store_epoch.py``): if Redis lost its data while the warm start
ran, the pending token is gone, nothing is committed and ``committed`` is ``False`` — the caller
warms again. Loading is idempotent (ZADD of identical members), so concurrent warm starts are safe;
they share one pending token and either may commit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import polars as pl

from risk_assets.features.spec import FeatureGroup
from risk_assets.features.stream import process_events
from risk_assets.features.stream_state import StreamState, StreamStateCold, StreamStateError
from risk_assets.ingest.archive import EVENTS, decode_messages, read_archive
from risk_assets.ingest.archive_format import RAW_EVENTS, archive_part_path
from risk_assets.ingest.kafka_reader import TIMESTAMP_SLACK, KafkaRangeReader, OffsetRange
from risk_assets.ingest.partitioning import HOUR, MAX_FUTURE_SKEW, hour_floor
from risk_assets.lake import Lake
from risk_assets.names import EVENTS_TOPIC

__all__ = [
    "WarmStartIncomplete",
    "WarmStartResult",
    "process_with_warm_start",
    "warm_start",
    "warm_start_for_batch",
    "warm_start_now",
]

_TS = pl.Datetime("ms", "UTC")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
READ_CHUNK = 200_000  # offsets per Kafka read while warming
ARCHIVE_HOURS_PER_ADD = 6  # archive hours loaded into Redis per state.add


class WarmStartIncomplete(StreamStateError):
    """The window's events are neither archived nor still in the topic: the state cannot be made
    complete (one line, with the missing hours / partitions)."""


@dataclass
class WarmStartResult:
    """What one :func:`warm_start` loaded and whether it committed the epoch."""

    token: str
    committed: bool
    since: datetime
    until: datetime
    kafka_from: datetime | None
    archive_hours: int = 0  # archived hours read
    archive_events: int = 0  # events loaded from the archive
    kafka_events: int = 0  # events loaded from the topic
    members: int = 0  # members sent to Redis (existing ones are no-ops)
    kafka_ranges: list[OffsetRange] = field(default_factory=list)
    missing_hours: list[datetime] = field(default_factory=list)  # archive hours absent
    gaps: list[str] = field(default_factory=list)  # what could not be covered (allow_gaps only)
    seconds: float = 0.0


def _ms(t: datetime) -> int:
    return int((t - _EPOCH) // timedelta(milliseconds=1))


def _hours(since: datetime, until: datetime) -> list[datetime]:
    h, last, out = hour_floor(since), hour_floor(until), []
    while h <= last:
        out.append(h)
        h += HOUR
    return out


def _read_topic(
    reader: KafkaRangeReader,
    topic: str,
    kafka_from: datetime,
    since: datetime,
    upto: Mapping[int, int] | None,
    result: WarmStartResult,
) -> pl.DataFrame:
    """Valid events of ``topic`` from ``kafka_from`` (by message timestamp) up to ``upto``/the end."""
    from_ms = _ms(kafka_from)
    frames = []
    for p in reader.partitions(topic):
        low, end = reader.bounds(topic, p)
        hi = min(end, upto.get(p, end)) if upto else end
        if hi <= low:
            continue
        if low > 0 and reader.timestamp_at(topic, p, low) > from_ms:
            # Retention already dropped messages that may be newer than kafka_from.
            result.gaps.append(f"{topic}:{p} starts at offset {low}, after {kafka_from:%Y-%m-%d %H:%M}")
        start = reader.first_offset_at_or_after(topic, p, from_ms, low, hi)
        for a in range(start, hi, READ_CHUNK):
            rng = OffsetRange(topic, p, a, min(hi, a + READ_CHUNK))
            valid = decode_messages(reader.read(rng), EVENTS).valid
            frames.append(valid.filter(pl.col("event_ts") >= since))
            result.kafka_ranges.append(rng)
    if not frames:
        return pl.DataFrame()
    return pl.concat(frames, how="diagonal_relaxed")


def warm_start(
    state: StreamState,
    lake: Lake,
    *,
    since: datetime,
    until: datetime,
    reader: KafkaRangeReader | None = None,
    topic: str = EVENTS_TOPIC,
    upto: Mapping[int, int] | None = None,
    allow_gaps: bool = False,
) -> WarmStartResult:
    """Load the events of ``[since, until]`` (and the topic's tail up to ``upto``) into ``state``
    and commit its epoch marker. See the module docstring for the sources and the coverage rule;
    raises :class:`WarmStartIncomplete` when the window cannot be covered (unless ``allow_gaps``)."""
    t0 = time.perf_counter()
    since, until = since.astimezone(UTC), until.astimezone(UTC)
    hours = _hours(since, until)
    present = [h for h in hours if lake.exists(archive_part_path(RAW_EVENTS, h))]
    missing = [h for h in hours if h not in set(present)]
    if reader is None:
        kafka_from = None
        cut = until
        if missing and not allow_gaps:
            raise WarmStartIncomplete(
                f"stream warm start: archive hours {missing[0]:%Y-%m-%d %H:00}…{missing[-1]:%H:00} "
                f"({len(missing)}) are missing and no events-topic reader was given"
            )
    else:
        first_gap = min([*missing[:1], until])
        kafka_from = first_gap - MAX_FUTURE_SKEW - TIMESTAMP_SLACK
        cut = kafka_from
    token = state.begin_epoch()
    result = WarmStartResult(token, False, since, until, kafka_from, missing_hours=missing)
    if reader is None and missing:
        result.gaps.append(f"{len(missing)} archive hour(s) missing, no topic reader")

    tail = pl.DataFrame()
    if reader is not None and kafka_from is not None:
        tail = _read_topic(reader, topic, kafka_from, since, upto, result)
        if result.gaps and not allow_gaps:
            raise WarmStartIncomplete("stream warm start: " + "; ".join(result.gaps))
    seen = tail.select("event_id", "ingest_ts") if tail.height else None

    usable = [h for h in present if h <= hour_floor(cut)]
    for i in range(0, len(usable), ARCHIVE_HOURS_PER_ADD):
        chunk = usable[i : i + ARCHIVE_HOURS_PER_ADD]
        frame = (
            read_archive(lake, RAW_EVENTS, chunk)
            .filter(pl.col("event_ts") >= since, pl.col("ingest_ts") < cut)
            .collect()
        )
        if seen is not None and frame.height:
            frame = frame.join(seen, on=["event_id", "ingest_ts"], how="anti")
        result.archive_hours += len(chunk)
        if frame.height:
            result.archive_events += frame.height
            result.members += state.add(frame)
    if tail.height:
        result.kafka_events = tail.height
        result.members += state.add(tail)
    result.committed = state.commit_epoch(token)
    result.seconds = time.perf_counter() - t0
    return result


def warm_start_for_batch(
    state: StreamState,
    lake: Lake,
    reader: KafkaRangeReader | None,
    rng: OffsetRange | None,
    events: pl.DataFrame,
    *,
    allow_gaps: bool = False,
) -> WarmStartResult:
    """:func:`warm_start` for a micro-batch of ``events`` read from ``rng``: the window of its
    oldest event and the state's retention before its newest arrival, up to the batch's first offset."""
    ingest = events["ingest_ts"].cast(_TS)
    oldest = events["event_ts"].cast(_TS).min()
    newest, first = ingest.max(), ingest.min()
    assert isinstance(oldest, datetime) and isinstance(newest, datetime) and isinstance(first, datetime)
    since = min(
        oldest - timedelta(milliseconds=state.max_window_ms),
        newest - timedelta(milliseconds=state.retention_ms),
    )
    upto = {rng.partition: rng.start} if rng is not None else None
    topic = rng.topic if rng is not None else EVENTS_TOPIC
    return warm_start(
        state, lake, since=since, until=first, reader=reader, topic=topic, upto=upto, allow_gaps=allow_gaps
    )


def warm_start_now(
    state: StreamState,
    lake: Lake,
    reader: KafkaRangeReader | None,
    *,
    topic: str = EVENTS_TOPIC,
    now: datetime | None = None,
    allow_gaps: bool = False,
) -> WarmStartResult:
    """Warm the state for the present: the retention before ``now`` (default: the wall clock), the
    topic read to its end. What a team runs when it adds a stream group, or an operator after a
    Redis loss, ahead of the next micro-batch."""
    now = now or datetime.now(UTC)
    since = now - timedelta(milliseconds=state.retention_ms)
    return warm_start(state, lake, since=since, until=now, reader=reader, topic=topic, allow_gaps=allow_gaps)


def process_with_warm_start(
    events: pl.DataFrame,
    groups: Sequence[FeatureGroup] | None,
    state: StreamState,
    warm: Callable[[], WarmStartResult],
    *,
    max_warm_starts: int = 2,
    tiles: dict[str, pl.DataFrame] | None = None,
) -> tuple[dict[str, pl.DataFrame], list[WarmStartResult]]:
    """:func:`~risk_assets.features.stream.process_events`, but a cold state is warmed (``warm``)
    and the batch computed again — rows are only returned from a state whose epoch held from the
    start to the end of the batch (``tiles``: as for ``process_events``). Returns the rows and the
    warm starts that ran; raises
    :class:`StreamStateCold` if the state is still cold after ``max_warm_starts``."""
    warmed: list[WarmStartResult] = []
    while True:
        try:
            return process_events(events, groups, state, tiles=tiles), warmed
        except StreamStateCold:
            if len(warmed) >= max_warm_starts:
                raise
            warmed.append(warm())
