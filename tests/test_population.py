"""Population (infinite-data) theory: constants, quadrature, the reduction, and theory = simulation."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mtjax
from mtjax._gaussian import sobol_normals, softmax_moments, stein_gradient, teacher_constants
from mtjax._population import (
    population_metrics,
    PopulationSolver,
    population_theory,
    population_vector_field,
    reduce_student,
    task_rates,
)
from helpers import jit_optimised, replace, tree_allclose


def _spec(protocol="online", **train):
    tr = {"protocol": protocol, "n_steps": 600, "eval_every": 150, "learning_rate": 0.01, "batch_size": 512, "n_test": 20000}
    tr.update(train)
    return {
        "teacher": {"n_features": 40, "rank": 3, "n_classes": 3, "scale": [3.0, 2.0], "relatedness": 0.5},
        "student": {"depth": 1, "width": 8, "bias_init": "zeros"},
        "train": tr,
    }


SOLVER = PopulationSolver(n_quad=2048, n_quad_eval=8192)


@pytest.mark.parametrize("R, C", [(3, 3), (2, 4)])
def test_teacher_constants_match_the_label_generator(R, C):
    cfg = mtjax.TeacherConfig(30, R, C, scale=[2.0, 0.5], noise=0.7, flip=[0.1, 0.0], noisy_fraction=[1.0, 0.5])
    t = mtjax.Teacher.sample(cfg, key=jax.random.key(0))
    c = teacher_constants(t, key=jax.random.key(9))
    n = 200_000
    x = mtjax.sample_inputs(jax.random.key(1), n, 30)
    for k in range(2):
        y = t.label(x, k, key=jax.random.key(2 + k))
        e = jax.nn.one_hot(y, C)
        lam = e.T @ (x @ t.U[k].T) / n
        # |entries| of e_y u are <= |u|, variance <= 1/C: 5 s.e. (+ the MC error of the R < C path)
        tol = 5 * math.sqrt(1.0 / (C * n)) * (1 if R == C else 2)
        assert np.abs(np.asarray(lam - c.Lam[k])).max() < tol
        assert np.abs(np.asarray(e.mean(0) - c.pi[k])).max() < 5 * math.sqrt(0.25 / n) * (1 if R == C else 2)


def test_quadrature_converges_and_reports_error():
    A = jnp.array([[2.0, 0.5, 0.0], [0.0, 1.5, -1.0], [0.3, 0.0, 1.0], [1.0, 1.0, 1.0]])
    a = jnp.array([0.1, -0.2, 0.0, 0.3])
    ref = softmax_moments(a, A, sobol_normals(2**18, 4, seed=7))
    errs = []
    for n in (2**8, 2**11, 2**14):
        m = softmax_moments(a, A, sobol_normals(n, 4, seed=1))
        errs.append(float(jnp.abs(m.jac - ref.jac).max()))
        assert float(m.lse_se) > 0
        assert abs(float(m.lse - ref.lse)) < 5 * float(m.lse_se) + 1e-5
    assert errs[2] < errs[1] < errs[0]
    assert errs[2] < 5e-4


def test_sobol_normals_are_finite_where_a_float32_cast_would_round_a_point_to_one():
    # Seed 50 of 4096 ten-dimensional Sobol points has a coordinate within 3e-8 of 1: clipping
    # at 1 - 1e-12 and then casting to float32 made it exactly 1 and its normal +inf.
    g = np.asarray(sobol_normals(8192, 10, seed=50))
    assert np.all(np.isfinite(g))
    assert g.max() > 5.0  # the extreme point is kept, mapped to a large finite normal


def test_score_estimator_of_the_stein_gradient():
    # G = J̄ A two ways on the same points: direct (diag p − p pᵀ) A and score p gᵀ L⁻¹ A. Both
    # converge to the 2^16-point reference; with large logits (scale 20) the direct estimate at
    # 1024 points is off by half of |G| (its points all sit far from the class boundaries)
    # while the score estimate's error stays O(|G| / sqrt(n)) (measured: 0.104 vs 0.011 against 2^18 points).
    C, D = 4, 6
    A = jax.random.normal(jax.random.key(0), (C, D))
    a = jnp.array([0.1, -0.2, 0.0, 0.3])
    big, g = sobol_normals(2**16, C, seed=7), sobol_normals(2**14, C, seed=1)
    stein = jax.jit(stein_gradient)
    ref = stein(a, A, big, 0.0)[0]
    for w in (0.0, 1.0):
        GA, mean_p = stein(a, A, g, w)
        assert float(jnp.abs(GA - ref).max()) < 1e-3
        assert tree_allclose(mean_p, softmax_moments(a, A, g).mean_p)
    ref = stein(a, 20 * A, big, 1.0)[0]
    g = sobol_normals(1024, C, seed=1)
    err_direct = float(jnp.abs(stein(a, 20 * A, g, 0.0)[0] - ref).max())
    err_score = float(jnp.abs(stein(a, 20 * A, g, 1.0)[0] - ref).max())
    assert err_score < 0.1 * float(jnp.abs(ref).max()) < err_direct


def test_stein_gradient_equals_autodiff_of_the_quadrature_loss():
    # L(A, a) = E[lse(a + A x)] - E[z_y] with E[z_y] = πᵀa + tr(A Tᵀ Λᵀ); autodiff of its
    # Sobol estimate must match the Stein form J̄ A − Λ T, E[p] − π (up to quadrature error).
    C, D = 3, 5
    A = 0.8 * jax.random.normal(jax.random.key(0), (C, D))
    a = jnp.array([0.2, -0.1, 0.0])
    Lam = 0.3 * jax.random.normal(jax.random.key(1), (C, 2))
    T = jnp.eye(2, D)
    pi = jnp.full(C, 1 / C)
    x = sobol_normals(2**16, D, seed=3)

    def loss(A, a):
        return jnp.mean(jax.nn.logsumexp(x @ A.T + a, -1)) - (pi @ a + jnp.sum((A @ T.T) * Lam))

    gA, ga = jax.grad(loss, argnums=(0, 1))(A, a)
    mom = softmax_moments(a, A, sobol_normals(2**16, C, seed=4))
    np.testing.assert_allclose(gA, mom.jac @ A - Lam @ T, atol=2e-3)
    np.testing.assert_allclose(ga, mom.mean_p - pi, atol=2e-3)


def _overlaps(st, U):
    out = []
    for k in range(len(st.heads)):
        A, a = st.effective_linear(k)
        out += [A @ A.T, A @ U[k].T, a]
    return out


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_reduction_is_exact(depth):
    # The reduced flow must move every loss-relevant invariant (A_k A_kᵀ, A_k U_kᵀ, a_k) exactly as
    # the full-parameter population flow does (same quadrature points, so to rounding).
    e = mtjax.experiment_from_spec({**_spec(), "student": {"depth": depth, "width": 8}})
    t = mtjax.Teacher.sample(e.teacher, key=jax.random.key(0))
    st = mtjax.Student.init(e.student, 40, 3, 2, key=jax.random.key(1))
    consts = teacher_constants(t)
    g = sobol_normals(1024, 3, seed=0)
    rho = jnp.array([1.0, 0.7])
    full_field = population_vector_field(st, consts, t.U, rho, g, (0, 1))
    red = reduce_student(st, t.basis)
    D = t.basis.shape[0]
    Dp = (red.layers[0].weight if red.layers else red.heads[0].weight).shape[1]
    T = jnp.pad(t.coefficients, ((0, 0), (0, 0), (0, Dp - D)))
    red_field = population_vector_field(red, consts, T, rho, g, (0, 1))
    _, d_full = jax.jvp(lambda s: _overlaps(s, t.U), (st,), (full_field,))
    _, d_red = jax.jvp(lambda s: _overlaps(s, T), (red,), (red_field,))
    for x, y in zip(_overlaps(st, t.U), _overlaps(red, T)):
        np.testing.assert_allclose(x, y, atol=2e-5)
    for x, y in zip(d_full, d_red):
        np.testing.assert_allclose(x, y, atol=2e-4, rtol=1e-3)


def test_reported_test_loss_equals_a_huge_labelled_test_set():
    # The metrics draw (u, w, ξ) in R + 2C dimensions with a control variate; the ground truth is the
    # cross-entropy on 400 000 examples from the label generator itself (logit noise on half the
    # examples, 10 % flips). Measured: |mean − truth| 0.005 and 0.0007 nats (truth s.e. 0.0036),
    # spread of the 2048-draw estimates 0.0065-0.0069 against a reported s.e. of 0.034-0.036.
    spec = _spec()
    spec["teacher"].update(noise=0.7, flip=0.1, noisy_fraction=0.5)
    e = mtjax.experiment_from_spec(spec)
    t = mtjax.Teacher.sample(e.teacher, key=jax.random.key(0))
    st = jax.tree_util.tree_map(lambda w: 1.6 * w, mtjax.Student.init(e.student, 40, 3, 2, key=jax.random.key(1)))
    x = mtjax.sample_inputs(jax.random.key(5), 400_000, 40)
    consts = teacher_constants(t)
    metrics = jax.jit(lambda xe: population_metrics(st, t, consts, t.U, xe[:, :6], xe[:, 6:], (0, 1))[:2])
    for k in (0, 1):
        ce = -jnp.take_along_axis(jax.nn.log_softmax(st(x, k)), t.label(x, k, key=jax.random.key(6 + k))[:, None], 1)
        truth, truth_se = float(jnp.mean(ce)), float(jnp.std(ce)) / math.sqrt(x.shape[0])
        est = np.array([np.asarray(metrics(sobol_normals(2048, 9, seed=10 + i))[0][k]) for i in range(8)])
        se = float(metrics(sobol_normals(2048, 9, seed=10))[1][k])
        spread = np.std(est, ddof=1)
        # 8 independent scrambles: their spread is the estimator's error. The reported s.e. (from the
        # antithetic pairs, as if they were independent) bounds it: Sobol points do better than i.i.d.
        assert spread < 2.0 * se
        # Their mean is the huge test set's loss within 4 combined standard errors of the measured spread.
        assert abs(est.mean() - truth) < 4 * math.sqrt(spread**2 / 8 + truth_se**2)


def test_population_field_equals_huge_batch_gradient():
    # Full-parameter Stein field vs autodiff of the empirical loss on a huge fresh batch (N = 40).
    e = mtjax.experiment_from_spec(_spec())
    t = mtjax.Teacher.sample(e.teacher, key=jax.random.key(0))
    st = mtjax.Student.init(e.student, 40, 3, 2, key=jax.random.key(1))
    field = population_vector_field(st, teacher_constants(t), t.U, jnp.array([1.0, 0.0]), sobol_normals(8192, 3), (0,))
    n = 400_000
    x = mtjax.sample_inputs(jax.random.key(5), n, 40)
    y = t.label(x, 0, key=jax.random.key(6))
    g = jax.grad(lambda s: mtjax.cross_entropy(s(x, 0), y))(st)
    fw, gw = field.layers[0].weight, -g.layers[0].weight
    # per-entry s.e. of a mean gradient ~ |grad sample| / sqrt(n); 6 s.e. band
    assert float(jnp.abs(fw - gw).max()) < 6 * 1.0 / math.sqrt(n) * 3 + 2e-3
    np.testing.assert_allclose(field.heads[0].bias, -g.heads[0].bias, atol=3e-3)


def test_alternation_maps_to_task_rates():
    paper = mtjax.paper(n_train=100, n_train_b=300)
    np.testing.assert_allclose(task_rates(paper), [1.0, 3.0])
    np.testing.assert_allclose(task_rates(mtjax.paper(n_train=100, single_task=True)), [1.0, 0.0])
    on = mtjax.experiment_from_spec(_spec(task_weights=[1.0, 0.5]))
    np.testing.assert_allclose(task_rates(on), [1.0, 0.5])
    # Theory of a single-task run leaves task 2 untrained and reports NaN for it.
    th = population_theory(mtjax.experiment_from_spec(_spec(single_task=True)), mtjax.Seeds.same(0), solver=SOLVER)
    assert np.all(np.isnan(th.test_loss[:, 1])) and np.all(np.isfinite(th.test_loss[:, 0]))


@pytest.fixture(scope="module")
def sim_and_theory():
    e = mtjax.experiment_from_spec(_spec(learning_rate=0.005, n_steps=1200, eval_every=300))
    seeds = mtjax.Seeds(jnp.zeros(4, int), jnp.zeros(4, int), jnp.zeros(4, int), jnp.arange(4))
    batch = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (4,) + a.shape), e)
    sims = jit_optimised(lambda s: mtjax.simulate_batch(batch, s))(seeds)  # 1200 online steps: run-bound
    th = eqx.filter_jit(population_theory)(e, mtjax.Seeds(0), solver=SOLVER)
    return e, sims, th


def test_theory_equals_online_simulation(sim_and_theory):
    # Same teacher and initial student; the online runs differ only in their batches (seeds).
    e, sims, th = sim_and_theory
    assert bool(th.success) and not bool(th.diverged)
    mean = np.asarray(sims.test_loss.mean(0))
    se = np.asarray(sims.test_loss.std(0, ddof=1)) / 2 + 3e-3  # seed s.e. + test-set noise (20000 examples)
    diff = np.abs(mean - np.asarray(th.test_loss))
    assert np.all(diff < 3 * se + 0.005), (mean, np.asarray(th.test_loss))
    acc_diff = np.abs(np.asarray(sims.test_acc.mean(0)) - np.asarray(th.test_acc))
    assert np.all(acc_diff < 0.02)
    np.testing.assert_allclose(th.time, sims.time[0], rtol=1e-6)


def test_fresh_point_heun_matches_the_adaptive_solve(sim_and_theory):
    # PopulationSolver(n_substeps=...): fixed-step Heun, score estimator, fresh quadrature points
    # at each evaluation (noise the steps average out instead of a bias the flow settles onto).
    # Same evaluation points as SOLVER (n_quad_eval, quad_seed), so the difference is the
    # dynamics: Heun's O(dt²) error (dt = 0.19) plus the averaged quadrature noise, measured
    # 1e-3 here; 0.004 is ~ the solve's error on the paper-sized model scaled to these logits.
    e, sims, th = sim_and_theory
    fresh = PopulationSolver(n_quad=512, n_quad_eval=8192, estimator="score", n_substeps=8)
    thf = eqx.filter_jit(population_theory)(e, mtjax.Seeds(0), solver=fresh)
    assert bool(thf.success) and not bool(thf.diverged)
    diff = np.abs(np.asarray(thf.test_loss - th.test_loss))
    assert diff.max() < 0.004, diff
    np.testing.assert_allclose(thf.time, th.time)


def test_theory_vmapped_equals_looped():
    e = mtjax.experiment_from_spec(_spec(n_steps=200, eval_every=100))
    rs = jnp.array([0.0, 1.0])
    f = eqx.filter_jit(lambda r: population_theory(replace(e, lambda m: m.teacher.relatedness, r[None]), mtjax.Seeds(0), solver=SOLVER).test_loss)
    batched = jax.vmap(f)(rs)
    for i in range(2):
        np.testing.assert_allclose(batched[i], f(rs[i]), rtol=1e-5, atol=1e-6)


def test_theory_is_differentiable_in_r_and_s_b():
    e = mtjax.experiment_from_spec(_spec(n_steps=200, eval_every=100))

    def final_loss(params):
        r, sb = params
        ee = replace(e, lambda m: m.teacher.relatedness, r[None])
        ee = eqx.tree_at(lambda m: m.teacher.scale, ee, jnp.stack([jnp.asarray(3.0), sb]))
        return population_theory(ee, mtjax.Seeds(0), solver=SOLVER).test_loss[-1, 0]

    p = jnp.array([0.5, 2.0])
    g = eqx.filter_jit(jax.grad(final_loss))(p)
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 1e-4
    f = eqx.filter_jit(final_loss)
    h = 0.05
    for i in range(2):
        d = jnp.zeros(2).at[i].set(h)
        fd = (f(p + d) - f(p - d)) / (2 * h)
        assert abs(float(fd) - float(g[i])) < 0.05 * abs(float(g[i])) + 2e-3, (i, fd, g)


def test_typical_initial_condition_has_no_teacher_overlap():
    e = mtjax.experiment_from_spec(_spec(n_steps=200, eval_every=100))
    th = population_theory(e, mtjax.Seeds(0), solver=SOLVER, initial="typical")
    np.testing.assert_allclose(th.overlap_AU[0], 0.0, atol=1e-6)
    assert float(jnp.abs(th.overlap_AU[-1]).max()) > 1e-3  # the flow builds the overlap
    assert float(th.test_loss[-1, 0]) < float(th.test_loss[0, 0])
    with pytest.raises(ValueError, match="initial"):
        population_theory(e, mtjax.Seeds(0), solver=SOLVER, initial="random")


def test_paper_alternation_follows_the_rate_mapped_flow():
    # Paper protocol with m = n_2 // n_1 = 3 on plentiful data (alpha = 75 examples per input
    # dimension, 6 epochs): its task-1 curve must follow the theory with rates (1, 3), and be
    # told apart from the theory with (1, 1) when the second task is strong and related.
    spec = {
        "seed_scope": "train",
        "teacher": {"n_features": 40, "rank": 3, "n_classes": 3, "scale": [2.0, 4.0], "relatedness": 1.0},
        "student": {"depth": 1, "width": 8, "bias_init": "zeros"},
        "train": {"protocol": "paper", "n_train": [3000, 9000], "batch_size": 300, "n_epochs": 6, "eval_every": 2,
                  "learning_rate": 0.02, "n_test": 20000},
    }
    e = mtjax.experiment_from_spec(spec)
    assert e.train.task_multiplicity == (1, 3)
    h = eqx.filter_jit(mtjax.simulate)(e, mtjax.Seeds(0))
    th = eqx.filter_jit(population_theory)(e, mtjax.Seeds(0), solver=SOLVER)
    e11 = replace(e, lambda m: m.train.task_weights, [1.0, 1.0 / 3.0])  # rates (1, 1)
    th11 = eqx.filter_jit(population_theory)(e11, mtjax.Seeds(0), solver=SOLVER)
    d13 = np.abs(np.asarray(h.test_loss[:, 0] - th.test_loss[:, 0])).max()
    d11 = np.abs(np.asarray(h.test_loss[:, 0] - th11.test_loss[:, 0])).max()
    print("alternation: max|sim - theory(1,3)| =", d13, " max|sim - theory(1,1)| =", d11)
    assert d13 < 0.03, (h.test_loss[:, 0], th.test_loss[:, 0])
    assert d13 < d11


@pytest.mark.parametrize("depth", [0, 1])
def test_lifted_theory_network_matches_its_reduced_state(depth):
    # lift_student maps the reduced state back to N inputs: at t = 0 it is the initial student
    # itself, and at any t its overlaps with the teacher subspace and Gram matrix are those of
    # the reduced state (so evaluating it on a concrete test set estimates the same loss).
    spec = _spec(n_steps=200, eval_every=100)
    spec["student"]["depth"] = depth
    e = mtjax.experiment_from_spec(spec)
    seeds = mtjax.Seeds(0)
    th = eqx.filter_jit(population_theory)(e, seeds, solver=SOLVER, save_states=True)
    teacher = mtjax.Teacher.sample(e.teacher, key=seeds.key("teacher"))
    st0 = mtjax.Student.init(e.student, 40, 3, 2, key=seeds.key("init"))
    E = teacher.basis
    first = jax.tree_util.tree_map(lambda a: a[0], th.states)
    lifted0 = mtjax.lift_student(first, st0, E)
    assert tree_allclose(lifted0, st0, rtol=1e-4, atol=1e-5)
    last = jax.tree_util.tree_map(lambda a: a[-1], th.states)
    lifted = mtjax.lift_student(last, st0, E)
    for k in range(2):
        A, a = lifted.effective_linear(k)
        Ar, ar = last.effective_linear(k)
        assert float(jnp.abs(A - st0.effective_linear(k)[0]).max()) > 1e-2  # it did move
        np.testing.assert_allclose(A @ E.T, Ar[:, : E.shape[0]], atol=1e-5)
        np.testing.assert_allclose(A @ A.T, Ar @ Ar.T, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(a, ar, atol=1e-6)
