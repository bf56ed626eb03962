"""Request-time features as definitions: plain functions of the request (and optionally of the
features fetched for it), versioned like feature groups and executed by the *same* code when a
training set is built and when ``risk-serve`` scores a request.

A :class:`RequestFeatures` names the request fields it reads (``inputs``: columns of the model's
spine source), the features it returns (``outputs``) and, optionally, fetched features it reads
(``fetched``: ``{group}__{feature}`` columns, helpers included). Its function takes the request as a
mapping — field name → JSON value: strings, numbers, booleans, times as integer milliseconds since
the epoch, a missing field absent or ``None`` — and, when ``fetched`` is declared, a second mapping
of those fetched values (floats, NaN when missing). It returns ``{output: number}``; ``None`` or NaN
means missing.

* **Serving** calls :meth:`RequestFeatures.values` once per request with a view over the decoded
  payload (``risk_assets.serving.feature_fetch``).
* **Training sets** call :meth:`RequestFeatures.frame`, which turns each spine row into exactly that
  mapping (Datetime columns as epoch ms, nulls as ``None``; fetched nulls as NaN) and calls the same
  function; missing values become nulls in the frame, as group features do.

The version is a content hash of the name, ``revision``, inputs, outputs, fetched features and the
function's source text (its bytecode when the source is unavailable): editing the function changes
the version, and a model trained on another version is refused by the promotion gate and by the
service, as a stale group is.

Calendar features (weekend, night, hour in a given time zone) are ordinary functions of the request
time: see :func:`calendar` and the card-payments example (``examples/card_payments``).

Pure Python and Polars: no Dagster, no I/O.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

import polars as pl

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_SEP = "__"

RequestFn = Callable[..., Mapping[str, Any]]


def _code_text(fn: RequestFn) -> str:
    try:
        return inspect.getsource(fn)
    except (OSError, TypeError):  # defined where no source is kept: its bytecode and constants
        code = fn.__code__
        return code.co_code.hex() + repr(code.co_consts) + repr(code.co_names)


@dataclass(frozen=True)
class RequestFeatures:
    """A named, versioned set of request-time features (see the module docstring)."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    fn: RequestFn = field(compare=False, repr=False)
    fetched: tuple[str, ...] = ()
    """``{group}__{feature}`` columns the function reads (passed as its second argument)."""
    revision: int = 1
    """Bump to force a new version without a code change (e.g. a changed helper it calls)."""
    description: str = field(default="", compare=False)
    owner: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"request features {self.name!r}: name must be snake_case")
        for attr in ("inputs", "outputs", "fetched"):
            object.__setattr__(self, attr, tuple(getattr(self, attr)))
        if not self.outputs or len(set(self.outputs)) != len(self.outputs):
            raise ValueError(f"request features {self.name}: outputs must be non-empty and distinct")
        for out in self.outputs:
            if not _NAME.match(out) or _SEP in out:
                raise ValueError(
                    f"request features {self.name}: output {out!r} must be snake_case without '__' "
                    "('__' separates a group from its feature)"
                )
        if len(set(self.inputs)) != len(self.inputs):
            raise ValueError(f"request features {self.name}: duplicate inputs")
        for f in self.fetched:
            if _SEP not in f:
                raise ValueError(
                    f"request features {self.name}: fetched {f!r} is not a {{group}}__{{feature}}"
                )
        if not callable(self.fn):
            raise ValueError(f"request features {self.name}: fn must be callable")
        if isinstance(self.revision, bool) or not isinstance(self.revision, int) or self.revision < 1:
            raise ValueError(f"request features {self.name}: revision must be an integer ≥ 1")

    @cached_property
    def version(self) -> str:
        """Content hash (16 hex digits) of the definition, its function's code included."""
        doc = {
            "name": self.name,
            "revision": self.revision,
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "fetched": list(self.fetched),
            "code": _code_text(self.fn),
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "outputs": list(self.outputs)}

    # ---- one request (the service) ---------------------------------------------------------------

    def values(self, request: Mapping[str, Any], fetched: Mapping[str, float] | None = None) -> list[float]:
        """The outputs for one request, in ``outputs`` order, as floats (NaN = missing)."""
        out = self.fn(request, fetched or {}) if self.fetched else self.fn(request)
        try:
            return [_float(out[o]) for o in self.outputs]
        except KeyError as exc:
            raise ValueError(f"request features {self.name}: the function returned no {exc}") from None

    def compute(
        self, request: Mapping[str, Any], fetched: Mapping[str, float] | None = None
    ) -> dict[str, float]:
        """``{output: float}`` for one request (NaN = missing)."""
        return dict(zip(self.outputs, self.values(request, fetched), strict=True))

    # ---- a frame of requests (training sets) -----------------------------------------------------

    def frame(self, rows: pl.DataFrame) -> pl.DataFrame:
        """The outputs for every row of ``rows`` (which has ``inputs`` and ``fetched`` columns), as
        Float64 columns with nulls where missing — by calling the same function on each row."""
        lacking = [c for c in (*self.inputs, *self.fetched) if c not in rows.columns]
        if lacking:
            raise ValueError(f"request features {self.name}: rows lack {lacking}")
        requests = rows.select(_as_request(rows, c) for c in self.inputs).to_dicts()
        fn = self.fn
        if self.fetched:
            fetched = rows.select(pl.col(c).cast(pl.Float64).fill_null(float("nan")) for c in self.fetched)
            outs = [fn(r, f) for r, f in zip(requests, fetched.to_dicts(), strict=True)]
        else:
            outs = [fn(r) for r in requests]
        columns = {}
        for o in self.outputs:
            try:
                values = [_float(d[o]) for d in outs]
            except KeyError:
                raise ValueError(f"request features {self.name}: the function returned no {o!r}") from None
            columns[o] = pl.Series(o, values, dtype=pl.Float64).fill_nan(None)
        return pl.DataFrame(columns, schema=dict.fromkeys(self.outputs, pl.Float64))


