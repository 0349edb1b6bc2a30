"""`mtjax simulate`, `theory`, `compare`, `demo` and `merge`: sweeps of models and their tables."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ._common import _print_benefit, _shared_sweep_args, _sweep_inputs, _varying


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
        return mtjax.FiniteDataTheory(solver, args.initial, getattr(args, "width", "fixed"))
    if getattr(args, "width", "fixed") != "fixed":
        raise SystemExit("--width proportional is a setting of the finite-data theory: add --finite")
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
    cols = _varying(s, keep_alone=True) or ["s_a"]
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


def register(sub) -> None:
    """Add the simulate, theory, demo, compare, merge subcommands to `sub`."""
    s = sub.add_parser("simulate", help="run a sweep of simulations (vmapped, resumable)", formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Run a sweep. The TOML file has optional keys `preset` (\"paper\"), `name`, `seed_scope`,\n"
                       "and tables [teacher], [student], [train] (keyword arguments of TeacherConfig, StudentConfig,\n"
                       "TrainConfig) and [grid] (axis = [values]). Rerunning the same command resumes an interrupted sweep.")
    for a, kw in _shared_sweep_args():
        s.add_argument(*a, **kw)
    s.set_defaults(func=cmd_simulate)

    th = sub.add_parser("theory", help="integrate the population mean-field dynamics over a grid (same tables)",
                        description="Same config and flags as `simulate`; instead of training it integrates the population\n"
                        "(infinite-data) mean-field dynamics of the student (linear or nonlinear trunk) with diffrax and writes the same tables\n"
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
    th.add_argument("--width", choices=["fixed", "proportional", "proportional_n"], default="fixed",
                    help="--finite: N -> inf at fixed trunk width, or at fixed width / N (a linear depth-1 trunk, "
                         "orthogonal init, --initial typical; docs/dmft.md §4.3), the latter with its O(D/N) corrections at the "
                         "experiment's N (proportional_n, §4.4)")
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
