"""Vmapped, chunked, resumable parameter sweeps of `simulate`.

A sweep is a spec (see `_spec.py`) plus a grid of axes.  Axes that change shapes or loop
structure (data sizes, depth, width, single-task mode) split the grid into *compile groups*;
within a group every other axis is an array field, so each chunk of runs is **one**
jit-compiled `jax.vmap` program.  Each finished chunk is written atomically to
``<out>/parts/``; a rerun skips finished chunks, so an interrupted sweep resumes without
duplicating rows.  The merged tables are ``curves`` (run x evaluation x task) and
``summary`` (run x task), as Parquet and CSV; the folder layout is in `_store.py`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from . import _distributed
from ._experiment import Experiment, Seeds
from ._spec import check_spec_keys, experiment_from_spec, normalise_spec
from ._axes import (  # noqa: F401  (re-exported: the axis names are part of this module's API)
    AXES, DYNAMIC_AXES, PARAM_COLUMNS, SEED_AXES, STATIC_AXES, TASK2_AXES,
    apply_axes, apply_static, check_grid, expand_grid, param_values,
)
from ._train import History, make_inputs, simulate
from ._store import (  # noqa: F401  (merge_parts and the writers stay importable from here)
    SweepResult, _atomic_write_csv, _atomic_write_text, _done_runs, _summary_parts, load_sweep, merge_parts, write_part,
)


def _seeds(rows: pd.DataFrame, scope: str) -> Seeds:
    """The runs' seeds; a seed equal for all rows is returned as a scalar, so that `_run_chunk`
    keeps it (and all it determines) unbatched."""
    seed = rows["seed"].to_numpy(np.int64)
    real = rows["realisation"].to_numpy(np.int64)
    if scope == "train":
        fields = (real, real, real, seed)
    else:
        fields = ((seed + 1_000_003 * real) % (2**31 - 1),) * 4
    return Seeds(*(f[0] if np.all(f == f[0]) else f for f in fields))


def _bytes_per_run(exp: Experiment, shared_inputs: bool) -> int:
    """Rough peak memory of one run inside a vmapped chunk (float32), for chunk sizing."""
    tr, te, st = exp.train, exp.teacher, exp.student
    N, C, H, L = te.n_features, te.n_classes, st.width, st.depth
    n_pool = tr.n_pool if tr.protocol != "online" else (0,) * tr.n_tasks
    rows = sum(n_pool) + tr.n_tasks * tr.n_test
    data = 0 if shared_inputs else rows * N
    labels_and_logits = rows * (2 + 3 * C)
    fans = [N] + [H] * L
    params = sum(a * H for a in fans[:-1]) + tr.n_tasks * fans[-1] * C
    acts = 4 * tr.batch_size * (N + L * H + C) * tr.n_tasks
    hist = 3 * tr.n_evals * tr.n_tasks
    return 4 * (data + labels_and_logits + 6 * params + acts + hist) + 4096


def _theory_bytes_per_point(exp: Experiment, solver) -> int:
    """Rough peak memory of one theory point: quadrature of one saved time, the solver's
    stages, and the saved states and overlaps."""
    t, st, tr = exp.teacher, exp.student, exp.train
    C = t.n_classes
    if hasattr(solver, "n_grid"):  # finite-data DMFT: kernels (T C)^2, response 3 n_response (T C)^2
        T = solver.n_grid + 1
        H = st.width if st.depth else C
        per_task = 3 * solver.n_response * (T * H) ** 2 + 12 * solver.n_draws * T * H + 8 * (T * H) ** 2
        return 4 * (tr.n_tasks * per_task + solver.n_quad_eval * (4 * C + t.rank)) + 4096
    Dp = t.n_tasks * t.rank + (st.width if st.depth else t.n_tasks * C)
    evals = solver.n_quad_eval * (4 * C + Dp) * tr.n_tasks  # one saved time at a time (lax.map)
    field = 8 * solver.n_quad * C * tr.n_tasks
    fans = [Dp] + [st.width] * st.depth
    params = sum(a * st.width for a in fans[:-1]) + tr.n_tasks * fans[-1] * C
    saved = tr.n_evals * (params + tr.n_tasks * (3 + C * C * tr.n_tasks + C * t.rank))
    return 4 * (evals + field + 12 * params + saved) + 4096


def _chunk_size(
    exp: Experiment, n_runs: int, memory_budget: float, shared: bool, max_chunk: int | None, solver=None, n_devices: int = 1
) -> int:
    """Runs per chunk: `memory_budget` (bytes) is per device, so the chunk grows with the devices."""
    per = _bytes_per_run(exp, shared) if solver is None else _theory_bytes_per_point(exp, solver)
    return _distributed.chunk_size(int(memory_budget // per), n_runs, n_devices, max_chunk)


@eqx.filter_jit
def _run_chunk(exp: Experiment, axes: dict, seeds: Seeds, index, inputs, mesh=None) -> History:
    """One compiled program: `simulate` vmapped over the runs of a chunk.

    `axes`: name -> (n,) values of the dynamic axes; `inputs`: shared by all runs, or None
    (then every run draws its own from its data seed); `mesh`: a `"runs"` mesh to split the
    chunk over (n divisible by its size), or None for one device."""

    shared = inputs is not None and seeds.data.ndim == 0 and seeds.train.ndim == 0

    def one(ax, sd, _):
        return simulate(apply_axes(exp, ax), eqx.combine(sd, shared_seeds), inputs, shared_subsets=shared)

    # Seeds shared by the whole chunk arrive as scalars and stay unbatched (closed over, so
    # replicated on a mesh): then everything derived from them (training subset, minibatch
    # order, and so the minibatch inputs when the inputs are shared too) is one array for all
    # runs, and each layer's product with it is one large matrix product over the runs
    # instead of a batch of small ones.
    run_seeds, shared_seeds = eqx.partition(seeds, lambda a: a.ndim > 0)
    return _distributed.map_runs(one, (axes, run_seeds, index), mesh)


@eqx.filter_jit
def _run_theory_chunk(exp: Experiment, axes: dict, seeds: Seeds, index, solver, initial: str, mesh=None,
                      source: str = "theory") -> History:
    """A theory vmapped over the points of a chunk (as `History`s): the population flow
    (`source="theory"`) or the finite-data DMFT (`"theory-finite"`)."""
    if source == "theory":
        from ._population import population_theory as solve, theory_history as history
    else:
        from ._dmft import finite_data_theory as solve, finite_theory_history as history

    def one(ax, sd):
        return history(solve(apply_axes(exp, ax), sd, solver=solver, initial=initial))

    run_seeds, shared_seeds = eqx.partition(seeds, lambda a: a.ndim > 0)
    return _distributed.map_runs(lambda ax, sd, _: one(ax, eqx.combine(sd, shared_seeds)), (axes, run_seeds, index), mesh)


_make_inputs_jit = eqx.filter_jit(make_inputs)

SOURCES = ("simulation", "theory", "theory-finite")

# Smallest per-(realisation, seed) block that the sweep chunks on its own (see `sweep`).
SEED_BLOCK_MIN_RUNS = 32

def history_tables(hist: History, rows: pd.DataFrame, exp: Experiment, *, source: str = "simulation", curves: bool = True):
    """Tidy tables of a batch of runs: (summary, curves).

    `rows` has one row per run (its parameter columns); `hist` has a leading run axis."""
    h = jax.tree_util.tree_map(np.asarray, hist)
    active = list(exp.train.active_tasks)
    n = len(rows)
    base = rows.reset_index(drop=True)
    es, ess, fl = (np.asarray(a) for a in (hist.early_stopped_loss, hist.early_stopped_step, hist.final_loss))
    summ = []
    for k in active:
        d = base.copy()
        d["task"] = k + 1
        d["early_stopped_loss"] = es[:, k]
        d["early_stopped_step"] = ess[:, k]
        d["early_stopped_time"] = np.where(ess[:, k] >= 0, ess[:, k] * d["lr"].to_numpy(float), np.nan)
        d["final_loss"] = fl[:, k]
        d["final_acc"] = h.test_acc[:, -1, k]
        d["diverged"] = h.diverged
        d["source"] = source
        summ.append(d)
    summary = pd.concat(summ, ignore_index=True)
    if not curves:
        return summary, None
    T = h.step.shape[-1]
    cur = []
    for k in active:
        d = base.loc[base.index.repeat(T)].reset_index(drop=True)
        d["task"] = k + 1
        d["step"] = np.tile(h.step[0] if h.step.ndim > 1 else h.step, n)
        d["time"] = h.time.reshape(-1)
        d["train_loss"] = h.train_loss[:, :, k].reshape(-1)
        d["test_loss"] = h.test_loss[:, :, k].reshape(-1)
        d["test_loss_se"] = h.test_loss_se[:, :, k].reshape(-1)
        d["test_acc"] = h.test_acc[:, :, k].reshape(-1)
        d["diverged"] = np.repeat(h.diverged, T)
        d["source"] = source
        cur.append(d)
    return summary, pd.concat(cur, ignore_index=True)


def _solver_fields(solver) -> dict:
    """A theory solver's settings as plain values (for the manifest and its fingerprint)."""
    out = {}
    for f in dataclasses.fields(solver):
        v = getattr(solver, f.name)
        if isinstance(v, (int, float, bool, str)):
            out[f.name] = v
        elif hasattr(v, "shape") and getattr(v, "shape", None) == ():
            out[f.name] = int(v) if np.issubdtype(np.asarray(v).dtype, np.integer) else float(v)
        else:
            out[f.name] = type(v).__name__
    return out


