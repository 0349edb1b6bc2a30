"""Write notebooks 01-04 (outputs empty) from the cell sources below.

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
th = mtjax.sweep(spec, grid, out_dir=None, progress=False, source="theory", solver=solver)
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
th = mtjax.sweep(spec, {"sigma_a": noise}, out_dir=None, progress=False, source="theory", solver=solver)"""),
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


def benefit(summary):
    # Task-1 benefit = loss with task 2 at weight w_b = 0 (task 1 effectively trained alone: the
    # joint loss has no task-2 term) - loss with w_b = 1, per setting and seed. One compiled
    # program covers both, instead of separate single-task and multitask programs.
    s = summary[summary["task"] == 1]
    keys = ["relatedness", "s_a", "s_b", "seed"]
    p = s.pivot_table(index=keys, columns="w_b", values="early_stopped_loss").reset_index()
    return p.assign(single_loss=p[0.0], multi_loss=p[1.0], benefit=p[0.0] - p[1.0])


th = mtjax.sweep(spec, {"relatedness": r_th, "s_a": [3.0], "s_b": sb_th, "w_b": [0.0, 1.0]},
                 out_dir=None, progress=False, source="theory", solver=solver, save_curves=False)
theory_benefit = benefit(th.summary)"""),
        ("code", """sim = mtjax.sweep(spec, {"relatedness": [0.0, 0.5, 1.0], "s_a": [3.0], "s_b": [0.1, 10.0],
                         "w_b": [0.0, 1.0], "seed": list(range(seeds))},
                  out_dir=None, progress=False, save_curves=False)
sim_benefit = benefit(sim.summary)
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

authors = mtjax.authors_table("rank-10")  # finds shared/paper-data or $MTJAX_PAPER_DATA
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
