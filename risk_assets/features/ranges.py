"""Vectorized v2 window queries over items sorted by (entity, time): the core both the spine engine
(items = events) and :func:`risk_assets.features.tiles.finish_windows` (items = tiles) use.

Pure NumPy, no Dagster. The idea (semantics in :mod:`risk_assets.features.spec`): an item at time
``x`` (an event's ``event_ts``, or a tile's ``tile_start``) of a feature with window ``w``, offset
``o`` and hop ``h`` is in the window at query time ``t`` exactly for ``t`` in one interval
``[a, b)`` of query times:

* events, ``o == 0``: ``floor_h(x) − w <= x < t`` ⇔ ``t ∈ [x + 1, floor_h(x) + w + h)``;
* tiles, ``o == 0`` (head tile taken whole): ``t ∈ [x, x + w + h)``;
* both, ``o > 0``: ``floor_h(t − o) ∈ [floor_h(x) + h, floor_h(x) + w]`` ⇔
  ``t ∈ [floor_h(x) + h + o, floor_h(x) + w + h + o)``.

Both ends grow with ``x``, so for a query ``(entity, t)`` the items in its window are one
contiguous run ``[lo, hi)`` of the sorted items: ``hi`` = items with ``a <= t``, ``lo`` = items
with ``b <= t``. With every entity on one integer line (``entity · span + (time − origin)``) that is
two ``searchsorted`` calls for all queries at once; counts and sums are prefix-sum differences,
min/max a sparse table, last/time-since-last a running "latest selected item". Distinct values
and labelled events are counted as intervals: a (item, value) pair counts on ``[a, min(b, a of the
next item with the same value))``, a labelled event on ``[max(a, k + D + 1), b)`` (label time
``k < t − D``), a matured event on ``[max(a, floor_h(x) + h + D), b)`` (``x < floor_h(t − D)``).
Every result is exact (integers) or a float sum taken in 80-bit long double prefix sums.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

_I64_MAX = np.iinfo(np.int64).max
_I64_MIN = np.iinfo(np.int64).min


def group_pairs(item: np.ndarray, code: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(item, code) pairs sorted by (code, item): ``(code_s, item_s)``; ``n`` bounds the items."""
    n = max(n, 1)
    if len(code) and int(code.max()) <= (_I64_MAX - n) // n:
        key = np.sort(code.astype(np.int64) * n + item)  # one int64 sort
        code_s, item_s = np.divmod(key, n)
        return code_s, item_s
    order = np.lexsort((item, code))  # pragma: no cover - too many codes to pack with items
    return code[order], item[order]


@dataclass(frozen=True)
class WindowSpec:
    """A feature's window in ms: length ``w``, offset ``o``, hop ``h``."""

    w: int
    o: int
    h: int


