"""Mean-field theory II: finite data. Dynamical mean-field theory (DMFT) of full-batch gradient
descent for a linear softmax student (L = 0) on P = α N' Gaussian examples.

Derivation and conventions: docs/dmft.md.  Summary (one task, discrete GD with step Δ, n = 0..T):

The student W (C x N) is split into its teacher-subspace part M = W Uᵀ (C x R) and the rest V
(N' = N − R directions).  M and the bias b are low-dimensional and self-average; V sees the data
through two effective processes coupled by four (T+1)C x (T+1)C kernels:

* per example (training set): h^n = M^n u + b^n + χ^n − (1/α) Σ_{m<n} R_v[n,m] g^m,
  g^n = softmax(h^n) − e_y, with χ ~ N(0, C_v) a Gaussian process and u ~ N(0, I_R) the
  example's teacher field (its label y from u, logit noise and flips);
* per weight coordinate (linear): v^{n+1} = v^n − Δ Σ_{m<=n} R_g[n,m] v^m + Δ η^n,
  η ~ N(0, C_g/α), v^0 ~ N(0, Q_0).

Self-consistency: C_g = E[g gᵀ], R_g = E[∂g/∂(field kick)] over the example process,
C_v = E[v vᵀ], R_v = ∂v/∂(force) over the coordinate process, M^{n+1} = M^n − Δ E[g^n uᵀ],
b^{n+1} = b^n − Δ E[g^n].  The coordinate process is linear, so C_v and R_v are computed
exactly by linear algebra; the example process is sampled (fixed draws: a deterministic map),
and its response is the exact per-draw Jacobian (a block-triangular solve).  The pair
(C_g, R_g) is iterated with damping to a fixed point.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from ._custom_types import Array, Float
from ._gaussian import cholesky


class _Problem(eqx.Module):
    """The inputs of one single-task DMFT solve (all arrays, so vmappable).

    - `alpha`: P / N' (N' = N − R, the directions outside the teacher subspace).
    - `dt`: GD step Δ (time units, t = Δ n).
    - `scale`, `noise`, `flip`, `noisy_fraction`: s, σ, ε, q of the task.
    - `w`: teacher readout (C, R).
    - `M0`: W(0) Uᵀ (C, R); `b0`: (C,); `Q0`: W(0)(I − UᵀU)W(0)ᵀ (C, C).
    """

    alpha: Float[Array, ""]
    dt: Float[Array, ""]
    scale: Float[Array, ""]
    noise: Float[Array, ""]
    flip: Float[Array, ""]
    noisy_fraction: Float[Array, ""]
    w: Float[Array, "C R"]
    M0: Float[Array, "C R"]
    b0: Float[Array, " C"]
    Q0: Float[Array, "C C"]


class _Draws(eqx.Module):
    """Fixed random numbers of the example process (common to every iteration).

    - `u`: (S, R) teacher fields; `xi`: (S, C) logit noise; `zeta`: (S, (T+1) C) standard
      normals for χ; `y_unif`: (S,) uniform labels (the flipped component)."""

    u: Float[Array, "S R"]
    xi: Float[Array, "S C"]
    zeta: Float[Array, "S TC"]
    y_unif: Array


def _labels(p: _Problem, d: _Draws):
    """Labels of the three label components (clean, logit-noise, uniform), each (S,), and the
    component weights (3,).  Every draw is evaluated under every component (common random
    numbers); the weights make ε and q enter smoothly."""
    clean = p.scale * d.u @ p.w.T
    y0 = jnp.argmax(clean, -1)
    ys = jnp.argmax(clean + p.noise * d.xi, -1)
    q, e = p.noisy_fraction, p.flip
    weights = jnp.stack([(1 - e) * (1 - q), (1 - e) * q, e])
    return jnp.stack([y0, ys, d.y_unif]), weights


def weight_process(Rg: Float[Array, "T1 C T1 C"], Cg: Float[Array, "T1 C T1 C"], Q0, alpha, dt):
    """Exact statistics of the linear coordinate process v^{n+1} = v^n − Δ Σ_{k<=n} R_g[n,k] v^k + Δ η^n.

    **Returns:** `(Cv, Rv)`, both (T+1, C, T+1, C): Cv[n,:,m,:] = E[v^n v^mᵀ] and
    Rv[n,:,m,:] = ∂v^n/∂f^m for a force f^m entering like η^m (zero for m >= n)."""
    T1, C = Rg.shape[0], Rg.shape[1]
    eye = jnp.eye(C)
    # Psi[n, :, j, :] = ∂v^n/∂(kick of v^j); Psi[j, j] = I, Psi[n, j] = 0 for n < j.
    psi0 = jnp.zeros((T1, C, T1, C)).at[0, :, 0, :].set(eye)

    def step(psi, n):
        mem = jnp.einsum("ckd,kdje->cje", Rg[n], psi)  # rows k > n of psi are still zero
        new = psi[n] - dt * mem
        new = new.at[:, n + 1, :].set(eye)
        return psi.at[n + 1].set(new), None

    psi, _ = jax.lax.scan(step, psi0, jnp.arange(T1 - 1))
    # A force at step m kicks v^{m+1} by Δ f^m.
    Rv = dt * jnp.concatenate([psi[:, :, 1:, :], jnp.zeros((T1, C, 1, C))], axis=2)
    P0 = psi[:, :, 0, :]  # (T1, C, C)
    Cv = jnp.einsum("ncd,de,mfe->ncmf", P0, Q0, P0) + jnp.einsum("ncad,adbe,mfbe->ncmf", Rv, Cg, Rv) / alpha
    return Cv, Rv


def _example_process(p: _Problem, d: _Draws, Cv, Rv, ys, weights):
    """Run the sampled example process for every draw and label component.

    **Returns:** `(h, g, M, b)`: fields and gradients (3, S, T+1, C), and M^n (T+1, C, R), b^n (T+1, C)."""
    T1, C = Cv.shape[0], Cv.shape[1]
    S = d.u.shape[0]
    Lc = psd_factor(Cv.reshape(T1 * C, T1 * C))
    chi = (d.zeta @ Lc.T).reshape(S, T1, C)
    onehot = jax.nn.one_hot(ys, C)  # (3, S, C)
    wts = jnp.broadcast_to(weights[:, None] / S, (3, S))

    def step(carry, n):
        M, b, G = carry  # G: (3, S, T1, C) gradients at steps < n (zeros after)
        mem = jnp.einsum("cmd,xsmd->xsc", Rv[n], G) / p.alpha
        h = d.u @ M.T + b + chi[:, n] - mem
        g = jax.nn.softmax(h, -1) - onehot
        G = G.at[:, :, n].set(g)
        M_new = M - p.dt * jnp.einsum("xs,xsc,sr->cr", wts, g, d.u)
        b_new = b - p.dt * jnp.einsum("xs,xsc->c", wts, g)
        return (M_new, b_new, G), (h, M, b)

    G0 = jnp.zeros((3, S, T1, C))
    (_, _, G), (h, M, b) = jax.lax.scan(step, (p.M0, p.b0, G0), jnp.arange(T1))
    return jnp.moveaxis(h, 0, 2), G, M, b


def _softmax_jacobian(h):
    p = jax.nn.softmax(h, -1)
    return jnp.einsum("...c,cd->...cd", p, jnp.eye(h.shape[-1])) - p[..., :, None] * p[..., None, :]


def _response(h, Rv, alpha, wts):
    """Weighted mean over draws of the exact Jacobian Γ[n,m] = ∂g^n/∂ε^m of each draw's example
    process to a kick ε of its field (M, b held fixed: one example does not move them).

    Γ[n, ·] = J^n (E_n − (1/α) Σ_{k<n} R_v[n,k] Γ[k, ·]) — forward substitution in n, all draws
    at once (one (C x T1 C) by (T1 C x S T1 C) product per step).

    `h`: (S, T1, C) fields; `wts`: (S,) weights summing to the mass of these draws."""
    S, T1, C = h.shape
    J = _softmax_jacobian(h)  # (S, T1, C, C)
    eye = jnp.eye(C)

    def step(G, n):
        mem = jnp.einsum("ckd,skdje->scje", Rv[n], G) / alpha  # (S, C, T1, C)
        src = jnp.zeros((S, C, T1, C)).at[:, :, n, :].set(eye)
        row = jnp.einsum("scd,sdje->scje", J[:, n], src - mem)
        return G.at[:, n].set(row), None

    G, _ = jax.lax.scan(step, jnp.zeros((S, T1, C, T1, C)), jnp.arange(T1))
    return jnp.einsum("s,sncme->ncme", wts, G)


def psd_factor(s: Float[Array, "n n"], rtol: float = 1e-5) -> Float[Array, "n n"]:
    """A lower-triangular L with L Lᵀ ≈ s for a PSD, possibly singular s (plain jnp, no LAPACK).

    Cholesky that drops a pivot (zero column) when the remaining variance is below
    `rtol` x the largest diagonal entry: the time-time covariances here are nearly singular
    (smooth processes, and exactly rank C at the first iteration), and a factor is only used
    to *sample*, so dropping directions of relative variance < rtol is harmless."""
    n = s.shape[0]
    thr = rtol * jnp.max(jnp.diag(s)) + 1e-30

    def body(j, L):
        row = L[j]
        r = s[j, j] - row @ row
        ok = r > thr
        d = jnp.sqrt(jnp.where(ok, r, 1.0))
        col = jnp.where(ok, (s[:, j] - L @ row) / d, 0.0)
        col = jnp.where(jnp.arange(n) > j, col, 0.0)
        return L.at[:, j].set(col).at[j, j].set(jnp.where(ok, d, 0.0))

    return jax.lax.fori_loop(0, n, body, jnp.zeros_like(s))


def _iteration(p: _Problem, d: _Draws, ys, weights, Cg, Rg, n_response: int):
    """One Picard map (C_g, R_g) -> (C_g', R_g') plus the trajectories it implies."""
    Cv, Rv = weight_process(Rg, Cg, p.Q0, p.alpha, p.dt)
    h, G, M, b = _example_process(p, d, Cv, Rv, ys, weights)
    S = d.u.shape[0]
    wts = jnp.broadcast_to(weights[:, None] / S, (3, S))
    Cg_new = jnp.einsum("xs,xsnc,xsme->ncme", wts, G, G)
    # Response on a subset of the draws (its cost is T³C³ per draw).
    Sr = n_response
    hr = h[:, :Sr].reshape(3 * Sr, *h.shape[2:])
    wr = jnp.repeat(weights / Sr, Sr)
    Rg_new = _response(hr, Rv, p.alpha, wr)
    return Cg_new, Rg_new, (Cv, Rv, h, G, M, b)


def _test_metrics(p: _Problem, Cv, M, b, x_eval):
    """Test loss and accuracy at every grid time: a fresh example has field M^n u + b^n + v,
    v ~ N(0, Cv[n, n]) independent of u (it never entered training).  Joint quadrature over
    (u, logit noise, v) with the three label components mixed exactly.

    `x_eval`: (n, R + 2C) standard normals. **Returns:** (loss, acc), each (T+1,)."""
    R, C = p.w.shape[1], p.w.shape[0]
    u, xi, gz = x_eval[:, :R], x_eval[:, R : R + C], x_eval[:, R + C :]
    clean = p.scale * u @ p.w.T
    y0 = jnp.argmax(clean, -1)
    ys = jnp.argmax(clean + p.noise * xi, -1)
    q, e = p.noisy_fraction, p.flip

    def one(Mn, bn, Sn):
        z = u @ Mn.T + bn + gz @ cholesky(Sn).T
        lse = jax.nn.logsumexp(z, -1)
        ce0 = jnp.mean(lse - jnp.take_along_axis(z, y0[:, None], -1)[:, 0])
        ces = jnp.mean(lse - jnp.take_along_axis(z, ys[:, None], -1)[:, 0])
        ceu = jnp.mean(lse - jnp.mean(z, -1))
        am = jnp.argmax(z, -1)
        loss = (1 - e) * (q * ces + (1 - q) * ce0) + e * ceu
        acc = (1 - e) * (q * jnp.mean(am == ys) + (1 - q) * jnp.mean(am == y0)) + e / C
        return loss, acc

    T1 = Cv.shape[0]
    diag = Cv[jnp.arange(T1), :, jnp.arange(T1), :]
    return jax.lax.map(lambda a: one(*a), (M, b, diag))


def _train_loss(h, ys, weights):
    """Training loss at every grid time from the example process: (T+1,)."""
    lse = jax.nn.logsumexp(h, -1)  # (3, S, T1)
    zy = jnp.take_along_axis(h, ys[:, :, None, None], -1)[..., 0]
    return jnp.einsum("x,xsn->n", weights, lse - zy) / h.shape[1]
