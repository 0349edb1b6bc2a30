import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mtjax
from helpers import replace, tiny_spec

GRID = {"relatedness": [0.0, 1.0], "s_b": [0.5, 3.0], "single_task": [True, False], "seed": [0, 1]}


@pytest.fixture(scope="module")
def swept():
    return mtjax.sweep(tiny_spec(), GRID, out_dir=None, progress=False)


def test_grid_expansion_dedupes_single_task():
    runs = mtjax.expand_grid(GRID)
    # 2 single-task runs (one per seed; r and s_b are irrelevant) + 2*2*2 multitask runs.
    assert len(runs) == 2 + 8
    assert runs.loc[runs.single_task, "relatedness"].isna().all()
    with pytest.raises(ValueError, match="unknown grid axis 'r'"):
        mtjax.expand_grid({"r": [0.0]})


def test_sweep_equals_direct_simulation(swept):
    s = swept.summary
    assert set(s["task"]) == {1, 2}
    assert len(s[s.task == 1]) == 10 and len(s[s.task == 2]) == 8
    row = s[(s.task == 1) & (s.relatedness == 1.0) & (s.s_b == 3.0) & (s.seed == 1)].iloc[0]
    e = mtjax.experiment_from_spec(tiny_spec())
    e = replace(e, lambda m: m.teacher.relatedness, [1.0])
    e = replace(e, lambda m: m.teacher.scale, [3.0, 3.0])
    h = mtjax.simulate(e, mtjax.Seeds.same(1))  # seed_scope "all": every seed from (seed, realisation=0)
    np.testing.assert_allclose(row["early_stopped_loss"], float(h.early_stopped_loss[0]), rtol=1e-5)
    c = swept.curves
    curve = c[(c.run == row["run"]) & (c.task == 1)].sort_values("step")
    np.testing.assert_allclose(curve["test_loss"], np.asarray(h.test_loss[:, 0]), rtol=1e-5)


def test_chunking_does_not_change_results(swept):
    again = mtjax.sweep(tiny_spec(), GRID, out_dir=None, progress=False, max_chunk=3, save_curves=False)
    a = swept.summary.sort_values(["run", "task"], ignore_index=True)
    b = again.summary.sort_values(["run", "task"], ignore_index=True)
    np.testing.assert_allclose(a["early_stopped_loss"], b["early_stopped_loss"], rtol=1e-5)


def test_benefit_pairs_with_matching_single_task_run():
    rows = []
    for seed in (0, 1):
        rows.append(dict(run=len(rows), task=1, single_task=True, seed=seed, s_a=1.0, relatedness=np.nan, s_b=np.nan, early_stopped_loss=2.0 + seed))
        for r, sb, loss in ((0.0, 1.0, 2.1), (1.0, 1.0, 1.7)):
            rows.append(dict(run=len(rows), task=1, single_task=False, seed=seed, s_a=1.0, relatedness=r, s_b=sb, early_stopped_loss=loss + seed))
    b = mtjax.multitask_benefit(pd.DataFrame(rows))
    assert len(b) == 4
    np.testing.assert_allclose(b.sort_values(["seed", "relatedness"])["benefit"], [-0.1, 0.3, -0.1, 0.3], atol=1e-12)


def test_benefit_pairs_with_the_zero_weight_run():
    # alone="w_b": the reference of (r, seed) is the w_b = 0 run at the same r and seed.
    rows = []
    for seed, r, wb, loss in ((0, 0.0, 0.0, 2.0), (0, 0.0, 1.0, 2.1), (0, 1.0, 0.0, 2.05), (0, 1.0, 1.0, 1.7),
                              (1, 0.0, 0.0, 3.0), (1, 0.0, 1.0, 3.2), (1, 1.0, 0.0, 3.0), (1, 1.0, 1.0, 2.5)):
        rows.append(dict(run=len(rows), task=1, single_task=False, seed=seed, relatedness=r, w_b=wb, early_stopped_loss=loss))
    b = mtjax.multitask_benefit(pd.DataFrame(rows), alone="w_b").sort_values(["seed", "relatedness"])
    np.testing.assert_allclose(b["benefit"], [-0.1, 0.35, -0.2, 0.5], atol=1e-12)
    with pytest.raises(ValueError, match="alone"):
        mtjax.multitask_benefit(pd.DataFrame(rows), alone="weights")


def test_benefit_of_real_sweep(swept):
    b = mtjax.multitask_benefit(swept.summary)
    assert len(b) == 8 and b["single_loss"].notna().all()
    s = swept.summary
    single = s[(s.task == 1) & s.single_task & (s.seed == 0)]["early_stopped_loss"].item()
    one = b[(b.seed == 0) & (b.relatedness == 0.0) & (b.s_b == 0.5)].iloc[0]
    assert one["benefit"] == pytest.approx(single - one["multi_loss"])


