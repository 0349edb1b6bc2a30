"""Fitting curves averaged over realisations of teacher and initial student: the theory of one
realisation against the mean of the realisations' theories (`fit_table(seeds=...)` with a
leading axis).

Run: python benchmarks/fit_realisations.py [--realisations 8] [--response 128]

Notebook 05's finite-data setting (N = 200, R = 2, C = 3, depth 1, width 4, P = 200 per task,
20 full-batch steps at lr 0.75, logit noise 0.3, label flips ε_a = 0.2, ε_b = 0.1 hidden),
simulated for `--realisations` teachers, initial students, training and test sets
(`Seeds(i, 100 + i, 200 + i, 300 + i)`), seed-averaged, and fitted for ε_a, ε_b through
`FiniteDataTheory(fit_solver(n_grid=20, n_response=...), "quenched")` twice: solved for the
first realisation only (`Seeds(0)`), and as the mean of the solves for every realisation's
teacher and initial student (`Seeds(i, 0, 200 + i, 0)`).  With H = 4 the heads' initial draw
moves the curves at O(1), so only the second describes the averaged table.  Prints the fitted
values ± Laplace s.e., χ²/dof and seconds per fit (2 CPU cores).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=1")

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import mtjax  # noqa: E402

SPEC = {
    "teacher": {"n_features": 200, "rank": 2, "n_classes": 3, "scale": [3.0, 3.0], "noise": 0.3, "noisy_fraction": 1.0,
                "relatedness": 0.5},
    "student": {"depth": 1, "width": 4, "bias_init": "zeros"},
    "train": {"protocol": "full_batch", "n_train": [200, 200], "n_steps": 20, "eval_every": 2, "learning_rate": 0.75,
              "n_test": 4000},
}  # fmt: skip
TRUE = {"eps_a": 0.2, "eps_b": 0.1}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--realisations", type=int, default=8)
    ap.add_argument("--response", type=int, default=128, help="response draws of the fit solver")
    a = ap.parse_args()
    exp = mtjax.experiment_from_spec(SPEC)
    i = jnp.arange(a.realisations)
    h = eqx.filter_jit(jax.vmap(lambda s: mtjax.simulate(mtjax.apply_axes(exp, TRUE), s)))(mtjax.Seeds(i, 100 + i, 200 + i, 300 + i))
    loss = np.asarray(h.test_loss)
    table = pd.DataFrame([{"time": float(h.time[0, j]), "task": k + 1, "test_loss": loss[:, j, k].mean(),
                           "se": loss[:, j, k].std(ddof=1) / np.sqrt(a.realisations)}
                          for j in range(1, loss.shape[1]) for k in range(2)])  # fmt: skip
    model = mtjax.FiniteDataTheory(mtjax.fit_solver(n_grid=SPEC["train"]["n_steps"], n_response=a.response), "quenched")
    print(f"{a.realisations} realisations, fit_solver(n_grid=20, n_response={a.response}); true eps_a 0.2, eps_b 0.1")
    for label, seeds in [("one realisation (Seeds(0))", mtjax.Seeds(0)),
                         (f"mean of the {a.realisations} realisations", mtjax.Seeds(i, 0, 200 + i, 0))]:  # fmt: skip
        t0 = time.time()
        r, _ = mtjax.fit_table(exp, table, [mtjax.Param("eps_a", 0.1), mtjax.Param("eps_b", 0.1)], model=model, seeds=seeds,
                               mapping={"se": "se", "known": []}, n_starts=1, n_adam=0, n_newton=8)  # fmt: skip
        print(f"{label:34s} eps_a {float(r.params['eps_a'][0]):.3f} ± {float(r.stderr['eps_a'][0]):.3f}, "
              f"eps_b {float(r.params['eps_b'][0]):.3f} ± {float(r.stderr['eps_b'][0]):.3f}; "
              f"chi2/dof {float(r.chi2_dof):.2f}; {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
