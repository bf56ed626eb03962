"""Drift scenarios with ground truth: traffic changes over a time window, with what they change.

The original ``drift_day`` changes fraud *tactics* only: fraud stays well under 1 % of traffic, so
population monitors (feature drift, prediction PSI) cannot see it and only delayed-label performance
can. These scenarios change what monitors do see, as real attacks and real markets do. Each is a
:class:`DriftScenario` in ``SimConfig.drift_scenarios``, active over ``[start, end)`` (whole hours,
absolute time), off by default:

* ``attack_surge`` — the ``target`` fraud scenario's case rate × ``rate_factor`` (default 20: a bot
  campaign). Card testing then makes a large share of all card payments (many tiny, mostly declined);
  an ATO surge fills the withdrawals from hosting/VPN networks; a P2P scam wave concentrates trades on
  the scammers' accounts.
* ``new_attack_network`` — the ``target`` attackers (``card_testing``, ``ato``) operate from a new
  geography: residential / mobile proxies in ``country`` (``ID``, ``RU`` or ``EG``: no customers
  there; ``world.NEW_ATTACK_NETWORKS``), each case on fresh devices (a new device family — an emulator
  farm — instead of the ring's known devices), at ``rate_factor`` × the usual rate (5; ATO 20).
* ``attack_amount_shift`` — card testers move their test payments × ``amount_factor`` (default 20:
  $10–60 instead of $0.5–3, past "tiny amount" rules), at ``rate_factor`` (default 1).
* ``legit_market_event`` — *not fraud*: a ``users_fraction`` of users (chosen by a hash of the user,
  default 30 %) add ``rate_factor`` × their usual activity (default 1: twice as active), spread evenly
  over the day (nights included) and mostly withdrawals, P2P trades and deposits, at amounts
  × ``amount_factor`` (lognormal median, default 6). No labels, no fraud in the ground truth.

``PRESETS`` lists the supported (kind, target) pairs, their default factors and the observable each
moves at them (why these, and why ATO/P2P amount shifts are not offered: see its comment).

Ground truth: every event a scenario created or changed carries the scenario's name in the ground
truth's ``drift_scenario`` column (all cases of the target scenario started inside the window; every
extra market-event event); :func:`drift_manifest` has one row per scenario (kind, window, fraud or
not, parameters, the observable it moves) and :func:`drift_population` the affected entities
(assigned: the market event's users, the new network's ASNs and country; observed: users, devices,
IPs and cards of the attributed events). ``DriftScenario.observable.slice(events)`` gives the rows
and column a scenario claims to move (event type, column and segment, e.g. the amounts of card
payments), so that tests and benchmarks compare the same thing before and during the window.

Determinism: windows are absolute times, so a chunk is reproducible alone and an hour inside a long
run equals the same hour generated alone. Before ``start`` (and after ``end``, apart from fraud cases
that started inside the window) output is identical to a run without the scenario. Market-event
events are drawn from the chunk's own drift stream and get ids of their own, so the regular traffic
of the window keeps its events and ids; attack scenarios redraw the fraud rows of their window (and,
fraud and legit rows sharing one id sequence per chunk, the window's event ids).
Two attack scenarios on the same target may not overlap (each fraud row has one attribution).
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np
import polars as pl

from risk_assets.simulator import ids
from risk_assets.simulator.world import HOSTING_ASNS, NEW_ATTACK_NETWORKS, asn_block

if TYPE_CHECKING:
    from risk_assets.simulator.population import NetAddress, Population

DriftKind = Literal["attack_surge", "new_attack_network", "attack_amount_shift", "legit_market_event"]
DRIFT_KINDS: tuple[str, ...] = get_args(DriftKind)
ATTACK_KINDS = ("attack_surge", "new_attack_network", "attack_amount_shift")
Segment = Literal["all", "hosting_asn"]

_NS_MARKET = 201
# Event types of the extra market-event activity (login, deposit, withdrawal, p2p_trade).
MARKET_TYPES = ("login", "deposit", "withdrawal", "p2p_trade")
MARKET_TYPE_P = np.array([0.10, 0.25, 0.35, 0.30])
HOSTING_ASN_SET = frozenset(a for a, _ in HOSTING_ASNS)


@dataclass(frozen=True)
class Observable:
    """What a scenario claims to move: ``column`` over events of ``event_type`` in ``segment``."""

    event_type: str
    column: str
    segment: Segment = "all"

    def slice(self, events: pl.DataFrame) -> pl.Series:
        """The column's values over the claimed rows of an events frame (archive layout)."""
        rows = events.filter(pl.col("event_type") == self.event_type)
        if self.segment == "hosting_asn":
            rows = rows.filter(pl.col("ip_asn").is_in(sorted(HOSTING_ASN_SET)))
        return rows[self.column]


