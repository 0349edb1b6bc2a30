"""Throughput of the population theory on the paper-sized model, vs simulating the same grid.

Run: python benchmarks/theory_throughput.py [--points 10000] [--n-quad 2048] [--substeps 12]
     [--devices 2] [--estimator score] (--substeps 0: the adaptive Tsit5 solve with one point set)
     python benchmarks/theory_throughput.py --activation relu [--points 27]: the same model with
     a relu trunk and with the linear trunk, side by side in one run (cost per point, and each
     one's error against its own converged reference; docs/theory.md §6.2)

Model: N = 100, C = R = 10, two linear trunk layers of width 64 (the paper preset), online
protocol time map, t up to 50 (eval at 11 times). The grid is (r, s_a, s_b) on a regular lattice
with `--points` points, solved by `mtjax.sweep(..., model=mtjax.PopulationTheory(solver))` in vmapped chunks, each
chunk split over `--devices` XLA host devices (default: one per CPU core; XLA:CPU runs most of
these small batched operations on one thread, so two host devices use both cores).
Solver (default): the score estimator of J̄ A with fresh 2048-point sets at every field
evaluation and fixed-step Heun, 12 steps per saved interval (dt = 5/12) (`PopulationSolver(
n_quad=2048, estimator="score", n_substeps=12)`, docs/theory.md §4): as accurate as 1024 points at
20 steps (worst dynamics error 0.0058 vs 0.0060 nats) with 240 instead of 400 evaluations, 12 %
less time (1000 points, 2 devices: 31.1 vs 35.2 s). The accuracy table at the end compares it
on 6 grid points with a converged reference: the same scheme at 8192 points and 80 steps per
interval (dt = 1/16). Its error budget (docs/theory.md §4): the fresh-point noise acts like SGD
noise and raises the loss by ≈ κ dt / n_quad (κ ≈ 26 nats at the clean corner), plus the Heun
discretisation error; the reference's share of both is < 3e-4 nats. (The older reference, one
fixed 32768-point set with adaptive Tsit5, was itself up to 3e-3 nats off.)
The simulation rate is measured on a small sample of the same grid with the engine's online
protocol at lr = 0.01 (5000 steps reach t = 50), vmapped, and extrapolated per point.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import numpy as np


def _devices_from_argv(default: int) -> int:
    # XLA reads its flags when JAX starts, so the device count is set before `import mtjax`.
    if "--devices" in sys.argv:
        return int(sys.argv[sys.argv.index("--devices") + 1])
    return default


_N_DEV = _devices_from_argv(os.cpu_count() or 1)
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={_N_DEV}").strip()

import mtjax  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=10000)
    ap.add_argument("--n-quad", type=int, default=2048)
    ap.add_argument("--n-quad-eval", type=int, default=2048)
    ap.add_argument("--rtol", type=float, default=1e-3)
    ap.add_argument("--substeps", type=int, default=12)
    ap.add_argument("--estimator", default="score")
    ap.add_argument("--accuracy-only", action="store_true", help="skip the throughput runs")
    ap.add_argument("--activation", default=None, help="compare this trunk activation with the linear trunk")
    ap.add_argument("--nl-substeps", type=int, default=48,
                    help="Heun steps per saved interval for the nonlinear trunk (48: steps of ~0.1, docs/theory.md §6.2)")
    ap.add_argument("--sim-points", type=int, default=16)
    ap.add_argument("--devices", type=int, default=_N_DEV, help="XLA host devices each chunk is split over")
    ap.add_argument("--max-chunk", type=int, default=32,
                    help="points per vmapped chunk; small chunks keep each device's quadrature arrays in cache "
                         "(1000 points, 2 devices: 30.0 s at 32, 34.4 s at 64, 40.4 s at 1024)")
    args = ap.parse_args()
    side = int(round(args.points ** (1 / 3)))
    n_r = side
    n_s = int(np.ceil(np.sqrt(args.points / n_r)))
    grid = {"relatedness": list(np.linspace(0, 1, n_r)), "s_a": list(np.logspace(-2, 1, n_s)), "s_b": list(np.logspace(-2, 1, n_s))}
    n_points = n_r * n_s * n_s
    spec = mtjax.paper_spec()
    spec.pop("preset")
    spec["train"].update(protocol="online", n_steps=5000, eval_every=500, learning_rate=0.01, n_test=3200)
    spec["train"].pop("n_pool", None)
    solver = mtjax.PopulationSolver(n_quad=args.n_quad, n_quad_eval=args.n_quad_eval, rtol=args.rtol, atol=1e-5,
                                    estimator=args.estimator, n_substeps=args.substeps)
    if args.activation:
        return activation_cost(args, spec, solver)
    how = f"fresh-point Heun, {args.substeps} steps per interval" if args.substeps else f"adaptive Tsit5, rtol={args.rtol}"
    print(f"theory grid: {n_points} points (r {n_r} x s_a {n_s} x s_b {n_s}); solver n_quad={args.n_quad}, n_quad_eval={args.n_quad_eval}, "
          f"estimator={args.estimator}, {how}; {_N_DEV} host device(s) on {os.cpu_count()} cores")
    if not args.accuracy_only:
        throughput(args, spec, grid, solver, n_points, n_r, n_s)
    accuracy(spec, solver)


def throughput(args, spec, grid, solver, n_points, n_r, n_s):
    c0 = time.process_time()
    t0 = time.time()
    res = mtjax.sweep(spec, grid, out_dir=None, model=mtjax.PopulationTheory(solver), save_curves=False, progress=True,
                      memory_budget=4 * 2**30, max_chunk=args.max_chunk)
    t_th = time.time() - t0
    cpu_th = time.process_time() - c0
    ok = int((~res.summary.drop_duplicates("run")["diverged"].astype(bool)).sum())
    sub = {"relatedness": [0.0, 1.0], "s_a": [0.1, 10.0], "s_b": [0.1, 10.0], "seed": list(range(max(1, args.sim_points // 8)))}
    n_sim = 8 * len(sub["seed"])
    mtjax.sweep(spec, sub, out_dir=None, progress=False, save_curves=False)  # compile
    t0 = time.time()
    mtjax.sweep(spec, sub, out_dir=None, progress=False, save_curves=False)
    t_sim = (time.time() - t0) / n_sim
    rate_th = n_points / t_th
    print(f"\n{'':28s} {'points/s':>10s} {'s/point':>10s}")
    print(f"{'theory (incl. compile)':28s} {rate_th:10.2f} {1 / rate_th:10.4f}")
    print(f"{'simulation (online, vmapped)':28s} {1 / t_sim:10.2f} {t_sim:10.4f}")
    print(f"\ntheory wall time for {n_points} points: {t_th:.1f} s (target < 120 s), CPU time {cpu_th:.1f} s; solved without failure: {ok}/{n_points}")
    print(f"theory / simulation speed ratio: {rate_th * t_sim:.0f}x (target >= 100x)")



def activation_cost(args, spec, solver):
    """Linear and nonlinear trunk of the same model on the same grid: seconds per point (warm,
    the second of two identical sweeps) and each one's worst error against its own reference."""
    import equinox as eqx
    import jax.numpy as jnp

    side = max(1, int(round(args.points ** (1 / 3))))
    grid = {"relatedness": list(np.linspace(0, 1, side)), "s_a": list(np.logspace(-1, 1, side)), "s_b": list(np.logspace(-1, 1, side))}
    n = side**3
    refs = {"linear": mtjax.PopulationSolver(n_quad=8192, n_quad_eval=16384, n_substeps=80, n_sets=64, estimator="score"),
            args.activation: mtjax.PopulationSolver(n_quad=8192, n_quad_eval=args.n_quad_eval, n_substeps=48)}
    rows = []
    for act in ("linear", args.activation):
        sp = {**spec, "student": {**spec["student"], "activation": act}}
        # A sweep traces the report times, so the nonlinear trunk's step count is set here
        # (`PopulationSolver.dt_max` applies to direct calls only).
        solver_act = solver if act == "linear" else dataclasses.replace(solver, n_substeps=args.nl_substeps)
        times = []
        for _ in range(2):  # the second run is warm (compiled programs cached)
            t0 = time.time()
            mtjax.sweep(sp, grid, out_dir=None, model=mtjax.PopulationTheory(solver_act), save_curves=False, progress=False,
                        memory_budget=4 * 2**30, max_chunk=args.max_chunk)
            times.append(time.time() - t0)
        exp0 = mtjax.experiment_from_spec(sp)
        solve = eqx.filter_jit(mtjax.population_theory)
        worst = 0.0
        same_eval = dataclasses.replace(solver_act, n_quad_eval=refs[act].n_quad_eval)
        for r, sa, sb in [(0.0, 0.1, 0.1), (1.0, 10.0, 10.0), (0.5, 3.0, 3.0)]:
            e = mtjax.apply_axes(exp0, {"relatedness": r, "s_a": sa, "s_b": sb})
            ref = solve(e, mtjax.Seeds(0), solver=refs[act]).test_loss
            worst = max(worst, float(jnp.max(jnp.abs(solve(e, mtjax.Seeds(0), solver=same_eval).test_loss - ref))))
        rows.append((act, times[0] / n, times[1] / n, worst))
    print(f"\n{n} points (r x s_a x s_b = {side}^3), paper-sized model (N = 100, C = R = 10, 2 trunk layers of 64), t up to 50; "
          f"Heun steps per interval: linear {solver.n_substeps}, {args.activation} {args.nl_substeps}")
    print(f"{'trunk':8s} {'s/point cold':>13s} {'s/point warm':>13s} {'worst dynamics error vs reference (nats)':>42s}")
    for act, cold, warm, worst in rows:
        print(f"{act:8s} {cold:13.3f} {warm:13.3f} {worst:42.4f}")
    print(f"cost ratio {args.activation} / linear (warm): {rows[1][2] / rows[0][2]:.1f}x")


