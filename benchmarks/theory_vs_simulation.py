"""Population theory vs online simulation, curve by curve.

Run: python benchmarks/theory_vs_simulation.py [--seeds 3] [--steps 1200] [--lr 0.005]
(the defaults print the table of docs/results/theory_vs_simulation.txt; a quick run of the same
grid: --steps 120 --seeds 2 --n-test 2000 --n-quad-eval 1024)

Grid (72 points): r in {0, .5, 1} x s_a in {1, 4} x s_b in {0.3, 3} x eps_a in {0, .2} (task 1) x
depth L in {0, 1, 2}; N = 200, C = R = 4, width 16, sigma = 1/sqrt(N), online SGD (fresh batches of
512 per task and step, joint loss) at a small learning rate, test sets of 20000 examples.
Teacher, test set and initial student are shared by the seeds (seed_scope = "train"), so the seed
mean estimates the deterministic flow the theory integrates from the same (quenched) init.

Two ways to read the theory's test loss off its solution:
 * "same test set" (headline): the theory's network at time t (`mtjax.lift_student` of the
   reduced state, exact) evaluated on the simulation's own test set. Both sides then share the
   test set's sampling error (common random numbers) and the difference is the dynamics alone
   plus the seeds' SGD noise, whose standard error is the seed s.e.;
 * "quadrature": the theory's own estimate from 2^14 quasi-Monte Carlo points, compared with
   an error bar that adds the test set's and the quadrature's sampling errors.
Per point: max over the curve of |loss_theory - loss_sim| (nats) and of that difference in units
of the standard error; the same for accuracy (same-test-set reading).
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import scipy.stats

import mtjax

from _report import Report



def theory_on_test_set(e, seeds, solver):
    """Theory curves read two ways: its network evaluated on the simulation's own test set
    (loss, accuracy: (T, K)), and its quadrature estimate (loss, s.e.: (T, K))."""
    th = mtjax.population_theory(e, seeds, solver=solver, save_states=True)
    teacher = mtjax.Teacher.sample(e.teacher, key=seeds.key("teacher"))
    data = mtjax.make_datasets(teacher, e.train, mtjax.make_inputs(e, key=seeds.key("data")), key=seeds.key("data"))
    st0 = mtjax.Student.init(e.student, e.teacher.n_features, e.teacher.n_classes, e.teacher.n_tasks, key=seeds.key("init"))

    def at(state):
        net = mtjax.lift_student(state, st0, teacher.basis)
        out = [(mtjax.cross_entropy(net.logits(d.x_test, k), d.y_test), mtjax.accuracy(net.logits(d.x_test, k), d.y_test))
               for k, d in enumerate(data)]
        return jnp.stack([o[0] for o in out]), jnp.stack([o[1] for o in out])

    loss, acc = jax.lax.map(at, th.states)
    return loss, acc, th.test_loss, th.test_loss_se, th.success


def linear_setup(args):
    """The linear table: static depth, vmapped (r, s_a, s_b, eps_a)."""
    spec = {
        "seed_scope": "train",
        "teacher": {"n_features": 200, "rank": 4, "n_classes": 4},
        "student": {"depth": 1, "width": 16},
        "train": {"protocol": "online", "n_steps": args.steps, "eval_every": args.steps // 12, "learning_rate": args.lr,
                  "batch_size": 512, "n_test": args.n_test},
    }
    grid = {"relatedness": [0.0, 0.5, 1.0], "s_a": [1.0, 4.0], "s_b": [0.3, 3.0], "eps_a": [0.0, 0.2], "depth": [0, 1, 2]}
    return spec, [({}, grid)], ["depth"], ["relatedness", "s_a", "s_b", "eps_a"]


def nonlinear_setup(args):
    """The nonlinear table: one simulation sweep per activation; static (depth, width), vmapped (r, s_b)."""
    spec, _, _, _ = linear_setup(args)
    grid = {"relatedness": [0.0, 0.5, 1.0], "s_b": [0.3, 3.0], "depth": args.depths, "width": args.widths}
    parts = [({"activation": a}, grid) for a in args.activation]
    return spec, parts, ["depth", "width"], ["relatedness", "s_b"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--lr", type=float, default=0.005)
    ap.add_argument("--n-test", type=int, default=20000)
    ap.add_argument("--n-quad", type=int, default=4096, help="field quadrature points (fresh sets per evaluation when nonlinear)")
    ap.add_argument("--n-quad-eval", type=int, default=2**14)
    ap.add_argument("--substeps", type=int, default=0, help="PopulationSolver(n_substeps=); 0 = its default")
    ap.add_argument("--activation", nargs="*", default=[], help="nonlinear table for these activations (e.g. relu tanh)")
    ap.add_argument("--depths", nargs="*", type=int, default=[1, 2, 3])
    ap.add_argument("--widths", nargs="*", type=int, default=[8, 64])
    ap.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = ap.parse_args()
    spec, parts, static, dyn = (nonlinear_setup if args.activation else linear_setup)(args)
    point = (["activation"] if args.activation else []) + static + dyn + ["task"]
    solver = mtjax.PopulationSolver(n_quad=args.n_quad, n_quad_eval=args.n_quad_eval, n_substeps=args.substeps)
    t0 = time.time()
    # Written to results/ so that an interrupted benchmark resumes instead of re-simulating.
    tag = "" if args.n_test == 20000 else f"-{args.n_test}"
    sims, n_div = [], 0
    for student, grid in parts:
        sp = {**spec, "student": {**spec["student"], **student}}
        name = "-".join(["tvs-sim", *student.values(), str(args.seeds), str(args.steps), str(args.lr)]) + tag
        if args.activation:
            name += "-" + "_".join(map(str, args.depths + args.widths))
        sw = mtjax.sweep(sp, {**grid, "seed": list(range(args.seeds))}, name=name, out_dir="results", progress=True)
        sims.append(sw.curves.assign(**student))
        n_div += int(sw.summary["diverged"].sum())
    curves = pd.concat(sims, ignore_index=True)
    t_sim = time.time() - t0

    # Theory: every point of a static group in one vmapped program, teacher/data/init of
    # realisation 0 as in the simulation (seed_scope "train").
    t0 = time.time()
    rows = []
    steps = np.arange(0, args.steps + 1, args.steps // 12)
    for student, grid in parts:
        cache = Path("results") / ("-".join(["tvs-theory", *student.values(), str(args.steps), str(args.lr), str(args.n_test),
                                             str(args.n_quad_eval)]) + (f"-{args.n_quad}-{args.substeps}-" + "_".join(
                                                 map(str, args.depths + args.widths)) if args.activation else "") + ".csv")
        if cache.exists():
            rows.append(mtjax.load_table(cache))
            continue
        part = []
        for stat in itertools.product(*(grid[c] for c in static)):
            sst = {**spec["student"], **student, **dict(zip(static, stat))}
            e = mtjax.experiment_from_spec({**spec, "student": sst})
            pts = list(itertools.product(*(grid[c] for c in dyn)))
            axes = {c: jnp.asarray([p[i] for p in pts]) for i, c in enumerate(dyn)}
            run = eqx.filter_jit(jax.vmap(lambda ax: theory_on_test_set(mtjax.apply_axes(e, ax), mtjax.Seeds(0, 0, 0, 0), solver)))
            loss, acc, qloss, qse, ok = jax.device_get(run(axes))
            assert ok.all(), "a theory solve failed"
            for i, p in enumerate(pts):
                for k in range(2):
                    for j, st in enumerate(steps):
                        part.append({**student, **dict(zip(static, stat)), **dict(zip(dyn, p)), "task": k + 1, "step": st,
                                     "theory_loss": loss[i, j, k], "theory_acc": acc[i, j, k], "quad_loss": qloss[i, j, k],
                                     "quad_se": qse[i, j, k]})
        mtjax.save_table(cache, pd.DataFrame(part))  # atomic
        rows.append(mtjax.load_table(cache))
    tc = pd.concat(rows, ignore_index=True)
    t_th = time.time() - t0
    report(args, curves, tc, point, t_sim, t_th, n_div)


def report(args, curves, tc, point, t_sim, t_th, n_div):
    """Per curve: max |theory − simulation| of loss and accuracy along the curve, in nats and in
    seed standard errors; then the summary lines."""
    emit = Report()

    keys = point + ["step"]
    g = curves.groupby(keys)
    s = g["test_loss"].agg(["mean", "std", "count"]).join(g["test_acc"].agg(acc_mean="mean", acc_std="std")).reset_index()
    m = s.merge(tc, on=keys, validate="one_to_one")
    assert len(m) == len(s) == len(tc), (len(m), len(s), len(tc))
    m["seed_se"] = m["std"] / np.sqrt(m["count"])
    m["acc_se"] = m["acc_std"] / np.sqrt(m["count"])
    m["diff"] = (m["theory_loss"] - m["mean"]).abs()
    m["acc_diff"] = (m["theory_acc"] - m["acc_mean"]).abs()
    m["q_diff"] = (m["quad_loss"] - m["mean"]).abs()
    # A seed s.e. from 3 seeds can be near 0 by chance: floor it at the median s.e. of its curve.
    floor = m.groupby(point)["seed_se"].transform("median")
    m["z"] = m["diff"] / np.maximum(m["seed_se"], floor)
    # With few seeds the s.e. is itself uncertain: the 95 % band is t_{0.975, seeds-1} s.e.
    m["t95"] = scipy.stats.t.ppf(0.975, m["count"] - 1)
    m["z_acc"] = m["acc_diff"] / np.maximum(m["acc_se"], m.groupby(point)["acc_se"].transform("median"))
    per = m.groupby(point).agg(max_diff=("diff", "max"), max_z=("z", "max"), max_acc_diff=("acc_diff", "max"),
                               max_z_acc=("z_acc", "max"), max_seed_se=("seed_se", "max"), quad_max_diff=("q_diff", "max"),
                               final_sim=("mean", "last"), final_theory=("theory_loss", "last")).reset_index()
    pd.set_option("display.width", 220)
    emit(per.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    n = len(per)
    emit(f"\npoints x tasks: {n};  simulation {t_sim:.0f} s ({args.seeds} seeds; 0 s if resumed), theory {t_th:.0f} s")
    emit("same test set (theory's network on the simulation's test set):")
    emit(f"  max |theory - sim| over all curves: {per.max_diff.max():.4f} nats;  median of per-curve max: {per.max_diff.median():.4f}")
    emit(f"  curves within 0.01 nats everywhere: {(per.max_diff <= 0.01).mean():.1%};  "
          f"curve points within 2 seed s.e.: {(m['z'] <= 2).mean():.1%} of {len(m)};  curves with every point within 2 s.e.: {(per.max_z <= 2).mean():.1%}")
    emit(f"  curve points within the 95 % band of the seed mean (t_0.975 with {args.seeds - 1} d.o.f. = {m['t95'].iloc[0]:.2f} s.e.): "
          f"{(m['z'] <= m['t95']).mean():.1%};  curves entirely within it: {(m.assign(w=m['z'] <= m['t95']).groupby(point)['w'].all()).mean():.1%}")
    emit(f"  accuracy: max |theory - sim| {per.max_acc_diff.max():.4f};  points within 2 s.e.: {(m['z_acc'] <= 2).mean():.1%}")
    worst = m.loc[m["diff"].idxmax()]
    emit(f"  largest difference at {dict(worst[keys])}: theory {worst.theory_loss:.4f}, sim {worst['mean']:.4f} ± {worst.seed_se:.4f}")
    emit("quadrature reading (independent evaluation sets):")
    emit(f"  max |theory - sim|: {per.quad_max_diff.max():.4f} nats;  median of per-curve max: {per.quad_max_diff.median():.4f}")
    emit(f"diverged runs: {n_div}")
    emit.write(args.out)


if __name__ == "__main__":
    main()
