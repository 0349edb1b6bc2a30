"""The finite-data theory of an experiment: `finite_data_theory`, `finite_data_replicas`, their
result and its `History` (docs/dmft.md)."""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Bool, Float, Int
from .._experiment import Experiment, Seeds
from .._student import Student, StudentConfig
from .._teacher import Teacher, TeacherConfig
from .._train import at_minimum, early_stopped_loss
from .._validation import check_int, is_concrete
from .compiled import _bucket, _call_compiled, _report_times
from .single import _initial_overlaps, _Problem, solve_single_task
from .solver import FiniteDataSolver
from .nonlinear import _NonlinearProblem, solve_nonlinear_trunk
from .trunk import _trunk_problem, _TrunkProblem, solve_trunk
from .wide import _wide_problem, _WideProblem, check_wide, solve_wide


class FiniteTheoryResult(eqx.Module):
    """Finite-data theory curves of one point (add leading axes for a batch).

    - `time`: (T,) t = lr x steps; `step`: (T,) the simulation clock.
    - `train_loss`, `test_loss`, `test_acc`: (T, K), NaN for tasks not trained; linearly
      interpolated from the theory grid (exact at grid times).
    - `residual`: (K,) final relative fixed-point residual per task; `iterations`: (K,) Picard maps.
    - `converged`: () all trained tasks reached `solver.tol`.
    - `diverged`: () any non-finite loss of a trained task.
    """

    time: Float[Array, " T"]
    step: Float[Array, " T"]
    train_loss: Float[Array, "T K"]
    test_loss: Float[Array, "T K"]
    test_acc: Float[Array, "T K"]
    residual: Float[Array, " K"]
    iterations: Int[Array, " K"]
    converged: Bool[Array, ""]
    diverged: Bool[Array, ""]

    @property
    def early_stopped_loss(self) -> Float[Array, "... K"]:
        """min over times of the test loss (NaN where diverged)."""
        return early_stopped_loss(self.test_loss, self.diverged)

    @property
    def early_stopped_time(self) -> Float[Array, "... K"]:
        """Time t of the early-stopped minimum."""
        return at_minimum(self.time, self.test_loss)

    @property
    def final_loss(self) -> Float[Array, "... K"]:
        """Test loss at the last time (NaN where diverged, as for `History`)."""
        return jnp.where(self.diverged[..., None], jnp.nan, self.test_loss[..., -1, :])


class _GridSolution(eqx.Module):
    """The theory on its own grid: `time` (T+1,), `train_loss`, `test_loss`, `test_acc` (T+1, K)
    (NaN for tasks not solved), `residual` (K,), `iterations` (K,)."""

    time: Float[Array, " T1"]
    train_loss: Float[Array, "T1 K"]
    test_loss: Float[Array, "T1 K"]
    test_acc: Float[Array, "T1 K"]
    residual: Float[Array, " K"]
    iterations: Int[Array, " K"]


def _build_problem(tc: TeacherConfig, sc: StudentConfig, seeds: Seeds, student, n_train_active, task_weights,
                   rate_multipliers, initial: str, active: tuple[int, ...], width: str = "fixed"):  # fmt: skip
    """The reduced problem of an experiment: a `_TrunkProblem` (depth >= 1) or one `_Problem` per
    trained task (depth 0), with `dt` left to `_solve_grid`.  Takes the teacher and student
    configs, not the experiment: the train config's static fields (data sizes, evaluation
    schedule) would make a program per value; the data sizes enter as arrays."""
    teacher = Teacher.sample(tc, key=seeds.key("teacher"))
    if student is None:
        student = Student.init(sc, tc.n_features, tc.n_classes, tc.n_tasks, key=seeds.key("init"))
    if width != "fixed":
        return _wide_problem(tc, sc, teacher, student, n_train_active, task_weights * rate_multipliers,
                             width == "proportional_n")  # fmt: skip
    if sc.depth >= 1:
        tp = _trunk_problem(tc, sc, teacher, student, n_train_active, task_weights * rate_multipliers, initial)
        return _NonlinearProblem(tp, sc.activation) if sc.activation != "linear" else tp
    # Directions outside the task's teacher subspace: N' = N − R.
    n_perp = tc.n_features - tc.rank
    problems = []
    for k in active:
        M0, b0, Q0 = _initial_overlaps(student, teacher, k, initial, sc.init_scale)
        problems.append(_Problem(n_train_active[k] / n_perp, None, tc.scale[k], tc.noise[k], tc.flip[k],
                                 tc.noisy_fraction[k], teacher.w[k], M0, b0, Q0))  # fmt: skip
    return tuple(problems)


