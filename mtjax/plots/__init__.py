"""Matplotlib figures of sweep tables (learning curves, multitask benefit, model comparison).

Every function takes tidy tables as written by `mtjax.sweep` (or joined by `mtjax.compare`) and
returns a `Figure`; nothing here computes physics.
"""

from ._common import MODEL_STYLES as MODEL_STYLES, SETTING_COLUMNS as SETTING_COLUMNS
from .benefit import (
    plot_benefit as plot_benefit,
    plot_benefit_grid as plot_benefit_grid,
    plot_benefit_heatmap as plot_benefit_heatmap,
)
from .comparison import plot_comparison as plot_comparison
from .curves import (
    plot_curves_with_theory as plot_curves_with_theory,
    plot_learning_curves as plot_learning_curves,
    plot_sweep as plot_sweep,
)
from .fit import plot_fit as plot_fit
