"""`mtjax` command line: a thin layer over the Python API (`mtjax.sweep`, `mtjax.plots`)."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

DESCRIPTION = """\
mtjax — simulate and predict multitask learning in deep softmax classifiers.

Two tasks share a network trunk, each has its own softmax head, and each is a noisy linear
teacher (relatedness r = overlap of the teachers' input subspaces, signal scales s_a, s_b).
`mtjax` trains thousands of such students at once (jit + vmap) and reports when training
on task 2 helps task 1 (multitask benefit = single-task loss − multitask loss).

Start here:
  mtjax demo                          simulation and both theories on a small grid: tables and a figure
  mtjax compare --config FILE.toml    one grid through simulation and theories, joined (model column)
  mtjax simulate --config FILE.toml   a sweep described in a TOML file (see README)
  mtjax theory --config FILE.toml     the same grid predicted by the mean-field theory
  mtjax plot results/NAME             figures of a finished sweep
  mtjax merge results/NAME            assemble the tables from the part files of every process
  mtjax reproduce rank-10             rerun the authors' experiment, compare with their CSV
  mtjax fit TABLE.csv --free relatedness s_a s_b    fit theory parameters to observed curves
  mtjax design w2 --config FILE.toml  optimal task-2 weight / aux data size / stopping time
"""

def _enable_compilation_cache() -> None:
    """Reuse XLA compilations across CLI invocations (a second `mtjax demo` skips compiling)."""
    import jax

    cache = os.environ.get("MTJAX_CACHE_DIR", str(Path.home() / ".cache" / "mtjax" / "xla"))
    try:
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    except Exception:  # pragma: no cover - older jax without the option
        pass


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        low = text.lower()
        if low in ("true", "false"):
            return low == "true"
        return text


def _apply_sets(spec: dict, sets: list[str]) -> dict:
    for item in sets or []:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise SystemExit(f"--set expects SECTION.KEY=VALUE (e.g. train.n_epochs=100), got {item!r}")
        path, value = item.split("=", 1)
        sec, key = path.split(".", 1)
        spec.setdefault(sec, {})[key] = _parse_value(value)
    return spec


def _apply_grid(grid: dict, items: list[str]) -> dict:
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"--grid expects AXIS=V1,V2,... (e.g. s_b=0.01,1,10), got {item!r}")
        axis, values = item.split("=", 1)
        grid[axis] = [_parse_value(v) for v in values.split(",") if v != ""]
    return grid


def _load_config(path: str) -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    p = Path(path)
    if not p.exists():
        raise SystemExit(f"--config {path}: no such file")
    with p.open("rb") as f:
        try:
            return tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise SystemExit(f"--config {path}: not valid TOML: {e}") from None


def _varying(table, exclude=("seed", "realisation", "single_task", "w_b")) -> list[str]:
    """The parameter columns that take several values in `table` (the settings to group by)."""
    from mtjax import PARAM_COLUMNS

    return [c for c in PARAM_COLUMNS if c in table and c not in exclude and table[c].nunique(dropna=True) > 1]


def _print_benefit(benefit, by_model: bool = False) -> None:
    cols = _varying(benefit) or ["s_a"]
    if by_model:
        table = benefit.pivot_table(index=cols, columns="model", values="benefit", aggfunc="mean")
        sem = benefit[benefit["model"] == "simulation"].groupby(cols)["benefit"].sem()
        if len(sem):
            table["simulation s.e."] = sem
        table = table.reset_index()
    else:
        table = benefit.groupby(cols)["benefit"].agg(["mean", "sem", "count"]).reset_index()
    print("multitask benefit on task 1 (nats, positive = task 2 helps), mean over seeds:")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))


def _write_outputs(res, benefit_needed: bool = True) -> None:
    import mtjax

    out = res.out_dir
    benefit = None
    how = mtjax.benefit_reference(res.summary) if benefit_needed else None
    if how is not None:
        benefit = mtjax.multitask_benefit(res.summary, alone=how)
        if out is not None:
            benefit.to_csv(out / "benefit.csv", index=False)
    n_div = int(res.summary.drop_duplicates("run")["diverged"].sum())
    if out is not None:
        from mtjax.plots import plot_sweep

        fig = plot_sweep(res.curves, benefit)
        fig.savefig(out / "overview.png", dpi=120)
    print(f"runs: {res.summary['run'].nunique()}  diverged: {n_div}")
    if benefit is not None:
        _print_benefit(benefit)
    if out is not None:
        print(f"wrote {out}/summary.{{csv,parquet}}, curves.parquet (and curves.csv when small), "
              + ("benefit.csv, " if benefit is not None else "") + "overview.png")


def _sweep_inputs(args, default_name: str) -> tuple[dict, dict, str]:
    """(spec, grid, name) from --config/--preset/--set/--grid/--name."""
    spec = _load_config(args.config) if args.config else {}
    if args.preset:
        spec["preset"] = args.preset
    spec = _apply_sets(spec, args.set)
    grid = _apply_grid(dict(spec.pop("grid", {}) or {}), args.grid)
    name = args.name or spec.pop("name", None) or (Path(args.config).stem if args.config else default_name)
    spec.pop("name", None)
    return spec, grid, name


def cmd_simulate(args, theory: bool = False) -> None:
    import mtjax

    distributed = args.distributed or any(v is not None for v in (args.coordinator, args.num_processes, args.process_id))
    if distributed:
        # Before anything else touches JAX: its distributed runtime must start first.
        mtjax.distributed_initialize(args.coordinator, args.num_processes, args.process_id)
    spec, grid, name = _sweep_inputs(args, "simulate")
    model = _theory_model(args) if theory else mtjax.Simulation()
    if theory and not args.name:
        # A theory of a config goes next to its simulation, not into the same folder.
        name = f"{name}-{model.name}"
    t0 = time.time()
    res = mtjax.sweep(
        spec,
        grid,
        name=name,
        out_dir=args.out,
        memory_budget=args.memory_budget * 2**20,
        max_chunk=args.max_chunk,
        save_curves=not args.no_curves,
        progress=not args.quiet,
        model=model,
        devices=args.devices,
        distributed=distributed,
    )
    print(f"finished in {time.time() - t0:.1f} s", flush=True)
    if not res.complete:
        import jax

        print(
            f"process {jax.process_index()}/{jax.process_count()} finished its slice; "
            f"{res.summary['run'].nunique()} runs are on disk so far. The last process to finish writes "
            f"summary.csv; if a process died, rerun the same command (it re-runs only what is missing).",
            flush=True,  # a cluster log must show it even if the process is then stopped at JAX's shutdown barrier
        )
        return
    _write_outputs(res)


def _theory_model(args):
    import mtjax

    if args.finite:
        solver = mtjax.FiniteDataSolver(n_grid=args.n_grid, n_draws=args.n_draws, n_response=min(256, args.n_draws))
        return mtjax.FiniteDataTheory(solver, args.initial)
    solver = mtjax.PopulationSolver(n_quad=args.n_quad, n_quad_eval=args.n_quad_eval, rtol=args.rtol, atol=args.atol)
    return mtjax.PopulationTheory(solver, args.initial)


def cmd_theory(args) -> None:
    cmd_simulate(args, theory=True)


def _write_comparison(cmp, quiet: bool = False) -> None:
    """Print and save what `mtjax.compare` returned: the benefit per model, the early-stopped
    task-1 losses side by side, and comparison.png."""
    s = cmp.summary[cmp.summary["task"] == 1]
    n_div = s[s["model"] == "simulation"].drop_duplicates("run")["diverged"].sum()
    print(f"models: {', '.join(cmp.results)}; simulated runs: {s[s['model'] == 'simulation']['run'].nunique()} "
          f"(diverged: {int(n_div)})")
    cols = _varying(s, exclude=("seed", "realisation")) or ["s_a"]
    es = s.pivot_table(index=cols, columns="model", values="early_stopped_loss", aggfunc="mean")
    sim = s[s["model"] == "simulation"].groupby(cols)["early_stopped_loss"].sem()
    if len(sim):
        es["simulation s.e."] = sim
    print("task-1 early-stopped test loss (nats), mean over seeds:")
    print(es.reset_index().to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if cmp.benefit is not None:
        _print_benefit(cmp.benefit, by_model=True)
    if cmp.out_dir is not None:
        from mtjax.plots import plot_comparison

        fig = plot_comparison(cmp.curves, cmp.benefit)
        fig.savefig(cmp.out_dir / "comparison.png", dpi=120)
        written = ["summary.csv", "curves.csv"] + (["benefit.csv"] if cmp.benefit is not None else []) + ["comparison.png"]
        print(f"wrote {cmp.out_dir}/{{{','.join(written)}}} and one folder per model")


def _compare_solvers(args, models) -> dict:
    import mtjax

    solvers = {}
    if "finite-data" in models:
        solvers["finite-data"] = mtjax.FiniteDataSolver(n_grid=args.n_grid, n_draws=args.n_draws, n_response=min(256, args.n_draws))
    if "population" in models:
        solvers["population"] = mtjax.PopulationSolver(n_quad=args.n_quad, n_quad_eval=args.n_quad_eval)
    return solvers


def cmd_compare(args) -> None:
    import mtjax

    spec, grid, name = _sweep_inputs(args, "compare")
    models = args.models or mtjax.default_models(spec)
    t0 = time.time()
    cmp = mtjax.compare(spec, grid, models=models, name=name, out_dir=args.out, solvers=_compare_solvers(args, models),
                        initial=args.initial, progress=not args.quiet, memory_budget=args.memory_budget * 2**20,
                        max_chunk=args.max_chunk, save_curves=True)
    print(f"finished in {time.time() - t0:.1f} s")
    _write_comparison(cmp)


def cmd_demo(args) -> None:
    import mtjax

    spec, grid = mtjax.demo_spec(steps=args.steps)
    spec.pop("name")
    t0 = time.time()
    # Solver sizes for a demo under 90 s on 2 cores: the finite-data grid is the GD itself
    # (n_grid = steps; a coarser grid moves the α = 4 benefit by 0.02), and 128 response draws
    # instead of 256 move no benefit by more than 0.004 nats while halving its cost.
    solvers = {"finite-data": mtjax.FiniteDataSolver(n_grid=args.steps, n_draws=1024, n_response=128),
               "population": mtjax.PopulationSolver(n_quad=1024, n_quad_eval=4096)}
    cmp = mtjax.compare(spec, grid, name="demo", out_dir=args.out, progress=not args.quiet, solvers=solvers)
    print(f"demo: simulation and both theories in {time.time() - t0:.1f} s")
    _write_comparison(cmp)


def cmd_merge(args) -> None:
    import mtjax

    d = Path(args.results)
    if not (d / "manifest.json").exists():
        raise SystemExit(f"{d}: no manifest.json (is it a sweep folder?)")
    summary, _ = mtjax.merge_parts(d)
    n = json.loads((d / "manifest.json").read_text())["n_runs"]
    have = summary["run"].nunique()
    print(f"wrote {d}/summary.csv: {have} of {n} runs" + ("" if have == n else " (incomplete: rerun the sweep command to finish it)"))


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


# Spec keys that set only how runs are evaluated, not what is learned: a theory sweep may differ in them.
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
    from mtjax._axes import SEED_AXES

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


def cmd_reproduce(args) -> None:
    import mtjax

    overrides = _apply_sets({}, args.set) or None
    res = mtjax.reproduce(
        args.experiment,
        args.scale,
        overrides=overrides,
        data_dir=args.data,
        out_dir=args.out,
        realisations=args.realisations,
        eval_every=args.eval_every,
        max_chunk=args.max_chunk,
        progress=not args.quiet,
    )
    print(res.report.split("\n## ")[0])
    if res.out_dir is not None:
        print(f"wrote {res.out_dir}/{args.experiment}.csv (the authors' columns), comparison.csv, report.md, report.json")


def _spec_from_args(args, *, manifest: Path | None = None) -> tuple[dict, dict, str | None]:
    """The experiment spec of `--config` / `--preset` / `--set`, its [grid] (taken out of the
    spec; {} if none) and the manifest it came from (None when from --config or --preset).

    Without --config and --preset: the spec recorded in `manifest` (the manifest.json of the
    sweep folder holding the table), if given and present; otherwise a one-line error naming
    --config, because the default model would describe other runs."""
    origin = None
    if args.config:
        if not Path(args.config).is_file():
            raise ValueError(f"--config {args.config}: no such file")
        try:
            spec = _load_config(args.config)
        except ValueError as e:  # tomllib.TOMLDecodeError
            raise ValueError(f"--config {args.config}: not valid TOML ({e})") from None
    elif args.preset:
        spec = {}
    elif manifest is not None and manifest.is_file():
        try:
            spec = json.loads(manifest.read_text()).get("spec")
        except (ValueError, AttributeError):
            spec = None
        if not isinstance(spec, dict):
            raise ValueError(f"{manifest} has no experiment spec (not a sweep manifest): pass --config FILE.toml")
        origin = str(manifest)
    else:
        where = f" and there is no {manifest} next to the table" if manifest is not None else ""
        raise ValueError(f"no experiment given{where}: pass --config FILE.toml (teacher/student/train of the runs) "
                         "or --preset paper")
    spec = dict(spec)
    if args.preset:
        spec["preset"] = args.preset
    spec = _apply_sets(spec, args.set)
    spec.pop("name", None)
    grid = spec.pop("grid", None) or {}
    return spec, grid, origin


def _experiment_from(spec: dict, origin: str | None):
    import mtjax

    try:
        return mtjax.experiment_from_spec(spec)
    except TypeError as e:  # an unknown key of a config section
        raise ValueError(f"{origin or '--config/--set'}: {e}") from None


def _solver_from_args(args):
    import mtjax

    return mtjax.PopulationSolver(n_quad=args.n_quad, n_quad_eval=args.n_quad_eval, rtol=args.rtol, atol=args.atol, smooth_loss=True)


def cmd_fit(args) -> None:
    """`mtjax fit`: a thin layer over `mtjax.fit_table`. Every input is checked before the fit
    starts, and --output is written only when the fit reached a finite objective."""
    import warnings

    import numpy as np
    import pandas as pd

    import mtjax

    path = Path(args.table)
    if not path.is_file():
        raise ValueError(f"table {args.table}: no such file")
    if args.output and not Path(args.output).resolve().parent.is_dir():
        raise ValueError(f"--output {args.output}: its folder does not exist")
    spec, _, origin = _spec_from_args(args, manifest=path.parent / "manifest.json")
    exp = _experiment_from(spec, origin)
    try:
        table = mtjax.load_table(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except ValueError as e:  # pandas' EmptyDataError and ParserError, UnicodeDecodeError, pyarrow's errors
        raise ValueError(f"table {args.table}: not a readable CSV or Parquet table ({' '.join(str(e).split())})") from None
    if args.query:
        try:
            table = table.query(args.query)
        except Exception as e:  # pandas raises SyntaxError, NameError, TypeError, ... for a bad expression
            raise ValueError(f"--query {args.query!r} is not a valid row selection ({type(e).__name__}: "
                             f"{' '.join(str(e).split())})") from None
        if len(table) == 0:
            raise ValueError(f"--query {args.query!r} selects no rows")
    if args.source:
        if "source" not in table:
            raise ValueError(f"--source {args.source}: the table has no 'source' column")
        have = sorted(map(str, table["source"].unique()))
        table = table[table["source"] == args.source]
        if len(table) == 0:
            raise ValueError(f"--source {args.source}: no such rows; the table's sources are {have}")
    elif "source" in table and table["source"].nunique() > 1:
        have = sorted(map(str, table["source"].unique()))
        raise ValueError(f"column 'source' takes {len(have)} values {have}: select one with --source NAME")
    inits, bys = dict(_parse_kv(args.init, str)), dict(_parse_kv(args.by, str))
    for flag, given in (("--init", inits), ("--by", bys)):
        for name, v in given.items():
            if name not in args.free:
                raise ValueError(f"{flag} {name}={v}: {name} is not among --free ({' '.join(args.free)})")
    for name, v in inits.items():
        try:
            inits[name] = float(v)
        except ValueError:
            raise ValueError(f"--init {name}={v}: the value must be a number") from None
    params = [mtjax.Param(n, inits.get(n), by=bys.get(n)) for n in args.free]
    mapping = {"value": args.value, "time": args.time, "task": args.task or None, "se": args.se, "early_stopped": args.early_stopped}
    if args.known is not None:
        mapping["known"] = args.known
    if args.time == "step":
        mapping["lr"] = float(exp.train.learning_rate)
    if origin is not None:
        print(f"experiment: the spec recorded in {origin} (no --config or --preset given)", flush=True)
    t0 = time.time()

    def one_line_warning(message, category, filename, lineno, file=None, line=None):
        print(f"mtjax fit: warning: {message}", file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        warnings.simplefilter("always", UserWarning)
        warnings.showwarning = one_line_warning
        res, problem = mtjax.fit_table(exp, table, params, seeds=mtjax.Seeds(args.seed), solver=_solver_from_args(args),
                                       initial=args.initial, loss=args.loss, mapping=mapping, n_starts=args.starts,
                                       n_adam=args.adam_steps, n_newton=args.newton_steps, progress=not args.quiet)
    if not np.isfinite(float(res.loss)):
        raise ValueError("no start reached a finite objective (the theory diverged or gave NaN at every start): "
                         "check the experiment (--config, --set) and the starting values (--init); nothing written")
    tab = res.table()
    print(f"fit of {res.n_obs} observations in {time.time() - t0:.1f} s: objective {float(res.loss):.4g}, "
          f"chi2/dof {float(res.chi2_dof):.3g}, |grad| {float(res.grad_norm):.2g}, converged {bool(res.converged)}")
    print("start objectives:", np.array2string(np.asarray(res.start_losses), precision=4))
    print(tab.to_string(index=False, float_format=lambda v: f"{v:.5g}"))
    if args.output:
        tab.to_csv(args.output, index=False)
        print(f"wrote {args.output}")


def _parse_kv(items, cast):
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"expected NAME=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        yield k, cast(v)


def cmd_design(args) -> None:
    """`mtjax design`: optimal task-2 weight, auxiliary data size, or stopping time (theory) of
    one experiment; a [grid] (or --grid) is refused, since it describes many."""
    import numpy as np

    import mtjax

    spec, grid, _ = _spec_from_args(args)
    if grid or args.grid:
        axes = list(grid) or [g.split("=", 1)[0] for g in args.grid]
        where = "the config has a [grid] table" if grid else "--grid was given"
        raise ValueError(f"design evaluates one experiment, but {where} (axes: {', '.join(axes)}): remove it and select "
                         "one point with --set SECTION.KEY=VALUE (e.g. --set teacher.relatedness=0.5)")
    exp = _experiment_from(spec, None)
    seeds, solver = mtjax.Seeds(args.seed), _solver_from_args(args)
    progress = not args.quiet
    if args.what == "stop":
        r = mtjax.optimal_stopping_time(exp, seeds, args.t_max, solver=solver, initial=args.initial, progress=progress)
        print(f"optimal stopping time t* = {float(r.time):.4g} (step {float(r.step):.0f}), task-1 loss {float(r.loss):.4f} nats"
              + ("  [at the horizon: the loss still falls]" if bool(r.at_horizon) else ""))
        return
    if args.what == "w2":
        r = mtjax.optimal_task_weight(exp, seeds, bounds=(args.w_min, args.w_max), solver=solver, initial=args.initial,
                                      progress=progress)
        name = "w_2"
    else:
        r = mtjax.optimal_aux_data_size(exp, seeds, max_multiple=args.max_multiple, solver=solver, initial=args.initial,
                                        progress=progress)
        name = "n_2"
    flag = ""
    if bool(r.on_bound):
        low = float(r.value) <= float(np.min(np.asarray(r.grid)))
        if args.what == "w2":
            side, bound = ("w_min", args.w_min) if low else ("w_max", args.w_max)
            flag = f"  [on the bound {side} = {bound:g}: widen --{side.replace('_', '-')}]"
        else:
            flag = ("  [on the bound n_2 = n_1: the smallest size searched]" if low
                    else f"  [on the bound n_2 = {args.max_multiple} n_1: widen --max-multiple]")
    print(f"optimal {name} = {float(r.value):.4g}: task-1 early-stopped loss {float(r.loss):.4f} nats "
          f"(baseline {name} = {float(r.baseline_value):.4g}: {float(r.baseline_loss):.4f})" + flag)
    for g, l in zip(np.asarray(r.grid), np.asarray(r.grid_loss)):
        print(f"  {name} = {g:10.4g}   loss {l:.4f}")


def _theory_args(parser, n_quad=512, n_quad_eval=4096, rtol=1e-4):
    parser.add_argument("--n-quad", type=int, default=n_quad, help=f"Sobol points for the vector field (default {n_quad})")
    parser.add_argument("--n-quad-eval", type=int, default=n_quad_eval, help=f"points for reported losses (default {n_quad_eval})")
    parser.add_argument("--rtol", type=float, default=rtol)
    parser.add_argument("--atol", type=float, default=1e-6)
    parser.add_argument("--initial", choices=["quenched", "typical"], default="quenched")
    parser.add_argument("--seed", type=int, default=0, help="teacher/init seed of the theory (Seeds(seed))")
    parser.add_argument("--config", help="TOML file describing the experiment (teacher/student/train); required unless "
                        "--preset is given (fit: or the table lies in a sweep folder with its manifest.json)")
    parser.add_argument("--preset", choices=["paper"], help="start from the authors' protocol")
    parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE")


def _shared_sweep_args():
    return [
        (("--config",), dict(help="TOML file describing the experiment and its grid")),
        (("--preset",), dict(choices=["paper"], help="start from the authors' protocol")),
        (("--set",), dict(action="append", metavar="SECTION.KEY=VALUE", help="override a config value, e.g. train.n_epochs=100")),
        (("--grid",), dict(action="append", metavar="AXIS=V1,V2", help="set a grid axis, e.g. s_b=0.01,1,10")),
        (("--name",), dict(help="results go to OUT/NAME (default: the config file's stem)")),
        (("--out",), dict(default="results", help="results folder (default: results)")),
        (("--memory-budget",), dict(type=float, default=2048, help="MiB per device for a vmapped chunk (default 2048)")),
        (("--max-chunk",), dict(type=int, help="at most this many runs per chunk")),
        (("--no-curves",), dict(action="store_true", help="keep only the per-run summary table")),
        (("--quiet",), dict(action="store_true", help="no progress bar")),
        (("--devices",), dict(type=int, metavar="N", help="split each chunk over the first N local devices (default: all)")),
        (("--distributed",), dict(action="store_true", help="multi-process sweep: start jax.distributed (address, count and id "
                                  "from the flags below, JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID, or SLURM) "
                                  "and sweep this process's slice of the grid")),
        (("--coordinator",), dict(metavar="HOST:PORT", help="address of process 0's coordinator (implies --distributed)")),
        (("--num-processes",), dict(type=int, metavar="P", help="number of processes (implies --distributed)")),
        (("--process-id",), dict(type=int, metavar="I", help="this process's id, 0..P-1 (implies --distributed)")),
    ]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mtjax", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("simulate", help="run a sweep of simulations (vmapped, resumable)", formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Run a sweep. The TOML file has optional keys `preset` (\"paper\"), `name`, `seed_scope`,\n"
                       "and tables [teacher], [student], [train] (keyword arguments of TeacherConfig, StudentConfig,\n"
                       "TrainConfig) and [grid] (axis = [values]). Rerunning the same command resumes an interrupted sweep.")
    for a, kw in _shared_sweep_args():
        s.add_argument(*a, **kw)
    s.set_defaults(func=cmd_simulate)

    th = sub.add_parser("theory", help="integrate the population mean-field dynamics over a grid (same tables)",
                        description="Same config and flags as `simulate`; instead of training it integrates the population\n"
                        "(infinite-data) mean-field dynamics of the linear student with diffrax and writes the same tables\n"
                        "with source = theory, so simulation and theory can be joined and plotted together.",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    for a, kw in _shared_sweep_args():
        th.add_argument(*a, **kw)
    th.add_argument("--n-quad", type=int, default=4096, help="Sobol points for the vector field (default 4096)")
    th.add_argument("--n-quad-eval", type=int, default=16384, help="points for reported losses (default 16384)")
    th.add_argument("--rtol", type=float, default=1e-4)
    th.add_argument("--atol", type=float, default=1e-6)
    th.add_argument("--finite", action="store_true",
                    help="the finite-data theory (DMFT of full-batch GD on the training sets; source = theory-finite)")
    th.add_argument("--n-grid", type=int, default=40, help="--finite: GD steps of the theory's time grid (default 40)")
    th.add_argument("--n-draws", type=int, default=2048, help="--finite: draws of the effective processes (default 2048)")
    th.add_argument("--initial", choices=["quenched", "typical"], default="quenched",
                    help="initial condition: projection of the simulation's exact init, or its N -> inf limit")
    th.set_defaults(func=cmd_theory)

    d = sub.add_parser("demo", help="simulation and both theories on a small grid (about a minute on 2 cores): tables + PNG",
                       description="Simulate full-batch GD networks on two tasks and predict them with the finite-data and\n"
                       "the population theory (mtjax compare on a built-in grid, see mtjax.demo_spec).",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("--out", default="results", help="results folder (default: results; the demo goes to OUT/demo)")
    d.add_argument("--steps", type=int, default=40, help="GD steps (default 40)")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)

    c = sub.add_parser("compare", help="the same grid through the simulation and the theories: one table, overlay figures",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Sweep the grid of a config with every model that applies (simulation; finite-data theory\n"
                       "for finite training sets; population theory), each into OUT/NAME/MODEL/ (resumable), then\n"
                       "join them: OUT/NAME/{summary,curves,benefit}.csv with a `model` column and comparison.png.")
    for a, kw in _shared_sweep_args():
        if a[0] not in ("--distributed", "--coordinator", "--num-processes", "--process-id", "--devices", "--no-curves"):
            c.add_argument(*a, **kw)
    c.add_argument("--models", nargs="+", choices=["simulation", "finite-data", "population"],
                   help="models to compare (default: those that apply to the protocol)")
    c.add_argument("--initial", choices=["quenched", "typical"], default="quenched", help="the theories' initial condition")
    c.add_argument("--n-grid", type=int, default=40, help="finite-data theory: GD steps of its time grid (default 40)")
    c.add_argument("--n-draws", type=int, default=2048, help="finite-data theory: draws of the effective processes (default 2048)")
    c.add_argument("--n-quad", type=int, default=4096, help="population theory: Sobol points for the vector field (default 4096)")
    c.add_argument("--n-quad-eval", type=int, default=16384, help="population theory: points for reported losses (default 16384)")
    c.set_defaults(func=cmd_compare)

    m = sub.add_parser("merge", help="assemble summary.csv/curves.csv from the part files of a (multi-process) sweep")
    m.add_argument("results", help="a sweep folder, e.g. results/NAME")
    m.set_defaults(func=cmd_merge)

    rp = sub.add_parser("reproduce", help="rerun one of the authors' experiments and compare with their CSV",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Rerun an experiment of Lee & Ndirango (2019) with the paper preset on the cells of the\n"
                        "authors' CSV, write our runs in their column format and a cell-by-cell comparison report.\n"
                        "quick: a documented subset (docs/reproduction.md), all seeds; full: every cell. Resumable.")
    rp.add_argument("experiment", choices=["rank-10", "rank-3", "aux-train-pts", "deep-nonlinear"])
    rp.add_argument("--scale", choices=["quick", "full"], default="quick", help="cell subset (default quick)")
    rp.add_argument("--data", help="folder of the authors' CSVs (default $MTJAX_PAPER_DATA, else the copy shipped in mtjax/data/paper)")
    rp.add_argument("--out", default="results/reproduce", help="results folder (default results/reproduce)")
    rp.add_argument("--realisations", type=int, default=1, help="teacher/data/init realisations; >1 measures their spread")
    rp.add_argument("--eval-every", type=int, default=10, help="epochs between validation evaluations (default 10)")
    rp.add_argument("--max-chunk", type=int, default=180, help="runs per vmapped chunk (default 180)")
    rp.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                    help="override the paper preset (results go to a separate folder), e.g. train.n_epochs=100")
    rp.add_argument("--quiet", action="store_true")
    rp.set_defaults(func=cmd_reproduce)

    pl = sub.add_parser("plot", help="figures of a finished sweep: curves, benefit grid and heatmap (PNG/PDF)")
    pl.add_argument("results", help="a sweep folder, e.g. results/demo")
    pl.add_argument("--output", help="PNG or PDF path of the overview (default RESULTS/overview.FORMAT)")
    pl.add_argument("--format", choices=["png", "pdf"], default="png", help="format of the figures (default png)")
    pl.add_argument("--theory", help="a theory sweep folder (mtjax theory) of the same grid to overlay")
    pl.set_defaults(func=cmd_plot)

    f = sub.add_parser("fit", help="fit theory parameters to a table of observed learning curves",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Fit the population theory to a tidy CSV (one row per observation): columns for time\n"
                       "(or step), task (1-based), the metric, optionally its standard error and known parameters\n"
                       "(relatedness, s_a, s_b, ..., single_task). Example, on a theory or simulate sweep folder:\n"
                       "  mtjax fit results/NAME/curves.csv --free relatedness s_a s_b\n"
                       "(the experiment is then the spec in results/NAME/manifest.json; elsewhere pass --config or --preset).\n"
                       "A parameter column with several values must be known per row, fitted per level (--by) or\n"
                       "selected (--query); rows with a NaN metric are refused unless their run is flagged diverged.\n"
                       "See docs/fitting.md.")
    f.add_argument("table", help="CSV of observations")
    _theory_args(f)
    f.add_argument("--free", nargs="+", required=True, help="parameters to fit: relatedness s_a s_b sigma_a ... time_scale")
    f.add_argument("--init", action="append", metavar="NAME=VALUE", help="starting value of a free parameter")
    f.add_argument("--by", action="append", metavar="NAME=COLUMN", help="one value of NAME per distinct COLUMN value")
    f.add_argument("--value", default="test_loss", help="metric column (default test_loss)")
    f.add_argument("--time", default="time", help="time column (t = lr x steps), or 'step' (default time)")
    f.add_argument("--task", default="task", help="1-based task column ('' for task 1 only)")
    f.add_argument("--se", help="standard-error column (weights 1/se^2)")
    f.add_argument("--known", nargs="*", help="known-parameter columns (default: those present, minus --free)")
    f.add_argument("--early-stopped", action="store_true", help="the metric is an early-stopped minimum up to `time`")
    f.add_argument("--query", help="pandas query selecting rows, e.g. 'time > 0'")
    f.add_argument("--source", help="keep rows with this `source` (simulation / theory)")
    f.add_argument("--loss", choices=["wls", "gaussian"], default="wls")
    f.add_argument("--starts", type=int, default=4)
    f.add_argument("--adam-steps", type=int, default=40)
    f.add_argument("--newton-steps", type=int, default=30)
    f.add_argument("--output", help="write the fitted parameters (CSV)")
    f.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    f.set_defaults(func=cmd_fit)

    de = sub.add_parser("design", help="optimal task-2 weight, auxiliary data size or stopping time (theory)")
    de.add_argument("what", choices=["w2", "aux", "stop"], help="w2: loss weight of task 2; aux: n_2 (paper protocol); stop: t*")
    _theory_args(de)
    de.add_argument("--w-min", type=float, default=1e-3)
    de.add_argument("--w-max", type=float, default=10.0)
    de.add_argument("--max-multiple", type=int, default=8, help="aux: n_2 = m n_1 for m = 1..this")
    de.add_argument("--t-max", type=float, help="stop: horizon (default: the experiment's)")
    de.add_argument("--grid", action="append", metavar="AXIS=V", help="refused: design evaluates one experiment (use --set)")
    de.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    de.set_defaults(func=cmd_design)
    return p


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        import mtjax

        print(mtjax.__version__)
        return
    if args.command is None:
        parser.print_help()
        return
    _enable_compilation_cache()
    try:
        args.func(args)
    except ValueError as e:
        raise SystemExit(f"mtjax {args.command}: error: {str(e).strip()}") from None
    except FileNotFoundError as e:
        raise SystemExit(f"mtjax {args.command}: error: {e.filename or e}: no such file") from None
    except KeyboardInterrupt:
        # Finished chunks are on disk (atomic part files); the same command resumes.
        print(f"\nmtjax {args.command}: interrupted: rerun the same command to resume", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        # Exit at once: XLA may be mid-computation in its own threads, and a normal interpreter
        # shutdown under them can crash (SIGSEGV) after the message. Nothing is lost: every
        # part file is written atomically, and the manifest before any part.
        os._exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
