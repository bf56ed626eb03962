"""Shadow scoring: a challenger scored on live traffic, off the decision path.

Which challenger: the registry's shadow pointer (``models/registry/shadow.json``, set with
``registry.set_shadow`` — the same integrity checks as the champion's), polled by a second
:class:`~risk_assets.serving.model_holder.ModelHolder` (role ``shadow``: same verification steps,
no fallback; a cleared pointer unloads it). Nothing set: nothing changes on the request path.

While a shadow is loaded, the request path does its usual work — features, the champion's
prediction, decisions, reasons, the response — and then, instead of handing one record per event to
the prediction log, puts one item per request (the events, the champion's input matrix, scores and
decisions) on a **bounded** queue with ``put_nowait``. A daemon thread drains the queue in batches
of up to ``batch_rows`` rows, builds the shadow's matrix from the champion's (same feature list: the
same matrix; columns the champion also uses: copied; others: its own online read, in this thread),
predicts them with one ``inplace_predict`` and hands each record — the champion's score and decision
plus ``shadow_version`` and ``shadow_score`` — to the prediction log. When the queue is full the
request's records go to the prediction log at once without a shadow score and ``dropped`` counts
the events: the champion's latency and decisions never wait for the shadow, and its cost is bounded
by the queue and one thread (XGBoost releases the GIL while predicting). The thread runs at the
lowest CPU priority (``nice`` 19 for that thread, on Linux) so that on a busy machine the
scheduler runs the request path first, and it waits up to ``linger_s`` to gather a batch: one
prediction of many rows costs far less CPU than many one-row predictions.
"""

from __future__ import annotations

import contextlib
import logging
import operator
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from risk_assets.serving.feature_fetch import FeatureFetcher
from risk_assets.serving.model_holder import LoadedModel, ModelHolder
from risk_assets.serving.prediction_log import PredictionLog

log = logging.getLogger("risk_assets.serving")


@dataclass(frozen=True, slots=True)
class ShadowItem:
    """One scored request waiting for its shadow score."""

    events: list[Any]
    x: np.ndarray
    champion: LoadedModel
    scores: np.ndarray
    decisions: list[str]
    degraded: bool
    missing: np.ndarray
    scored_at: int


