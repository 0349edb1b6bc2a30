"""Mean-field theory II: finite data. Dynamical mean-field theory (DMFT) of full-batch gradient
descent for linear softmax students (L = 0, and linear trunks L >= 1 with per-task heads) on P_k = α_k N'
Gaussian examples per task.

Derivation and conventions: docs/dmft.md.  Summary (one task, discrete GD with steps Δ_n, n = 0..T;
uniform Δ_n = t_max / T or a geometric schedule, `FiniteDataSolver.time_grid`):

The student W (C x N) is split into its teacher-subspace part M = W Uᵀ (C x R) and the rest V
(N' = N − R directions).  M and the bias b are low-dimensional and self-average; V sees the data
through two effective processes coupled by four (T+1)C x (T+1)C kernels:

* per example (training set): h^n = M^n u + b^n + χ^n − (1/α) Σ_{m<n} R_v[n,m] g^m,
  g^n = softmax(h^n) − e_y, with χ ~ N(0, C_v) a Gaussian process and u ~ N(0, I_R) the
  example's teacher field (its label y from u, logit noise and flips);
* per weight coordinate (linear): v^{n+1} = v^n − Δ_n Σ_{m<=n} R_g[n,m] v^m + Δ_n η^n,
  η ~ N(0, C_g/α), v^0 ~ N(0, Q_0).

Self-consistency: C_g = E[g gᵀ], R_g = E[∂g/∂(field kick)] over the example process,
C_v = E[v vᵀ], R_v = ∂v/∂(force) over the coordinate process, M^{n+1} = M^n − Δ_n E[g^n uᵀ],
b^{n+1} = b^n − Δ_n E[g^n].  The coordinate process is linear, so C_v and R_v are computed
exactly by linear algebra; the example process is sampled (fixed draws: a deterministic map),
and its response is the exact per-draw Jacobian (a block-triangular solve).  The pair
(C_g, R_g) is iterated with damping to a fixed point.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import threading

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.special
import jax.scipy.stats
import numpy as np

from ._custom_types import Array, Bool, Float, Int
from ._experiment import Experiment, Seeds
from ._train import at_minimum, early_stopped_loss
from ._gaussian import blocked_cholesky, cholesky, sobol_uniforms
from ._student import Student, StudentConfig
from ._teacher import Teacher, TeacherConfig
from ._validation import check_choice, check_int, check_range, is_concrete


class _Problem(eqx.Module):
    """The inputs of one single-task DMFT solve (all arrays, so vmappable).

    - `alpha`: P / N' (N' = N − R, the directions outside the teacher subspace).
    - `dt`: (T,) GD step sizes Δ_n (time units; step n takes t_n to t_{n+1} = t_n + Δ_n).
    - `scale`, `noise`, `flip`, `noisy_fraction`: s, σ, ε, q of the task.
    - `w`: teacher readout (C, R).
    - `M0`: W(0) Uᵀ (C, R); `b0`: (C,); `Q0`: W(0)(I − UᵀU)W(0)ᵀ (C, C).
    """

    alpha: Float[Array, ""]
    dt: Float[Array, " T"]
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


def argmax_probability(a: Float[Array, "... C"], y, sigma, n_nodes: int = 48) -> Float[Array, "..."]:
    """P(argmax(a + σ ξ) = y) for ξ ~ N(0, I_C), smooth in a and σ:
    E_z Π_{c≠y} Φ((a_y − a_c)/σ + z), z ~ N(0, 1) (ξ_y = z), by Gauss–Hermite quadrature in z."""
    x, wq = np.polynomial.hermite_e.hermegauss(n_nodes)
    logw = jnp.log(jnp.asarray(wq / np.sqrt(2 * np.pi)))
    sig = jnp.maximum(sigma, 1e-6)  # σ = 0: labels are the clean argmax, P = 1 (or 0)
    ay = jnp.take_along_axis(a, jnp.asarray(y)[..., None], -1)
    dlt = (ay - a) / sig  # (..., C)
    lcdf = jax.scipy.stats.norm.logcdf(dlt[..., None] + jnp.asarray(x))  # (..., C, n)
    own = jax.nn.one_hot(y, a.shape[-1], dtype=bool)[..., None]
    return jnp.exp(jax.nn.logsumexp(jnp.sum(jnp.where(own, 0.0, lcdf), -2) + logw, -1))


def _likelihood_ratio(clean, noise, ys):
    """Per-draw factor π(ys)/sg(π(ys)) of the logit-noise labels ys = argmax(clean + σ ξ): 1 in
    value (the forward numbers are unchanged), ∇ log π in derivative — the score-function
    (likelihood-ratio) gradient of every average over these labels w.r.t. s, σ (and the
    teacher fields).  Without it the sampled argmax labels are piecewise constant in s, σ and
    their gradients are 0 (docs/dmft.md §3)."""
    pi = argmax_probability(clean, ys, noise)
    pi0 = jax.lax.stop_gradient(pi)
    ok = pi0 > 0
    return jnp.where(ok, pi / jnp.where(ok, pi0, 1.0), 1.0)


def _labels_raw(scale, noise, flip, q, w, u, xi, y_unif):
    """Labels (3, S) of the clean, logit-noise and uniform components for teacher fields `u`
    (S, R), and per-draw weights (3, S).  Every draw is evaluated under every component
    (common random numbers); the component weights make ε and q enter smoothly, and the
    likelihood ratio of the logit-noise labels (`_likelihood_ratio`, 1 in value) makes s and σ
    enter the gradients."""
    clean = scale * u @ w.T
    y0 = jnp.argmax(clean, -1)
    ys = jnp.argmax(clean + noise * xi, -1)
    comp = jnp.stack([(1 - flip) * (1 - q), (1 - flip) * q, flip])
    lr = _likelihood_ratio(clean, noise, ys)
    weights = comp[:, None] * jnp.stack([jnp.ones_like(lr), lr, jnp.ones_like(lr)])
    return jnp.stack([y0, ys, y_unif]), weights


def _labels(p: _Problem, d: _Draws):
    return _labels_raw(p.scale, p.noise, p.flip, p.noisy_fraction, p.w, d.u, d.xi, d.y_unif)


def weight_process(Rg: Float[Array, "T1 C T1 C"], Cg: Float[Array, "T1 C T1 C"], Q0, alpha, dt):
    """Exact statistics of the linear coordinate process
    v^{n+1} = v^n − Δ_n Σ_{k<=n} R_g[n,k] v^k + Δ_n η^n.

    `dt`: the step sizes Δ_n, (T,) or a scalar (uniform steps), in time units.

    **Returns:** `(Cv, Rv)`, both (T+1, C, T+1, C): Cv[n,:,m,:] = E[v^n v^mᵀ] and
    Rv[n,:,m,:] = ∂v^n/∂f^m for a force f^m entering like η^m (zero for m >= n)."""
    T1, C = Rg.shape[0], Rg.shape[1]
    dt = jnp.broadcast_to(jnp.asarray(dt, float), (T1 - 1,))
    eye = jnp.eye(C)
    # Psi[n, :, j, :] = ∂v^n/∂(kick of v^j); Psi[j, j] = I, Psi[n, j] = 0 for n < j.
    psi0 = jnp.zeros((T1, C, T1, C)).at[0, :, 0, :].set(eye)

    def step(psi, xs):
        n, dt_n = xs
        mem = jnp.einsum("ckd,kdje->cje", Rg[n], psi)  # rows k > n of psi are still zero
        new = psi[n] - dt_n * mem
        new = new.at[:, n + 1, :].set(eye)
        return psi.at[n + 1].set(new), None

    psi, _ = jax.lax.scan(step, psi0, (jnp.arange(T1 - 1), dt))
    # A force at step m kicks v^{m+1} by Δ_m f^m (no step after the last time: column T is 0).
    Rv = jnp.concatenate([psi[:, :, 1:, :] * dt[:, None], jnp.zeros((T1, C, 1, C))], axis=2)
    P0 = psi[:, :, 0, :]  # (T1, C, C)
    Cv = jnp.einsum("ncd,de,mfe->ncmf", P0, Q0, P0) + jnp.einsum("ncad,adbe,mfbe->ncmf", Rv, Cg, Rv) / alpha
    return Cv, Rv


def _causal_memory_scan(step, carry, Rrows, dt, width: int, n_cols: int, n_blocks: int | None = None):
    """Scan `step` over the T+1 grid times with a causal memory of the rows it wrote.

    `step(carry, mem, (n, dt_n)) -> (carry, row, out)` sees mem = Σ_{m<n} Rrows[n, :, m] · row^m,
    (a, n_cols), and writes its row (width, n_cols) at time n.  The rows are kept in one buffer
    with the contracted index (m, j) leading, so each memory term is one plain matrix product;
    rows of later times are still zero, so a time block [e_i, e_{i+1}) uses only the leading
    e_{i+1} · width rows (the buffer grows block by block: (B + 1)/(2B) of a dense sweep's flops).

    `Rrows`: (T1, a, T1 · width); `dt`: (T1,) steps (`_steps_padded`).
    **Returns:** (carry, buffer (T1 · width, n_cols), outs stacked over the T1 times)."""
    T1 = Rrows.shape[0]
    edges = _time_blocks(T1, n_blocks)
    buf = jnp.zeros((0, n_cols), Rrows.dtype)
    outs = []
    for lo, hi_t in zip(edges[:-1], edges[1:]):
        hi = hi_t * width
        buf = jnp.pad(buf, ((0, hi - buf.shape[0]), (0, 0)))

        def body(state, xs):
            c, b = state
            n, Rn, dt_n = xs
            c, row, out = step(c, Rn @ b, (n, dt_n))
            return (c, jax.lax.dynamic_update_slice(b, row.astype(b.dtype), (n * width, 0))), out

        (carry, buf), out = jax.lax.scan(body, (carry, buf), (jnp.arange(lo, hi_t), Rrows[lo:hi_t, :, :hi], dt[lo:hi_t]))
        outs.append(out)
    return carry, buf, jax.tree_util.tree_map(lambda *a: jnp.concatenate(a), *outs)


def _example_process(p: _Problem, d: _Draws, Cv, Rv, ys, weights):
    """Run the sampled example process for every draw and label component.

    **Returns:** `(h, g, M, b)`: fields and gradients (3, S, T+1, C), and M^n (T+1, C, R), b^n (T+1, C)."""
    T1, C = Cv.shape[0], Cv.shape[1]
    S = d.u.shape[0]
    Lc = psd_factor(Cv.reshape(T1 * C, T1 * C))
    chi = (d.zeta @ Lc.T).reshape(S, T1, C)
    onehot = jax.nn.one_hot(ys, C)  # (3, S, C)
    wts = weights / S  # (3, S)

    def step(carry, mem, xs):
        n, dt_n = xs
        M, b = carry
        mem = jnp.moveaxis(mem.reshape(C, 3, S), 0, -1) / p.alpha  # Σ_{m<n} R_v[n,m] g^m, (3, S, C)
        h = d.u @ M.T + b + chi[:, n] - mem
        g = jax.nn.softmax(h, -1) - onehot
        M_new = M - dt_n * jnp.einsum("xs,xsc,sr->cr", wts, g, d.u)
        b_new = b - dt_n * jnp.einsum("xs,xsc->c", wts, g)
        return (M_new, b_new), jnp.moveaxis(g, -1, 0).reshape(C, 3 * S), (h, M, b)

    _, buf, (h, M, b) = _causal_memory_scan(step, (p.M0, p.b0), Rv.reshape(T1, C, T1 * C), _steps_padded(p.dt), C, 3 * S)
    G = jnp.transpose(buf.reshape(T1, C, 3, S), (2, 3, 0, 1))
    return jnp.moveaxis(h, 0, 2), G, M, b


def _steps_padded(dt: Float[Array, " T"]) -> Float[Array, " T1"]:
    """The steps Δ_n with a 0 appended: the scans over the T+1 grid times also compute an update
    after the last time, which is discarded (a static shape; no out-of-range index)."""
    return jnp.concatenate([dt, jnp.zeros(1, dt.dtype)])


def _softmax_jacobian(h):
    p = jax.nn.softmax(h, -1)
    return jnp.einsum("...c,cd->...cd", p, jnp.eye(h.shape[-1])) - p[..., :, None] * p[..., None, :]


def _time_blocks(T1: int, n_blocks: int | None = None) -> list[int]:
    """Edges 0 = e_0 < e_1 < ... = T1 of `n_blocks` near-equal blocks of grid times.

    Default: blocks of at least 8 times, at most 8 blocks — each block is one more scan to
    compile, so short grids (the tests') stay one scan, while long ones save most of the
    flops a block structure can: with B blocks a kernel whose step costs ∝ the buffer's area (the
    response) does Σ_i (i/B)² / B of the dense work (→ 1/3), one ∝ its length (the example
    process's memory) (B + 1)/(2B) (→ 1/2)."""
    if n_blocks is not None and (isinstance(n_blocks, bool) or not isinstance(n_blocks, int) or n_blocks < 1):
        raise ValueError(f"n_blocks must be a positive integer (or None), got {n_blocks!r}")
    nb = max(1, min(8, T1 // 8)) if n_blocks is None else min(T1, n_blocks)
    return [round(i * T1 / nb) for i in range(nb + 1)]


def _response(h, Rv, alpha, wts, chunk: int = 32, n_blocks: int | None = None):
    """Weighted mean over draws of the exact Jacobian Γ[n,m] = ∂g^n/∂ε^m of each draw's example
    process to a kick ε of its field (M, b held fixed: one example does not move them).

    Γ[n, ·] = J^n (E_n − (1/α) Σ_{k<n} R_v[n,k] Γ[k, ·]) — forward substitution in n, a chunk of
    draws at a time.  Causality makes Γ block lower-triangular (Γ[k, j] = 0 for j > k), so the
    steps n of a time block [e_i, e_{i+1}) only touch the leading e_{i+1} C rows and columns of Γ:
    the substitution runs block by block on an array growing in both time indices (Σ_i (i/B)² / B
    of a dense sweep's flops with B blocks, `_time_blocks`).  It is not `_causal_memory_scan`,
    which grows rows only: written on it the response is ~1.4x slower (measured).  Γ is
    stored with the contracted index (k, d) leading, (T1 C, chunk, T1 C), so each step's memory
    term is one plain (C x e C) by (e C x chunk e C) product without transposes: with both, the
    response is 6–8x faster than the dense per-draw einsum it replaced (docs/dmft.md §3,
    `benchmarks/dmft_kernels.py`).
    Each chunk is rematerialised in reverse mode, so the memory of `jax.grad` is that of one
    chunk's scans.

    `h`: (S, T1, C) fields; `wts`: (S,) weights summing to the mass of these draws.
    **Returns:** (T1, C, T1, C)."""
    S, T1, C = h.shape
    chunk = min(chunk, S)
    if S % chunk:
        raise ValueError(f"the response draws ({S}) must be a multiple of the chunk ({chunk})")
    TC = T1 * C
    A = Rv.reshape(T1, C, TC) / alpha  # A[n, d, (k, e)]
    edges = _time_blocks(T1, n_blocks)

    @jax.checkpoint
    def one_chunk(hc, wc):
        J = _softmax_jacobian(hc)  # (B, T1, C, C)
        B = hc.shape[0]
        G = jnp.zeros((0, B, 0))  # Γ[(k, d), s, (j, e)] for k, j < the current block's end
        for lo, hi_t in zip(edges[:-1], edges[1:]):
            hi = hi_t * C
            G = jnp.pad(G, ((0, hi - G.shape[0]), (0, 0), (0, hi - G.shape[2])))

            def step(G, xs, hi=hi):
                n, An, Jn = xs  # An (C, hi), Jn (B, C, C)
                mem = (An @ G.reshape(hi, B * hi)).reshape(C, B, hi)
                src = jax.nn.one_hot(n * C + jnp.arange(C), hi)[:, None, :]  # E_n
                row = jnp.einsum("scd,dsj->csj", Jn, src - mem)
                return jax.lax.dynamic_update_slice(G, row, (n * C, 0, 0)), None

            xs = (jnp.arange(lo, hi_t), A[lo:hi_t, :, :hi], jnp.moveaxis(J[:, lo:hi_t], 1, 0))
            G, _ = jax.lax.scan(step, G, xs)
        return jnp.einsum("s,ksj->kj", wc, G)

    def body(acc, xs):
        return acc + one_chunk(*xs), None

    xs = (h.reshape(S // chunk, chunk, T1, C), wts.reshape(S // chunk, chunk))
    out, _ = jax.lax.scan(body, jnp.zeros((TC, TC)), xs)
    return out.reshape(T1, C, T1, C)


def psd_factor(s: Float[Array, "n n"], jitter: float = 1e-4) -> Float[Array, "n n"]:
    """A lower-triangular L with L Lᵀ = s + jitter · max(diag s) · I, for a PSD, possibly singular s
    (plain jnp Cholesky, no LAPACK).

    The time–time covariances here are nearly singular (smooth processes, and exactly rank C at
    the first iteration).  A factor is only used to *sample* χ = L ζ, so a relative jitter of
    1e-4 (an independent extra variance of 1e-4 of the largest one) is harmless, and it keeps
    every pivot >= sqrt(jitter): the map stays smooth, so the Picard iteration converges to a
    clean fixed point and its derivative (implicit differentiation) is well conditioned.  An
    earlier pivot-dropping factor made the map discontinuous (residual floor ~1e-3, gradients 7 %
    off finite differences)."""
    n = s.shape[0]
    s = s + (jitter * jnp.max(jnp.diag(s)) + 1e-30) * jnp.eye(n)
    # Large factors by blocks (the paper preset: n = (T+1) H = 1344–3264; 2x–7x faster,
    # benchmarks/dmft_kernels.py), small ones by the column loop (fewer operations to compile).
    return blocked_cholesky(s) if n > 256 else cholesky(s, jitter=0.0)


def _iteration(p: _Problem, d: _Draws, ys, weights, Cg, Rg, n_response: int):
    """One Picard map (C_g, R_g) -> (C_g', R_g') plus the trajectories it implies."""
    Cv, Rv = weight_process(Rg, Cg, p.Q0, p.alpha, p.dt)
    h, G, M, b = _example_process(p, d, Cv, Rv, ys, weights)
    S = d.u.shape[0]
    wts = weights / S
    Cg_new = jnp.einsum("xs,xsnc,xsme->ncme", wts, G, G)
    # Response on a subset of the draws (its cost is T³C³ per draw).
    Sr = n_response
    hr = h[:, :Sr].reshape(3 * Sr, *h.shape[2:])
    wr = (weights[:, :Sr] / Sr).reshape(-1)
    Rg_new = _response(hr, Rv, p.alpha, wr)
    return Cg_new, Rg_new, (Cv, Rv, h, G, M, b)


def _label_mixture_metrics(z, y0, ys, q, e, lr=1.0):
    """(CE, accuracy) of logits z (n, C) under the label mixture: clean labels y0 on 1 − q of the
    examples, noisy-logit labels ys on q, and a fraction e replaced by uniform classes.  `lr`
    (n,): likelihood ratio of the ys (1 in value, carries ∂/∂(s, σ); `_likelihood_ratio`)."""
    C = z.shape[-1]
    lse = jax.nn.logsumexp(z, -1)
    ce0 = jnp.mean(lse - jnp.take_along_axis(z, y0[:, None], -1)[:, 0])
    ces = jnp.mean(lr * (lse - jnp.take_along_axis(z, ys[:, None], -1)[:, 0]))
    ceu = jnp.mean(lse - jnp.mean(z, -1))
    am = jnp.argmax(z, -1)
    loss = (1 - e) * (q * ces + (1 - q) * ce0) + e * ceu
    acc = (1 - e) * (q * jnp.mean(lr * (am == ys)) + (1 - q) * jnp.mean(am == y0)) + e / C
    return loss, acc


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
    lr = _likelihood_ratio(clean, p.noise, ys)
    q, e = p.noisy_fraction, p.flip

    def one(Mn, bn, Sn):
        return _label_mixture_metrics(u @ Mn.T + bn + gz @ cholesky(Sn).T, y0, ys, q, e, lr)

    T1 = Cv.shape[0]
    diag = Cv[jnp.arange(T1), :, jnp.arange(T1), :]
    return jax.lax.map(lambda a: one(*a), (M, b, diag))


def _train_loss(h, ys, weights):
    """Training loss at every grid time from the example process: (T+1,)."""
    lse = jax.nn.logsumexp(h, -1)  # (3, S, T1)
    zy = jnp.take_along_axis(h, ys[:, :, None, None], -1)[..., 0]
    return jnp.einsum("xs,xsn->n", weights, lse - zy) / h.shape[1]


# ---------------------------------------------------------------------------------------------
# Depth L >= 1: a shared linear trunk, first layer W (H x N) + bias, upper layers W_l (H x H) +
# b_l (l = 2..L), per-task heads (V_k, c_k).  The first layer's complement part is the DMFT
# variable (H-dimensional coordinate and field processes); Ω = W Eᵀ (H x D), the upper layers,
# the biases and the heads are self-averaging (docs/dmft.md §4).  The upper layers reach the
# first layer's processes only through the effective heads Ṽ_k = V_k W_L ⋯ W_2.
# ---------------------------------------------------------------------------------------------


class _TrunkProblem(eqx.Module):
    """Inputs of one solve with a linear trunk of depth L >= 1 (K tasks, all arrays).

    - `alpha`: (K,) P_k / N' with N' = N − D, D = K R; `rho`: (K,) task rates; `dt`: (T,) steps Δ_n.
    - `scale`, `noise`, `flip`, `noisy_fraction`: (K,); `w`: (K, C, R); `T`: (K, R, D) (U_k = T_k E).
    - initial state: `Omega0` (H, D) = W_1 Eᵀ, `b10` (H,), the upper trunk layers W_2..W_L
      `Wu0` (L−1, H, H) and their biases `bu0` (L−1, H) (empty for L = 1), `V0` (K, C, H),
      `c0` (K, C), `Q0` (H, H) = W_1 (I − EᵀE) W_1ᵀ.
    """

    alpha: Float[Array, " K"]
    rho: Float[Array, " K"]
    dt: Float[Array, " T"]
    scale: Float[Array, " K"]
    noise: Float[Array, " K"]
    flip: Float[Array, " K"]
    noisy_fraction: Float[Array, " K"]
    w: Float[Array, "K C R"]
    T: Float[Array, "K R D"]
    Omega0: Float[Array, "H D"]
    b10: Float[Array, " H"]
    Wu0: Float[Array, "Lm1 H H"]
    bu0: Float[Array, "Lm1 H"]
    V0: Float[Array, "K C H"]
    c0: Float[Array, "K C"]
    Q0: Float[Array, "H H"]


class _TrunkDraws(eqx.Module):
    """Fixed draws per task: `u` (K, S, D) inputs in the teacher basis, `xi` (K, S, C),
    `zeta` (K, S, (T+1) H), `y_unif` (K, S)."""

    u: Float[Array, "K S D"]
    xi: Float[Array, "K S C"]
    zeta: Float[Array, "K S TH"]
    y_unif: Array


def _teacher_frame_draws(T: Float[Array, "R D"], u: Float[Array, "S D"]) -> Float[Array, "S D"]:
    """The draws u (S, D) of one task's inputs in the teacher basis, in value unchanged, in
    derivative rotated with the task's teacher subspace, so that the teacher fields T u — and
    with them the sampled clean labels argmax(s w T u) — do not move when T does (relatedness r).

    Averages over u ~ N(0, I_D) are invariant under an orthogonal change of variables u = Q ũ; with
    Q = I + Ω, Ω = Ṫᵀ T − Tᵀ Ṫ − Tᵀ (T Ṫᵀ) T for a change Ṫ of T (rows orthonormal, so T Ṫᵀ is
    skew and Ω is skew: Q is a rotation to first order), T Q = T − Ṫ + O(Ṫ²): the change of T
    is undone on the labels and moved onto the student's fields Ω u, which are smooth.  Ṫ is
    carried as T − sg(T) (zero in value), so every forward number is the plain draw's and
    `jax.grad` w.r.t. r is the pathwise derivative of the expectation, including the part that
    the discretely switching clean labels hide from the sampled estimate (docs/dmft.md §3).
    First-order only: second derivatives w.r.t. r are not exact."""
    T0 = jax.lax.stop_gradient(T)
    dT = T - T0
    omega = dT.T @ T0 - T0.T @ dT - T0.T @ (T0 @ dT.T) @ T0
    return u + u @ omega.T


def _trunk_labels(p: _TrunkProblem, d: _TrunkDraws):
    """Labels (K, 3, S) of the clean / logit-noise / uniform components and weights (K, 3, S)."""
    u = jnp.einsum("ksd,krd->ksr", d.u, p.T)
    return jax.vmap(_labels_raw)(p.scale, p.noise, p.flip, p.noisy_fraction, p.w, u, d.xi, d.y_unif)


def _effective_heads(V, c, Wu, bu):
    """Heads on the first-layer output f_1: Ṽ_k = V_k W_L ⋯ W_2 and c̃_k = V_k a_L + c_k, where
    a_L = W_L(⋯(W_2 · 0 + b_2)⋯) + b_L is the trunk's output at f_1 = 0 (the affine map
    f_1 ↦ f_L, composed with each head).  `V` (K, C, H), `c` (K, C), `Wu` (L−1, H, H), `bu` (L−1, H).

    **Returns:** `(Ṽ, c̃, P)` with P[l] = V_k W_L ⋯ W_{l+2} (the head seen by layer l+1's output,
    l = 0..L−1; P[0] = Ṽ, P[L−1] = V): the backpropagated error at layer l+1 is P[l]ᵀ g.
    For L = 1 this is (V, c, [V]) with no arithmetic, so the depth-1 numbers are unchanged."""
    Vt, ct, P = V, c, [V]
    for ell in reversed(range(Wu.shape[0])):
        ct = ct + jnp.einsum("kch,h->kc", Vt, bu[ell])
        Vt = jnp.einsum("kch,hg->kcg", Vt, Wu[ell])
        P.insert(0, Vt)
    return Vt, ct, P


def _trunk_example_process(p: _TrunkProblem, d: _TrunkDraws, Cv, Rv, ys, weights):
    """Sampled example processes of all K tasks, coupled through the shared Ω, b1, the upper
    trunk layers (W_l, b_l), l = 2..L, and the heads.

    φ^n = χ^n − (ρ_k/α_k) Σ_{m<n} R_v[n,m] Ṽ_k^mᵀ g^m,  f_1 = Ω u + b1 + φ,
    f_l = W_l f_{l−1} + b_l,  h = V_k f_L + c_k  (Ṽ_k = V_k W_L ⋯ W_2, `_effective_heads`).
    The low-dimensional parameters move by the data-averaged gradients backpropagated through
    the linear layers, with error δ_l = (V_k W_L ⋯ W_{l+1})ᵀ g at the output of layer l.

    **Returns:** h (K, 3, S, T1, C), G (K, 3, S, T1, C), and the trajectories (values *at* each
    step) Ω (T1, H, D), b1 (T1, H), Ṽ (T1, K, C, H), c̃ (T1, K, C)."""
    T1, H = Cv.shape[0], Cv.shape[1]
    K, S = d.u.shape[0], d.u.shape[1]
    C = p.V0.shape[1]
    Lu = p.Wu0.shape[0]  # L − 1 upper trunk layers (static)
    Lc = psd_factor(Cv.reshape(T1 * H, T1 * H))
    chi = (d.zeta @ Lc.T).reshape(K, S, T1, H)
    onehot = jax.nn.one_hot(ys, C)  # (K, 3, S, C)
    wts = weights / S  # (K, 3, S)
    mem_coef = p.rho / p.alpha

    def step(carry, mem, xs):
        n, dt_n = xs
        Om, b1, Wu, bu, V, c = carry
        Vt, ct, P = _effective_heads(V, c, Wu, bu)
        # Σ_{m<n} R_v[n,m] Ṽ_k^mᵀ g^m (the first-layer forces of earlier steps), (K, 3, S, H).
        mem = jnp.moveaxis(mem.reshape(H, K, 3, S), 0, -1) * mem_coef[:, None, None, None]
        f = (d.u @ Om.T)[:, None] + b1 + chi[:, None, :, n] - mem  # (K, 3, S, H)
        fs = [f]
        for ell in range(Lu):
            fs.append(fs[-1] @ Wu[ell].T + bu[ell])
        h = jnp.einsum("kxsh,kch->kxsc", fs[-1], V) + c[:, None, None]
        g = jax.nn.softmax(h, -1) - onehot
        force = jnp.einsum("kxsc,kch->hkxs", g, Vt).reshape(H, K * 3 * S)
        wg = wts[..., None] * g  # (K, 3, S, C)
        Om_new = Om - dt_n * jnp.einsum("k,kch,kxsc,ksd->hd", p.rho, Vt, wg, d.u)
        b1_new = b1 - dt_n * jnp.einsum("k,kch,kxsc->h", p.rho, Vt, wg)
        # Layer l+2 (index ell): error P[ell+1]ᵀ g at its output, input fs[ell].
        Wu_new = jnp.stack([Wu[ell] - dt_n * jnp.einsum("k,kch,kxsc,kxsg->hg", p.rho, P[ell + 1], wg, fs[ell])
                            for ell in range(Lu)]) if Lu else Wu  # fmt: skip
        bu_new = jnp.stack([bu[ell] - dt_n * jnp.einsum("k,kch,kxsc->h", p.rho, P[ell + 1], wg)
                            for ell in range(Lu)]) if Lu else bu  # fmt: skip
        V_new = V - dt_n * p.rho[:, None, None] * jnp.einsum("kxsc,kxsh->kch", wg, fs[-1])
        c_new = c - dt_n * p.rho[:, None] * jnp.einsum("kxsc->kc", wg)
        return (Om_new, b1_new, Wu_new, bu_new, V_new, c_new), force, (h, g, Om, b1, Vt, ct)

    init = (p.Omega0, p.b10, p.Wu0, p.bu0, p.V0, p.c0)
    _, _, (h, G, Om, b1, Vt, ct) = _causal_memory_scan(step, init, Rv.reshape(T1, H, T1 * H), _steps_padded(p.dt), H,
                                                       K * 3 * S)
    return jnp.moveaxis(h, 0, 3), jnp.moveaxis(G, 0, 3), Om, b1, Vt, ct


def _trunk_iteration(p: _TrunkProblem, d: _TrunkDraws, ys, weights, Cv, Rv, n_response: int):
    """One Picard map of the first-layer kernels (C_v, R_v) (H-space) -> new ones.  The
    logit-space quantities reach the first layer through the effective heads Ṽ_k (V below)."""
    h, G, Om, b1, V, c = _trunk_example_process(p, d, Cv, Rv, ys, weights)
    K, S = d.u.shape[0], d.u.shape[1]
    wts = weights / S  # (K, 3, S)
    Cg = jnp.einsum("kxs,kxsnc,kxsme->kncme", wts, G, G)
    Sr = n_response

    def resp(k):
        # Logit-space memory of task k: ρ_k Ṽ_k^n R_v[n,j] Ṽ_k^jᵀ.
        Rt = p.rho[k] * jnp.einsum("nch,nhjg,jeg->ncje", V[:, k], Rv, V[:, k])
        hr = h[k, :, :Sr].reshape(3 * Sr, *h.shape[3:])
        return _response(hr, Rt, p.alpha[k], (weights[k, :, :Sr] / Sr).reshape(-1))

    Rg = jnp.stack([resp(k) for k in range(K)])  # (K, T1, C, T1, C)
    RgH = jnp.einsum("k,nkch,kncme,mkeg->nhmg", p.rho, V, Rg, V)
    CgH = jnp.einsum("k,nkch,kncme,mkeg->nhmg", p.rho**2 / p.alpha, V, Cg, V)
    Cv_new, Rv_new = weight_process(RgH, CgH, p.Q0, jnp.asarray(1.0), p.dt)
    return Cv_new, Rv_new, (h, G, Om, b1, V, c)


def _metrics_general(scale, noise, flip, q, w, T, M, b, Sig, x_eval):
    """Test loss and accuracy (T1,) of logits z = M u + b + N(0, Sig) with u ~ N(0, I_D), labels
    from the teacher fields T u.  `M` (T1, C, D), `b` (T1, C), `Sig` (T1, C, C), `x_eval` (n, D + 2C)."""
    C, D = M.shape[1], M.shape[2]
    u, xi, gz = x_eval[:, :D], x_eval[:, D : D + C], x_eval[:, D + C :]
    clean = scale * (u @ T.T) @ w.T
    y0 = jnp.argmax(clean, -1)
    ys = jnp.argmax(clean + noise * xi, -1)
    lr = _likelihood_ratio(clean, noise, ys)

    def one(Mn, bn, Sn):
        return _label_mixture_metrics(u @ Mn.T + bn + gz @ cholesky(Sn).T, y0, ys, q, flip, lr)

    return jax.lax.map(lambda a: one(*a), (M, b, Sig))


def solve_trunk(p: _TrunkProblem, solver: "FiniteDataSolver", n_grid: int, *, key):
    """Solve the trunk DMFT (L >= 1; fixed point in the first-layer kernels) and evaluate every task.

    **Returns:** (train_loss, test_loss, test_acc) each (T+1, K), residual (), iterations ()."""
    K, C, H = p.V0.shape
    D = p.T.shape[2]
    T1 = n_grid + 1
    S = solver.n_draws
    k = jax.random.split(key, 5)
    u, xi, y_unif = _input_draws(k[jnp.array([0, 1, 3])], (K,), S, D, C, solver.sampling)
    d = _TrunkDraws(jax.vmap(_teacher_frame_draws)(p.T, u), xi, jax.random.normal(k[2], (K, S, T1 * H)), y_unif)

    def F(params, z):
        pp, dd = params
        ys, weights = _trunk_labels(pp, dd)
        return _trunk_iteration(pp, dd, ys, weights, *z, solver.n_response)[:2]

    Cv0 = jnp.broadcast_to(p.Q0[None, :, None, :], (T1, H, T1, H))
    z0 = (Cv0, jnp.zeros((T1, H, T1, H)))
    (Cv, Rv), i = _fixed_point(F, solver.max_iter, (solver.damping, solver.tol), (p, d), z0)
    ys, weights = _trunk_labels(p, d)
    Cv2, Rv2, (h, G, Om, b1, V, c) = _trunk_iteration(p, d, ys, weights, Cv, Rv, solver.n_response)
    res = _rel(Cv2, Cv) + _rel(Rv2, Rv)
    x_eval = _eval_points(k[4], solver.n_quad_eval, D + 2 * C, solver.sampling)
    diag = Cv[jnp.arange(T1), :, jnp.arange(T1), :]  # (T1, H, H)
    test_loss, test_acc = [], []
    for kk in range(K):
        Vk = V[:, kk]
        M = jnp.einsum("nch,nhd->ncd", Vk, Om)
        b = jnp.einsum("nch,nh->nc", Vk, b1) + c[:, kk]
        Sig = jnp.einsum("nch,nhg,neg->nce", Vk, diag, Vk)
        xk = x_eval.at[:, :D].set(_teacher_frame_draws(p.T[kk], x_eval[:, :D]))
        lo, ac = _metrics_general(p.scale[kk], p.noise[kk], p.flip[kk], p.noisy_fraction[kk], p.w[kk], p.T[kk], M, b, Sig, xk)
        test_loss.append(lo), test_acc.append(ac)
    train = jnp.stack([_train_loss(h[kk], ys[kk], weights[kk]) for kk in range(K)], -1)
    return train, jnp.stack(test_loss, -1), jnp.stack(test_acc, -1), res, i + 1


STEP_SCHEDULES = ("uniform", "geometric")  # `FiniteDataSolver.step_schedule`


class FiniteDataSolver(eqx.Module):
    """Numerical settings of the finite-data (DMFT) theory.

    - `n_grid`: GD steps T of the theory grid (static); the theory is exact (N → ∞) for GD with
      the steps Δ_n of the grid, so with the uniform schedule (Δ = t_max / T) T = the
      simulation's number of steps reproduces its learning rate.
    - `step_schedule`: the step sizes Δ_n, n = 0..T−1 (static; `time_grid`): `"uniform"`
      (Δ_n = t_max / T) or `"geometric"` (Δ_{n+1} = q Δ_n with q = `step_growth`, scaled so that
      Σ Δ_n = t_max: grid times t_n = t_max (qⁿ − 1)/(q^T − 1)).  Geometric steps are small where
      the loss moves fast and GD is least stable (early) and large late, so a short grid (the cost
      grows like T³) reaches a long t_max stably (docs/dmft.md §3).  The theory is then GD with
      that step sequence, not with the simulation's constant learning rate: it approximates the
      gradient flow (or a constant-step GD whose steps are small on the scale of the curves).
    - `step_growth`: q in (1, 2] of the geometric schedule (static; validated, unused by
      `"uniform"`).  First and last steps: Δ_0 = t_max (q − 1)/(q^T − 1), Δ_{T−1} = q^{T−1} Δ_0.
    - `n_draws`: draws S of the example process per label component (static); 3 S draws in all.
      The solution is a Monte Carlo estimate: its seed-to-seed spread falls like 1/sqrt(S) and is
      largest for a trunk at large α with clean labels (depth 1, α = 8, S = 2048: sd 0.02 nats,
      4 % of the early-stopped loss; depth 0: 0.004–0.009).  No bias is resolved at S = 2048 in
      the N = 400 problems (depth 1, α = 8: mean over 6 seeds 0.4798 ± 0.0086 vs the simulations'
      0.4807 ± 0.0036; docs/dmft.md §6.1).  With wide upper layers there *is* a 1/S bias (the
      layers are fitted to the 3 S draws): the paper preset (H = 64) loses 0.04 nats from
      S = 512 to 2048 at ntrain 100 and 0.12 at ntrain 800 (§6.2) — use S ≫ H² there, or
      extrapolate in 1/S.  Error bars: `finite_data_replicas`; power-of-2 S suits the QMC sets.
    - `n_response`: the first `n_response` draws of each component also carry the response
      kernel (static; its cost is ~2 T³ C³ per draw, before the time blocks).  For gradients w.r.t.
      s and σ (score-function weights of the labels) use n_response ~ n_draws: with few
      response draws that gradient carries their Monte Carlo error (15 % with 3 x 32 of 3 x 2048
      draws on the test problem; docs/dmft.md §3).
    - `max_iter`: Picard iterations at most (static); `damping` λ in (0, 1] (new = (1−λ) old + λ F(old)).
    - `tol`: relative fixed-point residual max|F(z) − z| / max|F(z)| (summed over C_g, R_g) below
      which a point counts as converged. The residual does not go to 0: with float32 and the
      pivot-dropping factor of `psd_factor` it stalls near 1e-3, far below the sampling error.
    - `n_quad_eval`: Monte Carlo points for the test loss and accuracy (static).
    - `sampling`: `"qmc"` (default) or `"iid"` (static): how the per-example inputs, logit noise
      and uniform labels of the draws, and the test-metric points, are drawn — randomly shifted
      scrambled Sobol points (unbiased, lower seed-to-seed spread) or i.i.d. normals.  The
      χ-noise paths ((T+1)·H dimensions) are i.i.d. either way.
    - `seed`: seed of all fixed draws (a non-negative integer < 2³¹, stored as an array and
      traced: `jax.vmap` over seeds gives independent replicas in one compilation).  The draws
      make the theory a Monte Carlo estimate whose seed-to-seed spread is *not* small at large
      α: depth 0, α = 8, s = 3, ε = 0, S = 2048: sd 0.009 (1.7 %) over 8 seeds with i.i.d.
      draws, 0.004 with the default QMC draws; depth 1, α = 8: sd 0.02 (4 %) either way.  One
      seed's number can be 2 % off while the mean of 8 is within 0.6 % of the simulation
      (docs/dmft.md §6.1): compare through replicas (`finite_data_replicas`,
      `benchmarks/finite_data_accuracy.py --replicas`).

    Cost per iteration: weight process O(T³ C³); example process O(S T² C²);
    response O(3 n_response T³ C³) flops and 3 n_response (T C)² memory; the two causal sums run
    in time blocks (`_time_blocks`; at T = 40 0.44 (response) and 0.6 (memory) of the dense
    flops; docs/dmft.md §3, `benchmarks/dmft_kernels.py`).
    """

    n_grid: int = eqx.field(static=True)
    step_schedule: str = eqx.field(static=True)
    step_growth: float = eqx.field(static=True)
    n_draws: int = eqx.field(static=True)
    n_response: int = eqx.field(static=True)
    max_iter: int = eqx.field(static=True)
    n_quad_eval: int = eqx.field(static=True)
    sampling: str = eqx.field(static=True)
    seed: Int[Array, ""]
    damping: Float[Array, ""]
    tol: Float[Array, ""]

    def __init__(self, n_grid: int = 40, n_draws: int = 2048, n_response: int = 256, max_iter: int = 30, damping=1.0, tol=5e-3, n_quad_eval: int = 32768, seed: int = 0,
                 step_schedule: str = "uniform", step_growth: float = 1.1, sampling: str = "qmc"):  # fmt: skip
        self.n_grid = check_int("n_grid", n_grid, 1)
        self.step_schedule = check_choice("step_schedule", step_schedule, STEP_SCHEDULES)
        # Static (it fixes the grid's shape-free numbers at trace time), so a Python float.
        if isinstance(step_growth, bool) or not isinstance(step_growth, (int, float, np.integer, np.floating)):
            raise ValueError(f"step_growth must be a Python float in (1.0, 2.0], got {step_growth!r}")
        check_range("step_growth", step_growth, 1.0, 2.0, lo_open=True)
        self.step_growth = float(step_growth)
        self.n_draws = check_int("n_draws", n_draws, 2)
        self.n_response = check_int("n_response", n_response, 1)
        if self.n_response > self.n_draws:
            raise ValueError(f"n_response={n_response} must be in [1, n_draws={n_draws}]")
        self.max_iter = check_int("max_iter", max_iter, 1)
        self.n_quad_eval = check_int("n_quad_eval", n_quad_eval, 2)
        self.sampling = check_choice("sampling", sampling, SAMPLINGS)
        self.seed = _check_seed(seed)
        check_range("damping", damping, 0.0, 1.0, lo_open=True)
        check_range("tol", tol, 0.0, lo_open=True)
        self.damping = jnp.asarray(damping, float)
        self.tol = jnp.asarray(tol, float)

    def time_grid(self, t_max) -> tuple[Float[Array, " T1"], Float[Array, " T"]]:
        """Grid times t_n (T+1,), t_0 = 0, t_T = t_max, and the GD steps Δ_n (T,) between them
        (time units t = lr x steps), for T = `n_grid` and the `step_schedule`.

        `t_max` may be traced (jit/vmap over the evaluation times); the schedule's shape is
        fixed by the static T, q.  Uniform: t_n = Δ n, Δ = t_max / T (the historical grid,
        bit for bit).  Geometric: the unit grid (qⁿ − 1)/(q^T − 1) and its steps are computed in
        float64 from the static q, T (no cancellation in q^T − 1 for q near 1), then scaled."""
        t_max = jnp.asarray(t_max, float)
        T = self.n_grid
        if self.step_schedule == "uniform":
            dt = t_max / T
            return dt * jnp.arange(T + 1), jnp.broadcast_to(dt, (T,))
        q = self.step_growth
        unit = np.expm1(np.arange(T + 1) * np.log(q)) / np.expm1(T * np.log(q))
        unit[-1] = 1.0
        return t_max * jnp.asarray(unit, t_max.dtype), t_max * jnp.asarray(np.diff(unit), t_max.dtype)


def _check_seed(seed) -> Int[Array, "..."]:
    """`seed` as an integer array; concrete values must be non-negative integers (a traced seed,
    e.g. under `jax.vmap`, is taken as it is)."""
    if isinstance(seed, jax.core.Tracer):
        return seed
    a = np.asarray(seed)
    if a.dtype == bool or not np.issubdtype(a.dtype, np.integer) or np.any(a < 0) or np.any(a >= 2**31):
        raise ValueError(f"seed must be an integer in [0, 2**31) (or an integer array of them), got {seed!r}")
    return jnp.asarray(a, jnp.int32)


def _rel(new, old):
    return jnp.max(jnp.abs(new - old)) / (jnp.max(jnp.abs(new)) + 1e-30)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _fixed_point(F, max_iter: int, ctrl, params, z0):
    """z* = F(params, z*) by damped Picard iteration, differentiated implicitly:
    z̄ -> w = z̄ + (∂F/∂z)ᵀ w (iterated), params̄ = (∂F/∂params)ᵀ w (Christianson 1994; the JAX
    `fixed_point` recipe).  Returns (z*, iterations)."""
    return _fixed_point_fwd(F, max_iter, ctrl, params, z0)[0]


def _fixed_point_fwd(F, max_iter, ctrl, params, z0):
    damping, tol = ctrl
    def cond(state):
        i, _, res = state
        return (i < max_iter) & (res > tol)

    def body(state):
        i, z, _ = state
        z2 = F(params, z)
        res = sum(_rel(a, b) for a, b in zip(z2, z))
        return i + 1, tuple((1 - damping) * a + damping * b for a, b in zip(z, z2)), res

    i, z, _ = jax.lax.while_loop(cond, body, (jnp.asarray(0), z0, jnp.asarray(jnp.inf)))
    return (z, i), (ctrl, params, z)


def _fixed_point_bwd(F, max_iter, res, cot):
    ctrl, params, z = res
    zbar, _ = cot
    _, vjp_z = jax.vjp(lambda zz: F(params, zz), z)

    def body(_, w):
        return tuple(a + b for a, b in zip(zbar, vjp_z(w)[0]))

    w = jax.lax.fori_loop(0, max_iter, body, zbar)
    _, vjp_p = jax.vjp(lambda pp: F(pp, z), params)
    zeros = functools.partial(jax.tree_util.tree_map, jnp.zeros_like)
    return zeros(ctrl), vjp_p(w)[0], zeros(z)


_fixed_point.defvjp(_fixed_point_fwd, _fixed_point_bwd)


class _Solution(eqx.Module):
    """Grid curves of one task: train/test loss, accuracy (T+1,), residual, iterations."""

    train_loss: Float[Array, " T1"]
    test_loss: Float[Array, " T1"]
    test_acc: Float[Array, " T1"]
    overlap_M: Float[Array, "T1 C R"]
    bias: Float[Array, "T1 C"]
    residual: Float[Array, ""]
    iterations: Int[Array, ""]


def solve_single_task(p: _Problem, solver: FiniteDataSolver, n_grid: int, *, key) -> _Solution:
    """Solve the DMFT of one task to a fixed point (damped Picard on (C_g, R_g)) and evaluate.

    `key` fixes every draw (common random numbers across iterations and across a sweep)."""
    C, R = p.w.shape
    T1 = n_grid + 1
    S = solver.n_draws
    k = jax.random.split(key, 5)
    u, xi, y_unif = _input_draws(k[jnp.array([0, 1, 3])], (), S, R, C, solver.sampling)
    d = _Draws(u, xi, jax.random.normal(k[2], (S, T1 * C)), y_unif)

    def F(params, z):
        pp, dd = params
        ys, weights = _labels(pp, dd)
        return _iteration(pp, dd, ys, weights, *z, solver.n_response)[:2]

    z0 = (jnp.zeros((T1, C, T1, C)), jnp.zeros((T1, C, T1, C)))
    (Cg, Rg), i = _fixed_point(F, solver.max_iter, (solver.damping, solver.tol), (p, d), z0)
    # One more map at the final iterate: its change is the reported residual, its trajectories
    # the reported curves (differentiable in p through the map and through z*).
    ys, weights = _labels(p, d)
    Cg2, Rg2, (Cv, Rv, h, G, M, b) = _iteration(p, d, ys, weights, Cg, Rg, solver.n_response)
    res = _rel(Cg2, Cg) + _rel(Rg2, Rg)
    x_eval = _eval_points(k[4], solver.n_quad_eval, R + 2 * C, solver.sampling)
    test_loss, test_acc = _test_metrics(p, Cv, M, b, x_eval)
    train_loss = _train_loss(h, ys, weights)
    return _Solution(train_loss, test_loss, test_acc, M, b, res, i + 1)


class FiniteTheoryResult(eqx.Module):
    """Finite-data theory curves of one point (add leading axes for a batch).

    - `time`: (T,) t = lr x steps; `step`: (T,) the simulation clock.
    - `train_loss`, `test_loss`, `test_acc`: (T, K), NaN for tasks not trained; linearly
      interpolated from the theory grid (exact at grid times).
    - `residual`: (K,) final relative fixed-point residual per task; `iterations`: (K,) Picard maps.
    - `converged`: () all trained tasks reached `solver.tol`.
    - `diverged`: () any non-finite loss of a trained task.
    """

    time: Float[Array, " T"]
    step: Float[Array, " T"]
    train_loss: Float[Array, "T K"]
    test_loss: Float[Array, "T K"]
    test_acc: Float[Array, "T K"]
    residual: Float[Array, " K"]
    iterations: Int[Array, " K"]
    converged: Bool[Array, ""]
    diverged: Bool[Array, ""]

    @property
    def early_stopped_loss(self) -> Float[Array, "... K"]:
        """min over times of the test loss (NaN where diverged)."""
        return early_stopped_loss(self.test_loss, self.diverged)

    @property
    def early_stopped_time(self) -> Float[Array, "... K"]:
        """Time t of the early-stopped minimum."""
        return at_minimum(self.time, self.test_loss)

    @property
    def final_loss(self) -> Float[Array, "... K"]:
        """Test loss at the last time (NaN where diverged, as for `History`)."""
        return jnp.where(self.diverged[..., None], jnp.nan, self.test_loss[..., -1, :])


def _initial_overlaps(student: Student, teacher: Teacher, k: int, initial: str, gain):
    """(M0, b0, Q0) of task k's head: teacher overlap W Uᵀ, bias and the Gram matrix of the rest."""
    head = student.heads[k]
    W = head.weight
    C = W.shape[0]
    b0 = jnp.zeros(C) if head.bias is None else head.bias
    if initial == "quenched":
        M0 = W @ teacher.U[k].T
        return M0, b0, W @ W.T - M0 @ M0.T
    return jnp.zeros((C, teacher.U.shape[1])), b0, gain**2 * jnp.eye(C)


# ---------------------------------------------------------------------------------------------
# Compiled programs.  A theory called with concrete inputs runs as three programs, each compiled
# once per shape that matters and kept in a bounded cache (`_call_compiled`):
#   `_build_problem`  teacher and initial student -> the reduced problem (shapes: N, R, C, K, H, L);
#   `_solve_grid`     the fixed point on the solver's own grid (shapes: the reduced problem's and
#                     the solver's static settings); data sizes α_k and t_max are traced arrays;
#   `_report`         interpolation onto the report times, padded to a power of two (`_bucket`).
# So the report times and the data sizes do not change the large program, and the programs of
# shapes no longer used are released (docs/dmft.md §3.1).  Under a caller's
# jit / vmap / grad the same functions are traced into the caller's program instead.
# ---------------------------------------------------------------------------------------------

# The theories' compiled programs, least recently used first: the solves (large: 500–1,300
# memory mappings each on CPU, measured) and the build / report steps (small: 50–300).
_LARGE_PROGRAMS: collections.OrderedDict = collections.OrderedDict()
_SMALL_PROGRAMS: collections.OrderedDict = collections.OrderedDict()
_CACHE_SIZE = {"large": 4, "small": 32}
_COMPILES: collections.Counter = collections.Counter()  # compilations per program name (tests, measurements)
_CACHE_LOCK = threading.Lock()


def set_compiled_cache_size(n: int) -> int:
    """Keep at most `n` compiled theory solves (and 8 n of their small build / report programs)
    per process; returns the previous bound (default 4).

    Every program the finite-data and population theories compile for concrete inputs is
    cached per shape that matters (report times and data sizes do not change it; docs/dmft.md
    §3.1).  On the CPU backend each compiled solve keeps 500–1,300 memory mappings (measured,
    more for longer grids) until it is released, and Linux allows 65,530 per process
    (`vm.max_map_count`): beyond the bound the least recently used program is released.
    `n = 0` compiles every call afresh and keeps nothing."""
    n = check_int("n", n, 0)
    with _CACHE_LOCK:
        old = _CACHE_SIZE["large"]
        _CACHE_SIZE.update(large=n, small=8 * n)
        for cache, bound in ((_LARGE_PROGRAMS, n), (_SMALL_PROGRAMS, 8 * n)):
            while len(cache) > bound:
                cache.popitem(last=False)
    return old


def release_compiled() -> None:
    """Release every compiled program of this process: the theories' cached programs and every
    program JAX keeps for jitted functions (`jax.clear_caches()`).

    Call it between parts of a long-lived process that will not reuse each other's programs
    (static groups of a sweep, notebook sections).  Arrays and results already computed stay
    valid; a function called again is compiled again (on the next call only)."""
    with _CACHE_LOCK:
        _LARGE_PROGRAMS.clear()
        _SMALL_PROGRAMS.clear()
    jax.clear_caches()


def _call_compiled(fn, *args, large: bool = False):
    """`fn(*args)`, by a program compiled once per (fn, static part of `args`, shapes and dtypes
    of their arrays) and kept in a bounded least-recently-used cache.

    Traced `args` (a caller's jit, vmap or grad): `fn(*args)` is traced into the caller's program.
    Each program is compiled from a fresh closure with `jax.jit(...).lower(...).compile()`, so
    no cache of JAX's keeps it (JAX's trace and compilation caches are keyed weakly on the
    function): dropping it from this cache releases its memory (measured in
    tests/test_compile_memory.py)."""
    if not is_concrete(args):
        return fn(*args)
    dyn, static = eqx.partition(args, eqx.is_array)
    leaves, tree = jax.tree_util.tree_flatten(dyn)
    static_leaves, static_tree = jax.tree_util.tree_flatten(static)
    avals = tuple((np.shape(x), np.dtype(x.dtype), bool(getattr(x, "weak_type", False))) for x in leaves)
    key = (fn, static_tree, tuple(static_leaves), tree, avals)
    cache, size = (_LARGE_PROGRAMS, "large") if large else (_SMALL_PROGRAMS, "small")
    with _CACHE_LOCK:
        program = cache.pop(key, None)
    if program is None:

        def run(d):
            return fn(*eqx.combine(d, static))

        program = jax.jit(run).lower(dyn).compile()
        _COMPILES[fn.__name__] += 1
    with _CACHE_LOCK:
        if _CACHE_SIZE[size] > 0:
            cache[key] = program
            while len(cache) > _CACHE_SIZE[size]:
                cache.popitem(last=False)
    return program(dyn)


def _bucket(n: int) -> int:
    """Padded length of n report times: the next power of two (at least 8), so that the report
    step compiles for a handful of lengths, not for every one."""
    return max(8, 1 << (n - 1).bit_length())


def _report_times(tr, ts):
    """The report times (n,) — `ts`, or lr x the evaluation steps — and t_max, their last.  On the
    host (numpy) when concrete: no program is compiled per number of report times."""
    xp = np if is_concrete((tr.learning_rate, ts)) else jnp
    fdt = jax.dtypes.canonicalize_dtype(float)
    if ts is None:
        ts = xp.asarray(tr.learning_rate, fdt) * xp.asarray(tr.eval_steps, fdt)
    ts = xp.asarray(ts, fdt)
    return ts, xp.asarray(ts[-1])


class _GridSolution(eqx.Module):
    """The theory on its own grid: `time` (T+1,), `train_loss`, `test_loss`, `test_acc` (T+1, K)
    (NaN for tasks not solved), `residual` (K,), `iterations` (K,)."""

    time: Float[Array, " T1"]
    train_loss: Float[Array, "T1 K"]
    test_loss: Float[Array, "T1 K"]
    test_acc: Float[Array, "T1 K"]
    residual: Float[Array, " K"]
    iterations: Int[Array, " K"]


def _build_problem(tc: TeacherConfig, sc: StudentConfig, seeds: Seeds, student, n_train_active, task_weights,
                   rate_multipliers, initial: str, active: tuple[int, ...]):  # fmt: skip
    """The reduced problem of an experiment: a `_TrunkProblem` (depth >= 1) or one `_Problem` per
    trained task (depth 0), with `dt` left to `_solve_grid`.  Takes the teacher and student
    configs, not the experiment: the train config's static fields (data sizes, evaluation
    schedule) would make a program per value; the data sizes enter as arrays."""
    teacher = Teacher.sample(tc, key=seeds.key("teacher"))
    if student is None:
        student = Student.init(sc, tc.n_features, tc.n_classes, tc.n_tasks, key=seeds.key("init"))
    if sc.depth >= 1:
        return _trunk_problem(tc, sc, teacher, student, n_train_active, task_weights * rate_multipliers, initial)
    # Directions outside the task's teacher subspace: N' = N − R.
    n_perp = tc.n_features - tc.rank
    problems = []
    for k in active:
        M0, b0, Q0 = _initial_overlaps(student, teacher, k, initial, sc.init_scale)
        problems.append(_Problem(n_train_active[k] / n_perp, None, tc.scale[k], tc.noise[k], tc.flip[k],
                                 tc.noisy_fraction[k], teacher.w[k], M0, b0, Q0))  # fmt: skip
    return tuple(problems)


def _solve_grid(problem, t_max, solver: FiniteDataSolver, active: tuple[int, ...], n_tasks: int) -> _GridSolution:
    """Solve the reduced problem on the solver's grid of `n_grid` steps ending at `t_max` (traced)."""
    grid, dt = solver.time_grid(t_max)
    T = solver.n_grid
    key = jax.random.key(solver.seed)
    if isinstance(problem, _TrunkProblem):
        train, test, acc, res, its = solve_trunk(dataclasses.replace(problem, dt=dt), solver, T, key=key)
        return _GridSolution(grid, train, test, acc, jnp.full(n_tasks, res), jnp.full(n_tasks, its))
    sols = {k: solve_single_task(dataclasses.replace(p, dt=dt), solver, T, key=jax.random.fold_in(key, k))
            for k, p in zip(active, problem)}  # fmt: skip
    nan = jnp.full(T + 1, jnp.nan)

    def per_task(f, missing):
        return jnp.stack([f(sols[k]) if k in sols else missing for k in range(n_tasks)], -1)

    return _GridSolution(
        grid, per_task(lambda s: s.train_loss, nan), per_task(lambda s: s.test_loss, nan),
        per_task(lambda s: s.test_acc, nan), per_task(lambda s: s.residual, jnp.asarray(jnp.nan)),
        per_task(lambda s: s.iterations, jnp.asarray(0)),
    )  # fmt: skip


def _solve_grid_replicas(problem, t_max, solver: FiniteDataSolver, active, n_tasks: int, offsets) -> _GridSolution:
    """`_solve_grid` with draw seeds `solver.seed + offsets`, vmapped: a leading replica axis."""

    def one(i):
        return _solve_grid(problem, t_max, eqx.tree_at(lambda s: s.seed, solver, solver.seed + i), active, n_tasks)

    return jax.vmap(one)(offsets)


def _report(sol: _GridSolution, ts, learning_rate, tol, active: tuple[int, ...]) -> FiniteTheoryResult:
    """The grid solution at the report times `ts` (linear interpolation; exact at grid times)."""
    K = sol.residual.shape[0]
    act = jnp.asarray([k in active for k in range(K)])
    nan = jnp.full(ts.shape, jnp.nan)

    def curve(f):
        return jnp.stack([jnp.where(act[k], jnp.interp(ts, sol.time, f[:, k]), nan) for k in range(K)], -1)

    train_loss, test_loss, test_acc = curve(sol.train_loss), curve(sol.test_loss), curve(sol.test_acc)
    residual = jnp.where(act, sol.residual, jnp.nan)
    iterations = jnp.where(act, sol.iterations, 0)
    converged = jnp.all(jnp.where(act, residual <= tol, True))
    finite = jnp.all(jnp.where(act[None], jnp.isfinite(test_loss) & jnp.isfinite(train_loss), True))
    return FiniteTheoryResult(ts, ts / learning_rate, train_loss, test_loss, test_acc, residual, iterations, converged,
                              ~finite)  # fmt: skip


def _report_replicas(sol: _GridSolution, ts, learning_rate, tol, active) -> FiniteTheoryResult:
    return jax.vmap(lambda s: _report(s, ts, learning_rate, tol, active))(sol)


def _report_at(report, sol: _GridSolution, ts, tr, solver: FiniteDataSolver, time_axis: int) -> FiniteTheoryResult:
    """`report` at the times `ts`.  Concrete: computed at `ts` padded with its last time to
    `_bucket(n)` entries (the padding changes no reduction: the last time repeats), then cut
    back on the host."""
    n = ts.shape[0]
    if not is_concrete((sol, ts, tr.learning_rate, solver.tol)):
        return report(sol, ts, tr.learning_rate, solver.tol, tr.active_tasks)
    padded = np.concatenate([ts, np.full(_bucket(n) - n, ts[-1], ts.dtype)])
    # An array even where a caller set a Python float: one program for every learning rate.
    lr = np.asarray(tr.learning_rate, ts.dtype)
    th = _call_compiled(report, sol, padded, lr, solver.tol, tr.active_tasks)
    cut = (slice(None),) * time_axis + (slice(0, n),)
    # device_put, not jnp.asarray: the latter compiles a staging program per shape.
    return eqx.tree_at(lambda r: (r.time, r.step, r.train_loss, r.test_loss, r.test_acc), th,
                       replace_fn=lambda a: jax.device_put(np.asarray(a)[cut]))  # fmt: skip


def _check_theory_inputs(experiment: Experiment, initial: str) -> None:
    if experiment.student.activation != "linear":
        raise ValueError(
            f"finite_data_theory supports linear students only, got depth={experiment.student.depth}, "
            f"activation={experiment.student.activation!r} (docs/dmft.md)"
        )
    if initial not in ("quenched", "typical"):
        raise ValueError(f"initial={initial!r} is not one of ['quenched', 'typical']")


def _problem(experiment: Experiment, seeds: Seeds, student, initial: str):
    """`_build_problem` of an experiment (compiled per teacher and student configuration)."""
    from ._population import rate_multipliers

    tr = experiment.train
    mult = np.asarray(rate_multipliers(tr), jax.dtypes.canonicalize_dtype(float))
    return _call_compiled(_build_problem, experiment.teacher, experiment.student, seeds, student, tr.n_train_active,
                          tr.task_weights, mult, initial, tr.active_tasks)  # fmt: skip


def finite_data_theory(
    experiment: Experiment,
    seeds: Seeds,
    ts: Float[Array, " T"] | None = None,
    *,
    solver: FiniteDataSolver | None = None,
    student: Student | None = None,
    initial: str = "quenched",
) -> FiniteTheoryResult:
    """DMFT of full-batch gradient descent on P_k = `n_train_active[k]` examples per task.

    Supported: linear students of depth L = 0 (each task is its own softmax layer; the tasks
    share no parameter, so every task is solved independently and the multitask benefit is 0)
    and L >= 1 (a shared linear trunk with per-task heads: multitask, docs/dmft.md §4; the
    first layer's complement to the teacher span is the DMFT variable, everything else
    self-averages).

    **Arguments:** as `population_theory`.

    - `experiment`: teacher, student (linear, any depth) and train config (protocol
      `"full_batch"`; other protocols are treated as gradient flow on their training sets).
    - `seeds`: teacher and init seeds; the data seed plays no role (the theory averages over
      datasets).
    - `ts`: times t = lr x steps to report; default the simulation's evaluation times.
    - `solver`: `FiniteDataSolver`.
    - `student`: optional initial student; `initial`: `"quenched"` (the exact initial overlaps of
      the simulation's student) or `"typical"` (N → ∞: the first layer has no overlap with the
      teacher span and Gram matrix init_scale² I; the upper trunk layers, biases and heads are
      low-dimensional and are taken from the initial student, as in `population_theory`).

    **Returns:** `FiniteTheoryResult`. Pure; jit/vmap-able over the experiment's array fields.

    Called with concrete inputs, the solve is compiled once per shape of the reduced problem
    and solver (not per report-time grid or data size) and cached (`set_compiled_cache_size`,
    `release_compiled`; docs/dmft.md §3.1).  Under a caller's `jit`/`vmap` it is traced into the
    caller's program, compiled per static configuration of the caller's arguments.
    """
    # Built here, not as a default argument: arrays made at import would start JAX's backend
    # before a multi-process run can call jax.distributed.initialize.
    solver = FiniteDataSolver() if solver is None else solver
    _check_theory_inputs(experiment, initial)
    tr = experiment.train
    problem = _problem(experiment, seeds, student, initial)
    ts, t_max = _report_times(tr, ts)
    sol = _call_compiled(_solve_grid, problem, t_max, solver, tr.active_tasks, tr.n_tasks, large=True)
    return _report_at(_report, sol, ts, tr, solver, time_axis=0)


def finite_data_replicas(
    experiment: Experiment,
    seeds: Seeds,
    n_replicas: int,
    ts: Float[Array, " T"] | None = None,
    *,
    solver: FiniteDataSolver | None = None,
    student: Student | None = None,
    initial: str = "quenched",
) -> FiniteTheoryResult:
    """`n_replicas` independent solves of `finite_data_theory` (draw seeds `solver.seed + i`),
    vmapped: one compilation, a leading replica axis (R, ...) on every field of the result.

    The fixed draws make each solve a Monte Carlo estimate: the sd over replicas is one solve's
    error (depth 1, α = 8, 2048 draws: ~4 % of the early-stopped loss; depth 0 ~0.7 % with the
    QMC draws, docs/dmft.md §6.1), and a comparison with simulations should use the replica mean
    and its standard error `std(0, ddof=1) / sqrt(R)`.  Replicas share the experiment's teacher
    and initial student: they average over the theory's sampling, not over realisations.
    Averaging removes the spread, not a 1/S bias of the fixed point (raise `n_draws`).
    Memory grows R-fold (every replica holds its own kernels and response arrays), and the
    vmapped fixed-point loops run until the slowest replica has converged."""
    n_replicas = check_int("n_replicas", n_replicas, 1)
    solver = FiniteDataSolver() if solver is None else solver
    _check_theory_inputs(experiment, initial)
    tr = experiment.train
    problem = _problem(experiment, seeds, student, initial)
    ts, t_max = _report_times(tr, ts)
    offsets = np.arange(n_replicas, dtype=np.int32)
    sol = _call_compiled(_solve_grid_replicas, problem, t_max, solver, tr.active_tasks, tr.n_tasks, offsets, large=True)
    return _report_at(_report_replicas, sol, ts, tr, solver, time_axis=1)


def _trunk_problem(tc: TeacherConfig, sc: StudentConfig, teacher: Teacher, student: Student, n_train_active, rho,
                   initial: str) -> _TrunkProblem:  # fmt: skip
    """The trunk problem (L >= 1): teacher arrays, task rates ρ_k, α_k = P_k / (N − K R), initial
    state; `dt` is left to `_solve_grid`.

    Only the first layer is high-dimensional; its teacher-span part Ω and complement Gram matrix
    Q0 are quenched (the student's) or typical (Ω = 0, Q0 = init_scale² I).  The upper layers
    W_2..W_L (H x H), all biases and the heads are the student's own in both cases."""
    from ._teacher import teacher_coefficients

    E = teacher.basis
    layer = student.layers[0]
    W = layer.weight
    H = W.shape[0]

    def bias(lay, n):
        return jnp.zeros(n) if lay.bias is None else lay.bias

    b1 = bias(layer, H)
    upper = student.layers[1:]
    Wu = jnp.stack([lay.weight for lay in upper]) if upper else jnp.zeros((0, H, H))
    bu = jnp.stack([bias(lay, H) for lay in upper]) if upper else jnp.zeros((0, H))
    V0 = jnp.stack([h.weight for h in student.heads])
    c0 = jnp.stack([bias(h, V0.shape[1]) for h in student.heads])
    if initial == "quenched":
        Om0 = W @ E.T
        Q0 = W @ W.T - Om0 @ Om0.T
    else:
        Om0 = jnp.zeros((H, E.shape[0]))
        Q0 = sc.init_scale**2 * jnp.eye(H)
    n_perp = tc.n_features - E.shape[0]
    return _TrunkProblem(
        n_train_active / n_perp, rho, None, tc.scale, tc.noise, tc.flip, tc.noisy_fraction,
        teacher.w, teacher_coefficients(tc), Om0, b1, Wu, bu, V0, c0, Q0,
    )  # fmt: skip


def finite_theory_history(th: FiniteTheoryResult):
    """A `FiniteTheoryResult` as a `History`, so sweeps, tables and benefits treat it like a simulation."""
    from ._train import History

    # The theory's Monte Carlo error of the test loss is not estimated: NaN, not a fake 0.
    return History(jnp.round(th.step).astype(jnp.int32), th.time, th.train_loss, th.test_loss,
                   jnp.full_like(th.test_loss, jnp.nan), th.test_acc, th.diverged)
