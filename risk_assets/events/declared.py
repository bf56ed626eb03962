"""Payload validation for a declared source (:mod:`risk_assets.sources`).

The exchange's payloads are hand-written msgspec structs (``schema.py``: per-type fields and value
bounds). A team's declared source gets a struct derived from its declaration, so its messages go
through the same gate (:func:`risk_assets.events.validation.validate_payloads`) with the same
reason codes: one JSON object per message with the source's payload columns (every column but the
ingestion time); unknown fields are rejected; the id, time and event-type columns and the
``required`` columns must be present and non-null, the others may be missing or null; strings are
strings, booleans booleans, integers fit their dtype, times are integer milliseconds since the
epoch; the event type is one of the declared types; a ``schema_version`` column, when declared,
must equal the source's schema version.
"""

from __future__ import annotations

from functools import cache
from typing import Annotated, Any, Literal

import msgspec
import polars as pl

from risk_assets.events.schema import MAX_EVENT_TS_MS
from risk_assets.sources import EventSource, LabelSource

_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
_TimeMs = Annotated[int, msgspec.Meta(ge=0, le=MAX_EVENT_TS_MS)]
_INT_BOUNDS: dict[pl.DataType, tuple[int, int]] = {
    pl.Int8(): (-(2**7), 2**7 - 1),
    pl.Int16(): (-(2**15), 2**15 - 1),
    pl.Int32(): (-(2**31), 2**31 - 1),
    pl.Int64(): (-(2**63), 2**63 - 1),
    pl.UInt8(): (0, 2**8 - 1),
    pl.UInt16(): (0, 2**16 - 1),
    pl.UInt32(): (0, 2**32 - 1),
    pl.UInt64(): (0, 2**64 - 1),
}


def _field_type(dtype: pl.DataType) -> Any:
    if isinstance(dtype, pl.Datetime):
        return _TimeMs
    if dtype == pl.String:
        return str
    if dtype == pl.Boolean:
        return bool
    if dtype.is_float():
        return float
    if dtype.is_integer():
        lo, hi = _INT_BOUNDS[dtype]
        return Annotated[int, msgspec.Meta(ge=lo, le=hi)]
    raise ValueError(f"no payload type for dtype {dtype}")  # pragma: no cover - sources refuse others


def _payload_fields(
    columns: tuple[tuple[str, pl.DataType], ...],
    ingestion: str | None,
    ids: tuple[str, ...],
    required: set[str],
    enums: dict[str, tuple[str, ...]],
    schema_version: int,
) -> list[tuple[Any, ...]]:
    fields: list[tuple[Any, ...]] = []
    for name, dtype in columns:
        if name == ingestion:
            continue
        if name in enums:
            t: Any = Literal[enums[name]]  # type: ignore[valid-type]
        elif name in ids:
            t = _Id
        elif name == "schema_version" and dtype.is_integer():
            t = Literal[schema_version]  # type: ignore[valid-type]
        else:
            t = _field_type(dtype)
        if name in required:
            fields.append((name, t))
        elif name == "schema_version" and dtype.is_integer():
            fields.append((name, t, schema_version))
        else:
            fields.append((name, t | None, None))
    return fields  # keyword-only structs: required and optional fields may interleave


@cache
def event_payload_type(source: EventSource) -> Any:
    """The msgspec struct a payload of ``source`` must decode into."""
    enums = {source.event_type_column: source.event_types} if source.event_type_column else {}
    required = {source.id_column, source.timestamp, *enums, *source.required}
    fields = _payload_fields(
        source.columns,
        source.ingestion_timestamp,
        (source.id_column,),
        required,
        enums,
        source.schema_version,
    )
    return msgspec.defstruct(
        f"{source.name}_payload", fields, forbid_unknown_fields=True, kw_only=True, module=__name__
    )


@cache
def label_payload_type(source: LabelSource) -> Any:
    """The msgspec struct a payload of the label source must decode into."""
    enums = {source.type_column: source.label_types} if source.type_column else {}
    ids = tuple(c for c in (source.key, source.id_column) if c)
    required = {*ids, source.timestamp, *enums, *source.required}
    fields = _payload_fields(
        source.columns, source.ingestion_timestamp, ids, required, enums, source.schema_version
    )
    return msgspec.defstruct(
        f"{source.name}_payload", fields, forbid_unknown_fields=True, kw_only=True, module=__name__
    )
