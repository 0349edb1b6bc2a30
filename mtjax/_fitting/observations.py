"""Observations: a tidy table of measured curves mapped onto theory solves, with its checks."""

from __future__ import annotations

import warnings
from typing import Sequence

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .._custom_types import Array, Bool, Float, Int
from .._sweep import DYNAMIC_AXES, STATIC_AXES, TASK2_AXES
from .params import DATA_SIZES

#: Table columns that name a theory parameter (besides `time_scale`) and may be known per row.
#: `single_task` is mapped to w_b = 0: with rate 0 task 2 never moves the trunk, which is
#: exactly the single-task flow of task 1 (and needs no separate compilation).
KNOWN_COLUMNS = tuple(DYNAMIC_AXES) + ("single_task",)


class Observations(eqx.Module):
    """A tidy table of observations mapped onto theory solves (see `observations_from_table`).

    - `condition`: (n,) index of the theory solve (a distinct setting of the known parameters).
    - `time`: (n,) time t = lr x steps of the observation (the horizon for early-stopped rows).
    - `task`: (n,) 0-based task index.
    - `value`: (n,) observed metric (test loss in nats); `se`: (n,) its standard error (1 if unknown).
    - `early_stopped`: (n,) bool: the row is a minimum over the run (up to `time`), not a value at `time`.
    - `known`: column -> (n_cond,) known parameter values of each condition.
    - `level`: column -> (n,) level index of each row for the `by` columns of the parameters.
    - `grid`: (T,) theory save times (sorted, > 0); `n_conditions`: number of theory solves.
    """

    condition: Int[Array, " n"]
    time: Float[Array, " n"]
    task: Int[Array, " n"]
    value: Float[Array, " n"]
    se: Float[Array, " n"]
    early_stopped: Bool[Array, " n"]
    known: dict
    level: dict
    grid: Float[Array, " T"]
    n_conditions: int = eqx.field(static=True)


def _numeric(d: pd.DataFrame, col: str) -> np.ndarray:
    """Column `col` as float, or a one-line error naming it."""
    try:
        return d[col].to_numpy(float)
    except (ValueError, TypeError):
        def fails(v):
            try:
                float(v)
                return False
            except (ValueError, TypeError):
                return True

        bad = next((v for v in d[col] if fails(v)), None)
        raise ValueError(f"column {col!r} must be numeric, but holds {bad!r}") from None


def _select_hint(col: str, values: np.ndarray) -> str:
    """A `--query` that keeps the finite rows of `col`."""
    return f"{col} == {col}" if not np.isinf(values).any() else f"abs({col}) < 1e308"


def _flagged(d: pd.DataFrame, col: str | None) -> np.ndarray:
    """(n,) bool: the row's run is flagged in column `col` (missing column or NaN: not flagged)."""
    if col is None or col not in d:
        return np.zeros(len(d), bool)
    return np.asarray([bool(v) if pd.notna(v) else False for v in d[col]], bool)


def _finite_rows(d: pd.DataFrame, value: str, time: str, diverged: str | None) -> pd.DataFrame:
    """Rows with a finite `value` and `time`: non-finite values of runs flagged `diverged` are
    dropped with a warning; any other non-finite value or time is refused (one line, with the
    column, the count and a selection that removes them)."""
    t = _numeric(d, time)
    bad_t = ~np.isfinite(t)
    if bad_t.any():
        raise ValueError(f"column {time!r} has {int(bad_t.sum())} of {len(d)} rows with a non-finite value (NaN or inf); "
                         f"every observation needs its time: drop them (CLI: --query '{_select_hint(time, t)}') or fix the table")
    v = _numeric(d, value)
    bad = ~np.isfinite(v)
    if not bad.any():
        return d
    flagged = _flagged(d, diverged)
    if (bad & ~flagged).any():
        n = int((bad & ~flagged).sum())
        why = (f"not flagged in column {diverged!r}" if diverged is not None and diverged in d
               else "(no column flags their runs as diverged)")
        raise ValueError(f"column {value!r} has {n} of {len(d)} rows with a non-finite value (NaN or inf) {why}: "
                         f"drop them (CLI: --query '{_select_hint(value, v[bad & ~flagged])}') or fix the table")
    warnings.warn(f"dropped {int(bad.sum())} of {len(d)} rows with a non-finite {value!r} (their runs are flagged in column "
                  f"{diverged!r})", UserWarning, stacklevel=3)
    return d[~bad].reset_index(drop=True)


def _check_known_nan(d: pd.DataFrame, kcols: Sequence[str]) -> None:
    """A known parameter may be NaN only where it cannot matter: a task-2 axis of a single-task
    row (the tables leave those NaN; `FitProblem.curves` sets w_b = 0 there)."""
    single = _flagged(d, "single_task")
    for c in kcols:
        nan = np.isnan(_numeric(d, c))
        bad = nan & ~(single if c in TASK2_AXES else np.zeros(len(d), bool))
        if bad.any():
            allowed = " (allowed only in single-task rows)" if c in TASK2_AXES else ""
            raise ValueError(f"known column {c!r} is NaN in {int(bad.sum())} of {len(d)} rows{allowed}: fill it, or drop "
                             f"those rows (CLI: --query '{c} == {c}')")


