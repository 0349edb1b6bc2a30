"""Storing a large sweep's curves table: Parquet vs CSV (size, write, read), and to_xarray.

Run: python benchmarks/results_storage.py [--runs 10000] [--evals 200] [--repeats 3]

Builds the curves table of a synthetic sweep of `--runs` runs (relatedness x s_b x seed) with
`--evals` evaluations of 2 tasks each: 4 x 10^6 rows by default, with the column set and dtypes
of a real sweep's curves table (taken from a one-run sweep of a small model) and random metric
values. Writes and reads it with the sweep store's `mtjax.save_table` / `mtjax.load_table` as
Parquet and as CSV, and times `SweepResult.to_xarray("curves")` on it: each the best of
`--repeats` (the first call includes one-time set-up; reads find the file in the page cache).
Prints one table.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np
import pandas as pd

import mtjax

SMALL_SPEC = {
    "teacher": {"n_features": 20, "rank": 3, "n_classes": 3, "scale": [3.0, 3.0], "noise": 0.1},
    "student": {"depth": 2, "width": 8},
    "train": {"protocol": "paper", "n_train": [32, 32], "n_test": 256, "batch_size": 16, "n_epochs": 2,
              "eval_every": 1, "learning_rate": 0.05},
}  # fmt: skip


def synthetic_curves(n_runs: int, n_evals: int, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """A curves table of `n_runs` x `n_evals` x 2 tasks with a real sweep's columns and dtypes."""
    real = mtjax.sweep(SMALL_SPEC, {"s_b": [1.0]}, out_dir=None, progress=False).curves
    n_seeds = max(1, n_runs // 100)
    grid = {"relatedness": list(np.linspace(0, 1, 10)), "s_b": list(np.linspace(0.5, 5, 10)), "seed": list(range(n_seeds))}
    runs = mtjax.expand_grid(grid).iloc[:n_runs]
    per_run = 2 * n_evals
    n = len(runs) * per_run
    rng = np.random.default_rng(seed)
    lr = float(real["lr"].iloc[0])
    step = np.tile(np.arange(n_evals, dtype=real["step"].dtype) * 10, 2 * len(runs))
    cols = {}
    for c in real.columns:
        if c in runs:
            cols[c] = np.repeat(runs[c].to_numpy(), per_run)
        elif c == "task":
            cols[c] = np.tile(np.repeat(np.array([1, 2], real[c].dtype), n_evals), len(runs))
        elif c == "step":
            cols[c] = step
        elif c == "time":
            cols[c] = (step * lr).astype(real[c].dtype)
        elif c == "diverged":
            cols[c] = np.zeros(n, bool)
        elif c in ("train_loss", "test_loss", "test_loss_se", "test_acc"):
            cols[c] = rng.uniform(0, 1.2, n).astype(real[c].dtype)
        else:  # a parameter or label constant over the sweep
            cols[c] = pd.Series(real[c].iloc[0], index=range(n), dtype=real[c].dtype)
    return pd.DataFrame(cols, columns=list(real.columns)), grid


def best_of(n: int, f) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--evals", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    curves, grid = synthetic_curves(args.runs, args.evals)
    print(f"curves table: {len(curves):,} rows x {curves.shape[1]} columns "
          f"({curves.memory_usage(deep=True).sum() / 2**20:.0f} MiB in memory); "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for fmt in ("parquet", "csv"):
            path = os.path.join(d, f"curves.{fmt}")
            t_write = best_of(args.repeats, lambda: mtjax.save_table(path, curves))
            t_read = best_of(args.repeats, lambda: mtjax.load_table(path))
            assert mtjax.load_table(path).shape == curves.shape
            rows.append((fmt, os.path.getsize(path) / 2**20, t_write, t_read))
    res = mtjax.SweepResult(curves, curves.iloc[:0], None, grid=grid)
    t_xr = best_of(args.repeats, lambda: res.to_xarray("curves"))
    ds = res.to_xarray("curves")
    (_, sp, wp, rp), (_, sc, wc, rc) = rows
    print()
    print("| format | size on disk (MiB) | write (s) | read (s) |")
    print("|---|---|---|---|")
    for fmt, size, w, r in rows:
        print(f"| {fmt} | {size:.0f} | {w:.1f} | {r:.1f} |")
    print(f"| csv / parquet | {sc / sp:.1f}x | {wc / wp:.1f}x | {rc / rp:.1f}x |")
    print()
    dims = " x ".join(f"{k} {v}" for k, v in ds.sizes.items())
    print(f"to_xarray('curves'): {t_xr:.1f} s -> Dataset of {dims}, {len(ds.data_vars)} variables")


if __name__ == "__main__":
    main()
