"""Optimal design by differentiating a theory (docs/fitting.md §5): by default the theory of
the experiment's data (the finite-data theory for finite training sets, the population theory
for online data; `design_model`), or any differentiable model (`model=...`).

- `optimal_task_weight`: the loss weight w_2 on the auxiliary task(s) that minimises task 1's
  early-stopped test loss.
- `optimal_aux_data_size`: the auxiliary data size n_2: continuous through the finite-data
  theory for full-batch runs (α_2 = n_2 / N); in the paper protocol n_2 = m n_1 with task 2
  taking m steps per task-1 step (rate ρ_2 = m w_2, docs/theory.md §3), which is all the
  population (infinite-data) theory knows about n_2 — the finite-data theory also sees
  task 2's training set (its overfitting).
- `optimal_stopping_time`: the time t* = lr x steps minimising task 1's test loss.

Derivatives come from forward mode (one tangent for one design variable): through the diffrax
solve with `diffrax.ForwardMode`, through the finite-data theory's fixed point by its implicit
custom JVP.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._custom_types import Array, Bool, Float
from ._experiment import Experiment, Seeds
from ._fitting.progress import _Progress
from ._fitting.problem import fit_model
from ._model import AbstractModel
from ._population import PopulationSolver
from ._sweep import apply_axes

class DesignResult(eqx.Module):
    """Result of a design optimisation.

    - `value`: () optimal design variable (w_2, or n_2 for `optimal_aux_data_size`).
    - `loss`: () task-1 early-stopped test loss (nats) at `value`.
    - `baseline_value`, `baseline_loss`: () the default design (w_2 = 1; n_2 = n_1) and its loss.
    - `grid`, `grid_loss`: (G,) the evaluated designs and their losses; `grid_slope`: (G,)
      d loss / d log(design) there (NaN where not computed).
    - `on_bound`: () True when the optimum is at either end of the searched range (to the grid
      resolution: no evaluated design beyond it was better), so the true optimum may lie
      outside it: widen the range (`bounds`, `max_multiple`).
    """

    value: Float[Array, ""]
    loss: Float[Array, ""]
    baseline_value: Float[Array, ""]
    baseline_loss: Float[Array, ""]
    grid: Float[Array, " G"]
    grid_loss: Float[Array, " G"]
    grid_slope: Float[Array, " G"]
    on_bound: Bool[Array, ""]


def _ts(experiment: Experiment, ts):
    if ts is None:
        tr = experiment.train
        ts = tr.learning_rate * jnp.asarray(tr.eval_steps[1:], float)
    return jnp.asarray(ts, float)


def design_model(model: AbstractModel | None = None, solver: PopulationSolver | None = None,
                 initial: str = "quenched", experiment: Experiment | None = None) -> AbstractModel:
    """The theory a design helper runs: the same choice as a fit's (`fit_model`): `model`; else
    `PopulationTheory(solver, initial)` with a given `solver`; else the finite-data theory
    (`mtjax.fit_solver()`) for finite training sets and the population theory (smooth loss) for
    online data."""
    return fit_model(model, solver, initial, experiment)


def early_stopped_loss(experiment: Experiment, seeds: Seeds, ts, *, solver: PopulationSolver | None = None,
                       initial: str = "quenched", task: int = 0, model: AbstractModel | None = None) -> Float[Array, ""]:
    """min over the save times `ts` (t = lr x steps) of task `task`'s theory test loss (the
    theory: `model`, default the population theory with `solver`, `initial`).

    `seeds` with a leading axis (M,): the mean over the M realisations (teacher readouts,
    initial student) of each one's early-stopped loss — what M simulations, each stopped at
    its own best time, average to. One realisation's value can differ from that mean by more
    than a design's effect (docs/fitting.md §6)."""
    model = design_model(model, solver, initial, experiment)

    def one(s):
        loss, diverged = model.test_loss_at(experiment, s, ts)
        return jnp.where(diverged, jnp.nan, jnp.min(loss[:, task]))

    return one(seeds) if jnp.ndim(seeds.teacher) == 0 else jnp.mean(jax.vmap(one)(seeds))


