"""Array type aliases used across mtjax (jaxtyping)."""

from __future__ import annotations

from typing import Union

import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray

#: A scalar that may be a Python number, a NumPy scalar or a JAX array.
RealScalarLike = Union[float, int, np.floating, np.integer, Array]

__all__ = [
    "Array",
    "ArrayLike",
    "Bool",
    "Float",
    "Int",
    "PRNGKeyArray",
    "RealScalarLike",
]
