"""The multitask benefit: vs s_b, on an (r, s_b) grid, as a heatmap with the theory's zero contour."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._common import _plt, _groups, _hue_colours, _line, _log_scale, _sim_and_theory, _benefit_stats


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
