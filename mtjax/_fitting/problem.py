"""The fit problem: parameters -> theory solves -> predictions -> objective, and its derivatives."""

from __future__ import annotations

from typing import Any, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Float
from .._experiment import Experiment, Seeds
from .._finite.solver import fit_solver
from .._model import AbstractModel, FiniteDataTheory, PopulationTheory
from .._population import PopulationSolver
from .._sweep import apply_axes
from .observations import Observations
from .params import DATA_SIZES, POST_SOLVE, Param, _forward, _inverse


class FitProblem(eqx.Module):
    """Everything the objective needs: base experiment, seeds, observations, free parameters.

    Build with `FitProblem(...)`; `fit` does this for you."""

    experiment: Experiment
    seeds: Seeds
    obs: Observations
    params: tuple[Param, ...] = eqx.field(static=True)
    n_levels: tuple[int, ...] = eqx.field(static=True)
    model: AbstractModel
    loss: str = eqx.field(static=True)
    # The theory curves when no free parameter enters the solves (only `time_scale` and
    # `loss_offset`, which act after them): solved once by `fit` (`with_fixed_curves`).
    fixed_curves: Any = None

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
        tr = self.experiment.train
        own = {"ntrain": tr.n_train_active[0], "ntrain_b": tr.n_train_active[-1]}  # a data size's default start
        return self.pack({p.name: np.asarray(p.init if p.init else own[p.name]) for p in self.params})

    def _condition_levels(self, name: str, by: str | None):
        """Level index of every condition for a parameter varying by `by` (first row of each)."""
        if by is None:
            return jnp.zeros(self.obs.n_conditions, jnp.int32)
        lev = self.obs.level[by]
        return jax.ops.segment_max(lev, self.obs.condition, num_segments=self.obs.n_conditions)

    @property
    def solve_free(self) -> bool:
        """True when no free parameter enters the theory solves (only `POST_SOLVE` ones)."""
        return all(p.name in POST_SOLVE for p in self.params)

    def with_fixed_curves(self) -> "FitProblem":
        """This problem with its curves solved once (for `solve_free` problems; else itself)."""
        if not self.solve_free or self.fixed_curves is not None:
            return self
        cur = eqx.filter_jit(lambda prob, th: prob.curves(th))(self, self.initial_theta())
        return eqx.tree_at(lambda p: p.fixed_curves, self, cur, is_leaf=lambda x: x is None)

    def curves(self, theta: Float[Array, " P"]) -> Float[Array, "n_cond T K"]:
        """Theory test loss of every condition at the grid times (time scale not applied).

        All conditions in one vmapped program, or in chunks of `model.fit_batch` (`lax.map`)
        for a model whose solves are large (the finite-data theory's paper-preset cells)."""
        if self.fixed_curves is not None:
            return self.fixed_curves
        vals = self.unpack(theta)
        nc = self.obs.n_conditions
        axes = {}
        for c, v in self.obs.known.items():
            if c == "single_task":
                continue
            axes[c] = v
        for p in self.params:
            if p.name in POST_SOLVE:
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
            e = apply_axes(self.experiment, ax)
            if self.seeds.teacher.ndim == 0:
                loss, diverged = self.model.test_loss_at(e, self.seeds, self.obs.grid)
            else:
                # Observations averaged over M realisations of teacher and initial student: the
                # mean of the M theories (each averages over its data only), so the low-dimensional
                # disorder the theories keep quenched (heads, upper layers, readouts) is averaged
                # as in the runs. A diverged realisation makes the mean undefined.
                loss, diverged = jax.vmap(lambda s: self.model.test_loss_at(e, s, self.obs.grid))(self.seeds)
                loss, diverged = loss.mean(0), diverged.any(0)
            return jnp.where(diverged, jnp.nan, loss)

        if not axes:
            return jnp.broadcast_to(one({}), (nc,) + (self.obs.grid.shape[0], self.experiment.train.n_tasks))
        batch = self.model.fit_batch
        return jax.vmap(one)(axes) if batch is None or batch >= nc else jax.lax.map(one, axes, batch_size=batch)

    def predict(self, theta: Float[Array, " P"]) -> Float[Array, " n"]:
        """Predicted metric of every observation.

        Loss at time τ t by linear interpolation on the grid (exact at grid times when τ = 1);
        early-stopped rows take the minimum over grid times <= τ t and the interpolated end;
        plus the row's `loss_offset` where one is fitted."""
        vals = self.unpack(theta)
        cur = self.curves(theta)
        o = self.obs
        tau, offset = jnp.ones(o.time.shape), jnp.zeros(o.time.shape)
        for p in self.params:
            if p.name in POST_SOLVE:
                lev = o.level[p.by] if p.by is not None else jnp.zeros(o.time.shape, jnp.int32)
                if p.name == "time_scale":
                    tau = vals[p.name][lev]
                else:
                    offset = vals[p.name][lev]
        tt = tau * o.time
        rows = cur[o.condition, :, o.task]  # (n, T)
        grid = o.grid
        at = jax.vmap(lambda r, t: jnp.interp(t, grid, r))(rows, tt)
        before = jnp.min(jnp.where(grid[None, :] <= tt[:, None] * (1 + 1e-6), rows, jnp.inf), axis=1)
        return jnp.where(o.early_stopped, jnp.minimum(at, before), at) + offset

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
    model: AbstractModel | None = None,
) -> FitProblem:
    """The `FitProblem` of fitting `params` of `experiment` to `obs`.

    The theory is `model` (any differentiable model: `PopulationTheory`, `FiniteDataTheory`),
    or `PopulationTheory(solver, initial)` when a `solver` is given, or else (`fit_model`) the
    finite-data theory for an experiment on finite training sets and the population theory for
    online data.

    `seeds`: the teacher and initial-student seeds the theory is solved for (default `Seeds(0)`;
    the data seed plays no role in the theories).  Fields with a leading axis (M,) (scalars
    broadcast) mean the observations average M realisations of teacher and initial student: the
    prediction is then the mean of the M theories, at M times the cost.  The theories keep the
    low-dimensional parts of the initial student (heads, upper layers, biases) and the teacher's
    readouts as given, so with narrow heads a one-realisation theory does not describe curves
    averaged over fresh students (notebook 05's setting, H = 4: at t = 15 the curve averaged over
    8 teachers and students lies 0.3 nats above that of the first, which its theory matches).

    **Raises:** `ValueError` before any solve: no or repeated parameters, `seeds` fields that are
    neither scalars nor 1-d arrays of one length, a task of `obs` beyond
    the experiment's tasks, a `by` column missing from `obs` or mixed within one theory solve,
    an `init` of the wrong length, or an unknown `loss`."""
    seeds = Seeds(0) if seeds is None else seeds
    fields = (seeds.teacher, seeds.data, seeds.init, seeds.train)
    if any(np.ndim(x) > 1 or np.size(x) == 0 for x in fields) or len({np.size(x) for x in fields} - {1}) > 1:
        raise ValueError(f"seeds: every field must be a scalar (one realisation) or a 1-d array of one length M "
                         f"(the observations average M realisations), got shapes {[np.shape(x) for x in fields]}; "
                         "pass e.g. Seeds(jnp.arange(M), 0, jnp.arange(M), 0)")
    if any(np.ndim(x) == 1 for x in fields):
        M = max(np.size(x) for x in fields)
        seeds = Seeds(*(jnp.broadcast_to(jnp.reshape(x, (-1,)), (M,)) for x in fields))
    model = fit_model(model, solver, initial, experiment)
    if loss not in ("wls", "gaussian"):
        raise ValueError(f"loss={loss!r} is not one of ['wls', 'gaussian']")
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise ValueError(f"parameters {names} are not distinct")
    if not names:
        raise ValueError("no free parameters: pass at least one Param (CLI: --free NAME ...)")
    n_tasks = experiment.train.n_tasks
    sizes = [c for c in DATA_SIZES if c in names or c in obs.known]
    if sizes and not model.data_sizes:
        raise ValueError(f"{sizes[0]!r} (a data size) is known or free, but model {model.name!r} has no training set: "
                         "fit with model=mtjax.FiniteDataTheory(...) (CLI: --model finite-data), or drop it "
                         f"(population theory: --by time_scale={sizes[0]})")
    if "ntrain_b" in sizes and n_tasks < 2:
        raise ValueError("'ntrain_b' is known or free, but the experiment has one task")
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
        if p.by is not None and p.name not in POST_SOLVE:
            lev, cond = np.asarray(obs.level[p.by]), np.asarray(obs.condition)
            if any(len(set(lev[cond == c])) > 1 for c in range(obs.n_conditions)):
                raise ValueError(f"Param {p.name!r} varies by {p.by!r} but one theory solve mixes its levels: "
                                 f"pass split=[{p.by!r}] to observations_from_table")
        if len(p.init) not in (0, 1, n):
            raise ValueError(f"Param {p.name!r}: init has {len(p.init)} values, need 1 or {n} (levels of {p.by!r})")
        n_levels.append(n)
    return FitProblem(experiment, seeds, obs, tuple(params), tuple(n_levels), model, loss)


