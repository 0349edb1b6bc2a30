"""One-command device check: the rank-10 simulation grid, 10^4 population-theory points and 20 DMFT cells.

Run: python benchmarks/device_suite.py [--scale full|tiny] [--time-budget 450] [--out FILE]

Meant for one GPU (full scale: < 8 min); `--scale tiny` runs every code path in under a minute
on two CPU cores (tests/test_device_suite.py). Prints the device, the versions and one markdown
table with a row per part; `--out FILE` writes the same text to FILE.

Parts (full scale):

 (a) simulation of the authors' whole rank-10 grid (`mtjax.select_cells(mtjax.authors_table("rank-10"),
     "rank-10", "full")`: 6 ntrain x (6 single-task + 180 multitask cells) x 5 seeds = 5580 runs) with
     the paper protocol (`mtjax.reproduction_spec("rank-10")`: validation every 10 epochs) but
     `--epochs` (200, a multiple of 10) instead of 2000 epochs, so that the grid fits the time
     budget; one `mtjax.sweep` per (ntrain, single/multitask), i.e. per compile group, smallest first.
     Warm: the first piece (ntrain 100, multitask) swept again. Rates: runs/s and SGD steps/s
     (both tasks' steps, epochs x ceil(ntrain/128) x (1 + m)). Check: fraction of runs not diverged.
 (b) population theory on the paper-sized model over r x s_a x s_b = 22^3 = 10,648 points, with the
     solver and time map of benchmarks/theory_throughput.py (score estimator, fresh 2048-point sets,
     Heun 12 steps per saved interval; online protocol at lr 0.01 to t = 50), one `mtjax.sweep` per r
     value (one compiled program). Warm: the pieces after the first. Check: fraction solved without
     failure (not diverged).
 (c) 20 DMFT cells of benchmarks/paper_finite.py (its `base_experiment`, time map `tmax`, solver
     `GRID_SOLVER` with 512 draws and n_grid 20): ntrain 100 and 200, single task at s_a in {0.158, 10},
     multitask at s_a, s_b in {0.158, 10}, r in {0, 1}; vmapped in chunks of `--dmft-batch` cells.
     Warm: the chunks after the first. Check: fraction converged and not diverged; the note gives
     the median |theory - authors| of the early-stopped loss over those cells (nats).

Columns: `wall s` is the part's whole time including compilation; `compile+first s` the first
piece (compilation and its run); `rate` = work done / wall s; `warm rate` = work / time of pieces
run with a compiled program (see each part). `--time-budget` (seconds, default 450): part (a) stops
starting new pieces once the next one would end after 45 % of it, (b) after 65 %, (c) after 100 %
(each part runs at least its first piece); the skipped work is named in the note and the rates
count only the work done.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(__file__))
import mtjax  # noqa: E402
from paper_finite import GRID_SOLVER, base_experiment, tmax  # noqa: E402

DEADLINES = {"a": 0.45, "b": 0.65, "c": 1.0}  # fraction of --time-budget by which each part stops
COLUMNS = ["part", "work done", "wall s", "compile+first s", "rate", "warm rate", "unit", "SGD steps/s", "ok", "note"]


class Clock:
    """Elapsed time of the whole command and the budget guard."""

    def __init__(self, budget: float):
        self.t0, self.budget = time.perf_counter(), budget

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def allows(self, part: str, estimate: float) -> bool:
        """Whether a piece estimated to take `estimate` s ends before `part`'s deadline."""
        return self.elapsed() + estimate <= DEADLINES[part] * self.budget


def timed(f, *args, **kwargs):
    t = time.perf_counter()
    out = jax.block_until_ready(f(*args, **kwargs))
    return out, time.perf_counter() - t


def _fmt(x, digits: int = 3) -> str:
    if isinstance(x, str):
        return x
    if x is None or not math.isfinite(x):
        return "nan"
    return f"{x:.{digits}g}" if abs(x) < 1e4 else f"{x:.3e}"


# (a) simulation of the rank-10 grid -----------------------------------------------------------


def sim_pieces(scale: str):
    """The authors' cells as sweep grids, one per (ntrain, single/multitask), smallest first."""
    authors = mtjax.authors_table("rank-10")
    subset = None
    if scale == "tiny":
        subset = {"main_train_pts": [100], "relatedness": [0.0, 1.0], "s_a": [10.0], "s_b": [0.1585, 10.0], "train_seed": [0]}
    cells = mtjax.select_cells(authors, "rank-10", "full", subset)
    pieces = []
    for n in sorted(cells["main_train_pts"].unique()):
        for single in (False, True):
            c = cells[(cells["main_train_pts"] == n) & (cells["single_task"] == single)]
            if not len(c):
                continue
            grid = {"ntrain": [int(n)], "s_a": sorted(float(v) for v in c["s_a"].unique()), "single_task": [single],
                    "seed": sorted(int(v) for v in c["train_seed"].unique())}  # fmt: skip
            if not single:
                grid["relatedness"] = sorted(float(v) for v in c["relatedness"].unique())
                grid["s_b"] = sorted(float(v) for v in c["s_b"].unique())
            pieces.append(grid)
    return pieces


