"""Depth L >= 1: the DMFT of a shared linear trunk with per-task heads (docs/dmft.md §4)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, Float
from .._metrics import mixture_labels, mixture_train_loss, summed_labels
from .._student import Student, StudentConfig
from .._teacher import Teacher, TeacherConfig
from .fixed_point import solve_fixed_point
from .kernels import _causal_memory_scan, _response_sampled, _steps_padded, mean_jacobian, propagator, psd_factor
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
    `zeta` (K, S, n) standard normals of the first-layer fields (n = the columns of their
    factor, `_field_factor`: H + K (T+1) C), `y_unif` (K, S)."""

    u: Float[Array, "K S D"]
    xi: Float[Array, "K S C"]
    zeta: Float[Array, "K S n"]
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


#: Summed labels of a task are smooth in its teacher fields when every example's label carries
#: logit noise σ >= this fraction of s (the decision boundaries blurred over >= 0.25 of the unit
#: scale of the draws): `_label_frame_draws` then keeps the plain draws.
SMOOTH_NOISE_RATIO = 0.25


def _label_frame_draws(T, u, scale, noise, q, summed: bool):
    """One task's draws u (S, D) in the teacher basis, in value unchanged; in derivative w.r.t.
    the teacher subspace T either rotated with it (`_teacher_frame_draws`: the labels held, the
    change moved onto the student's fields — needed wherever labels switch discretely) or plain.

    Plain where the labels are summed (`FiniteDataSolver.labels`) and smooth in the teacher
    fields (q = 1, σ >= `SMOOTH_NOISE_RATIO` s): there the derivative of the fixed sample's
    average is exact, while the rotated estimate differs from it by Monte Carlo error (measured
    on tests/test_fit_finite.py's problem: 3–22 %), which a fit's Jacobian would carry.  The
    choice is traced (`jnp.where`), so one program serves every (q, σ, s)."""
    rot = _teacher_frame_draws(T, u)
    if not summed:
        return rot
    smooth = (q >= 1.0) & (noise >= SMOOTH_NOISE_RATIO * scale)
    return jnp.where(smooth, u, rot)


def _test_points(T, x_eval, scale, noise, q):
    """One task's test-metric points (n, D + C) with their teacher-basis part framed as the
    summed labels of the test metrics need (`_label_frame_draws`, `_quadrature_metrics`)."""
    D = T.shape[1]
    return x_eval.at[:, :D].set(_label_frame_draws(T, x_eval[:, :D], scale, noise, q, True))


def _trunk_labels(p: _TrunkProblem, d: _TrunkDraws, summed: bool):
    """Labels and weights (K, X, S): X = 3 sampled components (clean / logit-noise / uniform,
    `mixture_labels`) or X = C classes weighted by their probabilities (`summed_labels`)."""
    u = jnp.einsum("ksd,krd->ksr", d.u, p.T)
    if summed:
        return jax.vmap(summed_labels)(p.scale, p.noise, p.flip, p.noisy_fraction, p.w, u)
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


def _field_factor(p: _TrunkProblem, P0, Rv, V, Cg) -> Float[Array, "TH n"]:
    """A factor F (T1 H, H + K T1 C) of the first-layer fields' covariance, F Fᵀ = C_v:
    C_v = P0 Q0 P0ᵀ + Σ_k (ρ_k² / α_k) (R_v Ṽ_kᵀ) C_g,k (R_v Ṽ_kᵀ)ᵀ (the coordinate process driven
    by the heads' projections of the logit-space noise), so F = [P0 L_Q, (ρ_k/√α_k) R_v Ṽ_kᵀ L_k]
    with L_Q L_Qᵀ = Q0 and L_k L_kᵀ = C_g,k (`psd_factor`, jittered).

    C_v has rank <= H + K T1 C, below T1 H whenever K C < H (the paper preset: 484 of 1344):
    sampling by this factor costs S T1 H (H + K T1 C) per map instead of S (T1 H)², and needs
    no (T1 H)-sized Cholesky factor or C_v itself (docs/dmft.md §4).
    `P0` (T1, H, H), `Rv` (T1, H, T1, H), `V` (T1, K, C, H) Ṽ_k^n, `Cg` (K, T1, C, T1, C)."""
    T1, H = Rv.shape[0], Rv.shape[1]
    K, C = Cg.shape[0], Cg.shape[2]
    parts = [jnp.einsum("nhg,gj->nhj", P0, psd_factor(p.Q0)).reshape(T1 * H, H)]
    for k in range(K):
        Mk = jnp.einsum("nhmg,mcg->nhmc", Rv, V[:, k]).reshape(T1 * H, T1 * C)
        parts.append((p.rho[k] / jnp.sqrt(p.alpha[k])) * (Mk @ psd_factor(Cg[k].reshape(T1 * C, T1 * C))))
    return jnp.concatenate(parts, 1)


