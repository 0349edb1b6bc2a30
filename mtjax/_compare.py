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

from ._model import AbstractModel, model_from_name
from ._store import save_table, write_tables
from ._spec import normalise_spec
from ._sweep import SweepResult, sweep
from ._tables import benefit_reference, multitask_benefit

MODEL_NAMES = ("simulation", "finite-data", "population")


def default_models(spec: dict[str, Any]) -> list[str]:
    """The models that apply to an experiment: the simulation; the finite-data theory when the
    networks see a finite training set (protocols "paper" and "full_batch"); the population
    theory always (the infinite-data limit; the exact theory of the "online" protocol)."""
    protocol = normalise_spec(spec)["train"].get("protocol", "paper")
    return ["simulation", "population"] if protocol == "online" else ["simulation", "finite-data", "population"]


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
    - `models`: any of "simulation", "finite-data", "population" (default `default_models`), or
      model objects (`mtjax.Simulation()`, `mtjax.FiniteDataTheory(solver)`, any `AbstractModel`).
    - `name`, `out_dir`: each model sweeps into ``<out_dir>/<name>/<model>/`` (resumable; rerun
      to finish an interrupted comparison); the joined ``curves.csv``, ``summary.csv``,
      ``benefit.csv`` go to ``<out_dir>/<name>/``. `out_dir=None`: nothing is written.
    - `solvers`: model name -> solver (`FiniteDataSolver`, `PopulationSolver`) for the models
      named by string; defaults otherwise.
    - `initial`: the theories' initial condition ("quenched" or "typical") for models named by string.
    - `sweep_kwargs`: passed to every `sweep` (memory_budget, max_chunk, devices, ...).

    **Returns:** `Comparison`. Every model's grid is validated before any model runs, so a bad
    value is refused before anything is written.
    """
    norm = normalise_spec(json.loads(json.dumps(spec, default=list)))
    grid = grid if grid is not None else norm.get("grid")
    if not grid:
        raise ValueError("compare needs a grid: pass grid= or put a [grid] table in the spec")
    models = _models(spec, models, solvers, initial)
    name = name or norm.get("name") or "compare"
    scope = norm.get("seed_scope", "all")
    spec = {k: v for k, v in spec.items() if k not in ("grid", "name")}
    # Validate every model's sweep (spec, grid, the theories' limits) before the first one
    # writes: a dry run of each that stops after its checks.
    for m in models.values():
        sweep(spec, m.run_grid(grid, scope), model=m, out_dir=None, progress=False, dry_run=True)
    base = None if out_dir is None else Path(out_dir) / name
    results: dict[str, SweepResult] = {}
    for label, m in models.items():
        results[label] = sweep(spec, m.run_grid(grid, scope), model=m, name=label, out_dir=base, progress=progress,
                               **sweep_kwargs)
    return _join(results, base)


def _models(spec, models, solvers, initial) -> dict[str, AbstractModel]:
    """label -> model, from names ("simulation", "finite-data", "population", with `solvers`
    and `initial`) or model objects (labelled by their `name`)."""
    models = default_models(spec) if models is None else list(models)
    solvers = dict(solvers or {})
    names = [m if isinstance(m, str) else getattr(m, "name", None) for m in models]
    for m, n in zip(models, names):
        if isinstance(m, str) and m not in MODEL_NAMES:
            raise ValueError(f"model {m!r} is not one of {list(MODEL_NAMES)} (or pass a model object)")
        if not isinstance(m, (str, AbstractModel)):
            raise ValueError(f"models holds {type(m).__name__}: give names {list(MODEL_NAMES)} or mtjax models")
    if not models or len(set(names)) != len(names):
        raise ValueError(f"models={names!r}: give each model at most once, at least one")
    unknown = set(solvers) - {n for m, n in zip(models, names) if isinstance(m, str)}
    if unknown:
        raise ValueError(f"solvers for {sorted(unknown)} but models={names}: give solvers only for compared models named by string")
    out = {}
    for m, n in zip(models, names):
        out[n] = model_from_name(m, solvers.get(m), initial) if isinstance(m, str) else m
    return out


def _join(results: dict[str, SweepResult], base: Path | None) -> Comparison:
    summaries, curves, benefits = [], [], []
    for m, res in results.items():
        summaries.append(res.summary.assign(model=m))  # the label (a model's name, unless renamed)
        if res.curves is not None:
            curves.append(res.curves.assign(model=m))
        how = benefit_reference(res.summary)
        if how is not None:
            benefits.append(multitask_benefit(res.summary, alone=how).assign(model=m))
    summary = pd.concat(summaries, ignore_index=True)
    curve = pd.concat(curves, ignore_index=True) if curves else None
    benefit = pd.concat(benefits, ignore_index=True) if benefits else None
    if base is not None:
        if benefit is not None:
            save_table(base / "benefit.csv", benefit)
        write_tables(base, summary, curve)
    return Comparison(curve, summary, benefit, results, base)
