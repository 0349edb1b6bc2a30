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
    damping, tol = ctrl

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


@_fixed_point.defjvp
def _fixed_point_jvp(F, iters, primals, tangents):
    ctrl, params, z0 = primals
    _, dparams, _ = tangents
    z, i = _fixed_point(F, iters, ctrl, params, z0)
    # Linearise the map at z* once: the loop applies the same linear map (no primal recompute
    # per iteration, and one set of residuals when reverse mode transposes the loop).
    _, dF_dz = jax.linearize(lambda zz: F(params, zz), z)
    _, b = jax.jvp(lambda pp: F(pp, z), (params,), (dparams,))

    def body(_, zd):
        return tuple(u + v for u, v in zip(b, dF_dz(zd)))

    zd = jax.lax.fori_loop(0, iters[1], body, b)
    return (z, i), (zd, np.zeros(np.shape(i), jax.dtypes.float0))


def solve_fixed_point(iterate, iters: tuple[int, int], ctrl, params, z0):
    """The one fixed-point solve of both problems (single task and trunk).

    `iterate(params, z) -> (z', aux)` is one Picard map and what it implies (labels,
    trajectories).  z* = the damped Picard fixed point of its first output (`_fixed_point`,
    `ctrl` = (damping, tol)); then one more map at z*: its change is the reported residual, its
    `aux` the reported curves (differentiable in `params` through the map and through z*).

    **Returns:** `(z*, aux, residual, maps)`: residual Σ max|F(z*) − z*| / max|F(z*)| over the
    kernels, maps the Picard maps counted with the last one."""

    def F(params, z):
        return iterate(params, z)[0]

    z, i = _fixed_point(F, iters, ctrl, params, z0)
    z2, aux = iterate(params, z)
    return z, aux, sum(_rel(a, b) for a, b in zip(z2, z)), i + 1