def _trunk_example_process(p: _TrunkProblem, d: _TrunkDraws, F, Rv, ys, weights):
    """Sampled example processes of all K tasks, coupled through the shared Ω, b1, the upper
    trunk layers (W_l, b_l), l = 2..L, and the heads.

    φ^n = χ^n − (ρ_k/α_k) Σ_{m<n} R_v[n,m] Ṽ_k^mᵀ g^m,  f_1 = Ω u + b1 + φ,
    f_l = W_l f_{l−1} + b_l,  h = V_k f_L + c_k  (Ṽ_k = V_k W_L ⋯ W_2, `_effective_heads`).
    The low-dimensional parameters move by the data-averaged gradients backpropagated through
    the linear layers, with error δ_l = (V_k W_L ⋯ W_{l+1})ᵀ g at the output of layer l.
    χ = F ζ with F (T1 H, n) a factor of the fields' covariance C_v (`_field_factor`).

    **Returns:** h (K, X, S, T1, C), G (K, X, S, T1, C) (X label components, `_trunk_labels`),
    and the trajectories (values *at* each
    step) Ω (T1, H, D), b1 (T1, H), Ṽ (T1, K, C, H), c̃ (T1, K, C)."""
    T1, H = Rv.shape[0], Rv.shape[1]
    K, S = d.u.shape[0], d.u.shape[1]
    C = p.V0.shape[1]
    X = ys.shape[1]
    Lu = p.Wu0.shape[0]  # L − 1 upper trunk layers (static)
    chi = (d.zeta @ F.T).reshape(K, S, T1, H)
    onehot = jax.nn.one_hot(ys, C)  # (K, X, S, C)
    wts = weights / S  # (K, X, S)
    mem_coef = p.rho / p.alpha

    def memory(Rn, buf, carry):
        # The memory force on the first-layer field, mem = (ρ_k/α_k) Σ_{m<n} R_v[n,m] Ṽ_k^mᵀ g^m,
        # never formed per example (H numbers each): the buffer keeps the C-dimensional errors
        # g^m, the kernel is contracted with the heads first, A_k = (ρ_k/α_k) R_v[n,·] Ṽ_k^·ᵀ
        # (H x e C), and mem enters the logits as Ṽ_k^n A_k g (C x e C by e C per example) and
        # the gradients as (Σ_s wg_s g_sᵀ) A_kᵀ (in `step`): C/H of the flops (docs/dmft.md §4).
        e = buf.shape[0] // C
        Om, b1, Wu, bu, V, c, Vtraj = carry
        Vt = _effective_heads(V, c, Wu, bu)[0]
        # Rows m >= n of Vtraj are not yet written, and R_v[n, m >= n] = 0.
        A = jnp.einsum("hmg,mkcg->khmc", Rn.reshape(H, e, H), Vtraj[:e]).reshape(K, H, e * C) * mem_coef[:, None, None]
        # All tasks' heads against all tasks' columns in one plain product, then the diagonal
        # blocks: twice the flops at K = 2 but no per-step transpose of the buffer (a batched
        # contraction over its middle axis was 1.5x slower, measured).
        full = (jnp.einsum("kch,khj->kcj", Vt, A).reshape(K * C, e * C) @ buf).reshape(K, C, K, X, S)
        h_mem = jnp.stack([full[k, :, k] for k in range(K)])  # (K, C, X, S)
        return jnp.moveaxis(h_mem, 1, -1), A, buf

    def step(carry, mem, xs):
        n, dt_n = xs
        h_mem, A, buf = mem
        Om, b1, Wu, bu, V, c, Vtraj = carry
        Vt, ct, P = _effective_heads(V, c, Wu, bu)
        Vtraj = jax.lax.dynamic_update_slice(Vtraj, Vt[None], (n, 0, 0, 0))
        # f_1 = base − mem with base = Ω u + b1 + χ^n (per example, shared by the X label
        # components); h = V_k f_L + c_k = Ṽ_k f_1 + c̃_k (no pass through the H x H layers).
        base = d.u @ Om.T + b1 + chi[:, :, n]  # (K, S, H)
        h = jnp.einsum("ksh,kch->ksc", base, Vt)[:, None] + ct[:, None, None] - h_mem  # (K, X, S, C)
        g = jax.nn.softmax(h, -1) - onehot
        row = jnp.moveaxis(g, -1, 0).reshape(C, K * X * S)
        wg = wts[..., None] * g  # (K, X, S, C)
        gsum = jnp.sum(wg, (1, 2))  # (K, C)
        # Every gradient is an error-input correlation over the examples; the inputs of the
        # upper layers are affine in f_1 (f_l = A_l f_1 + a_l), so one correlation Σ wg f_1ᵀ
        # (K, C, H) serves all layers: Σ wg f_lᵀ = (Σ wg f_1ᵀ) A_lᵀ + (Σ wg) a_lᵀ (`lin`, `off`).
        # Σ_s wg_s g_s^mᵀ per task as one product with the errors placed block-diagonally.
        blocks = (wg.reshape(K, X * S, 1, C) * jnp.eye(K)[:, None, :, None]).reshape(K * X * S, K * C)
        corr_mem = (buf @ blocks).reshape(-1, K, C)  # (e C, K, C)
        G1 = jnp.einsum("ksc,ksh->kch", jnp.sum(wg, 1), base) - jnp.einsum("jkc,khj->kch", corr_mem, A)
        lin, off, corr = jnp.eye(H), jnp.zeros(H), [G1]
        for ell in range(Lu):
            lin, off = Wu[ell] @ lin, Wu[ell] @ off + bu[ell]
            corr.append(jnp.einsum("kch,gh->kcg", G1, lin) + gsum[..., None] * off)
        Gu = jnp.einsum("kxsc,ksd->kcd", wg, d.u)
        Om_new = Om - dt_n * jnp.einsum("k,kch,kcd->hd", p.rho, Vt, Gu)
        b1_new = b1 - dt_n * jnp.einsum("k,kch,kc->h", p.rho, Vt, gsum)
        # Layer l+2 (index ell): error P[ell+1]ᵀ g at its output, input f_{l+1} (corr[ell]).
        Wu_new = jnp.stack([Wu[ell] - dt_n * jnp.einsum("k,kch,kcg->hg", p.rho, P[ell + 1], corr[ell])
                            for ell in range(Lu)]) if Lu else Wu  # fmt: skip
        bu_new = jnp.stack([bu[ell] - dt_n * jnp.einsum("k,kch,kc->h", p.rho, P[ell + 1], gsum)
                            for ell in range(Lu)]) if Lu else bu  # fmt: skip
        V_new = V - dt_n * p.rho[:, None, None] * corr[-1]
        c_new = c - dt_n * p.rho[:, None] * gsum
        return (Om_new, b1_new, Wu_new, bu_new, V_new, c_new, Vtraj), row, (h, g, Om, b1, Vt, ct)

    init = (p.Omega0, p.b10, p.Wu0, p.bu0, p.V0, p.c0, jnp.zeros((T1, K, C, H), p.V0.dtype))
    _, _, (h, G, Om, b1, Vt, ct) = _causal_memory_scan(step, init, Rv.reshape(T1, H, T1 * H), _steps_padded(p.dt), C,
                                                       K * X * S, memory=memory)
    return jnp.moveaxis(h, 0, 3), jnp.moveaxis(G, 0, 3), Om, b1, Vt, ct


