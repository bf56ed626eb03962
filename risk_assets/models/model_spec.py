"""The model specification (a "feature service"): everything that defines one model's inputs and
training examples, in one declared object that ``build_training_set``, the trainer, the promotion
gate and ``risk-serve`` all take.

* **spine** — which events are scored and trained on: any declared event source, with filters
  (``Where``) and the columns carried into the training frame (``carry``: ids for analysis, the
  per-entity metric's entity);
* **label** — which label source and which labels count (filters), and the label column that names
  a positive's scenario (for per-scenario metrics);
* **groups** — the feature groups joined point-in-time (their entity keys must be spine columns);
* **request** — the request-time feature definitions (:mod:`risk_assets.features.request`) computed
  from the scored event itself (their inputs must be spine columns);
* **timing** — features are joined as of the event time minus ``feature_lag_ms`` (default 1 ms: what
  the online store holds when the event arrives, never the event's own rows);
* **entity_column** — the entity of the per-entity precision@k (a carried column).

The training frame has a fixed layout whatever the source calls its columns: ``event_id`` (the
spine's id column), ``event_ts`` (its time column), the carried columns, ``is_fraud``,
``scenario``, ``weight``, then the model features (request outputs, then the group features that are
model inputs, ``{group}__{feature}``).

The exchange's specification is one instance (``risk_assets.models.exchange_spec.EXCHANGE_MODEL``);
``examples/card_payments`` declares another. Pure declarations: no Dagster, no I/O.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from risk_assets.features.request import RequestFeatures, check_outputs
from risk_assets.features.spec import FeatureGroup, Where
from risk_assets.sources import EventSource, LabelSource

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
FRAME_ID = "event_id"
FRAME_TS = "event_ts"
LABEL_COLUMNS = ("is_fraud", "scenario", "weight")


def _where_doc(filters: Sequence[Where]) -> list[list[Any]]:
    return [[w.column, w.op, list(w.values())] for w in filters]


@dataclass(frozen=True)
class Spine:
    """The scored events: a declared source, filtered, with the columns the frame carries."""

    source: EventSource
    filters: tuple[Where, ...] = ()
    carry: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "filters", tuple(self.filters))
        object.__setattr__(self, "carry", tuple(self.carry))
        schema = self.source.schema
        for w in self.filters:
            w.check(schema, f"source {self.source.name}")
        for c in self.carry:
            if c not in schema:
                raise ValueError(f"spine carries {c!r}, not a column of source {self.source.name}")
            if c in (FRAME_ID, FRAME_TS, *LABEL_COLUMNS) and c not in (
                self.source.id_column,
                self.source.timestamp,
            ):
                raise ValueError(f"spine carries {c!r}: the training frame reserves that name")


@dataclass(frozen=True)
class LabelRule:
    """Which labels make an event positive: labels of ``source`` passing ``filters`` whose time is
    before the training set's cutoff; ``scenario_column`` names a positive's scenario (``None``:
    the label source's name)."""

    source: LabelSource
    filters: tuple[Where, ...] = ()
    scenario_column: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "filters", tuple(self.filters))
        schema = self.source.schema
        for w in self.filters:
            w.check(schema, f"label source {self.source.name}")
        if self.scenario_column is not None and self.scenario_column not in schema:
            raise ValueError(
                f"scenario column {self.scenario_column!r} is not in label source {self.source.name}"
            )


@dataclass(frozen=True)
class Timing:
    """When features are read: as of the event time minus ``feature_lag_ms``."""

    feature_lag_ms: int = 1

    def __post_init__(self) -> None:
        if (
            isinstance(self.feature_lag_ms, bool)
            or not isinstance(self.feature_lag_ms, int)
            or self.feature_lag_ms < 1
        ):
            raise ValueError("feature_lag_ms must be an integer ≥ 1 (an event never sees its own rows)")


