"""Feature vectors for scoring: the model's input order, online rows from Redis in one round trip,
request-time features from the event, and a circuit breaker for a Redis that is gone.

A :class:`FeaturePlan` is built once per model (when it is loaded) from the manifest's ``features``
list: which columns are request-time features (``req_*``, :mod:`risk_assets.models.request_features`)
and which come from which online feature group (``{group}__{feature}``, the training set's column
names, :func:`risk_assets.models.training_set.model_feature_columns`). A name that is neither makes
the model unservable and it is refused before it is swapped in.

Per request the :class:`FeatureFetcher` fills a float64 matrix (NaN = missing): one
``OnlineStore.read_async`` (a single ``MGET`` through ``redis.asyncio``, so the event loop is not
blocked during the round trip; the shadow thread uses the blocking ``read``) for every (group,
entity) pair of every event whose key columns are present in the event, then the request-time
features. Only groups the model uses are read. When Redis is unavailable the breaker opens:
requests skip Redis entirely (online features stay NaN, ``degraded`` is reported) until a background
probe sees Redis answer again.

Answering is not holding the data: a Redis restarted without persistence answers at once, empty.
The probe therefore reads the online store's epoch marker (``store_epoch.py``; committed by the
offline → online sync after a full resync) every ``probe_s``, under traffic too. While the marker is
missing, responses say ``degraded`` (online features are read and used where present, but most are
missing) and ``/readyz`` answers 503; it is back once the sync has resynced the store.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from risk_assets.features.groups import GROUPS_BY_NAME
from risk_assets.features.ingestion import group_layout
from risk_assets.features.online_store import (
    GroupLayout,
    OnlineStore,
    OnlineStoreError,
    OnlineStoreUnavailable,
)
from risk_assets.features.online_tiles import TileLayout, TileStore, finish, tile_layout
from risk_assets.features.spec import FeatureGroup
from risk_assets.models.request_features import REQUEST_FEATURE_NAMES, request_features
from risk_assets.serving.service_metrics import ServiceMetrics

log = logging.getLogger("risk_assets.serving")

GROUP_SEPARATOR = "__"
_NAN = float("nan")


class UnservableFeatures(ValueError):
    """The model wants features the service cannot produce (one-line message)."""


@dataclass(frozen=True, slots=True)
class GroupPlan:
    """One online feature group as the model uses it."""

    name: str
    layout: GroupLayout
    tiles: TileLayout
    key_columns: tuple[str, ...]
    dest: np.ndarray  # model vector positions
    src: np.ndarray  # positions in the group's packed row (same length as dest)
    whole: bool  # src is the whole row in order: assign the row directly


@dataclass(frozen=True)
class FeaturePlan:
    """How to build the model's input vector (``features`` order) for an event."""

    features: tuple[str, ...]
    request: tuple[tuple[str, int], ...]
    groups: tuple[GroupPlan, ...]

    @property
    def n(self) -> int:
        return len(self.features)


def build_plan(
    features: Sequence[str],
    feature_groups: Mapping[str, str] | None = None,
    groups: Mapping[str, FeatureGroup] | None = None,
) -> FeaturePlan:
    """The plan for a model input list; raises :class:`UnservableFeatures` naming what is unknown.

    ``feature_groups`` (the manifest's ``{group: version}``) is checked against the deployed group
    definitions (``groups``, by name; default: the deployed set): a model trained on another version
    of a group would read rows of a different feature list, so it is refused. A helper feature
    (``model_input=False``) is never a model input and is refused too.
    """
    groups_by_name = GROUPS_BY_NAME if groups is None else groups
    features = tuple(features)
    if not features:
        raise UnservableFeatures("manifest lists no features")
    if len(set(features)) != len(features):
        raise UnservableFeatures("manifest lists duplicate features")
    request_names = set(REQUEST_FEATURE_NAMES)
    request: list[tuple[str, int]] = []
    by_group: dict[str, list[tuple[int, int]]] = {}
    unknown: list[str] = []
    helpers: list[str] = []
    positions: dict[str, dict[str, int]] = {}
    for idx, name in enumerate(features):
        if name in request_names:
            request.append((name, idx))
            continue
        group_name, sep, feature = name.partition(GROUP_SEPARATOR)
        group = groups_by_name.get(group_name) if sep else None
        if group is None:
            unknown.append(name)
            continue
        pos = positions.setdefault(group_name, {f: i for i, f in enumerate(group.feature_names)})
        if feature not in pos:
            unknown.append(name)
            continue
        if feature in group.helper_feature_names:
            helpers.append(name)
            continue
        by_group.setdefault(group_name, []).append((idx, pos[feature]))
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else "")
        raise UnservableFeatures(f"{len(unknown)} feature(s) unknown to this service: {shown}")
    if helpers:
        raise UnservableFeatures(f"helper feature(s) are not model inputs (model_input=False): {helpers[:5]}")
    stale = {
        g: (v, groups_by_name[g].version)
        for g, v in (feature_groups or {}).items()
        if g in by_group and groups_by_name[g].version != v
    }
    if stale:
        detail = ", ".join(f"{g} trained on {v}, deployed {d}" for g, (v, d) in sorted(stale.items()))
        raise UnservableFeatures(f"feature group version mismatch: {detail}")
    groups = []
    for group_name, pairs in by_group.items():
        layout = group_layout(groups_by_name[group_name])
        dest = np.array([d for d, _ in pairs], dtype=np.intp)
        src = np.array([s for _, s in pairs], dtype=np.intp)
        whole = len(src) == len(layout.features) and bool(np.all(src == np.arange(len(src))))
        tiles = tile_layout(groups_by_name[group_name])
        groups.append(GroupPlan(group_name, layout, tiles, layout.key_columns, dest, src, whole))
    return FeaturePlan(features, tuple(request), tuple(groups))


