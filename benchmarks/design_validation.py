"""Design through the finite-data theory, checked by simulation.

Run: python benchmarks/design_validation.py [--seeds 16] [--out docs/results/design_validation.txt]

Five settings (N = 200, R = C = 3, linear trunk of width 8, full-batch GD at lr 0.5 for 40
steps, evaluated every 2 steps, 4000 test examples): for each, a design helper through
`mtjax.FiniteDataTheory(mtjax.fit_solver(n_grid=40), "typical")` (the grid's steps are the
simulation's: Δ = lr) predicts the optimal task-2 weight w_2, auxiliary data size P_2 or
stopping time t*, and the improvement of task 1's early-stopped test loss over the default
(w_2 = 1, the given P_2; for t*: stopping at the end).  Then full-batch GD simulations at the
default and at the optimum (`--seeds` realisations of teacher, data and initialisation, the same
for both, so the improvement is a paired difference) measure the improvement.  The prediction
checked is the theory's mean improvement over those same realisations (one realisation's theory
can differ from the mean by more than the design's effect), realisation by realisation: the
check is |mean(simulated − predicted)| <= 2 s.e., the s.e. combining the paired differences'
and the prediction's Monte Carlo spread (its sd over DMFT draw seeds 1..4).

`--realisations M`: the design searches optimise the mean over M realisations (seeds 100..,
none of them simulated) instead of the one realisation of seed 0 (M = 1, default).
"""

from __future__ import annotations

import argparse
import sys
import time

import equinox as eqx
import jax.numpy as jnp
import numpy as np

import mtjax

from _report import Report

BASE = {
    "teacher": {"n_features": 200, "rank": 3, "n_classes": 3, "scale": [3.0, 3.0], "noise": 0.3, "flip": [0.1, 0.1],
                "noisy_fraction": 1.0, "relatedness": 0.0},
    "student": {"depth": 1, "width": 8, "bias_init": "zeros"},
    "train": {"protocol": "full_batch", "n_train": [200, 200], "n_steps": 40, "eval_every": 2, "learning_rate": 0.5,
              "n_test": 4000},
}  # fmt: skip

# (name, design, teacher overrides, n_train)
SETTINGS = [
    ("noisy unrelated task 2", "w2", {"relatedness": 0.0, "flip": [0.1, 0.5]}, [200, 200]),
    ("clean related task 2", "aux", {"relatedness": 1.0, "flip": [0.1, 0.0]}, [100, 100]),
    ("asymmetric data sizes", "w2", {"relatedness": 0.7}, [100, 800]),
    ("related task 2 with noisy labels", "aux", {"relatedness": 0.8, "flip": [0.1, 0.4]}, [200, 200]),
    ("stopping time", "stop", {"relatedness": 0.5, "flip": [0.3, 0.3]}, [200, 200]),
]


def experiment(teacher: dict, n_train, w2: float = 1.0):
    spec = {**BASE, "teacher": {**BASE["teacher"], **teacher}, "train": {**BASE["train"], "n_train": list(n_train)}}
    e = mtjax.experiment_from_spec(spec)
    return eqx.tree_at(lambda m: m.train.task_weights, e, jnp.asarray([1.0, w2]))


def theory_gain(exp, what: str, default: float, best: float, model, seed: int, times=None) -> float:
    """The predicted improvement default -> best with the DMFT's draws of seed `seed`."""
    m = eqx.tree_at(lambda mm: mm.solver.seed, model, jnp.asarray(seed, jnp.int32))
    if what == "stop":
        j = int(np.argmin(np.abs(times - best)))
        th, _ = eqx.filter_jit(m.test_loss_at)(exp, mtjax.Seeds(0), jnp.asarray([times[j], times[-1]]))
        return float(th[1, 0] - th[0, 0])
    axis = {"w2": "w_b", "aux": "ntrain_b"}[what]
    ts = jnp.asarray(exp.train.learning_rate) * jnp.asarray(exp.train.eval_steps[1:], float)

    def es(v):
        return mtjax.early_stopped_loss(mtjax.apply_axes(exp, {axis: v}), mtjax.Seeds(0), ts, model=m)

    return float(eqx.filter_jit(es)(jnp.asarray(default)) - eqx.filter_jit(es)(jnp.asarray(best)))


