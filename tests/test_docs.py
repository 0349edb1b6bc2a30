"""The documentation site (mkdocs.yml) builds with warnings as errors.

`mkdocs build --strict` fails on a link to a missing page or file, a missing anchor, a docstring
that mkdocstrings cannot render, and a cross-reference (`[name][mtjax.X]`) with no target.
"""

import html
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocs")
pytest.importorskip("mkdocstrings_handlers.python")

ROOT = Path(__file__).resolve().parents[1]


def _text(page: Path) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", page.read_text(encoding="utf-8")))


def test_docs_build_strict(tmp_path):
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

    # The API pages hold the rendered docstrings of the public names, not just headings.
    api = site / "api"
    simulation = _text(api / "simulation" / "index.html")
    assert "mtjax.simulate" in simulation
    assert "Arguments:" in simulation
    assert "mtjax.sweep" in _text(api / "sweeps" / "index.html")
    theories = _text(api / "theories" / "index.html")
    for name in ("mtjax.population_theory", "mtjax.finite_data_theory", "mtjax.PopulationSolver"):
        assert name in theories
    assert "mtjax.fit_table" in _text(api / "fitting" / "index.html")
    assert "plot_learning_curves" in _text(api / "plots" / "index.html")
    # Every page of the nav was built.
    for page in ("theory", "dmft", "fitting", "reproduction", "scaling"):
        assert (site / page / "index.html").is_file()
