"""The feature language: validation, canonical form, version hash, schema and metadata."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest

from risk_assets.features.groups import FEATURE_GROUPS, GROUPS_BY_NAME
from risk_assets.features.spec import (
    DEVICE,
    MAX_WINDOW,
    USER,
    Entity,
    FeatureGroup,
    LabelAggregate,
    Where,
    count,
    days,
    distinct_count,
    event_type,
    format_window,
    hours,
    label_count,
    label_rate,
    label_where,
    last_value,
    max_of,
    minutes,
    ratio,
    sum_of,
    time_since_last,
)


def tiny(**overrides) -> FeatureGroup:
    base = dict(
        name="tiny",
        entity=USER,
        description="a tiny group",
        owner="tests",
        source_event_types=("login", "withdrawal"),
        features=(
            count("logins_1h", hours(1), event_type("login"), Where("success", "eq", False)),
            sum_of("usd_24h", "amount_usd", hours(24), event_type("withdrawal")),
            ratio("fail_per_usd", "logins_1h", "usd_24h"),
        ),
        ttl=days(1),
    )
    base.update(overrides)
    return FeatureGroup(**base)


# ---------------------------------------------------------------------------------------------
# Version hash
# ---------------------------------------------------------------------------------------------
def test_version_is_a_short_hex_hash_equal_for_equal_definitions() -> None:
    a, b = tiny(), tiny()
    assert a == b and hash(a) == hash(b)
    assert a.version == b.version
    assert len(a.version) == 12 and int(a.version, 16) >= 0


def test_version_is_stable_across_processes() -> None:
    here = str(Path(__file__).resolve().parent)
    code = (
        f"import sys; sys.path.insert(0, {here!r}); from test_feature_spec import tiny; print(tiny().version)"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
    )  # fmt: skip
    assert res.stdout.strip() == tiny().version


def test_version_pinned_for_the_tiny_group() -> None:
    """Catches accidental changes of the canonical form (which would re-version every group)."""
    assert tiny().canonical_json() == (
        '{"entity":{"keys":["user_id"],"name":"user"},"features":[{"denominator":"usd_24h",'
        '"name":"fail_per_usd","numerator":"logins_1h","type":"ratio"},{"column":null,"kind":"count",'
        '"name":"logins_1h","type":"aggregate","where":[{"column":"event_type","op":"eq","value":"login"},'
        '{"column":"success","op":"eq","value":false}],"window_ms":3600000},{"column":"amount_usd",'
        '"kind":"sum","name":"usd_24h","type":"aggregate","where":[{"column":"event_type","op":"eq",'
        '"value":"withdrawal"}],"window_ms":86400000}],"name":"tiny","semantics_version":2,'
        '"source_event_types":["login","withdrawal"],"ttl_ms":86400000}'
    )
    assert tiny().version == "fb1f54b90bbb"


FAIL = (event_type("login"), Where("success", "eq", False))


@pytest.mark.parametrize(
    "change",
    [
        {"name": "tiny2"},
        {"entity": DEVICE},
        {"source_event_types": ("login", "withdrawal", "deposit")},
        {"ttl": days(2)},
    ],
)
def test_version_changes_with_any_group_detail(change: dict) -> None:
    assert tiny(**change).version != tiny().version


@pytest.mark.parametrize(
    "feature",
    [
        count("logins_1h", hours(2), *FAIL),  # window
        count("logins_1h", hours(1), event_type("login"), Where("success", "eq", True)),  # filter value
        count("logins_1h", hours(1), event_type("login")),  # filter removed
        count("logins_1h", hours(1), event_type("login"), Where("success", "ne", True)),  # filter op
        count("logins_1h_v2", hours(1), *FAIL),  # name
        max_of("logins_1h", "amount_usd", hours(1), *FAIL),  # kind
        time_since_last("logins_1h", hours(1), *FAIL),  # kind
    ],
)
def test_version_changes_with_any_feature_detail(feature) -> None:
    f0, f1, _ = tiny().features
    base = tiny(features=(f0, f1))
    assert tiny(features=(f0, f1)).version == base.version
    assert tiny(features=(feature, f1)).version != base.version


def test_version_ignores_order_and_documentation() -> None:
    base = tiny()
    f0, f1, f2 = base.features
    reordered = tiny(
        features=(f2, f1, dataclasses.replace(f0, where=tuple(reversed(f0.where)))),
        source_event_types=("withdrawal", "login"),
    )
    assert reordered.version == base.version
    documented = tiny(description="other words", owner="someone else", tags={"team": "x"})
    assert documented.version == base.version
    f0_doc = dataclasses.replace(f0, description="described")
    assert tiny(features=(f0_doc, f1, f2)).version == base.version
    # Membership filters are sets.
    a = tiny(features=(count("n", hours(1), Where("ip_country", "in", ("DE", "FR"))),))
    b = tiny(features=(count("n", hours(1), Where("ip_country", "in", ("FR", "DE", "FR"))),))
    assert a.version == b.version


def test_starter_set_versions_are_distinct_and_json_round_trips() -> None:
    versions = [g.version for g in FEATURE_GROUPS]
    assert len(set(versions)) == len(versions)
    for g in FEATURE_GROUPS:
        assert json.loads(g.canonical_json()) == g.to_dict()


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: count("n", timedelta(seconds=30)), "window"),
        (lambda: count("n", days(367)), "window"),
        (lambda: count("n", days(90), offset=days(367)), "offset"),
        (lambda: count("n", days(90), offset=timedelta(days=-1)), "offset"),
        (lambda: count("n", days(1), offset=timedelta(microseconds=1)), "whole milliseconds"),
        (lambda: label_rate("r", days(1), days(2), offset=days(1)), "availability_delay"),
        (lambda: LabelAggregate("r", "label_count", days(1), hours(1), denominator="matured"), "label_rate"),
        (lambda: label_rate("r", days(1), hours(1), denominator="some"), "denominator"),
        (lambda: ratio("r", "a", "b", empty="nan"), "empty"),
        (lambda: count("Bad-Name", hours(1)), "snake_case"),
        # Columns, filter values and keys are checked against the group's source.
        (lambda: tiny(features=(max_of("m", "user_id", hours(1)),)), "numeric"),
        (lambda: tiny(features=(sum_of("s", "nope", hours(1)),)), "not a column of source exchange_events"),
        (lambda: tiny(features=(count("n", hours(1), Where("nope", "eq", 1)),)), "not in source"),
        (lambda: tiny(features=(count("n", hours(1), Where("amount_usd", "eq", "ten")),)), "wrong type"),
        (lambda: tiny(features=(count("n", hours(1), Where("success", "eq", 1)),)), "wrong type"),
        (lambda: Where("nope", "eq", 1, columns={"ip": pl.String}), "not in the layout"),
        (
            lambda: tiny(features=(count("n", hours(1), Where("event_type", "in", ("login", "logon"))),)),
            "unknown event types",
        ),
        (lambda: Where("ip", "between", "x"), "unknown filter op"),
        (lambda: Where("ip", "in", ()), "non-empty"),
        (lambda: Where("ip", "is_null", "x"), "no value"),
        (lambda: event_type("logon"), "unknown event types"),
        (lambda: label_rate("r", days(1), days(1)), "availability_delay"),
        (lambda: tiny(entity=Entity("e", ("nope",))), "not a column of source"),
        (lambda: tiny(entity=Entity("e", ("event_ts",))), "reserved"),
        (
            lambda: tiny(
                features=(label_rate("r", days(1), hours(1), label_filters=(Where("nope", "eq", "x"),)),)
            ),
            "label source exchange_labels",
        ),
        (lambda: tiny(features=(count("a", hours(1)), count("a", hours(2)))), "duplicate"),
        (lambda: tiny(features=(count("user_id", hours(1)),)), "reserved"),
        (lambda: tiny(features=(count("a", hours(1)), ratio("r", "a", "b"))), "non-ratio"),
        (lambda: tiny(features=(count("a", hours(1), event_type("card_payment")),)), "outside source"),
        (lambda: tiny(source_event_types=("logon",)), "source_event_types"),
        (lambda: tiny(ttl=timedelta(0)), "ttl"),
    ],
)
def test_invalid_definitions_are_rejected(build, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


def test_filters_render_to_null_safe_polars_expressions() -> None:
    df = pl.DataFrame({"ip_country": ["DE", None, "FR"], "amount_usd": [1.0, None, 20.0]})
    cases = {
        Where("ip_country", "eq", "DE"): [True, False, False],
        Where("ip_country", "ne", "DE"): [False, False, True],
        Where("ip_country", "in", ("DE", "FR")): [True, False, True],
        Where("ip_country", "not_in", ("DE",)): [False, False, True],
        Where("ip_country", "is_null"): [False, True, False],
        Where("ip_country", "not_null"): [True, False, True],
        Where("amount_usd", "gt", 1.0): [False, False, True],
        Where("amount_usd", "ge", 1.0): [True, False, True],
        Where("amount_usd", "lt", 20.0): [True, False, False],
        Where("amount_usd", "le", 20.0): [True, False, True],
    }
    for w, expected in cases.items():
        assert df.select(w.expr()).to_series().to_list() == expected, w
        assert [w.matches(r) for r in df.to_dicts()] == expected, w


def test_label_filters_use_the_label_layout() -> None:
    f = label_rate("r", days(30), days(2), label_filters=(label_where("scenario", "eq", "ato"),))
    assert f.label_where[0].column == "scenario"
    with pytest.raises(ValueError, match="not in source exchange_events"):
        tiny(features=(count("n", hours(1), Where("scenario", "eq", "ato")),))  # not an event column
    with pytest.raises(ValueError, match="not in the layout"):
        label_where("chain", "eq", "tron")  # not a label column


# ---------------------------------------------------------------------------------------------
# Derived properties
# ---------------------------------------------------------------------------------------------
def test_schema_names_windows_and_metadata() -> None:
    g = tiny(
        features=(
            count("n_10m", minutes(10)),
            distinct_count("ips_7d", "ip", days(7)),
            last_value("last_country", "ip_country", days(1)),
            max_of("max_asn", "ip_asn", hours(1)),
            time_since_last("since", hours(1)),
            label_rate("rate", days(30), days(2)),
            ratio("r", "n_10m", "ips_7d"),
        )
    )
    assert g.feature_names == ("n_10m", "ips_7d", "last_country", "max_asn", "since", "rate", "r")
    assert g.max_window == days(30)
    assert g.needs_labels
    assert g.schema() == {
        "user_id": pl.String(),
        "event_ts": pl.Datetime("ms", "UTC"),
        "n_10m": pl.Int64(),
        "ips_7d": pl.Int64(),
        "last_country": pl.String(),
        "max_asn": pl.Int64(),
        "since": pl.Float64(),
        "rate": pl.Float64(),
        "r": pl.Float64(),
    }
    md = g.metadata()
    assert md["version"] == g.version
    assert md["keys"] == ["user_id"]
    assert md["windows"] == ["10m", "1h", "1d", "7d", "30d"]
    assert md["columns"]["event_ts"] == "Datetime(time_unit='ms', time_zone='UTC')"
    json.dumps(md)  # JSON-friendly for Dagster metadata
    assert format_window(timedelta(minutes=90)) == "90m"


def test_starter_set_is_a_real_set() -> None:
    names = {g.name for g in FEATURE_GROUPS}
    assert len(names) == len(FEATURE_GROUPS) == len(GROUPS_BY_NAME)
    assert sum(len(g.features) for g in FEATURE_GROUPS) >= 100
    entities = {g.entity.name for g in FEATURE_GROUPS}
    assert {"user", "device", "ip", "card", "wallet", "counterparty", "user_wallet"} <= entities
    kinds = {getattr(f, "kind", "ratio") for g in FEATURE_GROUPS for f in g.features}
    assert kinds == {"count", "sum", "mean", "min", "max", "distinct_count", "last", "time_since_last",
                     "ratio", "label_count", "label_rate"}  # fmt: skip
    for g in FEATURE_GROUPS:
        assert g.description and g.owner
        assert {f.name for f in g.features} == set(g.feature_names)


# ---------------------------------------------------------------------------------------------
# Offsets, long windows, matured label rates, ratio empty values, helper features
# ---------------------------------------------------------------------------------------------
def test_long_windows_with_offsets_are_accepted_and_set_the_lookback() -> None:
    """90 days + a 7-day offset (the card-fraud baseline's delayed terminal windows) is valid; the
    lookback is window + offset (before: windows were capped at 30 days including the delay)."""
    g = tiny(
        features=(
            count("n_90d_d7", days(90), offset=days(7)),
            label_rate("rate_90d_d7", days(90), days(7), offset=days(7), denominator="matured"),
            sum_of("usd_366d", "amount_usd", MAX_WINDOW, offset=days(30)),
            label_count("n_30d_d7", days(30), days(7)),
        )
    )
    assert g.max_window == MAX_WINDOW + days(30)
    assert g.metadata()["max_window"] == "396d"
    assert g.feature("n_90d_d7").lookback == days(97)
    assert label_rate("r", days(1), days(2), offset=days(2)).availability_delay == days(2)  # D < w + o


def test_default_options_keep_versions_and_every_option_changes_them() -> None:
    base = tiny()
    f0, f1, f2 = base.features
    same = tiny(
        features=(dataclasses.replace(f0, offset=timedelta(0)), f1, dataclasses.replace(f2, empty="null"))
    )
    assert same.version == base.version == "fb1f54b90bbb"
    versions = {
        tiny(features=(dataclasses.replace(f0, offset=hours(1)), f1, f2)).version,
        tiny(features=(f0, f1, dataclasses.replace(f2, empty="zero"))).version,
        base.version,
    }
    assert len(versions) == 3
    all_rate = tiny(features=(label_rate("r", days(30), days(7)),))
    matured = tiny(features=(label_rate("r", days(30), days(7), denominator="matured"),))
    assert all_rate.version != matured.version
    assert json.loads(matured.canonical_json())["features"][0]["denominator"] == "matured"
    # model_input is not a value: it does not change the version.
    helper = tiny(features=(dataclasses.replace(f0, model_input=False), f1, f2))
    assert helper.version == base.version


def test_helper_features_are_not_model_inputs() -> None:
    g = tiny(
        features=(
            count("logins_1h", hours(1), model_input=False),
            sum_of("usd_24h", "amount_usd", hours(24), model_input=False),
            ratio("usd_per_login", "usd_24h", "logins_1h", empty="zero"),
        )
    )
    assert g.feature_names == ("logins_1h", "usd_24h", "usd_per_login")
    assert g.model_feature_names == ("usd_per_login",)
    assert g.helper_feature_names == ("logins_1h", "usd_24h")
    assert g.metadata()["helper_features"] == ["logins_1h", "usd_24h"]
    assert "helper_features" not in tiny().metadata()
    assert tiny().model_feature_names == tiny().feature_names
