"""Write notebooks 01-04, 06 and 07 (outputs empty) from the cell sources below.

Run: python notebooks/make_notebooks.py   (then commit the .ipynb files; CI executes them,
tests/test_notebooks.py).  Editing the .ipynb files by hand is fine too; this script is only the
easiest way to keep them reviewable and free of outputs.
"""

from __future__ import annotations

from pathlib import Path

import nbformat

HERE = Path(__file__).parent

SCALE_CELL = 'SCALE = "quick"  # "quick": seconds on a laptop CPU (CI); "full": the converged, publication-size run'

NOTEBOOKS: dict[str, list[tuple[str, str]]] = {
    "01_quickstart.ipynb": [
        ("md", """# 01 · Quickstart: simulate, predict, overlay

Two tasks share a trunk (here one linear layer of 16 units) and have one softmax head each.
Each task is a noisy rank-3 linear teacher on N-dimensional Gaussian inputs; the relatedness
r is the overlap of the two teachers' input subspaces. We train students with online SGD
(fresh data every step: the infinite-data limit), and integrate the population mean-field
theory of the same experiment, from the same initial student."""),
        ("code", SCALE_CELL),
        ("code", """import mtjax
from mtjax import plots

N, steps, seeds = (100, 400, 4) if SCALE == "quick" else (400, 2000, 16)
spec = {
    "seed_scope": "train",  # teacher, test set and init shared; the seed picks the SGD noise
    "teacher": {"n_features": N, "rank": 3, "n_classes": 3},
    "student": {"depth": 1, "width": 16},
    "train": {"protocol": "online", "n_steps": steps, "eval_every": steps // 20,
              "learning_rate": 0.01, "batch_size": 256, "n_test": 4000},
}
grid = {"relatedness": [0.0, 1.0], "s_a": [3.0], "s_b": [3.0]}"""),
        ("md", "Simulation: every (grid point, seed) is one run of one vmapped, jit-compiled program."),
        ("code", """sim = mtjax.sweep(spec, {**grid, "seed": list(range(seeds))}, out_dir=None, progress=False)
sim.summary.groupby(["relatedness", "task"])["final_loss"].agg(["mean", "sem"])"""),
        ("md", "Theory: the same grid, integrated with diffrax; the tables have the same columns (`source = theory`)."),
        ("code", """solver = mtjax.PopulationSolver(n_quad=1024, n_quad_eval=4096) if SCALE == "quick" else mtjax.PopulationSolver()
th = mtjax.sweep(spec, grid, out_dir=None, progress=False, model=mtjax.PopulationTheory(solver))
th.summary.groupby(["relatedness", "task"])["final_loss"].mean()"""),
        ("code", """fig = plots.plot_curves_with_theory(sim.curves, th.curves, by=("relatedness",))"""),
        ("md", """Solid lines and bands: simulation mean ± standard error over seeds; dashed: theory.
With r = 1 the second task trains the same input directions as the first, so both tasks learn
faster than with r = 0."""),
    ],
    "02_single_task_dynamics.ipynb": [
        ("md", """# 02 · Single-task learning dynamics: theory vs simulation over noise

One task trained alone (`single_task = True`) with online SGD, for several logit-noise levels σ
of the teacher (`sigma_a`). The population theory should follow the simulated mean curve at
every noise level; noise raises the Bayes floor the test loss approaches."""),
        ("code", SCALE_CELL),
        ("code", """import numpy as np
import pandas as pd

import mtjax
from mtjax import plots

N, steps, seeds = (100, 300, 4) if SCALE == "quick" else (400, 2000, 16)
spec = {
    "seed_scope": "train",
    "teacher": {"n_features": N, "rank": 3, "n_classes": 3, "scale": [3.0, 3.0]},
    "student": {"depth": 1, "width": 16},
    "train": {"protocol": "online", "n_steps": steps, "eval_every": steps // 15,
              "learning_rate": 0.02, "batch_size": 256, "n_test": 4000, "single_task": True},
}
noise = [0.01, 1.0, 3.0]
sim = mtjax.sweep(spec, {"sigma_a": noise, "seed": list(range(seeds))}, out_dir=None, progress=False)
solver = mtjax.PopulationSolver(n_quad=1024, n_quad_eval=4096) if SCALE == "quick" else mtjax.PopulationSolver()
th = mtjax.sweep(spec, {"sigma_a": noise}, out_dir=None, progress=False, model=mtjax.PopulationTheory(solver))"""),
        ("code", """# The plot marks single-task runs in black; relabel them so each noise level gets a colour.
fig = plots.plot_curves_with_theory(sim.curves.assign(single_task=False), th.curves.assign(single_task=False),
                                    by=("sigma_a",), tasks=[1])"""),
        ("md", "Final test loss per noise level: simulation mean ± s.e. vs theory (nats)."),
        ("code", """s = sim.summary.groupby("sigma_a")["final_loss"].agg(["mean", "sem"])
s["theory"] = th.summary.set_index("sigma_a")["final_loss"]
s["(theory - mean) / sem"] = (s["theory"] - s["mean"]) / s["sem"]
s"""),
    ],
    "03_benefit_phase_diagram.ipynb": [
        ("md", """# 03 · Multitask benefit phase diagram

Benefit on task 1 = single-task loss − multitask loss (nats; positive: training with task 2
helps). We map it over relatedness r and the second task's signal scale s_b, with the
population theory on a fine grid and simulations on a coarse one. The black line is the
theory's zero-benefit contour."""),
        ("code", SCALE_CELL),
        ("code", """import numpy as np

import mtjax
from mtjax import plots

N, steps, seeds = (60, 200, 3) if SCALE == "quick" else (200, 1500, 12)
r_th = np.linspace(0.0, 1.0, 5 if SCALE == "quick" else 11).tolist()
sb_th = np.geomspace(0.1, 10.0, 4 if SCALE == "quick" else 9).tolist()
spec = {
    "seed_scope": "train",
    "teacher": {"n_features": N, "rank": 2, "n_classes": 3},
    "student": {"depth": 1, "width": 4},  # a narrow trunk: the tasks compete for it
    "train": {"protocol": "online", "n_steps": steps, "eval_every": steps // 4,
              "learning_rate": 0.05, "batch_size": 256, "n_test": 4000},
}
solver = mtjax.PopulationSolver(n_quad=512, n_quad_eval=2048) if SCALE == "quick" else mtjax.PopulationSolver()

# Task-1 benefit = loss with task 2 at weight w_b = 0 (task 1 effectively trained alone: the joint
# loss has no task-2 term) - loss with w_b = 1, per setting and seed: one compiled program covers
# both, instead of separate single-task and multitask programs.
th = mtjax.sweep(spec, {"relatedness": r_th, "s_a": [3.0], "s_b": sb_th, "w_b": [0.0, 1.0]},
                 out_dir=None, progress=False, model=mtjax.PopulationTheory(solver), save_curves=False)
theory_benefit = mtjax.multitask_benefit(th.summary, alone="w_b")"""),
        ("code", """sim = mtjax.sweep(spec, {"relatedness": [0.0, 0.5, 1.0], "s_a": [3.0], "s_b": [0.1, 10.0],
                         "w_b": [0.0, 1.0], "seed": list(range(seeds))},
                  out_dir=None, progress=False, save_curves=False)
sim_benefit = mtjax.multitask_benefit(sim.summary, alone="w_b")
sim_benefit.groupby(["relatedness", "s_b"])["benefit"].agg(["mean", "sem"])"""),
        ("code", "fig = plots.plot_benefit_heatmap(sim_benefit, theory_benefit)"),
        ("code", "fig = plots.plot_benefit_grid(sim_benefit, theory_benefit)"),
        ("md", """Heatmap cells: simulation means; black line: where the theory's benefit changes sign.
Lower panel: the same simulations (points ± s.e.) with the theory (lines) against s_b."""),
    ],
    "04_reproduce_authors_figure.ipynb": [
        ("md", """# 04 · The authors' multitask-benefit figure, from their CSV and ours

Lee & Ndirango (2019) published one row per training run (`rank-10.csv`: ntrain 100–3200,
r, s_a, s_b, 5 seeds). We draw their figure — rows: training points, columns: s_a, x: s_b,
colour: r — and overlay our rerun of the same cells with the paper preset
(`mtjax reproduce rank-10`). With `SCALE = "quick"` and no finished `mtjax reproduce` result
at hand, the overlay is a 40-epoch rerun of a few cells: a check that the pipeline runs, not a
reproduction. `docs/reproduction.md` has the real comparison."""),
        ("code", SCALE_CELL),
        ("code", """from pathlib import Path

import pandas as pd

import mtjax
from mtjax import plots

authors = mtjax.authors_table("rank-10")  # the copy shipped with mtjax (Apache-2.0), or $MTJAX_PAPER_DATA
authors_benefit = mtjax.benefit_from_runs(authors)
fig = plots.plot_benefit_grid(authors_benefit)"""),
        ("md", "Our runs, in the authors' column format: a finished `mtjax reproduce` result if there is one, else a short rerun."),
        ("code", """finished = Path("../results/reproduce") / f"rank-10-{'quick' if SCALE == 'quick' else 'full'}" / "rank-10.csv"
if finished.exists():
    ours = pd.read_csv(finished)
else:
    subset = {"main_train_pts": [200], "s_a": [10.0], "relatedness": [0.0, 1.0]} if SCALE == "quick" else None
    res = mtjax.reproduce("rank-10", SCALE, subset=subset, out_dir=None, progress=False,
                          overrides={"train": {"n_epochs": 40}} if SCALE == "quick" else None)
    ours = res.ours
print(len(ours), "runs;", list(ours.columns) == list(authors.columns), "= the authors' columns")"""),
        ("code", """ours_benefit = mtjax.benefit_from_runs(ours)
keys = ["ntrain", "s_a", "s_b", "relatedness"]
cells = ours_benefit[keys].drop_duplicates()
same_cells = authors_benefit.merge(cells, on=keys)
fig = plots.plot_benefit_grid(same_cells, ours_benefit, theory_label="mtjax")"""),
        ("md", "Cell by cell: the authors' seed mean vs ours, in nats and in units of the pooled standard error."),
        ("code", """cmp = mtjax.compare_with_authors(authors, ours, "rank-10")
cmp[["single_task", "main_train_pts", "relatedness", "s_a", "s_b", "authors_mean", "ours_mean", "diff", "z",
     "authors_benefit", "ours_benefit", "benefit_z"]].round(3)"""),
    ],
    "06_finite_data.ipynb": [
        ("md", """# 06 · Finite data: overfitting, early stopping and the multitask benefit (DMFT)

With P = αN training examples per task and noisy labels, full-batch gradient descent first
lowers the test loss and then raises it again as the network fits the label noise. The
finite-data theory (`mtjax.finite_data_theory`, a dynamical mean-field theory of the same GD,
`docs/dmft.md`) predicts those curves without training anything. Here: a shared linear trunk
of width 8, two tasks whose labels are drawn from noisy teacher logits (σ = 0.5), α ∈ {1, 4},
tasks unrelated (r = 0) or fully related (r = 1). Task 1 alone is the task-2 weight w_b = 0."""),
        ("code", SCALE_CELL),
        ("code", """import matplotlib.pyplot as plt
import pandas as pd

import mtjax
from mtjax import plots

N, steps, seeds, draws = (200, 40, 4, 1024) if SCALE == "quick" else (400, 40, 16, 4096)
R = 3
alphas = [1, 4]
ntrain = [a * (N - 2 * R) for a in alphas]  # α = P / (N − K R): the DMFT's ratio
spec = {
    "seed_scope": "train",  # teacher, test set and initial student shared; the seed draws the training sets
    "teacher": {"n_features": N, "rank": R, "n_classes": R, "scale": [3.0, 3.0], "noise": 0.5},
    "student": {"depth": 1, "width": 8, "bias_init": "zeros"},
    "train": {"protocol": "full_batch", "n_pool": [10 * max(ntrain)] * 2, "n_steps": steps, "eval_every": 1,
              "learning_rate": 0.5, "n_test": 4000},
}
grid = {"ntrain": ntrain, "relatedness": [0.0, 1.0], "w_b": [0.0, 1.0]}
sim = mtjax.sweep(spec, {**grid, "seed": list(range(seeds))}, out_dir=None, progress=False)
# Grid step Δ = lr: the theory describes the same GD.  The response kernel needs its default 256
# draws here: with 32 the α = 4 curves overfit visibly too much (as α grows the weight process is
# driven by its memory R_g more than by its noise C_g / α, so R_g's sampling error weighs more).
solver = mtjax.FiniteDataSolver(n_grid=steps, n_draws=draws)
th = mtjax.sweep(spec, grid, out_dir=None, progress=False, model=mtjax.FiniteDataTheory(solver))
assert not th.summary["diverged"].any()"""),
        ("md", """Task-1 test loss (solid: simulation mean ± s.e. over training sets; dashed: theory) and train
loss (the lower curves). Black: task 1 alone; the minimum of each test curve is the
early-stopped loss."""),
        ("code", """def for_plot(curves, n):
    c = curves[(curves["ntrain"] == n) & ~((curves["w_b"] == 0) & (curves["relatedness"] == 1))]
    return c.assign(single_task=c["w_b"] == 0)  # w_b = 0 rows are task 1 alone (drawn in black)


fig, axes = plt.subplots(1, len(ntrain), figsize=(5 * len(ntrain), 3.8), sharey=True)
for ax, a, n in zip(axes, alphas, ntrain):
    for metric in ("test_loss", "train_loss"):
        plots.plot_curves_with_theory(for_plot(sim.curves, n), for_plot(th.curves, n), by=("relatedness",),
                                      tasks=[1], metric=metric, axes=[ax])
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles[: len(handles) // 2], labels[: len(labels) // 2], fontsize=7)  # once, not per metric
    ax.set_title(f"task 1, α = {a} (P = {n})")
    ax.set_ylabel("loss (nats): test above, train below")"""),
        ("md", """Early-stopped loss of task 1 and the multitask benefit (task 1 alone − with task 2, > 0: task 2
helps), simulation mean ± s.e. vs theory. With little data (α = 1) a second task hurts, most of
all a related one (its teacher wants other logits from the same input directions, and it speeds up
the shared trunk's overfitting); with more data (α = 4) the related task helps. One theory solve is a
Monte Carlo estimate with a few per cent error at these draws (`docs/dmft.md` §6.1;
`mtjax.finite_data_replicas` averages independent solves), and N = 200 adds finite-size effects."""),
        ("code", """cols, keys = ["single_loss", "multi_loss", "benefit"], ["ntrain", "relatedness"]
table = mtjax.multitask_benefit(sim.summary, alone="w_b").groupby(keys)[cols].agg(["mean", "sem"])
theory = mtjax.multitask_benefit(th.summary, alone="w_b").set_index(keys)[cols]
table.columns = [" ".join(c) for c in table.columns]
table.join(theory.add_suffix(" theory")).round(3)"""),
        ("md", """## The paper preset against the authors' measurements

The same theory with the paper's student (two trunk layers of width 64), teacher (N = 100,
rank 10) and time map (SGD at lr 1e-3 as gradient flow) for the authors' rank-10 grid, stored by
`python benchmarks/paper_finite.py --full --draws 2048 --out docs/results/paper_finite_full.txt`
(hours of CPU; here we only read its table). Left: every multitask cell's benefit, theory vs the
authors' 5-seed mean (the band is the ±0.03-nat goal). Right: single-task early-stopped losses;
`initial` is the theory's first-layer initial condition (`docs/dmft.md` §6.3): the N = 100
student's own overlaps with the teacher (quenched) or none, as for N → ∞ (typical, a subset)."""),
        ("code", """results = "../docs/results"
full = pd.read_csv(f"{results}/paper_finite_full.csv")
typical = pd.read_csv(f"{results}/paper_finite_typical.csv")
multi = full[(full["kind"] == "multi") & full["ok_both"].eq(True)]  # converged cells (the column is empty for single-task rows)
within = (multi["theory_benefit"] - multi["ben_mean"]).abs() <= 0.03
print(f"benefits within 0.03 nats: {within.sum()} / {len(multi)} cells ({within.mean():.1%})")

fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
sc = a.scatter(multi["ben_mean"], multi["theory_benefit"], c=multi["main_train_pts"], s=8, cmap="viridis",
               norm=plt.matplotlib.colors.LogNorm())
lim = [min(multi["ben_mean"].min(), multi["theory_benefit"].min()), max(multi["ben_mean"].max(), multi["theory_benefit"].max())]
a.plot(lim, lim, "k", lw=0.8)
a.fill_between(lim, [x - 0.03 for x in lim], [x + 0.03 for x in lim], color="k", alpha=0.1, lw=0)
a.set_xlabel("authors' benefit (nats)")
a.set_ylabel("theory's benefit (nats)")
fig.colorbar(sc, ax=a, label="ntrain")
for (name, tab), ls in zip((("quenched", full), ("typical", typical)), ("-", "--")):
    single = tab[tab["kind"] == "single"]
    for i, (s_a, g) in enumerate(single.groupby("s_a")):
        g = g.sort_values("main_train_pts")
        b.plot(g["main_train_pts"], g["theory"], ls=ls, color=f"C{i}", label=f"s_a = {s_a:.3g}" if name == "quenched" else None)
        if name == "quenched":
            b.errorbar(g["main_train_pts"], g["mean"], g["se"], fmt="o", ms=3, color=f"C{i}")
b.plot([], [], "k-", label="theory, quenched")
b.plot([], [], "k--", label="theory, typical")
b.plot([], [], "ko", ms=3, label="authors")
b.set_xscale("log")
b.set_xlabel("ntrain")
b.set_ylabel("single-task early-stopped loss (nats)")
b.legend(fontsize=7, ncol=2)
fig.tight_layout()"""),
    ],
    "07_nonlinear_phase_diagram.ipynb": [
        ("md", """# 07 · Linear vs ReLU trunks: the multitask-benefit phase diagram

Same question as notebook 03 — when does training with task 2 help task 1? — for two students
that differ only in their trunk's activation: linear and ReLU. The population theory covers
both (docs/theory.md §5.2: the reduction to D + H input dimensions is exact for any activation;
a nonlinear trunk's expectations are taken over the reduced input with fresh quasi-Monte Carlo
points). Heatmaps: the theory's benefit on a fine (r, s_b) grid; circles: online simulations
of the same networks on a coarse grid, coloured on the same scale; black line: the theory's
zero-benefit contour."""),
        ("code", SCALE_CELL),
        ("code", """import numpy as np
import pandas as pd

import mtjax
from mtjax import plots

N, steps, seeds = (60, 200, 3) if SCALE == "quick" else (200, 1500, 12)
r_th = np.linspace(0.0, 1.0, 3 if SCALE == "quick" else 11).tolist()
sb_th = np.geomspace(0.1, 10.0, 3 if SCALE == "quick" else 9).tolist()
spec = {
    "seed_scope": "train",
    "teacher": {"n_features": N, "rank": 2, "n_classes": 3},
    "student": {"depth": 1, "width": 4},  # a narrow trunk: the tasks compete for it
    "train": {"protocol": "online", "n_steps": steps, "eval_every": steps // 4,
              "learning_rate": 0.05, "batch_size": 256, "n_test": 4000},
}
# A sweep traces the report times, so a nonlinear trunk's Heun steps are set here: 25 per
# interval of t = 2.5 (steps of 0.1, `PopulationSolver.dt_max`).
solver = (mtjax.PopulationSolver(n_quad=512, n_quad_eval=2048, n_substeps=25) if SCALE == "quick"
          else mtjax.PopulationSolver(n_quad=2048, n_substeps=25))
TRUNKS = ["linear", "relu"]


def with_trunk(activation):
    return {**spec, "student": {**spec["student"], "activation": activation}}"""),
        ("md", "Theory: task-1 benefit = loss with task 2 weighted 0 − loss with weight 1, on the fine grid, per trunk."),
        ("code", """theory = []
for act in TRUNKS:
    th = mtjax.sweep(with_trunk(act), {"relatedness": r_th, "s_a": [3.0], "s_b": sb_th, "w_b": [0.0, 1.0]},
                     out_dir=None, progress=False, model=mtjax.PopulationTheory(solver), save_curves=False)
    theory.append(mtjax.multitask_benefit(th.summary, alone="w_b").assign(trunk=act))
theory = pd.concat(theory, ignore_index=True)"""),
        ("code", """sims = []
for act in TRUNKS:
    sim = mtjax.sweep(with_trunk(act), {"relatedness": [0.0, 0.5, 1.0], "s_a": [3.0], "s_b": [0.1, 10.0],
                                        "w_b": [0.0, 1.0], "seed": list(range(seeds))},
                      out_dir=None, progress=False, save_curves=False)
    sims.append(mtjax.multitask_benefit(sim.summary, alone="w_b").assign(trunk=act))
sims = pd.concat(sims, ignore_index=True)
sim_mean = sims.groupby(["trunk", "relatedness", "s_b"])["benefit"].agg(["mean", "sem"]).reset_index()
sim_mean"""),
        ("code", """import matplotlib.pyplot as plt
from matplotlib.colors import TwoSlopeNorm

lim = max(theory.benefit.abs().max(), sim_mean["mean"].abs().max())
norm = TwoSlopeNorm(0.0, -lim, lim)
fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True, layout="constrained")
for ax, act in zip(axes, TRUNKS):
    tm = theory[theory.trunk == act].groupby(["s_b", "relatedness"])["benefit"].mean().unstack("relatedness")
    x, y, z = tm.columns.to_numpy(float), tm.index.to_numpy(float), tm.to_numpy()
    mesh = ax.pcolormesh(x, y, z, cmap="RdBu", norm=norm, shading="nearest")
    if np.nanmin(z) < 0 < np.nanmax(z):
        ax.contour(x, y, z, levels=[0.0], colors="k", linewidths=1.5)
    sm = sim_mean[sim_mean.trunk == act]
    ax.scatter(sm.relatedness, sm.s_b, c=sm["mean"], cmap="RdBu", norm=norm, s=160, edgecolors="k", zorder=3)
    ax.set_yscale("log")
    ax.set_title(f"{act} trunk: theory (map), simulation (circles)", fontsize=9)
    ax.set_xlabel("relatedness r")
axes[0].set_ylabel("s_b")
fig.colorbar(mesh, ax=list(axes), label="task-1 benefit (nats)")"""),
        ("md", "Theory against simulation at the simulated points (nats; `sem` = the simulations' standard error)."),
        ("code", """at = theory.merge(sim_mean, on=["trunk", "relatedness", "s_b"])
at = at.assign(theory=at.benefit, diff=at.benefit - at["mean"])[["trunk", "relatedness", "s_b", "theory", "mean", "sem", "diff"]]
print(at.round(4).to_string(index=False))
print("max |theory - simulation| per trunk:", at.groupby("trunk")["diff"].apply(lambda d: d.abs().max()).round(4).to_dict())"""),
        ("md", """What the two panels say: the ReLU trunk's map is not the linear trunk's. Where they differ,
the simulated circles follow their own trunk's theory, so the difference is the nonlinearity's
and not the theory's. `benchmarks/theory_vs_simulation.py --activation relu tanh` checks the
nonlinear theory curve by curve on a larger grid (docs/theory.md §6.1), and
`benchmarks/paper_nonlinear.py` sets both theories against the authors' ReLU runs."""),
    ],
}


def main():
    for name, cells in NOTEBOOKS.items():
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.metadata["language_info"] = {"name": "python"}
        for i, (kind, src) in enumerate(cells):
            cell = nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src)
            cell["id"] = f"c{i:02d}"  # stable ids: regenerating gives no diff
            nb.cells.append(cell)
        nbformat.write(nb, HERE / name)
        print("wrote", HERE / name)


if __name__ == "__main__":
    main()
