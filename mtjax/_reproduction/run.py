"""`reproduce`: rerun one of the authors' experiments and compare with their table."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._sweep import sweep
from .cells import _distinct_runs, reproduction_grid, reproduction_spec, run_cost, select_cells
from .data import EXPERIMENTS, _normalise, authors_table
from .report import report_markdown
from .statistics import _ours_in_authors_format, compare, headline


@dataclasses.dataclass
class ReproductionResult:
    """`ours`: our runs in the authors' format (realisation 0); `comparison`: `compare` table;
    `headline`: `headline` numbers; `report`: markdown text; `out_dir`: where files went (or None)."""

    ours: pd.DataFrame
    comparison: pd.DataFrame
    headline: dict[str, Any]
    report: str
    out_dir: Path | None


def reproduce(
    experiment: str,
    scale: str = "quick",
    *,
    data_dir: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = "results/reproduce",
    realisations: int = 1,
    eval_every: int = 10,
    overrides: dict | None = None,
    subset: dict[str, list] | None = None,
    max_chunk: int | None = 180,
    memory_budget: float = 2 * 2**30,
    progress: bool = True,
) -> ReproductionResult:
    """Rerun one of the authors' experiments with the paper preset and compare cell by cell.

    **Arguments:**

    - `experiment`: `"rank-10"`, `"rank-3"`, `"aux-train-pts"` or `"deep-nonlinear"`.
    - `scale`: `"quick"` (the documented subset, see the module docstring) or `"full"`.
    - `data_dir`: folder of the authors' CSVs (default `default_data_dir()`).
    - `out_dir`: results go to `<out_dir>/<experiment>-<scale>/` (with a hash suffix when
      `subset`, `overrides` or `eval_every` differ from the standard; None: nothing written). Each
      realisation is a resumable sweep in `realisation-<k>/`; an interrupted run resumes.
    - `realisations`: how many realisations (teacher, data pool, init) to run; realisation 0
      is the one compared, the others measure the realisation spread.
    - `eval_every`: epochs between validation evaluations (the authors: 1).
    - `overrides`: {section: {key: value}} on top of the paper preset (tests: fewer epochs).
    - `subset`: {authors' column: values} restricting the cells further (e.g. one data size).
    - `max_chunk`: runs per vmapped chunk (180 = one quick group, a fifth of a full one).

    **Returns:** a `ReproductionResult`. Files: `<experiment>.csv` (ours, the authors' columns),
    `<experiment>-realisation-<k>.csv` for k >= 1, `comparison.csv`, `report.md`, `report.json`.

    **Raises:** `ValueError` for an unknown experiment or scale, or missing data.
    """
    if realisations < 1:
        raise ValueError(f"realisations={realisations} must be in [1, inf)")
    authors = authors_table(experiment, data_dir)
    cells = select_cells(authors, experiment, scale, subset)
    spec = reproduction_spec(experiment, eval_every=eval_every, overrides=overrides)
    grid = reproduction_grid(cells)
    n_epochs = spec["train"]["n_epochs"]
    name = f"{experiment}-{scale}"
    if subset or overrides or eval_every != 10:
        # A variant gets its own folder instead of clashing with the standard run's manifest.
        tag = json.dumps([subset, overrides, eval_every], sort_keys=True, default=str)
        name += "-" + hashlib.sha1(tag.encode()).hexdigest()[:8]
    out = None if out_dir is None else Path(out_dir) / name
    tables, timings = [], []
    for k in range(realisations):
        sweep_dir = None if out is None else out / f"realisation-{k}"
        fresh = sweep_dir is None or not (sweep_dir / "parts").exists()
        t0, c0 = time.time(), time.process_time()
        res = sweep(spec, {**grid, "realisation": [k]}, name=f"realisation-{k}", out_dir=out, max_chunk=max_chunk,
                    memory_budget=memory_budget, save_curves=False, progress=progress)
        # CPU seconds of this process (all threads): on a shared machine the wall time says
        # little; the CPU time bounds the uncontended wall time from above (serial) and, halved,
        # from below on 2 cores.  Only a run trained from scratch in one call is a timing.
        t = {"wall_s": round(time.time() - t0, 1), "cpu_s": round(time.process_time() - c0, 1)}
        if sweep_dir is not None:
            tfile = sweep_dir / "timing.json"
            if fresh:
                tfile.write_text(json.dumps(t))
            t = json.loads(tfile.read_text()) if tfile.exists() else {"wall_s": math.nan, "cpu_s": math.nan}
        timings.append(t)
        tables.append(_ours_in_authors_format(res.summary, cells, list(authors.columns), experiment, k))
    comparison = compare(cells, tables if realisations > 1 else tables[0], experiment)
    head = headline(comparison)
    steps = run_cost(cells, n_epochs)
    full_steps = run_cost(_normalise(authors, EXPERIMENTS[experiment]), n_epochs)
    w0, c0 = timings[0]["wall_s"], timings[0]["cpu_s"]
    timing = {
        "wall_s_realisation_0": w0,
        "cpu_s_realisation_0": c0,
        "runs_per_realisation": int(len(_distinct_runs(cells))),
        "sgd_steps_per_realisation": steps,
        "cpu_steps_per_s": round(steps / c0, 1) if c0 else math.nan,
        # Compile time is included in the quick timing, so this overestimates slightly.
        "full_scale_cpu_h_estimate": round(full_steps / steps * c0 / 3600, 1) if c0 else math.nan,
    }
    head["timing"] = timing
    text = report_markdown(experiment, scale, comparison, head, timing)
    if out is not None:
        tables[0].to_csv(out / f"{experiment}.csv", index=False)
        for k, t in enumerate(tables[1:], start=1):
            t.to_csv(out / f"{experiment}-realisation-{k}.csv", index=False)
        comparison.to_csv(out / "comparison.csv", index=False)
        (out / "report.md").write_text(text)
        (out / "report.json").write_text(json.dumps(head, indent=2))
    return ReproductionResult(tables[0], comparison, head, text, out)
