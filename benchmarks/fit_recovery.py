"""Recovery benchmark: simulate learning curves at hidden (r, s_a, s_b), fit the theory, compare.

For each of `--settings` random settings (r ~ U(0, 0.9), log10 s_a, log10 s_b ~ U(-0.4, 0.5),
logit noise σ = 1 on both tasks so that s is the signal-to-noise ratio) mtjax trains
`--seeds` online-protocol students (same teacher and initial student, different batches and
test sets), averages the test-loss curves of both tasks over seeds, and fits the population
theory with r, s_a, s_b free (quenched initial condition: the simulation's initial student).

Error model (`--errors`, default `replicates`): weights 1/se² from the seed s.e. of each point,
error bars from the cluster-robust sandwich with the seeds as clusters (`fit(obs_replicates=)`:
the points of one seed's curve are strongly correlated in time, a seed is one independent
draw), with m − 1 degrees of freedom: intervals use Student-t quantiles. r also gets a profile
interval (`mtjax.profile`, adjusted to the sandwich variance), which stays right where the
curves depend on r mostly through r² (r near 0) and the Wald s.e. does not.

Model discrepancy (`--discrepancy`, default `estimate`): the seeds measure the simulation's
sampling error only; an error of the theory (finite lr, quadrature) is carried by every seed
alike. `fit(discrepancy="estimate")` adds a constant offset per task's curve with s.d. τ_k
estimated from the residuals by the method of moments (docs/fitting.md §3) to the sandwich;
the point estimates do not change, and the report gives the coverage with and without it (the
latter by `mtjax.error_model` on the same fit).

Printed: true vs fitted ± s.e., r's 95 % profile interval, the estimated τ, the fraction of settings within the
targets (|Δr| < 0.1, |Δlog10 s| < 0.15), and the coverage of the ±1 / ±2 s.e. and the nominal
68 % / 95 % intervals.

Identifiability of r (decided from the data, not the truth): the 95 % profile interval of r must
be closed on both sides within the profile grid (estimate ± 4.5 s.e.) and have half-width
<= R_MAX_HALF_WIDTH; with `--no-profile`, the 95 % Wald interval of the fit's coordinate
artanh r mapped to r (`FitResult.interval(scale="fit")`) must, since near r = ±1 the
delta-method s.e. of r shrinks to 0 whatever the data say. r acts on task 1 only through the trunk shared with task 2, so it is weakly
determined when task 2 is barely learned (small s_b).

    python benchmarks/fit_recovery.py --cache '' --out docs/results/fit_recovery.txt
    python benchmarks/fit_recovery.py --settings 4 --seeds 4   # smoke run
    python benchmarks/fit_recovery.py --model finite --no-profile --out docs/results/fit_recovery_finite.txt

`--model finite`: full-batch GD on finite training sets (N = `--n`, default 200, P = α N with α ~ log-U(0.5, 8),
known; 40 steps at lr 0.5, so the noisy-label curves overfit), fitted by the finite-data theory
and, side by side, by the population theory (which has no training set).  `--rows` stores one row
per finished setting and resumes; `--warm ROWS` starts each setting's fit at another rows file's
optimum, e.g. a refit with `--response 512` at the 128-draw fit's estimates:

    python benchmarks/fit_recovery.py --model finite --n 800 --settings 20 --seeds 8 --starts 1 --maps 16 \
        --no-profile --no-population --baseline --response 512 --theory-replicates 8 \
        --rows docs/results/fit_recovery_finite800_baseline_r512_rows.csv \
        --warm docs/results/fit_recovery_finite800_baseline_rows.csv

`--mirror`: r → −r changes the curves only through the initial student, so a single start can end
in the mirror basin; after each fit the objective at the optimum's mirror image is evaluated (one
solve) and, where it is not clearly higher (within Δχ² = 4 max(1, χ²/dof) of the fit's: the mirror
point itself is not optimised) and lies in a basin of its own (the objective at r = 0 between them
is not between the two: a second solve), a second fit runs from there and the better is kept
(finished rows of `--rows` get the same check).

XLA runs at `--xla_backend_optimization_level=1` unless XLA_FLAGS is set: level 0 compiles
faster but runs the threefry PRNG that draws every online batch 6-12x slower. The simulations
are cached in `--cache` (default /tmp) between runs.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import time

# XLA level 1: level 0 compiles faster but runs the threefry PRNG behind every online batch 6-12x
# slower (the simulation took ~10 of the 32 minutes at level 0); the fits are also faster.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=1")

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.stats  # noqa: E402

import mtjax  # noqa: E402
from mtjax import Param, error_model, fit, make_problem, observations_from_table, profile  # noqa: E402
# The whitened residuals of a batch of θ: the fit's own compiled trial-step program (`fit`'s
# cheap trials), so the mirror checks and map checks below compile nothing of their own.
from mtjax._fitting.problem import _residuals  # noqa: E402


def _quantile(level: float, dof: float) -> float:
    """Two-sided quantile: P(|T| <= q) = level for T ~ Student-t(dof) (normal if dof = ∞), as `mtjax.fit`'s intervals."""
    p = 0.5 + level / 2
    return float(scipy.stats.norm.ppf(p) if not np.isfinite(dof) else scipy.stats.t.ppf(p, dof))


