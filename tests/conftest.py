import gc
import os
import tempfile

# The suite is compile-bound: XLA's CPU backend spends most of a small test's time compiling.
# Measured on this 2-core machine (CPU seconds to compile, tests/helpers tiny_spec):
#   flags                                   paper sim (vmapped)  population theory  its grad
#   level 1                                        16                  16               40
#   level 1, fusion emitters off                   14                  11               31
#   level 0, fusion emitters off                  6-7                   6               16
# The MLIR fusion emitters are slower to compile than the classic ones and no faster to run here.
# Level 0 leaves the counter-based PRNG unoptimised (an online run of 400 steps x 512 examples:
# 2.9 s vs 1.1 s at level 1), which costs the simulation-heavy tests what they save in compiles
# (tests/test_population.py: 257 vs 247 CPU s, level 1 vs 0), and halves every other compile.
# The arithmetic (and so every tolerance here) does not depend on these flags.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false")
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


def _n_mappings():
    try:
        with open("/proc/self/maps") as f:
            return sum(1 for _ in f)
    except OSError:  # not Linux: no such limit to watch
        return 0


@pytest.fixture(autouse=True)
def _release_compiled_programs():
    """Drop jax's in-process caches of compiled programs once a worker holds many mappings.

    Each XLA:CPU executable keeps its own memory mappings, and a test worker that compiles
    half of this suite without letting go of them passes the kernel's limit of 65,530 mappings
    per process (vm.max_map_count); LLVM then segfaults in its next compile. Measured
    (/proc/self/maps): tests/test_dmft.py and tests/test_dmft_nonlinear.py in one process reach
    42,000 mappings. Clearing after every test keeps a worker under 13,000 but costs 7 % of the
    suite (traces are redone; tests/test_fit.py 40 -> 183 s), so it is done only past 20,000,
    far below the limit: the largest rise measured in 30 s of those two files was 6,300."""
    yield
    if _n_mappings() > 20_000:
        jax.clear_caches()
        gc.collect()


@pytest.fixture
def key():
    return jax.random.key(1234)
