"""Finite-data theory (DMFT) vs full-batch GD simulations, point by point.

Run: python benchmarks/finite_data_accuracy.py [--seeds 8] [--n 400] [--steps 40] [--lr 0.5]
     python benchmarks/finite_data_accuracy.py --depth 1 --tol 2e-2   (multitask, linear trunk)
     python benchmarks/finite_data_accuracy.py --depth 2 --tol 2e-2 --sb 3   (two trunk layers)
     python benchmarks/finite_data_accuracy.py --depth 1 --activation gelu --eps 0 --r 0 1 --alphas 0.5 2 8 \
         --replicas 1 --tol 2e-2 --out docs/results/finite_data_accuracy_gelu.txt   (nonlinear trunk, docs/dmft.md §4.2)
     python benchmarks/finite_data_accuracy.py --depth 1 --activation relu --r 0 1 --replicas 1 --tol 2e-2 \
         --draws 4096 --response 512 --width 8 --out docs/results/finite_data_accuracy_relu_h8.txt
         (relu trunk: the DMFT of softplus(β x)/β, --relu-sharpness β, docs/dmft.md §4.2, §6.1)
Output: docs/results/finite_data_accuracy.txt, docs/results/finite_data_accuracy_trunk.txt,
        docs/results/finite_data_accuracy_depth2.txt

Depth 1 (`--depth 1`): two tasks, shared linear layer of width 8, heads per task; the acceptance
grid eps in {0, 0.2} (both tasks) x alpha in {0.5, 1, 2, 4, 8} x r in {0, 0.5, 1} x s_b in {0.5, 3},
s_a = 3 (`--eps`, `--alphas`, `--r`, `--sa`, `--sb` select values); per point the task-1 early-stopped loss
of multitask training and the multitask benefit (single-task minus multitask early-stopped loss,
> 0 = multitask helps), simulation (mean ± s.e. over seeds) vs theory. Each point is written as
soon as it is done (`<out>.csv` and the table, atomically); rerunning the same command resumes.
Two processes can share the grid: e.g. `--eps 0 --out A.txt` and `--eps 0.2 --out B.txt`.
Depth 2 (`--depth 2`): the same with two linear trunk layers of width 8 (W_2 orthogonal, H x H).

Covered (what the theory supports so far): depth L = 0 (linear softmax), single task — with
L = 0 the K heads share no parameter, so multitask training is K independent problems and the
multitask benefit is exactly 0 in theory and simulation alike; it is not tabulated.
Grid: alpha = P / (N - R) in {0.5, 1, 2, 4, 8} x s in {0.5, 3} x eps in {0, 0.2}; N = 400,
C = R = 4, logit noise sigma = 0.5 on every example (q = 1), orthogonal init (gain 1), zero bias,
full-batch GD at lr 0.5 for 40 steps (t = 20), evaluated every step.  Teacher and initial student
are one realisation (seed 0), the seeds draw the datasets (and test sets of 10 000 examples); the
theory uses the same initial overlaps ("quenched"), grid Δ = lr (so it describes the same GD).
Per point: early-stopped test loss (sim mean ± s.e. vs theory), the time of the minimum, the final
test loss, and the largest relative deviation along the whole test-loss curve (depth >= 1: and the
time where it occurs; the stored rows also keep both task-1 curves, columns `curve_sim`, `curve_th`).

Theory error bars (`--replicas R`, default 4): the theory is a Monte Carlo estimate (fixed draws of
the effective processes); it is solved R times with independent draw seeds (vmapped, one
compilation) and reported as the replica-mean curve ± its standard error, so a point passes when it
is within 3 % or within 2 combined standard errors sqrt(se_sim² + se_th²).  With one replica the
draws of seed 0 are shared by every point, and their error looks like a systematic bias (depth 0,
alpha = 8, s = 3: seed 0 is 2 % low, the mean of 8 seeds 0.6 % high; docs/dmft.md §6.1).
Both depths store each point as it finishes (`<out>.csv` next to the table) and resume;
`--merge A.csv B.csv` adds the rows other runs stored (same settings) and `--table-only` writes
the table without computing, e.g. the depth-1 grid of four processes in one table:
  python benchmarks/finite_data_accuracy.py --depth 1 --tol 2e-2 --sa 3 0.5 --table-only \
      --out docs/results/finite_data_accuracy_trunk_replicas.txt --merge docs/results/finite_data_accuracy_trunk_replicas_*.csv
`--refined A.csv` shows the rows another run stored with the same settings but another
`--replicas` (the hard points re-solved with more draw seeds) in place of this run's, marked.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

import mtjax


def experiment(n, R, alpha, s, eps, steps, lr, n_test):
    P = int(round(alpha * (n - R)))
    spec = {
        "teacher": {"n_features": n, "rank": R, "n_classes": R, "scale": [s, s], "noise": 0.5, "flip": eps},
        "student": {"depth": 0, "bias_init": "zeros"},
        "train": {"protocol": "full_batch", "n_train": [P, P], "n_test": n_test, "n_steps": steps, "eval_every": 1,
                  "learning_rate": lr, "single_task": True},
    }
    return mtjax.experiment_from_spec(spec)


def experiment_trunk(n, R, H, alpha, r, s_b, eps, steps, lr, n_test, single, depth=1, s_a=3.0, activation="linear"):
    P = int(round(alpha * (n - 2 * R)))
    spec = {
        "teacher": {"n_features": n, "rank": R, "n_classes": R, "scale": [s_a, s_b], "noise": 0.5, "flip": eps,
                    "relatedness": r},
        "student": {"depth": depth, "width": H, "bias_init": "zeros", "activation": activation},
        "train": {"protocol": "full_batch", "n_train": [P, P], "n_test": n_test, "n_steps": steps, "eval_every": 1,
                  "learning_rate": lr, "single_task": single},
    }
    return mtjax.experiment_from_spec(spec)


def _settings(args) -> str:
    """The settings a stored row was computed with: a resumed run only reuses rows made with the same."""
    return (f"N={args.n} R={args.rank} H={args.width} L={args.depth} lr={args.lr} steps={args.steps} seeds={args.seeds} "
            f"n_test={args.n_test} draws={args.draws} response={args.response} tol={args.tol} damping={args.damping} "
            f"replicas={args.replicas}" + ("" if args.activation == "linear" else f" activation={args.activation}")
            + (f" sharpness={args.relu_sharpness}" if args.activation == "relu" else "")
            + ("" if getattr(args, "response_method", "pathwise") == "pathwise" else f" response_method={args.response_method} step={args.response_step}")
            + ("" if args.labels == "auto" else f" labels={args.labels}")
            + (f" average_maps={args.average_maps}" if getattr(args, "average_maps", 0) else "")
            # rows stored before the clip existed were averaged unclipped (inf): same string
            + (f" average_clip={args.average_clip:g}" if getattr(args, "average_maps", 0) and np.isfinite(args.average_clip) else ""))


def _setup(args):
    """The theory solver, the number of simulation seeds and their `Seeds` (one teacher and
    initial student, datasets 1..ns)."""
    solver = mtjax.FiniteDataSolver(n_grid=args.steps, n_draws=args.draws, n_response=args.response, tol=args.tol,
                                    damping=args.damping, relu_sharpness=args.relu_sharpness, labels=args.labels,
                                    response_control=getattr(args, "response_control", False),
                                    response=getattr(args, "response_method", "pathwise"), response_step=getattr(args, "response_step", 0.05),
                                    average_maps=getattr(args, "average_maps", 0), average_clip=getattr(args, "average_clip", 1.0))
    ns = args.seeds
    return solver, ns, mtjax.Seeds(jnp.zeros(ns, int), jnp.arange(1, ns + 1), jnp.zeros(ns, int), jnp.arange(1, ns + 1))


def _theory_fn(n_replicas):
    """Task-1 test-loss curves (R, T) of `n_replicas` theory solves (draw seeds 0..R-1, one compilation)."""
    fn = eqx.filter_jit(lambda e, sol: mtjax.finite_data_replicas(e, mtjax.Seeds(0), n_replicas, solver=sol))

    def run(e, solver):
        t0 = time.time()
        th = fn(e, solver)
        tl = np.asarray(th.test_loss[..., 0])
        return tl, np.asarray(th.train_loss[..., 0]), float(np.nanmax(th.residual[:, 0])), bool(np.all(th.converged)), time.time() - t0

    return run


def _curve_text(curve) -> str:
    """A test-loss curve as one CSV cell (space-separated, 4 decimals): the stored rows keep the
    multitask task-1 curves of simulation and theory for later diagnosis."""
    return " ".join(f"{v:.4f}" for v in np.asarray(curve))


def _at(o) -> str:
    """The time of a row's largest curve deviation (5 characters; blank for rows stored without it)."""
    t = o.get("t_curve", float("nan"))
    return f"{t:5.1f}" if np.isfinite(t) else " " * 5


