"""The one fixed-point solve of the finite-data theory (single task and trunk): damped Picard
iteration with an implicit derivative (docs/dmft.md §3)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def _rel(new, old):
    return jnp.max(jnp.abs(new - old)) / (jnp.max(jnp.abs(new)) + 1e-30)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _fixed_point(F, iters: tuple[int, int], ctrl, params, z0):
    """z* = F(params, z*) by damped Picard iteration (at least `iters[0]`, at most `iters[1]`
    maps), differentiated implicitly in forward mode: ż = (∂F/∂z) ż + (∂F/∂params) ṗ, iterated
    `iters[1]` times from ż = (∂F/∂params) ṗ (the tangent of the fixed point; JAX's
    `custom_root` recipe).  Reverse mode is its transpose (JAX transposes the linear tangent
    iteration), so `jax.jvp`, `jax.jacfwd`, `jax.grad` and `jax.jacrev` all work.
    Returns (z*, iterations)."""
    min_iter, max_iter = iters
    damping, tol = ctrl[:2]

    def cond(state):
        i, _, res = state
        return (i < min_iter) | ((i < max_iter) & (res > tol))

    def body(state):
        i, z, _ = state
        z2 = F(params, z)
        res = sum(_rel(a, b) for a, b in zip(z2, z))
        return i + 1, tuple((1 - damping) * a + damping * b for a, b in zip(z, z2)), res

    i, z, _ = jax.lax.while_loop(cond, body, (jnp.asarray(0), z0, jnp.asarray(jnp.inf)))
    return z, i


def _implicit_tangent(F, n_iter: int, params, dparams, z):
    """ż = (∂F/∂z) ż + (∂F/∂params) ṗ at z, iterated `n_iter` times from ż = (∂F/∂params) ṗ."""
    # Linearise the map at z once: the loop applies the same linear map (no primal recompute
    # per iteration, and one set of residuals when reverse mode transposes the loop).
    _, dF_dz = jax.linearize(lambda zz: F(params, zz), z)
    _, b = jax.jvp(lambda pp: F(pp, z), (params,), (dparams,))

    def body(_, zd):
        return tuple(u + v for u, v in zip(b, dF_dz(zd)))

    return jax.lax.fori_loop(0, n_iter, body, b)


@_fixed_point.defjvp
def _fixed_point_jvp(F, iters, primals, tangents):
    ctrl, params, z0 = primals
    _, dparams, _ = tangents
    z, i = _fixed_point(F, iters, ctrl, params, z0)
    zd = _implicit_tangent(F, iters[1], params, dparams, z)
    return (z, i), (zd, np.zeros(np.shape(i), jax.dtypes.float0))


def averaging_step(z, Fz, j, kappa):
    """One clipped averaging step (`_averaged_fixed_point`): z_{j+1} = z_j + w_j (F − z_j) / (j + 2),
    w_j = min(1, κ / d_j), d_j the largest of the pulls max|F − z_j| / max|z_j| of the kernels.
    **Returns:** (z_{j+1}, the pulls (one per kernel), w_j)."""
    pulls = jnp.stack([jnp.max(jnp.abs(b - a)) / (jnp.max(jnp.abs(a)) + 1e-30) for a, b in zip(z, Fz)])
    w = jnp.minimum(1.0, kappa / jnp.max(pulls))
    return tuple(a + w * (b - a) / (j + 2.0) for a, b in zip(z, Fz)), pulls, w


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2))
def _averaged_fixed_point(F, iters: tuple[int, int], average, ctrl, params, z0, key):
    """The fixed point of the mean map E[F] over the Monte Carlo draws, by stochastic
    approximation: the damped Picard fixed point z_0 of F at the solve's own draws (`params`),
    then, with `average = (M, draws)`, M maps z_{j+1} = z_j + w_j (F((p, draws(p, k_j)), z_j) − z_j) / (j + 2)
    (`params` = (p, its draws)) whose draws are fresh (k_j = fold_in(key, j + 1)): z_M averages M + 1 maps of independent
    draws (docs/dmft.md §3, "Averaged fixed point").

    w_j = min(1, κ / d_j) clips a map's step (`ctrl` = (damping, tol, κ)): d_j = max over the
    kernels of max|F − z_j| / max|z_j|.  A nonlinear trunk's response has a heavy tail — one
    draw set in tens can carry a response hundreds of times the kernel's scale (a chain of
    surrogate-relu Hessians along one draw) — and one such map, entered at weight 1/(j + 2),
    blows the causal process up for the rest of the average.  Clipping (the clipped stochastic
    approximation of heavy-tailed noise) bounds each map's pull; with κ = inf it is the plain
    average.

    The fixed point of one draw set is biased by its own noise, fed back through the map (O(1/S)
    in the draws S per map); averaging over fresh draws takes that feedback out.  The derivative
    is the implicit one of the solve's own map at z_M (`_implicit_tangent`).
    **Returns:** (z_M, maps incl. the M, the relative change of z over the last M − ⌊M/2⌋ maps)."""
    M, draws = average
    kappa = ctrl[2]
    z, i = _fixed_point(F, iters, ctrl, params, z0)

    def body(j, state):
        z, z_half = state
        Fz = F((params[0], draws(params[0], jax.random.fold_in(key, j + 1))), z)
        z = averaging_step(z, Fz, j, kappa)[0]
        return z, tuple(jnp.where(j + 1 == M // 2, a, h) for h, a in zip(z_half, z))

    z, z_half = jax.lax.fori_loop(0, M, body, (z, z))
    return z, i + M, sum(_rel(a, b) for a, b in zip(z, z_half))


@_averaged_fixed_point.defjvp
def _averaged_fixed_point_jvp(F, iters, average, primals, tangents):
    ctrl, params, z0, key = primals
    _, dparams, _, _ = tangents
    z, i, drift = _averaged_fixed_point(F, iters, average, ctrl, params, z0, key)
    zd = _implicit_tangent(F, iters[1], params, dparams, z)
    return (z, i, drift), (zd, np.zeros(np.shape(i), jax.dtypes.float0), jnp.zeros_like(drift))


def solve_fixed_point(iterate, iters: tuple[int, int], ctrl, params, z0, average=None, key=None):
    """The one fixed-point solve of the finite-data theory (single task, trunk, nonlinear trunk,
    proportional width).

    `iterate(params, z) -> (z', aux)` is one Picard map and what it implies (labels,
    trajectories).  z* = the damped Picard fixed point of its first output (`_fixed_point`,
    `ctrl` = (damping, tol, κ) = `FiniteDataSolver.controls()`); with `average = (M, draws)`, M > 0, and `key`, then averaged over
    M maps with fresh draws (`_averaged_fixed_point`; `params` = (problem, its draws), and
    `draws(problem, key)` makes new ones the same way).  Then one more map at z* with the solve's own draws: its `aux` the reported curves
    (differentiable in `params` through the map and through z*).

    **Returns:** `(z*, aux, residual, maps)`: residual Σ max|F(z*) − z*| / max|F(z*)| over the
    kernels — with averaging, the relative change of z* over the second half of the averaging
    maps (one draw set's map differs from z* by its Monte Carlo noise) — and maps the Picard
    maps counted with the last one."""

    def F(params, z):
        return iterate(params, z)[0]

    if average is None or average[0] == 0:
        z, i = _fixed_point(F, iters, ctrl, params, z0)
        z2, aux = iterate(params, z)
        return z, aux, sum(_rel(a, b) for a, b in zip(z2, z)), i + 1
    z, i, drift = _averaged_fixed_point(F, iters, average, ctrl, params, z0, key)
    _, aux = iterate(params, z)
    return z, aux, drift, i + 1
