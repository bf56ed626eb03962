"""The starter set of feature groups, one module per fraud scenario.

``FEATURE_GROUPS`` is the tuple every consumer (batch assets, stream engine, online store, training)
iterates over; group names are unique across modules.
"""

from __future__ import annotations

from risk_assets.features.groups.account_takeover import ATO_GROUPS
from risk_assets.features.groups.card_testing import CARD_TESTING_GROUPS
from risk_assets.features.groups.p2p_scam import P2P_SCAM_GROUPS
from risk_assets.features.spec import FeatureGroup

FEATURE_GROUPS: tuple[FeatureGroup, ...] = (*ATO_GROUPS, *CARD_TESTING_GROUPS, *P2P_SCAM_GROUPS)

_names = [g.name for g in FEATURE_GROUPS]
if len(set(_names)) != len(_names):  # pragma: no cover - a definition bug, caught at import
    raise ValueError(f"duplicate feature group names: {_names}")

GROUPS_BY_NAME: dict[str, FeatureGroup] = {g.name: g for g in FEATURE_GROUPS}

__all__ = ["FEATURE_GROUPS", "GROUPS_BY_NAME"]