def _fmt_values(vals: np.ndarray, n: int = 4) -> str:
    shown = ", ".join(f"{x:g}" for x in vals[:n])
    return shown + (f", ... ({len(vals)} values)" if len(vals) > n else "")


def _check_one_condition(d: pd.DataFrame, per_row: set[str]) -> None:
    """Refuse a parameter column that takes several values when the fit would give it one
    value for every row: a free parameter without `by`, a theory parameter left out of `known`,
    or a static axis (depth, width, ntrain, ...) the theory is solved at once for. Seed columns
    (replicates) may vary."""
    for c in [*KNOWN_COLUMNS, *(a for a in STATIC_AXES if a not in KNOWN_COLUMNS)]:
        if c not in d or c in per_row:
            continue
        vals = np.unique(_numeric(d, c))
        vals = vals[~np.isnan(vals)]
        if vals.size <= 1:
            continue
        pick = f"--query '{c} == {vals[0]:g}'"
        if c in KNOWN_COLUMNS:
            fix = (f"fit one value per level (CLI: --by {c}={c}; Param({c!r}, by={c!r})), make it a known column, "
                   f"or select one condition (CLI: {pick})")
        elif c in ("ntrain", "ntrain_b"):
            fix = f"select one (CLI: {pick}), or fit a parameter per level (e.g. --by time_scale={c})"
        else:
            fix = f"select one (CLI: {pick}) and set the config to it"
        raise ValueError(f"column {c!r} takes {vals.size} values ({_fmt_values(vals)}) but this fit uses one value of {c} "
                         f"for every row: {fix}")


def _check_se_and_task(d: pd.DataFrame, se: str | None, task: str | None) -> None:
    """Refuse standard errors that are not finite and > 0, and task numbers that are not 1, 2, ..."""
    if se:
        s = _numeric(d, se)
        bad = ~(np.isfinite(s) & (s > 0))
        if bad.any():
            raise ValueError(f"column {se!r} has {int(bad.sum())} of {len(d)} rows that are not a finite standard error > 0 "
                             f"(weights are 1/se^2): drop them (CLI: --query '{se} > 0 and {se} < 1e308') or fix the table")
    if task:
        k = _numeric(d, task)
        bad = ~(np.isfinite(k) & (k >= 1) & (k == np.round(k)))
        if bad.any():
            raise ValueError(f"column {task!r} must hold 1-based task numbers (1, 2, ...), but {int(bad.sum())} rows hold "
                             f"{_fmt_values(np.unique(k[bad]))}")


def _times(d: pd.DataFrame, time: str, lr: float | None) -> np.ndarray:
    """(n,) times t = lr x steps of the rows (column `time` itself unless `lr` is given); refuses negative ones."""
    t = _numeric(d, time)
    if time == "step" or (lr is not None):
        if lr is None:
            raise ValueError("time='step' needs lr= (time t = lr x steps)")
        t = t * lr
    if np.any(t < 0):
        raise ValueError(f"column {time!r} has {int(np.sum(t < 0))} of {len(d)} rows with a negative time: "
                         "times t = lr x steps must be >= 0")
    return t


def _conditions(d: pd.DataFrame, kcols: list[str], split: Sequence[str]) -> tuple[np.ndarray, pd.DataFrame]:
    """Theory solves of the rows: one per distinct setting of the known columns `kcols`, split
    further by the `split` columns.

    **Returns:** `(cidx, conditions)`: (n,) solve index of every row, and one row per solve."""
    filled = d[kcols].astype(float).fillna(-1e300) if kcols else pd.DataFrame(index=d.index)
    if kcols:
        conds, cidx = np.unique(filled.to_numpy(), axis=0, return_inverse=True)
        cidx = cidx.reshape(-1)
    else:
        conds, cidx = np.zeros((1, 0)), np.zeros(len(d), int)
    # Columns by which parameters vary must also split the conditions (one solve sees one value).
    split = [c for c in split if c not in kcols]
    if split:
        key = pd.DataFrame({"c": cidx, **{c: d[c] for c in split}})
        codes, uniq = pd.factorize(pd.MultiIndex.from_frame(key))
        cidx = codes
        first = pd.Series(range(len(d))).groupby(codes).first().to_numpy()
        conditions = d.loc[first, kcols + split].reset_index(drop=True)
    else:
        conditions = pd.DataFrame(np.where(conds == -1e300, np.nan, conds), columns=kcols)
    return cidx, conditions


def _grid(t: np.ndarray, grid: Sequence[float] | None) -> np.ndarray:
    """Theory save times: `grid` sorted, or the distinct observation times `t`; refuses an invalid grid."""
    g = np.unique(t) if grid is None else np.sort(np.asarray(grid, float))
    if g.size == 0 or not np.all(np.isfinite(g)) or g[-1] <= 0 or g[0] < 0:
        raise ValueError(f"grid={g} must be finite and >= 0 with a positive last time (the theory starts at t = 0)")
    return g


