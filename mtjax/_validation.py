"""Input validation helpers.

Configs are `eqx.Module`s whose physical parameters may be traced (inside `jax.vmap`
or `jax.jit`); those cannot be checked in Python.  Every helper therefore checks
*concrete* values only and silently accepts tracers: the public entry points are
called with concrete values first, so a user's mistake is caught before tracing.
"""

from __future__ import annotations

import jax
import numpy as np


def is_concrete(x) -> bool:
    """True if `x` holds concrete values (not a JAX tracer)."""
    leaves = jax.tree_util.tree_leaves(x)
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in leaves)


def check_range(
    name: str,
    value,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> None:
    """Raise `ValueError` naming `name` if any concrete entry of `value` is out of range.

    The allowed range is `[lo, hi]` (ends open where `lo_open` / `hi_open`).
    """
    if value is None or not is_concrete(value):
        return
    lb = "(" if lo_open else "["
    rb = ")" if hi_open or hi is None else "]"
    rng = f"{lb}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{rb}"
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} is not a number or list of numbers (allowed range {rng})") from None
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {value!r} (allowed range {rng})")
    bad = np.zeros(arr.shape, dtype=bool)
    if lo is not None:
        bad |= (arr <= lo) if lo_open else (arr < lo)
    if hi is not None:
        bad |= (arr >= hi) if hi_open else (arr > hi)
    if np.any(bad):
        raise ValueError(f"{name}={value!r} is out of its allowed range {rng}")


def check_int(name: str, value, lo: int | None = None, hi: int | None = None) -> int:
    """Validate a static integer and return it as `int`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
        raise ValueError(f"{name}={value} is out of its allowed range {rng}")
    return value


def check_choice(name: str, value, choices) -> str:
    """Validate a mode string against its allowed `choices`."""
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {sorted(choices)}")
    return value