@eqx.filter_jit
def _loss_and_slope(experiment, seeds, ts, model, axis, log_v):
    """Early-stopped task-1 loss and its derivative in log v for the design variable `axis`
    (w_b, ntrain_b) = exp(log v), for a batch of log v, by forward mode (one tangent)."""
    model = model.forward_mode()

    def f(lv):
        return early_stopped_loss(apply_axes(experiment, {axis: jnp.exp(lv)}), seeds, ts, model=model)

    return jax.vmap(lambda lv: jax.jvp(f, (lv,), (jnp.ones_like(lv),)))(log_v)


def _bracket_search(loss_and_slope, bounds, baseline: float, n_grid: int, n_refine: int, report, what: str) -> DesignResult:
    """Minimise a smooth 1-d design loss over `bounds` (log-uniform): `n_refine` + 1 rounds of
    `n_grid` points, each round keeping the bracket that the derivative's sign at the best point
    points into.  `loss_and_slope(log_v (G,)) -> (loss (G,), d loss/d log v (G,))`."""
    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    grid = np.linspace(lo, hi, n_grid)
    all_g, all_l, all_s = [], [], []
    report(f"{n_refine + 1} rounds of {n_grid} values of {what} in [{bounds[0]:g}, {bounds[1]:g}]; "
           "the first compiles the theory (can take minutes)", force=True)
    for r in range(n_refine + 1):
        loss, slope = (np.asarray(a, float) for a in loss_and_slope(jnp.asarray(grid)))
        all_g.append(grid), all_l.append(loss), all_s.append(slope)
        i = int(np.nanargmin(np.where(np.isfinite(loss), loss, np.inf)))
        report(f"round {r + 1}/{n_refine + 1}: {what} in [{np.exp(grid[0]):.4g}, {np.exp(grid[-1]):.4g}], "
               f"best {np.exp(grid[i]):.4g} (loss {loss[i]:.5g})", force=True)
        # Bracket the stationary point: the slope's sign says on which side of the best grid
        # point the minimum lies (at a bound, the bracket shrinks onto that bound).
        if slope[i] > 0 and i > 0:
            a, b = grid[i - 1], grid[i]
        elif slope[i] < 0 and i < n_grid - 1:
            a, b = grid[i], grid[i + 1]
        else:
            a, b = grid[max(i - 1, 0)], grid[min(i + 1, n_grid - 1)]
        grid = np.linspace(a, b, n_grid)
    g, l, s = (np.concatenate(x) for x in (all_g, all_l, all_s))
    base_l, _ = (np.asarray(x, float) for x in loss_and_slope(jnp.full(n_grid, np.log(baseline))))
    j = int(np.nanargmin(np.where(np.isfinite(l), l, np.inf)))
    order = np.argsort(g)
    # every round's grid keeps the bracket's ends exactly, so the bounds themselves were evaluated
    on_bound = bool(np.isclose(g[j], lo, rtol=0, atol=1e-12) or np.isclose(g[j], hi, rtol=0, atol=1e-12))
    report(f"baseline {what} = {baseline:g}: loss {base_l[0]:.5g}; optimum {what} = {np.exp(g[j]):.4g}"
           + (" (on the bound)" if on_bound else ""), force=True)
    return DesignResult(
        value=jnp.asarray(np.exp(g[j])), loss=jnp.asarray(l[j]),
        baseline_value=jnp.asarray(float(baseline)), baseline_loss=jnp.asarray(base_l[0]),
        grid=jnp.asarray(np.exp(g[order])), grid_loss=jnp.asarray(l[order]), grid_slope=jnp.asarray(s[order]),
        on_bound=jnp.asarray(on_bound),
    )  # fmt: skip


