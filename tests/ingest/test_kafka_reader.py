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


def _produce_small_batches(producer: Producer, first: int, n: int, start_ts: int) -> list[bytes]:
    """Live-traffic shape: ``n`` messages in record batches of at most 4 (the producer is configured
    with ``batch.num.messages`` 4), produced back to back without sleeping."""
    values = []
    for i in range(first, first + n):
        v = b"live-%d" % i
        while True:
            try:
                producer.produce(TOPIC, value=v, partition=0, timestamp=start_ts + i)
                break
            except BufferError:  # local queue full: let deliveries drain
                producer.poll(0.01)
        values.append(v)
    assert producer.flush(60) == 0
    return values


def test_exact_tail_ranges_of_a_long_log_of_tiny_batches(fresh_stack):
    """Issue 15.1: paced live traffic arrives in ~4-message record batches; past ~20–30k batches
    the broker's fetches at a 10 ms wait came back empty and every read of the tail failed
    ("no record at offset … within 30s"). The reader must read exact tail ranges of such a log."""
    t0 = 1_790_000_000_000
    producer = Producer(
        {
            "bootstrap.servers": fresh_stack.kafka,
            "linger.ms": 0,
            "batch.num.messages": 4,
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    total = 220_000  # 55,000 record batches
    values = _produce_small_batches(producer, 0, total, t0)
    # The log really is made of tiny batches: tansu reports the last batch's base offset + 1.
    assert total - 4 < _reported_high(fresh_stack.kafka) <= total

    # Sensor-like: a new reader per tick sees the end, then the run reads [previous end, end).
    committed = total - 37
    for tick in range(4):
        more = _produce_small_batches(producer, len(values), 9 + tick, t0)
        values += more
        with KafkaRangeReader(fresh_stack.kafka, timeout_s=30) as reader:
            low, end = reader.bounds(TOPIC, 0)
            assert (low, end) == (0, len(values))
            batch = reader.read(OffsetRange(TOPIC, 0, committed, end), complete=True)
        assert batch.values == values[committed:end]
        assert batch.offsets.tolist() == list(range(committed, end))
        committed = end
    with KafkaRangeReader(fresh_stack.kafka, timeout_s=30) as reader:
        mid = reader.read(OffsetRange(TOPIC, 0, total - 5_000, total - 4_001), complete=True)
        found = reader.first_offset_at_or_after(TOPIC, 0, t0 + total - 1_000, 0, len(values))
    assert mid.values == values[total - 5_000 : total - 4_001]
    assert found == total - 1_000


def test_read_many_reads_four_partitions_at_once_exactly(fresh_stack_4p):
    """One consumer for every partition: each range comes back whole, in offset order, equal to
    reading the partitions one by one (multi-record batches, so tansu's watermark bug is in play);
    the timestamps it read then answer offset searches without another fetch, with the broker's
    own answer."""
    producer = Producer({"bootstrap.servers": fresh_stack_4p.kafka, "linger.ms": 50})
    t0 = 1_790_000_000_000
    for i in range(6_000):
        producer.produce(TOPIC, value=b"v%d" % i, partition=i % 4, timestamp=t0 + i * 10)
        if i % 700 == 0:
            assert producer.flush(10) == 0
    assert producer.flush(10) == 0
    with KafkaRangeReader(fresh_stack_4p.kafka, timeout_s=15) as reader:
        ranges = [OffsetRange(TOPIC, p, 0, reader.bounds(TOPIC, p)[1]) for p in range(4)]
        ranges[2] = OffsetRange(TOPIC, 2, 100, 1_200)  # a sub-range
        ranges.append(OffsetRange("risk.labels", 0, 0, 0))  # an empty one keeps its place
        together = reader.read_many(ranges, complete=True)
        one_by_one = [reader.read(r, complete=True) for r in ranges]
        searched = [reader.boundary(TOPIC, p, t0 + 30_000) for p in range(4)]
    assert [len(b) for b in together] == [1_500, 1_500, 1_100, 1_500, 0]
    for a, b, r in zip(together, one_by_one, ranges, strict=True):
        assert a.values == b.values and a.offsets.tolist() == list(range(r.start, r.end))
        assert (a.partitions == r.partition).all() and (a.timestamps_ms == b.timestamps_ms).all()
    with KafkaRangeReader(fresh_stack_4p.kafka, timeout_s=15) as fresh:  # nothing remembered
        assert [fresh.boundary(TOPIC, p, t0 + 30_000) for p in range(4)] == searched
    assert searched == [750, 750, 750, 750]
