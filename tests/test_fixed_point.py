"""The finite-data theory's fixed-point solve: the averaged fixed point (`FiniteDataSolver.average_maps`)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mtjax
from mtjax._finite.fixed_point import solve_fixed_point

# A scalar map with the finite-data theory's kind of noise: z ↦ c + ξ̄ z with ξ̄ the mean of S
# draws.  The mean map's fixed point is c / (1 − E ξ); one draw set's is c / (1 − ξ̄), biased
# upward by Jensen's inequality (≈ c Var ξ̄ / (1 − E ξ)³ = 0.024 here).
C0, XI, SD, S = 1.0, 0.25, 0.2, 4


def _iterate(params, z):
    c, xi = params
    return (c + jnp.mean(xi) * z[0],), None


def _draws(c, key):
    return XI + SD * jax.random.normal(key, (S,))


def _solve(c, key, M, iterate=_iterate, draws=_draws, clip=jnp.inf, own=None):
    params = (c, draws(c, jax.random.fold_in(key, 0)) if own is None else own)
    z, _, residual, maps = solve_fixed_point(iterate, (1, 200), (1.0, 1e-7, clip), params, (jnp.zeros(()),), (M, draws), key)
    return z[0], residual, maps, params[1]


# Heavy-tailed noise, as a relu trunk's response has: z ↦ c + η̄ + ξ z with η Student-t of 1.5
# degrees of freedom (a mean, 0, but no variance): the mean map's fixed point is c / (1 − ξ).
# The solve starts there (own draws η = 0), so the test sees the averaging maps alone; the clip is
# relative to |z|, which a kernel's largest entry keeps O(1), unlike a scalar near 0.
def _iterate_heavy(params, z):
    c, eta = params
    return (c + jnp.mean(eta) + XI * z[0],), None


def _draws_heavy(c, key):
    return 0.1 * jax.random.t(key, 1.5, (S,))


def test_clipped_average_tames_heavy_tailed_maps():
    keys = jax.random.split(jax.random.PRNGKey(1), 2048)
    exact = C0 / (1 - XI)
    err = {}
    for clip in (jnp.inf, 1.0):
        z = jax.vmap(lambda k: _solve(C0, k, 200, _iterate_heavy, _draws_heavy, clip, jnp.zeros(S))[0])(keys)
        err[float(clip)] = np.asarray(z) - exact
    plain, clipped = err[np.inf], err[1.0]
    # Unclipped, one heavy draw set in the 200 moves the average far: the 99th percentile of the
    # error is 0.221 unclipped and 0.057 clipped, the largest 2.41 and 0.094 (measured); the noise
    # is symmetric, so the clipped average stays centred on the mean map's fixed point
    # (−0.0003 ± 0.0005).
    q_plain, q_clip = (float(np.quantile(np.abs(e), 0.99)) for e in (plain, clipped))
    assert q_clip < q_plain / 2.5 and np.max(np.abs(clipped)) < np.max(np.abs(plain)) / 10
    assert abs(float(np.mean(clipped))) < 3 * float(np.std(clipped)) / np.sqrt(len(keys))


def test_averaged_fixed_point_removes_the_draws_feedback_bias():
    keys = jax.random.split(jax.random.PRNGKey(0), 2048)
    exact = C0 / (1 - XI)
    plain, _, maps0, _ = jax.vmap(lambda k: _solve(C0, k, 0))(keys)
    avg, drift, maps, xi = jax.vmap(lambda k: _solve(C0, k, 200))(keys)
    se0, se = np.std(plain) / np.sqrt(len(keys)), np.std(avg) / np.sqrt(len(keys))
    assert float(np.mean(plain)) - exact > 4 * se0  # the bias is there (measured 0.023 ± 0.004)
    assert abs(float(np.mean(avg)) - exact) < 3 * se  # measured 0.00005 ± 0.0003
    assert np.all(np.asarray(maps) == np.asarray(maps0) + 200) and float(np.max(drift)) < 0.05
    # The derivative is the implicit one of the solve's own draw set: 1 / (1 − ξ̄).
    g = jax.vmap(jax.grad(lambda c, k: _solve(c, k, 200)[0]), (None, 0))(C0, keys[:8])
    np.testing.assert_allclose(g, 1 / (1 - np.mean(np.asarray(xi[:8]), 1)), rtol=1e-5)


def test_average_maps_in_a_solve_and_its_settings():
    spec = {
        "teacher": {"n_features": 100, "rank": 3, "n_classes": 3, "scale": [3.0, 2.0], "noise": 0.3, "flip": 0.2},
        "student": {"depth": 0, "bias_init": "zeros"},
        "train": {"protocol": "full_batch", "n_train": [100, 100], "n_test": 1000, "n_steps": 8, "eval_every": 1,
                  "learning_rate": 0.5, "single_task": True},
    }  # fmt: skip
    e = mtjax.experiment_from_spec(spec)
    plain = mtjax.FiniteDataSolver(n_grid=8, n_draws=256, n_response=32, n_quad_eval=4096, max_iter=20)
    avg = mtjax.FiniteDataSolver(n_grid=8, n_draws=256, n_response=32, n_quad_eval=4096, max_iter=20, average_maps=6)
    f = eqx.filter_jit(lambda e, s: mtjax.finite_data_theory(e, mtjax.Seeds(0), solver=s))
    a, b = f(e, plain), f(e, avg)
    # The same fixed point of the solve's own draws, then 6 maps with fresh ones (task 1: the
    # only one trained).
    assert int(b.iterations[0]) == int(a.iterations[0]) + 6
    rel = np.abs(np.asarray(b.test_loss[:, 0]) - np.asarray(a.test_loss[:, 0])) / np.asarray(a.test_loss[:, 0])
    assert 0 < rel.max() < 0.05
    # The residual is the averaged kernels' change over the last 3 maps: the fresh draws' noise.
    assert 0 < float(b.residual[0]) < 0.2 and bool(b.converged) == bool(b.residual[0] <= 5e-3)
    # Derivatives: the implicit one at the averaged kernels, close to the plain solve's.
    def final(flip, s):
        return mtjax.finite_data_theory(eqx.tree_at(lambda m: m.teacher.flip, e, jnp.stack([flip, flip])), mtjax.Seeds(0),
                                        solver=s).test_loss[-1, 0]  # fmt: skip
    ga, gb = (float(eqx.filter_jit(jax.grad(final))(jnp.asarray(0.2), s)) for s in (plain, avg))
    assert abs(gb - ga) < 0.1 * abs(ga)
    assert "average_maps" not in mtjax.FiniteDataTheory(plain).settings()
    assert mtjax.FiniteDataTheory(avg).settings()["average_maps"] == 6
    with pytest.raises(ValueError, match="average_maps"):
        mtjax.FiniteDataSolver(average_maps=-1)
    assert "average_clip" not in mtjax.FiniteDataTheory(avg).settings()
    assert mtjax.FiniteDataTheory(eqx.tree_at(lambda s: s.average_clip, avg, jnp.inf)).settings()["average_clip"] == np.inf
    for bad in (0.0, -1.0, np.nan):
        with pytest.raises(ValueError, match="average_clip"):
            mtjax.FiniteDataSolver(average_clip=bad)
