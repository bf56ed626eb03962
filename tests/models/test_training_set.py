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
from risk_assets.features.offline_store import with_created_ts, write_days
from risk_assets.lake import Lake
from risk_assets.models.assets import training_set, training_set_paths
from risk_assets.models.training_set import TrainingSetSpec, build_training_set, parquet_bytes
from risk_assets.resources import LakeResource, RawEventSource
from risk_assets.simulator.config import SimConfig
from risk_assets.simulator.generator import generate
from risk_assets.simulator.writers import write_history

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
    data, offline, _ = world
    frame, manifest = build_training_set(SPEC, data.events, data.labels, offline, FEATURE_GROUPS)
    assert frame["event_ts"].min() >= SPEC.start and frame["event_ts"].max() < SPEC.end
    labelled_by_cutoff = set(data.labels.filter(pl.col("label_ts") < AS_OF)["event_id"])
    labelled_later = set(data.labels.filter(pl.col("label_ts") >= AS_OF)["event_id"]) - labelled_by_cutoff
    positives = set(frame.filter("is_fraud")["event_id"])
    assert positives == labelled_by_cutoff & set(frame["event_id"])
    assert labelled_later & set(frame["event_id"]), "the window should contain frauds reported too late"
    assert not positives & labelled_later
    assert manifest["positives"] == len(positives) > 0
    assert manifest["feature_groups"] == {g.name: g.version for g in FEATURE_GROUPS}


def test_features_are_those_known_just_before_each_event(world):
    data, offline, _ = world
    frame, manifest = build_training_set(SPEC, data.events, data.labels, offline, FEATURE_GROUPS)
    events = data.events.select("event_id", "device_id", "card_id")
    sample = frame.join(events, on="event_id").filter(pl.col("card_id").is_not_null()).sample(200, seed=1)
    group = GROUPS_BY_NAME["card_testing_device"]
    table = offline[group.name]
    for row in sample.iter_rows(named=True):
        as_of = row["event_ts"] - timedelta(milliseconds=1)
        visible = table.filter(
            (pl.col("device_id") == row["device_id"])
            & (pl.col("event_ts") <= as_of)
            & (pl.col("event_ts") >= as_of - group.ttl)
            & (pl.col("created_ts") <= as_of)
        ).sort("event_ts", "created_ts")
        for feature in ("card_payment_count_1h", "decline_count_1h"):
            got = row[f"{group.name}__{feature}"]
            want = None if visible.height == 0 else float(visible[feature][-1])
            assert got == want, (row["event_id"], feature, got, want)
    # The event's own feature row (as of its own time) is never used.
    assert "card_testing_device__card_payment_count_1h" in manifest["features"]


def test_same_inputs_same_bytes_and_weighted_negative_sampling(world):
    data, offline, _ = world
    a, ma = build_training_set(SPEC, data.events, data.labels, offline, FEATURE_GROUPS)
    b, mb = build_training_set(SPEC, data.events, data.labels, offline, FEATURE_GROUPS)
    assert parquet_bytes(a) == parquet_bytes(b) and ma["data_sha256"] == mb["data_sha256"]
    sampled_spec = TrainingSetSpec(as_of=AS_OF, window=SPEC.window, maturity=SPEC.maturity, negative_rate=0.2)
    s, _ = build_training_set(sampled_spec, data.events, data.labels, offline, FEATURE_GROUPS)
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
