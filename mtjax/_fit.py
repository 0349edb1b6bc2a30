"""Fitting the differentiable population theory to observed learning curves (docs/fitting.md).

The theory (`population_theory`) is a smooth function of the teacher and training parameters:
its quadrature points are fixed (common random numbers) and every parameter enters through
closed forms, so `jax.grad` flows through the diffrax solve.  A fit is

    θ (unconstrained) --transform--> parameters (r, s, σ, ε, time scale, ...)
      --> one theory solve per *condition* (distinct known parameters), vmapped
      --> predictions per observation (loss at a time, or the early-stopped loss)
      --> weighted squared error (or Gaussian negative log-likelihood)

minimised by Adam (optax, reverse mode through the solve) and then Levenberg–Marquardt with the
forward-mode Jacobian of the residuals, from several starts at once (vmapped).  Error bars are
the Laplace approximation: the inverse Hessian of the objective at the optimum (Gauss–Newton
JᵀWJ, or the exact forward-over-forward Hessian), mapped to the constrained parameters by the
delta method; with correlated errors, the sandwich (`obs_covariance`, or seed-clustered from
per-seed replicates, `obs_replicates`, with Student-t intervals), optionally with a
model-discrepancy term (`discrepancy`: an error of the theory that no replicate shows), and
profile intervals (`profile`) where the objective is not quadratic in a parameter.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import warnings
from time import perf_counter
from typing import Any, Sequence

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
import scipy.stats

from ._custom_types import Array, Bool, Float, Int
from ._experiment import Experiment, Seeds
from ._population import PopulationSolver, population_theory
from ._sweep import DYNAMIC_AXES, STATIC_AXES, TASK2_AXES, apply_axes

# ---------------------------------------------------------------------------------------------
# Parameters and their constraints

#: Default constraint of every fittable parameter: tanh keeps r in (-1, 1), log keeps scales
#: positive, sigmoid keeps probabilities in (0, 1).  `time_scale` multiplies every task rate
#: (an effective learning-rate factor): the theory at rates τρ and time t equals the theory at
#: rates ρ and time τt.
DEFAULT_TRANSFORMS = {
    "relatedness": "tanh",
    "s_a": "log",
    "s_b": "log",
    "sigma_a": "log",
    "sigma_b": "log",
    "eps_a": "sigmoid",
    "eps_b": "sigmoid",
    "q": "sigmoid",
    "readout_alignment": "tanh",
    "w_b": "log",
    "init_scale": "log",
    "time_scale": "log",
}
TRANSFORMS = ("identity", "log", "tanh", "sigmoid")
#: Table columns that name a theory parameter (besides `time_scale`) and may be known per row.
#: `single_task` is mapped to w_b = 0: with rate 0 task 2 never moves the trunk, which is
#: exactly the single-task flow of task 1 (and needs no separate compilation).
KNOWN_COLUMNS = tuple(DYNAMIC_AXES) + ("single_task",)


def _forward(transform: str, u):
    if transform == "identity":
        return u
    if transform == "log":
        return jnp.exp(u)
    if transform == "tanh":
        return jnp.tanh(u)
    if transform == "sigmoid":
        return jax.nn.sigmoid(u)
    raise ValueError(f"transform={transform!r} is not one of {list(TRANSFORMS)}")


def _inverse(transform: str, x):
    x = np.asarray(x, float)
    if transform == "identity":
        return x
    if transform == "log":
        return np.log(x)
    if transform == "tanh":
        return np.arctanh(np.clip(x, -1 + 1e-6, 1 - 1e-6))
    if transform == "sigmoid":
        x = np.clip(x, 1e-6, 1 - 1e-6)
        return np.log(x) - np.log1p(-x)
    raise ValueError(f"transform={transform!r} is not one of {list(TRANSFORMS)}")


class Param(eqx.Module):
    """One free parameter of a fit.

    **Arguments:**

    - `name`: a theory parameter (`relatedness`, `s_a`, `s_b`, `sigma_a`, `sigma_b`, `eps_a`,
      `eps_b`, `q`, `readout_alignment`, `w_b`, `init_scale`, `lr`) or `time_scale` (effective
      factor on every task rate, i.e. on the learning rate).
    - `init`: starting value (constrained units), a scalar or one value per level of `by`.
    - `transform`: `"tanh"`, `"log"`, `"sigmoid"` or `"identity"` (default by name, see
      `DEFAULT_TRANSFORMS`): the fit optimises the unconstrained u with value = transform(u),
      so bounded parameters cannot leave their range.
    - `by`: `None` (one value shared by all rows) or a column of the observation table: one
      value per distinct value of that column (e.g. a time scale per training-set size).
    """

    name: str = eqx.field(static=True)
    init: Any = eqx.field(static=True)
    transform: str = eqx.field(static=True)
    by: str | None = eqx.field(static=True)

    def __init__(self, name: str, init=None, transform: str | None = None, by: str | None = None):
        if name not in DEFAULT_TRANSFORMS and name != "lr":
            raise ValueError(f"Param name={name!r} is not fittable; allowed: {sorted([*DEFAULT_TRANSFORMS, 'lr'])}")
        self.name = name
        self.transform = transform or DEFAULT_TRANSFORMS.get(name, "log")
        if self.transform not in TRANSFORMS:
            raise ValueError(f"transform={self.transform!r} is not one of {list(TRANSFORMS)}")
        default = {"relatedness": 0.0, "eps_a": 0.1, "eps_b": 0.1, "q": 0.5, "readout_alignment": 0.0}.get(name, 1.0)
        self.init = tuple(np.atleast_1d(np.asarray(default if init is None else init, float)).tolist())
        self.by = by


# ---------------------------------------------------------------------------------------------
# Observations


class Observations(eqx.Module):
    """A tidy table of observations mapped onto theory solves (see `observations_from_table`).

    - `condition`: (n,) index of the theory solve (a distinct setting of the known parameters).
    - `time`: (n,) time t = lr x steps of the observation (the horizon for early-stopped rows).
    - `task`: (n,) 0-based task index.
    - `value`: (n,) observed metric (test loss in nats); `se`: (n,) its standard error (1 if unknown).
    - `early_stopped`: (n,) bool: the row is a minimum over the run (up to `time`), not a value at `time`.
    - `known`: column -> (n_cond,) known parameter values of each condition.
    - `level`: column -> (n,) level index of each row for the `by` columns of the parameters.
    - `grid`: (T,) theory save times (sorted, > 0); `n_conditions`: number of theory solves.
    """

    condition: Int[Array, " n"]
    time: Float[Array, " n"]
    task: Int[Array, " n"]
    value: Float[Array, " n"]
    se: Float[Array, " n"]
    early_stopped: Bool[Array, " n"]
    known: dict
    level: dict
    grid: Float[Array, " T"]
    n_conditions: int = eqx.field(static=True)


def _numeric(d: pd.DataFrame, col: str) -> np.ndarray:
    """Column `col` as float, or a one-line error naming it."""
    try:
        return d[col].to_numpy(float)
    except (ValueError, TypeError):
        def fails(v):
            try:
                float(v)
                return False
            except (ValueError, TypeError):
                return True

        bad = next((v for v in d[col] if fails(v)), None)
        raise ValueError(f"column {col!r} must be numeric, but holds {bad!r}") from None


def _select_hint(col: str, values: np.ndarray) -> str:
    """A `--query` that keeps the finite rows of `col`."""
    return f"{col} == {col}" if not np.isinf(values).any() else f"abs({col}) < 1e308"


def _flagged(d: pd.DataFrame, col: str | None) -> np.ndarray:
    """(n,) bool: the row's run is flagged in column `col` (missing column or NaN: not flagged)."""
    if col is None or col not in d:
        return np.zeros(len(d), bool)
    return np.asarray([bool(v) if pd.notna(v) else False for v in d[col]], bool)


