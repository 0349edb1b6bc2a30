"""Per-cell statistics of the authors' runs and ours, the cell-by-cell comparison and its headline."""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import pandas as pd

from .data import LOSS, MULTI_CELL, SIGN_THRESHOLD, SINGLE_CELL, SIZE_COLS, TOLERANCE, _check_experiment, _normalise


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
