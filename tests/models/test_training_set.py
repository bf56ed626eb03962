"""Training sets: mature labels only, features as known just before each event, same bytes."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta

import dagster as dg
import polars as pl
import pytest

from risk_assets.features.batch import compute_feature_groups
from risk_assets.features.groups import FEATURE_GROUPS, GROUPS_BY_NAME
from risk_assets.features.offline_store import day_part_path, offline_schema, with_created_ts, write_days
from risk_assets.ingest.archive_format import archive_part_path
from risk_assets.lake import Lake
from risk_assets.models.artifacts import challenger_pointer_path, training_set_paths
from risk_assets.models.coverage import window_coverage
from risk_assets.models.training_set import TrainingSetSpec, build_training_set, parquet_bytes
from risk_assets.names import CHALLENGER_MODEL, RAW_LABELS, TRAINING_WINDOW_COVERAGE_CHECK
from risk_assets.resources import LakeResource, RawEventSource
from risk_assets.simulator.config import SimConfig
from risk_assets.simulator.generator import generate
from risk_assets.simulator.writers import write_history
from tests.conftest import asset_def

training_set = asset_def("training_set")

START = datetime(2026, 9, 1, tzinfo=UTC)
SIM = SimConfig(seed=8, start=START, hours=24 * 8, events_per_day=20_000, users=2_000)
AS_OF = START + timedelta(days=8)
SPEC = TrainingSetSpec(as_of=AS_OF, window=timedelta(days=4), maturity=timedelta(days=2))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    data = generate(SIM)
    offline = {
        name: with_created_ts(rows, GROUPS_BY_NAME[name], data.events)
        for name, rows in compute_feature_groups(
            FEATURE_GROUPS, data.events, START, AS_OF, data.labels
        ).items()
    }
    return data, offline, tmp_path_factory


def test_labels_are_the_ones_known_at_the_cutoff(world):
    data, _, _ = world
    frame, manifest = build_training_set(SPEC, data.events, data.labels, FEATURE_GROUPS)
    assert frame["event_ts"].min() >= SPEC.start and frame["event_ts"].max() < SPEC.end
    labelled_by_cutoff = set(data.labels.filter(pl.col("label_ts") < AS_OF)["event_id"])
    labelled_later = set(data.labels.filter(pl.col("label_ts") >= AS_OF)["event_id"]) - labelled_by_cutoff
    positives = set(frame.filter("is_fraud")["event_id"])
    assert positives == labelled_by_cutoff & set(frame["event_id"])
    assert labelled_later & set(frame["event_id"]), "the window should contain frauds reported too late"
    assert not positives & labelled_later
    assert manifest["positives"] == len(positives) > 0
    assert manifest["feature_groups"] == {g.name: g.version for g in FEATURE_GROUPS}


def test_features_are_the_v2_values_at_each_event_time(world):
    """Every feature is its window at the event's own time, read from the raw events (the spec's
    v2 text as a loop): events of the device with ``floor_1m(t) − 1h <= event_ts < t`` passing the
    feature's filters — the event itself is not in its window, an old burst is not either."""
    data, _, _ = world
    frame, manifest = build_training_set(SPEC, data.events, data.labels, FEATURE_GROUPS)
    events = data.events.select("event_id", "device_id", "card_id")
    sample = frame.join(events, on="event_id").filter(pl.col("card_id").is_not_null()).sample(200, seed=1)
    group = GROUPS_BY_NAME["card_testing_device"]
    raw = data.events.filter(pl.col("event_type").is_in(list(group.source_event_types)))
    raw = raw.with_columns(pl.col("event_ts").dt.epoch("ms").alias("_t"))
    nonzero = 0
    for row in sample.iter_rows(named=True):
        t = int(row["event_ts"].timestamp() * 1000)
        start = t - t % 60_000 - 3_600_000
        mine = raw.filter((pl.col("device_id") == row["device_id"]) & pl.col("_t").is_between(start, t - 1))
        for feature in ("card_payment_count_1h", "decline_count_1h"):
            f = group.feature(feature)
            want = sum(1 for e in mine.iter_rows(named=True) if all(w.matches(e) for w in f.where))
            got = row[f"{group.name}__{feature}"]
            assert got == float(want), (row["event_id"], feature, got, want)
            nonzero += want > 0
    assert nonzero > 20  # the sample exercises non-empty windows
    assert "card_testing_device__card_payment_count_1h" in manifest["features"]
    assert manifest["semantics_version"] == 2


