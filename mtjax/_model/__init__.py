"""Models: the ways to produce the learning curves of an `Experiment` (see `base.py`)."""

from .base import AbstractModel as AbstractModel
from .finite_data import FiniteDataTheory as FiniteDataTheory
from .population import PopulationTheory as PopulationTheory
from .simulation import Simulation as Simulation

_NAMES = {"simulation": "Simulation", "population": "PopulationTheory", "finite-data": "FiniteDataTheory"}


def model_from_name(name: str, solver=None, initial: str = "quenched") -> AbstractModel:
    """The model called `name` ("simulation", "population", "finite-data") with `solver`."""
    if name == "simulation":
        if solver is not None:
            raise ValueError("model 'simulation' takes no solver: pass solver only for the theories")
        return Simulation()
    if name == "population":
        return PopulationTheory(solver, initial)
    if name == "finite-data":
        return FiniteDataTheory(solver, initial)
    raise ValueError(f"model {name!r} is not one of {list(_NAMES)}")
