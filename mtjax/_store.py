"""The sweep folder on disk: atomic writes, part files, finished runs, the merge, and loading.

Layout of a sweep folder ``<out_dir>/<name>/``:

- ``manifest.json``: spec, grid, versions and the fingerprint a resume checks.
- ``parts/part-<first run, 7 digits>-<n runs>[-p<process>].curves.parquet`` and
  ``.summary.parquet``: one chunk's tables. The summary part is written last, so its presence
  marks the chunk finished; a curves part without one is ignored and later overwritten.
  Parts named ``.summary.csv`` / ``.curves.csv`` are read alike (resume and merge).
- ``summary.parquet`` and ``summary.csv``: run x task, merged.
- ``curves.parquet``: run x evaluation x task, merged; ``curves.csv`` too when it has at most
  `CSV_MAX_ROWS` rows (a 10^4-run sweep with 200 evaluations of 2 tasks has 4 x 10^6).

Every file is written to a temporary file in the same folder, fsynced and renamed over its
name (``os.replace``), so a reader never sees a partial file; files get mode 0666 & ~umask
(0644 under the usual umask 022), as ``open(path, "w")`` gives.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import IO, Iterator

import numpy as np
import pandas as pd

from ._axes import PARAM_COLUMNS, TASK2_AXES

# Largest merged curves table also written as curves.csv (about 300 MiB of CSV, 3 s to read).
# At 4 x 10^6 rows CSV took 8.5x the disk of Parquet, 27x its write and 11x its read time
# (`python benchmarks/results_storage.py`, 2 cores; benchmarks/RESULTS.md).
CSV_MAX_ROWS = 2_000_000

_FORMATS = (".parquet", ".csv")


@contextlib.contextmanager
def _atomic_open(path: Path, mode: str = "w") -> Iterator[IO]:
    """A file object whose contents replace `path` atomically when the block exits cleanly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    # os.open applies the umask to 0o666 like open(); tempfile.mkstemp would leave 0600.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _atomic_write_text(path: Path, text: str) -> None:
    """Write `text` atomically (see the module docstring)."""
    with _atomic_open(Path(path)) as f:
        f.write(text)


def save_table(path: str | os.PathLike, df: pd.DataFrame) -> None:
    """Write a table atomically, as Parquet or CSV by the suffix of `path`, without the index.

    **Arguments:** `path`: ends in ``.parquet`` or ``.csv``; `df`: the table.

    **Raises:** `ValueError` for another suffix."""
    path = Path(path)
    if path.suffix == ".parquet":
        with _atomic_open(path, "wb") as f:
            df.to_parquet(f, index=False)
    elif path.suffix == ".csv":
        with _atomic_open(path, "w") as f:
            df.to_csv(f, index=False)
    else:
        raise ValueError(f"path={str(path)!r} must end in one of {list(_FORMATS)}: name the table file .parquet or .csv")


def load_table(path: str | os.PathLike, columns: list[str] | None = None) -> pd.DataFrame:
    """Read a table written by `save_table` (Parquet or CSV by suffix), optionally only `columns`."""
    path = Path(path)
    if path.suffix == ".parquet":
        return pd.read_parquet(path, columns=columns)
    if path.suffix == ".csv":
        return pd.read_csv(path, usecols=columns)
    raise ValueError(f"path={str(path)!r} must end in one of {list(_FORMATS)}: name the table file .parquet or .csv")


def _atomic_write_csv(path: Path, df: pd.DataFrame) -> None:
    save_table(path, df)


def write_part(out: Path, tag: str, summary: pd.DataFrame, curves: pd.DataFrame | None) -> None:
    """Write one chunk's part files; the summary last, since it marks the chunk finished."""
    if curves is not None:
        save_table(out / "parts" / f"{tag}.curves.parquet", curves)
    save_table(out / "parts" / f"{tag}.summary.parquet", summary)


