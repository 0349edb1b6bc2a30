import os

# XLA's CPU backend spends most of a small test's time in LLVM optimisation; level 0 cuts
# compile time ~2.5x and leaves the arithmetic (and so every tolerance here) unchanged.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "standard")


@pytest.fixture
def key():
    return jax.random.key(1234)