def _fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def sweep(
    spec: dict[str, Any],
    grid: dict[str, list] | None = None,
    *,
    name: str | None = None,
    out_dir: str | os.PathLike | None = "results",
    memory_budget: float = 2 * 2**30,
    max_chunk: int | None = None,
    resume: bool = True,
    save_curves: bool = True,
    progress: bool = True,
    source: str = "simulation",
    solver=None,
    initial: str = "quenched",
    devices: int | list | None = None,
    distributed: bool = False,
    process_index: int | None = None,
    process_count: int | None = None,
    dry_run: bool = False,
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
    - `source`: `"simulation"` (train networks), `"theory-finite"` (the finite-data DMFT,
      `mtjax.finite_data_theory`, with a `FiniteDataSolver`), or `"theory"` (integrate the population
      mean-field dynamics, `mtjax.population_theory`, with `solver` and `initial`); the tables
      have the same columns and a `source` column, so the two can be joined.
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

    **Returns:** `SweepResult` with `summary` (run x task: early-stopped loss and step, final
    loss and accuracy, `diverged`) and `curves` (run x evaluation x task). In a multi-process
    sweep every process writes its own part files; whichever process finds every run done
    writes the merged tables, and the others return `complete=False` with the runs on disk
    so far. Rerunning (any number of processes) re-runs what a dead process left undone.

    Seeds: with `seed_scope="train"` (the paper preset) teacher, data and student init come
    from `realisation` and only the training subset and order from `seed`; with `"all"`
    everything is drawn from (seed, realisation).
    """
    if source not in SOURCES:
        raise ValueError(f"source={source!r} is not one of {list(SOURCES)}")
    if source == "theory" and solver is None:
        from ._population import PopulationSolver

        solver = PopulationSolver()
    if source == "theory-finite" and solver is None:
        from ._dmft import FiniteDataSolver

        solver = FiniteDataSolver()
    theory = source != "simulation"
    # --- distribution: this process's slice of the grid and its devices --------------------
    if (process_index is None) != (process_count is None):
        raise ValueError(f"pass both process_index and process_count or neither (got {process_index}, {process_count})")
    if distributed and process_count is not None:
        raise ValueError("pass distributed=True or an explicit process_index/process_count, not both")
    # A process of a running jax.distributed job must never sweep the whole grid by mistake.
    distributed = distributed or (process_count is None and jax.distributed.is_initialized())
    if distributed:
        process_index, process_count = _distributed.initialize()
    process_index, process_count = (0, 1) if process_count is None else (int(process_index), int(process_count))
    multi = process_count > 1
    if multi and not resume:
        raise ValueError("resume=False with several processes: they share one folder and always resume; delete it to start afresh")
    mesh = _distributed.local_mesh(devices)
    n_dev = _distributed.mesh_size(mesh)
    # -----------------------------------------------------------------------------------------
    raw = json.loads(json.dumps(spec, default=list))
    norm = normalise_spec(raw)
    check_spec_keys(norm)
    grid = grid if grid is not None else norm.get("grid")
    if not grid:
        raise ValueError("sweep needs a grid: pass grid= or put a [grid] table in the spec")
    name = name or norm.get("name") or "sweep"
    scope = norm.get("seed_scope", "all")
    runs = expand_grid(grid)
    static_cols = [c for c in STATIC_AXES if c in runs]
    dyn_cols = [c for c in DYNAMIC_AXES if c in runs]
    # Build every compile group's experiment now: a bad combination (e.g. ntrain_b < ntrain in
    # the paper protocol) must fail before the manifest or any part is written.
    plans = _group_experiments(raw, runs, static_cols)
    if theory:
        _check_theory(source, initial, [exp for exp, _ in plans.values()])
    if dry_run:
        return None

    out = None if out_dir is None else Path(out_dir) / name
    done: set[int] = set()
    if out is not None:
        manifest = {
            "name": name,
            "spec": raw,
            "grid": {k: list(map(lambda x: x.item() if hasattr(x, "item") else x, v)) for k, v in grid.items()},
            "n_runs": len(runs),
            "mtjax_version": _version(),
            "jax_version": jax.__version__,
            "backend": jax.default_backend(),
        }
        manifest["source"] = source
        if theory:
            manifest["solver"] = {**_solver_fields(solver), "initial": initial}
        manifest["fingerprint"] = _fingerprint({"spec": raw, "grid": manifest["grid"], "source": source, "solver": manifest.get("solver")})
        mpath = out / "manifest.json"
        if mpath.exists():
            old = json.loads(mpath.read_text())
            if old.get("fingerprint") != manifest["fingerprint"]:
                what = [k for k in ("source", "spec", "grid", "solver") if old.get(k) != manifest.get(k)]
                raise ValueError(
                    f"{out} holds a different sweep (its {', '.join(what) or 'fingerprint'} differs"
                    + (f": source {old.get('source')!r} there, {source!r} here" if "source" in what else "")
                    + "): choose another name or out_dir, or delete it"
                )
            if not resume:
                raise ValueError(f"{out} already has results and resume=False: delete it or pass resume=True")
            done = _done_runs(out)
        else:
            # Every process of a multi-process sweep may get here at once: they write the same
            # bytes, atomically, so whichever replace lands last changes nothing.
            _atomic_write_text(mpath, json.dumps(manifest, indent=2, default=str))

    not_done = ~runs["run"].isin(done).to_numpy()
    if distributed and multi:
        # One list for all: process 0's view of what is done. No process writes a part before
        # this collective has completed on every process.
        mine = _distributed.share_todo(_distributed.agree(not_done), process_index, process_count)
    else:
        mine = _distributed.process_runs(runs["run"].to_numpy(), process_index, process_count) & not_done
    todo = runs[mine]
    from tqdm.auto import tqdm

    desc = f"sweep {name}" + (f" [process {process_index}/{process_count}]" if multi else "")
    n_before = len(runs) - int(not_done.sum()) if not multi else 0
    bar = tqdm(total=n_before + len(todo), initial=n_before, disable=not progress, desc=desc, unit="run")
    new_summaries, new_curves = [], []
    groups = list(todo.groupby(static_cols, sort=False, dropna=False)) if static_cols else [((), todo)]
    for i_group, (key, rows) in enumerate(groups):
        if i_group:
            # The previous group's programs have other shapes and are never called again; XLA
            # keeps each compiled program's memory mappings until its cache is cleared, and a
            # process has ~65k of them (a sweep over many static values would otherwise die).
            jax.clear_caches()
        exp, group_spec = plans[_group_key(key, static_cols)]
        base_params = param_values(exp, group_spec)
        shared = scope == "train"
        blocks = [rows]
        if shared and source == "simulation":
            # Runs of one (realisation, seed) share their data, training subset and minibatch
            # order; chunking them separately lets every layer's product with the data be one
            # large matmul over the chunk (see `_run_chunk`), worth it once blocks are big.
            by_seed = [g for _, g in rows.groupby(["realisation", "seed"], sort=False)]
            if min(len(g) for g in by_seed) >= SEED_BLOCK_MIN_RUNS:
                blocks = by_seed
        c = _chunk_size(exp, max(len(b) for b in blocks), memory_budget, shared, max_chunk,
                        solver if theory else None, n_dev)
        chunks = [b.iloc[i : i + c] for b in blocks for i in range(0, len(b), c)]
        for chunk in chunks:
            n = len(chunk)
            # Pad to the chunk size so that every chunk of a group reuses one compilation.
            padded = pd.concat([chunk] + [chunk.iloc[-1:]] * (c - n), ignore_index=True)
            axes = {}
            for col in dyn_cols:
                v = padded[col].to_numpy(float)
                axes[col] = jnp.asarray(np.where(np.isnan(v), base_params[col] if not math.isnan(base_params[col]) else 0.0, v))
            seeds = _seeds(padded, scope)
            # `index` gives the vmap its run axis when nothing else varies (one run, or runs
            # that differ only in a shared seed).
            axes, seeds, index = _distributed.shard((axes, seeds, jnp.arange(c)), mesh)
            if theory:
                hist = _run_theory_chunk(exp, axes, seeds, index, solver, initial, mesh, source)
            else:
                inputs = None
                if shared and len(set(padded["realisation"])) == 1:
                    inputs = _make_inputs_jit(exp, key=Seeds(int(padded["realisation"].iloc[0])).key("data"))
                hist = _run_chunk(exp, axes, seeds, index, inputs, mesh)
            hist = jax.tree_util.tree_map(lambda a: a[:n], hist)
            table_rows = chunk.copy()
            for col, v in base_params.items():
                if col not in table_rows:
                    table_rows[col] = v
            summary, curves = history_tables(hist, table_rows, exp, source=source, curves=save_curves)
            summary["protocol"] = exp.train.protocol
            if out is not None:
                tag = f"part-{int(chunk['run'].iloc[0]):07d}-{n}"
                if multi:  # part names unique per process, whatever the chunking
                    tag += f"-p{process_index}"
                write_part(out, tag, summary, curves)
            new_summaries.append(summary)
            if curves is not None:
                new_curves.append(curves)
            bar.update(n)
    bar.close()

    if out is None:
        summary = pd.concat(new_summaries, ignore_index=True) if new_summaries else pd.DataFrame(columns=["run", "task"])
        curves = pd.concat(new_curves, ignore_index=True) if new_curves else None
        return SweepResult(curves, summary, None, complete=not multi, grid=grid)
    # Another process may still be sweeping its slice: only a complete set of runs is merged
    # into the folder's tables (the last process to finish sees it complete).
    complete = _done_runs(out) >= set(runs["run"])
    summary, curves = merge_parts(out, write=complete)
    return SweepResult(curves, summary, out, complete=complete, grid=grid)


def _group_key(key, static_cols) -> tuple:
    """A compile group's key with NaN (a task-2 axis of single-task runs) as None."""
    key = key if isinstance(key, tuple) else (key,)
    return tuple(None if isinstance(v, float) and math.isnan(v) else v for v in key[: len(static_cols)])


def _group_experiments(spec: dict, runs: pd.DataFrame, static_cols: list[str]) -> dict[tuple, tuple[Experiment, dict]]:
    """Every compile group's (experiment, spec), keyed by `_group_key`; raises the configs'
    one-line `ValueError` (prefixed with the group's static values) for a bad combination."""
    plans = {}
    groups = runs.groupby(static_cols, sort=False, dropna=False) if static_cols else [((), runs)]
    for key, _ in groups:
        gk = _group_key(key, static_cols)
        values = {c: v for c, v in zip(static_cols, gk) if v is not None}
        group_spec = apply_static(spec, values)
        try:
            plans[gk] = (experiment_from_spec(group_spec), group_spec)
        except ValueError as e:
            where = ", ".join(f"{c}={v}" for c, v in values.items())
            raise ValueError(f"{e} (in the grid group {where})" if where else str(e)) from None
    return plans


def _check_theory(source: str, initial: str, experiments: list[Experiment]) -> None:
    """What the theories cannot do, refused before anything is written."""
    if initial not in ("quenched", "typical"):
        raise ValueError(f"initial={initial!r} is not one of ['quenched', 'typical']")
    for exp in experiments:
        if exp.student.activation != "linear":
            raise ValueError(
                f"source={source!r}: the theory needs a linear student, got student.activation="
                f"{exp.student.activation!r}; set student.activation = 'linear' or simulate only"
            )


def _version() -> str:
    from . import __version__

    return __version__


def multitask_benefit(summary: pd.DataFrame, task: int = 1, metric: str = "early_stopped_loss", *,
                      alone: str = "single_task") -> pd.DataFrame:
    """Pair every multitask run with the run of the same task-1 setting that trained task 1 alone.

    - `alone="single_task"`: the reference is the `single_task = True` run (a separate program).
    - `alone="w_b"`: the reference is the run with task-2 weight `w_b = 0` and every other
      parameter equal (relatedness, s_b, seed, ...): the joint loss then has no task-2 term, so
      one compiled program holds both (sweep with `w_b = [0, 1]`).

    **Returns:** the multitask rows of `task` with columns `single_loss`, `multi_loss` and
    `benefit` = single − multi (nats; positive = training with the other tasks helped).
    Diverged runs give NaN benefits (never silently averaged)."""
    s = summary[summary["task"] == task]
    if alone == "w_b":
        if "w_b" not in s:
            raise ValueError("summary has no w_b column: sweep with w_b = [0, 1] for alone='w_b'")
        single, multi = s[s["w_b"] == 0], s[s["w_b"] != 0]
        keys = [c for c in PARAM_COLUMNS if c in s and c not in ("w_b", "single_task")]
    elif alone == "single_task":
        if "single_task" not in s:
            raise ValueError("summary has no single_task column: sweep with single_task = [true, false]")
        single = s[s["single_task"].astype(bool)]
        multi = s[~s["single_task"].astype(bool)]
        keys = [c for c in PARAM_COLUMNS if c in s and c not in TASK2_AXES and c != "single_task"]
    else:
        raise ValueError(f"alone={alone!r} is not one of ['single_task', 'w_b']")
    keys = [c for c in keys if single[c].notna().all()]
    merged = multi.merge(single[keys + [metric]].rename(columns={metric: "single_loss"}), on=keys, how="left")
    merged = merged.rename(columns={metric: "multi_loss"})
    merged["benefit"] = merged["single_loss"] - merged["multi_loss"]
    return merged