def fingerprint(manifest: dict) -> str:
    """What a resume must match: the spec, the grid and the model (its source and settings)."""
    key = {k: manifest.get(k) for k in ("spec", "grid", "source", "solver")}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def open_folder(out: Path, manifest: dict, resume: bool) -> set[int]:
    """Start or resume the sweep folder `out`: write `manifest` (with its fingerprint) if the
    folder is new, else check that it holds the same sweep. Returns the runs already done.

    **Raises:** `ValueError` (one line) if the folder holds another sweep, or has results and
    `resume` is False."""
    manifest["fingerprint"] = fingerprint(manifest)
    mpath = out / "manifest.json"
    if not mpath.exists():
        # Every process of a multi-process sweep may get here at once: they write the same
        # bytes, atomically, so whichever replace lands last changes nothing.
        _atomic_write_text(mpath, json.dumps(manifest, indent=2, default=str))
        return set()
    old = json.loads(mpath.read_text())
    if old.get("fingerprint") != manifest["fingerprint"]:
        what = [k for k in ("source", "spec", "grid", "solver") if old.get(k) != manifest.get(k)]
        raise ValueError(
            f"{out} holds a different sweep (its {', '.join(what) or 'fingerprint'} differs"
            + (f": model {old.get('model', old.get('source'))!r} there, {manifest.get('model')!r} here" if "source" in what else "")
            + "): choose another name or out_dir, or delete it"
        )
    if not resume:
        raise ValueError(f"{out} already has results and resume=False: delete it or pass resume=True")
    return _done_runs(out)


def _summary_parts(out: Path) -> list[Path]:
    """The finished chunks' summary parts (Parquet or CSV), sorted by name."""
    parts = Path(out) / "parts"
    if not parts.exists():
        return []
    return sorted((p for ext in _FORMATS for p in parts.glob(f"part-*.summary{ext}")), key=lambda p: p.name)


def _curves_part(summary_part: Path) -> Path:
    ext = summary_part.suffix
    return summary_part.with_name(summary_part.name[: -len(".summary" + ext)] + ".curves" + ext)


def _done_runs(out: Path) -> set[int]:
    """The runs whose summary part is on disk."""
    done: set[int] = set()
    for p in _summary_parts(out):
        done.update(load_table(p, columns=["run"])["run"].tolist())
    return done


def _check_csv_max_rows(csv_max_rows) -> None:
    integer = isinstance(csv_max_rows, (int, np.integer)) and not isinstance(csv_max_rows, bool)
    if not (csv_max_rows is None or (integer and csv_max_rows >= 0)):
        raise ValueError(
            f"csv_max_rows={csv_max_rows!r} must be an integer >= 0 (the most rows curves.csv may have; "
            "0 never writes it) or None (always write it)"
        )


