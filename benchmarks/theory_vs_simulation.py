"""Population theory vs online simulation, curve by curve.

Run: python benchmarks/theory_vs_simulation.py [--seeds 4] [--steps 1200] [--lr 0.005]

Grid (72 points): r in {0, .5, 1} x s_a in {1, 4} x s_b in {0.3, 3} x eps_a in {0, .2} (task 1) x
depth L in {0, 1, 2}; N = 200, C = R = 4, width 16, sigma = 1/sqrt(N), online SGD (fresh batches of
512 per task and step, joint loss) at a small learning rate, test sets of 100000 examples; theory
test losses from 2^16 quasi-Monte Carlo points.
Teacher, test set and initial student are shared by the seeds (seed_scope = "train"), so the seed
mean estimates the deterministic flow the theory integrates from the same (quenched) init.
Per point: max over the curve of |loss_theory - loss_sim| (nats) and of that difference in units of
the standard error: seed s.e. (SGD noise; the seeds share one test set), the test set's sampling s.e.
(a common offset of all seeds) and the theory's quadrature s.e., combined in quadrature.
The same difference for accuracy.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

import mtjax


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--lr", type=float, default=0.005)
    ap.add_argument("--n-test", type=int, default=100000)
    ap.add_argument("--n-quad-eval", type=int, default=2**16)
    args = ap.parse_args()
    spec = {
        "seed_scope": "train",
        "teacher": {"n_features": 200, "rank": 4, "n_classes": 4},
        "student": {"depth": 1, "width": 16},
        "train": {"protocol": "online", "n_steps": args.steps, "eval_every": args.steps // 12, "learning_rate": args.lr,
                  "batch_size": 512, "n_test": args.n_test},
    }
    grid = {"relatedness": [0.0, 0.5, 1.0], "s_a": [1.0, 4.0], "s_b": [0.3, 3.0], "eps_a": [0.0, 0.2], "depth": [0, 1, 2]}
    solver = mtjax.PopulationSolver(n_quad_eval=args.n_quad_eval)
    t0 = time.time()
    # Written to results/ so that an interrupted benchmark resumes instead of re-simulating.
    sim = mtjax.sweep(spec, {**grid, "seed": list(range(args.seeds))}, name=f"tvs-sim-{args.seeds}-{args.steps}-{args.lr}-{args.n_test}",
                      out_dir="results", progress=True)
    t_sim = time.time() - t0
    t0 = time.time()
    th = mtjax.sweep(spec, grid, name=f"tvs-theory-{args.steps}-{args.lr}-{args.n_quad_eval}", out_dir="results", progress=True,
                     source="theory", solver=solver)
    t_th = time.time() - t0

    keys = ["relatedness", "s_a", "s_b", "eps_a", "depth", "task", "step"]
    sc = sim.curves
    g = sc.groupby(keys)
    s = g["test_loss"].agg(["mean", "std", "count"]).join(g["test_acc"].agg(acc_mean="mean", acc_std="std"))
    s = s.join(g["test_loss_se"].mean().rename("test_se"))
    s = s.reset_index()
    tc = th.curves[keys + ["test_loss", "test_acc", "test_loss_se"]].rename(
        columns={"test_loss": "theory_loss", "test_acc": "theory_acc", "test_loss_se": "quad_se"})
    m = s.merge(tc, on=keys)
    m["seed_se"] = m["std"] / np.sqrt(m["count"])
    m["diff"] = (m["theory_loss"] - m["mean"]).abs()
    m["acc_diff"] = (m["theory_acc"] - m["acc_mean"]).abs()
    point = ["relatedness", "s_a", "s_b", "eps_a", "depth", "task"]
    per = m.groupby(point).agg(max_diff=("diff", "max"), max_acc_diff=("acc_diff", "max"),
                               max_seed_se=("seed_se", "max"), final_sim=("mean", "last"), final_theory=("theory_loss", "last"))
    per = per.reset_index()
    m["se"] = np.sqrt(m["seed_se"] ** 2 + m["test_se"] ** 2 + m["quad_se"] ** 2)
    z = m.assign(z=m["diff"] / m["se"]).groupby(point)["z"].max().rename("max_z")
    per = per.merge(z.reset_index(), on=point)
    pd.set_option("display.width", 200)
    print(per.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    n = len(per)
    print(f"\npoints x tasks: {n};  simulation {t_sim:.0f} s ({args.seeds} seeds), theory {t_th:.0f} s")
    print(f"max |theory - sim| over all curves: {per.max_diff.max():.4f} nats;  median of per-curve max: {per.max_diff.median():.4f}")
    print(f"curves within 0.01 nats everywhere: {(per.max_diff <= 0.01).mean():.1%};  within 2 s.e. everywhere: {(per.max_z <= 2).mean():.1%}")
    print(f"curve points within 2 s.e.: {(m['diff'] <= 2 * m['se']).mean():.1%} of {len(m)};  median s.e. {m['se'].median():.4f}")
    worst = m.loc[m["diff"].idxmax()]
    print(f"largest difference at {dict(worst[keys])}: theory {worst.theory_loss:.4f}, sim {worst['mean']:.4f} ± {worst.se:.4f}")
    print(f"max |acc theory - acc sim|: {per.max_acc_diff.max():.4f}")
    div = int(sim.summary["diverged"].sum() + th.summary["diverged"].sum())
    print(f"diverged / failed: {div}")


if __name__ == "__main__":
    main()
