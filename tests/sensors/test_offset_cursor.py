"""The Kafka sensors' cursor planner: exact ranges, commits only after success, retries, restarts."""

from __future__ import annotations

import itertools
import random

from risk_assets.sensors.offset_cursor import OffsetCursor, accept_incarnations, plan

TP = "risk.events/0"


def test_new_data_is_split_into_stable_ranges():
    p = plan(OffsetCursor(), {TP: 2500}, {}, max_range=1000)
    assert [r.run_key for r in p.requests] == [
        "risk.events:0:0-1000",
        "risk.events:0:1000-2000",
        "risk.events:0:2000-2500",
    ]
    assert p.cursor.committed == {TP: 0}
    # Nothing new and nothing finished: no requests, same cursor.
    again = plan(p.cursor, {TP: 2500}, {}, max_range=1000)
    assert again.requests == [] and again.cursor.dumps() == p.cursor.dumps()


def test_commit_waits_for_the_contiguous_prefix():
    p = plan(OffsetCursor(), {TP: 3000}, {}, max_range=1000)
    # The second range succeeds first: nothing can be committed yet.
    p = plan(p.cursor, {TP: 3000}, {"risk.events:0:1000-2000": "success"}, max_range=1000)
    assert p.cursor.committed[TP] == 0 and p.requests == []
    p = plan(p.cursor, {TP: 3000}, {"risk.events:0:0-1000": "success"}, max_range=1000)
    assert p.cursor.committed[TP] == 2000
    assert list(p.cursor.inflight) == ["risk.events:0:2000-3000"]


def test_a_failed_run_never_moves_the_cursor_and_is_retried_under_a_new_key():
    p = plan(OffsetCursor(), {TP: 1000}, {}, max_range=1000)
    states = {"risk.events:0:0-1000": "failure"}
    p = plan(p.cursor, {TP: 1000}, states, max_range=1000, max_attempts=3)
    assert p.cursor.committed[TP] == 0
    assert [r.run_key for r in p.requests] == ["risk.events:0:0-1000#attempt2"]
    assert (p.requests[0].range.start, p.requests[0].range.end) == (0, 1000)
    p = plan(
        p.cursor, {TP: 1000}, {"risk.events:0:0-1000#attempt2": "failure"}, max_range=1000, max_attempts=3
    )
    p = plan(
        p.cursor, {TP: 1000}, {"risk.events:0:0-1000#attempt3": "failure"}, max_range=1000, max_attempts=3
    )
    assert p.requests == [] and p.stuck == ["risk.events:0:0-1000#attempt3"]
    assert p.cursor.committed[TP] == 0
    # An operator re-executes it successfully: the cursor moves on.
    p = plan(p.cursor, {TP: 1500}, {"risk.events:0:0-1000#attempt3": "success"}, max_range=1000)
    assert p.cursor.committed[TP] == 1000
    assert [r.run_key for r in p.requests] == ["risk.events:0:1000-1500"]


