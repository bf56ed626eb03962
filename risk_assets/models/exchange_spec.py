"""The exchange's model specification: one instance of :class:`~risk_assets.models.model_spec.ModelSpec`.

Spine: withdrawals, card payments and P2P trades of the exchange events; label: any exchange label
(chargeback or confirmed report), its ``scenario`` naming the fraud scenario; groups: the starter set
(``FEATURE_GROUPS``); request features: ``EXCHANGE_REQUEST``; features as of ``event_ts − 1 ms``;
per-entity metrics per ``user_id``. The training sets and models this spec produces are the ones the
project produced before model specifications existed (same rows, same values).
"""

from __future__ import annotations

from collections.abc import Sequence

from risk_assets.features.groups import FEATURE_GROUPS
from risk_assets.features.spec import FeatureGroup, Where
from risk_assets.models.model_spec import LabelRule, ModelSpec, Spine
from risk_assets.models.request_features import EXCHANGE_REQUEST
from risk_assets.sources import EXCHANGE_EVENTS, EXCHANGE_LABELS

SPINE_EVENT_TYPES = ("withdrawal", "card_payment", "p2p_trade")

EXCHANGE_MODEL = ModelSpec(
    name="exchange",
    spine=Spine(
        EXCHANGE_EVENTS,
        filters=(Where("event_type", "in", SPINE_EVENT_TYPES),),
        carry=("event_type", "user_id"),
    ),
    label=LabelRule(EXCHANGE_LABELS, scenario_column="scenario"),
    groups=FEATURE_GROUPS,
    request=(EXCHANGE_REQUEST,),
    entity_column="user_id",
    description="The exchange's fraud model: money-moving events, the starter feature groups.",
)


def exchange_model(groups: Sequence[FeatureGroup] | None = None) -> ModelSpec:
    """The exchange spec, over ``groups`` instead of the whole starter set when given."""
    return EXCHANGE_MODEL if groups is None else EXCHANGE_MODEL.with_groups(groups)
