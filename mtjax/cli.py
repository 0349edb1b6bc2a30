"""`mtjax` command line: a thin layer over the Python API (`mtjax.sweep`, `mtjax.plots`)."""

from __future__ import annotations

import argparse
import json
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
  mtjax demo                          a one-minute multitask sweep with a table and a plot
  mtjax simulate --config FILE.toml   a sweep described in a TOML file (see README)
  mtjax theory --config FILE.toml     the same grid predicted by the mean-field theory
  mtjax plot results/NAME             figures of a finished sweep
  mtjax merge results/NAME            assemble the tables from the part files of every process
  mtjax reproduce rank-10             rerun the authors' experiment, compare with their CSV
  mtjax fit TABLE.csv --free relatedness s_a s_b    fit theory parameters to observed curves
  mtjax design w2 --config FILE.toml  optimal task-2 weight / aux data size / stopping time
"""

DEMO_GRID = {
    "relatedness": [0.0, 1.0],
    "s_a": [10.0],
    "s_b": [0.01, 10.0],
    "ntrain": [200],
    "single_task": [True, False],
    "seed": [0, 1, 2],
}


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
        return tomllib.load(f)


def _write_outputs(res, benefit_needed: bool = True) -> None:
    import mtjax

    out = res.out_dir
    benefit = None
    if benefit_needed and "single_task" in res.summary and res.summary["single_task"].astype(bool).nunique() == 2:
        benefit = mtjax.multitask_benefit(res.summary)
        if out is not None:
            benefit.to_csv(out / "benefit.csv", index=False)
    n_div = int(res.summary.drop_duplicates("run")["diverged"].sum())
    if out is not None:
        from mtjax.plots import plot_sweep

        fig = plot_sweep(res.curves, benefit)
        fig.savefig(out / "overview.png", dpi=120)
    print(f"runs: {res.summary['run'].nunique()}  diverged: {n_div}")
    if benefit is not None:
        cols = [c for c in ("relatedness", "s_a", "s_b", "ntrain") if c in benefit]
        table = benefit.groupby(cols)["benefit"].agg(["mean", "sem", "count"]).reset_index()
        print("multitask benefit on task 1 (nats, positive = task 2 helps), mean ± s.e. over seeds:")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if out is not None:
        print(f"wrote {out}/summary.csv, curves.csv, " + ("benefit.csv, " if benefit is not None else "") + "overview.png")


def cmd_simulate(args, source: str = "simulation") -> None:
    import mtjax

    distributed = args.distributed or any(v is not None for v in (args.coordinator, args.num_processes, args.process_id))
    if distributed:
        # Before anything else touches JAX: its distributed runtime must start first.
        mtjax.distributed_initialize(args.coordinator, args.num_processes, args.process_id)
    spec = _load_config(args.config) if args.config else {}
    if args.preset:
        spec["preset"] = args.preset
    spec = _apply_sets(spec, args.set)
    grid = _apply_grid(dict(spec.pop("grid", {})), args.grid)
    name = args.name or spec.pop("name", None) or (Path(args.config).stem if args.config else "simulate")
    spec.pop("name", None)
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
        source=source,
        devices=args.devices,
        distributed=distributed,
        **(_theory_kwargs(args) if source != "simulation" else {}),
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


def _theory_kwargs(args) -> dict:
    import mtjax

    if args.finite:
        solver = mtjax.FiniteDataSolver(n_grid=args.n_grid, n_draws=args.n_draws)
    else:
        solver = mtjax.PopulationSolver(n_quad=args.n_quad, n_quad_eval=args.n_quad_eval, rtol=args.rtol, atol=args.atol)
    return {"solver": solver, "initial": args.initial}


def cmd_theory(args) -> None:
    cmd_simulate(args, source="theory-finite" if args.finite else "theory")


def cmd_demo(args) -> None:
    import mtjax

    spec = mtjax.paper_spec()
    # The paper's protocol at 10x its learning rate for 300 instead of 2000 epochs: time
    # t = lr x steps = 6 exceeds the paper's t = 4 at ntrain = 200, so the early-stopping
    # minimum is reached, in about a minute on 2 cores.
    spec["train"].update(n_epochs=args.epochs, learning_rate=args.lr, eval_every=max(1, args.epochs // 60))
    t0 = time.time()
    res = mtjax.sweep(spec, DEMO_GRID, name="demo", out_dir=args.out, progress=not args.quiet)
    print(f"demo sweep of {res.summary['run'].nunique()} runs finished in {time.time() - t0:.1f} s")
    _write_outputs(res)


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
    import pandas as pd

    import mtjax

    if not (d / "summary.csv").exists():
        raise SystemExit(f"{d}: no summary.csv (is it a finished sweep folder?)")
    summary = pd.read_csv(d / "summary.csv")
    curves = pd.read_csv(d / "curves.csv") if (d / "curves.csv").exists() else None
    benefit = None
    if "single_task" in summary and summary["single_task"].astype(bool).nunique() == 2:
        benefit = mtjax.multitask_benefit(summary)
    return curves, benefit


def cmd_plot(args) -> None:
    from mtjax import plots

    d = Path(args.results)
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


def _spec_from_args(args) -> dict:
    spec = _load_config(args.config) if args.config else {}
    if args.preset:
        spec["preset"] = args.preset
    spec = _apply_sets(spec, args.set)
    for key in ("grid", "name"):
        spec.pop(key, None)
    return spec


def _solver_from_args(args):
    import mtjax

    return mtjax.PopulationSolver(n_quad=args.n_quad, n_quad_eval=args.n_quad_eval, rtol=args.rtol, atol=args.atol, smooth_loss=True)


def cmd_fit(args) -> None:
    """`mtjax fit`: a thin layer over `mtjax.fit_table`."""
    import numpy as np
    import pandas as pd

    import mtjax

    table = pd.read_csv(args.table)
    if args.query:
        table = table.query(args.query)
    if args.source and "source" in table:
        table = table[table["source"] == args.source]
    exp = mtjax.experiment_from_spec(_spec_from_args(args))
    inits = dict(_parse_kv(args.init, float))
    bys = dict(_parse_kv(args.by, str))
    params = [mtjax.Param(n, inits.get(n), by=bys.get(n)) for n in args.free]
    mapping = {"value": args.value, "time": args.time, "task": args.task or None, "se": args.se, "early_stopped": args.early_stopped}
    if args.known is not None:
        mapping["known"] = args.known
    if args.time == "step":
        mapping["lr"] = float(exp.train.learning_rate)
    t0 = time.time()
    res, problem = mtjax.fit_table(exp, table, params, seeds=mtjax.Seeds(args.seed), solver=_solver_from_args(args),
                                   initial=args.initial, loss=args.loss, mapping=mapping, n_starts=args.starts,
                                   n_adam=args.adam_steps, n_newton=args.newton_steps)
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
    """`mtjax design`: optimal task-2 weight, auxiliary data size, or stopping time (theory)."""
    import numpy as np

    import mtjax

    exp = mtjax.experiment_from_spec(_spec_from_args(args))
    seeds, solver = mtjax.Seeds(args.seed), _solver_from_args(args)
    if args.what == "stop":
        r = mtjax.optimal_stopping_time(exp, seeds, args.t_max, solver=solver, initial=args.initial)
        print(f"optimal stopping time t* = {float(r.time):.4g} (step {float(r.step):.0f}), task-1 loss {float(r.loss):.4f} nats"
              + ("  [at the horizon: the loss still falls]" if bool(r.at_horizon) else ""))
        return
    if args.what == "w2":
        r = mtjax.optimal_task_weight(exp, seeds, bounds=(args.w_min, args.w_max), solver=solver, initial=args.initial)
        name = "w_2"
    else:
        r = mtjax.optimal_aux_data_size(exp, seeds, max_multiple=args.max_multiple, solver=solver, initial=args.initial)
        name = "n_2"
    print(f"optimal {name} = {float(r.value):.4g}: task-1 early-stopped loss {float(r.loss):.4f} nats "
          f"(baseline {name} = {float(r.baseline_value):.4g}: {float(r.baseline_loss):.4f})")
    for g, l in zip(np.asarray(r.grid), np.asarray(r.grid_loss)):
        print(f"  {name} = {g:10.4g}   loss {l:.4f}")


def _theory_args(parser, n_quad=512, n_quad_eval=4096, rtol=1e-4):
    parser.add_argument("--n-quad", type=int, default=n_quad, help=f"Sobol points for the vector field (default {n_quad})")
    parser.add_argument("--n-quad-eval", type=int, default=n_quad_eval, help=f"points for reported losses (default {n_quad_eval})")
    parser.add_argument("--rtol", type=float, default=rtol)
    parser.add_argument("--atol", type=float, default=1e-6)
    parser.add_argument("--initial", choices=["quenched", "typical"], default="quenched")
    parser.add_argument("--seed", type=int, default=0, help="teacher/init seed of the theory (Seeds(seed))")
    parser.add_argument("--config", help="TOML file describing the experiment (teacher/student/train)")
    parser.add_argument("--preset", choices=["paper"])
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

    d = sub.add_parser("demo", help="a small multitask sweep (about a minute on 2 cores): table + PNG")
    d.add_argument("--out", default="results", help="results folder (default: results)")
    d.add_argument("--epochs", type=int, default=300, help="training epochs (default 300)")
    d.add_argument("--lr", type=float, default=1e-2, help="SGD learning rate (default 0.01)")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)

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
    rp.add_argument("--data", help="folder of the authors' CSVs (default $MTJAX_PAPER_DATA or shared/paper-data)")
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
                       "  mtjax fit results/NAME/curves.csv --config FILE.toml --free relatedness s_a s_b\n"
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
    f.set_defaults(func=cmd_fit)

    de = sub.add_parser("design", help="optimal task-2 weight, auxiliary data size or stopping time (theory)")
    de.add_argument("what", choices=["w2", "aux", "stop"], help="w2: loss weight of task 2; aux: n_2 (paper protocol); stop: t*")
    _theory_args(de)
    de.add_argument("--w-min", type=float, default=1e-3)
    de.add_argument("--w-max", type=float, default=10.0)
    de.add_argument("--max-multiple", type=int, default=8, help="aux: n_2 = m n_1 for m = 1..this")
    de.add_argument("--t-max", type=float, help="stop: horizon (default: the experiment's)")
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
        raise SystemExit(f"mtjax {args.command}: error: {e}")


if __name__ == "__main__":  # pragma: no cover
    main()