def observations_from_table(
    table: pd.DataFrame,
    *,
    value: str = "test_loss",
    time: str = "time",
    task: str | None = "task",
    se: str | None = None,
    known: Sequence[str] | None = None,
    by: Sequence[str] = (),
    split: Sequence[str] = (),
    early_stopped: bool | str = False,
    grid: Sequence[float] | None = None,
    lr: float | None = None,
    diverged: str | None = "diverged",
) -> tuple[Observations, pd.DataFrame]:
    """Map a tidy table onto theory solves.

    **Column mapping:**

    - `value`: the observed metric (test cross-entropy, nats).
    - `time`: time t = lr x steps; if the table has `step` instead, pass `time="step"` and `lr`.
    - `task`: 1-based task column (default `task`; `None`: every row is task 1).
    - `se`: optional standard-error column (weights 1/se²); without it every row has weight 1.
    - `known`: parameter columns known per row (default: every column of `KNOWN_COLUMNS`
      present in the table; the data sizes `ntrain`, `ntrain_b` may be added for the
      finite-data theory, which `fit_table` does). Rows with equal known values share one
      theory solve.
    - `by`: extra columns that index per-level parameters (`Param(by=...)`).
    - `split`: columns that must also split the theory solves: the `by` columns of every
      per-level parameter other than `time_scale` (which acts per row, on the time axis).
    - `early_stopped`: `True` if `value` is the minimum over a run up to `time` (e.g. the paper's
      early-stopped validation loss), or the name of a bool column saying so per row.
    - `grid`: theory save times (>= 0); default: the distinct observation times. Predictions
      interpolate linearly in t on the grid (and are constant beyond its ends).
    - `diverged`: bool column flagging diverged runs (default `diverged`, as in sweep tables;
      ignored when absent). Rows of flagged runs whose `value` is NaN or inf are dropped with a
      `UserWarning` saying how many; the returned observations then have fewer rows than the
      table (so do replicates passed to `fit`).

    **Returns:** `(Observations, conditions)` where `conditions` has one row per theory solve.

    **Raises:** `ValueError` (one line, naming the column and the fix) before any work when a
    column is missing or not numeric; `value` is NaN or inf in a row not flagged `diverged`;
    `time` is NaN, inf or negative; `se` is not finite and positive; `task` is not 1, 2, ...; a
    known column is NaN (except a task-2 axis of a single-task row); no row is left; or a
    parameter column (`KNOWN_COLUMNS`, or a static axis: `depth`, `width`, `ntrain`, `ntrain_b`)
    takes several values but is neither known, nor a `by`/`split` column: the fit would
    otherwise give one value to distinct conditions.
    """
    d = table.reset_index(drop=True).copy()
    if known is None:
        known = [c for c in KNOWN_COLUMNS if c in d]
    known = list(known)
    for c in known:
        if c not in KNOWN_COLUMNS + DATA_SIZES:
            raise ValueError(f"known column {c!r} is not a theory parameter; allowed: {list(KNOWN_COLUMNS + DATA_SIZES)}")
    es_col = [early_stopped] if isinstance(early_stopped, str) else []
    for col in [value, time, *([task] if task else []), *([se] if se else []), *known, *by, *split, *es_col]:
        if col not in d:
            raise ValueError(f"column {col!r} is not in the table (columns: {list(d.columns)})")
    if len(d) == 0:
        raise ValueError("the table has no rows (check the row selection, e.g. --query or --source)")
    d = _finite_rows(d, value, time, diverged)
    if len(d) == 0:
        raise ValueError(f"no rows left: every {value!r} is non-finite (all runs diverged)")
    _check_se_and_task(d, se, task)
    t = _times(d, time, lr)
    kcols = sorted(set(known) | set(c for c in split if c in KNOWN_COLUMNS + DATA_SIZES))
    _check_known_nan(d, kcols)
    _check_one_condition(d, set(kcols) | set(by) | set(split))
    cidx, conditions = _conditions(d, kcols, split)
    kn = {}
    for c in kcols:
        v = conditions[c].astype(float).to_numpy()
        kn[c] = jnp.asarray(v)
    levels = {c: jnp.asarray(pd.factorize(d[c], sort=True)[0]) for c in by}
    if isinstance(early_stopped, str):
        es = d[early_stopped].astype(bool).to_numpy()
    else:
        es = np.full(len(d), bool(early_stopped))
    tk = d[task].to_numpy(float).astype(int) - 1 if task else np.zeros(len(d), int)
    g = _grid(t, grid)
    obs = Observations(
        condition=jnp.asarray(cidx, jnp.int32),
        time=jnp.asarray(t),
        task=jnp.asarray(tk, jnp.int32),
        value=jnp.asarray(d[value].to_numpy(float)),
        se=jnp.asarray(d[se].to_numpy(float) if se else np.ones(len(d))),
        early_stopped=jnp.asarray(es),
        known=kn,
        level=levels,
        grid=jnp.asarray(g),
        n_conditions=int(np.max(cidx)) + 1,
    )
    return obs, conditions