def test_cursor_survives_serialization_and_random_completion_orders():
    rng = random.Random(3)
    for _ in range(50):
        cursor, end = OffsetCursor(), 0
        for _tick in range(30):
            end += rng.randint(0, 700)
            states = {k: "success" for k in rng.sample(sorted(cursor.inflight), k=len(cursor.inflight) // 2)}
            p = plan(OffsetCursor.parse(cursor.dumps()), {TP: end}, states, max_range=500)
            cursor = p.cursor
            # Committed + inflight cover [0, end) exactly once: no gap, no overlap.
            spans = sorted((i.start, i.end) for i in cursor.inflight.values())
            assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
            assert (spans[0][0] if spans else end) == cursor.committed[TP]
            assert (spans[-1][1] if spans else end) == end
        # Finish everything: the cursor reaches the end exactly.
        p = plan(cursor, {TP: end}, {i.run_key: "success" for i in cursor.inflight.values()}, max_range=500)
        final = plan(p.cursor, {TP: end}, {}, max_range=500)
        assert final.cursor.committed[TP] == end and not final.cursor.inflight


INC_A = "tansu_cluster/AAAA"
INC_B = "tansu_cluster/BBBB"


def test_run_keys_carry_the_incarnation_and_a_new_one_halts_the_partition():
    """D3: after a broker reset the cursor was past the new end and skipped new data silently, and
    run keys repeated across incarnations."""
    p = plan(OffsetCursor(), {TP: 2000}, {}, max_range=1000, incarnations={TP: INC_A})
    assert [r.run_key for r in p.requests] == ["risk.events@AAAA:0:0-1000", "risk.events@AAAA:0:1000-2000"]
    states = {r.run_key: "success" for r in p.requests}
    p = plan(p.cursor, {TP: 2000}, states, max_range=1000, incarnations={TP: INC_A})
    assert p.cursor.committed == {TP: 2000} and p.cursor.incarnations == {TP: INC_A}

    # The broker restarts empty and receives 700 new events: a new incarnation, end 700 < 2000.
    halted = plan(p.cursor, {TP: 700}, {}, max_range=1000, starts={TP: 0}, incarnations={TP: INC_B})
    assert halted.requests == [] and halted.cursor.dumps() == p.cursor.dumps()
    (incident,) = halted.incidents
    assert f"{INC_A} → {INC_B}" in incident and "committed 2,000" in incident and "[0, 700)" in incident

    # The operator accepts B: the partition restarts at the new log's first offset, new run keys.
    accepted = OffsetCursor.parse(accept_incarnations(p.cursor.dumps(), {TP: INC_B}))
    q = plan(accepted, {TP: 700}, {}, max_range=1000, starts={TP: 0}, incarnations={TP: INC_B})
    assert q.incidents == [] and len(q.accepted) == 1
    assert [r.run_key for r in q.requests] == ["risk.events@BBBB:0:0-700"]
    assert q.cursor.incarnations == {TP: INC_B} and q.cursor.accept == {}
    assert not set(r.run_key for r in q.requests) & set(states)  # never a run key of incarnation A


def test_offsets_going_backwards_on_the_same_incarnation_is_an_incident():
    p = plan(OffsetCursor(), {TP: 1500}, {}, max_range=1000, incarnations={TP: INC_A})
    again = plan(p.cursor, {TP: 900}, {}, max_range=1000, incarnations={TP: INC_A})
    (incident,) = again.incidents
    assert "backwards" in incident and "1,500" in incident and "900" in incident
    assert again.requests == [] and again.cursor.dumps() == p.cursor.dumps()


def test_a_cursor_without_incarnations_adopts_the_current_one():
    old = plan(OffsetCursor(), {TP: 1000}, {}, max_range=1000)  # written before incarnations existed
    p = plan(old.cursor, {TP: 1500}, {}, max_range=1000, incarnations={TP: INC_A})
    assert p.incidents == [] and p.cursor.incarnations == {TP: INC_A}
    assert [r.run_key for r in p.requests] == ["risk.events@AAAA:0:1000-1500"]
    # Retries keep the incarnation in their key.
    p = plan(
        p.cursor,
        {TP: 1500},
        {"risk.events@AAAA:0:1000-1500": "failure"},
        max_range=1000,
        incarnations={TP: INC_A},
    )
    assert [r.run_key for r in p.requests] == ["risk.events@AAAA:0:1000-1500#attempt2"]


def test_retries_keep_the_as_of_time_of_the_first_request():
    p = plan(OffsetCursor(), {TP: 1000}, {}, max_range=1000, incarnations={TP: INC_A}, now_ms=111)
    assert [r.as_of_ms for r in p.requests] == [111]
    p = plan(
        OffsetCursor.parse(p.cursor.dumps()),
        {TP: 1500},
        {"risk.events@AAAA:0:0-1000": "failure"},
        max_range=1000,
        incarnations={TP: INC_A},
        now_ms=222,
    )
    assert sorted((r.run_key, r.as_of_ms) for r in p.requests) == [
        ("risk.events@AAAA:0:0-1000#attempt2", 111),
        ("risk.events@AAAA:0:1000-1500", 222),
    ]


def test_one_range_in_flight_per_partition_growing_with_the_backlog():
    """Issue 13.1 / 15.2: a backlog used to be requested as several ranges at once, whose runs
    then finished out of order. With ``max_inflight=1`` a partition gets its next range only after
    the previous one succeeded, and that range takes everything up to the end (≤ max_range)."""
    other = "risk.events/1"
    p = plan(OffsetCursor(), {TP: 2500, other: 300}, {}, max_range=10_000, max_inflight=1)
    assert [(r.range.partition, r.range.start, r.range.end) for r in p.requests] == [
        (0, 0, 2500),
        (1, 0, 300),
    ]
    # More data while both are running: nothing new is requested.
    p = plan(p.cursor, {TP: 9000, other: 700}, {}, max_range=10_000, max_inflight=1)
    assert p.requests == []
    # Partition 1 finished: its next range is everything new; partition 0 still waits for its run.
    p = plan(
        p.cursor, {TP: 9000, other: 700}, {"risk.events:1:0-300": "success"}, max_range=10_000, max_inflight=1
    )
    assert [r.run_key for r in p.requests] == ["risk.events:1:300-700"]
    assert p.cursor.committed == {TP: 0, other: 300}
    # The max range size still caps one request.
    p = plan(
        p.cursor,
        {TP: 30_000, other: 700},
        {"risk.events:0:0-2500": "success"},
        max_range=10_000,
        max_inflight=1,
    )
    assert [r.run_key for r in p.requests] == ["risk.events:0:2500-12500"]


def test_a_busy_partition_gets_no_request_not_even_a_retry():
    p = plan(OffsetCursor(), {TP: 1000}, {}, max_range=10_000, max_inflight=1)
    (first,) = p.requests
    # A run of this partition is in flight on the instance (a re-execution, say): wait for it.
    held = plan(p.cursor, {TP: 1000}, {first.run_key: "failure"}, max_range=10_000, max_inflight=1, busy={TP})
    assert held.requests == [] and held.cursor.inflight[first.run_key].attempt == 1
    never_seen = plan(OffsetCursor(), {TP: 1000}, {}, max_range=10_000, max_inflight=1, busy={TP})
    assert never_seen.requests == [] and never_seen.cursor.inflight == {}
    retried = plan(held.cursor, {TP: 1000}, {first.run_key: "failure"}, max_range=10_000, max_inflight=1)
    assert [r.run_key for r in retried.requests] == [f"{first.run_key}#attempt2"]


def test_a_partition_the_stream_worker_holds_gets_no_new_range_but_its_failed_range_is_retried():
    p = plan(OffsetCursor(), {TP: 1000}, {}, max_range=10_000, max_inflight=1)
    (first,) = p.requests
    # The worker took the partition's lease while the sensor's range was running; the run failed.
    held = plan(p.cursor, {TP: 3000}, {first.run_key: "failure"}, max_range=10_000, max_inflight=1, hold={TP})
    assert [r.run_key for r in held.requests] == [f"{first.run_key}#attempt2"]  # the worker waits for it
    done = plan(held.cursor, {TP: 3000}, {held.requests[0].run_key: "success"}, max_range=10_000,
                max_inflight=1, hold={TP})  # fmt: skip
    assert done.requests == [] and done.cursor.committed == {TP: 1000}  # nothing new while held
    assert plan(OffsetCursor(), {TP: 1000}, {}, max_range=10_000, hold={TP}).requests == []
