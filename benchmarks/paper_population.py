"""Population (infinite-data) theory vs the authors' rank-10 measurements.

Run: python benchmarks/paper_population.py [--data PATH]  (default: the authors' rank-10.csv shipped with mtjax)

The theory is run with the paper's student (N = 100, 2 linear layers of 64, orthogonal init,
one realisation, quenched), its teacher (R = C = 10, sigma = 1/sqrt(N), q = 1/2) and time map:
minibatch SGD at lr 1e-3 as gradient flow, t = lr x task-1 steps, so 2000 epochs at ntrain n
end at t_max(n) = 2 ceil(n / 128); alternation with m = 1 gives rates (1, 1); single task (1, 0).
The early-stopped loss is the minimum over t <= t_max(n) (the authors' minimum over epochs).
Prints per-cell tables and how much of the measured multitask benefit the theory explains.
"""

from __future__ import annotations

import argparse
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

import mtjax


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(mtjax.default_data_dir() / "rank-10.csv"))
    ap.add_argument("--n-quad", type=int, default=2048)
    ap.add_argument("--n-quad-eval", type=int, default=4096)
    args = ap.parse_args()
    d = pd.read_csv(args.data)
    ntrains = sorted(d.main_train_pts.unique())
    tmax = {n: float(mtjax.paper(n_train=int(n)).train.t_max) for n in ntrains}
    ts = jnp.concatenate([jnp.zeros(1), jnp.geomspace(0.05, max(tmax.values()), 80), jnp.asarray(sorted(tmax.values()))])
    ts = jnp.unique(ts)
    solver = mtjax.PopulationSolver(n_quad=args.n_quad, n_quad_eval=args.n_quad_eval, rtol=1e-3, atol=1e-5)
    s_vals = sorted(d.s_a.unique())
    r_vals = sorted(d.relatedness.unique())

    def theory(single):
        exp = mtjax.paper(n_train=400, single_task=single)

        def one(r, sa, sb):
            e = eqx.tree_at(lambda m: m.teacher.relatedness, exp, jnp.full((1,), r))
            e = eqx.tree_at(lambda m: m.teacher.scale, e, jnp.stack([sa, sb]))
            th = mtjax.population_theory(e, mtjax.Seeds(0), ts, solver=solver)
            return th.test_loss[:, 0], th.diverged

        return eqx.filter_jit(jax.vmap(one))

    t0 = time.time()
    R, SA, SB = np.meshgrid(r_vals, s_vals, s_vals, indexing="ij")
    multi_loss, multi_div = theory(False)(jnp.asarray(R.ravel()), jnp.asarray(SA.ravel()), jnp.asarray(SB.ravel()))
    single_loss, single_div = theory(True)(jnp.zeros(len(s_vals)), jnp.asarray(s_vals), jnp.ones(len(s_vals)))
    print(f"theory: {R.size} multitask + {len(s_vals)} single-task points in {time.time() - t0:.0f} s; "
          f"failed: {int(multi_div.sum() + single_div.sum())}")
    tsn = np.asarray(ts)

    def early(curve, n):
        return float(np.min(np.asarray(curve)[tsn <= tmax[n] + 1e-9]))

    rows = []
    for i, (r, sa, sb) in enumerate(zip(R.ravel(), SA.ravel(), SB.ravel())):
        j = s_vals.index(sa)
        for n in ntrains:
            rows.append(dict(relatedness=r, s_a=sa, s_b=sb, main_train_pts=n, theory_multi=early(multi_loss[i], n),
                             theory_single=early(single_loss[j], n)))
    th = pd.DataFrame(rows)
    th["theory_benefit"] = th.theory_single - th.theory_multi
    single = d[d.single_task].groupby(["main_train_pts", "s_a"])["validation-1/loss"].mean().rename("paper_single").reset_index()
    multi = d[~d.single_task].groupby(["main_train_pts", "s_a", "s_b", "relatedness"])["validation-1/loss"].mean().rename("paper_multi").reset_index()
    m = th.merge(multi, on=["main_train_pts", "s_a", "s_b", "relatedness"]).merge(single, on=["main_train_pts", "s_a"])
    m["paper_benefit"] = m.paper_single - m.paper_multi
    pd.set_option("display.width", 200)
    print("\nsingle-task early-stopped loss (nats): theory vs authors")
    st = m.drop_duplicates(["main_train_pts", "s_a"]).pivot(index="s_a", columns="main_train_pts", values=["theory_single", "paper_single"])
    print(st.round(3).to_string())
    print("\nbenefit at r = 1 (nats): theory / authors, rows s_a, columns s_b, per ntrain")
    for n in ntrains:
        sub = m[(m.relatedness == 1.0) & (m.main_train_pts == n)]
        print(f"ntrain = {n}")
        print(pd.concat([sub.pivot(index="s_a", columns="s_b", values="theory_benefit").round(3),
                         sub.pivot(index="s_a", columns="s_b", values="paper_benefit").round(3)], axis=1, keys=["theory", "authors"]).to_string())
    dl = (m.theory_single - m.paper_single).abs()
    db = (m.theory_benefit - m.paper_benefit).abs()
    big = m.paper_benefit.abs() >= 0.02
    print(f"\ncells: {len(m)};  single-task |theory - authors| < 0.1 nats: {(dl < 0.1).mean():.1%} (median {dl.median():.3f})")
    print(f"benefit |theory - authors| < 0.03 nats: {(db < 0.03).mean():.1%} (median {db.median():.3f});  "
          f"sign agreement where |authors| >= 0.02: {(np.sign(m.theory_benefit[big]) == np.sign(m.paper_benefit[big])).mean():.1%} of {int(big.sum())}")
    print(f"correlation of benefits: {np.corrcoef(m.theory_benefit, m.paper_benefit)[0, 1]:.3f};  "
          f"share of benefit variance explained (1 - SSres/SStot): {1 - ((m.paper_benefit - m.theory_benefit) ** 2).sum() / ((m.paper_benefit - m.paper_benefit.mean()) ** 2).sum():.3f}")
    for n in ntrains:
        mm = m[m.main_train_pts == n]
        print(f"  ntrain {n:5d}: median |Δ single| {(mm.theory_single - mm.paper_single).abs().median():.3f}, "
              f"mean benefit theory {mm.theory_benefit.mean():+.4f} vs authors {mm.paper_benefit.mean():+.4f}")


if __name__ == "__main__":
    main()
