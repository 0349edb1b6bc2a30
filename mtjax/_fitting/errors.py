"""Error models of a fit: Laplace standard errors, the sandwich with observation covariances
or seed replicates, and a model-discrepancy term."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from .._custom_types import Array, Float
from .observations import Observations
from .params import _forward
from .problem import FitProblem

if TYPE_CHECKING:  # annotation only: FitResult's module imports this one
    from .fits import FitResult


def _quantile(level: float, dof: float) -> float:
    """Two-sided quantile: P(|T| <= q) = level for T ~ Student-t(dof) (normal if dof = ∞)."""
    if not 0 < level < 1:
        raise ValueError(f"level={level} must be in (0, 1)")
    p = 0.5 + level / 2
    return float(scipy.stats.norm.ppf(p) if not np.isfinite(dof) else scipy.stats.t.ppf(p, dof))


def _stderr(problem: FitProblem, theta, cov) -> dict:
    """Delta method through the transforms: se(value) = |d value/d u| se(u)."""
    stderr, i = {}, 0
    for p, n in zip(problem.params, problem.n_levels):
        jac = np.asarray(jax.vmap(jax.grad(lambda u, t=p.transform: _forward(t, u)))(theta[i : i + n]))
        stderr[p.name] = jnp.asarray(np.abs(jac) * np.sqrt(np.clip(np.diag(np.asarray(cov))[i : i + n], 0, None)))
        i += n
    return stderr


def _whitened(problem: FitProblem, obs_covariance) -> np.ndarray:
    se = np.asarray(problem.obs.se, float)
    return np.asarray(obs_covariance, float) / np.outer(se, se)


def _replicate_covariance(problem: FitProblem, obs_replicates) -> tuple[np.ndarray, int]:
    rep = np.asarray(obs_replicates, float)
    if rep.ndim != 2 or rep.shape[1] != problem.obs.value.shape[0] or rep.shape[0] < 2:
        raise ValueError(f"obs_replicates must be (m >= 2, n={problem.obs.value.shape[0]}), got {rep.shape}")
    return np.cov(rep, rowvar=False) / rep.shape[0], rep.shape[0] - 1


def _discrepancy_arg(discrepancy, n_tasks: int):
    """None -> zeros; "estimate" -> None (estimate); number or (K,) -> (K,) given τ."""
    if discrepancy is None:
        return jnp.zeros(n_tasks)
    if isinstance(discrepancy, str):
        if discrepancy != "estimate":
            raise ValueError(f"discrepancy={discrepancy!r} must be None, 'estimate' or a s.d. (scalar or one per task)")
        return None
    tau = np.broadcast_to(np.asarray(discrepancy, float), (n_tasks,))
    if np.any(~np.isfinite(tau)) or np.any(tau < 0):
        raise ValueError(f"discrepancy={discrepancy!r} must be >= 0")
    return jnp.asarray(tau)


def _discrepancy_kernels(obs: Observations, n_tasks: int, length: float) -> Float[Array, "K n n"]:
    """Correlation of the discrepancy δ_k between rows: one curve δ_k(t) per task k and theory
    solve (condition), corr(t, t') = exp(−(log t − log t')² / 2ℓ²); ℓ = ∞: a constant offset of
    each curve, ℓ = 0: independent points (a nugget)."""
    if not length >= 0:
        raise ValueError(f"discrepancy_length={length} must be >= 0")
    lt = jnp.log(jnp.maximum(obs.time, 1e-12))
    d2 = (lt[:, None] - lt[None, :]) ** 2
    if math.isinf(length):
        corr = jnp.ones_like(d2)
    elif length == 0:
        corr = jnp.eye(d2.shape[0])
    else:
        corr = jnp.exp(-0.5 * d2 / length**2)
    same = obs.condition[:, None] == obs.condition[None, :]
    return jnp.stack([corr * same * ((obs.task == k)[:, None] & (obs.task == k)[None, :]) for k in range(n_tasks)])


@jax.jit
def _error_covariance(J, r, C, kernels, tau):
    """Covariance of θ̂ with a model-discrepancy term (jit-compiled; everything whitened by se).

    Model: value = prediction(θ) + ε + δ, ε the sampling error with whitened covariance C
    (None: I, the Laplace model), δ = Σ_k δ_k the model discrepancy, a zero-mean Gaussian
    process per task with covariance τ_k² K_k (`_discrepancy_kernels`, here divided by se seᵀ).
    The estimate is linear in the errors to first order, θ̂ − θ = −H⁻¹Jᵀ(ε + δ) (H = JᵀJ), so

        V = H⁻¹ Jᵀ (C + Σ_k τ_k² K_k) J H⁻¹.

    τ = None: τ_k² by the method of moments from the residuals r (the random-effects estimator
    of DerSimonian–Laird, generalised to correlated errors): r = −R(ε + δ), R = I − J H⁻¹Jᵀ, so
    E[rᵀE_j r] = tr(E_j R C R) + Σ_k τ_k² tr(E_j R K_k R) (E_j: rows of task j), a K x K linear
    system for τ²; solved by pseudo-inverse and clipped at 0 (unbiased before clipping).

    **Returns:** `(V, τ)`."""
    n, P = J.shape
    # J = U S Vᵀ: H⁻¹Jᵀ = V S⁻¹ Uᵀ and R = I − U Uᵀ, conditioned as J, not as JᵀJ (float32)
    U, S, Vt = jnp.linalg.svd(J, full_matrices=False)
    A_ = Vt.T @ (U / S).T  # (P, n): θ̂ − θ = −A_ (ε + δ)
    Cw = jnp.eye(n) if C is None else C
    if tau is None:
        R = jnp.eye(n) - U @ U.T
        sel = [jnp.diagonal(kk) > 0 for kk in kernels]  # rows of task k: nonzero diagonal of its kernel
        dRCR = jnp.diagonal(R @ Cw @ R)
        dRKR = [jnp.diagonal(R @ kk @ R) for kk in kernels]
        b = jnp.stack([jnp.sum(jnp.where(s, r**2 - dRCR, 0.0)) for s in sel])
        A = jnp.stack([jnp.stack([jnp.sum(jnp.where(s, d, 0.0)) for d in dRKR]) for s in sel])
        tau2 = jnp.clip(jnp.linalg.pinv(A) @ b, 0.0, None)
        tau = jnp.sqrt(tau2)
    meat = Cw + jnp.einsum("k,kij->ij", tau**2, kernels)
    V = A_ @ meat @ A_.T
    return 0.5 * (V + V.T), tau


def _check_theory_replicates(problem: FitProblem, theory_replicates) -> int:
    """Refuse a bad `theory_replicates` before any solve. **Returns:** it as an int."""
    M = theory_replicates
    if not (isinstance(M, (int, np.integer)) and (M == 0 or M >= 2)):
        raise ValueError(f"theory_replicates={M!r} must be 0 (no theory Monte Carlo term) or an integer >= 2 "
                         "(e.g. 8; CLI: --theory-replicates)")
    if M and problem.model.reseeded(1) is None:
        raise ValueError(f"theory_replicates={M}: the model {problem.model.name!r} has no Monte Carlo draws (its "
                         "predictions are deterministic); pass theory_replicates=0")
    return int(M)


@eqx.filter_jit
def _replicate_predictions(problem: FitProblem, theta, offsets):
    def one(k):
        return eqx.tree_at(lambda p: p.model, problem, problem.model.reseeded(k)).predict(theta)

    return jax.lax.map(one, offsets)  # one solve at a time: the memory of a single fit evaluation


def theory_covariance(problem: FitProblem, theta: Float[Array, " P"], n_replicates: int = 8) -> np.ndarray:
    """Monte Carlo covariance of the theory's predictions at `theta` (n, n), metric units².

    A Monte Carlo theory (the finite-data theory's fixed draws) predicts every observation with
    an error that is fixed for a fit (one draw seed) but differs between seeds. This solves the
    problem at `theta` with `n_replicates` independent draw seeds (`model.reseeded(1..M)`) and
    returns the sample covariance of the predictions (M − 1 degrees of freedom). Its size next
    to `problem.obs.se` says whether the theory's draws or the data limit a fit.

    **Raises:** `ValueError` before any solve if `n_replicates` < 2 or the model has no draws."""
    if not (isinstance(n_replicates, (int, np.integer)) and n_replicates >= 2):
        raise ValueError(f"n_replicates={n_replicates!r} must be an integer >= 2 (a covariance needs two solves; e.g. 8)")
    M = _check_theory_replicates(problem, n_replicates)
    if problem.fixed_curves is not None:  # curves solved once (time scales only): solve them again per seed
        problem = dataclasses.replace(problem, fixed_curves=None)
    preds = np.asarray(_replicate_predictions(problem, jnp.asarray(theta), jnp.arange(1, M + 1, dtype=jnp.int32)), float)
    return np.atleast_2d(np.cov(preds, rowvar=False))


def error_model(
    problem: FitProblem,
    result: FitResult,
    *,
    obs_covariance=None,
    obs_replicates=None,
    discrepancy=None,
    discrepancy_length: float = math.inf,
    theory_replicates: int = 0,
) -> FitResult:
    """The error bars of a `loss="wls"` fit under another error model, without refitting.

    Same arguments as `fit` (`obs_covariance`, `obs_replicates`, `discrepancy`,
    `discrepancy_length`, `theory_replicates`); uses the Gauss–Newton Jacobian and residuals
    stored in `result` (the sandwich's bread is the Gauss–Newton H = JᵀJ also when the fit used
    `hessian="exact"`). `theory_replicates` = M >= 2 solves the theory M more times at the
    optimum (`theory_covariance`); a result that already carries `theory_se` with the same M
    reuses its covariance instead.

    **Returns:** `result` with `covariance`, `stderr`, `discrepancy`, `dof` and `theory_se`
    replaced."""
    if problem.loss != "wls":
        raise ValueError("error_model needs loss='wls'")
    M = _check_theory_replicates(problem, theory_replicates)
    dof = math.inf
    if obs_replicates is not None:
        if obs_covariance is not None:
            raise ValueError("pass obs_covariance or obs_replicates, not both")
        obs_covariance, dof = _replicate_covariance(problem, obs_replicates)
    n_tasks = problem.experiment.train.n_tasks
    J = np.asarray(result.jacobian, float)
    se = problem.obs.se
    C = None if obs_covariance is None else jnp.asarray(_whitened(problem, obs_covariance))
    theory_se, theory_cov = None, None
    if M:
        if result.theory_covariance is not None and result.theory_replicates == M:
            theory_cov = np.asarray(result.theory_covariance, float)
        else:
            theory_cov = theory_covariance(problem, result.theta, M)
        theory_se = jnp.asarray(np.sqrt(np.clip(np.diag(theory_cov), 0, None)))
        # The theory's Monte Carlo error is a second, independent error of every residual: its
        # (whitened) covariance adds to the sampling error's, in the sandwich and in the moments
        # that estimate τ. Its s.d. is estimated from M − 1 dof: the intervals take the smaller dof.
        Cw = np.eye(J.shape[0]) if C is None else np.asarray(C)
        C = jnp.asarray(Cw + theory_cov / np.outer(np.asarray(se), np.asarray(se)))
        dof = min(dof, float(M - 1))
    kern = _discrepancy_kernels(problem.obs, n_tasks, discrepancy_length) / (se[:, None] * se[None, :])
    cov, tau = _error_covariance(jnp.asarray(J), result.residuals, C, kern, _discrepancy_arg(discrepancy, n_tasks))
    cov = np.asarray(cov, float)
    if not np.all(np.isfinite(np.asarray(result.covariance))):
        cov = np.full_like(cov, np.nan)
    return dataclasses.replace(result, covariance=jnp.asarray(cov), stderr=_stderr(problem, result.theta, cov),
                               discrepancy=jnp.asarray(tau, float), dof=float(dof), theory_se=theory_se,
                               theory_covariance=None if theory_cov is None else jnp.asarray(theory_cov),
                               theory_replicates=M)
