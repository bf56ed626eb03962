"""The shared cursor/lease of the stream worker and the sensors, on a real Redis."""

from __future__ import annotations

from risk_assets.features.redis_client import connect
from risk_assets.streaming.handoff import Handoff

TP = "risk.events/0"
INC = "cluster/topic-a"


def test_lease_commit_and_sensor_claims(session_stack, key_prefix):
    h = Handoff(connect(session_stack.redis_url), namespace=key_prefix.rstrip(":"))
    # The sensor requests [0, 500) and has not finished it; a worker then takes the lease.
    assert h.sensor_claim(TP, now_ms=1_000, frontier=500) == ""
    assert h.sensor_sync(TP, committed=0, frontier=500, incarnation=INC) == 0
    assert h.acquire(TP, "w1", now_ms=2_000, lease_ms=10_000) == ""
    assert h.read(TP).sensor_outstanding  # the worker waits for the sensor's range
    assert h.sensor_claim(TP, now_ms=3_000, frontier=900) == "w1"  # no new range while the lease lives
    assert h.acquire(TP, "w2", now_ms=3_000, lease_ms=10_000) == "w1"  # one worker at a time
    # The sensor's run succeeded: its sync raises the shared cursor; the worker continues from there.
    assert h.sensor_sync(TP, committed=500, frontier=500, incarnation=INC) == 500
    assert not h.read(TP).sensor_outstanding
    assert h.set_pending(TP, "w1", 4_000, 500, 800, as_of_ms=4_000)
    assert h.commit(TP, "w2", 4_000, 500, 800, INC) == ("lost_lease", "500")  # not the holder
    assert h.commit(TP, "w1", 4_000, 400, 800, INC) == ("not_contiguous", "500")
    assert h.commit(TP, "w1", 4_000, 500, 800, "cluster/topic-b") == ("incarnation", INC)
    assert h.commit(TP, "w1", 4_000, 500, 800, INC) == ("ok", "800")
    state = h.read(TP)
    assert state.committed == 800 and state.pending is None and state.live_owner(5_000) == "w1"
    # An expired lease: the holder can no longer commit, another worker (or the sensor) takes over.
    assert h.commit(TP, "w1", 20_000, 800, 900, INC)[0] == "lost_lease"
    assert h.sensor_claim(TP, now_ms=20_000, frontier=900) == ""
    assert h.acquire(TP, "w2", now_ms=20_001, lease_ms=10_000) == ""
    assert h.release(TP, "w2") and h.read(TP).live_owner(20_002) == ""
    # An operator accepted a new incarnation in the sensor: its offsets replace the old log's.
    assert h.sensor_sync(TP, committed=0, frontier=0, incarnation="cluster/topic-b") == 0
    assert h.read(TP).incarnation == "cluster/topic-b"
