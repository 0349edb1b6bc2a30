"""The width-proportional finite-data theory (docs/dmft.md §4.3): its H/N → 0 limit is the
fixed-width DMFT, it follows full-batch GD at H/N = 0.64 where the fixed-width theory does not,
its derivative, vmap and its scope errors."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mtjax
from mtjax._finite.theory import _problem
from mtjax._finite.trunk import solve_trunk
from mtjax._finite.wide import _geometry, _initial_state, solve_wide


def _spec(N=200, H=8, P=400, steps=10, lr=0.5, C=3, **student):
    return {
        "seed_scope": "train",
        "teacher": {"n_features": N, "rank": C, "n_classes": C, "relatedness": 1.0, "scale": [3.0, 3.0], "noise": 0.5},
        "student": {"depth": 1, "width": H, "bias_init": "zeros", **student},
        "train": {"protocol": "full_batch", "n_train": P, "n_steps": steps, "eval_every": 1, "learning_rate": lr,
                  "n_test": 8000},
    }  # fmt: skip


def test_vanishing_width_fraction_is_the_fixed_width_dmft():
    # H/N → 0 with everything else fixed: the two populations' theory must become the
    # fixed-width DMFT (trunk.py), whose coordinate process is H-dimensional instead.  Same
    # α = P/N', same heads; only the draws differ (Monte Carlo: measured max |Δ| 0.006 nats on
    # the test loss and 0.012 on the train loss over 10 steps, 2048 draws).
    e = mtjax.experiment_from_spec(_spec(N=400, P=2 * 394))
    solver = mtjax.FiniteDataSolver(n_grid=10, n_draws=2048, n_response=64, tol=1e-2)
    grid, dt = solver.time_grid(5.0)
    wp = _problem(e, mtjax.Seeds(0), None, "typical", "proportional")
    tp = dataclasses.replace(_problem(e, mtjax.Seeds(0), None, "typical", "fixed"), dt=dt)
    nu = 1e-3
    wp = dataclasses.replace(wp, trunk=tp, nu=jnp.asarray(nu), w_in=jnp.asarray(nu), w_out=jnp.asarray(1 - nu))
    key = jax.random.key(0)
    a = jax.jit(lambda p: solve_wide(p, solver, 10, key=key))(wp)
    b = jax.jit(lambda p: solve_trunk(p, solver, 10, key=key))(tp)
    assert float(a[3]) < 1e-2 and float(b[3]) < 1e-2
    train_a, test_a, train_b, test_b = (np.asarray(x) for x in (a[0], a[1], b[0], b[1]))
    assert test_b[0, 0] - test_b[-1, 0] > 0.4  # it learns
    assert np.abs(test_a - test_b).max() < 0.02, (test_a, test_b)
    assert np.abs(train_a - train_b).max() < 0.04, (train_a, train_b)


@pytest.fixture(scope="module")
def wide_sim():
    # H / N = 0.64, α = 1: the head alone has more parameters than there are examples.
    e = mtjax.experiment_from_spec(_spec(N=200, H=128, P=194, steps=20))
    ns = 8
    seeds = mtjax.Seeds(jnp.zeros(ns, int), jnp.arange(1, ns + 1), jnp.arange(1, ns + 1), jnp.arange(1, ns + 1))
    batch = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (ns,) + a.shape), e)
    return e, eqx.filter_jit(mtjax.simulate_batch)(batch, seeds)


def test_wide_trunk_matches_full_batch_gd(wide_sim):
    # Measured (N = 200, H = 128, C = R = 3, 8 realisations): the proportional theory's train
    # loss within 6 % along the curve, test loss within 3 % (or 2.5 s.e.) to t = 6; the fixed-width
    # theory's train loss is 20–30 % high from the first steps (it has no O(H/P) head
    # self-term), so it fails the train-loss bound (not solved here: H-space kernels at H = 128
    # are its slow case).
    e, h = wide_sim
    solver = mtjax.FiniteDataSolver(n_grid=20, n_draws=1024, n_response=64, tol=2e-2)
    prop = mtjax.finite_data_theory(e, mtjax.Seeds(0), solver=solver, initial="typical", width="proportional")
    assert bool(prop.converged)
    tr, te = np.asarray(h.train_loss[:, :, 0]), np.asarray(h.test_loss[:, :, 0])
    tr_m, te_m, te_se = tr.mean(0), te.mean(0), te.std(0, ddof=1) / np.sqrt(len(te))
    early = slice(1, 13)  # t <= 6
    rel_train = np.abs(np.asarray(prop.train_loss[:, 0]) - tr_m) / tr_m
    dte = np.abs(np.asarray(prop.test_loss[:, 0]) - te_m)
    assert rel_train[early].max() < 0.08, rel_train
    assert np.all((dte[early] / te_m[early] < 0.03) | (dte[early] < 2.5 * te_se[early])), (dte, te_se)


def test_depth_two_wide_trunk_matches_full_batch_gd():
    # Two trunk layers, both proportional (W_1: 128 x 200, W_2: 128 x 128), PyTorch biases in both.
    # Measured (one solve, 1024 draws, against 8 realisations): train loss within 6 % to t = 3.5 and
    # 0.02 nats along the curve, test loss within 2.5 s.e. to t = 3; later the N = 200 simulations overfit ~5 % more than the
    # theory (at N = 400 the whole curve agrees within 1 s.e.: docs/dmft.md §6.4).  The
    # fixed-width theory's train loss is 50 % high at the first step here.
    spec = _spec(N=200, H=128, P=194, steps=12)
    spec["student"].update(depth=2, bias_init="torch")
    e = mtjax.experiment_from_spec(spec)
    ns = 8
    seeds = mtjax.Seeds(jnp.zeros(ns, int), jnp.arange(1, ns + 1), jnp.arange(1, ns + 1), jnp.arange(1, ns + 1))
    batch = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (ns,) + a.shape), e)
    h = eqx.filter_jit(mtjax.simulate_batch)(batch, seeds)
    solver = mtjax.FiniteDataSolver(n_grid=12, n_draws=1024, n_response=64, tol=2e-2)
    prop = mtjax.finite_data_theory(e, mtjax.Seeds(0), solver=solver, initial="typical", width="proportional")
    assert bool(prop.converged)
    tr, te = np.asarray(h.train_loss[:, :, 0]), np.asarray(h.test_loss[:, :, 0])
    tr_m, te_m, te_se = tr.mean(0), te.mean(0), te.std(0, ddof=1) / np.sqrt(len(te))
    assert tr_m[0] - tr_m[-1] > 1.0  # it fits the training set
    dtr = np.abs(np.asarray(prop.train_loss[:, 0]) - tr_m)
    dte = np.abs(np.asarray(prop.test_loss[:, 0]) - te_m)[1:7]
    assert (dtr / tr_m)[1:8].max() < 0.07 and dtr[1:].max() < 0.03, (dtr, tr_m)
    assert np.all((dte / te_m[1:7] < 0.03) | (dte < 2.5 * te_se[1:7])), (dte, te_se)


def test_wide_alpha_derivative_and_vmap():
    # The implicit derivative of the fixed point through the coordinate populations: d(test
    # loss)/dα against central differences (the draws are fixed, so the map is smooth in α).
    e = mtjax.experiment_from_spec(_spec(N=100, H=48, P=100, steps=6, C=2))
    solver = mtjax.FiniteDataSolver(n_grid=6, n_draws=512, n_response=32, tol=1e-3, max_iter=40)
    grid, dt = solver.time_grid(3.0)
    p0 = _problem(e, mtjax.Seeds(0), None, "typical", "proportional")
    t0 = dataclasses.replace(p0.trunk, dt=dt)
    key = jax.random.key(3)

    def loss(a):
        t = dataclasses.replace(t0, alpha=jnp.stack([a, t0.alpha[1]]))
        return solve_wide(dataclasses.replace(p0, trunk=t), solver, 6, key=key)[1][-1, 0]

    a0 = t0.alpha[0]
    g = float(jax.jit(jax.grad(loss))(a0))
    f = jax.jit(loss)
    fd = float((f(a0 * 1.05) - f(a0 * 0.95)) / (0.1 * a0))
    assert g < 0 and abs(g - fd) < 0.1 * abs(fd), (g, fd)
    # vmapped over α = looped.
    alphas = jnp.stack([a0, 2 * a0])
    vm = jax.jit(jax.vmap(f))(alphas)
    np.testing.assert_allclose(np.asarray(vm), [float(f(a0)), float(f(2 * a0))], rtol=2e-4)


def test_wide_depth_two_relatedness_derivative():
    # dL/dr through the depth-2 theory: the teacher rotates with r and the draws rotate with it
    # (`_teacher_frame_draws`), so autodiff is the pathwise derivative of the fixed point.
    # Measured by hand at N = 200, H = 128, 10 steps, 1024 draws: −0.0633 vs −0.0631.
    spec = _spec(N=100, H=48, P=100, steps=6, C=2)
    spec["teacher"]["relatedness"] = 0.5
    spec["student"].update(depth=2, bias_init="torch")
    e = mtjax.experiment_from_spec(spec)
    solver = mtjax.FiniteDataSolver(n_grid=6, n_draws=512, n_response=32, tol=1e-3, max_iter=40)
    grid, dt = solver.time_grid(3.0)
    key = jax.random.key(3)

    def loss(r):
        p = _problem(eqx.tree_at(lambda m: m.teacher.relatedness, e, r), mtjax.Seeds(0), None, "typical", "proportional")
        p = dataclasses.replace(p, trunk=dataclasses.replace(p.trunk, dt=dt))
        return solve_wide(p, solver, 6, key=key)[1][-1, 0]

    r0 = jnp.asarray([0.5])
    g = float(jax.jit(jax.grad(loss))(r0)[0])
    f = jax.jit(loss)
    fd = float((f(r0 + 0.1) - f(r0 - 0.1)) / 0.2)
    assert abs(fd) > 1e-3 and abs(g - fd) < 0.1 * abs(fd), (g, fd)  # measured: 0.00267 vs 0.00274


def test_finite_n_geometry():
    # `width="proportional_n"` (docs/dmft.md §4.4): Π restricted to the 2D directions is a rank-D
    # projection whose teacher-span block EᵀΠE averages to ν I over draws; the initial rows' share
    # there lies in Π's range and their bulk Gram matrix is the rest of Y Yᵀ; all N coordinates
    # are counted noisy (w_in + w_out = N / N').
    spec = _spec(N=100, H=48, P=100, steps=6, C=2)
    spec["student"].update(depth=2, bias_init="torch")
    e = mtjax.experiment_from_spec(spec)
    p = _problem(e, mtjax.Seeds(0), None, "typical", "proportional_n")
    p_inf = _problem(e, mtjax.Seeds(0), None, "typical", "proportional")
    N, H, D = 100, 48, 4
    assert p.geometry == (N, H) and p_inf.geometry is None
    np.testing.assert_allclose(float(p.w_in + p.w_out), N / (N - D), rtol=1e-6)
    np.testing.assert_allclose(float(p_inf.w_in + p_inf.w_out), 1.0, rtol=1e-6)
    Y = np.asarray(_initial_state(p.trunk)[0])
    keys = jax.random.split(jax.random.key(0), 400)
    PiL, low0, gram0 = (np.asarray(x, float) for x in jax.jit(jax.vmap(lambda k: _geometry(p, D, k)))(keys))
    for i in range(3):
        np.testing.assert_allclose(PiL[i] @ PiL[i], PiL[i], atol=1e-4)
        np.testing.assert_allclose(np.trace(PiL[i]), D, atol=1e-4)
        np.testing.assert_allclose(PiL[i] @ low0[i].T, low0[i].T, atol=1e-4)
        np.testing.assert_allclose(low0[i] @ low0[i].T + gram0[i], Y @ Y.T, rtol=1e-4, atol=1e-4)
    B = PiL[:, :D, :D].mean(0)  # entries' s.d. over draws ≈ sqrt(ν(1 − ν)/N) = 0.05: s.e. 0.0025
    np.testing.assert_allclose(B, H / N * np.eye(D), atol=0.015)
    assert PiL[:, :D, :D].std(0).max() > 0.03  # drawn, not ν I
    # The heads' share of the 2D directions: D of the H range coordinates, D / H of Y Yᵀ on average.
    frac = (low0[:, 0] ** 2).sum(-1).mean() / (Y[0] ** 2).sum()
    assert abs(frac - D / H) < 0.2 * D / H, frac
    PiL_inf, low_inf, _ = _geometry(p_inf, D, keys[0])
    np.testing.assert_allclose(np.asarray(PiL_inf)[:D, :D], H / N * np.eye(D), atol=1e-6)
    assert not np.any(np.asarray(low_inf))


def test_finite_n_corrections_are_order_d_over_n():
    # The same cell at N = 100 and N = 2000 (H / N, α fixed; D = 4): the finite-N theory moves the
    # test loss at N = 100 and coincides with the N → ∞ one at N = 2000 (same draws).
    solver = mtjax.FiniteDataSolver(n_grid=6, n_draws=512, n_response=32, tol=1e-3, max_iter=40)
    diffs = {}
    for N in (100, 2000):
        e = mtjax.experiment_from_spec(_spec(N=N, H=N // 2, P=N - 4, steps=6, C=2, lr=0.5))
        a, b = (np.asarray(mtjax.finite_data_theory(e, mtjax.Seeds(0), solver=solver, initial="typical",
                                                     width=w).test_loss[:, 0]) for w in ("proportional", "proportional_n"))  # fmt: skip
        diffs[N] = np.abs(a - b).max()
    assert diffs[100] > 0.01 and diffs[2000] < 0.25 * diffs[100], diffs


@pytest.mark.parametrize(
    "student, initial, match",
    [({"depth": 0}, "typical", "depth >= 1"), ({"init": "gaussian"}, "typical", "orthogonal"),
     ({"activation": "tanh"}, "typical", "linear"), ({}, "quenched", "initial='typical'"),
     ({"width": 300}, "typical", "n_features")],
)  # fmt: skip
def test_wide_scope_errors(student, initial, match):
    student = dict(student)
    spec = _spec(N=200, H=student.pop("width", 64))
    spec["student"].update(student)
    e = mtjax.experiment_from_spec(spec)
    with pytest.raises(ValueError, match=match):
        mtjax.finite_data_theory(e, mtjax.Seeds(0), initial=initial, width="proportional")
    with pytest.raises(ValueError, match="width"):
        mtjax.finite_data_theory(e, mtjax.Seeds(0), width="wide")
