"""Frames → Kafka message payloads (JSON), and optional injection of bad input.

``encode_events`` writes exactly the fields of each event's schema struct (``event_type`` first,
timestamps as int ms, no ``ingest_ts``) so ``msgspec.json.decode(b, type=RiskEvent)`` accepts every
message; the JSON is built by Polars in Rust, one struct per event type, not per row in Python.

``inject_bad_input`` adds, after a random ``rate`` share of messages, one bad message each, of a
random kind from :data:`BAD_KINDS`, and records every one in a manifest so that tests can assert
exact dead-letter counts: all kinds are dead letters except ``duplicate`` (a byte-identical resend
of a real event, same ``event_id``, that a deduplicating consumer must drop).
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
import numpy as np
import polars as pl

from risk_assets.events.schema import FraudLabel, RiskEvent
from risk_assets.simulator import ids

BAD_KINDS: tuple[str, ...] = (
    "malformed_json",  # not parseable: truncated mid-object
    "missing_field",  # a required field removed
    "unknown_field",  # a field no schema has
    "wrong_type",  # e.g. event_ts as a string, ip_asn as a string
    "impossible_value",  # negative amount, or a country code that is not two capitals
    "future_timestamp",  # event_ts 1–7 days after the message's ingestion time
    "duplicate",  # the same event resent (valid, same event_id): dedup, not a dead letter
)
DEAD_LETTER_KINDS = frozenset(BAD_KINDS) - {"duplicate"}

MANIFEST_SCHEMA: dict[str, pl.DataType] = {
    "stream_index": pl.Int64(),
    "kind": pl.String(),
    "dead_letter": pl.Boolean(),
    "event_id": pl.String(),
    "source_event_id": pl.String(),
    "timestamp_ms": pl.Int64(),
}


def _struct_fields() -> dict[str, list[str]]:
    out = {}
    for cls in RiskEvent.__args__:  # type: ignore[attr-defined]
        info = msgspec.inspect.type_info(cls)
        out[info.tag] = [f.encode_name for f in info.fields]
    return out


EVENT_FIELDS: dict[str, list[str]] = _struct_fields()
LABEL_FIELDS: list[str] = [f.encode_name for f in msgspec.inspect.type_info(FraudLabel).fields]
_TS_COLUMNS = ("event_ts", "label_ts")


def _field_expr(name: str) -> pl.Expr:
    if name in _TS_COLUMNS:
        return pl.col(name).dt.epoch("ms").alias(name)
    return pl.col(name)


def _encode_json(frame: pl.DataFrame, fields: list[str]) -> pl.Series:
    return frame.select(
        pl.struct([_field_expr(f) for f in fields]).struct.json_encode().alias("json")
    ).to_series()


def encode_events(events: pl.DataFrame) -> list[bytes]:
    """One JSON payload per row of an archive-shaped events frame, in row order."""
    indexed = events.with_row_index("_row")
    parts = []
    for etype, fields in EVENT_FIELDS.items():
        sub = indexed.filter(pl.col("event_type") == etype)
        if sub.height:
            parts.append(pl.DataFrame([sub["_row"], _encode_json(sub, ["event_type", *fields])]))
    if not parts:
        return []
    return pl.concat(parts).sort("_row")["json"].cast(pl.Binary).to_list()


def encode_labels(labels: pl.DataFrame) -> list[bytes]:
    """One JSON payload per row of an archive-shaped labels frame, in row order."""
    if labels.height == 0:
        return []
    return _encode_json(labels, LABEL_FIELDS).cast(pl.Binary).to_list()


@dataclass(frozen=True)
class MessageBatch:
    """Messages for one topic, in the order to produce them (key = user_id)."""

    values: list[bytes]
    keys: list[bytes]
    timestamps: list[int]  # ms: the simulated ingest_ts (replay) or the order key (live)
    manifest: pl.DataFrame  # bad messages in this batch (see MANIFEST_SCHEMA)

    def __len__(self) -> int:
        return len(self.values)


def event_batch(
    events: pl.DataFrame, bad_rate: float = 0.0, seed: int = 0, batch_key: int = 0
) -> MessageBatch:
    """Encode ``events`` in ingest order (then event_id) and inject bad input at ``bad_rate``.

    The injection is seeded by (``seed``, ``batch_key``) so a batch always gets the same bad messages.
    """
    ordered = events.sort("ingest_ts", "event_id")
    values = encode_events(ordered)
    keys = ordered["user_id"].cast(pl.Binary).to_list()
    timestamps = ordered["ingest_ts"].dt.epoch("ms").to_list()
    if bad_rate <= 0 or not values:
        return MessageBatch(values, keys, timestamps, pl.DataFrame(schema=MANIFEST_SCHEMA))
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 0xBAD, batch_key])))
    return inject_bad_input(
        values, keys, timestamps, bad_rate, rng, ids.seed_key(seed, ids.NS_BAD), batch_key
    )


def _corrupt(kind: str, payload: bytes, ts: int, new_id: str, rng: np.random.Generator) -> bytes:
    if kind == "duplicate":
        return payload
    doc = msgspec.json.decode(payload)
    doc["event_id"] = new_id
    has_amount = "amount" in doc
    if kind == "missing_field":
        del doc[("user_id", "device_id", "ip", "event_ts")[int(rng.integers(4))]]
    elif kind == "unknown_field":
        doc["promo_code"] = "FREE-BTC"
    elif kind == "wrong_type":
        field = ("event_ts", "ip_asn", "amount")[int(rng.integers(3 if has_amount else 2))]
        doc[field] = str(doc[field])
    elif kind == "impossible_value":
        if has_amount and rng.random() < 0.5:
            doc["amount"] = -abs(doc["amount"])
        else:
            doc["ip_country"] = "U1"
    elif kind == "future_timestamp":
        doc["event_ts"] = ts + int(rng.integers(86_400_000, 7 * 86_400_000))
    data = msgspec.json.encode(doc)
    if kind == "malformed_json":
        data = data[: max(1, len(data) // 2)]
    return data


def inject_bad_input(
    values: list[bytes],
    keys: list[bytes],
    timestamps: list[int],
    rate: float,
    rng: np.random.Generator,
    id_key: np.uint64,
    batch_key: int = 0,
) -> MessageBatch:
    """Insert one bad message right after each of ``binomial(n, rate)`` random messages.

    Bad messages other than duplicates get a fresh ``event_id`` so they never collide with real ones.
    The manifest's ``stream_index`` is the bad message's position in the returned batch.
    """
    n = len(values)
    k = int(rng.binomial(n, min(rate, 1.0)))
    positions = np.sort(rng.choice(n, size=k, replace=False))
    kinds = rng.integers(0, len(BAD_KINDS), k)
    new_ids = ids.opaque_ids(
        "ev_", (np.uint64(batch_key) << np.uint64(24)) | np.arange(k, dtype=np.uint64), id_key
    ).to_list()
    out_v: list[bytes] = []
    out_k: list[bytes] = []
    out_t: list[int] = []
    rows = []
    prev = 0
    for j, (pos, kind_i) in enumerate(zip(positions.tolist(), kinds.tolist(), strict=True)):
        out_v += values[prev : pos + 1]
        out_k += keys[prev : pos + 1]
        out_t += timestamps[prev : pos + 1]
        prev = pos + 1
        kind = BAD_KINDS[kind_i]
        source_id = msgspec.json.decode(values[pos])["event_id"]
        bad = _corrupt(kind, values[pos], timestamps[pos], new_ids[j], rng)
        rows.append(
            (
                len(out_v),
                kind,
                kind in DEAD_LETTER_KINDS,
                source_id if kind == "duplicate" else new_ids[j],
                source_id,
                timestamps[pos],
            )
        )
        out_v.append(bad)
        out_k.append(keys[pos])
        out_t.append(timestamps[pos])
    out_v += values[prev:]
    out_k += keys[prev:]
    out_t += timestamps[prev:]
    manifest = pl.DataFrame(rows, schema=MANIFEST_SCHEMA, orient="row")
    return MessageBatch(out_v, out_k, out_t, manifest)


def label_batch(labels: pl.DataFrame) -> MessageBatch:
    """Encode labels in ingest order (then label_id); key = user_id; labels get no bad input."""
    ordered = labels.sort("ingest_ts", "label_id")
    return MessageBatch(
        encode_labels(ordered),
        ordered["user_id"].cast(pl.Binary).to_list(),
        ordered["ingest_ts"].dt.epoch("ms").to_list(),
        pl.DataFrame(schema=MANIFEST_SCHEMA),
    )
