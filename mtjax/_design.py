"""Optimal design by differentiating the population theory (docs/fitting.md §5).

- `optimal_task_weight`: the loss weight w_2 on the auxiliary task(s) that minimises task 1's
  early-stopped test loss.
- `optimal_aux_data_size`: the auxiliary data size n_2 in the paper protocol. The population
  (infinite-data) theory sees n_2 only through the alternation: task 2 takes m = n_2 // n_1
  steps per task-1 step, i.e. runs at rate ρ_2 = m w_2 (docs/theory.md §3). So the optimal
  n_2 is n_1 times the optimal integer rate multiplier. Finite-data effects of n_2 (overfitting
  task 2's smaller or larger training set) are *not* in this theory.
- `optimal_stopping_time`: the time t* = lr x steps minimising task 1's test loss.

Derivatives come from forward mode through the diffrax solve (`diffrax.ForwardMode`: one
tangent for one design variable).
"""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._custom_types import Array, Float
from ._experiment import Experiment, Seeds
from ._population import PopulationSolver, population_theory
from ._sweep import apply_axes

def design_solver() -> PopulationSolver:
    """Default solver of the design helpers (made on call: arrays created at import would start
    JAX's backend before a multi-process run can call jax.distributed.initialize)."""
    return PopulationSolver(n_quad=512, n_quad_eval=4096, rtol=1e-4, atol=1e-6, smooth_loss=True)


class DesignResult(eqx.Module):
    """Result of a design optimisation.

    - `value`: () optimal design variable (w_2, or n_2 for `optimal_aux_data_size`).
    - `loss`: () task-1 early-stopped test loss (nats) at `value`.
    - `baseline_value`, `baseline_loss`: () the default design (w_2 = 1; n_2 = n_1) and its loss.
    - `grid`, `grid_loss`: (G,) the evaluated designs and their losses; `grid_slope`: (G,)
      d loss / d log(design) there (NaN where not computed).
    """

    value: Float[Array, ""]
    loss: Float[Array, ""]
    baseline_value: Float[Array, ""]
    baseline_loss: Float[Array, ""]
    grid: Float[Array, " G"]
    grid_loss: Float[Array, " G"]
    grid_slope: Float[Array, " G"]


def _ts(experiment: Experiment, ts):
    if ts is None:
        tr = experiment.train
        ts = tr.learning_rate * jnp.asarray(tr.eval_steps[1:], float)
    return jnp.asarray(ts, float)


def early_stopped_loss(experiment: Experiment, seeds: Seeds, ts, *, solver: PopulationSolver | None = None,
                       initial: str = "quenched", task: int = 0) -> Float[Array, ""]:
    """min over the save times `ts` (t = lr x steps) of task `task`'s theory test loss."""
    solver = design_solver() if solver is None else solver
    th = population_theory(experiment, seeds, ts, solver=solver, initial=initial)
    return jnp.where(th.diverged, jnp.nan, jnp.min(th.test_loss[:, task]))


@eqx.filter_jit
def _loss_and_slope(experiment, seeds, ts, solver, initial, log_w):
    """Early-stopped task-1 loss and its derivative in log w_2, for a batch of log w_2."""
    solver = eqx.tree_at(lambda s: s.adjoint, solver, diffrax.ForwardMode())

    def f(lw):
        return early_stopped_loss(apply_axes(experiment, {"w_b": jnp.exp(lw)}), seeds, ts, solver=solver, initial=initial)

    return jax.vmap(lambda lw: jax.jvp(f, (lw,), (jnp.ones_like(lw),)))(log_w)


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
) -> DesignResult:
    """The loss weight w_2 (on tasks 2..K) in `bounds` minimising task 1's early-stopped test loss.

    **Arguments:**

    - `experiment`, `seeds`, `initial`, `solver`: as for `population_theory` (linear student).
    - `ts`: save times (t = lr x steps) over which the early-stopped minimum is taken; default:
      the experiment's evaluation times.
    - `bounds`: search interval of w_2 (log-uniform grid of `n_grid` points).
    - `n_refine`: rounds of bracketing: each round evaluates `n_grid` points between the grid
      neighbours of the best point and keeps the sign change of the derivative d loss/d log w_2
      (forward mode through the solve), so the bracket shrinks ~`n_grid`-fold per round.

    **Returns:** `DesignResult` (baseline: w_2 = 1).
    """
    solver = design_solver() if solver is None else solver
    seeds = Seeds(0) if seeds is None else seeds
    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    if not (bounds[0] > 0 and hi > lo):
        raise ValueError(f"bounds={bounds} must satisfy 0 < lo < hi")
    ts = _ts(experiment, ts)
    grid = np.linspace(lo, hi, n_grid)
    all_g, all_l, all_s = [], [], []
    for _ in range(n_refine + 1):
        loss, slope = (np.asarray(a, float) for a in _loss_and_slope(experiment, seeds, ts, solver, initial, jnp.asarray(grid)))
        all_g.append(grid), all_l.append(loss), all_s.append(slope)
        i = int(np.nanargmin(np.where(np.isfinite(loss), loss, np.inf)))
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
    base_l, base_s = (np.asarray(x, float) for x in _loss_and_slope(experiment, seeds, ts, solver, initial, jnp.zeros(n_grid)))
    j = int(np.nanargmin(np.where(np.isfinite(l), l, np.inf)))
    order = np.argsort(g)
    return DesignResult(
        value=jnp.asarray(np.exp(g[j])), loss=jnp.asarray(l[j]),
        baseline_value=jnp.asarray(1.0), baseline_loss=jnp.asarray(base_l[0]),
        grid=jnp.asarray(np.exp(g[order])), grid_loss=jnp.asarray(l[order]), grid_slope=jnp.asarray(s[order]),
    )  # fmt: skip


