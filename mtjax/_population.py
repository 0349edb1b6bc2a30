"""Mean-field theory I: exact population (infinite-data) gradient flow of multitask students.

The reduction (docs/theory.md §5): with E (D x N) an orthonormal basis of span{U_k} and the
first layer written W_1 = Ω E + F Qᵀ, population gradient flow never leaves that form, so the
flow of the full network equals the flow of the *same* network on a reduced input of dimension
D' = D + H' (H' = H, or K·C for L = 0) with teacher subspaces T̃_k = [T_k, 0].  The state is an
`mtjax.Student` on the reduced input; its population gradient is supplied in closed (Stein) form

    ∂L_k/∂A_k = J̄_k A_k − Λ_k T̃_k,        ∂L_k/∂a_k = E[p] − π_k,

and the chain rule to every weight is taken by autodiff of the surrogate Σ_k ρ_k ⟨G_k, A_k(θ)⟩,
so simulation and theory share one model.  A nonlinear trunk keeps the reduction (Stein's
lemma needs Gaussian inputs, not linearity); its expectations are taken over the reduced input
itself (`mtjax._population_nonlinear`, docs/theory.md §5.2).  Time t = learning rate x steps;
task k moves with rate ρ_k (ρ_k = w_k m_k in the paper protocol, w_k otherwise).
"""

from __future__ import annotations

import dataclasses

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._custom_types import Array, Bool, Float, Int
from ._experiment import Experiment, Seeds
from ._gaussian import TeacherConstants, cholesky, forward_substitution, sobol_normals, stein_gradient, teacher_constants
from ._metrics import mix, noisy_labels
from ._population_nonlinear import label_model, nonlinear_metrics, nonlinear_vector_field
from ._student import Dense, Student
from ._teacher import Teacher, teacher_coefficients
from ._train import early_stopped_loss
from ._validation import check_choice, check_int, check_range, is_concrete


ESTIMATORS = ("direct", "score")
# Heun steps per saved interval of a nonlinear student's flow when the solver leaves
# `n_substeps` at 0 (docs/theory.md §5.2): its expectations are D'-dimensional, and a fixed point
# set would be fitted by the flow like a training set.
NONLINEAR_SUBSTEPS = 10


def is_nonlinear(student_config) -> bool:
    """True if the student has a nonlinear trunk (a depth-0 student is linear whatever its
    activation)."""
    return student_config.activation != "linear" and student_config.depth > 0
METHODS = {"tsit5": diffrax.Tsit5, "bosh3": diffrax.Bosh3}


