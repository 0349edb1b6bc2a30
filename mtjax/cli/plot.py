"""`mtjax plot`: figures of a finished sweep, with a theory of the same experiment on top."""

from __future__ import annotations

import json
import math
from pathlib import Path


def _load_sweep(d: Path):
    import mtjax

    try:
        res = mtjax.load_sweep(d)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    summary, curves = res.summary, res.curves
    benefit = None
    if "single_task" in summary and summary["single_task"].astype(bool).nunique() == 2:
        benefit = mtjax.multitask_benefit(summary)
    return curves, benefit


_EVAL_ONLY_KEYS = {("train", "eval_every"), ("train", "n_test")}


def _same_value(a, b) -> bool:
    """Spec/grid values equal up to float rounding; a scalar equals a list of copies of it (a
    per-task value given once)."""
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        a, b = (list(v) if isinstance(v, (list, tuple)) else [v] for v in (a, b))
        a, b = (a * len(b) if len(a) == 1 else a), (b * len(a) if len(b) == 1 else b)
        return len(a) == len(b) and all(_same_value(u, v) for u, v in zip(a, b))
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _check_same_experiment(results: Path, theory: Path) -> None:
    """Raise a one-line `ValueError` unless `theory` is a theory sweep of the experiment of
    `results`: same teacher/student/train sections (normalised, defaults filled in, evaluation-only
    keys ignored) and the same grid axes and values (seed axes ignored: a theory averages over them)."""
    import inspect

    import mtjax
    from mtjax import SEED_AXES

    manifests = {}
    for flag, d in (("RESULTS", results), ("--theory", theory)):
        if not (d / "manifest.json").exists():
            raise ValueError(f"{flag} {d}: no manifest.json, so it cannot be checked to be the same experiment; "
                             "pass a sweep folder written by mtjax simulate/theory")
        manifests[flag] = json.loads((d / "manifest.json").read_text())
    sim, th = manifests["RESULTS"], manifests["--theory"]
    if not str(th.get("source", "")).startswith("theory"):
        raise ValueError(f"--theory {theory}: its source is {th.get('source')!r}, not 'theory' or 'theory-finite'; "
                         "pass a folder written by mtjax theory")
    fix = f"pass a theory sweep of the same config and grid as {results} (mtjax theory --config ...)"
    configs = {"teacher": mtjax.TeacherConfig, "student": mtjax.StudentConfig, "train": mtjax.TrainConfig}
    specs = [mtjax.normalise_spec(m.get("spec", {})) for m in (sim, th)]
    for sec, cls in configs.items():
        defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items() if p.default is not p.empty}
        a, b = specs[0].get(sec, {}), specs[1].get(sec, {})
        for key in [*a, *(k for k in b if k not in a)]:
            if (sec, key) in _EVAL_ONLY_KEYS:
                continue
            va, vb = a.get(key, defaults.get(key)), b.get(key, defaults.get(key))
            if not _same_value(va, vb):
                raise ValueError(f"--theory {theory}: its spec differs at {sec}.{key} ({vb!r} there, {va!r} in {results}); {fix}")
    ga, gb = ({k: v for k, v in m.get("grid", {}).items() if k not in SEED_AXES} for m in (sim, th))
    for axis in [*ga, *(k for k in gb if k not in ga)]:
        if axis not in ga or axis not in gb:
            where = "only the theory" if axis in gb else f"only {results}"
            raise ValueError(f"--theory {theory}: grid axis {axis} is in {where}; {fix}")
        if not _same_value(sorted(ga[axis]), sorted(gb[axis])):
            raise ValueError(f"--theory {theory}: grid axis {axis} differs ({gb[axis]!r} there, {ga[axis]!r} in {results}); {fix}")


def cmd_plot(args) -> None:
    from mtjax import plots

    d = Path(args.results)
    if args.theory:
        _check_same_experiment(d, Path(args.theory))
    curves, benefit = _load_sweep(d)
    th_curves, th_benefit = _load_sweep(Path(args.theory)) if args.theory else (None, None)
    fmt = args.format
    written = []

    def save(fig, path):
        fig.savefig(path, dpi=120)
        written.append(str(path))

    save(plots.plot_sweep(curves, benefit), Path(args.output) if args.output else d / f"overview.{fmt}")
    if curves is not None:
        save(plots.plot_curves_with_theory(curves, th_curves), d / f"curves.{fmt}")
    if benefit is not None and benefit["benefit"].notna().any():
        save(plots.plot_benefit_grid(benefit, th_benefit), d / f"benefit_grid.{fmt}")
        if benefit["relatedness"].nunique() > 1 and benefit["s_b"].nunique() > 1:
            facet = "s_a" if benefit["s_a"].nunique() > 1 else None
            save(plots.plot_benefit_heatmap(benefit, th_benefit, facet=facet), d / f"benefit_heatmap.{fmt}")
    print("wrote " + ", ".join(written))


def register(sub) -> None:
    """Add the plot subcommand to `sub`."""
    pl = sub.add_parser("plot", help="figures of a finished sweep: curves, benefit grid and heatmap (PNG/PDF)")
    pl.add_argument("results", help="a sweep folder, e.g. results/demo")
    pl.add_argument("--output", help="PNG or PDF path of the overview (default RESULTS/overview.FORMAT)")
    pl.add_argument("--format", choices=["png", "pdf"], default="png", help="format of the figures (default png)")
    pl.add_argument("--theory", help="a theory sweep folder (mtjax theory) of the same grid to overlay")
    pl.set_defaults(func=cmd_plot)
