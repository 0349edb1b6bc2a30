"""Width proportional to the input dimension: the DMFT of a depth-1 linear trunk at fixed H/N
(docs/dmft.md §4.3).

The trunk's logit maps M_k = V_k W (C x N) obey, under GD on (W, b_1, V_k, c_k),

    M' = M − Δ [𝒦 ρ G + ρ G K_W + ρ ḡ w_bᵀ] + Δ² ρ (G Mᵀ + ḡ β_1ᵀ) ρ G,
    K_W' = K_W − Δ (Mᵀ ρ G + Gᵀ ρ M) + Δ² Gᵀ ρ 𝒦 ρ G,

(stacked over tasks: M, G are K C x N, G_k = (1/P_k) Σ_μ g_μ x_μᵀ the task's error–input
correlation, 𝒦 = V Vᵀ, β_1 = V b_1, w_b = Wᵀ b_1, ρ the task rates).  An orthogonal W(0) has
K_W(0) = g² Π with Π a Haar projection of rank H; every later change of K_W lies in the span of
the rows of M and G.  In Π's eigenbasis the N input directions are two populations of
exchangeable coordinates (Π = 1: the H directions the trunk sees; Π = 0: the rest), plus 2D
low-dimensional ones (the teacher span and its image under Π), so the DMFT has one linear
coordinate process per population with C x C order parameters — 𝒦, β_1, |b_1|², G^n M^lᵀ,
G^n G^lᵀ — and the C-dimensional example process of depth 0.  H/N → 0 is the fixed-width DMFT
of `trunk.py` (tested); at H/N = O(1) the head's own finite-sample noise and self-response
(O(H/P)) and the trunk's O(H/N) share of the teacher span enter exactly.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, Float
from .._metrics import mixture_labels, mixture_train_loss
from .._student import Student, StudentConfig
from .._teacher import Teacher, TeacherConfig
from .fixed_point import solve_fixed_point
from .kernels import _causal_memory_scan, _response, _steps_padded, psd_factor
from .sampling import _eval_points, _input_draws
from .solver import FiniteDataSolver
from .trunk import _metrics_general, _teacher_frame_draws


class _WideProblem(eqx.Module):
    """Inputs of one width-proportional solve (depth-1 linear trunk, orthogonal W(0), K tasks).

    - `alpha`: (K,) P_k / N' (N' = N − D, as the fixed-width theory); `rho`: (K,) task rates; `dt`: (T,) steps Δ_n.
    - `scale`, `noise`, `flip`, `noisy_fraction`: (K,); `w`: (K, C, R); `T`: (K, R, D).
    - initial low-dimensional state (Q = K C): `K0` (Q, Q) = V Vᵀ, `beta10` (Q,) = V b_1,
      `b1sq0` () = |b_1|², `c0` (Q,) head biases.
    - `g2`: init_scale² (W(0) W(0)ᵀ = g² I_H); `nu`: H / N; `w_in`, `w_out`: the two bulk
      populations' sizes over N' = N − D, H / N' and 1 − H / N' (the 2D low-dimensional directions
      hold D of Π's range; counting them in the bulk too is an O(D/N) difference, and keeps the
      fixed-width limit exact when H ~ D)."""

    alpha: Float[Array, " K"]
    rho: Float[Array, " K"]
    dt: Float[Array, " T"]
    scale: Float[Array, " K"]
    noise: Float[Array, " K"]
    flip: Float[Array, " K"]
    noisy_fraction: Float[Array, " K"]
    w: Float[Array, "K C R"]
    T: Float[Array, "K R D"]
    K0: Float[Array, "Q Q"]
    beta10: Float[Array, " Q"]
    b1sq0: Float[Array, ""]
    c0: Float[Array, " Q"]
    g2: Float[Array, ""]
    nu: Float[Array, ""]
    w_in: Float[Array, ""]
    w_out: Float[Array, ""]


class _WideDraws(eqx.Module):
    """Fixed draws per task: `x` (K, S, D) inputs along the teacher span (teacher frame), `xi`
    (K, S, C), `zeta` (K, S, T1 C), `y_unif` (K, S)."""

    x: Float[Array, "K S D"]
    xi: Float[Array, "K S C"]
    zeta: Float[Array, "K S TC"]
    y_unif: Array


def _labels(p: _WideProblem, d: _WideDraws):
    D = p.T.shape[2]
    u = jnp.einsum("ksd,krd->ksr", d.x[..., :D], p.T)
    return jax.vmap(mixture_labels)(p.scale, p.noise, p.flip, p.noisy_fraction, p.w, u, d.xi, d.y_unif)


def _safe_alpha(p: _WideProblem):
    # A task with no data (single-task training: ρ_k = 0) has α_k = 0; every force of it is
    # multiplied by ρ_k = 0, and a finite stand-in keeps 0 · ∞ out of the arithmetic.
    return jnp.where(p.alpha > 0, p.alpha, 1.0)


def _coordinate_side(p: _WideProblem, Cg, Rg, gbar, GE):
    """The exact statistics of the linear coordinate processes and the low-dimensional state,
    given the example side: kernels `Cg`, `Rg` (K, T1, C, T1, C), mean errors `gbar` (T1, Q) and
    the teacher-span forces `GE` (T1, Q, D) = E[g uᵀ].  The Π-image directions' forces are
    those of noiseless coordinates, G_S^n = Σ_l R_g[n,l] M_S^l (Stein: their inputs are
    independent of the labels), computed here, not sampled.

    Each bulk coordinate j (scaled by √N) carries m_j ∈ R^Q (its column of M) and ω_j (of w_b),
    driven by its force γ_j = η_j + Σ_l R_g[n,l] m_j^l, η_j ~ N(0, C_g,k / α_k) per task.  Both
    are linear in ξ = (m^0, ω^0, η^0..η^T); the coefficient rows are propagated exactly and the
    population averages are quadratic forms in ξ's covariance (docs/dmft.md §4.3).

    **Returns:** `(Cbar, Rbar, ML, beta, A)`: bulk logit covariance and response (T1, Q, T1, Q)
    (Rbar[n, :, l, :] = ∂m^n/∂γ^l averaged over the populations), low-dimensional logit maps
    ML (T1, Q, 2D), logit biases β = V b_1 + c (T1, Q), and A[n, l] = G^n M^lᵀ (T1, T1, Q, Q)."""
    K, T1, C = Cg.shape[0], Cg.shape[1], Cg.shape[2]
    Q = K * C
    D = GE.shape[-1]
    D2 = 2 * D
    dt = _steps_padded(p.dt)
    rq = jnp.repeat(p.rho, C)
    alpha = _safe_alpha(p)
    eyeK = jnp.eye(K)
    Rf = jnp.einsum("kncle,kj->nkclje", Rg, eyeK).reshape(T1, Q, T1, Q)
    Ce = jnp.einsum("kncle,kj->nkclje", Cg / alpha[:, None, None, None, None], eyeK).reshape(T1 * Q, T1 * Q)
    n0 = Q + 1  # initial-state columns of ξ
    dx = n0 + T1 * Q
    w_in_safe = jnp.where(p.w_in > 0, p.w_in, 1.0)
    S0 = jnp.block([[p.K0, p.beta10[:, None]], [p.beta10[None, :], p.b1sq0[None, None]]]) * (p.g2 / w_in_safe)
    S0 = jnp.where(p.w_in > 0, S0, 0.0)
    Sig_in = jnp.zeros((dx, dx)).at[:n0, :n0].set(S0).at[n0:, n0:].set(Ce)
    Sig_out = jnp.zeros((dx, dx)).at[n0:, n0:].set(Ce)
    Sig = jnp.stack([Sig_in, Sig_out])
    lam = jnp.array([1.0, 0.0])
    wp = jnp.stack([p.w_in, p.w_out])
    s = jnp.sqrt(jnp.clip(p.nu * (1 - p.nu), 0.0))
    eyeD = jnp.eye(D)
    PiLL = p.g2 * jnp.block([[p.nu * eyeD, s * eyeD], [s * eyeD, (1 - p.nu) * eyeD]])
    steps = jnp.arange(T1)

    Lm = jnp.zeros((2, T1, Q, dx)).at[:, 0, :, :Q].set(jnp.eye(Q))
    Lw = jnp.zeros((2, T1, dx)).at[:, 0, Q].set(1.0)
    Lg = jnp.zeros((2, T1, Q, dx))
    ML = jnp.zeros((T1, Q, D2))
    GL = jnp.zeros((T1, Q, D2))
    wL = jnp.zeros((T1, D2))
    Km = jnp.zeros((T1, Q, Q)).at[0].set(p.K0)
    b1 = jnp.zeros((T1, Q)).at[0].set(p.beta10)
    bsq = jnp.zeros(T1).at[0].set(p.b1sq0)
    cc = jnp.zeros((T1, Q)).at[0].set(p.c0)
    A = jnp.zeros((T1, T1, Q, Q))

    def step(carry, n):
        Lm, Lw, Lg, ML, GL, wL, Km, b1, bsq, cc, A = carry
        d = dt[n]
        GS = jnp.einsum("qlr,lrd->qd", Rf[n], ML[:, :, D:])
        GL = GL.at[n].set(jnp.concatenate([GE[n], GS], 1))
        eta = jax.nn.one_hot(n0 + n * Q + jnp.arange(Q), dx)  # (Q, dx): the columns of η^n
        gam = eta[None] + jnp.einsum("qlr,plrx->pqx", Rf[n], Lm)  # γ^n, (2, Q, dx)
        Lg = Lg.at[:, n].set(gam)
        gS = jnp.einsum("pqx,pxy->pqy", gam, Sig)
        Gn = GL[n]
        Arow = jnp.einsum("p,pqy,plry->lqr", wp, gS, Lm) + jnp.einsum("qd,lrd->lqr", Gn, ML)
        Brow = jnp.einsum("p,pqy,plry->lqr", wp, gS, Lg) + jnp.einsum("qd,lrd->lqr", Gn, GL)  # rows l > n unused
        past = (steps < n).astype(dt.dtype)
        # K_W^n = g² Π + Σ_{l<n} [−Δ_l (M^lᵀ ρ G^l + G^lᵀ ρ M^l) + Δ_l² G^lᵀ ρ 𝒦^l ρ G^l]: applied to a
        # coordinate, the history enters through C x C matrices G^n M^lᵀ and G^n G^lᵀ.
        cA = -(dt * past)[:, None, None] * Arow * rq
        cB = -(dt * past)[:, None, None] * Brow * rq
        cBK = (dt**2 * past)[:, None, None] * jnp.einsum("lqr,lrs->lqs", Brow * rq, Km * rq)
        kco = (p.g2 * lam[:, None, None] * gam + jnp.einsum("lqr,plrx->pqx", cA + cBK, Lg)
               + jnp.einsum("lqr,plrx->pqx", cB, Lm))  # fmt: skip
        kL = Gn @ PiLL + jnp.einsum("lqr,lrd->qd", cA + cBK, GL) + jnp.einsum("lqr,lrd->qd", cB, ML)
        Kg = jnp.einsum("p,pqy,pry->qr", wp, kco, gS) + kL @ Gn.T  # G K_W Gᵀ
        Gw = jnp.einsum("p,pqy,py->q", wp, gS, Lw[:, n]) + Gn @ wL[n]  # G w_b
        Ann = Arow[n]
        gb, bb, Kn, bs = gbar[n], b1[n], Km[n], bsq[n]
        rgb = rq * gb
        mid = rq[:, None] * (Ann + jnp.outer(gb, bb)) * rq  # ρ (G Mᵀ + ḡ β_1ᵀ) ρ
        Krq = Kn * rq
        Kgb = rq * (Kn @ rgb)
        Lm_new = (Lm[:, n] - d * (jnp.einsum("qr,prx->pqx", Krq, gam) + rq[None, :, None] * kco
                                  + rgb[None, :, None] * Lw[:, n][:, None, :])
                  + d**2 * jnp.einsum("qr,prx->pqx", mid, gam))  # fmt: skip
        Lw_new = (Lw[:, n] - d * (jnp.einsum("q,pqx->px", rgb, Lm[:, n]) + jnp.einsum("q,pqx->px", rq * bb, gam))
                  + d**2 * jnp.einsum("q,pqx->px", Kgb, gam))  # fmt: skip
        ML_new = ML[n] - d * (Krq @ Gn + rq[:, None] * kL + jnp.outer(rgb, wL[n])) + d**2 * mid @ Gn
        wL_new = wL[n] - d * (ML[n].T @ rgb + Gn.T @ (rq * bb)) + d**2 * Gn.T @ Kgb
        K_new = (Kn - d * (rq[:, None] * (Ann + jnp.outer(gb, bb)) + (Ann.T + jnp.outer(bb, gb)) * rq)
                 + d**2 * rq[:, None] * (Kg + jnp.outer(Gw, gb) + jnp.outer(gb, Gw) + bs * jnp.outer(gb, gb)) * rq)  # fmt: skip
        b1_new = bb - d * (Kn @ rgb + rq * (Gw + gb * bs)) + d**2 * mid @ gb
        bs_new = bs - 2 * d * bb @ rgb + d**2 * rgb @ Kn @ rgb
        c_new = cc[n] - d * rgb
        # The last grid time's update (Δ = 0, `_steps_padded`) rewrites that time's own values.
        m = jnp.minimum(n + 1, T1 - 1)
        carry = (Lm.at[:, m].set(Lm_new), Lw.at[:, m].set(Lw_new), Lg, ML.at[m].set(ML_new), GL, wL.at[m].set(wL_new),
                 Km.at[m].set(K_new), b1.at[m].set(b1_new), bsq.at[m].set(bs_new), cc.at[m].set(c_new),
                 A.at[n].set(Arow))  # fmt: skip
        return carry, None

    init = (Lm, Lw, Lg, ML, GL, wL, Km, b1, bsq, cc, A)
    (Lm, Lw, Lg, ML, GL, wL, Km, b1, bsq, cc, A), _ = jax.lax.scan(step, init, steps)
    LS = jnp.einsum("pnqx,pxy->pnqy", Lm, Sig)
    Cbar = jnp.einsum("p,pnqy,plry->nqlr", wp, LS, Lm)
    Rbar = jnp.einsum("p,pnqlr->nqlr", wp, Lm[..., n0:].reshape(2, T1, Q, T1, Q))
    return Cbar, Rbar, ML, b1 + cc, A


def _task_blocks(X, K: int, C: int):
    """(T1, Q, T1, Q) -> the K diagonal task blocks (K, T1, C, T1, C)."""
    T1 = X.shape[0]
    Xr = X.reshape(T1, K, C, T1, K, C)
    return jnp.stack([Xr[:, k, :, :, k, :] for k in range(K)])


def _example_task(alpha, dt, Cv, Rv, ML, beta, x, zeta, ys, weights):
    """One task's sampled example process: h^n = M_E^n u + β^n + χ^n − (1/α) Σ_{l<n} R_v[n,l] g^l,
    χ ~ N(0, Cv) (the bulk and the Π-image directions, both independent of u).
    **Returns:** h, G (3, S, T1, C), ḡ (T1, C), E[g uᵀ] (T1, C, D)."""
    T1, C = Cv.shape[0], Cv.shape[1]
    S = x.shape[0]
    chi = (zeta @ psd_factor(Cv.reshape(T1 * C, T1 * C)).T).reshape(S, T1, C)
    onehot = jax.nn.one_hot(ys, C)
    wts = weights / S

    def step(carry, mem, xs):
        n, _ = xs
        mem = jnp.moveaxis(mem.reshape(C, 3, S), 0, -1) / alpha
        h = x @ ML[n].T + beta[n] + chi[:, n] - mem
        g = jax.nn.softmax(h, -1) - onehot
        gb = jnp.einsum("xs,xsc->c", wts, g)
        gl = jnp.einsum("xs,xsc,sd->cd", wts, g, x)
        return carry, jnp.moveaxis(g, -1, 0).reshape(C, 3 * S), (h, gb, gl)

    _, buf, (h, gb, gl) = _causal_memory_scan(step, jnp.zeros(()), Rv.reshape(T1, C, T1 * C), _steps_padded(dt), C, 3 * S)
    G = jnp.transpose(buf.reshape(T1, C, 3, S), (2, 3, 0, 1))
    return jnp.moveaxis(h, 0, 2), G, gb, gl


def _iteration(p: _WideProblem, d: _WideDraws, ys, weights, Cg, Rg, gbar, GE, n_response: int):
    """One Picard map of (C_g, R_g, ḡ, E[g uᵀ]) -> new ones, and the trajectories."""
    K, T1, C = Cg.shape[0], Cg.shape[1], Cg.shape[2]
    D = GE.shape[-1]
    Cbar, Rbar, ML, beta, _ = _coordinate_side(p, Cg, Rg, gbar, GE)
    MLk = jnp.moveaxis(ML.reshape(T1, K, C, -1), 1, 0)
    # The fields' Gaussian part: the bulk plus the Π-image directions M_S u_s (u_s ⊥ u).
    Cv = _task_blocks(Cbar, K, C) + jnp.einsum("kncd,kled->kncle", MLk[..., D:], MLk[..., D:])
    # The example's field memory is +(1/α_k) Σ Rbar g (its error kicks its coordinates' forces).
    Rv = -_task_blocks(Rbar, K, C)
    bk = jnp.moveaxis(beta.reshape(T1, K, C), 1, 0)
    alpha = _safe_alpha(p)
    h, G, gb, gl = jax.vmap(_example_task, in_axes=(0, None, 0, 0, 0, 0, 0, 0, 0, 0))(
        alpha, p.dt, Cv, Rv, MLk[..., :D], bk, d.x, d.zeta, ys, weights)  # fmt: skip
    S = d.x.shape[1]
    wts = weights / S
    Cg_new = jnp.einsum("kxs,kxsnc,kxsme->kncme", wts, G, G)
    Sr = n_response

    def resp(k):
        hr = h[k, :, :Sr].reshape(3 * Sr, T1, C)
        return _response(hr, Rv[k], alpha[k], (weights[k, :, :Sr] / Sr).reshape(-1))

    Rg_new = jnp.stack([resp(k) for k in range(K)])
    gbar_new = jnp.moveaxis(gb, 0, 1).reshape(T1, K * C)
    GE_new = jnp.moveaxis(gl, 0, 1).reshape(T1, K * C, D)
    return (Cg_new, Rg_new, gbar_new, GE_new), (h, Cv, MLk, bk)


def _wide_draws(p: _WideProblem, solver: FiniteDataSolver, T1: int, key):
    K, C, _ = p.w.shape
    D = p.T.shape[2]
    S = solver.n_draws
    k = jax.random.split(key, 5)
    x, xi, y_unif = _input_draws(k[jnp.array([0, 1, 3])], (K,), S, D, C, solver.sampling)
    # The teacher-span inputs rotate with the teacher in derivative (`_teacher_frame_draws`).
    x = jax.vmap(_teacher_frame_draws)(p.T, x)
    return _WideDraws(x, xi, jax.random.normal(k[2], (K, S, T1 * C)), y_unif), k[4]


def solve_wide(p: _WideProblem, solver: FiniteDataSolver, n_grid: int, *, key):
    """Solve the width-proportional DMFT and evaluate every task.

    **Returns:** (train_loss, test_loss, test_acc) each (T+1, K), residual (), iterations ()."""
    K, C, _ = p.w.shape
    D = p.T.shape[2]
    T1 = n_grid + 1
    d, eval_key = _wide_draws(p, solver, T1, key)

    def iterate(params, z):
        pp, dd = params
        ys, weights = _labels(pp, dd)
        znew, aux = _iteration(pp, dd, ys, weights, *z, solver.n_response)
        return znew, (ys, weights, aux)

    zero = jnp.zeros((K, T1, C, T1, C))
    z0 = (zero, zero, jnp.zeros((T1, K * C)), jnp.zeros((T1, K * C, D)))
    _, (ys, weights, (h, Cv, MLk, bk)), res, maps = solve_fixed_point(
        iterate, (solver.min_iter, solver.max_iter), (solver.damping, solver.tol), (p, d), z0)  # fmt: skip
    x_eval = _eval_points(eval_key, solver.n_quad_eval, D + 2 * C, solver.sampling)
    idx = jnp.arange(T1)
    test_loss, test_acc = [], []
    for k in range(K):
        ME = MLk[k, :, :, :D]
        # A fresh input's logits: M_E u + β + N(0, Cbar[n, n] + M_S M_Sᵀ) (`Cv` holds both).
        Sig = Cv[k][idx, :, idx, :]
        xk = x_eval.at[:, :D].set(_teacher_frame_draws(p.T[k], x_eval[:, :D]))
        lo, ac = _metrics_general(p.scale[k], p.noise[k], p.flip[k], p.noisy_fraction[k], p.w[k], p.T[k], ME, bk[k],
                                  Sig, xk)  # fmt: skip
        test_loss.append(lo), test_acc.append(ac)
    train = jnp.stack([mixture_train_loss(h[k], ys[k], weights[k]) for k in range(K)], -1)
    return train, jnp.stack(test_loss, -1), jnp.stack(test_acc, -1), res, maps


def check_wide(sc: StudentConfig, n_features: int) -> None:
    """The width-proportional theory's scope, checked before anything is solved."""
    if sc.depth != 1 or sc.activation != "linear":
        raise ValueError(f"width='proportional' needs a linear depth-1 trunk (student.depth=1, activation='linear'), "
                         f"got depth={sc.depth}, activation={sc.activation!r}; use width='fixed' otherwise")
    if sc.init != "orthogonal":
        raise ValueError(f"width='proportional' needs student.init='orthogonal' (W W ᵀ = g² I), got {sc.init!r}")
    if sc.width > n_features:
        raise ValueError(f"width='proportional' needs student.width <= n_features, got {sc.width} > {n_features}")


