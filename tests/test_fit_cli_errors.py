"""Bad input to `mtjax fit` and `mtjax design`: one line, a non-zero exit, nothing written.

Every case is refused before any theory solve, so the file runs in seconds. The inputs live in
a separate folder; the command runs in an empty `tmp_path` with `--output fit.csv` (fit), so
anything it wrote would be seen there."""

import json
import os
import sys

import numpy as np
import pandas as pd
import pytest

from mtjax.cli import main

CONFIG = """\
[teacher]
n_features = 12
rank = 2
n_classes = 2
scale = [1.0, 1.0]
noise = 1.0

[student]
depth = 1
width = 4

[train]
protocol = "online"
n_steps = 200
eval_every = 100
learning_rate = 0.01
batch_size = 16
n_test = 64
"""


def _table(**cols) -> pd.DataFrame:
    """Two times x two tasks; `cols` override or add columns (lists of 4)."""
    d = pd.DataFrame({"time": [1.0, 2.0, 1.0, 2.0], "task": [1, 1, 2, 2], "test_loss": [0.7, 0.6, 0.69, 0.65],
                      "se": [0.01] * 4})
    for k, v in cols.items():
        d[k] = v
    return d


NAN = float("nan")
TABLES = {
    "ok": _table(),
    "nan_loss": _table(test_loss=[0.7, NAN, 0.69, NAN]),
    "inf_loss": _table(test_loss=[0.7, np.inf, 0.69, 0.65]),
    "nan_loss_not_diverged": _table(test_loss=[0.7, NAN, 0.69, 0.65], diverged=[False] * 4),
    "nan_time": _table(time=[1.0, NAN, 1.0, 2.0]),
    "neg_time": _table(time=[-1.0, 2.0, 1.0, 2.0]),
    "text_loss": _table(test_loss=["0.7", "x", "0.69", "0.65"]),
    "mixed_r": _table(relatedness=[0.0, 0.0, 1.0, 1.0]),
    "mixed_width": _table(width=[4, 4, 8, 8]),
    "other_width": _table(width=[8] * 4),
    "two_sources": _table(source=["simulation", "simulation", "theory", "theory"]),
    "se_zero": _table(se=[0.01, 0.0, 0.01, 0.01]),
    "task_3": _table(task=[1, 1, 3, 3]),
    "task_0": _table(task=[0, 0, 1, 1]),
    "known_nan": _table(s_a=[1.0, NAN, 1.0, 1.0]),
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    (d / "cfg.toml").write_text(CONFIG)
    (d / "grid.toml").write_text(CONFIG + "\n[grid]\nrelatedness = [0.0, 1.0]\n")
    (d / "empty.csv").write_text("")
    for name, tab in TABLES.items():
        tab.to_csv(d / f"{name}.csv", index=False)
    sweep = d / "sweep"
    sweep.mkdir()
    TABLES["ok"].to_csv(sweep / "curves.csv", index=False)
    (sweep / "manifest.json").write_text(json.dumps({"name": "sweep", "n_runs": 1}))  # no spec
    return d


FIT = ["--config", "{in}/cfg.toml", "--free", "relatedness"]
CASES = [
    # (argv, expected substring of the one-line message)
    (["fit", "{in}/ok.csv", "--free", "relatedness"], "--config FILE.toml"),
    (["fit", "{in}/missing.csv", *FIT], "missing.csv: no such file"),
    (["fit", "{in}/ok.csv", "--config", "{in}/nope.toml", "--free", "relatedness"], "--config {in}/nope.toml: no such file"),
    (["fit", "{in}/empty.csv", *FIT], "not a readable CSV"),
    (["fit", "{in}/sweep/curves.csv", "--free", "relatedness"], "manifest.json has no experiment spec"),
    (["fit", "{in}/nan_loss.csv", *FIT], "column 'test_loss' has 2 of 4 rows with a non-finite value"),
    (["fit", "{in}/nan_loss.csv", *FIT], "--query 'test_loss == test_loss'"),
    (["fit", "{in}/inf_loss.csv", *FIT], "--query 'abs(test_loss) < 1e308'"),
    (["fit", "{in}/nan_loss_not_diverged.csv", *FIT], "not flagged in column 'diverged'"),
    (["fit", "{in}/nan_time.csv", *FIT], "column 'time' has 1 of 4 rows with a non-finite value"),
    (["fit", "{in}/neg_time.csv", *FIT], "column 'time' has 1 of 4 rows with a negative time"),
    (["fit", "{in}/text_loss.csv", *FIT], "column 'test_loss' must be numeric, but holds 'x'"),
    (["fit", "{in}/mixed_r.csv", *FIT], "column 'relatedness' takes 2 values (0, 1)"),
    (["fit", "{in}/mixed_r.csv", *FIT], "--by relatedness=relatedness"),
    (["fit", "{in}/mixed_r.csv", "--config", "{in}/cfg.toml", "--free", "s_a", "--known"], "'relatedness' takes 2 values"),
    (["fit", "{in}/mixed_width.csv", *FIT], "column 'width' takes 2 values (4, 8)"),
    (["fit", "{in}/other_width.csv", *FIT], "student.width is 4"),
    (["fit", "{in}/two_sources.csv", *FIT], "select one with --source"),
    (["fit", "{in}/ok.csv", *FIT, "--source", "theory"], "no 'source' column"),
    (["fit", "{in}/two_sources.csv", *FIT, "--source", "sim"], "--source sim: no such rows"),
    (["fit", "{in}/ok.csv", *FIT, "--query", "time >"], "is not a valid row selection"),
    (["fit", "{in}/ok.csv", *FIT, "--query", "nope > 1"], "is not a valid row selection"),
    (["fit", "{in}/ok.csv", *FIT, "--query", "time > 100"], "selects no rows"),
    (["fit", "{in}/se_zero.csv", *FIT, "--se", "se"], "column 'se' has 1 of 4 rows that are not a finite standard error"),
    (["fit", "{in}/ok.csv", *FIT, "--se", "stderr"], "column 'stderr' is not in the table"),
    (["fit", "{in}/task_3.csv", *FIT], "task 3, but the experiment has 2 tasks"),
    (["fit", "{in}/task_0.csv", *FIT], "column 'task' must hold 1-based task numbers"),
    (["fit", "{in}/known_nan.csv", *FIT], "known column 's_a' is NaN in 1 of 4 rows"),
    (["fit", "{in}/ok.csv", *FIT, "--known", "s_a"], "column 's_a' is not in the table"),
    (["fit", "{in}/ok.csv", *FIT, "--known", "width"], "known column 'width' is not a theory parameter"),
    (["fit", "{in}/ok.csv", *FIT, "--init", "s_b=1"], "--init s_b=1: s_b is not among --free"),
    (["fit", "{in}/ok.csv", *FIT, "--init", "relatedness=abc"], "the value must be a number"),
    (["fit", "{in}/ok.csv", *FIT, "--by", "s_a=task"], "--by s_a=task: s_a is not among --free"),
    (["fit", "{in}/ok.csv", *FIT, "--by", "relatedness=ntrain"], "column 'ntrain' is not in the table"),
    (["fit", "{in}/ok.csv", *FIT, "--starts", "0"], "n_starts=0 must be an integer >= 1"),
    (["fit", "{in}/ok.csv", *FIT, "--adam-steps", "-1"], "n_adam=-1 must be an integer >= 0"),
    (["fit", "{in}/ok.csv", *FIT, "--theory-replicates", "1"], "theory_replicates=1 must be 0"),
    (["fit", "{in}/ok.csv", *FIT, "--theory-replicates", "4"], "has no Monte Carlo draws"),
    (["fit", "{in}/ok.csv", "--config", "{in}/cfg.toml", "--free", "width"], "Param name='width' is not fittable"),
    (["fit", "{in}/ok.csv", *FIT, "--set", "teacher.colour=1"], "colour"),
    (["fit", "{in}/ok.csv", *FIT, "--output", "no/such/folder/fit.csv"], "--output no/such/folder/fit.csv: its folder"),
    (["design", "w2"], "--config FILE.toml"),
    (["design", "w2", "--config", "{in}/grid.toml"], "design evaluates one experiment, but the config has a [grid] table"),
    (["design", "w2", "--config", "{in}/cfg.toml", "--grid", "s_b=1,2"], "design evaluates one experiment, but --grid"),
    (["design", "w2", "--config", "{in}/cfg.toml", "--w-min", "0"], "bounds=(0.0, 10.0) must satisfy 0 < lo < hi"),
    (["design", "w2", "--config", "{in}/cfg.toml", "--w-min", "20"], "bounds=(20.0, 10.0)"),
    (["design", "aux", "--config", "{in}/cfg.toml"], "needs a multitask experiment on training sets"),
    (["design", "aux", "--preset", "paper", "--max-multiple", "1"], "max_multiple=1 must be an integer >= 2"),
    (["design", "stop", "--config", "{in}/cfg.toml", "--t-max", "-1"], "t_max=-1.0 must be finite and > 0"),
]


@pytest.mark.parametrize("argv, expected", CASES, ids=[f"{c[0][0]}-{i}" for i, c in enumerate(CASES)])
def test_bad_input_is_one_line_and_writes_nothing(argv, expected, inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MTJAX_CACHE_DIR", os.environ.get("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "never")))
    argv = [a.replace("{in}", str(inputs)) for a in argv]
    if argv[0] == "fit" and "--output" not in argv:
        argv += ["--output", "fit.csv"]
    with pytest.raises(SystemExit) as e:
        main(argv)
    msg = e.value.code
    assert isinstance(msg, str) and msg.startswith(f"mtjax {argv[0]}: error: "), msg  # non-zero exit with a message
    assert "\n" not in msg and expected.replace("{in}", str(inputs)) in msg, msg
    assert "Traceback" not in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# --- what the CLI prints on the way (the fit and the design themselves are stubbed out) ----


