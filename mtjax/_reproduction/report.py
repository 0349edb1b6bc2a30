"""The reproduction report (markdown)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from .data import SIGN_THRESHOLD, TOLERANCE


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
