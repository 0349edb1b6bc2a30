"""The relu trunk's DMFT surrogate: how far the softplus(β x)/β network is from relu, and where
the finite-data theory of it converges.

Run: python benchmarks/relu_surrogate.py [--betas 8 12 16 20] [--theory-seeds 2] [--response 512] [--out FILE]
         [--width 8] [--alpha 2] [--r 1] [--sb 3] [--eps 0]   (--theory-seeds 0: the simulations only)
Output: docs/results/relu_surrogate.txt

relu'' = δ(x) cannot be sampled by the DMFT's per-draw Hessians, so `finite_data_theory` solves
the network with φ_β(x) = softplus(β x)/β (`FiniteDataSolver.relu_sharpness`, docs/dmft.md §4.2)
and evaluates its test metrics with relu.  Two errors follow, measured here side by side in one
setting (by default N = 400, C = R = 4, H = 8, depth 1, r = 1, s_a = s_b = 3, σ = 0.5, α = 2,
full-batch GD at lr 0.5 for 40 steps, one teacher and initial student, 16 datasets; H, α, r,
s_b and ε are options):

- the surrogate's: the simulated φ_β network against the simulated relu network;
- the theory's: the DMFT at β (draws 3 x 4096, response draws 3 x 512, several draw seeds)
  against the simulated relu network, with its convergence flag and Picard maps.

The simulations of φ_β put the surrogate in place of relu in the student's activation table for
the duration of one call traced afresh (compilation caches cleared; the student has no softplus
activation of its own).
"""

from __future__ import annotations

import argparse
import contextlib
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import mtjax
import mtjax._student as student_module
from mtjax._finite.nonlinear import dmft_activation

from _report import Report
from finite_data_accuracy import experiment_trunk


@contextlib.contextmanager
def relu_replaced_by(fn):
    old = student_module.ACTIVATIONS["relu"]
    student_module.ACTIVATIONS["relu"] = fn
    try:
        yield
    finally:
        student_module.ACTIVATIONS["relu"] = old


def simulate(e, seeds, ns, beta):
    """Early-stopped and final task-1 test loss (mean, s.e. over datasets), test-loss curve (T,)."""
    batch = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (ns,) + a.shape), e)
    act = jax.nn.relu if beta is None else dmft_activation("relu", beta)
    # The compiled programs of mtjax's own jitted functions are cached by argument shapes, not by
    # the activation table: cleared before and after, the patched activation is the one traced.
    jax.clear_caches()
    with relu_replaced_by(act):
        h = eqx.filter_jit(lambda b, s: mtjax.simulate_batch(b, s))(batch, seeds)
    jax.clear_caches()
    te = np.asarray(h.test_loss[:, :, 0])
    es = te.min(1)
    se = lambda a: a.std(ddof=1) / np.sqrt(len(a))
    return es.mean(), se(es), te[:, -1].mean(), se(te[:, -1]), te.mean(0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--betas", type=float, nargs="*", default=[8.0, 12.0, 16.0, 20.0])
    ap.add_argument("--theory-seeds", type=int, default=2)
    ap.add_argument("--datasets", type=int, default=16)
    ap.add_argument("--draws", type=int, default=4096)
    ap.add_argument("--response", type=int, default=512)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=2.0)
    ap.add_argument("--r", type=float, default=1.0)
    ap.add_argument("--sb", type=float, default=3.0)
    ap.add_argument("--eps", type=float, default=0.0)
    ap.add_argument("--out", default="docs/results/relu_surrogate.txt")
    args = ap.parse_args()
    t_start = time.time()
    ns = args.datasets
    e = experiment_trunk(400, 4, args.width, args.alpha, args.r, args.sb, args.eps, 40, 0.5, 10000, False, 1, 3.0, "relu")
    seeds = mtjax.Seeds(jnp.zeros(ns, int), jnp.arange(1, ns + 1), jnp.zeros(ns, int), jnp.arange(1, ns + 1))
    rep = Report()
    rep(f"# relu trunk vs its softplus(beta x)/beta surrogate: N = 400, C = R = 4, H = {args.width}, depth 1, r = {args.r}, "
        f"s_a = 3, s_b = {args.sb}, eps = {args.eps}, sigma = 0.5, alpha = {args.alpha}, lr 0.5, 40 steps, {ns} datasets")
    rep(f"# theory: finite_data_theory, draws 3 x {args.draws}, response draws 3 x {args.response}, tol 0.02, "
             f"draw seeds 0..{args.theory_seeds - 1}; ES = early-stopped task-1 test loss, rel = vs the relu simulation")
    relu = simulate(e, seeds, ns, None)
    rep(f"relu network (simulation): ES {relu[0]:.4f} ± {relu[1]:.4f}, final {relu[2]:.4f} ± {relu[3]:.4f}")
    rep(f"{'beta':>5} | {'sim ES':>15} {'rel':>6} {'sim final':>9} | {'theory ES per seed':>26} {'mean':>7} {'rel':>6} | "
             f"{'final':>7} {'curve':>6} | {'converged':>9} {'maps':>9} {'s/solve':>7}")
    for beta in args.betas:
        sim = simulate(e, seeds, ns, beta)
        es, fin, conv, maps, curve, dt = [], [], [], [], [], []
        for seed in range(args.theory_seeds):
            solver = mtjax.FiniteDataSolver(n_grid=40, n_draws=args.draws, n_response=args.response, tol=2e-2,
                                            relu_sharpness=beta, seed=seed)
            t0 = time.time()
            th = mtjax.finite_data_theory(e, mtjax.Seeds(0), solver=solver)
            tl = np.asarray(th.test_loss[:, 0])
            dt.append(time.time() - t0)
            es.append(tl.min()), fin.append(tl[-1]), conv.append(bool(th.converged)), maps.append(int(th.iterations[0]))
            curve.append(np.max(np.abs(tl - relu[4]) / relu[4]))
        ok = [i for i, c in enumerate(conv) if c]
        mean_es = np.mean([es[i] for i in ok]) if ok else np.nan
        if not args.theory_seeds:
            rep(f"{beta:5.1f} | {sim[0]:7.4f}±{sim[1]:6.4f} {100 * (sim[0] / relu[0] - 1):+5.1f}% {sim[2]:9.4f} |")
            continue
        rep(f"{beta:5.1f} | {sim[0]:7.4f}±{sim[1]:6.4f} {100 * (sim[0] / relu[0] - 1):+5.1f}% {sim[2]:9.4f} | "
                 f"{' '.join(f'{x:8.4f}' for x in es):>26} {mean_es:7.4f} {100 * (mean_es / relu[0] - 1):+5.1f}% | "
                 f"{np.mean(fin):7.4f} {100 * np.median(curve):5.1f}% | {sum(conv):>4}/{len(conv):<4} "
                 f"{','.join(map(str, maps)):>9} {np.mean(dt[1:] if len(dt) > 1 else dt):7.0f}")
    rep("theory mean and rel over the converged seeds only; curve = median over seeds of the largest relative deviation "
             "of the theory's test-loss curve from the relu simulation's")
    rep(f"time: {time.time() - t_start:.0f} s (2 shared CPU cores, incl. compilation)")
    rep.write(args.out)


if __name__ == "__main__":
    main()
