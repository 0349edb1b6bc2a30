"""The simulation and the theories of one grid in one figure (the tables of `mtjax.compare`)."""

from __future__ import annotations

import pandas as pd

from ._common import _plt, _fmt, _varying, _groups, _settings, _setting_colours, _hue_colours, _mean_se, _line, _log_scale, _xlabel, MODEL_STYLES, _models


def _check_comparison_table(name: str, table, columns) -> None:
    if not isinstance(table, pd.DataFrame):
        raise ValueError(f"{name} must be a pandas DataFrame (a table of mtjax.compare), got {type(table).__name__}")
    missing = [c for c in columns if c not in table]
    if missing:
        raise ValueError(f"{name} has no column(s) {missing}: pass the joined table of mtjax.compare (Comparison.{name}), "
                         f"whose `model` column names each row's model")


def _benefit_axis(benefit: pd.DataFrame) -> str:
    """The benefit panel's x axis: s_b if it varies, else the first varying column that is not
    the colour (relatedness), else s_b."""
    varying = _varying(benefit)
    for c in ("s_b", "ntrain", "ntrain_b", "sigma_b", "eps_b", "w_b", "s_a", *varying):
        if c in varying and c != "relatedness":
            return c
    return "s_b"


def plot_comparison(curves: pd.DataFrame, benefit: pd.DataFrame | None = None, *, task: int = 1, x: str = "time",
                    facet: str | None = "auto", benefit_x: str | None = None):
    """The simulation and the theories of one grid in one figure (the tables of `mtjax.compare`).

    Left: the test loss of `task` vs `x`, one colour per setting (every parameter column that
    takes more than one value, seeds excepted; task 1 alone in black). The simulation is its
    mean ± 2 standard errors over seeds/realisations (a band; a lone run: ± 2 of its test-set
    s.e.), each theory a line (solid: finite-data, dashed: population; dash-dot: any other
    model) averaged over its seeds. Diverged runs are left out.
    Right (if `benefit` is given): the multitask benefit vs s_b (log axis if s_b > 0 spans more
    than a decade), one colour per relatedness (per combination of the other varying columns):
    simulation mean ± 2 s.e. as error bars, theories as lines in the styles above.
    One legend per panel for the colours, one below the figure for the styles.

    **Arguments:**

    - `curves`: `Comparison.curves` (columns model, task, `x`, test_loss, diverged and the
      parameter columns; optionally test_loss_se).
    - `benefit`: `Comparison.benefit` (columns model, s_b, benefit and the parameter columns),
      or None for the curves alone.
    - `task`: the task (1-based) whose curves are drawn.
    - `x`: "time" (t = lr × steps) or "step".
    - `facet`: a parameter column with one curves panel per value; "auto" (default): `ntrain`
      when it takes several values (at most 4 panels), else one panel; None: one panel.
    - `benefit_x`: the benefit panel's x axis (default: s_b if it varies, else the first other
      varying column that is not relatedness).

    **Returns:** the `Figure`.

    **Raises:** `ValueError` for a table without the needed columns, a `task` not in `curves`,
    or another `x`.

    ```python
    cmp = mtjax.compare(spec, grid, out_dir=None)
    fig = plots.plot_comparison(cmp.curves, cmp.benefit)
    ```
    """
    plt = _plt()
    if x not in ("time", "step"):
        raise ValueError(f"x={x!r} is not one of ['time', 'step']")
    _check_comparison_table("curves", curves, ["model", "task", x, "test_loss"])
    tasks = sorted(int(t) for t in curves["task"].unique())
    if task not in tasks:
        raise ValueError(f"task={task!r} is not in curves, whose tasks are {tasks}: pass one of them")
    if benefit is not None:
        bx = benefit_x or _benefit_axis(benefit)
        _check_comparison_table("benefit", benefit, ["model", bx, "benefit"])
        benefit = benefit.dropna(subset=["benefit"])
    has_benefit = benefit is not None and len(benefit) > 0
    d = curves[curves["task"] == task]
    if "diverged" in d:
        d = d[~d["diverged"].astype(bool)]
    if facet == "auto":
        facet = "ntrain" if "ntrain" in d and 1 < d["ntrain"].nunique() <= 4 else None
    if facet is not None:
        _check_comparison_table("curves", curves, [facet])
    panels = [(None, d)] if facet is None else [(v, g) for v, g in d.groupby(facet, sort=True)]
    n_ax = len(panels) + has_benefit
    fig, axes = plt.subplots(1, n_ax, figsize=(4.6 * n_ax + 1.4, 4.0), squeeze=False, layout="constrained")
    axes = axes[0]
    by = _varying(d, exclude=(facet,) if facet else ())
    drawn = _comparison_curves(axes[: len(panels)], panels, by, task, x, facet)
    if has_benefit:
        drawn |= _comparison_benefit(axes[-1], benefit, bx)
    _model_legend(fig, drawn)
    return fig


