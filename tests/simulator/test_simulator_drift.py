"""risk-sim drift scenarios: each moves the observable it claims, carries its ground truth, and leaves
everything outside its window (and, for the market event, the regular traffic inside it) unchanged."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from risk_assets.lake import Lake
from risk_assets.monitoring.drift import DEFAULT_THRESHOLDS, column_drift
from risk_assets.simulator import SimConfig, build_population, generate, generate_chunk
from risk_assets.simulator.cli import main as cli_main
from risk_assets.simulator.drift import (
    PRESETS,
    DriftScenario,
    drift_manifest,
    drift_population,
    market_users,
    parse_scenario,
)
from risk_assets.simulator.world import COUNTRIES, NEW_ATTACK_NETWORKS
from risk_assets.simulator.writers import DRIFT_POPULATION_PATH, DRIFT_SCENARIOS_PATH, write_history

DAY = timedelta(days=1)
# Default fraud rates: the claims must hold at the rates the demo runs with, not only boosted ones.
# At a quarter of the default volume the day-to-day noise of every observable stays below "drift".
BASE = SimConfig(seed=31, hours=48, users=10_000, events_per_day=250_000)
WINDOW = (BASE.start + DAY, BASE.start + 2 * DAY)


@pytest.fixture(scope="module")
def baseline():
    return generate(BASE)


def _attributed(data, name: str) -> pl.DataFrame:
    gt = data.ground_truth.filter(pl.col("drift_scenario") == name)
    return data.events.join(gt.select("event_id", "is_fraud", "scenario", "case_id"), on="event_id")


@pytest.mark.parametrize(("kind", "target"), list(PRESETS), ids=[f"{k}-{t}" for k, t in PRESETS])
def test_each_scenario_moves_its_observable_and_nothing_before_it(baseline, kind, target):
    scenario = DriftScenario(kind, *WINDOW, target=target)
    data = generate(BASE.with_(drift_scenarios=(scenario,)))

    # The claimed observable, a day before vs the day of the window: the monitors' drift category.
    obs = scenario.observable
    before = pl.col("event_ts") < scenario.start
    pre, post = obs.slice(data.events.filter(before)), obs.slice(data.events.filter(~before))
    drift = column_drift(pre, post)
    assert drift.category == "drift", (kind, target, drift)
    assert drift.psi >= DEFAULT_THRESHOLDS.psi_drift and drift.pvalue < DEFAULT_THRESHOLDS.alpha
    # Without the scenario the same two days do not drift on that observable.
    quiet = column_drift(
        obs.slice(baseline.events.filter(before)), obs.slice(baseline.events.filter(~before))
    )
    assert quiet.category == "no_drift", (kind, target, quiet)

    # Nothing changes before the window.
    for frame in ("events", "ground_truth"):
        assert getattr(data, frame).filter(before).equals(getattr(baseline, frame).filter(before))

    # Ground truth: the attributed events are inside the window (cases may spill a little) and are
    # exactly the target's cases (attacks) or unlabelled legit events (market event).
    attributed = _attributed(data, scenario.name)
    assert attributed.height > 0
    assert attributed["event_ts"].min() >= scenario.start
    assert (
        data.ground_truth.filter(before)["drift_scenario"].null_count()
        == data.ground_truth.filter(before).height
    )
    labelled = attributed["event_id"].is_in(data.labels["event_id"].implode())
    if scenario.is_fraud:
        assert attributed["is_fraud"].all() and (attributed["scenario"] == target).all()
        started = pl.col("event_ts").min().over("case_id") >= scenario.start
        target_cases = data.ground_truth.filter((pl.col("scenario") == target) & started)
        assert set(attributed["case_id"]) == set(target_cases["case_id"])
        assert labelled.any()
    else:  # not fraud: no labels, no fraud, and fraud and labels exactly as without it
        assert not attributed["is_fraud"].any() and not labelled.any()
        assert data.labels.equals(baseline.labels)
        fraud = pl.col("is_fraud")
        assert data.ground_truth.filter(fraud).equals(baseline.ground_truth.filter(fraud))


def test_attack_scenarios_do_what_they_say(baseline):
    surge = DriftScenario("attack_surge", *WINDOW)  # card testing × 20
    network = DriftScenario("new_attack_network", *WINDOW, target="ato", country="RU", name="ato_from_ru")
    data = generate(BASE.with_(drift_scenarios=(surge, network)))

    # Surge: the window holds ~20× the usual card-testing cases.
    cases = _attributed(data, "attack_surge")["case_id"].n_unique()
    usual = baseline.ground_truth.filter(pl.col("scenario") == "card_testing")["case_id"].n_unique() / 2
    assert 12 * usual < cases < 30 * usual

    # New network: every ATO case of the window runs from the new country's ASNs on devices never seen
    # before the window (a new device family), one per case.
    ato = _attributed(data, "ato_from_ru")
    assert ato["case_id"].n_unique() > 20
    assert set(ato["ip_asn"]) <= set(NEW_ATTACK_NETWORKS["RU"]) and (ato["ip_country"] == "RU").all()
    earlier = data.events.filter(pl.col("event_ts") < network.start)["device_id"].implode()
    assert not ato["device_id"].is_in(earlier).any()
    assert (ato.group_by("case_id").agg(pl.col("device_id").n_unique())["device_id"] == 1).all()

    # Amount shift: card tests × 20 ($10–60 instead of $0.5–3); the cash-out purchases unchanged.
    shift = DriftScenario("attack_amount_shift", *WINDOW)
    shifted = _attributed(generate(BASE.with_(drift_scenarios=(shift,))), "attack_amount_shift")
    tests = shifted.filter((pl.col("event_type") == "card_payment") & (pl.col("amount_usd") < 100))
    assert tests.height > 50 and tests["amount_usd"].min() >= 9.9 and tests["amount_usd"].max() <= 60.01


def test_market_event_adds_activity_without_touching_regular_traffic(baseline):
    market = DriftScenario("legit_market_event", *WINDOW)
    data = generate(BASE.with_(drift_scenarios=(market,)))
    extra = _attributed(data, "legit_market_event")
    regular = data.events.join(
        data.ground_truth.filter(pl.col("drift_scenario").is_null()).select("event_id"), on="event_id"
    )
    assert regular.equals(baseline.events)  # same events, same ids, in the window too

    pop = build_population(BASE)
    affected = pop.user_id.gather(market_users(BASE.seed, market, pop))
    assert 0.25 < affected.len() / BASE.users < 0.35
    assert extra["user_id"].is_in(affected.implode()).all()
    assert set(extra["event_type"]) == {"login", "deposit", "withdrawal", "p2p_trade"}
    # The affected users roughly double their activity in the window ...
    users = pl.col("user_id").is_in(affected.implode())
    window_regular = regular.filter(users & (pl.col("event_ts") >= market.start))
    assert 0.8 < extra.height / window_regular.height < 2.0

    # ... at odd hours: the extra activity ignores the users' local day (a quarter of it falls between
    # midnight and 6 am in their home time zone), the regular activity follows it.
    offsets = pl.DataFrame(
        {
            "user_id": pop.user_id,
            "offset": np.array([c.utc_offset for c in COUNTRIES])[pop.country],
        }
    )

    def night_share(frame: pl.DataFrame) -> float:
        local = frame.join(offsets, on="user_id").select(
            (pl.col("event_ts").dt.hour() + pl.col("offset")) % 24
        )
        return float((local.to_series() < 6).mean())

    assert 0.2 < night_share(extra) < 0.3 and night_share(window_regular) < 0.1


def test_manifest_and_population_record_every_scenario():
    scenarios = (
        DriftScenario("attack_surge", BASE.start + DAY, BASE.start + DAY + timedelta(hours=12), target="ato"),
        DriftScenario("new_attack_network", *WINDOW, name="ct_from_id"),
        DriftScenario("attack_amount_shift", BASE.start + 6 * timedelta(hours=1), BASE.start + DAY),
        DriftScenario("legit_market_event", *WINDOW, users_fraction=0.1, rate_factor=2.0, name="crash"),
    )
    cfg = BASE.with_(drift_scenarios=scenarios)
    data = generate(cfg)
    manifest = drift_manifest(scenarios)
    assert manifest["scenario"].to_list() == ["attack_surge", "ct_from_id", "attack_amount_shift", "crash"]
    assert manifest["is_fraud"].to_list() == [True, True, True, False]
    assert manifest["target"].to_list() == ["ato", "card_testing", "card_testing", None]
    assert manifest["start"].to_list()[0] == datetime(2026, 11, 2, tzinfo=UTC)
    assert manifest["end"].to_list()[0] == datetime(2026, 11, 2, 12, tzinfo=UTC)
    params = [json.loads(p) for p in manifest["parameters"]]
    assert (
        params[0]["rate_factor"] == 20.0
        and params[1]["country"] == "ID"
        and params[3]["users_fraction"] == 0.1
    )
    assert manifest.select("observable_event_type", "observable_column", "observable_segment").row(2) == (
        "card_payment",
        "amount_usd",
        "hosting_asn",
    )

    pop = build_population(cfg)
    population = drift_population(cfg.seed, scenarios, pop, data.events, data.ground_truth)
    for s in scenarios:
        mine = population.filter(pl.col("scenario") == s.name)
        attributed = _attributed(data, s.name)
        observed_users = mine.filter(
            (pl.col("entity_type") == "user_id") & pl.col("first_seen").is_not_null()
        )
        assert set(observed_users["entity_id"]) == set(attributed["user_id"]), s.name
        devices = mine.filter(pl.col("entity_type") == "device_id")["entity_id"]
        assert set(devices) == set(attributed["device_id"]), s.name
        assert (mine["first_seen"].drop_nulls() >= s.start).all(), s.name
        first = mine.filter(pl.col("first_seen").is_not_null())["first_seen"].min()
        assert first < s.end, s.name
    crash_users = population.filter((pl.col("scenario") == "crash") & (pl.col("entity_type") == "user_id"))
    assert set(crash_users["entity_id"]) == set(pop.user_id.gather(market_users(cfg.seed, scenarios[3], pop)))
    new_net = population.filter(
        (pl.col("scenario") == "ct_from_id") & pl.col("entity_type").is_in(["ip_asn", "ip_country"])
    )
    assert {str(a) for a in NEW_ATTACK_NETWORKS["ID"]} | {"ID"} == set(new_net["entity_id"])


def test_history_writes_the_drift_ground_truth(tmp_path):
    scenarios = (
        DriftScenario("attack_surge", BASE.start + timedelta(hours=3), BASE.start + timedelta(hours=5)),
    )
    cfg = BASE.with_(hours=6, drift_scenarios=scenarios, events_per_day=40_000, users=1_500)
    lake = Lake(str(tmp_path))
    write_history(cfg, lake, workers=2)
    data = generate(cfg)
    manifest = pl.read_parquet(tmp_path / DRIFT_SCENARIOS_PATH)
    assert manifest.equals(drift_manifest(scenarios))
    population = pl.read_parquet(tmp_path / DRIFT_POPULATION_PATH)
    expected = drift_population(cfg.seed, scenarios, build_population(cfg), data.events, data.ground_truth)
    assert population.equals(expected) and population.height > 0
    truth = pl.read_parquet(tmp_path / "sim_ground_truth" / "**" / "*.parquet", hive_partitioning=True)
    assert (
        truth.filter(pl.col("drift_scenario") == "attack_surge").height
        == (data.ground_truth.filter(pl.col("drift_scenario") == "attack_surge").height)
        > 0
    )

    # A later run without scenarios leaves no stale drift ground truth behind.
    write_history(cfg.with_(drift_scenarios=()), lake, workers=1)
    assert pl.read_parquet(tmp_path / DRIFT_SCENARIOS_PATH).height == 0
    assert pl.read_parquet(tmp_path / DRIFT_POPULATION_PATH).height == 0


def test_scenario_hours_are_reproducible_alone():
    scenarios = (
        DriftScenario("new_attack_network", *WINDOW),
        DriftScenario("legit_market_event", *WINDOW, rate_factor=3.0),
    )
    cfg = BASE.with_(
        drift_scenarios=scenarios, users=1_000, events_per_day=30_000, card_testing_cases_per_m=2_000
    )
    pop = build_population(cfg)
    hour = cfg.start + DAY + timedelta(hours=5)
    inside = generate(cfg)
    alone = generate(cfg.with_(start=hour, hours=1))
    chunk = generate_chunk(cfg, pop, int(hour.timestamp() * 1000))
    at_hour = pl.col("event_ts").dt.truncate("1h") == hour
    in_chunk = inside.ground_truth.filter(at_hour).join(alone.ground_truth, on="event_id", how="anti")
    assert in_chunk.filter(pl.col("case_id").is_null()).height == 0  # only cases from the hour before
    assert alone.events.equals(chunk.events)
    assert alone.events.filter(at_hour).equals(
        inside.events.join(alone.events.select("event_id"), on="event_id").filter(at_hour)
    )
    assert alone.ground_truth["drift_scenario"].drop_nulls().n_unique() == 2


def test_bad_scenarios_are_rejected_with_clear_errors(tmp_path, capsys):
    start = BASE.start
    with pytest.raises(ValueError, match="unknown drift kind"):
        DriftScenario("flash_crash", start, start + DAY)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="target must be one of"):
        DriftScenario("attack_amount_shift", start, start + DAY, target="ato")
    with pytest.raises(ValueError, match="target must be one of"):
        DriftScenario("legit_market_event", start, start + DAY, target="ato")
    with pytest.raises(ValueError, match="whole hours"):
        DriftScenario("attack_surge", start + timedelta(minutes=30), start + DAY)
    with pytest.raises(ValueError, match="must be after"):
        DriftScenario("attack_surge", start + DAY, start + DAY)
    with pytest.raises(ValueError, match="country"):
        DriftScenario("new_attack_network", start, start + DAY, country="US")
    with pytest.raises(ValueError, match="factors"):
        DriftScenario("attack_surge", start, start + DAY, rate_factor=0.0)
    a = DriftScenario("attack_surge", start, start + DAY)
    with pytest.raises(ValueError, match="overlap on target card_testing"):
        BASE.with_(
            drift_scenarios=(
                a,
                DriftScenario("attack_amount_shift", start + timedelta(hours=23), start + 2 * DAY),
            )
        )
    with pytest.raises(ValueError, match="unique"):
        BASE.with_(drift_scenarios=(a, DriftScenario("attack_surge", start + DAY, start + 2 * DAY)))
    # Different targets, or a market event, may overlap anything.
    BASE.with_(drift_scenarios=(a, DriftScenario("attack_surge", start, start + DAY, target="ato", name="b")))

    assert parse_scenario("attack_surge:start=1.5,days=0.5,target=ato,rate_factor=8", start) == DriftScenario(
        "attack_surge", start + 1.5 * DAY, start + 2 * DAY, target="ato", rate_factor=8.0
    )
    assert parse_scenario("legit_market_event:start=2026-11-03,end=2026-11-03T06:00", start).end == datetime(
        2026, 11, 3, 6, tzinfo=UTC
    )
    for spec, message in (
        ("attack_surge", "start=... is required"),
        ("attack_surge:start=1,speed=3", "unknown keys"),
        ("attack_surge:start=1,days=1,end=3", "end or days"),
        ("attack_surge:start", "key=value"),
        ("attack_surge:start=monday", "days after the start or an ISO time"),
        ("attack_surge:start=1,rate_factor=lots", "rate_factor must be a number"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_scenario(spec, start)
    with pytest.raises(SystemExit) as exc:
        cli_main(
            [
                "history",
                "--lake",
                str(tmp_path),
                "--hours",
                "1",
                "--drift-scenario",
                "attack_surge:start=0.01",
            ]
        )
    assert exc.value.code == 2 and "whole hours" in capsys.readouterr().err
    assert not (tmp_path / "raw_events").exists()  # nothing generated


def test_cli_history_with_drift_scenarios(tmp_path, capsys):
    rc = cli_main(
        [
            "history",
            "--lake",
            str(tmp_path),
            "--hours",
            "3",
            "--users",
            "300",
            "--events-per-day",
            "12000",
            "--drift-scenario",
            "legit_market_event:start=0,end=2026-11-01T02:00,users_fraction=0.5",
            "--drift-scenario",
            "attack_surge:start=0,days=0.125,target=ato,name=stuffing",
        ]
    )
    assert rc == 0 and "events" in capsys.readouterr().out
    manifest = pl.read_parquet(tmp_path / DRIFT_SCENARIOS_PATH)
    assert manifest.select("scenario", "kind", "end").rows() == [
        ("legit_market_event", "legit_market_event", datetime(2026, 11, 1, 2, tzinfo=UTC)),
        ("stuffing", "attack_surge", datetime(2026, 11, 1, 3, tzinfo=UTC)),
    ]
    truth = pl.read_parquet(tmp_path / "sim_ground_truth" / "**" / "*.parquet", hive_partitioning=True)
    assert set(truth["drift_scenario"].drop_nulls()) == {"legit_market_event", "stuffing"}