def _finite_rows(d: pd.DataFrame, value: str, time: str, diverged: str | None) -> pd.DataFrame:
    """Rows with a finite `value` and `time`: non-finite values of runs flagged `diverged` are
    dropped with a warning; any other non-finite value or time is refused (one line, with the
    column, the count and a selection that removes them)."""
    t = _numeric(d, time)
    bad_t = ~np.isfinite(t)
    if bad_t.any():
        raise ValueError(f"column {time!r} has {int(bad_t.sum())} of {len(d)} rows with a non-finite value (NaN or inf); "
                         f"every observation needs its time: drop them (CLI: --query '{_select_hint(time, t)}') or fix the table")
    v = _numeric(d, value)
    bad = ~np.isfinite(v)
    if not bad.any():
        return d
    flagged = _flagged(d, diverged)
    if (bad & ~flagged).any():
        n = int((bad & ~flagged).sum())
        why = (f"not flagged in column {diverged!r}" if diverged is not None and diverged in d
               else "(no column flags their runs as diverged)")
        raise ValueError(f"column {value!r} has {n} of {len(d)} rows with a non-finite value (NaN or inf) {why}: "
                         f"drop them (CLI: --query '{_select_hint(value, v[bad & ~flagged])}') or fix the table")
    warnings.warn(f"dropped {int(bad.sum())} of {len(d)} rows with a non-finite {value!r} (their runs are flagged in column "
                  f"{diverged!r})", UserWarning, stacklevel=3)
    return d[~bad].reset_index(drop=True)


def _check_known_nan(d: pd.DataFrame, kcols: Sequence[str]) -> None:
    """A known parameter may be NaN only where it cannot matter: a task-2 axis of a single-task
    row (the tables leave those NaN; `FitProblem.curves` sets w_b = 0 there)."""
    single = _flagged(d, "single_task")
    for c in kcols:
        nan = np.isnan(_numeric(d, c))
        bad = nan & ~(single if c in TASK2_AXES else np.zeros(len(d), bool))
        if bad.any():
            allowed = " (allowed only in single-task rows)" if c in TASK2_AXES else ""
            raise ValueError(f"known column {c!r} is NaN in {int(bad.sum())} of {len(d)} rows{allowed}: fill it, or drop "
                             f"those rows (CLI: --query '{c} == {c}')")


def _fmt_values(vals: np.ndarray, n: int = 4) -> str:
    shown = ", ".join(f"{x:g}" for x in vals[:n])
    return shown + (f", ... ({len(vals)} values)" if len(vals) > n else "")


def _check_one_condition(d: pd.DataFrame, per_row: set[str]) -> None:
    """Refuse a parameter column that takes several values when the fit would give it one
    value for every row: a free parameter without `by`, a theory parameter left out of `known`,
    or a static axis (depth, width, ntrain, ...) the theory is solved at once for. Seed columns
    (replicates) may vary."""
    for c in [*KNOWN_COLUMNS, *(a for a in STATIC_AXES if a not in KNOWN_COLUMNS)]:
        if c not in d or c in per_row:
            continue
        vals = np.unique(_numeric(d, c))
        vals = vals[~np.isnan(vals)]
        if vals.size <= 1:
            continue
        pick = f"--query '{c} == {vals[0]:g}'"
        if c in KNOWN_COLUMNS:
            fix = (f"fit one value per level (CLI: --by {c}={c}; Param({c!r}, by={c!r})), make it a known column, "
                   f"or select one condition (CLI: {pick})")
        elif c in ("ntrain", "ntrain_b"):
            fix = f"select one (CLI: {pick}), or fit a parameter per level (e.g. --by time_scale={c})"
        else:
            fix = f"select one (CLI: {pick}) and set the config to it"
        raise ValueError(f"column {c!r} takes {vals.size} values ({_fmt_values(vals)}) but this fit uses one value of {c} "
                         f"for every row: {fix}")


def observations_from_table(
    table: pd.DataFrame,
    *,
    value: str = "test_loss",
    time: str = "time",
    task: str | None = "task",
    se: str | None = None,
    known: Sequence[str] | None = None,
    by: Sequence[str] = (),
    split: Sequence[str] = (),
    early_stopped: bool | str = False,
    grid: Sequence[float] | None = None,
    lr: float | None = None,
    diverged: str | None = "diverged",
) -> tuple[Observations, pd.DataFrame]:
    """Map a tidy table onto theory solves.

    **Column mapping:**

    - `value`: the observed metric (test cross-entropy, nats).
    - `time`: time t = lr x steps; if the table has `step` instead, pass `time="step"` and `lr`.
    - `task`: 1-based task column (default `task`; `None`: every row is task 1).
    - `se`: optional standard-error column (weights 1/se²); without it every row has weight 1.
    - `known`: parameter columns known per row (default: every column of `KNOWN_COLUMNS`
      present in the table). Rows with equal known values share one theory solve.
    - `by`: extra columns that index per-level parameters (`Param(by=...)`).
    - `split`: columns that must also split the theory solves: the `by` columns of every
      per-level parameter other than `time_scale` (which acts per row, on the time axis).
    - `early_stopped`: `True` if `value` is the minimum over a run up to `time` (e.g. the paper's
      early-stopped validation loss), or the name of a bool column saying so per row.
    - `grid`: theory save times (>= 0); default: the distinct observation times. Predictions
      interpolate linearly in t on the grid (and are constant beyond its ends).
    - `diverged`: bool column flagging diverged runs (default `diverged`, as in sweep tables;
      ignored when absent). Rows of flagged runs whose `value` is NaN or inf are dropped with a
      `UserWarning` saying how many; the returned observations then have fewer rows than the
      table (so do replicates passed to `fit`).

    **Returns:** `(Observations, conditions)` where `conditions` has one row per theory solve.

    **Raises:** `ValueError` (one line, naming the column and the fix) before any work when a
    column is missing or not numeric; `value` is NaN or inf in a row not flagged `diverged`;
    `time` is NaN, inf or negative; `se` is not finite and positive; `task` is not 1, 2, ...; a
    known column is NaN (except a task-2 axis of a single-task row); no row is left; or a
    parameter column (`KNOWN_COLUMNS`, or a static axis: `depth`, `width`, `ntrain`, `ntrain_b`)
    takes several values but is neither known, nor a `by`/`split` column: the fit would
    otherwise give one value to distinct conditions.
    """
    d = table.reset_index(drop=True).copy()
    if known is None:
        known = [c for c in KNOWN_COLUMNS if c in d]
    known = list(known)
    for c in known:
        if c not in KNOWN_COLUMNS:
            raise ValueError(f"known column {c!r} is not a theory parameter; allowed: {list(KNOWN_COLUMNS)}")
    es_col = [early_stopped] if isinstance(early_stopped, str) else []
    for col in [value, time, *([task] if task else []), *([se] if se else []), *known, *by, *split, *es_col]:
        if col not in d:
            raise ValueError(f"column {col!r} is not in the table (columns: {list(d.columns)})")
    if len(d) == 0:
        raise ValueError("the table has no rows (check the row selection, e.g. --query or --source)")
    d = _finite_rows(d, value, time, diverged)
    if len(d) == 0:
        raise ValueError(f"no rows left: every {value!r} is non-finite (all runs diverged)")
    if se:
        s = _numeric(d, se)
        bad = ~(np.isfinite(s) & (s > 0))
        if bad.any():
            raise ValueError(f"column {se!r} has {int(bad.sum())} of {len(d)} rows that are not a finite standard error > 0 "
                             f"(weights are 1/se^2): drop them (CLI: --query '{se} > 0 and {se} < 1e308') or fix the table")
    if task:
        k = _numeric(d, task)
        bad = ~(np.isfinite(k) & (k >= 1) & (k == np.round(k)))
        if bad.any():
            raise ValueError(f"column {task!r} must hold 1-based task numbers (1, 2, ...), but {int(bad.sum())} rows hold "
                             f"{_fmt_values(np.unique(k[bad]))}")
    t = _numeric(d, time)
    if time == "step" or (lr is not None):
        if lr is None:
            raise ValueError("time='step' needs lr= (time t = lr x steps)")
        t = t * lr
    if np.any(t < 0):
        raise ValueError(f"column {time!r} has {int(np.sum(t < 0))} of {len(d)} rows with a negative time: "
                         "times t = lr x steps must be >= 0")
    kcols = sorted(set(known) | set(c for c in split if c in KNOWN_COLUMNS))
    _check_known_nan(d, kcols)
    _check_one_condition(d, set(kcols) | set(by) | set(split))
    filled = d[kcols].astype(float).fillna(-1e300) if kcols else pd.DataFrame(index=d.index)
    if kcols:
        conds, cidx = np.unique(filled.to_numpy(), axis=0, return_inverse=True)
        cidx = cidx.reshape(-1)
    else:
        conds, cidx = np.zeros((1, 0)), np.zeros(len(d), int)
    # Columns by which parameters vary must also split the conditions (one solve sees one value).
    split = [c for c in split if c not in kcols]
    if split:
        key = pd.DataFrame({"c": cidx, **{c: d[c] for c in split}})
        codes, uniq = pd.factorize(pd.MultiIndex.from_frame(key))
        cidx = codes
        first = pd.Series(range(len(d))).groupby(codes).first().to_numpy()
        conditions = d.loc[first, kcols + split].reset_index(drop=True)
    else:
        conditions = pd.DataFrame(np.where(conds == -1e300, np.nan, conds), columns=kcols)
    kn = {}
    for c in kcols:
        v = conditions[c].astype(float).to_numpy()
        kn[c] = jnp.asarray(v)
    levels = {c: jnp.asarray(pd.factorize(d[c], sort=True)[0]) for c in by}
    if isinstance(early_stopped, str):
        es = d[early_stopped].astype(bool).to_numpy()
    else:
        es = np.full(len(d), bool(early_stopped))
    tk = d[task].to_numpy(float).astype(int) - 1 if task else np.zeros(len(d), int)
    g = np.unique(t) if grid is None else np.sort(np.asarray(grid, float))
    if g.size == 0 or not np.all(np.isfinite(g)) or g[-1] <= 0 or g[0] < 0:
        raise ValueError(f"grid={g} must be finite and >= 0 with a positive last time (the theory starts at t = 0)")
    obs = Observations(
        condition=jnp.asarray(cidx, jnp.int32),
        time=jnp.asarray(t),
        task=jnp.asarray(tk, jnp.int32),
        value=jnp.asarray(d[value].to_numpy(float)),
        se=jnp.asarray(d[se].to_numpy(float) if se else np.ones(len(d))),
        early_stopped=jnp.asarray(es),
        known=kn,
        level=levels,
        grid=jnp.asarray(g),
        n_conditions=int(np.max(cidx)) + 1,
    )
    return obs, conditions