def _check_search(bounds, n_grid, n_refine, flags: str) -> None:
    if not (len(bounds) == 2 and 0 < bounds[0] < bounds[1] < np.inf):
        raise ValueError(f"bounds={tuple(bounds)} must satisfy 0 < lo < hi < inf (CLI: {flags})")
    if not (isinstance(n_grid, (int, np.integer)) and n_grid >= 3):
        raise ValueError(f"n_grid={n_grid!r} must be an integer >= 3")
    if not (isinstance(n_refine, (int, np.integer)) and n_refine >= 0):
        raise ValueError(f"n_refine={n_refine!r} must be an integer >= 0")


def optimal_task_weight(
    experiment: Experiment,
    seeds: Seeds | None = None,
    ts=None,
    *,
    bounds: tuple[float, float] = (1e-3, 10.0),
    n_grid: int = 9,
    n_refine: int = 3,
    solver: PopulationSolver | None = None,
    initial: str = "quenched",
    model: AbstractModel | None = None,
    progress: bool = False,
) -> DesignResult:
    """The loss weight w_2 (on tasks 2..K) in `bounds` minimising task 1's early-stopped test loss.

    **Arguments:**

    - `experiment`, `seeds`, `initial`, `solver`: as for `population_theory`; `seeds` with a
      leading axis (M,) optimises the mean over M realisations (`early_stopped_loss`).
    - `model`: the theory (any differentiable model); default (`design_model`): the finite-data
      theory for runs on finite training sets, the population theory for online runs or when a
      `solver` is given.
    - `ts`: save times (t = lr x steps) over which the early-stopped minimum is taken; default:
      the experiment's evaluation times.
    - `bounds`: search interval of w_2 (log-uniform grid of `n_grid` points).
    - `n_refine`: rounds of bracketing: each round evaluates `n_grid` points between the grid
      neighbours of the best point and keeps the sign change of the derivative d loss/d log w_2
      (forward mode through the solve), so the bracket shrinks ~`n_grid`-fold per round.
    - `progress`: print each round (i/n, range, best w_2 and its loss, elapsed time) to stderr;
      the first round includes compiling the theory. Default quiet; the CLI turns it on.

    **Returns:** `DesignResult` (baseline: w_2 = 1); `on_bound` flags an optimum at `bounds[0]`
    or `bounds[1]`.

    **Raises:** `ValueError` before any solve unless 0 < bounds[0] < bounds[1] < ∞,
    `n_grid` >= 3 and `n_refine` >= 0.
    """
    model = design_model(model, solver, initial, experiment)
    seeds = Seeds(0) if seeds is None else seeds
    _check_search(bounds, n_grid, n_refine, "--w-min, --w-max")
    ts = _ts(experiment, ts)
    report = _Progress("design w2", progress)
    return _bracket_search(lambda lv: _loss_and_slope(experiment, seeds, ts, model, "w_b", lv), bounds, 1.0, n_grid,
                           n_refine, report, "w_2")  # fmt: skip


@eqx.filter_jit
def _loss_at_multiples(experiment, seeds, ts, model, ws, n2):
    """Early-stopped task-1 loss at task-2 weights `ws` (G,) (the rates m w_2) and, for a model
    with training sets, task-2 data sizes `n2` (G,)."""

    def one(w, n):
        axes = {"w_b": w, **({"ntrain_b": n} if model.data_sizes else {})}
        return early_stopped_loss(apply_axes(experiment, axes), seeds, ts, model=model)

    return jax.vmap(one)(ws, n2)


