"""Adjoint choice for fitting: memory and accuracy of gradients through the population solve.

Objective: Σ over 10 save times and both tasks of the theory test loss, as a function of
(r, s_a, s_b) (the recovery benchmark's model: N = 32, R = C = 3, depth 1, width 8, t <= 10).
For each adjoint: the compiled program's temporary memory (XLA memory analysis), the wall time
of one gradient (after compilation), and the error against a reference gradient (central
finite differences of the objective solved at rtol 1e-8). Forward mode (`ForwardMode`, used
for the Levenberg–Marquardt Jacobian and the Hessian) is measured for the same 3 directions.

    python benchmarks/fit_adjoint.py
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

import diffrax  # noqa: E402
import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import mtjax  # noqa: E402

SPEC = {
    "teacher": {"n_features": 32, "rank": 3, "n_classes": 3, "scale": [1.0, 1.0], "noise": 1.0},
    "student": {"depth": 1, "width": 8, "bias_init": "zeros"},
    "train": {"protocol": "online", "n_steps": 2000, "eval_every": 200, "learning_rate": 0.005},
}
P0 = jnp.array([0.5, 1.5, 2.0])


def objective(exp, solver, p):
    e = mtjax.apply_axes(exp, {"relatedness": p[0], "s_a": p[1], "s_b": p[2]})
    th = mtjax.population_theory(e, mtjax.Seeds(0), jnp.arange(1.0, 11.0), solver=solver)
    return jnp.sum(th.test_loss)


def main():
    exp = mtjax.experiment_from_spec(SPEC)
    ref_solver = mtjax.PopulationSolver(n_quad=512, n_quad_eval=2048, rtol=1e-8, atol=1e-10, max_steps=100000, smooth_loss=True)
    f_ref = jax.jit(lambda p: objective(exp, ref_solver, p))
    h = 1e-3
    ref = np.array([(float(f_ref(P0 + h * e)) - float(f_ref(P0 - h * e))) / (2 * h) for e in np.eye(3)])
    print(f"reference gradient (central FD, rtol 1e-8): {ref}")
    print(f"{'adjoint':32s} {'rtol':>6} {'temp MiB':>9} {'grad s':>7} {'max rel err':>11}")
    for rtol in (1e-4,):
        for name, adj in (("RecursiveCheckpointAdjoint", diffrax.RecursiveCheckpointAdjoint()),
                          ("BacksolveAdjoint", diffrax.BacksolveAdjoint()),
                          ("ForwardMode (jacfwd)", diffrax.ForwardMode())):
            solver = mtjax.PopulationSolver(n_quad=512, n_quad_eval=2048, rtol=rtol, atol=rtol * 1e-2, adjoint=adj, smooth_loss=True)
            if isinstance(adj, diffrax.ForwardMode):
                g_fn = jax.jit(jax.jacfwd(lambda p: objective(exp, solver, p)))
            else:
                g_fn = jax.jit(jax.grad(lambda p: objective(exp, solver, p)))
            comp = g_fn.lower(P0).compile()
            mem = comp.memory_analysis()
            temp = getattr(mem, "temp_size_in_bytes", float("nan")) / 2**20
            g = np.asarray(comp(P0))
            t0 = time.time()
            jax.block_until_ready(comp(P0))
            dt = time.time() - t0
            err = np.max(np.abs(g - ref) / np.abs(ref))
            print(f"{name:32s} {rtol:6.0e} {temp:9.1f} {dt:7.2f} {err:11.2e}", flush=True)


if __name__ == "__main__":
    main()