def fit_model(model: AbstractModel | None, solver, initial: str, experiment: Experiment | None = None) -> AbstractModel:
    """The theory a fit or a design runs: `model`; else, with a `PopulationSolver`,
    `PopulationTheory(solver, initial)`; else the theory of the experiment's data: the
    finite-data theory (`FiniteDataTheory(fit_solver(), initial)`) when it trains on finite
    training sets (protocols "full_batch" and "paper"), the population theory (smooth loss,
    512 field points, so that gradients are smooth) for online data or without an experiment."""
    if model is None:
        if solver is None and experiment is not None and experiment.train.protocol != "online":
            return FiniteDataTheory(fit_solver(), initial)
        if solver is None:
            solver = PopulationSolver(n_quad=512, n_quad_eval=4096, rtol=1e-4, atol=1e-6, smooth_loss=True)
        return PopulationTheory(solver, initial)
    if solver is not None:
        raise ValueError("pass the solver inside the model (model=mtjax.FiniteDataTheory(solver)), not both")
    if not isinstance(model, AbstractModel) or not model.differentiable:
        name = getattr(model, "name", type(model).__name__)
        raise ValueError(f"model {name!r} cannot be fitted (not differentiable): pass mtjax.PopulationTheory(...) or "
                         "mtjax.FiniteDataTheory(...)")
    return model


