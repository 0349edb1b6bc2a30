"""The README's figure and its numbers: simulation vs both theories, and a benefit phase diagram.

Run: python benchmarks/readme_figure.py [--out docs/figures/readme.png] [--seeds 4]

Top: `mtjax demo`'s grid (full-batch GD, N = 200, R = C = 3, depth-1 trunk of width 8, α = 1 and
4, r = 0 and 1, task 2 weighted 0 or 1): task-1 test loss of the simulations (mean ± 2 s.e. over
training sets) with the finite-data theory (solid) and the population theory (dashed) on top, and
the multitask benefit vs ntrain. Bottom: the multitask benefit at α = 4 over (r, s_b), simulated
(colours, mean over seeds) with the finite-data theory's zero-benefit contour.
Prints the table of each panel (the README quotes it) and the wall time of each part.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

import mtjax
from mtjax import plots


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs/figures/readme.png")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--work", default="results/readme_figure", help="resumable sweep folders")
    args = ap.parse_args()
    spec, grid = mtjax.demo_spec()
    spec.pop("name")
    grid["seed"] = list(range(args.seeds))
    solver = mtjax.FiniteDataSolver(n_grid=40, n_draws=1024)

    t0 = time.time()
    cmp = mtjax.compare(spec, grid, name="curves", out_dir=args.work, solvers={"finite-data": solver}, progress=False)
    print(f"curves grid: {time.time() - t0:.1f} s")
    b = cmp.benefit[cmp.benefit["task"] == 1]
    print(b.pivot_table(index=["ntrain", "relatedness"], columns="model", values="benefit").round(4).to_string())
    top = plots.plot_comparison(cmp.curves, cmp.benefit)

    d = grid["ntrain"][1]  # α = 4
    phase = {"ntrain": [d], "relatedness": [0.0, 0.25, 0.5, 0.75, 1.0], "s_b": list(np.round(np.geomspace(0.3, 10, 6), 3)),
             "single_task": [True, False], "seed": list(range(args.seeds))}
    t0 = time.time()
    ph = mtjax.compare(spec, phase, name="phase", out_dir=args.work, models=["simulation", "finite-data"],
                       solvers={"finite-data": solver}, progress=False)
    print(f"phase diagram: {time.time() - t0:.1f} s")
    sim = ph.benefit[ph.benefit["model"] == "simulation"]
    th = ph.benefit[ph.benefit["model"] == "finite-data"]
    agree = sim.groupby(["relatedness", "s_b"])["benefit"].agg(["mean", "sem"]).join(
        th.groupby(["relatedness", "s_b"])["benefit"].mean().rename("theory"))
    agree["|diff| / s.e."] = (agree["mean"] - agree["theory"]).abs() / agree["sem"]
    print(agree.round(4).to_string())
    print(f"phase cells with |sim - theory| < 2 s.e.: {(agree['|diff| / s.e.'] < 2).sum()} / {len(agree)}; "
          f"max |sim - theory| {float((agree['mean'] - agree['theory']).abs().max()):.4f} nats")
    bottom = plots.plot_benefit_heatmap(sim.drop(columns="model"), th.drop(columns="model"))
    bottom.suptitle(f"benefit at α = 4 (ntrain = {d}): simulation (colours),\nfinite-data theory: zero contour",
                    fontsize=9)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    parts = []
    for i, fig in enumerate((top, bottom)):
        p = out.with_name(f".{out.stem}-{i}.png")
        fig.savefig(p, dpi=110)
        parts.append(Image.open(p).convert("RGB"))
        p.unlink()
    w = max(im.width for im in parts)
    canvas = Image.new("RGB", (w, sum(im.height for im in parts)), "white")
    y = 0
    for im in parts:
        canvas.paste(im, ((w - im.width) // 2, y))
        y += im.height
    canvas.save(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
