"""The Kafka sensors' cursor: which offset ranges to request next, and when an offset is committed.

Pure logic (no Dagster, no broker), so it is tested exhaustively and read in one place. The cursor
is JSON kept by the sensor::

    {"committed": {"risk.events/0": 1200},            # every offset below is processed
     "incarnations": {"risk.events/0": "tansu_cluster/AaIzHD6NcICZXxaEmxqKYA"},
     "inflight": {"risk.events@AaIzHD6NcICZXxaEmxqKYA:0:1200-1700": {
         "tp": "risk.events/0", "start": 1200, "end": 1700, "attempt": 1, "as_of_ms": 1764590000000,
         "run_key": "risk.events@AaIzHD6NcICZXxaEmxqKYA:0:1200-1700"}}}

Rules:

* New data ``[max(committed, last inflight end), end)`` is split into ranges of at most
  ``max_range`` offsets, each requested once under a stable run key
  ``topic@<topic id>:partition:start-end`` (``topic:partition:start-end`` when no incarnation is
  given, as in the pure tests).
* With ``max_inflight=1`` (what the sensors use) a partition has at most one range in flight: its
  next range is requested only once the previous one succeeded, and it takes everything up to the
  end seen at that tick (≤ ``max_range``), so ranges grow with the backlog instead of runs
  multiplying, and one partition's ranges are processed strictly in offset order (partitions run
  in parallel). ``busy`` partitions — a run of the job for them is queued or running on the
  instance, whoever launched it — get no request at all (neither new ranges nor retries).
* A range leaves ``inflight`` when its run succeeded; ``committed`` then advances over the
  contiguous prefix of succeeded ranges only. A failed run therefore never moves ``committed``.
* A failed (or canceled) range is requested again under ``…#attemptN`` (a new run key, since Dagster
  never launches two runs with one key), up to ``max_attempts``; after that it stays inflight and is
  reported as stuck until an operator re-executes the run, and nothing past it is committed.
* The sensor never commits consumer-group offsets; the broker keeps no state of ours.

Broker incarnations
-------------------
Offsets mean something only within one incarnation of a topic (``KafkaRangeReader.incarnation``:
cluster id + topic id; a broker that lost its data or a re-created topic is a new one). The cursor
records the incarnation of every partition (``"incarnations"``), and run keys carry it
(``topic@<topic id>:partition:start-end``), so ranges of two incarnations never share a run key.
Two situations are *incidents* — the plan requests nothing for the partition, leaves its cursor as
it is and reports them with the numbers (the sensor then fails its tick; never a silent skip):

* the topic's incarnation is not the one the cursor recorded (the broker restarted empty, or the
  topic was re-created): what the old log held past the committed offset and what the new log holds
  below the same offsets are unrelated;
* the committed offset or an inflight range is past the partition's end (offsets went backwards).

An operator accepts a new incarnation by adding ``"accept": {"<topic>/<partition>": "<incarnation>"}``
to the sensor's cursor (Dagster UI → sensor → *Set cursor*, or ``dagster sensor cursor … --set``;
the incident message prints the full cursor to paste). The next tick then drops the old
incarnation's inflight ranges and starts the partition at the new log's first offset.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

from risk_assets.ingest.kafka_reader import OffsetRange

RunState = Literal["success", "failure", "pending"]


def tp_key(topic: str, partition: int) -> str:
    return f"{topic}/{partition}"


@dataclass
class Inflight:
    tp: str
    start: int
    end: int
    attempt: int
    run_key: str
    done: bool = False
    as_of_ms: int = 0  # when the range was first requested: its runs' "now" (0: not recorded)

    @property
    def range(self) -> OffsetRange:
        topic, partition = self.tp.rsplit("/", 1)
        return OffsetRange(topic, int(partition), self.start, self.end)


@dataclass
class OffsetCursor:
    """Committed offsets per topic/partition, the ranges requested but not yet succeeded, the topic
    incarnation each partition's offsets belong to, and incarnations an operator accepted."""

    committed: dict[str, int] = field(default_factory=dict)
    inflight: dict[str, Inflight] = field(default_factory=dict)
    incarnations: dict[str, str] = field(default_factory=dict)
    accept: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def parse(raw: str | None) -> OffsetCursor:
        if not raw:
            return OffsetCursor()
        data = json.loads(raw)
        return OffsetCursor(
            committed={k: int(v) for k, v in data.get("committed", {}).items()},
            inflight={k: Inflight(**v) for k, v in data.get("inflight", {}).items()},
            incarnations={k: str(v) for k, v in data.get("incarnations", {}).items()},
            accept={k: str(v) for k, v in data.get("accept", {}).items()},
        )

    def dumps(self) -> str:
        data: dict = {
            "committed": dict(sorted(self.committed.items())),
            "inflight": {k: vars(v) for k, v in sorted(self.inflight.items())},
        }
        if self.incarnations:
            data["incarnations"] = dict(sorted(self.incarnations.items()))
        if self.accept:
            data["accept"] = dict(sorted(self.accept.items()))
        return json.dumps(data, sort_keys=True)


