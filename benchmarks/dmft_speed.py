"""Cost of one paper-preset finite-data (DMFT) cell, old code and new side by side, and what
the fitting settings change in the multitask benefit.

Run: python benchmarks/dmft_speed.py [--old-rev REV] [--response 128 512] [--out docs/results/dmft_speed.txt]

Cells: the authors' rank-10 preset (N = 100, R = C = 10, depth-2 linear trunk of width 64,
quenched initial student of seed 0), ntrain in {100, 400, 800} (α = ntrain / 80), the
single-task cells at s_a in {0.158, 10} and the multitask cells s_a in {0.158, 10} x
s_b in {0.158, 10} x r in {0, 1}: 6 + 24 solves per setting, each a jitted call of
`mtjax.finite_data_theory` for one cell (the first call, which compiles, is not timed; the
median of the others is the cost per cell).  Time grid: the paper's t_max(n) = 2000 ceil(n/128)
x 1e-3, uniform steps; the benefit is single − multitask early-stopped task-1 loss (min over the
grid).

Settings:
- `reference`: the paper grid's (benchmarks/paper_finite.py): n_grid 20, 3 x 2048 draws,
  3 x 32 response draws, max_iter 15, tol 0.02, 8192 test points;
- `reference, draw seed 1`: the same with another seed of the fixed draws: the theory's own
  Monte Carlo spread, the scale against which the other rows' differences are read;
- `fit`: `mtjax.fit_solver()`, the settings fitting and design use (n_grid 16, 2048 test
  points, fixed point to tol 2e-3);
- `reference` / `fit, 3 x N response draws` for each N of `--response` (default 128 512): the
  response kernel's sampling, whose error enters the fixed point nonlinearly (docs/fitting.md §6).

`--old-rev REV`: the same reference cells solved by the mtjax of git revision REV (extracted with
`git archive` into a temporary folder and run in a subprocess), for the old cost per cell and a
check that the new code gives the same curves to within its Monte Carlo error.  2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from _report import Report

NTRAIN = (100, 400, 800)
S_VALUES = (0.158, 10.0)
REFERENCE = dict(n_grid=20, n_draws=2048, n_response=32, max_iter=15, tol=2e-2, n_quad_eval=8192)


def cells():
    single = [(n, sa, 1.0, 0.0, 0.0) for n in NTRAIN for sa in S_VALUES]
    multi = [(n, sa, sb, r, 1.0) for n in NTRAIN for sa in S_VALUES for sb in S_VALUES for r in (0.0, 1.0)]
    return single + multi


def solve_cells(settings: dict) -> dict:
    """Early-stopped task-1 loss of every cell and the median seconds per cell (after compiling)."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    import mtjax

    solver = mtjax.FiniteDataSolver(**settings)
    spec = mtjax.paper_spec(n_train=3200)
    spec["train"] = {**spec["train"], "protocol": "full_batch", "n_train": [3200, 3200], "n_pool": [3200, 3200],
                     "n_steps": settings["n_grid"], "eval_every": 1}  # fmt: skip
    e0 = mtjax.experiment_from_spec(spec)

    def one(n, sa, sb, r, w2, t_max):
        e = eqx.tree_at(lambda m: (m.train.n_train_active, m.train.task_weights, m.teacher.scale, m.teacher.relatedness),
                        e0, (jnp.stack([n, n]), jnp.stack([jnp.ones_like(w2), w2]), jnp.stack([sa, sb]), r[None]))  # fmt: skip
        th = mtjax.finite_data_theory(e, mtjax.Seeds(0), jnp.linspace(0.0, t_max, settings["n_grid"] + 1), solver=solver)
        return jnp.min(th.test_loss[:, 0]), th.iterations[0]

    run = eqx.filter_jit(one)
    losses, maps, times = [], [], []
    for c in cells():
        args = [jnp.asarray(x, float) for x in c] + [jnp.asarray(2000 * math.ceil(c[0] / 128) * 1e-3, float)]
        if not times:
            jax.block_until_ready(run(*args))  # compile
        t0 = time.perf_counter()
        out = jax.block_until_ready(run(*args))
        times.append(time.perf_counter() - t0)
        losses.append(float(out[0])), maps.append(int(out[1]))
    return {"loss": losses, "maps": maps, "seconds": float(np.median(times))}