SPEC = {
    "teacher": {"n_features": 32, "rank": 3, "n_classes": 3, "scale": [1.0, 1.0], "noise": 1.0, "relatedness": 0.5},
    "student": {"depth": 1, "width": 8, "bias_init": "zeros"},
    "train": {"protocol": "online", "n_steps": 2000, "eval_every": 200, "learning_rate": 0.005, "batch_size": 256, "n_test": 8000},
}
SOLVER = mtjax.PopulationSolver(n_quad=1024, n_quad_eval=8192, rtol=1e-4, atol=1e-6, smooth_loss=True)
# `--model finite`: full-batch GD on P = α N examples per task (α ~ log-U(0.5, 8), known), long
# enough to overfit the noisy labels; the theory is the DMFT of that GD on its own 40-step grid.
SPEC_FINITE = {
    "teacher": {"n_features": 200, "rank": 3, "n_classes": 3, "scale": [1.0, 1.0], "noise": 1.0, "relatedness": 0.5},
    "student": {"depth": 1, "width": 8, "bias_init": "zeros"},
    "train": {"protocol": "full_batch", "n_train": [1600, 1600], "n_steps": 40, "eval_every": 4, "learning_rate": 0.5,
              "n_test": 8000},
}  # fmt: skip
def spec_finite(n: int) -> dict:
    """`SPEC_FINITE` at input dimension `n`: the training pool holds the largest data size,
    P = 8 N (the simulation refuses more); the settings' data sizes scale with N (α fixed)."""
    if n == SPEC_FINITE["teacher"]["n_features"]:
        return SPEC_FINITE
    return {**SPEC_FINITE, "teacher": {**SPEC_FINITE["teacher"], "n_features": n},
            "train": {**SPEC_FINITE["train"], "n_train": [8 * n, 8 * n]}}  # fmt: skip


#: r is called identifiable when its 95 % profile interval is closed and no wider than ± this.
R_MAX_HALF_WIDTH = 0.2
#: profile grid of r: estimate + h x these, h = min(s.e., 0.2) (in r units), clipped to ±0.99
PROFILE_STEPS = (-4.5, -3.0, -2.0, -1.0, -0.5, 0.5, 1.0, 2.0, 3.0, 4.5)


def settings(n: int, seed: int, finite: bool = False, n_features: int = 200) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    d = pd.DataFrame({
        "relatedness": rng.uniform(0.0, 0.9, n),
        "s_a": 10 ** rng.uniform(-0.4, 0.5, n),
        "s_b": 10 ** rng.uniform(-0.4, 0.5, n),
    })  # fmt: skip
    if finite:  # data size P = α N per task (both tasks), known to the fit
        d["ntrain"] = np.round(n_features * 2 ** rng.uniform(-1.0, 3.0, n))
        d["ntrain_b"] = d["ntrain"]
    return d


def theory_experiment(exp, truth: pd.DataFrame, i: int):
    """The experiment a fit of setting i starts from: its data sizes set (finite data), else `exp`."""
    if "ntrain" not in truth:
        return exp
    return mtjax.apply_axes(exp, {"ntrain": float(truth.ntrain.iloc[i]), "ntrain_b": float(truth.ntrain_b.iloc[i])})


