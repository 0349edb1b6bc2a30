"""The response draws' bias on an overfitting curve, with and without the response's control variate.

Run: python benchmarks/response_bias.py [--n 200] [--setting 0] [--replicas 4]
         [--out docs/results/response_bias.txt]

fit_recovery's finite-data setting (`--model finite`: C = R = 3, width 8, σ = 1, 40 full-batch GD
steps at lr 0.5; the hidden r, s_a, s_b and data size of `--setting`), solved at its true
parameters by `fit_solver(n_grid=40)` with 32, 128 and 512 response draws, the control variate
(`FiniteDataSolver(response_control=True)`, docs/dmft.md §3) off and on: mean ± s.e. over
`--replicas` draw seeds of both tasks' test loss at t = 10 and at the end (t = 20), where the
memory term is largest and few response draws bias the curve (docs/fitting.md §6).
"""

from __future__ import annotations

import argparse
import time

import equinox as eqx
import numpy as np

import mtjax
from _report import Report
from fit_recovery import settings, spec_finite, theory_experiment

VARIANTS = ((32, False), (32, True), (128, False), (128, True), (512, False), (512, True))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--setting", type=int, default=0)
    ap.add_argument("--replicas", type=int, default=4)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.replicas < 2:
        raise SystemExit(f"--replicas must be >= 2 (a mean ± s.e.), got {a.replicas}")
    truth = settings(20, 0, True, a.n)
    i = a.setting
    e = mtjax.apply_axes(theory_experiment(mtjax.experiment_from_spec(spec_finite(a.n)), truth, i),
                         {c: float(truth[c].iloc[i]) for c in ("relatedness", "s_a", "s_b")})
    f = eqx.filter_jit(lambda e, s: mtjax.finite_data_replicas(e, mtjax.Seeds(i, 0, i, 0), a.replicas, solver=s))
    emit = Report()
    emit(f"fit_recovery setting {i} at its true parameters (N = {a.n}, P = {int(truth.ntrain.iloc[i])}, "
         f"r = {truth.relatedness.iloc[i]:.3f}, s_a = {truth.s_a.iloc[i]:.3f}, s_b = {truth.s_b.iloc[i]:.3f}), "
         f"fit_solver(n_grid=40), mean ± s.e. over {a.replicas} draw seeds; time incl. compilation")
    emit(f"{'response':>8} {'control':>7} | {'task 1, t = 10':>15} {'task 1, t = 20':>15} | "
         f"{'task 2, t = 10':>15} {'task 2, t = 20':>15} | conv | time")
    for nr, cv in VARIANTS:
        t0 = time.time()
        r = f(e, mtjax.fit_solver(n_grid=40, n_response=nr, response_control=cv))
        L = np.asarray(r.test_loss)  # (replicas, times, K)
        j10 = int(np.argmin(np.abs(np.asarray(r.time[0]) - 10.0)))

        def cell(j, k):
            x = L[:, j, k]
            return f"{x.mean():7.3f} ± {x.std(ddof=1) / np.sqrt(len(x)):5.3f}"

        emit(f"{nr:>8} {'on' if cv else 'off':>7} | {cell(j10, 0)} {cell(-1, 0)} | {cell(j10, 1)} {cell(-1, 1)} | "
             f"{'yes' if np.asarray(r.converged).all() else 'NO':>4} | {time.time() - t0:4.0f} s")
    emit.write(a.out)


if __name__ == "__main__":
    main()
