"""The paper's size: N = 100, H = 64 (H/N = 0.64), the authors' teacher, full-batch GD, and the same cells at growing N.

Run: python benchmarks/paper_width.py [--depth 1] [--ntrain 100 200 400 800] [--sa 0.158 10] [--realisations 8]
         [--replicas 2] [--no-fixed] [--out docs/results/paper_width.txt]
     python benchmarks/paper_width.py --n 100 200 400 --ntrain 100 400 --out docs/results/paper_width_scan.txt
         (the finite-size check: the same cells at N = 100, 200, 400 with H = 0.64 N and
         P = ntrain (N − 20) / 80, i.e. H/N and α of the paper cell fixed)
     python benchmarks/paper_width.py --depth 2 --n 100 200 400 --ntrain 100 400 --no-fixed
         --out docs/results/paper_width_depth2_scan.txt  (the same with the paper's two trunk layers)
     python benchmarks/paper_width.py --depth 2 --cost-only --ntrain 400 --sa 10 --out docs/results/paper_width_cost.txt
         (the cost of one paper-preset solve, both theories, at 512 and 2048 draws)

The width-proportional theory (`width="proportional"`, docs/dmft.md §4.3) against simulations of
the authors' teacher (N = 100, R = C = 10, logit noise σ = 0.1 on the noisy half of the examples)
with a linear trunk of `--depth` layers of width 0.64 N (orthogonal init, PyTorch bias init),
heads per task, P = ntrain examples, full-batch GD on the paper cell's theory grid (20 steps to
t_max(ntrain) of `benchmarks/paper_finite.py`), `--realisations` simulations (teacher, data and
init all drawn per realisation), against the proportional and the fixed-width theory (typical
initial condition; the teacher of realisation 0, `--replicas` draw seeds).

The grid is that of `benchmarks/paper_finite.py`: max(20, t_max / --max-step) GD steps (20 at
ntrain <= 800, 26 at 1600, 50 at 3200), the same for the simulations (learning rate = Δ).
Per cell: single-task early-stopped loss (sim mean ± s.e. over realisations, both theories), and for
each `--r` (s_b = s_a; default r = 1) the multitask loss (at the largest s_a) and benefit.  Last lines:
the cost of one solve of each theory at this size (K = 2, C = 10; compiled, one jitted call on this CPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import mtjax
from _report import Report
from paper_finite import GRID_SOLVER, tmax

N_GRID = 20  # the fewest GD steps of a cell's grid (paper_finite.py's --n-grid default)


def n_grid(ntrain: int, max_step: float = 1.0) -> int:
    """GD steps of the cell's grid, as `benchmarks/paper_finite.py` (steps Δ <= max_step, at least 20)."""
    return max(N_GRID, math.ceil(tmax(ntrain) / max_step * (1 - 1e-6)))


