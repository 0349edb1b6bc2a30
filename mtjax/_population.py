"""Mean-field theory I: exact population (infinite-data) gradient flow of linear multitask students.

The reduction (docs/theory.md §5): with E (D x N) an orthonormal basis of span{U_k} and the
first layer written W_1 = Ω E + F Qᵀ, population gradient flow never leaves that form, so the
flow of the full network equals the flow of the *same* network on a reduced input of dimension
D' = D + H' (H' = H, or K·C for L = 0) with teacher subspaces T̃_k = [T_k, 0].  The state is an
`mtjax.Student` on the reduced input; its population gradient is supplied in closed (Stein) form

    ∂L_k/∂A_k = J̄_k A_k − Λ_k T̃_k,        ∂L_k/∂a_k = E[p] − π_k,

and the chain rule to every weight is taken by autodiff of the surrogate Σ_k ρ_k ⟨G_k, A_k(θ)⟩,
so simulation and theory share one model.  Time t = learning rate x steps; task k moves with
rate ρ_k (ρ_k = w_k m_k in the paper protocol, w_k otherwise).
"""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._custom_types import Array, Bool, Float, Int
from ._experiment import Experiment, Seeds
from ._gaussian import TeacherConstants, cholesky, sobol_normals, softmax_moments, teacher_constants
from ._student import Dense, Student
from ._teacher import Teacher, teacher_coefficients
from ._train import early_stopped_loss
from ._validation import check_int, check_range


class PopulationSolver(eqx.Module):
    """Numerical settings of the population theory.

    - `n_quad`: quasi-Monte Carlo points (scrambled Sobol, antithetic) for E[p] and J̄ in the
      vector field (static). The late-time flow is sensitive to J̄: 4096 Sobol points agreed
      with 16384 random draws and with small-lr online SGD to 2e-4 nats where 2048 random
      draws were 0.03 nats off (docs/theory.md §4).
    - `n_quad_eval`: points for the reported test loss and accuracy (static).
    - `quad_seed`: scrambling seed of the point sets (static).
    - `rtol`, `atol`: PID step-size controller tolerances (arrays).
    - `max_steps`: solver step cap (static); a point that needs more is flagged, not fatal.
    - `smooth_loss`: report the test loss as E[lse z] − E[z_y] with E[z_y] in closed form
      (static; default False). The default joint Monte Carlo of lse − z_y has less variance but
      its labels make it piecewise constant in the teacher parameters (r, s, σ, ε, q); fitting
      needs a loss that is smooth in them (docs/fitting.md §3).
    - `adjoint`: how `jax.grad` goes through the solve (a diffrax adjoint; default
      `RecursiveCheckpointAdjoint()`, exact discretise-then-optimise gradients;
      `BacksolveAdjoint()` saves memory at some accuracy cost, docs/fitting.md §3).
    """

    n_quad: int = eqx.field(static=True)
    n_quad_eval: int = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    quad_seed: int = eqx.field(static=True)
    smooth_loss: bool = eqx.field(static=True)
    rtol: Float[Array, ""]
    atol: Float[Array, ""]
    adjoint: diffrax.AbstractAdjoint

    def __init__(self, n_quad: int = 4096, n_quad_eval: int = 16384, rtol=1e-4, atol=1e-6, max_steps: int = 4096, quad_seed: int = 0,
                 adjoint: diffrax.AbstractAdjoint | None = None, smooth_loss: bool = False):
        self.n_quad = check_int("n_quad", n_quad, 2)
        self.quad_seed = check_int("quad_seed", quad_seed, 0)
        self.n_quad_eval = check_int("n_quad_eval", n_quad_eval, 2)
        self.max_steps = check_int("max_steps", max_steps, 1)
        check_range("rtol", rtol, 0.0, lo_open=True)
        check_range("atol", atol, 0.0, lo_open=True)
        self.rtol = jnp.asarray(rtol, float)
        self.atol = jnp.asarray(atol, float)
        self.adjoint = diffrax.RecursiveCheckpointAdjoint() if adjoint is None else adjoint
        self.smooth_loss = bool(smooth_loss)


