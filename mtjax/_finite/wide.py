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
from .._metrics import mixture_train_loss
from .._student import Student, StudentConfig
from .._teacher import Teacher, TeacherConfig
from .fixed_point import solve_fixed_point
from .kernels import _response_sampled, _steps_padded, mean_jacobian, psd_factor
from .sampling import _eval_points, _input_draws
from .solver import FiniteDataSolver
from .trunk import _label_frame_draws, _metrics_general, _test_points, _trunk_labels, _trunk_problem, _TrunkProblem


class _WideProblem(eqx.Module):
    """Inputs of one width-proportional solve (depth-1 linear trunk, orthogonal W(0), K tasks).

    - `trunk`: the fixed-width theory's `_TrunkProblem` at the typical initial condition — teacher
      arrays, α_k = P_k / N' (N' = N − D), task rates, steps, heads, biases and Q0 = g² I_H
      (W(0) W(0)ᵀ = g² I_H); the width-proportional solve reads its heads and biases through their
      rows only (`_initial_state`).
    - `nu`: H / N; `w_in`, `w_out`: the two bulk populations' sizes over N', H / N' and
      1 − H / N' (the 2D low-dimensional directions hold D of Π's range; counting them in the bulk
      too is an O(D/N) difference, and keeps the fixed-width limit exact when H ~ D); at the
      experiment's own N (`geometry`) H / N' and (N − H) / N' (docs/dmft.md §4.4).
    - `geometry`: None (N → ∞: EᵀΠE = ν I) or (N, H), the experiment's own sizes: EᵀΠE and the
      initial heads' share of the 2D directions are drawn at N per draw seed (`_geometry`)."""

    trunk: _TrunkProblem
    nu: Float[Array, ""]
    w_in: Float[Array, ""]
    w_out: Float[Array, ""]
    geometry: tuple[int, int] | None = eqx.field(static=True, default=None)


def _initial_state(t: _TrunkProblem):
    """The initial state in the common frame (docs/dmft.md §4.3): the rows Y (Q + L, H) of
    the heads Ṽ (Q = K C rows) and the biases b̃_1..b̃_L carried into the first hidden layer's
    coordinates (a layer-ℓ vector v as W_2ᵀ ⋯ W_ℓᵀ v / (g_2 ⋯ g_ℓ)), the head biases c (Q,) and the
    layer gains g (L,) (W_1 W_1ᵀ = g_1² I_H, W_ℓᵀ W_ℓ = g_ℓ² I_H: the typical Q0 is g_1² I_H)."""
    K, C, H = t.V0.shape
    g1 = jnp.sqrt(jnp.trace(t.Q0) / H)
    gu = jnp.sqrt(jnp.einsum("lij,lij->l", t.Wu0, t.Wu0) / H)
    rows, frame = [t.b10[None]], jnp.eye(H)
    for ell in range(t.Wu0.shape[0]):  # frame: layer ell+2 -> layer 1 coordinates
        frame = frame @ t.Wu0[ell].T / gu[ell]
        rows.append((frame @ t.bu0[ell])[None])
    Y = jnp.concatenate([t.V0.reshape(K * C, H) @ frame.T] + rows, 0)
    return Y, t.c0.reshape(-1), jnp.concatenate([g1[None], gu])


class _WideDraws(eqx.Module):
    """Fixed draws per task: `u` (K, S, D) inputs along the teacher span (teacher frame), `us`
    (K, S, D) along its Π-image, `xi` (K, S, C), `zeta` (K, 2, S, d) standard normals of the two
    bulk populations' ξ (d = Q + 1 + T1 Q), `y_unif` (K, S); and the low-dimensional geometry
    (`_geometry`): Π on the 2D directions `PiL` (2D, 2D), the initial heads' and biases'
    components there `low0` (Q + L, 2D) and the Gram matrix of their bulk part `gram0` (Q + L, Q + L)."""

    u: Float[Array, "K S D"]
    us: Float[Array, "K S D"]
    xi: Float[Array, "K S C"]
    zeta: Float[Array, "K 2 S d"]
    y_unif: Array
    PiL: Float[Array, "D2 D2"]
    low0: Float[Array, "n0 D2"]
    gram0: Float[Array, "n0 n0"]


def _safe_alpha(t: _TrunkProblem):
    # A task with no data (single-task training: ρ_k = 0) has α_k = 0; every force of it is
    # multiplied by ρ_k = 0, and a finite stand-in keeps 0 · ∞ out of the arithmetic.
    return jnp.where(t.alpha > 0, t.alpha, 1.0)