def merge_parts(
    out: str | os.PathLike, write: bool = True, *, csv_max_rows: int | None = CSV_MAX_ROWS
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Assemble the merged tables of a sweep folder from its finished part files.

    A chunk counts as finished only when its summary part exists (it is written last), so a
    curves part orphaned by an interruption is ignored. Parts of every process are read,
    Parquet and CSV alike; a run found in several parts (two processes that swept it
    concurrently, e.g. a resume started while the original job was alive) is kept once, with
    its summary and curves from the first of those parts by name.

    **Arguments:**

    - `out`: the sweep folder.
    - `write`: write ``summary.parquet``, ``summary.csv``, ``curves.parquet`` and, when the
      curves have at most `csv_max_rows` rows, ``curves.csv`` (a larger stale ``curves.csv``
      is removed); False only returns the tables.
    - `csv_max_rows`: the threshold for ``curves.csv`` (default `CSV_MAX_ROWS`; None = always).

    **Returns:** `(summary, curves)`, sorted by run and task (and step); `curves` is None
    when no part holds curves.

    **Raises:** `ValueError` if `csv_max_rows` is neither None nor an integer >= 0."""
    _check_csv_max_rows(csv_max_rows)
    out = Path(out)
    sparts = _summary_parts(out)
    if not sparts:  # e.g. a process whose slice is empty, before any other process finished
        return pd.DataFrame(columns=["run", "task"]), None
    seen: set[int] = set()
    summaries, curves_list = [], []
    for p in sparts:
        s = load_table(p)
        fresh = ~s["run"].isin(seen)
        runs = set(s.loc[fresh, "run"].tolist())
        summaries.append(s if fresh.all() else s[fresh])
        cpath = _curves_part(p)
        if runs and cpath.exists():
            c = load_table(cpath)
            curves_list.append(c if fresh.all() else c[c["run"].isin(runs)])
        seen |= runs
    summary = pd.concat(summaries, ignore_index=True).sort_values(["run", "task"], ignore_index=True)
    curves = None
    if curves_list:
        curves = pd.concat(curves_list, ignore_index=True).sort_values(["run", "task", "step"], ignore_index=True)
    if write:
        write_tables(out, summary, curves, csv_max_rows=csv_max_rows)
    return summary, curves


def write_tables(out: Path, summary: pd.DataFrame, curves: pd.DataFrame | None, *,
                 csv_max_rows: int | None = CSV_MAX_ROWS) -> None:
    """Write a folder's merged tables: ``curves.parquet`` (and ``curves.csv`` up to
    `csv_max_rows` rows; a stale larger one is removed), then ``summary.parquet`` and
    ``summary.csv`` — the summary last: its presence says the folder is complete."""
    if curves is not None:
        save_table(out / "curves.parquet", curves)
        if csv_max_rows is None or len(curves) <= csv_max_rows:
            save_table(out / "curves.csv", curves)
        else:
            (out / "curves.csv").unlink(missing_ok=True)
    save_table(out / "summary.parquet", summary)
    save_table(out / "summary.csv", summary)


def _read_merged(out: Path, name: str) -> pd.DataFrame | None:
    for ext in _FORMATS:
        if (out / f"{name}{ext}").exists():
            return load_table(out / f"{name}{ext}")
    return None


@dataclasses.dataclass
class SweepResult:
    """Merged tables of a sweep and the folder holding them (None if not written).

    - `curves`: run x evaluation x task (None if the sweep kept no curves).
    - `summary`: run x task.
    - `complete`: False for a process of a multi-process sweep that finished its slice
      before the others (`summary` then holds the runs on disk so far and no merged file was
      written), or for a loaded folder with fewer runs than its manifest.
    - `grid`: axis name -> values of the sweep (None if unknown); `to_xarray` takes its
      dimensions from it."""

    curves: pd.DataFrame | None
    summary: pd.DataFrame
    out_dir: Path | None
    complete: bool = True
    grid: dict | None = None

    def to_xarray(self, table: str = "curves", metrics: list[str] | None = None):
        """One table as an `xarray.Dataset` on the grid.

        Dimensions: the grid axes with more than one value (without a known `grid`: every
        parameter column with more than one distinct value), a text column such as `source`
        if it varies, then `task`, and `step` for the curves. Variables: the metrics (all
        numeric columns that are not parameters, `run`, `task`, `step` or `time`; or
        `metrics`), as floats (float32 columns stay float32), NaN where the table has no row
        (e.g. task 2 of a single-task run; `diverged` is 0/1). Coordinates also hold `run`
        and the parameters that vary without being dimensions (over the grid dimensions), and
        `time` (over `step` when it is one time axis for every run, else over all
        dimensions); the constant parameter and text columns go to `attrs`.

        Single-task runs: the task-2 axes (`relatedness`, `s_b`, ...) do not affect them and
        their table entries are NaN; their values are repeated along those dimensions, so
        ``ds.sel(single_task=True, task=1) - ds.sel(single_task=False, task=1)`` is the
        multitask benefit of task 1 at every grid point.

        **Raises:** `ValueError` for an unknown `table` or metric, a sweep without curves,
        or a table with two rows at one grid point (e.g. two sweeps concatenated)."""
        if table not in ("curves", "summary"):
            raise ValueError(f"table={table!r} is not one of ['curves', 'summary']")
        df = self.curves if table == "curves" else self.summary
        if df is None:
            raise ValueError("table='curves': this sweep kept no curves; use table='summary' or rerun it with save_curves=True")
        return table_to_dataset(df, ["task", "step"] if table == "curves" else ["task"], grid=self.grid, metrics=metrics)


def load_sweep(path: str | os.PathLike) -> SweepResult:
    """Load a sweep folder's tables as a `SweepResult`.

    Reads ``summary.parquet`` / ``curves.parquet``, else the ``.csv`` files; a folder with part
    files but no merged tables (an unfinished or unmerged sweep) is merged in memory.

    **Returns:** `SweepResult` with the folder's grid from ``manifest.json`` (if any) and
    `complete` = every run of the manifest is in `summary`.

    **Raises:** `ValueError` if the folder has neither merged tables nor part files.

    ```python
    res = mtjax.load_sweep("results/demo")
    ds = res.to_xarray("summary")
    ```"""
    out = Path(path)
    summary = _read_merged(out, "summary")
    if summary is not None:
        curves = _read_merged(out, "curves")
    elif _summary_parts(out):
        summary, curves = merge_parts(out, write=False)
    else:
        raise ValueError(
            f"path={str(out)!r} has no summary.parquet, summary.csv or parts/: pass a sweep folder "
            "(<out_dir>/<name> of mtjax.sweep)"
        )
    manifest = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").exists() else {}
    n = manifest.get("n_runs")
    complete = n is None or summary["run"].nunique() >= n
    return SweepResult(curves, summary, out, complete=complete, grid=manifest.get("grid"))


def _scalar(v):
    return v.item() if hasattr(v, "item") else v


def table_to_dataset(df: pd.DataFrame, inner: list[str], *, grid: dict | None = None, metrics: list[str] | None = None):
    """`SweepResult.to_xarray` of one table; `inner` = the per-run index columns (task, step)."""
    import xarray as xr

    params = [c for c in PARAM_COLUMNS if c in df]
    skip = {"run", "time", *inner, *params}
    texts = [c for c in df if c not in skip and not pd.api.types.is_numeric_dtype(df[c])]
    numeric = [c for c in df if c not in skip and c not in texts]
    if metrics is None:
        metrics = numeric
    else:
        bad = [m for m in metrics if m not in numeric]
        if bad:
            raise ValueError(f"metrics={list(metrics)!r}: {bad} are not metric columns of this table; choose from {numeric}")
    axes = params if grid is None else [c for c in grid if c in df]
    dims = [c for c in axes if df[c].dropna().nunique() > 1] + [c for c in texts if df[c].nunique(dropna=False) > 1] + inner
    n_outer = len(dims) - len(inner)
    coords = {d: np.sort(df[d].dropna().unique()) for d in dims}
    shape = tuple(len(coords[d]) for d in dims)
    codes = np.stack([pd.Index(coords[d]).get_indexer(df[d]) for d in dims], axis=1) if dims else np.zeros((len(df), 0), int)
    src = np.arange(len(df))
    for j, d in enumerate(dims):
        missing = codes[:, j] < 0
        if not missing.any():
            continue
        if d not in TASK2_AXES:
            raise ValueError(f"column {d!r} has missing values in {int(missing.sum())} rows: it cannot index a grid; drop those rows first")
        # Runs trained without task 2 do not depend on this axis: repeat them along it.
        n = shape[j]
        rep = np.repeat(codes[missing], n, axis=0)
        rep[:, j] = np.tile(np.arange(n), int(missing.sum()))
        codes = np.concatenate([codes[~missing], rep])
        src = np.concatenate([src[~missing], np.repeat(src[missing], n)])
    flat = np.ravel_multi_index(codes.T, shape) if dims else np.zeros(len(src), int)
    if len(flat) and np.bincount(flat, minlength=int(np.prod(shape))).max() > 1:
        raise ValueError(
            f"the table has several rows at one point of {dims}: it holds more than one sweep; "
            "select one (e.g. by source or run) before to_xarray"
        )

    def scatter(column: pd.Series, dims_used: int) -> np.ndarray:
        # Floating columns keep their precision (float32 curves stay float32); others become
        # float64 so that NaN can mark grid points without a row.
        dtype = column.dtype if pd.api.types.is_float_dtype(column.dtype) else np.float64
        sub = shape[:dims_used]
        at = np.ravel_multi_index(codes[:, :dims_used].T, sub) if dims_used else np.zeros(len(src), int)
        arr = np.full(int(np.prod(sub)), np.nan, dtype)
        arr[at] = column.to_numpy(dtype)[src]
        return arr.reshape(sub)

    ds = xr.Dataset(
        {m: (dims, scatter(df[m], len(dims))) for m in metrics},
        coords={d: coords[d] for d in dims},
    )
    outer = dims[:n_outer]
    ds = ds.assign_coords(run=(outer, scatter(df["run"], n_outer)))
    for c in [*params, *texts]:
        if c in dims:
            continue
        if df[c].nunique(dropna=False) <= 1:
            ds.attrs[c] = _scalar(df[c].iloc[0])
        elif pd.api.types.is_numeric_dtype(df[c]):
            ds = ds.assign_coords({c: (outer, scatter(df[c], n_outer))})
    if "time" in df:
        per_step = "step" in dims and df.groupby("step")["time"].nunique().max() <= 1
        if per_step:
            t = df.groupby("step")["time"].first().reindex(coords["step"]).to_numpy()
            ds = ds.assign_coords(time=("step", t))
        else:
            ds = ds.assign_coords(time=(dims, scatter(df["time"], len(dims))))
    return ds


class ResumableTable:
    """A results table filled point by point, saved atomically after every addition and resumed
    by key: a script that solves one grid point (or one chunk of points) at a time skips the
    points an earlier run stored with the same settings. For computations that do not fit
    `mtjax.sweep` (e.g. a different time grid or solver per point); `sweep` folders are the
    resumable store for everything that does.

    Every row carries a ``settings`` column, a string naming how it was computed (solver
    settings, sizes); rows of other settings stay in the file untouched, so an interrupted run
    resumes, and processes with different settings or disjoint parts of a grid can write to
    different files and be combined with `merge`.

    **Arguments:**

    - `path`: the table file, ``.parquet`` or ``.csv`` (`save_table`); Parquet keeps list
      columns (e.g. a curve per row) and exact floats, CSV is readable by anything.
    - `key`: the columns that identify a point (values compared with ``==``).
    - `settings`: the settings string of this run.

    ```python
    table = mtjax.ResumableTable("out.parquet", key=["alpha", "s"], settings="lr=0.5 draws=512")
    for alpha, s in grid:
        if (alpha, s) not in table:
            table.add({"alpha": alpha, "s": s, "loss": solve(alpha, s)})  # written at once
    df = table.rows  # this run's settings only
    ```"""

    def __init__(self, path: str | os.PathLike, key: list[str], settings: str):
        self.path = Path(path)
        self.key = list(key)
        self.settings = str(settings)
        self._rows: list[dict] = []
        self._others: list[dict] = []
        if self.path.exists():
            self._rows, self._others = self._read(self.path)
        self._done = {self.key_of(r) for r in self._rows}

    def _read(self, path: Path) -> tuple[list[dict], list[dict]]:
        df = load_table(path)
        same = (df["settings"] == self.settings).to_numpy() if "settings" in df else np.zeros(len(df), bool)
        return df[same].to_dict("records"), df[~same].to_dict("records")

    def key_of(self, row: dict) -> tuple:
        """The key tuple of a row (dict of column -> value)."""
        return tuple(row[k] for k in self.key)

    def __contains__(self, key: tuple) -> bool:
        return tuple(key) in self._done

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def rows(self) -> pd.DataFrame:
        """The rows stored with this table's settings, in the order they were added."""
        return pd.DataFrame(self._rows)

    def get(self, key: tuple) -> dict:
        """The row stored under `key` (raises `KeyError` if there is none)."""
        for r in self._rows:
            if self.key_of(r) == tuple(key):
                return r
        raise KeyError(key)

    def merge(self, path: str | os.PathLike) -> int:
        """Take the rows with this table's settings that another run stored in `path` and this
        table lacks (held in memory; written with the next `add` or `save`). **Returns:** how many."""
        n = 0
        for r in self._read(Path(path))[0]:
            if self.key_of(r) not in self._done:
                self._rows.append(r)
                self._done.add(self.key_of(r))
                n += 1
        return n

    def add(self, rows: dict | list[dict]) -> None:
        """Store one row or several (dicts with at least the key columns) and write the file.
        A row whose key is already stored replaces it. NumPy scalars and 0-d arrays are stored as
        Python scalars, 1-d arrays as list cells (Parquet)."""
        for row in [rows] if isinstance(rows, dict) else rows:
            row = {c: (v.item() if isinstance(v, np.generic) or (isinstance(v, np.ndarray) and v.ndim == 0) else v)
                   for c, v in row.items()}
            row["settings"] = self.settings
            k = self.key_of(row)
            if k in self._done:
                self._rows = [r for r in self._rows if self.key_of(r) != k]
            self._rows.append(row)
            self._done.add(k)
        self.save()

    def save(self) -> None:
        """Write the file atomically: the rows of other settings first, then this run's."""
        save_table(self.path, pd.DataFrame(self._others + self._rows))
