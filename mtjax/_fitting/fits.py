"""The fit: multi-start optimisation of a `FitProblem`, its Laplace error bars, and `FitResult`."""

from __future__ import annotations

import math
from typing import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .._custom_types import Array, Bool, Float, Int
from .._experiment import Experiment, Seeds
from .._population import PopulationSolver
from .errors import _check_theory_replicates, _discrepancy_arg, _quantile, _replicate_covariance, _stderr, error_model
from .observations import KNOWN_COLUMNS, observations_from_table
from .optimisers import _adam, _best, _levenberg_marquardt, _newton
from .params import DATA_SIZES, POST_SOLVE, Param, _forward
from .problem import FitProblem, _exact_hessian, fit_model, make_problem
from .progress import _Progress


class FitResult(eqx.Module):
    """Result of `fit`.

    - `params`: name -> (levels,) fitted values (constrained units).
    - `stderr`: name -> (levels,) Laplace standard errors (delta method through the transform);
      NaN where the Hessian is not positive definite (an unidentifiable direction).
    - `theta`: (P,) unconstrained optimum; `covariance`: (P, P) Laplace covariance of θ (the
      inverse Hessian of the objective); `hessian`: (P, P).
    - `loss`: () objective at the optimum; `start_losses`: (S,) final objective of every start;
      `start_theta`: (S, P).
    - `n_steps`: () Adam + Levenberg–Marquardt (or Newton) iterations of the best start;
      `grad_norm`: () |∇θ objective| there; `decrement`: () Newton decrement gᵀH⁻¹g (squared
      remaining step in s.e. units); `converged`: () Hessian positive definite (identifiable)
      and gradient below gtol or decrement < 1e-2.
    - `n_obs`: number of observations; `chi2_dof`: 2·loss / (n_obs − P) for `loss="wls"`
      (≈ 1 when the standard errors are right and the model fits).
    - `dof`: degrees of freedom of the standard errors: ∞ when they come from the model
      (Laplace: the given `se` are exact), m − 1 when they are estimated from m replicates
      (`fit(obs_replicates=...)`); intervals then use Student-t quantiles (`interval`).
    - `discrepancy`: (K,) s.d. τ_k (metric units, nats) of the model-discrepancy term of task k
      in the error bars (`fit(discrepancy=...)`): given, estimated, or 0 without one.
    - `theory_replicates`: M, the theory solves with independent Monte Carlo draws behind
      `theory_covariance` (n, n; metric units²) and `theory_se` (n,): the Monte Carlo error of
      the predictions at the optimum, part of the error bars (`fit(theory_replicates=...)`);
      0 and None without that term.
    - `layout`: (name, transform, first index in θ, levels) of every parameter (static).
    - `jacobian`: (n, P) Jacobian of the whitened residuals (pred − value)/se at the optimum;
      `residuals`: (n,) those residuals (for `error_model`, which recomputes the error bars
      under another error model without refitting).
    """

    params: dict
    stderr: dict
    theta: Float[Array, " P"]
    covariance: Float[Array, "P P"]
    hessian: Float[Array, "P P"]
    loss: Float[Array, ""]
    start_losses: Float[Array, " S"]
    start_theta: Float[Array, "S P"]
    n_steps: Int[Array, ""]
    grad_norm: Float[Array, ""]
    converged: Bool[Array, ""]
    decrement: Float[Array, ""]
    n_obs: int = eqx.field(static=True)
    chi2_dof: Float[Array, ""]
    discrepancy: Float[Array, " K"]
    jacobian: Float[Array, "n P"]
    residuals: Float[Array, " n"]
    dof: float = eqx.field(static=True, default=math.inf)
    # (name, transform, first index in θ, levels) of every parameter: `interval(scale="fit")`.
    layout: tuple = eqx.field(static=True, default=())
    theory_se: Float[Array, " n"] | None = None
    theory_covariance: Float[Array, "n n"] | None = None
    theory_replicates: int = eqx.field(static=True, default=0)

    def interval(self, name: str, level: float = 0.95, *, scale: str = "value") -> tuple[np.ndarray, np.ndarray]:
        """Two-sided Wald interval of `name` (each level), with q the Student-t quantile at `dof`
        degrees of freedom (normal for dof = ∞): an s.e. estimated from m replicates is itself
        uncertain, and ±1.96 s.e. would cover less than 95 %.

        - `scale="value"`: value ± q·stderr, in the parameter's own units.
        - `scale="fit"`: u ± q·se(u) in the unconstrained coordinate u of the fit (the one the
          Laplace covariance is computed in), mapped through the parameter's transform. It stays
          inside the parameter's range, and it widens where the transform saturates: at r = tanh u
          -> ±1 the delta-method stderr of r goes to 0 and value ± q·stderr shrinks to a point
          however poorly the data determine r, while u's interval stays wide.

        **Returns:** `(lower, upper)`, each (levels,)."""
        q = _quantile(level, self.dof)
        if scale == "value":
            v, se = np.asarray(self.params[name]), np.asarray(self.stderr[name])
            return v - q * se, v + q * se
        if scale != "fit":
            raise ValueError(f"scale={scale!r} is not one of ['value', 'fit']")
        where = {n: (t, i, k) for n, t, i, k in self.layout}
        if name not in where:
            raise ValueError(f"name={name!r} is not a fitted parameter; fitted: {sorted(where)}")
        t, i, k = where[name]
        u = np.asarray(self.theta)[i : i + k]
        se_u = np.sqrt(np.clip(np.diag(np.asarray(self.covariance))[i : i + k], 0, None))
        return np.asarray(_forward(t, u - q * se_u)), np.asarray(_forward(t, u + q * se_u))

    def table(self) -> pd.DataFrame:
        """One row per fitted value: name, level, value, stderr."""
        rows = []
        for k, v in self.params.items():
            for i, (x, s) in enumerate(zip(np.atleast_1d(np.asarray(v)), np.atleast_1d(np.asarray(self.stderr[k])))):
                rows.append({"param": k, "level": i, "value": float(x), "stderr": float(s)})
        return pd.DataFrame(rows)