def sim_spec(scale: str, epochs: int) -> dict:
    spec = mtjax.reproduction_spec("rank-10", overrides={"train": {"n_epochs": epochs}})
    if scale == "tiny":  # every code path, at a size that compiles and runs in seconds
        spec["teacher"]["n_features"] = 30
        spec["student"]["width"] = 16
        spec["train"].update(n_pool=[200, 200], n_test=200, eval_every=1)
    return spec


def part_simulation(args, clock: Clock) -> dict:
    epochs = 2 if args.scale == "tiny" else args.epochs
    spec = sim_spec(args.scale, epochs)
    batch = spec["train"]["batch_size"]
    kw = dict(out_dir=None, progress=False, save_curves=False, memory_budget=args.memory_budget)

    def size(grid):  # (runs, SGD steps of both tasks)
        runs = int(np.prod([len(v) for k, v in grid.items() if k not in ("ntrain", "single_task")]))
        steps_per_run = epochs * math.ceil(grid["ntrain"][0] / batch) * (1 if grid["single_task"][0] else 2)
        return runs, runs * steps_per_run

    pieces = sim_pieces(args.scale)
    t_part = time.perf_counter()
    done_runs = done_steps = 0
    ok = []
    skipped = []
    first_s = warm_s = compile_s = float("nan")
    warm_runs = 0
    last: dict[bool, tuple[float, int]] = {}  # single_task -> (seconds, batches per epoch) of its latest piece
    for i, grid in enumerate(pieces):
        runs, steps = size(grid)
        single, nb = grid["single_task"][0], math.ceil(grid["ntrain"][0] / batch)
        if i:
            # The latest piece of the same kind (else the first piece), its run time scaled by the
            # minibatches per epoch (the sequential steps) and its compilation time not.
            t_last, nb_last = last.get(single, last[False])
            c = min(max(compile_s, 0.0), t_last)
            if not clock.allows("a", c + (t_last - c) * nb / nb_last):
                skipped.append((single, grid["ntrain"][0], runs))
                continue
        res, t = timed(mtjax.sweep, spec, grid, **kw)
        last[single] = (t, nb)
        if i == 0:
            first_s = t
            res, warm_s = timed(mtjax.sweep, spec, grid, **kw)  # the same compiled program, warm
            warm_runs, compile_s = runs, first_s - warm_s
        done_runs += runs
        done_steps += steps
        ok.append(~res.summary.groupby("run")["diverged"].any())
    wall = time.perf_counter() - t_part - (warm_s if math.isfinite(warm_s) else 0.0)  # the warm repeat is not work done
    total_runs = sum(size(g)[0] for g in pieces)
    ok = pd.concat(ok)
    k = spec["train"]["eval_every"]
    note = (f"{epochs} of the protocol's 2000 epochs, validation every {k} epoch{'s' * (k > 1)}; "
            "warm = the first piece swept again")
    if skipped:
        kinds = [f"{name} ntrain {[n for sg, n, _ in skipped if sg == single]}" for single, name in ((False, "multitask"), (True, "single-task"))
                 if any(sg == single for sg, _, _ in skipped)]  # fmt: skip
        note += f"; skipped (time budget): {sum(r for *_, r in skipped)} runs, {', '.join(kinds)}"
    return {"part": "(a) simulation, rank-10 grid", "work done": f"{done_runs}/{total_runs} runs",
            "wall s": wall, "compile+first s": first_s, "rate": done_runs / wall, "warm rate": warm_runs / warm_s,
            "unit": "runs/s", "SGD steps/s": f"{_fmt(done_steps / wall)} (warm {_fmt(size(pieces[0])[1] / warm_s)})",
            "ok": float(ok.mean()), "note": "ok = fraction of runs not diverged; " + note}  # fmt: skip


# (b) population theory ------------------------------------------------------------------------


