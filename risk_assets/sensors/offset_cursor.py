"""The Kafka sensors' cursor: which offset ranges to request next, and when an offset is committed.

Pure logic (no Dagster, no broker), so it is tested exhaustively and read in one place. The cursor
is JSON kept by the sensor::

    {"committed": {"risk.events/0": 1200},            # every offset below is processed
     "inflight": {"risk.events:0:1200-1700": {"tp": "risk.events/0", "start": 1200, "end": 1700,
                                              "attempt": 1, "run_key": "risk.events:0:1200-1700"}}}

Rules:

* New data ``[max(committed, last inflight end), end)`` is split into ranges of at most
  ``max_range`` offsets, each requested once under a stable run key ``topic:partition:start-end``.
* A range leaves ``inflight`` when its run succeeded; ``committed`` then advances over the
  contiguous prefix of succeeded ranges only. A failed run therefore never moves ``committed``.
* A failed (or canceled) range is requested again under ``…#attemptN`` (a new run key, since Dagster
  never launches two runs with one key), up to ``max_attempts``; after that it stays inflight and is
  reported as stuck until an operator re-executes the run, and nothing past it is committed.
* The sensor never commits consumer-group offsets; the broker keeps no state of ours.
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

    @property
    def range(self) -> OffsetRange:
        topic, partition = self.tp.rsplit("/", 1)
        return OffsetRange(topic, int(partition), self.start, self.end)


@dataclass
class OffsetCursor:
    """Committed offsets per topic/partition and the ranges requested but not yet succeeded."""

    committed: dict[str, int] = field(default_factory=dict)
    inflight: dict[str, Inflight] = field(default_factory=dict)

    @staticmethod
    def parse(raw: str | None) -> OffsetCursor:
        if not raw:
            return OffsetCursor()
        data = json.loads(raw)
        return OffsetCursor(
            committed={k: int(v) for k, v in data.get("committed", {}).items()},
            inflight={k: Inflight(**v) for k, v in data.get("inflight", {}).items()},
        )

    def dumps(self) -> str:
        return json.dumps(
            {
                "committed": dict(sorted(self.committed.items())),
                "inflight": {k: vars(v) for k, v in sorted(self.inflight.items())},
            },
            sort_keys=True,
        )


@dataclass(frozen=True)
class Request:
    """One run to request: an exact range under a run key."""

    range: OffsetRange
    run_key: str
    attempt: int


@dataclass
class Plan:
    cursor: OffsetCursor
    requests: list[Request]
    stuck: list[str]  # run keys that failed max_attempts times


def plan(
    cursor: OffsetCursor,
    ends: dict[str, int],
    run_states: dict[str, RunState],
    *,
    max_range: int,
    max_attempts: int = 3,
    starts: dict[str, int] | None = None,
) -> Plan:
    """Next cursor and run requests, given partition ``ends`` and the states of inflight runs.

    ``run_states`` maps an inflight run key to ``success``/``failure``/``pending`` (missing =
    pending). ``starts`` gives the first offset of a partition never seen before (default 0).
    """
    committed = dict(cursor.committed)
    inflight = {k: Inflight(**vars(v)) for k, v in cursor.inflight.items()}
    requests: list[Request] = []
    stuck: list[str] = []

    for key, item in inflight.items():
        if item.done:
            continue
        state = run_states.get(item.run_key, "pending")
        if state == "success":
            item.done = True
        elif state == "failure":
            if item.attempt >= max_attempts:
                stuck.append(item.run_key)
                continue
            item.attempt += 1
            item.run_key = f"{key}#attempt{item.attempt}"
            requests.append(Request(item.range, item.run_key, item.attempt))

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
        while frontier < end:
            stop = min(end, frontier + max_range)
            rng = OffsetRange(topic, int(partition), frontier, stop)
            key = rng.key()
            inflight[key] = Inflight(tp, frontier, stop, 1, key)
            requests.append(Request(rng, key, 1))
            frontier = stop
    return Plan(OffsetCursor(committed, inflight), requests, stuck)
