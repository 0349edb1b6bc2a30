"""Named experiment presets. `paper(...)` reproduces the authors' generator and protocol."""

from ._spec import paper as paper, paper_spec as paper_spec

__all__ = ["paper", "paper_spec"]
