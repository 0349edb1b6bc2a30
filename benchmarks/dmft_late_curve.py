"""The end of a nonlinear-trunk DMFT curve at small α: how the response draws decide it.

Run: python benchmarks/dmft_late_curve.py [--width 4] [--alpha 0.5] [--r 1] [--sb 0.5] [--eps 0.2]
         [--response 512 2048] [--labels summed sampled] [--control off on] [--n 200 400 800 1600]
         [--out docs/results/dmft_late_curve.txt]
Output: a table (docs/dmft.md §6.1, "relu trunk, H = 4").

Setting: a relu trunk point of `benchmarks/finite_data_accuracy.py` (N = 400, C = R = 4, s_a = 3,
σ = 0.5, lr 0.5, 40 full-batch GD steps, depth 1, width `--width`).  Prints

- the relu network's test loss at t = 9, 10, ..., 20 (mean ± s.e. over 8 datasets) at every N of
  `--n` (the N → ∞ limit the theory describes; 4 x 4096 draws make the theory's own spread small),
- the DMFT's test loss at the same times for every (labels, response draws, response control
  variate: `FiniteDataSolver(response_control=)`) combination, one draw seed,
  with its residual, Picard maps and seconds per map, and the example error covariance
  tr C_H[n, n] and coordinate variance tr C_v[n, n] at the last grid points (where a blow-up of
  the causal solution shows first; the residual, relative to the largest kernel entry, does not
  see it).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

import mtjax
from mtjax._finite.nonlinear import nonlinear_fixed_point
from mtjax._finite.theory import _problem

from _report import Report
from finite_data_accuracy import experiment_trunk
from relu_surrogate import simulate

STEPS = 40
SHOW = slice(18, STEPS + 1, 2)  # grid indices of t = 9, 10, ..., 20 (Δ = 0.5)


def nonlinear_problem(e, solver):
    """The problem `finite_data_theory` solves for `e` on `solver`'s grid of STEPS GD steps, for
    calling `nonlinear_fixed_point` (whose kernels `finite_data_theory` keeps internal)."""
    pn = _problem(e, mtjax.Seeds(0), None, "quenched")
    _, dt = solver.time_grid(STEPS * float(e.train.learning_rate))
    return dataclasses.replace(pn, trunk=dataclasses.replace(pn.trunk, dt=dt))


def kernels(e, solver):
    """(tr C_H[n, n], tr C_v[n, n]) (T+1,) each at the fixed point of the solve of `e`."""
    pn = nonlinear_problem(e, solver)

    @jax.jit
    def run():
        (CH, _), (_, _, aux), *_ = nonlinear_fixed_point(pn, solver, STEPS, key=jax.random.key(solver.seed))
        return jnp.einsum("nhnh->n", CH), jnp.trace(aux[-1], axis1=1, axis2=2)

    return (np.asarray(a) for a in run())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=4)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--r", type=float, default=1.0)
    ap.add_argument("--sb", type=float, default=0.5)
    ap.add_argument("--eps", type=float, default=0.2)
    ap.add_argument("--response", type=int, nargs="*", default=[512, 2048])
    ap.add_argument("--labels", nargs="*", default=["summed", "sampled"])
    ap.add_argument("--control", nargs="*", choices=["off", "on"], default=["off"],
                    help="the response's control variate (FiniteDataSolver(response_control=)) off and/or on")
    ap.add_argument("--n", type=int, nargs="*", default=[200, 400, 800, 1600])
    ap.add_argument("--out", default="docs/results/dmft_late_curve.txt")
    args = ap.parse_args()
    t_start = time.time()
    rep = Report()
    rep(f"# relu trunk, width {args.width}, depth 1: N = 400 (theory), C = R = 4, s_a = 3, s_b = {args.sb}, r = {args.r}, "
        f"eps = {args.eps}, alpha = {args.alpha}, sigma = 0.5, lr 0.5, {STEPS} full-batch GD steps")
    times = np.arange(STEPS + 1)[SHOW] * 0.5
    rep(f"{'':>34} | " + " ".join(f"{t:6.1f}" for t in times))
    ns = 8
    seeds = mtjax.Seeds(jnp.zeros(ns, int), jnp.arange(1, ns + 1), jnp.zeros(ns, int), jnp.arange(1, ns + 1))
    for N in args.n:
        e = experiment_trunk(N, 4, args.width, args.alpha, args.r, args.sb, args.eps, STEPS, 0.5, 10000, False, 1, 3.0, "relu")
        _, _, _, final_se, curve = simulate(e, seeds, ns, None)
        rep(f"{f'relu network, N = {N}':>34} | " + " ".join(f"{v:6.3f}" for v in curve[SHOW])
            + f"   (s.e. at t = 20: {final_se:.3f})")
    e = experiment_trunk(400, 4, args.width, args.alpha, args.r, args.sb, args.eps, STEPS, 0.5, 10000, False, 1, 3.0, "relu")
    last = slice(STEPS - 4, STEPS + 1)
    for labels, resp, control in ((lab, n, c) for lab in args.labels for n in args.response for c in args.control):
        solver = mtjax.FiniteDataSolver(n_grid=STEPS, n_draws=4096, n_response=resp, tol=2e-2, labels=labels,
                                        response_control=control == "on")
        mtjax.finite_data_theory(e, mtjax.Seeds(0), solver=solver)  # compile
        t0 = time.time()
        th = mtjax.finite_data_theory(e, mtjax.Seeds(0), solver=solver)
        tl = np.asarray(th.test_loss[:, 0])
        dt = time.time() - t0
        maps = int(th.iterations[0])
        ch, cv = kernels(e, solver)
        name = f"DMFT, {labels}, {resp} resp.{', CV' if control == 'on' else ''}"
        rep(f"{name:>34} | " + " ".join(f"{v:6.3f}" for v in tl[SHOW])
            + f"   residual {float(th.residual[0]):.1e}, {maps} maps, {dt / maps:.1f} s/map; last 5 points: "
            f"tr C_H {' '.join(f'{v:.3f}' for v in ch[last])}, tr C_v {' '.join(f'{v:.1f}' for v in cv[last])}")
    rep(f"time: {time.time() - t_start:.0f} s (2 shared CPU cores, incl. compilation)")
    rep.write(args.out)


if __name__ == "__main__":
    main()
