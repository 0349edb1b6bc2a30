"""Depth L >= 1 with a nonlinear trunk: the DMFT of the first layer's preactivations
(docs/dmft.md §4.2).

Student: pre = W x + b_1 (H), f_1 = φ(pre), f_l = φ(W_l f_{l−1} + b_l), logits h = V_k f_L + c_k.
As for the linear trunk only W has an N-dimensional index; W = Ω E + V_⊥ with V_⊥ the DMFT
variable, and Ω, b_1, the upper layers and the heads self-average.  The example process now
lives in the H-dimensional preactivation (the logits are no longer an affine map of it):

    pre^n = Ω^n u + b_1^n + χ^n − (ρ_k/α_k) Σ_{m<n} R_v[n,m] δ^m,     δ = ∂CE(h(pre), y)/∂pre,
    coordinate:  v^{n+1} = v^n − Δ Σ_{m<=n} R_H[n,m] v^m + Δ η^n,
                 R_H = Σ_k ρ_k E_k[∂δ^n/∂ε^m],   η ~ N(0, Σ_k (ρ_k²/α_k) E_k[δ^n δ^mᵀ]),

the H-space form of §4 with the backpropagated error δ of the nonlinear network in place of
Ṽ_kᵀ g.  The fixed point is iterated on (C_H, R_H) (2 (T+1)² H² numbers).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, Float
from .._metrics import mixture_train_loss
from .._metrics import expected_metrics
from .._population_nonlinear import label_probabilities
from .._student import ACTIVATIONS
from .fixed_point import solve_fixed_point
from .kernels import _causal_memory_scan, _response_sampled, _steps_padded, _time_blocks, propagator, psd_factor
from .sampling import _eval_points
from .solver import FiniteDataSolver
from .trunk import _teacher_frame_draws, _trunk_draws, _trunk_labels, _TrunkDraws, _TrunkProblem


class _NonlinearProblem(eqx.Module):
    """A `_TrunkProblem` whose trunk applies the elementwise `activation` (static; one of
    `theory.FINITE_DATA_ACTIVATIONS`) after every layer.  The example process differentiates
    `dmft_activation(activation, β)`: the activation itself where it is smooth (the per-draw
    Hessians are exact), softplus(β x)/β for relu, β = `FiniteDataSolver.relu_sharpness`."""

    trunk: _TrunkProblem
    activation: str = eqx.field(static=True)


def dmft_activation(activation: str, sharpness: float):
    """The trunk nonlinearity φ of the example process.

    relu's second derivative is δ(x): the per-draw Hessian ∂δ/∂pre, whose draw average is the
    response, would be zero almost surely and miss the density term E[δ(pre) …] entirely
    (measured: −6.6 % on the early-stopped loss), while a kernel estimate of the density made
    the fixed point unstable.  The DMFT is therefore that of the network with
    φ_β(x) = softplus(β x)/β, which tends to relu as β → ∞ (|φ_β − relu| <= log 2 / β); its
    φ_β'' = β σ(βx)(1 − σ(βx)) is the smooth density of width ~1/β that the draws resolve.
    Measured (docs/dmft.md §4.2): the simulated φ_12 network's early-stopped loss is 1.0 % (α = 2)
    and 1.9 % (α = 8) below the relu network's."""
    if activation == "relu":
        return lambda x: jax.nn.softplus(sharpness * x) / sharpness
    return ACTIVATIONS[activation]


def _forward(act, pre, Wu, bu, V, c):
    """Logits (..., C) of one task's head from first-layer preactivations `pre` (..., H): the
    layers of `Student.features` after the first matrix (elementwise `act`), on stacked arrays."""
    f = act(pre)
    for ell in range(Wu.shape[0]):
        f = act(f @ Wu[ell].T + bu[ell])
    return f @ V.T + c


def _ce(activation, pre, y, Wu, bu, V, c):
    z = _forward(activation, pre, Wu, bu, V, c)
    return jax.nn.logsumexp(z, -1) - jnp.take_along_axis(z, y[..., None], -1)[..., 0], z


