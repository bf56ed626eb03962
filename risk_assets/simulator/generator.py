"""The pure generation API: config → events, labels and ground truth, chunk by chunk.

Each chunk (``cfg.chunk_minutes`` of simulated time) draws from its own PCG64 stream seeded by
``SeedSequence([seed, chunk start minute, chunk length])``, split into legit, fraud, label and drift
sub-streams; the population comes from its own stream. So a chunk is reproducible on its own, chunks
can be generated in any order or in parallel, the fraud configuration never changes legit traffic,
label-only draws never change events, and drift scenarios change nothing outside their windows.

Every record produced by the chunk starting at ``t`` has its time keys (event_ts, ingest_ts,
label_ts, archive hour) ``>= t`` — fraud cases started in a chunk may spill into later hours, never
earlier ones. Writers rely on this to stream: once chunk ``t`` is done, all keys ``< t`` are final.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import polars as pl

from risk_assets.events.schema import ARCHIVE_LABEL_COLUMNS, SCHEMA_VERSION
from risk_assets.ingest.archive_format import to_archive_frame
from risk_assets.names import RAW_EVENTS, RAW_LABELS
from risk_assets.simulator import ids
from risk_assets.simulator.config import SimConfig
from risk_assets.simulator.drift import attack_effects, market_plan
from risk_assets.simulator.legit import EVENT_COLUMNS, legit_events, market_event_events
from risk_assets.simulator.population import Population, build_population
from risk_assets.simulator.scenarios import CaseContext, Row, case_id
from risk_assets.simulator.scenarios.ato import ato_case
from risk_assets.simulator.scenarios.card_testing import card_testing_case
from risk_assets.simulator.scenarios.p2p_scam import p2p_scam_case
from risk_assets.simulator.timing import event_ingest_delays, label_ingest_delays

_CHUNK_STREAM = 0xC4A9
_TS = pl.Datetime("ms", "UTC")

GROUND_TRUTH_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.String(),
    "event_ts": _TS,
    "is_fraud": pl.Boolean(),
    "scenario": pl.String(),
    "case_id": pl.String(),
    "drift_scenario": pl.String(),  # the drift scenario that made or changed the event (drift.py)
}
_WORK_SCHEMA: dict[str, pl.DataType] = {
    **{c: pl.String() for c in EVENT_COLUMNS},
    "event_ts": pl.Int64(),
    "ip_asn": pl.Int64(),
    "success": pl.Boolean(),
    "amount": pl.Float64(),
    "amount_usd": pl.Float64(),
    "scenario": pl.String(),
    "case_id": pl.String(),
    "drift_scenario": pl.String(),
    "label_type": pl.String(),
    "label_ts": pl.Int64(),
    "_delay": pl.Int64(),
}
_WORK_COLUMNS = (*EVENT_COLUMNS, "scenario", "case_id", "drift_scenario", "label_type", "label_ts", "_delay")
# Top bit of the integers behind the event ids of extra (market-event) events: apart from the
# regular ``minute << 24 | row`` ones, so the regular events of a window keep their ids.
_EXTRA_EVENT_TAG = np.uint64(1 << 60)

CaseBuilder = Callable[[CaseContext, int, str], list[Row]]


def scenario_rates(cfg: SimConfig) -> list[tuple[str, float, CaseBuilder]]:
    """(scenario, cases per million legit events, builder) for every fraud scenario."""
    return [
        ("ato", cfg.ato_cases_per_m, ato_case),
        ("p2p_scam", cfg.p2p_scam_victims_per_m, p2p_scam_case),
        ("card_testing", cfg.card_testing_cases_per_m, card_testing_case),
    ]


@dataclass(frozen=True)
class SimulatedData:
    """Generated records.

    ``events``: the ``raw_events`` archive layout (incl. ``ingest_ts``), sorted by event_ts (ties in
    chunk order, then event_id).
    ``labels``: the ``raw_labels`` archive layout, sorted by label_ts (ties likewise).
    ``ground_truth``: one row per event — ``event_id, event_ts, is_fraud, scenario, case_id,
    drift_scenario``.
    """

    events: pl.DataFrame
    labels: pl.DataFrame
    ground_truth: pl.DataFrame

    @staticmethod
    def concat(parts: list[SimulatedData]) -> SimulatedData:
        """One dataset from several chunks, re-sorted."""
        if not parts:
            return SimulatedData(
                to_archive_frame(pl.DataFrame(), RAW_EVENTS),
                to_archive_frame(pl.DataFrame(), RAW_LABELS),
                pl.DataFrame(schema=GROUND_TRUTH_SCHEMA),
            )
        return SimulatedData(
            _stable_sort(pl.concat([p.events for p in parts]), "event_ts"),
            _stable_sort(pl.concat([p.labels for p in parts]), "label_ts"),
            _stable_sort(pl.concat([p.ground_truth for p in parts]), "event_ts"),
        )


def _stable_sort(frame: pl.DataFrame, column: str) -> pl.DataFrame:
    """Stable sort on one time column. Chunks are each sorted by (time, id) already, so only the few
    fraud rows that spill past their chunk move; NumPy's stable argsort on nearly sorted int64 plus
    one gather is much cheaper than a multi-column sort."""
    order = np.argsort(frame[column].to_physical().to_numpy(), kind="stable")
    if np.all(order[1:] > order[:-1]):
        return frame
    return frame[order]


@dataclass(frozen=True)
class ChunkRngs:
    """The independent random streams of one chunk."""

    legit: np.random.Generator
    fraud: np.random.Generator
    label: np.random.Generator  # label-only draws (e.g. case review delays)
    drift: np.random.Generator  # extra events of drift scenarios


def chunk_rngs(cfg: SimConfig, chunk_start_ms: int) -> ChunkRngs:
    """The generators of the chunk starting at ``chunk_start_ms``. Spawned children are numbered, so
    adding streams after the first two left the legit and fraud streams as they were."""
    ss = np.random.SeedSequence([cfg.seed, _CHUNK_STREAM, chunk_start_ms // 60_000, cfg.chunk_minutes])
    return ChunkRngs(*(np.random.Generator(np.random.PCG64(child)) for child in ss.spawn(4)))


def expected_legit_events(cfg: SimConfig, pop: Population, chunk_start_ms: int) -> float:
    """Mean number of legit events in a chunk: the daily volume shaped by the global diurnal curve."""
    utc_hour = (chunk_start_ms // 3_600_000) % 24
    return cfg.events_per_day * cfg.chunk_minutes / 1440.0 * float(pop.hour_volume[utc_hour])


def fraud_rows(
    cfg: SimConfig,
    pop: Population,
    chunk_start_ms: int,
    legit_mean: float,
    rngs: ChunkRngs,
    fresh: ids.FreshIds,
) -> list[Row]:
    """All fraud-case rows started in the chunk (cases in order of scenario, then start time).

    An attack drift scenario active at the chunk start multiplies its target's case rate and is
    recorded as ``drift_scenario`` on every row of the target's cases."""
    rng = rngs.fraud
    ctx = CaseContext(cfg, pop, rng, fresh, chunk_start_ms, cfg.is_drifted(chunk_start_ms), rngs.label)
    rows: list[Row] = []
    k = 0
    for scenario, rate, builder in scenario_rates(cfg):
        ctx.effects = attack_effects(cfg.drift_scenarios, scenario, chunk_start_ms)
        if ctx.effects.rate_factor != 1.0:
            rate = rate * ctx.effects.rate_factor
        n_cases = int(rng.poisson(rate * legit_mean / 1e6))
        for t0 in np.sort(chunk_start_ms + rng.integers(0, cfg.chunk_ms, n_cases)):
            case_rows = builder(ctx, int(t0), case_id(scenario, chunk_start_ms, k))
            for row in case_rows:
                row["drift_scenario"] = ctx.effects.scenario
            rows += case_rows
            k += 1
    return rows


