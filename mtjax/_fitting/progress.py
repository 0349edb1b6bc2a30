"""Progress lines on stderr for long fits and design searches."""

from __future__ import annotations

import math
import sys
from time import perf_counter


class _Progress:
    """Progress lines `LABEL: message (elapsed s)` on stderr: forced ones always, the others at most
    one per `every` seconds (a step of a large fit takes seconds; its first step compiles)."""

    def __init__(self, label: str, enabled: bool, every: float = 5.0):
        self.label, self.enabled, self.every = label, bool(enabled), every
        self.t0 = perf_counter()
        self.last = -math.inf

    def __call__(self, message: str, force: bool = False) -> None:
        now = perf_counter()
        if self.enabled and (force or now - self.last >= self.every):
            print(f"{self.label}: {message} ({now - self.t0:.1f} s)", file=sys.stderr, flush=True)
            self.last = now


def _quiet(message: str, force: bool = False) -> None:
    """The `_Progress` of a run without progress output."""