def _forward_mode(problem: FitProblem) -> FitProblem:
    return eqx.tree_at(lambda p: p.model, problem, problem.model.forward_mode())


@eqx.filter_jit
def _value_and_grad(problem: FitProblem, thetas: Float[Array, "S P"]):
    """Objective and its gradient (reverse mode through the solve) for a batch of θ."""
    return jax.vmap(jax.value_and_grad(problem.objective))(thetas)


@eqx.filter_jit
def _residuals_and_jacobian(problem: FitProblem, thetas: Float[Array, "S P"]):
    """Whitened residuals (pred − value)/se (S, n) and their Jacobian (S, n, P), by forward mode:
    P tangents however many observations there are.  Every theory can be entered by forward
    mode: the population solve runs with `diffrax.ForwardMode()` here (diffrax's reverse-mode
    adjoints are custom VJPs that forward mode cannot enter; same discretisation, exact
    derivatives), and the finite-data theory's fixed point has an implicit custom JVP."""
    prob = _forward_mode(problem)

    def res(th):
        return (prob.predict(th) - prob.obs.value) / prob.obs.se

    return jax.vmap(lambda th: (res(th), jax.jacfwd(res)(th)))(thetas)


@eqx.filter_jit
def _residuals(problem: FitProblem, thetas: Float[Array, "S P"]):
    """Whitened residuals (pred − value)/se (S, n) alone: one solve per θ, no tangents (the
    trial steps of Levenberg–Marquardt with `cheap_trials`)."""
    return jax.vmap(lambda th: (problem.predict(th) - problem.obs.value) / problem.obs.se)(thetas)


@eqx.filter_jit
def _exact_hessian(problem: FitProblem, theta: Float[Array, " P"]):
    """Hessian of the objective: forward over forward (`jax.hessian` is forward over reverse,
    which cannot enter diffrax's reverse-mode custom VJP)."""
    prob = _forward_mode(problem)
    return jax.jacfwd(jax.jacfwd(prob.objective))(theta)