def _blockdiag_tasks(X):
    """Per-task (K, T1, C, T1, C) -> the task-block-diagonal (T1 Q, T1 Q), ordering (time, task, class)."""
    K, T1, C = X.shape[0], X.shape[1], X.shape[2]
    return jnp.einsum("kncle,kj->nkclje", X, jnp.eye(K)).reshape(T1 * K * C, T1 * K * C)


def _xi_covariances(p: _WideProblem, d: _WideDraws, Cg):
    """ξ = (ṽ^0 (Q), b̃_1^0..b̃_L^0, η^0..η^T)'s covariance per bulk population (2, d, d) — for the
    averages — and a factor of each (2, d, d) — for sampling the fields.  η ~ N(0, C_g,k / α_k) per
    task; the initial heads and biases live in the trunk's image (the Π = 1 population) only."""
    K, T1, C = Cg.shape[0], Cg.shape[1], Cg.shape[2]
    Q = K * C
    Y0 = d.gram0
    n0 = Y0.shape[0]
    d = n0 + T1 * Q
    Ck = Cg / _safe_alpha(p.trunk)[:, None, None, None, None]
    Ce = _blockdiag_tasks(Ck)
    Le = _blockdiag_tasks(jax.vmap(psd_factor)(Ck.reshape(K, T1 * C, T1 * C)).reshape(K, T1, C, T1, C))
    w_in = jnp.where(p.w_in > 0, p.w_in, 1.0)
    S0 = jnp.where(p.w_in > 0, Y0 / w_in, 0.0)
    zero = jnp.zeros((d, d))
    Sig = jnp.stack([zero.at[:n0, :n0].set(S0).at[n0:, n0:].set(Ce), zero.at[n0:, n0:].set(Ce)])
    Fac = jnp.stack([zero.at[:n0, :n0].set(psd_factor(S0)).at[n0:, n0:].set(Le), zero.at[n0:, n0:].set(Le)])
    return Sig, Fac


