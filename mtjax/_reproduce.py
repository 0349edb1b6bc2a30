"""Reproduction of the authors' published runs (Lee & Ndirango 2019) with the paper preset.

`reproduce(experiment, scale)` reads the authors' CSV (`rank-10`, `rank-3`, `aux-train-pts`,
`deep-nonlinear`; one row per run), derives the sweep grid from it so that our cells are exactly
theirs, runs the grid with `mtjax.sweep` (vmapped, resumable on disk), writes our runs in the
authors' column format and compares cell by cell.

**Scales.**

- `"full"`: every cell of the authors' file, all 5 seeds.
- `"quick"`: a fixed subset, all 5 seeds — the s_a, s_b, r values of `QUICK_AXES` and the data
  sizes of `QUICK_SIZES[experiment]`.  For `rank-10`: ntrain ∈ {100, 200}, r ∈ {0, 0.5, 1},
  s_a ∈ {0.158, 2.51, 10}, s_b ∈ {0.01, 0.158, 2.51, 10}: 72 multitask + 6 single-task cells,
  390 runs.  ntrain = 200 is included because it is the smallest size where the authors' benefit
  reaches |benefit| >= 0.02 (at ntrain = 100 no cell does), and small sizes are the cheap ones:
  the cost of a run is proportional to its SGD steps, 2000 x ceil(ntrain/128) x (1 + m).

**Protocol differences (all deliberate, see docs/reproduction.md):** the validation loss is
evaluated every `eval_every` = 10 epochs instead of every epoch (the early-stopped minimum of a
curve that moves by O(lr) per step; evaluation would otherwise dominate the cost), and the
teacher, data pool and student init are *our* realisation `k`, not the authors' — every
cell therefore carries a realisation offset that the seed standard error does not show; run
several realisations (`realisations=3`) to measure it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._spec import paper_spec
from ._sweep import sweep

LOSS = "validation-1/loss"
# Columns that identify a run in the authors' files (after `_normalise`).
SIZE_COLS = ("main_train_pts", "aux_train_pts", "nlayers")
MULTI_CELL = ("main_train_pts", "aux_train_pts", "nlayers", "relatedness", "s_a", "s_b")
SINGLE_CELL = ("main_train_pts", "nlayers", "s_a")
# The authors call |benefit| below this "no effect" in the acceptance criterion: signs of smaller
# benefits are within a seed standard error and are not compared.
SIGN_THRESHOLD = 0.02
TOLERANCE = 0.1  # nats: the acceptance tolerance on cell means


@dataclasses.dataclass(frozen=True)
class PaperExperiment:
    """One of the authors' experiments: its file, student and fixed task-1 data size.

    `rank`: R = C of both teachers; `activation`: trunk nonlinearity; `main_train_pts`: the
    task-1 training size where the file has no such column (aux-train-pts: 100)."""

    file: str
    rank: int = 10
    activation: str = "linear"
    main_train_pts: int | None = None


EXPERIMENTS: dict[str, PaperExperiment] = {
    "rank-10": PaperExperiment("rank-10.csv"),
    "rank-3": PaperExperiment("rank-3.csv", rank=3),
    "aux-train-pts": PaperExperiment("aux-train-pts.csv", main_train_pts=100),
    "deep-nonlinear": PaperExperiment("deep-nonlinear.csv", activation="relu"),
}

# Physical axes of every quick subset (approximate values; matched to the file's exact floats).
QUICK_AXES: dict[str, list[float]] = {
    "relatedness": [0.0, 0.5, 1.0],
    "s_a": [0.1585, 2.512, 10.0],
    "s_b": [0.01, 0.1585, 2.512, 10.0],
}
# Data sizes / depths of each quick subset.
QUICK_SIZES: dict[str, dict[str, list[int]]] = {
    "rank-10": {"main_train_pts": [100, 200]},
    "rank-3": {"main_train_pts": [100]},
    "aux-train-pts": {"aux_train_pts": [100, 400]},
    "deep-nonlinear": {"main_train_pts": [200], "nlayers": [1, 3]},
}
SCALES = ("quick", "full")


def default_data_dir() -> Path:
    """Folder with the authors' CSVs (`rank-10.csv`, `rank-3.csv`, `aux-train-pts.csv`,
    `deep-nonlinear.csv`).

    **Returns:** `$MTJAX_PAPER_DATA` if that variable is set and non-empty, else the copy that
    ships with the package, `mtjax/data/paper/` (the files of `tyler-nervana/mt-theory`'s
    `notebooks/data/`, unchanged, Apache-2.0: see `LICENSE` and `NOTICE` there). `data_dir=`
    of `authors_table` / `reproduce` and `mtjax reproduce --data DIR` override both.

    Example: `pd.read_csv(default_data_dir() / "rank-10.csv")`.
    """
    env = os.environ.get("MTJAX_PAPER_DATA")
    if env:
        return Path(env)
    # A plain directory for a normal (unzipped) install, which is what setuptools produces here.
    return Path(str(importlib.resources.files("mtjax") / "data" / "paper"))


def _check_experiment(experiment: str) -> PaperExperiment:
    if experiment not in EXPERIMENTS:
        raise ValueError(f"experiment={experiment!r} is not one of {sorted(EXPERIMENTS)}")
    return EXPERIMENTS[experiment]


def _normalise(df: pd.DataFrame, exp: PaperExperiment) -> pd.DataFrame:
    """Authors' table with every key column present (main_train_pts, nlayers filled in) and
    float keys rounded so that values written and read back compare equal."""
    d = df.copy()
    if "main_train_pts" not in d:
        d["main_train_pts"] = exp.main_train_pts
    if "nlayers" not in d:
        d["nlayers"] = 2
    for c in ("relatedness", "s_a", "s_b"):
        d[c] = d[c].astype(float).round(12)
    d["single_task"] = d["single_task"].astype(bool)
    return d


def authors_table(experiment: str, data_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """The authors' runs of `experiment`, one row per run, with the file's columns.

    **Arguments:** `experiment` — one of `EXPERIMENTS`; `data_dir` — folder of the CSVs
    (default `default_data_dir()`: `$MTJAX_PAPER_DATA`, else the packaged copy).

    **Raises:** `ValueError` if the experiment is unknown or its file is missing."""
    exp = _check_experiment(experiment)
    path = Path(data_dir if data_dir is not None else default_data_dir()) / exp.file
    if not path.exists():
        raise ValueError(
            f"{path}: no such file; data_dir / --data / $MTJAX_PAPER_DATA must name a folder holding the authors' "
            f"{exp.file} (unset them to use the copy shipped in mtjax/data/paper)"
        )
    return pd.read_csv(path)


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


def _ours_in_authors_format(summary: pd.DataFrame, cells: pd.DataFrame, columns: list[str], experiment: str, realisation: int) -> pd.DataFrame:
    """Our task-1 early-stopped losses on the authors' rows: same rows, same columns, new ids."""
    s = summary[summary["task"] == 1].copy()
    s = s.rename(columns={"ntrain": "main_train_pts", "ntrain_b": "aux_train_pts", "depth": "nlayers", "seed": "train_seed"})
    for c in ("relatedness", "s_a", "s_b"):
        s[c] = s[c].astype(float).round(12)
    s["single_task"] = s["single_task"].astype(bool)
    s[LOSS] = s["early_stopped_loss"]
    base = cells.drop(columns=[LOSS, "id"], errors="ignore")
    out = []
    for single, keys in ((True, [*SINGLE_CELL, "train_seed"]), (False, [*MULTI_CELL, "train_seed"])):
        rows = base[base["single_task"] == single]
        ours = s[s["single_task"] == single][keys + [LOSS]].drop_duplicates(keys)
        for c in keys:
            if c in SIZE_COLS or c == "train_seed":
                ours[c] = ours[c].astype(int)
        out.append(rows.merge(ours, on=keys, how="left", validate="many_to_one"))
    t = pd.concat(out, ignore_index=True)
    key_text = t[[c for c in columns if c not in ("id", LOSS)]].astype(str).agg("|".join, axis=1)
    t["id"] = [f"{experiment}-mtjax{realisation}-" + hashlib.sha1(k.encode()).hexdigest()[:32] for k in key_text]
    return t[columns]


