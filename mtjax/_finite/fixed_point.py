"""The one fixed-point solve of the finite-data theory (single task and trunk): damped Picard
iteration with an implicit gradient (docs/dmft.md §3)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _rel(new, old):
    return jnp.max(jnp.abs(new - old)) / (jnp.max(jnp.abs(new)) + 1e-30)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _fixed_point(F, iters: tuple[int, int], ctrl, params, z0):
    """z* = F(params, z*) by damped Picard iteration (at least `iters[0]`, at most `iters[1]`
    maps), differentiated implicitly: z̄ -> w = z̄ + (∂F/∂z)ᵀ w (iterated `iters[1]` times),
    params̄ = (∂F/∂params)ᵀ w (Christianson 1994; the JAX `fixed_point` recipe).
    Returns (z*, iterations)."""
    return _fixed_point_fwd(F, iters, ctrl, params, z0)[0]


def _fixed_point_fwd(F, iters, ctrl, params, z0):
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
    return (z, i), (ctrl, params, z)


def _fixed_point_bwd(F, iters, res, cot):
    ctrl, params, z = res
    zbar, _ = cot
    _, vjp_z = jax.vjp(lambda zz: F(params, zz), z)

    def body(_, w):
        return tuple(a + b for a, b in zip(zbar, vjp_z(w)[0]))

    w = jax.lax.fori_loop(0, iters[1], body, zbar)
    _, vjp_p = jax.vjp(lambda pp: F(pp, z), params)
    zeros = functools.partial(jax.tree_util.tree_map, jnp.zeros_like)
    return zeros(ctrl), vjp_p(w)[0], zeros(z)


_fixed_point.defvjp(_fixed_point_fwd, _fixed_point_bwd)


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