def optimal_aux_data_size(
    experiment: Experiment,
    seeds: Seeds | None = None,
    ts=None,
    *,
    max_multiple: int = 8,
    bounds: tuple[float, float] | None = None,
    n_grid: int = 9,
    n_refine: int = 3,
    solver: PopulationSolver | None = None,
    initial: str = "quenched",
    model: AbstractModel | None = None,
    progress: bool = False,
) -> DesignResult:
    """The auxiliary data size n_2 (examples of tasks 2..K) minimising task 1's early-stopped loss.

    - Full-batch runs (`protocol="full_batch"`), through a theory with training sets (the
      finite-data theory, the default there): n_2 is continuous (α_2 = n_2 / N in the theory),
      searched log-uniformly in `bounds` (default (n_1 / 4, `max_multiple` n_1)) by bracketing
      with the derivative d loss / d log n_2 (`n_grid` points, `n_refine` rounds, as
      `optimal_task_weight`); baseline: the experiment's own n_2.  The task rates do not depend
      on n_2 in full-batch GD.
    - Paper protocol (`protocol="paper"`): n_2 = m n_1, m = 1..`max_multiple` (task 2 takes m
      steps per task-1 step, rate ρ_2 = m w_2, docs/theory.md §3); the finite-data theory also
      sees n_2 as task 2's training set, the population theory only through the rate.
      Baseline m = 1.

    `ts` are in the task-1 clock (t = lr x task-1 steps), which does not depend on n_2.
    `seeds` with a leading axis (M,): the mean over M realisations (`early_stopped_loss`).
    `progress`: print the rounds (elapsed time) to stderr.

    **Returns:** `DesignResult` with `value` = n_2; `on_bound` flags an optimum at either end
    of the searched range.

    **Raises:** `ValueError` before any solve for a single-task or online experiment, a
    full-batch experiment with a theory without training sets, `max_multiple` < 2, or bad
    `bounds`, `n_grid`, `n_refine`.
    """
    model = design_model(model, solver, initial, experiment)
    seeds = Seeds(0) if seeds is None else seeds
    tr = experiment.train
    if tr.single_task or tr.n_tasks < 2 or tr.protocol == "online":
        raise ValueError(f"optimal_aux_data_size needs a multitask experiment on training sets, got protocol={tr.protocol!r}"
                         f", single_task={tr.single_task}")
    if not (isinstance(max_multiple, (int, np.integer)) and max_multiple >= 2):
        raise ValueError(f"max_multiple={max_multiple!r} must be an integer >= 2 (CLI: --max-multiple)")
    ts = _ts(experiment, ts)
    n1 = tr.n_train[0]
    report = _Progress("design aux", progress)
    if tr.protocol == "full_batch":
        if not model.data_sizes:
            raise ValueError(f"model {model.name!r} has no training set, so the auxiliary data size of full-batch runs "
                             "does not enter it: use model=mtjax.FiniteDataTheory(...) (CLI: --model finite-data)")
        bounds = (n1 / 4, max_multiple * n1) if bounds is None else bounds
        _check_search(bounds, n_grid, n_refine, "--n-min, --n-max")
        return _bracket_search(lambda lv: _loss_and_slope(experiment, seeds, ts, model, "ntrain_b", lv), bounds,
                               float(tr.n_train_active[1]), n_grid, n_refine, report, "n_2")  # fmt: skip
    report(f"{max_multiple} values of n_2 = m n_1 (m = 1..{max_multiple}) at once; compiling the theory can take minutes",
           force=True)
    m = np.arange(1, max_multiple + 1, dtype=float)
    m_now = tr.task_multiplicity[1]
    # rate ρ_2 = m w_2: rescale the weight so that the experiment's own m is replaced by m
    w = np.asarray(tr.task_weights[1]) * m / m_now
    loss = np.asarray(_loss_at_multiples(experiment, seeds, ts, model, jnp.asarray(w), jnp.asarray(m * n1)), float)
    j = int(np.nanargmin(np.where(np.isfinite(loss), loss, np.inf)))
    report(f"done: optimum m = {m[j]:g}", force=True)
    return DesignResult(
        value=jnp.asarray(float(m[j] * n1)), loss=jnp.asarray(loss[j]),
        baseline_value=jnp.asarray(float(n1)), baseline_loss=jnp.asarray(loss[0]),
        grid=jnp.asarray(m * n1), grid_loss=jnp.asarray(loss), grid_slope=jnp.full(m.shape, jnp.nan),
        on_bound=jnp.asarray(j in (0, len(m) - 1)),
    )  # fmt: skip


