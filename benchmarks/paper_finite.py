"""Finite-data theory (DMFT, depth 2) vs the authors' rank-10 measurements.

Run: python benchmarks/paper_finite.py [--data PATH]  (default: the authors' rank-10.csv shipped with mtjax)
         [--n-grid 20] [--max-step 1] [--draws 512] [--response 32] [--r 0 1] [--sa ...] [--sb ...] [--full]
The table of docs/results/paper_finite.txt:
    python benchmarks/paper_finite.py --ntrain 100 200 400 800 --sa 10 --sb 0.158 10 --r 0 1
and of the full grid, re-tabulated from its stored cells (add `--replot` to any command):
    python benchmarks/paper_finite.py --full --draws 2048 --out docs/results/paper_finite_full.txt --replot
Output: the table `--out` (default docs/results/paper_finite.txt) and the per-cell table as CSV next to it.
Resumable: every solved chunk of cells is stored at once in `<out>.cells.parquet`
(`mtjax.ResumableTable`: one row per cell with its curve, tagged with the solver settings);
rerunning the same command skips the cells stored with the same settings, so a long grid
(`--full`) can be run in pieces and on several machines into different `--out` files.

Theory: `mtjax.finite_data_theory` with the paper's teacher (N = 100, R = C = 10, σ = 1/sqrt(N)
on a noisy fraction q = 1/2 of the examples, train and validation alike) and student (two linear
trunk layers of width 64 with biases, orthogonal init, PyTorch bias init, heads per task), one
realisation of teacher and initial student (seed 0), **quenched** initial condition (the exact
initial overlaps of that student; the upper layer, biases and heads are its own).

Time map (as `benchmarks/paper_population.py`): minibatch SGD at lr 1e-3 is treated as gradient
flow on the training set, t = lr x task-1 steps, so 2000 epochs at ntrain n end at
t_max(n) = 2000 ceil(n / 128) x 1e-3; the alternation with m = ntrain2 // ntrain = 1 gives the
task rates (1, 1), single task (1, 0).  The DMFT describes full-batch GD with step
Δ = t_max / n_grid (the "GD-step approximation": an Euler discretisation of the flow; it also
quantises the early-stopping time to the grid, where the authors minimise over every epoch).
n_grid = max(--n-grid, t_max / --max-step): Δ = 0.1 at n = 100 up to 1.0 at n = 3200 with the
defaults (a grid of 20 steps at n = 3200, Δ = 2.5, diverges: GD is unstable there).
`--step-growth q` instead uses exactly --n-grid geometric steps Δ_(n+1) = q Δ_n summing to
t_max (docs/dmft.md §3: small steps early, large late, the cost of a uniform grid of --n-grid).
`--horizon h` solves a uniform grid only up to t = min(t_max, h) at the same step Δ: the DMFT is
causal (the curve up to h does not depend on later times; the Monte Carlo draws do change with
the grid's length: ntrain 3200, s_a = 10 at t = 10 is 0.750 to h = 10 and 0.732 in the 50-step
solve, 3 x 2048 and 3 x 256 draws) and the cost grows ~ n_grid^3, so this prices a long grid at
its useful part where the early-stopping time lies well before t_max (not at ntrain 3200 with
3 x 256 response draws: its curves fall to t_max, docs/dmft.md §6.4); a cell whose minimum lands
on the horizon is flagged and left out.  To compile once for all cells the theory is run
with the full-batch protocol, n_train_active = ntrain and task weights (1, 1) / (1, 0) — the same
rates; task 2's process is then solved also in the single-task cells (with ρ_2 = 0 it does not act
on task 1).  α_k = ntrain / (N − K R) = ntrain / 80.

Authors' numbers: mean ± s.e. over their 5 training seeds of the early-stopped validation loss of
task 1 (single-task rows are repeated 30 times in the file: deduplicated per seed); the benefit is
single − multitask per seed (same seed = same training subset), mean ± s.e.

Cells: all 36 single-task cells (6 ntrain x 6 s_a); multitask cells for the product of `--r`,
`--sa`, `--sb` and all ntrain (default: a subset; `--full` = the authors' 1080).  Cells whose
fixed point did not converge (residual > tol) or diverged are flagged and left out of the
headline fractions.
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

import mtjax

from _report import Report


# Solver settings of the paper grid (the defaults of the flags below; paper_finite_size.py reuses them).
GRID_SOLVER = {"n_response": 32, "max_iter": 15, "tol": 2e-2, "n_quad_eval": 8192}
CELL_KEY = ["main_train_pts", "s_a", "s_b", "relatedness", "single"]  # a cell of the store (ResumableTable)


def tmax(n: int) -> float:
    """The paper protocol's theory time after its 2000 epochs at ntrain n (= 2000 ceil(n / 128) x 1e-3)."""
    return float(mtjax.paper(n_train=int(n)).train.t_max)


