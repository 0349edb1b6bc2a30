"""Where the relu trunk's DMFT curve jumps at small α: the per-draw example map near the kink.

Run: python benchmarks/dmft_kink.py [--alpha 0.5] [--r 1] [--sb 3] [--eps 0.2] [--width 4]
         [--runs 12:2048:0 12:2048:1 12:4096:0 8:2048:0] [--median-of-means 8] [--from 10]
         [--out docs/results/dmft_kink.txt]
Output: docs/results/dmft_kink.txt (docs/dmft.md §6.1, "relu trunk, H = 4").

Setting: a point of `benchmarks/finite_data_accuracy.py`'s relu grid (N = 400, C = R = 4, s_a = 3,
σ = 0.5, lr 0.5, 40 full-batch GD steps, depth 1, summed labels, 4 x 4096 draws).  Each run
`β:response draws:draw seed` solves the DMFT of the softplus(β x)/β network and prints, at every
grid time from `--from` on, at its fixed point (next to the relu network's curve, 8 datasets):

- the test loss of task 1 and tr C_H[n, n] (the example errors' covariance),
- tr C_v[n, n] = tr (P_0 Q_0 P_0ᵀ)[n, n] + tr (R_v C_H R_vᵀ)[n, n] (the field of a fresh example:
  the initial-condition part and the memory part separately),
- Σ_{m<n} |R_H[n, m]| (the memory blocks of the response, Frobenius norms summed),
- the example map's stability: one draw's step pre^{n+1} ≈ pre^n − c Δ δ(pre^n) + … (c = ρ/α,
  the memory term's coefficient at lag 1, where R_v[n+1, n] = Δ I) has the Jacobian
  I − c Δ J^n, J^n = ∂δ^n/∂pre^n, so a draw whose c Δ λ(J^n) leaves (0, 2) is locally expanding.
  Printed: the weighted fraction of draws with c Δ λ_max > 2 and the smallest c Δ λ_min (negative:
  the curvature b_i φ_β''(pre_i) of a unit near its kink whose backpropagated error b_i < 0, where
  the draw's map expands by 1 − c Δ λ_min per step);
- how the response draws make up the memory blocks: task 1's response draws split into 32 groups
  (`_response` of each group, weighted as in the full estimate), the median and the largest
  group's Σ_{m<n} |R_H[n, m]| — a heavy tail shows as one group far above the median.

`--median-of-means G` solves the first run once more with the response estimated as the
elementwise median of G groups' estimates (robust to the tail; biased by the part of the mean the
tail carries).
"""

from __future__ import annotations

import argparse
import contextlib
import time

import jax
import jax.numpy as jnp
import numpy as np

import mtjax
import mtjax._finite.nonlinear as nonlinear_module
from mtjax._finite.kernels import _response, propagator
from mtjax._finite.nonlinear import _example_process, _field_factor_h, nonlinear_fixed_point
from mtjax._finite.trunk import _trunk_draws, _trunk_labels

from _report import Report
from dmft_late_curve import STEPS, nonlinear_problem
from finite_data_accuracy import experiment_trunk
from relu_surrogate import simulate

GROUPS = 32  # groups of response draws for the heavy-tail columns


