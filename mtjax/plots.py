"""Matplotlib figures of sweep tables (learning curves, multitask benefit, model comparison).

Every function takes tidy tables as written by `mtjax.sweep` (or joined by `mtjax.compare`) and
returns a `Figure`; nothing here computes physics.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._sweep import PARAM_COLUMNS, SEED_AXES, TASK2_AXES

# Columns that tell settings apart: every parameter column but the seeds (averaged over).
# `single_task` is drawn apart (black), so it is not a label column either.
SETTING_COLUMNS = tuple(c for c in PARAM_COLUMNS if c not in SEED_AXES and c != "single_task")

def _plt():
    # No `matplotlib.use` here: a library must keep the user's backend (in Jupyter, switching
    # to Agg stops every later figure of the session from being shown).  Headless machines get
    # Agg from matplotlib's own fallback.
    import matplotlib.pyplot as plt

    return plt


def _fmt(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, float, np.integer, np.floating)):
        return f"{v:g}"
    return str(v)


def _label(row: dict, keys) -> str:
    return ", ".join(f"{k}={_fmt(row[k])}" for k in keys)


def _varying(table: pd.DataFrame, exclude=()) -> list[str]:
    """The setting columns of `table` that take more than one value (NaN not counted), less
    those that say nothing more: `ntrain_b` where it equals `ntrain`, and `w_b` where its only
    values are 0 (task 1 alone, drawn apart) and one weight."""
    out = [c for c in SETTING_COLUMNS if c in table and c not in exclude and table[c].nunique(dropna=True) > 1]
    if "ntrain_b" in out and "ntrain" in table:
        b = table["ntrain_b"]
        if (b.isna() | (b == table["ntrain"])).all():
            out.remove("ntrain_b")
    if "w_b" in out and table.loc[table["w_b"] != 0, "w_b"].nunique(dropna=True) <= 1:
        out.remove("w_b")
    return out


def _single(d: pd.DataFrame) -> pd.Series:
    """Runs of task 1 alone: `single_task`, or a zero task-2 weight `w_b` (one program for both)."""
    single = d["single_task"].astype(bool) if "single_task" in d else pd.Series(False, index=d.index)
    if "w_b" in d:
        single = single | (d["w_b"] == 0)
    return single


def _dedupe_alone(g: pd.DataFrame) -> pd.DataFrame:
    """Task-1-alone runs that differ only in task-2 axes (e.g. w_b = 0 at r = 0 and r = 1) are
    the same run: keep one, so that means and standard errors count it once."""
    keep = [c for c in g.columns if c not in (*TASK2_AXES, "run", "single_task") and not c.startswith("early_stopped")]
    return g.drop_duplicates(subset=keep)


def _groups(d: pd.DataFrame, keys: list[str]):
    """(label, rows) per distinct value of `keys` (sorted); no keys: one group labelled ""."""
    if not keys:
        if len(d):
            yield "", d
        return
    for key, g in d.groupby(keys, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        yield _label(dict(zip(keys, key)), keys), g


def _settings(d: pd.DataFrame, by: list[str]) -> dict[str, pd.DataFrame]:
    """Rows of `d` per setting, keyed by label: runs of task 1 alone first ("single task", split
    by the `by` columns that apply to task 1 alone), then the multitask runs per value of `by`."""
    single = _single(d)
    out = {}
    for lab, g in _groups(d[single], [b for b in by if b not in TASK2_AXES]):
        out["single task" + (f", {lab}" if lab else "")] = _dedupe_alone(g)
    for lab, g in _groups(d[~single], list(by)):
        out[lab or "multitask"] = g
    return out


def _setting_colours(labels) -> dict:
    """Black (then greys) for task 1 alone; the colour cycle (viridis beyond 10) for the rest."""
    plt = _plt()
    single = [lab for lab in labels if lab.startswith("single task")]
    multi = [lab for lab in labels if not lab.startswith("single task")]
    out = {lab: "k" if len(single) == 1 else str(0.6 * i / (len(single) - 1)) for i, lab in enumerate(single)}
    cmap = plt.get_cmap("viridis")
    for i, lab in enumerate(multi):
        out[lab] = f"C{i}" if len(multi) <= 10 else cmap(i / (len(multi) - 1))
    return out


def _hue_colours(labels) -> dict:
    cmap = _plt().get_cmap("viridis")
    return {lab: cmap(0.85 * i / max(1, len(labels) - 1)) for i, lab in enumerate(labels)}


def _mean_se(g: pd.DataFrame, x: str, metric: str):
    """Per `x`: the mean of `metric` over runs and its standard error. A lone run has no spread:
    its own test-set standard error (column ``<metric>_se``) stands in, else 0."""
    st = g.groupby(x)[metric].agg(["mean", "sem", "count"])
    se = st["sem"]
    if f"{metric}_se" in g:
        se = se.where(st["count"] > 1, g.groupby(x)[f"{metric}_se"].mean())
    return st.index.to_numpy(), st["mean"].to_numpy(), se.fillna(0.0).to_numpy()


def _line(ax, xs, ys, **kw):
    """A theory curve. A single point is drawn as a short horizontal segment in the same style
    (a line through one point is invisible)."""
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    if len(xs) == 1:
        x0 = xs[0]
        xs = np.array([x0 / 1.3, x0 * 1.3]) if x0 > 0 else x0 + np.array([-1.0, 1.0]) * 0.2 * (abs(x0) or 1.0)
        ys = np.repeat(ys, 2)
    return ax.plot(xs, ys, **kw)


def _log_scale(values) -> bool:
    """A log axis for positive values spanning more than a decade (a log axis around one value
    only crowds its tick labels)."""
    v = np.asarray(values, float)
    return bool(len(v) and (v > 0).all() and v.max() > 10 * v.min())


def _xlabel(x: str) -> str:
    return "time t = lr × steps" if x == "time" else x


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


def plot_benefit(benefit: pd.DataFrame, *, x: str = "s_b", hue="relatedness", ax=None):
    """Multitask benefit (single − multi, nats) vs `x` (log axis if positive over > 10x), one line per value
    of `hue` (a column or a list of columns); mean ± s.e. over the runs of each point.

    `benefit` is the output of `mtjax.multitask_benefit`."""
    plt = _plt()
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 4), layout="constrained")
    d = benefit.dropna(subset=["benefit"])
    hue = [hue] if isinstance(hue, str) else [h for h in hue if h in d]
    groups = list(_groups(d, hue))
    colours = _hue_colours([lab for lab, _ in groups])
    for lab, g in groups:
        st = g.groupby(x)["benefit"].agg(["mean", "sem"]).reset_index()
        ax.errorbar(st[x], st["mean"], yerr=st["sem"].fillna(0.0), color=colours[lab], marker="o", ms=3, label=lab or "multitask")
    ax.axhline(0.0, color="k", ls="--", lw=0.8)
    if _log_scale(d[x]):
        ax.set_xscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel("multitask benefit on task 1 (nats)")
    ax.legend(fontsize=7)
    return fig if fig is not None else ax.figure


def _sim_and_theory(table: pd.DataFrame, theory: pd.DataFrame | None):
    """Split a table that may hold both sources (column `source`: "simulation", "theory",
    "theory-finite") into (simulation, theory)."""
    if theory is None and "source" in table:
        is_theory = table["source"].astype(str).str.startswith("theory")
        if is_theory.any():
            return table[~is_theory], table[is_theory]
    return table, theory


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


def _benefit_stats(benefit: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    d = benefit.dropna(subset=["benefit"])
    return d.groupby(keys)["benefit"].agg(["mean", "sem"]).reset_index()


def plot_benefit_grid(
    benefit: pd.DataFrame,
    theory: pd.DataFrame | None = None,
    *,
    row: str = "ntrain",
    col: str = "s_a",
    x: str = "s_b",
    hue: str = "relatedness",
    theory_label: str = "theory",
):
    """The paper's multitask-benefit figure: rows = training points, columns = s_a, x = s_b (log
    if positive over > 10x), colour = relatedness; points = mean ± s.e. over seeds, dashed zero line, optional overlay.

    **Arguments:**

    - `benefit`: per-run benefits (`mtjax.multitask_benefit`, or `mtjax.benefit_from_runs` of a
      table in the authors' format) with columns `row`, `col`, `x`, `hue`, `benefit` (nats).
    - `theory`: a table with the same columns (e.g. `multitask_benefit` of a theory sweep), drawn
      as lines in the hue's colour (a single `x` value: a short horizontal segment there);
      averaged over any other columns.
    - `theory_label`: legend name of the overlay.

    **Returns:** the `Figure` (n_rows x n_cols axes, shared axes).
    """
    plt = _plt()
    benefit, theory = _sim_and_theory(benefit, theory)
    rows = sorted(benefit[row].dropna().unique()) if row in benefit else [None]
    cols = sorted(benefit[col].dropna().unique()) if col in benefit else [None]
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(2.2 * len(cols) + 1, 1.9 * len(rows) + 0.8), squeeze=False, sharex=True, sharey=True)
    hues = sorted(benefit[hue].dropna().unique())
    cmap = plt.get_cmap("viridis")
    color = {h: cmap(i / max(1, len(hues) - 1)) for i, h in enumerate(hues)}

    def select(d, rv, cv):
        if rv is not None:
            d = d[np.isclose(d[row].astype(float), rv)]
        if cv is not None:
            d = d[np.isclose(d[col].astype(float), cv)]
        return d

    for i, rv in enumerate(rows):
        for j, cv in enumerate(cols):
            ax = axes[i, j]
            ax.axhline(0.0, color="k", ls="--", lw=0.7)
            st = _benefit_stats(select(benefit, rv, cv), [hue, x])
            for h, g in st.groupby(hue):
                ax.errorbar(g[x], g["mean"], yerr=g["sem"].fillna(0.0), color=color.get(h, "grey"), marker="o", ms=2.5, lw=1,
                            label=f"{hue}={h:g}" if (i, j) == (0, 0) else None)
            if theory is not None:
                th = select(theory, rv, cv).dropna(subset=["benefit"])
                for k, (h, g) in enumerate(th.groupby(hue)):
                    line = g.groupby(x)["benefit"].mean()
                    _line(ax, line.index, line.to_numpy(), color=color.get(h, "grey"), lw=1.6, alpha=0.8,
                          label=theory_label if (i, j) == (0, 0) and k == 0 else None)
            if _log_scale(benefit[x]):
                ax.set_xscale("log")
            if i == 0 and cv is not None:
                ax.set_title(f"{col} = {cv:.3g}", fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{row} = {rv:g}" if rv is not None else "benefit (nats)", fontsize=8)
            if i == len(rows) - 1:
                ax.set_xlabel(x)
    fig.supylabel("multitask benefit on task 1 (nats)", fontsize=9, x=0.005)
    axes[0, 0].legend(fontsize=6)
    # Leave a margin for the shared y label so it does not overlap the per-row labels.
    fig.tight_layout(rect=(0.03, 0.0, 1.0, 1.0))
    return fig


def plot_benefit_heatmap(
    benefit: pd.DataFrame,
    theory: pd.DataFrame | None = None,
    *,
    x: str = "relatedness",
    y: str = "s_b",
    facet: str | None = None,
):
    """Mean multitask benefit over (r, s_b) as a heatmap with the theory's zero-benefit contour.

    **Arguments:**

    - `benefit`: per-run benefits with columns `x`, `y`, `benefit` (and `facet`), averaged over
      every other column; drawn as cells centred on the grid values (`y` on a log axis if > 0).
    - `theory`: a benefit table on its own (possibly finer) (`x`, `y`) grid; its benefit = 0
      level is drawn as a black contour. None: no contour.
    - `facet`: optional column (e.g. "s_a" or "ntrain"): one panel per value.

    **Returns:** the `Figure` (one axis per facet value plus a shared colour bar).
    """
    plt = _plt()
    from matplotlib.colors import TwoSlopeNorm

    benefit, theory = _sim_and_theory(benefit, theory)
    values = sorted(benefit[facet].dropna().unique()) if facet else [None]
    fig, axes = plt.subplots(1, len(values), figsize=(3.6 * len(values) + 1.0, 3.4), squeeze=False, sharey=True, layout="constrained")
    axes = axes[0]
    means = []
    for v in values:
        d = benefit if v is None else benefit[np.isclose(benefit[facet].astype(float), v)]
        means.append(d.dropna(subset=["benefit"]).groupby([y, x])["benefit"].mean().unstack(x))
    lim = max(1e-6, max(float(np.nanmax(np.abs(m.to_numpy()))) for m in means))
    norm = TwoSlopeNorm(0.0, -lim, lim)
    logy = bool((benefit[y] > 0).all())

    def edges(c, log):
        c = np.log10(c) if log else np.asarray(c, float)
        mid = (c[1:] + c[:-1]) / 2 if len(c) > 1 else np.array([])
        first = c[0] - (mid[0] - c[0] if len(mid) else 0.5)
        last = c[-1] + (c[-1] - mid[-1] if len(mid) else 0.5)
        e = np.concatenate([[first], mid, [last]])
        return 10**e if log else e

    mesh = None
    for ax, v, m in zip(axes, values, means):
        xs, ys = m.columns.to_numpy(float), m.index.to_numpy(float)
        mesh = ax.pcolormesh(edges(xs, False), edges(ys, logy), m.to_numpy(), cmap="RdBu", norm=norm, shading="flat")
        if theory is not None:
            th = theory if v is None else theory[np.isclose(theory[facet].astype(float), v)]
            tm = th.dropna(subset=["benefit"]).groupby([y, x])["benefit"].mean().unstack(x)
            z = tm.to_numpy()
            if tm.shape[0] > 1 and tm.shape[1] > 1 and np.nanmin(z) < 0 < np.nanmax(z):
                cs = ax.contour(tm.columns.to_numpy(float), tm.index.to_numpy(float), z, levels=[0.0], colors="k", linewidths=1.5)
                cs.set_label("theory: benefit = 0")
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel(x)
        if v is not None:
            ax.set_title(f"{facet} = {v:.3g}", fontsize=9)
    axes[0].set_ylabel(y)
    fig.colorbar(mesh, ax=list(axes), label="multitask benefit (nats)")
    return fig


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


# ---------------------------------------------------------------------------------------------
# Simulation vs theories (mtjax.compare)

# Line style of each theory model; the simulation is a band (curves) or error bars (benefit).
MODEL_STYLES = {"finite-data": "-", "population": "--"}


def _models(table: pd.DataFrame) -> list[str]:
    present = list(pd.unique(table["model"]))
    known = [m for m in ("simulation", *MODEL_STYLES) if m in present]
    return known + sorted(m for m in present if m not in known)


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
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

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
    drawn = set()

    # Left: learning curves, one panel per facet value -------------------------------------------
    by = _varying(d, exclude=(facet,) if facet else ())
    colours = _setting_colours(list(_settings(d, by)))
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

    # Right: multitask benefit -------------------------------------------------------------------
    if has_benefit:
        ax = axes[-1]
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

    # Line styles, once -------------------------------------------------------------------------
    handles, names = [], []
    if "simulation" in drawn:
        handles.append((Patch(color="0.5", alpha=0.25, lw=0), Line2D([], [], color="0.3", lw=1.2, marker="o", ms=4)))
        names.append("simulation: mean ± 2 s.e. (band, error bars)")
    theories = [m for m in MODEL_STYLES if m in drawn] + sorted(drawn - {"simulation", *MODEL_STYLES})
    for model in theories:
        handles.append(Line2D([], [], color="0.3", ls=MODEL_STYLES.get(model, "-."), lw=1.5))
        names.append(f"{model} theory")
    fig.legend(handles, names, loc="outside lower center", ncols=len(names), fontsize=8, frameon=False)
    return fig


# ---------------------------------------------------------------------------------------------
# Fitting (mtjax.fit): fitted vs true parameters


def plot_fit(true, fitted, stderr, *, names=None, log=None, ax=None):
    """Fitted vs true parameter values with ±1 s.e. error bars, one panel per parameter.

    **Arguments:**

    - `true`, `fitted`, `stderr`: mappings name -> (n,) arrays (n settings), or DataFrames with
      those columns (e.g. the table of `benchmarks/fit_recovery.py`).
    - `names`: parameters to draw (default: the keys of `true`).
    - `log`: names drawn on log axes (default: those starting with ``s_`` or ``sigma``).
    - `ax`: an array of axes (one per name), or None for a new figure.

    **Returns:** the `Figure`."""
    plt = _plt()
    names = list(names if names is not None else (true.columns if isinstance(true, pd.DataFrame) else true.keys()))
    log = [n for n in names if n.startswith(("s_", "sigma"))] if log is None else list(log)
    fig = None
    if ax is None:
        fig, ax = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.4), squeeze=False)
        ax = ax[0]
    for a, n in zip(np.atleast_1d(ax), names):
        t, f, s = (np.asarray(x[n], float) for x in (true, fitted, stderr))
        a.errorbar(t, f, yerr=np.where(np.isfinite(s), s, 0.0), fmt="o", ms=3, lw=0.8, capsize=2)
        lo, hi = np.nanmin(np.r_[t, f]), np.nanmax(np.r_[t, f])
        a.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        if n in log:
            a.set_xscale("log"), a.set_yscale("log")
        a.set_xlabel(f"true {n}")
        a.set_ylabel(f"fitted {n}")
    return fig if fig is not None else np.atleast_1d(ax)[0].figure
