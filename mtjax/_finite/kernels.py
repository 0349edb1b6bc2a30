"""The causal kernels of one DMFT map: the exact statistics of the linear coordinate process
(`weight_process`), the causal memory scan of the example process, the exact per-draw response,
and the PSD factor that samples the Gaussian fields (docs/dmft.md §3)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._custom_types import Array, Float
from .._gaussian import blocked_cholesky, cholesky


def propagator(Rg: Float[Array, "T1 C T1 C"], dt):
    """The response of the linear coordinate process
    v^{n+1} = v^n − Δ_n Σ_{k<=n} R_g[n,k] v^k + Δ_n η^n to a kick, and to its initial value.

    `dt`: the step sizes Δ_n, (T,) or a scalar (uniform steps), in time units.

    **Returns:** `(Rv, P0)`: Rv (T+1, C, T+1, C), Rv[n,:,m,:] = ∂v^n/∂f^m for a force f^m entering
    like η^m (zero for m >= n), and P0 (T+1, C, C) = ∂v^n/∂v^0."""
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
    return Rv, psi[:, :, 0, :]


def weight_process(Rg: Float[Array, "T1 C T1 C"], Cg: Float[Array, "T1 C T1 C"], Q0, alpha, dt):
    """Exact statistics of the linear coordinate process
    v^{n+1} = v^n − Δ_n Σ_{k<=n} R_g[n,k] v^k + Δ_n η^n, η Gaussian with covariance C_g / α and
    E[v^0 v^0ᵀ] = Q0 (`propagator`).

    **Returns:** `(Cv, Rv)`, both (T+1, C, T+1, C): Cv[n,:,m,:] = E[v^n v^mᵀ] and Rv as `propagator`."""
    Rv, P0 = propagator(Rg, dt)
    Cv = jnp.einsum("ncd,de,mfe->ncmf", P0, Q0, P0) + jnp.einsum("ncad,adbe,mfbe->ncmf", Rv, Cg, Rv) / alpha
    return Cv, Rv


def _causal_memory_scan(step, carry, Rrows, dt, width: int, n_cols: int, n_blocks: int | None = None, memory=None):
    """Scan `step` over the T+1 grid times with a causal memory of the rows it wrote.

    `step(carry, mem, (n, dt_n)) -> (carry, row, out)` sees mem = Σ_{m<n} Rrows[n, :, m] · row^m,
    (a, n_cols), and writes its row (width, n_cols) at time n.  With `memory` given, mem =
    `memory(Rrows[n, :, :e w_R], buffer[:e width], carry)` instead, for the leading e times of
    the current block (w_R = Rrows.shape[2] / T1 may differ from `width`): a memory whose kernel
    reaches the rows through quantities the scan itself produces (the trunk's heads,
    `trunk._trunk_example_process`).  The rows are kept in one buffer
    with the contracted index (m, j) leading, so each memory term is one plain matrix product;
    rows of later times are still zero, so a time block [e_i, e_{i+1}) uses only the leading
    e_{i+1} · width rows (the buffer grows block by block: (B + 1)/(2B) of a dense sweep's flops).

    `Rrows`: (T1, a, T1 · width); `dt`: (T1,) steps (`_steps_padded`).
    **Returns:** (carry, buffer (T1 · width, n_cols), outs stacked over the T1 times)."""
    T1 = Rrows.shape[0]
    w_R = Rrows.shape[2] // T1
    memory = (lambda Rn, b, c: Rn @ b) if memory is None else memory
    edges = _time_blocks(T1, n_blocks)
    buf = jnp.zeros((0, n_cols), Rrows.dtype)
    outs = []
    for lo, hi_t in zip(edges[:-1], edges[1:]):
        hi = hi_t * width
        buf = jnp.pad(buf, ((0, hi - buf.shape[0]), (0, 0)))

        def body(state, xs):
            c, b = state
            n, Rn, dt_n = xs
            c, row, out = step(c, memory(Rn, b, c), (n, dt_n))
            return (c, jax.lax.dynamic_update_slice(b, row.astype(b.dtype), (n * width, 0))), out

        xs = (jnp.arange(lo, hi_t), Rrows[lo:hi_t, :, : hi_t * w_R], dt[lo:hi_t])
        (carry, buf), out = jax.lax.scan(body, (carry, buf), xs)
        outs.append(out)
    return carry, buf, jax.tree_util.tree_map(lambda *a: jnp.concatenate(a), *outs)


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


def mean_jacobian(h, wts, jacobian=None):
    """Weighted mean over draws of the softmax Jacobians of logits `h` (S, T1, C) (or of
    `jacobian(h)`), weights `wts` (S,) (divided by their sum). **Returns:** (T1, C, C)."""
    jac = _softmax_jacobian if jacobian is None else jacobian
    return jnp.einsum("s,s...->...", wts, jac(h)) / jnp.sum(wts)


def _response_sampled(h, Rv, alpha, wts, J_all, jacobian=None):
    """The response kernel from the response draws `h` (weights `wts`), with a control variate
    when `J_all` is given: the estimate minus its first-order part in the draws' Jacobians,

        Γ̂ = Σ_s w_s Γ(J_s) − m · L_{J̄}(J̄_r − J̄),   m = Σ_s w_s,

    where Γ(J) is one draw's exact Jacobian chain (`_response`), L_{J̄} its linearisation
    (a JVP) at the weighted mean Jacobian J̄ = `J_all` of *all* draws (`mean_jacobian`), and
    J̄_r the weighted mean over the response draws.  The correction has mean ~0 (J̄_r estimates
    J̄) and cancels the part of the response draws' error that is linear in J — all of lag 0,
    where Γ[n, n] = J^n, and the leading part of the memory terms — at the cost of one draw's
    JVP.  `J_all` None: the plain estimate Σ_s w_s Γ(J_s).

    `J_all`: (T1, C, C) (a nonlinear trunk: (T1, H, H), with `h` the Jacobians themselves and
    `jacobian` the identity).  **Returns:** (T1, C, T1, C), as `_response`."""
    G = _response(h, Rv, alpha, wts, jacobian=jacobian)
    if J_all is None:
        return G
    m = jnp.sum(wts)
    J_r = mean_jacobian(h, wts, jacobian)

    def one(J):  # a single draw with Jacobians J, weight 1
        return _response(J[None], Rv, alpha, jnp.ones((1,), J.dtype), jacobian=lambda j: j)

    _, lin = jax.jvp(one, (J_all,), (J_r - J_all,))
    return G - m * lin


def _response(h, Rv, alpha, wts, chunk: int = 32, n_blocks: int | None = None, jacobian=None):
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
    `jacobian`: maps a chunk of `h` to the per-draw Jacobians J^n (chunk, T1, C, C) of the error
    with respect to the field; default the softmax Jacobian of logits `h`.  (A nonlinear trunk
    passes the Jacobians themselves, `h` (S, T1, H, H), and the identity.)
    **Returns:** (T1, C, T1, C)."""
    S, T1 = h.shape[:2]
    C = Rv.shape[1]
    jacobian = _softmax_jacobian if jacobian is None else jacobian
    chunk = min(chunk, S)
    if S % chunk:  # pad with draws of weight 0 (they add nothing) to whole chunks
        pad = chunk - S % chunk
        h, wts = jnp.pad(h, ((0, pad),) + ((0, 0),) * (h.ndim - 1)), jnp.pad(wts, (0, pad))
        S = S + pad
    TC = T1 * C
    A = Rv.reshape(T1, C, TC) / alpha  # A[n, d, (k, e)]
    edges = _time_blocks(T1, n_blocks)

    @jax.checkpoint
    def one_chunk(hc, wc):
        J = jacobian(hc)  # (B, T1, C, C)
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

    xs = (h.reshape(S // chunk, chunk, *h.shape[1:]), wts.reshape(S // chunk, chunk))
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
