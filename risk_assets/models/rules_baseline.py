"""A hand-written rules baseline: what a fraud analyst would deploy before any model.

A few thresholds per scenario on the same point-in-time features the model reads (so the comparison
is about the learner, not the data). Each scenario's score is the share of its rule points that fire
on an event of its type; the baseline's score is the highest scenario score, in [0, 1]. Scored and
measured with the same ``metrics.evaluate`` as the model (``evaluate_rules``).

* **Account takeover** (withdrawals): first withdrawal to this address, several devices in 24 h, a
  security change in 24 h, failed logins in the last hour, a device shared by several users, a
  large amount.
* **Card testing** (card payments): declines on the device in 10 minutes, many cards on the device in
  an hour, many small payments, a tiny amount.
* **P2P scam** (trades): a counterparty paid mostly by gift card / mobile money, with disputes, many
  distinct users in 7 days (victims), earlier confirmed scams, a large trade.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import polars as pl

from risk_assets.models import metrics as mx

Op = Literal[">=", "<=", "missing_or_le"]


@dataclass(frozen=True)
class Rule:
    """``points`` when ``feature op threshold`` holds on an event of the scenario's type (a null
    feature never fires, except for ``missing_or_le``: "no history, or at most ``threshold``")."""

    scenario: str
    feature: str
    op: Op
    threshold: float
    points: float = 1.0

    def fires(self) -> pl.Expr:
        col = pl.col(self.feature)
        if self.op == ">=":
            cond = col >= self.threshold
        elif self.op == "<=":
            cond = col <= self.threshold
        else:
            cond = col.is_null() | (col <= self.threshold)
        return cond.fill_null(False)


SCENARIO_EVENT_FLAG: dict[str, str] = {
    "ato": "req_is_withdrawal",
    "card_testing": "req_is_card_payment",
    "p2p_scam": "req_is_p2p_trade",
}

RULES: tuple[Rule, ...] = (
    Rule("ato", "user_wallet__withdrawal_count_30d", "missing_or_le", 0.0, 2.0),
    Rule("ato", "ato_user__distinct_devices_24h", ">=", 2.0),
    Rule("ato", "ato_user__security_change_count_24h", ">=", 1.0),
    Rule("ato", "ato_user__failed_login_count_1h", ">=", 2.0),
    Rule("ato", "ato_device__distinct_users_7d", ">=", 2.0),
    Rule("ato", "req_amount_usd", ">=", 1_000.0),
    Rule("card_testing", "card_testing_device__decline_count_10m", ">=", 3.0, 2.0),
    Rule("card_testing", "card_testing_device__distinct_cards_1h", ">=", 3.0),
    Rule("card_testing", "card_testing_device__small_payment_count_1h", ">=", 5.0),
    Rule("card_testing", "req_amount_usd", "<=", 5.0),
    Rule("p2p_scam", "p2p_counterparty__risky_payment_share_7d", ">=", 0.6, 2.0),
    Rule("p2p_scam", "p2p_counterparty__disputed_share_7d", ">=", 0.1),
    Rule("p2p_scam", "p2p_counterparty__distinct_users_7d", ">=", 5.0),
    Rule("p2p_scam", "p2p_counterparty__scam_label_count_30d", ">=", 1.0),
    Rule("p2p_scam", "req_amount_usd", ">=", 300.0),
)


def rule_features(rules: tuple[Rule, ...] = RULES) -> list[str]:
    """Every column the rules read."""
    return sorted({r.feature for r in rules} | {SCENARIO_EVENT_FLAG[r.scenario] for r in rules})


def score_rules(frame: pl.DataFrame, rules: tuple[Rule, ...] = RULES) -> np.ndarray:
    """The baseline's score of every row of a training-set-shaped frame, in [0, 1]."""
    scores = []
    for scenario in sorted({r.scenario for r in rules}):
        mine = [r for r in rules if r.scenario == scenario]
        total = sum(r.points for r in mine)
        points = pl.sum_horizontal([r.fires().cast(pl.Float64) * r.points for r in mine]) / total
        on_type = pl.col(SCENARIO_EVENT_FLAG[scenario]).fill_null(0.0) > 0.5
        scores.append(pl.when(on_type).then(points).otherwise(0.0))
    return frame.select(pl.max_horizontal(scores).alias("score"))["score"].to_numpy().astype(np.float64)


def evaluate_rules(frame: pl.DataFrame, *, k: int = mx.DEFAULT_TOP_K) -> dict[str, Any]:
    """``metrics.evaluate`` of the rules baseline on a training-set-shaped frame."""
    return mx.evaluate(
        frame["is_fraud"].to_numpy(),
        score_rules(frame),
        frame["weight"].to_numpy(),
        frame["event_ts"].to_numpy(),
        frame["scenario"].to_numpy(),
        k=k,
    )