@dataclass
class Layout:
    """Items sorted by (entity, time) and the queries, on one integer line.

    ``eidx``: entity number of each item (ascending); ``x``: item time (ascending within an
    entity); ``points``: True for events (``o == 0`` windows exclude ``x >= t``), False for tiles
    (the head tile is taken whole). ``q_e``: entity number per query (−1: the entity has no item);
    ``q_t``: query time (ms)."""

    eidx: np.ndarray
    x: np.ndarray
    q_e: np.ndarray
    q_t: np.ndarray
    points: bool
    max_reach: int
    origin: int = 0
    span: int = 1
    _active: dict[WindowSpec, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    _ranges: dict[WindowSpec, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    _q: np.ndarray | None = None
    _order: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.eidx = np.asarray(self.eidx, dtype=np.int64)
        self.x = np.asarray(self.x, dtype=np.int64)
        self.q_e = np.asarray(self.q_e, dtype=np.int64)
        self.q_t = np.asarray(self.q_t, dtype=np.int64)
        lo = [int(self.x.min())] if len(self.x) else []
        hi = [int(self.x.max()) + self.max_reach + 1] if len(self.x) else []
        if len(self.q_t):
            lo.append(int(self.q_t.min()))
            hi.append(int(self.q_t.max()))
        self.origin = min(lo) if lo else 0
        self.span = (max(hi) - self.origin + 3) if hi else 3
        n_entities = int(self.eidx[-1]) + 1 if len(self.eidx) else 0
        if n_entities and n_entities > _I64_MAX // self.span - 2:
            raise ValueError("too many entities × time range for one pass; split the spine")

    @property
    def n(self) -> int:
        return len(self.x)

    def encode(self, e: np.ndarray, v: np.ndarray) -> np.ndarray:
        """``e · span + (v − origin)``, the time clipped to ``[−1, span − 1]`` (before / after all)."""
        return e * self.span + np.clip(v - self.origin, -1, self.span - 1)

    @property
    def queries(self) -> np.ndarray:
        """The encoded queries, ascending (see :meth:`count_le`)."""
        if self._q is None:
            q = self.encode(np.maximum(self.q_e, 0), self.q_t)
            self._order = np.argsort(q, kind="stable")
            self._q = q[self._order]
        return self._q

    def count_le(self, sorted_values: np.ndarray) -> np.ndarray:
        """Per query (query order): how many of ``sorted_values`` are <= its encoded time. The
        queries are searched in ascending order (NumPy's binary search reuses the previous bound:
        several times faster than random order), then put back in place."""
        found = np.searchsorted(sorted_values, self.queries, "right")
        out = np.empty_like(found)
        out[self._order] = found
        return out

    def active(self, ws: WindowSpec) -> tuple[np.ndarray, np.ndarray]:
        """Per item: ``[a, b)``, the query times whose window holds it (module docstring)."""
        if ws not in self._active:
            base = self.x - self.x % ws.h
            b = base + ws.w + ws.h + ws.o
            # o == 0: events need x < t (exclusive end); tiles: the head tile is taken whole.
            head = self.x + 1 if self.points else self.x.copy()
            a = base + ws.h + ws.o if ws.o > 0 else head
            self._active[ws] = (a, b)
        return self._active[ws]

    def bounds(self, ws: WindowSpec) -> tuple[np.ndarray, np.ndarray]:
        """Per query: the item run ``[lo, hi)`` of its window (empty for an unknown entity)."""
        if ws not in self._ranges:
            a, b = self.active(ws)
            hi = self.count_le(self.encode(self.eidx, a))
            lo = self.count_le(self.encode(self.eidx, b))
            none = self.q_e < 0
            lo[none] = 0
            hi[none] = 0
            self._ranges[ws] = (lo, np.maximum(hi, lo))
        return self._ranges[ws]

    # -- aggregations -------------------------------------------------------------------------
    def count(self, ws: WindowSpec, weights: np.ndarray) -> np.ndarray:
        """Sum of integer ``weights`` over each window (Int64, exact)."""
        lo, hi = self.bounds(ws)
        p = np.zeros(self.n + 1, dtype=np.int64)
        np.cumsum(weights, dtype=np.int64, out=p[1:])
        return p[hi] - p[lo]

    def fsum(self, ws: WindowSpec, values: np.ndarray, prefix: np.ndarray | None = None) -> np.ndarray:
        """Sum of float ``values`` over each window, from 80-bit long double prefix sums (pass a
        ``prefix`` from :meth:`float_prefix` to share it between windows)."""
        lo, hi = self.bounds(ws)
        p = self.float_prefix(values) if prefix is None else prefix
        return (p[hi] - p[lo]).astype(np.float64)

    def float_prefix(self, values: np.ndarray) -> np.ndarray:
        p = np.zeros(self.n + 1, dtype=np.longdouble)
        np.cumsum(values.astype(np.longdouble), out=p[1:])
        return p

    def latest(self, ws: WindowSpec, sel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per query: the last selected item of its window (``(position, valid)``)."""
        lo, hi = self.bounds(ws)
        if not self.n:
            return np.zeros(len(lo), dtype=np.int64), np.zeros(len(lo), dtype=bool)
        last = np.maximum.accumulate(np.where(sel, np.arange(self.n), -1))
        p = np.where(hi > 0, last[np.maximum(hi - 1, 0)], -1)
        return np.maximum(p, 0), p >= lo

    def extreme(
        self, ws: WindowSpec, values: np.ndarray, valid: np.ndarray, kind: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per query: min or max of the valid ``values`` of its window (``(value, found)``), from
        a sparse table with as many levels as the longest window run needs."""
        lo, hi = self.bounds(ws)
        length = hi - lo
        found = np.zeros(len(lo), dtype=bool)
        if not self.n:
            return np.zeros(len(lo), dtype=values.dtype), found
        is_float = values.dtype.kind == "f"
        if kind == "min":
            sentinel = np.inf if is_float else _I64_MAX
            pick = np.minimum
        else:
            sentinel = -np.inf if is_float else _I64_MIN
            pick = np.maximum
        v = np.where(valid, values, sentinel)
        cnt = np.zeros(self.n + 1, dtype=np.int64)
        np.cumsum(valid, dtype=np.int64, out=cnt[1:])
        found = (cnt[hi] - cnt[lo]) > 0
        out = np.full(len(lo), sentinel, dtype=v.dtype)
        longest = int(length.max()) if len(length) else 0
        if longest == 0:
            return out, found
        levels = [v]
        k = 1
        while 2 * k <= longest:
            prev = levels[-1]
            levels.append(pick(prev[:-k], prev[k:]))
            k *= 2
        has = length > 0
        lvl = np.zeros(len(lo), dtype=np.int64)
        lvl[has] = np.floor(np.log2(length[has])).astype(np.int64)
        # log2 rounding: make sure 2**lvl <= length < 2**(lvl + 1)
        lvl[has] -= (1 << lvl[has]) > length[has]
        lvl[has] += (1 << (lvl[has] + 1)) <= length[has]
        for j in np.unique(lvl[has]):
            qs = np.flatnonzero(has & (lvl == j))
            table = levels[j]
            out[qs] = pick(table[lo[qs]], table[hi[qs] - (1 << j)])
        return out, found

    def intervals(
        self, item: np.ndarray, start: np.ndarray, end: np.ndarray, weights: np.ndarray | None = None,
        *, sorted_starts: bool = False, sorted_ends: bool = False,
    ) -> np.ndarray:  # fmt: skip
        """Per query: the total weight of the intervals ``[start, end)`` (one per entry, belonging
        to the entity of ``item``) that contain the query time. ``sorted_starts`` / ``sorted_ends``:
        the encoded starts / ends are already ascending (``item`` ascending and the bound monotone
        in the item), so they need no sort."""
        keep = start < end
        e = self.eidx[item[keep]]
        ks = self.encode(e, start[keep])
        ke = self.encode(e, end[keep])
        if weights is None:
            out = self.count_le(ks if sorted_starts else np.sort(ks)) - self.count_le(
                ke if sorted_ends else np.sort(ke)
            )
        else:
            wt = weights[keep].astype(np.int64)
            os_ = slice(None) if sorted_starts else np.argsort(ks, kind="stable")
            oe = slice(None) if sorted_ends else np.argsort(ke, kind="stable")
            ps = np.concatenate(([0], np.cumsum(wt[os_])))
            pe = np.concatenate(([0], np.cumsum(wt[oe])))
            out = ps[self.count_le(ks[os_])] - pe[self.count_le(ke[oe])]
        out = out.astype(np.int64)
        out[self.q_e < 0] = 0
        return out

    def distinct(
        self,
        ws: WindowSpec,
        item: np.ndarray,
        code: np.ndarray,
        *,
        grouped: bool = False,
        unique_items: bool = False,
    ) -> np.ndarray:
        """Per query: number of distinct values among the (item, value) pairs of its window
        (``code``: an integer per value — a dense code, or the 64-bit hash itself when ``grouped``).
        A pair counts while it is the
        latest pair of its value in the window: on ``[a, min(b, a of the next item with that
        value))``. ``grouped``: the pairs already come sorted by (code, item) (see
        :func:`group_pairs`); ``unique_items``: one pair per item (events), which spares a sort."""
        a, b = self.active(ws)
        if not len(item):
            return self.intervals(item, item, item)
        code_s, item_s = (code, item) if grouped else group_pairs(item, code, self.n)
        end = b[item_s].copy()
        same = (code_s[1:] == code_s[:-1]) & (self.eidx[item_s[1:]] == self.eidx[item_s[:-1]])
        end[:-1] = np.where(same, np.minimum(end[:-1], a[item_s[1:]]), end[:-1])
        if not unique_items:
            return self.intervals(item_s, a[item_s], end)
        # Back in item order (a scatter, no sort) the starts a[item] are ascending.
        end_of = np.empty(self.n, dtype=np.int64)
        end_of[item_s] = end
        flag = np.zeros(self.n, dtype=bool)
        flag[item_s] = True
        items = np.flatnonzero(flag)
        return self.intervals(items, a[items], end_of[items], sorted_starts=True)

    def labelled(self, ws: WindowSpec, item: np.ndarray, k: np.ndarray, d: int) -> np.ndarray:
        """Per query: (item, label time) pairs of its window with ``k < t − D``."""
        a, b = self.active(ws)
        return self.intervals(item, np.maximum(a[item], k + d + 1), b[item], sorted_ends=True)

    def matured(self, ws: WindowSpec, weights: np.ndarray, d: int) -> np.ndarray:
        """Per query: total ``weights`` of the window's items with ``x < floor_h(t − D)``."""
        a, b = self.active(ws)
        base = self.x - self.x % ws.h
        item = np.arange(self.n)
        # Both bounds grow with the item: already ascending.
        return self.intervals(
            item, np.maximum(a, base + ws.h + d), b, weights, sorted_starts=True, sorted_ends=True
        )
