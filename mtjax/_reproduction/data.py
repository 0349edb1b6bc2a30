"""The authors' experiments and their data files (shipped in `mtjax/data/paper/`)."""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
from pathlib import Path

import numpy as np
import pandas as pd



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
