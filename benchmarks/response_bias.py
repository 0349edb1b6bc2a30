"""The response draws' bias on an overfitting curve, with and without the response's control variate.

Run: python benchmarks/response_bias.py [--n 200] [--setting 0] [--replicas 4]
         [--out docs/results/response_bias.txt]

fit_recovery's finite-data setting (`--model finite`: C = R = 3, width 8, σ = 1, 40 full-batch GD
steps at lr 0.5; the hidden r, s_a, s_b and data size of `--setting`), solved at its true
parameters by `fit_solver(n_grid=40)` with 32, 128 and 512 response draws, the control variate
(`FiniteDataSolver(response_control=True)`, docs/dmft.md §3) off and on: mean ± s.e. over
`--replicas` draw seeds of both tasks' test loss at t = 10 and at the end (t = 20), where the
memory term is largest and few response draws bias the curve (docs/fitting.md §6).

     python benchmarks/response_bias.py --paper 800 1600 [--width fixed proportional_n]
         [--responses 32 256 1024] [--replicas 4] [--out docs/results/response_bias_paper.txt]

The paper preset instead (docs/dmft.md §6.4): its single-task cell at s_a = `--sa` and each
ntrain, depth 2, H = 64, N = 100, on `benchmarks/paper_finite.py`'s grid (Δ <= 1), typical
initial condition, 3 x `--draws` (2048) draws, each `--width` and each number of response draws per chunk
(3 chunks): the early-stopped test loss of task 1, mean ± s.e. over `--replicas` draw seeds and
their range, and the train loss at t_max.  Where few response draws bias the curve upward the
mean falls and the spread shrinks as they grow.
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
    ap.add_argument("--paper", type=int, nargs="+", default=None, help="ntrain values of the paper preset's cells")
    ap.add_argument("--sa", type=float, default=10.0, help="--paper: the cell's s_a")
    ap.add_argument("--width", nargs="+", default=["fixed", "proportional_n"], help="--paper: the theories' widths")
    ap.add_argument("--responses", type=int, nargs="+", default=[32, 256, 1024], help="--paper: response draws per chunk")
    ap.add_argument("--draws", type=int, default=2048, help="--paper: draws per chunk (3 chunks)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.replicas < 2:
        raise SystemExit(f"--replicas must be >= 2 (a mean ± s.e.), got {a.replicas}")
    if a.paper is not None:
        return paper(a)
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


def paper(a):
    """The `--paper` table: early-stopped loss of the paper preset's single-task cells per width and response draws."""
    from paper_finite import GRID_SOLVER
    from paper_width import experiment, n_grid

    emit = Report()
    emit(f"# paper preset, single task, s_a = {a.sa}, depth 2, H = 64, N = 100, typical; grid Δ <= 1; "
         f"draws 3 x {a.draws}; {a.replicas} draw seeds; ES = early-stopped test loss of task 1; time incl. compilation")
    emit(f"{'ntrain':>6} {'width':>15} {'response':>8} | {'ES mean ± s.e.':>15} {'ES range':>13} | "
         f"{'train at t_max':>14} | conv | time")
    for ntrain in a.paper:
        e = experiment(ntrain, a.sa, True, 100, 2)
        for width in a.width:
            for nr in a.responses:
                t0 = time.time()
                sv = mtjax.FiniteDataSolver(n_grid=n_grid(ntrain), n_draws=a.draws, **{**GRID_SOLVER, "n_response": nr})
                r = mtjax.finite_data_replicas(e, mtjax.Seeds(0), a.replicas, solver=sv, initial="typical", width=width)
                es = np.asarray(r.test_loss[..., 0]).min(1)
                tr = np.asarray(r.train_loss[:, -1, 0])
                emit(f"{ntrain:6d} {width:>15} {nr:8d} | {es.mean():7.3f} ± {es.std(ddof=1) / np.sqrt(len(es)):5.3f} "
                     f"{es.min():6.3f}-{es.max():5.3f} | {tr.mean():14.3f} | "
                     f"{'yes' if np.asarray(r.converged).all() else 'NO':>4} | {time.time() - t0:4.0f} s")
    emit.write(a.out)


if __name__ == "__main__":
    main()