# ---------------------------------------------------------------------------------------------
# The model: parameters -> predictions


class FitProblem(eqx.Module):
    """Everything the objective needs: base experiment, seeds, observations, free parameters.

    Build with `FitProblem(...)`; `fit` does this for you."""

    experiment: Experiment
    seeds: Seeds
    obs: Observations
    params: tuple[Param, ...] = eqx.field(static=True)
    n_levels: tuple[int, ...] = eqx.field(static=True)
    solver: PopulationSolver
    initial: str = eqx.field(static=True)
    loss: str = eqx.field(static=True)

    @property
    def size(self) -> int:
        """Length of the unconstrained vector θ (plus one noise parameter for `loss="gaussian"`)."""
        return sum(self.n_levels) + (1 if self.loss == "gaussian" else 0)

    def unpack(self, theta: Float[Array, " P"]) -> dict[str, Float[Array, " L"]]:
        """θ -> {name: (n_levels,) constrained values}."""
        out, i = {}, 0
        for p, n in zip(self.params, self.n_levels):
            out[p.name] = _forward(p.transform, theta[i : i + n])
            i += n
        return out

    def pack(self, values: dict[str, Any]) -> Float[Array, " P"]:
        """{name: constrained value(s)} -> θ (inverse of `unpack`)."""
        parts = []
        for p, n in zip(self.params, self.n_levels):
            v = np.broadcast_to(np.asarray(values[p.name], float), (n,))
            parts.append(_inverse(p.transform, v))
        if self.loss == "gaussian":
            parts.append(np.asarray([values.get("noise", -2.0)], float))
        return jnp.asarray(np.concatenate(parts))

    def initial_theta(self) -> Float[Array, " P"]:
        return self.pack({p.name: np.asarray(p.init) for p in self.params})

    def _condition_levels(self, name: str, by: str | None):
        """Level index of every condition for a parameter varying by `by` (first row of each)."""
        if by is None:
            return jnp.zeros(self.obs.n_conditions, jnp.int32)
        lev = self.obs.level[by]
        return jax.ops.segment_max(lev, self.obs.condition, num_segments=self.obs.n_conditions)

    def curves(self, theta: Float[Array, " P"]) -> Float[Array, "n_cond T K"]:
        """Theory test loss of every condition at the grid times (time scale not applied)."""
        vals = self.unpack(theta)
        nc = self.obs.n_conditions
        axes = {}
        for c, v in self.obs.known.items():
            if c == "single_task":
                continue
            axes[c] = v
        for p in self.params:
            if p.name == "time_scale":
                continue
            axes[p.name] = vals[p.name][self._condition_levels(p.name, p.by)]
        single = self.obs.known.get("single_task")
        w_b = None
        if self.experiment.train.n_tasks > 1:
            w_b = axes.get("w_b", jnp.broadcast_to(self.experiment.train.task_weights[1], (nc,)))
        if single is not None and w_b is not None:
            axes["w_b"] = jnp.where(single > 0.5, 0.0, w_b)
        # Task-2 parameters of single-task rows are NaN in the tables; any finite value gives
        # the same task-1 flow once w_b = 0, so replace NaNs by 0.5 (a harmless interior value).
        axes = {k: jnp.where(jnp.isnan(v), 0.5, v) for k, v in axes.items()}

        def one(ax):
            th = population_theory(apply_axes(self.experiment, ax), self.seeds, self.obs.grid, solver=self.solver, initial=self.initial)
            return jnp.where(th.diverged, jnp.nan, th.test_loss)

        return jax.vmap(one)(axes) if axes else jnp.broadcast_to(one({}), (nc,) + (self.obs.grid.shape[0], self.experiment.train.n_tasks))

    def predict(self, theta: Float[Array, " P"]) -> Float[Array, " n"]:
        """Predicted metric of every observation.

        Loss at time τ t by linear interpolation on the grid (exact at grid times when τ = 1);
        early-stopped rows take the minimum over grid times <= τ t and the interpolated end."""
        vals = self.unpack(theta)
        cur = self.curves(theta)
        o = self.obs
        tau = jnp.ones(o.time.shape)
        for p in self.params:
            if p.name == "time_scale":
                lev = o.level[p.by] if p.by is not None else jnp.zeros(o.time.shape, jnp.int32)
                tau = vals[p.name][lev]
        tt = tau * o.time
        rows = cur[o.condition, :, o.task]  # (n, T)
        grid = o.grid
        at = jax.vmap(lambda r, t: jnp.interp(t, grid, r))(rows, tt)
        before = jnp.min(jnp.where(grid[None, :] <= tt[:, None] * (1 + 1e-6), rows, jnp.inf), axis=1)
        return jnp.where(o.early_stopped, jnp.minimum(at, before), at)

    def objective(self, theta: Float[Array, " P"]) -> Float[Array, ""]:
        """Weighted squared error ½ Σ ((pred − value)/se)², or the Gaussian negative log-likelihood
        with variance se² + exp(2 θ_noise) (θ_noise: the last entry of θ) up to a constant."""
        res = self.predict(theta) - self.obs.value
        if self.loss == "gaussian":
            var = self.obs.se**2 + jnp.exp(2 * theta[-1])
            return 0.5 * jnp.sum(res**2 / var + jnp.log(var))
        return 0.5 * jnp.sum((res / self.obs.se) ** 2)


