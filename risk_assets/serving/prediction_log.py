"""The prediction log: every scored event to Kafka ``risk.predictions``, never blocking scoring.

The request path calls :meth:`PredictionLog.offer` with a tuple (no encoding, no I/O): a
``put_nowait`` on a bounded ``queue.Queue``. When the queue is full the record is dropped and
``dropped`` counts it. A daemon thread wakes every ``interval_s`` (10 ms; the producer lingers 20 ms
anyway) and drains the queue in batches — never once per record, encodes each record as one JSON
message (msgspec) and hands it to a confluent-kafka producer. If librdkafka's own buffer is full
(broker slow or gone) the thread waits for it, the bounded queue fills up, and further records are
dropped at the door — scoring latency never depends on the broker.

Message (value, JSON; key = ``event_id``)::

    {"event_id": "...", "event_ts": 1790000000000, "scored_at": 1790000000123,
     "model_version": "20261101T000000-abcdef012345", "score": 0.0123, "decision": "allow",
     "degraded": false, "features_missing": 12, "values": [0.0, 1.0, null, ...]}

With a challenger in shadow (``risk_assets.serving.shadow``) the record also carries
``"shadow_version"`` and ``"shadow_score"`` (the challenger's score of the same event; it decided
nothing); both keys are absent when no shadow scored the event.

``values`` is the exact input vector the model scored, in the order of the ``features`` list of
that ``model_version``'s manifest (``null`` = missing): compact, and unambiguous because versions
are immutable.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

import msgspec
import numpy as np

log = logging.getLogger("risk_assets.serving")

# (event_id, event_ts, scored_at_ms, model_version, score, decision, degraded, n_missing, vector,
#  shadow_version, shadow_score)  — the last two None without a shadow score
Record = tuple[str, int, int, str, float, str, bool, int, np.ndarray, str | None, float | None]


class PredictionMessage(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One ``risk.predictions`` message (the shadow keys only when a shadow scored the event)."""

    event_id: str
    event_ts: int
    scored_at: int
    model_version: str
    score: float
    decision: str
    degraded: bool
    features_missing: int
    values: list[float]
    shadow_version: str | None = None
    shadow_score: float | None = None


_encode = msgspec.json.Encoder().encode


def encode_record(rec: Record) -> bytes:
    """The JSON message of one record (NaN → null)."""
    return _encode(
        PredictionMessage(
            event_id=rec[0],
            event_ts=rec[1],
            scored_at=rec[2],
            model_version=rec[3],
            score=rec[4],
            decision=rec[5],
            degraded=rec[6],
            features_missing=rec[7],
            values=rec[8].tolist(),
            shadow_version=rec[9],
            shadow_score=rec[10],
        )
    )


