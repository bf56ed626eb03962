"""The feedback loop through real services: a stale champion serves post-drift traffic from Redis
(real risk-serve process, real broker for its prediction log); the delayed labels show it
degrading; the retraining sensor requests a run whose challenger is promoted; the running service
hot-reloads it; the same traffic scored again is measurably better. Reuses the simulated world of
``test_drift_retraining_e2e`` (drift on day 10)."""

from __future__ import annotations

import json

import dagster as dg
import polars as pl
import pytest

from risk_assets.features.assets import batch_features
from risk_assets.features.sync_assets import online_store_sync
from risk_assets.lake import Lake
from risk_assets.models import metrics as mx
from risk_assets.models import registry
from risk_assets.models.assets import (
    ScoringServiceResource,
    challenger_model,
    deployed_model,
    model_promotion,
    served_model_version,
    training_set,
)
from risk_assets.monitoring.assets import drift_report_asset, realized_performance
from risk_assets.monitoring.serving_assets import prediction_log
from risk_assets.resources import KafkaResource, LakeResource, RawEventSource, RedisResource
from risk_assets.sensors.retraining import REASON_TAG, retraining_sensor
from risk_assets.simulator.encoding import encode_events
from risk_assets.simulator.writers import write_history
from tests.e2e.test_drift_retraining_e2e import (
    CHAMPION_DAY,
    DAYS,
    DRIFTED_DAY,
    RUN_CONFIG,
    SIM,
    START,
    _day,
    _ground_truth,
)
from tests.serving.test_serving import start_service, stop_service

pytestmark = pytest.mark.timeout(600)
DECISIONS = ("withdrawal", "card_payment", "p2p_trade")


def _score_all(client, bodies: list[dict]) -> list[float]:
    scores: list[float] = []
    for i in range(0, len(bodies), 500):
        status, out = client.request("POST", "/v1/score/batch", {"events": bodies[i : i + 500]})
        assert status == 200, out
        assert not any(r["degraded"] for r in out["results"])
        scores += [r["score"] for r in out["results"]]
    return scores


def test_drift_loop_through_the_running_service(fresh_stack, tmp_path, key_prefix) -> None:
    lake = Lake(str(tmp_path / "lake"))
    write_history(SIM, lake)
    instance = dg.DagsterInstance.ephemeral()
    resources = {
        "lake": LakeResource(url=lake.url),
        "raw_event_source": RawEventSource(),
        "redis": RedisResource(url=fresh_stack.redis_url, namespace=key_prefix),
        "kafka": KafkaResource(bootstrap_servers=fresh_stack.kafka),
    }

    def run(assets: list, **kw) -> dg.ExecuteInProcessResult:
        result = dg.materialize(
            assets, resources={**resources, **kw.pop("extra", {})}, instance=instance, **kw
        )
        assert result.success
        return result

    run(
        [batch_features],
        tags={
            "dagster/asset_partition_range_start": START.strftime("%Y-%m-%d"),
            "dagster/asset_partition_range_end": _day(DAYS - 1).strftime("%Y-%m-%d"),
        },
    )
    run([training_set, challenger_model, model_promotion], partition_key=CHAMPION_DAY, run_config=RUN_CONFIG)
    stale = registry.champion(lake)
    assert stale is not None
    run([online_store_sync])  # the online store follows the offline store

    # Post-drift traffic the retrained model will not have seen (after its window, which ends Oct 16).
    events = pl.concat(
        [pl.read_parquet(lake.read_bytes(p)) for p in lake.list("raw_events") if "dt=2026-10-1" in p]
    ).filter(
        pl.col("event_type").is_in(DECISIONS)
        & (pl.col("event_ts") >= _day(17))
        & (pl.col("event_ts") < _day(DAYS))
    )
    truth = _ground_truth(lake)
    events = events.join(truth, on="event_id", how="left").with_columns(pl.col("truth").fill_null(False))
    sample = pl.concat([events.filter("truth"), events.filter(~pl.col("truth")).sample(4_000, seed=3)]).sort(
        "event_ts", "event_id"
    )
    bodies = [json.loads(b) for b in encode_events(sample.drop("truth"))]
    y = sample["truth"].to_numpy()

    svc = start_service(tmp_path, lake, fresh_stack.redis_url, fresh_stack.kafka, key_prefix)
    url = f"http://127.0.0.1:{svc.port}"
    try:
        client = svc.client()
        before = _score_all(client, bodies)
        logged = run([prediction_log]).asset_materializations_for_node("prediction_log")[0].metadata
        assert logged["dagster/row_count"].value == len(bodies)

        # The delayed labels show the stale champion degrading; the sensor requests retraining.
        run([drift_report_asset, realized_performance], partition_key=DRIFTED_DAY)
        tick = retraining_sensor(dg.build_sensor_context(instance=instance))
        assert isinstance(tick, dg.SensorResult), tick
        (request,) = tick.run_requests
        print(f"\nretrain requested: {request.run_key} — {request.tags[REASON_TAG]}")
        promo = run(
            [training_set, challenger_model, model_promotion],
            partition_key=request.partition_key,
            run_config=RUN_CONFIG,
            tags=request.tags,
        )
        assert promo.asset_materializations_for_node("model_promotion")[0].metadata["promoted"].value
        fresh = registry.champion(lake)
        assert fresh is not None and fresh.version != stale.version

        # The running service picks the new champion up by itself; the UI asset confirms it.
        assert served_model_version(url, wait_for=fresh.version, timeout_s=30) == fresh.version
        deployed = run([deployed_model], extra={"scoring_service": ScoringServiceResource(url=url)})
        assert (
            deployed.asset_materializations_for_node("deployed_model")[0]
            .metadata["serving_matches_champion"]
            .value
        )
        after = _score_all(client, bodies)
    finally:
        stop_service(svc)

    figures = {}
    for name, scores in (("stale", before), ("retrained", after)):
        figures[name] = (mx.average_precision(y, scores), mx.recall_at_fpr(y, scores, 0.01))
        print(
            f"served by {name:9s}: {len(bodies):,} post-drift decisions, {int(y.sum())} frauds: "
            f"AP {figures[name][0]:.3f}, recall@1%FPR {figures[name][1]:.3f}"
        )
    assert figures["retrained"][0] > figures["stale"][0] + 0.1
    assert figures["retrained"][1] > figures["stale"][1] + 0.1