class TheoryResult(eqx.Module):
    """Theory curves of one point (add leading axes for a batch).

    - `time`: (T,) t = lr x steps; `step`: (T,) the simulation clock it corresponds to.
    - `test_loss`, `test_loss_se`, `test_acc`: (T, K); NaN for tasks not trained.
    - `overlap_AA`: (T, K, K, C, C) student overlaps A_j A_kᵀ; `overlap_AU`: (T, K, C, R) A_k U_kᵀ.
    - `result`: () diffrax result code (0 = success); `success`: () bool.
    - `diverged`: () True if the solve failed or produced non-finite losses.
    - `states`: the reduced student at every saved time (leaves with a leading T axis), or
      None unless requested (`population_theory(..., save_states=True)`); `lift_student`
      maps one back to the full N-dimensional network.
    """

    time: Float[Array, " T"]
    step: Float[Array, " T"]
    test_loss: Float[Array, "T K"]
    test_loss_se: Float[Array, "T K"]
    test_acc: Float[Array, "T K"]
    overlap_AA: Float[Array, "T K K C C"]
    overlap_AU: Float[Array, "T K C R"]
    result: Int[Array, ""]
    success: Bool[Array, ""]
    diverged: Bool[Array, ""]
    states: Student | None = None

    @property
    def early_stopped_loss(self):
        return early_stopped_loss(self.test_loss, self.diverged)


def task_rates(experiment: Experiment) -> Float[Array, " K"]:
    """ρ_k per unit time t = lr x steps: w_k m_k (paper alternation), w_k otherwise; 0 if untrained."""
    tr = experiment.train
    m = np.asarray(tr.task_multiplicity if tr.protocol == "paper" else [1] * tr.n_tasks, float)
    active = np.asarray([k in tr.active_tasks for k in range(tr.n_tasks)], float)
    return tr.task_weights * jnp.asarray(m * active)


def reduce_student(student: Student, basis: Float[Array, "D N"]) -> Student:
    """Project a full student (N inputs) onto the reduced input (D + H') of the population flow.

    The first weight matrix W (W_1, or the stacked heads when L = 0) becomes [W Eᵀ, F] with
    F F ᵀ = W (I − EᵀE) Wᵀ (F lower-triangular, H' = rows of W): only F Fᵀ enters the flow, so
    this is exact (docs/theory.md §5)."""
    W = _first_matrix(student)
    omega = W @ basis.T
    F = cholesky(W @ W.T - omega @ omega.T)
    return _with_first_matrix(student, jnp.concatenate([omega, F], axis=1))


def lift_student(reduced: Student, initial: Student, basis: Float[Array, "D N"]) -> Student:
    """The full network (N inputs) whose population flow the reduced student `reduced` follows.

    With W_0 the initial first matrix (`initial`, the student `reduce_student` was applied to),
    its part orthogonal to the teacher subspace is F_0 Qᵀ (F_0 = the reduced F at t = 0, Q with
    orthonormal columns, fixed by the flow), so W(t) = Ω(t) E + F(t) Qᵀ.  Lets the theory's
    network be evaluated on any concrete test set, e.g. the simulation's own (common random
    numbers: both sides then share the test set's sampling error)."""
    W0 = _first_matrix(initial)
    D = basis.shape[0]
    perp = W0 - (W0 @ basis.T) @ basis
    F0 = _first_matrix(reduce_student(initial, basis))[:, D:]
    Qt = _forward_substitution(F0, perp)
    Wr = _first_matrix(reduced)
    return _with_first_matrix(reduced, Wr[:, :D] @ basis + Wr[:, D:] @ Qt)


def _forward_substitution(L: Float[Array, "n n"], B: Float[Array, "n m"]) -> Float[Array, "n m"]:
    """L⁻¹ B for lower-triangular L, in plain jnp (see `cholesky` on LAPACK in vmaps)."""
    n = L.shape[0]

    def body(i, X):
        row = (B[i] - L[i] @ X) / L[i, i]
        return X.at[i].set(row)

    return jax.lax.fori_loop(0, n, body, jnp.zeros_like(B))


def _first_matrix(student: Student) -> Float[Array, "rows N"]:
    """The matrix that multiplies the input: W_1, or the stacked heads when L = 0."""
    if student.layers:
        return student.layers[0].weight
    return jnp.concatenate([h.weight for h in student.heads], axis=0)


def _with_first_matrix(student: Student, new: Float[Array, "rows Dp"]) -> Student:
    if student.layers:
        return eqx.tree_at(lambda s: s.layers[0], student, Dense(new, student.layers[0].bias))
    C = student.heads[0].weight.shape[0]
    heads = tuple(Dense(new[k * C : (k + 1) * C], h.bias) for k, h in enumerate(student.heads))
    return eqx.tree_at(lambda s: s.heads, student, heads)


def typical_reduced(student: Student, D: int, gain) -> Student:
    """Reduced initial student in the N → ∞ limit: first weight matrix [0, gain · I]."""
    rows = _first_matrix(student).shape[0]
    return _with_first_matrix(student, jnp.concatenate([jnp.zeros((rows, D)), gain * jnp.eye(rows)], axis=1))