def _as_request(rows: pl.DataFrame, column: str) -> pl.Expr:
    """A column as the service sees it in a JSON payload: times as epoch milliseconds."""
    if isinstance(rows.schema[column], pl.Datetime):
        return pl.col(column).dt.epoch("ms").alias(column)
    return pl.col(column)


def _float(v: Any) -> float:
    return float("nan") if v is None else float(v)


def request_frame(sets: Sequence[RequestFeatures], rows: pl.DataFrame) -> pl.DataFrame:
    """``rows`` with the outputs of every set (one call of each set's function per row). Every set
    reads the original ``rows``; an output named like one of their columns replaces it."""
    computed = [s.frame(rows) for s in sets]
    return rows.with_columns(c for frame in computed for c in frame.iter_columns()) if computed else rows


def check_outputs(sets: Sequence[RequestFeatures]) -> None:
    """Raise if two sets share a name or an output."""
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise ValueError(f"request feature sets with the same name: {names}")
    outputs = [o for s in sets for o in s.outputs]
    dup = sorted({o for o in outputs if outputs.count(o) > 1})
    if dup:
        raise ValueError(f"request feature outputs defined twice: {dup}")


# ---- helpers for calendar features ----------------------------------------------------------------


def local_time(epoch_ms: int, tz: str = "UTC") -> datetime:
    """The request time (epoch ms, as in payloads) as an aware datetime in the IANA zone ``tz``."""
    t = datetime.fromtimestamp(epoch_ms / 1000, UTC)
    if tz == "UTC":
        return t
    from zoneinfo import ZoneInfo

    return t.astimezone(ZoneInfo(tz))


def calendar(epoch_ms: int, tz: str = "UTC", night: tuple[int, int] = (0, 6)) -> dict[str, float]:
    """Calendar features of a request time: ``hour`` (0–23), ``weekday`` (Monday 0), ``is_weekend``
    and ``is_night`` (``night[0] <= hour < night[1]``), in the zone ``tz``."""
    t = local_time(int(epoch_ms), tz)
    lo, hi = night
    night_flag = lo <= t.hour < hi if lo <= hi else (t.hour >= lo or t.hour < hi)
    return {
        "hour": float(t.hour),
        "weekday": float(t.weekday()),
        "is_weekend": float(t.weekday() >= 5),
        "is_night": float(night_flag),
    }