def experiment(ntrain: int, s_a: float, single: bool, N: int = 100, depth: int = 1, r: float = 1.0, max_step: float = 1.0):
    """The paper cell (ntrain, s_a; relatedness r, s_b = s_a when multitask) at input dimension N: width
    0.64 N, P = ntrain (N − 20) / 80 examples (H/N and α of the paper's N = 100 cell)."""
    P = int(round(ntrain * (N - 20) / 80))
    T = n_grid(ntrain, max_step)
    spec = mtjax.paper_spec(n_train=P)
    spec["teacher"] = {**spec["teacher"], "n_features": N, "scale": [s_a, s_a], "noise": 0.1, "relatedness": r}
    spec["student"] = {**spec["student"], "depth": depth, "width": int(round(0.64 * N))}
    spec["train"] = {**spec["train"], "protocol": "full_batch", "n_train": [P, P], "n_pool": [P, P],
                     "n_test": 4000, "n_steps": T, "eval_every": 1, "learning_rate": tmax(ntrain) / T,
                     "single_task": single}  # fmt: skip
    return mtjax.experiment_from_spec(spec)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[100], help="input dimensions (H = 0.64 N)")
    ap.add_argument("--depth", type=int, default=1, help="trunk layers (2: the paper's)")
    ap.add_argument("--finite-n", action="store_true",
                    help="add the proportional theory with its O(D/N) corrections at the cell's own N "
                         "(width='proportional_n', docs/dmft.md §4.4), same replicas")
    ap.add_argument("--no-fixed", action="store_true",
                    help="leave out the fixed-width theory (its H-space kernels are slow at H = 256, depth 2)")
    ap.add_argument("--ntrain", type=int, nargs="+", default=[100, 200, 400, 800])
    ap.add_argument("--sa", type=float, nargs="+", default=[0.158, 10.0])
    ap.add_argument("--r", type=float, nargs="+", default=[1.0], help="relatedness of the multitask cells (s_b = s_a)")
    ap.add_argument("--max-step", type=float, default=1.0, help="largest GD step Δ of the grid (paper_finite.py's)")
    ap.add_argument("--realisations", type=int, default=8)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--draws", type=int, default=2048)
    ap.add_argument("--response", type=int, default=32,
                    help="response draws per chunk (3 chunks); the paper grid's 32 are too few at ntrain >= 800 (docs/dmft.md §6.4)")
    ap.add_argument("--cost-only", action="store_true",
                    help="only time one compiled solve per theory (min of 3), at 512 and --draws draws")
    ap.add_argument("--out", default="docs/results/paper_width.txt")
    args = ap.parse_args()
    emit = Report()
    solver = mtjax.FiniteDataSolver(n_grid=N_GRID, n_draws=args.draws, **{**GRID_SOLVER, "n_response": args.response})
    nr = args.realisations
    rr = jnp.arange(nr)
    sim = eqx.filter_jit(mtjax.simulate_batch)
    if not args.cost_only:
        emit(f"# the paper's teacher with a depth-{args.depth} trunk: N = " + " ".join(map(str, args.n)) + ", H = 0.64 N, P = ntrain (N - 20) / 80, "
             "R = C = 10, sigma = 0.1 on q = 1/2, full-batch GD on the theory grid "
             f"(max(20, t_max/{args.max_step}) steps to t_max(ntrain)); {nr} realisations; theories typical, {args.replicas} replicas, draws 3 x {args.draws}, response 3 x {args.response}")
        emit(f"{'N':>4} {'ntrain':>6} {'s_a':>6} {'task':>6} | {'sim ES':>15} {'proportional':>15} {'fixed':>7} {'prop_n':>7} | "
             f"{'d prop':>7} {'d fixed':>7} {'d prop_n':>8}")
    for N, ntrain, s_a in itertools.product(args.n, args.ntrain, args.sa) if not args.cost_only else ():
        T = n_grid(ntrain, args.max_step)
        sv = dataclasses.replace(solver, n_grid=T)
        es = {}
        for single, r in [(True, 1.0)] + [(False, r) for r in args.r]:  # a single-task cell does not depend on r
            e = experiment(ntrain, s_a, single, N, args.depth, r, args.max_step)
            batch = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (nr,) + a.shape), e)
            te = np.asarray(sim(batch, mtjax.Seeds(rr, rr, rr, rr)).test_loss[:, :, 0])
            def replicas(width):  # (replicas, T+1) test loss of task 1
                return np.asarray(mtjax.finite_data_replicas(e, mtjax.Seeds(0), args.replicas, solver=sv, initial="typical",
                                                             width=width).test_loss[..., 0])  # fmt: skip

            tp = replicas("proportional")
            tf = (np.full(T + 1, np.nan) if args.no_fixed else
                  np.asarray(mtjax.finite_data_theory(e, mtjax.Seeds(0), solver=sv, initial="typical").test_loss[:, 0]))
            tn = replicas("proportional_n") if args.finite_n else np.full((1, T + 1), np.nan)
            es[single, r] = (te.min(1), tp.mean(0).min(), tf.min(), tn.mean(0).min())
            if not single and s_a != max(args.sa):
                continue
            s, p_, f, q = es[single, r]
            name = "single" if single else f"m r={r:g}"
            emit(f"{N:4d} {ntrain:6d} {s_a:6.3f} {name:>6} | {s.mean():7.4f}±{s.std(ddof=1) / np.sqrt(nr):6.4f} {p_:15.4f} {f:7.4f} {q:7.4f} | "
                 f"{p_ - s.mean():+7.4f} {f - s.mean():+7.4f} {q - s.mean():+8.4f}")
        s1, p1, f1, q1 = es[True, 1.0]
        for r in args.r:
            sm, pm, fm, qm = es[False, r]
            ben = s1 - sm
            name = "benef" if args.r == [1.0] else f"b r={r:g}"
            emit(f"{N:4d} {ntrain:6d} {s_a:6.3f} {name:>6} | {ben.mean():+7.4f}±{ben.std(ddof=1) / np.sqrt(nr):6.4f} {p1 - pm:+15.4f} "
                 f"{f1 - fm:+7.4f} {q1 - qm:+7.4f} |")
    # Cost of one solve at the paper's size, compiled (one replica each; min of 3 calls: the machine is shared).
    e = experiment(args.ntrain[-1], args.sa[-1], False, 100, args.depth)
    variants = ([("proportional", "typical")] + ([("proportional_n", "typical")] if args.finite_n else [])
                + ([] if args.no_fixed else [("fixed", "typical"), ("fixed", "quenched")]))
    for draws in sorted({512, args.draws}) if args.cost_only else (args.draws,):
        sv = dataclasses.replace(solver, n_draws=draws, n_grid=n_grid(args.ntrain[-1], args.max_step))
        for width, initial in variants:
            def solve():
                return mtjax.finite_data_theory(e, mtjax.Seeds(0), solver=sv, initial=initial, width=width).test_loss

            jax.block_until_ready(solve())
            times = []
            for _ in range(3):
                t0 = time.time()
                jax.block_until_ready(solve())
                times.append(time.time() - t0)
            emit(f"cost of one compiled solve, {width} width ({initial}), draws 3 x {draws}: {min(times):.2f} s "
                 f"(K = 2, C = 10, H = 64, depth {args.depth}, ntrain {args.ntrain[-1]}, T = {sv.n_grid}; min of 3)")
    emit.write(args.out)


if __name__ == "__main__":
    main()