def base_experiment(n_grid: int):
    """The paper preset, re-expressed as full-batch GD (array fields vmapped per cell)."""
    spec = mtjax.paper_spec(n_train=3200)
    spec["train"] = {**spec["train"], "protocol": "full_batch", "n_train": [3200, 3200], "n_pool": [3200, 3200],
                     "n_steps": n_grid, "eval_every": 1}  # fmt: skip
    return mtjax.experiment_from_spec(spec)


def authors_tables(d: pd.DataFrame):
    """Per-cell authors' means ± s.e. (`mtjax.cell_statistics`): single (ntrain, s_a), multitask and
    benefit (ntrain, s_a, s_b, r); keys rounded as `mtjax.cell_statistics` rounds them (`_key`)."""
    c = mtjax.cell_statistics(d, "rank-10", prefix="authors")
    single = c[c.single_task].set_index(["main_train_pts", "s_a"])
    multi = c[~c.single_task].astype({"aux_train_pts": int}).set_index(["main_train_pts", "s_a", "s_b", "relatedness"])
    return (single[["authors_mean", "authors_sem"]].set_axis(["mean", "se"], axis=1),
            multi[["authors_mean", "authors_sem"]].set_axis(["mean", "se"], axis=1),
            multi[["authors_benefit", "authors_benefit_sem"]].set_axis(["mean", "se"], axis=1))


