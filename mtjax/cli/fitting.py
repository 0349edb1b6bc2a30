"""`mtjax fit` and `mtjax design`: theory parameters from observed curves, and design choices."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ._common import _apply_sets, _load_config, _parse_kv, _theory_args


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


def _model_from_args(args, experiment):
    """The theory of `mtjax fit` / `mtjax design`: --model population (smooth-loss solver),
    finite-data (the DMFT: `mtjax.fit_solver()`, with --n-grid, --n-draws), or auto (default):
    finite-data for runs on training sets (protocols full_batch, paper), population for online."""
    import mtjax

    name = args.model
    if name == "auto":
        name = "population" if experiment.train.protocol == "online" else "finite-data"
    if name == "finite-data":
        over = {k: v for k, v in (("n_grid", args.n_grid), ("n_draws", args.n_draws)) if v is not None}
        if "n_draws" in over:
            over["n_response"] = min(32, over["n_draws"])
        return mtjax.FiniteDataTheory(mtjax.fit_solver(**over), args.initial, getattr(args, "width", "fixed"))
    if getattr(args, "width", "fixed") != "fixed":
        raise SystemExit("--width proportional is a setting of the finite-data theory: use --model finite-data")
    solver = mtjax.PopulationSolver(n_quad=args.n_quad, n_quad_eval=args.n_quad_eval, rtol=args.rtol, atol=args.atol,
                                    smooth_loss=True)
    return mtjax.PopulationTheory(solver, args.initial)


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
        res, problem = mtjax.fit_table(exp, table, params, seeds=mtjax.Seeds(args.seed), model=_model_from_args(args, exp),
                                       loss=args.loss, mapping=mapping, n_starts=args.starts,
                                       n_adam=args.adam_steps, n_newton=args.newton_steps, progress=not args.quiet,
                                       theory_replicates=args.theory_replicates)
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
    seeds, model = mtjax.Seeds(args.seed), _model_from_args(args, exp)
    progress = not args.quiet
    if args.what == "stop":
        r = mtjax.optimal_stopping_time(exp, seeds, args.t_max, model=model, progress=progress)
        print(f"optimal stopping time t* = {float(r.time):.4g} (step {float(r.step):.0f}), task-1 loss {float(r.loss):.4f} nats"
              + ("  [at the horizon: the loss still falls]" if bool(r.at_horizon) else ""))
        return
    if args.what == "w2":
        r = mtjax.optimal_task_weight(exp, seeds, bounds=(args.w_min, args.w_max), model=model,
                                      progress=progress)
        name = "w_2"
    else:
        bounds = None if args.n_min is None and args.n_max is None else (
            args.n_min or exp.train.n_train[0] / 4, args.n_max or args.max_multiple * exp.train.n_train[0])
        r = mtjax.optimal_aux_data_size(exp, seeds, max_multiple=args.max_multiple, bounds=bounds, model=model,
                                        progress=progress)
        name = "n_2"
    flag = ""
    if bool(r.on_bound):
        low = float(r.value) <= float(np.min(np.asarray(r.grid)))
        if args.what == "w2":
            side, bound = ("w_min", args.w_min) if low else ("w_max", args.w_max)
            flag = f"  [on the bound {side} = {bound:g}: widen --{side.replace('_', '-')}]"
        elif exp.train.protocol == "full_batch":
            flag = f"  [on the bound n_2 = {float(r.value):.4g}: widen --{'n-min' if low else 'n-max'}]"
        else:
            flag = ("  [on the bound n_2 = n_1: the smallest size searched]" if low
                    else f"  [on the bound n_2 = {args.max_multiple} n_1: widen --max-multiple]")
    print(f"optimal {name} = {float(r.value):.4g}: task-1 early-stopped loss {float(r.loss):.4f} nats "
          f"(baseline {name} = {float(r.baseline_value):.4g}: {float(r.baseline_loss):.4f})" + flag)
    for g, l in zip(np.asarray(r.grid), np.asarray(r.grid_loss)):
        print(f"  {name} = {g:10.4g}   loss {l:.4f}")


def register(sub) -> None:
    """Add the fit, design subcommands to `sub`."""
    f = sub.add_parser("fit", help="fit theory parameters to a table of observed learning curves",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Fit a theory (--model) to a tidy CSV or Parquet table (one row per observation): columns for time\n"
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
    f.add_argument("--theory-replicates", type=int, default=0, metavar="M",
                   help="finite-data theory: M >= 2 more solves at the optimum with independent draws; their spread "
                        "(the theory's Monte Carlo error) is added to the error bars (default 0: not)")
    f.add_argument("--output", help="write the fitted parameters (CSV)")
    f.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    f.set_defaults(func=cmd_fit)

    de = sub.add_parser("design", help="optimal task-2 weight, auxiliary data size or stopping time (theory)")
    de.add_argument("what", choices=["w2", "aux", "stop"],
                    help="w2: loss weight of task 2; aux: task-2 data size n_2 (full-batch: continuous, finite-data "
                         "theory; paper protocol: n_2 = m n_1); stop: t*")
    _theory_args(de)
    de.add_argument("--w-min", type=float, default=1e-3)
    de.add_argument("--w-max", type=float, default=10.0)
    de.add_argument("--max-multiple", type=int, default=8, help="aux: n_2 = m n_1 for m = 1..this (full-batch: the "
                    "default upper end of the search, --n-max)")
    de.add_argument("--n-min", type=float, help="aux, full-batch: smallest n_2 searched (default n_1 / 4)")
    de.add_argument("--n-max", type=float, help="aux, full-batch: largest n_2 searched (default max-multiple x n_1)")
    de.add_argument("--t-max", type=float, help="stop: horizon (default: the experiment's)")
    de.add_argument("--grid", action="append", metavar="AXIS=V", help="refused: design evaluates one experiment (use --set)")
    de.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    de.set_defaults(func=cmd_design)