def population_vector_field(student: Student, consts: TeacherConstants, T: Float[Array, "K R Dp"], rho, g, active) -> Student:
    """dθ/dt = −Σ_k ρ_k ∂L_k/∂θ for the reduced student θ (population Stein gradients).

    The chain rule from (A_k, a_k) to every weight is a vector–Jacobian product with the Stein
    gradients as cotangents, so the field stays differentiable in θ, Λ, π and T (needed to
    differentiate the solution with respect to r, s, σ, ... for fitting)."""
    maps, vjp = jax.vjp(lambda s: tuple(s.effective_linear(k) for k in active), student)
    cot = []
    for k, (A, a) in zip(active, maps):
        mom = softmax_moments(a, A, g)
        cot.append((rho[k] * (mom.jac @ A - consts.Lam[k] @ T[k]), rho[k] * (mom.mean_p - consts.pi[k])))
    (grad,) = vjp(tuple(cot))
    return jax.tree_util.tree_map(jnp.negative, grad)


def population_metrics(student: Student, teacher: Teacher, consts: TeacherConstants, T, x_eval, xi_eval, active, smooth=False):
    """Test loss (with standard error), accuracy and overlaps of the reduced student.

    Loss: joint Monte Carlo of CE = lse(z) − z_y over (student logits, teacher fields, logit
    noise, flips) — lse and z_y nearly cancel, so this has far less variance than estimating
    E[lse z] alone.  Its dependence on the teacher parameters (piecewise constant through the
    sampled labels) is replaced, for gradients only, by the exact ∂/∂(s, σ, ε, q) of
    −E[z_y] = −(πᵀa + tr(A T̃ᵀ Λᵀ)), so `jax.grad` of the loss is right for fitting.
    Accuracy: the same joint Monte Carlo. `x_eval`: (n, D') antithetic draws; `xi_eval`: (n, C)."""
    cfg = teacher.config
    K, C = cfg.n_tasks, cfg.n_classes
    n = x_eval.shape[0]
    As, loss, se, acc = [], [], [], []
    for k in range(K):
        A, a = student.effective_linear(k)
        As.append(A)
        if k not in active:
            loss.append(jnp.nan), se.append(jnp.nan), acc.append(jnp.nan)
            continue
        z = x_eval @ A.T + a
        lse = jax.nn.logsumexp(z, axis=-1)
        clean = cfg.scale[k] * (x_eval @ T[k].T) @ teacher.w[k].T
        y0 = jnp.argmax(clean, -1)
        ys = jnp.argmax(clean + cfg.noise[k] * xi_eval, -1)
        ce0 = lse - jnp.take_along_axis(z, y0[:, None], -1)[:, 0]
        ces = lse - jnp.take_along_axis(z, ys[:, None], -1)[:, 0]
        ceu = lse - jnp.mean(z, -1)  # flipped labels are uniform over the C classes
        q, e = cfg.noisy_fraction[k], cfg.flip[k]
        ce = (1 - e) * (q * ces + (1 - q) * ce0) + e * ceu
        pair = 0.5 * (ce[: n // 2] + ce[n // 2 :])
        As_ = jax.lax.stop_gradient((A, a))
        ezy = consts.pi[k] @ As_[1] + jnp.sum((As_[0] @ T[k].T) * consts.Lam[k])
        if smooth:  # E[lse z] (label-free quadrature) − E[z_y] (closed form): smooth in every parameter
            ezy_full = consts.pi[k] @ a + jnp.sum((A @ T[k].T) * consts.Lam[k])
            loss.append(jnp.mean(lse) - ezy_full)
            pair = 0.5 * (lse[: n // 2] + lse[n // 2 :])
        else:
            loss.append(jnp.mean(ce) - (ezy - jax.lax.stop_gradient(ezy)))
        se.append(jnp.std(pair) / jnp.sqrt(n // 2))
        am = jnp.argmax(z, -1)
        acc.append((1 - e) * (q * jnp.mean(am == ys) + (1 - q) * jnp.mean(am == y0)) + e / C)
    As = jnp.stack(As)
    AA = jnp.einsum("jcd,ked->jkce", As, As)
    AU = jnp.einsum("kcd,krd->kcr", As, T)
    return jnp.stack(loss), jnp.stack(se), jnp.stack(acc), AA, AU


def population_theory(
    experiment: Experiment,
    seeds: Seeds,
    ts: Float[Array, " T"] | None = None,
    *,
    solver: PopulationSolver | None = None,
    student: Student | None = None,
    initial: str = "quenched",
    save_states: bool = False,
) -> TheoryResult:
    """Integrate the population gradient flow of `experiment`'s linear student and report curves.

    **Arguments:**

    - `experiment`: as for `simulate` (teacher, student, train); the student must be linear.
    - `seeds`: teacher and init seeds as in the simulation. The initial condition is the
      *quenched* projection of the simulation's exact initial student (or of `student`, if
      given); with independent seeds it is a typical draw from the init distribution.
    - `ts`: times t = lr x steps to save at; default: the simulation's evaluation times.
    - `solver`: `PopulationSolver` settings (quadrature sizes, tolerances); default
      `PopulationSolver()`.
    - `initial`: `"quenched"` (default): the exact reduced projection of the initial student;
      `"typical"`: the high-dimensional limit N → ∞ of the init distribution, where the first
      layer has no overlap with the teacher subspace (Ω = 0) and Gram matrix init_scale² I
      (orthogonal and Gaussian init alike); deeper layers and heads are drawn as in simulation.
    - `save_states`: also return the reduced student at every saved time (`TheoryResult.states`).

    **Returns:** `TheoryResult`. Pure and jit/vmap-able over the experiment's array fields.
    """
    if experiment.student.activation != "linear":
        raise ValueError("population_theory needs a linear student (activation='linear')")
    # Built here, not as the default argument: arrays created at import would start JAX's
    # backend on `import mtjax`, after which `jax.distributed.initialize` is refused.
    solver = PopulationSolver() if solver is None else solver
    tr = experiment.train
    teacher = Teacher.sample(experiment.teacher, key=seeds.key("teacher"))
    if student is None:
        student = Student.init(
            experiment.student, experiment.teacher.n_features, experiment.teacher.n_classes,
            experiment.teacher.n_tasks, key=seeds.key("init"),
        )  # fmt: skip
    if initial == "quenched":
        st0 = reduce_student(student, teacher.basis)
    elif initial == "typical":
        st0 = typical_reduced(student, teacher.basis.shape[0], experiment.student.init_scale)
    else:
        raise ValueError(f"initial={initial!r} is not one of ['quenched', 'typical']")
    D = teacher.basis.shape[0]
    Dp = _first_matrix(st0).shape[1]
    T = jnp.pad(teacher_coefficients(experiment.teacher), ((0, 0), (0, 0), (0, Dp - D)))
    consts = teacher_constants(teacher)
    rho = task_rates(experiment)
    active = tr.active_tasks
    C = experiment.teacher.n_classes
    g = sobol_normals(solver.n_quad, C, seed=solver.quad_seed)
    xe = sobol_normals(solver.n_quad_eval, Dp + C, seed=solver.quad_seed + 1)
    x_eval, xi_eval = xe[:, :Dp], xe[:, Dp:]
    if ts is None:
        ts = tr.learning_rate * jnp.asarray(tr.eval_steps, float)
    ts = jnp.asarray(ts, float)

    # The ODE state is the tuple of the student's arrays: diffrax's save buffers reject the empty
    # `layers` node of a depth-0 student.
    leaves0, treedef = jax.tree_util.tree_flatten(st0)

    # Everything traced travels as `args` (not closed over): BacksolveAdjoint's custom VJP
    # rejects closed-over tracers and differentiates with respect to `args` only.
    def field(t, y, args):
        consts, T, rho, g = args
        st = jax.tree_util.tree_unflatten(treedef, list(y))
        return tuple(jax.tree_util.tree_leaves(population_vector_field(st, consts, T, rho, g, active)))

    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        diffrax.Tsit5(),
        t0=0.0,
        t1=ts[-1],
        dt0=None,
        y0=tuple(leaves0),
        args=(consts, T, rho, g),
        saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=diffrax.PIDController(rtol=solver.rtol, atol=solver.atol),
        max_steps=solver.max_steps,
        adjoint=solver.adjoint,
        throw=False,
    )
    # lax.map, not vmap: one saved time at a time keeps the quadrature's memory independent of T.
    ys = jax.tree_util.tree_unflatten(treedef, list(sol.ys))
    metrics = jax.lax.map(lambda y: population_metrics(y, teacher, consts, T, x_eval, xi_eval, active, solver.smooth_loss), ys)
    loss, se, acc, AA, AU = metrics
    code = jnp.asarray(sol.result._value, jnp.int32)
    success = code == 0
    finite = jnp.all(jnp.where(jnp.isnan(loss) & ~jnp.asarray([k in active for k in range(tr.n_tasks)]), True, jnp.isfinite(loss)))
    diverged = ~success | ~finite
    return TheoryResult(ts, ts / tr.learning_rate, loss, se, acc, AA, AU, code, success, diverged,
                        ys if save_states else None)


population_theory_jit = eqx.filter_jit(population_theory)


def theory_history(th: TheoryResult):
    """A `TheoryResult` as a `History` (train loss = NaN: the population has no training set),
    so sweeps, tables, benefits and plots treat theory and simulation alike."""
    from ._train import History

    return History(th.step.astype(jnp.int32), th.time, jnp.full_like(th.test_loss, jnp.nan), th.test_loss,
                   th.test_loss_se, th.test_acc, th.diverged)
