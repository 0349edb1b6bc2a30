"""The averaging maps of a relu-trunk DMFT solve, one by one: how one heavy-tailed map blows the
average up, and what the step clip (`FiniteDataSolver.average_clip`) does to it.

Run: python benchmarks/dmft_average_trace.py [--width 8] [--alpha 0.5] [--r 1] [--sb 0.5] [--eps 0]
         [--clip inf 1] [--maps 40] [--out docs/results/dmft_average_trace.txt]
Output: a table per clip κ (docs/dmft.md §3, "Averaged fixed point").

Setting: a relu trunk point of `benchmarks/finite_data_accuracy.py` (N = 400, C = R = 4, s_a = 3,
σ = 0.5, lr 0.5, 40 full-batch GD steps, depth 1, 4096 draws, 512 response draws, tol 0.02, the
solver's default labels).  The multitask solve's Picard fixed point z_0 of draw seed 0, then the
averaging maps of `FiniteDataSolver(average_maps=M, average_clip=κ)` as
`fixed_point._averaged_fixed_point` runs them (the same keys, its step `averaging_step`), printed per map j:

- d_C, d_R: the map's relative pull max|F − z_j| / max|z_j| on the error covariance C_H and the
  response R_H, and the step weight w_j = min(1, κ / max(d_C, d_R));
- max_h,g |R_H[n, ·, ·, ·]| of the map's own output at n = t / Δ for t in `--times`;
- the task-1 test loss of that map's curve at those times.

Then the reported curve (one more map at z_M with the solve's own draws, as the solver reports)
next to the simulations' (mean over 8 datasets), and its largest relative deviation.
"""

from __future__ import annotations

import argparse
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import mtjax
from mtjax._finite.fixed_point import averaging_step
from mtjax._finite.nonlinear import nonlinear_fixed_point, picard_map, task_metrics
from mtjax._finite.trunk import _trunk_draws

from _report import Report
from dmft_late_curve import STEPS, nonlinear_problem
from finite_data_accuracy import experiment_trunk


def _maps(pn, solver, plain, kappa: float, idx):
    """Jitted pieces of one averaged solve of `pn` by `solver`: the fixed point of `plain` (the
    same solver without averaging), one averaging map, the reported test-loss curve (task 1)."""
    p = pn.trunk
    H = p.V0.shape[2]
    T1 = STEPS + 1

    def iterate(dd, z):  # the solver's own map: new kernels and the trajectories (aux)
        new, (_, _, aux) = picard_map(pn, dd, solver, z)
        return new, aux

    def curve(aux, eval_key):  # task 1's test loss, as `solve_nonlinear_trunk` reports it
        return task_metrics(pn, solver, aux, eval_key)[0][:, 0]

    @jax.jit
    def start(key):  # the plain fixed point z_0 (the averaging maps follow, one call each)
        z, *_, eval_key = nonlinear_fixed_point(pn, plain, STEPS, key=key)
        return z, eval_key

    @jax.jit
    def step(z, j, key, eval_key):
        Fz, aux = iterate(_trunk_draws(p, solver, H + T1 * H, jax.random.fold_in(key, j + 1))[0], z)
        z, d, w = averaging_step(z, Fz, j, kappa)
        return z, d, w, jnp.max(jnp.abs(Fz[1][idx]), (1, 2, 3)), curve(aux, eval_key)[idx]

    @jax.jit
    def report(z, key, eval_key):
        own = _trunk_draws(p, solver, H + T1 * H, key)[0]
        return curve(iterate(own, z)[1], eval_key)

    return start, step, report


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--r", type=float, default=1.0)
    ap.add_argument("--sb", type=float, default=0.5)
    ap.add_argument("--eps", type=float, default=0.0)
    ap.add_argument("--clip", type=float, nargs="*", default=[np.inf, 1.0])
    ap.add_argument("--maps", type=int, default=40)
    ap.add_argument("--times", type=float, nargs="*", default=[8, 10, 11, 12, 13, 15, 20])
    ap.add_argument("--out", default="docs/results/dmft_average_trace.txt")
    args = ap.parse_args()

    lr = 0.5
    e = experiment_trunk(400, 4, args.width, args.alpha, args.r, args.sb, args.eps, STEPS, lr, 10000, False, 1, 3.0, "relu")
    idx = np.array([int(round(t / lr)) for t in args.times])
    rep = Report()
    rep(f"# relu trunk, width {args.width}: N = 400, C = R = 4, s_a = 3, s_b = {args.sb}, r = {args.r}, eps = {args.eps}, "
             f"alpha = {args.alpha}, lr {lr}, {STEPS} GD steps; draws 4096, response draws 512, tol 0.02, seed 0, {args.maps} averaging maps")
    rep("# d_C, d_R: the map's pull max|F - z| / max|z| on C_H, R_H; w: its step weight min(1, clip / max d); "
             "|R|: max |R_H[n]| of the map's output; loss: the map's task-1 test loss")
    seeds = mtjax.Seeds(jnp.zeros(8, int), jnp.arange(1, 9), jnp.zeros(8, int), jnp.arange(1, 9))
    batch = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (8,) + a.shape), e)
    sim = np.asarray(eqx.filter_jit(mtjax.simulate_batch)(batch, seeds).test_loss[:, :, 0]).mean(0)
    times = " ".join(f"{t:>6g}" for t in args.times)
    for kappa in args.clip:
        common = dict(n_grid=STEPS, n_draws=4096, n_response=512, tol=2e-2)
        solver = mtjax.FiniteDataSolver(**common, average_maps=args.maps, average_clip=kappa)
        pn = nonlinear_problem(e, solver)
        start, step, report = _maps(pn, solver, mtjax.FiniteDataSolver(**common), kappa, idx)
        key = jax.random.key(0)
        t0 = time.time()
        z, eval_key = start(key)
        rep(f"\n## clip {kappa:g}\n   j    d_C    d_R      w |  max|R_H[n]| at t = {times} |  loss at t = {times}")
        for j in range(args.maps):
            z, d, w, rmax, loss = step(z, j, key, eval_key)
            rep(f"{j:4d} {float(d[0]):6.3f} {float(d[1]):6.2f} {float(w):6.3f} |  "
                     + " ".join(f"{v:6.2f}" for v in np.asarray(rmax)) + "       |  "
                     + " ".join(f"{v:6.3f}" for v in np.asarray(loss)))
        th = np.asarray(report(z, key, eval_key))
        dev = np.abs(th - sim) / sim
        rep(f"reported curve at t = {times}: " + " ".join(f"{v:6.3f}" for v in th[idx]))
        rep(f"simulation (8 datasets)  {times}: " + " ".join(f"{v:6.3f}" for v in sim[idx]))
        rep(f"largest deviation along the curve: {100 * dev.max():.1f}% at t = {lr * int(np.argmax(dev)):g}; "
                 f"{time.time() - t0:.0f} s")
    rep.write(args.out)


if __name__ == "__main__":
    main()
