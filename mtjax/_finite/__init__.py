"""Mean-field theory II: finite data. Dynamical mean-field theory (DMFT) of full-batch gradient
descent for linear softmax students (L = 0, and linear trunks L >= 1 with per-task heads) on P_k = α_k N'
Gaussian examples per task.

Derivation and conventions: docs/dmft.md.  Summary (one task, discrete GD with steps Δ_n, n = 0..T;
uniform Δ_n = t_max / T or a geometric schedule, `FiniteDataSolver.time_grid`):

The student W (C x N) is split into its teacher-subspace part M = W Uᵀ (C x R) and the rest V
(N' = N − R directions).  M and the bias b are low-dimensional and self-average; V sees the data
through two effective processes coupled by four (T+1)C x (T+1)C kernels:

* per example (training set): h^n = M^n u + b^n + χ^n − (1/α) Σ_{m<n} R_v[n,m] g^m,
  g^n = softmax(h^n) − e_y, with χ ~ N(0, C_v) a Gaussian process and u ~ N(0, I_R) the
  example's teacher field (its label y from u, logit noise and flips);
* per weight coordinate (linear): v^{n+1} = v^n − Δ_n Σ_{m<=n} R_g[n,m] v^m + Δ_n η^n,
  η ~ N(0, C_g/α), v^0 ~ N(0, Q_0).

Self-consistency: C_g = E[g gᵀ], R_g = E[∂g/∂(field kick)] over the example process,
C_v = E[v vᵀ], R_v = ∂v/∂(force) over the coordinate process, M^{n+1} = M^n − Δ_n E[g^n uᵀ],
b^{n+1} = b^n − Δ_n E[g^n].  The coordinate process is linear, so C_v and R_v are computed
exactly by linear algebra; the example process is sampled (fixed draws: a deterministic map),
and its response is the exact per-draw Jacobian (a block-triangular solve).  The pair
(C_g, R_g) is iterated with damping to a fixed point.

Modules, bottom up: `sampling` (the fixed draws), `kernels` (the causal kernels of one map),
`fixed_point` (the one damped Picard solve and its implicit gradient), `solver`
(`FiniteDataSolver`, the time grid), `single` (depth 0), `trunk` (depth >= 1), `nonlinear`
(smooth nonlinear trunks) and `wide` (a linear trunk whose width is proportional to N), `compiled`
(the compiled-program cache, shared with the population theory), `theory` (the public entry
points).  The label-mixture loss and accuracy are `mtjax/_metrics.py`'s.
"""
