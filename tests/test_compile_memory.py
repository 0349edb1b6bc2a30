"""Compiled theory programs: one per shape that matters, and their memory is released.

On the CPU backend every compiled XLA program keeps its code mapped (~3 memory mappings per
kernel) until it is released, and Linux allows 65,530 mappings per process: a process that
compiled a theory program per report-time grid or data size died after 15–50 solves with
`LLVM ERROR: Unable to allocate section memory` (docs/dmft.md §3.1)."""

import os

import jax
import numpy as np
import pytest

import mtjax
from mtjax import _dmft

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc/self/maps (Linux)")

SMALL = mtjax.FiniteDataSolver(n_grid=4, n_draws=32, n_response=32, n_quad_eval=256, max_iter=4)


def _maps() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


def _experiment(n_train: int, n_steps: int, lr: float):
    return mtjax.experiment_from_spec({
        "teacher": {"n_features": 30, "rank": 2, "n_classes": 2, "scale": 2.0, "noise": 0.3},
        "student": {"depth": 1, "width": 3, "bias_init": "zeros"},
        "train": {"protocol": "full_batch", "n_train": [n_train, n_train + 5], "n_test": 50, "n_steps": n_steps,
                  "eval_every": 1, "learning_rate": lr},
    })  # fmt: skip


def test_hundred_solves_with_distinct_report_times_and_data_sizes_keep_memory_bounded():
    # 100 solves, each with its own data sizes (static `n_train`) and report-time grid (4 to 103
    # evaluation times, or an explicit grid of 3 to 27 times): the solve compiles once, the
    # report step once per power of two of the number of times (8 ... 128: 5 programs).
    compiles = dict(_dmft._COMPILES)
    counts, grids = [], set()
    m0 = _maps()
    for i in range(100):
        e = _experiment(10 + i, 3 + i, (1.5 + 0.01 * i) / (3 + i))  # t_max = 1.5 ... 2.5
        ts = np.linspace(0.0, 1.5 + 0.01 * i, 3 + i // 4) if i % 4 == 3 else None  # numpy: no eager jnp op per shape
        th = mtjax.finite_data_theory(e, mtjax.Seeds(0), ts, solver=SMALL)
        loss = np.asarray(th.test_loss)
        grids.add(tuple(np.asarray(th.time)))
        assert np.all(np.isfinite(loss)) and not bool(th.diverged)
        counts.append(_maps())
    assert len(grids) == 100
    new = {k: v - compiles.get(k, 0) for k, v in _dmft._COMPILES.items()}
    assert new.get("_solve_grid", 0) <= 1 and new.get("_build_problem", 0) <= 1, new
    assert new.get("_report", 0) <= 5, new
    # Measured (tests' XLA flags, conftest.py): the first solve adds 777 mappings (its build,
    # solve and report programs: ~230 + ~470 + ~70); solves 11..100 add 228 (the report programs
    # for 32, 64 and 128 times).  Before, every solve compiled the whole theory again: +870
    # mappings a solve, and this loop died at solve 73 (64,057 mappings, "LLVM compilation
    # error: Cannot allocate memory").  Bound: half the first solve's increment, i.e. less than
    # one compiled solve program.
    first, growth = counts[0] - m0, counts[-1] - counts[9]
    assert growth < max(first, 600) / 2, (first, growth, counts[::10])


def test_evicted_programs_release_their_memory():
    # Programs beyond the cache bound are released (their memory mappings go), and
    # `release_compiled` drops all of them.
    e = _experiment(40, 6, 0.3)
    old = mtjax.set_compiled_cache_size(1)
    try:
        m0 = _maps()
        counts = []
        for n_draws in (32, 64, 96, 128, 160):  # a new solve program each (S is a shape that matters)
            solver = mtjax.FiniteDataSolver(n_grid=4, n_draws=n_draws, n_response=32, n_quad_eval=256, max_iter=4)
            jax.block_until_ready(mtjax.finite_data_theory(e, mtjax.Seeds(0), solver=solver))
            counts.append(_maps())
        assert len(_dmft._LARGE_PROGRAMS) == 1
        # Measured (tests' flags): the first solve adds 775 mappings (build, solve and report
        # programs); each later one compiles a solve program (~490) and releases the previous
        # one: +4 over the four.  Kept (cache size 8) they added 1,956.
        assert counts[-1] - counts[0] < max(counts[0] - m0, 600) / 4, (m0, counts)
        before = _maps()
        mtjax.release_compiled()
        assert not _dmft._LARGE_PROGRAMS and not _dmft._SMALL_PROGRAMS
        assert before - _maps() > 300, (before, _maps())  # measured: 764 released
    finally:
        mtjax.set_compiled_cache_size(old)


def test_population_theory_compiles_once_per_bucket_of_report_times():
    # Without a jit the population theory compiled 9 programs on every call, even of the same
    # experiment; now one per power of two of report times.
    solver = mtjax.PopulationSolver(n_quad=256, n_quad_eval=256)
    compiles = _dmft._COMPILES["_population_solve"]
    counts = []
    for i in range(12):  # 9 to 20 report times: buckets 16 and 32
        e = _experiment(10 + i, 8 + i, 2.0 / (8 + i))
        th = mtjax.population_theory(e, mtjax.Seeds(0), solver=solver)
        assert np.asarray(th.test_loss).shape == (9 + i, 2) and not bool(th.diverged)
        counts.append(_maps())
    assert _dmft._COMPILES["_population_solve"] - compiles <= 2
    # Measured (tests' flags): the program for 32 times adds ~560 mappings at solve 9, nothing
    # else grows; before, every one of these calls added ~670.
    assert counts[-1] - counts[8] < 50 and counts[7] - counts[0] < 50, counts
