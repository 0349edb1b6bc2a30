"""Every plot function renders a figure from a tiny hand-made table (no simulation)."""

import itertools
import json
import subprocess
import sys

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mtjax import plots  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def tiny_curves(source="simulation", seeds=(0, 1, 2)):
    rows = []
    for r, single, seed, task, t in itertools.product([0.0, 1.0], [False, True], seeds, [1, 2], np.linspace(0, 2, 5)):
        if single and (task == 2 or r == 1.0):
            continue
        loss = 2.3 * np.exp(-t * (1 + r)) + 0.5 + 0.01 * seed
        rows.append(dict(relatedness=np.nan if single else r, s_b=np.nan if single else 1.0, single_task=single, seed=seed,
                         task=task, time=t, step=int(t * 1000), test_loss=loss, test_acc=0.5, diverged=False, source=source))
    return pd.DataFrame(rows)


def tiny_benefit(sign=1.0, seeds=(0, 1)):
    rows = []
    for n, sa, sb, r, seed in itertools.product([100, 200], [0.1, 10.0], [0.01, 1.0, 10.0], [0.0, 0.5, 1.0], seeds):
        rows.append(dict(ntrain=n, s_a=sa, s_b=sb, relatedness=r, seed=seed, benefit=sign * (r - 0.4) * np.log10(sb * 100) / 20 + 0.001 * seed))
    return pd.DataFrame(rows)


def test_curves_with_theory_bands_and_lines():
    sim = tiny_curves()
    th = tiny_curves("theory", seeds=(0,))
    fig = plots.plot_curves_with_theory(sim, th)
    axes = fig.get_axes()
    assert len(axes) == 2 and [a.get_title() for a in axes] == ["task 1", "task 2"]
    ax1 = axes[0]
    # task 1: single task + 2 multitask settings, each a simulation line and a dashed theory line
    solid = [ln for ln in ax1.get_lines() if ln.get_linestyle() == "-"]
    dashed = [ln for ln in ax1.get_lines() if ln.get_linestyle() == "--"]
    assert len(solid) == 3 and len(dashed) == 3
    assert len(ax1.collections) == 3  # s.e. bands
    assert "theory" in [t.get_text() for t in fig.legends[0].get_texts()]
    assert ax1.get_xlabel().startswith("time") and "loss" in ax1.get_ylabel()
    # the same table with the theory rows inside it gives the same picture
    fig2 = plots.plot_curves_with_theory(pd.concat([sim, th]))
    assert len(fig2.get_axes()[0].get_lines()) == 6


def test_benefit_grid_paper_layout():
    b = tiny_benefit()
    fig = plots.plot_benefit_grid(b, theory=tiny_benefit(0.8, seeds=(0,)))
    axes = np.array(fig.get_axes()).reshape(2, 2)
    assert axes[0, 0].get_title() == "s_a = 0.1" and axes[0, 1].get_title() == "s_a = 10"
    assert axes[0, 0].get_ylabel() == "ntrain = 100" and axes[1, 0].get_ylabel() == "ntrain = 200"
    ax = axes[1, 1]
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "s_b"
    zero = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert len(zero) == 1 and np.allclose(zero[0].get_ydata(), 0.0)
    # 3 relatedness values: 3 error-bar series and 3 theory lines per panel
    assert len(ax.containers) == 3
    theory_lines = [ln for ln in ax.get_lines() if ln.get_linestyle() == "-" and len(ln.get_xdata()) == 3]
    assert len(theory_lines) >= 3
    labels = [t.get_text() for t in axes[0, 0].get_legend().get_texts()]
    assert "relatedness=0" in labels and "theory" in labels


