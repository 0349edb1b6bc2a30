"""The nonlinear-trunk DMFT's response by Gaussian integration by parts, against the exact
per-draw Hessian chain (docs/dmft.md §4.2).

Run: python benchmarks/dmft_response_ibp.py [--activation tanh] [--draws 4096]
         [--out docs/results/dmft_response_ibp.txt]

A response estimator that needs no φ'' would solve relu without its softplus surrogate: the field
is χ = F ζ with ζ standard normal (`_field_factor_h`), so Stein's lemma gives
E[∂δ^n/∂χ^m] = Σ_j E[δ^n ζ_j] (F⁺)_{j,m}, F⁺ = Fᵀ C_v⁻¹, from the errors δ alone.  At the fixed
point of a smooth (tanh) trunk, where the Hessian chain (`_response`, all draws) is exact per
draw, this prints the mean |response| block by lag n − m for both estimators and their
difference, the estimate's acausal blocks (m > n, exactly zero), and the spectrum of C_v.
Setting: depth 1, width 4, N = P = 200, C = R = 3, s = 3, σ = 0.5, r = 1, lr 0.5, 20 GD steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from _report import Report

import mtjax
from mtjax._finite.kernels import _response, propagator
from mtjax._finite.nonlinear import _example_process, _field_factor_h, nonlinear_fixed_point
from mtjax._finite.theory import _problem
from mtjax._finite.trunk import _trunk_draws, _trunk_labels

STEPS, WIDTH = 20, 4


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--activation", default="tanh", choices=["tanh", "erf", "gelu"])
    ap.add_argument("--draws", type=int, default=4096)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    emit = Report()
    spec = {
        "seed_scope": "train",
        "teacher": {"n_features": 200, "rank": 3, "n_classes": 3, "relatedness": 1.0, "scale": [3.0, 3.0], "noise": 0.5},
        "student": {"depth": 1, "width": WIDTH, "activation": a.activation, "bias_init": "zeros", "init_scale": 1.3},
        "train": {"protocol": "full_batch", "n_train": 200, "n_steps": STEPS, "eval_every": 4, "learning_rate": 0.5,
                  "n_test": 4000},
    }  # fmt: skip
    e = mtjax.experiment_from_spec(spec)
    S, T1 = a.draws, STEPS + 1
    solver = mtjax.FiniteDataSolver(n_grid=STEPS, n_draws=S, n_response=S, max_iter=30, tol=1e-3)
    pn = _problem(e, mtjax.Seeds(0), None, "quenched")
    _, dt = solver.time_grid(STEPS * 0.5)
    pn = dataclasses.replace(pn, trunk=dataclasses.replace(pn.trunk, dt=dt))
    p = pn.trunk
    K, C, H = p.V0.shape
    t0 = time.time()
    key = jax.random.key(solver.seed)
    (CH, RH), _, res, maps, _ = jax.jit(lambda: nonlinear_fixed_point(pn, solver, STEPS, key=key))()
    emit(f"# {a.activation} trunk, width {H}, depth 1, alpha 1, {STEPS} steps; {S} draws (all of them for both "
         f"estimators); fixed point: residual {float(res):.1e} after {int(maps)} maps ({time.time() - t0:.0f} s)")
    d, _ = _trunk_draws(p, solver, H + T1 * H, key)  # the draws of the fixed point's maps
    ys, weights = _trunk_labels(p, d, solver.summed_labels(C))

    @jax.jit
    def estimates():
        Rv, P0 = propagator(RH, p.dt)
        F = _field_factor_h(p.Q0, P0, Rv, CH)
        _, delta, J, *_ = _example_process(pn, d, F, Rv, ys, weights, S, solver.relu_sharpness)
        Cv = F @ F.T
        out = []
        for k in range(K):
            wk = weights[k] / S
            hess = _response(J[k].reshape(-1, T1, H, H), p.rho[k] * Rv, p.alpha[k], wk.reshape(-1),
                             jacobian=lambda j: j)  # fmt: skip
            Ez = jnp.einsum("xs,xsnh,sj->nhj", wk, delta[k], d.zeta[k]).reshape(T1 * H, -1)
            ibp = jnp.linalg.solve(Cv, F @ Ez.T).T  # E[δ ζᵀ] Fᵀ C_v⁻¹
            out.append((hess.reshape(T1, H, T1, H), ibp.reshape(T1, H, T1, H)))
        return out, jnp.linalg.eigvalsh(Cv)

    out, ev = estimates()
    ev = np.asarray(ev)
    emit(f"C_v ({T1 * H} x {T1 * H}): eigenvalues {ev[0]:.2e} … {ev[-1]:.2e} (condition number {ev[-1] / ev[0]:.1e})")
    emit("task  lag | mean |Hessian chain|  mean |IBP estimate|  mean |difference|")
    for k, (hess, ibp) in enumerate(out):
        hess, ibp = np.asarray(hess), np.asarray(ibp)
        for lag in (0, 1, 2, 5, 10):
            g = np.array([hess[n, :, n - lag] for n in range(lag, T1)])
            s = np.array([ibp[n, :, n - lag] for n in range(lag, T1)])
            emit(f"{k + 1:4d} {lag:4d} | {np.abs(g).mean():19.4f}  {np.abs(s).mean():19.4f}  {np.abs(g - s).mean():18.4f}")
        acausal = np.array([ibp[n, :, m] for n in range(T1) for m in range(n + 1, T1)])
        emit(f"{k + 1:4d}    acausal blocks of the IBP estimate (exactly 0): mean |.| {np.abs(acausal).mean():.4f}")
    emit(f"time: {time.time() - t0:.0f} s (2 shared CPU cores, incl. compilation)")
    emit.write(a.out)


if __name__ == "__main__":
    main()
