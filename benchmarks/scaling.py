"""Sweep throughput (runs/s) against the number of devices the run axis is sharded over.

Run: python benchmarks/scaling.py [--devices 1,2,4] [--epochs 10] [--seeds 4] [--repeats 3]

For each device count n a fresh Python process is started with
`XLA_FLAGS=--xla_force_host_platform_device_count=n` on CPU (the flag must be set before JAX
starts); on a machine with accelerators, pass `--real` to use the first n real devices
instead. Each process sweeps the same grid (paper protocol, multitask, 4 x 4 x seeds runs)
with `mtjax.sweep(..., devices=n)`: one warm-up sweep (compilation, reported separately),
then the best of `--repeats` timed sweeps. The tables are checked to agree between device
counts (to float32 rounding: the per-device batch size changes XLA's code, see
tests/test_distributed.py).

On a CPU, forced host devices are not extra hardware: they share the same cores (and XLA's
CPU thread pool), so this table measures the cost of partitioning a chunk, not a speedup.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

CHILD = """
import json, sys, time
import jax
import mtjax
n, epochs, seeds, repeats = {n}, {epochs}, {seeds}, {repeats}
assert len(jax.local_devices()) >= n, jax.local_devices()
grid = {{"relatedness": [0.0, 0.25, 0.75, 1.0], "s_a": [10.0], "s_b": [0.01, 0.16, 2.5, 10.0], "ntrain": [400],
         "single_task": [False], "seed": list(range(seeds))}}
spec = mtjax.paper_spec(n_train=400, n_epochs=epochs)
kw = dict(out_dir=None, progress=False, save_curves=False, devices=n)
t = time.perf_counter()
mtjax.sweep(spec, grid, **kw)
warm = time.perf_counter() - t
times = []
for _ in range(repeats):
    t = time.perf_counter()
    res = mtjax.sweep(spec, grid, **kw)
    times.append(time.perf_counter() - t)
s = res.summary.sort_values(["run", "task"])
print("RESULT " + json.dumps({{"n": n, "runs": int(s["run"].nunique()), "warm": warm, "best": min(times),
      "device": str(jax.local_devices()[0].device_kind), "loss": s["early_stopped_loss"].tolist()}}))
"""


def run_child(n: int, args) -> dict:
    env = os.environ.copy()
    if not args.real:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n}"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    code = CHILD.format(n=n, epochs=args.epochs, seeds=args.seeds, repeats=args.repeats)
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", default="1,2,4", help="comma-separated device counts (default 1,2,4)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=4, help="runs = 4 x 4 x seeds (default 4: 64 runs)")
    ap.add_argument("--repeats", type=int, default=3, help="timed sweeps per device count; the best is kept")
    ap.add_argument("--real", action="store_true", help="use real devices (GPUs) instead of forced CPU host devices")
    args = ap.parse_args()
    counts = [int(x) for x in args.devices.split(",")]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"paper protocol, multitask, ntrain=400, {args.epochs} epochs, {16 * args.seeds} runs, best of {args.repeats}\n")
    rows = [run_child(n, args) for n in counts]
    base = rows[0]
    import numpy as np

    print(f"device kind: {base['device']}{'' if args.real else ' (forced host devices)'}\n")
    print("| devices | runs/s | speedup vs 1st row | sweep time (s) | compile + first sweep (s) | max rel. diff of losses vs 1st row |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        diff = float(np.nanmax(np.abs(np.subtract(r["loss"], base["loss"])) / np.abs(base["loss"])))
        print(f"| {r['n']} | {r['runs'] / r['best']:.2f} | {base['best'] / r['best']:.2f}x | {r['best']:.2f} | {r['warm']:.1f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
