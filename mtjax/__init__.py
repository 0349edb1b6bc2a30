"""mtjax: a JAX-accelerated, differentiable theory engine for multitask learning in deep softmax classifiers."""

from ._version import __version__ as __version__

from ._distributed import initialize as distributed_initialize, local_mesh as local_mesh
from ._experiment import Experiment as Experiment, Seeds as Seeds, TrainConfig as TrainConfig
from ._spec import (
    experiment_from_spec as experiment_from_spec,
    normalise_spec as normalise_spec,
    demo_spec as demo_spec,
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
    lift_student as lift_student,
    population_theory as population_theory,
    reduce_student as reduce_student,
    task_rates as task_rates,
    theory_history as theory_history,
)
from ._reproduction import (
    ReproductionResult as ReproductionResult,
    authors_table as authors_table,
    benefit_from_runs as benefit_from_runs,
    cell_statistics as cell_statistics,
    default_data_dir as default_data_dir,
    compare as compare_with_authors,
    headline as reproduction_headline,
    report_markdown as reproduction_report,
    reproduce as reproduce,
    reproduction_spec as reproduction_spec,
    select_cells as select_cells,
)
from ._student import Dense as Dense, Student as Student, StudentConfig as StudentConfig
from ._store import (
    ResumableTable as ResumableTable,
    load_sweep as load_sweep,
    load_table as load_table,
    save_table as save_table,
)
from ._axes import (
    PARAM_COLUMNS as PARAM_COLUMNS,
    SEED_AXES as SEED_AXES,
    apply_axes as apply_axes,
    check_grid as check_grid,
)
from ._model import (
    AbstractModel as AbstractModel,
    FiniteDataTheory as FiniteDataTheory,
    PopulationTheory as PopulationTheory,
    Simulation as Simulation,
)
from ._compare import Comparison as Comparison, compare as compare, default_models as default_models
from ._tables import benefit_reference as benefit_reference, varying_columns as varying_columns
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
    train_on_datasets as train_on_datasets,
)
from ._fitting import (
    FitProblem as FitProblem,
    FitResult as FitResult,
    Observations as Observations,
    Param as Param,
    Profile as Profile,
    error_model as error_model,
    fit as fit,
    fit_table as fit_table,
    make_problem as make_problem,
    observations_from_table as observations_from_table,
    profile as profile,
    theory_covariance as theory_covariance,
)
from ._design import (
    DesignResult as DesignResult,
    StoppingResult as StoppingResult,
    early_stopped_loss as early_stopped_loss,
    optimal_aux_data_size as optimal_aux_data_size,
    optimal_stopping_time as optimal_stopping_time,
    optimal_task_weight as optimal_task_weight,
)
from . import presets as presets


def __getattr__(name: str):
    # `mtjax.plots` imports matplotlib: it is loaded on first access, not by `import mtjax`.
    if name == "plots":
        import importlib

        return importlib.import_module(".plots", __name__)
    raise AttributeError(f"module 'mtjax' has no attribute {name!r}")


from ._finite.compiled import release_compiled as release_compiled, set_compiled_cache_size as set_compiled_cache_size
from ._finite.solver import FiniteDataSolver as FiniteDataSolver, fit_solver as fit_solver
from ._finite.theory import (
    FiniteTheoryResult as FiniteTheoryResult,
    finite_data_replicas as finite_data_replicas,
    finite_data_theory as finite_data_theory,
    finite_theory_history as finite_theory_history,
)