def _error(act, pre, y, Wu, bu, V, c):
    """Per-draw errors δ = ∂CE/∂pre (..., H) of one head (`V` (C, H), `c` (C,)) at
    preactivations `pre` (..., H) with labels `y` (...)."""
    return jax.grad(lambda q: jnp.sum(_ce(act, q, y, Wu, bu, V, c)[0]))(pre)


def _response_difference(act, pre, ys, wts, traj, Rv, coef, step: float, budget: int = 2**24, sub: int = 4):
    """The memory blocks Γ[n, ·, m, ·] (m < n) of one task's response by central differences of
    each draw's example process: kick the preactivation of draw s at time m by ±ε e_j, run the
    process on (memory term included, the low-dimensional variables held at their trajectories:
    one example does not move them), and average (δ_+^n − δ_−^n)/2ε over the draws.

    Unlike the Hessian chain (`kernels._response`) this sees a kink of φ at the scale ε (relu's
    jump of φ' is a finite difference, not a density), and a kicked draw stays a solution of the
    process: its difference is bounded by the range of δ over 2ε, where a chain of Jacobians
    near a kink grows geometrically (docs/dmft.md §4.2).  Bias O(ε²) in the smooth mean response.

    `act`: φ; `pre`: base preactivations (T1, X, Sr, H); `ys`, `wts`: labels and weights (X, Sr),
    the weights summing to the draws' mass; `traj`: (Wu, bu, V, c) of this task at each grid time
    (V (T1, C, H), c (T1, C)); `Rv` (T1, H, T1, H); `coef` = ρ_k/α_k.  Kicks run by time blocks
    (`kernels._time_blocks`): those of block [lo, hi) from time lo on (a kick moves nothing
    earlier), the 2 (hi − lo) H kicked copies of a chunk of draws one batch; `budget` bounds a
    chunk's history (floats).  The memory term runs by sub-blocks of `sub` times (static): the
    history before a sub-block enters all its times in one matrix product, that of the sub-block's
    own earlier times step by step — the history is read once per sub-block, not once per time
    (`sub=1` is the plain recurrence; 4 and 8 run 1.4–1.7x faster than it at H = 4 and 8 on
    2 shared cores, docs/results/dmft_response_speed.txt).
    **Returns:** Γ (T1, H, T1, H), its diagonal blocks Γ[n, ·, n, ·] from the response draws."""
    T1, X, Sr, H = pre.shape
    pre = pre.reshape(T1, X * Sr, H)
    ys, wts = ys.reshape(-1), wts.reshape(-1)
    n_draws = X * Sr
    Wu, bu, V, c = traj

    G = jnp.zeros((T1, T1, H, H), pre.dtype)  # [n, m, j, h]
    for lo, hi in zip(_time_blocks(T1)[:-1], _time_blocks(T1)[1:]):
        P, W = 2 * (hi - lo) * H, T1 - lo  # kicks, times they see
        # Kick p = (sign, m, j): +ε e_j at time lo + m for p < P/2, −ε e_j for the rest.
        m_of = lo + jnp.tile(jnp.repeat(jnp.arange(hi - lo), H), 2)
        kick = step * jnp.repeat(jnp.array([1.0, -1.0]), P // 2)[:, None] * jnp.tile(jnp.eye(H), (2 * (hi - lo), 1))
        chunk = max(1, min(n_draws, budget // (P * W * H)))
        n_chunks = -(-n_draws // chunk)
        pad = n_chunks * chunk - n_draws
        # Padded draws have weight 0.
        args = (jnp.pad(pre[lo:], ((0, 0), (0, pad), (0, 0))).reshape(W, n_chunks, chunk, H).transpose(1, 0, 2, 3),
                jnp.pad(ys, (0, pad)).reshape(n_chunks, chunk), jnp.pad(wts, (0, pad)).reshape(n_chunks, chunk))  # fmt: skip

        def one_chunk(args, lo=lo, P=P, W=W, m_of=m_of, kick=kick):
            pre_c, y_c, w_c = args  # (W, B, H), (B,), (B,)
            B = pre_c.shape[1]
            n_sub = -(-W // sub)
            Wp = n_sub * sub
            # Times past the grid (padding to whole sub-blocks) run on zeros; their outputs are dropped.
            pre_p = jnp.pad(pre_c, ((0, Wp - W), (0, 0), (0, 0)))
            R_w = jnp.pad(Rv[lo:, :, lo:], ((0, Wp - W), (0, 0), (0, Wp - W), (0, 0)))  # (Wp, H, Wp, H)

            def sub_block(hist, k):
                # hist (P, B, Wp, H): δ of the kicked copies minus the base δ at the times before
                # this sub-block (zero from it on).  The memory from those times enters every time
                # of the sub-block at once, one matrix product of depth Wp·H and width sub·H: the
                # history is read once per sub-block, not once per time.
                i0 = k * sub
                far = jnp.einsum("nhmg,pbmg->npbh", jax.lax.dynamic_slice_in_dim(R_w, i0, sub, 0), hist)
                R_near = jax.lax.dynamic_slice(R_w, (i0, 0, i0, 0), (sub, H, sub, H))
                pre_k = jax.lax.dynamic_slice_in_dim(pre_p, i0, sub, 0)

                def body(near, j):
                    # near (P, B, sub, H): the differences at the sub-block's earlier times.
                    n = lo + i0 + j
                    mem = far[j] + jnp.einsum("hmg,pbmg->pbh", R_near[j], near)
                    q = pre_k[j][None] + jnp.where((m_of == n)[:, None], kick, 0.0)[:, None, :] - coef * mem
                    at_n = jax.tree_util.tree_map(lambda a: a[jnp.minimum(n, T1 - 1)], (Wu, bu, V, c))
                    # The base δ is recomputed here rather than taken from the forward process, so
                    # that a copy not yet kicked differs from it by exactly 0.
                    diff = jax.vmap(lambda qq: _error(act, qq, y_c, *at_n))(q) - _error(act, pre_k[j], y_c, *at_n)[None]
                    near = jax.lax.dynamic_update_slice(near, diff[:, :, None, :], (0, 0, j, 0))
                    return near, jnp.einsum("b,pbh->ph", w_c, diff)

                near, out = jax.lax.scan(body, jnp.zeros((P, B, sub, H), pre_c.dtype), jnp.arange(sub))
                return jax.lax.dynamic_update_slice(hist, near, (0, 0, i0, 0)), out

            hist0 = jnp.zeros((P, B, Wp, H), pre_c.dtype)
            return jax.lax.scan(sub_block, hist0, jnp.arange(n_sub))[1].reshape(Wp, P, H)[:W]  # (W, P, H)

        out = jnp.sum(jax.lax.map(one_chunk, args), 0)
        Gb = (out[:, : P // 2] - out[:, P // 2 :]) / (2 * step)  # (W, (m, j), h)
        G = G.at[lo:, lo:hi].set(Gb.reshape(W, hi - lo, H, H))
    return jnp.moveaxis(G, 3, 1)  # Γ[n, h, m, j]


def _field_factor_h(Q0, P0, Rv, CH) -> Float[Array, "TH n"]:
    """F (T1 H, H + T1 H) with F Fᵀ = C_v = P0 Q0 P0ᵀ + R_v C_H R_vᵀ (jittered factors)."""
    T1, H = Rv.shape[0], Rv.shape[1]
    first = jnp.einsum("nhg,gj->nhj", P0, psd_factor(Q0)).reshape(T1 * H, H)
    second = Rv.reshape(T1 * H, T1 * H) @ psd_factor(CH.reshape(T1 * H, T1 * H))
    return jnp.concatenate([first, second], 1)


def _example_process(pn: _NonlinearProblem, d: _TrunkDraws, F, Rv, ys, weights, n_response: int, sharpness: float,
                     response: str = "pathwise", eps: float = 0.05):
    """Sampled example processes of all K tasks (X label components each, `_trunk_labels`).

    **Returns:** logits h (K, X, S, T1, C), errors δ (K, X, S, T1, H), the Jacobians
    ∂δ/∂pre of the first `n_response` draws of each component (K, X, Sr, T1, H, H) — with
    `response="pathwise"` the Hessians of the loss, with `"difference"` central differences
    (δ(pre + ε e_j) − δ(pre − ε e_j)) / 2ε, ε = `eps` — their weighted mean over all draws
    (T1, K, H, H), the trajectories of Ω, b_1, W_l, b_l, V, c (values at each grid time), and
    with `"difference"` the preactivations of the first `n_response` draws (T1, K, X, Sr, H)
    (None with `"pathwise"`)."""
    p, act = pn.trunk, dmft_activation(pn.activation, sharpness)
    T1, H = Rv.shape[0], Rv.shape[1]
    K, S = d.u.shape[0], d.u.shape[1]
    X = ys.shape[1]
    Sr = n_response
    chi = (d.zeta @ F.T).reshape(K, S, T1, H)
    wts = weights / S  # (K, X, S)
    coef = p.rho / p.alpha

    def step(carry, mem, xs):
        n, dt_n = xs
        Om, b1, Wu, bu, V, c = carry
        base = d.u @ Om.T + b1 + chi[:, :, n]  # (K, S, H)
        pre = base[:, None] - jnp.moveaxis(mem.reshape(H, K, X, S), 0, -1)  # (K, X, S, H)
        def ce_all(pre, Wu, bu, V, c):
            out = [_ce(act, pre[k], ys[k], Wu, bu, V[k], c[k]) for k in range(K)]
            return jnp.stack([o[0] for o in out]), jnp.stack([o[1] for o in out])

        (_, h), vjp = jax.vjp(lambda *a: ce_all(*a), pre, Wu, bu, V, c)
        zero_h = jnp.zeros_like(h)
        delta = vjp((jnp.ones((K, X, S)), zero_h))[0]  # per-draw ∂CE/∂pre (K, X, S, H)
        wdelta, gWu, gbu, gV, gc = vjp((p.rho[:, None, None] * wts, zero_h))  # ρ_k-weighted gradients
        Om_new = Om - dt_n * jnp.einsum("kxsh,ksd->hd", wdelta, d.u)
        b1_new = b1 - dt_n * jnp.sum(wdelta, (0, 1, 2))
        new = (Om_new, b1_new, Wu - dt_n * gWu, bu - dt_n * gbu, V - dt_n * gV, c - dt_n * gc)
        # Hessians ∂δ/∂pre of every draw: their weighted mean is
        # the response's diagonal block E[J^n] (from all draws: its sampling error, unlike that
        # of the memory blocks, does not fall with α, and it biases the coordinate process's
        # covariance, docs/dmft.md §4.2); the first n_response draws also carry the memory blocks.
        if response == "pathwise":
            hess = jax.vmap(jax.vmap(jax.vmap(jax.hessian(lambda q, y, k: _ce(act, q, y, Wu, bu, V[k], c[k])[0]),
                                              (0, 0, None)), (0, 0, None)), (0, 0, 0))  # fmt: skip
            J = hess(pre, ys, jnp.arange(K))  # (K, X, S, H, H)
        else:
            # δ at pre ± ε e_j, j = 0..H−1 (2H extra forward-and-backward passes): column j of J.
            kicks = eps * jnp.concatenate([jnp.eye(H), -jnp.eye(H)])  # (2H, H)
            dk = jnp.stack([jax.vmap(lambda e, k=k: _error(act, pre[k] + e, ys[k], Wu, bu, V[k], c[k]), out_axes=-1)(kicks)
                            for k in range(K)])  # (K, X, S, H, 2H)  # fmt: skip
            J = (dk[..., :H] - dk[..., H:]) / (2 * eps)
        Jbar = jnp.einsum("kxs,kxshg->khg", wts, J)
        row = jnp.moveaxis(coef[:, None, None, None] * delta, -1, 0).reshape(H, K * X * S)
        pre_r = pre[:, :, :Sr] if response == "difference" else None
        return new, row, (h, delta, J[:, :, :Sr], Jbar, Om, b1, Wu, bu, V, c, pre_r)

    init = (p.Omega0, p.b10, p.Wu0, p.bu0, p.V0, p.c0)
    _, _, outs = _causal_memory_scan(step, init, Rv.reshape(T1, H, T1 * H), _steps_padded(p.dt), H, K * X * S)
    h, delta, J = (jnp.moveaxis(o, 0, 3) for o in outs[:3])
    return h, delta, J, outs[3], outs[4:10], outs[10]


def _iteration(pn: _NonlinearProblem, d: _TrunkDraws, ys, weights, CH, RH, n_response: int, sharpness: float,
               control: bool = False, response: str = "pathwise", step: float = 0.05):
    """One Picard map (C_H, R_H) -> new ones (both (T1, H, T1, H)); aux = (h, Ω, b_1, W_l, b_l, V,
    c trajectories, C_v[n, n] (T1, H, H)).  `response`, `step`: `FiniteDataSolver.response`,
    `response_step`."""
    p = pn.trunk
    Rv, P0 = propagator(RH, p.dt)
    F = _field_factor_h(p.Q0, P0, Rv, CH)
    out = _example_process(pn, d, F, Rv, ys, weights, n_response, sharpness, response, step)
    h, delta, J, Jbar, traj = out[:5]
    K, S = d.u.shape[0], d.u.shape[1]
    T1, H = Rv.shape[0], Rv.shape[1]
    wts = weights / S
    Cd = jnp.einsum("kxs,kxsnh,kxsmg->knhmg", wts, delta, delta)
    CH_new = jnp.einsum("k,knhmg->nhmg", p.rho**2 / p.alpha, Cd)
    Sr = n_response

    diag = jnp.eye(T1)[:, None, :, None]

    def resp_difference(k):
        _, _, Wu, bu, V, c = traj
        pre_k = out[5][:, k]  # (T1, X, Sr, H)
        G = _response_difference(dmft_activation(pn.activation, sharpness), pre_k, ys[k, :, :Sr], weights[k, :, :Sr] / Sr,
                                 (Wu, bu, V[:, k], c[:, k]), Rv, p.rho[k] / p.alpha[k], step)  # fmt: skip
        return G * (1 - diag) + diag * Jbar[:, k][:, :, None, :]

    def resp(k):
        if response == "difference":
            return resp_difference(k)
        Jk = J[k].reshape(-1, T1, H, H)
        # the all-draw mean Hessian (`_example_process`) is the control variate's mean
        J_all = Jbar[:, k] / jnp.sum(wts[k]) if control else None
        G = _response_sampled(Jk, p.rho[k] * Rv, p.alpha[k], (weights[k, :, :Sr] / Sr).reshape(-1), J_all, jacobian=lambda j: j)
        # Diagonal blocks Γ[n, n] = E[J^n] from every draw (`_example_process`).
        return G * (1 - diag) + diag * Jbar[:, k][:, :, None, :]

    RH_new = sum(p.rho[k] * resp(k) for k in range(K))
    Fr = F.reshape(T1, H, -1)
    Cvd = jnp.einsum("nhj,ngj->nhg", Fr, Fr)
    return CH_new, RH_new, (h, *traj, Cvd)


def picard_map(pn: _NonlinearProblem, d: _TrunkDraws, solver: FiniteDataSolver, z):
    """One Picard map of the nonlinear trunk DMFT on draws `d`: z = (C_H, R_H) -> ((C_H, R_H)
    new, (ys, weights, aux)), aux as in `_iteration`."""
    ys, weights = _trunk_labels(pn.trunk, d, solver.summed_labels(pn.trunk.V0.shape[1]))
    CH, RH, aux = _iteration(pn, d, ys, weights, *z, solver.n_response, solver.relu_sharpness, solver.response_control,
                             solver.response, solver.response_step)  # fmt: skip
    return (CH, RH), (ys, weights, aux)


def nonlinear_fixed_point(pn: _NonlinearProblem, solver: FiniteDataSolver, n_grid: int, *, key):
    """The fixed point of the nonlinear trunk DMFT (no test metrics).

    **Returns:** `((C_H, R_H), (ys, weights, aux), residual, iterations, eval_key)`, aux as in
    `_iteration`: the kernels are returned for diagnostics (`benchmarks/dmft_late_curve.py`)."""
    p = pn.trunk
    K, C, H = p.V0.shape
    T1 = n_grid + 1
    d, eval_key = _trunk_draws(p, solver, H + T1 * H, key)  # columns of `_field_factor_h`

    def iterate(params, z):
        return picard_map(*params, solver, z)

    zero = jnp.zeros((T1, H, T1, H))
    ctrl = solver.controls()
    # Fresh draws for `solver.average_maps` (the same construction under other keys).
    average = (solver.average_maps, lambda pn_, k: _trunk_draws(pn_.trunk, solver, H + T1 * H, k)[0])
    z, out, res, maps = solve_fixed_point(iterate, (solver.min_iter, solver.max_iter), ctrl, (pn, d), (zero, zero), average, key)
    return z, out, res, maps, eval_key


def solve_nonlinear_trunk(pn: _NonlinearProblem, solver: FiniteDataSolver, n_grid: int, *, key):
    """Solve the nonlinear trunk DMFT and evaluate every task.

    **Returns:** (train_loss, test_loss, test_acc) each (T+1, K), residual (), iterations ()."""
    _, (ys, weights, aux), res, maps, eval_key = nonlinear_fixed_point(pn, solver, n_grid, key=key)
    test_loss, test_acc = task_metrics(pn, solver, aux, eval_key)
    h, K = aux[0], pn.trunk.V0.shape[0]
    train = jnp.stack([mixture_train_loss(h[kk], ys[kk], weights[kk]) for kk in range(K)], -1)
    return train, test_loss, test_acc, res, maps


def task_metrics(pn: _NonlinearProblem, solver: FiniteDataSolver, aux, eval_key):
    """Test loss and accuracy of every task, (T+1, K) each, from a map's `aux` (`_iteration`:
    the trajectories of Ω, b_1, W_l, b_l, V, c and C_v[n, n]) on `solver.n_quad_eval` points
    of `eval_key`."""
    # The test metrics are Gaussian integrals of the network itself (no derivative of φ is
    # sampled): relu is evaluated as relu on the surrogate's order parameters.
    p, act = pn.trunk, ACTIVATIONS[pn.activation]
    K, C, H = p.V0.shape
    D = p.T.shape[2]
    _, Om, b1, Wu, bu, V, c, diag = aux
    x_eval = _eval_points(eval_key, solver.n_quad_eval, D + H, solver.sampling)
    test_loss, test_acc = [], []
    for kk in range(K):
        ue = _teacher_frame_draws(p.T[kk], x_eval[:, :D])
        gz = x_eval[:, D:]
        # The teacher fields T_k ue do not move with r in derivative (`_teacher_frame_draws`): held
        # constant exactly, or their rounding-level tangent meets 1/σ in π at σ = 0 (NaN).
        fields = jax.lax.stop_gradient(ue @ p.T[kk].T)
        pi = label_probabilities(fields, p.w[kk], p.scale[kk], p.noise[kk], p.flip[kk], p.noisy_fraction[kk])

        def at(args, kk=kk, ue=ue, gz=gz, pi=pi):
            Om_n, b1_n, Wu_n, bu_n, V_n, c_n, Sig = args
            pre = ue @ Om_n.T + b1_n + gz @ psd_factor(Sig, jitter=1e-6).T
            z = _forward(act, pre, Wu_n, bu_n, V_n[kk], c_n[kk])
            return expected_metrics(z, pi)

        lo, ac = jax.lax.map(at, (Om, b1, Wu, bu, V, c, diag))
        test_loss.append(lo), test_acc.append(ac)
    return jnp.stack(test_loss, -1), jnp.stack(test_acc, -1)
