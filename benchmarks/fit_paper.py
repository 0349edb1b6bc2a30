"""Fit the theories to the authors' rank-10 runs: effective parameters of the population theory
(default), or the finite-data theory of the paper's own network (`--model finite`).

    python benchmarks/fit_paper.py --model finite --discrepancy --out docs/results/fit_paper_finite.txt

The finite-data fit takes every cell with ntrain <= --max-ntrain (default 800: 744 cells), the
data sizes, s_a, s_b, r and single-task mode known per cell, and fits one time scale τ_n per
ntrain (SGD time -> the theory's GD time); see `fit_finite`. `--offsets` also fits a loss
offset per (ntrain, s_a), which absorbs the theory's single-task level error and cancels in the
benefits; `--read-back` fits r and s_b to the benefits of one ntrain (`read_back`).

    python benchmarks/fit_paper.py --model finite --discrepancy --offsets --out docs/results/fit_paper_finite_offsets.txt
    python benchmarks/fit_paper.py --model finite --read-back --s-b 10 --r 0 0.5 1 --newton 12 --out docs/results/fit_paper_readback.txt
    python benchmarks/fit_paper.py --model finite --offsets --read-back --groups 10:1 0.631:0.5 --newton 0 \
        --scan-r 0 0.5 1 --scan-sb 0.631 10 --out docs/results/fit_paper_readback_scan.txt

`--groups S_B:R ...` picks the read-back's groups; `--scan-r`/`--scan-sb` print each group's χ² and
the theory's benefits on a grid of (r, s_b) (with `--newton 0`, instead of the fit).

The rest of this docstring is the population fit's.

Data: the authors' rank-10.csv, shipped with mtjax (mtjax.default_data_dir()) (Lee & Ndirango 2019): early-stopped task-1 validation
cross-entropy of 2000-epoch runs, 5 training seeds per cell. The population theory has no
finite training set, so it is given *effective* parameters:

- `time_scale` per training-set size n: the theory's early-stopped loss is read at t = τ_n t_n,
  t_n = lr x (task-1 steps of 2000 epochs) = 2000 x ceil(n/128) x 1e-3 (τ_n < 1: the finite
  training set stops progress earlier than the infinite-data flow would);
- with `--sigma-free`, also `sigma_a`, `sigma_b`: effective logit noise of each task (labels
  depend on s only through s/σ, so this is the s-mapping s_eff = s σ_paper / σ_eff; the true
  σ is 0.1). Off by default: its forward-mode Jacobian pushes every tangent through the
  solves, and one iteration did not finish in 15 min on the shared 2-core machine, whereas
  the time scales act after the solve (one plain solve per iteration).

r, s_a, s_b and single-task mode are known per cell. Theory: the paper's student shape is
replaced by a linear trunk of `--depth` x `--width` (default 1 x 16; a width below C = 10 made the solve stiff: max_steps hit) with the N -> inf
("typical") initial condition, R = C = 10, rates (1, 1) as in the paper alternation with
n_2 = n_1. Fit: weighted least squares on the cell means (weights 1/s.e.²) over the cells
chosen by `--s-a`, `--s-b`, `--r`; then the multitask-benefit table (single − multi) of data and
fitted theory with residuals is printed.

    python benchmarks/fit_paper.py --out docs/results/fit_paper.txt
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

if "finite" not in sys.argv:  # the population fit is compile-bound; the DMFT fit is run-bound
    os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

import equinox as eqx  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import mtjax  # noqa: E402
from mtjax import Param, fit, make_problem, observations_from_table  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = str(mtjax.default_data_dir() / "rank-10.csv")  # the authors' table, shipped with mtjax


def load_cells(path: str, s_a, s_b, r) -> pd.DataFrame:
    """Cell means ± s.e. over training seeds of the early-stopped task-1 validation loss."""
    d = pd.read_csv(path)
    d = d.rename(columns={"main_train_pts": "ntrain", "validation-1/loss": "loss"})
    d["single_task"] = d["single_task"].astype(bool)
    d.loc[d.single_task, ["s_b", "relatedness"]] = np.nan
    keys = ["ntrain", "s_a", "s_b", "relatedness", "single_task"]
    # single-task runs were repeated for every (r, s_b): average those repeats per seed first
    per_seed = d.groupby(keys + ["train_seed"], dropna=False)["loss"].mean().reset_index()
    cells = per_seed.groupby(keys, dropna=False)["loss"].agg(["mean", "std", "count"]).reset_index()
    cells["se"] = cells["std"] / np.sqrt(cells["count"])
    close = lambda col, vals: np.isclose(cells[col].to_numpy()[:, None], np.asarray(vals)[None]).any(1)  # noqa: E731
    keep = close("s_a", s_a) & (cells.single_task | (close("s_b", s_b) & close("relatedness", r)))
    cells = cells[keep].reset_index(drop=True)
    cells["time"] = [float(mtjax.paper(n_train=int(n)).train.t_max) for n in cells["ntrain"]]
    cells["task"] = 1
    return cells


def paper_full_batch(n_grid: int):
    """The paper preset (N = 100, R = C = 10, depth-2 linear trunk of width 64, orthogonal init)
    re-expressed as full-batch GD: the finite-data theory reads the data sizes from
    `train.n_train_active` (known per cell, up to the 3200-example pool)."""
    spec = mtjax.paper_spec(n_train=3200)
    spec["train"] = {**spec["train"], "protocol": "full_batch", "n_train": [3200, 3200], "n_pool": [3200, 3200],
                     "n_steps": n_grid, "eval_every": 1}  # fmt: skip
    return mtjax.experiment_from_spec(spec)


def fit_finite(cells: pd.DataFrame, a, n_newton: int | None = None):
    """The finite-data theory (the DMFT of the paper's own network, quenched initial student of
    seed 0, `mtjax.fit_solver()`; with `--trunk-width proportional` the width-proportional DMFT at
    the typical initial condition), one fit per ntrain: its time scale τ_n is the only free
    parameter, so each ntrain's cells are solved once (`FitProblem.with_fixed_curves`).  The
    theory grid runs to 1.5 t_n with steps Δ <= 1 (GD stability; at least 16 steps).

    `n_newton`: Levenberg–Marquardt steps (default `--newton`).

    **Returns:** (fitted predictions (len(cells),), predictions at τ = 1, {ntrain: FitResult})."""
    n_newton = a.newton if n_newton is None else n_newton
    cells = cells.assign(ntrain_b=np.where(cells.single_task, np.nan, cells.ntrain))
    pred, nominal = np.full(len(cells), np.nan), np.full(len(cells), np.nan)
    results = {}
    for n in sorted(cells.ntrain.unique()):
        sel = (cells.ntrain == n).to_numpy()
        sub = cells[sel]
        t_n = float(sub.time.iloc[0])
        T = max(16, math.ceil(1.5 * t_n))
        model = (mtjax.FiniteDataTheory(mtjax.fit_solver(n_grid=T)) if a.trunk_width == "fixed" else
                 mtjax.FiniteDataTheory(mtjax.fit_solver(n_grid=T), "typical", "proportional"))  # fmt: skip
        obs, _ = observations_from_table(
            sub, value="mean", se="se", known=["s_a", "s_b", "relatedness", "single_task", "ntrain", "ntrain_b"],
            early_stopped=True, grid=np.linspace(0.0, 1.5 * t_n, T + 1), by=["s_a"] if a.offsets else (),
        )  # fmt: skip
        params = [Param("time_scale", 1.0)] + ([Param("loss_offset", 0.0, by="s_a")] if a.offsets else [])
        t0 = time.time()
        # Solved once here (only post-solve parameters are free), so the fit and the predictions reuse it.
        prob = make_problem(paper_full_batch(T), obs, params, model=model).with_fixed_curves()
        t_solve = time.time() - t0
        res = fit(prob, n_starts=1, n_adam=0, n_newton=n_newton, gtol=1e-4,
                  discrepancy="estimate" if a.discrepancy else None)  # fmt: skip
        pred[sel] = np.asarray(prob.predict(res.theta))
        nominal[sel] = np.asarray(prob.predict(prob.pack({"time_scale": 1.0, "loss_offset": 0.0})))
        results[int(n)] = res
        print(f"ntrain {int(n)}: {obs.n_conditions} cells solved in {t_solve:.0f} s (n_grid {T}, incl. compiling), "
              f"fitted in {time.time() - t0 - t_solve:.0f} s: time_scale {float(res.params['time_scale'][0]):.3f}", flush=True)
    return pred, nominal, results


def read_back(cells: pd.DataFrame, a) -> list[str]:
    """Read r and s_b back from the authors' runs: at ntrain = `--read-back-ntrain`, with that
    ntrain's time scale τ_n fitted first (`fit_finite` on all its cells), fit r and s_b as free
    parameters to the multitask cells of each (s_b, r) group in `--s-b` x `--r` (one cell per
    s_a), s_a and the data sizes known.

    What is fitted is the benefit, not the level: the observation of a cell is the theory's
    single-task loss at its s_a (r and s_b do not enter it) minus the authors' benefit
    (single − multi, s.e. of both cell means combined), so the theory's error in the
    single-task level (docs/results/fit_paper_finite.txt) does not pull r and s_b. The labels
    are summed given each draw (`labels="summed"`): with C = 10 sampled labels the solve is
    piecewise constant in r and s_b (docs/dmft.md §3).

    **Returns:** the report's lines."""
    n = a.read_back_ntrain
    sub = cells[cells.ntrain == n].reset_index(drop=True)
    groups = a.groups if a.groups else [(sb, r) for sb in a.s_b for r in a.r]

    def in_group(sb, r):  # rtol 1e-3: the table's s_b have 16 digits, the command line's 3 or 4
        return np.isclose(sub.s_b, sb, rtol=1e-3) & np.isclose(sub.relatedness, r)

    for sb, r in groups:  # before the time-scale fit, which takes minutes
        if not (~sub.single_task & in_group(sb, r)).any():
            raise SystemExit(f"--groups {sb:g}:{r:g}: no multitask cell at ntrain {n}; s_b is one of "
                             f"{sorted(float(round(v, 4)) for v in sub.s_b.dropna().unique())}, r one of "
                             f"{sorted(float(v) for v in sub.relatedness.dropna().unique())}")
    t0 = time.time()
    # 12 steps whatever --newton (the r, s_b fits'): the curves are solved once, so they cost ~1 s
    _, _, res = fit_finite(sub, a, n_newton=12)
    tau = float(res[n].params["time_scale"][0])
    t_read = tau * float(sub.time.iloc[0])
    T = max(16, math.ceil(1.5 * t_read))
    grid = np.linspace(0.0, 1.5 * t_read, T + 1)
    model = mtjax.FiniteDataTheory(mtjax.fit_solver(n_grid=T, labels="summed"))
    exp = paper_full_batch(T)
    single = sub[sub.single_task].assign(time=t_read, ntrain_b=np.nan)
    obs_s, _ = observations_from_table(single, value="mean", se="se", known=["s_a", "single_task", "ntrain", "ntrain_b"],
                                       early_stopped=True, grid=grid)  # fmt: skip
    # r and s_b are not free here (no Param), so the single-task theory is solved once.
    ps = make_problem(exp, obs_s, [Param("time_scale", 1.0)], model=model).with_fixed_curves()
    single_theory = dict(zip(single.s_a, np.asarray(ps.predict(ps.pack({"time_scale": 1.0})))))
    L = [f"read-back of r and s_b at ntrain {n} (τ_{n} = {tau:.4f} from the time-scale fit of its {len(sub)} cells"
         f"{' with a loss offset per s_a' if a.offsets else ''}; "
         f"the theory read at τ t_n = {t_read:.3f} on a {T}-step grid; labels summed; {time.time() - t0:.0f} s so far)",
         f"{'s_b':>6} {'r':>5} | {'r fit ± s.e.':>15} {'s_b fit ± s.e.':>17} {'chi2/dof':>8} {'conv':>4} {'s':>5}"]
    print(L[0], flush=True)
    for sb, r in groups:
        t1 = time.time()
        m = sub[~sub.single_task & in_group(sb, r)].copy()
        sj = single.set_index("s_a").loc[m.s_a]
        benefit = sj["mean"].to_numpy() - m["mean"].to_numpy()
        m["value"] = np.asarray([single_theory[x] for x in m.s_a]) - benefit
        m["se_b"] = np.hypot(sj["se"].to_numpy(), m["se"].to_numpy())
        m = m.assign(time=t_read, ntrain_b=m.ntrain).drop(columns=["s_b", "relatedness"])
        obs, _ = observations_from_table(m, value="value", se="se_b", known=["s_a", "single_task", "ntrain", "ntrain_b"],
                                         early_stopped=True, grid=grid)  # fmt: skip
        prob = make_problem(exp, obs, [Param("relatedness", 0.5), Param("s_b", 1.0)], model=model)
        if a.scan_r:
            L += _scan(prob, a, sb, r, benefit, m["se_b"].to_numpy())
        if a.newton == 0:
            continue
        fr = fit(prob, n_starts=1, n_adam=0, n_newton=a.newton, gtol=1e-4, progress=a.progress)
        line = (f"{sb:6.3f} {r:5.2f} | {float(fr.params['relatedness'][0]):6.3f} ± {float(fr.stderr['relatedness'][0]):6.3f} "
                f"{float(fr.params['s_b'][0]):7.3f} ± {float(fr.stderr['s_b'][0]):7.3f} {float(fr.chi2_dof):8.2f} "
                f"{int(bool(fr.converged)):4d} {time.time() - t1:5.0f}")  # fmt: skip
        print(line, flush=True)
        L.append(line)
    return L