class _Reached(Exception):
    pass


def test_fit_uses_the_manifest_next_to_the_table_and_says_so(tmp_path, monkeypatch, capsys):
    import mtjax

    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    sweep = tmp_path / "results" / "NAME"
    sweep.mkdir(parents=True)
    TABLES["ok"].to_csv(sweep / "curves.csv", index=False)
    spec = tomllib.loads(CONFIG)
    (sweep / "manifest.json").write_text(json.dumps({"name": "NAME", "spec": {**spec, "grid": {"s_b": [1.0]}}}))
    seen = {}

    def fake_fit_table(exp, table, params, **kw):
        seen["exp"], seen["progress"] = exp, kw["progress"]
        raise _Reached

    monkeypatch.setattr(mtjax, "fit_table", fake_fit_table)
    with pytest.raises(_Reached):
        main(["fit", str(sweep / "curves.csv"), "--free", "relatedness", "--set", "student.width=5"])
    out = capsys.readouterr().out.splitlines()
    assert out == [f"experiment: the spec recorded in {sweep / 'manifest.json'} (no --config or --preset given)"]
    assert seen["exp"].teacher.n_features == 12 and seen["exp"].student.width == 5 and seen["progress"] is True
    with pytest.raises(_Reached):  # an explicit --config wins, silently
        (tmp_path / "other.toml").write_text(CONFIG.replace("n_features = 12", "n_features = 16"))
        main(["fit", str(sweep / "curves.csv"), "--free", "relatedness", "--config", str(tmp_path / "other.toml"), "--quiet"])
    assert capsys.readouterr().out == "" and seen["exp"].teacher.n_features == 16 and seen["progress"] is False