class StoppingResult(eqx.Module):
    """`time`: () t* = lr x steps minimising the test loss; `step`: () t*/lr; `loss`: () loss at t*;
    `times`, `losses`: (T,) the evaluated curve; `at_horizon`: () True if t* is the last time
    (the loss still falls: no early-stopping optimum within the horizon)."""

    time: Float[Array, ""]
    step: Float[Array, ""]
    loss: Float[Array, ""]
    times: Float[Array, " T"]
    losses: Float[Array, " T"]
    at_horizon: Float[Array, ""]


def optimal_stopping_time(
    experiment: Experiment,
    seeds: Seeds | None = None,
    t_max: float | None = None,
    *,
    task: int = 0,
    n_times: int = 64,
    solver: PopulationSolver | None = None,
    initial: str = "quenched",
    model: AbstractModel | None = None,
    progress: bool = False,
) -> StoppingResult:
    """Time t* (t = lr x steps, up to `t_max`; default the experiment's horizon) of the minimum
    of task `task`'s theory test loss: the best of `n_times` save times, refined by the vertex of
    the parabola through it and its neighbours (the loss is smooth in t).

    In the infinite-data theory a single task's loss falls forever (t* = t_max, `at_horizon`);
    an interior optimum appears when other tasks pull the shared trunk away from task 1's.
    `seeds` with a leading axis (M,): the minimum of the mean curve over M realisations.
    `progress`: print the start and the end (elapsed time) to stderr.

    **Raises:** `ValueError` before any solve unless `t_max` > 0 is finite, `n_times` >= 3 and
    `task` is a task of the experiment."""
    model = design_model(model, solver, initial, experiment)
    seeds = Seeds(0) if seeds is None else seeds
    tr = experiment.train
    t_max = float(tr.learning_rate * tr.eval_steps[-1]) if t_max is None else float(t_max)
    if not (0 < t_max < np.inf):
        raise ValueError(f"t_max={t_max} must be finite and > 0 (CLI: --t-max)")
    if not (isinstance(n_times, (int, np.integer)) and n_times >= 3):
        raise ValueError(f"n_times={n_times!r} must be an integer >= 3")
    if not 0 <= task < tr.n_tasks:
        raise ValueError(f"task={task} must be in 0..{tr.n_tasks - 1} (0-based)")
    ts = jnp.linspace(t_max / n_times, t_max, n_times)
    report = _Progress("design stop", progress)
    report(f"one theory solve to t = {t_max:g} ({n_times} times); compiling can take minutes", force=True)
    if jnp.ndim(seeds.teacher) == 0:
        loss, _ = eqx.filter_jit(model.test_loss_at)(experiment, seeds, ts)
    else:  # the mean curve over the realisations: all of them stopped at one time
        loss = jnp.mean(eqx.filter_jit(eqx.filter_vmap(lambda s: model.test_loss_at(experiment, s, ts)[0]))(seeds), 0)
    L = np.asarray(loss[:, task], float)
    t = np.asarray(ts)
    i = int(np.nanargmin(L))
    report(f"done: grid minimum at t = {t[i]:.4g}", force=True)
    t_star, l_star = t[i], L[i]
    if 0 < i < n_times - 1:
        y0, y1, y2 = L[i - 1], L[i], L[i + 1]
        den = y0 - 2 * y1 + y2
        if den > 0:
            h = t[1] - t[0]
            off = 0.5 * h * (y0 - y2) / den
            t_star = t[i] + off
            l_star = y1 - 0.25 * (y0 - y2) * off / h
    return StoppingResult(
        time=jnp.asarray(t_star), step=jnp.asarray(t_star / float(tr.learning_rate)), loss=jnp.asarray(l_star),
        times=ts, losses=jnp.asarray(L), at_horizon=jnp.asarray(i == n_times - 1),
    )  # fmt: skip