@eqx.filter_jit
def _predict(prob, theta):
    """`FitProblem.predict` with the problem as an argument: groups of the same shape share one
    compilation (a closure over each group's problem compiled once per group)."""
    return prob.predict(theta)


def _scan(prob, a, sb, r, benefit, se) -> list[str]:
    """The read-back's χ² and the theory's benefits over the grid `--scan-r` x `--scan-sb` for
    one group: where the fit's minimum lies, and whether the theory reaches the authors' benefits."""
    L = [f"  scan of group (s_b {sb:g}, r {r:g}): authors' benefits by s_a " + " ".join(f"{b:+.3f}" for b in benefit)
         + " (s.e. " + " ".join(f"{v:.3f}" for v in se) + ")"]
    for rr in a.scan_r:
        for ss in a.scan_sb:
            t1 = time.time()
            theta = prob.pack({"relatedness": rr, "s_b": ss})
            pred = np.asarray(_predict(prob, theta))
            # the read-back's problems are weighted least squares: χ² = 2 x `FitProblem.objective`,
            # from the predictions already solved (objective() would solve them again)
            chi2 = float(np.sum(((pred - np.asarray(prob.obs.value)) / np.asarray(prob.obs.se)) ** 2))
            ben_th = np.asarray(prob.obs.value) + benefit - pred  # single theory − multi theory
            L.append(f"    r {rr:4.2f} s_b {ss:7.3f}: chi2 {chi2:7.2f}; theory benefits " + " ".join(f"{b:+.3f}" for b in ben_th)
                     + f"  ({time.time() - t1:.0f} s)")
            print(L[-1], flush=True)
    return L


