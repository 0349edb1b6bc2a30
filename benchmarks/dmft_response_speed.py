"""Cost of the relu trunk's difference response (`FiniteDataSolver(response="difference")`) by
the sub-block size of its memory term.

Run: python benchmarks/dmft_response_speed.py [--grid 40] [--widths 4 8] [--draws 1024 256]
         [--subs 1 2 4 8] [--repeats 2] [--out docs/results/dmft_response_speed.txt]
Output: docs/results/dmft_response_speed.txt (docs/dmft.md §4.2).

`mtjax._finite.nonlinear._response_difference` kicks each draw's example process at every time
and trunk direction and runs the kicked copies on, memory term included; that memory term (the
copies' history against the field propagator R_v) is most of the work.  With `sub` > 1 the history
before a sub-block of `sub` times enters all of its times in one matrix product; `sub=1` is the
plain recurrence, which reads the whole history at every time.  Per (width H, response draws per
label component), one task's Γ on random inputs of the solver's shapes (T + 1 grid times, C = 4
label components, relu as softplus(12 x)/12, ε = 0.05, ρ/α = 0.5): compile time, the best of
`--repeats` runs, the speed-up over `sub=1`, and the largest |Γ − Γ_{sub=1}| (float32 rounding).
One call is one task's share of one Picard map.
"""

import argparse
import time

import jax
import jax.numpy as jnp

from mtjax._finite.nonlinear import _response_difference, dmft_activation


def _inputs(T1: int, H: int, S: int, C: int = 4, seed: int = 0):
    k = jax.random.split(jax.random.PRNGKey(seed), 4)
    pre = jax.random.normal(k[0], (T1, C, S, H))
    ys, wts = jnp.tile(jnp.arange(C)[:, None], (1, S)), jnp.full((C, S), 1.0 / S)
    traj = (jnp.zeros((T1, 0, H, H)), jnp.zeros((T1, 0, H)), jax.random.normal(k[1], (T1, C, H)),
            0.1 * jax.random.normal(k[2], (T1, C)))  # fmt: skip
    Rv = 0.1 * jax.random.normal(k[3], (T1, H, T1, H)) * jnp.tril(jnp.ones((T1, T1)), -1)[:, None, :, None]
    return pre, ys, wts, traj, Rv


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", type=int, default=40, help="grid steps T (T + 1 times)")
    ap.add_argument("--widths", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--draws", type=int, nargs="+", default=[1024, 256], help="response draws per label component, one per width")
    ap.add_argument("--subs", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="docs/results/dmft_response_speed.txt")
    args = ap.parse_args()
    if len(args.draws) != len(args.widths):
        raise SystemExit(f"--draws: give one count per width ({len(args.widths)}), got {len(args.draws)}")
    act = dmft_activation("relu", 12.0)
    lines = [f"# one task's difference response Γ: T = {args.grid}, C = 4 label components, relu (softplus(12 x)/12), "
             f"eps = 0.05; best of {args.repeats} runs after compilation; {jax.device_count()} {jax.default_backend()} device(s)",
             f"{'H':>3} {'draws':>6} {'sub':>4} | {'compile s':>9} {'run s':>7} {'speed-up':>8} | {'max |dΓ|':>9} {'max |Γ|':>8}"]  # fmt: skip
    print("\n".join(lines), flush=True)
    for H, S in zip(args.widths, args.draws):
        inp = _inputs(args.grid + 1, H, S)
        base = base_t = None
        for sub in args.subs:
            f = jax.jit(lambda pre, ys, wts, traj, Rv, sub=sub: _response_difference(act, pre, ys, wts, traj, Rv, 0.5, 0.05, sub=sub))
            t0 = time.perf_counter()
            G = f(*inp).block_until_ready()
            t_first = time.perf_counter() - t0
            runs = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                f(*inp).block_until_ready()
                runs.append(time.perf_counter() - t0)
            t_run = min(runs)
            if base is None:
                base, base_t = G, t_run
            line = (f"{H:>3} {S:>6} {sub:>4} | {t_first - t_run:>9.1f} {t_run:>7.2f} {base_t / t_run:>7.2f}x | "
                    f"{float(jnp.max(jnp.abs(G - base))):>9.1e} {float(jnp.max(jnp.abs(base))):>8.3f}")
            lines.append(line)
            print(line, flush=True)
    with open(args.out, "w") as fh:
        fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