def _cell_stats(table: pd.DataFrame, prefix: str) -> pd.DataFrame:
    """Per cell: mean, s.e. and count of the loss over seeds, and of the paired-by-seed benefit."""
    d = table
    single = d[d["single_task"]].drop_duplicates([*SINGLE_CELL, "train_seed"])
    multi = d[~d["single_task"]].drop_duplicates([*MULTI_CELL, "train_seed"])
    agg = ["mean", "sem", "count"]
    st = single.groupby(list(SINGLE_CELL))[LOSS].agg(agg).reset_index()
    st["single_task"] = True
    mt = multi.groupby(list(MULTI_CELL))[LOSS].agg(agg).reset_index()
    mt["single_task"] = False
    paired = multi.merge(single[[*SINGLE_CELL, "train_seed", LOSS]].rename(columns={LOSS: "single"}), on=[*SINGLE_CELL, "train_seed"], how="left")
    paired["benefit"] = paired["single"] - paired[LOSS]
    bt = paired.groupby(list(MULTI_CELL))["benefit"].agg(["mean", "sem"]).reset_index()
    bt = bt.rename(columns={"mean": "benefit", "sem": "benefit_sem"})
    mt = mt.merge(bt, on=list(MULTI_CELL), how="left")
    t = pd.concat([st, mt], ignore_index=True)
    t = t.rename(columns={c: f"{prefix}_{c}" for c in ("mean", "sem", "count", "benefit", "benefit_sem")})
    return t