def benefits(losses) -> np.ndarray:
    single = {(c[0], c[1]): x for c, x in zip(cells(), losses) if c[4] == 0.0}
    return np.array([single[(c[0], c[1])] - x for c, x in zip(cells(), losses) if c[4] == 1.0])


def run_old(rev: str) -> dict:
    """`solve_cells(REFERENCE)` with the mtjax of git revision `rev`, in a subprocess."""
    root = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", root, "archive", rev, "mtjax"], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        env = {**os.environ, "PYTHONPATH": tmp}
        code = f"import json, sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); " \
               f"import dmft_speed as b, mtjax; assert mtjax.__file__.startswith({tmp!r}), mtjax.__file__; " \
               f"print(json.dumps(b.solve_cells(b.REFERENCE)))"  # fmt: skip
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp)
        if out.returncode:
            raise SystemExit(f"the old revision failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old-rev", default=None, help="git revision whose mtjax to time side by side (e.g. 1aee864)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--response", type=int, nargs="*", default=[128, 512], help="extra rows: these numbers of response draws")
    args = ap.parse_args()
    import mtjax

    emit = Report()

    emit("# DMFT cost per paper-preset cell (depth 2, H = 64, C = 10, K = 2), 2 CPU cores")
    emit("# command: python benchmarks/dmft_speed.py " + " ".join(sys.argv[1:]))
    emit(f"# cells: {len(cells())} solves (ntrain {list(NTRAIN)}, s_a, s_b in {list(S_VALUES)}, r in [0, 1], 6 single-task)")
    fs = mtjax.fit_solver()
    fit_settings = {k: np.asarray(getattr(fs, k)).item() for k in [*REFERENCE, "min_iter"]}
    rows = {}
    if args.old_rev:
        rows[f"reference, mtjax@{args.old_rev}"] = run_old(args.old_rev)
    rows["reference"] = solve_cells(REFERENCE)
    # The Monte Carlo spread of the fixed draws: the same settings with another draw seed.
    rows["reference, draw seed 1"] = solve_cells({**REFERENCE, "seed": 1})
    rows["fit"] = solve_cells(fit_settings)
    # The response kernel's draws: its Monte Carlo error enters the fixed point nonlinearly, so
    # too few of them bias the curves (a C = 3 problem: task 2's loss 0.08 nats low at 3 x 32,
    # docs/fitting.md §6); these rows measure that on the preset.
    for n_resp in args.response:
        rows[f"reference, 3 x {n_resp} response draws"] = solve_cells({**REFERENCE, "n_response": n_resp})
        rows[f"fit, 3 x {n_resp} response draws"] = solve_cells({**fit_settings, "n_response": n_resp})
    ref = rows["reference"]
    b_ref = benefits(ref["loss"])
    emit(f"# reference settings: {REFERENCE}")
    emit(f"# fit settings (mtjax.fit_solver()): {fit_settings}")
    emit()
    emit(f"{'code, settings':34s} {'s/cell':>7s} {'maps':>5s} {'vs new ref: max|Δloss|':>23s} {'max|Δbenefit|':>14s} {'rms':>7s}")
    for name, r in rows.items():
        dl = np.abs(np.asarray(r["loss"]) - ref["loss"])
        db = benefits(r["loss"]) - b_ref
        emit(f"{name:34s} {r['seconds']:7.2f} {np.median(r['maps']):5.0f} {dl.max():23.4f} {np.abs(db).max():14.4f} "
             f"{np.sqrt(np.mean(db ** 2)):7.4f}")
    emit()
    emit(f"# benefit range (reference): {b_ref.min():.3f} .. {b_ref.max():.3f} nats")
    emit.write(args.out)


if __name__ == "__main__":
    main()
