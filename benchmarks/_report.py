"""The benchmarks' report: lines printed as they are made and written to the `--out` file."""

from __future__ import annotations

from pathlib import Path


class Report:
    """`emit = Report()`; `emit(text)` prints a line (flushed: long runs show progress) and keeps
    it; `emit.write(path)` writes every kept line (folders made; nothing for path None)."""

    def __init__(self):
        self.lines: list[str] = []

    def __call__(self, text="") -> None:
        print(text, flush=True)
        self.lines.append(str(text))

    def write(self, path) -> None:
        if path is None:
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(self.lines) + "\n")
