"""The finite-data theory at the true parameters of a `fit_recovery.py --model finite` setting,
against full-batch GD simulations at growing N (α = P/N fixed), multitask and single-task.

Run: python benchmarks/fit_recovery_truth.py [--setting 0] [--n 200 400 800] [--seeds 16]
         [--out docs/results/fit_recovery_truth.txt]

Per N and variant (the setting itself; task 2 untrained, w_b = 0; both tasks at s_a; both at
s_b): the test loss of both tasks at t = 4, 10, 20, simulation mean ± s.e. over `--seeds`
training sets (the setting's teacher and initial student, `Seeds(setting, 1000 + j, setting, j)`,
as in `fit_recovery.py`) and the theory of that teacher and student (quenched initial condition,
4 draw seeds: mean ± s.e.; 40-step grid, 3 x 2048 draws, 256 response draws, tol 1e-3). Both
sides hold the heads' initial draw fixed: with the typical initial condition the theory keeps
the student's heads while simulations over fresh students average over them, which for an
untrained head (w_b = 0) alone moves task 2's loss by 0.2 nats. A theory error shows as a gap
that does not shrink with N; a finite-size effect as one that does: with three or more N the
script fits gap(N) = b + c/N to each (task, time) and prints b (the theory's error at N → ∞) and
c (the simulations' finite-size excess) with their s.e. and χ². Each N's pool holds exactly its
P = α N training examples.
"""

from __future__ import annotations

import argparse
import copy
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from _report import Report
from fit_recovery import SPEC_FINITE, settings

import mtjax

TIMES = [2, 5, 10]  # report indices: t = 4, 10, 20


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setting", type=int, default=0)
    ap.add_argument("--n", type=int, nargs="+", default=[200, 400, 800])
    ap.add_argument("--seeds", type=int, default=16)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    emit = Report()
    tr = settings(20, 0, True).iloc[a.setting]
    alpha = tr.ntrain / SPEC_FINITE["teacher"]["n_features"]
    solver = mtjax.FiniteDataSolver(n_grid=40, n_draws=2048, n_response=256, max_iter=40, tol=1e-3, n_quad_eval=8192)
    emit(f"fit_recovery setting {a.setting}: r {tr.relatedness:.3f}, s_a {tr.s_a:.3f}, s_b {tr.s_b:.3f}, alpha {alpha:.3f} "
         f"(sigma = 1, H = 8, lr 0.5, 40 steps); {a.seeds} training sets of the setting's teacher and student; "
         "theory quenched, 4 draw seeds")
    emit(f"{'N':>4} {'variant':>10} {'task':>4} | " + " | ".join(f"t = {2 * j:<3d}sim ± se, theory ± se" for j in TIMES))
    base = {"relatedness": float(tr.relatedness), "s_a": float(tr.s_a), "s_b": float(tr.s_b)}
    variants = {"setting": {}, "w_b=0": {"w_b": 0.0}, "both s_a": {"s_b": float(tr.s_a)}, "both s_b": {"s_a": float(tr.s_b)}}
    # One program per shape: the variants at one N differ only in array fields, so they reuse it.
    simulate = eqx.filter_jit(jax.vmap(mtjax.simulate, in_axes=(None, 0)))
    gaps = {}  # (task, time index) -> [(N, sim − theory, combined s.e.)] of the setting itself
    for N in a.n:
        sp = copy.deepcopy(SPEC_FINITE)
        sp["teacher"]["n_features"] = N
        P = float(round(alpha * N))
        sp["train"]["n_train"] = [int(P), int(P)]  # the pool holds the P training examples
        for name, extra in variants.items():
            if name != "setting" and N != a.n[len(a.n) // 2]:
                continue  # the variants localise the gap at one N
            e = mtjax.apply_axes(mtjax.experiment_from_spec(sp), {**base, "ntrain": P, "ntrain_b": P, **extra})
            mtjax.Simulation().check(e)  # the jitted simulation below cannot check its pool itself
            t0 = time.time()
            i = jnp.arange(a.seeds)
            q = jnp.full_like(i, a.setting)
            L = np.asarray(simulate(e, mtjax.Seeds(q, 1000 + i, q, i)).test_loss)
            th = np.asarray(mtjax.finite_data_replicas(e, mtjax.Seeds(a.setting, 0, a.setting, 0), 4, solver=solver,
                                                       initial="quenched").test_loss)  # fmt: skip
            for k in range(2):
                cells = []
                for j in TIMES:
                    s_m, s_e = L[:, j, k].mean(), L[:, j, k].std(ddof=1) / np.sqrt(a.seeds)
                    t_m, t_e = th[:, j, k].mean(), th[:, j, k].std(ddof=1) / 2
                    cells.append(f"{s_m:6.3f}±{s_e:5.3f} {t_m:6.3f}±{t_e:5.3f}")
                    if name == "setting":
                        gaps.setdefault((k, j), []).append((N, s_m - t_m, float(np.hypot(s_e, t_e))))
                emit(f"{N:4d} {name:>10} {k + 1:4d} | " + " | ".join(cells) + f"   ({time.time() - t0:.0f} s)")
    if len(a.n) >= 3:
        emit("")
        emit("gap = simulation − theory of the setting, weighted fit gap(N) = b + c/N (b: the theory's error at N → ∞,")
        emit("c/N: the simulations' finite-size excess); chi2 of b + c/N and of c/N alone (b = 0)")
        for (k, j), rows in gaps.items():
            emit(f"task {k + 1} t = {2 * j:<3d}" + finite_size_fit(np.array(rows)))
    emit.write(a.out)


def finite_size_fit(rows):
    """Weighted least squares of gap = b + c / N; rows (n, 3): N, gap (nats), its s.e."""
    n, g, se = rows.T
    X = np.stack([np.ones_like(n), 1.0 / n], 1) / se[:, None]
    cov = np.linalg.inv(X.T @ X)
    b, c = cov @ X.T @ (g / se)
    chi2 = np.sum(((g - b - c / n) / se) ** 2)
    c0 = np.sum(g / n / se**2) / np.sum(1 / (n * se) ** 2)
    chi0 = np.sum(((g - c0 / n) / se) ** 2)
    return (f" gaps {' '.join(f'{x:.3f}' for x in g)}: b = {b:+.3f} ± {np.sqrt(cov[0, 0]):.3f}, "
            f"c = {c:.1f} ± {np.sqrt(cov[1, 1]):.1f}, chi2 {chi2:.2f} ({len(n) - 2} dof); "
            f"c/N alone: c = {c0:.1f}, chi2 {chi0:.2f} ({len(n) - 1} dof)")


if __name__ == "__main__":
    main()
