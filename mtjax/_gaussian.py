"""Gaussian expectations of softmax quantities, and the teacher constants Λ and π.

For student logits z ~ N(a, S) with S = A Aᵀ (C x C) the population dynamics needs

    E[p],   J̄ = E[diag(p) − p pᵀ],   E[lse(z)]          (p = softmax z).

They are estimated with *common random numbers*: fixed scrambled-Sobol normal points g_i (`sobol_normals`)
(±g pairs cancel every odd term of the integrand's expansion about a), z_i = a + L g_i with
L the Cholesky factor of S.  The estimate is then a smooth, deterministic function of (a, A),
so an adaptive ODE solver and `jax.grad` see an ordinary differentiable vector field.  The
accuracy knob is the number of draws; the standard error is reported from the spread of the
antithetic pair means (docs/theory.md §4).
"""

from __future__ import annotations

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._custom_types import Array, Float, PRNGKeyArray
from ._metrics import mix
from ._teacher import Teacher


@functools.lru_cache(maxsize=32)
def sobol_uniforms(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """n scrambled-Sobol points in [0, 1)^dim (NumPy, read-only: cached and shared).  n not a
    power of 2 only loses some balance."""
    import warnings

    from scipy.stats import qmc

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*balance properties.*")
        pts = qmc.Sobol(dim, scramble=True, seed=seed).random(n)
    pts.flags.writeable = False
    return pts


def sobol_normals(n: int, dim: int, seed: int = 0) -> Float[Array, "n dim"]:
    """n scrambled-Sobol points mapped to standard normals (quasi-Monte Carlo), as antithetic
    pairs: for smooth integrands in moderate dimension the error falls close to 1/n instead of
    1/sqrt(n).  Generated once in NumPy/SciPy (a constant of the computation)."""
    if n % 2:
        raise ValueError(f"n={n} must be even (antithetic pairs)")
    from scipy.special import ndtri

    pts = sobol_uniforms(n // 2, dim, seed)
    # The inverse CDF in float64: clipped at 1 - 1e-12, a float32 cast would round the point to
    # exactly 1 (ndtri = inf) first; seen in large sets (e.g. 8192 points, some seeds).
    half = jnp.asarray(ndtri(np.clip(pts, 1e-12, 1 - 1e-12)), dtype=jnp.float32)
    return jnp.concatenate([half, -half], axis=0)


def cholesky(s: Float[Array, "C C"], jitter: float = 1e-9) -> Float[Array, "C C"]:
    """Lower Cholesky factor of a PSD matrix, in plain jnp (no LAPACK custom call: jaxlib's
    batched LAPACK calls deadlocked inside large vmapped programs on a 2-core CPU).

    A relative jitter keeps rank-deficient covariances (e.g. a zero-initialised head) finite.
    A pivot at or below the rounding level 16 eps · (mean variance) is rounding noise of an
    exactly singular direction (logits V Σ Vᵀ of a trunk narrower than C classes): its column
    is set to zero, as exact arithmetic would give, instead of dividing by it (entries of 1e10 in
    float32, and garbage test losses).  Positive definite inputs are not affected (every
    `psd_factor` call adds a jitter of 1e-4 of the largest variance, far above the floor)."""
    c = s.shape[0]
    scale = jnp.trace(s) / c + 1e-12
    s = s + (jitter * scale) * jnp.eye(c)
    floor = jnp.maximum(16 * jnp.finfo(s.dtype).eps * scale, 1e-30)

    def body(j, L):
        row = L[j]
        piv = s[j, j] - row @ row
        ok = piv > floor
        d = jnp.sqrt(jnp.where(ok, piv, floor))
        col = (s[:, j] - L @ row) / d
        col = jnp.where((jnp.arange(c) > j) & ok, col, 0.0)
        return L.at[:, j].set(col).at[j, j].set(d)

    return jax.lax.fori_loop(0, c, body, jnp.zeros_like(s))


class SoftmaxMoments(eqx.Module):
    """Estimates for z ~ N(a, A Aᵀ): `mean_p` (C,), `jac` J̄ (C, C), `lse` E[lse z] with its
    standard error `lse_se`."""

    mean_p: Float[Array, " C"]
    jac: Float[Array, "C C"]
    lse: Float[Array, ""]
    lse_se: Float[Array, ""]


def _softmax_points(a, A, g):
    """Cholesky factor L of A Aᵀ, and lse z (n,), softmax p (C, n) and its mean at z = a + L gᵢ.

    Classes lead and points trail (z is (C, n)): the softmax is then a few elementwise passes
    over C rows of n contiguous values, and under `vmap` (g shared, L batched) z = L gᵀ and the
    averages p g / n are single large matrix products over the whole batch, instead of many
    small ones with a length-C reduction per point (4x faster on CPU, benchmarks/RESULTS.md)."""
    L = cholesky(A @ A.T)
    z = a[:, None] + L @ g.T
    m = jnp.max(z, axis=0)
    e = jnp.exp(z - m)
    s = jnp.sum(e, axis=0)
    p = e / s
    return L, m + jnp.log(s), p, jnp.mean(p, axis=1)


def softmax_moments(a: Float[Array, " C"], A: Float[Array, "C D"], g: Float[Array, "n C"]) -> SoftmaxMoments:
    """Common-random-number estimates of E[p], E[diag p − p pᵀ], E[lse z] for z ~ N(a, A Aᵀ).

    `g`: antithetic standard-normal points (n, C) from `sobol_normals`."""
    L, lse, p, mean_p = _softmax_points(a, A, g)
    n = g.shape[0]
    jac = jnp.diag(mean_p) - p @ p.T / n
    pairs = 0.5 * (lse[: n // 2] + lse[n // 2 :])
    return SoftmaxMoments(mean_p, jac, jnp.mean(lse), jnp.std(pairs) / math.sqrt(n // 2))


def blocked_cholesky(s: Float[Array, "n n"], block: int = 64) -> Float[Array, "n n"]:
    """Lower Cholesky factor of a positive definite s (no jitter added), by blocks of `block`
    columns, in plain jnp like `cholesky`.

    The column loop of `cholesky` takes n sequential matrix-vector steps: 4.7 s at n = 3264 (the
    DMFT's (T+1) H covariances at T = 50, H = 64) against 0.26 s for LAPACK.  Here each of the
    n / block steps factors one diagonal block with the column loop and fills the panel below it
    with one matrix product and a triangular solve of `block` rows — left-looking, so the update
    uses the finished columns only (those not yet computed are still zero)."""
    n = s.shape[0]
    m = -(-n // block) * block
    # Pad with an identity block: the factor of diag(s, I) is diag(L, I).
    sp = jnp.eye(m, dtype=s.dtype).at[:n, :n].set(s)
    rows = jnp.arange(m)

    def body(k, L):
        j0 = k * block
        Lk = jax.lax.dynamic_slice(L, (j0, 0), (block, m))  # the block's rows, finished columns only
        col = jax.lax.dynamic_slice(sp, (0, j0), (m, block)) - L @ Lk.T  # (m, block)
        d = cholesky(jax.lax.dynamic_slice(col, (j0, 0), (block, block)), jitter=0.0)
        below = forward_substitution(d, col.T).T  # rows below the block: col · d⁻ᵀ
        inblock = (rows >= j0) & (rows < j0 + block)
        dfull = jax.lax.dynamic_update_slice(jnp.zeros((m, block), s.dtype), d, (j0, 0))
        new = jnp.where(inblock[:, None], dfull, jnp.where((rows >= j0 + block)[:, None], below, 0.0))
        return jax.lax.dynamic_update_slice(L, new, (0, j0))

    return jax.lax.fori_loop(0, m // block, body, jnp.zeros_like(sp))[:n, :n]


def forward_substitution(L: Float[Array, "n n"], B: Float[Array, "n m"]) -> Float[Array, "n m"]:
    """L⁻¹ B for lower-triangular L, in plain jnp (see `cholesky` on LAPACK in vmaps)."""
    n = L.shape[0]

    def body(i, X):
        row = (B[i] - L[i] @ X) / L[i, i]
        return X.at[i].set(row)

    return jax.lax.fori_loop(0, n, body, jnp.zeros_like(B))


def stein_gradient(a: Float[Array, " C"], A: Float[Array, "C D"], g: Float[Array, "n C"], score=0.0):
    """(J̄ A, E[p]) for z = a + A x ~ N(a, A Aᵀ), the x-gradient of E[lse z] (docs/theory.md §4).

    Two estimators of G = J̄ A on the same points z_i = a + L g_i (A = L Q, Q = L⁻¹ A with
    orthonormal rows), blended with weight `score` (a scalar in [0, 1], may depend on the state):

    - direct: (1/n) Σ (diag p_i − p_i p_iᵀ) A. Exact for smooth p, but once the logits are large
      p is nearly one-hot and J̄ is a boundary-layer integral: the fixed points then all sit far
      from the class boundaries, the estimate decays *exponentially* in |A| instead of like
      1/|A|, and the flow runs off to overconfident students (the clean corner of the grid).
    - score: (1/n) Σ p_i g_iᵀ Q (Stein's lemma once more, E[p gᵀ] = J̄ L). Its integrand stays
      O(1) as p becomes one-hot, so its error does not grow with the logit scale and it keeps
      the right large-|A| limit E[e_argmax gᵀ] Q.
    """
    L, _, p, mean_p = _softmax_points(a, A, g)
    n = g.shape[0]

    def direct():
        return (jnp.diag(mean_p) - p @ p.T / n) @ A

    def sc():
        return ((p @ g / n) @ forward_substitution(L, jnp.eye(L.shape[0], dtype=L.dtype))) @ A

    # A Python 0 or 1 (the solver's `estimator`) computes only the estimator it selects: this
    # runs at every field evaluation, and the score form's triangular solve is a C-step loop.
    if isinstance(score, (int, float)) and score in (0, 1):
        return (sc() if score == 1 else direct()), mean_p
    return (1 - score) * direct() + score * sc(), mean_p


def expected_max_normal(c: int) -> float:
    """E[max of c i.i.d. N(0,1)] = ∫ x c φ(x) Φ(x)^(c-1) dx, by a fine trapezoid rule (|error| < 1e-10)."""
    from math import erf

    x = np.linspace(-12.0, 12.0, 200001)
    phi = np.exp(-0.5 * x**2) / math.sqrt(2 * math.pi)
    Phi = 0.5 * (1.0 + np.vectorize(erf)(x / math.sqrt(2.0))) if c > 1 else np.ones_like(x)
    return float(np.trapezoid(x * c * phi * Phi ** (c - 1), x))


class TeacherConstants(eqx.Module):
    """Λ_k = E[e_{y_k} u_kᵀ] (K, C, R) and π_k = E[e_{y_k}] (K, C) of the label distribution."""

    Lam: Float[Array, "K C R"]
    pi: Float[Array, "K C"]


def teacher_constants(teacher: Teacher, *, n_samples: int = 2**18, key: PRNGKeyArray | None = None) -> TeacherConstants:
    """Λ and π of every task, including logit noise on a fraction q and label flips ε.

    Closed form when R = C (docs/theory.md §4): with ρ = s / sqrt(s² + σ²) and
    κ_C = E[max of C normals] / (C − 1),

        Λ = (1 − ε) (q ρ + 1 − q) κ_C (I − 11ᵀ/C) w,      π = 1/C,

    smooth in (s, σ, ε, q), so `jax.grad` flows through it.  For R < C the label distribution
    is not isotropic: Λ and π are Monte-Carlo means over `n_samples` draws (standard error
    ~ 1/sqrt(n_samples)), which are piecewise constant in (s, σ) — gradients w.r.t. those then
    do not flow through Λ."""
    cfg = teacher.config
    K, R, C = cfg.n_tasks, cfg.rank, cfg.n_classes
    eps, q = cfg.flip[:, None, None], cfg.noisy_fraction[:, None, None]
    if R == C:
        kappa = expected_max_normal(C) / (C - 1)
        rho = cfg.scale / jnp.sqrt(cfg.scale**2 + cfg.noise**2 + 1e-30)
        centre = jnp.eye(C) - 1.0 / C
        Lam = (1 - eps) * (q * rho[:, None, None] + 1 - q) * kappa * jnp.einsum("ij,kjr->kir", centre, teacher.w)
        return TeacherConstants(Lam, jnp.full((K, C), 1.0 / C))
    key = jax.random.key(0) if key is None else key
    ku, kx = jax.random.split(key)
    u = jax.random.normal(ku, (n_samples, R))
    xi = jax.random.normal(kx, (n_samples, C))

    def one(k):
        z0 = cfg.scale[k] * u @ teacher.w[k].T
        out = []
        for z in (z0, z0 + cfg.noise[k] * xi):
            e = jax.nn.one_hot(jnp.argmax(z, -1), C)
            out.append((e.T @ u / n_samples, jnp.mean(e, 0)))
        (L0, p0), (Ls, ps) = out
        qk, ek = cfg.noisy_fraction[k], cfg.flip[k]
        return mix(ek, qk, L0, Ls), mix(ek, qk, p0, ps) + ek / C

    Lam, pi = jax.vmap(one)(jnp.arange(K))
    return TeacherConstants(Lam, pi)
