"""Simulation and theories over one grid, in one call, joined into one table.

`compare` runs `sweep` once per model — the simulation, the finite-data theory (DMFT), the
population (infinite-data) theory — each into its own resumable folder ``<out>/<name>/<model>/``,
and joins their tables with a ``model`` column: ``curves`` (run x evaluation x task),
``summary`` (run x task) and ``benefit`` (the multitask benefit of each model's runs).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from ._spec import normalise_spec
from ._sweep import SweepResult, multitask_benefit, sweep

# Model name -> the sweep source that produces it.
MODELS = {"simulation": "simulation", "finite-data": "theory-finite", "population": "theory"}


def default_models(spec: dict[str, Any]) -> list[str]:
    """The models that apply to an experiment: the simulation; the finite-data theory when the
    networks see a finite training set (protocols "paper" and "full_batch"); the population
    theory always (the infinite-data limit; the exact theory of the "online" protocol)."""
    protocol = normalise_spec(spec)["train"].get("protocol", "paper")
    return ["simulation", "population"] if protocol == "online" else ["simulation", "finite-data", "population"]


def benefit_reference(summary: pd.DataFrame) -> str | None:
    """How a table pairs multitask runs with task 1 alone: "single_task" (a single_task axis with
    both values), "w_b" (a w_b axis containing 0), or None (no benefit can be formed)."""
    if "single_task" in summary and summary["single_task"].astype(bool).nunique() == 2:
        return "single_task"
    if "w_b" in summary and (summary["w_b"] == 0).any() and (summary["w_b"] > 0).any():
        return "w_b"
    return None


@dataclasses.dataclass
class Comparison:
    """Joined tables of `compare`: every row carries a `model` column.

    - `curves`: run x evaluation x task (None when curves were not kept);
    - `summary`: run x task (early-stopped loss and step, final loss and accuracy, `diverged`);
    - `benefit`: multitask rows of task 1 with `single_loss`, `multi_loss`, `benefit` (nats),
      or None when the grid pairs no run with task 1 alone;
    - `results`: model -> its `SweepResult`; `out_dir`: the folder (None if nothing written).
    """

    curves: pd.DataFrame | None
    summary: pd.DataFrame
    benefit: pd.DataFrame | None
    results: dict[str, SweepResult]
    out_dir: Path | None


def _theory_grid(grid: dict[str, list], seed_scope: str) -> dict[str, list]:
    """A theory averages over training sets: where the seed only draws the training subset
    (seed_scope "train") it plays no role, and the theory is solved once per realisation."""
    if seed_scope == "train":
        return {k: v for k, v in grid.items() if k != "seed"}
    return dict(grid)


def compare(
    spec: dict[str, Any],
    grid: dict[str, list] | None = None,
    *,
    models: list[str] | None = None,
    name: str | None = None,
    out_dir: str | os.PathLike | None = "results",
    solvers: dict[str, Any] | None = None,
    initial: str = "quenched",
    progress: bool = True,
    **sweep_kwargs,
) -> Comparison:
    """The same grid through the simulation and the theories, joined in one table.

    **Arguments:**

    - `spec`, `grid`: as for `mtjax.sweep` (the grid may come from `spec["grid"]`).
    - `models`: any of "simulation", "finite-data", "population" (default `default_models`).
    - `name`, `out_dir`: each model sweeps into ``<out_dir>/<name>/<model>/`` (resumable; rerun
      to finish an interrupted comparison); the joined ``curves.csv``, ``summary.csv``,
      ``benefit.csv`` go to ``<out_dir>/<name>/``. `out_dir=None`: nothing is written.
    - `solvers`: model -> solver (`FiniteDataSolver`, `PopulationSolver`); defaults otherwise.
    - `initial`: the theories' initial condition ("quenched" or "typical").
    - `sweep_kwargs`: passed to every `sweep` (memory_budget, max_chunk, devices, ...).

    **Returns:** `Comparison`. Every model's grid is validated before any model runs, so a bad
    value is refused before anything is written.
    """
    norm = normalise_spec(json.loads(json.dumps(spec, default=list)))
    grid = grid if grid is not None else norm.get("grid")
    if not grid:
        raise ValueError("compare needs a grid: pass grid= or put a [grid] table in the spec")
    models = default_models(spec) if models is None else list(models)
    for m in models:
        if m not in MODELS:
            raise ValueError(f"model {m!r} is not one of {list(MODELS)}")
    if not models or len(set(models)) != len(models):
        raise ValueError(f"models={models!r}: give each of {list(MODELS)} at most once, at least one")
    solvers = dict(solvers or {})
    unknown = set(solvers) - set(models)
    if unknown:
        raise ValueError(f"solvers for {sorted(unknown)} but models={models}: give solvers only for compared models")
    if initial not in ("quenched", "typical"):
        raise ValueError(f"initial={initial!r} is not one of ['quenched', 'typical']")
    name = name or norm.get("name") or "compare"
    scope = norm.get("seed_scope", "all")
    spec = {k: v for k, v in spec.items() if k not in ("grid", "name")}
    grids = {m: grid if m == "simulation" else _theory_grid(grid, scope) for m in models}
    # Validate every model's sweep (spec, grid, the theories' limits) before the first one
    # writes: a dry run of each that stops after its checks.
    for m in models:
        sweep(spec, grids[m], out_dir=None, source=MODELS[m], solver=solvers.get(m), initial=initial,
              progress=False, dry_run=True)
    base = None if out_dir is None else Path(out_dir) / name
    results: dict[str, SweepResult] = {}
    for m in models:
        results[m] = sweep(
            spec, grids[m], name=m, out_dir=base, source=MODELS[m], solver=solvers.get(m), initial=initial,
            progress=progress, **sweep_kwargs,
        )  # fmt: skip
    return _join(results, base)


def _join(results: dict[str, SweepResult], base: Path | None) -> Comparison:
    summaries, curves, benefits = [], [], []
    for m, res in results.items():
        summaries.append(res.summary.assign(model=m))
        if res.curves is not None:
            curves.append(res.curves.assign(model=m))
        how = benefit_reference(res.summary)
        if how is not None:
            benefits.append(multitask_benefit(res.summary, alone=how).assign(model=m))
    summary = pd.concat(summaries, ignore_index=True)
    curve = pd.concat(curves, ignore_index=True) if curves else None
    benefit = pd.concat(benefits, ignore_index=True) if benefits else None
    if base is not None:
        from ._sweep import _atomic_write_csv as atomic_write_csv

        atomic_write_csv(base / "summary.csv", summary)
        if curve is not None:
            atomic_write_csv(base / "curves.csv", curve)
        if benefit is not None:
            atomic_write_csv(base / "benefit.csv", benefit)
    return Comparison(curve, summary, benefit, results, base)