def _comparison_curves(axes, panels, by, task, x, facet) -> set[str]:
    """`plot_comparison`'s learning-curve panels; returns the models drawn."""
    from matplotlib.lines import Line2D

    drawn = set()
    colours = _setting_colours(list(_settings(pd.concat([p for _, p in panels]), by)))
    for ax, (fv, part) in zip(axes, panels):
        for model in _models(part):
            for lab, g in _settings(part[part["model"] == model], by).items():
                if model == "simulation":
                    xs, mean, se = _mean_se(g, x, "test_loss")
                    ax.plot(xs, mean, color=colours[lab], lw=1.2)
                    ax.fill_between(xs, mean - 2 * se, mean + 2 * se, color=colours[lab], alpha=0.25, lw=0)
                else:
                    line = g.groupby(x)["test_loss"].mean()
                    _line(ax, line.index, line.to_numpy(), color=colours[lab], ls=MODEL_STYLES.get(model, "-."), lw=1.5)
                drawn.add(model)
        ax.set_xlabel(_xlabel(x))
        ax.set_title(f"task {task}: learning curves" + ("" if facet is None else f", {facet} = {_fmt(fv)}"), fontsize=10)
    axes[0].set_ylabel(f"task-{task} test loss (nats)")
    axes[0].legend([Line2D([], [], color=c, lw=2) for c in colours.values()], list(colours), fontsize=7, title="setting",
                   title_fontsize=7)
    return drawn


def _comparison_benefit(ax, benefit, bx) -> set[str]:
    """`plot_comparison`'s benefit panel vs `bx`; returns the models drawn."""
    from matplotlib.lines import Line2D

    drawn = set()
    hue = [c for c in _varying(benefit) if c != bx] or [c for c in ("relatedness",) if c in benefit]
    hues = _hue_colours([lab for lab, _ in _groups(benefit, hue)])
    ax.axhline(0.0, color="0.5", ls=":", lw=0.8)
    for model in _models(benefit):
        part = benefit[benefit["model"] == model]
        for lab, g in _groups(part, hue):
            if model == "simulation":
                st = g.groupby(bx)["benefit"].agg(["mean", "sem"]).reset_index()
                ax.errorbar(st[bx], st["mean"], yerr=2 * st["sem"].fillna(0.0), color=hues[lab], marker="o", ms=4,
                            ls="none", capsize=2, lw=1)
            else:
                line = g.groupby(bx)["benefit"].mean()
                _line(ax, line.index, line.to_numpy(), color=hues[lab], ls=MODEL_STYLES.get(model, "-."), lw=1.5)
            drawn.add(model)
    if _log_scale(benefit[bx]):
        ax.set_xscale("log")
    task_b = sorted(benefit["task"].unique()) if "task" in benefit else [1]
    ax.set_xlabel(bx)
    ax.set_ylabel(f"multitask benefit on task {', '.join(map(str, task_b))} (nats)")
    ax.set_title("single-task − multitask loss", fontsize=10)
    if hue:
        ax.legend([Line2D([], [], color=c, lw=2) for c in hues.values()], list(hues), fontsize=7)
    return drawn


def _model_legend(fig, drawn: set[str]) -> None:
    """One legend below the figure for the models' styles (band / error bars, line styles)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles, names = [], []
    if "simulation" in drawn:
        handles.append((Patch(color="0.5", alpha=0.25, lw=0), Line2D([], [], color="0.3", lw=1.2, marker="o", ms=4)))
        names.append("simulation: mean ± 2 s.e. (band, error bars)")
    theories = [m for m in MODEL_STYLES if m in drawn] + sorted(drawn - {"simulation", *MODEL_STYLES})
    for model in theories:
        handles.append(Line2D([], [], color="0.3", ls=MODEL_STYLES.get(model, "-."), lw=1.5))
        names.append(f"{model} theory")
    fig.legend(handles, names, loc="outside lower center", ncols=max(1, len(names)), fontsize=8, frameon=False)
