"""Vmapped, chunked, resumable parameter sweeps of any model (simulation or theory).

A sweep is a spec (see `_spec.py`), a grid of axes (`_axes.py`) and a model (`_model/`). The
plan (`_plan.py`) cuts the grid into compile groups (one value of every static axis) and chunks;
each chunk is **one** jit-compiled `jax.vmap` of the model's `history`; its tables
(`_tables.py`) are written as part files of the sweep folder (`_store.py`), so a rerun skips
finished chunks and an interrupted sweep resumes without duplicating rows.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import pandas as pd

from . import _distributed
from ._axes import (  # noqa: F401  (re-exported: the axis names are part of this module's API)
    AXES, DYNAMIC_AXES, PARAM_COLUMNS, SEED_AXES, STATIC_AXES, TASK2_AXES,
    apply_axes, apply_static, check_grid, expand_grid, param_values,
)
from ._dmft import release_compiled
from ._experiment import Experiment, Seeds
from ._model import AbstractModel, Simulation, model_from_name
from ._plan import chunk_arrays, chunks, iter_groups, plan_groups
from ._spec import check_spec_keys, normalise_spec
from ._store import (  # noqa: F401  (merge_parts and the writers stay importable from here)
    SweepResult, _atomic_write_csv, _atomic_write_text, _done_runs, _summary_parts, load_sweep, merge_parts,
    open_folder, write_part,
)
from ._tables import benefit_reference, history_tables, multitask_benefit  # noqa: F401
from ._train import History
from ._version import __version__

# Smallest per-(realisation, seed) block of simulation runs chunked on its own (`_plan.chunks`).
SEED_BLOCK_MIN_RUNS = 32
# The `source=` strings of earlier releases and the models they name.
SOURCES = {"simulation": "simulation", "theory": "population", "theory-finite": "finite-data"}


@eqx.filter_jit
def _run_chunk(model: AbstractModel, exp: Experiment, axes: dict, seeds: Seeds, index, context, mesh=None) -> History:
    """One compiled program: the model's `history` vmapped over the runs of a chunk.

    `axes`: name -> (n,) values of the dynamic axes; `index`: (n,) run index (the vmapped axis
    when nothing else varies); `context`: the model's `prepare` (shared by the chunk); `mesh`:
    a `"runs"` mesh to split the chunk over (n divisible by its size), or None."""

    # Seeds shared by the whole chunk arrive as scalars and stay unbatched (closed over, so
    # replicated on a mesh): then everything derived from them (training subset, minibatch
    # order, and so the minibatch inputs when the inputs are shared too) is one array for all
    # runs, and each layer's product with it is one large matrix product over the runs.
    run_seeds, shared_seeds = eqx.partition(seeds, lambda a: a.ndim > 0)

    def one(ax, sd, _):
        return model.history(apply_axes(exp, ax), eqx.combine(sd, shared_seeds), context)

    return _distributed.map_runs(one, (axes, run_seeds, index), mesh)


def resolve_model(model: AbstractModel | None, source: str | None, solver, initial: str | None) -> AbstractModel:
    """The model a sweep runs: `model`, or the one the deprecated `source=` string names."""
    if source is not None:
        if model is not None:
            raise ValueError("pass model= or the deprecated source=, not both")
        if source not in SOURCES:
            raise ValueError(f"source={source!r} is not one of {list(SOURCES)}; pass model=mtjax.Simulation(), "
                             "mtjax.PopulationTheory(solver) or mtjax.FiniteDataTheory(solver) instead")
        model = model_from_name(SOURCES[source], solver, initial or "quenched")
        warnings.warn(f"sweep(source={source!r}) is deprecated: pass model=mtjax.{type(model).__name__}(...)",
                      DeprecationWarning, stacklevel=3)
        return model
    if solver is not None or initial is not None:
        raise ValueError("solver= and initial= belong to the model: pass model=mtjax.PopulationTheory(solver, initial) "
                         "or mtjax.FiniteDataTheory(solver, initial)")
    if model is None:
        return Simulation()
    if not isinstance(model, AbstractModel):
        raise ValueError(f"model must be an mtjax model (Simulation, PopulationTheory, FiniteDataTheory, or a subclass "
                         f"of mtjax.AbstractModel), got {type(model).__name__}")
    return model


def sweep(
    spec: dict[str, Any],
    grid: dict[str, list] | None = None,
    *,
    model: AbstractModel | None = None,
    name: str | None = None,
    out_dir: str | os.PathLike | None = "results",
    memory_budget: float = 2 * 2**30,
    max_chunk: int | None = None,
    resume: bool = True,
    save_curves: bool = True,
    progress: bool = True,
    devices: int | list | None = None,
    distributed: bool = False,
    process_index: int | None = None,
    process_count: int | None = None,
    dry_run: bool = False,
    source: str | None = None,
    solver=None,
    initial: str | None = None,
) -> SweepResult | None:
    """Run every point of `grid` on the experiment of `spec`, vmapped and chunked.

    **Arguments:**

    - `spec`: experiment spec (see `mtjax.paper_spec`; sections teacher/student/train).
    - `grid`: axis name -> list of values (defaults to `spec["grid"]`). Axes:
      dynamic (vmapped): relatedness, s_a, s_b, sigma_a, sigma_b, eps_a, eps_b, q,
      readout_alignment, lr, w_b, init_scale; seeds: seed, realisation; static (one compile
      each): ntrain, ntrain_b, depth, width, single_task. `*_b` axes apply to tasks 2..K.
    - `name`, `out_dir`: results go to `<out_dir>/<name>/` (`out_dir=None`: nothing written).
    - `memory_budget`: bytes per device; chunk size = devices x budget / estimated bytes
      per run.
    - `max_chunk`: optional cap on runs per chunk (but at least one run per device).
    - `resume`: skip runs whose results are already on disk (same spec and grid required).
    - `save_curves`: also keep the per-evaluation table.
    - `model`: what produces the curves (default `mtjax.Simulation()`): any `mtjax.AbstractModel`,
      e.g. `mtjax.PopulationTheory(solver, initial)` or `mtjax.FiniteDataTheory(solver, initial)`;
      the tables have the same columns for every model, and `model`/`source` columns name it.
    - `devices`: the local devices each chunk is split over (its run axis on a
      `jax.sharding.Mesh`, see `mtjax._distributed`): None = all of `jax.local_devices()`,
      an int n = the first n, or a list of devices. The table does not depend on it.
    - `distributed`: start JAX's distributed runtime if needed (`jax.distributed.initialize`
      from the environment: `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`,
      or SLURM/MPI auto-detection; call `mtjax.distributed_initialize` first to pass them
      explicitly) and sweep this process's share of the runs not yet done (process 0's list,
      broadcast, dealt round-robin). Implied when `jax.distributed` is already running.
    - `process_index`, `process_count`: a static slice without `jax.distributed` (runs with
      `run % process_count == process_index`), e.g. the tasks of an array job writing to one
      shared folder.
    - `dry_run`: only validate the spec, the grid and every compile group's configuration,
      write nothing and return None.
    - `source`, `solver`, `initial`: deprecated (one release): `source="theory"` is
      `model=PopulationTheory(solver, initial)`, `"theory-finite"` is `FiniteDataTheory(...)`.

    **Returns:** `SweepResult` with `summary` (run x task: early-stopped loss and step, final
    loss and accuracy, `diverged`) and `curves` (run x evaluation x task). In a multi-process
    sweep every process writes its own part files; whichever process finds every run done
    writes the merged tables, and the others return `complete=False` with the runs on disk
    so far. Rerunning (any number of processes) re-runs what a dead process left undone.

    Seeds: with `seed_scope="train"` (the paper preset) teacher, data and student init come
    from `realisation` and only the training subset and order from `seed`; with `"all"`
    everything is drawn from (seed, realisation).
    """
    model = resolve_model(model, source, solver, initial)
    mesh, process_index, process_count, distributed = _processes(devices, distributed, process_index, process_count, resume)
    multi = process_count > 1
    raw = json.loads(json.dumps(spec, default=list))
    norm = normalise_spec(raw)
    check_spec_keys(norm)
    grid = grid if grid is not None else norm.get("grid")
    if not grid:
        raise ValueError("sweep needs a grid: pass grid= or put a [grid] table in the spec")
    name = name or norm.get("name") or "sweep"
    scope = norm.get("seed_scope", "all")
    runs = expand_grid(grid)
    # Every compile group is built and checked now: nothing is written for a bad grid.
    groups = plan_groups(raw, runs)
    for g in groups.values():
        model.check(g.experiment)
    if dry_run:
        return None

    out = None if out_dir is None else Path(out_dir) / name
    done = set() if out is None else open_folder(out, _manifest(name, raw, grid, len(runs), model), resume)
    todo, n_before = _todo(runs, done, distributed, process_index, process_count)
    from tqdm.auto import tqdm

    desc = f"sweep {name}" + (f" [process {process_index}/{process_count}]" if multi else "")
    bar = tqdm(total=n_before + len(todo), initial=n_before, disable=not progress, desc=desc, unit="run")
    new = []
    for i_group, (key, rows) in enumerate(iter_groups(todo)):
        if i_group:
            # The previous group's programs have other shapes and are never called again; XLA
            # keeps each compiled program's memory mappings until its cache is cleared, and a
            # process has ~65k of them (a sweep over many static values would otherwise die).
            release_compiled()
        group = groups[key]
        parts, size = chunks(rows, group, model, scope, memory_budget, max_chunk, _distributed.mesh_size(mesh),
                             SEED_BLOCK_MIN_RUNS)
        for chunk in parts:
            tables = _run_and_tabulate(model, group, chunk, size, scope, mesh, save_curves)
            if out is not None:
                tag = f"part-{int(chunk['run'].iloc[0]):07d}-{len(chunk)}" + (f"-p{process_index}" if multi else "")
                write_part(out, tag, *tables)
            new.append(tables)
            bar.update(len(chunk))
    bar.close()

    if out is None:
        summary = pd.concat([s for s, _ in new], ignore_index=True) if new else pd.DataFrame(columns=["run", "task"])
        curves = pd.concat([c for _, c in new], ignore_index=True) if new and save_curves else None
        return SweepResult(curves, summary, None, complete=not multi, grid=grid)
    # Another process may still be sweeping its slice: only a complete set of runs is merged
    # into the folder's tables (the last process to finish sees it complete).
    complete = _done_runs(out) >= set(runs["run"])
    summary, curves = merge_parts(out, write=complete)
    return SweepResult(curves, summary, out, complete=complete, grid=grid)


def _todo(runs: pd.DataFrame, done: set[int], distributed: bool, process_index: int, process_count: int):
    """This process's runs still to do, and how many runs were done before (for the progress
    bar; 0 in a multi-process sweep, whose other processes' shares are not counted)."""
    not_done = ~runs["run"].isin(done).to_numpy()
    if distributed and process_count > 1:
        # One list for all: process 0's view of what is done. No process writes a part before
        # this collective has completed on every process.
        mine = _distributed.share_todo(_distributed.agree(not_done), process_index, process_count)
    else:
        mine = _distributed.process_runs(runs["run"].to_numpy(), process_index, process_count) & not_done
    return runs[mine], (len(runs) - int(not_done.sum()) if process_count == 1 else 0)


