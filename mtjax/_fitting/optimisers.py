"""The optimisers of a fit: Adam (optax), then Levenberg–Marquardt or damped Newton."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax

from .problem import _exact_hessian, _residuals, _residuals_and_jacobian, _value_and_grad
from .progress import _quiet


def _best(v) -> str:
    v = np.asarray(v, float)
    return f"{np.min(v):.6g}" if np.isfinite(v).any() else "none finite"


def _adam(problem, thetas, n_steps, lr, report=_quiet):
    """Adam (optax) on every start; the best finite iterate of each start is kept, so a step
    into a region where the solve fails (NaN) is undone. `report`: a `_Progress`."""
    opt = optax.adam(lr)
    state = opt.init(thetas)
    best_v = jnp.full(thetas.shape[0], jnp.inf)
    best = thetas
    th = thetas
    for i in range(n_steps):
        v, g = _value_and_grad(problem, th)
        ok = jnp.isfinite(v) & (v < best_v)
        best = jnp.where(ok[:, None], th, best)
        best_v = jnp.where(ok, v, best_v)
        report(f"Adam step {i + 1}/{n_steps}: best objective {_best(best_v)}", force=i in (0, n_steps - 1))
        g = jnp.where(jnp.isfinite(g), g, 0.0)
        u, state = opt.update(g, state, th)
        th = optax.apply_updates(th, u)
    return best, best_v


def _damped(name, thetas, evaluate, gradient, propose, lam, n_steps, gtol, report, max_lam=None, trial_objective=None,
            done=None, ftol=0.0):
    """The damping loop shared by Levenberg–Marquardt and Newton, for every start at once.

    Each iteration, a start is active while its objective is finite, its gradient is above
    `gtol` (and its damping below `max_lam`, if given); the active starts take a trial step
    `propose(th, aux, g, lam, active) -> (trial, lam)`, which is kept where it lowers the
    objective (damping λ / 3, floored at 1e-9) and whose `aux` is finite, and undone elsewhere
    (λ x 4).

    - `evaluate(th) -> (f, aux)`: (S,) objective and a tuple of per-start arrays (S, ...) that
      `gradient(aux) -> (S, P)` and `propose` read; a rejected step keeps the old ones.
    - `lam`: (S,) initial damping; `report`: a `_Progress`.
    - `trial_objective(th) -> (S,)`: optional objective alone; then a trial step is judged by it
      and `evaluate` runs only where some start accepts (its `aux`, e.g. a Jacobian, can cost
      several objectives, and near a noisy optimum most trial steps are rejected).
    - `done(aux, g) -> (S,) bool`: optional further stopping rule (e.g. a small Newton decrement).
    - `ftol`: a start also stops after an accepted step that lowered its objective by less than
      `ftol` (0: never): near a Monte Carlo theory's optimum the predicted decrease can stay
      above `done`'s threshold while the steps gain nothing.

    **Returns:** `(th, f, aux, steps)`: final iterates, objectives, their `aux` and the number
    of iterations each start was active."""
    th = np.asarray(thetas, float)
    S = th.shape[0]
    f, aux = evaluate(th)
    fc = None if trial_objective is None else np.asarray(trial_objective(th), float)
    steps = np.zeros(S, int)
    stalled = np.zeros(S, bool)
    report(f"{name} start: best objective {_best(f)}", force=True)
    for it in range(n_steps):
        g = gradient(aux)
        # a start stops when its gradient is small or no damping finds a decrease (noise floor)
        active = np.isfinite(f) & (np.linalg.norm(np.nan_to_num(g), axis=1) > gtol)
        if max_lam is not None:
            active = active & (lam < max_lam)
        if done is not None:
            active = active & ~done(aux, g)
        active = active & ~stalled
        if not active.any():
            break
        report(f"{name} step {it + 1}/{n_steps}: best objective {_best(f)}, {int(active.sum())} of {S} starts still moving")
        trial, lam = propose(th, aux, g, lam, active)
        if trial_objective is None:
            f2, aux2 = evaluate(trial)
            # a trial whose Jacobian (gradient) is not finite is rejected: no step could leave it
            better = active & np.isfinite(f2) & (f2 < f) & _finite_aux(aux2)
        else:
            # Compared within one program: the two compiled programs' objectives differ by
            # rounding (measured ~3e-4 relative for a 16-map DMFT solve), which near a noisy
            # optimum is the size of the decreases being judged.
            f2c = np.asarray(trial_objective(trial), float)
            better = active & np.isfinite(f2c) & (f2c < fc)
            if better.any():  # the accepted trials' aux (the others' rows are discarded below)
                f2, aux2 = evaluate(np.where(better[:, None], trial, th))
                better = better & _finite_aux(aux2)
            else:
                f2, aux2 = f, aux
            fc = np.where(better, f2c, fc)
        stalled = stalled | (better & (f - f2 < ftol) & (ftol > 0))
        th = np.where(better[:, None], trial, th)
        aux = tuple(np.where(better.reshape((S,) + (1,) * (a.ndim - 1)), a2, a) for a, a2 in zip(aux, aux2))
        f = np.where(better, f2, f)
        lam = np.where(better, np.maximum(lam / 3, 1e-9), np.where(active, lam * 4, lam))
        steps += active
    return th, f, aux, steps


#: Largest Levenberg–Marquardt step in any unconstrained coordinate (log s: a factor e; r: from
#: 0 to tanh 1 = 0.76).
MAX_STEP = 1.0


def _finite_aux(aux) -> np.ndarray:
    """(S,) whether every array of a start's `aux` (its Jacobian or gradient) is finite."""
    return np.all([np.isfinite(a.reshape(len(a), -1)).all(1) for a in aux], axis=0)


