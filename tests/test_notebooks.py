"""Every notebook in notebooks/ runs top to bottom at its quick size, and is stored without outputs.

Notebook 05 (the slowest, ~1 min) runs from tests/test_notebook_fitting.py: `--dist loadfile`
sends each file to one worker, so a separate file lets it run beside the others."""

import nbformat
import pytest
from helpers import NOTEBOOKS, run_notebook

SEPARATE = {"05_fitting"}  # tests/test_notebook_fitting.py
HERE = [p for p in NOTEBOOKS if p.stem not in SEPARATE]


@pytest.mark.parametrize("path", HERE, ids=[p.stem for p in HERE])
def test_notebook_runs(path, monkeypatch):
    run_notebook(path, monkeypatch)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.get("outputs", []) == [] and cell.get("execution_count") is None, f"{path.name}: strip outputs"
