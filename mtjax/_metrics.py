"""Loss and accuracy under the teacher's label mixture, for every theory.

A task's labels are a mixture of three components (docs/theory.md §4, docs/dmft.md §2): on a
fraction 1 − ε the teacher's argmax, clean (`y0`) on 1 − q of the examples and with logit noise σ
(`ys`) on q; on the fraction ε a uniform class.  Any per-component average f mixes as

    (1 − ε) (q f_noisy + (1 − q) f_clean) + ε f_uniform          (`mix`, plus the ε term)

Given an example's clean teacher logits the label's law is the class distribution π
(`label_distribution`); averages may take the label from π exactly (`summed_labels`,
`expected_metrics`) or sample it per example (`mixture_labels`, with likelihood ratios for the
derivatives).  The population theory (`_population.py`, `_gaussian.teacher_constants`,
`_population_nonlinear.py`) and the finite-data theory (`_finite/`) both take the labels, the
component weights and the loss and accuracy from here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.stats
import numpy as np

from ._custom_types import Array, Float


def noisy_labels(clean, noise, xi):
    """The clean labels argmax(clean) and the logit-noise labels argmax(clean + σ ξ), each (...,)."""
    return jnp.argmax(clean, -1), jnp.argmax(clean + noise * xi, -1)


def mix(flip, q, clean, noisy):
    """(1 − ε) (q · noisy + (1 − q) · clean): the mixture's non-flipped part (the caller adds the
    flipped component's ε-weighted term)."""
    return (1 - flip) * (q * noisy + (1 - q) * clean)


def component_weights(flip, q):
    """Weights (3,) of the clean, logit-noise and uniform components: (1−ε)(1−q), (1−ε)q, ε."""
    return jnp.stack([(1 - flip) * (1 - q), (1 - flip) * q, flip])


def argmax_probability(a: Float[Array, "... C"], y, sigma, n_nodes: int = 48) -> Float[Array, "..."]:
    """P(argmax(a + σ ξ) = y) for ξ ~ N(0, I_C), smooth in a and σ:
    E_z Π_{c≠y} Φ((a_y − a_c)/σ + z), z ~ N(0, 1) (ξ_y = z), by Gauss–Hermite quadrature in z."""
    x, wq = np.polynomial.hermite_e.hermegauss(n_nodes)
    logw = jnp.log(jnp.asarray(wq / np.sqrt(2 * np.pi)))
    sig = jnp.maximum(sigma, 1e-6)  # σ = 0: labels are the clean argmax, P = 1 (or 0)
    ay = jnp.take_along_axis(a, jnp.asarray(y)[..., None], -1)
    dlt = (ay - a) / sig  # (..., C)
    lcdf = jax.scipy.stats.norm.logcdf(dlt[..., None] + jnp.asarray(x))  # (..., C, n)
    own = jax.nn.one_hot(y, a.shape[-1], dtype=bool)[..., None]
    return jnp.exp(jax.nn.logsumexp(jnp.sum(jnp.where(own, 0.0, lcdf), -2) + logw, -1))


def label_distribution(clean: Float[Array, "... C"], noise, flip, q, n_nodes: int = 24) -> Float[Array, "... C"]:
    """π = E[e_y | clean logits] (..., C): the label mixture's class probabilities given the
    teacher's clean logits (clean argmax on 1 − q, logit noise σ on q, a fraction ε uniform),
    smooth in (s, σ, ε, q) and, except for the clean argmax, in the logits.  The logit-noise
    part by `argmax_probability` for every class at once; 24 Gauss–Hermite nodes (the integrand
    Π_c Φ(d_c + z) is smooth on the unit scale of z: error < 1e-6).

    Averages over labels taken with π instead of one sampled label per example are
    Rao–Blackwellised: the same mean, no label-sampling variance, and no discontinuity in σ, s
    or the example's input for quasi-random points to lose their rate on (docs/dmft.md §3)."""
    C = clean.shape[-1]
    hard = jax.nn.one_hot(jnp.argmax(clean, -1), C, dtype=clean.dtype)
    y = jnp.broadcast_to(jnp.arange(C), clean.shape)
    # P(argmax = y) for every class y at once: (..., C, 1) logits against (..., 1, C) candidates.
    noisy = argmax_probability(jnp.broadcast_to(clean[..., None, :], (*clean.shape, C)), y, noise, n_nodes)
    return mix(flip, q, hard, noisy) + flip / C


