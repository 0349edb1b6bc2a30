"""The compiled-program cache of the theories (finite-data and population): `release_compiled`,
`set_compiled_cache_size` and the report-time helpers (docs/dmft.md §3.1)."""

from __future__ import annotations

import collections
import threading

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._validation import check_int, is_concrete


# ---------------------------------------------------------------------------------------------
# Compiled programs.  A theory called with concrete inputs runs as three programs, each compiled
# once per shape that matters and kept in a bounded cache (`_call_compiled`):
#   `_build_problem`  teacher and initial student -> the reduced problem (shapes: N, R, C, K, H, L);
#   `_solve_grid`     the fixed point on the solver's own grid (shapes: the reduced problem's and
#                     the solver's static settings); data sizes α_k and t_max are traced arrays;
#   `_report`         interpolation onto the report times, padded to a power of two (`_bucket`).
# So the report times and the data sizes do not change the large program, and the programs of
# shapes no longer used are released (docs/dmft.md §3.1).  Under a caller's
# jit / vmap / grad the same functions are traced into the caller's program instead.
# ---------------------------------------------------------------------------------------------

# The theories' compiled programs, least recently used first: the solves (large: 500–1,300
# memory mappings each on CPU, measured) and the build / report steps (small: 50–300).
_LARGE_PROGRAMS: collections.OrderedDict = collections.OrderedDict()
_SMALL_PROGRAMS: collections.OrderedDict = collections.OrderedDict()
_CACHE_SIZE = {"large": 4, "small": 32}
_COMPILES: collections.Counter = collections.Counter()  # compilations per program name (tests, measurements)
_CACHE_LOCK = threading.Lock()


def set_compiled_cache_size(n: int) -> int:
    """Keep at most `n` compiled theory solves (and 8 n of their small build / report programs)
    per process; returns the previous bound (default 4).

    Every program the finite-data and population theories compile for concrete inputs is
    cached per shape that matters (report times and data sizes do not change it; docs/dmft.md
    §3.1).  On the CPU backend each compiled solve keeps 500–1,300 memory mappings (measured,
    more for longer grids) until it is released, and Linux allows 65,530 per process
    (`vm.max_map_count`): beyond the bound the least recently used program is released.
    `n = 0` compiles every call afresh and keeps nothing."""
    n = check_int("n", n, 0)
    with _CACHE_LOCK:
        old = _CACHE_SIZE["large"]
        _CACHE_SIZE.update(large=n, small=8 * n)
        for cache, bound in ((_LARGE_PROGRAMS, n), (_SMALL_PROGRAMS, 8 * n)):
            while len(cache) > bound:
                cache.popitem(last=False)
    return old


def release_compiled() -> None:
    """Release every compiled program of this process: the theories' cached programs and every
    program JAX keeps for jitted functions (`jax.clear_caches()`).

    Call it between parts of a long-lived process that will not reuse each other's programs
    (static groups of a sweep, notebook sections).  Arrays and results already computed stay
    valid; a function called again is compiled again (on the next call only)."""
    with _CACHE_LOCK:
        _LARGE_PROGRAMS.clear()
        _SMALL_PROGRAMS.clear()
    jax.clear_caches()


def _call_compiled(fn, *args, large: bool = False):
    """`fn(*args)`, by a program compiled once per (fn, static part of `args`, shapes and dtypes
    of their arrays) and kept in a bounded least-recently-used cache.

    Traced `args` (a caller's jit, vmap or grad): `fn(*args)` is traced into the caller's program.
    Each program is compiled from a fresh closure with `jax.jit(...).lower(...).compile()`, so
    no cache of JAX's keeps it (JAX's trace and compilation caches are keyed weakly on the
    function): dropping it from this cache releases its memory (measured in
    tests/test_compile_memory.py)."""
    if not is_concrete(args):
        return fn(*args)
    dyn, static = eqx.partition(args, eqx.is_array)
    leaves, tree = jax.tree_util.tree_flatten(dyn)
    static_leaves, static_tree = jax.tree_util.tree_flatten(static)
    avals = tuple((np.shape(x), np.dtype(x.dtype), bool(getattr(x, "weak_type", False))) for x in leaves)
    key = (fn, static_tree, tuple(static_leaves), tree, avals)
    cache, size = (_LARGE_PROGRAMS, "large") if large else (_SMALL_PROGRAMS, "small")
    with _CACHE_LOCK:
        program = cache.pop(key, None)
    if program is None:

        def run(d):
            return fn(*eqx.combine(d, static))

        program = jax.jit(run).lower(dyn).compile()
        _COMPILES[fn.__name__] += 1
    with _CACHE_LOCK:
        if _CACHE_SIZE[size] > 0:
            cache[key] = program
            while len(cache) > _CACHE_SIZE[size]:
                cache.popitem(last=False)
    return program(dyn)


def _bucket(n: int) -> int:
    """Padded length of n report times: the next power of two (at least 8), so that the report
    step compiles for a handful of lengths, not for every one."""
    return max(8, 1 << (n - 1).bit_length())


def _report_times(tr, ts):
    """The report times (n,) — `ts`, or lr x the evaluation steps — and t_max, their last.  On the
    host (numpy) when concrete: no program is compiled per number of report times."""
    xp = np if is_concrete((tr.learning_rate, ts)) else jnp
    fdt = jax.dtypes.canonicalize_dtype(float)
    if ts is None:
        ts = xp.asarray(tr.learning_rate, fdt) * xp.asarray(tr.eval_steps, fdt)
    ts = xp.asarray(ts, fdt)
    return ts, xp.asarray(ts[-1])
