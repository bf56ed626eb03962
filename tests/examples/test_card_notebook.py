"""The example's notebook (``examples/card_payments/new_feature.ipynb``) is executed, small, on a
real Jupyter kernel (nbclient + ipykernel): declare a feature, backfill it from the archive, build
both training sets and compare the models. A notebook that no longer runs fails here."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "examples" / "card_payments" / "new_feature.ipynb"


def test_the_notebook_runs_and_compares_the_models(tmp_path, monkeypatch) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = next(c for c in nb.cells if c.cell_type == "code")
    assert "SMALL = True" in params.source  # the parameters cell the test overrides
    params.source = f"SMALL = True\nSTATE_DIR = {str(tmp_path)!r}"
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the kernel imports examples.* from the repository
    NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    printed = "".join(
        o.get("text", "")
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type == "stream"
    )
    result = json.loads(printed[printed.index('{\n "comparison"') :])
    models = {row["model"]: row for row in result["comparison"]}
    assert set(models) == {"current", "with burst"}
    for row in models.values():
        assert 0 < row["average_precision"] <= 1 and row["ap_stolen_card"] is not None
    assert set(result["burst_importance"]) == {
        "card_customer_burst__n_tx_3h",
        "card_customer_burst__amount_1d",
        "card_customer_burst__max_amount_1d",
        "card_customer_burst__n_online_7d",
    }
    # The one-off backfill landed in the offline store beside the current groups.
    assert list((tmp_path / "lake" / "features").glob("card_customer_burst*/**/*.parquet"))
