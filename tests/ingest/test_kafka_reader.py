"""Exact offset-range reads against the real broker, including tansu's high-watermark bug."""

from __future__ import annotations

from confluent_kafka import Consumer, Producer, TopicPartition

from risk_assets.ingest.kafka_reader import KafkaRangeReader, OffsetRange

TOPIC = "risk.events"


def _produce_batches(bootstrap: str, sizes: list[int], start_ts: int) -> list[bytes]:
    """Produce one record batch per entry of ``sizes`` (flush between batches)."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50, "batch.num.messages": 10_000})
    values, n = [], 0
    for size in sizes:
        for _ in range(size):
            v = b"m%d" % n
            producer.produce(TOPIC, value=v, partition=0, timestamp=start_ts + n * 1000)
            values.append(v)
            n += 1
        assert producer.flush(10) == 0
    return values


def _reported_high(bootstrap: str) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "probe", "enable.auto.commit": False})
    try:
        return c.get_watermark_offsets(TopicPartition(TOPIC, 0), timeout=10, cached=False)[1]
    finally:
        c.close()


def test_true_end_reads_the_tail_of_multi_record_batches(fresh_stack):
    values = _produce_batches(fresh_stack.kafka, [1, 1, 1, 5, 7], start_ts=1_790_000_000_000)
    with KafkaRangeReader(fresh_stack.kafka, timeout_s=10) as reader:
        low, end = reader.bounds(TOPIC, 0)
        assert (low, end) == (0, 15)
        batch = reader.read(OffsetRange(TOPIC, 0, low, end))
    # The broker under test reports a batch base, not the end; the reader must not trust it.
    assert _reported_high(fresh_stack.kafka) <= 15
    assert batch.values == values
    assert batch.offsets.tolist() == list(range(15))


def test_read_exact_subrange_and_time_window(fresh_stack):
    t0 = 1_790_000_000_000
    values = _produce_batches(fresh_stack.kafka, [400, 350, 250], start_ts=t0)
    with KafkaRangeReader(fresh_stack.kafka, timeout_s=10) as reader:
        mid = reader.read(OffsetRange(TOPIC, 0, 123, 789))
        assert mid.values == values[123:789]
        assert mid.timestamps_ms.tolist() == [t0 + i * 1000 for i in range(123, 789)]
        assert reader.first_offset_at_or_after(TOPIC, 0, t0 + 500_500, 0, 1000) == 501
        window, ranges = reader.read_time_window(TOPIC, t0 + 100_000, t0 + 900_000)
    assert window.values == values[100:900]
    assert len(ranges) == 1 and ranges[0].start <= 100 and ranges[0].end >= 900


def test_empty_range_and_empty_topic(fresh_stack):
    with KafkaRangeReader(fresh_stack.kafka, timeout_s=5) as reader:
        assert reader.bounds(TOPIC, 0) == (0, 0)
        assert len(reader.read(OffsetRange(TOPIC, 0, 0, 0))) == 0
        batch, ranges = reader.read_time_window(TOPIC, 0, 2**40)
    assert len(batch) == 0 and ranges == []