def test_benefit_heatmap_with_theory_zero_contour():
    b = tiny_benefit()
    th = tiny_benefit(1.0, seeds=(0,))
    fig = plots.plot_benefit_heatmap(b, th, facet="s_a")
    axes = fig.get_axes()
    assert len(axes) == 3  # two panels + colour bar
    ax = axes[0]
    assert ax.get_xlabel() == "relatedness" and ax.get_ylabel() == "s_b" and ax.get_yscale() == "log"
    from matplotlib.collections import QuadMesh

    mesh = [c for c in ax.collections if isinstance(c, QuadMesh)]
    assert len(mesh) == 1 and mesh[0].get_array().size == 9
    # the theory changes sign at r = 0.4: a zero contour exists
    contours = [c for c in ax.collections if not isinstance(c, QuadMesh)]
    assert len(contours) >= 1
    assert "benefit" in axes[-1].get_ylabel()


def test_plot_cli_writes_figures(tmp_path):
    from mtjax.cli import main

    d = tmp_path / "sweep"
    d.mkdir()
    curves = tiny_curves()
    curves["run"] = 0
    b = tiny_benefit()
    # a summary with single and multitask rows of task 1 whose benefits are `b`
    rows = []
    for i, r in b.iterrows():
        base = dict(ntrain=r.ntrain, s_a=r.s_a, seed=r.seed, task=1, diverged=False)
        rows.append(dict(base, run=2 * i, s_b=r.s_b, relatedness=r.relatedness, single_task=False, early_stopped_loss=1.0 - r.benefit))
    summ = pd.DataFrame(rows)
    single = summ.drop_duplicates(["ntrain", "s_a", "seed"]).assign(single_task=True, s_b=np.nan, relatedness=np.nan, early_stopped_loss=1.0)
    single["run"] = single["run"] + 1
    pd.concat([summ, single]).to_csv(d / "summary.csv", index=False)
    curves.to_csv(d / "curves.csv", index=False)
    main(["plot", str(d), "--format", "pdf"])
    for f in ("overview.pdf", "curves.pdf", "benefit_grid.pdf", "benefit_heatmap.pdf"):
        assert (d / f).stat().st_size > 1000, f


def test_plotting_keeps_the_users_backend():
    # Jupyter's inline backend must survive a call (a switch to Agg hid every later figure).
    plt.switch_backend("svg")
    try:
        plots.plot_learning_curves(tiny_curves())
        assert matplotlib.get_backend() == "svg"
    finally:
        plt.switch_backend("Agg")


def test_plots_is_an_attribute_of_mtjax_without_importing_matplotlib():
    code = ("import sys, mtjax; assert 'matplotlib' not in sys.modules, 'import mtjax loaded matplotlib'; "
            "assert mtjax.plots.plot_sweep is not None")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_curves_colours_are_per_setting_across_panels_with_one_legend(tmp_path):
    sim = tiny_curves()
    # task 1 has a single-task setting that task 2 lacks: colours must not shift between panels
    fig = plots.plot_curves_with_theory(sim, tiny_curves("theory", seeds=(0,)))
    ax1, ax2 = fig.get_axes()
    colour = [{ln.get_label(): ln.get_color() for ln in ax.get_lines() if ln.get_linestyle() == "-"} for ax in (ax1, ax2)]
    assert set(colour[1]) == {"relatedness=0", "relatedness=1"} and set(colour[0]) == set(colour[1]) | {"single task"}
    for lab in colour[1]:
        assert colour[0][lab] == colour[1][lab], lab
    theory_colour = {ln.get_color() for ln in ax2.get_lines() if ln.get_linestyle() == "--"}
    assert theory_colour == set(colour[1].values())
    # one legend for the figure, listing every setting once
    assert len(fig.legends) == 1 and ax1.get_legend() is None and ax2.get_legend() is None
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert texts.count("relatedness=0") == 1 and "single task" in texts
    # nothing is cut off: the x labels and the legend lie inside the figure
    path = tmp_path / "curves.png"
    fig.savefig(path, dpi=100)
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    for artist in (ax1.xaxis.label, ax2.xaxis.label, fig.legends[0]):
        b = artist.get_window_extent(renderer)
        assert b.x0 >= box.x0 - 1 and b.y0 >= box.y0 - 1 and b.x1 <= box.x1 + 1 and b.y1 <= box.y1 + 1, artist


