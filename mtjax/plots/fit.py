"""Fitted vs true parameters (`mtjax.fit`)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._common import _plt


def plot_fit(true, fitted, stderr, *, names=None, log=None, ax=None):
    """Fitted vs true parameter values with ±1 s.e. error bars, one panel per parameter.

    **Arguments:**

    - `true`, `fitted`, `stderr`: mappings name -> (n,) arrays (n settings), or DataFrames with
      those columns (e.g. the table of `benchmarks/fit_recovery.py`).
    - `names`: parameters to draw (default: the keys of `true`).
    - `log`: names drawn on log axes (default: those starting with ``s_`` or ``sigma``).
    - `ax`: an array of axes (one per name), or None for a new figure.

    **Returns:** the `Figure`."""
    plt = _plt()
    names = list(names if names is not None else (true.columns if isinstance(true, pd.DataFrame) else true.keys()))
    log = [n for n in names if n.startswith(("s_", "sigma"))] if log is None else list(log)
    fig = None
    if ax is None:
        fig, ax = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.4), squeeze=False)
        ax = ax[0]
    for a, n in zip(np.atleast_1d(ax), names):
        t, f, s = (np.asarray(x[n], float) for x in (true, fitted, stderr))
        a.errorbar(t, f, yerr=np.where(np.isfinite(s), s, 0.0), fmt="o", ms=3, lw=0.8, capsize=2)
        lo, hi = np.nanmin(np.r_[t, f]), np.nanmax(np.r_[t, f])
        a.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        if n in log:
            a.set_xscale("log"), a.set_yscale("log")
        a.set_xlabel(f"true {n}")
        a.set_ylabel(f"fitted {n}")
    return fig if fig is not None else np.atleast_1d(ax)[0].figure