class PredictionLog:
    """Bounded queue + drain thread + Kafka producer."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        *,
        queue_size: int = 10_000,
        buffer_messages: int = 100_000,
        drain_batch: int = 500,
        interval_s: float = 0.01,
    ) -> None:
        self.topic = topic
        self.capacity = queue_size
        self.queue: queue.Queue[Record] = queue.Queue(maxsize=queue_size)
        self.enqueued = 0
        self.dropped = 0
        self.sent = 0  # acknowledged by the broker
        self.failed = 0  # delivery failed (after librdkafka's own retries/timeouts)
        self.kafka_errors = 0
        self.drain_batch = drain_batch
        self.interval_s = interval_s
        self._bootstrap = bootstrap_servers
        self._buffer = buffer_messages
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._producer: Any = None
        self._last_error_log = 0.0
        self._deadline = float("inf")

    # ---- request path -------------------------------------------------------------------------

    def offer(self, rec: Record) -> bool:
        """Enqueue without blocking; False (and counted) when the queue is full."""
        try:
            self.queue.put_nowait(rec)
        except queue.Full:
            self.dropped += 1
            return False
        self.enqueued += 1
        return True

    # ---- background ---------------------------------------------------------------------------

    def start(self) -> None:
        """Create the producer and start the drain thread."""
        from confluent_kafka import Producer

        self._producer = Producer(
            {
                "bootstrap.servers": self._bootstrap,
                "client.id": "risk-serve",
                "acks": "all",
                "linger.ms": 20,
                "queue.buffering.max.messages": self._buffer,
                "message.timeout.ms": 60_000,
                "error_cb": self._on_error,
                "logger": _QuietLogger(self),
            }
        )
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def stop(self, flush_timeout_s: float = 5.0) -> None:
        """Drain what is queued (bounded by ``flush_timeout_s``) and stop."""
        self._deadline = time.monotonic() + flush_timeout_s
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=flush_timeout_s + 1.0)
        if self._producer is not None:
            left = self._producer.flush(max(0.0, self._deadline - time.monotonic()))
            if left:
                self.failed += left
                log.warning("prediction log: %d record(s) not delivered at shutdown", left)

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is None:
            self.sent += 1
        else:
            self.failed += 1

    def _on_error(self, err: Any) -> None:
        self.kafka_errors += 1
        now = time.monotonic()
        if now - self._last_error_log > 60:
            self._last_error_log = now
            log.warning("prediction log producer: %s", err)

    def _produce(self, rec: Record) -> None:
        value = encode_record(rec)
        while True:
            try:
                self._producer.produce(self.topic, value=value, key=rec[0], on_delivery=self._on_delivery)
                return
            except BufferError:  # librdkafka's buffer is full: wait for the broker, then retry
                self._producer.poll(0.1)
                if self._stop.is_set() and time.monotonic() > self._deadline:
                    self.failed += 1  # shutting down and the broker does not take it
                    return

    def _run(self) -> None:
        # Wakes every interval_s and drains what is queued; it never blocks in ``q.get``, which
        # woke this thread (and contended for the GIL with the event loop) once per request: 22 %
        # of request time under load.
        q = self.queue
        producer = self._producer
        while True:
            stopping = self._stop.wait(self.interval_s)
            n = 0
            while True:
                try:
                    rec = q.get_nowait()
                except queue.Empty:
                    break
                self._produce(rec)
                n += 1
                if n % self.drain_batch == 0:
                    producer.poll(0)
            producer.poll(0)
            if stopping:
                return

    def metric_lines(self) -> list[str]:
        """Prediction-log series for ``/metrics``."""
        return [
            "# HELP risk_serve_prediction_log_enqueued_total Records accepted into the queue.",
            "# TYPE risk_serve_prediction_log_enqueued_total counter",
            f"risk_serve_prediction_log_enqueued_total {self.enqueued}",
            "# HELP risk_serve_prediction_log_dropped_total Records dropped because the queue was full.",
            "# TYPE risk_serve_prediction_log_dropped_total counter",
            f"risk_serve_prediction_log_dropped_total {self.dropped}",
            "# HELP risk_serve_prediction_log_sent_total Records acknowledged by the broker.",
            "# TYPE risk_serve_prediction_log_sent_total counter",
            f"risk_serve_prediction_log_sent_total {self.sent}",
            "# HELP risk_serve_prediction_log_failed_total Records whose delivery failed.",
            "# TYPE risk_serve_prediction_log_failed_total counter",
            f"risk_serve_prediction_log_failed_total {self.failed}",
            "# HELP risk_serve_prediction_log_kafka_errors_total Producer-level errors (broker down, ...).",
            "# TYPE risk_serve_prediction_log_kafka_errors_total counter",
            f"risk_serve_prediction_log_kafka_errors_total {self.kafka_errors}",
            "# HELP risk_serve_prediction_log_queue_depth Records waiting in the queue.",
            "# TYPE risk_serve_prediction_log_queue_depth gauge",
            f"risk_serve_prediction_log_queue_depth {self.queue.qsize()}",
            "# HELP risk_serve_prediction_log_queue_capacity Size of the bounded queue.",
            "# TYPE risk_serve_prediction_log_queue_capacity gauge",
            f"risk_serve_prediction_log_queue_capacity {self.capacity}",
        ]


class _QuietLogger:
    """librdkafka log sink: at most one line a minute through our logger (a dead broker would
    otherwise print a line every few seconds)."""

    def __init__(self, owner: PredictionLog) -> None:
        self._owner = owner
        self._last = 0.0

    def log(self, level: int, fmt: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last > 60:
            self._last = now
            try:
                msg = fmt % args if args else fmt
            except TypeError:
                msg = str(fmt)
            log.warning("prediction log producer (librdkafka): %s", msg)