def realisation_gains(exp, what: str, default: float, best: float, model, n_seeds: int, times=None) -> np.ndarray:
    """The predicted improvement default -> best for each of the simulations' realisations
    (teacher readouts, data, initial student: `simulate`'s seeds), (n_seeds,)."""
    if what == "stop":
        j = int(np.argmin(np.abs(times - best)))
        f = eqx.filter_jit(lambda s: model.test_loss_at(exp, s, jnp.asarray([times[j], times[-1]]))[0])
        out = []
        for i in range(n_seeds):
            th = f(mtjax.Seeds(i, i + 1000, i + 2000, i + 3000))
            out.append(float(th[1, 0] - th[0, 0]))
        return np.asarray(out)
    axis = {"w2": "w_b", "aux": "ntrain_b"}[what]
    ts = jnp.asarray(exp.train.learning_rate) * jnp.asarray(exp.train.eval_steps[1:], float)
    es = eqx.filter_jit(lambda v, s: mtjax.early_stopped_loss(mtjax.apply_axes(exp, {axis: v}), s, ts, model=model))
    return np.asarray([float(es(jnp.asarray(default), sd) - es(jnp.asarray(best), sd))
                       for sd in (mtjax.Seeds(i, i + 1000, i + 2000, i + 3000) for i in range(n_seeds))])  # fmt: skip


def _curves(emit, exp_default, exp_best, sim_default, sim_best, model, values) -> None:
    """Task 1's test loss along the run: theory vs simulation mean ± s.e., both designs."""
    ts = jnp.asarray(exp_default.train.learning_rate) * jnp.asarray(exp_default.train.eval_steps, float)
    emit(f"  task-1 test loss: theory | simulation mean ± s.e. at w2 = {values[0]:g} and w2 = {values[1]:.3g}")
    th = [np.asarray(eqx.filter_jit(model.test_loss_at)(e, mtjax.Seeds(0), ts)[0])[:, 0] for e in (exp_default, exp_best)]
    for j in range(0, len(ts), 2):
        row = "  ".join(f"{t[j]:.4f} | {np.mean(s[:, j]):.4f} ± {np.std(s[:, j], ddof=1) / np.sqrt(len(s)):.4f}"
                        for t, s in zip(th, (sim_default, sim_best)))  # fmt: skip
        emit(f"  t = {float(ts[j]):5.1f}:  {row}")
    for t, s, v in zip(th, (sim_default, sim_best), values):
        emit(f"  early-stopped at w2 = {v:.3g}: theory {t.min():.4f}, simulation {np.mean(np.min(s, 1)):.4f} ± "
             f"{np.std(np.min(s, 1), ddof=1) / np.sqrt(len(s)):.4f}")