def extra_events(
    cfg: SimConfig,
    pop: Population,
    chunk_start_ms: int,
    flat_mean: float,
    rng: np.random.Generator,
    fresh: ids.FreshIds,
) -> pl.DataFrame | None:
    """The extra legit events of the market-event scenarios active in the chunk (None: none).

    Volume: ``rate_factor`` × the affected users' share of activity × ``flat_mean``, the chunk's
    *daily-average* legit volume (no diurnal curve: the extra activity is as high at night as by day)."""
    frames = []
    for s in cfg.drift_scenarios:
        if s.kind != "legit_market_event" or not s.active(chunk_start_ms):
            continue
        plan = market_plan(cfg.seed, s, pop)
        n = int(rng.poisson(plan.rate_factor * plan.activity_share * flat_mean)) if plan.users.size else 0
        frame = market_event_events(cfg, pop, chunk_start_ms, n, plan, rng, fresh)
        frames.append(
            frame.with_columns(
                pl.lit(None, pl.String).alias("scenario"),
                pl.lit(None, pl.String).alias("case_id"),
                pl.lit(s.name).alias("drift_scenario"),
                pl.lit(None, pl.String).alias("label_type"),
                pl.lit(None, pl.Int64).alias("label_ts"),
                pl.Series("_delay", event_ingest_delays(rng, n, cfg)),
            )
        )
    return pl.concat([f.select(_WORK_COLUMNS) for f in frames]) if frames else None


