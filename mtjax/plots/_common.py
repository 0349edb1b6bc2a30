"""Helpers shared by the figures: settings, colours, means and standard errors."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .._axes import PARAM_COLUMNS, SEED_AXES, TASK2_AXES
from .._tables import varying_columns

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
    """The setting columns of `table` (`mtjax.varying_columns`)."""
    return varying_columns(table, exclude)


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


def _sim_and_theory(table: pd.DataFrame, theory: pd.DataFrame | None):
    """Split a table that may hold both sources (column `source`: "simulation", "theory",
    "theory-finite") into (simulation, theory)."""
    if theory is None and "source" in table:
        is_theory = table["source"].astype(str).str.startswith("theory")
        if is_theory.any():
            return table[~is_theory], table[is_theory]
    return table, theory


def _benefit_stats(benefit: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    d = benefit.dropna(subset=["benefit"])
    return d.groupby(keys)["benefit"].agg(["mean", "sem"]).reset_index()


# Line style of each theory model; the simulation is a band (curves) or error bars (benefit).
MODEL_STYLES = {"finite-data": "-", "population": "--"}


def _models(table: pd.DataFrame) -> list[str]:
    present = list(pd.unique(table["model"]))
    known = [m for m in ("simulation", *MODEL_STYLES) if m in present]
    return known + sorted(m for m in present if m not in known)
