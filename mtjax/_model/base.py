"""The model interface: one way to produce the learning curves of an `Experiment`.

Every consumer of curves — `sweep`, `compare`, fitting and design — talks to a model through
this interface only, so a new theory is one new file here (see `docs/architecture.md`):

- `history(experiment, seeds, context)`: the curves of one run as a `History` (the same fields
  for every model), pure and vmappable over the experiment's array fields and the seeds;
- `prepare(experiment, seeds)`: optional data shared by a chunk of runs, computed once outside
  the vmapped program (the simulation's shared input pool; None for the theories);
- `bytes_per_run(experiment, shared_inputs)`: peak memory of one run in a vmapped chunk, for
  chunk sizing;
- `settings()`: what identifies the model in a sweep's manifest (and its resume fingerprint);
- `check(experiment)`: a one-line `ValueError` for an experiment the model cannot handle,
  raised before a sweep writes anything;
- `run_grid(grid, seed_scope)`: the grid the model needs (a theory averages over training sets,
  so where the seed only draws them it is dropped).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar

import equinox as eqx
import numpy as np

from .._experiment import Experiment, Seeds
from .._train import History


class AbstractModel(eqx.Module):
    """A way to produce learning curves (`Simulation`, `PopulationTheory`, `FiniteDataTheory`)."""

    # The table's `model` column and the CLI's name for it.
    name: ClassVar[str]
    # The `source` column of sweep tables (kept for tables written before the `model` column).
    source: ClassVar[str]
    # Whether `history` can be differentiated w.r.t. the experiment's array fields (fitting).
    differentiable: ClassVar[bool]
    # Whether the curves depend on the training-set sizes `train.n_train_active` as continuous
    # values (the finite-data theory): then data sizes can be known columns or free in a fit.
    data_sizes: ClassVar[bool] = False
    # Theory solves evaluated at once when a fit evaluates many conditions (None: all in one
    # vmapped program): bounds the memory of fits to large tables.
    fit_batch: ClassVar[int | None] = None
    # `fit(cheap_trials=None)`'s default: judge Levenberg–Marquardt trial steps by the residuals
    # alone (a second compiled program) where a Jacobian costs several solves.
    cheap_trials: ClassVar[bool] = False

    @abc.abstractmethod
    def history(self, experiment: Experiment, seeds: Seeds, context: Any = None) -> History:
        """The curves of one run (T evaluations x K tasks) at the experiment's evaluation times."""

    def prepare(self, experiment: Experiment, seeds: Seeds) -> Any:
        """Data shared by every run of a chunk whose `seeds` (unbatched fields) agree, computed
        once outside the vmapped program and passed to `history` as `context`. Default: None."""
        return None

    @abc.abstractmethod
    def bytes_per_run(self, experiment: Experiment, shared_inputs: bool) -> int:
        """Rough peak memory (bytes) of one run inside a vmapped chunk."""

    def settings(self) -> dict[str, Any]:
        """Plain values that identify the model (its solver's settings), for manifests."""
        return {}

    def check(self, experiment: Experiment) -> None:
        """Raise a one-line `ValueError` if the model cannot handle `experiment`."""

    def run_grid(self, grid: dict[str, list], seed_scope: str) -> dict[str, list]:
        """The grid this model is run on (default: the whole grid)."""
        return dict(grid)

    def test_loss_at(self, experiment: Experiment, seeds: Seeds, ts) -> tuple:
        """(test loss (T, K) at the times `ts` (T,), diverged ()): what fitting and design
        differentiate. Only differentiable models (the theories) have it."""
        raise ValueError(f"model {self.name!r} cannot be fitted or used for design (not differentiable): "
                         "pass model=mtjax.PopulationTheory(...) or mtjax.FiniteDataTheory(...)")

    def reseeded(self, offset) -> "AbstractModel | None":
        """The same model with Monte Carlo draws independent of this one's (`offset`: a nonzero
        integer, traceable), or None where the model has no draws (a deterministic quadrature).
        `fit(theory_replicates=M)` solves M such copies to measure the Monte Carlo error of the
        predictions it fits."""
        return None

    def forward_mode(self) -> "AbstractModel":
        """The same model set up for forward-mode differentiation (`jax.jacfwd`), where its
        solver needs it (diffrax's reverse-mode adjoints cannot be entered by forward mode)."""
        return self


def solver_settings(solver) -> dict[str, Any]:
    """A solver's settings as plain values (for manifests and their fingerprints)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(solver):
        v = getattr(solver, f.name)
        if isinstance(v, (int, float, bool, str)):
            out[f.name] = v
        elif getattr(v, "shape", None) == ():
            out[f.name] = int(v) if np.issubdtype(np.asarray(v).dtype, np.integer) else float(v)
        else:
            out[f.name] = type(v).__name__
    return out


def check_linear(model: str, experiment: Experiment) -> None:
    if experiment.student.activation != "linear":
        raise ValueError(
            f"model {model!r}: the theory needs a linear student, got student.activation="
            f"{experiment.student.activation!r}; set student.activation = 'linear' or simulate only"
        )


def check_initial(initial: str) -> str:
    if initial not in ("quenched", "typical"):
        raise ValueError(f"initial={initial!r} is not one of ['quenched', 'typical']")
    return initial


def drop_training_seed(grid: dict[str, list], seed_scope: str) -> dict[str, list]:
    """A theory averages over training sets: where the seed only draws the training subset
    (seed_scope "train") it plays no role, and the theory is solved once per realisation."""
    return {k: v for k, v in grid.items() if not (k == "seed" and seed_scope == "train")}


class AbstractTheory(AbstractModel):
    """A theory with a `solver` and an `initial` condition ("quenched" or "typical"): what every
    theory shares (manifest settings, the linear-student check, the grid without the training
    seed, `test_loss_at`). A member implements `solve(experiment, seeds, ts)`, returning a
    result with `test_loss` (T, K) and `diverged` (), and `history`."""

    @abc.abstractmethod
    def solve(self, experiment: Experiment, seeds: Seeds, ts=None):
        """The theory's result at the times `ts` (default: the experiment's evaluation times)."""

    def settings(self) -> dict[str, Any]:
        return {**solver_settings(self.solver), "initial": self.initial}

    def check(self, experiment: Experiment) -> None:
        check_linear(self.name, experiment)

    def run_grid(self, grid: dict[str, list], seed_scope: str) -> dict[str, list]:
        return drop_training_seed(grid, seed_scope)

    def test_loss_at(self, experiment: Experiment, seeds: Seeds, ts) -> tuple:
        th = self.solve(experiment, seeds, ts)
        return th.test_loss, th.diverged