def expected_metrics(z: Float[Array, "n C"], pi: Float[Array, "n C"]):
    """(CE, accuracy) of logits z averaged over the points and, exactly, over labels with class
    probabilities π (`label_distribution`): mean(lse z − π·z), mean(π[argmax z])."""
    # Two means, not mean(lse − Σ π z): that one fused expression was miscompiled on the CPU
    # backend (jax 0.10.2) under vmap of a lax.map over times at 32768 points (the second
    # batch member off by O(1); tests/test_dmft.py::test_quadrature_metrics_vmap_equals_loop).
    loss = jnp.mean(jax.nn.logsumexp(z, -1)) - jnp.mean(jnp.einsum("nc,nc->n", pi, z))
    acc = jnp.mean(jnp.sum(pi * jax.nn.one_hot(jnp.argmax(z, -1), z.shape[-1], dtype=pi.dtype), -1))
    return loss, acc


def likelihood_ratio(clean, noise, ys):
    """Per-draw factor π(ys)/sg(π(ys)) of the logit-noise labels ys = argmax(clean + σ ξ): 1 in
    value (the forward numbers are unchanged), ∇ log π in derivative — the score-function
    (likelihood-ratio) gradient of every average over these labels w.r.t. s, σ (and the
    teacher fields).  Without it the sampled argmax labels are piecewise constant in s, σ and
    their gradients are 0 (docs/dmft.md §3)."""
    pi = argmax_probability(clean, ys, noise)
    pi0 = jax.lax.stop_gradient(pi)
    ok = pi0 > 0
    return jnp.where(ok, pi / jnp.where(ok, pi0, 1.0), 1.0)


def mixture_labels(scale, noise, flip, q, w, u, xi, y_unif):
    """Labels (3, S) of the clean, logit-noise and uniform components for teacher fields `u`
    (S, R), and per-draw weights (3, S).  Every draw is evaluated under every component
    (common random numbers); the component weights make ε and q enter smoothly, and the
    likelihood ratio of the logit-noise labels (`likelihood_ratio`, 1 in value) makes s and σ
    enter the gradients."""
    clean = scale * u @ w.T
    y0, ys = noisy_labels(clean, noise, xi)
    comp = component_weights(flip, q)
    lr = likelihood_ratio(clean, noise, ys)
    weights = comp[:, None] * jnp.stack([jnp.ones_like(lr), lr, jnp.ones_like(lr)])
    return jnp.stack([y0, ys, y_unif]), weights


def summed_labels(scale, noise, flip, q, w, u):
    """Every class as a label of every draw, weighted by its probability: labels (C, S) (class c
    in row c) and weights (C, S) = π(u)ᵀ (`label_distribution` of the clean logits s w u, for
    teacher fields `u` (S, R)).  The Rao–Blackwellised form of `mixture_labels`: the same
    averages without sampling a label per draw, smooth in s, σ, ε, q and (except for the clean
    argmax) in u, so their derivatives are pathwise (no likelihood ratio)."""
    pi = label_distribution(scale * u @ w.T, noise, flip, q).T  # (C, S)
    return jnp.broadcast_to(jnp.arange(pi.shape[0])[:, None], pi.shape), pi


def mixture_train_loss(h, ys, weights):
    """Training loss at every grid time of sampled fields `h` (3, S, T+1, C) with the component
    labels `ys` (3, S) and weights (3, S) of `mixture_labels`: (T+1,)."""
    lse = jax.nn.logsumexp(h, -1)  # (3, S, T1)
    zy = jnp.take_along_axis(h, ys[:, :, None, None], -1)[..., 0]
    return jnp.einsum("xs,xsn->n", weights, lse - zy) / h.shape[1]
