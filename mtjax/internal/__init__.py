"""Internals of mtjax with no stability promise: kernels exposed for benchmarks and experiments
(`benchmarks/dmft_kernels.py`). They may change or go without notice; use the public API
(`mtjax.X`) for anything else.

- `causal_memory_scan`, `response`, `softmax_jacobian`: the causal kernels of one DMFT map
  (`mtjax/_dmft.py`, docs/dmft.md §3).
- `cholesky`, `blocked_cholesky`: the Cholesky factors of `mtjax/_gaussian.py` (column loop and
  blocked).
"""

from .._dmft import (
    _causal_memory_scan as causal_memory_scan,
    _response as response,
    _softmax_jacobian as softmax_jacobian,
)
from .._gaussian import blocked_cholesky as blocked_cholesky, cholesky as cholesky

__all__ = ["blocked_cholesky", "causal_memory_scan", "cholesky", "response", "softmax_jacobian"]