def theory_setup(scale: str):
    """Spec, solver and grid axes of benchmarks/theory_throughput.py (full) or a tiny version."""
    spec = mtjax.paper_spec()
    spec.pop("preset")
    spec["train"].update(protocol="online", n_steps=5000, eval_every=500, learning_rate=0.01, n_test=3200)
    spec["train"].pop("n_pool", None)
    if scale == "tiny":
        spec["teacher"]["n_features"] = 30
        spec["student"]["width"] = 16
        spec["train"].update(n_steps=500, eval_every=250, n_test=200)
        solver = mtjax.PopulationSolver(n_quad=64, n_quad_eval=128, estimator="score", n_substeps=2)
        side = 2
    else:
        solver = mtjax.PopulationSolver(n_quad=2048, n_quad_eval=2048, rtol=1e-3, atol=1e-5, estimator="score", n_substeps=12)
        side = 22
    s_vals = list(np.logspace(-2, 1, side))
    axes = {"relatedness": list(np.linspace(0, 1, side)), "s_a": s_vals, "s_b": s_vals}
    return spec, solver, axes


def part_population(args, clock: Clock) -> dict:
    spec, solver, axes = theory_setup(args.scale)
    model = mtjax.PopulationTheory(solver)
    per_piece = len(axes["s_a"]) * len(axes["s_b"])
    t_part = time.perf_counter()
    times, ok, skipped = [], [], 0
    for r in axes["relatedness"]:  # one piece per r value: the same compiled program for all
        if times and not clock.allows("b", times[-1]):
            skipped += 1
            continue
        res, t = timed(mtjax.sweep, spec, {**axes, "relatedness": [r]}, model=model, out_dir=None, save_curves=False,
                       progress=False, memory_budget=args.memory_budget)  # fmt: skip
        times.append(t)
        ok.append(~res.summary.groupby("run")["diverged"].any())
    wall = time.perf_counter() - t_part
    done = per_piece * len(times)
    warm = per_piece * (len(times) - 1) / sum(times[1:]) if len(times) > 1 else float("nan")
    note = (f"ok = fraction solved without failure; {per_piece} points per piece (one r value); n_quad {solver.n_quad}, "
            f"Heun {solver.n_substeps} steps per interval; warm = pieces after the first")  # fmt: skip
    if skipped:
        note += f"; skipped (time budget): {skipped} of {len(axes['relatedness'])} r values"
    return {"part": "(b) population theory", "work done": f"{done}/{per_piece * len(axes['relatedness'])} points",
            "wall s": wall, "compile+first s": times[0], "rate": done / wall, "warm rate": warm, "unit": "points/s",
            "SGD steps/s": "-", "ok": float(pd.concat(ok).mean()), "note": note}  # fmt: skip


# (c) DMFT cells -------------------------------------------------------------------------------


def dmft_cells(scale: str, authors: pd.DataFrame) -> list[tuple]:
    """(ntrain, s_a, s_b, r, single) at the file's exact grid values (paper_finite.py's default
    cell set at ntrain 100, 200 with --single-sa-only: 4 single-task + 16 multitask cells)."""
    pick = lambda col, want: [min(authors[col].unique(), key=lambda v: abs(v - w)) for w in want]  # noqa: E731
    if scale == "tiny":
        (sa,), (sb,), (r,) = pick("s_a", [10.0]), pick("s_b", [10.0]), pick("relatedness", [1.0])
        return [(100, sa, 1.0, 0.0, True), (100, sa, sb, r, False)]
    sas, rs = pick("s_a", [0.158, 10.0]), pick("relatedness", [0.0, 1.0])
    cells = [(n, sa, 1.0, 0.0, True) for n in (100, 200) for sa in sas]
    return cells + [(n, sa, sb, r, False) for n in (100, 200) for sa in sas for sb in sas for r in rs]


