import os
from pathlib import Path

import jax
import jax.numpy as jnp
import nbformat
import numpy as np

import mtjax


def tree_allclose(a, b, rtol=1e-6, atol=1e-6) -> bool:
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    if ta != tb:
        return False
    return all(np.allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol, equal_nan=True) for x, y in zip(la, lb))


def tiny_spec(protocol="paper", **train):
    """A small, fast experiment: N = 20, R = C = 3, trunk 2 x 8."""
    tr = {
        "protocol": protocol,
        "n_train": [32, 32],
        "n_test": 256,
        "batch_size": 16,
        "n_epochs": 6,
        "n_steps": 60,
        "eval_every": 2 if protocol == "paper" else 20,
        "learning_rate": 0.05,
    }
    tr.update(train)
    return {
        "teacher": {"n_features": 20, "rank": 3, "n_classes": 3, "scale": [3.0, 3.0], "noise": 0.1},
        "student": {"depth": 2, "width": 8},
        "train": tr,
    }


def tiny(protocol="paper", **train) -> mtjax.Experiment:
    return mtjax.experiment_from_spec(tiny_spec(protocol, **train))


def replace(module, where, value):
    import equinox as eqx

    return eqx.tree_at(where, module, jnp.asarray(value, dtype=where(module).dtype))


def jit_optimised(f):
    """`jax.jit` of a run-bound test program at XLA optimisation level 1.

    The suite compiles at level 0 (tests/conftest.py: most tests are compile-bound), where the
    counter-based PRNG of online simulations and long quadrature loops run several times slower;
    the few tests dominated by such a run compile their program optimised instead."""
    return jax.jit(f, compiler_options={"xla_backend_optimization_level": 1})


ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# Notebooks whose quick run is dominated by running programs rather than compiling them (online
# simulations: the PRNG runs several times slower at the suite's XLA level 0, tests/conftest.py;
# DMFT solves and fits at quick sizes) get an optimised kernel. Measured on 2 cores, cold
# compilation cache, level 1 vs level 0 (classic fusion emitters both): 01 41 vs 58 s, 02 31 vs
# 46 s, 03 44 vs 84 s, 05 66 vs 87 s, 06 43 vs 73 s, 07 26 vs 61 s. 04 is compile-bound (47 vs 30 s
# with the MLIR emitters).
RUN_BOUND = {"01_quickstart", "02_single_task_dynamics", "03_benefit_phase_diagram", "05_fitting", "06_finite_data",
             "07_nonlinear_phase_diagram"}
OPTIMISED_XLA_FLAGS = "--xla_backend_optimization_level=1 --xla_cpu_use_fusion_emitters=false"


def run_notebook(path, monkeypatch):
    """Execute notebook `path` (its quick size) in a fresh kernel; fail on any error output."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and code[0].source.startswith('SCALE = "quick"'), "first code cell must be the SCALE switch"
    # The kernel inherits this environment: import this checkout's mtjax, fast XLA compiles
    # (tests/conftest.py), a non-interactive matplotlib backend.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    if path.stem in RUN_BOUND:
        monkeypatch.setenv("XLA_FLAGS", OPTIMISED_XLA_FLAGS)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