def _wide_problem(tc: TeacherConfig, sc: StudentConfig, teacher: Teacher, student: Student, n_train_active,
                  rho) -> _WideProblem:  # fmt: skip
    """The width-proportional problem: teacher arrays, α_k = P_k / N', the heads' and biases'
    Gram quantities (the student's own), W(0)'s gain and H / N.  The first layer's overlap with
    the teacher span is O(1/√N) at initialisation and enters as zero (typical)."""
    from .._teacher import teacher_coefficients

    E = teacher.basis
    D = E.shape[0]
    layer = student.layers[0]
    H = layer.weight.shape[0]
    N = tc.n_features
    b1 = jnp.zeros(H) if layer.bias is None else layer.bias
    V = jnp.stack([h.weight for h in student.heads])  # (K, C, H)
    K, C = V.shape[0], V.shape[1]
    c0 = jnp.stack([jnp.zeros(C) if h.bias is None else h.bias for h in student.heads])
    Vq = V.reshape(K * C, H)
    n_perp = N - D
    return _WideProblem(
        n_train_active / n_perp, rho, None, tc.scale, tc.noise, tc.flip, tc.noisy_fraction, teacher.w,
        teacher_coefficients(tc), Vq @ Vq.T, Vq @ b1, b1 @ b1, c0.reshape(-1), sc.init_scale**2,
        jnp.asarray(H / N, float), jnp.asarray(H / n_perp, float), jnp.asarray(max(1.0 - H / n_perp, 0.0), float),
    )  # fmt: skip