def range_run_key(rng: OffsetRange, incarnation: str | None) -> str:
    """``topic@<topic id>:partition:start-end`` (``OffsetRange.key()`` without an incarnation)."""
    if not incarnation:
        return rng.key()
    topic_id = incarnation.rsplit("/", 1)[-1]
    return f"{rng.topic}@{topic_id}:{rng.partition}:{rng.start}-{rng.end}"


@dataclass(frozen=True)
class Request:
    """One run to request: an exact range under a run key."""

    range: OffsetRange
    run_key: str
    attempt: int
    as_of_ms: int = 0


@dataclass
class Plan:
    cursor: OffsetCursor
    requests: list[Request]
    stuck: list[str]  # run keys that failed max_attempts times
    incidents: list[str] = field(default_factory=list)  # partitions halted, with the numbers
    accepted: list[str] = field(default_factory=list)  # partitions moved to an accepted incarnation


def _check_incarnations(
    cursor: OffsetCursor, ends: dict[str, int], starts: dict[str, int], incarnations: dict[str, str]
) -> tuple[OffsetCursor, list[str], list[str], set[str]]:
    """Apply accepted incarnations and find incidents; returns (cursor, incidents, accepted, halted tps)."""
    committed = dict(cursor.committed)
    inflight = dict(cursor.inflight)
    recorded = dict(cursor.incarnations)
    accept = dict(cursor.accept)
    incidents: list[str] = []
    accepted: list[str] = []
    halted: set[str] = set()
    for tp, end in sorted(ends.items()):
        now = incarnations.get(tp)
        if now is None:
            continue
        mine = [i for i in inflight.values() if i.tp == tp]
        frontier = max([committed.get(tp, starts.get(tp, 0)), *(i.end for i in mine)])
        was = recorded.get(tp)
        if was is not None and was != now:
            if accept.get(tp) == now:
                for k in [k for k, i in inflight.items() if i.tp == tp]:
                    del inflight[k]
                old = committed.get(tp, 0)
                committed[tp] = starts.get(tp, 0)
                recorded[tp] = now
                del accept[tp]
                accepted.append(
                    f"{tp}: accepted incarnation {now} (was {was}, committed {old:,}, {len(mine)} inflight "
                    f"range(s) dropped); starting at offset {committed[tp]:,} of the new log (end {end:,})"
                )
                continue
            incidents.append(
                f"{tp}: topic incarnation changed {was} → {now}: the cursor committed "
                f"{committed.get(tp, 0):,} and requested up to {frontier:,} on the old log; "
                f"the new log holds offsets [{starts.get(tp, 0):,}, {end:,}). Records of the old log "
                "past the committed offset were never processed from it"
            )
            halted.add(tp)
        elif frontier > end:
            incidents.append(
                f"{tp}: offsets went backwards on incarnation {now}: the cursor is at {frontier:,} "
                f"(committed {committed.get(tp, 0):,}) but the log ends at {end:,}"
            )
            halted.add(tp)
        elif was is None:
            recorded[tp] = now
    return OffsetCursor(committed, inflight, recorded, accept), incidents, accepted, halted


def accept_incarnations(raw_cursor: str | None, incarnations: dict[str, str]) -> str:
    """The cursor with ``accept`` set for ``incarnations`` — what the operator pastes to resume."""
    cursor = OffsetCursor.parse(raw_cursor)
    cursor.accept.update(incarnations)
    return cursor.dumps()


