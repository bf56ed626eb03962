"""The feature catalog: every feature described in words generated from its definition.

Pure (Polars, no Dagster). A definition already says exactly what a feature is (aggregation, column,
window, filters, label delay); :func:`describe` turns that into a sentence, prefixed by the author's
own description when there is one, so no feature is ever undocumented in the UI. The catalog frame
(:func:`catalog_frame`) lists every feature with its group, version, entity, kind and window — what
the ``feature_catalog`` asset shows and writes to the lake.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from risk_assets.features.spec import (
    Aggregate,
    Feature,
    FeatureGroup,
    LabelAggregate,
    Ratio,
    Where,
    format_window,
)

_OPS = {
    "eq": "=",
    "ne": "≠",
    "gt": ">",
    "ge": "≥",
    "lt": "<",
    "le": "≤",
    "in": "in",
    "not_in": "not in",
}


def _value(v: object) -> str:
    if isinstance(v, tuple):
        return "(" + ", ".join(_value(x) for x in v) + ")"
    return repr(v) if isinstance(v, str) else str(v)


def describe_filter(w: Where) -> str:
    """``status = 'declined'``, ``amount_usd ≥ 1000``, ``card_id is null``."""
    if w.op == "is_null":
        return f"{w.column} is null"
    if w.op == "not_null":
        return f"{w.column} is not null"
    return f"{w.column} {_OPS[w.op]} {_value(w.value)}"


def _where(filters: Sequence[Where]) -> str:
    return f" where {' and '.join(describe_filter(w) for w in filters)}" if filters else ""


def _events(
    event_types: Sequence[str], filters: Sequence[Where], type_column: str | None = "event_type"
) -> tuple[str, list[Where]]:
    """("withdrawal events", other filters): an event-type filter names the events instead."""
    typed = [w for w in filters if type_column and w.column == type_column and w.op in ("eq", "in")]
    rest = [w for w in filters if w not in typed]
    if typed:
        values = typed[0].value if isinstance(typed[0].value, tuple) else (typed[0].value,)
        event_types = [str(v) for v in values]
    return f"{'/'.join(event_types) or 'all'} events", rest


def generated_description(
    feature: Feature, event_types: Sequence[str] = (), type_column: str | None = "event_type"
) -> str:
    """What the definition computes, in one sentence (the semantics are those of ``spec.py``);
    ``event_types``: the group's source event types, named when the feature does not narrow them."""
    if isinstance(feature, Ratio):
        empty = "0" if feature.empty == "zero" else "null"
        return f"{feature.numerator} / {feature.denominator} ({empty} when the denominator is 0 or null)."
    text = _generated(feature, event_types, type_column)
    if feature.offset:
        lo, hi = format_window(feature.offset), format_window(feature.offset + feature.window)
        text += f" Delayed window: events between {hi} and {lo} before the as-of time."
    return text


def _generated(
    feature: Aggregate | LabelAggregate, event_types: Sequence[str], type_column: str | None
) -> str:
    window = format_window(feature.window)
    events, filters = _events(event_types, feature.where, type_column)
    where = _where(filters)
    if isinstance(feature, LabelAggregate):
        delay = format_window(feature.availability_delay)
        labels = _where(feature.label_where).replace(" where ", " (labels where ", 1)
        labels = f"{labels})" if labels else ""
        if feature.kind == "label_count":
            return (
                f"{events.capitalize()} of the last {window}{where} with a fraud label{labels} known at "
                f"least {delay} before the as-of time."
            )
        among = " among those at least that old" if feature.denominator == "matured" else ""
        return (
            f"Share of the last {window}'s {events}{where} with a fraud label{labels} known at least "
            f"{delay} before the as-of time{among} (null without events)."
        )
    assert isinstance(feature, Aggregate)
    col = feature.column
    match feature.kind:
        case "count":
            return f"Number of {events} in the last {window}{where}."
        case "sum":
            return f"Sum of {col} over the {events} of the last {window}{where} (0 without events)."
        case "mean":
            return f"Mean of {col} over the {events} of the last {window}{where} (null without values)."
        case "min":
            return f"Smallest {col} of the {events} of the last {window}{where}."
        case "max":
            return f"Largest {col} of the {events} of the last {window}{where}."
        case "distinct_count":
            return f"Number of distinct {col} values over the {events} of the last {window}{where}."
        case "last":
            return f"Latest non-null {col} of the {events} of the last {window}{where}."
        case "time_since_last":
            return f"Seconds since the previous of the {events}{where}, if within {window}."
    raise AssertionError(feature.kind)


def describe(
    feature: Feature, event_types: Sequence[str] = (), type_column: str | None = "event_type"
) -> str:
    """The author's description (if any) followed by the generated one (``type_column``: the
    event-type column of the group's source)."""
    generated = generated_description(feature, event_types, type_column)
    own = feature.description.strip()
    if not own:
        return generated
    return f"{own.rstrip('.')}. {generated}"


def _kind(feature: Feature) -> str:
    return "ratio" if isinstance(feature, Ratio) else feature.kind


def _window(feature: Feature) -> str:
    if isinstance(feature, Ratio):
        return ""
    window = format_window(feature.window)
    return f"{window} offset {format_window(feature.offset)}" if feature.offset else window


def catalog_frame(groups: Sequence[FeatureGroup]) -> pl.DataFrame:
    """One row per feature of ``groups``: where it lives, what it is and what it means."""
    rows = [
        {
            "feature": f"{g.name}__{f.name}",
            "group": g.name,
            "version": g.version,
            "entity": g.entity.name,
            "keys": ", ".join(g.entity.keys),
            "source": g.source.name,
            "source_event_types": ", ".join(g.source_event_types),
            "kind": _kind(f),
            "window": _window(f),
            "dtype": str(f.dtype(g.source)),
            "owner": g.owner,
            "description": describe(f, g.source_event_types, g.source.event_type_column),
        }
        for g in groups
        for f in g.features
    ]
    return pl.DataFrame(rows, schema={k: pl.String for k in rows[0]} if rows else None)