def fit(
    problem: FitProblem,
    *,
    n_starts: int = 4,
    start_spread: float = 0.5,
    starts: Float[Array, "S P"] | None = None,
    n_adam: int = 40,
    adam_lr: float = 0.05,
    n_newton: int = 30,
    gtol: float = 1e-6,
    dtol: float = 1e-4,
    ftol: float = 0.0,
    hessian: str | None = None,
    obs_covariance=None,
    obs_replicates=None,
    discrepancy=None,
    discrepancy_length: float = math.inf,
    theory_replicates: int = 0,
    key=None,
    progress: bool = False,
    cheap_trials: bool | None = None,
) -> FitResult:
    """Fit the free parameters of `problem` (see `make_problem`, `observations_from_table`).

    **Arguments:**

    - `n_starts`, `start_spread`: multi-start: the `Param` inits plus `n_starts − 1` draws
      N(init, start_spread²) in the unconstrained coordinates; all starts run at once (vmap).
      Or pass `starts` (S, P) explicitly (unconstrained θ, see `FitProblem.pack`).
    - `n_adam`, `adam_lr`: Adam steps (optax; robust far from the optimum; gradients by
      reverse mode through the solve with the solver's adjoint).
    - `n_newton`, `gtol`: second-order polish until |∇θ objective| < `gtol`:
      Levenberg–Marquardt with the forward-mode Jacobian of the residuals (`loss="wls"`), or
      damped Newton with the exact Hessian (`loss="gaussian"`).
    - `dtol`: Levenberg–Marquardt also stops once the Gauss–Newton decrement gᵀ(JᵀJ)⁻¹g is
      below `dtol`: the step still to take is then √dtol (default 0.01) Laplace standard
      errors long, and further steps only chase the objective's rounding and Monte Carlo
      floor. 0: only `gtol` and the damping limit stop it.
    - `ftol`: Levenberg–Marquardt also stops a start after an accepted step that lowered its
      objective ½χ² by less than `ftol` (default 0: never). For a Monte Carlo theory (the
      finite-data theory) whose fixed draws give the objective a rough floor: there the
      decrement can stay above `dtol` while steps gain nothing (measured: seven Levenberg–
      Marquardt steps of ~4 min each moving ½χ² by < 0.002 in all, docs/fitting.md §6).
      ftol = 0.01 (Δχ² = 0.02) is far below any interval's resolution.
    - `hessian`: for the Laplace covariance: `"gauss-newton"` (JᵀWJ, the Fisher information of
      the weighted least-squares model; default for `"wls"`) or `"exact"` (forward-over-forward
      Hessian of the objective; default for `"gaussian"`).
    - `obs_covariance`: optional (n, n) covariance of the observation errors (e.g. of seed-mean
      curves, estimated from the seeds: points of one curve share their seeds, so their errors
      are strongly correlated in time). Then the error bars are the sandwich
      H⁻¹ (Jᵀ C J) H⁻¹ (C: the covariance of the whitened residuals) instead of H⁻¹, which
      assumes independent errors with s.d. `se` (`loss="wls"` only).
    - `obs_replicates`: optional (m, n) replicate observations whose mean is `obs.value`
      (e.g. the m per-seed curves behind seed-mean curves, rows in the table's order). The
      error bars are then the cluster-robust sandwich with C = cov(replicates) / m: each
      replicate (seed) is one independent cluster however strongly its points are correlated
      in time, and the variance of every fitted value is the seed variance of its linearised
      estimate, with m − 1 degrees of freedom (`FitResult.dof`; use `FitResult.interval`).
      Exclusive with `obs_covariance`.
    - `discrepancy`: model discrepancy in the error bars (`loss="wls"`): `None` (none), a s.d.
      τ (metric units, e.g. nats; scalar or one per task), or `"estimate"`. The observations
      are then prediction(θ) + sampling error + δ, with δ_k(t) a zero-mean Gaussian process
      per task and theory solve: the part of the simulation–theory difference that no
      replicate shows (finite learning rate, quadrature, finite-size corrections), which acts
      on every replicate alike. Its covariance τ_k² K_k enters the sandwich,
      V = H⁻¹ Jᵀ (C + Σ τ_k² K_k) J H⁻¹ (whitened); `"estimate"`: τ_k² from the residuals by
      the method of moments (`_error_covariance`; `FitResult.discrepancy` has the τ used).
      The point estimate does not change.
    - `discrepancy_length`: correlation length ℓ of δ_k in log t:
      corr = exp(−(log t − log t')²/2ℓ²); ∞ (default): a constant offset of each curve; 0:
      independent points (a nugget).
    - `theory_replicates`: M = 0 (default) or >= 2: the theory's own Monte Carlo error in the
      error bars (`loss="wls"`, a model with draws: the finite-data theory). The fit sees one
      draw seed's predictions, whose error is the same at every step, so it moves θ̂ like a
      sampling error that no replicate shows. M more solves at the optimum with independent
      draws (`theory_covariance`) estimate its covariance C_th, which adds to the sampling
      error's: V = H⁻¹ Jᵀ (C + C_th + Σ τ_k² K_k) J H⁻¹ (whitened), and C_th counts in the
      residuals' expected size from which τ is estimated; `dof` becomes min(dof, M − 1). The point estimate
      does not change. Measured on fit_recovery's 20 settings at N = 800 with 8 seeds
      (docs/fitting.md §6): the predictions' Monte Carlo s.d. is a median 1.8x the data's s.e.,
      and counting it widens the error bars of r and s 2.1–2.5x (and brings the coverage of
      s to nominal).
    - `key`: PRNG key of the start draws (default `jax.random.key(0)`).
    - `cheap_trials`: judge each Levenberg–Marquardt trial step by the residuals alone (one
      solve) and compute the Jacobian (the solve plus P tangents) only at accepted steps.
      Default (None): the model's `cheap_trials` (on for the finite-data theory, whose Jacobian
      costs several solves and whose noisy optimum rejects many trial steps; off for the
      population theory, where the second compiled program costs more than it saves), and off
      when the curves are solved once (`with_fixed_curves`). The steps taken are the same up to the
      two programs' rounding.
    - `progress`: print progress to stderr (the plan, the first and last Adam step and every
      ~5 s: step i/n, best objective over the starts, elapsed time; the first step includes
      compiling the theory, which can take minutes). Default quiet; the CLI turns it on.

    **Returns:** `FitResult` of the best start (by objective).

    **Raises:** `ValueError` before any solve for an invalid argument (`n_starts` < 1,
    negative step counts or spread, `starts` of the wrong shape, unknown `hessian`, error
    models with `loss="gaussian"`, replicates of the wrong shape).
    """
    hessian = _check_fit_args(problem, starts, n_starts, n_adam, n_newton, start_spread, hessian, obs_covariance,
                              obs_replicates, discrepancy, dtol, ftol)
    if theory_replicates and problem.loss != "wls":
        raise ValueError(f"theory_replicates={theory_replicates!r} needs loss='wls'; pass theory_replicates=0")
    _check_theory_replicates(problem, theory_replicates)
    starts = _starts(problem, starts, n_starts, start_spread, key)
    S = starts.shape[0]
    if problem.solve_free:  # only time scales are free: the theory is solved once, not per step
        problem = problem.with_fixed_curves()
    report = _Progress("fit", progress)
    second = "Levenberg-Marquardt" if problem.loss == "wls" else "Newton"
    report(f"{S} starts x ({n_adam} Adam + <= {n_newton} {second} steps), {int(problem.obs.value.shape[0])} observations, "
           f"{problem.obs.n_conditions} theory solves per evaluation; the first step compiles (can take minutes)", force=True)
    ths = _adam(problem, starts, n_adam, adam_lr, report)[0] if n_adam else starts
    if problem.loss == "wls":
        if cheap_trials is None:
            cheap_trials = problem.model.cheap_trials and problem.fixed_curves is None
        th, vals, grads, J, steps, resid = _levenberg_marquardt(problem, ths, n_newton, gtol, report=report,
                                                                cheap_trials=cheap_trials, dtol=dtol, ftol=ftol)  # fmt: skip
    else:
        th, vals, grads, steps = _newton(problem, ths, n_newton, gtol, report=report)
        J = resid = None
    vals_ = np.where(np.isfinite(vals), vals, np.inf)
    b = int(np.argmin(vals_))
    report(f"done: objective {_best(vals)} (best of {S} starts: start {b + 1}/{S})", force=True)
    theta = jnp.asarray(th[b])
    if hessian == "exact":
        H = np.asarray(_exact_hessian(problem, theta), float)
    else:
        H = J[b].T @ J[b]
    H, cov, pd_ok = _laplace(H)
    n_obs = int(problem.obs.value.shape[0])
    gnorm = float(np.linalg.norm(grads[b]))
    # Newton decrement gᵀ H⁻¹ g: the squared length, in units of the Laplace s.e., of the step
    # that would still be taken; < 1e-2 means the optimum is reached to < 0.1 s.e. even when the
    # solver's step-size noise keeps the raw gradient from reaching gtol.
    decrement = float(grads[b] @ cov @ grads[b]) if pd_ok else float("nan")
    n_tasks = problem.experiment.train.n_tasks
    values = problem.unpack(theta)
    chi2 = 2 * vals[b] / max(1, n_obs - problem.size) if problem.loss == "wls" else np.nan
    result = FitResult(
        params=values,
        stderr=_stderr(problem, theta, cov),
        theta=theta,
        covariance=jnp.asarray(cov),
        hessian=jnp.asarray(H),
        loss=jnp.asarray(vals[b]),
        start_losses=jnp.asarray(vals),
        start_theta=jnp.asarray(th),
        n_steps=jnp.asarray(int(steps[b]) + n_adam),
        grad_norm=jnp.asarray(gnorm),
        converged=jnp.asarray(pd_ok and (gnorm < gtol or decrement < 1e-2)),
        decrement=jnp.asarray(decrement),
        n_obs=n_obs,
        chi2_dof=jnp.asarray(chi2),
        discrepancy=jnp.zeros(n_tasks),
        jacobian=jnp.asarray(J[b] if J is not None else np.full((n_obs, theta.shape[0]), np.nan)),
        residuals=jnp.asarray(resid[b] if resid is not None else np.full(n_obs, np.nan)),
        layout=_layout(problem),
    )
    if obs_covariance is None and obs_replicates is None and discrepancy is None and not theory_replicates:
        return result
    return error_model(problem, result, obs_covariance=obs_covariance, obs_replicates=obs_replicates,
                       discrepancy=discrepancy, discrepancy_length=discrepancy_length,
                       theory_replicates=theory_replicates)


