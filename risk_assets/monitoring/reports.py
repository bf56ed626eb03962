"""Text of the monitoring reports: numbers made safe for metadata and Markdown for the UI.

Pure (no Dagster). Every monitoring asset reports numeric metadata under stable keys (NaN when a
figure is undefined, so a key never changes type and Dagster keeps plotting it) and one Markdown
report an analyst reads on the asset page.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from risk_assets.monitoring.drift import DriftReport
from risk_assets.monitoring.skew import FeatureSkew, feature_skew_table


def metadata_float(x: Any) -> float:
    """A float for metadata (NaN when undefined, so numeric keys stay numeric)."""
    try:
        f = float(x)
    except (TypeError, ValueError):
        return math.nan
    return f if math.isfinite(f) else math.nan


def fmt3(x: Any) -> str:
    """Three decimals, or an en dash when undefined."""
    f = metadata_float(x)
    return "–" if math.isnan(f) else f"{f:.3f}"


def pct(x: float | None) -> str:
    """A share as a percentage with three decimals, or an en dash when undefined."""
    return "–" if x is None or not math.isfinite(x) else f"{x:.3%}"


def drift_markdown(report: DriftReport, summary: dict[str, Any]) -> str:
    """The drift report's page: champion and reference, the headline figures, the column table."""
    warn, error = summary["thresholds"]["warn"], summary["thresholds"]["error"]
    head = [
        f"**Champion** `{summary['champion']}` vs its training set as of {summary['reference_day']} "
        f"({summary['rows_reference']:,} rows) — current {summary['rows_current']:,} decision events.",
        "",
        f"- share of features drifted: **{summary['share_drifted']:.1%}** "
        f"(warn > {warn:.0%}, error > {error:.0%})",
        f"- prediction drift: PSI {summary['prediction_psi']:.4f}, KS {summary['prediction_ks']:.4f}, "
        f"**{summary['prediction_category']}**",
        f"- label rate ({summary['label_day']}, labels known at the cutoff): "
        f"{pct(summary['label_rate'])} vs reference {pct(summary['label_rate_reference'])} "
        f"(p {summary['label_rate_pvalue']:.3g}, **{summary['label_rate_category']}**)",
    ]
    # A blank line ends the list: without it Markdown folds the table's title into the last item.
    return "\n".join(head) + "\n\n" + report.to_markdown()


def realized_table_markdown(per_day: Sequence[dict[str, Any]]) -> str:
    """One row per scored day: the model that served it and its realized metrics."""
    lines = [
        "| day | model | rows | positives | AP | recall@1%FPR | AUC |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in per_day:
        served = r.get("versions") or {}
        model = " + ".join(f"`{v[-12:]}`" for v in served) if len(served) > 1 else f"`{r['version'][-12:]}`"
        lines.append(
            f"| {r['day']} | {model} | {r.get('rows', 0)} | {r.get('positives', 0)} "
            f"| {fmt3(r.get('average_precision'))} | {fmt3(r.get('recall_at_1pct_fpr'))} "
            f"| {fmt3(r.get('auc'))} |"
        )
    return "\n".join(lines)


def skew_markdown(
    compared: int, bad: int, worst: Sequence[FeatureSkew], extra: dict[str, int], threshold: float
) -> str:
    """The serving-skew page: the headline share and the worst features."""
    share = bad / compared if compared else 0.0
    lines = [
        f"**{bad} of {compared} compared rows ({share:.2%}) have a mismatching feature** "
        f"(threshold {threshold:.0%}); {extra['rows_without_event']} logged rows without an "
        f"archived event, {extra['rows_degraded']} degraded rows excluded.",
    ]
    return "\n".join(lines + feature_skew_table(worst))
