"""Depth L >= 1: the DMFT of a shared linear trunk with per-task heads (docs/dmft.md §4)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, Float
from .._metrics import mixture_labels, mixture_train_loss
from .._student import Student, StudentConfig
from .._teacher import Teacher, TeacherConfig
from .fixed_point import solve_fixed_point
from .kernels import _causal_memory_scan, _response, _steps_padded, psd_factor, weight_process
from .sampling import _eval_points, _input_draws
from .single import _quadrature_metrics
from .solver import FiniteDataSolver


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
    return jax.vmap(mixture_labels)(p.scale, p.noise, p.flip, p.noisy_fraction, p.w, u, d.xi, d.y_unif)


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

    def memory(Rn, buf, carry):
        # Σ_{m<n} R_v[n,m] Ṽ_k^mᵀ g^m (the first-layer forces of earlier steps), (K, 3, S, H):
        # the buffer keeps the C-dimensional errors g^m, not the H-dimensional forces Ṽ^mᵀ g^m,
        # and the kernel is contracted with the heads first, A_k[n,m] = R_v[n,m] Ṽ_k^mᵀ (H x C):
        # C/H of the flops of a force buffer (the paper preset: 10/64; docs/dmft.md §3).
        e = buf.shape[0] // C
        Vtraj = carry[-1][:e]  # (e, K, C, H); rows m >= n are not yet written, and R_v[n, m>=n] = 0
        A = jnp.einsum("hmg,mkcg->khmc", Rn.reshape(H, e, H), Vtraj)
        mem = jnp.einsum("khmc,mcks->khs", A, buf.reshape(e, C, K, 3 * S))
        return jnp.moveaxis(mem.reshape(K, H, 3, S), 1, -1) * mem_coef[:, None, None, None]

    def step(carry, mem, xs):
        n, dt_n = xs
        Om, b1, Wu, bu, V, c, Vtraj = carry
        Vt, ct, P = _effective_heads(V, c, Wu, bu)
        Vtraj = jax.lax.dynamic_update_slice(Vtraj, Vt[None], (n, 0, 0, 0))
        f = (d.u @ Om.T)[:, None] + b1 + chi[:, None, :, n] - mem  # (K, 3, S, H)
        fs = [f]
        for ell in range(Lu):
            fs.append(fs[-1] @ Wu[ell].T + bu[ell])
        h = jnp.einsum("kxsh,kch->kxsc", fs[-1], V) + c[:, None, None]
        g = jax.nn.softmax(h, -1) - onehot
        row = jnp.moveaxis(g, -1, 0).reshape(C, K * 3 * S)
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
        return (Om_new, b1_new, Wu_new, bu_new, V_new, c_new, Vtraj), row, (h, g, Om, b1, Vt, ct)

    init = (p.Omega0, p.b10, p.Wu0, p.bu0, p.V0, p.c0, jnp.zeros((T1, K, C, H), p.V0.dtype))
    _, _, (h, G, Om, b1, Vt, ct) = _causal_memory_scan(step, init, Rv.reshape(T1, H, T1 * H), _steps_padded(p.dt), C,
                                                       K * 3 * S, memory=memory)
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
    return _quadrature_metrics(clean, noise, q, flip, u, xi, gz, M, b, Sig)


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

    def iterate(params, z):
        pp, dd = params
        ys, weights = _trunk_labels(pp, dd)
        Cv, Rv, aux = _trunk_iteration(pp, dd, ys, weights, *z, solver.n_response)
        return (Cv, Rv), (ys, weights, aux)

    Cv0 = jnp.broadcast_to(p.Q0[None, :, None, :], (T1, H, T1, H))
    z0 = (Cv0, jnp.zeros((T1, H, T1, H)))
    ctrl = (solver.damping, solver.tol)
    (Cv, _), (ys, weights, traj), res, maps = solve_fixed_point(iterate, solver.max_iter, ctrl, (p, d), z0)
    h, G, Om, b1, V, c = traj
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
    train = jnp.stack([mixture_train_loss(h[kk], ys[kk], weights[kk]) for kk in range(K)], -1)
    return train, jnp.stack(test_loss, -1), jnp.stack(test_acc, -1), res, maps


def _trunk_problem(tc: TeacherConfig, sc: StudentConfig, teacher: Teacher, student: Student, n_train_active, rho,
                   initial: str) -> _TrunkProblem:  # fmt: skip
    """The trunk problem (L >= 1): teacher arrays, task rates ρ_k, α_k = P_k / (N − K R), initial
    state; `dt` is left to `_solve_grid`.

    Only the first layer is high-dimensional; its teacher-span part Ω and complement Gram matrix
    Q0 are quenched (the student's) or typical (Ω = 0, Q0 = init_scale² I).  The upper layers
    W_2..W_L (H x H), all biases and the heads are the student's own in both cases."""
    from .._teacher import teacher_coefficients

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
