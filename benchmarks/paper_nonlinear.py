"""The authors' deep-nonlinear (ReLU) runs against the nonlinear and the linear population theory.

Run: python benchmarks/paper_nonlinear.py [--nlayers 1 3] [--ntrain 200] [--all-cells]
         [--simulations results/reproduce/deep-nonlinear-quick/comparison.csv] [--out FILE]
     python benchmarks/paper_nonlinear.py --theory finite --nlayers 1 --r 0 1 --sa 2.511886 --sb 0.158489 10 \
         --out docs/results/paper_nonlinear_finite.txt   (the finite-data theory, cell by cell, resumable)

Per cell (ntrain, nlayers, r, s_a, s_b): the authors' early-stopped task-1 loss (mean ± s.e. over
their 5 seeds) and benefit (single − multi), the population theory of the paper's ReLU network
(N = 100, R = C = 10, `nlayers` ReLU layers of 64, orthogonal init, quenched realisation 0,
docs/theory.md §5.2), the population theory of the same network with a *linear* trunk, and,
where given, mtjax's simulations of the authors' protocol (`mtjax reproduce deep-nonlinear
--scale quick` writes them). Time map as in benchmarks/paper_population.py: minibatch SGD at lr
1e-3 as gradient flow, t = lr x task-1 steps, early stopping = minimum over t <= t_max(ntrain).
Default cells: the quick subset (r in {0, .5, 1}, s_a in {0.158, 2.51, 10}, s_b in {0.01,
0.158, 2.51, 10}); --all-cells for every (r, s_a, s_b) of the file; --r/--sa/--sb pick values.

`--theory finite`: the finite-data theory (DMFT, docs/dmft.md §4.2) of the relu network at the
authors' ntrain (α = ntrain / (N − K R)) in place of both population theories, solved as
`finite_data_theory` of the relu trunk's softplus(β x)/β surrogate on a uniform grid of
`--n-grid` GD steps (Δ = t_max / n_grid), one cell at a time (at H = 64 a cell's response
arrays are too large to vmap cells); each cell is stored in `<out>.cells.csv` as it finishes and
a rerun with the same settings resumes.  Only nlayers 1 (the DMFT's upper trunk layers are
H x H = 64 x 64 and self-average; deeper cells cost the same per map but are not validated).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

import mtjax

from _report import Report

QUICK = {"relatedness": [0.0, 0.5, 1.0], "s_a": [0.158489, 2.511886, 10.0], "s_b": [0.01, 0.158489, 2.511886, 10.0]}


def solve_cells(depth, activation, ntrain, cells, singles, ts, solver):
    """Task-1 curves (cells, T) of the multitask cells and (singles, T) of the single-task ones."""
    out = []
    for single, pts in ((False, cells), (True, singles)):
        exp = mtjax.paper(n_train=ntrain, depth=depth, activation=activation, single_task=single)

        def one(r, sa, sb, exp=exp):
            e = eqx.tree_at(lambda m: m.teacher.relatedness, exp, jnp.full((1,), r))
            e = eqx.tree_at(lambda m: m.teacher.scale, e, jnp.stack([sa, sb]))
            th = mtjax.population_theory(e, mtjax.Seeds(0), ts, solver=solver)
            return th.test_loss[:, 0], th.diverged

        cols = [jnp.asarray(pts[c].to_numpy(float)) for c in ("relatedness", "s_a", "s_b")]
        loss, div = eqx.filter_jit(jax.vmap(one))(*cols)
        out.append((np.asarray(loss), np.asarray(div)))
    return out


def solve_cells_finite(depth, ntrain, cells, singles, ts, solver, store: Path, settings: str):
    """Task-1 DMFT curves (cells, T), (singles, T) and failure flags (diverged or not converged),
    one jitted solve per cell; every solved cell is stored at once in `store`
    (`mtjax.ResumableTable`, tagged with `settings`) and reused by a rerun."""
    table = mtjax.ResumableTable(store, key=["single", "nlayers", "r", "s_a", "s_b"], settings=settings)
    out = []
    for single, pts in ((False, cells), (True, singles)):
        exp = mtjax.paper(n_train=ntrain, depth=depth, activation="relu", single_task=single)

        @eqx.filter_jit
        def one(r, sa, sb, exp=exp):
            e = eqx.tree_at(lambda m: m.teacher.relatedness, exp, jnp.full((1,), r))
            e = eqx.tree_at(lambda m: m.teacher.scale, e, jnp.stack([sa, sb]))
            th = mtjax.finite_data_theory(e, mtjax.Seeds(0), ts, solver=solver)
            return th.test_loss[:, 0], th.diverged, th.converged, th.residual[0]

        losses, fails = [], []
        for _, c in pts.iterrows():
            key = (single, depth) + tuple(round(float(c[k]), 6) for k in ("relatedness", "s_a", "s_b"))
            if key not in table:
                t0 = time.time()
                loss, div, conv, res = one(*(jnp.asarray(v, float) for v in key[2:]))
                row = dict(zip(table.key, key), diverged=bool(div), converged=bool(conv), residual=float(res),
                           seconds=time.time() - t0, **{f"t{i}": float(v) for i, v in enumerate(np.asarray(loss))})  # fmt: skip
                table.add(row)  # written at once: an interrupted run keeps every finished cell
                print(f"  cell {dict(zip(table.key, key))}: ES {np.nanmin(loss):.4f}, converged {row['converged']} "
                      f"(residual {row['residual']:.1e}), {row['seconds']:.0f} s", flush=True)
            row = table.get(key)
            losses.append(np.asarray([row[f"t{i}"] for i in range(len(ts))], float))
            fails.append(bool(row["diverged"]) or not bool(row["converged"]))
        out.append((np.stack(losses), np.asarray(fails)))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(mtjax.default_data_dir() / "deep-nonlinear.csv"))
    ap.add_argument("--nlayers", nargs="*", type=int, default=[1, 3])
    ap.add_argument("--ntrain", type=int, default=200)
    ap.add_argument("--all-cells", action="store_true")
    ap.add_argument("--n-quad", type=int, default=2048)
    ap.add_argument("--n-quad-eval", type=int, default=4096)
    ap.add_argument("--n-times", type=int, default=9, help="report times in [0, t_max] (early stopping over these)")
    ap.add_argument("--simulations", type=Path, nargs="*", default=None,
                    help="comparison.csv file(s) of `mtjax reproduce deep-nonlinear` (e.g. one per nlayers)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--theory", choices=["population", "finite"], default="population",
                    help="population: the relu and linear population theories; finite: the relu finite-data theory (DMFT)")
    ap.add_argument("--r", type=float, nargs="*", default=None, help="subset of relatedness values")
    ap.add_argument("--sa", type=float, nargs="*", default=None, help="subset of s_a values")
    ap.add_argument("--sb", type=float, nargs="*", default=None, help="subset of s_b values")
    ap.add_argument("--n-grid", type=int, default=20, help="--theory finite: GD steps of the DMFT grid")
    ap.add_argument("--draws", type=int, default=2048, help="--theory finite: draws per label component")
    ap.add_argument("--response", type=int, default=64, help="--theory finite: response draws per label component")
    ap.add_argument("--relu-sharpness", type=float, default=12.0, help="--theory finite: β of the softplus surrogate")
    args = ap.parse_args()
    if args.theory == "finite" and (args.out is None or set(args.nlayers) != {1}):
        ap.error("--theory finite needs --out (its cells are stored next to it) and --nlayers 1")
    emit = Report()

    d = pd.read_csv(args.data)
    d = d[(d.main_train_pts == args.ntrain) & d.nlayers.isin(args.nlayers)]
    if not args.all_cells:
        for c, vals in QUICK.items():
            keep = np.zeros(len(d), bool)
            for v in vals:
                keep |= np.isclose(d[c], v, rtol=1e-4)
            d = d[keep | (d.single_task & (c != "s_a"))]
    for c, vals in (("relatedness", args.r), ("s_a", args.sa), ("s_b", args.sb)):
        if vals:
            keep = np.logical_or.reduce([np.isclose(d[c], v, rtol=1e-4) for v in vals])
            d = d[keep | (d.single_task & (c != "s_a"))]
    key_m = ["nlayers", "relatedness", "s_a", "s_b"]
    loss = "validation-1/loss"
    agg = lambda g: g[loss].agg(["mean", "std", "count"])  # noqa: E731
    multi = agg(d[~d.single_task].groupby(key_m)).reset_index()
    single = agg(d[d.single_task].groupby(["nlayers", "s_a"])).reset_index()
    t_max = float(mtjax.paper(n_train=args.ntrain).train.t_max)
    ts = jnp.linspace(0.0, t_max, args.n_grid + 1 if args.theory == "finite" else args.n_times)
    solvers = {"relu": mtjax.PopulationSolver(n_quad=args.n_quad, n_quad_eval=args.n_quad_eval),
               "linear": mtjax.PopulationSolver(n_quad=args.n_quad, n_quad_eval=args.n_quad_eval, rtol=1e-3, atol=1e-5)}
    emit(f"deep-nonlinear, ntrain {args.ntrain}: {len(multi)} multitask + {len(single)} single-task cells; t_max = {t_max:g}; "
         + (f"{len(ts)} report times (the DMFT grid)" if args.theory == "finite" else
            f"theory n_quad {args.n_quad}, n_quad_eval {args.n_quad_eval}, {args.n_times} report times"))
    rows = []
    t0 = time.time()
    acts = ("relu",) if args.theory == "finite" else ("relu", "linear")  # the theories tabulated
    for depth in args.nlayers:
        cm = multi[multi.nlayers == depth].reset_index(drop=True)
        cs = single[single.nlayers == depth].reset_index(drop=True).assign(relatedness=0.0, s_b=1.0)
        res = {}
        if args.theory == "finite":
            solver = mtjax.FiniteDataSolver(n_grid=args.n_grid, n_draws=args.draws, n_response=args.response, max_iter=15,
                                            tol=2e-2, n_quad_eval=args.n_quad_eval, relu_sharpness=args.relu_sharpness)
            settings = (f"ntrain={args.ntrain} n_grid={args.n_grid} draws={args.draws} response={args.response} "
                        f"sharpness={args.relu_sharpness} n_quad_eval={args.n_quad_eval}")
            if depth == args.nlayers[0]:
                emit(f"finite-data theory (relu as softplus(beta x)/beta): {settings}; failures = diverged or not converged")
            store = args.out.with_suffix(".cells.csv")
            (lm, dm), (ls, ds) = solve_cells_finite(depth, args.ntrain, cm, cs, ts, solver, store, settings)
            # A failed solve is flagged and left out of every statistic, never averaged in.
            lm[dm], ls[ds] = np.nan, np.nan
            with np.errstate(invalid="ignore"):
                res["relu"] = (np.nanmin(lm, 1), np.nanmin(ls, 1), int(dm.sum() + ds.sum()))
        for act in () if args.theory == "finite" else acts:
            (lm, dm), (ls, ds) = solve_cells(depth, act, args.ntrain, cm, cs, ts, solvers[act])
            res[act] = (lm.min(1), ls.min(1), int(dm.sum() + ds.sum()))
        for i, c in cm.iterrows():
            j = int(np.flatnonzero(np.isclose(cs.s_a, c.s_a))[0])
            row = dict(c[key_m])
            row.update(authors_multi=c["mean"], authors_multi_se=c["std"] / np.sqrt(c["count"]),
                       authors_single=cs["mean"][j], authors_single_se=cs["std"][j] / np.sqrt(cs["count"][j]))
            for act in acts:
                row[f"{act}_multi"], row[f"{act}_single"] = res[act][0][i], res[act][1][j]
            rows.append(row)
        emit(f"nlayers {depth}: theory failures " + ", ".join(f"{act} {res[act][2]}" for act in acts))
    emit(f"theory time {time.time() - t0:.0f} s")
    m = pd.DataFrame(rows)
    m["authors_benefit"] = m.authors_single - m.authors_multi
    m["authors_benefit_se"] = np.sqrt(m.authors_multi_se**2 + m.authors_single_se**2)
    for act in acts:
        m[f"{act}_benefit"] = m[f"{act}_single"] - m[f"{act}_multi"]
    if args.simulations:
        sim = pd.concat([pd.read_csv(f) for f in args.simulations], ignore_index=True)
        sim = sim[(sim.main_train_pts == args.ntrain) & ~sim.single_task.astype(bool)]
        cols = [c for c in sim.columns if c.startswith("ours")]
        for c in ("relatedness", "s_a", "s_b"):
            sim[c] = sim[c].round(6)
            m[c] = m[c].round(6)
        m = m.merge(sim[key_m + cols], on=key_m, how="left")
    pd.set_option("display.width", 250)
    show = (key_m + ["authors_multi", "authors_multi_se"] + [f"{a}_multi" for a in acts] + ["authors_benefit", "authors_benefit_se"]
            + [f"{a}_benefit" for a in acts] + [c for c in m.columns if c.startswith("ours")])
    emit(m[show].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    emit()
    for depth in args.nlayers:
        mm = m[m.nlayers == depth]
        resolved = (mm.authors_benefit.abs() >= 2 * mm.authors_benefit_se) & (mm.authors_benefit.abs() >= 0.02)
        emit(f"nlayers {depth}: {len(mm)} cells; authors' benefit resolved (|b| >= 2 s.e. and >= 0.02) in {int(resolved.sum())}")
        for act in acts:
            sign = (np.sign(mm[f"{act}_benefit"][resolved]) == np.sign(mm.authors_benefit[resolved])).mean() if resolved.any() else np.nan
            emit(f"  {act:6s} theory: benefit sign right in {sign:.0%} of resolved cells; "
                 f"median |Δ multi loss| {np.median(np.abs(mm[f'{act}_multi'] - mm.authors_multi)):.3f}; "
                 f"benefit corr {np.corrcoef(mm[f'{act}_benefit'], mm.authors_benefit)[0, 1]:.2f}; "
                 f"RMS benefit residual {np.sqrt(np.mean((mm[f'{act}_benefit'] - mm.authors_benefit) ** 2)):.3f}")
        if "ours_mean" in mm and mm.ours_mean.notna().any():
            emit(f"  mtjax simulations vs authors: median |Δ multi loss| {np.median(np.abs(mm.ours_mean - mm.authors_multi)):.3f}; "
                 f"relu theory vs mtjax simulations: median |Δ multi loss| {np.median(np.abs(mm.relu_multi - mm.ours_mean)):.3f}, "
                 f"benefit corr {np.corrcoef(mm.relu_benefit, mm.ours_benefit)[0, 1]:.2f}, "
                 f"RMS benefit residual {np.sqrt(np.mean((mm.relu_benefit - mm.ours_benefit) ** 2)):.3f}")
        if "linear" not in acts:
            continue
        flip = resolved & (np.sign(mm.linear_benefit) != np.sign(mm.authors_benefit)) & (np.sign(mm.relu_benefit) == np.sign(mm.authors_benefit))
        flop = resolved & (np.sign(mm.relu_benefit) != np.sign(mm.authors_benefit)) & (np.sign(mm.linear_benefit) == np.sign(mm.authors_benefit))
        emit(f"  resolved cells where only the relu theory has the sign right: {int(flip.sum())}; only the linear theory: {int(flop.sum())}")
        if flip.any():
            emit(mm[flip][key_m + ["authors_benefit", "relu_benefit", "linear_benefit"]].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    emit.write(args.out)
    if args.out is not None:
        m.to_csv(args.out.with_suffix(".csv"), index=False)


if __name__ == "__main__":
    main()
