"""The finite-data theory's Monte Carlo error at a recovery fit's optimum, against the data's s.e.,
for several solver settings: which draws limit a fit, and what more of them costs.

Run: python benchmarks/fit_theory_noise.py [--settings 2 9] [--replicates 8]
         [--variants plain response512 draws4096] [--out docs/results/fit_theory_noise.txt]

Per setting of `fit_recovery.py --model finite --n 800 --baseline` (the cached simulations of
that run: 8 seeds, both tasks' multitask curves and task 1 alone; run fit_recovery first) and
per solver variant (`fit_solver(n_grid=40, 16 maps)` with n_response = 128, n_draws = 2048 unless
the variant says otherwise): the problem is solved at the fitted optimum stored in the rows file
with `--replicates` independent draw seeds (`mtjax.theory_covariance`). Printed: the theory's
Monte Carlo s.d. of the predictions over the data's s.e. (median and max over the 60 points),
what that error alone moves the fitted parameters by (s.d. of A η with A = (JᵀJ)⁻¹Jᵀ of the
whitened residuals, J of the fit's own solver, in the fit's coordinates: artanh r, log s_a,
log s_b), the same for the data's sampling error (the seed-clustered sandwich), and the wall
time of the M solves (one compiled program; the first variant's time includes compiling its
program, as every variant's does).
"""

from __future__ import annotations

import argparse
import os
import types
import time

os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=1")  # as fit_recovery.py

import equinox as eqx  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from _report import Report  # noqa: E402
from fit_recovery import _setting_problem, settings, spec_finite  # noqa: E402

import mtjax  # noqa: E402
from mtjax import error_model, fit, make_problem  # noqa: E402

VARIANTS = {
    "plain": {},
    "response512": {"n_response": 512},
    "response1024": {"n_response": 1024},
    "draws4096": {"n_draws": 4096},
    "draws4096_response512": {"n_draws": 4096, "n_response": 512},
    "control": {"response_control": True},
    "control32": {"n_response": 32, "response_control": True},
    "control512": {"n_response": 512, "response_control": True},
}
NAMES = ("relatedness", "s_a", "s_b")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", type=int, nargs="+", default=[2, 9])
    ap.add_argument("--replicates", type=int, default=8)
    ap.add_argument("--variants", nargs="+", default=["plain", "response512", "draws4096"], choices=sorted(VARIANTS))
    ap.add_argument("--n", type=int, default=800)
    ap.add_argument("--rows", default="docs/results/fit_recovery_finite800_baseline_rows.csv")
    ap.add_argument("--cache", default="/tmp")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    stem = os.path.join(a.cache, f"mtjax_fit_recovery_finite{a.n}_20_8_0")
    if not (os.path.exists(stem + "_pool.npz") and os.path.exists(stem + "_single_pool.npz") and os.path.exists(a.rows)):
        raise SystemExit(f"needs fit_recovery's cached simulations ({stem}_pool.npz, _single_pool.npz) and its rows file "
                         f"{a.rows}: run `python benchmarks/fit_recovery.py --model finite --n {a.n} --settings 20 --seeds 8 "
                         "--baseline --rows ...` first")
    z = np.load(stem + "_pool.npz")
    times, loss = z["times"], z["loss"]
    loss_single = np.load(stem + "_single_pool.npz")["loss"]
    exp = mtjax.experiment_from_spec(spec_finite(a.n))
    truth = settings(20, 0, True, a.n)
    fitted = pd.read_csv(a.rows).set_index("setting")
    emit = Report()
    emit(f"the finite-data theory's Monte Carlo error at fit_recovery's fitted optimum (N = {a.n}, --baseline, 8 seeds), "
         f"{a.replicates} draw seeds per variant; fit_solver(n_grid=40, 16 maps), n_draws 2048 and n_response 128 unless named")
    emit("sd ratio = theory's s.d. / data s.e. per point (median, max over the points); parameter s.d. in the fit's "
         "coordinates (artanh r, log s_a, log s_b): from the theory's draws | from the data (seed-clustered sandwich)")
    emit(f"{'set':>3} {'variant':>22} | {'sd ratio':>11} | {'theory: r, s_a, s_b':>23} | {'data: r, s_a, s_b':>23} | {'time':>6}")
    # fit_recovery's observations, models and seeds for a setting (its --baseline, 8 seeds, 16 maps)
    opts = types.SimpleNamespace(seeds=loss.shape[1], maps=16, response=128, no_population=True)
    for i in a.settings:
        texp, obs, params, per_seed, models = _setting_problem(opts, exp, truth, i, times, loss, loss_single, True)
        prob = make_problem(texp, obs, params, seeds=mtjax.Seeds(i, 0, i, 0), model=models[""])
        theta = prob.pack({n: float(fitted.loc[i, f"{n}_fit"]) for n in NAMES})
        se = np.asarray(prob.obs.se)
        # n_newton = 0: the Jacobian of the whitened residuals at the stored optimum (the fit's own
        # solver), and the data's seed-clustered sandwich there
        at = error_model(prob, fit(prob, starts=theta[None], n_adam=0, n_newton=0), obs_replicates=per_seed)
        A = np.linalg.pinv(np.asarray(at.jacobian, float))
        sd_data = np.sqrt(np.diag(np.asarray(at.covariance)))
        for v in a.variants:
            model = mtjax.FiniteDataTheory(mtjax.fit_solver(n_grid=40, **{"n_response": 128, **VARIANTS[v]}, min_iter=16, max_iter=16))
            pv = eqx.tree_at(lambda p: p.model, prob, model)
            t0 = time.time()
            C = mtjax.theory_covariance(pv, theta, a.replicates)
            dt = time.time() - t0
            ratio = np.sqrt(np.clip(np.diag(C), 0, None)) / se
            sd_th = np.sqrt(np.diag(A @ (C / np.outer(se, se)) @ A.T))
            emit(f"{i:>3} {v:>22} | {np.median(ratio):5.2f} {ratio.max():5.2f} | "
                 f"{' '.join(f'{x:7.4f}' for x in sd_th)} | {' '.join(f'{x:7.4f}' for x in sd_data)} | {dt:5.0f}s")
    emit.write(a.out)


if __name__ == "__main__":
    main()