def _curve_stats(tl):
    """Replica-mean curve of `tl` (R, T), its minimum, the index of the minimum, and the minimum's
    standard error over replicas (the spread at that time / sqrt(R); 0 with one replica)."""
    m = tl.mean(0)
    i = int(np.argmin(m))
    se = tl[:, i].std(ddof=1) / np.sqrt(len(tl)) if len(tl) > 1 else 0.0
    return m, m[i], i, se


def _run_grid(args, grid, key, compute, line, header, summary_of, settings: str | None = None):
    """Run `compute(point) -> row` over `grid` (points: tuples of the `key` columns), storing every
    row as it finishes in `<out>.csv` (`mtjax.ResumableTable`: the rows of other settings are kept)
    and rewriting the table `<out>` (atomically), so an interrupted grid resumes and processes can
    share a grid by running disjoint subsets into different `--out` files (`--merge` joins them).
    `settings`: the rows' settings string (default: this script's, `_settings(args)`); `args`
    needs `out`, and may have `merge` and `table_only`."""
    settings = _settings(args) if settings is None else settings
    store = mtjax.ResumableTable(os.path.splitext(args.out)[0] + ".csv", key=key, settings=settings)
    for extra in getattr(args, "merge", None) or []:  # rows that other processes stored (same settings), e.g. two halves of a grid
        store.merge(extra)
    grid = list(dict.fromkeys(grid))  # a value given twice is one point
    refined = _refined_rows(getattr(args, "refined", None) or [], settings)

    def write():
        # Points re-solved with more replicas (`--refined`) replace this run's rows in the table.
        rows = list({store.key_of(o): o for o in store.rows.to_dict("records") + refined}.values())
        order = {k: i for i, k in enumerate(grid)}
        # The table and its summary: this grid's points only (the CSV keeps every stored row).
        rs = sorted((o for o in rows if store.key_of(o) in order), key=lambda o: order[store.key_of(o)])
        summary = [""] + [f"points: {len(rs)} of the {len(grid)} requested" +
                          ("" if len(rs) >= len(grid) else " (partial: the others are not computed yet)" if getattr(args, "table_only", False)
                           else " (partial: rerun the same command to resume)")] + summary_of(rs)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".tmp").write_text("\n".join(header + [line(o) for o in rs] + summary) + "\n")
        out.with_suffix(".tmp").replace(out)  # atomic: a reader never sees half a table
        return summary

    for h in header:
        print(h, flush=True)
    for o in store.rows.to_dict("records"):
        print(line(o) + "   (stored)", flush=True)
    for point in grid:
        if point in store or getattr(args, "table_only", False):
            continue
        o = compute(point)
        store.add(o)
        print(line(o), flush=True)
        write()
    store.save()  # rows taken from --merge
    for s_ in write():
        print(s_)