def _trunk_iteration(p: _TrunkProblem, d: _TrunkDraws, ys, weights, Cg, Rg, Vz, n_response: int, control: bool = False):
    """One Picard map of the logit-space kernels (C_g, R_g) (K, T1, C, T1, C) of every task and
    the effective heads Ṽ (T1, K, C, H) -> new ones.

    The first layer's coordinate process sees the tasks only through
    R_g^H = Σ_k ρ_k Ṽ_kᵀ R_g,k Ṽ_k and C_g^H = Σ_k (ρ_k²/α_k) Ṽ_kᵀ C_g,k Ṽ_k (H-space); its
    response R_v comes from R_g^H (`propagator`), its fields are sampled by the factor of
    `_field_factor`.  The state is kept in logit space (K (T1 C)² + T1 K C H numbers, not 2 (T1 H)²),
    which also makes the implicit gradient's fixed-point iterations cheap.

    **Returns:** `(Cg', Rg', Ṽ', aux)`, aux = (h, G, Ω, b1, Ṽ, c̃, C_v[n, n] (T1, H, H))."""
    RgH = jnp.einsum("k,nkch,kncme,mkeg->nhmg", p.rho, Vz, Rg, Vz)
    Rv, P0 = propagator(RgH, p.dt)
    F = _field_factor(p, P0, Rv, Vz, Cg)
    h, G, Om, b1, V, c = _trunk_example_process(p, d, F, Rv, ys, weights)
    K, S = d.u.shape[0], d.u.shape[1]
    T1, H = Rv.shape[0], Rv.shape[1]
    wts = weights / S  # (K, X, S)
    Cg_new = jnp.einsum("kxs,kxsnc,kxsme->kncme", wts, G, G)
    Sr = n_response

    def resp(k):
        # Logit-space memory of task k: ρ_k Ṽ_k^n R_v[n,j] Ṽ_k^jᵀ.
        Rt = p.rho[k] * jnp.einsum("nch,nhjg,jeg->ncje", V[:, k], Rv, V[:, k])
        hr = h[k, :, :Sr].reshape(-1, *h.shape[3:])
        J_all = mean_jacobian(h[k].reshape(-1, *h.shape[3:]), wts[k].reshape(-1)) if control else None
        return _response_sampled(hr, Rt, p.alpha[k], (weights[k, :, :Sr] / Sr).reshape(-1), J_all)

    Rg_new = jnp.stack([resp(k) for k in range(K)])  # (K, T1, C, T1, C)
    Fr = F.reshape(T1, H, -1)
    diag = jnp.einsum("nhj,ngj->nhg", Fr, Fr)  # C_v[n, n], for the test metrics
    return Cg_new, Rg_new, V, (h, G, Om, b1, V, c, diag)