def group_estimates(h, Rv, alpha, wts, groups, n_response, jacobian=None):
    """The response (`kernels._response`) estimated from each of `groups` groups of the response
    draws alone, scaled to the whole mass: (groups, T1, H, T1, H).  `h`, `wts`: the draws of
    every label component, (component, draw) flattened as `_response_sampled` gets them; every
    group takes draws of every component, so each group's estimate is one of the whole mean."""
    hg = h.reshape(-1, groups, n_response // groups, *h.shape[1:])
    wg = wts.reshape(-1, groups, n_response // groups) * groups
    ident = (lambda j: j) if jacobian is None else jacobian
    return jax.lax.map(lambda g: _response(hg[:, g].reshape(-1, *h.shape[1:]), Rv, alpha, wg[:, g].reshape(-1), jacobian=ident),
                       jnp.arange(groups))


@contextlib.contextmanager
def median_of_means(groups, n_response):
    """The response estimated as the elementwise median over `groups` groups of the response
    draws (each group's estimate scaled to the whole mass) in place of their mean: robust to a
    heavy tail, and biased wherever the tail carries part of the mean.  For the duration of one
    traced call (every compiled program released before and after: `mtjax.release_compiled`, the
    theories' own cache included)."""
    old = nonlinear_module._response_sampled

    def estimate(h, Rv, alpha, wts, J_all, jacobian=None):
        return jnp.median(group_estimates(h, Rv, alpha, wts, groups, n_response, jacobian), 0)

    mtjax.release_compiled()
    nonlinear_module._response_sampled = estimate
    try:
        yield
    finally:
        nonlinear_module._response_sampled = old
        mtjax.release_compiled()


def diagnose(e, solver, width):
    """Per grid time (T1,) arrays at the fixed point of `e`'s multitask solve (see the module)."""
    pn = nonlinear_problem(e, solver)
    T1, H = STEPS + 1, width
    lags = jnp.tril(jnp.ones((T1, T1)), -1)  # the memory blocks m < n

    @jax.jit
    def run():
        key = jax.random.key(solver.seed)
        (CH, RH), _, res, maps, _ = nonlinear_fixed_point(pn, solver, STEPS, key=key)
        p = pn.trunk
        # The fixed point's own example process again (same key: the same draws), with every
        # draw's Hessian J^n kept for the stability column.
        d, _ = _trunk_draws(p, solver, H + T1 * H, key)
        ys, weights = _trunk_labels(p, d, solver.summed_labels(p.V0.shape[1]))
        Rv, P0 = propagator(RH, p.dt)
        F = _field_factor_h(p.Q0, P0, Rv, CH)
        _, _, J, *_ = _example_process(pn, d, F, Rv, ys, weights, d.u.shape[1], solver.relu_sharpness)
        # Task 1's response draws in GROUPS groups: each group's share of the memory blocks, as
        # the estimate sums them (its own estimate / GROUPS).
        Sr = solver.n_response
        each = group_estimates(J[0, :, :Sr].reshape(-1, T1, H, H), p.rho[0] * Rv, p.alpha[0],
                               (weights[0, :, :Sr] / Sr).reshape(-1), GROUPS, Sr)
        shares = jnp.einsum("nm,gnm->gn", lags, jnp.sqrt(jnp.einsum("gnhmk->gnm", each**2))) / GROUPS  # (GROUPS, T1)
        first = jnp.einsum("nhg,gj,nhj->n", P0, p.Q0, P0)
        memory = jnp.einsum("nhmg,mgji,nhji->n", Rv, CH, Rv)
        mem_blocks = jnp.einsum("nm,nm->n", lags, jnp.sqrt(jnp.einsum("nhmg->nm", RH**2)))
        eig = jnp.linalg.eigvalsh(0.5 * (J + jnp.swapaxes(J, -1, -2)))  # (K, X, S, T1, H)
        cdt = (p.rho / p.alpha)[:, None, None, None] * p.dt[0]
        w = weights / jnp.sum(weights, (1, 2), keepdims=True) / weights.shape[0]
        unstable = jnp.einsum("kxs,kxsn->n", w, (cdt * eig[..., -1] > 2).astype(w.dtype))
        lowest = jnp.min(cdt * eig[..., 0], (0, 1, 2))
        return (jnp.einsum("nhnh->n", CH), first, memory, mem_blocks, unstable, lowest, jnp.median(shares, 0),
                jnp.max(shares, 0), res, maps)

    return [np.asarray(a) for a in run()]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--r", type=float, default=1.0)
    ap.add_argument("--sb", type=float, default=3.0)
    ap.add_argument("--eps", type=float, default=0.2)
    ap.add_argument("--width", type=int, default=4)
    ap.add_argument("--runs", nargs="*", default=["12:2048:0", "12:2048:1", "12:4096:0", "8:2048:0"],
                    help="β:response draws:draw seed of each solve (response draws <= 4096, the draws per component)")
    ap.add_argument("--median-of-means", type=int, default=0, metavar="G",
                    help="also solve the first run with the response as the median over G groups of its draws")
    ap.add_argument("--from", dest="start", type=float, default=10.0, help="first time printed")
    ap.add_argument("--out", default="docs/results/dmft_kink.txt")
    args = ap.parse_args()
    runs = []
    for spec in args.runs:
        beta, resp, seed = spec.split(":")
        if not (float(beta) > 0 and 0 < int(resp) <= 4096 and int(seed) >= 0):
            raise SystemExit(f"--runs {spec}: need β > 0, 0 < response draws <= 4096, seed >= 0 (e.g. 12:2048:0)")
        runs.append((float(beta), int(resp), int(seed)))
    if args.median_of_means > 1 and runs[0][1] % args.median_of_means:
        raise SystemExit(f"--median-of-means {args.median_of_means}: must divide the first run's response draws ({runs[0][1]})")
    t_start = time.time()
    rep = Report()
    rep(f"# relu trunk, width {args.width}, depth 1: N = 400, C = R = 4, s_a = 3, s_b = {args.sb}, r = {args.r}, eps = {args.eps}, "
        f"alpha = {args.alpha}, sigma = 0.5, lr 0.5, {STEPS} full-batch GD steps; DMFT of softplus(beta x)/beta, summed labels, "
        "4 x 4096 draws, tol 0.02")
    rep("# C_v = (P0 Q0 P0^T) + (Rv C_H Rv^T): traces at [n, n]; |R_H mem| = sum over m < n of |R_H[n, m]|; "
        "unst = weighted fraction of draws with c dt lambda_max(J^n) > 2; min = smallest c dt lambda_min(J^n); "
        f"grp med / max = median / largest over {GROUPS} groups of task 1's response draws of the group's sum over m < n of |R_H[n, m]|")
    e = experiment_trunk(400, 4, args.width, args.alpha, args.r, args.sb, args.eps, STEPS, 0.5, 10000, False, 1, 3.0, "relu")
    ns = 8
    seeds = mtjax.Seeds(jnp.zeros(ns, int), jnp.arange(1, ns + 1), jnp.zeros(ns, int), jnp.arange(1, ns + 1))
    sim = simulate(e, seeds, ns, None)[-1]  # the relu network's task-1 test-loss curve, mean over 8 datasets
    variants = [(run, 0) for run in runs] + ([(runs[0], args.median_of_means)] if args.median_of_means > 1 else [])
    for (beta, resp, seed), groups in variants:
        solver = mtjax.FiniteDataSolver(n_grid=STEPS, n_draws=4096, n_response=resp, tol=2e-2, labels="summed",
                                        seed=seed, relu_sharpness=beta)
        t0 = time.time()
        with median_of_means(groups, resp) if groups else contextlib.nullcontext():
            th = mtjax.finite_data_theory(e, mtjax.Seeds(0), solver=solver)
            ch, first, memory, mem, unstable, lowest, g_med, g_max, res, maps = diagnose(e, solver, args.width)
        loss = np.asarray(th.test_loss[:, 0])
        how = f", response as the median over {groups} groups" if groups else ""
        rep(f"\n## beta {beta:g}, response draws 4 x {resp}, draw seed {seed}{how}: residual {float(res):.1e}, {int(maps)} maps, "
            f"{time.time() - t0:.0f} s; largest |theory - relu sim| / relu sim from t = 0: {np.max(np.abs(loss - sim) / sim):.1%}")
        rep(f"{'t':>5} {'relu sim':>8} {'loss':>6} {'trC_H':>7} {'C_v: P0Q0P0':>12} {'RvC_HRv':>8} {'|R_H mem|':>9} {'unst':>6} {'min':>6} {'grp med':>8} {'grp max':>8}")
        for n in range(int(round(args.start / 0.5)), STEPS + 1):
            rep(f"{0.5 * n:5.1f} {sim[n]:8.3f} {loss[n]:6.3f} {ch[n]:7.4f} {first[n]:12.3f} {memory[n]:8.3f} {mem[n]:9.3f} "
                f"{unstable[n]:6.4f} {lowest[n]:6.2f} {g_med[n]:8.4f} {g_max[n]:8.4f}")
    rep(f"\ntime: {time.time() - t_start:.0f} s (2 shared CPU cores, incl. compilation)")
    rep.write(args.out)


if __name__ == "__main__":
    main()
