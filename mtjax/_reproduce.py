"""The reproduction of the authors' runs: `mtjax/_reproduction/` (this name is kept for
existing imports)."""

from ._reproduction import *  # noqa: F401,F403
from ._reproduction import _distinct_runs, _ours_in_authors_format  # noqa: F401