def test_results_written_and_fingerprint_checked(tmp_path):
    res = mtjax.sweep(tiny_spec(), {"s_b": [1.0], "seed": [0]}, name="one", out_dir=tmp_path, progress=False)
    out = tmp_path / "one"
    for f in ("manifest.json", "summary.csv", "curves.csv"):
        assert (out / f).exists()
    m = json.loads((out / "manifest.json").read_text())
    assert m["n_runs"] == 1 and m["spec"]["teacher"]["n_features"] == 20 and "mtjax_version" in m
    pd.testing.assert_frame_equal(pd.read_csv(out / "summary.csv"), res.summary, check_dtype=False)
    with pytest.raises(ValueError, match="different sweep"):
        mtjax.sweep(tiny_spec(), {"s_b": [2.0], "seed": [0]}, name="one", out_dir=tmp_path, progress=False)


SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    import mtjax
    from helpers import tiny_spec
    mtjax.sweep(tiny_spec(), {grid!r}, name="r", out_dir={out!r}, progress=False, max_chunk=1)
    """
)


def test_resume_after_kill(tmp_path):
    grid = {"s_b": [0.5, 1.0, 2.0, 3.0], "seed": [0, 1, 2, 3, 4]}
    n_runs = 20
    script = SCRIPT.format(tests=str(Path(__file__).parent), grid=grid, out=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", script], env=os.environ.copy())
    parts = tmp_path / "r" / "parts"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if parts.exists() and len(list(parts.glob("*.summary.parquet"))) >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_done = len(list(parts.glob("*.summary.parquet")))
    assert 2 <= n_done < n_runs, "the sweep must be interrupted midway for this test to mean anything"
    assert not (tmp_path / "r" / "summary.csv").exists()
    # Same chunking as the killed process: its compiled program comes from the shared on-disk
    # cache (tests/conftest.py) instead of two more compilations; that chunking does not change
    # results is test_chunking_does_not_change_results.
    res = mtjax.sweep(tiny_spec(), grid, name="r", out_dir=tmp_path, progress=False, max_chunk=1)
    s = res.summary
    assert len(s) == 2 * n_runs and not s.duplicated(["run", "task"]).any()
    assert sorted(s["run"].unique()) == list(range(n_runs))
    fresh = mtjax.sweep(tiny_spec(), grid, out_dir=None, progress=False, save_curves=False, max_chunk=1)
    np.testing.assert_allclose(
        s.sort_values(["run", "task"])["early_stopped_loss"].to_numpy(),
        fresh.summary.sort_values(["run", "task"])["early_stopped_loss"].to_numpy(),
        rtol=1e-5,
    )
    assert len(res.curves) == 2 * n_runs * tiny_spec()["train"]["n_epochs"] // 2 + 2 * n_runs


def test_seed_blocks_share_data_and_equal_direct_simulation(monkeypatch):
    # seed_scope "train" (the paper's): runs of one seed share inputs, training subset and
    # minibatch order, so the sweep chunks them per seed with the seeds unbatched (one large
    # matmul over the runs). That is a performance path only: numbers equal a run alone.
    import mtjax._model.simulation as model_sim
    import mtjax._sweep as sw

    flags = []
    real_simulate = model_sim.simulate

    def spy(*args, **kwargs):
        flags.append(kwargs.get("shared_subsets"))
        return real_simulate(*args, **kwargs)

    monkeypatch.setattr(sw, "SEED_BLOCK_MIN_RUNS", 2)
    monkeypatch.setattr(model_sim, "simulate", spy)
    spec = dict(tiny_spec(), seed_scope="train")
    grid = {"relatedness": [0.0, 1.0], "s_b": [0.5, 3.0], "seed": [0, 1]}
    s = mtjax.sweep(spec, grid, out_dir=None, progress=False, save_curves=False).summary
    assert flags and all(flags)
    e0 = mtjax.experiment_from_spec(tiny_spec())
    for r, sb, seed in [(1.0, 0.5, 1), (0.0, 3.0, 0)]:
        e = replace(e0, lambda m: m.teacher.relatedness, [r])
        e = replace(e, lambda m: m.teacher.scale, [3.0, sb])
        h = real_simulate(e, mtjax.Seeds(0, 0, 0, seed))
        got = s[(s.relatedness == r) & (s.s_b == sb) & (s.seed == seed)].sort_values("task")
        # float32 products summed in another order (one matmul over runs): agree to ~1e-6.
        np.testing.assert_allclose(got["early_stopped_loss"], np.asarray(h.early_stopped_loss), rtol=1e-5)
        np.testing.assert_allclose(got["final_loss"], np.asarray(h.final_loss), rtol=1e-5)
