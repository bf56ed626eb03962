"""D13 (issue 9): poison records in ``risk.predictions`` never stop the ``prediction_log`` asset.

Real broker (the session stack), real lake, the real asset: good records and every kind of poison
record go in; the good ones become rows, each poison one a dead letter with its reason, and
rows + dead letters = records produced (0 lost, 0 doubled).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from risk_assets.ingest.kafka_reader import OffsetRange
from risk_assets.lake import Lake
from risk_assets.models import registry
from risk_assets.monitoring.artifacts import prediction_log_dead_letter_path, prediction_log_path
from risk_assets.monitoring.prediction_log_assets import prediction_log
from risk_assets.resources import KafkaResource, LakeResource
from risk_assets.serving.prediction_log import encode_record

TS = 1_790_000_000_000


def test_poison_prediction_records_are_dead_lettered(session_stack, tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    version = registry.register(lake, b"model bytes are not read here", {"features": ["a", "b", "c"]})
    topic = f"test.predictions.{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": session_stack.kafka})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(30)

    def good(i: int) -> bytes:
        values = np.array([float(i), np.nan, 1.0])
        shadow = ("challenger-v", 0.5 + i / 100) if i >= 5 else (None, None)  # scored in shadow too
        head = (f"ev_{i}", TS + i, TS + i + 5, version, 0.25, "allow", False, 1, values)
        return encode_record((*head, *shadow))

    template = good(0)
    poison = {
        "invalid_utf8": template.replace(b'"ev_0"', b'"ev_\xff\xfe"'),
        "timestamp_out_of_bounds": template.replace(str(TS).encode(), str(2**63).encode(), 1),
        "invalid_json": b"{not json",
        "too_deep": b'{"x":' + b"[" * 2000 + b"]" * 2000 + b"}",
        "unknown_model_version": template.replace(version.encode(), b"20200101T000000-000000000000"),
        "values_length": template.replace(b'"values":[0.0,null,1.0]', b'"values":[0.0]'),
        "schema": template.replace(b'"score":0.25', b'"score":"high"'),
    }
    assert all(v != template for k, v in poison.items() if k != "invalid_json")
    messages = [good(i) for i in range(5)] + list(poison.values()) + [good(i) for i in range(5, 10)]
    producer = Producer({"bootstrap.servers": session_stack.kafka, "acks": "all"})
    for m in messages:
        producer.produce(topic, value=m)
    assert producer.flush(30) == 0

    resources = {
        "lake": LakeResource(url=lake.url),
        "kafka": KafkaResource(bootstrap_servers=session_stack.kafka),
    }
    result = dg.materialize(
        [prediction_log],
        resources=resources,
        run_config={"ops": {"prediction_log": {"config": {"topic": topic}}}},
    )
    assert result.success
    meta = {
        k: v.value for k, v in result.asset_materializations_for_node("prediction_log")[0].metadata.items()
    }
    assert meta["rows"] == 10 and meta["dead_letters"] == len(poison)
    assert meta["dead_letter_reasons"] == {reason: 1 for reason in poison}

    rng = OffsetRange(topic, 0, 0, len(messages))
    rows = lake.scan([prediction_log_path(rng)]).collect()
    dead = pl.read_parquet(lake.read_bytes(prediction_log_dead_letter_path(rng)))
    assert rows.height + dead.height == len(messages)  # 0 lost
    assert sorted(rows["offset"].to_list() + dead["offset"].to_list()) == list(
        range(len(messages))
    )  # 0 doubled
    assert sorted(rows["event_id"].to_list()) == sorted(f"ev_{i}" for i in range(10))
    by_reason = {r["reason"]: r for r in dead.iter_rows(named=True)}
    assert set(by_reason) == set(poison)
    for reason, raw in poison.items():
        assert by_reason[reason]["value"] == raw and by_reason[reason]["error"]
    assert by_reason["timestamp_out_of_bounds"]["offset"] == 6
    shadowed = rows.filter(pl.col("shadow_version").is_not_null()).sort("event_id")
    assert shadowed["event_id"].to_list() == [f"ev_{i}" for i in range(5, 10)]
    assert shadowed["shadow_score"].to_list() == [0.5 + i / 100 for i in range(5, 10)]
    assert meta["shadow_scored"] == 5