def cell_statistics(table: pd.DataFrame, experiment: str = "rank-10", prefix: str = "authors") -> pd.DataFrame:
    """Per-cell statistics over seeds of a run table in the authors' format (e.g. `authors_table`),
    as `compare_with_authors` computes them.

    A single-task cell is (main_train_pts, nlayers, s_a), a multitask cell adds aux_train_pts,
    relatedness and s_b; a single-task run repeated in the file (rank-10 repeats it for every
    r, s_b) counts once per seed. The benefit of a multitask run is the single-task loss of the
    same (main_train_pts, nlayers, s_a, train_seed) minus its loss (> 0: multitask helps).

    **Arguments:** `table`: one row per run with the `validation-1/loss` column; `experiment`:
    one of `EXPERIMENTS` (fills the columns its file lacks); `prefix`: of the statistic columns.

    **Returns:** one row per cell: `single_task`, the cell columns (r, s_b rounded to 12
    decimals; NaN / absent for single-task cells), `<prefix>_mean`, `<prefix>_sem` (standard
    error, ddof 1), `<prefix>_count` (seeds), and for multitask cells `<prefix>_benefit`,
    `<prefix>_benefit_sem` (nats).

    ```python
    stats = mtjax.cell_statistics(mtjax.authors_table("rank-10"))
    ```"""
    return _cell_stats(_normalise(table, _check_experiment(experiment)), prefix)


_CELL = ["single_task", *MULTI_CELL]


