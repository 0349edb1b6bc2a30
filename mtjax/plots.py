"""Matplotlib figures of sweep tables (learning curves, multitask benefit).

Every function takes tidy tables as written by `mtjax.sweep` and returns a `Figure`;
nothing here computes physics.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def _plt():
    # No `matplotlib.use` here: a library must keep the user's backend (in Jupyter, switching
    # to Agg stops every later figure of the session from being shown).  Headless machines get
    # Agg from matplotlib's own fallback.
    import matplotlib.pyplot as plt

    return plt


def _label(row: dict, keys) -> str:
    return ", ".join(f"{k}={row[k]:g}" if isinstance(row[k], (int, float, np.floating)) else f"{k}={row[k]}" for k in keys)


def plot_learning_curves(curves: pd.DataFrame, *, by=("relatedness", "s_b"), task: int = 1, x: str = "time", ax=None):
    """Test loss vs time of `task`: seed mean ± standard error per setting (diverged runs dropped).

    Single-task runs are drawn in black. `by`: columns that distinguish the curves."""
    plt = _plt()
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 4))
    d = curves[(curves["task"] == task) & ~curves["diverged"].astype(bool)]
    if "source" in d:
        d = d[d["source"] == "simulation"] if (d["source"] == "simulation").any() else d
    by = [b for b in by if b in d]
    single = d["single_task"].astype(bool) if "single_task" in d else pd.Series(False, index=d.index)
    groups = [("single task", d[single])] if single.any() else []
    if (~single).any():
        if by:
            for key, g in d[~single].groupby(by, dropna=False):
                key = key if isinstance(key, tuple) else (key,)
                groups.append((_label(dict(zip(by, key)), by), g))
        else:
            groups.append(("multitask", d[~single]))
    for i, (label, g) in enumerate(groups):
        stats = g.groupby(x)["test_loss"].agg(["mean", "sem", "count"]).reset_index()
        sem = stats["sem"].fillna(0.0).to_numpy()
        color = "k" if label == "single task" else f"C{i}"
        ax.plot(stats[x], stats["mean"], color=color, label=label, lw=1.5)
        ax.fill_between(stats[x], stats["mean"] - sem, stats["mean"] + sem, color=color, alpha=0.25, lw=0)
    ax.set_xlabel("time t = lr × steps" if x == "time" else x)
    ax.set_ylabel(f"task-{task} test loss (nats)")
    ax.legend(fontsize=7)
    return fig if fig is not None else ax.figure


def plot_benefit(benefit: pd.DataFrame, *, x: str = "s_b", hue: str = "relatedness", ax=None):
    """Multitask benefit (single − multi, nats) vs `x` (log axis), one line per `hue`; mean ± s.e.

    `benefit` is the output of `mtjax.multitask_benefit`."""
    plt = _plt()
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 4))
    d = benefit.dropna(subset=["benefit"])
    cmap = plt.get_cmap("viridis")
    hues = sorted(d[hue].unique())
    for i, h in enumerate(hues):
        g = d[d[hue] == h].groupby(x)["benefit"].agg(["mean", "sem"]).reset_index()
        c = cmap(i / max(1, len(hues) - 1))
        ax.errorbar(g[x], g["mean"], yerr=g["sem"].fillna(0.0), color=c, marker="o", ms=3, label=f"{hue}={h:g}")
    ax.axhline(0.0, color="k", ls="--", lw=0.8)
    if (d[x] > 0).all():
        ax.set_xscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel("multitask benefit on task 1 (nats)")
    ax.legend(fontsize=7)
    return fig if fig is not None else ax.figure


def _sim_and_theory(table: pd.DataFrame, theory: pd.DataFrame | None):
    """Split a table that may hold both sources (column `source`) into (simulation, theory)."""
    if theory is None and "source" in table and (table["source"] == "theory").any():
        return table[table["source"] != "theory"], table[table["source"] == "theory"]
    return table, theory


def plot_curves_with_theory(
    sim_curves: pd.DataFrame,
    theory_curves: pd.DataFrame | None = None,
    *,
    by=("relatedness", "s_b"),
    tasks=None,
    x: str = "time",
    metric: str = "test_loss",
    axes=None,
):
    """Learning curves per task: simulation mean ± s.e. over seeds (band) and theory (dashed line).

    **Arguments:**

    - `sim_curves`: `SweepResult.curves` of a simulation sweep (columns task, `x`, `metric`,
      `by`..., optionally single_task, diverged); may also hold theory rows (`source == "theory"`).
    - `theory_curves`: the same table from `sweep(..., source="theory")` (one row per point and
      time; seeds/realisations averaged), or None.
    - `by`: columns that distinguish the settings (one colour each); single-task runs are black.
    - `tasks`: task numbers (1-based) to draw, one panel each (default: all in the table).
    - `x`: "time" (t = lr × steps) or "step"; `metric`: "test_loss", "train_loss" or "test_acc".

    **Returns:** the `Figure` (one axis per task, shared y).
    """
    plt = _plt()
    sim, theory = _sim_and_theory(sim_curves, theory_curves)
    tasks = sorted(sim["task"].unique()) if tasks is None else list(tasks)
    fig = None
    if axes is None:
        fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.6), squeeze=False, sharey=True)
        axes = axes[0]
    by = [b for b in by if b in sim]

    def settings(d):
        single = d["single_task"].astype(bool) if "single_task" in d else pd.Series(False, index=d.index)
        out = {"single task": d[single]} if single.any() else {}
        rest = d[~single]
        if len(rest):
            if by:
                for key, g in rest.groupby(by, dropna=False):
                    key = key if isinstance(key, tuple) else (key,)
                    out[_label(dict(zip(by, key)), by)] = g
            else:
                out["multitask"] = rest
        return out

    for ax, task in zip(axes, tasks):
        d = sim[sim["task"] == task]
        if "diverged" in d:
            d = d[~d["diverged"].astype(bool)]
        sets = settings(d)
        colors = {lab: ("k" if lab == "single task" else f"C{i}") for i, lab in enumerate(sets)}
        for lab, g in sets.items():
            st = g.groupby(x)[metric].agg(["mean", "sem"]).reset_index()
            sem = st["sem"].fillna(0.0).to_numpy()
            ax.plot(st[x], st["mean"], color=colors[lab], lw=1.3, label=lab)
            ax.fill_between(st[x], st["mean"] - sem, st["mean"] + sem, color=colors[lab], alpha=0.25, lw=0)
        if theory is not None:
            th = theory[theory["task"] == task]
            for i, (lab, g) in enumerate(settings(th).items()):
                line = g.groupby(x)[metric].mean()
                ax.plot(line.index, line.to_numpy(), color=colors.get(lab, f"C{len(colors) + i}"), ls="--", lw=1.3,
                        label="theory" if i == 0 else None)
        ax.set_title(f"task {task}")
        ax.set_xlabel("time t = lr × steps" if x == "time" else x)
    axes[0].set_ylabel({"test_loss": "test loss (nats)", "train_loss": "train loss (nats)", "test_acc": "test accuracy"}.get(metric, metric))
    axes[0].legend(fontsize=7)
    return fig if fig is not None else axes[0].figure


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
    """The paper's multitask-benefit figure: rows = training points, columns = s_a, x = s_b (log),
    colour = relatedness; points = mean ± s.e. over seeds, dashed zero line, optional overlay.

    **Arguments:**

    - `benefit`: per-run benefits (`mtjax.multitask_benefit`, or `mtjax.benefit_from_runs` of a
      table in the authors' format) with columns `row`, `col`, `x`, `hue`, `benefit` (nats).
    - `theory`: a table with the same columns (e.g. `multitask_benefit` of a theory sweep), drawn
      as lines in the hue's colour; averaged over any other columns.
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
                    ax.plot(line.index, line.to_numpy(), color=color.get(h, "grey"), lw=1.6, alpha=0.8,
                            label=theory_label if (i, j) == (0, 0) and k == 0 else None)
            if (benefit[x] > 0).all():
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
    """Two-panel overview used by `mtjax demo` and `mtjax plot`: learning curves and benefit."""
    plt = _plt()
    n = int(curves is not None) + int(benefit is not None and len(benefit.dropna(subset=["benefit"])) > 0)
    fig, axes = plt.subplots(1, max(n, 1), figsize=(5.5 * max(n, 1), 4), squeeze=False)
    i = 0
    if curves is not None:
        plot_learning_curves(curves, ax=axes[0, i])
        i += 1
    if benefit is not None and i < axes.shape[1]:
        plot_benefit(benefit, ax=axes[0, i])
    fig.tight_layout()
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
