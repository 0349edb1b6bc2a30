"""Throughput of the paper protocol: mtjax vmapped vs one-at-a-time vs lean PyTorch, vs matmul peak.

Run: python benchmarks/sweep_throughput.py [--epochs 20] [--runs 128] [--ntrain 400]

All four measurements happen in this one invocation on this machine:
 (a) mtjax.sweep's vmapped chunks over a >= 100-run grid: the paper's rank-10 grid at one
     training size, relatedness x s_a x s_b = 5 x 6 x 6 = 180 multitask runs per seed;
     runs of one seed share inputs, training subset and minibatch order (the authors drew one
     teacher, dataset and init for all seeds) and the sweep chunks them together;
 (a2) the same sweep with the seeds mixed inside each chunk (every run's data batched), i.e.
     what (a) costs on a grid without that structure;
 (b) mtjax one run at a time: `simulate` jitted once, a Python loop over runs;
 (c) a lean sequential PyTorch loop of the same protocol (benchmarks/torch_baseline.py);
 (d) the float32 matmul peak (2048^3 GEMM, the best of XLA and PyTorch).
Compilation is excluded from (a) and (b) (each is warmed up first) and reported separately.
GFLOP/s counts the standard layer-wise forward+backward FLOPs of the protocol (the same count
for all three, i.e. the rate of useful work); mtjax evaluates a linear student through its
collapsed map x -> A x + a, which does fewer FLOPs for the same result, so the rate of FLOPs it
actually executes is printed too (analytic count).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(__file__))
import mtjax  # noqa: E402

try:
    import torch

    import torch_baseline
except ImportError:  # pragma: no cover
    torch = None


def matmul_peak(n: int = 2048, reps: int = 10) -> dict:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    t = time.perf_counter()
    for _ in range(reps):
        f(a).block_until_ready()
    out = {"xla": 2 * n**3 * reps / (time.perf_counter() - t) / 1e9}
    if torch is not None:
        torch.set_num_threads(os.cpu_count() or 1)
        x = torch.randn(n, n)
        x @ x
        t = time.perf_counter()
        for _ in range(reps):
            x @ x
        out["torch"] = 2 * n**3 * reps / (time.perf_counter() - t) / 1e9
    return out


def collapsed_flops_per_run(exp, shared: bool = True) -> float:
    """FLOPs mtjax actually executes for a linear paper-protocol run (analytic count).

    Per step: the collapsed map A = V W_L..W_1 (C·H·(H(L-1)+N) MACs) and the batch logits
    (B·N·C), forward + backward ~ 3x; per epoch: logits of the training set (the whole pool
    when seeds are mixed in a chunk) and the test set of both tasks (2·(n+n_test)·N·C MACs)."""
    t, s, tr = exp.teacher, exp.student, exp.train
    N, C, H, L, B = t.n_features, t.n_classes, s.width, s.depth, tr.batch_size
    collapse = C * H * (H * max(L - 1, 0) + N)
    steps = tr.n_epochs * tr.steps_per_epoch * sum(tr.task_multiplicity[k] for k in tr.active_tasks)
    per_step = 2 * 3 * (collapse + B * N * C)
    n_tr = tr.n_train if shared else tr.n_pool
    per_eval = 2 * sum(n_tr[k] + tr.n_test for k in tr.active_tasks) * N * C + 2 * len(tr.active_tasks) * collapse
    return float(steps * per_step + tr.n_evals * per_eval)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--ntrain", type=int, default=400)
    ap.add_argument("--seeds", type=int, default=1, help="seeds; runs = 5 x 6 x 6 x seeds")
    ap.add_argument("--loop-runs", type=int, default=6, help="runs timed for (b)")
    ap.add_argument("--torch-runs", type=int, default=3, help="runs timed for (c)")
    args = ap.parse_args()

    r_vals, s_vals = [0.0, 0.25, 0.5, 0.75, 1.0], [float(10**e) for e in (-2, -1.4, -0.8, -0.2, 0.4, 1)]
    grid = {"relatedness": r_vals, "s_a": s_vals, "s_b": s_vals, "ntrain": [args.ntrain],
            "single_task": [False], "seed": list(range(args.seeds))}
    n_runs = len(r_vals) * len(s_vals) ** 2 * args.seeds
    spec = mtjax.paper_spec(n_train=args.ntrain, n_epochs=args.epochs)
    flops = torch_baseline.flops_per_run(args.ntrain, args.ntrain, False, args.epochs) if torch else None
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} ({jax.default_backend()})")
    print(f"protocol: paper preset, multitask, ntrain={args.ntrain}, {args.epochs} epochs, grid of {n_runs} runs\n")

    # (a) vmapped sweep: warm up (compile) on the same grid, then time.
    t = time.perf_counter()
    mtjax.sweep(spec, grid, out_dir=None, progress=False, save_curves=False)
    t_warm = time.perf_counter() - t
    t = time.perf_counter()
    res = mtjax.sweep(spec, grid, out_dir=None, progress=False, save_curves=False)
    t_a = time.perf_counter() - t
    rate_a = n_runs / t_a

    # (a2) seeds mixed inside chunks: every run's data batched.
    # Same number of runs as (a): 5 r x 6 s_b x 6 seeds per s_a value, seeds mixed in one chunk.
    # 30 runs per seed is below the size from which the sweep chunks a seed's runs on their own
    # (32 runs: SEED_BLOCK_MIN_RUNS, mtjax/_sweep.py), so the sweep mixes the seeds by itself.
    mixed = {**grid, "s_a": [10.0], "seed": list(range(6 * args.seeds))}
    n_mixed = n_runs
    mtjax.sweep(spec, mixed, out_dir=None, progress=False, save_curves=False, max_chunk=n_runs)
    t = time.perf_counter()
    mtjax.sweep(spec, mixed, out_dir=None, progress=False, save_curves=False, max_chunk=n_runs)
    rate_a2 = n_mixed / (time.perf_counter() - t)

    exp = mtjax.experiment_from_spec(spec)
    inputs = eqx.filter_jit(mtjax.make_inputs)(exp, key=mtjax.Seeds(0).key("data"))
    exec_flops = collapsed_flops_per_run(exp)

    # (b) one run at a time, jit once.
    one = jax.jit(lambda sd: mtjax.simulate(exp, sd, inputs))
    sd = lambda i: mtjax.Seeds(0, 0, 0, i)  # noqa: E731
    jax.block_until_ready(one(sd(0)))
    t = time.perf_counter()
    for i in range(args.loop_runs):
        jax.block_until_ready(one(sd(i)))
    rate_b = args.loop_runs / (time.perf_counter() - t)

    # (c) PyTorch, sequential.
    rate_c = float("nan")
    if torch is not None:
        data = torch_baseline.make_data(s_a=10.0, s_b=1.0, relatedness=0.5)
        secs = [torch_baseline.train_paper(data, n_train=args.ntrain, n_epochs=args.epochs, train_seed=i)["seconds"]
                for i in range(args.torch_runs)]
        rate_c = args.torch_runs / sum(secs)

    peak = matmul_peak()
    peak_best = max(peak.values())
    rows = [("(a) mtjax vmapped sweep", rate_a), ("(a2) vmapped, seeds mixed", rate_a2),
            ("(b) mtjax one run at a time", rate_b), ("(c) PyTorch sequential", rate_c)]
    print(f"{'method':32s} {'runs/s':>9s} {'GFLOP/s':>9s} {'% of peak':>10s} {'vs (c)':>8s}")
    for name, rate in rows:
        gf = rate * flops / 1e9 if flops else float("nan")
        print(f"{name:32s} {rate:9.3f} {gf:9.2f} {100 * gf / peak_best:9.1f}% {rate / rate_c:7.2f}x")
    print(f"{'(d) float32 matmul peak':32s} {'':9s} {peak_best:9.2f}   ({', '.join(f'{k} {v:.1f}' for k, v in peak.items())})")
    print(f"\n(a)/(c) = {rate_a / rate_c:.2f}x (target >= 4x);  (a) = {100 * rate_a * flops / 1e9 / peak_best:.1f}% of peak (target >= 35%)")
    print(f"(a)/(b) = {rate_a / rate_b:.2f}x;  compile + first sweep: {t_warm:.1f} s;  timed sweep: {t_a:.1f} s")
    print(f"standard (layer-wise) FLOPs per run: {flops:.3e};  FLOPs mtjax executes (collapsed linear student, analytic): {exec_flops:.3e}")
    print(f"executed GFLOP/s of (a): {rate_a * exec_flops / 1e9:.2f} ({100 * rate_a * exec_flops / 1e9 / peak_best:.1f}% of peak)")
    print(f"(a2): {n_mixed} runs in chunks of {n_runs}; executed GFLOP/s {rate_a2 * collapsed_flops_per_run(exp, False) / 1e9:.2f}")
    div = int(res.summary.drop_duplicates('run')['diverged'].sum())
    print(f"diverged runs in (a): {div}")


if __name__ == "__main__":
    main()
