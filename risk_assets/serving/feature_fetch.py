"""Feature vectors for scoring: the model's input order, online rows from Redis in one round trip,
request-time features from the event, and a circuit breaker for a Redis that is gone.

A :class:`FeaturePlan` is built once per model (when it is loaded) from the manifest's ``features``
list and the service's model specification: which columns are outputs of its request-feature
definitions (:mod:`risk_assets.features.request`; the exchange's ``req_*``) and which come from which
online feature group (``{group}__{feature}``, the training set's column names). A name that is
neither makes the model unservable and it is refused before it is swapped in. Request features that
read fetched features get those values after the Redis read (extra columns of the matrix when the
model does not use them itself), so they see what the training set's point-in-time join gave them.

Per request the :class:`FeatureFetcher` fills a float64 matrix (NaN = missing): one
``OnlineStore.read`` (a single ``MGET``) for every (group, entity) pair of every event whose key
columns are present in the event, then the request-time features. Only groups the model uses are
read. When Redis is unavailable the breaker opens: requests skip Redis entirely (online features
stay NaN, ``degraded`` is reported) until a background probe sees Redis answer again.

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
from risk_assets.features.request import RequestFeatures
from risk_assets.features.spec import FeatureGroup
from risk_assets.models.request_features import EXCHANGE_REQUEST
from risk_assets.serving.service_metrics import ServiceMetrics

log = logging.getLogger("risk_assets.serving")

GROUP_SEPARATOR = "__"


class UnservableFeatures(ValueError):
    """The model wants features the service cannot produce (one-line message)."""


@dataclass(frozen=True, slots=True)
class GroupPlan:
    """One online feature group as the model uses it."""

    name: str
    layout: GroupLayout
    key_columns: tuple[str, ...]
    dest: np.ndarray  # model vector positions
    src: np.ndarray  # positions in the group's packed row (same length as dest)
    whole: bool  # src is the whole row in order: assign the row directly


@dataclass(frozen=True, slots=True)
class RequestPlan:
    """One request-feature definition as the model uses it: where its outputs go (``dest``, -1 for
    an output the model does not use) and where its fetched inputs are (matrix columns)."""

    definition: RequestFeatures
    dest: tuple[int, ...]
    fetched: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class FeaturePlan:
    """How to build the model's input vector (``features`` order) for an event. The matrix has
    ``width`` columns: the model's ``n``, then fetched features only request features read."""

    features: tuple[str, ...]
    request: tuple[RequestPlan, ...]
    groups: tuple[GroupPlan, ...]
    width: int = 0

    @property
    def n(self) -> int:
        return len(self.features)