def test_benefit_grid_draws_the_theory_at_a_single_s_b():
    b = tiny_benefit()
    b = b[b["s_b"] == 1.0]
    th = tiny_benefit(0.8, seeds=(0,))
    fig = plots.plot_benefit_grid(b, th[th["s_b"] == 1.0])
    for ax in fig.get_axes():
        theory = [ln for ln in ax.get_lines() if ln.get_linestyle() == "-" and len(ln.get_xdata()) >= 2
                  and not np.allclose(ln.get_ydata(), 0.0)]
        assert len(theory) == 3  # one per relatedness, a visible segment at s_b = 1
        for ln in theory:
            x = np.asarray(ln.get_xdata(), float)
            assert x.min() < 1.0 < x.max() and np.ptp(ln.get_ydata()) == 0


def test_overview_groups_by_every_varying_column():
    # two learning rates: the overview must not average them together
    sim = pd.concat([tiny_curves().assign(lr=0.01), tiny_curves().assign(lr=0.1, test_loss=lambda d: d["test_loss"] + 1)])
    b = pd.concat([tiny_benefit().assign(lr=0.01), tiny_benefit().assign(lr=0.1)])
    b = b[(b["ntrain"] == 100) & (b["s_a"] == 0.1)]
    fig = plots.plot_sweep(sim, b)
    ax_c, ax_b = fig.get_axes()
    labels = [ln.get_label() for ln in ax_c.get_lines()]
    assert sorted(labels) == sorted(["single task, lr=0.01", "single task, lr=0.1", "relatedness=0, lr=0.01",
                                     "relatedness=0, lr=0.1", "relatedness=1, lr=0.01", "relatedness=1, lr=0.1"])
    # labels name only the varying columns
    assert not any("s_b" in lab for lab in labels)
    bl = [t.get_text() for t in ax_b.get_legend().get_texts()]
    assert len(bl) == 6 and "relatedness=0.5, lr=0.1" in bl and ax_b.get_xlabel() == "s_b"


# --------------------------------------------------------------------------------------------
# mtjax plot --theory: the manifests must describe the same experiment

SPEC = {"teacher": {"n_features": 20, "rank": 2, "n_classes": 2, "scale": [1.0, 1.0]},
        "student": {"depth": 1, "width": 8}, "train": {"protocol": "online", "n_steps": 100, "eval_every": 10}}
GRID = {"relatedness": [0.0, 1.0], "s_a": [1.0], "s_b": [1.0], "single_task": [True, False], "seed": [0, 1]}


def write_sweep(d, spec, grid, source, theory=False):
    d.mkdir(parents=True)
    (d / "manifest.json").write_text(json.dumps({"name": d.name, "spec": spec, "grid": grid, "source": source}))
    curves = tiny_curves(source, seeds=(0,) if theory else (0, 1, 2))
    curves["run"] = 0
    curves.to_csv(d / "curves.csv", index=False)
    summ = curves[curves["time"] == curves["time"].max()].assign(early_stopped_loss=lambda x: x["test_loss"])
    summ.to_csv(d / "summary.csv", index=False)


def _with(spec, sec, **kw):
    return {**spec, sec: {**spec[sec], **kw}}


@pytest.mark.parametrize(
    "spec, grid, source, needle",
    [
        (_with(SPEC, "teacher", rank=3), GRID, "theory", "teacher.rank"),
        (_with(SPEC, "train", learning_rate=0.5), GRID, "theory-finite", "train.learning_rate"),
        (SPEC, {**GRID, "s_a": [10.0]}, "theory", "grid axis s_a"),
        (SPEC, {**GRID, "lr": [0.1]}, "theory", "grid axis lr"),
        (SPEC, GRID, "simulation", "source"),
    ],
)
def test_plot_cli_refuses_a_theory_of_another_experiment(tmp_path, spec, grid, source, needle):
    from mtjax.cli import main

    write_sweep(tmp_path / "sim", SPEC, GRID, "simulation")
    write_sweep(tmp_path / "th", spec, grid, source, theory=True)
    with pytest.raises(SystemExit) as e:
        main(["plot", str(tmp_path / "sim"), "--theory", str(tmp_path / "th")])
    msg = str(e.value)
    assert needle in msg and "\n" not in msg and "mtjax theory" in msg
    assert not (tmp_path / "sim" / "curves.png").exists()