def _map(p: _WideProblem, d: _WideDraws, ys, weights, Cg, Rg):
    """One Picard map: the coordinate populations, the low-dimensional directions and every task's
    sampled example process, advanced together step by step (causal: the step-n forces use the
    examples' errors at step n), given the lagged kernels `Cg`, `Rg` (K, T1, C, T1, C).

    All layers live in one frame (docs/dmft.md §4.3): W_ℓ = g_ℓ Π + Σ_{l<n} −Δ_l A_ℓ^lᵀ ρ Z_{ℓ−1}^l,
    with A_L = Ṽ, A_{ℓ−1} = A_ℓ W_ℓ (so A_0 = M, the logit map), F_0 = G, F_ℓ = F_{ℓ−1} W_ℓᵀ,
    b̂_0 = 0, b̂_ℓ = W_ℓ b̂_{ℓ−1} + b̃_ℓ and Z_ℓ = F_ℓ + ḡ b̂_ℓᵀ; the logit bias is Ṽ·b̂_L + c.  Every
    vector is, on a bulk coordinate (scaled by √N'), linear in ξ, so its coefficient rows are
    propagated exactly and each C x C overlap is a quadratic form in ξ's covariance plus the
    low-dimensional directions' dot product.  An example's bulk field is the Gaussian
    Σ_p √w_p m_p^n · ξ_p, sampled through the factor of ξ's covariance; its memory is the η-part
    of m^n.  The updates are discrete GD's, with the step's gradients at the step's parameters.

    **Returns:** h (K, X, S, T1, C), errors G (K, X, S, T1, C) (X label components,
    `_trunk_labels`), bulk covariance and response
    Cbar, Rbar (T1, Q, T1, Q), low-dimensional maps ML (T1, Q, 2D) and logit biases β (T1, Q)."""
    K, T1, C = Cg.shape[0], Cg.shape[1], Cg.shape[2]
    Q = K * C
    D = d.u.shape[-1]
    D2 = 2 * D
    S = d.u.shape[1]
    t = p.trunk
    _, c0, gains = _initial_state(t)
    L = gains.shape[0]
    dt = _steps_padded(t.dt)
    rq = jnp.repeat(t.rho, C)
    alpha = _safe_alpha(t)
    Rf = _blockdiag_tasks(Rg).reshape(T1, Q, T1, Q)
    Sig, Fac = _xi_covariances(p, d, Cg)
    n0 = Q + L
    dx = n0 + T1 * Q
    lam = jnp.array([1.0, 0.0])
    wp = jnp.stack([p.w_in, p.w_out])
    PiL = d.PiL  # Π on the 2D directions
    steps = jnp.arange(T1)
    onehot = jax.nn.one_hot(ys, C)  # (K, X, S, C)
    wts = weights / S  # (K, X, S)
    xL = jnp.concatenate([d.u, d.us], -1)  # (K, S, 2D)

    def gram(X, XL, Y, YL):
        # Overlaps of the rows of X (.., R, ·) with the history Y (.., T1, R', ·): (T1, R, R').
        return jnp.einsum("p,pqy,plry->lqr", wp, jnp.einsum("pqx,pxy->pqy", X, Sig), Y) + jnp.einsum("qd,lrd->lqr", XL, YL)

    def apply_w(X, XL, coef, Y, YL):
        # X + Σ_l coef[l] Y^l on the bulk rows and on the low-dimensional directions.
        return X + jnp.einsum("lqr,plrx->pqx", coef, Y), XL + jnp.einsum("lqr,lrd->qd", coef, YL)

    def step(carry, n):
        Lv, vL, Lb, bL, cc, HA, HAL, HZ, HZL, Lm, ML, beta, gbuf = carry
        dn = dt[n]
        cpast = -(dt * (steps < n))[:, None, None] * rq  # −Δ_l ρ for l < n, as (T1, 1, Q)
        # --- forward: A_ℓ = Ṽ W_L ⋯ W_{ℓ+1}, down to the logit map M = A_0.
        A, AL = Lv, vL
        As = []
        for ell in range(L, 0, -1):
            As.append((A, AL))
            Gm = gram(A, AL, HA[ell - 1], HAL[ell - 1])
            A, AL = apply_w(gains[ell - 1] * A, gains[ell - 1] * AL, Gm * cpast, HZ[ell - 1], HZL[ell - 1])
        As = As[::-1]  # As[ℓ−1] = A_ℓ
        Lm = Lm.at[:, n].set(A)
        ML = ML.at[n].set(AL)
        # --- the bias path b̂_ℓ and the logit bias β = Ṽ·b̂_L + c.
        bh, bhL = jnp.zeros((2, 1, dx)), jnp.zeros((1, D2))
        bhs = [(bh, bhL)]
        for ell in range(1, L + 1):
            Gz = gram(bh, bhL, HZ[ell - 1], HZL[ell - 1])
            Ab, AbL = As[ell - 1]
            bh, bhL = apply_w(gains[ell - 1] * bh + Lb[:, ell - 1 : ell], gains[ell - 1] * bhL + bL[ell - 1 : ell],
                              Gz * cpast, HA[ell - 1], HAL[ell - 1])  # fmt: skip
            bhs.append((bh, bhL))
        bn = gram(Lv, vL, bh[:, None], bhL[None])[0, :, 0] + cc
        beta = beta.at[n].set(bn)
        # --- the examples at step n: bulk field, memory, Π-image and teacher-span parts, bias.
        gam = jax.nn.one_hot(n0 + n * Q + jnp.arange(Q), dx)[None] + jnp.einsum("qlr,plrx->pqx", Rf[n], Lm)
        LF = jnp.einsum("pqx,pxy->pqy", A, Fac).reshape(2, K, C, dx)
        chi = jnp.einsum("p,pkcx,kpsx->ksc", jnp.sqrt(wp), LF, d.zeta)
        Rn = jnp.einsum("p,pqlr->qlr", wp, A[..., n0:].reshape(2, Q, T1, Q)).reshape(K, C, T1, K, C)
        # Each task's own block (K, C, T1, C); zero for l >= n.
        mem = jnp.einsum("kclke,lkxse->kxsc", Rn, gbuf) / alpha[:, None, None, None]
        base = jnp.einsum("ksd,kcd->ksc", xL, AL.reshape(K, C, D2)) + bn.reshape(K, 1, C) + chi
        h = base[:, None] + mem
        g = jax.nn.softmax(h, -1) - onehot
        gbuf = gbuf.at[n].set(g)
        gb = jnp.einsum("kxs,kxsc->kc", wts, g).reshape(Q)
        GE = jnp.einsum("kxs,kxsc,ksd->kcd", wts, g, d.u).reshape(Q, D)
        # Π-image directions: noiseless coordinates (their inputs are independent of the labels).
        GS = jnp.einsum("qlr,lrd->qd", Rf[n], ML[:, :, D:])
        # --- backward: F_ℓ = G W_1ᵀ ⋯ W_ℓᵀ and Z_ℓ = F_ℓ + ḡ b̂_ℓᵀ, ℓ = 0..L.
        F, FL = gam, jnp.concatenate([GE, GS], 1)
        for ell in range(1, L + 1):
            Zp, ZpL = F + gb[None, :, None] * bhs[ell - 1][0], FL + gb[:, None] * bhs[ell - 1][1]
            HZ, HZL = HZ.at[ell - 1, :, n].set(Zp), HZL.at[ell - 1, n].set(ZpL)
            Gz = gram(F, FL, HZ[ell - 1], HZL[ell - 1]) * (steps < n)[:, None, None]
            Fp, FpL = (lam[:, None, None] * F, FL @ PiL) if ell == 1 else (F, FL)
            F, FL = apply_w(gains[ell - 1] * Fp, gains[ell - 1] * FpL, Gz * cpast, HA[ell - 1], HAL[ell - 1])
        ZL_, ZLL = F + gb[None, :, None] * bh, FL + gb[:, None] * bhL
        for ell in range(1, L + 1):
            HA, HAL = HA.at[ell - 1, :, n].set(As[ell - 1][0]), HAL.at[ell - 1, n].set(As[ell - 1][1])
        # --- discrete GD: heads, biases.
        rgb = rq * gb
        Lv, vL = Lv - dn * rq[None, :, None] * ZL_, vL - dn * rq[:, None] * ZLL
        Lb = Lb - dn * jnp.stack([jnp.einsum("q,pqx->px", rgb, a) for a, _ in As], 1)
        bL = bL - dn * jnp.stack([rgb @ aL for _, aL in As])
        cc = cc - dn * rgb
        return (Lv, vL, Lb, bL, cc, HA, HAL, HZ, HZL, Lm, ML, beta, gbuf), h

    init = (
        jnp.zeros((2, Q, dx)).at[:, :, :Q].set(jnp.eye(Q)), d.low0[:Q],
        jnp.zeros((2, L, dx)).at[:, :, Q:n0].set(jnp.eye(L)), d.low0[Q:], c0,
        jnp.zeros((L, 2, T1, Q, dx)), jnp.zeros((L, T1, Q, D2)), jnp.zeros((L, 2, T1, Q, dx)), jnp.zeros((L, T1, Q, D2)),
        jnp.zeros((2, T1, Q, dx)), jnp.zeros((T1, Q, D2)), jnp.zeros((T1, Q)), jnp.zeros((T1, *ys.shape, C)),
    )  # fmt: skip
    (*_, Lm, ML, beta, gbuf), h = jax.lax.scan(step, init, steps)
    LS = jnp.einsum("pnqx,pxy->pnqy", Lm, Sig)
    Cbar = jnp.einsum("p,pnqy,plry->nqlr", wp, LS, Lm)
    Rbar = jnp.einsum("p,pnqlr->nqlr", wp, Lm[..., n0:].reshape(2, T1, Q, T1, Q))
    return jnp.moveaxis(h, 0, 3), jnp.moveaxis(gbuf, 0, 3), Cbar, Rbar, ML, beta


