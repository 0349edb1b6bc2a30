"""Helpers shared by the commands: config and grid parsing, printing tables, shared flags."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


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


def _varying(table, exclude=(), keep_alone: bool = False) -> list[str]:
    """The parameter columns that tell the settings of `table` apart (`mtjax.varying_columns`)."""
    from mtjax import varying_columns

    return varying_columns(table, exclude, keep_alone=keep_alone)


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


def _theory_args(parser, n_quad=512, n_quad_eval=4096, rtol=1e-4):
    parser.add_argument("--n-quad", type=int, default=n_quad, help=f"Sobol points for the vector field (default {n_quad})")
    parser.add_argument("--n-quad-eval", type=int, default=n_quad_eval, help=f"points for reported losses (default {n_quad_eval})")
    parser.add_argument("--rtol", type=float, default=rtol)
    parser.add_argument("--atol", type=float, default=1e-6)
    parser.add_argument("--initial", choices=["quenched", "typical"], default="quenched")
    parser.add_argument("--width", choices=["fixed", "proportional", "proportional_n"], default="fixed",
                        help="finite-data: N -> inf at fixed trunk width, or at fixed width / N (linear depth-1 trunk, "
                             "orthogonal init, --initial typical; docs/dmft.md §4.3), the latter with its O(D/N) corrections at the "
                             "experiment's N (proportional_n, §4.4)")
    parser.add_argument("--model", choices=["auto", "population", "finite-data"], default="auto",
                        help="the theory: population (infinite data), finite-data (DMFT of full-batch GD), or auto "
                             "(default): finite-data for runs on training sets (full_batch, paper), population for online")
    parser.add_argument("--n-grid", type=int, help="finite-data: GD steps of the theory's time grid (default: "
                        "mtjax.fit_solver()'s, 16)")
    parser.add_argument("--n-draws", type=int, help="finite-data: draws of the effective processes (default 2048)")
    parser.add_argument("--seed", type=int, default=0, help="teacher/init seed of the theory (Seeds(seed))")
    parser.add_argument("--config", help="TOML file describing the experiment (teacher/student/train); required unless "
                        "--preset is given (fit: or the table lies in a sweep folder with its manifest.json)")
    parser.add_argument("--preset", choices=["paper"], help="start from the authors' protocol")
    parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE")


def _parse_kv(items, cast):
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"expected NAME=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        yield k, cast(v)
