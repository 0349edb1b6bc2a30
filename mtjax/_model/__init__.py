"""Models: the ways to produce the learning curves of an `Experiment` (see `base.py`)."""

from .base import AbstractModel as AbstractModel, model_from_name as model_from_name
from .finite_data import FiniteDataTheory as FiniteDataTheory
from .population import PopulationTheory as PopulationTheory
from .simulation import Simulation as Simulation