def _solve_grid(problem, t_max, solver: FiniteDataSolver, active: tuple[int, ...], n_tasks: int) -> _GridSolution:
    """Solve the reduced problem on the solver's grid of `n_grid` steps ending at `t_max` (traced)."""
    grid, dt = solver.time_grid(t_max)
    T = solver.n_grid
    key = jax.random.key(solver.seed)
    if isinstance(problem, _NonlinearProblem):
        pn = dataclasses.replace(problem, trunk=dataclasses.replace(problem.trunk, dt=dt))
        train, test, acc, res, its = solve_nonlinear_trunk(pn, solver, T, key=key)
        return _GridSolution(grid, train, test, acc, jnp.full(n_tasks, res), jnp.full(n_tasks, its))
    if isinstance(problem, _WideProblem):
        pw = dataclasses.replace(problem, trunk=dataclasses.replace(problem.trunk, dt=dt))
        train, test, acc, res, its = solve_wide(pw, solver, T, key=key)
        return _GridSolution(grid, train, test, acc, jnp.full(n_tasks, res), jnp.full(n_tasks, its))
    if isinstance(problem, _TrunkProblem):
        train, test, acc, res, its = solve_trunk(dataclasses.replace(problem, dt=dt), solver, T, key=key)
        return _GridSolution(grid, train, test, acc, jnp.full(n_tasks, res), jnp.full(n_tasks, its))
    sols = {k: solve_single_task(dataclasses.replace(p, dt=dt), solver, T, key=jax.random.fold_in(key, k))
            for k, p in zip(active, problem)}  # fmt: skip
    nan = jnp.full(T + 1, jnp.nan)

    def per_task(f, missing):
        return jnp.stack([f(sols[k]) if k in sols else missing for k in range(n_tasks)], -1)

    return _GridSolution(
        grid, per_task(lambda s: s.train_loss, nan), per_task(lambda s: s.test_loss, nan),
        per_task(lambda s: s.test_acc, nan), per_task(lambda s: s.residual, jnp.asarray(jnp.nan)),
        per_task(lambda s: s.iterations, jnp.asarray(0)),
    )  # fmt: skip


def _solve_grid_replicas(problem, t_max, solver: FiniteDataSolver, active, n_tasks: int, offsets) -> _GridSolution:
    """`_solve_grid` with draw seeds `solver.seed + offsets`, vmapped: a leading replica axis."""

    def one(i):
        return _solve_grid(problem, t_max, eqx.tree_at(lambda s: s.seed, solver, solver.seed + i), active, n_tasks)

    return jax.vmap(one)(offsets)


def _report(sol: _GridSolution, ts, learning_rate, tol, active: tuple[int, ...]) -> FiniteTheoryResult:
    """The grid solution at the report times `ts` (linear interpolation; exact at grid times)."""
    K = sol.residual.shape[0]
    act = jnp.asarray([k in active for k in range(K)])
    nan = jnp.full(ts.shape, jnp.nan)

    def curve(f):
        return jnp.stack([jnp.where(act[k], jnp.interp(ts, sol.time, f[:, k]), nan) for k in range(K)], -1)

    train_loss, test_loss, test_acc = curve(sol.train_loss), curve(sol.test_loss), curve(sol.test_acc)
    residual = jnp.where(act, sol.residual, jnp.nan)
    iterations = jnp.where(act, sol.iterations, 0)
    converged = jnp.all(jnp.where(act, residual <= tol, True))
    finite = jnp.all(jnp.where(act[None], jnp.isfinite(test_loss) & jnp.isfinite(train_loss), True))
    return FiniteTheoryResult(ts, ts / learning_rate, train_loss, test_loss, test_acc, residual, iterations, converged,
                              ~finite)  # fmt: skip


def _report_replicas(sol: _GridSolution, ts, learning_rate, tol, active) -> FiniteTheoryResult:
    return jax.vmap(lambda s: _report(s, ts, learning_rate, tol, active))(sol)


