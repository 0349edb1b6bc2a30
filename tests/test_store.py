"""The sweep folder on disk (mtjax/_store.py): atomic writes, Parquet parts, resume from CSV
parts, the curves.csv threshold, `load_sweep` and `SweepResult.to_xarray`."""

import os
import shutil
import stat

import numpy as np
import pandas as pd
import pytest
from helpers import tiny_spec

import mtjax
from mtjax import _store

GRID = {"s_b": [0.5, 1.0]}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One tiny real sweep of 2 runs, one chunk (and part) per run."""
    out = tmp_path_factory.mktemp("store")
    res = mtjax.sweep(tiny_spec(), GRID, name="s", out_dir=out, progress=False, max_chunk=1)
    return res


def _copy(res, tmp_path):
    dst = tmp_path / "s"
    shutil.copytree(res.out_dir, dst)
    return dst


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def _frame(n=6):
    """A small table with every column type of a sweep table."""
    return pd.DataFrame({
        "run": np.arange(n, dtype=np.int64),
        "s_b": np.where(np.arange(n) % 3 == 0, np.nan, 0.5 * np.arange(n)),
        "single_task": np.arange(n) % 2 == 0,
        "step": np.arange(n, dtype=np.int32),
        "test_loss": np.linspace(0.1, 1.0, n, dtype=np.float32),
        "source": pd.Series(["simulation"] * n, dtype="str"),
    })  # fmt: skip


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_atomic_writes_honour_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        _store.save_table(tmp_path / "t.parquet", _frame())
        _store.save_table(tmp_path / "t.csv", _frame())
        _store._atomic_write_text(tmp_path / "m.json", "{}")
    finally:
        os.umask(old)
    for name in ("t.parquet", "t.csv", "m.json"):
        assert _mode(tmp_path / name) == mode, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "t.csv", "t.parquet"]  # no temp files


def test_a_failed_write_keeps_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "t.parquet"
    _store.save_table(path, _frame())
    with pytest.raises(Exception):  # pyarrow cannot type a column of ints and strings
        _store.save_table(path, pd.DataFrame({"x": [1, "a"]}, dtype=object))
    pd.testing.assert_frame_equal(_store.load_table(path), _frame())
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]
    with pytest.raises(ValueError, match=r"must end in one of \['.parquet', '.csv'\]"):
        _store.save_table(tmp_path / "t.txt", _frame())


def test_parquet_round_trip_keeps_values_and_dtypes(tmp_path):
    df = _frame()
    _store.save_table(tmp_path / "t.parquet", df)
    pd.testing.assert_frame_equal(_store.load_table(tmp_path / "t.parquet"), df, check_exact=True)
    pd.testing.assert_frame_equal(_store.load_table(tmp_path / "t.parquet", columns=["run"]), df[["run"]])


def test_sweep_writes_parquet_parts_and_both_merged_formats(swept):
    out = swept.out_dir
    parts = sorted(p.name for p in (out / "parts").iterdir())
    assert parts == [f"part-000000{r}-1.{t}.parquet" for r in (0, 1) for t in ("curves", "summary")]
    for f in ("summary.parquet", "summary.csv", "curves.parquet", "curves.csv", "manifest.json"):
        assert _mode(out / f) == 0o666 & ~_umask(), f
    pd.testing.assert_frame_equal(pd.read_parquet(out / "summary.parquet"), swept.summary)
    pd.testing.assert_frame_equal(pd.read_parquet(out / "curves.parquet"), swept.curves)
    pd.testing.assert_frame_equal(pd.read_csv(out / "curves.csv"), swept.curves, check_dtype=False)


def _umask():
    old = os.umask(0)
    os.umask(old)
    return old


def test_resume_reads_csv_parts(swept, tmp_path):
    d = _copy(swept, tmp_path)
    for f in ("summary.parquet", "summary.csv", "curves.parquet", "curves.csv"):
        (d / f).unlink()
    # Run 0 as CSV parts, with a marker no run computes; run 1's parts removed (not done).
    s0 = pd.read_parquet(d / "parts" / "part-0000000-1.summary.parquet").assign(final_loss=123.0)
    s0.to_csv(d / "parts" / "part-0000000-1.summary.csv", index=False)
    pd.read_parquet(d / "parts" / "part-0000000-1.curves.parquet").to_csv(d / "parts" / "part-0000000-1.curves.csv", index=False)
    for p in (d / "parts").glob("*.parquet"):
        p.unlink()
    assert mtjax._sweep._done_runs(d) == {0}
    res = mtjax.sweep(tiny_spec(), GRID, name="s", out_dir=tmp_path, progress=False, max_chunk=1)
    s = res.summary
    assert (s.loc[s.run == 0, "final_loss"] == 123.0).all()  # read, not recomputed
    np.testing.assert_allclose(s.loc[s.run == 1, "final_loss"], swept.summary.loc[swept.summary.run == 1, "final_loss"])
    assert (d / "parts" / "part-0000001-1.summary.parquet").exists()
    pd.testing.assert_frame_equal(res.curves, swept.curves, check_dtype=False)


def _parts_folder(tmp_path, n_runs=3, n_steps=4):
    """A sweep folder of synthetic parts: run r in part r; a duplicate of run 1 in a later part."""
    out = tmp_path / "f"
    for r in range(n_runs):
        summ = pd.DataFrame({"run": [r, r], "task": [1, 2], "final_loss": [r + 0.1, r + 0.2]})
        curv = pd.DataFrame({"run": r, "task": np.repeat([1, 2], n_steps), "step": np.tile(np.arange(n_steps), 2),
                             "test_loss": float(r)})  # fmt: skip
        _store.write_part(out, f"part-{r:07d}-1", summ, curv)
    dup_s = pd.DataFrame({"run": [1, 1], "task": [1, 2], "final_loss": [-1.0, -1.0]})
    dup_c = pd.DataFrame({"run": 1, "task": np.repeat([1, 2], n_steps), "step": np.tile(np.arange(n_steps), 2), "test_loss": -1.0})
    _store.write_part(out, "part-0000002-1-p1", dup_s, dup_c)  # after part 1 by name
    return out


def test_merge_keeps_each_run_once_from_its_first_part(tmp_path):
    out = _parts_folder(tmp_path)
    summary, curves = mtjax.merge_parts(out)
    assert summary["run"].tolist() == [0, 0, 1, 1, 2, 2] and (summary["final_loss"] >= 0).all()
    assert len(curves) == 3 * 2 * 4 and (curves["test_loss"] >= 0).all()
    assert not curves.duplicated(["run", "task", "step"]).any()
    pd.testing.assert_frame_equal(pd.read_parquet(out / "summary.parquet"), summary)


def test_curves_csv_only_below_the_threshold(tmp_path):
    out = _parts_folder(tmp_path)  # 24 curve rows
    assert _store.CSV_MAX_ROWS >= 1_000_000
    mtjax.merge_parts(out)
    assert (out / "curves.csv").exists()
    mtjax.merge_parts(out, csv_max_rows=24)
    assert (out / "curves.csv").exists()
    mtjax.merge_parts(out, csv_max_rows=23)
    assert not (out / "curves.csv").exists()  # a stale one is removed too
    assert (out / "curves.parquet").exists() and (out / "summary.csv").exists() and (out / "summary.parquet").exists()
    assert len(pd.read_parquet(out / "curves.parquet")) == 24
    with pytest.raises(ValueError, match=r"csv_max_rows=-1 must be an integer >= 0"):
        mtjax.merge_parts(out, csv_max_rows=-1)


def test_load_sweep_reads_parquet_then_csv_then_parts(swept, tmp_path):
    d = _copy(swept, tmp_path)
    res = mtjax.load_sweep(d)
    pd.testing.assert_frame_equal(res.summary, swept.summary)
    pd.testing.assert_frame_equal(res.curves, swept.curves)
    assert res.complete and res.grid == GRID and res.out_dir == d
    (d / "summary.parquet").unlink()
    (d / "curves.parquet").unlink()
    res = mtjax.load_sweep(d)
    assert res.curves["test_loss"].dtype == np.float64  # read from CSV
    pd.testing.assert_frame_equal(res.summary, swept.summary, check_dtype=False)
    pd.testing.assert_frame_equal(res.curves, swept.curves, check_dtype=False)
    for f in ("summary.csv", "curves.csv"):
        (d / f).unlink()
    (d / "parts" / "part-0000001-1.summary.parquet").unlink()
    res = mtjax.load_sweep(d)
    assert not res.complete and res.summary["run"].unique().tolist() == [0] and res.curves["run"].unique().tolist() == [0]
    with pytest.raises(ValueError, match="has no summary.parquet, summary.csv or parts/"):
        mtjax.load_sweep(tmp_path / "nothing")


def _synthetic_result(single_task=True):
    """A sweep table over relatedness x s_b x seed x single_task, with made-up metrics."""
    grid = {"relatedness": [0.0, 0.5], "s_b": [1.0, 2.0, 3.0], "seed": [0, 1]}
    if single_task:
        grid["single_task"] = [True, False]
    runs = mtjax.expand_grid(grid)
    rows = []
    for r in runs.itertuples(index=False):
        for task in (1,) if getattr(r, "single_task", False) else (1, 2):
            for step in (0, 10, 20):
                rows.append({**r._asdict(), "task": task, "step": step, "time": 0.1 * step, "lr": 0.1,
                             "test_loss": r.run + 0.01 * step + 0.5 * task, "diverged": False, "source": "simulation"})  # fmt: skip
    curves = pd.DataFrame(rows)
    summary = curves[curves.step == 20].drop(columns=["step", "time"]).rename(columns={"test_loss": "final_loss"})
    return mtjax.SweepResult(curves, summary.reset_index(drop=True), None, grid=grid)


def test_to_xarray_dims_and_values_match_the_table():
    res = _synthetic_result()
    ds = res.to_xarray("curves")
    assert list(ds.sizes.items()) == [("relatedness", 2), ("s_b", 3), ("seed", 2), ("single_task", 2), ("task", 2), ("step", 3)]
    assert set(ds.data_vars) == {"test_loss", "diverged"} and ds.attrs["source"] == "simulation" and ds.attrs["lr"] == 0.1
    np.testing.assert_allclose(ds["time"], [0.0, 1.0, 2.0])
    for row in res.curves.itertuples(index=False):
        at = dict(seed=row.seed, single_task=row.single_task, task=row.task, step=row.step)
        if not row.single_task:  # single-task rows are checked below, along the task-2 axes
            at.update(relatedness=row.relatedness, s_b=row.s_b)
            assert ds["test_loss"].sel(at).item() == row.test_loss
            assert ds["run"].sel({k: at[k] for k in ("relatedness", "s_b", "seed", "single_task")}).item() == row.run
    # Every grid point with a row holds it, and the rest is NaN: task 2 of single-task runs.
    assert int(ds["test_loss"].notnull().sum()) == 2 * 3 * 2 * 3 * (2 + 1)
    assert ds["test_loss"].sel(single_task=True, task=2).isnull().all()


def test_to_xarray_repeats_single_task_runs_along_task2_axes():
    res = _synthetic_result()
    ds = res.to_xarray("summary")
    assert "step" not in ds.dims and set(ds.data_vars) == {"final_loss", "diverged"}
    single = res.summary[res.summary.single_task]
    for row in single.itertuples(index=False):
        # relatedness and s_b are NaN in the table: the run fills every (relatedness, s_b).
        v = ds["final_loss"].sel(seed=row.seed, single_task=True, task=1)
        assert v.shape == (2, 3) and (v == row.final_loss).all()
    benefit = ds["final_loss"].sel(single_task=True, task=1) - ds["final_loss"].sel(single_task=False, task=1)
    assert benefit.notnull().all() and benefit.dims == ("relatedness", "s_b", "seed")


def test_to_xarray_without_a_grid_uses_the_varying_parameters():
    res = _synthetic_result(single_task=False)
    a = res.to_xarray("summary")
    res.grid = None
    b = res.to_xarray("summary", metrics=["final_loss"])
    assert list(b.dims) == list(a.dims) == ["relatedness", "s_b", "seed", "task"]
    np.testing.assert_array_equal(a["final_loss"], b["final_loss"])
    assert list(b.data_vars) == ["final_loss"]


def test_to_xarray_rejects_duplicates_and_bad_arguments():
    res = _synthetic_result(single_task=False)
    twice = mtjax.SweepResult(pd.concat([res.curves, res.curves]), res.summary, None, grid=res.grid)
    with pytest.raises(ValueError, match="several rows at one point"):
        twice.to_xarray()
    with pytest.raises(ValueError, match=r"table='runs' is not one of \['curves', 'summary'\]"):
        res.to_xarray("runs")
    with pytest.raises(ValueError, match=r"\['loss'\] are not metric columns"):
        res.to_xarray("summary", metrics=["loss"])
    with pytest.raises(ValueError, match="kept no curves"):
        mtjax.SweepResult(None, res.summary, None).to_xarray("curves")


def test_to_xarray_of_a_real_sweep(swept):
    ds = swept.to_xarray("summary")
    assert list(ds.dims) == ["s_b", "task"] and list(ds["s_b"].values) == GRID["s_b"]
    for row in swept.summary.itertuples(index=False):
        assert ds["final_loss"].sel(s_b=row.s_b, task=row.task).item() == pytest.approx(row.final_loss)
    c = mtjax.load_sweep(swept.out_dir).to_xarray("curves", metrics=["test_loss"])
    assert c["test_loss"].dtype == np.float32 and c.sizes["step"] == swept.curves["step"].nunique()
