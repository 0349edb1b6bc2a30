"""Matplotlib figures of sweep tables (learning curves, multitask benefit).

Every function takes tidy tables as written by `mtjax.sweep` and returns a `Figure`;
nothing here computes physics.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
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