def make_problem(
    experiment: Experiment,
    obs: Observations,
    params: Sequence[Param],
    *,
    seeds: Seeds | None = None,
    solver: PopulationSolver | None = None,
    initial: str = "quenched",
    loss: str = "wls",
) -> FitProblem:
    """The `FitProblem` of fitting `params` of `experiment` to `obs`.

    **Raises:** `ValueError` before any solve: no or repeated parameters, a task of `obs` beyond
    the experiment's tasks, a `by` column missing from `obs` or mixed within one theory solve,
    an `init` of the wrong length, or an unknown `loss`."""
    seeds = Seeds(0) if seeds is None else seeds
    solver = PopulationSolver(n_quad=512, n_quad_eval=4096, rtol=1e-4, atol=1e-6, smooth_loss=True) if solver is None else solver
    if loss not in ("wls", "gaussian"):
        raise ValueError(f"loss={loss!r} is not one of ['wls', 'gaussian']")
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise ValueError(f"parameters {names} are not distinct")
    if not names:
        raise ValueError("no free parameters: pass at least one Param (CLI: --free NAME ...)")
    n_tasks = experiment.train.n_tasks
    top = int(np.max(np.asarray(obs.task))) + 1
    if top > n_tasks:
        # indexing the theory's task axis out of range would silently read the last task
        raise ValueError(f"the observations have task {top}, but the experiment has {n_tasks} tasks (1..{n_tasks}): "
                         f"drop those rows (CLI: --query 'task <= {n_tasks}') or use the experiment of the runs")
    n_levels = []
    for p in params:
        if p.by is not None and p.by not in obs.level:
            raise ValueError(f"Param {p.name!r} varies by {p.by!r}, which is not a `by` column of the observations")
        n = 1 if p.by is None else int(np.max(np.asarray(obs.level[p.by]))) + 1
        if p.by is not None and p.name != "time_scale":
            lev, cond = np.asarray(obs.level[p.by]), np.asarray(obs.condition)
            if any(len(set(lev[cond == c])) > 1 for c in range(obs.n_conditions)):
                raise ValueError(f"Param {p.name!r} varies by {p.by!r} but one theory solve mixes its levels: "
                                 f"pass split=[{p.by!r}] to observations_from_table")
        if len(p.init) not in (1, n):
            raise ValueError(f"Param {p.name!r}: init has {len(p.init)} values, need 1 or {n} (levels of {p.by!r})")
        n_levels.append(n)
    return FitProblem(experiment, seeds, obs, tuple(params), tuple(n_levels), solver, initial, loss)


# ---------------------------------------------------------------------------------------------
# The fit