def generate_chunk(
    cfg: SimConfig, pop: Population, chunk_start_ms: int, expected_events: float | None = None
) -> SimulatedData:
    """Generate the chunk starting at ``chunk_start_ms`` (``expected_events`` overrides the volume)."""
    rngs = chunk_rngs(cfg, chunk_start_ms)
    legit_rng, fraud_rng = rngs.legit, rngs.fraud
    fresh = ids.FreshIds(chunk_start_ms)
    mean = expected_legit_events(cfg, pop, chunk_start_ms) if expected_events is None else expected_events
    n = int(legit_rng.poisson(mean))
    legit = legit_events(cfg, pop, chunk_start_ms, n, legit_rng, fresh).with_columns(
        pl.lit(None, pl.String).alias("scenario"),
        pl.lit(None, pl.String).alias("case_id"),
        pl.lit(None, pl.String).alias("drift_scenario"),
        pl.lit(None, pl.String).alias("label_type"),
        pl.lit(None, pl.Int64).alias("label_ts"),
        pl.Series("_delay", event_ingest_delays(legit_rng, n, cfg)),
    )
    rows = fraud_rows(cfg, pop, chunk_start_ms, mean, rngs, fresh)
    fraud = pl.DataFrame(rows, schema={c: _WORK_SCHEMA[c] for c in _WORK_COLUMNS if c != "_delay"})
    fraud = fraud.with_columns(pl.Series("_delay", event_ingest_delays(fraud_rng, fraud.height, cfg)))
    work = pl.concat([legit.select(_WORK_COLUMNS), fraud.select(_WORK_COLUMNS)]).sort(
        "event_ts", maintain_order=True
    )

    minute = np.uint64(chunk_start_ms // 60_000) << np.uint64(24)
    key = ids.seed_key(cfg.seed, ids.NS_EVENT)
    work = work.with_columns(
        ids.opaque_ids("ev_", minute | np.arange(work.height, dtype=np.uint64), key, "event_id")
    )
    extra = None
    if cfg.drift_scenarios:
        flat = cfg.events_per_day * cfg.chunk_minutes / 1440.0 if expected_events is None else expected_events
        extra = extra_events(cfg, pop, chunk_start_ms, flat, rngs.drift, fresh)
    if extra is not None and extra.height:
        extra_ids = _EXTRA_EVENT_TAG | minute | np.arange(extra.height, dtype=np.uint64)
        extra = extra.with_columns(ids.opaque_ids("ev_", extra_ids, key, "event_id"))
        work = pl.concat([work, extra]).sort("event_ts", maintain_order=True)
    work = work.with_columns(
        pl.lit(SCHEMA_VERSION, pl.Int16).alias("schema_version"),
        (pl.col("event_ts") + pl.col("_delay")).cast(_TS).alias("ingest_ts"),
        pl.col("event_ts").cast(_TS),
        pl.col("scenario").is_not_null().alias("is_fraud"),
    )
    ground_truth = work.select(list(GROUND_TRUTH_SCHEMA))
    labelled = work.filter(pl.col("label_type").is_not_null())
    labels = labelled.select(
        ids.opaque_ids(
            "lb_",
            minute | np.arange(labelled.height, dtype=np.uint64),
            ids.seed_key(cfg.seed, ids.NS_LABEL),
            "label_id",
        ),
        "label_type",
        pl.lit(SCHEMA_VERSION, pl.Int16).alias("schema_version"),
        pl.col("label_ts").cast(_TS),
        "event_id",
        "event_ts",
        "user_id",
        "scenario",
        (pl.col("label_ts") + pl.Series(label_ingest_delays(fraud_rng, labelled.height)))
        .cast(_TS)
        .alias("ingest_ts"),
    )
    return SimulatedData(
        to_archive_frame(work, RAW_EVENTS),
        labels.select(list(ARCHIVE_LABEL_COLUMNS)).sort("label_ts", "label_id"),
        ground_truth,
    )


def iter_chunks(
    cfg: SimConfig, pop: Population | None = None, workers: int = 1
) -> Iterator[tuple[int, SimulatedData]]:
    """``(chunk_start_ms, data)`` for every chunk of the configured range, in time order.

    With ``workers > 1`` chunks are generated on a small thread pool (NumPy and Polars release the
    GIL for the bulk work), at most ``2 * workers`` ahead of the consumer; output is identical.
    """
    pop = pop if pop is not None else build_population(cfg)
    starts = cfg.chunk_starts_ms()
    if workers <= 1:
        for start in starts:
            yield start, generate_chunk(cfg, pop, start)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="risk-sim") as pool:
        pending: deque[tuple[int, Future[SimulatedData]]] = deque()
        for start in starts:
            pending.append((start, pool.submit(generate_chunk, cfg, pop, start)))
            if len(pending) >= 2 * workers:
                first, fut = pending.popleft()
                yield first, fut.result()
        while pending:
            first, fut = pending.popleft()
            yield first, fut.result()


def generate(cfg: SimConfig, pop: Population | None = None, workers: int = 1) -> SimulatedData:
    """Everything the configured range produces, as three frames (see :class:`SimulatedData`)."""
    return SimulatedData.concat([data for _, data in iter_chunks(cfg, pop, workers)])
