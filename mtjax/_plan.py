"""The plan of a sweep: grid → compile groups → chunks → the arrays of one vmapped call.

A *compile group* is one value of every static axis (one `Experiment`, one compilation); its
runs are cut into *chunks* sized from a memory budget and padded to one size, so that every
chunk of a group reuses one compiled program.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np
import pandas as pd

from . import _distributed
from ._axes import DYNAMIC_AXES, STATIC_AXES, apply_static, param_values
from ._experiment import Experiment, Seeds
from ._model import Simulation
from ._spec import experiment_from_spec

@dataclasses.dataclass
class Group:
    """One compile group: its experiment, the spec it was built from, the parameter values of
    the axes it does not sweep (as the user gave them), and the keys of its runs."""

    key: tuple
    experiment: Experiment
    spec: dict
    base_params: dict


def group_key(key, static_cols) -> tuple:
    """A compile group's key with NaN (a task-2 axis of single-task runs) as None."""
    key = key if isinstance(key, tuple) else (key,)
    return tuple(None if isinstance(v, float) and math.isnan(v) else v for v in key[: len(static_cols)])


def static_columns(runs: pd.DataFrame) -> list[str]:
    return [c for c in STATIC_AXES if c in runs]


def iter_groups(runs: pd.DataFrame):
    """(key, rows) per compile group of `runs`, in grid order."""
    cols = static_columns(runs)
    if not cols:
        yield (), runs
        return
    for key, rows in runs.groupby(cols, sort=False, dropna=False):
        yield group_key(key, cols), rows


def plan_groups(spec: dict, runs: pd.DataFrame) -> dict[tuple, Group]:
    """Every compile group of `runs`, built now: a bad combination (e.g. ntrain_b < ntrain in
    the paper protocol) raises the configs' one-line `ValueError`, naming the group, before
    anything is written."""
    cols = static_columns(runs)
    plans = {}
    for gk, _ in iter_groups(runs):
        values = {c: v for c, v in zip(cols, gk) if v is not None}
        group_spec = apply_static(spec, values)
        try:
            exp = experiment_from_spec(group_spec)
        except ValueError as e:
            where = ", ".join(f"{c}={v}" for c, v in values.items())
            raise ValueError(f"{e} (in the grid group {where})" if where else str(e)) from None
        plans[gk] = Group(gk, exp, group_spec, param_values(exp, group_spec))
    return plans


def seeds_of(rows: pd.DataFrame, scope: str) -> Seeds:
    """The runs' seeds; a seed equal for all rows is returned as a scalar, so that the chunk
    keeps it (and all it determines) unbatched."""
    seed = rows["seed"].to_numpy(np.int64)
    real = rows["realisation"].to_numpy(np.int64)
    if scope == "train":
        fields = (real, real, real, seed)
    else:
        fields = ((seed + 1_000_003 * real) % (2**31 - 1),) * 4
    return Seeds(*(f[0] if np.all(f == f[0]) else f for f in fields))


def chunks(rows: pd.DataFrame, group: Group, model, scope: str, memory_budget: float, max_chunk: int | None,
           n_devices: int, seed_block_min_runs: int) -> tuple[list[pd.DataFrame], int]:
    """The group's runs cut into chunks, and the padded chunk size.

    Simulation runs of one (realisation, seed) share their data, training subset and minibatch
    order (seed scope "train"); chunking them separately lets every layer's product with the
    data be one large matmul over the chunk (`Simulation.prepare`), worth it once blocks have
    `seed_block_min_runs` runs.
    `memory_budget` (bytes) is per device, so the chunk grows with the devices."""
    shared = scope == "train"
    blocks = [rows]
    if shared and isinstance(model, Simulation):
        by_seed = [g for _, g in rows.groupby(["realisation", "seed"], sort=False)]
        if min(len(g) for g in by_seed) >= seed_block_min_runs:
            blocks = by_seed
    per_run = model.bytes_per_run(group.experiment, shared)
    c = _distributed.chunk_size(int(memory_budget // per_run), max(len(b) for b in blocks), n_devices, max_chunk)
    return [b.iloc[i : i + c] for b in blocks for i in range(0, len(b), c)], c


def chunk_arrays(chunk: pd.DataFrame, size: int, group: Group, scope: str) -> tuple[dict, Seeds, jnp.ndarray]:
    """The vmapped inputs of one chunk padded to `size` runs (repeats of its last run): the
    dynamic axes' values (name -> (size,)), the seeds, and a run index that gives the vmap its
    axis when nothing else varies."""
    padded = pd.concat([chunk] + [chunk.iloc[-1:]] * (size - len(chunk)), ignore_index=True)
    axes = {}
    for col in (c for c in DYNAMIC_AXES if c in padded):
        v = padded[col].to_numpy(float)
        # NaN: a task-2 axis of a single-task run, which its program never reads.
        base = group.base_params[col]
        axes[col] = jnp.asarray(np.where(np.isnan(v), 0.0 if math.isnan(base) else base, v))
    return axes, seeds_of(padded, scope), jnp.arange(size)