def _task_blocks(X, K: int, C: int):
    """(T1, Q, T1, Q) -> the K diagonal task blocks (K, T1, C, T1, C)."""
    T1 = X.shape[0]
    return jnp.einsum("nkclke->kncle", X.reshape(T1, K, C, T1, K, C))


def _iteration(p: _WideProblem, d: _WideDraws, ys, weights, Cg, Rg, n_response: int, control: bool = False):
    """One Picard map of the kernels (C_g, R_g) (K, T1, C, T1, C) -> new ones, and the trajectories:
    h (K, X, S, T1, C), the fields' covariance per task Cv (K, T1, C, T1, C) (bulk and Π-image
    directions), the low-dimensional maps (K, T1, C, 2D) and biases (K, T1, C)."""
    K, T1, C = Cg.shape[0], Cg.shape[1], Cg.shape[2]
    D = d.u.shape[-1]
    h, G, Cbar, Rbar, ML, beta = _map(p, d, ys, weights, Cg, Rg)
    MLk = jnp.moveaxis(ML.reshape(T1, K, C, -1), 1, 0)
    bk = jnp.moveaxis(beta.reshape(T1, K, C), 1, 0)
    Cv = _task_blocks(Cbar, K, C) + jnp.einsum("kncd,kled->kncle", MLk[..., D:], MLk[..., D:])
    # The example's field memory is +(1/α_k) Σ Rbar g (its error kicks its coordinates' forces).
    Rv = -_task_blocks(Rbar, K, C)
    alpha = _safe_alpha(p.trunk)
    S = d.u.shape[1]
    wts = weights / S
    Cg_new = jnp.einsum("kxs,kxsnc,kxsme->kncme", wts, G, G)
    Sr = n_response

    def resp(k):
        hr = h[k, :, :Sr].reshape(-1, T1, C)
        J_all = mean_jacobian(h[k].reshape(-1, T1, C), wts[k].reshape(-1)) if control else None
        return _response_sampled(hr, Rv[k], alpha[k], (weights[k, :, :Sr] / Sr).reshape(-1), J_all)

    Rg_new = jnp.stack([resp(k) for k in range(K)])
    return (Cg_new, Rg_new), (h, Cv, MLk, bk)


