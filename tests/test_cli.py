import subprocess
import sys

import pandas as pd

from mtjax.cli import main

CONFIG = """
name = "tiny"
[teacher]
n_features = 20
rank = 3
n_classes = 3
scale = [3.0, 3.0]
[student]
depth = 1
width = 8
[train]
protocol = "full_batch"
n_train = [32, 32]
n_test = 128
n_steps = 40
eval_every = 20
learning_rate = 0.1
[grid]
relatedness = [0.0, 1.0]
single_task = [true, false]
seed = [0, 1]
"""


def test_help_is_friendly():
    out = subprocess.run([sys.executable, "-m", "mtjax.cli", "--help"], capture_output=True, text=True, check=True).stdout
    for word in ("demo", "simulate", "plot", "multitask benefit"):
        assert word in out


def test_simulate_end_to_end(tmp_path, capsys):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(CONFIG)
    main(["simulate", "--config", str(cfg), "--out", str(tmp_path), "--quiet", "--grid", "s_b=0.5,3"])
    out = capsys.readouterr().out
    assert "multitask benefit" in out
    d = tmp_path / "tiny"
    for f in ("summary.csv", "curves.csv", "benefit.csv", "overview.png", "manifest.json"):
        assert (d / f).exists(), f
    s = pd.read_csv(d / "summary.csv")
    assert s["run"].nunique() == 2 + 2 * 2 * 2
    main(["plot", str(d), "--output", str(tmp_path / "fig.pdf")])
    assert (tmp_path / "fig.pdf").stat().st_size > 1000


def test_bad_input_is_a_clear_error(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(CONFIG.replace("rank = 3", "rank = 30"))
    try:
        main(["simulate", "--config", str(cfg), "--out", str(tmp_path), "--quiet"])
    except SystemExit as e:
        assert "rank" in str(e) and "allowed range" in str(e)
    else:
        raise AssertionError("expected an error")


def test_theory_end_to_end_same_tables(tmp_path):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(CONFIG.replace('protocol = "full_batch"', 'protocol = "online"').replace("seed = [0, 1]", "seed = [0]"))
    main(["theory", "--config", str(cfg), "--out", str(tmp_path), "--quiet", "--n-quad", "512", "--n-quad-eval", "1024", "--name", "th"])
    s = pd.read_csv(tmp_path / "th" / "summary.csv")
    assert set(s["source"]) == {"theory"} and not s["diverged"].any()
    c = pd.read_csv(tmp_path / "th" / "curves.csv")
    sim_cols = set(pd.read_csv(tmp_path / "th" / "summary.csv").columns)
    assert {"task", "step", "time", "test_loss", "test_acc", "source"} <= set(c.columns) and "early_stopped_loss" in sim_cols
    assert (tmp_path / "th" / "benefit.csv").exists()
