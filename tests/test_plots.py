"""Every plot function renders a figure from a tiny hand-made table (no simulation)."""

import itertools

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
    assert "theory" in [t.get_text() for t in ax1.get_legend().get_texts()]
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