def build_plan(
    features: Sequence[str],
    feature_groups: Mapping[str, str] | None = None,
    groups: Mapping[str, FeatureGroup] | None = None,
    request: Sequence[RequestFeatures] | None = None,
) -> FeaturePlan:
    """The plan for a model input list; raises :class:`UnservableFeatures` naming what is unknown.

    ``feature_groups`` (the manifest's ``{group: version}``) is checked against the deployed group
    definitions (``groups``, by name; default: the deployed set): a model trained on another version
    of a group would read rows of a different feature list, so it is refused. A helper feature
    (``model_input=False``) is never a model input and is refused too. ``request``: the request
    feature definitions of the service's model spec (default: the exchange's).
    """
    groups_by_name = GROUPS_BY_NAME if groups is None else groups
    request_sets = (EXCHANGE_REQUEST,) if request is None else tuple(request)
    features = tuple(features)
    if not features:
        raise UnservableFeatures("manifest lists no features")
    if len(set(features)) != len(features):
        raise UnservableFeatures("manifest lists duplicate features")
    request_names = {o for r in request_sets for o in r.outputs}
    by_group: dict[str, list[tuple[int, int]]] = {}
    unknown: list[str] = []
    helpers: list[str] = []
    positions: dict[str, dict[str, int]] = {}
    index = {name: idx for idx, name in enumerate(features)}

    def place(name: str, idx: int, model_input: bool) -> None:
        group_name, sep, feature = name.partition(GROUP_SEPARATOR)
        group = groups_by_name.get(group_name) if sep else None
        if group is None:
            unknown.append(name)
            return
        pos = positions.setdefault(group_name, {f: i for i, f in enumerate(group.feature_names)})
        if feature not in pos:
            unknown.append(name)
            return
        if model_input and feature in group.helper_feature_names:
            helpers.append(name)
            return
        by_group.setdefault(group_name, []).append((idx, pos[feature]))

    for idx, name in enumerate(features):
        if name not in request_names:
            place(name, idx, True)
    used_sets = [r for r in request_sets if any(o in index for o in r.outputs)]
    width = len(features)
    for r in used_sets:  # fetched inputs the model does not read itself: extra columns
        for f in r.fetched:
            if f not in index:
                index[f] = width
                place(f, width, False)
                width += 1
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
    plans = []
    for group_name, pairs in by_group.items():
        layout = group_layout(groups_by_name[group_name])
        dest = np.array([d for d, _ in pairs], dtype=np.intp)
        src = np.array([s for _, s in pairs], dtype=np.intp)
        whole = len(src) == len(layout.features) and bool(np.all(src == np.arange(len(src))))
        plans.append(GroupPlan(group_name, layout, layout.key_columns, dest, src, whole))
    request_plans = tuple(
        RequestPlan(
            r,
            tuple(index.get(o, -1) if o in features else -1 for o in r.outputs),
            tuple((f, index[f]) for f in r.fetched),
        )
        for r in used_sets
    )
    return FeaturePlan(features, request_plans, tuple(plans), width)


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
        self.breaker = breaker
        self.metrics = metrics

    def matrix(self, events: Sequence[msgspec.Struct], plan: FeaturePlan) -> tuple[np.ndarray, bool]:
        """``(X, degraded)``: one row per event in ``plan`` order, NaN where missing."""
        n_rows = len(events)
        wide = plan.width > plan.n
        x = np.full((n_rows, plan.width if wide else plan.n), np.nan)
        reads: list[tuple[GroupLayout, Any]] = []
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
                reads.append((gp.layout, key))
                where.append((i, gp))
        degraded = not self.breaker.epoch_ok  # an emptied store: most online features are missing
        if reads:
            rows = self._read(reads)
            if rows is None:
                degraded = True
            else:
                lookups = self.metrics.feature_lookups
                misses = self.metrics.feature_misses
                for (i, gp), fr in zip(where, rows, strict=True):
                    lookups[gp.name] = lookups.get(gp.name, 0) + 1
                    if fr is None:
                        misses[gp.name] = misses.get(gp.name, 0) + 1
                    elif gp.whole:
                        x[i, gp.dest] = fr.vector
                    else:
                        x[i, gp.dest] = np.asarray(fr.vector)[gp.src]
        # Request features after the read: a definition may read fetched features.
        for rp in plan.request:
            definition = rp.definition
            for i, ev in enumerate(events):
                row = x[i]
                fetched = {f: float(row[j]) for f, j in rp.fetched} if rp.fetched else None
                for j, v in zip(rp.dest, definition.values(_EventView(ev), fetched), strict=True):
                    if j >= 0:
                        row[j] = v
        if degraded:
            self.metrics.degraded_events += n_rows
        return (np.ascontiguousarray(x[:, : plan.n]) if wide else x), degraded

    def _read(self, reads: list[tuple[GroupLayout, Any]]) -> list[Any] | None:
        breaker = self.breaker
        if breaker.open:
            return None
        try:
            rows = self.store.read(reads)
        except OnlineStoreUnavailable as exc:
            breaker.failed("unavailable", exc)
            return None
        except OnlineStoreError as exc:  # e.g. a row that does not match its layout
            self.metrics.redis_failures["bad_row"] = self.metrics.redis_failures.get("bad_row", 0) + 1
            log.warning("online store read failed: %s", exc)
            return None
        breaker.last_ok = time.monotonic()
        return rows


class _EventView(Mapping[str, Any]):
    """A read-only mapping over a decoded payload struct (what request-feature functions get):
    fields the struct does not have read as absent; a tagged union's tag (the exchange's
    ``event_type``) reads as the field ``event_type``."""

    __slots__ = ("_ev", "_tag")

    def __init__(self, ev: msgspec.Struct) -> None:
        self._ev = ev
        self._tag = ev.__struct_config__.tag

    def __getitem__(self, key: str) -> Any:
        if key == "event_type" and self._tag is not None:
            return self._tag
        try:
            return getattr(self._ev, key)
        except AttributeError:
            raise KeyError(key) from None

    def get(self, key: str, default: Any = None) -> Any:
        if key == "event_type" and self._tag is not None:
            return self._tag
        return getattr(self._ev, key, default)

    def __iter__(self) -> Any:
        fields = self._ev.__struct_fields__
        return iter(fields if self._tag is None else ("event_type", *fields))

    def __len__(self) -> int:
        return len(self._ev.__struct_fields__) + (self._tag is not None)
