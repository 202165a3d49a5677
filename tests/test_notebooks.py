"""The notebooks run top to bottom on the tiny model (their parameters cell set here), so they
cannot rot; committed notebooks carry no outputs."""

from __future__ import annotations

import json

import pytest

from conftest import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
TINY = '''MODEL = "tiny_llama"
STEPS = 2
OUT = {out!r}
EXTRA = ["data.max_eval_examples=8", "trainer.limit_val_batches=1", "trainer.val_check_interval=2"]
RANKS = [1, 4]
'''


def test_there_are_the_three_notebooks():
    assert [p.name for p in NOTEBOOKS] == ["01_lora.ipynb", "02_prompt_methods.ipynb", "03_sweep.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebooks_have_no_outputs_and_one_parameters_cell(path):
    cells = json.loads(path.read_text())["cells"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in cells if c["cell_type"] == "code")
    assert sum("parameters" in c["metadata"].get("tags", []) for c in cells) == 1


@pytest.mark.integration
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_the_notebook_runs_top_to_bottom(path, tmp_path, cache_dir):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    (params,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    params.source = TINY.format(out=str(tmp_path / "outputs"))
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert list((tmp_path / "outputs").rglob("metrics.json"))
