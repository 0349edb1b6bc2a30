"""Where the finite-data theory's spread over draw seeds comes from, in the memorisation phase.

Run: python benchmarks/dmft_spread.py [--setting 0] [--seeds 6] [--out docs/results/dmft_spread.txt]

The theory of one `fit_recovery.py --model finite` setting (N = 200, C = 3, H = 8, σ = 1 on
every example, 40 full-batch steps at lr 0.5; the setting's teacher and initial student,
quenched; 40-step grid, tol 1e-3), solved at `--seeds` draw seeds.  Per row: the label mode
(`FiniteDataSolver.labels`), the draws and response draws, and which group of the fixed draws
changes with the seed while the others stay at one fixed key — `inputs` (the per-example
inputs u, logit noise ξ and uniform labels), `zeta` (the first-layer field paths ζ),
`test` (the test-metric points) or all three.  Printed: task 1's mean test loss over the
seeds and its sd at t = 4, 10, 20, task 2's sd, and the wall time of the row.  Task 1 at
s_a = 0.42 overfits hard (1.3 nats at t = 2, 3.7 at t = 20).  The test metrics sum the label
exactly in both modes (`_quadrature_metrics`).

The groups are isolated by replacing the trunk solve's draw function
(`mtjax._finite.trunk._trunk_draws`) with one that takes each group's key from the seed or
from a fixed key; the compiled programs are released between rows.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from _report import Report
from fit_recovery import SPEC_FINITE, settings

import mtjax
import mtjax._finite.trunk as trunk
from mtjax._finite.sampling import _input_draws

GROUPS = ("inputs", "zeta", "test")
TIMES = [2, 5, 10]  # report indices: t = 4, 10, 20


def draws_varying(groups: set):
    """A `_trunk_draws` whose groups in `groups` follow the solve's key and the rest a fixed key."""

    def draws(p, solver, n_noise, key):
        K, C, _ = p.V0.shape
        fixed, k = jax.random.split(jax.random.key(777), 5), jax.random.split(key, 5)
        kin = k if "inputs" in groups else fixed
        kz = k[2] if "zeta" in groups else fixed[2]
        ke = k[4] if "test" in groups else fixed[4]
        u, xi, y_unif = _input_draws(kin[jnp.array([0, 1, 3])], (K,), solver.n_draws, p.T.shape[2], C, solver.sampling)
        zeta = jax.random.normal(kz, (K, solver.n_draws, n_noise))
        return trunk._TrunkDraws(jax.vmap(trunk._teacher_frame_draws)(p.T, u), xi, zeta, y_unif), ke

    return draws


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setting", type=int, default=0)
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    emit = Report()
    tr = settings(20, 0, True).iloc[a.setting]
    e = mtjax.apply_axes(mtjax.experiment_from_spec(SPEC_FINITE), {
        "relatedness": float(tr.relatedness), "s_a": float(tr.s_a), "s_b": float(tr.s_b),
        "ntrain": float(tr.ntrain), "ntrain_b": float(tr.ntrain)})  # fmt: skip
    emit(f"fit_recovery setting {a.setting}: r {tr.relatedness:.3f}, s_a {tr.s_a:.3f}, s_b {tr.s_b:.3f}, P {tr.ntrain:.0f}, "
         f"N 200, sigma 1; {a.seeds} draw seeds per row; 8192 test points")
    emit(f"{'labels':>8} {'draws':>5} {'resp':>5} {'varied':>18} | task 1 mean at t = 4, 10, 20 | task 1 sd | task 2 sd | time")
    rows = [(m, 2048, 128, g) for m in ("sampled", "summed") for g in (set(GROUPS), {"inputs"}, {"zeta"}, {"test"})]
    rows += [(m, S, Sr, set(GROUPS)) for m in ("sampled", "summed") for S, Sr in ((8192, 128), (2048, 2048))]
    original = trunk._trunk_draws
    try:
        for labels, S, Sr, groups in rows:
            trunk._trunk_draws = draws_varying(groups)
            mtjax.release_compiled()
            t0 = time.time()
            out = []
            for seed in range(a.seeds):
                solver = mtjax.FiniteDataSolver(n_grid=40, n_draws=S, n_response=Sr, n_quad_eval=8192, seed=seed, tol=1e-3,
                                                max_iter=40, labels=labels)  # fmt: skip
                out.append(np.asarray(mtjax.finite_data_theory(e, mtjax.Seeds(a.setting, 0, a.setting, 0), solver=solver,
                                                               initial="quenched").test_loss)[TIMES])  # fmt: skip
            L = np.array(out)
            name = "all" if groups == set(GROUPS) else next(iter(groups))
            f = lambda v: " ".join(f"{x:.3f}" for x in v)  # noqa: E731
            emit(f"{labels:>8} {S:5d} {Sr:5d} {name:>18} | {f(L[:, :, 0].mean(0))} | {f(L[:, :, 0].std(0, ddof=1))} | "
                 f"{f(L[:, :, 1].std(0, ddof=1))} | {time.time() - t0:.0f} s")  # fmt: skip
    finally:
        trunk._trunk_draws = original
    emit.write(a.out)


if __name__ == "__main__":
    main()
