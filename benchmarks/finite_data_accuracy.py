"""Finite-data theory (DMFT) vs full-batch GD simulations, point by point.

Run: python benchmarks/finite_data_accuracy.py [--seeds 8] [--n 400] [--steps 40] [--lr 0.5]
     python benchmarks/finite_data_accuracy.py --depth 1 --tol 2e-2   (multitask, linear trunk)
     python benchmarks/finite_data_accuracy.py --depth 2 --tol 2e-2 --sb 3   (two trunk layers)
Output: docs/results/finite_data_accuracy.txt, docs/results/finite_data_accuracy_trunk.txt,
        docs/results/finite_data_accuracy_depth2.txt

Depth 1 (`--depth 1`): two tasks, shared linear layer of width 8, heads per task; alpha in {1, 4}
x r in {0, 1} x s_b in {0.5, 3}, s_a = 3, eps = 0.2 on both tasks; per point the task-1
early-stopped loss of multitask training and the multitask benefit (single-task minus multitask
early-stopped loss, >0 = multitask helps), simulation (mean ± s.e. over seeds) vs theory.
Depth 2 (`--depth 2`): the same with two linear trunk layers of width 8 (W_2 orthogonal, H x H);
`--sb` restricts s_b.

Covered (what the theory supports so far): depth L = 0 (linear softmax), single task — with
L = 0 the K heads share no parameter, so multitask training is K independent problems and the
multitask benefit is exactly 0 in theory and simulation alike; it is not tabulated.
Grid: alpha = P / (N - R) in {0.5, 1, 2, 4, 8} x s in {0.5, 3} x eps in {0, 0.2}; N = 400,
C = R = 4, logit noise sigma = 0.5 on every example (q = 1), orthogonal init (gain 1), zero bias,
full-batch GD at lr 0.5 for 40 steps (t = 20), evaluated every step.  Teacher and initial student
are one realisation (seed 0), the seeds draw the datasets (and test sets of 10 000 examples); the
theory uses the same initial overlaps ("quenched"), grid Δ = lr (so it describes the same GD).
Per point: early-stopped test loss (sim mean ± s.e. vs theory), the time of the minimum, the final
test loss, and the largest relative deviation along the whole test-loss curve.
"""

from __future__ import annotations

import argparse
import itertools
import os
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import mtjax


def experiment(n, R, alpha, s, eps, steps, lr, n_test):
    P = int(round(alpha * (n - R)))
    spec = {
        "teacher": {"n_features": n, "rank": R, "n_classes": R, "scale": [s, s], "noise": 0.5, "flip": eps},
        "student": {"depth": 0, "bias_init": "zeros"},
        "train": {"protocol": "full_batch", "n_train": [P, P], "n_test": n_test, "n_steps": steps, "eval_every": 1,
                  "learning_rate": lr, "single_task": True},
    }
    return mtjax.experiment_from_spec(spec)


def experiment_trunk(n, R, H, alpha, r, s_b, eps, steps, lr, n_test, single, depth=1):
    P = int(round(alpha * (n - 2 * R)))
    spec = {
        "teacher": {"n_features": n, "rank": R, "n_classes": R, "scale": [3.0, s_b], "noise": 0.5, "flip": eps,
                    "relatedness": r},
        "student": {"depth": depth, "width": H, "bias_init": "zeros"},
        "train": {"protocol": "full_batch", "n_train": [P, P], "n_test": n_test, "n_steps": steps, "eval_every": 1,
                  "learning_rate": lr, "single_task": single},
    }
    return mtjax.experiment_from_spec(spec)


