"""Finite-data theory of nonlinear trunks (docs/dmft.md §4.2): α → ∞ limit, simulations, the
linear activation, derivatives, flags and vmap."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mtjax
from mtjax._finite.nonlinear import (
    _NonlinearProblem,
    _iteration,
    _response_difference,
    nonlinear_fixed_point,
    solve_nonlinear_trunk,
)
from mtjax._finite.theory import _problem
from mtjax._finite.trunk import _trunk_draws, _trunk_labels, solve_trunk
from mtjax._gaussian import sobol_normals
from mtjax._population import reduce_student
from mtjax._population_nonlinear import label_model, nonlinear_metrics, nonlinear_vector_field
from mtjax._teacher import teacher_coefficients
from helpers import replace


def _spec(act="tanh", P=400, N=200, steps=20, lr=0.5, H=4, relatedness=1.0, noise=0.5):
    return {
        "seed_scope": "train",
        "teacher": {"n_features": N, "rank": 3, "n_classes": 3, "relatedness": relatedness, "scale": [3.0, 3.0], "noise": noise},
        "student": {"depth": 1, "width": H, "activation": act, "bias_init": "zeros", "init_scale": 1.3},
        "train": {"protocol": "full_batch", "n_train": P, "n_steps": steps, "eval_every": max(1, steps // 5), "learning_rate": lr,
                  "n_test": 4000},
    }  # fmt: skip


@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_large_alpha_is_population_gd(act):
    # α → ∞: no memory, no noise: the DMFT is GD at step Δ on the population loss, here the
    # reduced network's population gradient (`nonlinear_vector_field`, fresh 8192-point sets)
    # stepped by Euler at the same Δ.  Measured: max |Δ| 0.0039 (tanh) and 0.0056 nats (relu)
    # over 20 steps while the loss falls by 0.33 and 0.38, the error of the 2048 fixed draws
    # accumulating over the steps.  relu: the DMFT moves the softplus(12 x)/12 surrogate's order
    # parameters, the reference the relu network itself (`theory_relu` is exact relu in value
    # and gradient), so the surrogate's error is inside the 0.015.
    e = mtjax.experiment_from_spec(_spec(act, P=10**7, steps=20, lr=0.1))
    solver = mtjax.FiniteDataSolver(n_grid=20, n_draws=2048, n_response=64, n_quad_eval=16384, max_iter=8)
    th = mtjax.finite_data_theory(e, mtjax.Seeds(0), solver=solver)
    teacher = mtjax.Teacher.sample(e.teacher, key=mtjax.Seeds(0).key("teacher"))
    st = mtjax.Student.init(e.student, 200, 3, 2, key=mtjax.Seeds(0).key("init"))
    red = reduce_student(st, teacher.basis)
    Dp = red.layers[0].weight.shape[1]
    T = jnp.pad(teacher_coefficients(e.teacher), ((0, 0), (0, 0), (0, Dp - 6)))
    labels, rho = label_model(teacher), jnp.ones(2)

    @jax.jit
    def gd(red):
        def step(s, i):
            pts = sobol_normals(8192, 3 + Dp, seed=100)
            pts = pts * jnp.where(jax.random.bernoulli(jax.random.key(i), 0.5, (3 + Dp,)), -1.0, 1.0)
            f = nonlinear_vector_field(s, labels, T, rho, pts, (0, 1))
            s = jax.tree_util.tree_map(lambda a, b: a + 0.1 * b, s, f)
            return s, s

        _, traj = jax.lax.scan(step, red, jnp.arange(20))
        return traj

    traj = gd(red)
    ev = sobol_normals(16384, 3 + Dp, seed=7)
    ref = [nonlinear_metrics(red, labels, T, ev, (0, 1), 2)[0]]
    for n in (3, 7, 11, 15, 19):
        ref.append(nonlinear_metrics(jax.tree_util.tree_map(lambda a: a[n], traj), labels, T, ev, (0, 1), 2)[0])
    ref = np.asarray(jnp.stack(ref))
    a = np.asarray(th.test_loss)
    assert bool(th.converged)
    d = np.abs((a - a[0]) - (ref - ref[0]))
    assert ref[0, 0] - ref[-1, 0] > 0.3 and d.max() < 0.015, (a, ref)


@pytest.fixture(scope="module", params=["gelu", "relu"])
def trunk_sim(request):
    e = mtjax.experiment_from_spec(_spec(request.param, steps=20))
    ns = 16
    seeds = mtjax.Seeds(jnp.zeros(ns, int), jnp.arange(ns), jnp.zeros(ns, int), jnp.arange(ns))
    batch = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (ns,) + a.shape), e)
    return e, eqx.filter_jit(lambda s: mtjax.simulate_batch(batch, s))(seeds)


def test_nonlinear_trunk_matches_full_batch_simulation(trunk_sim):
    # N = 200, P = 400 per task (α = 2.1), H = 4, 20 GD steps at lr 0.5, 16 datasets.  The
    # response needs many draws for a nonlinear trunk (docs/dmft.md §4.2).  relu is solved as
    # its softplus(12 x)/12 surrogate (`FiniteDataSolver.relu_sharpness`) and evaluated as relu.
    e, sims = trunk_sim
    solver = mtjax.FiniteDataSolver(n_grid=20, n_draws=1024, n_response=512, max_iter=30)
    th = mtjax.finite_data_theory(e, mtjax.Seeds(0), solver=solver)
    assert bool(th.converged) and not bool(th.diverged)
    mean = np.asarray(sims.test_loss.mean(0))
    se = np.asarray(sims.test_loss.std(0, ddof=1)) / 4
    a = np.asarray(th.test_loss)
    # The train loss falls well below the test loss (overfitting) on both sides.
    assert float(mean[-1, 0] - sims.train_loss.mean(0)[-1, 0]) > 0.3
    assert np.all(np.abs(a - mean) < 3 * se + 0.03 * mean), (a, mean, se)
    np.testing.assert_allclose(th.train_loss, sims.train_loss.mean(0), atol=0.05, rtol=0.05)


def test_linear_activation_through_the_nonlinear_solver_is_the_trunk_dmft():
    # φ = identity in the H-space solver against the logit-space linear trunk solver.  Their
    # draws differ: measured (seeds 0-2, 1024-2048 draws) test losses within 0.01 early and
    # 0.013-0.035 at the last time of task 2, the H-space solver lower (its diagonal response
    # blocks average every draw, the logit-space solver's n_response; with n_response = n_draws
    # the gap shrank to 0.003 for one seed, 0.028 for another); train losses (averages over the
    # 1024 example draws, heavy-tailed at this init: 1.70 and 1.83 at t = 0 for a test loss of
    # 1.76) within 0.07.  With the labels summed (C = 3, the default), key seeds 0-2: test
    # losses within 0.045, 0.024, 0.031, train losses after the first step within 0.063, 0.026,
    # 0.039 (sampled labels: 0.034, 0.020, 0.032 and 0.045, 0.042, 0.027).
    e = mtjax.experiment_from_spec(_spec("linear", steps=10, lr=0.5))
    solver = mtjax.FiniteDataSolver(n_grid=10, n_draws=1024, n_response=256, max_iter=30)
    tp = _problem(e, mtjax.Seeds(0), None, "quenched")
    grid, dt = solver.time_grid(5.0)
    tp = dataclasses.replace(tp, dt=dt)
    key = jax.random.key(0)
    lin = jax.jit(lambda p: solve_trunk(p, solver, 10, key=key))(tp)
    nl = jax.jit(lambda p: solve_nonlinear_trunk(_NonlinearProblem(p, "linear"), solver, 10, key=key))(tp)
    np.testing.assert_allclose(lin[1], nl[1], atol=0.055)  # test loss
    np.testing.assert_allclose(lin[2], nl[2], atol=0.02)  # accuracy
    np.testing.assert_allclose(lin[0][1:], nl[0][1:], atol=0.075)  # train loss after the first step
    # At t = 0 the train loss is an average over the draws of the test loss' integrand: the H-space
    # solver's train − test gap over key seeds 0-5 (summed labels) is −0.07 to 0.11, sd 0.045.
    for r in (lin, nl):
        np.testing.assert_allclose(r[0][0], r[1][0], atol=0.15)
    assert float(lin[1][0, 0] - lin[1][-1, 0]) > 0.5
    assert float(nl[3]) < solver.tol


def _small(act="tanh", **kw):
    return mtjax.experiment_from_spec(_spec(act, N=60, P=120, steps=6, lr=0.5, H=3, relatedness=0.5, **kw))


SMALL = mtjax.FiniteDataSolver(n_grid=6, n_draws=256, n_response=64, n_quad_eval=4096, max_iter=25, tol=1e-4)


@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_derivative_in_alpha_s_and_sigma_matches_central_differences(act):
    # α = P / N' enters through the memory and the noise, smoothly; relu's loss is curved in P
    # (its central differences at h = 10 on P = 120 are 3x off autodiff, at h = 1 within 1.2 %).
    # With the labels summed (C = 3) s and σ enter through the label probabilities π(u) of each
    # draw, smoothly (`summed_labels`): autodiff of the fixed sample's loss is its exact
    # derivative.  Measured: autodiff and central differences (h = 0.1 and 0.03) agree to 0.2 %
    # in s for tanh and relu (the relu surrogate is smooth too).  One gradient, one compile.
    e = _small(act)

    def final_loss(theta):
        ee = eqx.tree_at(lambda m: (m.teacher.scale, m.teacher.noise), mtjax.apply_axes(e, {"ntrain": theta[0]}),
                         (jnp.stack([theta[1], e.teacher.scale[1]]), jnp.stack([theta[2], e.teacher.noise[1]])))
        th = mtjax.finite_data_theory(ee, mtjax.Seeds(0), solver=SMALL)
        return th.test_loss[-1, 0] + 2 * th.test_loss[-1, 1]

    theta0 = jnp.array([120.0, 3.0, 0.5])
    g = eqx.filter_jit(jax.grad(final_loss))(theta0)
    f = eqx.filter_jit(final_loss)
    for i, (h, rtol, atol) in enumerate(((2.0, 0.05, 2e-5), (0.05, 0.02, 2e-4), (0.02, 0.02, 2e-4))):
        step = jnp.zeros(3).at[i].set(h)
        fd = (f(theta0 + step) - f(theta0 - step)) / (2 * h)
        np.testing.assert_allclose(g[i], fd, rtol=rtol, atol=atol, err_msg=str(i))
    assert float(g[0]) < -1e-4  # more data helps
    assert float(jnp.max(jnp.abs(g[1:]))) > 5e-3


def test_derivative_in_r_matches_exactly_rotated_central_differences(monkeypatch):
    # As tests/test_dmft.py: the sampled clean labels switch with r, so the reference rotates the
    # draws exactly with task 2's subspace (its labels stay put and its differences are smooth).
    import mtjax._finite.nonlinear as nl
    import mtjax._finite.trunk as tr  # the draws are rotated in `trunk._trunk_draws`

    e = _small(noise=0.0)
    R, r0 = 3, 0.5

    def final_loss(r):
        ee = eqx.tree_at(lambda m: m.teacher.relatedness, e, jnp.reshape(r, (1,)))
        th = mtjax.finite_data_theory(ee, mtjax.Seeds(0), solver=SMALL)
        return th.test_loss[-1, 0] + 2 * th.test_loss[-1, 1]

    value, g = eqx.filter_jit(jax.value_and_grad(final_loss))(jnp.asarray(r0))

    def rot(r):
        c, I = jnp.sqrt(1 - r**2), jnp.eye(R)
        return jnp.block([[c * I, r * I], [-r * I, c * I]])

    def exact(T, u):
        task2 = jnp.abs(T[0, R]) > 1e-12
        Q = jnp.where(task2, rot(T[0, 0]) @ rot(jnp.asarray(r0)).T, jnp.eye(2 * R))
        return u @ Q.T

    monkeypatch.setattr(nl, "_teacher_frame_draws", exact)
    monkeypatch.setattr(tr, "_teacher_frame_draws", exact)
    f = eqx.filter_jit(final_loss)
    np.testing.assert_allclose(f(jnp.asarray(r0)), value, rtol=1e-5)
    h = 0.02
    fd = (f(jnp.asarray(r0 + h)) - f(jnp.asarray(r0 - h))) / (2 * h)
    np.testing.assert_allclose(g, fd, rtol=0.03, atol=5e-4)
    assert abs(float(g)) > 0.01


def test_flags_and_vmap():
    e = _small("erf")
    solver = SMALL
    th = mtjax.finite_data_theory(e, mtjax.Seeds(0), solver=solver)
    assert bool(th.converged) and not bool(th.diverged)
    one_map = mtjax.finite_data_theory(e, mtjax.Seeds(0), solver=dataclasses.replace(solver, max_iter=1))
    assert not bool(one_map.converged)
    rs = jnp.array([0.0, 1.0])
    f = eqx.filter_jit(lambda r: mtjax.finite_data_theory(replace(e, lambda m: m.teacher.relatedness, r[None]), mtjax.Seeds(0),
                                                          solver=solver).test_loss)  # fmt: skip
    batched = jax.vmap(f)(rs)
    for i in range(2):
        np.testing.assert_allclose(batched[i], f(rs[i]), rtol=1e-4, atol=1e-5)


def test_relu_is_solved_as_its_softplus_surrogate():
    # The example process differentiates softplus(β x)/β (relu'' = δ cannot be sampled): the
    # solve depends on β and tends to a limit as β grows (the surrogate's value error is
    # <= log 2 / β); the test metrics integrate the relu network itself.
    e = _small("relu")
    f = lambda beta: mtjax.finite_data_theory(e, mtjax.Seeds(0), solver=dataclasses.replace(SMALL, relu_sharpness=beta))
    th = {beta: f(beta) for beta in (4.0, 12.0, 36.0)}
    for r in th.values():
        assert bool(r.converged) and not bool(r.diverged)
    d_lo = float(jnp.max(jnp.abs(th[4.0].test_loss - th[12.0].test_loss)))
    d_hi = float(jnp.max(jnp.abs(th[12.0].test_loss - th[36.0].test_loss)))
    assert d_lo > 1e-3 and d_hi < d_lo, (d_lo, d_hi)
    phi = mtjax._finite.nonlinear.dmft_activation("relu", 12.0)
    x = jnp.linspace(-3, 3, 61)
    assert float(jnp.max(phi(x) - jax.nn.relu(x))) <= np.log(2) / 12 + 1e-6
    with pytest.raises(ValueError, match="relu_sharpness"):
        mtjax.FiniteDataSolver(relu_sharpness=0.5)


def test_response_control_variate_is_exactly_zero_when_every_draw_is_a_response_draw():
    # The nonlinear trunk's control variate uses the all-draw mean Hessian J̄ of the example
    # process; with n_response = n_draws the response draws' mean is J̄ and the correction vanishes.
    e = _small("tanh")
    sol = dataclasses.replace(SMALL, n_response=SMALL.n_draws)
    a = mtjax.finite_data_theory(e, mtjax.Seeds(0), solver=sol)
    b = mtjax.finite_data_theory(e, mtjax.Seeds(0), solver=dataclasses.replace(sol, response_control=True))
    np.testing.assert_allclose(b.test_loss, a.test_loss, atol=2e-6)
    c = mtjax.finite_data_theory(e, mtjax.Seeds(0), solver=dataclasses.replace(SMALL, n_response=16, response_control=True))
    d = mtjax.finite_data_theory(e, mtjax.Seeds(0), solver=dataclasses.replace(SMALL, n_response=16))
    assert bool(c.converged) and float(jnp.max(jnp.abs(c.test_loss - d.test_loss))) > 1e-5  # it does act


def _fixed_point_and_maps(act, solver, modes, steps=6):
    """The pathwise fixed point (C_H, R_H) of `_small(act)` and one Picard map of it with each
    response estimator in `modes`: {mode: R_H'}."""
    e = _small(act)
    pn = _problem(e, mtjax.Seeds(0), None, "quenched")
    pn = dataclasses.replace(pn, trunk=dataclasses.replace(pn.trunk, dt=solver.time_grid(steps * 0.5)[1]))
    key = jax.random.key(0)
    z, *_ = jax.jit(lambda: nonlinear_fixed_point(pn, solver, steps, key=key))()
    p = pn.trunk
    d, _ = _trunk_draws(p, solver, p.V0.shape[2] * (steps + 2), key)
    ys, w = _trunk_labels(p, d, True)
    return {m: np.asarray(jax.jit(lambda z: _iteration(pn, d, ys, w, *z, solver.n_response, solver.relu_sharpness,
                                                       False, m, 0.05)[1])(z)) for m in modes}  # fmt: skip


def test_difference_response_is_the_jacobian_chain_for_a_smooth_trunk():
    # tanh: both estimators average the same response draws' exact per-draw responses, the
    # difference one to O(ε²) (ε = 0.05; measured: within 0.2 % of each lag's largest block).  Every
    # lag must agree to 1 %, and the memory must be there.
    solver = dataclasses.replace(SMALL, n_grid=6)
    R = _fixed_point_and_maps("tanh", solver, ("pathwise", "difference"))
    T1 = R["pathwise"].shape[0]
    for lag in range(T1):  # lag 0: the all-draw mean Jacobian, a Hessian or a central difference
        a = np.stack([R["pathwise"][n, :, n - lag] for n in range(lag, T1)])
        b = np.stack([R["difference"][n, :, n - lag] for n in range(lag, T1)])
        assert np.abs(a).max() > 1e-4
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-2 * np.abs(a).max())
    for n in range(T1):  # causal: nothing before a kick
        assert np.all(R["difference"][n, :, n + 1 :] == 0)