def _report_at(report, sol: _GridSolution, ts, tr, solver: FiniteDataSolver, time_axis: int) -> FiniteTheoryResult:
    """`report` at the times `ts`.  Concrete: computed at `ts` padded with its last time to
    `_bucket(n)` entries (the padding changes no reduction: the last time repeats), then cut
    back on the host."""
    n = ts.shape[0]
    if not is_concrete((sol, ts, tr.learning_rate, solver.tol)):
        return report(sol, ts, tr.learning_rate, solver.tol, tr.active_tasks)
    padded = np.concatenate([ts, np.full(_bucket(n) - n, ts[-1], ts.dtype)])
    # An array even where a caller set a Python float: one program for every learning rate.
    lr = np.asarray(tr.learning_rate, ts.dtype)
    th = _call_compiled(report, sol, padded, lr, solver.tol, tr.active_tasks)
    cut = (slice(None),) * time_axis + (slice(0, n),)
    # device_put, not jnp.asarray: the latter compiles a staging program per shape.
    return eqx.tree_at(lambda r: (r.time, r.step, r.train_loss, r.test_loss, r.test_acc), th,
                       replace_fn=lambda a: jax.device_put(np.asarray(a)[cut]))  # fmt: skip


# Trunk activations the finite-data theory solves (docs/dmft.md §4.2).  relu's kink puts a
# density term E[δ(pre) …] into the response that per-draw Hessians miss; it is solved as the
# softplus(β x)/β network (`FiniteDataSolver.relu_sharpness`, `nonlinear.dmft_activation`).
FINITE_DATA_ACTIVATIONS = ("linear", "tanh", "erf", "gelu", "relu")


def check_finite_activation(student) -> None:
    if student.depth >= 1 and student.activation not in FINITE_DATA_ACTIVATIONS:
        raise ValueError(
            f"finite_data_theory: student.activation={student.activation!r} is not supported with a trunk; "
            f"allowed: {list(FINITE_DATA_ACTIVATIONS)} (other activations: the population theory; docs/dmft.md §4.2)"
        )


WIDTHS = ("fixed", "proportional", "proportional_n")  # `finite_data_theory(width=...)`


def check_width(width: str, initial: str) -> None:
    """`width` is one of `WIDTHS`, and the proportional theory's initial condition is the typical one."""
    if width not in WIDTHS:
        raise ValueError(f"width={width!r} is not one of {list(WIDTHS)}")
    if width != "fixed" and initial != "typical":
        raise ValueError(f"width={width!r} takes initial='typical' (the trunk's O(1/sqrt(N)) initial teacher "
                         f"overlap is averaged), got initial={initial!r}; pass initial='typical'")


def _check_theory_inputs(experiment: Experiment, initial: str, width: str = "fixed") -> None:
    check_width(width, initial)
    if width != "fixed":
        check_wide(experiment.student, experiment.teacher.n_features)
        return
    check_finite_activation(experiment.student)
    if initial not in ("quenched", "typical"):
        raise ValueError(f"initial={initial!r} is not one of ['quenched', 'typical']")


def _problem(experiment: Experiment, seeds: Seeds, student, initial: str, width: str = "fixed"):
    """`_build_problem` of an experiment (compiled per teacher and student configuration)."""
    from .._population import rate_multipliers

    tr = experiment.train
    mult = np.asarray(rate_multipliers(tr), jax.dtypes.canonicalize_dtype(float))
    return _call_compiled(_build_problem, experiment.teacher, experiment.student, seeds, student, tr.n_train_active,
                          tr.task_weights, mult, initial, tr.active_tasks, width)  # fmt: skip


