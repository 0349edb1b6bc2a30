"""benchmarks/device_suite.py at its tiny scale: every part runs and the table is well formed.

The full scale is meant for a GPU (< 8 min); here only the code paths are checked, not speed
(no wall-clock assertions: the numbers need only be finite).
"""

import math
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "device_suite.py"
PARTS = ("(a) simulation", "(b) population theory", "(c) DMFT")


def _rows(text: str) -> dict[str, dict[str, str]]:
    lines = [ln for ln in text.splitlines() if ln.startswith("| ")]
    cols = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for ln in lines[1:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        assert len(cells) == len(cols), f"row with {len(cells)} cells under {len(cols)} columns: {ln}"
        rows[cells[0]] = dict(zip(cols, cells))
    return rows


def test_device_suite_tiny(tmp_path):
    out = tmp_path / "suite.md"
    p = subprocess.run([sys.executable, str(SCRIPT), "--scale", "tiny", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    rows = _rows(p.stdout)
    assert _rows(out.read_text()) == rows
    for part in PARTS:
        (row,) = [r for name, r in rows.items() if name.startswith(part)]
        for col in ("wall s", "compile+first s", "rate", "warm rate", "ok"):
            assert math.isfinite(float(row[col])), (part, col, row[col])
        assert 0.0 <= float(row["ok"]) <= 1.0
        assert "skipped" not in row["note"]  # the tiny scale is far inside the default budget
        done, total = row["work done"].split()[0].split("/")
        assert int(done) == int(total) > 0
