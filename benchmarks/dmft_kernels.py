"""Speed of the DMFT's causal kernels: the historical dense sweeps vs the blocked ones, side by side.

Run: python benchmarks/dmft_kernels.py [--repeat 3] [--solve]
Output: a table on stdout (docs/dmft.md §3 quotes it).

The two causal sums of a DMFT map (mtjax/_dmft.py; the kernels are `mtjax.internal`'s):
- the response Γ[n,·] = J^n (E_n − (1/α) Σ_{k<n} R_v[n,k] Γ[k,·]) per draw, weighted over draws
  (`response`): "dense" is the algorithm the blocked one replaced, the baseline here — Γ
  stored (draws, T+1, C, T+1, C) and every step contracts over all T+1 times with an einsum;
  "blocked, 1 block" is the blocked layout (contracted index leading: one plain matrix product per
  step) without time blocks; "blocked" adds the default time blocks (`_time_blocks`).
- the memory term of the example process Σ_{m<n} R_v[n,m] g^m over all 3 S draws
  (`causal_memory_scan` vs a dense einsum over a (3, S, T+1, C) carry).
And the Cholesky factor of the sampled fields' covariance (`psd_factor`, n = (T+1) H): the
column loop of `mtjax.internal.cholesky` vs `mtjax.internal.blocked_cholesky`.
Shapes: the N = 400 depth-1 grid (T + 1 = 41, logits C = 4, 3 x 256 response draws; first-layer
H = 8 with K = 2 tasks x 3 x 2048 draws) and a paper-preset-like one (T + 1 = 61, C = 10).
Each row: median wall time of `--repeat` calls after one compiling call, and the compile call.
`--solve` adds one depth-1 solve of the grid (α = 2, two replicas) with the library as it is.
Ratios are measured in one run on the same machine (absolute times depend on its load).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from mtjax.internal import blocked_cholesky, causal_memory_scan, cholesky, response, softmax_jacobian


def dense_response(h, Rv, alpha, wts, chunk=32):
    """The historical kernel: dense forward substitution, Γ as (B, T1, C, T1, C)."""
    S, T1, C = h.shape
    eye = jnp.eye(C)

    @jax.checkpoint
    def one_chunk(hc, wc):
        J = softmax_jacobian(hc)
        B = hc.shape[0]

        def step(G, n):
            mem = jnp.einsum("ckd,skdje->scje", Rv[n], G) / alpha
            src = jnp.zeros((B, C, T1, C)).at[:, :, n, :].set(eye)
            return G.at[:, n].set(jnp.einsum("scd,sdje->scje", J[:, n], src - mem)), None

        G, _ = jax.lax.scan(step, jnp.zeros((B, T1, C, T1, C)), jnp.arange(T1))
        return jnp.einsum("s,sncme->ncme", wc, G)

    xs = (h.reshape(S // chunk, chunk, T1, C), wts.reshape(S // chunk, chunk))
    return jax.lax.scan(lambda a, x: (a + one_chunk(*x), None), jnp.zeros((T1, C, T1, C)), xs)[0]


def _memory_step(u):
    def step(carry, mem, xs):
        n, dt_n = xs
        g = jnp.tanh(u[n] + mem)
        return carry + dt_n * g.sum(), g, g[0, 0]

    return step


def dense_memory(u, R):
    """Σ_{m<n} R[n, :, m] g^m with the historical dense carry (T1, W, cols) and einsum."""
    T1, W, cols = u.shape
    Rr = R.reshape(T1, W, T1, W)

    def step(carry, n):
        tot, G = carry
        g = jnp.tanh(u[n] + jnp.einsum("wmj,mjc->wc", Rr[n], G))
        return (tot + 0.1 * g.sum(), G.at[n].set(g)), g[0, 0]

    return jax.lax.scan(step, (jnp.asarray(0.0), jnp.zeros((T1, W, cols))), jnp.arange(T1))


def timed(f, *args, repeat=3):
    t0 = time.perf_counter()
    jax.block_until_ready(f(*args))
    compile_s = time.perf_counter() - t0
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), compile_s


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--solve", action="store_true", help="also time one depth-1 solve of the N = 400 grid")
    args = ap.parse_args()
    key = jax.random.PRNGKey(0)
    print(f"{'kernel':<10} {'shape':<32} {'variant':<18} {'run s':>8} {'compile s':>9} {'speed-up':>8} {'max |diff|':>10}")
    for T1, C, S in [(41, 4, 768), (61, 10, 96)]:
        kh, kr, kw = jax.random.split(jax.random.fold_in(key, T1), 3)
        h = 2 * jax.random.normal(kh, (S, T1, C))
        Rv = 0.1 * jnp.tril(jnp.ones((T1, T1)), -1)[:, None, :, None] * jax.random.normal(kr, (T1, C, T1, C))
        w = jax.random.uniform(kw, (S,)) / S
        variants = [("dense (old)", jax.jit(lambda h, R, w: dense_response(h, R, 2.0, w))),
                    ("blocked, 1 block", jax.jit(lambda h, R, w: response(h, R, 2.0, w, n_blocks=1))),
                    ("blocked", jax.jit(lambda h, R, w: response(h, R, 2.0, w)))]
        base = ref = None
        for name, f in variants:
            run, comp = timed(f, h, Rv, w, repeat=args.repeat)
            out = np.asarray(f(h, Rv, w))
            base, ref = (run, out) if base is None else (base, ref)
            print(f"{'response':<10} {f'T+1={T1} C={C} draws={S}':<32} {name:<18} {run:8.3f} {comp:9.1f} {base / run:7.1f}x "
                  f"{np.abs(out - ref).max():10.1e}")
    for T1, W, cols in [(41, 8, 2 * 3 * 2048), (61, 64, 3 * 512)]:
        ku, kr = jax.random.split(jax.random.fold_in(key, 7 * T1))
        u = jax.random.normal(ku, (T1, W, cols))
        R = 0.3 / np.sqrt(T1 * W) * jax.random.normal(kr, (T1, W, T1 * W))
        variants = [("dense (old)", jax.jit(lambda u, R: dense_memory(u, R)[1])),
                    ("blocked, 1 block", jax.jit(lambda u, R: causal_memory_scan(_memory_step(u), jnp.asarray(0.0), R, jnp.full(T1, 0.1), W, cols, n_blocks=1)[2])),
                    ("blocked", jax.jit(lambda u, R: causal_memory_scan(_memory_step(u), jnp.asarray(0.0), R, jnp.full(T1, 0.1), W, cols)[2]))]  # fmt: skip
        base = ref = None
        for name, f in variants:
            run, comp = timed(f, u, R, repeat=args.repeat)
            out = np.asarray(f(u, R))
            base, ref = (run, out) if base is None else (base, ref)
            print(f"{'memory':<10} {f'T+1={T1} width={W} cols={cols}':<32} {name:<18} {run:8.3f} {comp:9.1f} {base / run:7.1f}x "
                  f"{np.abs(out - ref).max():10.1e}")
    # The covariance factor of the sampled fields (psd_factor): the column loop vs blocks of 64.
    for n in (1344, 3264):  # (T+1) H at the paper preset: T = 20 and T = 50, H = 64
        a = jax.random.normal(jax.random.fold_in(key, n), (n, n // 2))
        sm = a @ a.T / n + 1e-4 * jnp.eye(n)
        variants = [("column loop (old)", jax.jit(lambda m: cholesky(m, jitter=0.0))),
                    ("blocked", jax.jit(lambda m: blocked_cholesky(m)))]  # fmt: skip
        base = ref = None
        for name, f in variants:
            run, comp = timed(f, sm, repeat=args.repeat)
            out = np.asarray(f(sm))
            base, ref = (run, out) if base is None else (base, ref)
            print(f"{'factor':<10} {f'n={n}':<32} {name:<18} {run:8.3f} {comp:9.1f} {base / run:7.1f}x "
                  f"{np.abs(out - ref).max():10.1e}")
    if args.solve:
        import sys
        from pathlib import Path

        import equinox as eqx

        import mtjax

        sys.path.insert(0, str(Path(__file__).parent))
        from finite_data_accuracy import experiment_trunk

        e = experiment_trunk(400, 4, 8, 2.0, 0.5, 0.5, 0.2, 40, 0.5, 10000, False)
        sol = mtjax.FiniteDataSolver(n_grid=40, n_draws=2048, n_response=256, tol=2e-2)
        fn = eqx.filter_jit(lambda e, s: mtjax.finite_data_replicas(e, mtjax.Seeds(0), 2, solver=s).test_loss)
        run, comp = timed(fn, e, sol, repeat=1)
        print(f"{'solve':<10} {'depth 1, N=400, alpha=2, 2 repl.':<32} {'library':<18} {run:8.3f} {comp:9.1f}")


if __name__ == "__main__":
    main()
