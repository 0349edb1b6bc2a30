"""Depth 0: the DMFT of one task's softmax layer — its reduced problem, the sampled example
process, one Picard map of (C_g, R_g), the test metrics and the solve (docs/dmft.md §§1–3)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, Float, Int
from .._gaussian import cholesky
from .._metrics import expected_metrics, label_distribution, mixture_labels, mixture_train_loss, summed_labels
from .._student import Student
from .._teacher import Teacher
from .fixed_point import solve_fixed_point
from .kernels import _causal_memory_scan, _response_sampled, _steps_padded, mean_jacobian, psd_factor, weight_process
from .sampling import _eval_points, _input_draws
from .solver import FiniteDataSolver


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


def _labels(p: _Problem, d: _Draws, summed: bool):
    """Labels and weights (X, S) of the draws: X = 3 sampled components (`mixture_labels`) or
    X = C classes with weights π (`summed_labels`)."""
    if summed:
        return summed_labels(p.scale, p.noise, p.flip, p.noisy_fraction, p.w, d.u)
    return mixture_labels(p.scale, p.noise, p.flip, p.noisy_fraction, p.w, d.u, d.xi, d.y_unif)


def _example_process(p: _Problem, d: _Draws, Cv, Rv, ys, weights):
    """Run the sampled example process for every draw and label component.

    **Returns:** `(h, g, M, b)`: fields and gradients (X, S, T+1, C) (X label components,
    `_labels`), and M^n (T+1, C, R), b^n (T+1, C)."""
    T1, C = Cv.shape[0], Cv.shape[1]
    S = d.u.shape[0]
    X = ys.shape[0]
    Lc = psd_factor(Cv.reshape(T1 * C, T1 * C))
    chi = (d.zeta @ Lc.T).reshape(S, T1, C)
    onehot = jax.nn.one_hot(ys, C)  # (X, S, C)
    wts = weights / S  # (X, S)

    def step(carry, mem, xs):
        n, dt_n = xs
        M, b = carry
        mem = jnp.moveaxis(mem.reshape(C, X, S), 0, -1) / p.alpha  # Σ_{m<n} R_v[n,m] g^m, (X, S, C)
        h = d.u @ M.T + b + chi[:, n] - mem
        g = jax.nn.softmax(h, -1) - onehot
        M_new = M - dt_n * jnp.einsum("xs,xsc,sr->cr", wts, g, d.u)
        b_new = b - dt_n * jnp.einsum("xs,xsc->c", wts, g)
        return (M_new, b_new), jnp.moveaxis(g, -1, 0).reshape(C, X * S), (h, M, b)

    _, buf, (h, M, b) = _causal_memory_scan(step, (p.M0, p.b0), Rv.reshape(T1, C, T1 * C), _steps_padded(p.dt), C, X * S)
    G = jnp.transpose(buf.reshape(T1, C, X, S), (2, 3, 0, 1))
    return jnp.moveaxis(h, 0, 2), G, M, b


def _iteration(p: _Problem, d: _Draws, ys, weights, Cg, Rg, n_response: int, control: bool = False):
    """One Picard map (C_g, R_g) -> (C_g', R_g') plus the trajectories it implies."""
    Cv, Rv = weight_process(Rg, Cg, p.Q0, p.alpha, p.dt)
    h, G, M, b = _example_process(p, d, Cv, Rv, ys, weights)
    S = d.u.shape[0]
    wts = weights / S
    Cg_new = jnp.einsum("xs,xsnc,xsme->ncme", wts, G, G)
    # Response on a subset of the draws (its cost is T³C³ per draw).
    Sr = n_response
    hr = h[:, :Sr].reshape(-1, *h.shape[2:])
    wr = (weights[:, :Sr] / Sr).reshape(-1)
    J_all = mean_jacobian(h.reshape(-1, *h.shape[2:]), wts.reshape(-1)) if control else None
    Rg_new = _response_sampled(hr, Rv, p.alpha, wr, J_all)
    return Cg_new, Rg_new, (Cv, Rv, h, G, M, b)


def _test_metrics(p: _Problem, Cv, M, b, x_eval):
    """Test loss and accuracy at every grid time: a fresh example has field M^n u + b^n + v,
    v ~ N(0, Cv[n, n]) independent of u (it never entered training).  Quadrature over (u, v),
    the label averaged given u exactly (`_quadrature_metrics`).

    `x_eval`: (n, R + C) standard normals. **Returns:** (loss, acc), each (T+1,)."""
    R = p.w.shape[1]
    u, gz = x_eval[:, :R], x_eval[:, R:]
    clean = p.scale * u @ p.w.T
    T1 = Cv.shape[0]
    diag = Cv[jnp.arange(T1), :, jnp.arange(T1), :]
    return _quadrature_metrics(clean, p.noise, p.noisy_fraction, p.flip, u, gz, M, b, diag)


def _quadrature_metrics(clean, noise, q, flip, u, gz, M, b, Sig):
    """Test loss and accuracy (T1,) of logits z = M^n u + b^n + L^n g, L^n L^nᵀ = Sig^n, at the
    quadrature points `u` (n, D) and `gz` (n, C), with the label given the clean teacher logits
    `clean` (n, C) averaged exactly (`label_distribution`: no sampled labels, so the estimate is
    smooth in the points, s, σ, ε and q, and the quasi-random points keep their rate; with one
    sampled logit-noise label per point the spread over draw seeds at 8192 points was 0.04 nats
    on a test loss of 3.7, docs/dmft.md §3).  `M` (T1, C, D), `b` (T1, C), `Sig` (T1, C, C)."""
    pi = label_distribution(clean, noise, flip, q)

    def one(Mn, bn, Sn):
        return expected_metrics(u @ Mn.T + bn + gz @ cholesky(Sn).T, pi)

    return jax.lax.map(lambda a: one(*a), (M, b, Sig))


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
    summed = solver.summed_labels(C)
    k = jax.random.split(key, 5)

    def draws(kk):
        u, xi, y_unif = _input_draws(kk[jnp.array([0, 1, 3])], (), S, R, C, solver.sampling)
        return _Draws(u, xi, jax.random.normal(kk[2], (S, T1 * C)), y_unif)

    d = draws(k)

    def iterate(params, z):
        pp, dd = params
        ys, weights = _labels(pp, dd, summed)
        Cg, Rg, aux = _iteration(pp, dd, ys, weights, *z, solver.n_response, solver.response_control)
        return (Cg, Rg), (ys, weights, aux)

    z0 = (jnp.zeros((T1, C, T1, C)), jnp.zeros((T1, C, T1, C)))
    ctrl = solver.controls()
    average = (solver.average_maps, lambda _, kk: draws(jax.random.split(kk, 5)))
    _, (ys, weights, (Cv, Rv, h, G, M, b)), res, maps = solve_fixed_point(
        iterate, (solver.min_iter, solver.max_iter), ctrl, (p, d), z0, average, key)  # fmt: skip
    x_eval = _eval_points(k[4], solver.n_quad_eval, R + C, solver.sampling)
    test_loss, test_acc = _test_metrics(p, Cv, M, b, x_eval)
    train_loss = mixture_train_loss(h, ys, weights)
    return _Solution(train_loss, test_loss, test_acc, M, b, res, maps)


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
