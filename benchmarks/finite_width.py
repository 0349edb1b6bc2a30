"""The width-proportional finite-data theory vs full-batch GD, at trunk widths comparable to N.

Run: python benchmarks/finite_width.py [--n 100 200 400] [--nu 0.25 0.64] [--alphas 1 4 8] [--seeds 8]
         [--replicas 2] [--no-fixed] [--out docs/results/finite_width.txt]
Output: the table `--out` and its rows as CSV next to it (`<out>.csv`, resumable: rerunning the
same command skips the points stored with the same settings; `--table-only` rewrites the table).

Setting: two tasks, a linear trunk of depth 1 and width H = round(ν N) (orthogonal init, zero
biases), heads per task; C = R = 4, relatedness r = 1, s_a = s_b = 3, logit noise σ = 0.5 on every
example, no flips; P = α (N − 2R) examples per task; full-batch GD at lr 0.5 for 40 steps (t = 20),
evaluated every step.  Simulations: `--seeds` realisations (teacher fixed, data and initial
student drawn per seed; the typical initial condition averages over the student).  Theory:
`finite_data_replicas(..., initial="typical", width="proportional")` (mean ± s.e. over
`--replicas` draw seeds), and next to it today's fixed-width DMFT (`width="fixed"`, typical,
one replica) unless `--no-fixed`.

Per point: task 1's early-stopped test loss under multitask training (ES), simulation vs both
theories (rel = |theory − sim| / sim; z against the combined s.e.), the largest relative
deviation along the proportional theory's whole test-loss curve, and the multitask benefit
(single-task − multitask ES of task 1; both theories solve the single-task run too).
Summary per N: the fraction of points whose ES is within 3 % (or 2 combined s.e.) for each
theory, and the mean |rel| — the trend in N.
"""

from __future__ import annotations

import argparse
import itertools
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import mtjax
from finite_data_accuracy import _run_grid, experiment_trunk

