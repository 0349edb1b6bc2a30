"""Notebook 05 (fitting, both theories) runs at its quick size: its own file, so that
`--dist loadfile` runs it on a different worker from the other notebooks (tests/test_notebooks.py)."""

from helpers import ROOT, run_notebook


def test_fitting_notebook_runs(monkeypatch):
    run_notebook(ROOT / "notebooks" / "05_fitting.ipynb", monkeypatch)
