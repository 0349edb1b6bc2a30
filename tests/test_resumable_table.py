"""`mtjax.ResumableTable`: the resume-by-key store of scripts whose points do not fit a sweep."""

import numpy as np
import pandas as pd
import pytest

import mtjax


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_resume_by_key_and_settings(tmp_path, suffix):
    path = tmp_path / f"t{suffix}"
    t = mtjax.ResumableTable(path, key=["alpha", "s"], settings="a")
    t.add({"alpha": 0.5, "s": np.float64(3.0), "loss": np.float32(1.25), "ok": np.asarray(True)})
    t.add([{"alpha": 1.0, "s": 3.0, "loss": 2.0, "ok": False}, {"alpha": 0.5, "s": 3.0, "loss": 1.5, "ok": True}])  # replaces
    again = mtjax.ResumableTable(path, key=["alpha", "s"], settings="a")
    assert (0.5, 3.0) in again and (1.0, 3.0) in again and (2.0, 3.0) not in again
    assert len(again) == 2 and again.get((0.5, 3.0))["loss"] == 1.5
    # Another settings string sees nothing, and its rows do not drop the others'.
    other = mtjax.ResumableTable(path, key=["alpha", "s"], settings="b")
    assert len(other) == 0 and (0.5, 3.0) not in other
    other.add({"alpha": 0.5, "s": 3.0, "loss": 9.0, "ok": True})
    df = mtjax.load_table(path)
    assert sorted(df["settings"]) == ["a", "a", "b"]
    assert mtjax.ResumableTable(path, key=["alpha", "s"], settings="a").get((0.5, 3.0))["loss"] == 1.5


def test_merge_and_list_cells(tmp_path):
    a = mtjax.ResumableTable(tmp_path / "a.parquet", key=["k"], settings="x")
    a.add({"k": 1, "curve": np.arange(3, dtype=np.float32)})
    b = mtjax.ResumableTable(tmp_path / "b.parquet", key=["k"], settings="x")
    b.add([{"k": 1, "curve": np.zeros(3)}, {"k": 2, "curve": np.ones(3)}])
    assert a.merge(tmp_path / "b.parquet") == 1  # only the key it lacks
    a.save()
    back = mtjax.ResumableTable(tmp_path / "a.parquet", key=["k"], settings="x")
    np.testing.assert_array_equal(np.asarray(back.get((1,))["curve"]), [0, 1, 2])
    assert isinstance(back.rows, pd.DataFrame) and list(back.rows["k"]) == [1, 2]


def test_cell_statistics_matches_compare():
    authors = mtjax.authors_table("rank-10")
    stats = mtjax.cell_statistics(authors)
    single = stats[stats.single_task]
    assert len(single) == 36 and (single["authors_count"] == 5).all()
    multi = stats[~stats.single_task]
    assert len(multi) == 1080 and multi["authors_benefit"].notna().all()
    # The authors against themselves: every difference is 0.
    comp = mtjax.compare_with_authors(authors, authors)
    assert np.allclose(comp["diff"], 0) and np.allclose(comp["authors_mean"].sort_values(), stats["authors_mean"].sort_values())
