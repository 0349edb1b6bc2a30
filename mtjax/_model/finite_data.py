"""The finite-data theory (DMFT of full-batch GD) as a model."""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import equinox as eqx
import jax.numpy as jnp

from .._dmft import FiniteDataSolver, finite_data_theory, finite_theory_history
from .._finite.theory import _check_theory_inputs, check_width
from .._experiment import Experiment, Seeds
from .._train import History
from .base import AbstractTheory, check_initial


_SOLVER_DEFAULTS = inspect.signature(FiniteDataSolver.__init__).parameters
# Settings added after sweeps were first stored: left out of a manifest at their defaults.
_OMIT_AT_DEFAULT = ("relu_sharpness", "response", "response_step", "average_maps", "average_clip")


class FiniteDataTheory(AbstractTheory):
    """The dynamical mean-field theory of full-batch GD on finite training sets (N → ∞ at
    fixed α = P / N; `mtjax.finite_data_theory`, docs/dmft.md): overfitting, early stopping and
    the data-size dependence of the multitask benefit.

    - `solver`: `FiniteDataSolver` (default `FiniteDataSolver()`).
    - `initial`: "quenched" (the simulation's own initial overlaps) or "typical" (N → ∞).
    - `width`: "fixed" (N → ∞ at fixed trunk width), "proportional" (H / N fixed: a linear
      trunk, orthogonal init, `initial="typical"`; docs/dmft.md §4.3) or "proportional_n" (the
      same with the O(D/N) corrections at the experiment's own N, §4.4)."""

    solver: FiniteDataSolver
    initial: str = eqx.field(static=True)
    width: str = eqx.field(static=True)
    name: ClassVar[str] = "finite-data"
    source: ClassVar[str] = "theory-finite"
    differentiable: ClassVar[bool] = True
    data_sizes: ClassVar[bool] = True
    # A paper-preset solve holds ~0.1–0.2 GB while it runs (draws, fields, response chunks).
    fit_batch: ClassVar[int | None] = 8
    # A Jacobian is the solve plus P tangents, and a noisy optimum rejects many trial steps.
    cheap_trials: ClassVar[bool] = True

    def __init__(self, solver: FiniteDataSolver | None = None, initial: str = "quenched", width: str = "fixed"):
        self.solver = FiniteDataSolver() if solver is None else solver
        self.initial = check_initial(initial)
        check_width(width, initial)
        self.width = width

    def settings(self) -> dict[str, Any]:
        # "fixed" and the later settings at their defaults are left out, so the manifests (and
        # resume fingerprints) of sweeps stored before those settings existed stay as they were.
        base = super().settings()
        for name in _OMIT_AT_DEFAULT:
            if name in base and base[name] == _SOLVER_DEFAULTS[name].default:
                del base[name]
        return base if self.width == "fixed" else {**base, "width": self.width}

    def check(self, experiment: Experiment) -> None:
        _check_theory_inputs(experiment, self.initial, self.width)

    def history(self, experiment: Experiment, seeds: Seeds, context: Any = None) -> History:
        return finite_theory_history(self.solve(experiment, seeds))

    def bytes_per_run(self, experiment: Experiment, shared_inputs: bool) -> int:
        """Kernels (T H)², the response 3 n_response (T H)², the draws, the test quadrature."""
        t, st, tr, s = experiment.teacher, experiment.student, experiment.train, self.solver
        C = t.n_classes
        T = s.n_grid + 1
        if self.width != "fixed":
            # Coefficient rows of the two populations (the logit map's and 2L layer histories', each
            # 2 T Q d), the draws of ξ (K 2 S d), the examples' fields and errors, the response per task
            # (`wide._map`, `wide._iteration`).
            K, L = tr.n_tasks, st.depth
            Q = K * C
            d = Q + L + T * Q
            per_task = 3 * s.n_response * (T * C) ** 2 + 2 * s.n_draws * d + 18 * s.n_draws * T * C
            return 4 * (2 * (2 * L + 1) * T * Q * d + T * T * Q * Q + K * per_task + s.n_quad_eval * (4 * C + t.rank)) + 4096
        H = st.width if st.depth else C
        per_task = 3 * s.n_response * (T * H) ** 2 + 12 * s.n_draws * T * H + 8 * (T * H) ** 2
        return 4 * (tr.n_tasks * per_task + s.n_quad_eval * (4 * C + t.rank)) + 4096

    def reseeded(self, offset) -> "FiniteDataTheory":
        """The solver's `seed` shifted by `offset`: every fixed draw of the solve is new."""
        return eqx.tree_at(lambda m: m.solver.seed, self, self.solver.seed + jnp.asarray(offset, jnp.int32))

    def solve(self, experiment: Experiment, seeds: Seeds, ts=None):
        return finite_data_theory(experiment, seeds, ts, solver=self.solver, initial=self.initial, width=self.width)
