"""Every feature is described, in words generated from its definition."""

from __future__ import annotations

from datetime import timedelta

import dagster as dg

from risk_assets.features import spec as s
from risk_assets.features.catalog import catalog_frame, describe, generated_description
from risk_assets.features.groups import FEATURE_GROUPS
from risk_assets.names import feature_asset_key
from tests.conftest import asset_def


def test_generated_sentences_say_what_the_definition_computes() -> None:
    declined = s.Where("status", "eq", "declined")
    assert (
        generated_description(s.count("n", s.minutes(10), declined), ("card_payment",))
        == "Number of card_payment events in the last 10m where status = 'declined'."
    )
    assert (
        generated_description(
            s.sum_of("usd", "amount_usd", s.days(1), s.event_type("withdrawal")), ("login",)
        )
        == "Sum of amount_usd over the withdrawal events of the last 1d (0 without events)."
    )
    assert generated_description(s.ratio("r", "a", "b")) == "a / b (null when the denominator is 0 or null)."
    rate = s.label_rate("cb", s.days(30), timedelta(days=2))
    assert generated_description(rate, ("card_payment",)) == (
        "Share of the last 30d's card_payment events with a fraud label known at least 2d before the "
        "as-of time (null without events)."
    )
    own = s.time_since_last("t", s.days(7), description="Seconds since the last login.")
    assert describe(own, ("login",)) == (
        "Seconds since the last login. Seconds since the previous of the login events, if within 7d."
    )


def test_every_starter_feature_is_in_the_catalog_with_a_description() -> None:
    frame = catalog_frame(FEATURE_GROUPS)
    assert frame.height == sum(len(g.features) for g in FEATURE_GROUPS)
    assert frame["description"].str.len_chars().min() > 20
    assert frame["feature"].n_unique() == frame.height


def test_the_column_schema_in_the_ui_describes_every_column() -> None:
    for group in FEATURE_GROUPS:
        spec = next(
            spec
            for spec in asset_def(feature_asset_key(group.name)).specs
            if spec.key == feature_asset_key(group.name)
        )
        schema: dg.TableSchema = spec.metadata["dagster/column_schema"]
        assert [c.name for c in schema.columns] == [*group.schema(), "created_ts"]
        assert all(c.description for c in schema.columns), group.name


def test_offsets_matured_rates_and_ratio_empty_values_are_described() -> None:
    delayed = s.count("n", s.days(30), offset=s.days(7))
    assert generated_description(delayed, ("card_payment",)) == (
        "Number of card_payment events in the last 30d. "
        "Delayed window: events between 37d and 7d before the as-of time."
    )
    rate = s.label_rate("r", s.days(90), s.days(7), offset=s.days(7), denominator="matured")
    assert "known at least 7d before the as-of time among those at least that old" in generated_description(
        rate
    )
    assert (
        generated_description(s.ratio("r", "a", "b", empty="zero"))
        == "a / b (0 when the denominator is 0 or null)."
    )
    group = s.FeatureGroup("g", s.USER, "d", "o", ("login",), (delayed, s.ratio("q", "n", "n", empty="zero")))
    assert catalog_frame([group])["window"].to_list() == ["30d offset 7d", ""]