def compare(authors: pd.DataFrame, ours: pd.DataFrame | list[pd.DataFrame], experiment: str = "rank-10") -> pd.DataFrame:
    """Cell-by-cell comparison of two run tables in the authors' format (of `experiment`).

    `ours`: one table, or one per realisation (the first is the one compared; the others give
    the realisation spread).

    **Returns:** one row per cell (single-task cells have NaN r, s_b, aux_train_pts) with
    `authors_mean/sem`, `ours_mean/sem` (nats, over seeds), `diff` = ours − authors, `z` = diff /
    pooled s.e. sqrt(sem_a² + sem_o²), and for multitask cells the same for the benefit
    (`authors_benefit`, `ours_benefit`, `benefit_diff`, `benefit_z`, `sign_agree`: NaN where
    |authors' benefit| < SIGN_THRESHOLD).  With several realisations: `realisation_sd` and
    `benefit_realisation_sd`, the standard deviation over realisations of our cell means."""
    exp = _check_experiment(experiment)
    authors = _normalise(authors, exp)
    ours_list = [_normalise(o, exp) for o in (ours if isinstance(ours, list) else [ours])]

    def keyed(t):
        # Single-task cells have no r, s_b, aux size: a sentinel instead of NaN makes them joinable.
        t = t.copy()
        for c in ("aux_train_pts", "relatedness", "s_b"):
            t[c] = t[c].astype(float).fillna(-1.0) if c in t else -1.0
        return t.set_index(_CELL)

    a = keyed(_cell_stats(authors, "authors"))
    stats = [keyed(_cell_stats(o, "ours")) for o in ours_list]
    m = a.join(stats[0], how="inner")
    m["diff"] = m["ours_mean"] - m["authors_mean"]
    m["z"] = m["diff"] / np.sqrt(m["authors_sem"] ** 2 + m["ours_sem"] ** 2)
    m["benefit_diff"] = m["ours_benefit"] - m["authors_benefit"]
    m["benefit_z"] = m["benefit_diff"] / np.sqrt(m["authors_benefit_sem"] ** 2 + m["ours_benefit_sem"] ** 2)
    big = m["authors_benefit"].abs() >= SIGN_THRESHOLD
    m["sign_agree"] = np.where(big, (np.sign(m["ours_benefit"]) == np.sign(m["authors_benefit"])).astype(float), np.nan)
    if len(stats) > 1:
        means = pd.concat([s["ours_mean"].rename(i) for i, s in enumerate(stats)], axis=1).reindex(m.index)
        bens = pd.concat([s["ours_benefit"].rename(i) for i, s in enumerate(stats)], axis=1).reindex(m.index)
        m["realisation_sd"] = means.std(axis=1, ddof=1)
        m["benefit_realisation_sd"] = bens.std(axis=1, ddof=1)
        for i in range(len(stats)):
            m[f"diff_r{i}"] = means[i] - m["authors_mean"]
            m[f"benefit_r{i}"] = bens[i]
        m["mean_diff_all"] = means.mean(axis=1) - m["authors_mean"]  # ours averaged over realisations
    m = m.reset_index()
    m.loc[m["single_task"], ["aux_train_pts", "relatedness", "s_b"]] = np.nan
    return m.sort_values(["single_task", "nlayers", "main_train_pts", "aux_train_pts", "relatedness", "s_a", "s_b"],
                         ascending=[False, True, True, True, True, True, True], ignore_index=True)


def headline(comparison: pd.DataFrame) -> dict[str, Any]:
    """Acceptance numbers of a `compare` table (fractions in [0, 1], nats); public as
    `mtjax.reproduction_headline`.

    **Returns:** a dict: cell counts, the fraction of cells within `TOLERANCE` (0.1 nats),
    median / mean / max difference, the fraction with |z| < 2, and for the benefit its median
    difference, sign agreement where |authors' benefit| >= `SIGN_THRESHOLD` and |z| < 2; with
    several realisations also the realisation spread and the same per realisation."""
    c = comparison
    ad = c["diff"].abs()
    multi = c[~c["single_task"]]
    big = multi["sign_agree"].notna()
    h: dict[str, Any] = {
        "cells": int(len(c)),
        "single_task_cells": int(c["single_task"].sum()),
        "multitask_cells": int(len(multi)),
        "within_0.1_nats": float((ad < TOLERANCE).mean()),
        "median_abs_diff": float(ad.median()),
        "mean_diff": float(c["diff"].mean()),
        "max_abs_diff": float(ad.max()),
        "abs_z_below_2": float((c["z"].abs() < 2).mean()),
        "benefit_median_abs_diff": float(multi["benefit_diff"].abs().median()),
        "benefit_cells_with_abs_ge_0.02": int(big.sum()),
        "benefit_sign_agreement": float(multi.loc[big, "sign_agree"].mean()) if big.any() else math.nan,
        "benefit_abs_z_below_2": float((multi["benefit_z"].abs() < 2).mean()),
    }
    if "realisation_sd" in c:
        r = sorted(int(k[6:]) for k in c if k.startswith("diff_r"))
        h["realisations"] = len(r)
        h["realisation_sd_median"] = float(c["realisation_sd"].median())
        h["benefit_realisation_sd_median"] = float(multi["benefit_realisation_sd"].median())
        h["within_0.1_nats_per_realisation"] = [float((c[f"diff_r{i}"].abs() < TOLERANCE).mean()) for i in r]
        h["median_abs_diff_per_realisation"] = [float(c[f"diff_r{i}"].abs().median()) for i in r]
        h["benefit_sign_agreement_per_realisation"] = [
            float((np.sign(multi.loc[big, f"benefit_r{i}"]) == np.sign(multi.loc[big, "authors_benefit"])).mean()) if big.any() else math.nan
            for i in r
        ]
        pooled = np.sqrt(c["authors_sem"] ** 2 + c["ours_sem"] ** 2 + c["realisation_sd"] ** 2)
        h["abs_z_below_2_with_realisation_sd"] = float((c["diff"].abs() / pooled < 2).mean())
    return h