def test_same_inputs_same_bytes_and_weighted_negative_sampling(world):
    data, _, _ = world
    a, ma = build_training_set(SPEC, data.events, data.labels, FEATURE_GROUPS)
    b, mb = build_training_set(SPEC, data.events, data.labels, FEATURE_GROUPS)
    assert parquet_bytes(a) == parquet_bytes(b) and ma["data_sha256"] == mb["data_sha256"]
    sampled_spec = TrainingSetSpec(as_of=AS_OF, window=SPEC.window, maturity=SPEC.maturity, negative_rate=0.2)
    s, _ = build_training_set(sampled_spec, data.events, data.labels, FEATURE_GROUPS)
    assert s.filter("is_fraud").height == a.filter("is_fraud").height
    negatives = s.filter(~pl.col("is_fraud"))
    assert 0.15 < negatives.height / a.filter(~pl.col("is_fraud")).height < 0.25
    assert set(negatives["weight"]) == {5.0} and set(s.filter("is_fraud")["weight"]) == {1.0}


def test_training_set_asset_writes_data_and_manifest(world):
    _, offline, tmp = world
    lake = Lake(str(tmp.mktemp("lake")))
    write_history(SIM, lake)
    for name, rows in offline.items():
        days = [START + timedelta(days=d) for d in range(8)]
        write_days(lake, GROUPS_BY_NAME[name], rows, days)
    day = (AS_OF - timedelta(days=1)).strftime("%Y-%m-%d")

    def run() -> dg.ExecuteInProcessResult:
        return dg.materialize(
            [training_set],
            resources={"lake": LakeResource(url=lake.url), "raw_event_source": RawEventSource()},
            partition_key=day,
            run_config={"ops": {"training_set": {"config": {"window_days": 4, "maturity_days": 2}}}},
        )

    assert run().success
    data_path, manifest_path = training_set_paths(day)
    first = lake.read_bytes(data_path)
    manifest = json.loads(lake.read_bytes(manifest_path))
    assert manifest["data_sha256"] == hashlib.sha256(first).hexdigest()
    assert manifest["rows"] == pl.read_parquet(first).height > 0
    assert run().success
    assert lake.read_bytes(data_path) == first


def test_an_uncovered_window_fails_its_blocking_checks_and_training_does_not_run(world):
    """Feature days missing from the offline store: the set is written, its blocking coverage check
    fails with a line naming the groups and days, and the challenger in the same run is skipped."""
    _, offline, tmp = world
    lake = Lake(str(tmp.mktemp("lake")))
    write_history(SIM, lake)
    days = [START + timedelta(days=d) for d in range(8)]
    for name, rows in offline.items():  # the window's last feature day is never materialized
        write_days(lake, GROUPS_BY_NAME[name], rows, days[:-3])
    day = (AS_OF - timedelta(days=1)).strftime("%Y-%m-%d")
    result = dg.materialize(
        [training_set, asset_def(CHALLENGER_MODEL)],
        resources={"lake": LakeResource(url=lake.url), "raw_event_source": RawEventSource()},
        partition_key=day,
        run_config={"ops": {"training_set": {"config": {"window_days": 4, "maturity_days": 2}}}},
        raise_on_error=False,
    )
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    coverage = checks[TRAINING_WINDOW_COVERAGE_CHECK]
    assert not coverage.passed
    assert "days missing" in coverage.description and day in coverage.description
    assert coverage.metadata["groups_missing_days"].value == len(offline)
    assert not result.asset_materializations_for_node(CHALLENGER_MODEL)
    assert not lake.exists(challenger_pointer_path(day))