class RedisBreaker:
    """Circuit breaker + liveness + completeness of the online store.

    A failed read opens the breaker; while open, requests do not touch Redis. A background thread
    reads the store's epoch marker every ``probe_s`` (a ``GET``: it keeps ``last_ok`` fresh for
    ``/readyz`` without traffic, closes the breaker on the first answer, and sets ``epoch_ok``:
    whether the store's content is complete — a restarted, empty Redis answers but has no marker).
    """

    def __init__(self, store: OnlineStore, metrics: ServiceMetrics, probe_s: float) -> None:
        self.store = store
        self.metrics = metrics
        self.probe_s = probe_s
        self.open = False
        self.last_ok = 0.0  # time.monotonic() of the last successful Redis round trip
        self.epoch_ok = False  # the online store's epoch marker was present at the last probe
        self.epoch_lost_total = 0
        self.opened_total = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        metrics.gauges.append(self.metric_lines)

    @property
    def status(self) -> str:
        """``open`` (Redis unreachable), ``no_epoch`` (reachable but emptied/unsynced) or ``ok``."""
        return "open" if self.open else "ok" if self.epoch_ok else "no_epoch"

    def metric_lines(self) -> list[str]:
        """Prometheus lines about the online store's epoch marker."""
        return [
            "# HELP risk_serve_online_store_epoch_ok 1 while the online store's epoch marker is present.",
            "# TYPE risk_serve_online_store_epoch_ok gauge",
            f"risk_serve_online_store_epoch_ok {int(self.epoch_ok)}",
            "# HELP risk_serve_online_store_epoch_lost_total Times the epoch marker was found missing.",
            "# TYPE risk_serve_online_store_epoch_lost_total counter",
            f"risk_serve_online_store_epoch_lost_total {self.epoch_lost_total}",
        ]

    def failed(self, kind: str, exc: BaseException) -> None:
        """Record a failed read (called on the request path)."""
        self.metrics.redis_failures[kind] = self.metrics.redis_failures.get(kind, 0) + 1
        if not self.open:
            self.open = True
            self.opened_total += 1
            log.warning("online store unavailable, serving degraded (breaker open): %s", exc)

    def probe(self) -> bool:
        """Read the epoch marker once; close the breaker if Redis answers, note whether the marker
        is there."""
        try:
            marker = self.store.epoch()
        except OnlineStoreError as exc:
            self.metrics.redis_failures["probe"] = self.metrics.redis_failures.get("probe", 0) + 1
            if not self.open:
                self.open = True
                self.opened_total += 1
                log.warning("online store probe failed, serving degraded (breaker open): %s", exc)
            return False
        self.last_ok = time.monotonic()
        if self.open:
            self.open = False
            log.info("online store answers again, breaker closed")
        if marker is None and (self.epoch_ok or not self.epoch_lost_total):
            self.epoch_lost_total += 1
            log.warning(
                "online store answers but its epoch marker %s is missing (emptied or not synced yet): "
                "serving degraded, not ready, until the sync has resynced it",
                self.store.epoch_key,
            )
        elif marker is not None and not self.epoch_ok and self.epoch_lost_total:
            log.info("online store epoch marker is back (%s): serving normally", marker)
        self.epoch_ok = marker is not None
        return True

    def start(self) -> None:
        """Start the probe thread."""
        self._thread = threading.Thread(target=self._run, name="redis-probe", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the probe thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            # Under traffic too: reads do not tell whether the data is still there, the marker does
            # (one GET per probe_s).
            self.probe()
            self._stop.wait(self.probe_s)


class FeatureFetcher:
    """Builds model input matrices for decoded events (the hot path)."""

    def __init__(self, store: OnlineStore, breaker: RedisBreaker, metrics: ServiceMetrics) -> None:
        self.store = store
        self.tiles = TileStore(store)
        self.breaker = breaker
        self.metrics = metrics

    def matrix(self, events: Sequence[msgspec.Struct], plan: FeaturePlan) -> tuple[np.ndarray, bool]:
        """``(X, degraded)``: one row per event in ``plan`` order, NaN where missing (blocking read:
        for threads, e.g. the shadow scorer)."""
        x, reads, where = self._prepare(events, plan)
        rows = self._read(reads) if reads else []
        return x, self._fill(x, rows, where, events)

    async def matrix_async(
        self, events: Sequence[msgspec.Struct], plan: FeaturePlan
    ) -> tuple[np.ndarray, bool]:
        """:meth:`matrix` for the event loop: the online rows are read with ``redis.asyncio``, so the
        loop keeps serving other requests during the round trip."""
        x, reads, where = self._prepare(events, plan)
        rows: list[Any] | None = []
        if reads:
            if self.breaker.open:
                rows = None
            else:
                try:
                    rows = await self.tiles.read_async(reads)
                except OnlineStoreError as exc:
                    rows = self._failed(exc)
                else:
                    self.breaker.last_ok = time.monotonic()
        return x, self._fill(x, rows, where, events)

    def _prepare(
        self, events: Sequence[msgspec.Struct], plan: FeaturePlan
    ) -> tuple[np.ndarray, list[tuple[TileLayout, Any]], list[tuple[int, GroupPlan]]]:
        """The NaN matrix with the request-time features filled, and the online reads it needs."""
        x = np.full((len(events), plan.n), np.nan)
        reads: list[tuple[TileLayout, Any]] = []
        where: list[tuple[int, GroupPlan]] = []
        for i, ev in enumerate(events):
            for gp in plan.groups:
                cols = gp.key_columns
                if len(cols) == 1:
                    key = getattr(ev, cols[0], None)
                    if key is None:
                        continue
                else:
                    parts = tuple(getattr(ev, c, None) for c in cols)
                    if None in parts:
                        continue
                    key = parts
                reads.append((gp.tiles, key))
                where.append((i, gp))
            if plan.request:
                rf = request_features(_EventView(ev))
                row = x[i]
                for name, idx in plan.request:
                    row[idx] = rf[name]
        return x, reads, where

    def _fill(
        self,
        x: np.ndarray,
        rows: list[Any] | None,
        where: list[tuple[int, GroupPlan]],
        events: Sequence[msgspec.Struct],
    ) -> bool:
        """Finish every group's windows at its event's time from the tiles read (``rows``: one tile
        list per read) into ``x``; returns ``degraded``. An entity without tiles had no event in any
        window: its values are the empty windows' (counts 0), as offline."""
        degraded = not self.breaker.epoch_ok  # an emptied store: most online features are missing
        if rows is None:
            degraded = True
        elif where:
            lookups = self.metrics.feature_lookups
            misses = self.metrics.feature_misses
            inexact = self.metrics.feature_inexact
            for (i, gp), tiles in zip(where, rows, strict=True):
                lookups[gp.name] = lookups.get(gp.name, 0) + 1
                if not tiles:
                    misses[gp.name] = misses.get(gp.name, 0) + 1
                values, exact = finish(gp.tiles, tiles, events[i].event_ts)
                if not exact:
                    inexact[gp.name] = inexact.get(gp.name, 0) + 1
                vec = np.array([_NAN if v is None else v for v in values], dtype=np.float64)
                if gp.whole:
                    x[i, gp.dest] = vec
                else:
                    x[i, gp.dest] = vec[gp.src]
        if degraded:
            self.metrics.degraded_events += len(events)
        return degraded

    def _read(self, reads: list[tuple[TileLayout, Any]]) -> list[Any] | None:
        breaker = self.breaker
        if breaker.open:
            return None
        try:
            rows = self.tiles.read(reads)
        except OnlineStoreError as exc:
            return self._failed(exc)
        breaker.last_ok = time.monotonic()
        return rows

    def _failed(self, exc: OnlineStoreError) -> None:
        if isinstance(exc, OnlineStoreUnavailable):
            self.breaker.failed("unavailable", exc)
        else:  # e.g. a row that does not match its layout
            self.metrics.redis_failures["bad_row"] = self.metrics.redis_failures.get("bad_row", 0) + 1
            log.warning("online store read failed: %s", exc)
        return None


class _EventView(Mapping[str, Any]):
    """A read-only mapping over a decoded event struct (what ``request_features`` expects);
    fields the event type does not have read as absent."""

    __slots__ = ("_ev",)

    def __init__(self, ev: msgspec.Struct) -> None:
        self._ev = ev

    def __getitem__(self, key: str) -> Any:
        if key == "event_type":
            return self._ev.__struct_config__.tag
        try:
            return getattr(self._ev, key)
        except AttributeError:
            raise KeyError(key) from None

    def get(self, key: str, default: Any = None) -> Any:
        if key == "event_type":
            return self._ev.__struct_config__.tag
        return getattr(self._ev, key, default)

    def __iter__(self) -> Any:
        return iter(("event_type", *self._ev.__struct_fields__))

    def __len__(self) -> int:
        return len(self._ev.__struct_fields__) + 1