def _wide_draws(p: _WideProblem, solver: FiniteDataSolver, T1: int, key):
    t = p.trunk
    K, C, _ = t.w.shape
    D = t.T.shape[2]
    S = solver.n_draws
    Q = K * C
    k = jax.random.split(key, 6)
    x, xi, y_unif = _input_draws(k[jnp.array([0, 1, 3])], (K,), S, 2 * D, C, solver.sampling)
    # The teacher-span inputs rotate with the teacher in derivative where labels switch
    # (`_label_frame_draws`).
    frame = jax.vmap(lambda *a: _label_frame_draws(*a, solver.summed_labels(C)))
    u = frame(t.T, x[..., :D], t.scale, t.noise, t.noisy_fraction)
    zeta = jax.random.normal(k[2], (K, 2, S, Q + t.Wu0.shape[0] + 1 + T1 * Q))
    return _WideDraws(u, x[..., D:], xi, zeta, y_unif, *_geometry(p, D, k[5])), k[4]


def _geometry(p: _WideProblem, D: int, key):
    """The 2D low-dimensional directions (the teacher span E and its Π-image): Π there, and the
    initial heads' and biases' components there and Gram matrix in the bulk.

    N → ∞ (`p.geometry` None): EᵀΠE = ν I, and the initial heads and biases lie in the bulk.  At the
    experiment's own N (`p.geometry` = (N, H)): EᵀΠE = B, a draw of the compressed Haar projection
    (eigenvalues ν_i ∈ [0, 1], Wachter-distributed about H/N with spread O(√(D/N))), and the D
    directions of Π's range inside the 2D space — a Haar D-frame O_H of the trunk's H coordinates —
    hold the share Y O_H of the initial rows Y.  In B's eigenbasis (B = O diag(ν) Oᵀ) the i-th
    range direction is (√ν_i O_i, √(1 − ν_i) O_i) in (teacher-span, image) coordinates."""
    Y, _, _ = _initial_state(p.trunk)
    if p.geometry is None:
        s = jnp.sqrt(jnp.clip(p.nu * (1 - p.nu), 0.0))
        eyeD = jnp.eye(D)
        PiL = jnp.block([[p.nu * eyeD, s * eyeD], [s * eyeD, (1 - p.nu) * eyeD]])
        return PiL, jnp.zeros((Y.shape[0], 2 * D)), Y @ Y.T
    N, H = p.geometry
    k1, k2 = jax.random.split(key)
    # E = G (GᵀG)^(-1/2) with G Gaussian (N, D) is a Haar D-frame; Π = diag(1_H, 0).
    G1 = jax.random.normal(k1, (H, D))
    G2 = jax.random.normal(k2, (N - H, D))
    A = G1.T @ G1 + G2.T @ G2
    ea, va = jnp.linalg.eigh(A)
    Aih = (va / jnp.sqrt(ea)) @ va.T
    nu, O = jnp.linalg.eigh(Aih @ G1.T @ G1 @ Aih)
    nu = jnp.clip(nu, 0.0, 1.0)
    sq = jnp.sqrt(nu * (1 - nu))
    PiL = jnp.block([[(O * nu) @ O.T, (O * sq) @ O.T], [(O * sq) @ O.T, (O * (1 - nu)) @ O.T]])
    # (H, D), orthonormal columns; where H < D, the D − H null eigenvalues have no range direction.
    OH = jnp.where(nu > 1e-6, G1 @ Aih @ O / jnp.sqrt(jnp.maximum(nu, 1e-6)), 0.0)
    a = Y @ OH
    low0 = jnp.concatenate([(a * jnp.sqrt(nu)) @ O.T, (a * jnp.sqrt(1 - nu)) @ O.T], 1)
    return PiL, low0, Y @ Y.T - a @ a.T


