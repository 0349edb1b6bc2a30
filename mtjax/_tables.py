"""Tidy tables of runs: one row per run and task (summary) or per evaluation (curves), and the
multitask benefit formed from them."""

from __future__ import annotations

import jax
import numpy as np
import pandas as pd

from ._axes import PARAM_COLUMNS, TASK2_AXES
from ._experiment import Experiment
from ._train import History


def history_tables(hist: History, rows: pd.DataFrame, exp: Experiment, *, source: str = "simulation",
                   model: str | None = None, curves: bool = True):
    """Tidy tables of a batch of runs: (summary, curves).

    `rows` has one row per run (its parameter columns); `hist` has a leading run axis;
    `source` and `model` fill the columns of those names (`model` defaults to `source`)."""
    h = jax.tree_util.tree_map(np.asarray, hist)
    active = list(exp.train.active_tasks)
    n = len(rows)
    base = rows.reset_index(drop=True)
    es, ess, fl = (np.asarray(a) for a in (hist.early_stopped_loss, hist.early_stopped_step, hist.final_loss))
    labels = {"source": source, "model": model or source}
    summ = []
    for k in active:
        d = base.copy()
        d["task"] = k + 1
        d["early_stopped_loss"] = es[:, k]
        d["early_stopped_step"] = ess[:, k]
        d["early_stopped_time"] = np.where(ess[:, k] >= 0, ess[:, k] * d["lr"].to_numpy(float), np.nan)
        d["final_loss"] = fl[:, k]
        d["final_acc"] = h.test_acc[:, -1, k]
        d["diverged"] = h.diverged
        summ.append(d.assign(**labels))
    summary = pd.concat(summ, ignore_index=True)
    if not curves:
        return summary, None
    T = h.step.shape[-1]
    cur = []
    for k in active:
        d = base.loc[base.index.repeat(T)].reset_index(drop=True)
        d["task"] = k + 1
        d["step"] = np.tile(h.step[0] if h.step.ndim > 1 else h.step, n)
        d["time"] = h.time.reshape(-1)
        d["train_loss"] = h.train_loss[:, :, k].reshape(-1)
        d["test_loss"] = h.test_loss[:, :, k].reshape(-1)
        d["test_loss_se"] = h.test_loss_se[:, :, k].reshape(-1)
        d["test_acc"] = h.test_acc[:, :, k].reshape(-1)
        d["diverged"] = np.repeat(h.diverged, T)
        cur.append(d.assign(**labels))
    return summary, pd.concat(cur, ignore_index=True)


def multitask_benefit(summary: pd.DataFrame, task: int = 1, metric: str = "early_stopped_loss", *,
                      alone: str = "single_task") -> pd.DataFrame:
    """Pair every multitask run with the run of the same task-1 setting that trained task 1 alone.

    - `alone="single_task"`: the reference is the `single_task = True` run (a separate program).
    - `alone="w_b"`: the reference is the run with task-2 weight `w_b = 0` and every other
      parameter equal (relatedness, s_b, seed, ...): the joint loss then has no task-2 term, so
      one compiled program holds both (sweep with `w_b = [0, 1]`).

    **Returns:** the multitask rows of `task` with columns `single_loss`, `multi_loss` and
    `benefit` = single − multi (nats; positive = training with the other tasks helped).
    Diverged runs give NaN benefits (never silently averaged)."""
    s = summary[summary["task"] == task]
    if alone == "w_b":
        if "w_b" not in s:
            raise ValueError("summary has no w_b column: sweep with w_b = [0, 1] for alone='w_b'")
        single, multi = s[s["w_b"] == 0], s[s["w_b"] != 0]
        keys = [c for c in PARAM_COLUMNS if c in s and c not in ("w_b", "single_task")]
    elif alone == "single_task":
        if "single_task" not in s:
            raise ValueError("summary has no single_task column: sweep with single_task = [true, false]")
        single = s[s["single_task"].astype(bool)]
        multi = s[~s["single_task"].astype(bool)]
        keys = [c for c in PARAM_COLUMNS if c in s and c not in TASK2_AXES and c != "single_task"]
    else:
        raise ValueError(f"alone={alone!r} is not one of ['single_task', 'w_b']")
    keys = [c for c in keys if single[c].notna().all()]
    # A joined table (mtjax.compare) pairs runs within each model.
    keys += [c for c in ("model",) if c in s]
    merged = multi.merge(single[keys + [metric]].rename(columns={metric: "single_loss"}), on=keys, how="left")
    merged = merged.rename(columns={metric: "multi_loss"})
    merged["benefit"] = merged["single_loss"] - merged["multi_loss"]
    return merged


def varying_columns(table: pd.DataFrame, exclude=(), *, keep_alone: bool = False) -> list[str]:
    """The parameter columns of `table` that tell its settings apart: those taking more than one
    value (NaN not counted; seeds never), less those that say nothing more — `ntrain_b` where it
    equals `ntrain`, and (unless `keep_alone`) `single_task` and a `w_b` whose only values are 0
    (task 1 alone) and one weight, since task-1-alone runs are told apart by those."""
    skip = {"seed", "realisation", *exclude} | (set() if keep_alone else {"single_task"})
    out = [c for c in PARAM_COLUMNS if c in table and c not in skip and table[c].nunique(dropna=True) > 1]
    if "ntrain_b" in out and "ntrain" in table:
        b = table["ntrain_b"]
        if (b.isna() | (b == table["ntrain"])).all():
            out.remove("ntrain_b")
    if not keep_alone and "w_b" in out and table.loc[table["w_b"] != 0, "w_b"].nunique(dropna=True) <= 1:
        out.remove("w_b")
    return out


def benefit_reference(summary: pd.DataFrame) -> str | None:
    """How a table pairs multitask runs with task 1 alone: "single_task" (a single_task axis with
    both values), "w_b" (a w_b axis containing 0), or None (no benefit can be formed)."""
    if "single_task" in summary and summary["single_task"].astype(bool).nunique() == 2:
        return "single_task"
    if "w_b" in summary and (summary["w_b"] == 0).any() and (summary["w_b"] > 0).any():
        return "w_b"
    return None