class PopulationSolver(eqx.Module):
    """Numerical settings of the population theory.

    - `n_quad`: quasi-Monte Carlo points (scrambled Sobol, antithetic) for E[p] and J̄ in the
      vector field (static). The late-time flow is sensitive to J̄: 4096 Sobol points agreed
      with 16384 random draws and with small-lr online SGD to 2e-4 nats where 2048 random
      draws were 0.03 nats off (docs/theory.md §4).
    - `n_quad_eval`: points for the reported test loss and accuracy (static).
    - `quad_seed`: scrambling seed of the point sets (static).
    - `estimator`: how J̄ A enters the field (static): `"direct"` (default) averages
      (diag p − p pᵀ) A over the points; `"score"` averages p gᵀ L⁻¹ A (Stein's lemma once
      more, `mtjax._gaussian.stein_gradient`). With large logits p is nearly one-hot and the
      direct estimate decays exponentially in |A| once every point is confidently classified:
      the flow then runs off to over-confident students and the adaptive solver to hundreds of
      rejected steps (on the paper-sized model at n_quad 1024: up to 1.5 nats off, 500 steps).
      The score estimate keeps the right large-|A| limit; it is less accurate than the direct
      one while the logits are O(1) (docs/theory.md §4).
    - `rtol`, `atol`: PID step-size controller tolerances (arrays).
    - `pcoeff`, `icoeff`: PID controller coefficients (static; default 0, 1, an I controller as
      before). (0.3, 0.4) halved the rejected steps on the paper-sized model at equal accuracy:
      the late flow is mildly stiff and its step size is stability-limited.
    - `n_substeps`: 0 (default): adaptive diffrax solve with one fixed point set (common random
      numbers). n > 0: fixed-step Heun with n steps per saved interval and *fresh* quadrature
      points at every field evaluation (static). With one fixed set the flow adapts to its
      points (like training on a finite sample of n_quad logit draws) and ends biased towards
      over-confident students: on the paper-sized model 0.06-0.08 nats at n_quad 1024 and 0.02-0.03
      at 2048 (score estimator, t = 50). Fresh points turn that bias into noise that the flow
      averages over steps (docs/theory.md §4): 1024 points then land within 0.013 nats of a
      32768-point solve with 10 steps per interval and 0.004 with 20 (dt = 0.5, 0.25 on the
      paper-sized model, t up to 50), with every point of a vmapped chunk taking the same steps
      (no lockstep wait for the stiffest point). The points cycle through
      `n_sets` scrambled Sobol sets with random coordinate signs per evaluation (deterministic
      given `quad_seed`, so the result is still a smooth function of the parameters).
      `adjoint` and `rtol`/`atol` are unused in this mode; `result` is always success.
      A nonlinear trunk (docs/theory.md §5.2) always takes this mode, its points being the
      R + D' coordinates of the reduced input: `n_substeps = 0` then selects
      `NONLINEAR_SUBSTEPS` (10), and where the report times are concrete each interval gets at
      least enough steps for Heun steps <= `dt_max`; `estimator` and `smooth_loss` do not apply
      (its loss is the label-averaged estimate, smooth in every parameter).
    - `dt_max`: longest Heun step of a nonlinear trunk's flow, in time units (static; default
      0.1). Its steps are stability-limited like a learning rate: on the paper-sized ReLU
      model (t up to 50) steps of 0.42 ended 0.11–0.26 nats off a converged solve (8192 points,
      steps of 0.1), steps of 0.1 with 2048 points within 0.003 (docs/theory.md §6.2). Applied where the report times are known when
      `population_theory` is called (direct calls, derivatives); inside a caller's `vmap` over
      learning rates or times (sweeps) the times are traced and `n_substeps` alone decides.
    - `n_sets`: Sobol sets cycled through when `n_substeps > 0` (static).
    - `method`: `"tsit5"` (default) or `"bosh3"` (static). Where the step size is set by stability
      rather than accuracy, Bosh3's 3 stages per step cost fewer field evaluations than Tsit5's 6.
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
    estimator: str = eqx.field(static=True)
    method: str = eqx.field(static=True)
    n_substeps: int = eqx.field(static=True)
    n_sets: int = eqx.field(static=True)
    dt_max: float = eqx.field(static=True)
    pcoeff: float = eqx.field(static=True)
    icoeff: float = eqx.field(static=True)
    rtol: Float[Array, ""]
    atol: Float[Array, ""]
    adjoint: diffrax.AbstractAdjoint

    def __init__(self, n_quad: int = 4096, n_quad_eval: int = 16384, rtol=1e-4, atol=1e-6, max_steps: int = 4096, quad_seed: int = 0,
                 adjoint: diffrax.AbstractAdjoint | None = None, smooth_loss: bool = False, estimator: str = "direct",
                 method: str = "tsit5", pcoeff: float = 0.0, icoeff: float = 1.0, n_substeps: int = 0, n_sets: int = 16,
                 dt_max: float = 0.1):
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
        self.estimator = check_choice("estimator", estimator, ESTIMATORS)
        self.method = check_choice("method", method, tuple(METHODS))
        self.n_substeps = check_int("n_substeps", n_substeps, 0)
        self.n_sets = check_int("n_sets", n_sets, 1)
        check_range("dt_max", dt_max, 0.0, lo_open=True)
        self.dt_max = float(dt_max)
        check_range("pcoeff", pcoeff, 0.0)
        check_range("icoeff", icoeff, 0.0, lo_open=True)
        self.pcoeff, self.icoeff = float(pcoeff), float(icoeff)


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
    return experiment.train.task_weights * jnp.asarray(rate_multipliers(experiment.train))


def rate_multipliers(tr) -> np.ndarray:
    """ρ_k / w_k from the static train config (numpy, (K,)): m_k (paper alternation) or 1, times
    1 if task k is trained, else 0."""
    m = np.asarray(tr.task_multiplicity if tr.protocol == "paper" else [1] * tr.n_tasks, float)
    return m * np.asarray([k in tr.active_tasks for k in range(tr.n_tasks)], float)


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
    Qt = forward_substitution(F0, perp)
    Wr = _first_matrix(reduced)
    return _with_first_matrix(reduced, Wr[:, :D] @ basis + Wr[:, D:] @ Qt)


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


def population_vector_field(student: Student, consts: TeacherConstants, T: Float[Array, "K R Dp"], rho, g, active, score=0.0) -> Student:
    """dθ/dt = −Σ_k ρ_k ∂L_k/∂θ for the reduced student θ (population Stein gradients).

    The chain rule from (A_k, a_k) to every weight is a vector–Jacobian product with the Stein
    gradients as cotangents, so the field stays differentiable in θ, Λ, π and T (needed to
    differentiate the solution with respect to r, s, σ, ... for fitting)."""
    (A_all, a_all), vjp = jax.vjp(lambda s: s.effective_linear_stacked(active), student)
    C = A_all.shape[0] // len(active)
    cot_A, cot_a = [], []
    for i, k in enumerate(active):
        A, a = A_all[i * C : (i + 1) * C], a_all[i * C : (i + 1) * C]
        GA, mean_p = stein_gradient(a, A, g, score)
        cot_A.append(rho[k] * (GA - consts.Lam[k] @ T[k]))
        cot_a.append(rho[k] * (mean_p - consts.pi[k]))
    (grad,) = vjp((jnp.concatenate(cot_A), jnp.concatenate(cot_a)))
    return jax.tree_util.tree_map(jnp.negative, grad)


def population_metrics(student: Student, teacher: Teacher, consts: TeacherConstants, T, x_eval, xi_eval, active, smooth=False):
    """Test loss (with standard error), accuracy and overlaps of the reduced student.

    Loss: joint Monte Carlo of CE = lse(z) − z_y over (student logits, teacher fields, logit
    noise, flips) — lse and z_y nearly cancel, so this has far less variance than estimating
    E[lse z] alone.  Its dependence on the teacher parameters (piecewise constant through the
    sampled labels) is replaced, for gradients only, by the exact ∂/∂(s, σ, ε, q) of
    −E[z_y] = −(πᵀa + tr(A T̃ᵀ Λᵀ)), so `jax.grad` of the loss is right for fitting.
    Accuracy: the same joint Monte Carlo.  The loss estimate subtracts the control variate
    β (z_y − E[z_y]) with E[z_y] in closed form and β the sample regression coefficient: it
    takes the lower-variance side of the joint estimate and of E[lse] − E[z_y] at each point.

    The draws are of the low-dimensional joint Gaussian, not of the reduced input: with
    u = T̃_k x ~ N(0, I_R) (T̃_k has orthonormal rows) the logits are z = a + P u + L_⊥ w with
    P = A T̃_kᵀ and L_⊥ L_⊥ᵀ = A Aᵀ − P Pᵀ, so a draw costs C(R + C) instead of C·D' products.
    `x_eval`: (n, R + C) antithetic standard normals (u, then w); `xi_eval`: (n, C) logit noise."""
    cfg = teacher.config
    K, C = cfg.n_tasks, cfg.n_classes
    R = T.shape[1]
    n = x_eval.shape[0]
    u, w_pts = x_eval[:, :R], x_eval[:, R : R + C]
    As, loss, se, acc = [], [], [], []
    for k in range(K):
        A, a = student.effective_linear(k)
        As.append(A)
        if k not in active:
            loss.append(jnp.nan), se.append(jnp.nan), acc.append(jnp.nan)
            continue
        # The draws depend on the student only (T̃ held constant): the law of z does not depend on
        # the teacher, so neither may the sample, or its pathwise derivative would add to the
        # exact teacher-parameter derivative of E[z_y] taken below.
        Ts = jax.lax.stop_gradient(T[k])
        P = A @ Ts.T
        # A_⊥ = A (I − T̃ᵀT̃) directly: A Aᵀ − P Pᵀ cancels catastrophically in float32 once a
        # clean task's A lies almost inside its teacher subspace. The relative jitter (1e-6 of
        # the mean variance) only keeps an exactly rank-deficient A_⊥ finite.
        A_perp = A - P @ Ts
        L_perp = cholesky(A_perp @ A_perp.T, jitter=1e-6)
        z = u @ P.T + w_pts @ L_perp.T + a
        lse = jax.nn.logsumexp(z, axis=-1)
        clean = cfg.scale[k] * u @ teacher.w[k].T
        y0, ys = noisy_labels(clean, cfg.noise[k], xi_eval)
        q, e = cfg.noisy_fraction[k], cfg.flip[k]
        # z_y of the label mixture (noisy fraction q, flips ε to a uniform class), per draw.
        zy = mix(e, q, jnp.take_along_axis(z, y0[:, None], -1)[:, 0],
                 jnp.take_along_axis(z, ys[:, None], -1)[:, 0]) + e * jnp.mean(z, -1)  # fmt: skip
        ce = lse - zy
        sg = jax.lax.stop_gradient
        # E[z_y] in closed form: with respect to the student (for the control variate) and with
        # respect to the teacher parameters (the labels carry no derivative).
        ezy_student = sg(consts.pi[k]) @ a + jnp.sum(P * sg(consts.Lam[k]))
        ezy_teacher = consts.pi[k] @ sg(a) + jnp.sum((sg(A) @ T[k].T) * consts.Lam[k])
        if smooth:  # E[lse z] (label-free quadrature) − E[z_y] (closed form): smooth in every parameter
            est = lse
            loss.append(jnp.mean(lse) - ezy_student - (ezy_teacher - sg(ezy_teacher)))
        else:
            # Control variate z_y with its known mean: the regression coefficient β = Cov(ce, z_y) /
            # Var(z_y) (estimated from the same draws, O(1/n) bias) interpolates between the
            # joint estimate (β = 0) and E[lse] − E[z_y] (β = −1), whichever has less variance.
            dzy = zy - ezy_student
            beta = sg(jnp.mean((ce - jnp.mean(ce)) * (zy - jnp.mean(zy))) / (jnp.var(zy) + 1e-30))
            est = ce - beta * dzy
            loss.append(jnp.mean(ce) - beta * jnp.mean(dzy) - (ezy_teacher - sg(ezy_teacher)))
        pair = 0.5 * (est[: n // 2] + est[n // 2 :])
        se.append(jnp.std(pair) / jnp.sqrt(n // 2))
        am = jnp.argmax(z, -1)
        acc.append(mix(e, q, jnp.mean(am == y0), jnp.mean(am == ys)) + e / C)
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
    """Integrate the population gradient flow of `experiment`'s student and report curves.

    **Arguments:**

    - `experiment`: as for `simulate` (teacher, student, train); any trunk activation (a
      nonlinear one integrates the reduced network's flow with fresh quadrature points,
      docs/theory.md §5.2; its `overlap_AA`/`overlap_AU` are NaN).
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

    Called with concrete inputs, the solve is compiled once per shape that matters and cached
    (`mtjax.set_compiled_cache_size`, `mtjax.release_compiled`): the report times are padded to
    a power of two (`_finite.compiled._bucket`; the metrics are skipped at the padding), so the number of
    report times changes the program only at powers of two, and data sizes not at all
    (docs/dmft.md §3.1).  Under a caller's `jit`/`vmap` it is traced into the
    caller's program.
    """
    from ._finite.compiled import _bucket, _call_compiled, _report_times

    if initial not in ("quenched", "typical"):
        raise ValueError(f"initial={initial!r} is not one of ['quenched', 'typical']")
    # Built here, not as the default argument: arrays created at import would start JAX's
    # backend on `import mtjax`, after which `jax.distributed.initialize` is refused.
    solver = PopulationSolver() if solver is None else solver
    tr = experiment.train
    if ts is None:
        ts_first_is_zero = int(tr.eval_steps[0]) == 0
    else:
        ts_first_is_zero = is_concrete(ts) and float(np.asarray(ts)[0]) == 0.0
    ts, _ = _report_times(tr, ts)
    if is_nonlinear(experiment.student):
        solver = _nonlinear_steps(solver, ts)
    mult = np.asarray(rate_multipliers(tr), jax.dtypes.canonicalize_dtype(float))
    args = (experiment.teacher, experiment.student, seeds, student, tr.task_weights, mult, tr.learning_rate)
    statics = (solver, initial, save_states, tr.active_tasks, ts_first_is_zero)
    if not is_concrete((args, ts, solver)):
        return _population_solve(*args, ts, None, *statics)
    n = ts.shape[0]
    padded = np.concatenate([ts, np.full(_bucket(n) - n, ts[-1], ts.dtype)])
    # The learning rate as an array even where a caller set a Python float: one program for all.
    args = args[:-1] + (np.asarray(tr.learning_rate, ts.dtype),)
    th = _call_compiled(_population_solve, *args, padded, np.asarray(n, np.int32), *statics, large=True)
    # device_put, not jnp.asarray: the latter compiles a staging program per shape.
    return eqx.tree_at(lambda r: (r.time, r.step, r.test_loss, r.test_loss_se, r.test_acc, r.overlap_AA, r.overlap_AU,
                                  r.states), th,
                       replace_fn=lambda t: jax.tree_util.tree_map(lambda a: jax.device_put(np.asarray(a)[:n]), t),
                       is_leaf=lambda x: x is None)  # fmt: skip


def _nonlinear_steps(solver: PopulationSolver, ts) -> PopulationSolver:
    """The solver with `n_substeps` set for a nonlinear trunk: `n_substeps` (or
    `NONLINEAR_SUBSTEPS`), raised so that no Heun step is longer than `dt_max` when the report
    times are concrete (the number of steps is a static shape)."""
    n_sub = solver.n_substeps or NONLINEAR_SUBSTEPS
    if is_concrete(ts):
        t = np.asarray(ts, float)
        longest = float(np.max(np.diff(np.concatenate([[0.0], t])))) if t.size else 0.0
        n_sub = max(n_sub, int(np.ceil(longest / solver.dt_max - 1e-9)))
    return solver if n_sub == solver.n_substeps else dataclasses.replace(solver, n_substeps=n_sub)


def _population_solve(tc, sc, seeds, student, task_weights, mult, learning_rate, ts, n_valid,
                      solver: PopulationSolver, initial: str, save_states: bool, active: tuple[int, ...],
                      ts_first_is_zero: bool) -> TheoryResult:
    """The body of `population_theory`.  `n_valid`: None, or the number of report times when
    `ts` is padded with its last time: the metrics are then computed for the first `n_valid`
    times only (the rest are 0) and only those count for `diverged`."""
    teacher = Teacher.sample(tc, key=seeds.key("teacher"))
    nonlinear = is_nonlinear(sc)
    if student is None:
        student = Student.init(sc, tc.n_features, tc.n_classes, tc.n_tasks, key=seeds.key("init"))
    if initial == "quenched":
        st0 = reduce_student(student, teacher.basis)
    else:
        st0 = typical_reduced(student, teacher.basis.shape[0], sc.init_scale)
    D = teacher.basis.shape[0]
    Dp = _first_matrix(st0).shape[1]
    T = jnp.pad(teacher_coefficients(tc), ((0, 0), (0, 0), (0, Dp - D)))
    consts = None if nonlinear else teacher_constants(teacher)
    labels = label_model(teacher) if nonlinear else None
    rho = task_weights * jnp.asarray(mult)
    C = tc.n_classes
    R = tc.rank
    # Points of the field's quadrature: C-dimensional logit draws for a linear student; (u, g) of
    # the reduced input, R + D' dimensions, for a nonlinear one.
    dim = R + Dp if nonlinear else C
    g = sobol_normals(solver.n_quad, dim, seed=solver.quad_seed)
    xe = sobol_normals(solver.n_quad_eval, R + Dp if nonlinear else R + 2 * C, seed=solver.quad_seed + 1)
    x_eval, xi_eval = (xe, None) if nonlinear else (xe[:, : R + C], xe[:, R + C :])
    ts = jnp.asarray(ts)

    # The ODE state is the tuple of the student's arrays: diffrax's save buffers reject the empty
    # `layers` node of a depth-0 student.
    leaves0, treedef = jax.tree_util.tree_flatten(st0)

    # Everything traced travels as `args` (not closed over): BacksolveAdjoint's custom VJP
    # rejects closed-over tracers and differentiates with respect to `args` only.
    score = 1.0 if solver.estimator == "score" else 0.0

    def field(t, y, args):
        teach, T, rho, g = args
        st = jax.tree_util.tree_unflatten(treedef, list(y))
        if nonlinear:
            out = nonlinear_vector_field(st, teach, T, rho, g, active)
        else:
            out = population_vector_field(st, teach, T, rho, g, active, score)
        return tuple(jax.tree_util.tree_leaves(out))

    teach = labels if nonlinear else consts
    # A nonlinear trunk's step count was set by `population_theory` (`_nonlinear_steps`).
    if solver.n_substeps:
        ys = _fresh_heun(field, tuple(leaves0), (teach, T, rho), ts, solver, dim, solver.n_substeps,
                         first_is_zero=ts_first_is_zero)
        code = jnp.asarray(0, jnp.int32)
    else:
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(field),
            METHODS[solver.method](),
            t0=0.0,
            t1=ts[-1],
            dt0=None,
            y0=tuple(leaves0),
            args=(teach, T, rho, g),
            saveat=diffrax.SaveAt(ts=ts),
            stepsize_controller=diffrax.PIDController(rtol=solver.rtol, atol=solver.atol, pcoeff=solver.pcoeff, icoeff=solver.icoeff),
            max_steps=solver.max_steps,
            adjoint=solver.adjoint,
            throw=False,
        )
        ys = sol.ys
        code = jnp.asarray(sol.result._value, jnp.int32)
    ys = jax.tree_util.tree_unflatten(treedef, list(ys))

    # lax.map, not vmap: one saved time at a time keeps the quadrature's memory independent of T.
    def metric(y):
        if nonlinear:
            return nonlinear_metrics(y, labels, T, x_eval, active, tc.n_tasks)
        return population_metrics(y, teacher, consts, T, x_eval, xi_eval, active, solver.smooth_loss)

    n_ts = ts.shape[0]
    valid = jnp.ones(n_ts, bool) if n_valid is None else jnp.arange(n_ts) < n_valid
    if n_valid is None:
        metrics = jax.lax.map(metric, ys)
    else:  # padded report times: skip the metrics there (2–3 ms a time at the defaults, depth 1, H = 8)
        shapes = jax.eval_shape(metric, jax.tree_util.tree_map(lambda a: a[0], ys))
        zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        metrics = jax.lax.map(lambda iy: jax.lax.cond(iy[0] < n_valid, metric, lambda y: zeros, iy[1]),
                              (jnp.arange(n_ts), ys))
    loss, se, acc, AA, AU = metrics
    success = code == 0
    trained = jnp.asarray([k in active for k in range(tc.n_tasks)])
    finite = jnp.all(jnp.where((jnp.isnan(loss) & ~trained) | ~valid[:, None], True, jnp.isfinite(loss)))
    diverged = ~success | ~finite
    return TheoryResult(ts, ts / learning_rate, loss, se, acc, AA, AU, code, success, diverged,
                        ys if save_states else None)


def _fresh_heun(field, y0, args, ts, solver: PopulationSolver, dim: int, n_sub: int, first_is_zero: bool):
    """Fixed-step Heun from t = 0 with `n_sub` steps per saved interval and fresh `dim`-dimensional
    quadrature points at each field evaluation; returns the states at `ts` (leading T axis).

    Points of evaluation e: Sobol set e mod n_sets (seeds quad_seed + 2, ...), each coordinate's
    sign flipped at random (a key folded with e). Sign flips and the antithetic pairs keep every
    set an exact N(0, I) design, so each evaluation is an unbiased estimate of the field and the
    steps average the quadrature error out instead of letting the flow settle onto one set."""
    sets = jnp.stack([sobol_normals(solver.n_quad, dim, seed=solver.quad_seed + 2 + i) for i in range(solver.n_sets)])
    key = jax.random.key(solver.quad_seed)

    def points(e):
        flip = jax.random.bernoulli(jax.random.fold_in(key, e), 0.5, (dim,))
        return sets[e % solver.n_sets] * jnp.where(flip, -1.0, 1.0)

    def axpy(y, k, c):
        return jax.tree_util.tree_map(lambda a, b: a + c * b, y, k)

    def step(carry, i):
        y, dt = carry
        k1 = field(None, y, (*args, points(2 * i)))
        k2 = field(None, axpy(y, k1, dt), (*args, points(2 * i + 1)))
        return (axpy(y, jax.tree_util.tree_map(jnp.add, k1, k2), dt / 2), dt), None

    def interval(y, j_and_span):
        j, (t_a, t_b) = j_and_span
        (y, _), _ = jax.lax.scan(step, (y, (t_b - t_a) / n_sub), j * n_sub + jnp.arange(n_sub))
        return y, y

    starts = jnp.concatenate([jnp.zeros(1, ts.dtype), ts[:-1]])
    spans = (starts, ts)
    if first_is_zero:  # the first saved time is t = 0: no steps to take before it
        _, ys = jax.lax.scan(interval, y0, (jnp.arange(1, ts.shape[0]), (starts[1:], ts[1:])))
        return jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a[None], b]), y0, ys)
    _, ys = jax.lax.scan(interval, y0, (jnp.arange(ts.shape[0]), spans))
    return ys


def theory_history(th: TheoryResult):
    """A `TheoryResult` as a `History` (train loss = NaN: the population has no training set),
    so sweeps, tables, benefits and plots treat theory and simulation alike."""
    from ._train import History

    return History(th.step.astype(jnp.int32), th.time, jnp.full_like(th.test_loss, jnp.nan), th.test_loss,
                   th.test_loss_se, th.test_acc, th.diverged)
