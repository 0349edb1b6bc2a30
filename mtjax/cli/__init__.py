"""`mtjax` command line: a thin layer over the Python API (`mtjax.sweep`, `mtjax.plots`)."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading

from . import fitting, plot, reproduce, sweeps
from ._common import _enable_compilation_cache

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


def build_parser() -> argparse.ArgumentParser:
    """The `mtjax` parser: one subcommand per workflow, each registered by its module."""
    p = argparse.ArgumentParser(prog="mtjax", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for module in (sweeps, reproduce, plot, fitting):
        module.register(sub)
    return p


@contextlib.contextmanager
def _persistent_ctrl_c():
    """Ctrl-C that is not lost. Python raises KeyboardInterrupt wherever the main thread is when
    the signal is handled, and where that is a garbage-collection callback (JAX registers one)
    or a `__del__`, the exception is printed as "ignored" and the command runs on. Here the first
    Ctrl-C also arms a 0.5 s timer that raises KeyboardInterrupt again (and re-arms itself) until
    one reaches `main`; the "ignored" one is not printed (its traceback would be the user's
    only sight of Ctrl-C landing in JAX's callback). Only where Ctrl-C has Python's default
    handler in the main thread (a background job that ignores SIGINT keeps ignoring it); the
    previous handlers come back after."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return

    def again(signum, frame):
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        raise KeyboardInterrupt

    old_hook = sys.unraisablehook

    def quiet(unraisable):  # the timer raises it again where it is not swallowed
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            old_hook(unraisable)

    old_int, old_alrm = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGALRM)
    signal.signal(signal.SIGALRM, again)
    signal.signal(signal.SIGINT, again)
    sys.unraisablehook = quiet
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGALRM, old_alrm)
        sys.unraisablehook = old_hook


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
        with _persistent_ctrl_c():
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