def _layout(problem: FitProblem) -> tuple:
    """(name, transform, first index in θ, levels) of every free parameter."""
    out, i = [], 0
    for p, n in zip(problem.params, problem.n_levels):
        out.append((p.name, p.transform, i, n))
        i += n
    return tuple(out)


def _check_fit_args(problem, starts, n_starts, n_adam, n_newton, start_spread, hessian, obs_covariance, obs_replicates,
                    discrepancy, dtol=0.0, ftol=0.0) -> str:
    """Refuse invalid arguments of `fit` before any solve. **Returns:** the `hessian` to use."""
    if starts is None and not (isinstance(n_starts, (int, np.integer)) and n_starts >= 1):
        raise ValueError(f"n_starts={n_starts!r} must be an integer >= 1 (CLI: --starts)")
    for name, v in (("n_adam", n_adam), ("n_newton", n_newton)):
        if not (isinstance(v, (int, np.integer)) and v >= 0):
            raise ValueError(f"{name}={v!r} must be an integer >= 0 (CLI: --{'adam' if name == 'n_adam' else 'newton'}-steps)")
    if not (dtol >= 0 and math.isfinite(dtol)):
        raise ValueError(f"dtol={dtol!r} must be finite and >= 0 (0: stop on gtol and the damping limit only)")
    if not (ftol >= 0 and math.isfinite(ftol)):
        raise ValueError(f"ftol={ftol!r} must be finite and >= 0 (0: no stop on a small decrease of the objective)")
    if not (start_spread >= 0 and math.isfinite(start_spread)):
        raise ValueError(f"start_spread={start_spread!r} must be finite and >= 0")
    hessian = hessian or ("gauss-newton" if problem.loss == "wls" else "exact")
    if hessian not in ("gauss-newton", "exact"):
        raise ValueError(f"hessian={hessian!r} is not one of ['gauss-newton', 'exact']")
    if hessian == "gauss-newton" and problem.loss != "wls":
        raise ValueError("hessian='gauss-newton' needs loss='wls'")
    if (obs_covariance is not None or obs_replicates is not None or discrepancy is not None) and problem.loss != "wls":
        raise ValueError("obs_covariance, obs_replicates and discrepancy need loss='wls'")
    if obs_replicates is not None:  # check before the fit
        if obs_covariance is not None:
            raise ValueError("pass obs_covariance or obs_replicates, not both")
        _replicate_covariance(problem, obs_replicates)
    _discrepancy_arg(discrepancy, problem.experiment.train.n_tasks)
    return hessian