class FitResult(eqx.Module):
    """Result of `fit`.

    - `params`: name -> (levels,) fitted values (constrained units).
    - `stderr`: name -> (levels,) Laplace standard errors (delta method through the transform);
      NaN where the Hessian is not positive definite (an unidentifiable direction).
    - `theta`: (P,) unconstrained optimum; `covariance`: (P, P) Laplace covariance of θ (the
      inverse Hessian of the objective); `hessian`: (P, P).
    - `loss`: () objective at the optimum; `start_losses`: (S,) final objective of every start;
      `start_theta`: (S, P).
    - `n_steps`: () Adam + Levenberg–Marquardt (or Newton) iterations of the best start;
      `grad_norm`: () |∇θ objective| there; `decrement`: () Newton decrement gᵀH⁻¹g (squared
      remaining step in s.e. units); `converged`: () Hessian positive definite (identifiable)
      and gradient below gtol or decrement < 1e-2.
    - `n_obs`: number of observations; `chi2_dof`: 2·loss / (n_obs − P) for `loss="wls"`
      (≈ 1 when the standard errors are right and the model fits).
    - `dof`: degrees of freedom of the standard errors: ∞ when they come from the model
      (Laplace: the given `se` are exact), m − 1 when they are estimated from m replicates
      (`fit(obs_replicates=...)`); intervals then use Student-t quantiles (`interval`).
    - `discrepancy`: (K,) s.d. τ_k (metric units, nats) of the model-discrepancy term of task k
      in the error bars (`fit(discrepancy=...)`): given, estimated, or 0 without one.
    - `jacobian`: (n, P) Jacobian of the whitened residuals (pred − value)/se at the optimum;
      `residuals`: (n,) those residuals (for `error_model`, which recomputes the error bars
      under another error model without refitting).
    """

    params: dict
    stderr: dict
    theta: Float[Array, " P"]
    covariance: Float[Array, "P P"]
    hessian: Float[Array, "P P"]
    loss: Float[Array, ""]
    start_losses: Float[Array, " S"]
    start_theta: Float[Array, "S P"]
    n_steps: Int[Array, ""]
    grad_norm: Float[Array, ""]
    converged: Bool[Array, ""]
    decrement: Float[Array, ""]
    n_obs: int = eqx.field(static=True)
    chi2_dof: Float[Array, ""]
    discrepancy: Float[Array, " K"]
    jacobian: Float[Array, "n P"]
    residuals: Float[Array, " n"]
    dof: float = eqx.field(static=True, default=math.inf)

    def interval(self, name: str, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """Two-sided Wald interval value ± q·stderr of `name` (each level), with q the Student-t
        quantile at `dof` degrees of freedom (normal for dof = ∞): an s.e. estimated from m
        replicates is itself uncertain, and ±1.96 s.e. would cover less than 95 %.

        **Returns:** `(lower, upper)`, each (levels,)."""
        q = _quantile(level, self.dof)
        v, se = np.asarray(self.params[name]), np.asarray(self.stderr[name])
        return v - q * se, v + q * se

    def table(self) -> pd.DataFrame:
        """One row per fitted value: name, level, value, stderr."""
        rows = []
        for k, v in self.params.items():
            for i, (x, s) in enumerate(zip(np.atleast_1d(np.asarray(v)), np.atleast_1d(np.asarray(self.stderr[k])))):
                rows.append({"param": k, "level": i, "value": float(x), "stderr": float(s)})
        return pd.DataFrame(rows)


class _Progress:
    """Progress lines `LABEL: message (elapsed s)` on stderr: forced ones always, the others at most
    one per `every` seconds (a step of a large fit takes seconds; its first step compiles)."""

    def __init__(self, label: str, enabled: bool, every: float = 5.0):
        self.label, self.enabled, self.every = label, bool(enabled), every
        self.t0 = perf_counter()
        self.last = -math.inf

    def __call__(self, message: str, force: bool = False) -> None:
        now = perf_counter()
        if self.enabled and (force or now - self.last >= self.every):
            print(f"{self.label}: {message} ({now - self.t0:.1f} s)", file=sys.stderr, flush=True)
            self.last = now


def _quiet(message: str, force: bool = False) -> None:
    """The `_Progress` of a run without progress output."""


def _quantile(level: float, dof: float) -> float:
    """Two-sided quantile: P(|T| <= q) = level for T ~ Student-t(dof) (normal if dof = ∞)."""
    if not 0 < level < 1:
        raise ValueError(f"level={level} must be in (0, 1)")
    p = 0.5 + level / 2
    return float(scipy.stats.norm.ppf(p) if not np.isfinite(dof) else scipy.stats.t.ppf(p, dof))


def _with_adjoint(problem: FitProblem, adjoint) -> FitProblem:
    return eqx.tree_at(lambda p: p.solver.adjoint, problem, adjoint)


@eqx.filter_jit
def _value_and_grad(problem: FitProblem, thetas: Float[Array, "S P"]):
    """Objective and its gradient (reverse mode through the solve) for a batch of θ."""
    return jax.vmap(jax.value_and_grad(problem.objective))(thetas)


@eqx.filter_jit
def _residuals_and_jacobian(problem: FitProblem, thetas: Float[Array, "S P"]):
    """Whitened residuals (pred − value)/se (S, n) and their Jacobian (S, n, P), forward mode.

    Forward mode costs P tangents however many observations there are, and diffrax's
    reverse-mode adjoints (custom VJPs) cannot be entered by forward mode, so the solve runs
    with `diffrax.ForwardMode()` here (same discretisation, exact derivatives)."""
    prob = _with_adjoint(problem, diffrax.ForwardMode())

    def res(th):
        return (prob.predict(th) - prob.obs.value) / prob.obs.se

    return jax.vmap(lambda th: (res(th), jax.jacfwd(res)(th)))(thetas)


@eqx.filter_jit
def _exact_hessian(problem: FitProblem, theta: Float[Array, " P"]):
    """Hessian of the objective, forward over forward (`jax.hessian` is forward over reverse,
    which cannot enter diffrax's reverse-mode custom VJP)."""
    prob = _with_adjoint(problem, diffrax.ForwardMode())
    return jax.jacfwd(jax.jacfwd(prob.objective))(theta)


def _best(v) -> str:
    v = np.asarray(v, float)
    return f"{np.min(v):.6g}" if np.isfinite(v).any() else "none finite"


def _adam(problem, thetas, n_steps, lr, report=_quiet):
    """Adam (optax) on every start; the best finite iterate of each start is kept, so a step
    into a region where the solve fails (NaN) is undone. `report`: a `_Progress`."""
    opt = optax.adam(lr)
    state = opt.init(thetas)
    best_v = jnp.full(thetas.shape[0], jnp.inf)
    best = thetas
    th = thetas
    for i in range(n_steps):
        v, g = _value_and_grad(problem, th)
        ok = jnp.isfinite(v) & (v < best_v)
        best = jnp.where(ok[:, None], th, best)
        best_v = jnp.where(ok, v, best_v)
        report(f"Adam step {i + 1}/{n_steps}: best objective {_best(best_v)}", force=i in (0, n_steps - 1))
        g = jnp.where(jnp.isfinite(g), g, 0.0)
        u, state = opt.update(g, state, th)
        th = optax.apply_updates(th, u)
    return best, best_v


def _levenberg_marquardt(problem, thetas, n_steps, gtol, free=None, report=_quiet):
    """Levenberg–Marquardt on ½|r(θ)|² for every start (small P x P systems in NumPy).

    Gauss–Newton steps (JᵀJ + λ diag(JᵀJ)) δ = −Jᵀr with λ adapted per start; converges
    quadratically on small-residual problems, and its Jacobian costs P forward tangents in one
    compiled program (an L-BFGS line search would compile the objective a second time).
    `free`: optional (P,) bool mask; coordinates outside it stay at their start value (profiles).
    The returned gradient is zero in the fixed coordinates. `report`: a `_Progress`."""
    th = np.asarray(thetas, float)
    S, P = th.shape
    free = np.ones(P, bool) if free is None else np.asarray(free, bool)
    fi = np.flatnonzero(free)
    lam = np.full(S, 1e-2)
    r, J = (np.asarray(a, float) for a in _residuals_and_jacobian(problem, jnp.asarray(th)))
    f = 0.5 * np.sum(r**2, 1)
    f = np.where(np.isfinite(f), f, np.inf)
    steps = np.zeros(S, int)
    report(f"Levenberg-Marquardt start: best objective {_best(f)}", force=True)
    for it in range(n_steps):
        g = np.einsum("snp,sn->sp", J, r) * free
        # a start stops when its gradient is small or no damping finds a decrease (noise floor)
        active = np.isfinite(f) & (np.linalg.norm(np.nan_to_num(g), axis=1) > gtol) & (lam < 1e8)
        if not active.any():
            break
        report(f"Levenberg-Marquardt step {it + 1}/{n_steps}: best objective {_best(f)}, "
               f"{int(active.sum())} of {S} starts still moving")
        A = np.einsum("snp,snq->spq", J, J)
        A = np.nan_to_num(A)
        D = np.einsum("spp->sp", A) + 1e-12
        trial = th.copy()
        for s in np.flatnonzero(active):
            M = (A[s] + lam[s] * np.diag(D[s]))[np.ix_(fi, fi)]
            try:
                trial[s, fi] = th[s, fi] - np.linalg.solve(M, np.nan_to_num(g[s, fi]))
            except np.linalg.LinAlgError:
                lam[s] *= 10
        r2, J2 = (np.asarray(a, float) for a in _residuals_and_jacobian(problem, jnp.asarray(trial)))
        f2 = 0.5 * np.sum(r2**2, 1)
        better = active & np.isfinite(f2) & (f2 < f)
        th = np.where(better[:, None], trial, th)
        r = np.where(better[:, None], r2, r)
        J = np.where(better[:, None, None], J2, J)
        f = np.where(better, f2, f)
        lam = np.where(better, np.maximum(lam / 3, 1e-9), np.where(active, lam * 4, lam))
        steps += active
    g = np.einsum("snp,sn->sp", J, r) * free
    return th, f, g, J, steps, r


def fit(
    problem: FitProblem,
    *,
    n_starts: int = 4,
    start_spread: float = 0.5,
    starts: Float[Array, "S P"] | None = None,
    n_adam: int = 40,
    adam_lr: float = 0.05,
    n_newton: int = 30,
    gtol: float = 1e-6,
    hessian: str | None = None,
    obs_covariance=None,
    obs_replicates=None,
    discrepancy=None,
    discrepancy_length: float = math.inf,
    key=None,
    progress: bool = False,
) -> FitResult:
    """Fit the free parameters of `problem` (see `make_problem`, `observations_from_table`).

    **Arguments:**

    - `n_starts`, `start_spread`: multi-start: the `Param` inits plus `n_starts − 1` draws
      N(init, start_spread²) in the unconstrained coordinates; all starts run at once (vmap).
      Or pass `starts` (S, P) explicitly (unconstrained θ, see `FitProblem.pack`).
    - `n_adam`, `adam_lr`: Adam steps (optax; robust far from the optimum; gradients by
      reverse mode through the solve with the solver's adjoint).
    - `n_newton`, `gtol`: second-order polish until |∇θ objective| < `gtol`:
      Levenberg–Marquardt with the forward-mode Jacobian of the residuals (`loss="wls"`), or
      damped Newton with the exact Hessian (`loss="gaussian"`).
    - `hessian`: for the Laplace covariance: `"gauss-newton"` (JᵀWJ, the Fisher information of
      the weighted least-squares model; default for `"wls"`) or `"exact"` (forward-over-forward
      Hessian of the objective; default for `"gaussian"`).
    - `obs_covariance`: optional (n, n) covariance of the observation errors (e.g. of seed-mean
      curves, estimated from the seeds: points of one curve share their seeds, so their errors
      are strongly correlated in time). Then the error bars are the sandwich
      H⁻¹ (Jᵀ C J) H⁻¹ (C: the covariance of the whitened residuals) instead of H⁻¹, which
      assumes independent errors with s.d. `se` (`loss="wls"` only).
    - `obs_replicates`: optional (m, n) replicate observations whose mean is `obs.value`
      (e.g. the m per-seed curves behind seed-mean curves, rows in the table's order). The
      error bars are then the cluster-robust sandwich with C = cov(replicates) / m: each
      replicate (seed) is one independent cluster however strongly its points are correlated
      in time, and the variance of every fitted value is the seed variance of its linearised
      estimate, with m − 1 degrees of freedom (`FitResult.dof`; use `FitResult.interval`).
      Exclusive with `obs_covariance`.
    - `discrepancy`: model discrepancy in the error bars (`loss="wls"`): `None` (none), a s.d.
      τ (metric units, e.g. nats; scalar or one per task), or `"estimate"`. The observations
      are then prediction(θ) + sampling error + δ, with δ_k(t) a zero-mean Gaussian process
      per task and theory solve: the part of the simulation–theory difference that no
      replicate shows (finite learning rate, quadrature, finite-size corrections), which acts
      on every replicate alike. Its covariance τ_k² K_k enters the sandwich,
      V = H⁻¹ Jᵀ (C + Σ τ_k² K_k) J H⁻¹ (whitened); `"estimate"`: τ_k² from the residuals by
      the method of moments (`_error_covariance`; `FitResult.discrepancy` has the τ used).
      The point estimate does not change.
    - `discrepancy_length`: correlation length ℓ of δ_k in log t:
      corr = exp(−(log t − log t')²/2ℓ²); ∞ (default): a constant offset of each curve; 0:
      independent points (a nugget).
    - `key`: PRNG key of the start draws (default `jax.random.key(0)`).
    - `progress`: print progress to stderr (the plan, the first and last Adam step and every
      ~5 s: step i/n, best objective over the starts, elapsed time; the first step includes
      compiling the theory, which can take minutes). Default quiet; the CLI turns it on.

    **Returns:** `FitResult` of the best start (by objective).

    **Raises:** `ValueError` before any solve for an invalid argument (`n_starts` < 1,
    negative step counts or spread, `starts` of the wrong shape, unknown `hessian`, error
    models with `loss="gaussian"`, replicates of the wrong shape).
    """
    if starts is None and not (isinstance(n_starts, (int, np.integer)) and n_starts >= 1):
        raise ValueError(f"n_starts={n_starts!r} must be an integer >= 1 (CLI: --starts)")
    for name, v in (("n_adam", n_adam), ("n_newton", n_newton)):
        if not (isinstance(v, (int, np.integer)) and v >= 0):
            raise ValueError(f"{name}={v!r} must be an integer >= 0 (CLI: --{'adam' if name == 'n_adam' else 'newton'}-steps)")
    if not (start_spread >= 0 and math.isfinite(start_spread)):
        raise ValueError(f"start_spread={start_spread!r} must be finite and >= 0")
    hessian = hessian or ("gauss-newton" if problem.loss == "wls" else "exact")
    if hessian not in ("gauss-newton", "exact"):
        raise ValueError(f"hessian={hessian!r} is not one of ['gauss-newton', 'exact']")
    if hessian == "gauss-newton" and problem.loss != "wls":
        raise ValueError("hessian='gauss-newton' needs loss='wls'")
    if (obs_covariance is not None or obs_replicates is not None or discrepancy is not None) and problem.loss != "wls":
        raise ValueError("obs_covariance, obs_replicates and discrepancy need loss='wls'")
    if obs_replicates is not None:  # check before the fit
        if obs_covariance is not None:
            raise ValueError("pass obs_covariance or obs_replicates, not both")
        _replicate_covariance(problem, obs_replicates)
    _discrepancy_arg(discrepancy, problem.experiment.train.n_tasks)
    theta0 = problem.initial_theta()
    if starts is None:
        key = jax.random.key(0) if key is None else key
        jitter = start_spread * jax.random.normal(key, (n_starts - 1, theta0.shape[0]))
        starts = jnp.concatenate([theta0[None], theta0[None] + jitter], 0)
    starts = jnp.asarray(starts, float)
    if starts.ndim != 2 or starts.shape[0] < 1 or starts.shape[1] != theta0.shape[0]:
        raise ValueError(f"starts must be (S >= 1, P={theta0.shape[0]}) unconstrained vectors, got {starts.shape}")
    S = starts.shape[0]
    report = _Progress("fit", progress)
    second = "Levenberg-Marquardt" if problem.loss == "wls" else "Newton"
    report(f"{S} starts x ({n_adam} Adam + <= {n_newton} {second} steps), {int(problem.obs.value.shape[0])} observations, "
           f"{problem.obs.n_conditions} theory solves per evaluation; the first step compiles (can take minutes)", force=True)
    ths = _adam(problem, starts, n_adam, adam_lr, report)[0] if n_adam else starts
    if problem.loss == "wls":
        th, vals, grads, J, steps, resid = _levenberg_marquardt(problem, ths, n_newton, gtol, report=report)
    else:
        th, vals, grads, steps = _newton(problem, ths, n_newton, gtol, report=report)
        J = resid = None
    vals_ = np.where(np.isfinite(vals), vals, np.inf)
    b = int(np.argmin(vals_))
    report(f"done: objective {_best(vals)} (best of {S} starts: start {b + 1}/{S})", force=True)
    theta = jnp.asarray(th[b])
    if hessian == "exact":
        H = np.asarray(_exact_hessian(problem, theta), float)
    else:
        H = J[b].T @ J[b]
    H = 0.5 * (H + H.T)
    finite = bool(np.all(np.isfinite(H)))
    w, V = np.linalg.eigh(H if finite else np.eye(H.shape[0]))  # small, un-vmapped
    pd_ok = finite and bool(np.all(w > 1e-10 * max(1.0, float(np.abs(w).max()))))
    cov = V @ np.diag(1.0 / np.where(w > 0, w, np.nan)) @ V.T if pd_ok else np.full_like(H, np.nan)
    n_obs = int(problem.obs.value.shape[0])
    gnorm = float(np.linalg.norm(grads[b]))
    # Newton decrement gᵀ H⁻¹ g: the squared length, in units of the Laplace s.e., of the step
    # that would still be taken; < 1e-2 means the optimum is reached to < 0.1 s.e. even when the
    # solver's step-size noise keeps the raw gradient from reaching gtol.
    decrement = float(grads[b] @ cov @ grads[b]) if pd_ok else float("nan")
    n_tasks = problem.experiment.train.n_tasks
    values = problem.unpack(theta)
    chi2 = 2 * vals[b] / max(1, n_obs - problem.size) if problem.loss == "wls" else np.nan
    result = FitResult(
        params=values,
        stderr=_stderr(problem, theta, cov),
        theta=theta,
        covariance=jnp.asarray(cov),
        hessian=jnp.asarray(H),
        loss=jnp.asarray(vals[b]),
        start_losses=jnp.asarray(vals),
        start_theta=jnp.asarray(th),
        n_steps=jnp.asarray(int(steps[b]) + n_adam),
        grad_norm=jnp.asarray(gnorm),
        converged=jnp.asarray(pd_ok and (gnorm < gtol or decrement < 1e-2)),
        decrement=jnp.asarray(decrement),
        n_obs=n_obs,
        chi2_dof=jnp.asarray(chi2),
        discrepancy=jnp.zeros(n_tasks),
        jacobian=jnp.asarray(J[b] if J is not None else np.full((n_obs, theta.shape[0]), np.nan)),
        residuals=jnp.asarray(resid[b] if resid is not None else np.full(n_obs, np.nan)),
    )
    if obs_covariance is None and obs_replicates is None and discrepancy is None:
        return result
    return error_model(problem, result, obs_covariance=obs_covariance, obs_replicates=obs_replicates,
                       discrepancy=discrepancy, discrepancy_length=discrepancy_length)


def _stderr(problem: FitProblem, theta, cov) -> dict:
    """Delta method through the transforms: se(value) = |d value/d u| se(u)."""
    stderr, i = {}, 0
    for p, n in zip(problem.params, problem.n_levels):
        jac = np.asarray(jax.vmap(jax.grad(lambda u, t=p.transform: _forward(t, u)))(theta[i : i + n]))
        stderr[p.name] = jnp.asarray(np.abs(jac) * np.sqrt(np.clip(np.diag(np.asarray(cov))[i : i + n], 0, None)))
        i += n
    return stderr


def _whitened(problem: FitProblem, obs_covariance) -> np.ndarray:
    se = np.asarray(problem.obs.se, float)
    return np.asarray(obs_covariance, float) / np.outer(se, se)


def _replicate_covariance(problem: FitProblem, obs_replicates) -> tuple[np.ndarray, int]:
    rep = np.asarray(obs_replicates, float)
    if rep.ndim != 2 or rep.shape[1] != problem.obs.value.shape[0] or rep.shape[0] < 2:
        raise ValueError(f"obs_replicates must be (m >= 2, n={problem.obs.value.shape[0]}), got {rep.shape}")
    return np.cov(rep, rowvar=False) / rep.shape[0], rep.shape[0] - 1


def _discrepancy_arg(discrepancy, n_tasks: int):
    """None -> zeros; "estimate" -> None (estimate); number or (K,) -> (K,) given τ."""
    if discrepancy is None:
        return jnp.zeros(n_tasks)
    if isinstance(discrepancy, str):
        if discrepancy != "estimate":
            raise ValueError(f"discrepancy={discrepancy!r} must be None, 'estimate' or a s.d. (scalar or one per task)")
        return None
    tau = np.broadcast_to(np.asarray(discrepancy, float), (n_tasks,))
    if np.any(~np.isfinite(tau)) or np.any(tau < 0):
        raise ValueError(f"discrepancy={discrepancy!r} must be >= 0")
    return jnp.asarray(tau)


def _discrepancy_kernels(obs: Observations, n_tasks: int, length: float) -> Float[Array, "K n n"]:
    """Correlation of the discrepancy δ_k between rows: one curve δ_k(t) per task k and theory
    solve (condition), corr(t, t') = exp(−(log t − log t')² / 2ℓ²); ℓ = ∞: a constant offset of
    each curve, ℓ = 0: independent points (a nugget)."""
    if not length >= 0:
        raise ValueError(f"discrepancy_length={length} must be >= 0")
    lt = jnp.log(jnp.maximum(obs.time, 1e-12))
    d2 = (lt[:, None] - lt[None, :]) ** 2
    if math.isinf(length):
        corr = jnp.ones_like(d2)
    elif length == 0:
        corr = jnp.eye(d2.shape[0])
    else:
        corr = jnp.exp(-0.5 * d2 / length**2)
    same = obs.condition[:, None] == obs.condition[None, :]
    return jnp.stack([corr * same * ((obs.task == k)[:, None] & (obs.task == k)[None, :]) for k in range(n_tasks)])


@jax.jit
def _error_covariance(J, r, C, kernels, tau):
    """Covariance of θ̂ with a model-discrepancy term (jit-compiled; everything whitened by se).

    Model: value = prediction(θ) + ε + δ, ε the sampling error with whitened covariance C
    (None: I, the Laplace model), δ = Σ_k δ_k the model discrepancy, a zero-mean Gaussian
    process per task with covariance τ_k² K_k (`_discrepancy_kernels`, here divided by se seᵀ).
    The estimate is linear in the errors to first order, θ̂ − θ = −H⁻¹Jᵀ(ε + δ) (H = JᵀJ), so

        V = H⁻¹ Jᵀ (C + Σ_k τ_k² K_k) J H⁻¹.

    τ = None: τ_k² by the method of moments from the residuals r (the random-effects estimator
    of DerSimonian–Laird, generalised to correlated errors): r = −R(ε + δ), R = I − J H⁻¹Jᵀ, so
    E[rᵀE_j r] = tr(E_j R C R) + Σ_k τ_k² tr(E_j R K_k R) (E_j: rows of task j), a K x K linear
    system for τ²; solved by pseudo-inverse and clipped at 0 (unbiased before clipping).

    **Returns:** `(V, τ)`."""
    n, P = J.shape
    # J = U S Vᵀ: H⁻¹Jᵀ = V S⁻¹ Uᵀ and R = I − U Uᵀ, conditioned as J, not as JᵀJ (float32)
    U, S, Vt = jnp.linalg.svd(J, full_matrices=False)
    A_ = Vt.T @ (U / S).T  # (P, n): θ̂ − θ = −A_ (ε + δ)
    Cw = jnp.eye(n) if C is None else C
    if tau is None:
        R = jnp.eye(n) - U @ U.T
        sel = [jnp.diagonal(kk) > 0 for kk in kernels]  # rows of task k: nonzero diagonal of its kernel
        dRCR = jnp.diagonal(R @ Cw @ R)
        dRKR = [jnp.diagonal(R @ kk @ R) for kk in kernels]
        b = jnp.stack([jnp.sum(jnp.where(s, r**2 - dRCR, 0.0)) for s in sel])
        A = jnp.stack([jnp.stack([jnp.sum(jnp.where(s, d, 0.0)) for d in dRKR]) for s in sel])
        tau2 = jnp.clip(jnp.linalg.pinv(A) @ b, 0.0, None)
        tau = jnp.sqrt(tau2)
    meat = Cw + jnp.einsum("k,kij->ij", tau**2, kernels)
    V = A_ @ meat @ A_.T
    return 0.5 * (V + V.T), tau


def error_model(
    problem: FitProblem,
    result: FitResult,
    *,
    obs_covariance=None,
    obs_replicates=None,
    discrepancy=None,
    discrepancy_length: float = math.inf,
) -> FitResult:
    """The error bars of a `loss="wls"` fit under another error model, without refitting.

    Same arguments as `fit` (`obs_covariance`, `obs_replicates`, `discrepancy`,
    `discrepancy_length`); uses the Gauss–Newton Jacobian and residuals stored in `result`
    (the sandwich's bread is the Gauss–Newton H = JᵀJ also when the fit used `hessian="exact"`).

    **Returns:** `result` with `covariance`, `stderr`, `discrepancy` and `dof` replaced."""
    if problem.loss != "wls":
        raise ValueError("error_model needs loss='wls'")
    dof = math.inf
    if obs_replicates is not None:
        if obs_covariance is not None:
            raise ValueError("pass obs_covariance or obs_replicates, not both")
        obs_covariance, dof = _replicate_covariance(problem, obs_replicates)
    n_tasks = problem.experiment.train.n_tasks
    J = np.asarray(result.jacobian, float)
    C = None if obs_covariance is None else jnp.asarray(_whitened(problem, obs_covariance))
    se = problem.obs.se
    kern = _discrepancy_kernels(problem.obs, n_tasks, discrepancy_length) / (se[:, None] * se[None, :])
    cov, tau = _error_covariance(jnp.asarray(J), result.residuals, C, kern, _discrepancy_arg(discrepancy, n_tasks))
    cov = np.asarray(cov, float)
    if not np.all(np.isfinite(np.asarray(result.covariance))):
        cov = np.full_like(cov, np.nan)
    return dataclasses.replace(result, covariance=jnp.asarray(cov), stderr=_stderr(problem, result.theta, cov),
                               discrepancy=jnp.asarray(tau, float), dof=float(dof))


def _newton(problem, thetas, n_steps, gtol, report=_quiet):
    """Damped Newton with the exact Hessian (forward over forward) for non-least-squares losses."""
    th = np.asarray(thetas, float)
    S = th.shape[0]
    v, g = (np.asarray(a, float) for a in _value_and_grad(problem, jnp.asarray(th)))
    lam = np.full(S, 1e-3)
    steps = np.zeros(S, int)
    report(f"Newton start: best objective {_best(v)}", force=True)
    for it in range(n_steps):
        active = np.isfinite(v) & (np.linalg.norm(np.nan_to_num(g), axis=1) > gtol)
        if not active.any():
            break
        report(f"Newton step {it + 1}/{n_steps}: best objective {_best(v)}, {int(active.sum())} of {S} starts still moving")
        trial = th.copy()
        for s in np.flatnonzero(active):
            H = np.asarray(_exact_hessian(problem, jnp.asarray(th[s])), float)
            H = 0.5 * (H + H.T)
            w, V = np.linalg.eigh(H)
            w = np.maximum(np.abs(w), 1e-8) + lam[s] * np.abs(w).max()
            trial[s] = th[s] - V @ ((V.T @ g[s]) / w)
        v2, g2 = (np.asarray(a, float) for a in _value_and_grad(problem, jnp.asarray(trial)))
        better = active & np.isfinite(v2) & (v2 < v)
        th = np.where(better[:, None], trial, th)
        v, g = np.where(better, v2, v), np.where(better[:, None], g2, g)
        lam = np.where(better, np.maximum(lam / 3, 1e-9), np.where(active, lam * 4, lam))
        steps += active
    return th, v, g, steps


class Profile(eqx.Module):
    """Profile of a fit's objective in one parameter (see `profile`).

    - `name`, `index`: the parameter and its level.
    - `values`: (G,) sorted grid of constrained values (the fitted value included; may repeat).
    - `objective`: (G,) minimum of the objective over every other parameter at each value.
    - `deviance`: (G,) adjusted deviance κ · 2 (objective − its minimum), κ = (H⁻¹)ᵢᵢ / Vᵢᵢ:
      H the Gauss–Newton Hessian of the working objective, V the fit's covariance (sandwich or
      Laplace), both in the unconstrained coordinate. κ rescales the working objective's
      curvature to the sampling variance of the estimate (the "adjusted profile likelihood"),
      so deviance ≈ (u − û)² / Vᵢᵢ near the optimum; κ = 1 for a Laplace fit, where the
      deviance is the likelihood-ratio statistic.
    - `estimate`: () the fitted value; `scale`: () κ; `dof`: as `FitResult.dof`.
    - `n_steps`: (G,) Levenberg–Marquardt iterations of each grid point.
    """

    name: str = eqx.field(static=True)
    index: int = eqx.field(static=True)
    values: Float[Array, " G"]
    objective: Float[Array, " G"]
    deviance: Float[Array, " G"]
    estimate: Float[Array, ""]
    scale: Float[Array, ""]
    n_steps: Int[Array, " G"]
    dof: float = eqx.field(static=True, default=math.inf)

    def interval(self, level: float = 0.95) -> tuple[float, float, bool, bool]:
        """Profile interval {v : deviance(v) <= q²}, q the two-sided Student-t (dof) quantile.

        √deviance is interpolated linearly between grid points, which is exact for a quadratic
        profile (√deviance = |u − û| / √Vᵢᵢ is piecewise linear with its kink at the estimate,
        a grid point). The set is reported by its outermost ends, so a second basin (e.g. the
        mirror r → −r when the curves hardly depend on the sign of r) widens the interval.

        **Returns:** `(lower, upper, lower_open, upper_open)`; `*_open` is True when the set
        reaches that end of the grid (the data do not bound the parameter there within it)."""
        q = _quantile(level, self.dof)
        v, first = np.unique(np.asarray(self.values, float), return_index=True)  # clipped grids repeat ends
        root = np.sqrt(np.clip(np.nan_to_num(np.asarray(self.deviance, float)[first], nan=np.inf), 0, None))
        if v.shape[0] == 1:
            return float(v[0]), float(v[0]), True, True
        dense = np.linspace(v[0], v[-1], 4001)
        inside = np.interp(dense, v, np.minimum(root, 1e6)) <= q
        if not inside.any():  # cannot happen with the estimate on the grid; be safe
            e = float(self.estimate)
            return e, e, False, False
        return float(dense[inside].min()), float(dense[inside].max()), bool(inside[0]), bool(inside[-1])


def profile(
    problem: FitProblem,
    result: FitResult,
    name: str,
    values,
    *,
    index: int = 0,
    n_newton: int = 10,
    gtol: float = 1e-6,
) -> Profile:
    """Profile the objective of a `fit` in one parameter: re-fit every other parameter at each
    value of `values` (Levenberg–Marquardt from the optimum, all values at once).

    Why: the Wald interval value ± q·s.e. relies on the objective being quadratic in the
    parameter's unconstrained coordinate. Where the curves depend on r only weakly or
    nonlinearly (task 2 barely learned; near r = 0 if the sign of r hardly matters; tanh
    saturating near ±1) the Laplace s.e. misstates the uncertainty; the profile interval follows
    the objective's real shape (`Profile.interval`), and is open when the data do not bound it.

    **Arguments:** `problem`, `result`: a `loss="wls"` problem and its `fit`; `name`, `index`:
    the parameter (and level); `values`: (G,) constrained values (the fitted one is added);
    `n_newton`, `gtol`: as in `fit`.

    **Returns:** `Profile`.
    """
    if problem.loss != "wls":
        raise ValueError("profile needs loss='wls'")
    i = 0
    for p, n in zip(problem.params, problem.n_levels):
        if p.name == name:
            if not 0 <= index < n:
                raise ValueError(f"index={index} out of range for {name!r} ({n} levels)")
            i += index
            break
        i += n
    else:
        raise ValueError(f"{name!r} is not a free parameter of the problem ({[p.name for p in problem.params]})")
    theta = np.asarray(result.theta, float)
    est = float(np.asarray(result.params[name])[index])
    # sorted, not deduplicated: a fixed number of grid points keeps one compiled Jacobian
    grid = np.sort(np.concatenate([np.asarray(values, float).ravel(), [est]]))
    starts = np.repeat(theta[None], grid.shape[0], 0)
    starts[:, i] = _inverse(p.transform, grid)
    free = np.ones(theta.shape[0], bool)
    free[i] = False
    _, f, _, _, steps, _ = _levenberg_marquardt(problem, jnp.asarray(starts), n_newton, gtol, free=free)
    f = np.where(np.isfinite(f), f, np.nan)
    # a grid point may find a lower objective than the fit (another basin): measure from the lowest
    f_min = float(np.nanmin(np.append(f, float(result.loss))))
    H, V = np.asarray(result.hessian, float), np.asarray(result.covariance, float)
    try:
        kappa = float(np.linalg.inv(H)[i, i] / V[i, i])
    except np.linalg.LinAlgError:
        kappa = float("nan")
    kappa = kappa if np.isfinite(kappa) and kappa > 0 else 1.0
    dev = np.clip(2 * (f - f_min) * kappa, 0, None)
    return Profile(name=name, index=index, values=jnp.asarray(grid), objective=jnp.asarray(f), deviance=jnp.asarray(dev),
                   estimate=jnp.asarray(est), scale=jnp.asarray(kappa), n_steps=jnp.asarray(steps), dof=result.dof)


def fit_table(
    experiment: Experiment,
    table: pd.DataFrame,
    params: Sequence[Param],
    *,
    seeds: Seeds | None = None,
    solver: PopulationSolver | None = None,
    initial: str = "quenched",
    loss: str = "wls",
    mapping: dict | None = None,
    **fit_kwargs,
) -> tuple[FitResult, FitProblem]:
    """Convenience: `observations_from_table(table, **mapping)` → `make_problem` → `fit`.

    `mapping`: keyword arguments of `observations_from_table` (column names, `se`, `by`, ...);
    `by` defaults to the `by` columns of `params`, `known` to every parameter column of the
    table that is not fitted. `fit_kwargs` go to `fit` (e.g. `progress=True`).

    **Raises:** `ValueError` before any solve for everything `observations_from_table`,
    `make_problem` and `fit` refuse, and when the table's `depth` or `width` column (the
    student of the runs) differs from `experiment`'s: the theory would describe another network."""
    for col, have in (("depth", experiment.student.depth), ("width", experiment.student.width)):
        if col in table and not (col == "width" and experiment.student.depth == 0):  # width unused at depth 0
            vals = np.unique(np.asarray(table[col], float))
            vals = vals[~np.isnan(vals)]
            if vals.size == 1 and vals[0] != have:
                raise ValueError(f"column {col!r} of the table is {vals[0]:g}, but the experiment's student.{col} is {have}: "
                                 f"use the config of the runs (CLI: --config, or --set student.{col}={vals[0]:g})")
    seeds = Seeds(0) if seeds is None else seeds
    solver = PopulationSolver(n_quad=512, n_quad_eval=4096, rtol=1e-4, atol=1e-6, smooth_loss=True) if solver is None else solver
    mapping = dict(mapping or {})
    mapping.setdefault("by", sorted({p.by for p in params if p.by is not None}))
    free = {p.name for p in params}
    mapping.setdefault("split", sorted({p.by for p in params if p.by is not None and p.name != "time_scale"}))
    mapping.setdefault("known", [c for c in KNOWN_COLUMNS if c in table and c not in free])
    obs, _ = observations_from_table(table, **mapping)
    kw = {} if solver is None else {"solver": solver}
    problem = make_problem(experiment, obs, params, seeds=seeds, initial=initial, loss=loss, **kw)
    return fit(problem, **fit_kwargs), problem


def log10_stderr(value, stderr):
    """Standard error of log10(value) from that of value (delta method)."""
    return np.asarray(stderr) / (np.asarray(value) * math.log(10.0))
