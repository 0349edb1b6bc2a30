"""The finite-data theory's former single module: re-exports of `mtjax._finite` (the theory,
docs/dmft.md) and `mtjax._metrics` (the label-mixture metrics) for the modules, tests and
benchmarks that import these names from here."""

from ._finite.compiled import (
    _bucket as _bucket,
    _CACHE_LOCK as _CACHE_LOCK,
    _CACHE_SIZE as _CACHE_SIZE,
    _call_compiled as _call_compiled,
    _COMPILES as _COMPILES,
    _LARGE_PROGRAMS as _LARGE_PROGRAMS,
    _report_times as _report_times,
    _SMALL_PROGRAMS as _SMALL_PROGRAMS,
    release_compiled as release_compiled,
    set_compiled_cache_size as set_compiled_cache_size,
)
from ._finite.fixed_point import _fixed_point as _fixed_point, _rel as _rel
from ._finite.kernels import (
    _causal_memory_scan as _causal_memory_scan,
    _response as _response,
    _softmax_jacobian as _softmax_jacobian,
    _steps_padded as _steps_padded,
    _time_blocks as _time_blocks,
    psd_factor as psd_factor,
    weight_process as weight_process,
)
from ._finite.sampling import SAMPLINGS as SAMPLINGS, _eval_points as _eval_points, _input_draws as _input_draws
from ._finite.single import (
    _Draws as _Draws,
    _example_process as _example_process,
    _iteration as _iteration,
    _Problem as _Problem,
    _Solution as _Solution,
    _test_metrics as _test_metrics,
    solve_single_task as solve_single_task,
)
from ._finite.solver import STEP_SCHEDULES as STEP_SCHEDULES, FiniteDataSolver as FiniteDataSolver
from ._finite.theory import (
    FiniteTheoryResult as FiniteTheoryResult,
    finite_data_replicas as finite_data_replicas,
    finite_data_theory as finite_data_theory,
    finite_theory_history as finite_theory_history,
)
from ._finite.trunk import (
    _effective_heads as _effective_heads,
    _teacher_frame_draws as _teacher_frame_draws,
    _trunk_example_process as _trunk_example_process,
    _trunk_iteration as _trunk_iteration,
    _TrunkDraws as _TrunkDraws,
    _TrunkProblem as _TrunkProblem,
    solve_trunk as solve_trunk,
)
from ._metrics import (
    argmax_probability as argmax_probability,
    likelihood_ratio as _likelihood_ratio,
)
