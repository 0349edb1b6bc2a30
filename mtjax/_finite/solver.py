"""`FiniteDataSolver`: the numerical settings of the finite-data theory and its time grid."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Float, Int
from .._validation import check_choice, check_int, check_range, is_concrete
from .sampling import SAMPLINGS


STEP_SCHEDULES = ("uniform", "geometric")  # `FiniteDataSolver.step_schedule`
LABELS = ("auto", "summed", "sampled")  # `FiniteDataSolver.labels`
RESPONSES = ("pathwise", "difference")  # `FiniteDataSolver.response`


class FiniteDataSolver(eqx.Module):
    """Numerical settings of the finite-data (DMFT) theory.

    - `n_grid`: GD steps T of the theory grid (static); the theory is exact (N → ∞) for GD with
      the steps Δ_n of the grid, so with the uniform schedule (Δ = t_max / T) T = the
      simulation's number of steps reproduces its learning rate.
    - `step_schedule`: the step sizes Δ_n, n = 0..T−1 (static; `time_grid`): `"uniform"`
      (Δ_n = t_max / T) or `"geometric"` (Δ_{n+1} = q Δ_n with q = `step_growth`, scaled so that
      Σ Δ_n = t_max: grid times t_n = t_max (qⁿ − 1)/(q^T − 1)).  Geometric steps are small where
      the loss moves fast and GD is least stable (early) and large late, so a short grid (the cost
      grows like T³) reaches a long t_max stably (docs/dmft.md §3).  The theory is then GD with
      that step sequence, not with the simulation's constant learning rate: it approximates the
      gradient flow (or a constant-step GD whose steps are small on the scale of the curves).
    - `step_growth`: q in (1, 2] of the geometric schedule (static; validated, unused by
      `"uniform"`).  First and last steps: Δ_0 = t_max (q − 1)/(q^T − 1), Δ_{T−1} = q^{T−1} Δ_0.
    - `n_draws`: draws S of the example process per label component (static); 3 S draws in all.
      The solution is a Monte Carlo estimate: its seed-to-seed spread falls like 1/sqrt(S) and is
      largest for a trunk at large α with clean labels (depth 1, α = 8, S = 2048: sd 0.02 nats,
      4 % of the early-stopped loss; depth 0: 0.004–0.009).  No bias is resolved at S = 2048 in
      the N = 400 problems (depth 1, α = 8: mean over 6 seeds 0.4798 ± 0.0086 vs the simulations'
      0.4807 ± 0.0036; docs/dmft.md §6.1).  With wide upper layers there *is* a 1/S bias (the
      layers are fitted to the 3 S draws): the paper preset (H = 64) loses 0.04 nats from
      S = 512 to 2048 at ntrain 100 and 0.12 at ntrain 800 (§6.2) — use S ≫ H² there, or
      extrapolate in 1/S.  Error bars: `finite_data_replicas`; power-of-2 S suits the QMC sets.
    - `n_response`: the first `n_response` draws of each component also carry the response
      kernel (static; its cost is ~2 T³ C³ per draw, before the time blocks).  With sampled
      labels, for gradients w.r.t. s and σ (score-function weights of the labels) use
      n_response ~ n_draws: with few response draws that gradient carries their Monte Carlo
      error (15 % with 3 x 32 of 3 x 2048 draws on the test problem; docs/dmft.md §3).  A
      nonlinear trunk at small α needs more: the memory term of its example process has the
      coefficient ρ/α, and the response draws' error can drive the last grid points of the
      causal solution off while the residual stays small (relu, H = 4, α = 0.5: final test loss
      3.35 with 4 x 512 summed-label response draws, 2.29 with 4 x 2048, the network 2.40;
      docs/dmft.md §6.1, `benchmarks/dmft_late_curve.py`).
    - `response_control`: a control variate for the response (static bool, default False):
      the response draws' estimate minus its part linear in their Jacobians, whose mean the
      all-draw mean Jacobian gives (`kernels._response_sampled`; one extra draw's JVP per map).
      Unbiased, and it removes the lag-0 and most of the memory part of the response draws'
      error: a linear trunk (depth 1, 3 x 256 draws) with 3 x 8 response draws then spreads
      over draw seeds like one with all 256 (late-time s.d. 0.014 vs 0.025 plain, 0.012);
      at fit_recovery's optimum (N = 800, 2048 draws, 128 response draws) the per-point s.d.
      over the data's s.e. falls from 0.97 / 1.14 to 0.81 / 0.76 (512 plain response draws:
      0.97 / 0.83), the s.d. of the fitted r less clearly (0.062 / 0.145 to 0.058 / 0.104, each
      ±25 %; docs/dmft.md §3).  For a nonlinear trunk it uses the all-draw mean Hessian.
    - `response`: how a nonlinear trunk's response is estimated (static): `"pathwise"` (default;
      the chain of per-draw Jacobians ∂δ/∂pre, exact per draw) or `"difference"` (each response
      draw's process kicked by ±`response_step` at every time and unit and run on, memory
      included: central differences, `nonlinear._response_difference`).  Near relu's kink the
      surrogate's chain of Jacobians expands geometrically, and a few draws carry most of the
      memory blocks (a heavy-tailed mean, docs/dmft.md §4.2, §6.1); a kicked copy is itself a
      solution of the process, so its difference stays bounded, and the Picard map converges where
      the chain's did not.  Bias O(ε²); more costly per response draw (at H = 4, T = 40 a grid
      point took ~10x the chain's time).  Linear trunks and depth 0 use their exact chains (no
      kink) whatever this says.
    - `response_step`: ε of `"difference"` in (0, 1] (static; preactivation units; default 0.05).
    - `average_maps`: M >= 0 maps after the fixed point, each with fresh draws, whose outputs are
      averaged into the kernels (static; default 0: the fixed point of the solve's own draws).
      A fixed point of one draw set is biased by that set's noise fed back through the map — the
      response's noise late in a nonlinear trunk's curve most, O(1/n_response) — and the average
      over fresh draws removes that feedback (Robbins–Monro steps 1/(j + 2),
      `fixed_point._averaged_fixed_point`, docs/dmft.md §3).  Each costs one map; the reported
      residual becomes the relative change over the last half of them, and `converged` compares
      that with `tol`.  Gradients: the implicit derivative of the solve's own map at the average.
    - `average_clip`: κ > 0 (default 1; `inf`: no clipping), the largest pull of one averaging
      map: a map that moves a kernel by d > κ times the kernel's largest entry enters with weight
      κ/d.  A relu trunk's response has a heavy tail (a draw set in tens can carry a response
      hundreds of times the kernel's scale); one such map, unclipped, blows up the rest of the
      curve (H = 8, α = 0.5, r = 1, s_b = 0.5: 64.8 % off the network at κ = inf, 1.5 % at
      κ = 1; `benchmarks/dmft_average_trace.py`, docs/dmft.md §3).
    - `max_iter`: Picard iterations at most (static), and the iterations of the implicit
      gradient's adjoint solve (each one vector–Jacobian product of the map: keep it small
      where gradients are taken, `fit_solver`); `damping` λ in (0, 1] (new = (1−λ) old + λ F(old)).
    - `min_iter`: Picard iterations at least (static, <= `max_iter`; default 1).  With
      `min_iter` above the iterations the fixed point needs, every solve runs the same number of
      maps, so the result is a smooth function of the parameters (an early exit at `tol` makes
      it jump by ~the residual where the count changes: what a fit's line search sees).
    - `tol`: relative fixed-point residual max|F(z) − z| / max|F(z)| (summed over C_g, R_g) below
      which a point counts as converged. The residual does not go to 0: with float32 and the
      pivot-dropping factor of `psd_factor` it stalls near 1e-3, far below the sampling error.
    - `n_quad_eval`: Monte Carlo points for the test loss and accuracy (static).
    - `sampling`: `"qmc"` (default) or `"iid"` (static): how the per-example inputs, logit noise
      and uniform labels of the draws, and the test-metric points, are drawn — randomly shifted
      scrambled Sobol points (unbiased, lower seed-to-seed spread) or i.i.d. normals.  The
      χ-noise paths ((T+1)·H dimensions) are i.i.d. either way.
    - `labels`: `"auto"` (default), `"summed"` or `"sampled"` (static): how each draw's label
      enters the example process.  Sampled: three components per draw (clean argmax, one
      logit-noise label argmax(s w u + σ ξ), one uniform class) with their mixture weights, the
      derivatives w.r.t. s, σ by likelihood ratios.  Summed: every class c is a component,
      weighted by its probability π_c(u) given the draw's teacher fields
      (`mtjax._metrics.label_distribution`): no label-sampling variance, the forward value
      smooth in s, σ (derivatives pathwise), at C/3 the example process's cost.  Auto: summed
      for C <= 3 (no extra cost), sampled above.  At C = 3, σ = 1, in the memorisation phase
      summed labels cut the spread over draw seeds of the late test loss from 0.12 to 0.04 nats
      (docs/dmft.md §3).
    - `relu_sharpness`: β of the relu trunk's surrogate φ_β(x) = softplus(β x)/β in the example
      process (static; a Python float in [1, 1000]; unused by other activations).  relu's
      φ'' = δ(x) cannot be sampled, so the theory of a relu trunk is that of the φ_β network,
      evaluated with relu (`nonlinear.dmft_activation`).  Larger β is closer to relu but makes
      φ_β'' a narrower spike whose response the draws resolve worse: late in the curve the
      Picard map then stalls or diverges.  Measured at N = 400, H = 8, α = 1–2 (docs/dmft.md
      §4.2): β = 12 with n_draws 4096 and n_response 512 converges (n_response 256 did not at
      α = 1), β = 16 needed n_response 1024, β = 20 diverged with 256.  Give relu trunks
      n_draws >= 4096 and n_response >= 512.
    - `seed`: seed of all fixed draws (a non-negative integer < 2³¹, stored as an array and
      traced: `jax.vmap` over seeds gives independent replicas in one compilation).  The draws
      make the theory a Monte Carlo estimate whose seed-to-seed spread is *not* small at large
      α: depth 0, α = 8, s = 3, ε = 0, S = 2048: sd 0.009 (1.7 %) over 8 seeds with i.i.d.
      draws, 0.004 with the default QMC draws; depth 1, α = 8: sd 0.02 (4 %) either way.  One
      seed's number can be 2 % off while the mean of 8 is within 0.6 % of the simulation
      (docs/dmft.md §6.1): compare through replicas (`finite_data_replicas`,
      `benchmarks/finite_data_accuracy.py --replicas`).

    Cost per iteration: weight process O(T³ C³); example process O(S T² C²);
    response O(3 n_response T³ C³) flops and 3 n_response (T C)² memory; the two causal sums run
    in time blocks (`_time_blocks`; at T = 40 0.44 (response) and 0.6 (memory) of the dense
    flops; docs/dmft.md §3, `benchmarks/dmft_kernels.py`).
    """

    n_grid: int = eqx.field(static=True)
    step_schedule: str = eqx.field(static=True)
    step_growth: float = eqx.field(static=True)
    n_draws: int = eqx.field(static=True)
    n_response: int = eqx.field(static=True)
    max_iter: int = eqx.field(static=True)
    min_iter: int = eqx.field(static=True)
    n_quad_eval: int = eqx.field(static=True)
    sampling: str = eqx.field(static=True)
    labels: str = eqx.field(static=True)
    relu_sharpness: float = eqx.field(static=True)
    response_control: bool = eqx.field(static=True)
    response: str = eqx.field(static=True)
    response_step: float = eqx.field(static=True)
    average_maps: int = eqx.field(static=True)
    seed: Int[Array, ""]
    damping: Float[Array, ""]
    tol: Float[Array, ""]
    average_clip: Float[Array, ""]

    def __init__(self, n_grid: int = 40, n_draws: int = 2048, n_response: int = 256, max_iter: int = 30, damping=1.0, tol=5e-3, n_quad_eval: int = 32768, seed: int = 0,
                 step_schedule: str = "uniform", step_growth: float = 1.1, sampling: str = "qmc", min_iter: int = 1, labels: str = "auto", relu_sharpness: float = 12.0,
                 response_control: bool = False, response: str = "pathwise", response_step: float = 0.05, average_maps: int = 0,
                 average_clip=1.0):  # fmt: skip
        self.n_grid = check_int("n_grid", n_grid, 1)
        self.step_schedule = check_choice("step_schedule", step_schedule, STEP_SCHEDULES)
        # Static (it fixes the grid's shape-free numbers at trace time), so a Python float.
        self.step_growth = _static_float("step_growth", step_growth, 1.0, 2.0, lo_open=True)
        self.n_draws = check_int("n_draws", n_draws, 2)
        self.n_response = check_int("n_response", n_response, 1)
        if self.n_response > self.n_draws:
            raise ValueError(f"n_response={n_response} must be in [1, n_draws={n_draws}]")
        self.max_iter = check_int("max_iter", max_iter, 1)
        self.min_iter = check_int("min_iter", min_iter, 1)
        if self.min_iter > self.max_iter:
            raise ValueError(f"min_iter={min_iter} must be in [1, max_iter={max_iter}]")
        self.n_quad_eval = check_int("n_quad_eval", n_quad_eval, 2)
        self.sampling = check_choice("sampling", sampling, SAMPLINGS)
        self.labels = check_choice("labels", labels, LABELS)
        # Static (it selects the traced function, not a value), so a Python float.
        self.relu_sharpness = _static_float("relu_sharpness", relu_sharpness, 1.0, 1000.0)
        if not isinstance(response_control, (bool, np.bool_)):
            raise ValueError(f"response_control must be True or False, got {response_control!r}")
        self.response_control = bool(response_control)
        self.response = check_choice("response", response, RESPONSES)
        if self.response == "difference" and self.response_control:
            raise ValueError("response_control=True needs response='pathwise' (it linearises the Jacobian chain); "
                             "set response_control=False with response='difference'")
        # Static (a shape-free constant of the traced kicks), so a Python float.
        self.response_step = _static_float("response_step", response_step, 0.0, 1.0, lo_open=True)
        self.average_maps = check_int("average_maps", average_maps, 0)
        self.seed = _check_seed(seed)
        check_range("damping", damping, 0.0, 1.0, lo_open=True)
        check_range("tol", tol, 0.0, lo_open=True)
        self.damping = jnp.asarray(damping, float)
        self.tol = jnp.asarray(tol, float)
        # inf is allowed (the plain average), so not `check_range` (finite values only).
        if is_concrete(average_clip) and not np.all(np.asarray(average_clip, float) > 0):
            raise ValueError(f"average_clip={average_clip!r} must be in (0, inf] (inf: no clipping); pass e.g. average_clip=1.0")
        self.average_clip = jnp.asarray(average_clip, float)

    def controls(self):
        """(damping, tol, average_clip): the traced controls of the fixed-point solve
        (`fixed_point.solve_fixed_point`)."""
        return self.damping, self.tol, self.average_clip

    def summed_labels(self, n_classes: int) -> bool:
        """Whether a problem with `n_classes` classes sums over labels (`labels`, static)."""
        return self.labels == "summed" or (self.labels == "auto" and n_classes <= 3)

    def time_grid(self, t_max) -> tuple[Float[Array, " T1"], Float[Array, " T"]]:
        """Grid times t_n (T+1,), t_0 = 0, t_T = t_max, and the GD steps Δ_n (T,) between them
        (time units t = lr x steps), for T = `n_grid` and the `step_schedule`.

        `t_max` may be traced (jit/vmap over the evaluation times); the schedule's shape is
        fixed by the static T, q.  Uniform: t_n = Δ n, Δ = t_max / T (the historical grid,
        bit for bit).  Geometric: the unit grid (qⁿ − 1)/(q^T − 1) and its steps are computed in
        float64 from the static q, T (no cancellation in q^T − 1 for q near 1), then scaled."""
        t_max = jnp.asarray(t_max, float)
        T = self.n_grid
        if self.step_schedule == "uniform":
            dt = t_max / T
            return dt * jnp.arange(T + 1), jnp.broadcast_to(dt, (T,))
        q = self.step_growth
        unit = np.expm1(np.arange(T + 1) * np.log(q)) / np.expm1(T * np.log(q))
        unit[-1] = 1.0
        return t_max * jnp.asarray(unit, t_max.dtype), t_max * jnp.asarray(np.diff(unit), t_max.dtype)


def _static_float(name: str, value, lo: float, hi: float, lo_open: bool = False) -> float:
    """`value` as a Python float in [lo, hi] (lo open where `lo_open`): a static solver setting."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a Python float in {'(' if lo_open else '['}{float(lo)}, {float(hi)}], got {value!r}")
    check_range(name, value, lo, hi, lo_open=lo_open)
    return float(value)