def _run_and_tabulate(model, group, chunk, size, scope, mesh, save_curves):
    """Run one chunk (padded to `size`) and return its (summary, curves) tables."""
    axes, seeds, index = chunk_arrays(chunk, size, group, scope)
    context = model.prepare(group.experiment, seeds)
    axes, seeds, index = _distributed.shard((axes, seeds, index), mesh)
    hist = _run_chunk(model, group.experiment, axes, seeds, index, context, mesh)
    hist = jax.tree_util.tree_map(lambda a: a[: len(chunk)], hist)
    rows = chunk.copy()
    for col, v in group.base_params.items():
        if col not in rows:
            rows[col] = v
    summary, curves = history_tables(hist, rows, group.experiment, source=model.source, model=model.name,
                                     curves=save_curves)
    summary["protocol"] = group.experiment.train.protocol
    return summary, curves


def _processes(devices, distributed, process_index, process_count, resume):
    """This process's devices (a mesh or None) and its slice of the grid: (mesh, index, count,
    distributed)."""
    if (process_index is None) != (process_count is None):
        raise ValueError(f"pass both process_index and process_count or neither (got {process_index}, {process_count})")
    if distributed and process_count is not None:
        raise ValueError("pass distributed=True or an explicit process_index/process_count, not both")
    # A process of a running jax.distributed job must never sweep the whole grid by mistake.
    distributed = distributed or (process_count is None and jax.distributed.is_initialized())
    if distributed:
        process_index, process_count = _distributed.initialize()
    process_index, process_count = (0, 1) if process_count is None else (int(process_index), int(process_count))
    if process_count > 1 and not resume:
        raise ValueError("resume=False with several processes: they share one folder and always resume; delete it to start afresh")
    return _distributed.local_mesh(devices), process_index, process_count, distributed


def _manifest(name: str, spec: dict, grid: dict, n_runs: int, model: AbstractModel) -> dict:
    """What the sweep folder records: the spec as given, the grid, the model and versions."""
    manifest = {
        "name": name,
        "spec": spec,
        "grid": {k: [x.item() if hasattr(x, "item") else x for x in (v if isinstance(v, (list, tuple)) else [v])]
                 for k, v in grid.items()},
        "n_runs": n_runs,
        "mtjax_version": __version__,
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "source": model.source,
        "model": model.name,
    }
    if model.settings():
        manifest["solver"] = model.settings()
    return manifest