def test_window_coverage_reports_missing_feature_days_and_a_short_label_archive(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    group = FEATURE_GROUPS[0]
    frame = pl.DataFrame(schema=offline_schema(group))
    for d in (1, 2, 4):
        lake.write_parquet(frame, day_part_path(group, START + timedelta(days=d)))
    label_hour = archive_part_path(RAW_LABELS, START + timedelta(days=3, hours=5))
    lake.write_parquet(pl.DataFrame({"x": [1]}), label_hour)
    cov = window_coverage(
        lake, [group], START + timedelta(days=1), START + timedelta(days=5), START + timedelta(days=6)
    )
    assert cov.missing_feature_days == {group.name: [f"{START + timedelta(days=3):%Y-%m-%d}"]}
    assert cov.labels_through == f"{START + timedelta(days=3):%Y-%m-%d} 05:00"
    assert not cov.labels_complete and not cov.complete
    assert "raw_labels archived through" in cov.summary()
    lake.write_parquet(
        pl.DataFrame({"x": [1]}), archive_part_path(RAW_LABELS, START + timedelta(days=5, hours=2))
    )
    lake.write_parquet(frame, day_part_path(group, START + timedelta(days=3)))
    assert window_coverage(
        lake, [group], START + timedelta(days=1), START + timedelta(days=5), START + timedelta(days=6)
    ).complete


def test_helper_features_are_left_out_of_training_sets_the_gate_and_risk_serve(world):
    """Features marked model_input=False are stored (the offline rows keep them) but never become
    training-set columns, manifest features, servable features or risk-serve inputs."""
    import dataclasses

    from risk_assets.models.promotion import servability_failures
    from risk_assets.models.training_set import model_feature_columns
    from risk_assets.serving.feature_fetch import UnservableFeatures, build_plan

    data, offline, _ = world
    base = GROUPS_BY_NAME["card_testing_device"]
    helper_names = base.feature_names[:2]
    group = dataclasses.replace(
        base,
        features=tuple(
            dataclasses.replace(f, model_input=False) if f.name in helper_names else f for f in base.features
        ),
    )
    assert group.version == base.version  # not a value: the offline rows are the same rows
    assert set(helper_names) <= set(offline[group.name].columns)
    frame, manifest = build_training_set(SPEC, data.events, data.labels, [group])
    helpers = {f"{group.name}__{f}" for f in helper_names}
    model_inputs = {f"{group.name}__{f}" for f in group.model_feature_names}
    assert not helpers & set(frame.columns) and not helpers & set(manifest["features"])
    assert model_inputs <= set(manifest["features"]) == set(model_feature_columns([group]))
    assert helpers <= set(model_feature_columns([base]))  # unmarked, they were inputs
    some_helper = sorted(helpers)[0]
    assert servability_failures([some_helper], {group.name: group.version}, [group])
    assert not servability_failures(sorted(model_inputs), {group.name: group.version}, [group])
    with pytest.raises(UnservableFeatures, match="helper"):
        build_plan([some_helper], {group.name: group.version}, {group.name: group})
    plan = build_plan(sorted(model_inputs), {group.name: group.version}, {group.name: group})
    assert plan.n == len(model_inputs)


def test_challenger_asset_trains_on_a_date_split_without_validation(world):
    """The Launchpad config reaches the trainer: date windows, no validation (fixed rounds),
    known entities dropped from the test split, per-entity precision@k in the registered manifest."""
    from risk_assets.models import registry
    from risk_assets.models.artifacts import read_challenger

    _, offline, tmp = world
    lake = Lake(str(tmp.mktemp("lake")))
    write_history(SIM, lake)
    for name, rows in offline.items():
        write_days(lake, GROUPS_BY_NAME[name], rows, [START + timedelta(days=d) for d in range(8)])
    day = (AS_OF - timedelta(days=1)).strftime("%Y-%m-%d")
    model_config = {
        "n_estimators": 7, "train_end": "2026-09-05T12:00:00", "test_start": "2026-09-06",
        "drop_known_entities": True, "entity_top_k": 10,
    }  # fmt: skip
    result = dg.materialize(
        [training_set, asset_def(CHALLENGER_MODEL)],
        resources={"lake": LakeResource(url=lake.url), "raw_event_source": RawEventSource()},
        partition_key=day,
        run_config={
            "ops": {
                "training_set": {"config": {"window_days": 4, "maturity_days": 2}},
                "challenger_model": {"config": model_config},
            }
        },
    )
    assert result.success
    manifest = registry.load_manifest(lake, read_challenger(lake, day))
    assert manifest["split"]["mode"] == "dates" and manifest["split"]["rows"]["validation"] == 0
    assert manifest["split"]["train_end"].startswith("2026-09-05T12:00")
    assert manifest["best_iteration"] == 6 and manifest["validation_metrics"] == {}
    assert manifest["metrics"]["entity_column"] == "user_id" and manifest["metrics"]["entity_top_k"] == 10
    assert manifest["metrics"]["rows"] == manifest["split"]["rows"]["test"]
