"""Profiles of a fit's objective in one parameter, and profile intervals."""

from __future__ import annotations

import math

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Float, Int
from .errors import _quantile
from .fits import FitResult
from .optimisers import _levenberg_marquardt
from .params import _inverse
from .problem import FitProblem


class Profile(eqx.Module):
    """Profile of a fit's objective in one parameter (see `profile`).

    - `name`, `index`: the parameter and its level.
    - `values`: (G,) sorted grid of constrained values (the fitted value included; may repeat).
    - `objective`: (G,) minimum of the objective over every other parameter at each value.
    - `deviance`: (G,) adjusted deviance κ · 2 (objective − its minimum), κ = (H⁻¹)ᵢᵢ / Vᵢᵢ:
      H the Gauss–Newton Hessian of the working objective, V the fit's covariance (sandwich or
      Laplace), both in the unconstrained coordinate. κ rescales the working objective's
      curvature to the sampling variance of the estimate (the "adjusted profile likelihood"),
      so deviance ≈ (u − û)² / Vᵢᵢ near the optimum; κ = 1 for a Laplace fit, where the
      deviance is the likelihood-ratio statistic.
    - `estimate`: () the fitted value; `scale`: () κ; `dof`: as `FitResult.dof`.
    - `n_steps`: (G,) Levenberg–Marquardt iterations of each grid point.
    """

    name: str = eqx.field(static=True)
    index: int = eqx.field(static=True)
    values: Float[Array, " G"]
    objective: Float[Array, " G"]
    deviance: Float[Array, " G"]
    estimate: Float[Array, ""]
    scale: Float[Array, ""]
    n_steps: Int[Array, " G"]
    dof: float = eqx.field(static=True, default=math.inf)

    def interval(self, level: float = 0.95) -> tuple[float, float, bool, bool]:
        """Profile interval {v : deviance(v) <= q²}, q the two-sided Student-t (dof) quantile.

        √deviance is interpolated linearly between grid points, which is exact for a quadratic
        profile (√deviance = |u − û| / √Vᵢᵢ is piecewise linear with its kink at the estimate,
        a grid point). The set is reported by its outermost ends, so a second basin (e.g. the
        mirror r → −r when the curves hardly depend on the sign of r) widens the interval.

        **Returns:** `(lower, upper, lower_open, upper_open)`; `*_open` is True when the set
        reaches that end of the grid (the data do not bound the parameter there within it)."""
        q = _quantile(level, self.dof)
        v, first = np.unique(np.asarray(self.values, float), return_index=True)  # clipped grids repeat ends
        root = np.sqrt(np.clip(np.nan_to_num(np.asarray(self.deviance, float)[first], nan=np.inf), 0, None))
        if v.shape[0] == 1:
            return float(v[0]), float(v[0]), True, True
        dense = np.linspace(v[0], v[-1], 4001)
        inside = np.interp(dense, v, np.minimum(root, 1e6)) <= q
        if not inside.any():  # cannot happen with the estimate on the grid; be safe
            e = float(self.estimate)
            return e, e, False, False
        return float(dense[inside].min()), float(dense[inside].max()), bool(inside[0]), bool(inside[-1])


def profile(
    problem: FitProblem,
    result: FitResult,
    name: str,
    values,
    *,
    index: int = 0,
    n_newton: int = 10,
    gtol: float = 1e-6,
) -> Profile:
    """Profile the objective of a `fit` in one parameter: re-fit every other parameter at each
    value of `values` (Levenberg–Marquardt from the optimum, all values at once).

    Why: the Wald interval value ± q·s.e. relies on the objective being quadratic in the
    parameter's unconstrained coordinate. Where the curves depend on r only weakly or
    nonlinearly (task 2 barely learned; near r = 0 if the sign of r hardly matters; tanh
    saturating near ±1) the Laplace s.e. misstates the uncertainty; the profile interval follows
    the objective's real shape (`Profile.interval`), and is open when the data do not bound it.

    **Arguments:** `problem`, `result`: a `loss="wls"` problem and its `fit`; `name`, `index`:
    the parameter (and level); `values`: (G,) constrained values (the fitted one is added);
    `n_newton`, `gtol`: as in `fit`.

    **Returns:** `Profile`.
    """
    if problem.loss != "wls":
        raise ValueError("profile needs loss='wls'")
    i = 0
    for p, n in zip(problem.params, problem.n_levels):
        if p.name == name:
            if not 0 <= index < n:
                raise ValueError(f"index={index} out of range for {name!r} ({n} levels)")
            i += index
            break
        i += n
    else:
        raise ValueError(f"{name!r} is not a free parameter of the problem ({[p.name for p in problem.params]})")
    theta = np.asarray(result.theta, float)
    est = float(np.asarray(result.params[name])[index])
    # sorted, not deduplicated: a fixed number of grid points keeps one compiled Jacobian
    grid = np.sort(np.concatenate([np.asarray(values, float).ravel(), [est]]))
    starts = np.repeat(theta[None], grid.shape[0], 0)
    starts[:, i] = _inverse(p.transform, grid)
    free = np.ones(theta.shape[0], bool)
    free[i] = False
    _, f, _, _, steps, _ = _levenberg_marquardt(problem, jnp.asarray(starts), n_newton, gtol, free=free)
    f = np.where(np.isfinite(f), f, np.nan)
    # a grid point may find a lower objective than the fit (another basin): measure from the lowest
    f_min = float(np.nanmin(np.append(f, float(result.loss))))
    H, V = np.asarray(result.hessian, float), np.asarray(result.covariance, float)
    try:
        kappa = float(np.linalg.inv(H)[i, i] / V[i, i])
    except np.linalg.LinAlgError:
        kappa = float("nan")
    kappa = kappa if np.isfinite(kappa) and kappa > 0 else 1.0
    dev = np.clip(2 * (f - f_min) * kappa, 0, None)
    return Profile(name=name, index=index, values=jnp.asarray(grid), objective=jnp.asarray(f), deviance=jnp.asarray(dev),
                   estimate=jnp.asarray(est), scale=jnp.asarray(kappa), n_steps=jnp.asarray(steps), dof=result.dof)
