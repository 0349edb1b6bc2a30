import os
import tempfile

# XLA's CPU backend spends much of a small test's time in LLVM optimisation. Level 1 compiles
# nearly as fast as level 0 but its code is not slow: at level 0 the counter-based PRNG that
# every online simulation draws its batches from runs ~6-10x slower than at level 1 (1200 steps
# of 4 x 512 x 40 normals: 13.8 s vs 1.1 s), which made the simulation-heavy tests run-bound.
# The arithmetic (and so every tolerance here) does not depend on the level.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=1")
os.environ.setdefault("MPLBACKEND", "Agg")
# The suite is compile-bound, and the same programs are compiled again in other processes
# (the other xdist worker, CLI and kill-and-resume subprocesses, notebook kernels): a shared
# on-disk cache lets each be compiled once. Set in the environment so children inherit it;
# entries are keyed by the program, the flags and the jax version, so a stale one is never hit.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "mtjax-tests-jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "standard")
# jax may be imported before this file (by a pytest plugin), so the cache settings are applied
# here too; the environment variables above are for the child processes.
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))


@pytest.fixture
def key():
    return jax.random.key(1234)
