"""`mtjax reproduce`: rerun one of the authors' experiments and compare with their table."""

from __future__ import annotations

import argparse

from ._common import _apply_sets


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


def register(sub) -> None:
    """Add the reproduce subcommand to `sub`."""
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
