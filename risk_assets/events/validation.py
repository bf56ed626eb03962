"""Validate raw Kafka payloads against the schema and name the reason of every rejection.

``validate_payloads`` is the single gate between the broker and the lake: each payload is decoded
with the versioned msgspec structs (types, required fields, unknown fields, value bounds), and
rejects carry a stable reason code so the dead-letter store can be counted and plotted by reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import msgspec

# Stable reason codes (metadata keys and dead-letter values depend on them: do not rename).
MALFORMED_JSON = "malformed_json"
MISSING_FIELD = "missing_field"
UNKNOWN_FIELD = "unknown_field"
WRONG_TYPE = "wrong_type"
INVALID_VALUE = "invalid_value"
UNKNOWN_EVENT_TYPE = "unknown_event_type"
UNSUPPORTED_SCHEMA_VERSION = "unsupported_schema_version"
FUTURE_TIMESTAMP = "future_timestamp"
DUPLICATE = "duplicate"
INVALID_UTF8 = "invalid_utf8"
UNDECODABLE = "undecodable"
CLOCK_SKEW = "clock_skew"
REASONS: tuple[str, ...] = (
    MALFORMED_JSON,
    MISSING_FIELD,
    UNKNOWN_FIELD,
    WRONG_TYPE,
    INVALID_VALUE,
    UNKNOWN_EVENT_TYPE,
    UNSUPPORTED_SCHEMA_VERSION,
    FUTURE_TIMESTAMP,
    DUPLICATE,
    INVALID_UTF8,
    UNDECODABLE,
    CLOCK_SKEW,
)
"""``invalid_utf8``: the payload's strings are not UTF-8. ``undecodable``: any other exception while
decoding one message (a bug or an input nobody foresaw: the message is kept, the batch goes on).
``clock_skew``: the message's Kafka timestamp is inconsistent with its position in the log
(a producer clock more than the search slack off; see ``ingest/partitioning.py``)."""

_EXPECTED_GOT = re.compile(r"^Expected `[^`]+`, got `[^`]+`")


_any_json = msgspec.json.Decoder().decode


def classify_error(exc: Exception, raw: bytes | None = None, type_field: str | None = "event_type") -> str:
    """Map a msgspec decode/validation error to a reason code.

    msgspec validates while it parses, so a truncated payload can fail a value check before the
    parser reaches the truncation; with ``raw`` given, payloads that are not JSON at all are
    reported as ``malformed_json`` whatever the first error was. ``type_field``: the payload's
    event-type field (a declared source's own name; ``None`` when it has none).
    """
    if isinstance(exc, UnicodeError):
        return INVALID_UTF8
    if not isinstance(exc, msgspec.ValidationError):
        return MALFORMED_JSON if isinstance(exc, msgspec.DecodeError) else UNDECODABLE
    if raw is not None:
        try:
            _any_json(raw)
        except msgspec.DecodeError:
            return MALFORMED_JSON
        except UnicodeError:
            return INVALID_UTF8
    msg = str(exc)
    if msg.startswith("Object missing required field"):
        return MISSING_FIELD
    if msg.startswith("Object contains unknown field"):
        return UNKNOWN_FIELD
    if type_field is not None and msg.endswith(f"at `$.{type_field}`"):
        return UNKNOWN_EVENT_TYPE
    if msg.endswith("at `$.schema_version`"):
        return UNSUPPORTED_SCHEMA_VERSION
    if _EXPECTED_GOT.match(msg):
        return WRONG_TYPE
    return INVALID_VALUE


@dataclass(frozen=True)
class ValidationOutcome:
    """Indices of valid payloads, and (index, reason, message) of rejected ones."""

    valid: list[int]
    rejected: list[tuple[int, str, str]]


def validate_payloads(
    values: list[bytes], payload_type: Any, type_field: str | None = "event_type"
) -> ValidationOutcome:
    """Decode every payload as ``payload_type`` (a msgspec struct or union of structs);
    ``type_field`` names the event-type field for the ``unknown_event_type`` reason."""
    decode = msgspec.json.Decoder(payload_type).decode
    valid: list[int] = []
    rejected: list[tuple[int, str, str]] = []
    for i, raw in enumerate(values):
        try:
            decode(raw)
        except Exception as exc:  # one bad message never fails the batch (no poison pill)
            text = str(exc) if isinstance(exc, msgspec.MsgspecError) else f"{type(exc).__name__}: {exc}"
            rejected.append((i, classify_error(exc, raw, type_field), text[:500]))
        else:
            valid.append(i)
    return ValidationOutcome(valid, rejected)
