"""No poison pill: every message that cannot be decoded becomes a counted dead letter (D4, D5)."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from risk_assets.events.schema import MAX_EVENT_TS_MS
from risk_assets.ingest.archive import EVENTS, build_archive, decode_messages
from tests.ingest.test_archive import H0, MIN, batch_of, login, ms

INVALID_UTF8 = b'{"event_type": "login", "event_id": "\xff\xfe", "event_ts": 1}'


def huge_ts(i: int, event_ts: int) -> bytes:
    event = msgspec.json.decode(login(i, ms(H0)))
    event["event_ts"] = event_ts
    return msgspec.json.encode(event)


def test_invalid_utf8_and_huge_timestamps_are_dead_letters_not_failures():
    items = [(login(i, ms(H0) + i * MIN), ms(H0) + i * MIN + 100) for i in range(5)]
    items.insert(1, (INVALID_UTF8, ms(H0) + MIN))
    items.insert(3, (huge_ts(90, 2**63), ms(H0) + 2 * MIN))
    items.insert(4, (huge_ts(91, 2**64 - 1), ms(H0) + 2 * MIN))
    items.insert(5, (huge_ts(92, MAX_EVENT_TS_MS + 1), ms(H0) + 2 * MIN))
    result = build_archive(batch_of(items), EVENTS, [H0])
    assert result.records[H0]["event_id"].to_list() == [f"ev-{i}" for i in range(5)]
    assert dict(result.reasons) == {"invalid_utf8": 1, "invalid_value": 3}
    dead = result.dead_letters[H0]
    assert dead["kafka_offset"].to_list() == [1, 3, 4, 5]
    assert dead["payload"][0] == INVALID_UTF8
    # Counted in and out: every message is a record or a dead letter, exactly once.
    assert result.record_count + result.dead_letter_count == len(items)


def test_stream_future_bound_rejects_a_producer_clock_days_ahead():
    as_of = ms(datetime(2026, 3, 1, 12, tzinfo=UTC))
    two_days = 2 * 24 * 3600_000
    # Two hours of backlog (a replay), then one producer whose clock runs two days ahead: event time
    # and Kafka timestamp both in the future.
    items = [
        (login(i, as_of - 2 * 3600_000 + i * 15 * MIN), as_of - 2 * 3600_000 + i * 15 * MIN + 5)
        for i in range(9)
    ]
    items.append((login(99, as_of + two_days), as_of + two_days + 5))
    decoded = decode_messages(batch_of(items), EVENTS, not_after_ms=as_of + 5 * MIN)
    assert decoded.valid["event_id"].to_list() == [f"ev-{i}" for i in range(9)]
    assert [(i, r) for i, r, _ in decoded.rejected] == [(9, "future_timestamp")]
    # The Kafka timestamp alone running ahead is enough.
    ahead = [(login(7, as_of), as_of + two_days)]
    assert [
        r for _, r, _ in decode_messages(batch_of(ahead), EVENTS, not_after_ms=as_of + 5 * MIN).rejected
    ] == ["future_timestamp"]