def finite_data_theory(
    experiment: Experiment,
    seeds: Seeds,
    ts: Float[Array, " T"] | None = None,
    *,
    solver: FiniteDataSolver | None = None,
    student: Student | None = None,
    initial: str = "quenched",
    width: str = "fixed",
) -> FiniteTheoryResult:
    """DMFT of full-batch gradient descent on P_k = `n_train_active[k]` examples per task.

    Supported: linear students of depth L = 0 (each task is its own softmax layer; the tasks
    share no parameter, so every task is solved independently and the multitask benefit is 0)
    and L >= 1 (a shared trunk with per-task heads: multitask, docs/dmft.md §4; the first
    layer's complement to the teacher span is the DMFT variable, everything else
    self-averages).  The trunk may be linear or nonlinear (`tanh`, `erf`, `gelu`, `relu`: the
    first layer's H-dimensional preactivation is the example process, docs/dmft.md §4.2; give
    nonlinear trunks n_draws >= 2048, relu >= 4096): relu is solved as its smooth surrogate
    softplus(β x)/β, β = `solver.relu_sharpness`.

    **Arguments:** as `population_theory`.

    - `experiment`: teacher, student (any depth, a trunk activation of `FINITE_DATA_ACTIVATIONS`)
      and train config (protocol `"full_batch"`; other protocols are treated as gradient flow on
      their training sets).
    - `seeds`: teacher and init seeds; the data seed plays no role (the theory averages over
      datasets).
    - `ts`: times t = lr x steps to report; default the simulation's evaluation times.
    - `solver`: `FiniteDataSolver`.
    - `student`: optional initial student; `initial`: `"quenched"` (the exact initial overlaps of
      the simulation's student) or `"typical"` (N → ∞: the first layer has no overlap with the
      teacher span and Gram matrix init_scale² I; the upper trunk layers, biases and heads are
      low-dimensional and are taken from the initial student, as in `population_theory`).
    - `width`: `"fixed"` (N → ∞ at fixed trunk width H) or `"proportional"` (N, H → ∞ at fixed
      H / N: a linear depth-1 trunk with orthogonal W(0) and `initial="typical"`; the head's
      finite-sample noise and the trunk's share of the teacher span at O(H/N), docs/dmft.md §4.3)
      or `"proportional_n"` (the same at the experiment's own N: the D = K R teacher directions'
      finite-sample noise and the low-dimensional geometry at N, the O(D/N) corrections of
      docs/dmft.md §4.4; the geometry is one draw per draw seed, so average replicas).

    **Returns:** `FiniteTheoryResult`. Pure; jit/vmap-able over the experiment's array fields.

    Called with concrete inputs, the solve is compiled once per shape of the reduced problem
    and solver (not per report-time grid or data size) and cached (`set_compiled_cache_size`,
    `release_compiled`; docs/dmft.md §3.1).  Under a caller's `jit`/`vmap` it is traced into the
    caller's program, compiled per static configuration of the caller's arguments.
    """
    # Built here, not as a default argument: arrays made at import would start JAX's backend
    # before a multi-process run can call jax.distributed.initialize.
    solver = FiniteDataSolver() if solver is None else solver
    _check_theory_inputs(experiment, initial, width)
    tr = experiment.train
    problem = _problem(experiment, seeds, student, initial, width)
    ts, t_max = _report_times(tr, ts)
    sol = _call_compiled(_solve_grid, problem, t_max, solver, tr.active_tasks, tr.n_tasks, large=True)
    return _report_at(_report, sol, ts, tr, solver, time_axis=0)


def finite_data_replicas(
    experiment: Experiment,
    seeds: Seeds,
    n_replicas: int,
    ts: Float[Array, " T"] | None = None,
    *,
    solver: FiniteDataSolver | None = None,
    student: Student | None = None,
    initial: str = "quenched",
    width: str = "fixed",
) -> FiniteTheoryResult:
    """`n_replicas` independent solves of `finite_data_theory` (draw seeds `solver.seed + i`),
    vmapped: one compilation, a leading replica axis (R, ...) on every field of the result.

    The fixed draws make each solve a Monte Carlo estimate: the sd over replicas is one solve's
    error (depth 1, α = 8, 2048 draws: ~4 % of the early-stopped loss; depth 0 ~0.7 % with the
    QMC draws, docs/dmft.md §6.1), and a comparison with simulations should use the replica mean
    and its standard error `std(0, ddof=1) / sqrt(R)`.  Replicas share the experiment's teacher
    and initial student: they average over the theory's sampling, not over realisations.
    Averaging removes the spread, not a 1/S bias of the fixed point (raise `n_draws`).
    Memory grows R-fold (every replica holds its own kernels and response arrays), and the
    vmapped fixed-point loops run until the slowest replica has converged."""
    n_replicas = check_int("n_replicas", n_replicas, 1)
    solver = FiniteDataSolver() if solver is None else solver
    _check_theory_inputs(experiment, initial, width)
    tr = experiment.train
    problem = _problem(experiment, seeds, student, initial, width)
    ts, t_max = _report_times(tr, ts)
    offsets = np.arange(n_replicas, dtype=np.int32)
    sol = _call_compiled(_solve_grid_replicas, problem, t_max, solver, tr.active_tasks, tr.n_tasks, offsets, large=True)
    return _report_at(_report_replicas, sol, ts, tr, solver, time_axis=1)


def finite_theory_history(th: FiniteTheoryResult):
    """A `FiniteTheoryResult` as a `History`, so sweeps, tables and benefits treat it like a simulation."""
    from .._train import History

    # The theory's Monte Carlo error of the test loss is not estimated: NaN, not a fake 0.
    return History(jnp.round(th.step).astype(jnp.int32), th.time, th.train_loss, th.test_loss,
                   jnp.full_like(th.test_loss, jnp.nan), th.test_acc, th.diverged)
