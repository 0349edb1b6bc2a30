"""The fixed draws of the finite-data theory: i.i.d. or randomly shifted scrambled Sobol (QMC)
uniforms, mapped to the per-example inputs, logit noise, uniform labels and test-metric points."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.special

from .._custom_types import Float, Array
from .._gaussian import sobol_uniforms


SAMPLINGS = ("qmc", "iid")  # `FiniteDataSolver.sampling`


def _uniforms(key, lead: tuple, n: int, dim: int, sampling: str) -> Float[Array, "... n dim"]:
    """Uniforms (*lead, n, dim): i.i.d., or randomly shifted scrambled Sobol points (each point
    uniform, so estimates stay unbiased; the set is balanced, so averages over it vary less from
    seed to seed).  One independent shift per leading index (task)."""
    if sampling == "iid":
        return jax.random.uniform(key, lead + (n, dim))
    shift = jax.random.uniform(key, lead + (1, dim))
    return jnp.mod(jnp.asarray(sobol_uniforms(n, dim, 12345), jnp.float32) + shift, 1.0)


def _normals(v):
    return jax.scipy.special.ndtri(jnp.clip(v, 1e-7, 1.0 - 1e-7))


def _input_draws(keys, lead: tuple, n: int, d: int, C: int, sampling: str):
    """Per-example draws: inputs u (*lead, n, d), logit noise ξ (*lead, n, C) (standard normals)
    and uniform labels (*lead, n) in 0..C−1.  `keys`: three keys; i.i.d. draws take one each (the
    historical draws, bit for bit), QMC draws one joint (d + C + 1)-dimensional set from the first."""
    if sampling == "iid":
        return (jax.random.normal(keys[0], lead + (n, d)), jax.random.normal(keys[1], lead + (n, C)),
                jax.random.randint(keys[2], lead + (n,), 0, C))  # fmt: skip
    v = _uniforms(keys[0], lead, n, d + C + 1, sampling)
    z = _normals(v[..., : d + C])
    y = jnp.minimum(jnp.floor(C * v[..., -1]).astype(jnp.int32), C - 1)
    return z[..., :d], z[..., d:], y


def _eval_points(key, n: int, dim: int, sampling: str) -> Float[Array, "n dim"]:
    """Standard normals (n, dim) for the test-metric average over fresh examples."""
    if sampling == "iid":
        return jax.random.normal(key, (n, dim))
    return _normals(_uniforms(key, (), n, dim, sampling))