def accuracy(spec, solver):
    # Accuracy of the benchmarked solver settings against a tight reference on a few points of
    # the grid (the clean, related corner is where the quadrature noise matters most).
    import equinox as eqx
    import jax.numpy as jnp

    ref = mtjax.PopulationSolver(n_quad=8192, n_quad_eval=16384, n_substeps=80, n_sets=64, estimator="score")
    exp0 = mtjax.experiment_from_spec(spec)
    solve = eqx.filter_jit(mtjax.population_theory)
    print("\naccuracy of the benchmarked settings vs reference (score, fresh 8192-point sets, Heun 80 steps per interval):")
    # Two readings: as benchmarked (its own n_quad_eval evaluation points, whose sampling error
    # is part of what it reports), and the dynamics alone (the reference's evaluation points).
    same_eval = dataclasses.replace(solver, n_quad_eval=ref.n_quad_eval)
    print(f"{'r':>5s} {'s_a':>6s} {'s_b':>6s}  max|Δ loss| task 1, task 2 over the curve: as benchmarked | dynamics only (n_quad_eval {ref.n_quad_eval})")
    worst = 0.0
    for r, sa, sb in [(0.0, 0.1, 0.1), (0.5, 1.0, 1.0), (0.0, 10.0, 0.1), (1.0, 10.0, 10.0), (1.0, 0.01, 10.0), (0.5, 3.0, 3.0)]:
        e = mtjax.apply_axes(exp0, {"relatedness": r, "s_a": sa, "s_b": sb})
        b_ = solve(e, mtjax.Seeds(0), solver=ref)
        d = [jnp.max(jnp.abs(solve(e, mtjax.Seeds(0), solver=s).test_loss - b_.test_loss), axis=0) for s in (solver, same_eval)]
        worst = max(worst, float(jnp.max(d[1])))
        print(f"{r:5.2f} {sa:6.2f} {sb:6.2f}  {float(d[0][0]):.4f}, {float(d[0][1]):.4f} | {float(d[1][0]):.4f}, {float(d[1][1]):.4f}")
    print(f"worst dynamics error: {worst:.4f} nats")


if __name__ == "__main__":
    main()