def _check_seed(seed) -> Int[Array, "..."]:
    """`seed` as an integer array; concrete values must be non-negative integers (a traced seed,
    e.g. under `jax.vmap`, is taken as it is)."""
    if isinstance(seed, jax.core.Tracer):
        return seed
    a = np.asarray(seed)
    if a.dtype == bool or not np.issubdtype(a.dtype, np.integer) or np.any(a < 0) or np.any(a >= 2**31):
        raise ValueError(f"seed must be an integer in [0, 2**31) (or an integer array of them), got {seed!r}")
    return jnp.asarray(a, jnp.int32)


def fit_solver(**overrides) -> FiniteDataSolver:
    """The finite-data solver that fitting and design use by default (docs/fitting.md §6).

    Measured on the paper preset (`benchmarks/dmft_speed.py`, docs/results/dmft_speed.txt): a
    grid of 16 steps and 2048 test points instead of the paper grid's 20 and 8192 move its
    multitask benefits by at most 0.007 nats (rms 0.004), less than the spread between draw
    seeds; the draws (3 x 2048) and response draws (3 x 32) stay, since halving either moves
    benefits by up to 0.02–0.03 nats.  The fixed point is solved to a tight `tol` = 2e-3 (at
    most 20 maps): the number of maps then changes with the parameters only where the kernels
    have converged to ~1e-3, so the objective a fit sees is smooth to far below its standard
    errors.  A fixed, small number of maps is not safe: on a 40-step grid at α = 2, σ = 1 the
    curves after 4 maps were 0.27 nats off (6 maps: 0.07; 12: converged), while the paper
    preset's 16-step grid converges in 4.  The implicit derivative iterates its tangent
    `max_iter` times.

    `overrides`: any `FiniteDataSolver` argument (e.g. `n_grid=40` to match a simulation's
    steps)."""
    settings = dict(n_grid=16, n_draws=2048, n_response=32, max_iter=20, tol=2e-3, n_quad_eval=2048)
    return FiniteDataSolver(**{**settings, **overrides})
