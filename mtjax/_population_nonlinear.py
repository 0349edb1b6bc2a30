"""Mean-field theory I for nonlinear trunks: the population flow on the reduced input.

The reduction of docs/theory.md §5 does not use linearity (§5.2): for Gaussian x the population
gradient of the first layer is E[δ₁ xᵀ] with δ₁ a function of (W₁ x, U x), and by Stein's lemma
it lies in the row span of [W₁; U] whatever the activation.  So W₁ = Ω E + F Qᵀ is kept by the
flow, and the N-dimensional network's flow is exactly the flow of the same network on the
reduced input x̃ ~ N(0, I_{D'}), D' = K R + H, with teacher fields u_k = T̃_k x̃.

What is not available for a nonlinear trunk is the closed form of the linear case (Gaussian
logits): the expectations over x̃ are D'-dimensional.  They are estimated by quasi-Monte Carlo
with *fresh* point sets at every field evaluation (`population._fresh_heun`), so the estimate
is unbiased and the flow averages its error out instead of fitting a fixed set of points.

Each task's loss is taken in that task's own coordinates,

    x̃ = T̃_kᵀ u + (I − T̃_kᵀ T̃_k) g,        u ~ N(0, I_R),  g ~ N(0, I_{D'}),

(x̃ ~ N(0, I) and T̃_k x̃ = u), and with the label averaged given u in closed form,

    L_k = E[lse z_k(x̃) − π_k(u) · z_k(x̃)],
    π_k(u) = (1 − ε) ((1 − q) e_{argmax c} + q P(argmax(c + σ ξ) = ·)) + ε / C,   c = s w u,

(`label_probabilities`, `mtjax._metrics.label_distribution`; the logit-noise part by Gauss–Hermite quadrature,
`mtjax._metrics.argmax_probability`).  The sampled labels then never move with the parameters:
the estimate is smooth in r (through T̃_k), in s and σ (through π), in ε and q (linear), and in the
student, so `jax.grad` of a theory curve is the derivative of the flow.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._custom_types import Array, Float
from ._metrics import label_distribution
from ._student import ACTIVATIONS, Student


def label_model(teacher) -> tuple:
    """(w (K, C, R), scale, noise, flip, noisy_fraction (K,)): the teacher's label law, all that
    the nonlinear flow needs of the teacher besides T̃ (a tuple of arrays, so it can be traced)."""
    cfg = teacher.config
    return (teacher.w, cfg.scale, cfg.noise, cfg.flip, cfg.noisy_fraction)


def label_probabilities(u: Float[Array, "n R"], w: Float[Array, "C R"], scale, noise, flip, q,
                        n_nodes: int = 24) -> Float[Array, "n C"]:
    """π(u) = E[e_y | u] (n, C) of the label mixture for teacher fields `u`
    (`mtjax._metrics.label_distribution` of the clean logits s w u)."""
    return label_distribution(scale * (u @ w.T), noise, flip, q, n_nodes)


def task_inputs(points: Float[Array, "n R+Dp"], T_k: Float[Array, "R Dp"]):
    """(u, x̃): teacher fields u (n, R) and reduced inputs x̃ = T̃ᵀu + (I − T̃ᵀT̃) g (n, D') from
    standard-normal points (u, g).  T̃_k has orthonormal rows, so x̃ ~ N(0, I) and T̃_k x̃ = u."""
    R = T_k.shape[0]
    u, g = points[:, :R], points[:, R:]
    return u, u @ T_k + g - (g @ T_k.T) @ T_k


@jax.custom_jvp
def _step(h, width):
    """relu'(h) = 1{h > 0}; its derivative (relu'' = δ(h)) is a Gaussian kernel of `width`."""
    return (h > 0).astype(h.dtype)


@_step.defjvp
def _step_jvp(primals, tangents):
    h, width = primals
    bump = jnp.exp(-0.5 * (h / width) ** 2) / (jnp.sqrt(2 * jnp.pi) * width)
    return _step(h, width), bump * tangents[0]


@jax.custom_jvp
def _relu(h, width):
    return jnp.maximum(h, 0.0)


@_relu.defjvp
def _relu_jvp(primals, tangents):
    h, width = primals
    return _relu(h, width), _step(h, width) * tangents[0]


# Kernel width of relu'' relative to each unit's preactivation spread over the points.
RELU_KERNEL = 0.1


def theory_relu(h: Float[Array, "n H"]) -> Float[Array, "n H"]:
    """relu with an estimable second derivative.

    The field is a point average of δ relu'(h) x̃; its derivative in the state (the flow's
    Jacobian, hence every derivative of a curve w.r.t. r, s, ...) has a term E[δ(h) ...] that
    point-wise autodiff drops: relu'' = 0 at every point.  Measured: d(loss)/dr −0.031 by autodiff
    against −0.066 by central differences (tests/test_population_nonlinear.py).  Here relu'' is
    the Gaussian kernel of width 0.1 · std(h) of the unit over the points (a kernel estimate of
    the density term: relative bias ~ 1 %, noise averaged by the fresh point sets); values and
    first derivatives are exact relu."""
    width = jax.lax.stop_gradient(RELU_KERNEL * jnp.std(h, axis=0) + 1e-12)
    return _relu(h, width)


THEORY_ACTIVATIONS = {**ACTIVATIONS, "relu": theory_relu}


def logits(student: Student, x: Float[Array, "n Dp"], k: int) -> Float[Array, "n C"]:
    """Task k's logits of the reduced student (same weights and function as `Student.__call__`;
    relu's second derivative as in `theory_relu`)."""
    return student.heads[k](student.features(x, THEORY_ACTIVATIONS[student.activation]))


def task_loss_terms(student: Student, k: int, labels, T_k, points):
    """Per-point CE of task k under the label average, lse z − π·z (n,), its soft labels π and
    logits z."""
    w, scale, noise, flip, q = labels
    u, x = task_inputs(points, T_k)
    pi = label_probabilities(u, w[k], scale[k], noise[k], flip[k], q[k])
    z = logits(student, x, k)
    return jax.nn.logsumexp(z, -1) - jnp.sum(pi * z, -1), pi, z


def nonlinear_vector_field(student: Student, labels, T: Float[Array, "K R Dp"], rho, points, active) -> Student:
    """dθ/dt = −Σ_k ρ_k ∇_θ L_k for the reduced student θ, L_k estimated on `points` (n, R + D')
    (the same points serve every task, each in its own coordinates)."""

    def total(st):
        return sum(rho[k] * jnp.mean(task_loss_terms(st, k, labels, T[k], points)[0]) for k in active)

    return jax.tree_util.tree_map(jnp.negative, jax.grad(total)(student))


def nonlinear_metrics(student: Student, labels, T: Float[Array, "K R Dp"], points, active, n_tasks: int):
    """Test loss (with its standard error from the antithetic pairs of `points`), accuracy, and
    NaN overlaps (a nonlinear student has no effective linear map), shaped like
    `population_metrics`' outputs."""
    n = points.shape[0]
    C = labels[0].shape[1]
    R = T.shape[1]
    loss, se, acc = [], [], []
    for k in range(n_tasks):
        if k not in active:
            loss.append(jnp.nan), se.append(jnp.nan), acc.append(jnp.nan)
            continue
        ce, pi, z = task_loss_terms(student, k, labels, T[k], points)
        loss.append(jnp.mean(ce))
        se.append(jnp.std(0.5 * (ce[: n // 2] + ce[n // 2 :])) / jnp.sqrt(n // 2))
        acc.append(jnp.mean(jnp.take_along_axis(pi, jnp.argmax(z, -1)[:, None], -1)))
    nan = jnp.full((n_tasks, n_tasks, C, C), jnp.nan), jnp.full((n_tasks, C, R), jnp.nan)
    return jnp.stack(loss), jnp.stack(se), jnp.stack(acc), *nan
