"""Sweeps sharded over devices and split over processes: same table as one device, and a
multi-process sweep killed midway resumes to a complete, duplicate-free table.

The device count of a JAX process is fixed when its backend starts, and this test session
runs on one CPU device, so the sharded sweeps run in subprocesses with
`--xla_force_host_platform_device_count` (4 devices for sharding; 2 processes x 2 devices
for the multi-process test, which goes through `jax.distributed` on loopback and the CLI).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mtjax
from mtjax import _distributed
from helpers import tiny_spec

TESTS = Path(__file__).parent
ROOT = TESTS.parent
# 10 runs: not a multiple of 4 devices (nor of the 2 x 2 devices of the multi-process test).
GRID = {"s_b": [0.5, 1.0, 2.0, 3.0, 4.0], "seed": [0, 1]}
# More epochs than `tiny_spec` so that a chunk takes long enough for a kill to land midway;
# compile time, the bulk of these tests, does not grow with epochs (lax.scan).
TRAIN = {"n_epochs": 200, "eval_every": 50}
THEORY_SPEC = {
    "teacher": {"n_features": 20, "rank": 3, "n_classes": 3, "scale": [3.0, 3.0]},
    "student": {"depth": 1, "width": 8},
    "train": {"protocol": "online", "n_steps": 40, "eval_every": 20, "learning_rate": 0.1, "n_test": 128},
}
THEORY_GRID = {"relatedness": [0.0, 0.25, 0.5, 0.75, 1.0], "s_b": [3.0]}  # 5 points


def _env(n_devices: int, level: int = 0) -> dict:
    env = os.environ.copy()
    # The suite's XLA flags (tests/conftest.py) but for `level`: the theory comparison below runs
    # at level 1, because at level 0 its sharded and one-device programs differed in the last
    # float32 bit (measured: 0.524502 vs 0.524503); the simulation programs agree bit for bit
    # at level 0, which compiles them about twice as fast.
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n_devices} --xla_backend_optimization_level={level} --xla_cpu_use_fusion_emitters=false"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS), env.get("PYTHONPATH", "")])
    return env


def _run_script(script: str, n_devices: int, timeout: float = 900, level: int = 0) -> None:
    r = subprocess.run([sys.executable, "-c", script], env=_env(n_devices, level), cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]


def _table(d: Path) -> pd.DataFrame:
    return pd.read_csv(d / "summary.csv").sort_values(["run", "task"], ignore_index=True)


# ------------------------------------------------------------------ pure helpers, in process


def test_chunk_is_a_multiple_of_the_devices():
    # per-device budget x devices, capped by max_chunk (never below one run per device) and
    # by the runs there are (rounded up to the devices; the padding is dropped).
    assert _distributed.chunk_size(5, 100, 4, None) == 20
    assert _distributed.chunk_size(5, 100, 4, 8) == 8
    assert _distributed.chunk_size(5, 100, 4, 3) == 4
    assert _distributed.chunk_size(5, 10, 4, None) == 12
    assert _distributed.chunk_size(0, 10, 1, None) == 1
    assert _distributed.chunk_size(7, 3, 1, None) == 3  # one device: the old rule


def test_process_slices_partition_the_runs():
    runs = np.arange(23)
    todo = runs % 5 != 0
    for P_ in (1, 2, 3, 7):
        static = sum(_distributed.process_runs(runs, i, P_).astype(int) for i in range(P_))
        shared = [_distributed.share_todo(todo, i, P_) for i in range(P_)]
        assert (static == 1).all()
        assert (sum(m.astype(int) for m in shared) == todo).all()
        assert max(m.sum() for m in shared) - min(m.sum() for m in shared) <= 1  # balanced
    with pytest.raises(ValueError, match="process_index=2"):
        _distributed.process_runs(runs, 2, 2)
    with pytest.raises(ValueError, match="devices=9"):
        _distributed.local_mesh(9)


def test_merge_drops_duplicate_runs(tmp_path):
    parts = tmp_path / "parts"
    parts.mkdir()
    row = dict(task=1, early_stopped_loss=1.0)
    pd.DataFrame([dict(run=0, **row), dict(run=1, **row)]).to_csv(parts / "part-0000000-2-p0.summary.csv", index=False)
    pd.DataFrame([dict(run=1, **row), dict(run=2, **row)]).to_csv(parts / "part-0000001-2-p1.summary.csv", index=False)
    summary, curves = mtjax.merge_parts(tmp_path)
    assert summary["run"].tolist() == [0, 1, 2] and curves is None
    assert pd.read_csv(tmp_path / "summary.csv")["run"].tolist() == [0, 1, 2]


def test_merge_command_reports_missing_runs(tmp_path, capsys):
    from mtjax.cli import main

    (tmp_path / "parts").mkdir()
    (tmp_path / "manifest.json").write_text(json.dumps({"n_runs": 3}))
    pd.DataFrame([dict(run=r, task=1) for r in (0, 2)]).to_csv(tmp_path / "parts" / "part-0000000-2-p0.summary.csv", index=False)
    main(["merge", str(tmp_path)])
    assert "2 of 3 runs (incomplete" in capsys.readouterr().out
    assert pd.read_csv(tmp_path / "summary.csv")["run"].tolist() == [0, 2]


def test_explicit_slices_merge_when_the_last_finishes(tmp_path):
    grid = {"s_b": [0.5, 3.0], "seed": [0, 1]}
    kw = dict(name="s", out_dir=tmp_path, progress=False, save_curves=False)
    a = mtjax.sweep(tiny_spec(), grid, process_index=1, process_count=2, **kw)
    assert not a.complete and sorted(a.summary["run"].unique()) == [1, 3]
    assert not (tmp_path / "s" / "summary.csv").exists()
    assert all(p.name.endswith("-p1.summary.parquet") for p in (tmp_path / "s" / "parts").iterdir())
    b = mtjax.sweep(tiny_spec(), grid, process_index=0, process_count=2, **kw)
    assert b.complete and sorted(_table(tmp_path / "s")["run"].unique()) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="always resume"):
        mtjax.sweep(tiny_spec(), grid, process_index=0, process_count=2, resume=False, **kw)


# ------------------------------------------------- sharded = unsharded, 4 forced CPU devices

SHARDED = textwrap.dedent(
    """
    import jax, mtjax
    from helpers import tiny_spec
    assert len(jax.local_devices()) == 4
    out, what = {out!r}, {what!r}
    if what == "simulation":
        spec, grid, kw = tiny_spec(**{train!r}), {grid!r}, {{}}
    else:
        spec, grid = {theory_spec!r}, {theory_grid!r}
        kw = dict(model=mtjax.PopulationTheory(mtjax.PopulationSolver(n_quad=512, n_quad_eval=1024)))
    # 4 devices x 2 runs each: 10 runs (5 theory points) give chunks with padding.
    mtjax.sweep(spec, grid, name="sharded", out_dir=out, progress=False, devices=4, max_chunk=8, **kw)
    # One device, 2 runs per program: the same per-device program as each shard above.
    mtjax.sweep(spec, grid, name="one", out_dir=out, progress=False, devices=1, max_chunk=2, **kw)
    if what == "simulation":
        # Paper seed scope, chunked per seed: the shared (scalar) seeds are replicated.
        import mtjax._sweep
        mtjax._sweep.SEED_BLOCK_MIN_RUNS = 2
        spec = dict(spec, seed_scope="train")
        mtjax.sweep(spec, grid, name="sharded-blocks", out_dir=out, progress=False, devices=4, max_chunk=8)
        mtjax.sweep(spec, grid, name="one-blocks", out_dir=out, progress=False, devices=1, max_chunk=2)
    """
)


@pytest.fixture(scope="module")
def sharded_simulation(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharded_sim")
    script = SHARDED.format(out=str(out), what="simulation", train=TRAIN, grid=GRID, theory_spec=None, theory_grid=None)
    _run_script(script, 4)
    return out


@pytest.mark.parametrize("what", ["simulation", "theory"])
def test_sharded_sweep_equals_one_device(what, sharded_simulation, tmp_path):
    if what == "simulation":
        out = sharded_simulation
    else:
        out = tmp_path
        _run_script(SHARDED.format(out=str(out), what=what, train=None, grid=None, theory_spec=THEORY_SPEC, theory_grid=THEORY_GRID), 4, level=1)
    sharded, one = _table(out / "sharded"), _table(out / "one")
    n = 10 if what == "simulation" else 5
    assert sorted(sharded["run"].unique()) == list(range(n)) and not sharded.duplicated(["run", "task"]).any()
    # Bit-for-bit: each device runs the same vmapped program on 2 runs as the one-device sweep
    # does (shard_map, no collectives). Against a one-device sweep with *other* chunk sizes
    # the tables agree only to float32 rounding (measured: 1.3e-7 nats), because XLA's CPU
    # code for a batch of runs depends on the batch size; the kill test below checks that.
    pd.testing.assert_frame_equal(sharded, one, check_exact=True)
    curves = [pd.read_csv(out / d / "curves.csv") for d in ("sharded", "one")]
    pd.testing.assert_frame_equal(*curves, check_exact=True)
    assert sharded["source"].eq(what).all()
    if what == "simulation":
        blocks, one_blocks = _table(out / "sharded-blocks"), _table(out / "one-blocks")
        assert sorted(blocks["run"].unique()) == list(range(n))
        # Each seed's block of 5 runs is one chunk of 8 on 4 devices: 2 runs per device with
        # the seeds replicated, the same per-device program as the one-device chunks of 2.
        pd.testing.assert_frame_equal(blocks, one_blocks, check_exact=True)


# ---------------------------------------- 2 processes with jax.distributed: kill, then resume

CONFIG = """
[teacher]
n_features = 20
rank = 3
n_classes = 3
scale = [3.0, 3.0]
noise = 0.1
[student]
depth = 2
width = 8
[train]
protocol = "paper"
n_train = [32, 32]
n_test = 256
batch_size = 16
n_epochs = {n_epochs}
n_steps = 60
eval_every = {eval_every}
learning_rate = 0.05
[grid]
s_b = {s_b}
seed = {seed}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_processes(cfg: Path, out: Path, phase: int) -> list[subprocess.Popen]:
    port = _free_port()
    env = _env(2)
    env["MTJAX_CACHE_DIR"] = str(out / "xla-cache")  # the second phase reuses the compilations
    procs = []
    for i in range(2):
        cmd = [sys.executable, "-m", "mtjax.cli", "simulate", "--config", str(cfg), "--out", str(out), "--name", "d",
               "--quiet", "--max-chunk", "2", "--devices", "2",
               "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)]  # fmt: skip
        with open(out / f"log-{phase}-{i}.txt", "w") as log:  # the child keeps its own handle
            procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
    return procs


def _wait_for(cond, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not cond():
        time.sleep(0.02)


def _stop(procs, timeout: float) -> list[int]:
    deadline = time.time() + timeout
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return [p.returncode for p in procs]


def test_multiprocess_sweep_killed_midway_resumes_complete(sharded_simulation, tmp_path):
    cfg = tmp_path / "d.toml"
    cfg.write_text(CONFIG.format(**TRAIN, **{k: json.dumps(v) for k, v in GRID.items()}))
    parts = tmp_path / "d" / "parts"
    procs = _start_processes(cfg, tmp_path, phase=1)
    try:
        _wait_for(lambda: parts.exists() and any(parts.glob("*-p1.summary.parquet")), procs[1], 180)
        procs[1].send_signal(signal.SIGKILL)
        # Process 0 sweeps on; then, at exit, it waits at JAX's shutdown barrier for the dead
        # process until the coordination service declares it dead (heartbeat timeout, 100 s)
        # and aborts it. Its results are on disk once it says so: end it there.
        log0 = tmp_path / "log-1-0.txt"
        _wait_for(lambda: "finished its slice" in log0.read_text(), procs[0], 120)
    finally:
        rc = _stop(procs, 1)
    assert rc[1] == -signal.SIGKILL
    done_p1 = list(parts.glob("*-p1.summary.parquet"))
    # Process 1 owns runs 1, 3, 5, 7, 9: three chunks of 2 runs on its 2 devices.
    assert 1 <= len(done_p1) < 3, "process 1 must be killed midway for this test to mean anything"
    done = mtjax._sweep._done_runs(tmp_path / "d")
    assert len(done) < 10 and not (tmp_path / "d" / "summary.csv").exists()

    # Resume: both processes again; they share what is missing evenly and the last to finish
    # merges the parts of every process into summary.csv.
    rc = _stop(_start_processes(cfg, tmp_path, phase=2), 240)
    logs = "\n".join(p.read_text()[-2000:] for p in sorted(tmp_path.glob("log-*.txt")))
    assert rc == [0, 0], logs
    s = _table(tmp_path / "d")
    assert sorted(s["run"].unique()) == list(range(10)) and len(s) == 20 and not s.duplicated(["run", "task"]).any()
    c = pd.read_csv(tmp_path / "d" / "curves.csv")
    assert not c.duplicated(["run", "task", "step"]).any() and c["run"].nunique() == 10
    # Same runs as the one-device sweep; chunking differs (1 run per device here, 2 there),
    # so agreement is to float32 rounding, not bitwise (see the sharded test above).
    ref = _table(sharded_simulation / "one")
    for col in ("early_stopped_loss", "final_loss", "final_acc"):
        np.testing.assert_allclose(s[col], ref[col], rtol=2e-6, atol=0)
    assert (s["early_stopped_step"] == ref["early_stopped_step"]).all()


def test_import_does_not_start_the_backend():
    # jax.distributed.initialize must run before JAX's backend starts; importing mtjax must
    # not start it (no arrays at import time, e.g. as default arguments).
    code = "import jax._src.xla_bridge as xb, mtjax, mtjax.cli; assert not xb._backends, 'backend started at import'"
    r = subprocess.run([sys.executable, "-c", code], env=_env(1), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