def benefit_from_runs(table: pd.DataFrame, experiment: str = "rank-10") -> pd.DataFrame:
    """Per-seed multitask benefits of a run table in the authors' format, with sweep column names.

    Pairs every multitask run with the single-task run of the same (main_train_pts, nlayers,
    s_a, train_seed), like the authors. **Returns:** columns ntrain, ntrain_b, depth,
    relatedness, s_a, s_b, seed, single_loss, multi_loss, benefit (nats, single − multi) —
    the layout of `mtjax.multitask_benefit`, so `mtjax.plots` draws both alike."""
    d = _normalise(table, _check_experiment(experiment))
    single = d[d["single_task"]].drop_duplicates([*SINGLE_CELL, "train_seed"])
    multi = d[~d["single_task"]].drop_duplicates([*MULTI_CELL, "train_seed"])
    p = multi.merge(single[[*SINGLE_CELL, "train_seed", LOSS]].rename(columns={LOSS: "single_loss"}), on=[*SINGLE_CELL, "train_seed"])
    p = p.rename(columns={LOSS: "multi_loss", "main_train_pts": "ntrain", "aux_train_pts": "ntrain_b", "nlayers": "depth", "train_seed": "seed"})
    p["benefit"] = p["single_loss"] - p["multi_loss"]
    return p[["ntrain", "ntrain_b", "depth", "relatedness", "s_a", "s_b", "seed", "single_loss", "multi_loss", "benefit"]]


def _pct(v) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1%}"


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3g}"
    return str(v)