def test_fit_drops_diverged_rows_with_a_one_line_warning(tmp_path, monkeypatch, capsys):
    import mtjax._fitting.fits

    path = tmp_path / "curves.csv"
    _table(test_loss=[0.7, NAN, 0.69, 0.65], diverged=[False, True, False, False]).to_csv(path, index=False)
    seen = {}

    def fake_make_problem(experiment, obs, params, **kw):
        seen["n"] = obs.value.shape[0]
        raise _Reached

    monkeypatch.setattr(mtjax._fitting.fits, "make_problem", fake_make_problem)
    (tmp_path / "cfg.toml").write_text(CONFIG)
    with pytest.raises(_Reached):
        main(["fit", str(path), "--config", str(tmp_path / "cfg.toml"), "--free", "relatedness"])
    err = capsys.readouterr().err.splitlines()
    assert err == ["mtjax fit: warning: dropped 1 of 4 rows with a non-finite 'test_loss' (their runs are flagged in column "
                   "'diverged')"]
    assert seen["n"] == 3


def test_fit_without_a_finite_objective_fails_and_writes_nothing(tmp_path, monkeypatch):
    import types

    import mtjax

    (tmp_path / "cfg.toml").write_text(CONFIG)
    TABLES["ok"].to_csv(tmp_path / "ok.csv", index=False)
    monkeypatch.setattr(mtjax, "fit_table", lambda *a, **k: (types.SimpleNamespace(loss=np.inf), None))
    with pytest.raises(SystemExit) as e:
        main(["fit", str(tmp_path / "ok.csv"), "--config", str(tmp_path / "cfg.toml"), "--free", "relatedness",
              "--output", str(tmp_path / "fit.csv")])
    assert "no start reached a finite objective" in e.value.code and "\n" not in e.value.code
    assert not (tmp_path / "fit.csv").exists()


@pytest.mark.parametrize("value, flag", [(10.0, "[on the bound w_max = 10: widen --w-max]"),
                                         (1e-3, "[on the bound w_min = 0.001: widen --w-min]"), (0.5, None)])
def test_design_flags_an_optimum_on_the_bound(value, flag, tmp_path, monkeypatch, capsys):
    import jax.numpy as jnp

    import mtjax

    grid = jnp.asarray([1e-3, 0.1, 0.5, 10.0])

    def fake(exp, seeds, *, bounds, model, progress):
        assert bounds == (1e-3, 10.0) and progress is True
        return mtjax.DesignResult(value=jnp.asarray(value), loss=jnp.asarray(0.5), baseline_value=jnp.asarray(1.0),
                                  baseline_loss=jnp.asarray(0.6), grid=grid, grid_loss=jnp.full(4, 0.55),
                                  grid_slope=jnp.zeros(4), on_bound=jnp.asarray(flag is not None))

    monkeypatch.setattr(mtjax, "optimal_task_weight", fake)
    (tmp_path / "cfg.toml").write_text(CONFIG)
    main(["design", "w2", "--config", str(tmp_path / "cfg.toml")])
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(f"optimal w_2 = {value:.4g}: ")
    assert (first.endswith("  " + flag) if flag else "on the bound" not in first), first
