"""Reproduction of the authors' published runs (Lee & Ndirango 2019) with the paper preset.

`reproduce(experiment, scale)` reads the authors' CSV (`rank-10`, `rank-3`, `aux-train-pts`,
`deep-nonlinear`; one row per run), derives the sweep grid from it so that our cells are exactly
theirs, runs the grid with `mtjax.sweep` (vmapped, resumable on disk), writes our runs in the
authors' column format and compares cell by cell.

**Scales.**

- `"full"`: every cell of the authors' file, all 5 seeds.
- `"quick"`: a fixed subset, all 5 seeds — the s_a, s_b, r values of `QUICK_AXES` and the data
  sizes of `QUICK_SIZES[experiment]`.  For `rank-10`: ntrain ∈ {100, 200}, r ∈ {0, 0.5, 1},
  s_a ∈ {0.158, 2.51, 10}, s_b ∈ {0.01, 0.158, 2.51, 10}: 72 multitask + 6 single-task cells,
  390 runs.  ntrain = 200 is included because it is the smallest size where the authors' benefit
  reaches |benefit| >= 0.02 (at ntrain = 100 no cell does), and small sizes are the cheap ones:
  the cost of a run is proportional to its SGD steps, 2000 x ceil(ntrain/128) x (1 + m).

**Protocol differences (all deliberate, see docs/reproduction.md):** the validation loss is
evaluated every `eval_every` = 10 epochs instead of every epoch (the early-stopped minimum of a
curve that moves by O(lr) per step; evaluation would otherwise dominate the cost), and the
teacher, data pool and student init are *our* realisation `k`, not the authors' — every
cell therefore carries a realisation offset that the seed standard error does not show; run
several realisations (`realisations=3`) to measure it."""

from .data import (  # noqa: F401
    LOSS as LOSS,
    SIZE_COLS as SIZE_COLS,
    MULTI_CELL as MULTI_CELL,
    SINGLE_CELL as SINGLE_CELL,
    SIGN_THRESHOLD as SIGN_THRESHOLD,
    TOLERANCE as TOLERANCE,
    PaperExperiment as PaperExperiment,
    EXPERIMENTS as EXPERIMENTS,
    QUICK_AXES as QUICK_AXES,
    QUICK_SIZES as QUICK_SIZES,
    SCALES as SCALES,
    default_data_dir as default_data_dir,
    _check_experiment as _check_experiment,
    _normalise as _normalise,
    authors_table as authors_table,
)
from .cells import (  # noqa: F401
    _near as _near,
    select_cells as select_cells,
    reproduction_grid as reproduction_grid,
    reproduction_spec as reproduction_spec,
    run_cost as run_cost,
    _distinct_runs as _distinct_runs,
)
from .statistics import (  # noqa: F401
    _ours_in_authors_format as _ours_in_authors_format,
    _cell_stats as _cell_stats,
    cell_statistics as cell_statistics,
    _CELL as _CELL,
    compare as compare,
    headline as headline,
    benefit_from_runs as benefit_from_runs,
)
from .report import (  # noqa: F401
    _pct as _pct,
    _fmt as _fmt,
    report_markdown as report_markdown,
    _md_table as _md_table,
)
from .run import (  # noqa: F401
    ReproductionResult as ReproductionResult,
    reproduce as reproduce,
)