def _metrics_general(scale, noise, flip, q, w, T, M, b, Sig, x_eval):
    """Test loss and accuracy (T1,) of logits z = M u + b + N(0, Sig) with u ~ N(0, I_D), labels
    from the teacher fields T u.  `M` (T1, C, D), `b` (T1, C), `Sig` (T1, C, C), `x_eval` (n, D + C)."""
    D = M.shape[2]
    u, gz = x_eval[:, :D], x_eval[:, D:]
    clean = scale * (u @ T.T) @ w.T
    return _quadrature_metrics(clean, noise, q, flip, u, gz, M, b, Sig)


def _trunk_draws(p: _TrunkProblem, solver: FiniteDataSolver, n_noise: int, key):
    """The fixed draws of a trunk solve (inputs in the teacher frame, logit noise, `n_noise`
    standard normals per draw for the first-layer fields, uniform labels) and the key of the
    test-metric points."""
    K, C, _ = p.V0.shape
    S = solver.n_draws
    k = jax.random.split(key, 5)
    u, xi, y_unif = _input_draws(k[jnp.array([0, 1, 3])], (K,), S, p.T.shape[2], C, solver.sampling)
    frame = jax.vmap(lambda *a: _label_frame_draws(*a, solver.summed_labels(C)))
    d = _TrunkDraws(frame(p.T, u, p.scale, p.noise, p.noisy_fraction), xi, jax.random.normal(k[2], (K, S, n_noise)), y_unif)
    return d, k[4]


def solve_trunk(p: _TrunkProblem, solver: "FiniteDataSolver", n_grid: int, *, key):
    """Solve the trunk DMFT (L >= 1; fixed point in the first-layer kernels) and evaluate every task.

    **Returns:** (train_loss, test_loss, test_acc) each (T+1, K), residual (), iterations ()."""
    K, C, H = p.V0.shape
    D = p.T.shape[2]
    T1 = n_grid + 1
    summed = solver.summed_labels(C)
    # H + K (T+1) C columns of the fields' factor (`_field_factor`).
    d, eval_key = _trunk_draws(p, solver, H + K * T1 * C, key)

    def iterate(params, z):
        pp, dd = params
        ys, weights = _trunk_labels(pp, dd, summed)
        Cg, Rg, Vz, aux = _trunk_iteration(pp, dd, ys, weights, *z, solver.n_response, solver.response_control)
        return (Cg, Rg, Vz), (ys, weights, aux)

    # Start: no logit-space noise or memory (C_v = Q0 at every time pair, free response).
    zero = jnp.zeros((K, T1, C, T1, C))
    z0 = (zero, zero, jnp.broadcast_to(p.V0[None], (T1, K, C, H)))
    ctrl = solver.controls()
    average = (solver.average_maps, lambda p_, k: _trunk_draws(p_, solver, H + K * T1 * C, k)[0])
    _, (ys, weights, traj), res, maps = solve_fixed_point(iterate, (solver.min_iter, solver.max_iter), ctrl, (p, d), z0, average, key)
    h, G, Om, b1, V, c, diag = traj
    x_eval = _eval_points(eval_key, solver.n_quad_eval, D + C, solver.sampling)
    test_loss, test_acc = [], []
    for kk in range(K):
        Vk = V[:, kk]
        M = jnp.einsum("nch,nhd->ncd", Vk, Om)
        b = jnp.einsum("nch,nh->nc", Vk, b1) + c[:, kk]
        Sig = jnp.einsum("nch,nhg,neg->nce", Vk, diag, Vk)
        xk = _test_points(p.T[kk], x_eval, p.scale[kk], p.noise[kk], p.noisy_fraction[kk])
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
