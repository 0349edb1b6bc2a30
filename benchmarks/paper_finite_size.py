"""Where does the DMFT's deficit at the paper preset come from?  A finite-size scan.

Run: python benchmarks/paper_finite_size.py [--n 100 200 400 800 1600] [--ntrain 100 800] [--sa 10]
         [--realisations 16] [--theory-realisations 4] [--sgd] [--related R] [--no-theory]
         [--nlayers 1] [--typical-only] [--out docs/results/paper_finite_size.txt]
Output: a table (per-run CSV and per-solve theory CSV `<out>_theory.csv` next to it).
Results and reading: docs/dmft.md §6.3.

The DMFT of `benchmarks/paper_finite.py` is the limit N, P -> inf at fixed alpha = P / (N - K R),
fixed trunk width H = 64, C = R = 10.  At the paper's N = 100 its single-task early-stopped losses
(quenched initial condition) are 0.2-0.4 nats below the authors' (docs/dmft.md §6.2), while
mtjax's simulator reproduces the authors' numbers with their protocol (docs/reproduction.md).  This
script simulates the paper's student and teacher with the **theory's own dynamics** — full-batch
GD with the theory grid's step Δ = t_max / n_grid and n_grid steps (t_max(ntrain) = 2000
ceil(ntrain / 128) x 1e-3, the paper's time map) — at growing N, with the data size scaled as
P = ntrain (N - 20) / 80 (alpha of the paper cell kept fixed), the teacher's logit noise
sigma = 0.1 and everything else as the paper preset (orthogonal init, PyTorch bias init, noisy
fraction 1/2, 3200 validation examples), and solves the DMFT at each N with the paper grid's
solver settings, both `initial="quenched"` (at the students of realisations 0..k-1) and
`"typical"` (the N -> inf initial overlaps).  Controls at the smallest N: the same flow with 10x
smaller steps ("x10", the GD-step approximation) and, with `--sgd`, the paper's own protocol
(minibatch SGD at lr 1e-3, "SGD").  `--related r` adds the multitask runs (second task at
relatedness r, s_b = s_a) and a table of the benefit, paired per realisation.

`--nlayers 1`: the authors' deep-nonlinear student instead (one ReLU layer of 64, biases,
orthogonal init; `deep-nonlinear.csv`), solved by the nonlinear-trunk DMFT (docs/dmft.md §4.2:
relu as softplus(β x)/β, β = 12) with the solver of `benchmarks/paper_nonlinear.py --theory
finite`.  `--typical-only`: no quenched solves; the typical DMFT, which depends on N only
through the rounding of α = P / (N − 20) and the first layer's initial biases (PyTorch init,
uniform in ±1/√N), is solved once per (ntrain, task) at the largest N — the N → ∞ theory —
and shown in every row (at H = 64 a solve takes about a minute).

Each (N, ntrain) row: mean ± s.e. over `--realisations` independent realisations (teacher, data,
initial student and training subset all drawn from seed r), early-stopped = minimum over the
evaluation times (the n_grid + 1 grid times for GD, as the theory; every 10 epochs for SGD).
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
from paper_finite import GRID_SOLVER, tmax  # the paper grid's solver and time map (same folder)




def experiment(N: int, ntrain: int, s_a: float, n_grid: int, refine: int, n_test: int, related: float | None = None,
               nlayers: int | None = None):
    """Paper student and teacher at input dimension N, single task, full-batch GD with the
    theory grid's step (divided by `refine`, with `refine` times as many steps); `refine = 0`:
    the paper's own protocol instead (minibatch SGD, batch 128, lr 1e-3, 2000 epochs, evaluated
    every 10 epochs as `mtjax reproduce`).  `related = r`: multitask instead, the second task at
    relatedness r and the same scale s_b = s_a.  `nlayers`: the deep-nonlinear student (that
    many ReLU layers of 64) in place of the linear 2 x 64 trunk."""
    P = int(round(ntrain * (N - 20) / 80))
    trunk = {} if nlayers is None else {"depth": nlayers, "activation": "relu"}
    spec = mtjax.paper_spec(n_train=P, **trunk)
    spec["teacher"] = {**spec["teacher"], "n_features": N, "scale": [s_a, s_a], "noise": 0.1,
                       "relatedness": 0.0 if related is None else related}
    single = related is None
    if refine == 0:
        spec["train"] = {**spec["train"], "n_test": n_test, "eval_every": 10, "single_task": single}
        return mtjax.experiment_from_spec(spec), P
    spec["train"] = {**spec["train"], "protocol": "full_batch", "n_train": [P, P], "n_pool": [P, P], "n_test": n_test,
                     "n_steps": n_grid * refine, "eval_every": refine, "learning_rate": tmax(ntrain) / n_grid / refine,
                     "single_task": single}  # fmt: skip
    return mtjax.experiment_from_spec(spec), P


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="*", default=[100, 200, 400, 800, 1600])
    ap.add_argument("--ntrain", type=int, nargs="*", default=[100, 800])
    ap.add_argument("--sa", type=float, default=10.0)
    ap.add_argument("--n-grid", type=int, default=20)
    ap.add_argument("--realisations", type=int, default=16)
    ap.add_argument("--chunk", type=int, default=4, help="realisations per vmapped call (memory)")
    ap.add_argument("--n-test", type=int, default=3200)
    ap.add_argument("--theory-realisations", type=int, default=4,
                    help="DMFT solves per (N, ntrain): quenched at the initial students of realisations 0..k-1")
    ap.add_argument("--draws", type=int, default=2048)
    ap.add_argument("--no-theory", action="store_true")
    ap.add_argument("--sgd", action="store_true",
                    help="at the smallest N also simulate the paper's protocol (minibatch SGD at lr 1e-3)")
    ap.add_argument("--related", type=float, default=None,
                    help="also train multitask (second task at this relatedness, s_b = s_a) and report the benefit")
    ap.add_argument("--nlayers", type=int, default=None, choices=[1],
                    help="the authors' deep-nonlinear student (ReLU layers of 64) and the nonlinear-trunk DMFT")
    ap.add_argument("--typical-only", action="store_true",
                    help="no quenched DMFT solves; the typical one once per (ntrain, task), at the largest N")
    ap.add_argument("--out", default="docs/results/paper_finite_size.txt")
    args = ap.parse_args()

    sim = eqx.filter_jit(mtjax.simulate_batch)
    if args.nlayers is None:
        # The DMFT solver of benchmarks/paper_finite.py (same settings as its full grid).
        solver = mtjax.FiniteDataSolver(n_grid=args.n_grid, n_draws=args.draws, **GRID_SOLVER)
    else:
        # That of benchmarks/paper_nonlinear.py --theory finite (docs/results/paper_nonlinear_finite.txt).
        solver = mtjax.FiniteDataSolver(n_grid=args.n_grid, n_draws=args.draws, n_response=64, max_iter=15, tol=2e-2,
                                        n_quad_eval=4096)

    @eqx.filter_jit
    def theory(e, r, t_max):
        ts = jnp.linspace(0.0, t_max, args.n_grid + 1)

        def one(ri):
            y = mtjax.finite_data_theory(e, mtjax.Seeds(ri), ts, solver=solver, initial="typical")
            y_out = (y.test_loss[:, 0], y.converged & ~y.diverged)
            if args.typical_only:
                return jnp.full_like(y_out[0], jnp.nan), jnp.array(False), *y_out
            q = mtjax.finite_data_theory(e, mtjax.Seeds(ri), ts, solver=solver)
            return q.test_loss[:, 0], q.converged & ~q.diverged, *y_out

        return jax.lax.map(one, r)

    variants = [("single", None)] + ([] if args.related is None else [("multi", args.related)])
    th_rows = []
    rows = []
    lines = ["# command: python benchmarks/paper_finite_size.py " + " ".join(sys.argv[1:])]
    for ntrain in args.ntrain:
        for N in args.n:
            for refine in ((1, 10) + ((0,) if args.sgd else ())) if N == min(args.n) else (1,):
                for task, rel in variants:
                    e, P = experiment(N, ntrain, args.sa, args.n_grid, refine, args.n_test, rel, args.nlayers)
                    t0 = time.time()
                    for c0 in range(0, args.realisations, args.chunk):
                        rr = jnp.arange(c0, min(c0 + args.chunk, args.realisations))
                        batch = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (len(rr),) + a.shape), e)
                        h = sim(batch, mtjax.Seeds(rr, rr, rr, rr))
                        te = np.asarray(h.test_loss[:, :, 0])  # (runs, n_grid + 1)
                        for q, r in enumerate(np.asarray(rr)):
                            rows.append(dict(ntrain=ntrain, N=N, P=P, refine=refine, task=task, realisation=int(r),
                                             es=float(np.nanmin(te[q])), t_star=float(np.asarray(h.time[q])[np.nanargmin(te[q])]),
                                             final=float(te[q, -1]), diverged=bool(np.asarray(h.diverged[q]))))  # fmt: skip
                    print(f"  ntrain {ntrain} N {N} P {P} refine {refine} {task}: {time.time() - t0:.0f} s", flush=True)
            if args.no_theory or args.theory_realisations < 1 or (args.typical_only and N != max(args.n)):
                continue
            for task, rel in variants:
                e, P = experiment(N, ntrain, args.sa, args.n_grid, 1, args.n_test, rel, args.nlayers)
                t0 = time.time()
                q, qok, y, yok = (np.asarray(a) for a in theory(e, jnp.arange(args.theory_realisations), tmax(ntrain)))
                # --typical-only: one solve at the largest N stands for every N (see the docstring).
                for N_row in args.n if args.typical_only else (N,):
                    for r in range(args.theory_realisations):
                        th_rows.append(dict(ntrain=ntrain, N=N_row, task=task, realisation=r, quenched=float(q[r].min()),
                                            quenched_ok=bool(qok[r]), typical=float(y[r].min()), typical_ok=bool(yok[r])))  # fmt: skip
                print(f"  ntrain {ntrain} N {N} {task}: theory {time.time() - t0:.0f} s", flush=True)
    df = pd.DataFrame(rows)
    base = os.path.splitext(args.out)[0]
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    df.to_csv(base + ".csv", index=False)

    th = pd.DataFrame(th_rows)
    if len(th):
        th.to_csv(base + "_theory.csv", index=False)

    def theory_at(ntrain, N, col, task="single"):  # mean ± s.e. over the converged realisations
        if not len(th):
            return float("nan"), float("nan"), 0
        g = th[(th.ntrain == ntrain) & (th.N == N) & (th.task == task) & th[col + "_ok"]][col]
        return g.mean(), (g.std(ddof=1) / np.sqrt(len(g)) if len(g) > 1 else float("nan")), len(g)

    gap_col = "typical" if args.typical_only else "quenched"  # the theory in the column "sim - DMFT"
    trunk = "linear 2 x 64" if args.nlayers is None else f"relu {args.nlayers} x 64 (DMFT: softplus(12 x)/12)"
    lines.append(f"# trunk {trunk}; DMFT column 'sim - DMFT': {gap_col}")
    lines.append(f"# single task, s_a = {args.sa}, sigma = 0.1, full-batch GD on the theory grid ({args.n_grid} steps of "
                 f"t_max/{args.n_grid}; 'x10' = 10x smaller steps), {args.realisations} realisations, P = ntrain (N - 20) / 80")  # fmt: skip
    lines.append(f"{'ntrain':>6} {'N':>5} {'P':>6} {'step':>5} | {'early-stopped sim':>18} {'t*':>5} | "
                 f"{'final':>6} | {'DMFT quenched':>16} {'sim - DMFT':>10} | {'DMFT typical':>16}")
    for (ntrain, N, refine), g in df[df.task == "single"].groupby(["ntrain", "N", "refine"]):
        ok = g[~g.diverged]
        m, se = ok.es.mean(), ok.es.std(ddof=1) / np.sqrt(len(ok))
        qm, qse, _ = theory_at(ntrain, N, "quenched")
        gm = theory_at(ntrain, N, gap_col)[0]
        ym, yse, _ = theory_at(ntrain, N, "typical")
        lines.append(f"{ntrain:6d} {N:5d} {int(g.P.iloc[0]):6d} { {0: 'SGD', 1: 'Δ'}.get(refine, f'x{refine}'):>5} | {m:9.3f} ± {se:6.3f} "
                     f"{ok.t_star.mean():5.1f} | {ok.final.mean():6.3f} | {qm:7.3f} ± {qse:6.3f} {m - gm:+10.3f} | "
                     f"{ym:7.3f} ± {yse:6.3f}"
                     + (f"  ({int(g.diverged.sum())} diverged, excluded)" if g.diverged.any() else ""))  # fmt: skip
    # Power-law fit of the gap in N (refine 1 rows): sim − DMFT(quenched at that N, or typical) = a N^-b.
    for ntrain in args.ntrain:
        g = df[(df.ntrain == ntrain) & (df.refine == 1) & (df.task == "single") & ~df.diverged].groupby("N").es.mean()
        gap = np.array([g[N] - theory_at(ntrain, N, gap_col)[0] for N in g.index])
        if len(gap) >= 2 and (gap > 0).all():
            b, loga = np.polyfit(np.log(g.index.values), np.log(gap), 1)
            lines.append(f"# ntrain {ntrain}: gap sim − DMFT ({gap_col}) ~ {math.exp(loga):.3g} N^{b:.2f} (least squares in log-log over "
                         f"N = {list(g.index)})")  # fmt: skip
    if args.related is not None:
        lines.append(f"\n# multitask benefit (single − multi early-stopped loss of task 1; r = {args.related}, s_b = s_a), "
                     "paired per realisation; DMFT: mean over its realisations of single − multi")
        lines.append(f"{'ntrain':>6} {'N':>5} {'step':>5} | {'multi sim':>16} | {'benefit sim':>17} | "
                     f"{'benefit quenched':>17} | {'benefit typical':>17}")
        for (ntrain, N, refine), g in df.groupby(["ntrain", "N", "refine"]):
            w = g.pivot_table(index="realisation", columns="task", values="es")
            if "multi" not in w:
                continue
            bad = set(g[g.diverged].realisation)
            w = w[~w.index.isin(bad)]
            b = w["single"] - w["multi"]
            tb = {}
            for col in ("quenched", "typical"):
                if not len(th):
                    tb[col] = (float("nan"), float("nan"))
                    continue
                t = th[(th.ntrain == ntrain) & (th.N == N)].pivot_table(index="realisation", columns="task", values=col)
                if not {"single", "multi"} <= set(t.columns):  # not solved (--typical-only: no quenched solves)
                    tb[col] = (float("nan"), float("nan"))
                    continue
                d = t["single"] - t["multi"]
                tb[col] = (d.mean(), d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan"))
            lines.append(f"{ntrain:6d} {N:5d} { {0: 'SGD', 1: 'Δ'}.get(refine, f'x{refine}'):>5} | "
                         f"{w['multi'].mean():7.3f} ± {w['multi'].std(ddof=1) / np.sqrt(len(w)):6.3f} | "
                         f"{b.mean():+8.4f} ± {b.std(ddof=1) / np.sqrt(len(b)):6.4f} | "
                         f"{tb['quenched'][0]:+8.4f} ± {tb['quenched'][1]:6.4f} | {tb['typical'][0]:+8.4f} ± {tb['typical'][1]:6.4f}")
    print("\n".join(lines))
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