def _refined_rows(paths, settings: str) -> list[dict]:
    """Rows stored in `paths` with `settings` except their replica count (points re-solved with
    more replicas, e.g. where one draw seed cannot tell a draw error from a bias); each carries
    `replicas` (its count) for the table's mark."""
    pattern = re.compile(r"replicas=(\d+)")
    mine = int(pattern.search(settings).group(1))
    out = []
    for path in paths:
        df = pd.read_csv(path)
        for o in df.to_dict("records"):
            m = pattern.search(str(o.get("settings", "")))
            if m and int(m.group(1)) != mine and pattern.sub("", o["settings"]) == pattern.sub("", settings):
                out.append({**o, "replicas": int(m.group(1))})
    return out


def _theory_note(args):
    return (f"# theory: mean ± s.e. over {args.replicas} replicas (independent draw seeds 0..{args.replicas - 1}"
            + ("; rows marked '(k replicas)': over k, from --refined" if getattr(args, "refined", None) else "")
            + "); z = |th - sim| / sqrt(se_sim^2 + se_th^2); pass: within 3% or z < 2")


def main_trunk(args):
    """L >= 1, two tasks: task-1 early-stopped loss (multitask) and the multitask benefit
    (single-task minus multitask early-stopped loss of task 1), simulation vs theory."""
    grid = list(itertools.product(args.eps, args.alphas or [0.5, 1.0, 2.0, 4.0, 8.0], args.r, args.sa, args.sb or [0.5, 3.0]))
    solver, ns, seeds = _setup(args)
    X = args.rank if solver.summed_labels(args.rank) else 3  # label components per draw
    header = [
        f"# L = {args.depth} ({args.activation} trunk, width {args.width}), two tasks, logit noise sigma = 0.5 on every example: "
        f"N = {args.n}, C = R = {args.rank}, lr = {args.lr}, {args.steps} steps (full-batch GD), {ns} seeds, n_test = {args.n_test}",
        f"# solver: grid T = {args.steps}, draws {X} x {args.draws} per task, response draws {X} x {args.response}{' with control variate' if getattr(args, 'response_control', False) else ''}, tol {args.tol}"
        + (f", relu surrogate softplus(beta x)/beta, beta = {args.relu_sharpness}" if args.activation == "relu" else "")
        + ("" if getattr(args, "response_method", "pathwise") == "pathwise" else f", response by central differences of the process, step {args.response_step}")
        + ("" if args.labels == "auto" else f", labels {args.labels}")
        + (f", averaged over {args.average_maps} maps with fresh draws after the fixed point (step clip {args.average_clip:g})"
           if getattr(args, "average_maps", 0) else ""),
        _theory_note(args),
        "# ES = early-stopped test loss of task 1 under multitask training; benefit = single-task ES - multitask ES of task 1 "
        "(> 0: multitask helps; theory paired per replica); sign: ok / NO / -- (|benefit sim| <= 2 s.e.: not resolved)",
        f"{'eps':>4} {'alpha':>5} {'r':>4} {'s_a':>4} {'s_b':>4} | {'ES multi sim':>15} {'th':>15} {'rel':>6} {'z':>5} | {'t* sim':>6} {'t* th':>5} | "
        f"{'final sim':>15} {'th':>7} | {'benefit sim':>16} {'th':>16} {'sign':>4} | {'curve':>6} {'at t':>5} | {'res m/s':>15} {'t_th':>5}",
    ]

    def line(o):
        return (f"{o['eps']:4.1f} {o['alpha']:5.1f} {o['r']:4.1f} {o['s_a']:4.1f} {o['s_b']:4.1f} | {o['es_sim']:7.4f}±{o['es_se']:6.4f} "
                f"{o['es_th']:7.4f}±{o['es_th_se']:6.4f} {100*o['rel']:5.2f}% {o['z']:5.1f} | {o['tmin_sim']:6.1f} {o['tmin_th']:5.1f} | "
                f"{o['final_sim']:7.4f}±{o['final_se']:6.4f} {o['final_th']:7.4f} | {o['ben_sim']:+8.4f}±{o['ben_se']:6.4f} "
                f"{o['ben_th']:+8.4f}±{o['ben_th_se']:6.4f} {o['sign']:>4} | {100*o['curve']:5.2f}% {_at(o)} | {o['res_m']:7.1e}/{o['res_s']:7.1e} "
                f"{o['t_th']:5.0f}" + (f"  ({o['replicas']} replicas)" if o.get("replicas", args.replicas) != args.replicas else ""))

    def summary_of(rs):
        n_es = sum((o["rel"] < 0.03) or (o["z"] < 2) for o in rs)
        n_curve = sum(o["curve"] < 0.05 for o in rs)
        sig = [o for o in rs if o["sign"] != "--"]
        return [
            f"early-stopped loss within 3% or 2 s.e.: {n_es}/{len(rs)}; curve within 5%: {n_curve}/{len(rs)}; "
            f"benefit sign where |benefit| > 2 s.e.: {sum(o['sign'] == 'ok' for o in sig)} right, "
            f"{sum(o['sign'] == 'NO' for o in sig)} wrong ({len(rs) - len(sig)} not resolved)",
            f"benefit theory - simulation: mean {np.mean([o['ben_th'] - o['ben_sim'] for o in rs]):+.4f}, "
            f"max |.| {max(abs(o['ben_th'] - o['ben_sim']) for o in rs):.4f} nats",
            f"converged (every replica): {sum(bool(o['conv']) for o in rs)}/{len(rs)}",
            f"time: simulation {sum(o['t_sim'] for o in rs):.0f} s, theory {sum(o['t_th'] for o in rs):.0f} s (2 shared CPU cores, incl. compilation)",
        ]

    sim_fn = eqx.filter_jit(mtjax.simulate_batch)
    th_run = _theory_fn(args.replicas)

    def compute(point):
        eps, alpha, r, s_a, s_b = point
        out = {}
        t_sim = 0.0
        for single in (False, True):
            e = experiment_trunk(args.n, args.rank, args.width, alpha, r, s_b, eps, args.steps, args.lr, args.n_test, single,
                                 args.depth, s_a, args.activation)
            batch = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (ns,) + a.shape), e)
            t0 = time.time()
            h = sim_fn(batch, seeds)
            te = np.asarray(h.test_loss[:, :, 0])
            t_sim += time.time() - t0
            tl, _, res, conv, dt = th_run(e, solver)
            out[single] = (te, tl, res, conv, np.asarray(h.time[0]), dt)
        te, tl, res_m, conv_m, time_, dt_m = out[False]
        te1, tl1, res_s, conv_s, _, dt_s = out[True]
        es = te.min(1)
        es_m, es_se = es.mean(), es.std(ddof=1) / np.sqrt(ns)
        ben = te1.min(1) - es
        ben_m, ben_se = ben.mean(), ben.std(ddof=1) / np.sqrt(ns)
        mean_m, es_th, i_m, es_th_se = _curve_stats(tl)
        mean_s, es_th1, i_s, _ = _curve_stats(tl1)
        ben_th = es_th1 - es_th
        ben_rep = tl1[:, i_s] - tl[:, i_m]
        ben_th_se = ben_rep.std(ddof=1) / np.sqrt(len(ben_rep)) if len(ben_rep) > 1 else 0.0
        sign = "--" if abs(ben_m) <= 2 * ben_se else ("ok" if np.sign(ben_th) == np.sign(ben_m) else "NO")
        dev = np.abs(mean_m - te.mean(0)) / te.mean(0)  # along the whole curve; its largest is `curve`, at `t_curve`
        return dict(eps=eps, alpha=alpha, r=r, s_a=s_a, s_b=s_b, es_sim=es_m, es_se=es_se, es_th=es_th, es_th_se=es_th_se,
                    rel=abs(es_th - es_m) / es_m, z=abs(es_th - es_m) / np.hypot(es_se, es_th_se),
                    tmin_sim=time_[np.argmin(te.mean(0))], tmin_th=time_[i_m],
                    final_sim=te[:, -1].mean(), final_se=te[:, -1].std(ddof=1) / np.sqrt(ns), final_th=mean_m[-1],
                    ben_sim=ben_m, ben_se=ben_se, ben_th=ben_th, ben_th_se=ben_th_se, sign=sign,
                    curve=dev.max(), t_curve=time_[int(np.argmax(dev))], res_m=res_m, res_s=res_s, conv=conv_m and conv_s,
                    t_sim=t_sim, t_th=dt_m + dt_s, curve_sim=_curve_text(te.mean(0)), curve_th=_curve_text(mean_m))

    _run_grid(args, grid, ["eps", "alpha", "r", "s_a", "s_b"], compute, line, header, summary_of)