def main_trunk(args):
    """L >= 1, two tasks: task-1 early-stopped loss (multitask) and the multitask benefit
    (single-task minus multitask early-stopped loss of task 1), simulation vs theory."""
    grid = list(itertools.product(args.alphas or [1.0, 4.0], [0.0, 1.0], args.sb or [0.5, 3.0]))
    solver = mtjax.FiniteDataSolver(n_grid=args.steps, n_draws=args.draws, n_response=args.response, tol=args.tol,
                                    damping=args.damping)
    ns = args.seeds
    seeds = mtjax.Seeds(jnp.zeros(ns, int), jnp.arange(1, ns + 1), jnp.zeros(ns, int), jnp.arange(1, ns + 1))
    lines = []

    def emit(s=""):
        print(s, flush=True)
        lines.append(s)

    emit(f"# L = {args.depth} (linear trunk, width {args.width}), two tasks, s_a = 3, eps = 0.2 both tasks: N = {args.n}, C = R = {args.rank}, "
         f"sigma = 0.5, lr = {args.lr}, {args.steps} steps, {ns} seeds, n_test = {args.n_test}")
    emit(f"# solver: grid T = {args.steps}, draws 3 x {args.draws} per task, response draws 3 x {args.response}, tol {args.tol}")
    emit(f"{'alpha':>5} {'r':>4} {'s_b':>4} | {'ES multi sim':>15} {'th':>7} {'rel':>6} {'z':>5} | {'t* sim':>6} {'t* th':>5} | "
         f"{'final sim':>15} {'th':>7} | {'benefit sim':>16} {'th':>7} {'sign':>4} | {'curve':>6} | {'res m/s':>15} {'t_th':>5}")
    sim_fn = eqx.filter_jit(mtjax.simulate_batch)
    th_fn = eqx.filter_jit(mtjax.finite_data_theory)
    rows = []
    t_sim = t_th = 0.0
    for alpha, r, s_b in grid:
        out = {}
        for single in (False, True):
            e = experiment_trunk(args.n, args.rank, args.width, alpha, r, s_b, 0.2, args.steps, args.lr, args.n_test, single,
                                 args.depth)
            batch = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (ns,) + a.shape), e)
            t0 = time.time()
            h = sim_fn(batch, seeds)
            te = np.asarray(h.test_loss[:, :, 0])
            t_sim += time.time() - t0
            t0 = time.time()
            th = th_fn(e, mtjax.Seeds(0), solver=solver)
            dt_th = time.time() - t0
            t_th += dt_th
            out[single] = (te, np.asarray(th.test_loss[:, 0]), float(th.residual[0]), np.asarray(h.time[0]), dt_th)
        te, tl, res_m, time_, dt_m = out[False]
        te1, tl1, res_s, _, dt_s = out[True]
        es = te.min(1)
        es_m, es_se = es.mean(), es.std(ddof=1) / np.sqrt(ns)
        ben = te1.min(1) - es
        ben_m, ben_se = ben.mean(), ben.std(ddof=1) / np.sqrt(ns)
        ben_th = tl1.min() - tl.min()
        rel = abs(tl.min() - es_m) / es_m
        z = abs(tl.min() - es_m) / es_se
        curve = np.max(np.abs(tl - te.mean(0)) / te.mean(0))
        sign = "ok" if np.sign(ben_th) == np.sign(ben_m) else ("--" if abs(ben_m) <= 2 * ben_se else "NO")
        rows.append(dict(rel=rel, z=z, curve=curve, sign=sign))
        emit(f"{alpha:5.1f} {r:4.1f} {s_b:4.1f} | {es_m:7.4f}±{es_se:6.4f} {tl.min():7.4f} {100*rel:5.2f}% {z:5.1f} | "
             f"{time_[np.argmin(te.mean(0))]:6.1f} {time_[np.argmin(tl)]:5.1f} | {te[:, -1].mean():7.4f}±{te[:, -1].std(ddof=1)/np.sqrt(ns):6.4f} "
             f"{tl[-1]:7.4f} | {ben_m:+8.4f}±{ben_se:6.4f} {ben_th:+7.4f} {sign:>4} | {100*curve:5.2f}% | {res_m:7.1e}/{res_s:7.1e} {dt_m+dt_s:5.0f}")
    emit("")
    emit(f"early-stopped loss within 3% or 2 s.e.: {sum((r['rel'] < 0.03) or (r['z'] < 2) for r in rows)}/{len(rows)}; "
         f"curve within 5%: {sum(r['curve'] < 0.05 for r in rows)}/{len(rows)}; benefit sign (where |benefit| > 2 s.e.): "
         f"{sum(r['sign'] == 'ok' for r in rows)} right, {sum(r['sign'] == 'NO' for r in rows)} wrong, {sum(r['sign'] == '--' for r in rows)} not resolved")
    emit(f"time: simulation {t_sim:.0f} s, theory {t_th:.0f} s (2 shared CPU cores, incl. compilation)")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--lr", type=float, default=0.5)
    ap.add_argument("--n-test", type=int, default=10000)
    ap.add_argument("--draws", type=int, default=2048)
    ap.add_argument("--response", type=int, default=256)
    ap.add_argument("--depth", type=int, default=0, choices=[0, 1, 2])
    ap.add_argument("--sb", type=float, nargs="*", default=None, help="subset of s_b values (depth >= 1)")
    ap.add_argument("--alphas", type=float, nargs="*", default=None, help="subset of alpha values")
    ap.add_argument("--damping", type=float, default=1.0)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--tol", type=float, default=5e-3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.out is None:
        args.out = {0: "docs/results/finite_data_accuracy.txt", 1: "docs/results/finite_data_accuracy_trunk.txt",
                    2: "docs/results/finite_data_accuracy_depth2.txt"}[args.depth]
    if args.depth >= 1:
        return main_trunk(args)
    grid = list(itertools.product(args.alphas or [0.5, 1.0, 2.0, 4.0, 8.0], [0.5, 3.0], [0.0, 0.2]))
    solver = mtjax.FiniteDataSolver(n_grid=args.steps, n_draws=args.draws, n_response=args.response, tol=args.tol,
                                    damping=args.damping)
    ns = args.seeds
    seeds = mtjax.Seeds(jnp.zeros(ns, int), jnp.arange(1, ns + 1), jnp.zeros(ns, int), jnp.arange(1, ns + 1))
    lines = []

    def emit(s=""):
        print(s, flush=True)
        lines.append(s)

    emit(f"# finite-data theory (DMFT) vs full-batch GD: N = {args.n}, C = R = {args.rank}, sigma = 0.5, lr = {args.lr}, "
         f"{args.steps} steps, {ns} seeds, n_test = {args.n_test}")
    emit(f"# solver: grid T = {args.steps}, draws 3 x {args.draws}, response draws 3 x {args.response}, tol {args.tol}, "
         f"damping {args.damping}")
    hdr = (f"{'alpha':>5} {'s':>4} {'eps':>4} | {'ES sim':>15} {'ES th':>7} {'rel':>6} {'z':>5} | {'t* sim':>6} {'t* th':>5} | "
           f"{'final sim':>15} {'final th':>8} | {'curve':>6} {'train rel':>9} | {'res':>7} {'it':>3} {'t_th':>5}")
    emit(hdr)
    rows = []
    sim_fn = eqx.filter_jit(mtjax.simulate_batch)
    th_fn = eqx.filter_jit(mtjax.finite_data_theory)
    t_sim = t_th = 0.0
    for alpha, s, eps in grid:
        e = experiment(args.n, args.rank, alpha, s, eps, args.steps, args.lr, args.n_test)
        batch = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (ns,) + a.shape), e)
        t0 = time.time()
        h = sim_fn(batch, seeds)
        te = np.asarray(h.test_loss[:, :, 0])
        trl = np.asarray(h.train_loss[:, :, 0])
        t_sim += time.time() - t0
        t0 = time.time()
        th = th_fn(e, mtjax.Seeds(0), solver=solver)
        tl = np.asarray(th.test_loss[:, 0])
        dt_th = time.time() - t0
        t_th += dt_th
        time_ = np.asarray(h.time[0])
        es = te.min(1)
        es_m, es_se = es.mean(), es.std(ddof=1) / np.sqrt(ns)
        es_th = tl.min()
        t_sim_min = time_[np.argmin(te.mean(0))]
        t_th_min = time_[np.argmin(tl)]
        fin, fin_se = te[:, -1].mean(), te[:, -1].std(ddof=1) / np.sqrt(ns)
        curve = np.max(np.abs(tl - te.mean(0)) / te.mean(0))
        tr_rel = np.max(np.abs(np.asarray(th.train_loss[:, 0]) - trl.mean(0)) / trl.mean(0))
        rel = abs(es_th - es_m) / es_m
        z = abs(es_th - es_m) / es_se
        rows.append(dict(alpha=alpha, s=s, eps=eps, rel=rel, z=z, curve=curve, conv=bool(th.converged)))
        emit(f"{alpha:5.1f} {s:4.1f} {eps:4.1f} | {es_m:7.4f}±{es_se:6.4f} {es_th:7.4f} {100*rel:5.2f}% {z:5.1f} | "
             f"{t_sim_min:6.1f} {t_th_min:5.1f} | {fin:7.4f}±{fin_se:6.4f} {tl[-1]:8.4f} | {100*curve:5.2f}% {100*tr_rel:8.2f}% | "
             f"{float(th.residual[0]):7.1e} {int(th.iterations[0]):3d} {dt_th:5.0f}")
    ok_es = np.mean([(r["rel"] < 0.03) or (r["z"] < 2) for r in rows])
    ok_curve = np.mean([r["curve"] < 0.05 for r in rows])
    emit("")
    emit(f"early-stopped loss within 3% or 2 s.e.: {100*ok_es:.0f}% of {len(rows)} points; "
         f"max rel {100*max(r['rel'] for r in rows):.2f}%, median {100*np.median([r['rel'] for r in rows]):.2f}%")
    emit(f"whole test-loss curve within 5%: {100*ok_curve:.0f}% of points; max {100*max(r['curve'] for r in rows):.2f}%")
    emit(f"converged: {sum(r['conv'] for r in rows)}/{len(rows)}; time: simulation {t_sim:.0f} s, theory {t_th:.0f} s "
         f"(2 shared CPU cores, incl. compilation)")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