def _levenberg_marquardt(problem, thetas, n_steps, gtol, free=None, report=_quiet, cheap_trials=False, dtol=0.0, ftol=0.0):
    """Levenberg–Marquardt on ½|r(θ)|² for every start (small P x P systems in NumPy).

    Gauss–Newton steps (JᵀJ + λ diag(JᵀJ)) δ = −Jᵀr with λ adapted per start; converges
    quadratically on small-residual problems, and its Jacobian costs P forward tangents in one
    compiled program (an L-BFGS line search would compile the objective a second time).
    `free`: optional (P,) bool mask; coordinates outside it stay at their start value (profiles).
    The returned gradient is zero in the fixed coordinates. `report`: a `_Progress`.
    `cheap_trials`: judge each trial step by the residuals alone (one solve, no tangents) and
    compute the Jacobian only at accepted steps (a second compiled program, `_residuals`).
    `dtol`: a start stops once its Gauss–Newton decrement gᵀ(JᵀJ)⁻¹g (free coordinates) is
    below it: the step still to take is then √dtol Laplace standard errors long.
    `ftol`: a start stops after an accepted step that lowered ½|r|² by less than it (`_damped`)."""
    P = np.shape(thetas)[1]
    free = np.ones(P, bool) if free is None else np.asarray(free, bool)
    fi = np.flatnonzero(free)

    def objective(r):  # ½|r|² per start; a non-finite one is +inf (never accepted)
        f = 0.5 * np.sum(r**2, 1)
        return np.where(np.isfinite(f), f, np.inf)

    def evaluate(th):
        r, J = (np.asarray(a, float) for a in _residuals_and_jacobian(problem, jnp.asarray(th)))
        return objective(r), (r, J)

    def gradient(aux):
        r, J = aux
        return np.einsum("snp,sn->sp", J, r) * free

    def propose(th, aux, g, lam, active):
        J = aux[1]
        A = np.einsum("snp,snq->spq", J, J)
        A = np.nan_to_num(A)
        D = np.einsum("spp->sp", A) + 1e-12
        trial, lam = th.copy(), lam.copy()
        for s in np.flatnonzero(active):
            M = (A[s] + lam[s] * np.diag(D[s]))[np.ix_(fi, fi)]
            try:
                step = np.linalg.solve(M, np.nan_to_num(g[s, fi]))
            except np.linalg.LinAlgError:
                lam[s] *= 10
                continue
            # At most MAX_STEP per unconstrained coordinate: a weakly determined direction (r
            # where task 2 barely shapes task 1's curve) otherwise takes a Gauss–Newton step to
            # tanh's saturation in one go, where r's derivative vanishes and the fit is stuck.
            # Clipped coordinate by coordinate, not the step scaled as a whole: a nearly flat
            # direction (s_b above the saturation of its effect) has a huge step, and scaling by
            # it froze the well-determined ones (measured: r moved 0.50 -> 0.53 in 12 steps of a
            # read-back whose optimum is near 1, `benchmarks/fit_paper.py --read-back`).
            trial[s, fi] = th[s, fi] - np.clip(step, -MAX_STEP, MAX_STEP)
        return trial, lam

    def trial_objective(th):
        return objective(np.asarray(_residuals(problem, jnp.asarray(th)), float))

    def done(aux, g):
        J = np.nan_to_num(aux[1][:, :, fi])
        out = np.zeros(len(g), bool)
        for s in range(len(g)):
            try:
                out[s] = float(g[s, fi] @ np.linalg.solve(J[s].T @ J[s], g[s, fi])) < dtol
            except np.linalg.LinAlgError:
                pass
        return out

    th, f, (r, J), steps = _damped("Levenberg-Marquardt", thetas, evaluate, gradient, propose, np.full(len(thetas), 1e-2),
                                   n_steps, gtol, report, max_lam=1e8,
                                   trial_objective=trial_objective if cheap_trials else None,
                                   done=done if dtol > 0 else None, ftol=ftol)  # fmt: skip
    return th, f, gradient((r, J)), J, steps, r


def _newton(problem, thetas, n_steps, gtol, report=_quiet):
    """Damped Newton with the exact Hessian (forward over forward) for non-least-squares losses."""

    def evaluate(th):
        v, g = (np.asarray(a, float) for a in _value_and_grad(problem, jnp.asarray(th)))
        return v, (g,)

    def propose(th, aux, g, lam, active):
        trial = th.copy()
        for s in np.flatnonzero(active):
            H = np.asarray(_exact_hessian(problem, jnp.asarray(th[s])), float)
            H = 0.5 * (H + H.T)
            w, V = np.linalg.eigh(H)
            w = np.maximum(np.abs(w), 1e-8) + lam[s] * np.abs(w).max()
            trial[s] = th[s] - V @ ((V.T @ g[s]) / w)
        return trial, lam

    th, v, (g,), steps = _damped("Newton", thetas, evaluate, lambda aux: aux[0], propose, np.full(len(thetas), 1e-3),
                                 n_steps, gtol, report)
    return th, v, g, steps
