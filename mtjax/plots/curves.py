"""Learning curves of a sweep (simulation and theory) and the sweep overview."""

from __future__ import annotations

import pandas as pd

from ._common import _plt, _varying, _settings, _setting_colours, _mean_se, _line, _xlabel, _sim_and_theory, SETTING_COLUMNS
from .benefit import plot_benefit


def plot_learning_curves(curves: pd.DataFrame, *, by=None, task: int = 1, x: str = "time", ax=None):
    """Test loss vs time of `task`: seed mean ± standard error per setting (diverged runs dropped).

    `by`: columns that distinguish the curves (default: every parameter column that takes more
    than one value, seeds excepted). Runs of task 1 alone are drawn in black."""
    plt = _plt()
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    d = curves[(curves["task"] == task) & ~curves["diverged"].astype(bool)]
    if "source" in d:
        d = d[d["source"] == "simulation"] if (d["source"] == "simulation").any() else d
    by = _varying(d) if by is None else [b for b in by if b in d]
    sets = _settings(d, by)
    colours = _setting_colours(list(sets))
    for lab, g in sets.items():
        xs, mean, se = _mean_se(g, x, "test_loss")
        ax.plot(xs, mean, color=colours[lab], label=lab, lw=1.5)
        ax.fill_between(xs, mean - se, mean + se, color=colours[lab], alpha=0.25, lw=0)
    ax.set_xlabel(_xlabel(x))
    ax.set_ylabel(f"task-{task} test loss (nats)")
    ax.legend(fontsize=7)
    return fig if fig is not None else ax.figure


def plot_curves_with_theory(
    sim_curves: pd.DataFrame,
    theory_curves: pd.DataFrame | None = None,
    *,
    by=None,
    tasks=None,
    x: str = "time",
    metric: str = "test_loss",
    axes=None,
):
    """Learning curves per task: simulation mean ± s.e. over seeds (band) and theory (dashed line).

    **Arguments:**

    - `sim_curves`: `SweepResult.curves` of a simulation sweep (columns task, `x`, `metric`,
      `by`..., optionally single_task, diverged); may also hold theory rows (`source` "theory"
      or "theory-finite").
    - `theory_curves`: the same table from `sweep(..., model=mtjax.PopulationTheory())` (one row per point and
      time; seeds/realisations averaged), or None.
    - `by`: columns that distinguish the settings (default: every parameter column of
      `sim_curves` that takes more than one value, seeds excepted). Each setting has one colour
      in every panel; runs of task 1 alone are black.
    - `tasks`: task numbers (1-based) to draw, one panel each (default: all in the table).
    - `x`: "time" (t = lr × steps) or "step"; `metric`: "test_loss", "train_loss" or "test_acc".
    - `axes`: axes to draw into (one per task), or None for a new figure.

    **Returns:** the `Figure` (one axis per task, shared y). One legend: on the right of a new
    figure, in `axes[0]` otherwise.
    """
    plt = _plt()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    sim, theory = _sim_and_theory(sim_curves, theory_curves)
    tasks = sorted(sim["task"].unique()) if tasks is None else list(tasks)
    own = axes is None
    if own:
        fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks) + 1.8, 3.6), squeeze=False, sharey=True,
                                 layout="constrained")
        axes = axes[0]
    if "diverged" in sim:
        sim = sim[~sim["diverged"].astype(bool)]
    by = _varying(sim) if by is None else [b for b in by if b in sim]
    # One colour per setting for the whole figure: the settings of every task and both sources.
    labels = list(_settings(sim, by))
    if theory is not None:
        labels += [lab for lab in _settings(theory, [b for b in by if b in theory]) if lab not in labels]
    singles = [lab for lab in labels if lab.startswith("single task")]
    labels = singles + [lab for lab in labels if lab not in singles]
    colours = _setting_colours(labels)
    drew_theory = False
    for ax, task in zip(axes, tasks):
        for lab, g in _settings(sim[sim["task"] == task], by).items():
            xs, mean, se = _mean_se(g, x, metric)
            ax.plot(xs, mean, color=colours[lab], lw=1.3, label=lab)
            ax.fill_between(xs, mean - se, mean + se, color=colours[lab], alpha=0.25, lw=0)
        if theory is not None:
            th = theory[theory["task"] == task]
            for i, (lab, g) in enumerate(_settings(th, [b for b in by if b in th]).items()):
                line = g.groupby(x)[metric].mean()
                _line(ax, line.index, line.to_numpy(), color=colours[lab], ls="--", lw=1.3, label="theory" if i == 0 else None)
                drew_theory = True
        ax.set_title(f"task {task}")
        ax.set_xlabel(_xlabel(x))
    axes[0].set_ylabel({"test_loss": "test loss (nats)", "train_loss": "train loss (nats)", "test_acc": "test accuracy"}.get(metric, metric))
    handles = [Line2D([], [], color=colours[lab], lw=2, label=lab) for lab in labels]
    handles.append((Patch(color="0.5", alpha=0.25, lw=0), Line2D([], [], color="0.4", lw=1.3)))
    names = labels + ["simulation (mean ± s.e.)"]
    if drew_theory:
        handles.append(Line2D([], [], color="0.4", ls="--", lw=1.3))
        names.append("theory")
    if own:
        fig.legend(handles, names, loc="outside right upper", fontsize=7)
        return fig
    axes[0].legend(handles, names, fontsize=7)
    return axes[0].figure


def plot_sweep(curves: pd.DataFrame | None, benefit: pd.DataFrame | None):
    """Two-panel overview used by `mtjax demo` and `mtjax plot`: learning curves and benefit.

    Runs are grouped by every parameter column that takes more than one value (seeds
    excepted), so runs of different settings are never averaged together; the labels name those
    columns. The benefit is drawn against s_b (or the first varying column if s_b is fixed)."""
    plt = _plt()
    has_benefit = benefit is not None and benefit["benefit"].notna().any()
    n = max(1, int(curves is not None) + int(has_benefit))
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 4), squeeze=False, layout="constrained")
    i = 0
    if curves is not None:
        plot_learning_curves(curves, ax=axes[0, i])
        i += 1
    if has_benefit:
        varying = _varying(benefit.dropna(subset=["benefit"]))
        candidates = varying or [c for c in SETTING_COLUMNS if c in benefit]
        x = "s_b" if "s_b" in benefit and ("s_b" in varying or not varying) else candidates[0]
        plot_benefit(benefit, x=x, hue=[c for c in varying if c != x], ax=axes[0, i])
    return fig