def _starts(problem, starts, n_starts, start_spread, key) -> Float[Array, "S P"]:
    """The starts of `fit`: `starts` as given, or the inits plus `n_starts − 1` draws
    N(init, start_spread²) in the unconstrained coordinates."""
    theta0 = problem.initial_theta()
    if starts is None:
        key = jax.random.key(0) if key is None else key
        jitter = start_spread * jax.random.normal(key, (n_starts - 1, theta0.shape[0]))
        starts = jnp.concatenate([theta0[None], theta0[None] + jitter], 0)
    starts = jnp.asarray(starts, float)
    if starts.ndim != 2 or starts.shape[0] < 1 or starts.shape[1] != theta0.shape[0]:
        raise ValueError(f"starts must be (S >= 1, P={theta0.shape[0]}) unconstrained vectors, got {starts.shape}")
    return starts


def _laplace(H: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """Laplace covariance H⁻¹ of θ. **Returns:** `(H, cov, pd_ok)`: H symmetrised, its inverse
    (NaN unless H is finite and positive definite), and whether it is."""
    H = 0.5 * (H + H.T)
    finite = bool(np.all(np.isfinite(H)))
    w, V = np.linalg.eigh(H if finite else np.eye(H.shape[0]))  # small, un-vmapped
    pd_ok = finite and bool(np.all(w > 1e-10 * max(1.0, float(np.abs(w).max()))))
    cov = V @ np.diag(1.0 / np.where(w > 0, w, np.nan)) @ V.T if pd_ok else np.full_like(H, np.nan)
    return H, cov, pd_ok


def fit_table(
    experiment: Experiment,
    table: pd.DataFrame,
    params: Sequence[Param],
    *,
    seeds: Seeds | None = None,
    solver: PopulationSolver | None = None,
    initial: str = "quenched",
    loss: str = "wls",
    mapping: dict | None = None,
    model=None,
    **fit_kwargs,
) -> tuple[FitResult, FitProblem]:
    """Convenience: `observations_from_table(table, **mapping)` → `make_problem` → `fit`.

    `seeds`: as `make_problem` (a leading axis M: the table averages M realisations of teacher
    and initial student, and the theory is the mean of M solves).
    `model`: the theory (`PopulationTheory`, `FiniteDataTheory`); default (`fit_model`): the
    population theory with `solver` if one is given, else the finite-data theory
    (`mtjax.fit_solver()`) for runs on finite training sets and the population theory for
    online runs.  With the finite-data theory the data-size columns `ntrain`, `ntrain_b` are
    known columns too (one theory solve per data size).
    `mapping`: keyword arguments of `observations_from_table` (column names, `se`, `by`, ...);
    `by` defaults to the `by` columns of `params`, `known` to every parameter column of the
    table that is not fitted. `fit_kwargs` go to `fit` (e.g. `progress=True`).

    **Raises:** `ValueError` before any solve for everything `observations_from_table`,
    `make_problem` and `fit` refuse, and when the table's `depth` or `width` column (the
    student of the runs) differs from `experiment`'s: the theory would describe another network."""
    for col, have in (("depth", experiment.student.depth), ("width", experiment.student.width)):
        if col in table and not (col == "width" and experiment.student.depth == 0):  # width unused at depth 0
            vals = np.unique(np.asarray(table[col], float))
            vals = vals[~np.isnan(vals)]
            if vals.size == 1 and vals[0] != have:
                raise ValueError(f"column {col!r} of the table is {vals[0]:g}, but the experiment's student.{col} is {have}: "
                                 f"use the config of the runs (CLI: --config, or --set student.{col}={vals[0]:g})")
    seeds = Seeds(0) if seeds is None else seeds
    model = fit_model(model, solver, initial, experiment)
    mapping = dict(mapping or {})
    mapping.setdefault("by", sorted({p.by for p in params if p.by is not None}))
    free = {p.name for p in params}
    mapping.setdefault("split", sorted({p.by for p in params if p.by is not None and p.name not in POST_SOLVE}))
    # A model with training sets (the finite-data theory) also takes the data sizes as known.
    columns = KNOWN_COLUMNS + (DATA_SIZES if model.data_sizes else ())
    mapping.setdefault("known", [c for c in columns if c in table and c not in free])
    obs, _ = observations_from_table(table, **mapping)
    problem = make_problem(experiment, obs, params, seeds=seeds, loss=loss, model=model)
    return fit(problem, **fit_kwargs), problem


def log10_stderr(value, stderr):
    """Standard error of log10(value) from that of value (delta method)."""
    return np.asarray(stderr) / (np.asarray(value) * math.log(10.0))
