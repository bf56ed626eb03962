"""Train the fraud model: XGBoost on a point-in-time training set, split by time, never at random.

Pure Python (no Dagster), so a notebook trains the same model as the asset::

    frame = pl.read_parquet(".../training_sets/as_of=2026-11-20/part-00000.parquet")
    trained = train(frame, manifest["features"], TrainingParams())
    version = registry.register(lake, trained.model_bytes, manifest_for(trained, manifest, FEATURE_GROUPS))

* **Split** — by ``event_ts``, never at random. *Fractions* (default): ``[start, train_end)``
  train, a ``gap`` (label delay; fraud cases that straddle the boundary), ``[validation_start,
  validation_end)`` validation, another gap, ``[test_start, end]`` test; fractions are of the usable
  time (span minus the gaps). ``validation_fraction=0``: no validation split (one gap). *Dates*
  (``train_end`` and ``test_start`` set, ISO 8601; naive = UTC): train ``[train_start or the first
  row, train_end)``, validation ``[validation_start, validation_end)`` when both are set (else
  none), test ``[test_start, test_end or after the last row)``; the dates are the boundaries, no
  gap is added, and they must not overlap.
* **Labels** — ``is_fraud`` may be Boolean, a 0/1 integer of any width or a 0/1 float; it is
  checked and turned into Boolean first (``~y`` on an integer array is a bitwise NOT, which used to
  silently turn class weighting off; a float label used to crash).
* **Imbalance** — each training row's weight is the set's sampling ``weight`` times
  ``scale_pos_weight`` for positives (default: weighted negatives / positives of the train split).
  The resulting odds inflation is undone inside the model (its ``base_score`` is shifted by
  ``−ln(scale_pos_weight)`` in margin space), so the served score is a probability on the
  population's scale and its calibration can be measured.
* **Early stopping** — on the validation split's weighted average precision (``metrics.py``),
  keeping the best iteration. Without a validation split, or with ``early_stopping_rounds=0``, the
  model has exactly ``n_estimators`` rounds.
* **Test metrics** — ``metrics.evaluate`` on the test split, plus the per-entity daily
  precision@``entity_top_k`` over ``entity_column`` (how investigators count cards/customers; null
  when the frame has no such column). ``drop_known_entities`` removes from the test split every
  row of an entity that has a positive label in the train split (already known compromised), as
  fraud benchmarks do.
* **Determinism** — ``tree_method="hist"``, a fixed ``nthread`` and ``seed``: the same frame and
  params give byte-identical model bytes (XGBoost's own UBJSON format, no pickle).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from risk_assets.features.spec import FeatureGroup
from risk_assets.models import metrics as mx
from risk_assets.models.exchange_spec import exchange_model
from risk_assets.models.model_spec import ModelSpec

if TYPE_CHECKING:
    import xgboost as xgb


def _xgb() -> Any:
    """xgboost, imported when a model is trained or loaded (≈1 s of imports no stream run needs)."""
    import xgboost

    return xgboost


LABEL = "is_fraud"
WEIGHT = "weight"
TIMESTAMP = "event_ts"
SCENARIO = "scenario"
EARLY_STOPPING_METRIC = "average_precision"


@dataclass(frozen=True)
class TrainingParams:
    """Hyper-parameters and split settings (mirrored by the Launchpad's ``dg.Config``)."""

    n_estimators: int = 400
    max_depth: int = 6
    learning_rate: float = 0.05
    subsample: float = 0.8
    colsample_bytree: float = 0.8
    min_child_weight: float = 1.0
    reg_lambda: float = 1.0
    seed: int = 17
    nthread: int = 2
    early_stopping_rounds: int = 50
    """Stop after this many rounds without a better validation average precision (0: never)."""
    scale_pos_weight: float | None = None
    """Weight multiplier of positives; ``None``: weighted negatives / positives of the train split."""
    train_fraction: float = 0.6
    validation_fraction: float = 0.2
    """Test gets the rest of the usable time; 0: no validation split (fixed rounds)."""
    gap_hours: float = 24.0
    """Hours dropped before validation and before test (label delay, cases straddling a boundary)."""
    top_k: int = 50
    """Daily review-queue size for ``precision_at_top_k_per_day``."""
    train_start: str | None = None
    """Date split (ISO 8601, naive = UTC): first instant of the train window (None: first row)."""
    train_end: str | None = None
    """Date split: end of the train window (exclusive). Setting it selects the date split."""
    validation_start: str | None = None
    """Date split: validation window start (set with validation_end, or neither: no validation)."""
    validation_end: str | None = None
    """Date split: validation window end (exclusive)."""
    test_start: str | None = None
    """Date split: test window start (required with train_end)."""
    test_end: str | None = None
    """Date split: test window end (exclusive; None: through the last row)."""
    entity_column: str | None = None
    """Entity of the per-entity daily precision@k (None: the model spec's ``entity_column``;
    not computed when the spec has none)."""
    entity_top_k: int = 100
    """Entities in the daily review queue of ``entity_precision_at_top_k_per_day``."""
    drop_known_entities: bool = False
    """Drop from the test split the entities (``entity_column``) with a positive in the train split."""

    def __post_init__(self) -> None:
        if not (0 < self.train_fraction < 1 and 0 <= self.validation_fraction < 1):
            raise ValueError("train_fraction must be within (0, 1) and validation_fraction within [0, 1)")
        if self.train_fraction + self.validation_fraction >= 1:
            raise ValueError("train_fraction + validation_fraction must leave time for the test split")
        if self.gap_hours < 0 or self.n_estimators < 1 or self.nthread < 1:
            raise ValueError("gap_hours >= 0, n_estimators >= 1 and nthread >= 1 are required")
        if self.early_stopping_rounds < 0 or self.entity_top_k < 1:
            raise ValueError("early_stopping_rounds >= 0 and entity_top_k >= 1 are required")
        dates = self.split_dates()
        if dates is None:
            if any(getattr(self, k) is not None for k in _DATE_FIELDS):
                raise ValueError("a date split needs train_end and test_start")
            return
        order = [(k, t) for k in _DATE_FIELDS if (t := dates[k]) is not None]
        for (ka, a), (kb, b) in itertools.pairwise(order):
            if b < a or (a == b and (ka, kb) in (("train_start", "train_end"), ("test_start", "test_end"))):
                raise ValueError(f"date split out of order: {ka}={a.isoformat()} after {kb}={b.isoformat()}")
        if (dates["validation_start"] is None) != (dates["validation_end"] is None):
            raise ValueError("set both validation_start and validation_end, or neither")
        if dates["validation_start"] is not None and dates["validation_start"] >= dates["validation_end"]:
            raise ValueError("validation_start must be before validation_end")

    def split_dates(self) -> dict[str, datetime | None] | None:
        """The date split's boundaries as aware UTC datetimes, or ``None`` for the fraction split."""
        if self.train_end is None and self.test_start is None:
            return None
        if self.train_end is None or self.test_start is None:
            raise ValueError("a date split needs both train_end and test_start")
        return {k: _parse_date(k, getattr(self, k)) for k in _DATE_FIELDS}

    @property
    def gap(self) -> timedelta:
        return timedelta(hours=self.gap_hours)


_DATE_FIELDS = ("train_start", "train_end", "validation_start", "validation_end", "test_start", "test_end")


def _parse_date(name: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not an ISO 8601 date/time") from None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


@dataclass(frozen=True)
class SplitBoundaries:
    """Time boundaries of the split (train ``[start, train_end)``, validation
    ``[validation_start, validation_end)`` — empty when ``validation_start == validation_end`` —,
    test ``[test_start, end]``, or ``[test_start, test_end)`` when a date split set ``test_end``) and
    each part's size."""

    start: datetime
    train_end: datetime
    validation_start: datetime
    validation_end: datetime
    test_start: datetime
    end: datetime
    rows: dict[str, int] = field(default_factory=dict)
    positives: dict[str, int] = field(default_factory=dict)
    test_end: datetime | None = None
    mode: str = "fractions"
    dropped_known_entities: int = 0
    """Test rows removed by ``drop_known_entities``."""

    @property
    def has_validation(self) -> bool:
        return self.validation_start < self.validation_end

    def parts(self, frame: pl.DataFrame) -> dict[str, pl.DataFrame]:
        """``frame``'s rows of each part (rows in gaps or outside the windows are in none)."""
        ts = pl.col(TIMESTAMP)
        test = (ts >= self.test_start) & (ts < self.test_end if self.test_end is not None else ts <= self.end)
        return {
            "train": frame.filter((ts >= self.start) & (ts < self.train_end)),
            "validation": frame.filter((ts >= self.validation_start) & (ts < self.validation_end)),
            "test": frame.filter(test),
        }

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            k: v.astimezone(UTC).isoformat() for k, v in asdict(self).items() if isinstance(v, datetime)
        }
        out["rows"], out["positives"] = dict(self.rows), dict(self.positives)
        if self.mode != "fractions":  # the fraction split's manifest keeps its former shape
            out["mode"] = self.mode
            out["test_end"] = None if self.test_end is None else self.test_end.astimezone(UTC).isoformat()
        if self.dropped_known_entities:
            out["dropped_known_entities"] = self.dropped_known_entities
        return out


@dataclass(frozen=True)
class TrainedModel:
    """A trained booster and everything measured while training it."""

    booster: xgb.Booster
    model_bytes: bytes
    features: list[str]
    params: TrainingParams
    scale_pos_weight: float
    best_iteration: int
    split: SplitBoundaries
    metrics: dict[str, Any]
    """Test-split metrics (``metrics.evaluate``), overall."""
    metrics_by_scenario: dict[str, dict[str, Any]]
    validation_metrics: dict[str, Any]
    feature_importance: dict[str, float]
    """Share of total gain per feature, highest first (unused features 0)."""
    training_seconds: float


def feature_matrix(frame: pl.DataFrame, features: Sequence[str]) -> np.ndarray:
    """The model input: ``features`` in order as a C-contiguous float32 matrix, nulls as NaN."""
    missing = [f for f in features if f not in frame.columns]
    if missing:
        raise ValueError(f"frame lacks model features: {missing[:5]}{'…' if len(missing) > 5 else ''}")
    if not features:
        return np.zeros((frame.height, 0), dtype=np.float32)
    cols = frame.select(pl.col(f).cast(pl.Float32) for f in features)
    return np.ascontiguousarray(cols.to_numpy(), dtype=np.float32)


def boolean_labels(frame: pl.DataFrame, column: str = LABEL) -> pl.DataFrame:
    """``frame`` with ``column`` as Boolean: accepts Boolean, 0/1 integers of any width and 0/1
    floats; anything else (other values, nulls, strings) is a clear error."""
    if column not in frame.columns:
        raise ValueError(f"frame has no label column {column!r}")
    s = frame[column]
    if s.dtype == pl.Boolean:
        if s.null_count():
            raise ValueError(f"label column {column!r} has {s.null_count()} null(s)")
        return frame
    if not s.dtype.is_numeric():
        raise ValueError(f"label column {column!r} is {s.dtype}: expected Boolean or 0/1 numbers")
    bad = s.is_null() | ~s.cast(pl.Float64).is_in([0.0, 1.0])
    if bad.any():
        examples = s.filter(bad).head(3).to_list()
        raise ValueError(f"label column {column!r} ({s.dtype}) must hold only 0/1, got e.g. {examples}")
    return frame.with_columns(s.cast(pl.Float64).eq(1.0).alias(column))


def time_split(
    frame: pl.DataFrame, params: TrainingParams
) -> tuple[SplitBoundaries, pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Split ``frame`` by ``event_ts`` into (boundaries, train, validation, test); rows that fall in a
    gap (or outside a date split's windows) are dropped. See the module docstring."""
    if frame.is_empty():
        raise ValueError("cannot split an empty training set")
    start: datetime = frame[TIMESTAMP].min()  # type: ignore[assignment]
    last: datetime = frame[TIMESTAMP].max()  # type: ignore[assignment]
    dates = params.split_dates()
    if dates is not None:
        train_end, test_start = dates["train_end"], dates["test_start"]
        assert train_end is not None and test_start is not None
        validation_start = dates["validation_start"] or test_start
        validation_end = dates["validation_end"] or test_start
        bounds = SplitBoundaries(
            start=dates["train_start"] or start,
            train_end=train_end,
            validation_start=validation_start,
            validation_end=validation_end,
            test_start=test_start,
            end=last,
            test_end=dates["test_end"],
            mode="dates",
        )
    else:
        gap = params.gap
        n_gaps = 2 if params.validation_fraction > 0 else 1
        usable = (last - start) - n_gaps * gap
        if usable <= timedelta(0):
            raise ValueError(f"training set spans {last - start}: too short for {n_gaps} gap(s) of {gap}")
        train_end = start + usable * params.train_fraction
        if params.validation_fraction > 0:
            validation_start = train_end + gap
            validation_end = validation_start + usable * params.validation_fraction
            test_start = validation_end + gap
        else:  # no validation split: an empty window at the test start
            test_start = train_end + gap
            validation_start = validation_end = test_start
        bounds = SplitBoundaries(start, train_end, validation_start, validation_end, test_start, last)
    parts = bounds.parts(frame)
    bounds = dataclasses.replace(
        bounds,
        rows={k: v.height for k, v in parts.items()},
        positives={k: int(v[LABEL].sum()) for k, v in parts.items()},
    )
    return bounds, parts["train"], parts["validation"], parts["test"]


def drop_known_entities(
    train_part: pl.DataFrame, test_part: pl.DataFrame, entity_column: str
) -> pl.DataFrame:
    """``test_part`` without the rows of entities that have a positive label in ``train_part``
    (already known to be compromised when the test period starts)."""
    for part in (train_part, test_part):
        if entity_column not in part.columns:
            raise ValueError(f"drop_known_entities: the frame has no column {entity_column!r}")
    known = train_part.filter(pl.col(LABEL))[entity_column].drop_nulls().unique()
    return test_part.filter(~pl.col(entity_column).is_in(known.implode()).fill_null(False))


def _xgb_params(params: TrainingParams) -> dict[str, Any]:
    return {
        "objective": "binary:logistic",
        "tree_method": "hist",
        "max_bin": 256,
        "max_depth": params.max_depth,
        "eta": params.learning_rate,
        "subsample": params.subsample,
        "colsample_bytree": params.colsample_bytree,
        "min_child_weight": params.min_child_weight,
        "lambda": params.reg_lambda,
        "seed": params.seed,
        "nthread": params.nthread,
        "disable_default_eval_metric": 1,
        "verbosity": 0,
    }


def _ap_metric(predt: np.ndarray, data: xgb.DMatrix) -> tuple[str, float]:
    """XGBoost custom metric: weighted average precision (``metrics.average_precision``)."""
    weight = data.get_weight()
    ap = mx.average_precision(data.get_label() > 0.5, predt, weight if weight.size else None)
    return EARLY_STOPPING_METRIC, 0.0 if ap is None else ap


def _base_score(booster: xgb.Booster) -> float:
    config = json.loads(booster.save_config())
    return float(str(config["learner"]["learner_model_param"]["base_score"]).strip("[]"))


def _undo_pos_weight(booster: xgb.Booster, scale_pos_weight: float) -> None:
    """Shift the model's base margin by ``−ln(scale_pos_weight)``: up-weighting positives by ``s``
    multiplies the learnt odds by ``s``; this divides them back (stored in the model itself)."""
    if scale_pos_weight == 1.0:
        return
    base = min(max(_base_score(booster), 1e-7), 1 - 1e-7)
    margin = math.log(base / (1 - base)) - math.log(scale_pos_weight)
    booster.set_param({"base_score": 1.0 / (1.0 + math.exp(-margin))})


def _dmatrix(part: pl.DataFrame, features: list[str], weight: np.ndarray, nthread: int) -> xgb.DMatrix:
    return _xgb().DMatrix(
        feature_matrix(part, features),
        label=part[LABEL].cast(pl.Float32).to_numpy(),
        weight=weight,
        feature_names=features,
        missing=np.nan,
        nthread=nthread,
    )


def _evaluate(
    booster: xgb.Booster, part: pl.DataFrame, features: list[str], params: TrainingParams
) -> dict[str, Any]:
    entity = None
    if params.entity_column and params.entity_column in part.columns:
        entity = part[params.entity_column].cast(pl.String).to_list()
    out = mx.evaluate(
        part[LABEL].to_numpy(),
        predict(booster, feature_matrix(part, features)),
        part[WEIGHT].to_numpy(),
        part[TIMESTAMP].to_numpy(),
        part[SCENARIO].to_numpy(),
        k=params.top_k,
        entity=entity,
        entity_k=params.entity_top_k,
    )
    if params.entity_column and entity is None:  # no such column: reported as not computed
        out["entity_precision_at_top_k_per_day"] = None
        out["entity_top_k"] = params.entity_top_k
    if params.entity_column:
        out["entity_column"] = params.entity_column
    return out


def train(
    frame: pl.DataFrame,
    features: Sequence[str] | None = None,
    params: TrainingParams | None = None,
    *,
    model: ModelSpec | None = None,
) -> TrainedModel:
    """Train on a training set frame (``event_ts, is_fraud, scenario, weight`` + ``features``).

    ``model`` (default: the exchange's spec) gives the default ``features`` (its model inputs) and
    the per-entity metric's entity column when ``params.entity_column`` is unset."""
    params = params or TrainingParams()
    model = model or exchange_model()
    if params.entity_column is None and model.entity_column is not None:
        params = dataclasses.replace(params, entity_column=model.entity_column)
    if params.drop_known_entities and not params.entity_column:
        raise ValueError("drop_known_entities needs an entity_column (in the params or the model spec)")
    features = list(model.feature_columns() if features is None else features)
    if len(set(features)) != len(features):
        raise ValueError("duplicate feature names")
    started = time.perf_counter()
    frame = boolean_labels(frame)
    frame = frame.sort(TIMESTAMP, "event_id") if "event_id" in frame.columns else frame.sort(TIMESTAMP)
    split, tr, va, te = time_split(frame, params)
    if params.drop_known_entities:
        assert params.entity_column is not None
        kept = drop_known_entities(tr, te, params.entity_column)
        split = dataclasses.replace(
            split,
            rows={**split.rows, "test": kept.height},
            positives={**split.positives, "test": int(kept[LABEL].sum())},
            dropped_known_entities=te.height - kept.height,
        )
        te = kept
    parts = (
        [("train", tr), ("validation", va), ("test", te)]
        if split.has_validation
        else [("train", tr), ("test", te)]
    )
    for name, part in parts:
        if split.positives[name] == 0 or split.positives[name] == part.height:
            raise ValueError(f"the {name} split needs both classes: {split.to_dict()}")

    y_tr = tr[LABEL].to_numpy()
    w_tr = tr[WEIGHT].to_numpy().astype(np.float64)
    spw = params.scale_pos_weight
    if spw is None:
        spw = float(w_tr[~y_tr].sum() / w_tr[y_tr].sum())
    dtrain = _dmatrix(tr, features, np.where(y_tr, w_tr * spw, w_tr), params.nthread)
    early_stopping = split.has_validation and params.early_stopping_rounds > 0
    evals, callbacks = [], []
    if split.has_validation:
        evals = [
            (_dmatrix(va, features, va[WEIGHT].to_numpy().astype(np.float64), params.nthread), "validation")
        ]
    if early_stopping:
        callbacks = [
            _xgb().callback.EarlyStopping(
                rounds=params.early_stopping_rounds,
                metric_name=EARLY_STOPPING_METRIC,
                data_name="validation",
                maximize=True,
                save_best=True,
            )
        ]
    booster = _xgb().train(
        _xgb_params(params),
        dtrain,
        num_boost_round=params.n_estimators,
        evals=evals,
        custom_metric=_ap_metric if evals else None,
        callbacks=callbacks,
        verbose_eval=False,
    )
    if early_stopping:
        best_iteration = int(getattr(booster, "best_iteration", booster.num_boosted_rounds() - 1))
    else:
        best_iteration = booster.num_boosted_rounds() - 1
    _undo_pos_weight(booster, spw)
    model_bytes = bytes(booster.save_raw("ubj"))
    booster = load_booster(model_bytes, nthread=params.nthread)  # score exactly what gets stored
    test = _evaluate(booster, te, features, params)
    validation = _evaluate(booster, va, features, params) if split.has_validation else {"by_scenario": {}}
    return TrainedModel(
        booster=booster,
        model_bytes=model_bytes,
        features=features,
        params=params,
        scale_pos_weight=spw,
        best_iteration=best_iteration,
        split=split,
        metrics={k: v for k, v in test.items() if k != "by_scenario"},
        metrics_by_scenario=test["by_scenario"],
        validation_metrics={k: v for k, v in validation.items() if k != "by_scenario"},
        feature_importance=feature_importance(booster, features),
        training_seconds=round(time.perf_counter() - started, 3),
    )


def feature_importance(booster: xgb.Booster, features: Sequence[str]) -> dict[str, float]:
    """Each feature's share of the model's total gain, highest first (0 for unused features)."""
    gain = booster.get_score(importance_type="total_gain")
    total = sum(gain.values()) or 1.0
    shares = {f: float(gain.get(f, 0.0)) / total for f in features}
    return dict(sorted(shares.items(), key=lambda kv: (-kv[1], kv[0])))


def groups_of(features: Sequence[str]) -> set[str]:
    """Feature-group names used by model features (``{group}__{feature}``)."""
    return {f.split("__", 1)[0] for f in features if "__" in f}


def manifest_for(
    trained: TrainedModel,
    training_manifest: Mapping[str, Any],
    feature_groups: Sequence[FeatureGroup] | ModelSpec,
) -> dict[str, Any]:
    """The registry manifest of a trained model (see ``registry.register``).

    ``feature_groups`` — the model spec (or, for the exchange's, just its groups) — records the
    version of every group the model reads; it must match the versions the training set was built
    with (else the set is stale for these definitions). A model trained on a helper feature
    (``model_input=False``) is refused. With a spec, the manifest records its name and version and
    the versions of its request features (checked by the gate and the service), and a feature the
    spec cannot serve is refused.
    """
    spec = feature_groups if isinstance(feature_groups, ModelSpec) else None
    groups = spec.groups if spec is not None else feature_groups
    by_name = {g.name: g for g in groups}
    used = groups_of(trained.features)
    unknown = sorted(used - set(by_name))
    if unknown:
        raise ValueError(f"model features use unknown feature groups: {unknown}")
    helpers = [
        f
        for f in trained.features
        if "__" in f and f.split("__", 1)[1] in by_name[f.split("__", 1)[0]].helper_feature_names
    ]
    if helpers:
        raise ValueError(f"model features include helper features (model_input=False): {helpers[:5]}")
    built = dict(training_manifest.get("feature_groups", {}))
    stale = sorted(g for g in used if g in built and built[g] != by_name[g].version)
    if stale:
        raise ValueError(f"training set was built with other versions of {stale}")
    extra: dict[str, Any] = {}
    if spec is not None:
        not_servable = [f for f in trained.features if f not in set(spec.feature_columns())]
        if not_servable:
            raise ValueError(f"model spec {spec.name} cannot serve features {not_servable[:5]}")
        built_spec = training_manifest.get("model_spec") or {}
        built_request = dict(built_spec.get("request_features", {}))
        stale_request = sorted(
            n for n, v in spec.request_versions().items() if n in built_request and built_request[n] != v
        )
        if stale_request:
            raise ValueError(
                f"training set was built with other versions of request features {stale_request}"
            )
        extra["model_spec"] = spec.identity()
    return {
        "features": list(trained.features),
        "feature_groups": {g: by_name[g].version for g in sorted(used)},
        **extra,
        "training_set": {
            k: training_manifest.get(k)
            for k in ("as_of", "data_sha256", "window_start", "window_end", "rows", "positives")
        },
        "params": asdict(trained.params),
        "scale_pos_weight": trained.scale_pos_weight,
        "best_iteration": trained.best_iteration,
        "metrics": trained.metrics,
        "metrics_by_scenario": trained.metrics_by_scenario,
        "validation_metrics": trained.validation_metrics,
        "split": trained.split.to_dict(),
        "training_seconds": trained.training_seconds,
        "feature_importance": trained.feature_importance,
        "framework": {"xgboost": _xgb().__version__, "format": "ubj", "output": "probability"},
    }


def load_booster(model_bytes: bytes, nthread: int = 1) -> xgb.Booster:
    """A booster from the registry's UBJSON bytes (``nthread=1``: the serving fast path)."""
    booster = _xgb().Booster(model_file=bytearray(model_bytes))
    booster.set_param({"nthread": nthread})
    return booster


def predict(booster: xgb.Booster, matrix: np.ndarray) -> np.ndarray:
    """Fraud probabilities for the rows of ``matrix`` (model feature order, float32, NaN missing) by
    ``inplace_predict`` (no DMatrix: ~40 % faster on one row, DESIGN §4b)."""
    if matrix.ndim == 1:
        matrix = matrix.reshape(1, -1)
    return np.asarray(booster.inplace_predict(matrix, missing=np.nan, validate_features=False))