def _key(x: float) -> float:
    """A grid value as `mtjax.cell_statistics` keys it (rounded to 12 decimals), for the joins."""
    return round(float(x), 12)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(mtjax.default_data_dir() / "rank-10.csv"))
    ap.add_argument("--n-grid", type=int, default=20)
    ap.add_argument("--max-step", type=float, default=1.0, help="largest GD step Δ of the theory grid (stability; uniform grids only)")
    ap.add_argument("--step-growth", type=float, default=None,
                    help="geometric step schedule Δ_(n+1) = q Δ_n with this q in (1, 2] and exactly --n-grid steps "
                         "(docs/dmft.md §3); default: uniform steps")  # fmt: skip
    ap.add_argument("--horizon", type=float, default=None,
                    help="solve only to theory time min(t_max, HORIZON) at the same GD step Δ (uniform grids): the DMFT "
                         "is causal, so the curve up to the horizon is the full run's (up to its draws); cells whose minimum falls on the "
                         "horizon are flagged")  # fmt: skip
    ap.add_argument("--draws", type=int, default=512)
    ap.add_argument("--response", type=int, default=GRID_SOLVER["n_response"],
                    help="response draws per chunk (3 chunks); the default 32 biases the cells of ntrain >= 800 "
                         "upward, 256 do not (docs/dmft.md §6.4)")  # fmt: skip
    ap.add_argument("--max-iter", type=int, default=GRID_SOLVER["max_iter"])
    ap.add_argument("--tol", type=float, default=GRID_SOLVER["tol"])
    ap.add_argument("--damping", type=float, default=1.0, help="Picard damping λ in (0, 1] (FiniteDataSolver.damping)")
    ap.add_argument("--n-quad-eval", type=int, default=GRID_SOLVER["n_quad_eval"])
    ap.add_argument("--initial", choices=["quenched", "typical"], default="quenched",
                    help="the first layer's initial overlaps: the seed-0 student's own (quenched) or their N -> inf "
                         "values (typical: no overlap with the teacher span, Gram matrix I); docs/dmft.md §6.2")  # fmt: skip
    ap.add_argument("--width", choices=["fixed", "proportional", "proportional_n"], default="fixed",
                    help="N -> inf at fixed trunk width (fixed) or at fixed H/N = 0.64 (proportional, docs/dmft.md §4.3; "
                         "needs --initial typical; proportional_n: with its O(D/N) corrections at N = 100, §4.4)")
    ap.add_argument("--batch", type=int, default=2, help="cells per vmapped batch (lax.map batch_size)")
    ap.add_argument("--ntrain", type=int, nargs="*", default=None, help="subset of ntrain values")
    ap.add_argument("--r", type=float, nargs="*", default=[0.0, 1.0])
    ap.add_argument("--sa", type=float, nargs="*", default=None, help="multitask s_a values (default: 0.158, 10)")
    ap.add_argument("--sb", type=float, nargs="*", default=None, help="multitask s_b values (default: 0.158, 10)")
    ap.add_argument("--full", action="store_true", help="every multitask cell of the authors' grid")
    ap.add_argument("--no-multi", action="store_true", help="single-task cells only")
    ap.add_argument("--single-sa-only", action="store_true", help="single-task cells only for the multitask s_a values")
    ap.add_argument("--out", default="docs/results/paper_finite.txt")
    ap.add_argument("--replot", action="store_true", help="re-tabulate every cell stored with these settings (no solving)")
    args = ap.parse_args()

    d = pd.read_csv(args.data)
    ntrains = sorted(d.main_train_pts.unique()) if args.ntrain is None else args.ntrain
    s_vals = sorted(d.s_a.unique())
    r_vals = sorted(d.relatedness.unique())

    def pick(vals, want):  # match the file's exact grid values
        return [min(vals, key=lambda v: abs(v - w)) for w in want]

    if args.full:
        rs, sas, sbs = r_vals, s_vals, s_vals
    else:
        rs = pick(r_vals, args.r)
        sas = pick(s_vals, args.sa or [0.158, 10.0])
        sbs = pick(s_vals, args.sb or [0.158, 10.0])

    # Cells: (ntrain, s_a, s_b, r, single).  Single-task cells do not depend on s_b, r.
    cells = [(n, sa, 1.0, 0.0, True) for n in ntrains for sa in (sas if args.single_sa_only else s_vals)]
    if not args.no_multi:
        cells += [(n, sa, sb, r, False) for n in ntrains for sa in sas for sb in sbs for r in rs]
    emit = Report()

    geometric = args.step_growth is not None
    sched = dict(step_schedule="geometric", step_growth=args.step_growth) if geometric else {}

    if args.horizon is not None and (geometric or not args.horizon > 0):
        raise SystemExit(f"--horizon must be > 0 and takes uniform steps (got {args.horizon}, step growth {args.step_growth}): "
                         "drop --step-growth or --horizon")  # fmt: skip

    def full_grid(n):  # GD steps over the whole [0, t_max]: at least --n-grid, and steps Δ <= --max-step
        if geometric:  # small steps early, large late: --n-grid steps whatever t_max
            return args.n_grid
        return max(args.n_grid, math.ceil(tmax(n) / args.max_step * (1 - 1e-6)))  # t_max carries the float32 lr's rounding

    def n_grid(n):  # GD steps solved: the full grid's, or those up to the horizon at the full grid's step Δ
        if args.horizon is None or args.horizon >= tmax(n):
            return full_grid(n)
        return math.ceil(args.horizon / (tmax(n) / full_grid(n)) * (1 - 1e-6))

    def t_end(n):  # the theory time of the last grid point solved
        return tmax(n) * n_grid(n) / full_grid(n)

    def truncated(n):
        return n_grid(n) < full_grid(n)

    def grid_times(n):  # the theory's grid times (T+1,) at ntrain n
        return np.asarray(mtjax.FiniteDataSolver(n_grid=n_grid(n), **sched).time_grid(t_end(n))[0])

    if args.width != "fixed" and args.initial != "typical":
        raise SystemExit(f"--width {args.width} takes --initial typical (the proportional theory's initial condition)")
    wtag = {"fixed": "", "proportional": ", width proportional to N", "proportional_n": ", width proportional to N, O(D/N) corrections at N = 100"}[args.width]
    emit(f"# DMFT (depth 2, H = 64, {args.initial} init of seed 0{wtag}) vs the authors' rank-10 table ({args.data})")
    emit("# command: python benchmarks/paper_finite.py " + " ".join(sys.argv[1:]))
    steps = (f"geometric steps Δ_(n+1) = {args.step_growth} Δ_n summing to t_max, first/last Δ "
             f"{ {int(n): tuple(np.round(np.diff(grid_times(n))[[0, -1]], 3)) for n in ntrains} }") if geometric else "GD step Δ = t_max/n_grid"  # fmt: skip
    horizon = "" if not any(truncated(n) for n in ntrains) else (
        f", solved to the horizon t = {args.horizon} only (steps {{ntrain: solved of full}} "
        f"{ {int(n): f'{n_grid(n)} of {full_grid(n)}' for n in ntrains if truncated(n)} })")
    emit(f"# solver: n_grid {'' if geometric else f'max({args.n_grid}, t_max/{args.max_step}) '}= "
         f"{ {int(n): full_grid(n) for n in ntrains} } ({steps}){horizon}, draws 3 x {args.draws}, "
         f"response 3 x {args.response}, max_iter {args.max_iter}, tol {args.tol}, test quadrature {args.n_quad_eval}"
         + ("" if args.damping == 1.0 else f", damping {args.damping}"))
    emit(f"# cells: {sum(c[4] for c in cells)} single-task + {sum(not c[4] for c in cells)} multitask "
         f"(multitask r in {[round(float(x), 3) for x in rs]}, s_a in {[round(float(x), 3) for x in sas]}, s_b in {[round(float(x), 3) for x in sbs]})")

    settings = (f"n_grid={args.n_grid} max_step={args.max_step} step_growth={args.step_growth} draws={args.draws} "
                f"response={args.response} max_iter={args.max_iter} tol={args.tol} n_quad_eval={args.n_quad_eval}"
                + ("" if args.initial == "quenched" else f" initial={args.initial}")  # stores of quenched runs predate the flag
                + ("" if args.damping == 1.0 else f" damping={args.damping}")  # and of undamped runs, the damping flag
                + ("" if args.width == "fixed" else f" width={args.width}")  # and of fixed-width runs, the width flag
                + ("" if args.horizon is None else f" horizon={args.horizon}"))  # and of full-horizon runs
    # The store: one row per solved cell (its curve at the grid times, residual, iterations, flags),
    # keyed by the cell and tagged with the settings; `mtjax.ResumableTable` skips what is stored.
    store = mtjax.ResumableTable(os.path.splitext(args.out)[0] + ".cells.parquet", key=CELL_KEY, settings=settings)

    def solve_group(T, idx):
        solver = mtjax.FiniteDataSolver(n_grid=T, n_draws=args.draws, n_response=args.response, max_iter=args.max_iter,
                                        tol=args.tol, n_quad_eval=args.n_quad_eval, damping=args.damping, **sched)  # fmt: skip
        e0 = base_experiment(T)

        def one(n, sa, sb, r, w2, t_max):
            e = eqx.tree_at(lambda m: (m.train.n_train_active, m.train.task_weights, m.teacher.scale, m.teacher.relatedness),
                            e0, (jnp.stack([n, n]), jnp.stack([jnp.ones_like(w2), w2]), jnp.stack([sa, sb]), r[None]))  # fmt: skip
            # Report at the grid times (no interpolation): the minimum is over the grid.
            ts = solver.time_grid(t_max)[0] if geometric else jnp.linspace(0.0, t_max, T + 1)  # t_max: t_end(ntrain)
            th = mtjax.finite_data_theory(e, mtjax.Seeds(0), ts, solver=solver, initial=args.initial, width=args.width)
            return th.test_loss[:, 0], th.residual[0], th.iterations[0], th.converged, th.diverged

        # Equal chunks of `--batch` cells (the last padded by repeating a cell): one compilation,
        # vmapped within a chunk, and the per-chunk wall time is the cost per cell.  Every chunk
        # is stored as soon as it is solved.
        b = max(1, min(args.batch, len(idx)))
        padded = idx + [idx[-1]] * (-len(idx) % b)
        run = eqx.filter_jit(jax.vmap(one))
        times = []
        for j in range(0, len(padded), b):
            chunk = padded[j : j + b]
            xs = tuple(jnp.asarray([cells[i][q] for i in chunk], float) for q in range(4))
            xs = xs + (jnp.asarray([0.0 if cells[i][4] else 1.0 for i in chunk]), jnp.asarray([t_end(cells[i][0]) for i in chunk]))
            t0 = time.time()
            o = jax.block_until_ready(run(*xs))
            times.append(time.time() - t0)
            store.add([dict(zip(CELL_KEY, cells[i]), curve=np.asarray(o[0][q]), residual=np.asarray(o[1][q]),
                            iterations=np.asarray(o[2][q]), converged=np.asarray(o[3][q]), diverged=np.asarray(o[4][q]))
                       for q, i in enumerate(chunk)])  # fmt: skip  (a padded repeat replaces its cell)
            print(f"  n_grid {T}: chunk {j // b + 1}/{len(padded) // b} in {times[-1]:.0f} s (stored)", flush=True)
        per = float(np.mean(times[1:])) / b if len(times) > 1 else float("nan")
        emit(f"# n_grid {T}: {len(idx)} cells solved now; first chunk of {b} (incl. compilation) {times[0]:.0f} s, "
             f"then {per:.1f} s per cell (2 shared CPU cores)")
        return per

    if args.replot:  # re-tabulate every cell stored with these settings (the solves are the expensive part)
        if not len(store):
            raise SystemExit(f"{store.path} holds no cells solved with {settings!r}: pass the flags of the run that stored them")
        cells = [store.key_of(r) for r in store.rows.to_dict("records")]
        # This command's header, then the solve times of the run that wrote the previous table
        # (the store may have been filled by several partial runs: only the last one's are known).
        if os.path.exists(args.out):
            with open(args.out) as f:
                old = f.read().split("\n\n", 1)[0].splitlines()
            source = [ln for ln in old if ln.startswith("# solve times")]
            if not source:
                source = [f"# solve times of the run that wrote the previous table ({ln[2:]}):" for ln in old if ln.startswith("# command:")]
            timing = [ln for ln in old if ln.startswith(("# resumed", "# n_grid", "# cost"))]
            for ln in (source[:1] + timing) if timing else []:
                emit(ln)
    else:
        if len(store):
            emit(f"# resumed: {sum(c in store for c in cells)} of {len(cells)} cells stored by an earlier run with these settings")
        groups: dict[int, list[int]] = {}
        for i, c in enumerate(cells):
            if c not in store:
                groups.setdefault(n_grid(c[0]), []).append(i)
        cost = {}
        for T, idx in sorted(groups.items()):
            cost[T] = solve_group(T, idx)
        # Full grid: 6 single + 180 multitask cells per ntrain, at that ntrain's grid cost (grids
        # finer than those run here cost ~ (n_grid ratio)^3 more: not extrapolated).
        if cost and all(n_grid(n) in cost for n in ntrains):  # a resumed run may have timed some grids only
            full = sum(cost[n_grid(n)] * (6 + 180) for n in ntrains)
            emit(f"# cost of the full grid (36 + 1080 cells) for these ntrain at these settings ≈ {full / 3600:.1f} h on this machine")
    stored = [store.get(c) for c in cells]
    results = [(np.asarray(r["curve"]), r["residual"], r["iterations"], r["converged"], r["diverged"]) for r in stored]
    curves, res, its, conv, div = (list(a) for a in zip(*results))

    rows = []
    for c, cu, rr, it, cv, dv in zip(cells, curves, res, its, conv, div):
        n, sa, sb, r, single = c
        # A truncated grid whose minimum is its last point: the early-stopping time may lie beyond it.
        at_horizon = truncated(n) and int(np.argmin(cu)) == len(cu) - 1
        rows.append(dict(main_train_pts=int(n), s_a=sa, s_b=sb, relatedness=r, single=single, theory=float(np.min(cu)),
                         t_star=float(grid_times(n)[np.argmin(cu)]), residual=float(rr), iterations=int(it),
                         ok=bool(cv) and not bool(dv) and not at_horizon, at_horizon=at_horizon))  # fmt: skip
    th = pd.DataFrame(rows)
    th[["s_a", "s_b", "relatedness"]] = th[["s_a", "s_b", "relatedness"]].map(_key)
    a_single, a_multi, a_ben = authors_tables(d)
    st = th[th.single].set_index(["main_train_pts", "s_a"]).join(a_single)
    mt = th[~th.single].set_index(["main_train_pts", "s_a"]).join(
        st[["theory", "ok"]].rename(columns={"theory": "theory_single", "ok": "ok_single"}))
    mt = mt.reset_index().set_index(["main_train_pts", "s_a", "s_b", "relatedness"]).join(a_multi).join(
        a_ben.rename(columns={"mean": "ben_mean", "se": "ben_se"}))
    mt["theory_benefit"] = mt.theory_single - mt.theory
    mt["ok_both"] = mt.ok & mt.ok_single

    emit("\n## single-task early-stopped validation loss of task 1 (nats): authors mean ± s.e. (5 seeds) | theory "
         "(* = not converged)")
    emit(f"{'ntrain':>6} {'s_a':>6} | {'authors':>14} | {'theory':>7} {'Δ':>7} {'t*':>5} {'res':>8} {'it':>3}")
    for (n, sa), r in st.iterrows():
        flag = "" if r.ok else "*"
        emit(f"{n:6d} {sa:6.3f} | {r['mean']:6.3f}±{r['se']:6.3f} | {r.theory:7.3f} {r.theory - r['mean']:+7.3f} "
             f"{r.t_star:5.1f} {r.residual:8.1e} {r.iterations:3d}{flag}")
    if len(mt):
        emit("\n## multitask cells: early-stopped loss of task 1 and benefit (single − multi, >0 = multitask helps), "
             "authors mean ± s.e. | theory")
        emit(f"{'ntrain':>6} {'s_a':>6} {'s_b':>6} {'r':>5} | {'multi authors':>14} {'th':>7} | {'benefit authors':>16} "
             f"{'th':>7} {'Δ':>7} | {'res':>8}")
        for (n, sa, sb, r), x in mt.iterrows():
            flag = "" if x.ok_both else "*"
            emit(f"{n:6d} {sa:6.3f} {sb:6.3f} {r:5.2f} | {x['mean']:6.3f}±{x['se']:6.3f} {x.theory:7.3f} | "
                 f"{x.ben_mean:+7.3f}±{x.ben_se:6.3f} {x.theory_benefit:+7.3f} {x.theory_benefit - x.ben_mean:+7.3f} | "
                 f"{x.residual:8.1e}{flag}")

    emit("\n## headline (converged cells only; the goal: losses within 0.1 nats and benefits within 0.03 in >= 80 % of cells)")
    so = st[st.ok]
    dl = (so.theory - so["mean"]).abs()
    emit(f"single-task cells: {len(so)}/{len(st)} converged; |theory − authors| < 0.1 nats in {(dl < 0.1).mean():.1%} "
         f"({int((dl < 0.1).sum())}/{len(so)}), median |Δ| {dl.median():.3f}, mean Δ (theory − authors) "
         f"{(so.theory - so['mean']).mean():+.3f}")
    for n in ntrains:
        sn = so.loc[n] if n in so.index.get_level_values(0) else None
        if sn is not None:
            emit(f"  ntrain {n:5d}: median |Δ| {(sn.theory - sn['mean']).abs().median():.3f}, mean Δ {(sn.theory - sn['mean']).mean():+.3f}")
    if len(mt):
        mo = mt[mt.ok_both]
        dm = (mo.theory - mo["mean"]).abs()
        db = (mo.theory_benefit - mo.ben_mean).abs()
        big = mo.ben_mean.abs() >= 0.02
        emit(f"multitask cells: {len(mo)}/{len(mt)} converged (with their single-task cell); multitask loss within 0.1 nats "
             f"in {(dm < 0.1).mean():.1%}; benefit |theory − authors| < 0.03 nats in {(db < 0.03).mean():.1%} "
             f"({int((db < 0.03).sum())}/{len(mo)}), median |Δ| {db.median():.3f}")
        if big.any():
            emit(f"benefit sign agreement where |authors| >= 0.02: {(np.sign(mo.theory_benefit[big]) == np.sign(mo.ben_mean[big])).mean():.1%} "
                 f"of {int(big.sum())}; correlation of benefits {np.corrcoef(mo.theory_benefit, mo.ben_mean)[0, 1]:.3f}")
        for n in ntrains:
            mm = mo[mo.index.get_level_values(0) == n]
            if len(mm):
                emit(f"  ntrain {n:5d}: mean benefit theory {mm.theory_benefit.mean():+.4f} vs authors {mm.ben_mean.mean():+.4f}")
    not_ok = th[~th.ok]
    emit(f"flagged (not converged or diverged, or minimum on a truncated horizon; excluded above): {len(not_ok)} of "
         f"{len(th)} solves" + (f", {int(th.at_horizon.sum())} of them at the horizon" if th.at_horizon.any() else ""))
    emit.write(args.out)
    pd.concat([st.reset_index().assign(kind="single"), mt.reset_index().assign(kind="multi")]).to_csv(
        os.path.splitext(args.out)[0] + ".csv", index=False)


if __name__ == "__main__":
    main()