@eqx.filter_jit
def _loss_at_rates(experiment, seeds, ts, solver, initial, ws):
    return jax.vmap(lambda w: early_stopped_loss(apply_axes(experiment, {"w_b": w}), seeds, ts, solver=solver, initial=initial))(ws)


def optimal_aux_data_size(
    experiment: Experiment,
    seeds: Seeds | None = None,
    ts=None,
    *,
    max_multiple: int = 8,
    solver: PopulationSolver | None = None,
    initial: str = "quenched",
) -> DesignResult:
    """Auxiliary data size n_2 = m n_1 (m = 1..`max_multiple`) minimising task 1's early-stopped loss.

    Paper protocol only (`experiment.train.protocol == "paper"`): there n_2 sets the rate
    ρ_2 = m w_2 of task 2 (m = n_2 // n_1 steps per task-1 step), which is all the population
    theory knows about n_2 (see the module docstring for what that leaves out). `ts` are in
    the task-1 clock (t = lr x task-1 steps), which does not depend on n_2.

    **Returns:** `DesignResult` with `value` = n_2, baseline n_2 = n_1 (m = 1); the grid is n_2.
    """
    solver = design_solver() if solver is None else solver
    seeds = Seeds(0) if seeds is None else seeds
    tr = experiment.train
    if tr.protocol != "paper" or tr.single_task:
        raise ValueError(f"optimal_aux_data_size needs a multitask paper-protocol experiment, got protocol={tr.protocol!r}"
                         f", single_task={tr.single_task}")
    ts = _ts(experiment, ts)
    m = np.arange(1, max_multiple + 1, dtype=float)
    m_now = tr.task_multiplicity[1]
    # rate ρ_2 = m w_2: rescale the weight so that the experiment's own m is replaced by m
    w = np.asarray(tr.task_weights[1]) * m / m_now
    loss = np.asarray(_loss_at_rates(experiment, seeds, ts, solver, initial, jnp.asarray(w)), float)
    j = int(np.nanargmin(np.where(np.isfinite(loss), loss, np.inf)))
    n1 = tr.n_train[0]
    return DesignResult(
        value=jnp.asarray(float(m[j] * n1)), loss=jnp.asarray(loss[j]),
        baseline_value=jnp.asarray(float(n1)), baseline_loss=jnp.asarray(loss[0]),
        grid=jnp.asarray(m * n1), grid_loss=jnp.asarray(loss), grid_slope=jnp.full(m.shape, jnp.nan),
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
) -> StoppingResult:
    """Time t* (t = lr x steps, up to `t_max`; default the experiment's horizon) of the minimum
    of task `task`'s theory test loss: the best of `n_times` save times, refined by the vertex of
    the parabola through it and its neighbours (the loss is smooth in t).

    In the infinite-data theory a single task's loss falls forever (t* = t_max, `at_horizon`);
    an interior optimum appears when other tasks pull the shared trunk away from task 1's."""
    solver = design_solver() if solver is None else solver
    seeds = Seeds(0) if seeds is None else seeds
    tr = experiment.train
    t_max = float(tr.learning_rate * tr.eval_steps[-1]) if t_max is None else float(t_max)
    ts = jnp.linspace(t_max / n_times, t_max, n_times)
    th = eqx.filter_jit(population_theory)(experiment, seeds, ts, solver=solver, initial=initial)
    L = np.asarray(th.test_loss[:, task], float)
    t = np.asarray(ts)
    i = int(np.nanargmin(L))
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
