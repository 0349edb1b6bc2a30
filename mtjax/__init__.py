"""mtjax: a JAX-accelerated, differentiable theory engine for multitask learning in deep softmax classifiers."""

from importlib.metadata import PackageNotFoundError, version

from ._experiment import Experiment as Experiment, Seeds as Seeds, TrainConfig as TrainConfig
from ._spec import (
    experiment_from_spec as experiment_from_spec,
    normalise_spec as normalise_spec,
    paper as paper,
    paper_spec as paper_spec,
)
from ._gaussian import (
    SoftmaxMoments as SoftmaxMoments,
    TeacherConstants as TeacherConstants,
    softmax_moments as softmax_moments,
    sobol_normals as sobol_normals,
    teacher_constants as teacher_constants,
)
from ._population import (
    PopulationSolver as PopulationSolver,
    TheoryResult as TheoryResult,
    population_theory as population_theory,
    reduce_student as reduce_student,
    task_rates as task_rates,
    theory_history as theory_history,
)
from ._student import Dense as Dense, Student as Student, StudentConfig as StudentConfig
from ._sweep import (
    SweepResult as SweepResult,
    expand_grid as expand_grid,
    merge_parts as merge_parts,
    multitask_benefit as multitask_benefit,
    sweep as sweep,
)
from ._teacher import (
    Teacher as Teacher,
    TeacherConfig as TeacherConfig,
    sample_inputs as sample_inputs,
    teacher_coefficients as teacher_coefficients,
)
from ._train import (
    History as History,
    TaskData as TaskData,
    accuracy as accuracy,
    cross_entropy as cross_entropy,
    make_datasets as make_datasets,
    make_inputs as make_inputs,
    simulate as simulate,
    simulate_batch as simulate_batch,
)
from . import presets as presets

try:
    __version__ = version("mtjax")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"
from ._dmft import (
    FiniteDataSolver as FiniteDataSolver,
    FiniteTheoryResult as FiniteTheoryResult,
    finite_data_theory as finite_data_theory,
    finite_theory_history as finite_theory_history,
)