def report_markdown(experiment: str, scale: str, comparison: pd.DataFrame, head: dict[str, Any], timing: dict[str, Any] | None = None) -> str:
    """Markdown report of a reproduction: headline, per-size summary, worst cells, benefits;
    public as `mtjax.reproduction_report`.

    **Arguments:** `experiment`, `scale` (for the title), `comparison` (`compare_with_authors`),
    `head` (`reproduction_headline` of it), `timing` (optional dict of run times). **Returns:** str."""
    c = comparison
    lines = [f"# Reproduction of `{experiment}` (scale `{scale}`)", ""]
    lines.append(
        f"- cells: {head['cells']} ({head['single_task_cells']} single-task, {head['multitask_cells']} multitask), "
        f"all seeds; loss = task-1 validation CE, min over epochs (nats)"
    )
    lines.append(f"- within {TOLERANCE} nats of the authors' cell mean: **{head['within_0.1_nats']:.1%}**; "
                 f"median |diff| **{head['median_abs_diff']:.3f}**, mean diff (ours − authors) {head['mean_diff']:+.3f}, "
                 f"max |diff| {head['max_abs_diff']:.3f}; |diff| < 2 pooled seed s.e.: {head['abs_z_below_2']:.1%}")
    lines.append(f"- multitask benefit: median |diff| {head['benefit_median_abs_diff']:.3f}; sign agreement where "
                 f"|authors' benefit| >= {SIGN_THRESHOLD}: **{_pct(head['benefit_sign_agreement'])}** "
                 f"of {head['benefit_cells_with_abs_ge_0.02']} cells; |diff| < 2 pooled s.e.: {head['benefit_abs_z_below_2']:.1%}")
    if "realisations" in head:
        lines.append(f"- realisation spread ({head['realisations']} realisations of teacher, data pool and init): median over "
                     f"cells of the s.d. of our cell mean **{head['realisation_sd_median']:.3f}** nats, of the benefit "
                     f"{head['benefit_realisation_sd_median']:.3f}; with it added to the pooled s.e., |diff| < 2 s.e. in "
                     f"{head['abs_z_below_2_with_realisation_sd']:.1%} of cells")
        lines.append("- per realisation: within 0.1 nats " + ", ".join(f"{v:.1%}" for v in head["within_0.1_nats_per_realisation"])
                     + "; median |diff| " + ", ".join(f"{v:.3f}" for v in head["median_abs_diff_per_realisation"])
                     + "; sign agreement " + ", ".join(_pct(v) for v in head["benefit_sign_agreement_per_realisation"]))
    if timing:
        lines.append("- " + "; ".join(f"{k}: {_fmt(v)}" for k, v in timing.items()))
    lines += ["", "## Per data size", ""]
    g = c.groupby(["nlayers", "main_train_pts", "single_task"], dropna=False).agg(
        cells=("diff", "size"), authors=("authors_mean", "mean"), ours=("ours_mean", "mean"),
        median_abs_diff=("diff", lambda v: v.abs().median()), within=("diff", lambda v: (v.abs() < TOLERANCE).mean()),
        authors_benefit=("authors_benefit", "mean"), ours_benefit=("ours_benefit", "mean"),
        **({"realisation_sd": ("realisation_sd", "median"), "mean_diff_over_realisations": ("mean_diff_all", "mean")}
           if "realisation_sd" in c else {})).reset_index()
    lines.append(_md_table(g))
    lines += ["", "## Cells, worst |diff| first (at most 25)", ""]
    cols = ["single_task", "main_train_pts", "aux_train_pts", "nlayers", "relatedness", "s_a", "s_b", "authors_mean", "authors_sem",
            "ours_mean", "ours_sem", "diff", "z"] + (["realisation_sd"] if "realisation_sd" in c else [])
    lines.append(_md_table(c.reindex(c["diff"].abs().sort_values(ascending=False).index)[cols].head(25)))
    lines += ["", f"## Multitask benefit where |authors' benefit| >= {SIGN_THRESHOLD} (at most 40)", ""]
    b = c[c["sign_agree"].notna()]
    bcols = ["main_train_pts", "aux_train_pts", "nlayers", "relatedness", "s_a", "s_b", "authors_benefit", "authors_benefit_sem",
             "ours_benefit", "ours_benefit_sem", "benefit_z", "sign_agree"] + (["benefit_realisation_sd"] if "realisation_sd" in c else [])
    lines.append(_md_table(b[bcols].head(40)) if len(b) else "(none)")
    return "\n".join(lines) + "\n"


