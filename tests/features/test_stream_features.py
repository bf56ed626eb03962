"""The stream feature engine against a real Redis: stream values == batch values, replays, lateness.

Nothing is mocked: the state lives in the session Redis under the test's own key prefix, and the
reference values come from the batch engine over the same simulated events.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from risk_assets.features.batch import compute_feature_groups
from risk_assets.features.groups import FEATURE_GROUPS, GROUPS_BY_NAME
from risk_assets.features.spec import Aggregate, FeatureGroup, Ratio, _ms
from risk_assets.features.stream import CREATED_TS, output_schema, process_events
from risk_assets.features.stream_state import (
    STATE_MARGIN,
    STREAM_MAX_WINDOW,
    StreamState,
    stream_groups,
)
from risk_assets.simulator.config import SimConfig
from risk_assets.simulator.generator import generate

STREAM = stream_groups(FEATURE_GROUPS)
ATO_IP = GROUPS_BY_NAME["ato_ip"]
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def state(session_stack, key_prefix: str) -> Iterator[StreamState]:
    with StreamState.from_url(session_stack.redis_url, STREAM, namespace=key_prefix) as s:
        s.mark_complete()  # a new deployment: no history before the test's events
        yield s
        s.delete_all()


@pytest.fixture(scope="module")
def sim() -> tuple[SimConfig, pl.DataFrame]:
    """3 busy hours, ~25k events, in ingest order with Kafka-like offsets (one partition)."""
    cfg = SimConfig(hours=3, events_per_day=200_000, users=3000, start=datetime(2026, 11, 1, 10, tzinfo=UTC))
    events = generate(cfg).events.sort("ingest_ts", "event_id")
    events = events.with_columns(
        pl.lit(0, pl.Int32).alias("_partition"), pl.int_range(pl.len(), dtype=pl.Int64).alias("_offset")
    )
    return cfg, events


def _login(i: int, ts: datetime, ingest: datetime, ip: str = "10.0.0.1", success: bool = True, **kw) -> dict:
    return {
        "event_id": f"e{i:04d}",
        "event_type": "login",
        "event_ts": ts,
        "ingest_ts": ingest,
        "user_id": kw.get("user", f"u{i % 3}"),
        "device_id": kw.get("device", "d1"),
        "ip": ip,
        "success": success,
        "_partition": 0,
        "_offset": i,
    }


def _frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema_overrides={
            "event_ts": pl.Datetime("ms", "UTC"),
            "ingest_ts": pl.Datetime("ms", "UTC"),
            "_partition": pl.Int32,
            "_offset": pl.Int64,
        },
    )


def _feature_windows(group: FeatureGroup) -> dict[str, int]:
    """Longest window (ms) each feature depends on (a ratio: its operands')."""
    out: dict[str, int] = {}
    for f in group.features:
        if isinstance(f, Aggregate):
            out[f.name] = _ms(f.window)
    for f in group.features:
        if isinstance(f, Ratio):
            out[f.name] = max(out[f.numerator], out[f.denominator])
    return out


def _equal(a: pl.Expr, b: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    if dtype.is_float():
        close = (a - b).abs() <= 1e-9 * pl.max_horizontal(a.abs(), b.abs())
        return (a.eq_missing(b) | close).fill_null(False)
    return a.eq_missing(b)


# ---------------------------------------------------------------------------------------------


def test_stream_groups_are_the_short_label_free_ones():
    names = {g.name for g in STREAM}
    assert names == {"ato_ip", "card_testing_device", "card_testing_ip"}
    assert all(not g.needs_labels and g.max_window <= STREAM_MAX_WINDOW for g in STREAM)
    with pytest.raises(ValueError, match="do not stream"):
        StreamState(None, [GROUPS_BY_NAME["ato_device"]])  # type: ignore[arg-type]


def test_stream_equals_batch_on_simulated_traffic(state, sim, capsys):
    """Every feature of every stream row equals the batch value whenever its window was complete."""
    cfg, events = sim
    chunk = 3000
    produced: dict[str, list[pl.DataFrame]] = {g.name: [] for g in STREAM}
    for b, i in enumerate(range(0, events.height, chunk)):
        out = process_events(events.slice(i, chunk), None, state)
        for name, rows in out.items():
            assert rows.schema == pl.Schema(output_schema(GROUPS_BY_NAME[name]))
            produced[name].append(rows.with_columns(pl.lit(b).alias("_batch")))
    batch_of = events.select("event_id", (pl.col("_offset") // chunk).alias("_ebatch"))
    end = events["event_ts"].max() + timedelta(milliseconds=1)
    reference = compute_feature_groups(STREAM, events, cfg.start, end)

    report = []
    for g in STREAM:
        keys = list(g.entity.keys)
        rows = pl.concat(produced[g.name])
        ref = reference[g.name]
        # Every as-of time of the batch engine was produced by the stream, and nothing else.
        assert (
            rows.select(*keys, "event_ts")
            .unique()
            .sort(pl.all())
            .equals(ref.select(*keys, "event_ts").sort(pl.all()))
        )
        # Lateness: for each row, the latest event of the entity at or before t that arrived in a
        # LATER micro-batch (unknown when the row was computed).
        gev = (
            events.filter(
                pl.col("event_type").is_in(list(g.source_event_types)),
                *[pl.col(k).is_not_null() for k in keys],
            )
            .join(batch_of, on="event_id")
            .select(*keys, pl.col("event_ts").alias("_ets"), "_ebatch")
        )
        late = (
            rows.with_row_index("_row")
            .select("_row", *keys, "event_ts", "_batch")
            .join(gev, on=keys)
            .filter((pl.col("_ebatch") > pl.col("_batch")) & (pl.col("_ets") <= pl.col("event_ts")))
            .group_by("_row")
            .agg(pl.col("_ets").max().alias("_late_ts"))
        )
        rows = rows.with_row_index("_row").join(late, on="_row", how="left")
        both = rows.join(ref, on=[*keys, "event_ts"], how="left", suffix="_ref")
        assert both.height == rows.height
        gap = (pl.col("event_ts") - pl.col("_late_ts")).dt.total_milliseconds()
        windows = _feature_windows(g)
        checks, completes = [], []
        for f, dtype in g.schema().items():
            if f in (*keys, "event_ts"):
                continue
            complete = pl.col("_late_ts").is_null() | (gap >= windows[f])
            completes.append(complete.alias(f))
            checks.append((~complete | _equal(pl.col(f), pl.col(f + "_ref"), dtype)).alias(f))
        ok = both.select(checks)
        bad = [c for c in ok.columns if not ok[c].all()]
        assert not bad, f"{g.name}: stream != batch on complete windows for {bad}"
        row_complete = both.select(pl.col("_late_ts").is_null() | (gap >= _ms(g.max_window))).to_series()
        raw_equal = both.select(
            pl.all_horizontal(
                [_equal(pl.col(f), pl.col(f + "_ref"), d) for f, d in g.schema().items() if f in windows]
            )
        ).to_series()
        assert raw_equal.filter(row_complete).all()
        compared = sum(both.select(completes)[c].sum() for c in windows)
        report.append(
            f"{g.name}: {rows.height} rows, {1 - row_complete.mean():.2%} excluded (window incomplete), "
            f"complete rows equal {raw_equal.filter(row_complete).mean():.2%}, "
            f"raw equal incl. late {raw_equal.mean():.2%}, feature values compared {compared}"
        )
        assert row_complete.mean() > 0.8  # the comparison covers most rows …
        assert not row_complete.all() or g.name != "ato_ip"  # … and lateness really occurs
    with capsys.disabled():
        print("\n" + "\n".join(report))


def test_replay_gives_identical_rows_and_unchanged_state(state, sim):
    _, events = sim
    a, b, c = events.slice(0, 2000), events.slice(2000, 2000), events.slice(4000, 2000)
    process_events(a, None, state)
    first = process_events(b, None, state)

    def snapshot() -> dict[str, list]:
        ips = b["ip"].unique().drop_nulls().sort().to_list()[:200]
        devices = b["device_id"].unique().drop_nulls().sort().to_list()[:200]
        return {
            **{f"ip:{k}": state.members("ip", k) for k in ips},
            **{f"device:{k}": state.members("device", k) for k in devices},
        }

    before = snapshot()
    again = process_events(b, None, state)
    assert before == snapshot()
    for name in first:
        assert first[name].height > 0 or name != "ato_ip"
        assert again[name].equals(first[name])
    # A replay after later batches still sees exactly what the first run saw (visibility rule).
    process_events(c, None, state)
    later = process_events(b, None, state)
    for name in first:
        assert later[name].equals(first[name])


def test_out_of_order_inside_a_batch_is_exact(state):
    ts = [T0 + timedelta(minutes=m) for m in (0, 1, 2, 3, 30)]
    rows = [_login(i, t, T0 + timedelta(minutes=31), success=i % 2 == 0) for i, t in enumerate(ts)]
    shuffled = _frame([rows[k] for k in (3, 0, 4, 2, 1)])
    out = process_events(shuffled, [ATO_IP], state)["ato_ip"]
    ref = compute_feature_groups([ATO_IP], shuffled, T0, T0 + timedelta(hours=1))["ato_ip"]
    assert out.drop(CREATED_TS).equals(ref)
    assert out["login_count_10m"].to_list() == [1, 2, 3, 4, 1]
    assert out[CREATED_TS].to_list() == [T0 + timedelta(minutes=31)] * 5


def test_late_event_across_batches_follows_the_policy(state):
    ing = [T0 + timedelta(minutes=m) for m in (2, 3, 10, 11)]
    e_new = _login(0, T0 + timedelta(minutes=2), ing[0])
    e_newer = _login(1, T0 + timedelta(minutes=3), ing[1], success=False)
    e_late = _login(2, T0 + timedelta(minutes=1), ing[2])  # arrives after rows at 2 and 3 were emitted
    first = process_events(_frame([e_new, e_newer]), [ATO_IP], state)["ato_ip"]
    assert first["login_count_10m"].to_list() == [1, 2]
    late = process_events(_frame([e_late]), [ATO_IP], state)["ato_ip"]
    # The late event gets its own row from everything known now; events after it do not count.
    assert late["event_ts"].to_list() == [T0 + timedelta(minutes=1)]
    assert late["login_count_10m"].to_list() == [1]
    assert late[CREATED_TS].to_list() == [ing[2]]
    # Rows already emitted are not recomputed; the next event of the entity sees the late one.
    nxt = process_events(_frame([_login(3, T0 + timedelta(minutes=4), ing[3])]), [ATO_IP], state)["ato_ip"]
    assert nxt["login_count_10m"].to_list() == [4]
    everything = _frame([e_new, e_newer, e_late, _login(3, T0 + timedelta(minutes=4), ing[3])])
    ref = compute_feature_groups([ATO_IP], everything, T0, T0 + timedelta(hours=1))["ato_ip"]
    assert ref.filter(pl.col("event_ts") == T0 + timedelta(minutes=4)).equals(nxt.drop(CREATED_TS))
    # The row at minute 3 emitted before the late event stays as it was (batch recompute: 3).
    assert ref.filter(pl.col("event_ts") == T0 + timedelta(minutes=3))["login_count_10m"].item() == 3
    assert first.filter(pl.col("event_ts") == T0 + timedelta(minutes=3))["login_count_10m"].item() == 2


def test_state_is_idempotent_trimmed_and_expiring(state):
    retention = STREAM_MAX_WINDOW + STATE_MARGIN
    old = _login(0, T0, T0)
    assert state.add(_frame([old])) == 1
    assert state.add(_frame([old])) == 1  # sent again …
    assert len(state.members("ip", "10.0.0.1")) == 1  # … but stored once
    ttl = state.client.pttl(state.key("ip", "10.0.0.1"))
    assert 0 < ttl <= retention / timedelta(milliseconds=1)
    # A re-sent event (same id, another offset) is a second member but read back once.
    resent = {**old, "_offset": 99, "ingest_ts": T0 + timedelta(seconds=5)}
    state.add(_frame([resent]))
    assert len(state.members("ip", "10.0.0.1")) == 2
    out = process_events(
        _frame([_login(1, T0 + timedelta(minutes=1), T0 + timedelta(minutes=1))]), [ATO_IP], state
    )
    assert out["ato_ip"]["login_count_10m"].item() == 2
    # An event newer than the retention trims everything older.
    far = _login(2, T0 + retention + timedelta(minutes=5), T0 + retention + timedelta(minutes=5))
    state.add(_frame([far]))
    assert len(state.members("ip", "10.0.0.1")) == 1


def test_empty_batch_and_unknown_group(state):
    out = process_events(_frame([_login(0, T0, T0)]).clear(), None, state)
    assert set(out) == {g.name for g in STREAM}
    assert all(f.height == 0 for f in out.values())
    with pytest.raises(ValueError, match="not part of the stream state"):
        process_events(_frame([_login(0, T0, T0)]), [GROUPS_BY_NAME["ato_user"]], state)


def test_offset_windows_stream_equal_batch(session_stack, key_prefix, sim):
    """A stream group whose features all have offsets (availability delays): the state keeps
    window + offset of events per entity, and every row whose delayed window was complete equals
    the batch value."""
    from risk_assets.features.spec import IP, count, distinct_count, hours, max_of, minutes, time_since_last

    group = FeatureGroup(
        name="ip_delayed", entity=IP, description="delayed ip windows", owner="tests",
        source_event_types=("login", "withdrawal"),
        features=(
            count("logins_30m_o1h", minutes(30), offset=hours(1)),
            distinct_count("users_1h_o30m", "user_id", hours(1), offset=minutes(30)),
            max_of("usd_max_20m_o10m", "amount_usd", minutes(20), offset=minutes(10)),
            time_since_last("since_1h_o5m", hours(1), offset=minutes(5)),
        ),
    )  # fmt: skip
    assert group.max_window == timedelta(hours=1, minutes=30)
    cfg, events = sim
    chunk = 4000
    with StreamState.from_url(session_stack.redis_url, [group], namespace=key_prefix + "off") as st:
        assert st.max_window_ms == _ms(group.max_window)
        st.mark_complete()
        parts = []
        for b, i in enumerate(range(0, events.height, chunk)):
            out = process_events(events.slice(i, chunk), None, st)[group.name]
            parts.append(out.with_columns(pl.lit(b).alias("_batch")))
        st.delete_all()
    rows = pl.concat(parts)
    end = events["event_ts"].max() + timedelta(milliseconds=1)
    ref = compute_feature_groups([group], events, cfg.start, end)[group.name]
    keys = ["ip"]
    batch_of = events.select("event_id", (pl.col("_offset") // chunk).alias("_ebatch"))
    gev = (
        events.filter(pl.col("event_type").is_in(["login", "withdrawal"]), pl.col("ip").is_not_null())
        .join(batch_of, on="event_id")
        .select(*keys, pl.col("event_ts").alias("_ets"), "_ebatch")
    )
    late = (
        rows.with_row_index("_row")
        .join(gev, on=keys)
        .filter((pl.col("_ebatch") > pl.col("_batch")) & (pl.col("_ets") <= pl.col("event_ts")))
        .group_by("_row")
        .agg(pl.col("_ets").max().alias("_late_ts"))
    )
    both = (
        rows.with_row_index("_row")
        .join(late, on="_row", how="left")
        .join(ref, on=[*keys, "event_ts"], how="left", suffix="_ref")
    )
    gap = (pl.col("event_ts") - pl.col("_late_ts")).dt.total_milliseconds()
    complete = both.select(pl.col("_late_ts").is_null() | (gap >= _ms(group.max_window))).to_series()
    equal = both.select(
        pl.all_horizontal(
            [_equal(pl.col(f), pl.col(f + "_ref"), group.schema()[f]) for f in group.feature_names]
        )
    ).to_series()
    assert rows.height == ref.height > 1000
    assert complete.mean() > 0.8
    assert equal.filter(complete).all()
    assert both["logins_30m_o1h"].max() > 0 and both["users_1h_o30m"].max() > 1
