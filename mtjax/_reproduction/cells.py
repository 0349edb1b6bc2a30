"""Which of the authors' cells a reproduction runs, and the sweep grid and spec that run them."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .._spec import paper_spec
from .data import LOSS, MULTI_CELL, QUICK_AXES, QUICK_SIZES, SCALES, SINGLE_CELL, _check_experiment, _normalise


def _near(values: pd.Series, wanted: list[float]) -> pd.Series:
    v = values.to_numpy(float)
    return pd.Series(np.any(np.isclose(v[:, None], np.asarray(wanted, float)[None, :], rtol=1e-3), axis=1), index=values.index)


def select_cells(authors: pd.DataFrame, experiment: str, scale: str, subset: dict[str, list] | None = None) -> pd.DataFrame:
    """The authors' rows of the `scale` subset (normalised columns, see module docstring),
    further restricted to `subset` = {column: values} (e.g. {"main_train_pts": [100]})."""
    if scale not in SCALES:
        raise ValueError(f"scale={scale!r} is not one of {list(SCALES)}")
    d = _normalise(authors, _check_experiment(experiment))
    axes: dict[str, list] = {}
    if scale == "quick":
        axes.update(QUICK_SIZES[experiment])
        axes.update(QUICK_AXES)
    for col, vals in (subset or {}).items():
        if col not in d:
            raise ValueError(f"subset column {col!r} is not one of {sorted(set(d.columns) - {'id', LOSS})}")
        axes[col] = list(vals) if col not in axes else [v for v in vals if np.isclose(axes[col], v, rtol=1e-3).any()]
    keep = pd.Series(True, index=d.index)
    single = d["single_task"]
    for col, vals in axes.items():
        ok = _near(d[col], vals) if col in ("relatedness", "s_a", "s_b") else d[col].isin(vals)
        if col in ("relatedness", "s_b", "aux_train_pts"):
            # Single-task rows carry r, s_b, aux size only as labels: filter them where the file
            # repeats them over the grid (rank-10), not where they are a constant (deep-nonlinear).
            ok = ok | (single & (d.loc[single, col].nunique() <= 1))
        keep &= ok
    if not keep.any():
        raise ValueError(f"no cells of {experiment} left after selecting {axes}")
    return d[keep].reset_index(drop=True)


def reproduction_grid(cells: pd.DataFrame) -> dict[str, list]:
    """`mtjax.sweep` grid covering every row of `cells` (normalised authors' rows)."""
    multi = cells[~cells["single_task"]]
    grid: dict[str, list] = {"ntrain": sorted(int(v) for v in cells["main_train_pts"].unique())}
    if len(multi) and not (multi["aux_train_pts"] == multi["main_train_pts"]).all():
        grid["ntrain_b"] = sorted(int(v) for v in multi["aux_train_pts"].unique())
    if cells["nlayers"].nunique() > 1 or int(cells["nlayers"].iloc[0]) != 2:
        grid["depth"] = sorted(int(v) for v in cells["nlayers"].unique())
    src = multi if len(multi) else cells
    grid["relatedness"] = sorted(float(v) for v in src["relatedness"].unique())
    grid["s_a"] = sorted(float(v) for v in cells["s_a"].unique())
    grid["s_b"] = sorted(float(v) for v in src["s_b"].unique())
    grid["single_task"] = sorted(bool(v) for v in cells["single_task"].unique())
    grid["seed"] = sorted(int(v) for v in cells["train_seed"].unique())
    return grid


def reproduction_spec(experiment: str, *, eval_every: int = 10, overrides: dict | None = None) -> dict[str, Any]:
    """The paper preset for `experiment` (rank, activation), evaluated every `eval_every` epochs;
    `overrides`: {section: {key: value}} applied on top (e.g. fewer epochs in tests)."""
    exp = _check_experiment(experiment)
    spec = paper_spec(rank=exp.rank, activation=exp.activation)
    spec["train"]["eval_every"] = eval_every
    for sec, vals in (overrides or {}).items():
        spec.setdefault(sec, {}).update(vals)
    return spec


def run_cost(cells: pd.DataFrame, n_epochs: int = 2000, batch_size: int = 128) -> int:
    """SGD steps (both tasks) needed to train every distinct run behind `cells`: the unit in
    which throughput is measured and the full-scale time extrapolated."""
    runs = _distinct_runs(cells)
    nb = np.ceil(runs["main_train_pts"] / batch_size)
    m = np.where(runs["single_task"], 0, runs["aux_train_pts"] // runs["main_train_pts"])
    return int((n_epochs * nb * (1 + m)).sum())


def _distinct_runs(cells: pd.DataFrame) -> pd.DataFrame:
    single = cells[cells["single_task"]].drop_duplicates([*SINGLE_CELL, "train_seed"])
    multi = cells[~cells["single_task"]].drop_duplicates([*MULTI_CELL, "train_seed"])
    return pd.concat([single, multi], ignore_index=True)