def test_difference_response_by_sub_blocks_is_the_stepwise_recurrence():
    # sub = 1 reads the whole history at every time (the plain recurrence of the kicked copies);
    # sub-blocks must give the same Γ, with a padded last sub-block (11 times, sub = 4) and the
    # draws split into chunks (small budget).  The memory term must matter, or the check is empty.
    T1, X, S, H, C = 11, 2, 6, 3, 4
    k = jax.random.split(jax.random.PRNGKey(3), 4)
    pre = jax.random.normal(k[0], (T1, X, S, H))
    ys, wts = jnp.tile(jnp.arange(X)[:, None], (1, S)), jnp.full((X, S), 1.0 / S)
    traj = (jnp.zeros((T1, 0, H, H)), jnp.zeros((T1, 0, H)), jax.random.normal(k[1], (T1, C, H)),
            0.1 * jax.random.normal(k[2], (T1, C)))  # fmt: skip
    Rv = 0.3 * jax.random.normal(k[3], (T1, H, T1, H)) * jnp.tril(jnp.ones((T1, T1)), -1)[:, None, :, None]
    act = mtjax._finite.nonlinear.dmft_activation("relu", 12.0)

    def gamma(sub, coef=0.5):
        return np.asarray(_response_difference(act, pre, ys, wts, traj, Rv, coef, 0.05, budget=2**10, sub=sub))

    plain, blocked = gamma(1), gamma(4)
    np.testing.assert_allclose(blocked, plain, rtol=0, atol=1e-5 * np.abs(plain).max())
    assert np.abs(gamma(4, coef=0.0) - plain).max() > 0.05 * np.abs(plain).max()


def test_response_settings_are_checked():
    with pytest.raises(ValueError, match="response"):
        mtjax.FiniteDataSolver(response="stein")
    with pytest.raises(ValueError, match="response_step"):
        mtjax.FiniteDataSolver(response="difference", response_step=0.0)
    with pytest.raises(ValueError, match="response_control"):
        mtjax.FiniteDataSolver(response="difference", response_control=True)
    assert "response" not in mtjax.FiniteDataTheory(SMALL).settings()
    s = mtjax.FiniteDataTheory(dataclasses.replace(SMALL, response="difference")).settings()
    assert s["response"] == "difference" and "response_step" not in s