@dataclass(frozen=True)
class Preset:
    """Default factors of a (kind, target) and the observable it moves at them."""

    rate_factor: float
    amount_factor: float
    observable: Observable


# The supported (kind, target) pairs. Defaults are chosen so that, at the default fraud rates, the
# observable lands in the ``drift`` category of ``monitoring.drift`` between a day before and a day
# inside the window (``tests/simulator/test_simulator_drift.py`` checks every pair). Fraud alone is
# too rare to move a whole event type: only card testing at campaign volume moves all card payments;
# an ATO surge moves the withdrawals from hosting/VPN networks (the segment its rings live in); ATO
# on a new network needs a 20× campaign to show in withdrawal countries. Amount shifts of ATO drains
# or P2P trades move no observable at all (the fraud stays inside the legit range of a few per cent
# of a segment), so they are not offered: the ``drift_day`` tactics change covers what only labels
# can reveal.
PRESETS: dict[tuple[str, str | None], Preset] = {
    ("attack_surge", "card_testing"): Preset(20.0, 1.0, Observable("card_payment", "amount_usd")),
    ("attack_surge", "ato"): Preset(20.0, 1.0, Observable("withdrawal", "amount_usd", "hosting_asn")),
    ("attack_surge", "p2p_scam"): Preset(20.0, 1.0, Observable("p2p_trade", "counterparty_id")),
    ("new_attack_network", "card_testing"): Preset(5.0, 1.0, Observable("card_payment", "ip_country")),
    ("new_attack_network", "ato"): Preset(20.0, 1.0, Observable("withdrawal", "ip_country")),
    ("attack_amount_shift", "card_testing"): Preset(
        1.0, 20.0, Observable("card_payment", "amount_usd", "hosting_asn")
    ),
    ("legit_market_event", None): Preset(1.0, 6.0, Observable("withdrawal", "amount_usd")),
}


def _utc(ts: datetime) -> datetime:
    return (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).astimezone(UTC)


@dataclass(frozen=True)
class DriftScenario:
    """One drift scenario (see the module docstring), active over ``[start, end)``."""

    kind: DriftKind
    start: datetime  # whole hours; naive times are taken as UTC
    end: datetime
    name: str = ""  # unique within a config; default: the kind (ground truth refers to it)
    target: str | None = None  # the fraud scenario an attack changes (default card_testing)
    rate_factor: float | None = None  # None: the preset's default for (kind, target)
    amount_factor: float | None = None  # likewise
    country: str = "ID"  # new_attack_network: a key of world.NEW_ATTACK_NETWORKS
    users_fraction: float = 0.3  # legit_market_event: share of users affected

    def __post_init__(self) -> None:
        if self.kind not in DRIFT_KINDS:
            raise ValueError(f"unknown drift kind {self.kind!r}; expected one of {DRIFT_KINDS}")
        start, end = _utc(self.start), _utc(self.end)
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)
        for ts in (start, end):
            if ts.minute or ts.second or ts.microsecond:
                raise ValueError(f"drift scenario {self.kind}: start and end must be whole hours, got {ts}")
        if end <= start:
            raise ValueError(f"drift scenario {self.kind}: end {end} must be after start {start}")
        object.__setattr__(self, "name", self.name or self.kind)
        targets = tuple(t for k, t in PRESETS if k == self.kind)
        target = self.target
        if target is None and self.kind != "legit_market_event":
            target = "card_testing"  # the only fraud with the volume to move a whole event type
        if target not in targets:
            raise ValueError(f"drift scenario {self.name}: target must be one of {targets}, got {target!r}")
        object.__setattr__(self, "target", target)
        preset = PRESETS[(self.kind, target)]
        rate, amount = preset.rate_factor, preset.amount_factor
        object.__setattr__(self, "rate_factor", float(rate if self.rate_factor is None else self.rate_factor))
        object.__setattr__(
            self, "amount_factor", float(amount if self.amount_factor is None else self.amount_factor)
        )
        if not (self.rate_factor > 0 and self.amount_factor > 0):  # type: ignore[operator]
            raise ValueError(f"drift scenario {self.name}: factors must be > 0")
        if self.kind == "new_attack_network" and self.country not in NEW_ATTACK_NETWORKS:
            raise ValueError(
                f"drift scenario {self.name}: country must be one of {sorted(NEW_ATTACK_NETWORKS)}"
            )
        if not 0.0 < self.users_fraction <= 1.0:
            raise ValueError(f"drift scenario {self.name}: users_fraction must be within (0, 1]")

    @property
    def is_fraud(self) -> bool:
        return self.kind in ATTACK_KINDS

    @property
    def start_ms(self) -> int:
        return int(self.start.timestamp() * 1000)

    @property
    def end_ms(self) -> int:
        return int(self.end.timestamp() * 1000)

    def active(self, ts_ms: int) -> bool:
        """Whether the window covers ``ts_ms``."""
        return self.start_ms <= ts_ms < self.end_ms

    @property
    def observable(self) -> Observable:
        """What this scenario moves (at its preset factors)."""
        return PRESETS[(self.kind, self.target)].observable

    def parameters(self) -> dict[str, object]:
        """The knobs that matter for this kind (for the manifest)."""
        out: dict[str, object] = {"rate_factor": self.rate_factor, "amount_factor": self.amount_factor}
        if self.kind == "new_attack_network":
            out["country"] = self.country
            out["asns"] = list(NEW_ATTACK_NETWORKS[self.country])
        if self.kind == "legit_market_event":
            out["users_fraction"] = self.users_fraction
        return out