def _md_table(df: pd.DataFrame) -> str:
    def cell(v):
        if isinstance(v, (bool, np.bool_)):
            return str(bool(v))
        if isinstance(v, (float, np.floating)):
            return "" if math.isnan(v) else f"{v:.4g}"
        return str(v)

    rows = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    rows += ["| " + " | ".join(cell(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join(rows)


@dataclasses.dataclass
class ReproductionResult:
    """`ours`: our runs in the authors' format (realisation 0); `comparison`: `compare` table;
    `headline`: `headline` numbers; `report`: markdown text; `out_dir`: where files went (or None)."""

    ours: pd.DataFrame
    comparison: pd.DataFrame
    headline: dict[str, Any]
    report: str
    out_dir: Path | None


def reproduce(
    experiment: str,
    scale: str = "quick",
    *,
    data_dir: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = "results/reproduce",
    realisations: int = 1,
    eval_every: int = 10,
    overrides: dict | None = None,
    subset: dict[str, list] | None = None,
    max_chunk: int | None = 180,
    memory_budget: float = 2 * 2**30,
    progress: bool = True,
) -> ReproductionResult:
    """Rerun one of the authors' experiments with the paper preset and compare cell by cell.

    **Arguments:**

    - `experiment`: `"rank-10"`, `"rank-3"`, `"aux-train-pts"` or `"deep-nonlinear"`.
    - `scale`: `"quick"` (the documented subset, see the module docstring) or `"full"`.
    - `data_dir`: folder of the authors' CSVs (default `default_data_dir()`).
    - `out_dir`: results go to `<out_dir>/<experiment>-<scale>/` (with a hash suffix when
      `subset`, `overrides` or `eval_every` differ from the standard; None: nothing written). Each
      realisation is a resumable sweep in `realisation-<k>/`; an interrupted run resumes.
    - `realisations`: how many realisations (teacher, data pool, init) to run; realisation 0
      is the one compared, the others measure the realisation spread.
    - `eval_every`: epochs between validation evaluations (the authors: 1).
    - `overrides`: {section: {key: value}} on top of the paper preset (tests: fewer epochs).
    - `subset`: {authors' column: values} restricting the cells further (e.g. one data size).
    - `max_chunk`: runs per vmapped chunk (180 = one quick group, a fifth of a full one).

    **Returns:** a `ReproductionResult`. Files: `<experiment>.csv` (ours, the authors' columns),
    `<experiment>-realisation-<k>.csv` for k >= 1, `comparison.csv`, `report.md`, `report.json`.

    **Raises:** `ValueError` for an unknown experiment or scale, or missing data.
    """
    if realisations < 1:
        raise ValueError(f"realisations={realisations} must be in [1, inf)")
    authors = authors_table(experiment, data_dir)
    cells = select_cells(authors, experiment, scale, subset)
    spec = reproduction_spec(experiment, eval_every=eval_every, overrides=overrides)
    grid = reproduction_grid(cells)
    n_epochs = spec["train"]["n_epochs"]
    name = f"{experiment}-{scale}"
    if subset or overrides or eval_every != 10:
        # A variant gets its own folder instead of clashing with the standard run's manifest.
        tag = json.dumps([subset, overrides, eval_every], sort_keys=True, default=str)
        name += "-" + hashlib.sha1(tag.encode()).hexdigest()[:8]
    out = None if out_dir is None else Path(out_dir) / name
    tables, timings = [], []
    for k in range(realisations):
        sweep_dir = None if out is None else out / f"realisation-{k}"
        fresh = sweep_dir is None or not (sweep_dir / "parts").exists()
        t0, c0 = time.time(), time.process_time()
        res = sweep(spec, {**grid, "realisation": [k]}, name=f"realisation-{k}", out_dir=out, max_chunk=max_chunk,
                    memory_budget=memory_budget, save_curves=False, progress=progress)
        # CPU seconds of this process (all threads): on a shared machine the wall time says
        # little; the CPU time bounds the uncontended wall time from above (serial) and, halved,
        # from below on 2 cores.  Only a run trained from scratch in one call is a timing.
        t = {"wall_s": round(time.time() - t0, 1), "cpu_s": round(time.process_time() - c0, 1)}
        if sweep_dir is not None:
            tfile = sweep_dir / "timing.json"
            if fresh:
                tfile.write_text(json.dumps(t))
            t = json.loads(tfile.read_text()) if tfile.exists() else {"wall_s": math.nan, "cpu_s": math.nan}
        timings.append(t)
        tables.append(_ours_in_authors_format(res.summary, cells, list(authors.columns), experiment, k))
    comparison = compare(cells, tables if realisations > 1 else tables[0], experiment)
    head = headline(comparison)
    steps = run_cost(cells, n_epochs)
    full_steps = run_cost(_normalise(authors, EXPERIMENTS[experiment]), n_epochs)
    w0, c0 = timings[0]["wall_s"], timings[0]["cpu_s"]
    timing = {
        "wall_s_realisation_0": w0,
        "cpu_s_realisation_0": c0,
        "runs_per_realisation": int(len(_distinct_runs(cells))),
        "sgd_steps_per_realisation": steps,
        "cpu_steps_per_s": round(steps / c0, 1) if c0 else math.nan,
        # Compile time is included in the quick timing, so this overestimates slightly.
        "full_scale_cpu_h_estimate": round(full_steps / steps * c0 / 3600, 1) if c0 else math.nan,
    }
    head["timing"] = timing
    text = report_markdown(experiment, scale, comparison, head, timing)
    if out is not None:
        tables[0].to_csv(out / f"{experiment}.csv", index=False)
        for k, t in enumerate(tables[1:], start=1):
            t.to_csv(out / f"{experiment}-realisation-{k}.csv", index=False)
        comparison.to_csv(out / "comparison.csv", index=False)
        (out / "report.md").write_text(text)
        (out / "report.json").write_text(json.dumps(head, indent=2))
    return ReproductionResult(tables[0], comparison, head, text, out)