def simulate_all(exp, truth: pd.DataFrame, n_seeds: int, w_b: float | None = None):
    """All settings x seeds, one vmapped program over the seeds; teacher and init seeds = setting
    index. `w_b = 0`: task 1 trained alone (the single-task baseline, same seeds: the same teacher,
    initial student and training sets as the multitask runs)."""
    n = len(truth)
    idx = np.repeat(np.arange(n), n_seeds)
    rep = np.tile(np.arange(n_seeds), n)
    axes = {c: jnp.asarray(truth[c].to_numpy()[idx]) for c in truth}
    if w_b is not None:
        axes["w_b"] = jnp.full(len(idx), float(w_b))
    seeds = mtjax.Seeds(jnp.asarray(idx), jnp.asarray(1000 + rep), jnp.asarray(idx), jnp.asarray(rep))

    @eqx.filter_jit
    def run(axes, seeds):
        return jax.vmap(lambda a, s: mtjax.simulate(mtjax.apply_axes(exp, a), s))(axes, seeds)

    # One setting's seeds per call (one compile): all settings at once need n x seeds training sets
    # in memory (59 GB at N = 800).
    hs = [run(jax.tree.map(lambda v: v[i * n_seeds:(i + 1) * n_seeds], axes),
              jax.tree.map(lambda v: v[i * n_seeds:(i + 1) * n_seeds], seeds)) for i in range(n)]  # fmt: skip
    loss = np.stack([np.asarray(h.test_loss) for h in hs])  # (n, seeds, T, K)
    return np.asarray(hs[0].time[0]), loss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--settings", type=int, default=20)
    ap.add_argument("--seeds", type=int, default=16)
    ap.add_argument("--starts", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the printed report to this file")
    ap.add_argument("--errors", choices=["replicates", "sandwich", "diagonal"], default="replicates",
                    help="error bars: cluster-robust sandwich over seeds with t(m-1) intervals (default); the same "
                         "sandwich with normal quantiles; or independent points (Laplace)")
    ap.add_argument("--discrepancy", default="estimate",
                    help="model-discrepancy term of the error bars: 'estimate' (τ per task by moments, default), "
                         "'none', or a s.d. in nats; the report also gives the coverage without it")
    ap.add_argument("--cache", default="/tmp", help="folder of the simulation cache ('' : no cache)")
    ap.add_argument("--only", type=int, nargs="*", default=None, help="fit only these settings (debugging)")
    ap.add_argument("--no-profile", action="store_true", help="skip the profile intervals of r")
    ap.add_argument("--progress", action="store_true", help="print the fits' progress to stderr")
    ap.add_argument("--no-population", action="store_true", help="finite: skip the population theory's side-by-side fits")
    ap.add_argument("--n", type=int, default=200, help="finite: input dimension N (the data sizes scale with it, α fixed)")
    ap.add_argument("--maps", type=int, default=None,
                    help="finite: exactly this many Picard maps per solve (min_iter = max_iter: an objective smooth in the "
                         "parameters; default: fit_solver's early exit at its tol)")
    ap.add_argument("--response", type=int, default=128,
                    help="finite: response draws of the fit solver (32 biases these C = 3 overfitting curves, docs/fitting.md §6)")
    ap.add_argument("--rows", default=None,
                    help="CSV of finished settings: each setting's row is added (atomically, under a lock) as it "
                         "finishes, settings already in it are skipped (resume), and the report covers every row in "
                         "it, so that processes fitting disjoint --only lists can share one file")
    ap.add_argument("--report-only", action="store_true", help="with --rows: print the report of the rows file and stop")
    ap.add_argument("--baseline", action="store_true",
                    help="also observe task 1 trained alone (same seeds): the fit sees the multitask benefit, which "
                         "carries r, with the seed-to-seed noise it shares with the multitask curve cancelled by "
                         "the seed-clustered error bars")
    ap.add_argument("--theory-replicates", type=int, default=0,
                    help="finite: M >= 2 more theory solves at each optimum with independent draws, whose covariance "
                         "(the theory's Monte Carlo error, mtjax.theory_covariance) enters the error bars "
                         "(fit(theory_replicates=M)); the report adds the coverage with this term but no discrepancy")
    ap.add_argument("--warm", default=None,
                    help="rows CSV of an earlier run: each setting's fit starts at that run's optimum (e.g. the "
                         "128-draw fit when refitting with --response 512); settings missing in it start at the defaults")
    ap.add_argument("--refresh-errors", action="store_true",
                    help="with --rows: recompute the error bars of the finished rows at their fitted values (no refit: "
                         "the Jacobian at the optimum, plus --theory-replicates solves), with the current --errors, "
                         "--discrepancy and --theory-replicates; rows already refreshed with this M are skipped")
    ap.add_argument("--ftol", type=float, default=0.0,
                    help="Levenberg-Marquardt stops after an accepted step that lowers ½χ² by less than this "
                         "(mtjax.fit(ftol=); 0: never; 0.01 stops the finite-data fits' tail of steps that gain nothing)")
    ap.add_argument("--mirror", action="store_true",
                    help="after each fit, the objective at the optimum's mirror image r -> -r (one solve); where it is "
                         "within Δχ² = 4 max(1, χ²/dof) of the fit's and r = 0 does not lie between the two in "
                         "objective (a second solve: same basin), a second fit from there, the better kept; "
                         "finished rows of --rows get the check too")
    ap.add_argument("--maps-check", type=int, nargs="+", default=None, metavar="M",
                    help="finite: no fit; at each --only setting's optimum in --rows (else --warm), the predictions with "
                         "each of these Picard map counts against the first, in units of the data's s.e., and the "
                         "time per solve (how few maps a fit can use)")
    ap.add_argument("--model", choices=["population", "finite"], default="population",
                    help="population: online SGD fitted by the population theory; finite: full-batch GD on finite "
                         "training sets fitted by the finite-data theory, and by the population theory side by side")
    a = ap.parse_args()
    if a.report_only:
        if not a.rows or not os.path.exists(a.rows):
            raise SystemExit(f"--report-only needs an existing --rows file, got {a.rows!r}; run the fits with --rows first")
        report = format_report(pd.read_csv(a.rows).sort_values("setting"), a, float("nan"), float("nan"))
        print(report)
        if a.out:
            with open(a.out, "w") as f:
                f.write(report + "\n")
        return
    if a.warm and not os.path.exists(a.warm):
        raise SystemExit(f"--warm needs an existing rows CSV, got {a.warm!r}; pass the --rows file of an earlier run")
    t0 = time.time()
    finite = a.model == "finite"
    spec = spec_finite(a.n) if finite else SPEC
    exp = mtjax.experiment_from_spec(spec)
    truth = settings(a.settings, a.seed, finite, a.n)
    disc = {"none": None, "estimate": "estimate"}.get(a.discrepancy, None)
    if a.discrepancy not in ("none", "estimate"):
        disc = float(a.discrepancy)
    cache = os.path.join(a.cache, f"mtjax_fit_recovery_{a.model}{a.n if finite else ''}_{a.settings}_{a.seeds}_{a.seed}_pool.npz") if a.cache else None
    if cache and os.path.exists(cache):  # the simulation is the slow part: reuse it across fit variants
        z = np.load(cache)
        times, loss = z["times"], z["loss"]
    else:
        times, loss = simulate_all(exp, truth, a.seeds)
        if cache:
            np.savez(cache, times=times, loss=loss)
    if a.baseline:  # task 1 alone, in its own cache file (the multitask cache stays valid)
        bcache = cache.replace("_pool.npz", "_single_pool.npz") if cache else None
        if bcache and os.path.exists(bcache):
            loss_single = np.load(bcache)["loss"]
        else:
            loss_single = simulate_all(exp, truth, a.seeds, w_b=0.0)[1]
            if bcache:
                np.savez(bcache, times=times, loss=loss_single)
    t_sim = time.time() - t0
    print(f"simulated {a.settings} x {a.seeds} runs in {t_sim:.0f} s", flush=True)
    if a.refresh_errors:
        if not a.rows or not os.path.exists(a.rows):
            raise SystemExit(f"--refresh-errors needs an existing --rows file, got {a.rows!r}")
        _refresh_errors(a, exp, truth, times, loss, loss_single if a.baseline else None, disc, finite)
        report = format_report(pd.read_csv(a.rows).sort_values("setting"), a, t_sim, time.time() - t0, time.process_time())
        print(report)
        if a.out:
            with open(a.out, "w") as f:
                f.write(report + "\n")
        return
    if a.maps_check:
        _maps_check(a, exp, truth, times, loss, loss_single if a.baseline else None)
        return
    warm = pd.read_csv(a.warm).set_index("setting") if a.warm else None
    rows = []
    old_rows = pd.read_csv(a.rows).set_index("setting") if a.rows and os.path.exists(a.rows) else pd.DataFrame()
    done = set(old_rows.index.astype(int))
    for i in (range(a.settings) if a.only is None else a.only):
        if i in done:
            if a.mirror and _needs_mirror_check(old_rows.loc[i]):
                _mirror_finished(a, exp, truth, times, loss, loss_single if a.baseline else None, disc, finite, old_rows.loc[i])
            continue
        texp, obs, params, per_seed, models = _setting_problem(a, exp, truth, i, times, loss, loss_single if a.baseline else None, finite)
        row = {"setting": i}
        for prefix, model in list(models.items())[1:]:  # the other theory, side by side: point estimates only
            pr_ = make_problem(texp, obs, params, seeds=mtjax.Seeds(i, 0, i, 0), model=model)
            r_ = fit(pr_, n_starts=a.starts, n_adam=0, n_newton=20)
            row.update({f"{prefix}{n}_fit": float(r_.params[n][0]) for n in ("relatedness", "s_a", "s_b")})
            row[f"{prefix}chi2_dof"] = float(r_.chi2_dof)
        prob = make_problem(texp, obs, params, seeds=mtjax.Seeds(i, 0, i, 0), model=models[""])
        ti = time.time()
        kw = _error_kwargs(a, per_seed)
        starts = {}
        if warm is not None and i in warm.index:  # one start, at the earlier run's optimum
            starts = {"starts": prob.pack({n: float(warm.loc[i, f"{n}_fit"]) for n in ("relatedness", "s_a", "s_b")})[None]}
            row["warm"] = True
        # The DMFT's Adam steps are reverse-mode gradients through every solve: Levenberg–Marquardt
        # alone (forward-mode Jacobian, 3 tangents) from the starts.
        res = fit(prob, n_starts=a.starts, n_adam=0 if finite else 30, adam_lr=0.1, n_newton=20, discrepancy=disc,
                  progress=a.progress, theory_replicates=a.theory_replicates, ftol=a.ftol, **starts, **kw)  # fmt: skip
        if a.mirror:
            values = {n: float(res.params[n][0]) for n in ("relatedness", "s_a", "s_b")}
            res = _mirror(a, prob, values, float(res.loss), float(res.chi2_dof), row, disc, kw) or res
        row.update(_error_columns(a, prob, res, truth, i, finite, kw))
        if not a.no_profile:
            r_hat, h = row["relatedness_fit"], row["relatedness_se"]
            h = min(h, 0.2) if np.isfinite(h) and h > 0 else 0.2
            grid = np.clip(r_hat + h * np.asarray(PROFILE_STEPS), -0.99, 0.99)
            pr = profile(prob, res, "relatedness", grid, n_newton=8)
            for lev in (68, 95):
                lo, hi, lo_open, hi_open = pr.interval(lev / 100)
                row.update({f"r_lo{lev}": lo, f"r_hi{lev}": hi, f"r_open{lev}": lo_open or hi_open})
            row["profile_scale"] = float(pr.scale)
        row.update(chi2_dof=float(res.chi2_dof), converged=bool(res.converged), grad_norm=float(res.grad_norm), fit_s=time.time() - ti)
        rows.append(row)
        print(f"setting {i}: {row}", flush=True)
        if a.rows:
            _add_row(a.rows, row)
    df = pd.read_csv(a.rows).sort_values("setting") if a.rows and os.path.exists(a.rows) else pd.DataFrame(rows)
    if not len(df):  # e.g. `--only` with no settings: the simulation (and its cache) only
        return
    report = format_report(df, a, t_sim, time.time() - t0, time.process_time())
    print(report)
    if a.out:
        with open(a.out, "w") as f:
            f.write(report + "\n")


def _setting_problem(a, exp, truth, i, times, loss, loss_single, finite):
    """Setting i's observations (seed means, s.e., per-seed curves) and the models that fit them."""
    mean, se = loss[i].mean(0), loss[i].std(0, ddof=1) / np.sqrt(a.seeds)
    tab = pd.DataFrame([
        {"time": times[j], "task": k + 1, "test_loss": mean[j, k], "se": se[j, k], "single_task": 0.0}
        for j in range(1, len(times)) for k in range(2)
    ])  # fmt: skip
    per_seed = loss[i][:, 1:, :].reshape(a.seeds, -1)  # (seeds, rows), rows ordered as in `tab`
    if loss_single is not None:
        m1, se1 = loss_single[i].mean(0), loss_single[i].std(0, ddof=1) / np.sqrt(a.seeds)
        tab = pd.concat([tab, pd.DataFrame([
            {"time": times[j], "task": 1, "test_loss": m1[j, 0], "se": se1[j, 0], "single_task": 1.0}
            for j in range(1, len(times))])], ignore_index=True)  # fmt: skip
        per_seed = np.concatenate([per_seed, loss_single[i][:, 1:, 0]], axis=1)
    obs, _ = observations_from_table(tab, se="se", known=["single_task"] if loss_single is not None else [])
    params = [Param("relatedness", 0.3), Param("s_a", 1.0), Param("s_b", 1.0)]
    texp = theory_experiment(exp, truth, i)
    maps = {} if a.maps is None else {"min_iter": a.maps, "max_iter": a.maps}
    models = {"": mtjax.FiniteDataTheory(mtjax.fit_solver(n_grid=40, n_response=a.response, **maps))} if finite else {"": mtjax.PopulationTheory(SOLVER)}
    if finite and not a.no_population:
        models["pop_"] = mtjax.PopulationTheory(SOLVER)
    return texp, obs, params, per_seed, models


def _error_kwargs(a, per_seed) -> dict:
    # Errors of one seed-mean curve are correlated across times (a seed that learns fast is
    # low at every time, and it keeps its test set): the sandwich error bars treat every
    # seed's curve as one cluster (rows ordered as in `tab`: time-major, then task).
    return {"diagonal": {}, "replicates": {"obs_replicates": per_seed},
            "sandwich": {"obs_covariance": np.cov(per_seed, rowvar=False) / a.seeds}}[a.errors]


def _error_columns(a, prob, res, truth, i, finite, kw) -> dict:
    """A fit's estimates and error bars as row columns: `_se` the full error model, `_se0` the
    sampling error alone, `_se1` sampling plus the theory's Monte Carlo error (no discrepancy)."""
    base = error_model(prob, res, **kw)  # the same fit's error bars without the discrepancy term
    mc = error_model(prob, res, theory_replicates=a.theory_replicates, **kw) if a.theory_replicates else base
    row = {"dof": res.dof, "tau_a": float(res.discrepancy[0]), "tau_b": float(res.discrepancy[1]),
           "theory_replicates": int(a.theory_replicates)}  # fmt: skip
    if a.theory_replicates:  # the theory's Monte Carlo s.d. against the data's s.e., median over the points
        row["theory_se_ratio"] = float(np.median(np.asarray(res.theory_se) / np.asarray(prob.obs.se)))
    if finite:
        row["ntrain_true"] = float(truth.ntrain.iloc[i])
    for name in ("relatedness", "s_a", "s_b"):
        row[f"{name}_true"] = float(truth[name].iloc[i])
        row[f"{name}_fit"] = float(res.params[name][0])
        row[f"{name}_se"] = float(res.stderr[name][0])
        row[f"{name}_se0"] = float(base.stderr[name][0])
        row[f"{name}_se1"] = float(mc.stderr[name][0])
    lo, hi = res.interval("relatedness", 0.95, scale="fit")
    row.update(r_lo_fit95=float(lo[0]), r_hi_fit95=float(hi[0]))
    return row


def _refresh_errors(a, exp, truth, times, loss, loss_single, disc, finite) -> None:
    """`--refresh-errors`: the error bars of every finished row at its fitted values, no refit."""
    df = pd.read_csv(a.rows)
    for _, old in df.sort_values("setting").iterrows():
        i = int(old.setting)
        done_m = old.get("theory_replicates", 0)
        if (a.only is not None and i not in a.only) or (pd.notna(done_m) and int(done_m) == a.theory_replicates):
            continue
        ti = time.time()
        prob, values, kw = _stored_problem(a, exp, truth, times, loss, loss_single, finite, i, old)
        theta = prob.pack(values)
        # n_newton = 0: the residuals and Jacobian at the stored optimum, and the error bars there
        res = fit(prob, starts=theta[None], n_adam=0, n_newton=0, discrepancy=disc, theory_replicates=a.theory_replicates, **kw)
        row = {**old.to_dict(), **_error_columns(a, prob, res, truth, i, finite, kw)}
        for n in ("relatedness", "s_a", "s_b"):  # the stored optimum, not its float32 round trip
            row[f"{n}_fit"] = float(old[f"{n}_fit"])
        row["refresh_s"] = time.time() - ti
        print(f"setting {i}: errors refreshed in {row['refresh_s']:.0f} s: "
              + ", ".join(f"{n} se {old[f'{n}_se']:.4f} -> {row[f'{n}_se']:.4f}" for n in ("relatedness", "s_a", "s_b")), flush=True)
        _add_row(a.rows, row)


def _stored_problem(a, exp, truth, times, loss, loss_single, finite, i: int, old):
    """Setting i's fit problem, the fitted values of its finished row `old`, and its error kwargs."""
    texp, obs, params, per_seed, models = _setting_problem(a, exp, truth, i, times, loss, loss_single, finite)
    prob = make_problem(texp, obs, params, seeds=mtjax.Seeds(i, 0, i, 0), model=models[""])
    return prob, {n: float(old[f"{n}_fit"]) for n in ("relatedness", "s_a", "s_b")}, _error_kwargs(a, per_seed)


def _objective(prob, theta) -> float:
    """½χ² at θ, by the fit's trial-step program."""
    return 0.5 * float(np.sum(np.asarray(_residuals(prob, theta[None]), float) ** 2))


def _mirror_margin(chi2_dof: float) -> float:
    """How far above the fit's objective ½χ² its mirror image may lie and still get a fit of its
    own: 2 (Δχ² = 4, the 95 % likelihood-ratio region of one parameter) times the fit's χ²/dof
    where that exceeds 1 (the discrepancy the data s.e. do not carry)."""
    return 2.0 * max(1.0, float(chi2_dof)) if np.isfinite(chi2_dof) else 2.0


def _own_basin(loss: float, mirror: float, at_zero: float) -> bool:
    """Whether the mirror point (objective `mirror`) may lie in a basin other than the fit's
    (`loss`), from the objective `at_zero` at r = 0 on the segment between them (s held): the
    objective rising monotonically from the fit through r = 0 to the mirror (loss <= at_zero <=
    mirror) is one basin, and a fit from the mirror would descend back (e.g. a fit at r ≈ 0,
    whose mirror is its neighbour); a barrier at r = 0 (at_zero > mirror), or a fit that is not
    the lowest of the three (at_zero < loss), calls for a fit of its own."""
    return not (loss <= at_zero <= mirror)


def _mirror(a, prob, values: dict, loss: float, chi2_dof: float, row: dict, disc, kw):
    """`--mirror`: r → −r changes the curves only through the initial student, so a fit can end
    in the mirror basin (docs/fitting.md §6).  The objective at the optimum's (`values`, objective
    `loss`) mirror image (one solve); where it is below `loss` + `_mirror_margin` (the mirror point
    is not optimised, its basin's minimum lies lower) and the objective at r = 0 (a second solve)
    says the mirror may lie in a basin of its own (`_own_basin`), a second fit from there.  Returns
    that fit where it ends lower than `loss`, else None.  Row columns: `objective`,
    `mirror_objective`, `zero_objective` (NaN where not needed), `mirror_refit`, `mirror_kept`."""
    mirror = prob.pack({**values, "relatedness": -values["relatedness"]})
    obj = _objective(prob, mirror)
    within = bool(obj < loss + _mirror_margin(chi2_dof))
    at_zero = _objective(prob, prob.pack({**values, "relatedness": 0.0})) if within else float("nan")
    row.update(objective=loss, mirror_objective=obj, zero_objective=at_zero,
               mirror_refit=within and _own_basin(loss, obj, at_zero), mirror_kept=False)
    if within and not row["mirror_refit"]:
        print(f"setting {row['setting']}: objective {obj:.3f} at r = {-values['relatedness']:+.3f}, {at_zero:.3f} at r = 0, "
              f"{loss:.3f} at the fit's r = {values['relatedness']:+.3f}: one basin, no refit", flush=True)
    if not row["mirror_refit"]:
        return None
    print(f"setting {row['setting']}: objective {obj:.3f} at r = {-values['relatedness']:+.3f}, {loss:.3f} at the "
          f"fit's r = {values['relatedness']:+.3f}: refitting from the mirror", flush=True)
    res = fit(prob, starts=mirror[None], n_adam=0, n_newton=20, discrepancy=disc, progress=a.progress,
              theory_replicates=a.theory_replicates, ftol=a.ftol, **kw)  # fmt: skip
    if float(res.loss) >= loss:
        return None
    row.update(objective=float(res.loss), mirror_kept=True)
    return res


def _needs_mirror_check(old) -> bool:
    """A finished row without the check, or checked but not refitted where the margin says it should
    be and the basin test (`zero_objective`) was not run."""
    obj, mirror = old.get("objective", np.nan), old.get("mirror_objective", np.nan)
    if not np.isfinite(mirror):
        return True
    return (not bool(old.get("mirror_refit", False)) and mirror < obj + _mirror_margin(old.get("chi2_dof", np.nan))
            and not np.isfinite(old.get("zero_objective", np.nan)))


def _mirror_finished(a, exp, truth, times, loss, loss_single, disc, finite, old) -> None:
    """`--mirror` on a finished row: the mirror check at its stored optimum, a refit from the
    mirror where `_mirror` calls for one, and the refit's row where it ends lower."""
    i = int(old.name)
    ti = time.time()
    prob, values, kw = _stored_problem(a, exp, truth, times, loss, loss_single, finite, i, old)
    at_fit = _objective(prob, prob.pack(values))
    row = {**old.to_dict(), "setting": i}
    res = _mirror(a, prob, values, at_fit, float(old.get("chi2_dof", np.nan)), row, disc, kw)
    if res is not None:
        row.update(_error_columns(a, prob, res, truth, i, finite, kw))
        row.update(chi2_dof=float(res.chi2_dof), converged=bool(res.converged), grad_norm=float(res.grad_norm))
    row["mirror_s"] = time.time() - ti
    print(f"setting {i}: mirror check: objective {row['objective']:.3f}, at the mirror {row['mirror_objective']:.3f}"
          f"{', refitted and kept' if row['mirror_kept'] else ''}", flush=True)
    _add_row(a.rows, row)


def _maps_check(a, exp, truth, times, loss, loss_single) -> None:
    """`--maps-check M0 M1 ...`: each --only setting's predictions at its stored optimum with M_j
    Picard maps per solve (min_iter = max_iter = M_j) against those with M0, in units of the
    observations' s.e., and the seconds per compiled solve (the second call)."""
    src = a.rows if a.rows and os.path.exists(a.rows) else a.warm
    if not src or not os.path.exists(src):
        raise SystemExit("--maps-check needs the optima: pass an existing --rows or --warm rows CSV")
    opt = pd.read_csv(src).set_index("setting")
    print(f"Picard maps per solve vs the predictions with {a.maps_check[0]} maps, at the optima in {src} "
          f"(response draws {a.response}); |Δ| in units of the observations' s.e.", flush=True)
    print(f"{'setting':>7} {'maps':>4} {'s/solve':>7} {'max|Δ|/se':>9} {'rms Δ/se':>8} {'χ²/2':>8}", flush=True)
    for i in (a.only if a.only is not None else sorted(opt.index)):
        if i not in opt.index:
            continue
        ref = None
        for m in a.maps_check:
            a.maps = m
            prob, values, _ = _stored_problem(a, exp, truth, times, loss, loss_single, True, i, opt.loc[i])
            theta = prob.pack(values)[None]
            np.asarray(_residuals(prob, theta))  # compile (once per map count)
            t = time.time()
            res = np.asarray(_residuals(prob, theta), float)[0]  # (pred − value)/se
            dt = time.time() - t
            ref = res if ref is None else ref
            d = res - ref
            print(f"{i:>7} {m:>4} {dt:>7.1f} {np.max(np.abs(d)):>9.3f} {np.sqrt(np.mean(d**2)):>8.3f} "
                  f"{0.5 * np.sum(res**2):>8.3f}", flush=True)


def _add_row(path: str, row: dict) -> None:
    """Add one finished setting to the rows CSV: read, append, write a temporary file and rename it
    (a reader never sees half a file), under an exclusive lock (processes may share the file)."""
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = pd.read_csv(path) if os.path.exists(path) else pd.DataFrame()
        new = pd.concat([old[old.setting != row["setting"]] if len(old) else old, pd.DataFrame([row])], ignore_index=True)
        new.sort_values("setting").to_csv(path + ".tmp", index=False)
        os.replace(path + ".tmp", path)


def _artanh_z(d: pd.DataFrame, sfx: str) -> tuple[np.ndarray, np.ndarray]:
    """artanh(r_fit) − artanh(r_true) and its s.e. (the fit's scale: se(u) = se(r) / (1 − r²)), per row.
    `sfx`: the s.e. column's suffix ("", "0", "1")."""
    r_ = np.clip(d.relatedness_fit.to_numpy(), -1 + 1e-12, 1 - 1e-12)
    du = np.arctanh(r_) - np.arctanh(np.clip(d.relatedness_true.to_numpy(), -1 + 1e-12, 1 - 1e-12))
    return du, d[f"relatedness_se{sfx}"].to_numpy() / (1 - r_**2)


def format_report(df: pd.DataFrame, a, t_sim: float, t_all: float, t_cpu: float = float("nan")) -> str:
    setup = (f"full-batch GD on P = α N examples per task, α in [0.5, 8] known (N={getattr(a, 'n', 200)}, R=C=3, depth 1, width 8,\n"
             "sigma=1, lr 0.5, 40 steps), fitted by the finite-data theory (mtjax.fit_solver(n_grid=40, n_response="
             f"{getattr(a, 'response', 32)}{'' if getattr(a, 'maps', None) is None else f', {a.maps} maps'}), quenched)"
             if getattr(a, "model", "population") == "finite" else
             "online protocol (N=32, R=C=3, depth 1, width 8,\nsigma=1, lr 0.005, t in 1..10)")  # fmt: skip
    if getattr(a, "baseline", False):
        setup += ";\nobserved: both tasks' multitask curves and task 1 trained alone (same seeds)"
    lines = [f"fit_recovery: {a.settings} settings x {a.seeds} seeds, {setup}, {a.starts} starts, error bars: {a.errors}, "
             f"discrepancy: {a.discrepancy}; "
             f"simulation {t_sim:.0f} s, total {t_all:.0f} s wall, {t_cpu:.0f} s CPU ({os.environ.get('XLA_FLAGS', '')}; "
             f"load average {os.getloadavg()[0]:.1f} at the end)", ""]
    d = df.copy()
    dof = float(d.dof.iloc[0])
    prof = "r_lo95" in d
    d["dr"] = d["relatedness_fit"] - d["relatedness_true"]
    for s in ("s_a", "s_b"):
        d[f"dlog_{s}"] = np.log10(d[f"{s}_fit"]) - np.log10(d[f"{s}_true"])
        d[f"lse_{s}"] = d[f"{s}_se"] / (d[f"{s}_fit"] * np.log(10))
        d[f"lse0_{s}"] = d[f"{s}_se0"] / (d[f"{s}_fit"] * np.log(10))
    if prof:
        d["r_ident"] = ~d.r_open95 & ((d.r_hi95 - d.r_lo95) / 2 <= R_MAX_HALF_WIDTH)
    else:  # without profiles: the Wald interval on the fit's scale (FitResult.interval(scale="fit"))
        if "r_lo_fit95" not in d:  # rows written before it was stored: u = artanh r, se(u) = se(r) / (1 − r²)
            q = _quantile(0.95, dof)
            u = np.arctanh(np.clip(d.relatedness_fit.to_numpy(), -1 + 1e-12, 1 - 1e-12))
            se_u = _artanh_z(d, "")[1]
            d["r_lo_fit95"], d["r_hi_fit95"] = np.tanh(u - q * se_u), np.tanh(u + q * se_u)
        d["r_ident"] = (d.r_hi_fit95 - d.r_lo_fit95) / 2 <= R_MAX_HALF_WIDTH
    hdr = (f"{'#':>2} {'r true':>6} {'r fit ± se':>14} {'r 95% profile':>15} {'lg s_a':>6} {'fit ± se':>15} "
           f"{'lg s_b':>6} {'fit ± se':>15} {'chi2/dof':>8} conv {'tau_a':>5} {'tau_b':>5} (mnats)")
    lines.append(hdr)
    for _, r in d.iterrows():
        iv = (f"[{r.r_lo95:+.2f},{r.r_hi95:+.2f}]{'o' if r.r_open95 else ' '}" if prof else " " * 15)
        lines.append(
            f"{int(r.setting):>2} {r.relatedness_true:6.3f} {r.relatedness_fit:6.3f} ± {r.relatedness_se:5.3f}"
            f"{' ' if r.r_ident else '*'}{iv} "
            f"{np.log10(r.s_a_true):6.3f} {np.log10(r.s_a_fit):7.3f} ± {r.lse_s_a:5.3f} "
            f"{np.log10(r.s_b_true):6.3f} {np.log10(r.s_b_fit):7.3f} ± {r.lse_s_b:5.3f} {r.chi2_dof:8.2f} {int(r.converged):4d} {1e3 * r.tau_a:5.2f} {1e3 * r.tau_b:5.2f}"
        )
    kind = {"replicates": "seed-clustered sandwich", "sandwich": "sandwich (seed covariance)", "diagonal": "Laplace, independent points"}[a.errors]
    lines.append(f"(* r unidentifiable: 95 % {'profile interval open (o) or' if prof else 'Wald interval of artanh r, mapped to r,'} half-width > {R_MAX_HALF_WIDTH}; "
                 f"s.e.: {kind}, {dof:g} dof)")
    lines.append("")
    ident = d[d.r_ident]
    lines.append(f"within target: r |Δ| < 0.1: {np.sum(np.abs(ident.dr) < 0.1)}/{len(ident)} identifiable settings "
                 f"({np.sum(np.abs(d.dr) < 0.1)}/{len(d)} of all); unidentifiable: {list(d.setting[~d.r_ident].astype(int))}")
    for s in ("s_a", "s_b"):
        lines.append(f"within target: log10 {s} |Δ| < 0.15: {np.sum(np.abs(d[f'dlog_{s}']) < 0.15)}/{len(d)}")
    q68, q95 = _quantile(0.68, dof), _quantile(0.95, dof)
    lines.append(f"discrepancy s.d. tau (mnats): task 1 median {1e3 * d.tau_a.median():.2f} (max {1e3 * d.tau_a.max():.2f}, "
                 f"> 0 in {int((d.tau_a > 0).sum())}), task 2 median {1e3 * d.tau_b.median():.2f} (max {1e3 * d.tau_b.max():.2f}, "
                 f"> 0 in {int((d.tau_b > 0).sum())}); s.e. inflation median r {np.median(d.relatedness_se / d.relatedness_se0):.2f}, "
                 f"s_a {np.median(d.s_a_se / d.s_a_se0):.2f}, s_b {np.median(d.s_b_se / d.s_b_se0):.2f}")
    blocks = [(f"with the discrepancy term ({a.discrepancy})", ""), ("without it (sampling error only)", "0")]
    M = int(d.theory_replicates.min()) if "theory_replicates" in d and d.theory_replicates.notna().all() else 0
    if M:  # every row carries the theory's Monte Carlo error
        blocks[0] = (f"with the theory's Monte Carlo error ({M} replicates) and the discrepancy term ({a.discrepancy})", "")
        blocks.insert(1, ("with the theory's Monte Carlo error, no discrepancy term", "1"))
        d["lse1_s_a"], d["lse1_s_b"] = (d[f"{s}_se1"] / (d[f"{s}_fit"] * np.log(10)) for s in ("s_a", "s_b"))
        lines.append(f"theory's Monte Carlo s.d. / data s.e. (median over a setting's points): median {d.theory_se_ratio.median():.2f} "
                     f"(range {d.theory_se_ratio.min():.2f}-{d.theory_se_ratio.max():.2f}); s.e. inflation by it alone, median "
                     f"r {np.median(d.relatedness_se1 / d.relatedness_se0):.2f}, s_a {np.median(d.s_a_se1 / d.s_a_se0):.2f}, "
                     f"s_b {np.median(d.s_b_se1 / d.s_b_se0):.2f}")
    for title, sfx in blocks:
        lines.append(f"coverage {title} (nominal 68 % / 95 %; t({dof:g}) quantiles {q68:.2f} / {q95:.2f}):")
        # r on the fit's own scale, u = artanh r, where the fit's Wald interval is symmetric: near
        # r = ±1 the delta-method s.e. of r itself shrinks to 0 and its z says nothing (row "on r").
        du, se_u = _artanh_z(d, sfx)
        ident_u = d.r_ident.to_numpy()
        for name, err, se, sub in (("r (all)", du, se_u, d),
                                   ("r (identifiable)", du[ident_u], se_u[ident_u], ident),
                                   ("r (all), on r", d.dr, d[f"relatedness_se{sfx}"], d),
                                   ("log10 s_a", d.dlog_s_a, d[f"lse{sfx}_s_a"], d), ("log10 s_b", d.dlog_s_b, d[f"lse{sfx}_s_b"], d)):
            z = np.abs(err) / se
            lines.append(f"  {name:17s} ±1 s.e.: {np.mean(z < 1):4.0%}  ±2 s.e.: {np.mean(z < 2):4.0%}  |  "
                         f"±t68 s.e.: {np.mean(z < q68):4.0%}  ±t95 s.e.: {np.mean(z < q95):4.0%}   (n={len(sub)})")
    if prof:
        for name, sub in (("r (all)", d), ("r (identifiable)", ident)):
            c68 = np.mean((sub.r_lo68 <= sub.relatedness_true) & (sub.relatedness_true <= sub.r_hi68))
            c95 = np.mean((sub.r_lo95 <= sub.relatedness_true) & (sub.relatedness_true <= sub.r_hi95))
            lines.append(f"  {name:17s} profile 68 %: {c68:4.0%}  profile 95 %: {c95:4.0%}   (n={len(sub)}; with the discrepancy term)")
    lines.append(f"median chi2/dof: {d.chi2_dof.median():.2f}; converged: {int(d.converged.sum())}/{len(d)}; "
                 f"median fit time {d.fit_s.median():.1f} s (incl. profile)")
    if "pop_relatedness_fit" in d:  # the population theory on the same finite-data curves
        lines.append("")
        lines.append("the population theory fitted to the same curves (point estimates; α = P/N of each setting):")
        lines.append(f"{'#':>2} {'ntrain':>6} {'r true':>6} {'r fit':>6} {'lg s_a':>6} {'fit':>6} {'lg s_b':>6} {'fit':>6} "
                     f"{'chi2/dof':>8} | finite-data: {'r fit':>6} {'chi2/dof':>8}")
        for _, r in d.iterrows():
            lines.append(f"{int(r.setting):>2} {int(r.ntrain_true):6d} {r.relatedness_true:6.3f} {r.pop_relatedness_fit:6.3f} "
                         f"{np.log10(r.s_a_true):6.3f} {np.log10(r.pop_s_a_fit):6.3f} {np.log10(r.s_b_true):6.3f} "
                         f"{np.log10(r.pop_s_b_fit):6.3f} {r.pop_chi2_dof:8.2f} | {r.relatedness_fit:6.3f} {r.chi2_dof:8.2f}")
        pr = np.abs(d.pop_relatedness_fit - d.relatedness_true) < 0.1
        ps = [np.abs(np.log10(d[f"pop_{s}_fit"] / d[f"{s}_true"])) < 0.15 for s in ("s_a", "s_b")]
        lines.append(f"population theory within target: r {int(pr.sum())}/{len(d)}, log10 s_a {int(ps[0].sum())}/{len(d)}, "
                     f"log10 s_b {int(ps[1].sum())}/{len(d)}; median chi2/dof {d.pop_chi2_dof.median():.1f} "
                     f"(finite-data {d.chi2_dof.median():.2f})")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
