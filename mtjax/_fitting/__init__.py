"""Fitting the differentiable population theory to observed learning curves (docs/fitting.md).

The theory (`population_theory`) is a smooth function of the teacher and training parameters:
its quadrature points are fixed (common random numbers) and every parameter enters through
closed forms, so `jax.grad` flows through the diffrax solve.  A fit is

    θ (unconstrained) --transform--> parameters (r, s, σ, ε, time scale, ...)      params.py
      --> one theory solve per *condition* (distinct known parameters), vmapped     observations.py
      --> predictions per observation (loss at a time, or the early-stopped loss)   problem.py
      --> weighted squared error (or Gaussian negative log-likelihood)

minimised by Adam (optax, reverse mode through the solve) and then Levenberg–Marquardt with the
forward-mode Jacobian of the residuals, from several starts at once (vmapped) (optimisers.py,
driven by fits.py).  Error bars are the Laplace approximation: the inverse Hessian of the
objective at the optimum (Gauss–Newton JᵀWJ, or the exact forward-over-forward Hessian), mapped
to the constrained parameters by the delta method; with correlated errors, the sandwich
(`obs_covariance`, or seed-clustered from per-seed replicates, `obs_replicates`, with Student-t
intervals), optionally with a model-discrepancy term (`discrepancy`: an error of the theory that
no replicate shows) (errors.py), and profile intervals (`profile`, profiles.py) where the
objective is not quadratic in a parameter.

The modules are named apart from the functions they define (`fits.py` holds `fit`,
`profiles.py` holds `profile`): a submodule named like a function re-exported here would be
shadowed by it (`mtjax._fitting.fit` would be the function, and `import mtjax._fitting.fit as m`
would bind it).
"""

from .errors import error_model as error_model
from .errors import theory_covariance as theory_covariance
from .fits import FitResult as FitResult, fit as fit, fit_table as fit_table, log10_stderr as log10_stderr
from .observations import (
    KNOWN_COLUMNS as KNOWN_COLUMNS,
    Observations as Observations,
    observations_from_table as observations_from_table,
)
from .params import DEFAULT_TRANSFORMS as DEFAULT_TRANSFORMS, TRANSFORMS as TRANSFORMS, Param as Param
from .problem import FitProblem as FitProblem, make_problem as make_problem
from .profiles import Profile as Profile, profile as profile