def _lowest_priority() -> None:
    """Lower the calling thread's CPU priority to nice 19 (Linux: per thread); elsewhere a no-op."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


class ShadowScorer:
    """Bounded queue + one thread scoring the shadow and writing both scores to the prediction log."""

    def __init__(
        self,
        holder: ModelHolder,
        predictions: PredictionLog,
        fetcher: FeatureFetcher,
        *,
        queue_size: int = 2_000,
        batch_rows: int = 512,
        linger_s: float = 0.05,
        event_id: Callable[[Any], str] = operator.attrgetter("event_id"),
        event_ts: Callable[[Any], int] = operator.attrgetter("event_ts"),
    ) -> None:
        self.event_id = event_id
        self.event_ts = event_ts
        self.holder = holder
        self.predictions = predictions
        self.fetcher = fetcher
        self.capacity = queue_size
        self.batch_rows = batch_rows
        self.linger_s = linger_s
        self.queue: queue.Queue[ShadowItem] = queue.Queue(maxsize=queue_size)
        self.scored = 0  # events with a shadow score
        self.dropped = 0  # events logged without one: the queue was full
        self.unscored = 0  # events the shadow could not score (unloaded meanwhile, prediction error)
        self.errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._deadline = float("inf")
        self._columns: dict[tuple[str, str], tuple[np.ndarray, bool]] = {}

    # ---- request path -------------------------------------------------------------------------

    def active(self) -> bool:
        """A shadow model is loaded."""
        return self.holder.current is not None

    def offer(self, item: ShadowItem) -> bool:
        """Enqueue without blocking; False (the caller logs the records itself) when full."""
        try:
            self.queue.put_nowait(item)
        except queue.Full:
            self.dropped += len(item.events)
            return False
        return True

    # ---- background ---------------------------------------------------------------------------

    def start(self) -> None:
        """Load the shadow now (if one is set), then poll its pointer and score in daemon threads."""
        self.holder.start()
        self._thread = threading.Thread(target=self._run, name="shadow-scorer", daemon=True)
        self._thread.start()

    def stop(self, drain_timeout_s: float = 5.0) -> None:
        """Stop polling; score (or, past the deadline, log unscored) what is queued, then stop."""
        self.holder.stop()
        self._deadline = time.monotonic() + drain_timeout_s
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=drain_timeout_s + 1.0)

    def _run(self) -> None:
        _lowest_priority()
        q = self.queue
        while True:
            try:
                first = q.get(timeout=0.1)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            items = [first]
            rows = len(first.events)
            until = time.monotonic() + (0.0 if self._stop.is_set() else self.linger_s)
            while rows < self.batch_rows:
                try:
                    left = until - time.monotonic()
                    item = q.get(timeout=left) if left > 0 else q.get_nowait()
                except queue.Empty:
                    break
                items.append(item)
                rows += len(item.events)
            late = self._stop.is_set() and time.monotonic() > self._deadline
            self._process(items, None if late else self.holder.current)

    def _process(self, items: list[ShadowItem], shadow: LoadedModel | None) -> None:
        shadow_scores: list[np.ndarray | None] = [None] * len(items)
        if shadow is not None:
            try:
                matrices = [self._matrix(item, shadow) for item in items]
                scores = shadow.booster.inplace_predict(np.vstack(matrices), validate_features=False)
                scores = np.asarray(scores, dtype=np.float64)
                at = 0
                for k, m in enumerate(matrices):
                    shadow_scores[k] = scores[at : at + len(m)]
                    at += len(m)
            except Exception as exc:  # never lose the champion's records over a shadow failure
                self.errors += 1
                if self.errors == 1 or self.errors % 1000 == 0:
                    log.warning("shadow %s: scoring failed (%d so far): %s", shadow.version, self.errors, exc)
                shadow_scores = [None] * len(items)
        offer = self.predictions.offer
        for item, sscores in zip(items, shadow_scores, strict=True):
            version = shadow.version if sscores is not None and shadow is not None else None
            if version is None:
                self.unscored += len(item.events)
            else:
                self.scored += len(item.events)
            for i, ev in enumerate(item.events):
                offer(
                    (
                        self.event_id(ev),
                        self.event_ts(ev),
                        item.scored_at,
                        item.champion.version,
                        float(item.scores[i]),
                        item.decisions[i],
                        item.degraded,
                        int(item.missing[i]),
                        item.x[i],
                        version,
                        float(sscores[i]) if sscores is not None else None,
                    )
                )

    def _matrix(self, item: ShadowItem, shadow: LoadedModel) -> np.ndarray:
        """The shadow's input matrix for one item: the champion's, its columns, or a fresh read."""
        champ = item.champion
        key = (champ.version, shadow.version)
        if key not in self._columns:
            position = {f: j for j, f in enumerate(champ.features)}
            idx = np.array([position.get(f, -1) for f in shadow.features], dtype=np.int64)
            self._columns = {key: (idx, bool((idx >= 0).all()))}  # one pair at a time is enough
        idx, complete = self._columns[key]
        if complete:
            return item.x if champ.features == shadow.features else item.x[:, idx]
        x, _ = self.fetcher.matrix(item.events, shadow.plan)
        return x

    def metric_lines(self) -> list[str]:
        """Shadow series for ``/metrics``."""
        cur = self.holder.current
        out = [
            "# HELP risk_shadow_model_info The challenger scored in shadow (value 1; absent: none).",
            "# TYPE risk_shadow_model_info gauge",
        ]
        if cur is not None:
            labels = f'version="{cur.version}",sha256="{cur.model_sha256[:12]}"'
            out.append(f"risk_shadow_model_info{{{labels}}} 1")
        return [
            *out,
            "# HELP risk_shadow_scored_total Events logged with a shadow score.",
            "# TYPE risk_shadow_scored_total counter",
            f"risk_shadow_scored_total {self.scored}",
            "# HELP risk_shadow_dropped_total Events logged without a shadow score: the queue was full.",
            "# TYPE risk_shadow_dropped_total counter",
            f"risk_shadow_dropped_total {self.dropped}",
            "# HELP risk_shadow_unscored_total Events queued but logged without a shadow score.",
            "# TYPE risk_shadow_unscored_total counter",
            f"risk_shadow_unscored_total {self.unscored}",
            "# HELP risk_shadow_queue_depth Requests waiting for their shadow score.",
            "# TYPE risk_shadow_queue_depth gauge",
            f"risk_shadow_queue_depth {self.queue.qsize()}",
            "# HELP risk_shadow_queue_capacity Size of the bounded shadow queue (requests).",
            "# TYPE risk_shadow_queue_capacity gauge",
            f"risk_shadow_queue_capacity {self.capacity}",
            "# HELP risk_shadow_refused 1 while the shadow pointer names a refused version.",
            "# TYPE risk_shadow_refused gauge",
            f"risk_shadow_refused {int(self.holder.last_refused is not None)}",
        ]