R = 4
STEPS = 40
LR = 0.5


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[100, 200, 400])
    ap.add_argument("--nu", type=float, nargs="+", default=[0.25, 0.64], help="H / N")
    ap.add_argument("--alphas", type=float, nargs="+", default=[1.0, 4.0, 8.0], help="P / (N - 2R)")
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--draws", type=int, default=2048)
    ap.add_argument("--response", type=int, default=128)
    ap.add_argument("--n-test", type=int, default=10000)
    ap.add_argument("--no-fixed", action="store_true", help="skip today's fixed-width DMFT")
    ap.add_argument("--table-only", action="store_true", help="rewrite the table from the stored rows, compute nothing")
    ap.add_argument("--out", default="docs/results/finite_width.txt")
    args = ap.parse_args()

    settings = (f"R={R} steps={STEPS} lr={LR} seeds={args.seeds} replicas={args.replicas} draws={args.draws} "
                f"response={args.response} n_test={args.n_test} fixed={not args.no_fixed}")  # fmt: skip
    solver = mtjax.FiniteDataSolver(n_grid=STEPS, n_draws=args.draws, n_response=args.response, tol=2e-2)
    ns = args.seeds
    seeds = mtjax.Seeds(jnp.zeros(ns, int), jnp.arange(1, ns + 1), jnp.arange(1, ns + 1), jnp.arange(1, ns + 1))
    sim_fn = eqx.filter_jit(mtjax.simulate_batch)
    grid = list(itertools.product(args.n, args.nu, args.alphas))

    def compute(N, nu, alpha):
        H = int(round(nu * N))
        out, t = {}, {"sim": 0.0, "prop": 0.0, "fixed": 0.0}
        for single in (False, True):
            e = experiment_trunk(N, R, H, alpha, 1.0, 3.0, 0.0, STEPS, LR, args.n_test, single)
            batch = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (ns,) + a.shape), e)
            t0 = time.time()
            te = np.asarray(sim_fn(batch, seeds).test_loss[:, :, 0])
            t["sim"] += time.time() - t0
            t0 = time.time()
            th = mtjax.finite_data_replicas(e, mtjax.Seeds(0), args.replicas, solver=solver, initial="typical",
                                            width="proportional")  # fmt: skip
            tp = np.asarray(th.test_loss[..., 0])
            conv = bool(np.all(th.converged))
            t["prop"] += time.time() - t0
            tf = None
            if not args.no_fixed:
                t0 = time.time()
                tf = np.asarray(mtjax.finite_data_theory(e, mtjax.Seeds(0), solver=solver, initial="typical").test_loss[:, 0])
                t["fixed"] += time.time() - t0
            out[single] = (te, tp, tf, conv)
        te, tp, tf, conv = out[False]
        te1, tp1, tf1, conv1 = out[True]
        es = te.min(1)
        es_m, es_se = es.mean(), es.std(ddof=1) / np.sqrt(ns)
        ben = te1.min(1) - es
        mp = tp.mean(0)
        i = int(np.argmin(mp))
        es_p = mp[i]
        es_p_se = tp[:, i].std(ddof=1) / np.sqrt(len(tp)) if len(tp) > 1 else 0.0
        ben_p = tp1.mean(0).min() - es_p
        row = dict(N=N, nu=nu, alpha=alpha, H=H, P=int(round(alpha * (N - 2 * R))), es_sim=es_m, es_se=es_se,
                   es_prop=es_p, es_prop_se=es_p_se, rel_prop=abs(es_p - es_m) / es_m,
                   z_prop=abs(es_p - es_m) / np.hypot(es_se, es_p_se),
                   curve_prop=float(np.max(np.abs(mp - te.mean(0)) / te.mean(0))),
                   ben_sim=ben.mean(), ben_se=ben.std(ddof=1) / np.sqrt(ns), ben_prop=ben_p,
                   es_fixed=np.nan if tf is None else tf.min(), ben_fixed=np.nan if tf is None else tf1.min() - tf.min(),
                   conv=conv and conv1, t_sim=t["sim"], t_prop=t["prop"], t_fixed=t["fixed"])  # fmt: skip
        row["rel_fixed"] = abs(row["es_fixed"] - es_m) / es_m
        return row

    header = [
        f"# width-proportional DMFT vs full-batch GD: two tasks, linear trunk of depth 1, width H = nu N, C = R = {R}, "
        f"r = 1, s_a = s_b = 3, sigma = 0.5, lr {LR}, {STEPS} steps, {ns} seeds (data and init), n_test {args.n_test}",
        f"# theory: proportional = width='proportional' (typical init), mean ± s.e. of {args.replicas} replicas, draws "
        f"3 x {args.draws}, response 3 x {args.response}; fixed = today's fixed-width DMFT (typical, 1 replica)",
        "# ES = early-stopped task-1 test loss under multitask training; rel = |th - sim| / sim; z = |th - sim| / "
        "combined s.e.; curve = max relative deviation along the whole curve; benefit = single - multitask ES",
        f"{'N':>4} {'H/N':>5} {'P/N':>4} {'H':>4} {'P':>5} | {'ES sim':>15} {'proportional':>15} {'rel':>6} {'z':>5} "
        f"{'curve':>6} | {'fixed':>7} {'rel':>6} | {'benefit sim':>16} {'prop':>7} {'fixed':>7} | {'t sim/prop/fixed (s)':>20}",
    ]

    def line(o):
        return (f"{o['N']:4d} {o['nu']:5.2f} {o['alpha']:4.1f} {o['H']:4d} {o['P']:5d} | {o['es_sim']:7.4f}±{o['es_se']:6.4f} "
                f"{o['es_prop']:7.4f}±{o['es_prop_se']:6.4f} {100 * o['rel_prop']:5.2f}% {o['z_prop']:5.1f} "
                f"{100 * o['curve_prop']:5.2f}% | {o['es_fixed']:7.4f} {100 * o['rel_fixed']:5.2f}% | "
                f"{o['ben_sim']:+8.4f}±{o['ben_se']:6.4f} {o['ben_prop']:+7.4f} {o['ben_fixed']:+7.4f} | "
                f"{o['t_sim']:6.0f} {o['t_prop']:6.0f} {o['t_fixed']:6.0f}") + ("" if o["conv"] else "  (not converged)")

    def summary_of(rows):
        summary = []
        for N in args.n:
            rs = [o for o in rows if o["N"] == N]
            if not rs:
                continue
            ok_p = sum((o["rel_prop"] < 0.03) or (o["z_prop"] < 2) for o in rs)
            fixed = [o for o in rs if np.isfinite(o["es_fixed"])]
            ok_f = sum(o["rel_fixed"] < 0.03 for o in fixed)
            summary.append(
                f"N = {N}: ES within 3 % or 2 s.e. — proportional {ok_p}/{len(rs)}, fixed width {ok_f}/{len(fixed)} (3 %); "
                f"mean |rel| proportional {100 * np.mean([o['rel_prop'] for o in rs]):.2f} %, fixed "
                f"{100 * np.mean([o['rel_fixed'] for o in fixed]) if fixed else np.nan:.2f} %; curves within 5 %: "
                f"{sum(o['curve_prop'] < 0.05 for o in rs)}/{len(rs)}")  # fmt: skip
        return summary + [f"converged: {sum(bool(o['conv']) for o in rows)}/{len(rows)}"]

    _run_grid(args, grid, ["N", "nu", "alpha"], lambda point: compute(*point), line, header, summary_of, settings)


if __name__ == "__main__":
    main()