@dataclass(frozen=True)
class ModelSpec:
    """One model's declared inputs and examples (see the module docstring)."""

    name: str
    spine: Spine
    label: LabelRule
    groups: tuple[FeatureGroup, ...] = ()
    request: tuple[RequestFeatures, ...] = ()
    timing: Timing = Timing()
    entity_column: str | None = None
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"model spec name {self.name!r} must be snake_case")
        object.__setattr__(self, "groups", tuple(self.groups))
        object.__setattr__(self, "request", tuple(self.request))
        src = self.spine.source
        if self.label.source.events != src.name:
            raise ValueError(
                f"model spec {self.name}: label source {self.label.source.name} labels "
                f"{self.label.source.events}, not the spine's source {src.name}"
            )
        names = [g.name for g in self.groups]
        if len(set(names)) != len(names):
            raise ValueError(f"model spec {self.name}: duplicate groups {names}")
        schema = src.schema
        for g in self.groups:
            lacking = [k for k in g.entity.keys if k not in schema]
            if lacking:
                raise ValueError(
                    f"model spec {self.name}: group {g.name} keys on {lacking}, not columns of {src.name}"
                )
        check_outputs(self.request)
        fetchable = {f"{g.name}__{f}" for g in self.groups for f in g.feature_names}
        for r in self.request:
            lacking = [c for c in r.inputs if c not in schema]
            if lacking:
                raise ValueError(
                    f"model spec {self.name}: request features {r.name} read {lacking}, "
                    f"not columns of {src.name}"
                )
            unknown = [f for f in r.fetched if f not in fetchable]
            if unknown:
                raise ValueError(
                    f"model spec {self.name}: request features {r.name} read fetched {unknown}, "
                    "not features of the spec's groups"
                )
        group_cols = {f"{g.name}__{f}" for g in self.groups for f in g.feature_names}
        clash = sorted(set(self.request_outputs) & group_cols)
        if clash:
            raise ValueError(f"model spec {self.name}: request outputs clash with group features {clash}")
        taken = sorted(set(self.request_outputs) & set(self.frame_columns))
        if taken:
            raise ValueError(f"model spec {self.name}: request outputs {taken} clash with frame columns")
        if self.entity_column is not None and self.entity_column not in self.frame_columns:
            raise ValueError(
                f"model spec {self.name}: entity_column {self.entity_column!r} must be carried by the spine"
            )

    # ---- derived ---------------------------------------------------------------------------------

    @property
    def frame_columns(self) -> tuple[str, ...]:
        """The training frame's id/time/carried columns (before the label columns)."""
        src = self.spine.source
        carry = [c for c in self.spine.carry if c not in (src.id_column, src.timestamp)]
        return (FRAME_ID, FRAME_TS, *carry)

    @property
    def request_outputs(self) -> tuple[str, ...]:
        return tuple(o for r in self.request for o in r.outputs)

    @property
    def groups_by_name(self) -> dict[str, FeatureGroup]:
        return {g.name: g for g in self.groups}

    @property
    def request_by_name(self) -> dict[str, RequestFeatures]:
        return {r.name: r for r in self.request}

    def spine_columns(self) -> list[str]:
        """Source columns the spine needs: id, time, carried, filter, group-key and request-input
        columns (each once, in that order)."""
        src = self.spine.source
        cols = [
            src.id_column,
            src.timestamp,
            *self.spine.carry,
            *(w.column for w in self.spine.filters),
            *(k for g in self.groups for k in g.entity.keys),
            *(c for r in self.request for c in r.inputs),
        ]
        return list(dict.fromkeys(cols))

    def feature_columns(self, groups: Sequence[FeatureGroup] | None = None) -> list[str]:
        """Every model input column, in a stable order: the request outputs, then the numeric
        features of every group that are model inputs (helpers — ``model_input=False`` — never)."""
        gs = self.groups if groups is None else groups
        numeric = [f"{g.name}__{f}" for g in gs for f in g.model_feature_names if g.schema()[f].is_numeric()]
        return [*self.request_outputs, *numeric]

    def request_versions(self) -> dict[str, str]:
        return {r.name: r.version for r in self.request}

    @cached_property
    def version(self) -> str:
        """Content hash of the specification (sources, filters, groups' and request sets' versions,
        timing)."""
        doc = {
            "name": self.name,
            "spine": {
                "source": self.spine.source.identity(),
                "filters": _where_doc(self.spine.filters),
                "carry": list(self.spine.carry),
            },
            "label": {
                "source": self.label.source.identity(),
                "filters": _where_doc(self.label.filters),
                "scenario_column": self.label.scenario_column,
            },
            "groups": {g.name: g.version for g in self.groups},
            "request": self.request_versions(),
            "feature_lag_ms": self.timing.feature_lag_ms,
            "entity_column": self.entity_column,
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def identity(self) -> dict[str, Any]:
        """What a training set's and a model's manifest record of the spec."""
        return {"name": self.name, "version": self.version, "request_features": self.request_versions()}

    def with_groups(self, groups: Sequence[FeatureGroup]) -> ModelSpec:
        """The same spec over other groups (e.g. a subset, or a new feature under evaluation)."""
        from dataclasses import replace

        return replace(self, groups=tuple(groups))

    def with_request(self, request: Sequence[RequestFeatures]) -> ModelSpec:
        from dataclasses import replace

        return replace(self, request=tuple(request))


def servability_failures(
    spec: ModelSpec,
    features: Sequence[str],
    feature_groups: dict[str, str],
    request_features: dict[str, str] | None,
    spec_name: str | None = None,
) -> list[str]:
    """Why a model with these inputs (and recorded group / request-feature versions, spec name) can
    not be served under ``spec``: unknown or helper features, stale versions, another spec."""
    failures = []
    if spec_name is not None and spec_name != spec.name:
        failures.append(f"model was trained for model spec {spec_name!r}, this is {spec.name!r}")
    servable = set(spec.feature_columns())
    not_servable = [f for f in features if f not in servable]
    if not_servable:
        failures.append(f"features not servable online: {not_servable[:10]}")
    current = {g.name: g.version for g in spec.groups}
    used = sorted({f.split("__", 1)[0] for f in features if "__" in f})
    for name in used:
        if name not in feature_groups:
            failures.append(f"manifest lacks the version of feature group {name!r}")
        elif name in current and feature_groups[name] != current[name]:
            failures.append(
                f"feature group {name!r} is version {feature_groups[name]} in the model, "
                f"{current[name]} in the current definitions"
            )
    if request_features is not None:
        now = spec.request_versions()
        wanted = set(features)
        for r in spec.request:
            if not wanted & set(r.outputs):
                continue
            if r.name not in request_features:
                failures.append(f"manifest lacks the version of request features {r.name!r}")
            elif request_features[r.name] != now[r.name]:
                failures.append(
                    f"request features {r.name!r} are version {request_features[r.name]} in the model, "
                    f"{now[r.name]} in the current definitions"
                )
    return failures


def load_model_spec(ref: str) -> ModelSpec:
    """The :class:`ModelSpec` named by ``module:attribute`` (e.g.
    ``examples.card_payments.definitions:CARD_MODEL``); an empty ``ref`` is the exchange's. Used by
    ``risk-serve`` (``RISK_MODEL_SPEC``) at start, never at import."""
    import importlib

    if not ref:
        from risk_assets.models.exchange_spec import EXCHANGE_MODEL

        return EXCHANGE_MODEL
    module_name, _, attr = ref.partition(":")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"model spec {ref!r} cannot be loaded: {exc}") from None
    if not isinstance(obj, ModelSpec):
        raise ValueError(f"model spec {ref!r} is a {type(obj).__name__}, not a ModelSpec")
    return obj
