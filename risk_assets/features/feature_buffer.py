"""The feature buffer topic ``risk.features``: stream feature rows as Kafka messages.

The stream job publishes its rows here instead of writing Redis directly, so computing and serving
are decoupled: a Redis outage only stops ingestion (the rows wait in Kafka, nothing is lost), and the
ingestion job (``ingestion.py``) writes the online store and the offline feature log from exact
offset ranges, idempotently.

Message format (buffer format version 1)
----------------------------------------
* **key** — ``{group}:{entity key}`` (UTF-8; the entity key escaped and ``|``-joined as in the
  online store's hash tag). All rows of one entity and group go to one partition, in order.
* **value** — one msgpack array (msgspec; deterministic: the same row always gives the same bytes)::

      [format_version, group, group_version, [key values...], event_ts_ms, created_ts_ms,
       [feature values...]]

  ``format_version`` = :data:`BUFFER_FORMAT_VERSION`; ``group_version`` = the 12-hex
  :attr:`FeatureGroup.version`; feature values in the group's feature order, typed as in
  ``group.schema()`` (int, float, str, bool) with nil for null; timestamps are int ms (UTC).
  Feature names are not repeated per message: the version pins the feature list.
* **timestamp** — produce time (CreateTime), informational.

Decoding never raises on a bad message: a message that is not valid msgpack of that shape, has
another format version, names an unknown group or a group version this code does not know, or carries
values of the wrong type or count is returned in ``rejected`` with a reason, so the caller can
dead-letter it and move on (a poison message must not block ingestion forever).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import polars as pl

from risk_assets.features.groups import FEATURE_GROUPS
from risk_assets.features.online_store import encode_entity_key
from risk_assets.features.spec import EVENT_TS, FeatureGroup
from risk_assets.features.stream import CREATED_TS, output_schema
from risk_assets.ingest.kafka_reader import MessageBatch

__all__ = [
    "BUFFER_FORMAT_VERSION",
    "FEATURES_TOPIC",
    "DecodedBuffer",
    "FeatureBufferError",
    "decode",
    "encode_rows",
    "publish",
]

FEATURES_TOPIC = "risk.features"
BUFFER_FORMAT_VERSION = 1

MALFORMED = "malformed"
UNKNOWN_FORMAT = "unknown_format_version"
UNKNOWN_GROUP = "unknown_group"
UNKNOWN_VERSION = "unknown_group_version"
BAD_VALUES = "bad_values"


class FeatureBufferError(RuntimeError):
    """Publishing to the buffer failed: some messages were not confirmed delivered."""


class _Message(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    format_version: int
    group: str
    version: str
    keys: list[str | int]
    event_ts: int
    created_ts: int
    values: list[Any]


def _registry(groups: Iterable[FeatureGroup] | None) -> dict[str, FeatureGroup]:
    return {g.name: g for g in (FEATURE_GROUPS if groups is None else groups)}


def encode_rows(group: FeatureGroup, rows: pl.DataFrame) -> tuple[list[bytes], list[bytes]]:
    """``(keys, values)`` of the messages for ``rows`` (columns of :func:`output_schema`), in order."""
    keys = list(group.entity.keys)
    missing = [c for c in (*keys, EVENT_TS, CREATED_TS, *group.feature_names) if c not in rows.columns]
    if missing:
        raise ValueError(f"{group.name}: rows lack column(s) {missing}")
    frame = rows.select(
        *keys,
        pl.col(EVENT_TS).dt.epoch("ms"),
        pl.col(CREATED_TS).dt.epoch("ms"),
        *group.feature_names,
    )
    nk = len(keys)
    nf = len(group.feature_names)
    enc = msgspec.msgpack.Encoder().encode
    head = (BUFFER_FORMAT_VERSION, group.name, group.version)
    prefix = f"{group.name}:"
    out_keys, out_values = [], []
    for r in frame.iter_rows():
        kv = r[:nk]
        out_keys.append((prefix + encode_entity_key(tuple(kv))).encode())
        out_values.append(enc((*head, list(kv), r[nk], r[nk + 1], list(r[nk + 2 : nk + 2 + nf]))))
    return out_keys, out_values


def publish(
    producer: Any,
    rows_by_group: Mapping[str, pl.DataFrame],
    topic: str = FEATURES_TOPIC,
    *,
    groups: Iterable[FeatureGroup] | None = None,
    flush_timeout_s: float = 30.0,
) -> int:
    """Produce every row to ``topic``, flush, and return the number of messages delivered.

    ``producer`` is a ``confluent_kafka.Producer``. Raises :class:`FeatureBufferError` if any
    delivery failed or the flush timed out (never drops silently); the caller then must not
    advance its cursor — re-publishing the same rows is harmless (ingestion is idempotent).
    """
    registry = _registry(groups)
    errors: list[str] = []
    delivered = 0

    def on_delivery(err: Any, _msg: Any) -> None:
        nonlocal delivered
        if err is not None:
            errors.append(str(err))
        else:
            delivered += 1

    sent = 0
    for name, rows in rows_by_group.items():
        if rows.height == 0:
            continue
        if name not in registry:
            raise ValueError(f"unknown feature group {name!r}")
        keys, values = encode_rows(registry[name], rows)
        for k, v in zip(keys, values, strict=True):
            while True:
                try:
                    producer.produce(topic, value=v, key=k, on_delivery=on_delivery)
                    break
                except BufferError:
                    producer.poll(0.05)
            sent += 1
            if sent % 10_000 == 0:
                producer.poll(0)
    remaining = producer.flush(flush_timeout_s)
    if remaining or errors or delivered != sent:
        first = f"; first error: {errors[0]}" if errors else ""
        raise FeatureBufferError(
            f"publish to {topic}: {delivered} of {sent} messages confirmed, {len(errors)} failed, "
            f"{remaining} still queued after {flush_timeout_s}s{first}"
        )
    return sent


@dataclass(frozen=True)
class DecodedBuffer:
    """Decoded feature rows per group (:func:`output_schema` columns, message order) and the
    rejected messages as ``(index in batch, reason, error)``."""

    frames: dict[str, pl.DataFrame]
    rejected: list[tuple[int, str, str]]

    @property
    def rejected_count(self) -> int:
        return len(self.rejected)

    @property
    def reasons(self) -> Counter[str]:
        return Counter(r[1] for r in self.rejected)

    @property
    def row_count(self) -> int:
        return sum(f.height for f in self.frames.values())


def _frame(group: FeatureGroup, msgs: list[_Message]) -> pl.DataFrame:
    """Strict conversion: raises if any value does not fit its column type."""
    schema = output_schema(group)
    keys = group.entity.keys
    data: dict[str, pl.Series] = {}
    for j, k in enumerate(keys):
        data[k] = pl.Series(k, [m.keys[j] for m in msgs], dtype=schema[k], strict=True)
    data[EVENT_TS] = pl.Series(EVENT_TS, [m.event_ts for m in msgs], dtype=pl.Int64).cast(schema[EVENT_TS])
    created = pl.Series(CREATED_TS, [m.created_ts for m in msgs], dtype=pl.Int64)
    for j, f in enumerate(group.feature_names):
        data[f] = pl.Series(f, [m.values[j] for m in msgs], dtype=schema[f], strict=True)
    data[CREATED_TS] = created.cast(schema[CREATED_TS])
    return pl.DataFrame(data).select(list(schema))


def decode(batch: MessageBatch, groups: Iterable[FeatureGroup] | None = None) -> DecodedBuffer:
    """Decode buffer messages into ``{group: frame}``; bad messages are counted, never raised.

    ``groups``: the groups whose current versions are accepted (default: ``FEATURE_GROUPS``). Every
    known group present in the batch gets a frame; groups with no rows are absent.
    """
    registry = _registry(groups)
    decoder = msgspec.msgpack.Decoder(_Message)
    by_group: dict[str, list[tuple[int, _Message]]] = {}
    rejected: list[tuple[int, str, str]] = []
    for i, raw in enumerate(batch.values):
        try:
            m = decoder.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            rejected.append((i, MALFORMED, str(exc)[:200]))
            continue
        if m.format_version != BUFFER_FORMAT_VERSION:
            rejected.append((i, UNKNOWN_FORMAT, f"format version {m.format_version}"))
            continue
        g = registry.get(m.group)
        if g is None:
            rejected.append((i, UNKNOWN_GROUP, f"group {m.group!r}"))
            continue
        if m.version != g.version:
            rejected.append((i, UNKNOWN_VERSION, f"{m.group} version {m.version!r}, known {g.version!r}"))
            continue
        if len(m.keys) != len(g.entity.keys) or len(m.values) != len(g.feature_names):
            rejected.append((i, BAD_VALUES, f"{len(m.keys)} keys / {len(m.values)} values for {m.group}"))
            continue
        by_group.setdefault(m.group, []).append((i, m))
    frames: dict[str, pl.DataFrame] = {}
    for name, items in by_group.items():
        g = registry[name]
        try:
            frames[name] = _frame(g, [m for _, m in items])
        except (TypeError, ValueError, pl.exceptions.PolarsError):
            # Find the poison row(s) one by one; keep the rest.
            good = []
            for i, m in items:
                try:
                    _frame(g, [m])
                    good.append(m)
                except (TypeError, ValueError, pl.exceptions.PolarsError) as exc:
                    rejected.append((i, BAD_VALUES, " ".join(str(exc).split())[:200]))
            frames[name] = _frame(g, good) if good else pl.DataFrame(schema=output_schema(g))
    rejected.sort()
    return DecodedBuffer(frames, rejected)