def solve_wide(p: _WideProblem, solver: FiniteDataSolver, n_grid: int, *, key):
    """Solve the width-proportional DMFT and evaluate every task.

    **Returns:** (train_loss, test_loss, test_acc) each (T+1, K), residual (), iterations ()."""
    t = p.trunk
    K, C, _ = t.w.shape
    D = t.T.shape[2]
    T1 = n_grid + 1
    d, eval_key = _wide_draws(p, solver, T1, key)

    def iterate(params, z):
        pp, dd = params
        ys, weights = _trunk_labels(pp.trunk, dd, solver.summed_labels(C))
        znew, aux = _iteration(pp, dd, ys, weights, *z, solver.n_response, solver.response_control)
        return znew, (ys, weights, aux)

    zero = jnp.zeros((K, T1, C, T1, C))
    average = (solver.average_maps, lambda p_, k: _wide_draws(p_, solver, T1, k)[0])
    _, (ys, weights, (h, Cv, MLk, bk)), res, maps = solve_fixed_point(
        iterate, (solver.min_iter, solver.max_iter), solver.controls(), (p, d), (zero, zero), average, key)  # fmt: skip
    x_eval = _eval_points(eval_key, solver.n_quad_eval, D + C, solver.sampling)
    idx = jnp.arange(T1)
    test_loss, test_acc = [], []
    for k in range(K):
        # A fresh input's logits: M_E u + β + N(0, Cbar[n, n] + M_S M_Sᵀ) (`Cv` holds both).
        xk = _test_points(t.T[k], x_eval, t.scale[k], t.noise[k], t.noisy_fraction[k])
        lo, ac = _metrics_general(t.scale[k], t.noise[k], t.flip[k], t.noisy_fraction[k], t.w[k], t.T[k],
                                  MLk[k, :, :, :D], bk[k], Cv[k][idx, :, idx, :], xk)  # fmt: skip
        test_loss.append(lo), test_acc.append(ac)
    train = jnp.stack([mixture_train_loss(h[k], ys[k], weights[k]) for k in range(K)], -1)
    return train, jnp.stack(test_loss, -1), jnp.stack(test_acc, -1), res, maps


def check_wide(sc: StudentConfig, n_features: int) -> None:
    """The width-proportional theory's scope, checked before anything is solved."""
    if sc.depth < 1 or sc.activation != "linear":
        raise ValueError(f"width='proportional' needs a linear trunk (student.depth >= 1, activation='linear'), "
                         f"got depth={sc.depth}, activation={sc.activation!r}; use width='fixed' otherwise")
    if sc.init != "orthogonal":
        raise ValueError(f"width='proportional' needs student.init='orthogonal' (W W ᵀ = g² I), got {sc.init!r}")
    if sc.width > n_features:
        raise ValueError(f"width='proportional' needs student.width <= n_features, got {sc.width} > {n_features}")


def _wide_problem(tc: TeacherConfig, sc: StudentConfig, teacher: Teacher, student: Student, n_train_active,
                  rho, finite_n: bool = False) -> _WideProblem:  # fmt: skip
    """The width-proportional problem: the fixed-width trunk problem at the typical initial
    condition (the first layer's teacher overlap is O(1/√N) at initialisation and enters as zero)
    and the sizes of the two bulk populations.  N → ∞ counts N' = N − D noisy coordinates, H of them
    in Π's range.  `finite_n` (docs/dmft.md §4.4): the experiment's own N — all N coordinates noisy
    (N − H outside Π's range) and the low-dimensional geometry drawn at N (`_geometry`)."""
    N, H, D = tc.n_features, sc.width, teacher.basis.shape[0]
    n_perp = N - D
    t = _trunk_problem(tc, sc, teacher, student, n_train_active, rho, "typical")
    if finite_n:
        # Every one of the N input directions carries the training set's noise: the 2D
        # low-dimensional ones too (their signal is explicit, their noise — linear in the dynamics —
        # behaves as a bulk coordinate's of the same Π), D of them in Π's range and D outside it.
        return _WideProblem(t, jnp.asarray(H / N, float), jnp.asarray(H / n_perp, float),
                            jnp.asarray((N - H) / n_perp, float), (N, H))  # fmt: skip
    return _WideProblem(t, jnp.asarray(H / N, float), jnp.asarray(H / n_perp, float),
                        jnp.asarray(max(1.0 - H / n_perp, 0.0), float))  # fmt: skip
