"""The population (infinite-data) mean-field theory as a model."""

from __future__ import annotations

from typing import Any, ClassVar

import diffrax
import equinox as eqx

from .._experiment import Experiment, Seeds
from .._population import PopulationSolver, is_nonlinear, population_theory, theory_history
from .._train import History
from .base import AbstractTheory, check_initial


class PopulationTheory(AbstractTheory):
    """The exact N → ∞ flow of the population loss (infinite data; the online protocol's
    theory), integrated with diffrax (`mtjax.population_theory`, docs/theory.md), for linear and
    nonlinear trunks.

    - `solver`: `PopulationSolver` (default `PopulationSolver()`).
    - `initial`: "quenched" (the simulation's own initial student, projected) or "typical"."""

    solver: PopulationSolver
    initial: str = eqx.field(static=True)
    name: ClassVar[str] = "population"
    source: ClassVar[str] = "theory"
    differentiable: ClassVar[bool] = True

    def __init__(self, solver: PopulationSolver | None = None, initial: str = "quenched"):
        self.solver = PopulationSolver() if solver is None else solver
        self.initial = check_initial(initial)

    def check(self, experiment: Experiment) -> None:
        """Every trunk activation is covered (nonlinear trunks: docs/theory.md §5.2)."""

    def history(self, experiment: Experiment, seeds: Seeds, context: Any = None) -> History:
        return theory_history(self.solve(experiment, seeds))

    def bytes_per_run(self, experiment: Experiment, shared_inputs: bool) -> int:
        """Quadrature of one saved time, the solver's stages, and the saved states and overlaps."""
        t, st, tr, s = experiment.teacher, experiment.student, experiment.train, self.solver
        C = t.n_classes
        Dp = t.n_tasks * t.rank + (st.width if st.depth else t.n_tasks * C)
        evals = s.n_quad_eval * (4 * C + Dp) * tr.n_tasks  # one saved time at a time (lax.map)
        field = 8 * s.n_quad * C * tr.n_tasks
        if is_nonlinear(st):  # reduced inputs, every layer's activations and their cotangents
            per_point = t.rank + Dp + 2 * st.depth * st.width + C * (C + 2)
            evals = s.n_quad_eval * per_point * tr.n_tasks
            field = 3 * s.n_quad * per_point * tr.n_tasks + s.n_sets * s.n_quad * (t.rank + Dp)
        fans = [Dp] + [st.width] * st.depth
        params = sum(a * st.width for a in fans[:-1]) + tr.n_tasks * fans[-1] * C
        saved = tr.n_evals * (params + tr.n_tasks * (3 + C * C * tr.n_tasks + C * t.rank))
        return 4 * (evals + field + 12 * params + saved) + 4096

    def solve(self, experiment: Experiment, seeds: Seeds, ts=None):
        return population_theory(experiment, seeds, ts, solver=self.solver, initial=self.initial)

    def forward_mode(self) -> "PopulationTheory":
        return eqx.tree_at(lambda m: m.solver.adjoint, self, diffrax.ForwardMode())