def part_dmft(args, clock: Clock) -> dict:
    authors = mtjax.authors_table("rank-10")
    cells = dmft_cells(args.scale, authors)
    if args.scale == "tiny":
        solver, b = mtjax.FiniteDataSolver(n_grid=4, n_draws=32, n_response=32, n_quad_eval=256, max_iter=4), 1
    else:
        solver, b = mtjax.FiniteDataSolver(n_grid=20, n_draws=512, **GRID_SOLVER), args.dmft_batch
    T = solver.n_grid  # t_max / 20 <= 1 at ntrain <= 200: paper_finite.py's grid there
    e0 = base_experiment(T)

    def one(n, sa, sb, r, w2, t_max):  # as paper_finite.py: full-batch GD at the paper's rates
        e = eqx.tree_at(lambda m: (m.train.n_train_active, m.train.task_weights, m.teacher.scale, m.teacher.relatedness),
                        e0, (jnp.stack([n, n]), jnp.stack([jnp.ones_like(w2), w2]), jnp.stack([sa, sb]), r[None]))  # fmt: skip
        th = mtjax.finite_data_theory(e, mtjax.Seeds(0), jnp.linspace(0.0, t_max, T + 1), solver=solver)
        return jnp.min(th.test_loss[:, 0]), th.converged & ~th.diverged

    run = eqx.filter_jit(jax.vmap(one))
    padded = cells + [cells[-1]] * (-len(cells) % b)
    t_part = time.perf_counter()
    times, loss, ok = [], [], []
    for j in range(0, len(padded), b):
        if times and not clock.allows("c", times[-1]):
            break
        chunk = padded[j : j + b]
        xs = [jnp.asarray([c[q] for c in chunk], float) for q in range(4)]
        xs += [jnp.asarray([0.0 if c[4] else 1.0 for c in chunk]), jnp.asarray([tmax(c[0]) for c in chunk])]
        (lo, good), t = timed(run, *xs)
        times.append(t)
        loss += list(np.asarray(lo))
        ok += list(np.asarray(good))
    wall = time.perf_counter() - t_part
    done = min(len(loss), len(cells))
    loss, ok = np.asarray(loss[:done]), np.asarray(ok[:done], bool)
    # The authors' early-stopped loss of task 1 per cell (mean over their 5 seeds).
    stats = mtjax.cell_statistics(authors, "rank-10", prefix="authors")
    key = lambda x: round(float(x), 12)  # noqa: E731  (how cell_statistics keys the grid values)
    single = stats[stats.single_task].set_index(["main_train_pts", "s_a"])["authors_mean"]
    multi = stats[~stats.single_task].set_index(["main_train_pts", "s_a", "s_b", "relatedness"])["authors_mean"]
    ref = np.asarray([single[(n, key(sa))] if s else multi[(n, key(sa), key(sb), key(r))] for n, sa, sb, r, s in cells[:done]])
    dev = np.abs(loss - ref)[ok]
    med = float(np.median(dev)) if dev.size else float("nan")
    warm = (b * (len(times) - 1)) / sum(times[1:]) if len(times) > 1 else float("nan")
    note = (f"ok = fraction converged, not diverged; median deviation of the early-stopped loss from the authors' over those: "
            f"{_fmt(med)} nats; n_grid {T}, draws {solver.n_draws}, response {solver.n_response}, max_iter {solver.max_iter}, "
            f"{b} cells per chunk; warm = chunks after the first")  # fmt: skip
    if done < len(cells):
        note += f"; skipped (time budget): {len(cells) - done} cells"
    return {"part": "(c) DMFT, paper preset", "work done": f"{done}/{len(cells)} cells", "wall s": wall,
            "compile+first s": times[0], "rate": done / wall, "warm rate": warm, "unit": "cells/s", "SGD steps/s": "-",
            "ok": float(ok.mean()) if done else float("nan"), "note": note}  # fmt: skip


# ---------------------------------------------------------------------------------------------


def table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join(" --- " for _ in COLUMNS) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r[c]) for c in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", choices=["full", "tiny"], default="full")
    ap.add_argument("--epochs", type=int, default=200, help="epochs of the simulated protocol at full scale (the paper: 2000)")
    ap.add_argument("--time-budget", type=float, default=450.0, help="seconds the three parts together may take")
    ap.add_argument("--memory-budget", type=float, default=None,
                    help="bytes per device for a sweep chunk (default 8 GiB on a GPU, 2 GiB otherwise)")
    ap.add_argument("--dmft-batch", type=int, default=5, help="DMFT cells per vmapped chunk at full scale")
    ap.add_argument("--out", default=None, help="also write the header and table to this file")
    args = ap.parse_args(argv)
    if args.epochs < 10 or args.epochs % 10:
        ap.error(f"--epochs={args.epochs} must be a positive multiple of 10 (the protocol validates every 10 epochs)")
    if args.memory_budget is None:
        args.memory_budget = (8 if jax.default_backend() == "gpu" else 2) * 2**30

    clock = Clock(args.time_budget)
    dev = jax.devices()[0]
    header = [
        f"# mtjax device suite, scale {args.scale}: {len(jax.devices())} x {dev.device_kind} ({jax.default_backend()}), "
        f"jax {jax.__version__}, mtjax {mtjax.__version__}",
        "# command: python benchmarks/device_suite.py " + " ".join(sys.argv[1:] if argv is None else argv),
        f"# time budget {args.time_budget:.0f} s (parts stop at {', '.join(f'{k} {v:.0%}' for k, v in DEADLINES.items())} of it)",
    ]
    print("\n".join(header), flush=True)
    rows = []
    for part in (part_simulation, part_population, part_dmft):
        rows.append(part(args, clock))
        print(f"# {rows[-1]['part']}: {rows[-1]['wall s']:.1f} s (total {clock.elapsed():.1f} s)", flush=True)
    text = "\n".join(header) + f"\n# total {clock.elapsed():.1f} s\n\n" + table(rows) + "\n"
    print("\n" + table(rows), flush=True)
    print(f"\ntotal {clock.elapsed():.1f} s")
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