def test_plot_cli_overlays_a_theory_of_the_same_experiment(tmp_path):
    from mtjax.cli import main

    write_sweep(tmp_path / "sim", SPEC, GRID, "simulation")
    # evaluation-only keys, defaults given explicitly (batch_size, init) and seed axes may differ
    th_spec = _with(_with(SPEC, "train", eval_every=1, n_test=100, batch_size=128), "student", init="orthogonal")
    write_sweep(tmp_path / "th", th_spec, {k: v for k, v in GRID.items() if k != "seed"}, "theory", theory=True)
    main(["plot", str(tmp_path / "sim"), "--theory", str(tmp_path / "th")])
    assert (tmp_path / "sim" / "curves.png").stat().st_size > 1000


# --------------------------------------------------------------------------------------------
# plot_comparison: the joined tables of mtjax.compare


def comparison_tables(models=("simulation", "finite-data", "population"), relatedness=(0.0, 1.0), s_b=(0.1, 1.0, 10.0),
                      theory_tasks=(1, 2)):
    curves, benefit = [], []
    for model in models:
        seeds = (0, 1, 2) if model == "simulation" else (0,)
        bias = {"simulation": 0.0, "finite-data": 0.01, "population": -0.05}[model]
        tasks = (1, 2) if model == "simulation" else theory_tasks
        for r, sb, seed, task, t in itertools.product(relatedness, s_b, seeds, tasks, np.linspace(0, 4, 9)):
            noise = 0.02 * (seed - 1) if model == "simulation" else 0.0
            loss = 1.0 * np.exp(-t * (1 + r * sb / 10)) + 0.4 + bias + noise
            curves.append(dict(model=model, run=0, task=task, step=int(t * 100), time=t, train_loss=loss - 0.1, test_loss=loss,
                               test_loss_se=0.01, test_acc=0.6, diverged=False, relatedness=r, s_a=1.0, s_b=sb,
                               single_task=False, seed=seed, realisation=0))
            if task == 1 and t == 0:
                ben = (r - 0.4) * np.log10(sb * 10) / 10 + bias + noise
                benefit.append(dict(model=model, task=1, relatedness=r, s_a=1.0, s_b=sb, single_task=False, seed=seed,
                                    realisation=0, single_loss=1.0, multi_loss=1.0 - ben, benefit=ben))
        for seed, task, t in itertools.product(seeds, (1,), np.linspace(0, 4, 9)):
            loss = 1.0 * np.exp(-t) + 0.45 + bias + (0.02 * (seed - 1) if model == "simulation" else 0.0)
            curves.append(dict(model=model, run=1, task=task, step=int(t * 100), time=t, train_loss=loss - 0.1, test_loss=loss,
                               test_loss_se=0.01, test_acc=0.6, diverged=False, relatedness=np.nan, s_a=1.0, s_b=np.nan,
                               single_task=True, seed=seed, realisation=0))
    curves = pd.DataFrame(curves)
    # a diverged simulation run, far off the scale: it must be left out
    bad = curves[(curves["model"] == "simulation") & (curves["seed"] == 0)].assign(seed=9, diverged=True, test_loss=50.0)
    return pd.concat([curves, bad], ignore_index=True), pd.DataFrame(benefit)


