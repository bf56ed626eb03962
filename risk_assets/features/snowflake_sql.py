"""Feature groups compiled to Snowflake SQL: the declared windows computed where the data lives.

Pure: text in, text out. ``compile_group`` turns one :class:`~risk_assets.features.spec.FeatureGroup`
into one ``SELECT`` over the raw-event mirror (``snowflake_mirror``) and, for label aggregates, the
label mirror; the warehouse joins, filters and aggregates, and only the result — one row per
(entity key, as-of time), the columns of ``group.schema()`` — leaves it. ``snowflake_engine`` runs the
query (or materializes it into the offline-store table inside Snowflake).

The query, for a group with keys ``K``, the as-of range ``[start, end)`` and lookback ``L``:

1. ``EV`` — the group's events with ``event_ts`` in ``(start − L, end)``: its event types, keys not
   null, each id once (the first-arrived copy by ingestion time, as the lake and mirror readers),
   time as epoch milliseconds (``TS``) so window arithmetic is integer;
   for label aggregates, the earliest qualifying ``label_ts`` of each event (one ``LEFT JOIN`` per
   distinct ``label_where`` set, labels grouped by their key in the warehouse);
2. ``Q`` — the as-of rows: distinct (``K``, ``T = TS``) with ``start <= T < end``;
3. ``J`` — a range join of ``Q`` with ``EV`` on ``K`` and ``T − L < TS <= T`` (the union of every
   feature's window);
4. one ``GROUP BY K, T`` with a conditional aggregate per feature (``COUNT_IF``, ``SUM``, ``AVG``,
   ``MIN``, ``MAX``, ``COUNT(DISTINCT …)``, ``MAX`` of the previous time), ``last`` values through a
   ``QUALIFY ROW_NUMBER() … = 1`` sub-select per feature joined back, ratios on top.

**Window bounds come from one function**, :func:`window_condition` (SEMANTICS_VERSION 1:
``(t − o − w, t − o]``) together with :func:`join_span` (the range join's bounds, the union of the
windows). A change of window semantics (issue 12's version 2: end exclusive at ``t``, tile-aligned
starts ``floor_h(t − o) − w``) is a change of those two functions, plus ``time_since_last``'s "strictly
before t" that :func:`window_condition` already expresses for v1.

Safety: identifiers (table and column names) are checked against ``[A-Za-z_][A-Za-z0-9_$]*`` and
double-quoted upper-case (the mirror creates its tables unquoted, i.e. upper-case); every value —
filter values, event types, time bounds — is a named bind parameter (``%(pN)s``, the connector's
``pyformat`` style); the only numbers written into the text are window lengths and offsets in milliseconds,
integers taken from the validated definition. The SQL sticks to what both Snowflake and the
fakesnow/DuckDB dialect accept (checked by the tests through the fakesnow server).

Supported: every aggregation kind of the language — ``count``, ``sum``, ``mean``, ``min``, ``max``,
``distinct_count``, ``last``, ``time_since_last``, ``ratio``, ``label_count``, ``label_rate`` (both
denominators) — with filters and offsets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from risk_assets.features.offline_store import CREATED_TS
from risk_assets.features.spec import (
    EVENT_TS,
    Aggregate,
    FeatureGroup,
    LabelAggregate,
    Ratio,
    Where,
)

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def quote_ident(name: str) -> str:
    """``name`` as a quoted upper-case Snowflake identifier; refuses anything but a plain name."""
    if not isinstance(name, str) or not _IDENT.match(name):
        raise ValueError(f"not a plain Snowflake identifier: {name!r}")
    return f'"{name.upper()}"'


def quote_table(name: str) -> str:
    """A table name, optionally ``database.schema.table``, each part quoted by :func:`quote_ident`."""
    parts = name.split(".") if isinstance(name, str) else [name]
    if not 1 <= len(parts) <= 3:
        raise ValueError(f"not a plain Snowflake table name: {name!r}")
    return ".".join(quote_ident(p) for p in parts)


def _ms(d: timedelta) -> int:
    return int(d // timedelta(milliseconds=1))


def naive_utc(ms: int) -> datetime:
    """Epoch milliseconds as the naive UTC datetime a ``TIMESTAMP_NTZ`` parameter takes."""
    return (_EPOCH + timedelta(milliseconds=ms)).replace(tzinfo=None)


def epoch_ms(t: datetime) -> int:
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return -(-(t - _EPOCH) // timedelta(milliseconds=1))


# -- window bounds: the one place that knows the semantics version ------------------------------
def window_condition(ts: str, t: str, window_ms: int, offset_ms: int) -> str:
    """SQL for "the event at time ``ts`` is in the window of the as-of time ``t``" (both epoch-ms
    expressions). SEMANTICS_VERSION 1: ``t − o − w < ts <= t − o``."""
    w, o = int(window_ms), int(offset_ms)
    return f"({ts} > {t} - {o + w} AND {ts} <= {t} - {o})"


def join_span(t: str, ts: str, lookback_ms: int) -> str:
    """SQL bounds of the range join: every window of a group whose longest ``w + o`` is
    ``lookback_ms`` lies in ``t − lookback < ts <= t`` (SEMANTICS_VERSION 1)."""
    return f"{ts} > {t} - {int(lookback_ms)} AND {ts} <= {t}"


def events_lookback(lookback_ms: int) -> int:
    """Events before ``start − lookback`` (exclusive) are never in a window at ``t >= start``."""
    return int(lookback_ms)


# -- compiled query ------------------------------------------------------------------------------
@dataclass(frozen=True)
class CompiledQuery:
    """SQL text with named ``%(pN)s`` placeholders (the connector's ``pyformat`` style), their
    values, and the output columns (keys, ``event_ts``, the features[, ``created_ts``])."""

    sql: str
    params: dict[str, Any]
    columns: tuple[str, ...]


@dataclass
class _Params:
    """Named parameters: the text is assembled out of order (sub-selects before the aggregate
    that needed them), so placeholders carry names instead of positions."""

    values: dict[str, Any] = field(default_factory=dict)

    def bind(self, value: Any) -> str:
        name = f"p{len(self.values)}"
        self.values[name] = value
        return f"%({name})s"


def _filter_sql(w: Where, col: str, p: _Params) -> str:
    """One filter as SQL (never null: a null column fails every op but ``is_null``)."""
    if w.op == "is_null":
        return f"{col} IS NULL"
    if w.op == "not_null":
        return f"{col} IS NOT NULL"
    ops = {"eq": "=", "ne": "<>", "gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    if w.op in ops:
        return f"({col} IS NOT NULL AND {col} {ops[w.op]} {p.bind(w.value)})"
    members = ", ".join(p.bind(v) for v in w.values())
    neg = "NOT " if w.op == "not_in" else ""
    return f"({col} IS NOT NULL AND {col} {neg}IN ({members}))"


def _all(conds: list[str]) -> str:
    return " AND ".join(conds) if conds else "TRUE"


def _col(name: str) -> str:
    """The alias of a source column inside the query (``C_<NAME>``)."""
    return quote_ident(f"C_{name}")


def compile_group(
    group: FeatureGroup,
    events_table: str,
    start: datetime,
    end: datetime,
    labels_table: str | None = None,
    *,
    created_ts: bool = False,
) -> CompiledQuery:
    """One ``SELECT`` computing ``group`` for as-of times in ``[start, end)`` from the raw-event
    mirror ``events_table`` (the group's source layout) and, for label aggregates, the label
    mirror ``labels_table`` (its label source's layout). Same rows and values as
    ``batch.compute_feature_group`` on the same events and labels (floats up to rounding);
    ``event_ts`` comes out as ``TIMESTAMP_NTZ(3)`` (UTC wall time). ``created_ts`` adds the offline
    store's column of that name (``offline_store.with_created_ts``: the latest ingestion time of
    the entity's group events at that ``event_ts``; null for a source without one)."""
    src = group.source
    if group.needs_labels and not labels_table:
        raise ValueError(f"{group.name}: label aggregates need labels_table")
    start_ms, end_ms = epoch_ms(start), epoch_ms(end)
    if end_ms < start_ms:
        raise ValueError("end must not be before start")
    p = _Params()
    keys = list(group.entity.keys)
    kq = [_col(k) for k in keys]
    lookback = _ms(group.max_window)
    ts_raw = quote_ident(src.timestamp)

    # Columns the features read (filters and aggregated columns), once each.
    used: list[str] = []
    for f in group.features:
        if isinstance(f, Ratio):
            continue
        for c in [w.column for w in f.where] + ([f.column] if isinstance(f, Aggregate) and f.column else []):
            if c not in used and c not in keys:
                used.append(c)

    # 1. EV: the group's events of (start − lookback, end), each id once.
    select = [f"{quote_ident(k)} AS {_col(k)}" for k in keys]
    select += [
        f"DATE_PART(EPOCH_MILLISECOND, {ts_raw}) AS TS",
        f"{quote_ident(src.id_column)} AS ID",
    ]
    select += [f"{quote_ident(c)} AS {_col(c)}" for c in used]
    if src.ingestion_timestamp:
        select.append(f"{quote_ident(src.ingestion_timestamp)} AS ARRIVED")
    where = [f"{quote_ident(k)} IS NOT NULL" for k in keys]
    if src.event_type_column is not None:
        types = ", ".join(p.bind(t) for t in sorted(group.source_event_types))
        where.append(f"{quote_ident(src.event_type_column)} IN ({types})")
    # On the raw column (TIMESTAMP_NTZ, UTC wall time) so the warehouse can prune micro-partitions.
    where.append(f"{ts_raw} > {p.bind(naive_utc(start_ms - events_lookback(lookback)))}")
    where.append(f"{ts_raw} < {p.bind(naive_utc(end_ms))}")
    first_copy = (
        f"QUALIFY ROW_NUMBER() OVER (PARTITION BY {quote_ident(src.id_column)} "
        f"ORDER BY {quote_ident(src.ingestion_timestamp)}) = 1"
        if src.ingestion_timestamp
        else f"QUALIFY ROW_NUMBER() OVER (PARTITION BY {quote_ident(src.id_column)} ORDER BY TS) = 1"
    )
    ctes = [
        f"EV0 AS (SELECT {', '.join(select)} FROM {quote_table(events_table)} "
        f"WHERE {' AND '.join(where)} {first_copy})"
    ]

    # Labels: per distinct label_where set, each event's earliest qualifying label time.
    label_sets: dict[tuple[Where, ...], str] = {}
    for f in group.features:
        if isinstance(f, LabelAggregate) and f.label_where not in label_sets:
            label_sets[f.label_where] = f"LK{len(label_sets)}"
    ev_cols = ["EV0.*"]
    carried = ["TS", "ID", *(_col(c) for c in used)]  # what J carries besides the keys and T
    joins = []
    for lw, alias in label_sets.items():
        lsrc = group.label_source
        assert lsrc is not None and labels_table is not None
        lts = quote_ident(lsrc.timestamp)
        conds = [_filter_sql(w, quote_ident(w.column), p) for w in lw]
        conds.append(f"{lts} < {p.bind(naive_utc(end_ms))}")
        ctes.append(
            f"{alias}_L AS (SELECT {quote_ident(lsrc.key)} AS LID, "
            f"MIN(DATE_PART(EPOCH_MILLISECOND, {lts})) AS K "
            f"FROM {quote_table(labels_table)} WHERE {_all(conds)} GROUP BY {quote_ident(lsrc.key)})"
        )
        ev_cols.append(f"{alias}_L.K AS {alias}")
        carried.append(alias)
        joins.append(f"LEFT JOIN {alias}_L ON {alias}_L.LID = EV0.ID")
    ctes.append(f"EV AS (SELECT {', '.join(ev_cols)} FROM EV0 {' '.join(joins)})")

    # 2. Q: the as-of rows. 3. J: the range join.
    arrived = "MAX(ARRIVED)" if src.ingestion_timestamp else "CAST(NULL AS TIMESTAMP_NTZ(3))"
    ctes.append(
        f"Q AS (SELECT {', '.join(kq)}, TS AS T, {arrived} AS CREATED FROM EV "
        f"WHERE TS >= {p.bind(start_ms)} AND TS < {p.bind(end_ms)} GROUP BY {', '.join(kq)}, TS)"
    )
    on = " AND ".join(f"EV.{k} = Q.{k}" for k in kq)
    ctes.append(
        f"J AS (SELECT {', '.join(f'Q.{k}' for k in kq)}, Q.T, Q.CREATED, "
        f"{', '.join(f'EV.{c}' for c in carried)} "
        f"FROM Q JOIN EV ON {on} AND {join_span('Q.T', 'EV.TS', lookback)})"
    )

    # 4. Aggregates.
    aggs: list[str] = []
    lasts: list[tuple[str, str]] = []  # (feature column alias, CTE name)
    for f in group.features:
        name = quote_ident(f.name)
        if isinstance(f, Ratio):
            continue
        in_window = window_condition("TS", "T", _ms(f.window), _ms(f.offset))
        cond = _all([in_window, *(_filter_sql(w, _col(w.column), p) for w in f.where)])
        if isinstance(f, LabelAggregate):
            lk = label_sets[f.label_where]
            d = _ms(f.availability_delay)
            labelled = f"COUNT_IF({cond} AND {lk} IS NOT NULL AND {lk} <= T - {d})"
            if f.kind == "label_count":
                aggs.append(f"{labelled} AS {name}")
                continue
            n = f"COUNT_IF({cond})" if f.denominator == "all" else f"COUNT_IF({cond} AND TS <= T - {d})"
            aggs.append(f"CAST({labelled} AS DOUBLE) / NULLIF({n}, 0) AS {name}")
            continue
        col = _col(f.column) if f.column else None
        match f.kind:
            case "count":
                aggs.append(f"COUNT_IF({cond}) AS {name}")
            case "sum":
                aggs.append(f"COALESCE(SUM(CASE WHEN {cond} THEN CAST({col} AS DOUBLE) END), 0) AS {name}")
            case "mean":
                aggs.append(f"AVG(CASE WHEN {cond} THEN CAST({col} AS DOUBLE) END) AS {name}")
            case "min" | "max":
                aggs.append(f"{f.kind.upper()}(CASE WHEN {cond} THEN {col} END) AS {name}")
            case "distinct_count":
                aggs.append(f"COUNT(DISTINCT CASE WHEN {cond} THEN {col} END) AS {name}")
            case "time_since_last":
                prev = f"MAX(CASE WHEN {cond} AND TS < T THEN TS END)"
                aggs.append(f"CAST(T - {prev} AS DOUBLE) / 1000 AS {name}")
            case "last":
                cte = f"LAST{len(lasts)}"
                ctes.append(
                    f"{cte} AS (SELECT {', '.join(kq)}, T, {col} AS V FROM J "
                    f"WHERE {cond} AND {col} IS NOT NULL "
                    f"QUALIFY ROW_NUMBER() OVER (PARTITION BY {', '.join(kq)}, T "
                    "ORDER BY TS DESC, ID DESC) = 1)"
                )
                lasts.append((name, cte))
            case _:  # pragma: no cover - the language has no other kinds
                raise ValueError(f"{f.name}: aggregation {f.kind!r} has no SQL form")
    group_cols = ", ".join([*kq, "T"])
    ctes.append(
        f"A AS (SELECT {group_cols}, MAX(CREATED) AS CREATED{''.join(', ' + a for a in aggs)} "
        f"FROM J GROUP BY {group_cols})"
    )

    # 5. Final projection: keys, event_ts (epoch ms), features in definition order, ratios on top.
    out = [f"A.{k} AS {quote_ident(raw)}" for k, raw in zip(kq, keys, strict=True)]
    out.append(f"TO_TIMESTAMP_NTZ(A.T, 3) AS {quote_ident(EVENT_TS)}")
    last_of = dict(lasts)
    for f in group.features:
        name = quote_ident(f.name)
        if isinstance(f, Ratio):
            num, den = f"CAST(A.{quote_ident(f.numerator)} AS DOUBLE)", f"A.{quote_ident(f.denominator)}"
            empty = "CAST(0 AS DOUBLE)" if f.empty == "zero" else "CAST(NULL AS DOUBLE)"
            out.append(f"CASE WHEN {den} IS NULL OR {den} = 0 THEN {empty} ELSE {num} / {den} END AS {name}")
        elif name in last_of:
            out.append(f"{last_of[name]}.V AS {name}")
        else:
            out.append(f"A.{name} AS {name}")
    if created_ts:
        out.append(f"A.CREATED AS {quote_ident(CREATED_TS)}")
    tail = " ".join(
        f"LEFT JOIN {cte} ON {' AND '.join(f'{cte}.{k} = A.{k}' for k in kq)} AND {cte}.T = A.T"
        for _, cte in lasts
    )
    order = ", ".join([*(f"A.{k}" for k in kq), "A.T"])
    sql = f"WITH {', '.join(ctes)} SELECT {', '.join(out)} FROM A {tail} ORDER BY {order}"
    extra = (CREATED_TS,) if created_ts else ()
    return CompiledQuery(sql, dict(p.values), (*keys, EVENT_TS, *group.feature_names, *extra))