def plan(
    cursor: OffsetCursor,
    ends: dict[str, int],
    run_states: dict[str, RunState],
    *,
    max_range: int,
    max_attempts: int = 3,
    starts: dict[str, int] | None = None,
    incarnations: dict[str, str] | None = None,
    now_ms: int = 0,
    max_inflight: int | None = None,
    busy: frozenset[str] | set[str] = frozenset(),
    hold: frozenset[str] | set[str] = frozenset(),
) -> Plan:
    """Next cursor and run requests, given partition ``ends`` and the states of inflight runs.

    ``run_states`` maps an inflight run key to ``success``/``failure``/``pending`` (missing =
    pending). ``starts`` gives the first offset of a partition never seen before (default 0), and of
    a new incarnation once accepted. ``incarnations`` (per partition) enables the incarnation rules
    of the module docstring; partitions with an incident are left exactly as they were. ``now_ms``
    is recorded with each new range (``as_of_ms``) and requested again with its retries, so every
    attempt of a range judges "too far in the future" against the same time. ``max_inflight``
    caps the unfinished ranges per partition (None: no cap) and ``busy`` names partitions with a
    run in flight on the instance (module docstring).
    """
    incidents: list[str] = []
    accepted: list[str] = []
    halted: set[str] = set()
    if incarnations is not None:
        cursor, incidents, accepted, halted = _check_incarnations(cursor, ends, starts or {}, incarnations)
        ends = {tp: end for tp, end in ends.items() if tp not in halted}
    held = {k: Inflight(**vars(v)) for k, v in cursor.inflight.items() if v.tp in halted}
    committed = dict(cursor.committed)
    inflight = {k: Inflight(**vars(v)) for k, v in cursor.inflight.items() if v.tp not in halted}
    requests: list[Request] = []
    stuck: list[str] = []

    for item in inflight.values():
        if item.done:
            continue
        state = run_states.get(item.run_key, "pending")
        if state == "success":
            item.done = True
        elif state == "failure" and item.tp in busy:
            continue  # another run of this partition is in flight: retry once it is over
        elif state == "failure":
            if item.attempt >= max_attempts:
                stuck.append(item.run_key)
                continue
            item.attempt += 1
            item.run_key = f"{_base_key(item.run_key)}#attempt{item.attempt}"
            requests.append(Request(item.range, item.run_key, item.attempt, item.as_of_ms))

    # Commit the contiguous prefix of succeeded ranges; a pending or failed range holds it back
    # (succeeded ranges after it stay inflight, marked done, until the gap closes).
    for tp in sorted({i.tp for i in inflight.values()}):
        pos = committed.get(tp, (starts or {}).get(tp, 0))
        for key, item in sorted(
            ((k, i) for k, i in inflight.items() if i.tp == tp), key=lambda x: x[1].start
        ):
            if not (item.done and item.start <= pos):
                break
            pos = max(pos, item.end)
            del inflight[key]
        committed[tp] = pos

    for tp, end in sorted(ends.items()):
        base = committed.get(tp, (starts or {}).get(tp, 0))
        committed.setdefault(tp, base)
        frontier = max([base, *(i.end for i in inflight.values() if i.tp == tp)])
        topic, partition = tp.rsplit("/", 1)
        slots = 0 if tp in hold else None
        if max_inflight is not None and tp not in hold:
            unfinished = sum(1 for i in inflight.values() if i.tp == tp and not i.done)
            slots = 0 if tp in busy else max(0, max_inflight - unfinished)
        while frontier < end and (slots is None or slots > 0):
            if slots is not None:
                slots -= 1
            stop = min(end, frontier + max_range)
            rng = OffsetRange(topic, int(partition), frontier, stop)
            key = range_run_key(rng, (incarnations or {}).get(tp))
            inflight[key] = Inflight(tp, frontier, stop, 1, key, as_of_ms=now_ms)
            requests.append(Request(rng, key, 1, now_ms))
            frontier = stop
    out = OffsetCursor(committed, {**inflight, **held}, dict(cursor.incarnations), dict(cursor.accept))
    return Plan(out, requests, stuck, incidents, accepted)


def _base_key(run_key: str) -> str:
    return run_key.split("#attempt", 1)[0]