def test_plot_comparison_figure(tmp_path):
    curves, benefit = comparison_tables()
    fig = plots.plot_comparison(curves, benefit)
    fig.savefig(tmp_path / "comparison.png", dpi=100)
    ax_c, ax_b = fig.get_axes()
    # left: 1 single-task + 6 multitask settings; a band each, one line per model each
    assert len(ax_c.collections) == 7
    styles = [ln.get_linestyle() for ln in ax_c.get_lines()]
    assert styles.count("--") == 7 and styles.count("-") == 14  # population; simulation means + finite-data
    assert max(np.max(ln.get_ydata()) for ln in ax_c.get_lines()) < 2.0  # diverged run left out
    colours = {ln.get_color() for ln in ax_c.get_lines()}
    assert len(colours) == 7
    # right: simulation error bars (± 2 s.e.) and two theory lines per relatedness, same colour
    assert len(ax_b.containers) == 2 and ax_b.get_xscale() == "log"
    for container in ax_b.containers:
        c = container.lines[0].get_color()
        lines = [ln for ln in ax_b.get_lines() if ln.get_color() == c and ln.get_linestyle() in ("-", "--")]
        assert sorted(ln.get_linestyle() for ln in lines) == ["-", "--"]
    sim = benefit[(benefit["model"] == "simulation") & (benefit["relatedness"] == 0.0) & (benefit["s_b"] == 1.0)]["benefit"]
    seg = ax_b.containers[0].lines[2][0].get_segments()[1]
    assert np.isclose(seg[1, 1] - seg[0, 1], 4 * sim.sem())
    # legends: setting colours (left), relatedness colours (right), line styles once (figure)
    assert "relatedness=0, s_b=0.1" in [t.get_text() for t in ax_c.get_legend().get_texts()]
    assert [t.get_text() for t in ax_b.get_legend().get_texts()] == ["relatedness=0", "relatedness=1"]
    styles = [t.get_text() for t in fig.legends[0].get_texts()]
    assert styles == ["simulation: mean ± 2 s.e. (band, error bars)", "finite-data theory", "population theory"]


@pytest.mark.parametrize(
    "kind",
    ["one-theory", "no-benefit", "one-setting", "theory-without-task-2"],
)
def test_plot_comparison_is_robust(tmp_path, kind):
    if kind == "one-theory":
        curves, benefit = comparison_tables(models=("simulation", "population"))
    elif kind == "one-setting":
        curves, benefit = comparison_tables(relatedness=(0.5,), s_b=(1.0,))
        curves = curves[~curves["single_task"]]
    else:
        curves, benefit = comparison_tables(theory_tasks=(1,))
    fig = plots.plot_comparison(curves, None if kind == "no-benefit" else benefit, task=2 if kind == "theory-without-task-2" else 1)
    fig.savefig(tmp_path / f"{kind}.png", dpi=80)
    axes = fig.get_axes()
    assert len(axes) == (1 if kind == "no-benefit" else 2)
    styles = [t.get_text() for t in fig.legends[0].get_texts()]
    if kind == "one-theory":
        assert styles == ["simulation: mean ± 2 s.e. (band, error bars)", "population theory"]
    if kind == "one-setting":
        assert len(axes[0].collections) == 1 and len(axes[0].get_lines()) == 3
        # a single s_b: each theory is a short segment around it, the x axis stays linear
        seg = [ln for ln in axes[1].get_lines() if ln.get_linestyle() == "--"]
        assert len(seg) == 1 and np.ptp(seg[0].get_xdata()) > 0 and axes[1].get_xscale() == "linear"
    if kind == "theory-without-task-2":
        # task 2: only the simulation has curves; both theories still appear in the benefit panel
        assert {ln.get_linestyle() for ln in axes[0].get_lines()} == {"-"} and len(axes[0].collections) == 6
        assert len(styles) == 3


def test_plot_comparison_rejects_bad_input():
    curves, benefit = comparison_tables()
    with pytest.raises(ValueError, match=r"task=3 is not in curves, whose tasks are \[1, 2\]"):
        plots.plot_comparison(curves, task=3)
    with pytest.raises(ValueError, match="x='epoch' is not one of"):
        plots.plot_comparison(curves, x="epoch")
    with pytest.raises(ValueError, match=r"curves has no column\(s\) \['model'\]"):
        plots.plot_comparison(curves.drop(columns="model"))