def _group(text: str) -> tuple[float, float]:
    """One `--groups` entry, `S_B:R`."""
    try:
        sb, r = (float(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--groups entries are S_B:R, e.g. 10:1; got {text!r}") from None
    return sb, r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["population", "finite"], default="population",
                    help="population: effective parameters of the infinite-data theory; finite: the DMFT of the "
                         "paper's network with the data sizes known (all cells with ntrain <= --max-ntrain)")
    ap.add_argument("--max-ntrain", type=int, default=800, help="finite: largest ntrain fitted")
    ap.add_argument("--discrepancy", action="store_true", help="finite: estimate a model-discrepancy term (error bars)")
    ap.add_argument("--offsets", action="store_true",
                    help="finite: also fit a loss offset per (ntrain, s_a): it absorbs the theory's error in the "
                         "single-task level (shared by a level's single- and multitask cells, so it cancels in the "
                         "benefit) and leaves τ to the losses' variation with s_b and r")
    ap.add_argument("--trunk-width", choices=["fixed", "proportional"], default="fixed",
                    help="finite: the DMFT at fixed trunk width (quenched initial student) or with the width "
                         "proportional to N (typical initial condition, docs/dmft.md §4.3)")
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--s-a", type=float, nargs="+", default=[0.6309573444801929, 10.0])
    ap.add_argument("--s-b", type=float, nargs="+", default=[10.0])
    ap.add_argument("--r", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    ap.add_argument("--depth", type=int, default=1)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--n-quad", type=int, default=128)
    ap.add_argument("--adam", type=int, default=0)
    ap.add_argument("--newton", type=int, default=4)
    ap.add_argument("--sigma-free", action="store_true",
                    help="also fit effective sigma_a, sigma_b (the s-mapping); ~9x the cost per iteration")
    ap.add_argument("--read-back", action="store_true",
                    help="finite: read r and s_b back as free parameters from the multitask cells of each (--s-b, --r) "
                         "group at --read-back-ntrain (the benefit fitted, the time scale from that ntrain's cells)")
    ap.add_argument("--read-back-ntrain", type=int, default=800)
    ap.add_argument("--groups", type=_group, nargs="+", default=None, metavar="S_B:R",
                    help="--read-back: the (s_b, r) groups to read back, e.g. 10:1 0.631:0.5 (default: --s-b x --r)")
    ap.add_argument("--scan-r", type=float, nargs="*", default=None,
                    help="--read-back: also print each group's chi2 and theory benefits on the grid --scan-r x --scan-sb "
                         "(with --newton 0: the scan only)")
    ap.add_argument("--scan-sb", type=float, nargs="*", default=[0.631, 10.0])
    ap.add_argument("--progress", action="store_true", help="print the fits' progress to stderr")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    t0 = time.time()
    if a.model == "finite":
        return main_finite(a, t0)
    cells = load_cells(a.data, a.s_a, a.s_b, a.r)
    spec = {
        "teacher": {"n_features": 100, "rank": 10, "n_classes": 10, "scale": [1.0, 1.0], "noise": 0.1, "noisy_fraction": 0.5},
        "student": {"depth": a.depth, "width": a.width, "init": "orthogonal", "bias_init": "torch"},
        "train": {"protocol": "online", "learning_rate": 1e-3},
    }
    exp = mtjax.experiment_from_spec(spec)
    # theory save times: a geometric grid wide enough for τ_n t_n with τ_n in [0.02, 1]
    grid = np.geomspace(0.02 * cells["time"].min(), cells["time"].max(), 16)
    obs, conditions = observations_from_table(
        cells, value="mean", se="se", known=["s_a", "s_b", "relatedness", "single_task"], by=["ntrain"],
        early_stopped=True, grid=grid,
    )  # fmt: skip
    params = [Param("time_scale", 0.3, by="ntrain")]
    if a.sigma_free:
        params += [Param("sigma_a", 0.3), Param("sigma_b", 0.3)]
    solver = mtjax.PopulationSolver(n_quad=a.n_quad, n_quad_eval=2048, rtol=3e-3, atol=1e-4, smooth_loss=True)
    prob = make_problem(exp, obs, params, solver=solver, initial="typical")
    print(f"{len(cells)} cells, {obs.n_conditions} theory solves per evaluation", flush=True)
    res = fit(prob, n_starts=1, n_adam=a.adam, adam_lr=0.1, n_newton=a.newton, gtol=1e-3)
    pred = np.asarray(prob.predict(res.theta))
    cells["theory"] = pred
    cells["resid"] = cells["mean"] - cells["theory"]
    report = format_report(cells, res, a, time.time() - t0)
    print(report)
    if a.out:
        with open(a.out, "w") as f:
            f.write(report + "\n")


def main_finite(a, t0):
    raw = pd.read_csv(a.data)
    cells = load_cells(a.data, raw.s_a.unique(), raw.s_b.unique(), raw.relatedness.unique())
    cells = cells[cells.ntrain <= a.max_ntrain].reset_index(drop=True)
    if a.read_back:
        L = [f"fit_paper --read-back: the DMFT of the paper's network (depth 2 x 64, quenched initial student of seed 0), "
             f"mtjax.fit_solver(labels='summed')", f"command: python benchmarks/fit_paper.py " + " ".join(sys.argv[1:]), ""]
        L += read_back(cells, a)
        L.append(f"total {time.time() - t0:.0f} s on 2 CPU cores")
        report = "\n".join(L)
        print(report)
        if a.out:
            with open(a.out, "w") as f:
                f.write(report + "\n")
        return
    print(f"{len(cells)} cells (ntrain <= {a.max_ntrain}), one fit per ntrain", flush=True)
    pred, nominal, results = fit_finite(cells, a)
    cells["theory"] = nominal
    L0 = _benefit_table(cells)[:2]  # the summary lines of the unfitted theory (τ = 1)
    cells["theory"] = pred
    cells["resid"] = cells["mean"] - cells["theory"]
    seconds = time.time() - t0
    L = [f"fit_paper --model finite: {len(cells)} cells of rank-10.csv (every s_a, s_b, r; ntrain <= {a.max_ntrain}); "
         f"theory: the DMFT of the paper's network (depth 2 x 64, "
         + ("quenched initial student of seed 0), " if a.trunk_width == "fixed" else
            "width proportional to N, typical initial condition of seed 0), ") +
         f"mtjax.fit_solver() with n_grid max(16, 1.5 t_n); one time scale per ntrain"
         + (" and one loss offset per (ntrain, s_a); " if a.offsets else "; ") +
         f"{seconds:.0f} s on 2 CPU cores",
         f"command: python benchmarks/fit_paper.py " + " ".join(sys.argv[1:]), ""]
    L.append("fitted time scales (SGD time t = lr x steps -> theory GD time τ t; ± Laplace s.e.), χ²/dof per ntrain:")
    for n, res in results.items():
        sel = cells.ntrain == n
        dof = max(1, int(sel.sum()) - sum(v.size for v in res.params.values()))
        tau = np.asarray(res.discrepancy)[0]
        chi2_d = float(np.sum(cells.resid[sel] ** 2 / (cells.se[sel] ** 2 + tau**2)) / dof)
        L.append(f"  ntrain {n:4d}: τ = {float(res.params['time_scale'][0]):.4f} ± {float(res.stderr['time_scale'][0]):.4f}; "
                 f"χ²/dof {float(res.chi2_dof):.1f} without, {chi2_d:.2f} with the discrepancy term "
                 f"(τ_disc = {tau:.3f} nats{', estimated' if a.discrepancy else ': none requested'})")
        if "loss_offset" in res.params:
            s_as = sorted(cells.s_a[sel].unique())
            L.append("      loss offsets by s_a (nats): " + ", ".join(
                f"{x:.3g}: {float(o):+.3f} ± {float(e):.3f}"
                for x, o, e in zip(s_as, res.params["loss_offset"], res.stderr["loss_offset"])))
    L += ["", "the theory at τ = 1 (SGD time = GD time, nothing fitted):"] + ["  " + x for x in L0]
    return _finish(cells, L, a)


def _finish(cells, L, a):
    L.append("")
    L.append(f"loss fit: RMS residual {np.sqrt(np.mean(cells.resid**2)):.3f} nats, median |resid|/se "
             f"{np.median(np.abs(cells.resid) / cells.se):.1f}")
    L += _benefit_table(cells)
    report = "\n".join(L)
    print(report)
    if a.out:
        with open(a.out, "w") as f:
            f.write(report + "\n")


def format_report(cells: pd.DataFrame, res, a, seconds: float) -> str:
    L = [f"fit_paper: {len(cells)} cells of rank-10.csv (s_a in {[round(x, 3) for x in a.s_a]}, s_b in "
         f"{[round(x, 3) for x in a.s_b]}, r in {a.r}, all ntrain); theory student depth {a.depth} x width {a.width}, "
         f"typical init, n_quad {a.n_quad}; {seconds:.0f} s", ""]
    L.append("fitted effective parameters (± Laplace s.e.):")
    ns = sorted(cells["ntrain"].unique())
    for i, n in enumerate(ns):
        L.append(f"  time_scale[ntrain={n:4d}] = {float(res.params['time_scale'][i]):.4f} ± {float(res.stderr['time_scale'][i]):.4f}")
    for k in [k for k in ("sigma_a", "sigma_b") if k in res.params]:
        L.append(f"  {k} = {float(res.params[k][0]):.4f} ± {float(res.stderr[k][0]):.4f}  (true logit noise 0.1)")
    L.append(f"  chi2/dof = {float(res.chi2_dof):.1f}, |grad| = {float(res.grad_norm):.2g}, steps = {int(res.n_steps)}")
    L.append("")
    L.append(f"loss fit: RMS residual {np.sqrt(np.mean(cells.resid**2)):.3f} nats, median |resid|/se "
             f"{np.median(np.abs(cells.resid) / cells.se):.1f}")
    return "\n".join(L + _benefit_table(cells))


def _benefit_table(cells: pd.DataFrame) -> list[str]:
    """The multitask-benefit summary and table (data vs fitted theory) and the single-task table."""
    L = []
    single = cells[cells.single_task].set_index(["ntrain", "s_a"])
    multi = cells[~cells.single_task].copy()
    sj = single.loc[list(zip(multi.ntrain, multi.s_a))]
    multi["benefit"] = sj["mean"].to_numpy() - multi["mean"].to_numpy()
    multi["benefit_se"] = np.hypot(sj["se"].to_numpy(), multi["se"].to_numpy())
    multi["benefit_theory"] = sj["theory"].to_numpy() - multi["theory"].to_numpy()
    multi["benefit_resid"] = multi["benefit"] - multi["benefit_theory"]
    L.append(f"benefit fit: RMS residual {np.sqrt(np.mean(multi.benefit_resid**2)):.3f} nats over {len(multi)} cells; "
             f"RMS benefit {np.sqrt(np.mean(multi.benefit**2)):.3f}; sign agreement where |benefit| > 2 s.e.: "
             f"{_sign_agree(multi):.0%}")
    corr = np.corrcoef(multi.benefit, multi.benefit_theory)[0, 1]
    L.append(f"correlation(benefit data, benefit theory) = {corr:.2f}")
    L.append("")
    L.append("multitask benefit on task 1 (nats): data ± s.e. | fitted theory | residual")
    L.append(f"{'ntrain':>6} {'s_a':>6} {'s_b':>6} {'r':>5} {'data':>16} {'theory':>8} {'resid':>8}")
    for _, m in multi.sort_values(["s_a", "relatedness", "s_b", "ntrain"]).iterrows():
        L.append(f"{int(m.ntrain):6d} {m.s_a:6.3f} {m.s_b:6.3f} {m.relatedness:5.2f} {m.benefit:8.3f} ± {m.benefit_se:5.3f} "
                 f"{m.benefit_theory:8.3f} {m.benefit_resid:8.3f}")
    L.append("")
    L.append("single-task early-stopped loss (nats): data ± s.e. | fitted theory")
    for (n, sa), s in single.sort_index().iterrows():
        L.append(f"{int(n):6d} {sa:6.3f} {s['mean']:8.3f} ± {s['se']:5.3f} {s['theory']:8.3f}")
    return L


def _sign_agree(multi: pd.DataFrame) -> float:
    sig = multi[np.abs(multi.benefit) > 2 * multi.benefit_se]
    if len(sig) == 0:
        return math.nan
    return float(np.mean(np.sign(sig.benefit) == np.sign(sig.benefit_theory)))


if __name__ == "__main__":
    main()
