"""The sweep axes, defined once: names, kinds, allowed values and how they map onto the configs.

Three kinds of axis:

- *dynamic* axes are array fields of the configs (vmapped: one compiled program serves every
  value); each has a setter `(experiment, scalar) -> experiment`;
- *static* axes change shapes or loop structure (one compilation per value); each names the
  spec entry it sets;
- *seed* axes pick the random draws.

Axes named ``*_b`` set task 2 and every further task. Every axis carries its allowed range, so a
grid is checked value by value, with the axis named, before a sweep writes anything.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from typing import Any, Callable

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pandas as pd

from ._experiment import Experiment


@dataclasses.dataclass(frozen=True)
class Axis:
    """One sweep axis.

    - `kind`: "dynamic" (vmapped array field), "static" (one compile per value) or "seed".
    - `lo`, `hi`, `lo_open`: the allowed range (None = unbounded).
    - `integer`, `boolean`: value type.
    - `field`: dynamic axes: (config section, field name, "all" | "a" | "b") — the array field
      it sets (every entry, task 1's, or tasks 2..K's); the spec key of the same name holds the
      value a user sets without sweeping.
    - `spec_key`: static axes: (spec section, key) they set.
    - `task2`: the axis does not affect task 1 when it is trained alone.
    - `meaning`: a few words for error messages and docs.
    """

    kind: str
    meaning: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    integer: bool = False
    boolean: bool = False
    field: tuple[str, str, str] | None = None
    spec_key: tuple[str, str] | None = None
    task2: bool = False

    def range_text(self) -> str:
        if self.boolean:
            return "true or false"
        lb = "(" if self.lo_open else "["
        lo = "-inf" if self.lo is None else f"{self.lo:g}"
        hi = "inf" if self.hi is None else f"{self.hi:g}"
        kind = "integers in " if self.integer else ""
        return f"{kind}{lb}{lo}, {hi}{')' if self.hi is None else ']'}"


_INDEX = {"all": None, "a": 0, "b": slice(1, None)}


def _setter(field: tuple[str, str, str]) -> Callable:
    """`(experiment, v) -> experiment` setting the config array `field` = (section, name, which):
    every entry ("all"), task 1's ("a") or tasks 2..K's ("b")."""
    section, name, which = field
    index = _INDEX[which]

    def where(exp):
        return getattr(getattr(exp, section), name)

    def setter(exp: Experiment, v):
        old = where(exp)
        new = jnp.full(old.shape, v, old.dtype) if index is None else old.at[index].set(v)
        return eqx.tree_at(where, exp, new)

    return setter


AXES: dict[str, Axis] = {
    # dynamic (vmapped) -----------------------------------------------------------------------
    "relatedness": Axis("dynamic", "overlap r of the teachers' subspaces", -1.0, 1.0, field=("teacher", "relatedness", "all"), task2=True),
    "s_a": Axis("dynamic", "task-1 signal scale", 0.0, field=("teacher", "scale", "a")),
    "s_b": Axis("dynamic", "task-2 signal scale", 0.0, field=("teacher", "scale", "b"), task2=True),
    "sigma_a": Axis("dynamic", "task-1 logit noise", 0.0, field=("teacher", "noise", "a")),
    "sigma_b": Axis("dynamic", "task-2 logit noise", 0.0, field=("teacher", "noise", "b"), task2=True),
    "eps_a": Axis("dynamic", "task-1 label-flip probability", 0.0, 1.0, field=("teacher", "flip", "a")),
    "eps_b": Axis("dynamic", "task-2 label-flip probability", 0.0, 1.0, field=("teacher", "flip", "b"), task2=True),
    "q": Axis("dynamic", "fraction of examples with logit noise", 0.0, 1.0, field=("teacher", "noisy_fraction", "all")),
    "readout_alignment": Axis("dynamic", "overlap of the teachers' readouts", -1.0, 1.0,
                              field=("teacher", "readout_alignment", "all"), task2=True),
    "lr": Axis("dynamic", "learning rate", 0.0, lo_open=True, field=("train", "learning_rate", "all")),
    "w_b": Axis("dynamic", "loss weight of task 2", 0.0, field=("train", "task_weights", "b"), task2=True),
    "init_scale": Axis("dynamic", "initialisation gain", 0.0, lo_open=True, field=("student", "init_scale", "all")),
    # seeds -------------------------------------------------------------------------------------
    "seed": Axis("seed", "random seed", 0, 2**31 - 2, integer=True),
    "realisation": Axis("seed", "teacher/data/init realisation", 0, 2**31 - 2, integer=True),
    # static (one compilation each) -----------------------------------------------------------
    "ntrain": Axis("static", "task-1 training examples", 1, integer=True, spec_key=("train", "n_train")),
    "ntrain_b": Axis("static", "task-2 training examples", 1, integer=True, spec_key=("train", "n_train"), task2=True),
    "depth": Axis("static", "trunk depth", 0, integer=True, spec_key=("student", "depth")),
    "width": Axis("static", "trunk width", 1, integer=True, spec_key=("student", "width")),
    "single_task": Axis("static", "train task 1 alone", boolean=True, spec_key=("train", "single_task")),
}  # fmt: skip

DYNAMIC_AXES: dict[str, Callable] = {n: _setter(a.field) for n, a in AXES.items() if a.kind == "dynamic"}
# The data sizes as continuous values for the theories: the static axes ntrain, ntrain_b fix the
# training sets' shapes, but a theory sees a data size only as α = P / N, through the array field
# `train.n_train_active`; fitting and design set it there (`apply_axes` accepts these names).
DATA_SIZE_AXES: dict[str, Callable] = {"ntrain": _setter(("train", "n_train_active", "a")),
                                       "ntrain_b": _setter(("train", "n_train_active", "b"))}  # fmt: skip
STATIC_AXES: dict[str, tuple[str, str]] = {n: a.spec_key for n, a in AXES.items() if a.kind == "static"}
SEED_AXES = tuple(n for n, a in AXES.items() if a.kind == "seed")
# Axes that do not affect task 1 when it is trained alone: single-task runs are not repeated
# over them (their table entries are NaN) and they are dropped when pairing for the benefit.
TASK2_AXES = tuple(n for n, a in AXES.items() if a.task2)
# The parameter columns of every result table, in table order.
PARAM_COLUMNS = (
    "relatedness", "s_a", "s_b", "sigma_a", "sigma_b", "eps_a", "eps_b", "q", "readout_alignment",
    "lr", "w_b", "init_scale", "ntrain", "ntrain_b", "depth", "width", "single_task", "seed", "realisation",
)  # fmt: skip


def _bad(name: str, value, why: str) -> ValueError:
    return ValueError(f"grid axis {name}: value {value!r} {why}")


def check_value(name: str, value) -> Any:
    """The grid value `value` of axis `name` as a Python scalar, or a one-line `ValueError` that
    names the axis, the value, its allowed range and the fix."""
    ax = AXES[name]
    fix = f"allowed: {ax.range_text()} ({ax.meaning})"
    if ax.boolean:
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise _bad(name, value, f"is not a boolean; {fix}")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise _bad(name, value, f"is not a number; {fix}")
    v = float(value)
    if not math.isfinite(v):
        raise _bad(name, value, f"is not finite; {fix}")
    if ax.integer:
        if v != int(v):
            raise _bad(name, value, f"is not an integer; {fix}")
        v = int(v)
    too_low = ax.lo is not None and (v <= ax.lo if ax.lo_open else v < ax.lo)
    if too_low or (ax.hi is not None and v > ax.hi):
        raise _bad(name, value, f"is out of range; {fix}")
    return v if ax.integer else (value if isinstance(value, float) else float(value))


def check_grid(grid: dict) -> dict[str, list]:
    """Validate a grid (axis -> list of values, or one scalar) and return it with every value
    checked (`check_value`) and scalars wrapped in lists. Raises one-line `ValueError`s."""
    if not isinstance(grid, dict):
        raise ValueError(f"grid must be a table of axis = [values], got {type(grid).__name__}")
    out: dict[str, list] = {}
    for name, values in grid.items():
        if name not in AXES:
            close = [a for a in AXES if a.startswith(str(name)[:2])]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(f"unknown grid axis {name!r}{hint}; allowed axes: {', '.join(sorted(AXES))}")
        if isinstance(values, (list, tuple, np.ndarray)):
            values = list(values)
        elif isinstance(values, dict):
            raise ValueError(f"grid axis {name}: expected a list of values, got a table {values!r}")
        else:
            values = [values]
        if len(values) == 0:
            raise ValueError(f"grid axis {name!r} has no values; give at least one ({AXES[name].range_text()})")
        checked = [check_value(name, v) for v in values]
        if len(set(map(repr, checked))) != len(checked):
            raise ValueError(f"grid axis {name}: repeated values in {values!r}; list each value once")
        out[name] = checked
    return out


def expand_grid(grid: dict[str, list]) -> pd.DataFrame:
    """Cartesian product of the grid axes, one row per run, with single-task runs deduplicated.

    The values are checked first (`check_grid`): an unknown axis or a value out of its range
    raises a one-line `ValueError` naming the axis."""
    grid = check_grid(grid)
    grid.setdefault("seed", [0])
    grid.setdefault("realisation", [0])
    names = list(grid)
    df = pd.DataFrame(list(itertools.product(*[grid[n] for n in names])), columns=names)
    if "single_task" in df:
        single = df["single_task"].astype(bool)
        for ax in TASK2_AXES:
            if ax in df:
                df[ax] = df[ax].astype(float)
                df.loc[single, ax] = np.nan
        df = df.drop_duplicates(ignore_index=True)
    df.insert(0, "run", np.arange(len(df)))
    return df


def apply_axes(exp: Experiment, values: dict) -> Experiment:
    """Set the dynamic sweep axes `values` (name -> scalar or traced scalar) on one experiment,
    as `mtjax.sweep` does for every run: vmap it over arrays of values to run a batch of points
    in one compiled program.

    **Arguments:** `exp`: an `Experiment`; `values`: axis name (a dynamic axis of the sweep
    grid: e.g. relatedness, s_a, s_b, eps_a, learning_rate; or a data size `ntrain`, `ntrain_b`,
    set as `train.n_train_active`, which the theories read as α = P / N) -> value.

    **Returns:** the experiment with those fields replaced.

    ```python
    run = jax.vmap(lambda r: mtjax.simulate(mtjax.apply_axes(exp, {"relatedness": r}), seeds))
    ```"""
    for name, v in values.items():
        exp = (DYNAMIC_AXES[name] if name in DYNAMIC_AXES else DATA_SIZE_AXES[name])(exp, v)
    return exp


def apply_static(spec: dict, values: dict) -> dict:
    """A copy of `spec` with the static axes `values` (name -> value) set."""
    spec = json.loads(json.dumps(spec))
    for name, v in values.items():
        sec, key = STATIC_AXES[name]
        spec.setdefault(sec, {})
        if name in ("ntrain", "ntrain_b"):
            cur = spec[sec].get(key)
            if cur is None:
                cur = [400, 400]
            cur = [cur, cur] if isinstance(cur, int) else list(cur)
            if name == "ntrain":
                cur[0] = int(v)
                if "ntrain_b" not in values:
                    cur[1:] = [int(v)] * (len(cur) - 1)
            else:
                cur[1:] = [int(v)] * (len(cur) - 1)
            spec[sec][key] = cur
            spec[sec].pop("n_pool", None) if spec.get("preset") == "paper" else None
        else:
            spec[sec][key] = v.item() if hasattr(v, "item") else v
    return spec


def _user_float(x) -> float:
    """A float32 config value as the decimal the user wrote: float32 holds 0.01 as
    0.00999999977648, and its shortest round-trip repr is "0.01"; any value given with up to 7
    significant digits comes back exactly."""
    return float(repr(np.float32(x)).removeprefix("np.float32(").removesuffix(")"))


def param_values(exp: Experiment, spec: dict | None = None) -> dict[str, Any]:
    """The sweep-axis parameters of one (unbatched) experiment, as Python scalars.

    Values are the ones the user gave: taken from `spec` (the sections teacher/student/train)
    where it sets them as plain numbers, else the float32 config value in its shortest decimal
    form (so `lr` is 0.01, not 0.009999999776)."""
    t, tr, st = exp.teacher, exp.train, exp.student
    K = t.n_tasks

    def a(x):  # task-1 entry
        return _user_float(np.asarray(x).reshape(-1)[0])

    def b(x):  # task-2 entry, NaN for K = 1
        return _user_float(np.asarray(x).reshape(-1)[0]) if K > 1 and np.size(x) else math.nan

    out = {
        "relatedness": b(t.relatedness),
        "s_a": a(t.scale),
        "s_b": b(t.scale[1:]),
        "sigma_a": a(t.noise),
        "sigma_b": b(t.noise[1:]),
        "eps_a": a(t.flip),
        "eps_b": b(t.flip[1:]),
        "q": a(t.noisy_fraction),
        "readout_alignment": b(t.readout_alignment),
        "lr": _user_float(tr.learning_rate),
        "w_b": b(tr.task_weights[1:]),
        "init_scale": _user_float(st.init_scale),
        "ntrain": tr.n_train[0],
        "ntrain_b": tr.n_train[1] if K > 1 else math.nan,
        "depth": st.depth,
        "width": st.width,
        "single_task": tr.single_task,
    }
    if spec is not None:
        out.update(_spec_values(spec, K))
    return out


def _spec_values(spec: dict, n_tasks: int) -> dict[str, float]:
    """The dynamic-axis values a spec sets explicitly as plain numbers (a scalar, or a per-task
    list: task 1's entry for "all"/"a" axes, task 2's for "b")."""
    out = {}
    for name, ax in AXES.items():
        if ax.kind != "dynamic":
            continue
        section, key, which = ax.field
        if which == "b" and n_tasks < 2:
            continue
        v = spec.get(section, {}).get(key)
        if isinstance(v, (list, tuple)):
            i = 1 if which == "b" else 0
            v = v[i] if i < len(v) else None
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[name] = float(v)
    return out