_SPEC_FLOATS = ("rate_factor", "amount_factor", "users_fraction")
_SPEC_STRINGS = ("name", "target", "country")


def parse_scenario(spec: str, anchor: datetime) -> DriftScenario:
    """A scenario from the command line: ``KIND[:key=value,...]``.

    Keys: ``start`` and ``end`` (a number: days after ``anchor``, e.g. ``2`` or ``1.5``; or an ISO
    date/time, UTC), ``days`` (duration instead of ``end``; default 1), ``name``, ``target``,
    ``rate_factor``, ``amount_factor``, ``country``, ``users_fraction``. Example:
    ``attack_surge:start=3,days=1,target=card_testing,rate_factor=10``.
    """
    kind, _, rest = spec.partition(":")
    fields: dict[str, str] = {}
    for item in filter(None, (x.strip() for x in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or key in fields:
            raise ValueError(f"drift scenario {spec!r}: expected distinct key=value items, got {item!r}")
        fields[key] = value
    unknown = set(fields) - {"start", "end", "days", *_SPEC_FLOATS, *_SPEC_STRINGS}
    if unknown:
        raise ValueError(f"drift scenario {spec!r}: unknown keys {sorted(unknown)}")
    if "start" not in fields:
        raise ValueError(f"drift scenario {spec!r}: start=... is required")
    if "end" in fields and "days" in fields:
        raise ValueError(f"drift scenario {spec!r}: give end or days, not both")

    def when(key: str) -> datetime:
        text = fields[key]
        try:
            return anchor + timedelta(days=float(text))
        except ValueError:
            pass
        try:
            return _utc(datetime.fromisoformat(text))
        except ValueError:
            raise ValueError(
                f"drift scenario {spec!r}: {key} must be days after the start or an ISO time, got {text!r}"
            ) from None

    def number(key: str, default: str | None = None) -> float:
        try:
            return float(fields.get(key, default))  # type: ignore[arg-type]
        except ValueError:
            raise ValueError(
                f"drift scenario {spec!r}: {key} must be a number, got {fields[key]!r}"
            ) from None

    start = when("start")
    end = when("end") if "end" in fields else start + timedelta(days=number("days", "1"))
    kwargs: dict[str, object] = {k: number(k) for k in _SPEC_FLOATS if k in fields}
    kwargs.update({k: fields[k] for k in _SPEC_STRINGS if k in fields})
    return DriftScenario(kind, start, end, **kwargs)  # type: ignore[arg-type]


def validate_scenarios(scenarios: tuple[DriftScenario, ...]) -> None:
    """Unique names; no two attack scenarios on the same target overlap in time."""
    names = [s.name for s in scenarios]
    if len(set(names)) != len(names):
        raise ValueError(f"drift scenario names must be unique, got {names}")
    attacks = [s for s in scenarios if s.is_fraud]
    for i, a in enumerate(attacks):
        for b in attacks[i + 1 :]:
            if a.target == b.target and a.start < b.end and b.start < a.end:
                raise ValueError(f"drift scenarios {a.name} and {b.name} overlap on target {a.target}")


# --- what the generator applies in a chunk ---------------------------------------------------------
@dataclass(frozen=True)
class AttackEffects:
    """How an active attack scenario changes one fraud scenario's cases in a chunk."""

    scenario: str | None = None  # the drift scenario's name (ground truth), None: no scenario
    rate_factor: float = 1.0
    amount_factor: float = 1.0
    network_asns: tuple[int, ...] = ()  # non-empty: attackers use this network and fresh devices
    network_country: str = ""

    def network_address(self, rng: np.random.Generator) -> NetAddress:
        """A random IP of the new network (a residential / mobile proxy exit)."""
        from risk_assets.simulator.population import NetAddress

        asn = self.network_asns[int(rng.integers(len(self.network_asns)))]
        ip = (asn_block(asn) << 16) | int(rng.integers(1, 65_535))
        return NetAddress(ids.ip_string(ip), asn, self.network_country)


NO_EFFECTS = AttackEffects()


def attack_effects(scenarios: tuple[DriftScenario, ...], target: str, ts_ms: int) -> AttackEffects:
    """The effects on ``target``'s cases at ``ts_ms`` (at most one attack scenario is active)."""
    for s in scenarios:
        if s.is_fraud and s.target == target and s.active(ts_ms):
            network = NEW_ATTACK_NETWORKS[s.country] if s.kind == "new_attack_network" else ()
            return AttackEffects(
                s.name,
                s.rate_factor,  # type: ignore[arg-type]
                s.amount_factor,  # type: ignore[arg-type]
                network,
                s.country if network else "",
            )
    return NO_EFFECTS


@dataclass(frozen=True)
class MarketPlan:
    """The users of a market event: their indices and activity CDF, and their share of activity."""

    users: np.ndarray
    cdf: np.ndarray
    activity_share: float
    amount_median: float
    rate_factor: float
    name: str


def market_users(seed: int, scenario: DriftScenario, pop: Population) -> np.ndarray:
    """Indices of the users a market event affects: a hash of (seed, scenario name, user) < fraction."""
    key = np.uint64(zlib.crc32(scenario.name.encode()))
    u = ids.unit_hash(seed, _NS_MARKET, (key << np.uint64(32)) | np.arange(pop.n, dtype=np.uint64))
    return np.flatnonzero(u < scenario.users_fraction)


def market_plan(seed: int, scenario: DriftScenario, pop: Population) -> MarketPlan:
    users = market_users(seed, scenario, pop)
    w = pop.activity[users]
    cdf = np.cumsum(w)
    total = float(cdf[-1]) if cdf.size else 0.0
    return MarketPlan(
        users,
        cdf / total if total else cdf,
        total / float(pop.activity.sum()),
        scenario.amount_factor,  # type: ignore[arg-type]
        scenario.rate_factor,  # type: ignore[arg-type]
        scenario.name,
    )


# --- ground truth of the scenarios -----------------------------------------------------------------
MANIFEST_SCHEMA: dict[str, pl.DataType] = {
    "scenario": pl.String(),
    "kind": pl.String(),
    "start": pl.Datetime("ms", "UTC"),
    "end": pl.Datetime("ms", "UTC"),
    "is_fraud": pl.Boolean(),
    "target": pl.String(),
    "observable_event_type": pl.String(),
    "observable_column": pl.String(),
    "observable_segment": pl.String(),
    "parameters": pl.String(),
}
POPULATION_SCHEMA: dict[str, pl.DataType] = {
    "scenario": pl.String(),
    "entity_type": pl.String(),
    "entity_id": pl.String(),
    "first_seen": pl.Datetime("ms", "UTC"),  # null: assigned by the configuration
}
# Entity columns of the events attributed to a scenario that the population lists.
ENTITY_COLUMNS = ("user_id", "device_id", "ip", "ip_asn", "ip_country", "card_id")


def drift_manifest(scenarios: tuple[DriftScenario, ...]) -> pl.DataFrame:
    """One row per scenario: name, kind, window, fraud or not, target, observable, parameters (JSON)."""
    rows = [
        {
            "scenario": s.name,
            "kind": s.kind,
            "start": s.start,
            "end": s.end,
            "is_fraud": s.is_fraud,
            "target": s.target,
            "observable_event_type": s.observable.event_type,
            "observable_column": s.observable.column,
            "observable_segment": s.observable.segment,
            "parameters": json.dumps(s.parameters(), sort_keys=True),
        }
        for s in scenarios
    ]
    return pl.DataFrame(rows, schema=MANIFEST_SCHEMA)


def assigned_population(seed: int, scenarios: tuple[DriftScenario, ...], pop: Population) -> pl.DataFrame:
    """Entities a scenario affects by configuration: a market event's users, a new network's ASNs
    and country (known before any event is generated)."""
    parts = []
    for s in scenarios:
        if s.kind == "legit_market_event":
            users = pop.user_id.gather(market_users(seed, s, pop))
            parts.append(
                pl.DataFrame({"entity_type": "user_id", "entity_id": users}).with_columns(
                    scenario=pl.lit(s.name)
                )
            )
        if s.kind == "new_attack_network":
            ents = [("ip_asn", str(a)) for a in NEW_ATTACK_NETWORKS[s.country]] + [("ip_country", s.country)]
            parts.append(
                pl.DataFrame(ents, schema=["entity_type", "entity_id"], orient="row").with_columns(
                    scenario=pl.lit(s.name)
                )
            )
    if not parts:
        return pl.DataFrame(schema=POPULATION_SCHEMA)
    return (
        pl.concat(parts)
        .with_columns(pl.lit(None, pl.Datetime("ms", "UTC")).alias("first_seen"))
        .select(list(POPULATION_SCHEMA))
    )


def observed_population(events: pl.DataFrame, ground_truth: pl.DataFrame) -> pl.DataFrame:
    """Entities of the events attributed to a scenario (``ground_truth.drift_scenario``), with the
    time each was first seen in them."""
    attributed = ground_truth.filter(pl.col("drift_scenario").is_not_null()).select(
        "event_id", "drift_scenario"
    )
    if attributed.height == 0:
        return pl.DataFrame(schema=POPULATION_SCHEMA)
    rows = events.join(attributed, on="event_id", how="inner")
    parts = [
        rows.select(
            pl.col("drift_scenario").alias("scenario"),
            pl.lit(c).alias("entity_type"),
            pl.col(c).cast(pl.String).alias("entity_id"),
            pl.col("event_ts").alias("first_seen"),
        ).drop_nulls("entity_id")
        for c in ENTITY_COLUMNS
    ]
    return (
        pl.concat(parts)
        .group_by("scenario", "entity_type", "entity_id")
        .agg(pl.col("first_seen").min())
        .sort("scenario", "entity_type", "entity_id")
        .select(list(POPULATION_SCHEMA))
    )


def drift_population(
    seed: int,
    scenarios: tuple[DriftScenario, ...],
    pop: Population,
    events: pl.DataFrame,
    ground_truth: pl.DataFrame,
) -> pl.DataFrame:
    """Assigned and observed entities of every scenario, one row per (scenario, type, id); the
    earliest ``first_seen`` wins (null when assigned but never seen)."""
    return merge_population(
        [assigned_population(seed, scenarios, pop), observed_population(events, ground_truth)]
    )


def merge_population(parts: list[pl.DataFrame]) -> pl.DataFrame:
    """Population frames (e.g. one per chunk) as one: unique (scenario, type, id), earliest first_seen."""
    both = pl.concat([p.select(list(POPULATION_SCHEMA)) for p in parts]) if parts else None
    if both is None:
        return pl.DataFrame(schema=POPULATION_SCHEMA)
    return (
        both.group_by("scenario", "entity_type", "entity_id")
        .agg(pl.col("first_seen").min())
        .sort("scenario", "entity_type", "entity_id")
        .select(list(POPULATION_SCHEMA))
    )