def main_single(args):
    """L = 0, one task: the early-stopped, final and whole-curve test loss, simulation vs theory."""
    grid = list(itertools.product(args.alphas or [0.5, 1.0, 2.0, 4.0, 8.0], args.s or [0.5, 3.0], args.eps))
    solver, ns, seeds = _setup(args)
    header = [
        f"# finite-data theory (DMFT) vs full-batch GD: N = {args.n}, C = R = {args.rank}, sigma = 0.5, lr = {args.lr}, "
        f"{args.steps} steps, {ns} seeds, n_test = {args.n_test}",
        f"# solver: grid T = {args.steps}, draws 3 x {args.draws}, response draws 3 x {args.response}{' with control variate' if getattr(args, 'response_control', False) else ''}, tol {args.tol}, "
        f"damping {args.damping}",
        _theory_note(args),
        f"{'alpha':>5} {'s':>4} {'eps':>4} | {'ES sim':>15} {'ES th':>15} {'rel':>6} {'z':>5} | {'t* sim':>6} {'t* th':>5} | "
        f"{'final sim':>15} {'final th':>8} | {'curve':>6} {'train rel':>9} | {'res':>7} {'t_th':>5}",
    ]

    def line(o):
        return (f"{o['alpha']:5.1f} {o['s']:4.1f} {o['eps']:4.1f} | {o['es_sim']:7.4f}±{o['es_se']:6.4f} {o['es_th']:7.4f}±{o['es_th_se']:6.4f} "
                f"{100*o['rel']:5.2f}% {o['z']:5.1f} | {o['tmin_sim']:6.1f} {o['tmin_th']:5.1f} | {o['final_sim']:7.4f}±{o['final_se']:6.4f} "
                f"{o['final_th']:8.4f} | {100*o['curve']:5.2f}% {100*o['train_rel']:8.2f}% | {o['res']:7.1e} {o['t_th']:5.0f}")

    def summary_of(rs):
        rel = [o["rel"] for o in rs]
        return [
            f"early-stopped loss within 3% or 2 s.e.: {sum((o['rel'] < 0.03) or (o['z'] < 2) for o in rs)}/{len(rs)}; "
            f"max rel {100*max(rel):.2f}%, median {100*np.median(rel):.2f}%",
            f"whole test-loss curve within 5%: {sum(o['curve'] < 0.05 for o in rs)}/{len(rs)}; max {100*max(o['curve'] for o in rs):.2f}%",
            f"converged (every replica): {sum(bool(o['conv']) for o in rs)}/{len(rs)}; time: simulation "
            f"{sum(o['t_sim'] for o in rs):.0f} s, theory {sum(o['t_th'] for o in rs):.0f} s (2 shared CPU cores, incl. compilation)",
        ]

    sim_fn = eqx.filter_jit(mtjax.simulate_batch)
    th_run = _theory_fn(args.replicas)

    def compute(point):
        alpha, s, eps = point
        e = experiment(args.n, args.rank, alpha, s, eps, args.steps, args.lr, args.n_test)
        batch = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (ns,) + a.shape), e)
        t0 = time.time()
        h = sim_fn(batch, seeds)
        te = np.asarray(h.test_loss[:, :, 0])
        trl = np.asarray(h.train_loss[:, :, 0])
        t_sim = time.time() - t0
        tl, trt, res, conv, dt = th_run(e, solver)
        time_ = np.asarray(h.time[0])
        es = te.min(1)
        es_m, es_se = es.mean(), es.std(ddof=1) / np.sqrt(ns)
        mean, es_th, i, es_th_se = _curve_stats(tl)
        return dict(alpha=alpha, s=s, eps=eps, es_sim=es_m, es_se=es_se, es_th=es_th, es_th_se=es_th_se,
                    rel=abs(es_th - es_m) / es_m, z=abs(es_th - es_m) / np.hypot(es_se, es_th_se),
                    tmin_sim=time_[np.argmin(te.mean(0))], tmin_th=time_[i],
                    final_sim=te[:, -1].mean(), final_se=te[:, -1].std(ddof=1) / np.sqrt(ns), final_th=mean[-1],
                    curve=np.max(np.abs(mean - te.mean(0)) / te.mean(0)),
                    train_rel=np.max(np.abs(trt.mean(0) - trl.mean(0)) / trl.mean(0)), res=res, conv=conv, t_sim=t_sim, t_th=dt)

    _run_grid(args, grid, ["alpha", "s", "eps"], compute, line, header, summary_of)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--lr", type=float, default=0.5)
    ap.add_argument("--n-test", type=int, default=10000)
    ap.add_argument("--draws", type=int, default=2048)
    ap.add_argument("--response", type=int, default=256)
    ap.add_argument("--depth", type=int, default=0, choices=[0, 1, 2])
    ap.add_argument("--sa", type=float, nargs="*", default=[3.0], help="s_a values (depth >= 1; noisy to clean: --sa 0.5 3)")
    ap.add_argument("--sb", type=float, nargs="*", default=None, help="subset of s_b values (depth >= 1)")
    ap.add_argument("--alphas", type=float, nargs="*", default=None, help="subset of alpha values")
    ap.add_argument("--r", type=float, nargs="*", default=[0.0, 0.5, 1.0], help="relatedness values (depth >= 1)")
    ap.add_argument("--eps", type=float, nargs="*", default=[0.0, 0.2], help="label-flip rates (of both tasks at depth >= 1)")
    ap.add_argument("--s", type=float, nargs="*", default=None, help="subset of the teacher scales s (depth 0)")
    ap.add_argument("--replicas", type=int, default=4, help="theory solves with independent draw seeds (mean ± s.e.)")
    ap.add_argument("--damping", type=float, default=1.0)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--activation", default="linear", help="trunk activation (depth >= 1): linear, tanh, erf, gelu, relu")
    ap.add_argument("--relu-sharpness", type=float, default=12.0,
                    help="beta of the relu trunk's softplus(beta x)/beta surrogate in the theory (FiniteDataSolver.relu_sharpness)")
    ap.add_argument("--labels", default="auto", choices=["auto", "summed", "sampled"],
                    help="FiniteDataSolver.labels: how each draw's label enters (summed: every class, weighted)")
    ap.add_argument("--response-control", action="store_true",
                    help="the response's control variate (FiniteDataSolver(response_control=True))")
    ap.add_argument("--response-method", default="pathwise", choices=["pathwise", "difference"],
                    help="FiniteDataSolver.response of a nonlinear trunk: Jacobian chain, or central differences of the process")
    ap.add_argument("--response-step", type=float, default=0.05, help="FiniteDataSolver.response_step (--response-method difference)")
    ap.add_argument("--average-maps", type=int, default=0,
                    help="FiniteDataSolver.average_maps: maps with fresh draws averaged into the kernels after the fixed point")
    ap.add_argument("--average-clip", type=float, default=1.0,
                    help="FiniteDataSolver.average_clip: an averaging map's largest pull, relative to the kernel (inf: unclipped)")
    ap.add_argument("--tol", type=float, default=5e-3)
    ap.add_argument("--out", default=None)
    ap.add_argument("--table-only", action="store_true",
                    help="write the table of the stored rows (same settings) and compute nothing")
    ap.add_argument("--refined", nargs="*", default=None, metavar="CSV",
                    help="rows of the same settings but another replica count (points re-solved with more replicas), "
                         "shown in place of this run's rows at the same points and marked")
    ap.add_argument("--merge", nargs="*", default=None, metavar="CSV",
                    help="also take the rows (same settings) stored in these CSVs of other runs")
    args = ap.parse_args()
    if args.out is None:
        args.out = {0: "docs/results/finite_data_accuracy.txt", 1: "docs/results/finite_data_accuracy_trunk.txt",
                    2: "docs/results/finite_data_accuracy_depth2.txt"}[args.depth]
    if args.depth >= 1:
        return main_trunk(args)
    return main_single(args)


if __name__ == "__main__":
    main()
