"""What a new user meets first: theory next to simulation, grids of one run, the values they gave
stored as given, simulation and theory folders side by side, Ctrl-C, tables grouped right."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pytest

import mtjax
from mtjax import cli

CONFIG = """
name = "tiny"
[teacher]
n_features = 20
rank = 2
n_classes = 2
scale = [3.0, 3.0]
[student]
depth = 1
width = 4
bias_init = "zeros"
[train]
protocol = "full_batch"
n_train = [32, 32]
n_test = 128
n_steps = 20
eval_every = 10
learning_rate = 0.1
[grid]
relatedness = [0.0, 1.0]
w_b = [0.0, 1.0]
"""

PAPER_TINY = {"preset": "paper", "teacher": {"n_features": 20, "rank": 2, "n_classes": 2},
              "student": {"width": 4}, "train": {"n_epochs": 2, "n_train": [32, 32], "n_pool": [32, 32], "n_test": 32}}


@pytest.mark.parametrize("grid", [{"seed": [0]}, {"depth": [1, 2]}])
def test_grid_of_one_run_per_group(grid):
    """A compiled group with one run and no vmapped axis (nothing varies but a shared seed):
    one group, or several static groups (ntrain, depth, ... alike) of one run each."""
    res = mtjax.sweep(PAPER_TINY, grid, out_dir=None, progress=False)
    n = {"depth": 2}.get(next(iter(grid)), 1)
    assert res.summary["run"].nunique() == n
    assert np.isfinite(res.summary["final_loss"]).all()


def test_stored_values_are_the_ones_given():
    spec = {**PAPER_TINY, "train": {**PAPER_TINY["train"], "learning_rate": 0.01},
            "teacher": {**PAPER_TINY["teacher"], "scale": [0.3, 0.7], "noise": 0.1}}
    res = mtjax.sweep(spec, {"s_b": [0.1, 0.2]}, out_dir=None, progress=False)
    s = res.summary
    assert len(s.query("lr == 0.01")) == len(s)
    assert len(s.query("s_a == 0.3")) == len(s)
    assert len(s.query("sigma_a == 0.1")) == len(s)
    assert sorted(s["s_b"].unique()) == [0.1, 0.2]


def test_simulation_and_theory_of_one_config_do_not_collide(tmp_path, capsys):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(CONFIG)
    for cmd in (["simulate"], ["theory", "--n-quad", "256", "--n-quad-eval", "512"]):
        cli.main([*cmd, "--config", str(cfg), "--out", str(tmp_path), "--quiet"])
    assert json.loads((tmp_path / "tiny" / "manifest.json").read_text())["source"] == "simulation"
    assert json.loads((tmp_path / "tiny-population" / "manifest.json").read_text())["source"] == "theory"
    # Rerunning either resumes its own folder.
    cli.main(["simulate", "--config", str(cfg), "--out", str(tmp_path), "--quiet"])


def test_compare_joins_simulation_and_both_theories(tmp_path, capsys):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(CONFIG)
    cli.main(["compare", "--config", str(cfg), "--out", str(tmp_path), "--quiet", "--n-grid", "10", "--n-draws", "128",
              "--n-quad", "256", "--n-quad-eval", "512"])
    out = capsys.readouterr().out
    d = tmp_path / "tiny"
    for f in ("summary.csv", "curves.csv", "benefit.csv", "comparison.png"):
        assert (d / f).exists(), f
    for m in ("simulation", "finite-data", "population"):
        assert (d / m / "manifest.json").exists()
    curves = pd.read_csv(d / "curves.csv")
    assert set(curves["model"]) == {"simulation", "finite-data", "population"}
    # Every model reports at the same times, so the curves join point by point.
    times = curves.groupby("model")["time"].apply(lambda t: tuple(sorted(set(t))))
    assert times.nunique() == 1
    benefit = pd.read_csv(d / "benefit.csv")
    assert set(benefit["model"]) == {"simulation", "finite-data", "population"}
    assert "finite-data" in out and "population" in out


def test_printed_benefit_groups_by_every_swept_axis(tmp_path, capsys):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(CONFIG.replace("w_b = [0.0, 1.0]", "single_task = [true, false]"))
    cli.main(["simulate", "--config", str(cfg), "--out", str(tmp_path), "--quiet", "--grid", "lr=0.05,0.1"])
    out = capsys.readouterr().out
    table = out.split("mean over seeds:")[1].split("wrote")[0].strip().splitlines()
    header = table[0].split()
    assert "lr" in header and "relatedness" in header
    assert len(table) == 1 + 2 * 2  # (r, lr) pairs, not averaged over lr


def test_ctrl_c_says_how_to_resume(tmp_path):
    cfg = tmp_path / "tiny.toml"
    # Runs of ~5 s each (4 runs): with the programs in the persistent compilation cache, 4000 steps
    # ran all four runs in 3 s, before the interrupt 1 s after the manifest.
    cfg.write_text(CONFIG.replace("n_steps = 20", "n_steps = 40000").replace("eval_every = 10", "eval_every = 40000"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # A shell's background job inherits SIGINT ignored, and Python then keeps it ignored: the CLI
    # is started with Python's own Ctrl-C handler installed, as a terminal's Ctrl-C meets it
    # (not by preexec_fn, which forks a process that has JAX's threads).
    boot = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "sys.argv[0] = 'mtjax'; runpy.run_module('mtjax.cli', run_name='__main__', alter_sys=True)")
    proc = subprocess.Popen([sys.executable, "-c", boot, "simulate", "--config", str(cfg), "--out", str(tmp_path),
                             "--max-chunk", "1"], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / "tiny" / "manifest.json").exists():
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "interrupted: rerun the same command to resume" in err


def test_a_swallowed_ctrl_c_is_raised_again():
    """A KeyboardInterrupt that lands where Python only prints it as "ignored" (a gc callback,
    a `__del__`) must not let the command run on: `_persistent_ctrl_c` raises it again."""
    from mtjax.cli import _persistent_ctrl_c

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers need the main thread")
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        t0 = time.time()
        with pytest.raises(KeyboardInterrupt):
            with _persistent_ctrl_c():
                try:  # the first Ctrl-C, swallowed as in a gc callback
                    signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
                except KeyboardInterrupt:
                    pass
                while time.time() - t0 < 10:
                    time.sleep(0.01)
        assert time.time() - t0 < 2
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored, timer off
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    finally:
        signal.signal(signal.SIGINT, before)


def test_ctrl_c_caught_in_a_gc_callback_prints_no_traceback():
    # Ctrl-C that lands in a garbage-collection callback (JAX registers one) is "ignored" by
    # Python with a printed traceback; the CLI's handler raises it again by timer, and the
    # ignored one must not print (tests/test_new_user.py::test_ctrl_c_says_how_to_resume met
    # the traceback when the signal hit JAX's callback).
    code = ("import gc, signal, sys\n"
            "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
            "from mtjax.cli import _persistent_ctrl_c\n"
            "def cb(phase, info):\n    raise KeyboardInterrupt\n"
            "gc.callbacks.append(cb)\n"
            "if sys.argv[1] == 'cli':\n"
            "    with _persistent_ctrl_c():\n        gc.collect()\n"
            "else:\n    gc.collect()\n"
            "gc.callbacks.remove(cb)\n")
    plain = subprocess.run([sys.executable, "-c", code, "plain"], capture_output=True, text=True, timeout=120)
    cli = subprocess.run([sys.executable, "-c", code, "cli"], capture_output=True, text=True, timeout=120)
    assert "Traceback" in plain.stderr and "KeyboardInterrupt" in plain.stderr, plain.stderr
    assert cli.returncode == 0 and "Traceback" not in cli.stderr and "KeyboardInterrupt" not in cli.stderr, cli.stderr