def simulate(exp, n_seeds: int) -> np.ndarray:
    """Task-1 test-loss curves (seeds, T) of full-batch GD over `n_seeds` realisations."""
    i = jnp.arange(n_seeds)
    seeds = mtjax.Seeds(i, i + 1000, i + 2000, i + 3000)
    h = eqx.filter_jit(eqx.filter_vmap(lambda s: mtjax.simulate(exp, s)))(seeds)
    return np.asarray(h.test_loss[..., 0]), np.asarray(h.time)[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=16)
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", type=int, nargs="*", default=None, help="run only these settings (0-based rows)")
    ap.add_argument("--n", type=int, default=200,
                    help="input dimension N of the simulations; the data sizes scale with it (α fixed), so the "
                         "theory's prediction does not change and the simulations' finite-size effects do")
    ap.add_argument("--realisations", type=int, default=1,
                    help="design searches on the mean over this many realisations (seeds 100..; 1: seed 0)")
    ap.add_argument("--curves", action="store_true",
                    help="w2 designs: also print task 1's test-loss curve, theory and simulation mean ± s.e., at the "
                         "default and the optimum (where the predicted improvement comes from)")
    a = ap.parse_args()
    model = mtjax.FiniteDataTheory(mtjax.fit_solver(n_grid=40), "typical")
    emit = Report()
    M = a.realisations

    emit("# design through the finite-data theory vs full-batch GD simulations")
    emit("# command: python benchmarks/design_validation.py " + " ".join(sys.argv[1:]))
    emit(f"# N = {a.n}, R = C = 3, depth 1 x 8, lr 0.5, 40 steps; theory {model.solver.n_grid}-step grid, typical init; "
         f"{a.seeds} realisations (paired); design on {'seed 0' if M == 1 else f'the mean over {M} realisations'}")
    emit()
    emit(f"{'setting':34s} {'design':>6s} {'default':>8s} {'optimum':>8s} {'Δ design':>8s} {'Δ predicted ± MC':>17s} "
         f"{'Δ simulated ± se':>18s} {'|z|':>5s} {'ok':>3s}")
    emit("# Δ design: the improvement in the theory of the realisation the design ran on (seed 0); Δ predicted: the "
         "theory's mean over the simulations' realisations, compared with them pairwise (|z|)")
    ok_all = []
    dseeds = mtjax.Seeds(0) if M == 1 else mtjax.Seeds(*(jnp.arange(M) + 100 + o for o in (0, 1000, 2000, 3000)))
    scale = a.n / 200
    for i, (name, what, teacher, n_train) in enumerate(SETTINGS):
        if a.only is not None and i not in a.only:
            continue
        teacher = {**teacher, "n_features": a.n}  # `experiment` lays it over BASE's teacher
        n_train = [int(round(scale * p)) for p in n_train]
        t0 = time.time()
        exp = experiment(teacher, n_train)
        if what == "w2":
            r = mtjax.optimal_task_weight(exp, dseeds, bounds=(0.01, 10.0), n_grid=7, n_refine=2, model=model)
            default, best = 1.0, float(r.value)
            sim_default = simulate(exp, a.seeds)[0]
            sim_best = simulate(experiment(teacher, n_train, best), a.seeds)[0]
            pred = float(r.baseline_loss - r.loss)
            d = np.min(sim_default, 1) - np.min(sim_best, 1)
            if a.curves:
                _curves(emit, exp, experiment(teacher, n_train, best), sim_default, sim_best, model, (default, best))
        elif what == "aux":
            r = mtjax.optimal_aux_data_size(exp, dseeds, bounds=(n_train[0] / 4, 8 * n_train[0]), n_grid=7, n_refine=2, model=model)
            default, best = float(n_train[1]), float(r.value)
            sim_default = simulate(exp, a.seeds)[0]
            sim_best = simulate(experiment(teacher, [n_train[0], int(round(best))]), a.seeds)[0]
            pred = float(r.baseline_loss - r.loss)
            d = np.min(sim_default, 1) - np.min(sim_best, 1)
        else:
            r = mtjax.optimal_stopping_time(exp, dseeds, model=model, n_times=40)
            curves, times = simulate(exp, a.seeds)
            default, best = float(times[-1]), float(r.time)
            j = int(np.argmin(np.abs(times - best)))  # the evaluation nearest to t*
            th, _ = eqx.filter_jit(model.test_loss_at)(exp, mtjax.Seeds(0), jnp.asarray([times[j], times[-1]]))
            pred = float(th[1, 0] - th[0, 0])
            d = curves[:, -1] - curves[:, j]
        # The improvement the simulations measure is a mean over their realisations (teacher
        # readouts, data, initial student), and one realisation's theory can differ from that
        # mean by more than the design's effect: the prediction checked is the theory's mean over
        # the same realisations, compared pairwise (the design's own value, `pred`, is that of
        # the realisation it was optimised on). The theory's Monte Carlo error (its fixed draws):
        # the spread over draw seeds 1..4 at the same two designs, joined to the paired s.e.
        gains = realisation_gains(exp, what, default, best, model, a.seeds, times if what == "stop" else None)
        spread = float(np.std([theory_gain(exp, what, default, best, model, seed, times if what == "stop" else None)
                               for seed in range(1, 5)], ddof=1))  # fmt: skip
        se_sim = float(np.std(d, ddof=1) / np.sqrt(len(d)))
        se = float(np.hypot(np.std(d - gains, ddof=1) / np.sqrt(len(d)), spread))
        z = abs(float(np.mean(d - gains))) / se
        ok = z <= 2
        ok_all.append(ok)
        flag = " (bound)" if what != "stop" and bool(r.on_bound) else ""
        emit(f"{name:34s} {what:>6s} {default:8.3g} {best:8.3g} {pred:8.4f} {np.mean(gains):8.4f} ± {spread:.4f} "
             f"{np.mean(d):9.4f} ± {se_sim:.4f} {z:5.1f} {'yes' if ok else 'NO':>3s}{flag}   ({time.time() - t0:.0f} s)")
    emit()
    emit(f"# {sum(ok_all)} of {len(ok_all)} settings: simulated improvement within 2 s.e. of the predicted one")
    emit.write(a.out)


if __name__ == "__main__":
    main()
