"""Multitask students: a shared trunk of L layers of width H and one softmax head per task.

    h_0 = x,   h_ℓ = φ(W_ℓ h_{ℓ-1} + b_ℓ)  (ℓ = 1..L),   logits_k = V_k h_L + c_k.

With L = 0 each task is a single linear softmax layer on x.  With φ = identity the
student of task k is the affine map x ↦ A_k x + a_k with A_k = V_k W_L ⋯ W_1, which
`Student.effective_linear` returns and training uses as an exact, cheaper way to
evaluate (docs/theory.md §2).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.special

from ._custom_types import Array, Float, PRNGKeyArray
from ._teacher import orthonormal_rows
from ._validation import check_choice, check_int, check_range

# Elementwise trunk nonlinearities. GELU is the exact (erf) form, PyTorch's default.
ACTIVATIONS = {
    "linear": lambda h: h,
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "erf": jax.scipy.special.erf,
    "gelu": lambda h: jax.nn.gelu(h, approximate=False),
}


class StudentConfig(eqx.Module):
    """Architecture and initialisation of the student.

    **Arguments:**

    - `depth`: trunk layers L >= 0 (static).
    - `width`: trunk width H >= 1 (static; unused when L = 0).
    - `activation`: `"linear"`, `"relu"`, `"tanh"`, `"erf"` or `"gelu"` (static; exact GELU).
    - `use_bias`: biases in every layer (static).
    - `init`: `"orthogonal"` (the paper's, `torch.nn.init.orthogonal_` with gain `init_scale`) or
      `"gaussian"` (entries N(0, init_scale² / fan_in); small `init_scale` = rich regime).
    - `init_scale`: gain (array field, vmappable), > 0.
    - `bias_init`: `"torch"` (uniform ±1/sqrt(fan_in), PyTorch's default, the paper's) or `"zeros"`.
    """

    depth: int = eqx.field(static=True)
    width: int = eqx.field(static=True)
    activation: str = eqx.field(static=True)
    use_bias: bool = eqx.field(static=True)
    init: str = eqx.field(static=True)
    bias_init: str = eqx.field(static=True)
    init_scale: Float[Array, ""]

    def __init__(
        self,
        depth: int = 2,
        width: int = 64,
        activation: str = "linear",
        use_bias: bool = True,
        init: str = "orthogonal",
        init_scale=1.0,
        bias_init: str = "torch",
    ):
        self.depth = check_int("depth", depth, 0)
        self.width = check_int("width", width, 1)
        self.activation = check_choice("activation", activation, ACTIVATIONS)
        self.use_bias = bool(use_bias)
        self.init = check_choice("init", init, {"orthogonal", "gaussian"})
        self.bias_init = check_choice("bias_init", bias_init, {"torch", "zeros"})
        check_range("init_scale", init_scale, 0.0, lo_open=True)
        self.init_scale = jnp.asarray(init_scale, dtype=float)


class Dense(eqx.Module):
    """Affine layer y = W x + b. `weight`: (out, in); `bias`: (out,) or None."""

    weight: Float[Array, "out in"]
    bias: Float[Array, " out"] | None

    def __call__(self, x: Float[Array, "... in"]) -> Float[Array, "... out"]:
        y = x @ self.weight.T
        return y if self.bias is None else y + self.bias


def _init_dense(cfg: StudentConfig, fan_in: int, fan_out: int, *, key: PRNGKeyArray) -> Dense:
    kw, kb = jax.random.split(key)
    if cfg.init == "orthogonal":
        # torch.nn.init.orthogonal_: orthonormal rows if out <= in, else orthonormal columns.
        if fan_out <= fan_in:
            w = orthonormal_rows(kw, fan_out, fan_in)
        else:
            w = orthonormal_rows(kw, fan_in, fan_out).T
        w = cfg.init_scale * w
    else:
        w = cfg.init_scale * jax.random.normal(kw, (fan_out, fan_in)) / math.sqrt(fan_in)
    b = None
    if cfg.use_bias:
        if cfg.bias_init == "torch":
            bound = 1.0 / math.sqrt(fan_in)
            b = jax.random.uniform(kb, (fan_out,), minval=-bound, maxval=bound)
        else:
            b = jnp.zeros((fan_out,))
    return Dense(w, b)


class Student(eqx.Module):
    """Shared trunk + K softmax heads.

    **Fields:**

    - `layers`: tuple of L `Dense` trunk layers (N -> H -> ... -> H).
    - `heads`: tuple of K `Dense` heads (H -> C, or N -> C when L = 0).
    - `activation`: trunk nonlinearity name (static).

    Forward passes take one example x of shape (N,) (or any leading batch shape) and
    return logits of shape (C,).
    """

    layers: tuple[Dense, ...]
    heads: tuple[Dense, ...]
    activation: str = eqx.field(static=True)

    @classmethod
    def init(
        cls,
        config: StudentConfig,
        n_features: int,
        n_classes: int,
        n_tasks: int,
        *,
        key: PRNGKeyArray,
    ) -> "Student":
        """Initialise a student for N = `n_features` inputs, C classes and K tasks."""
        keys = jax.random.split(key, config.depth + n_tasks)
        layers = []
        fan_in = n_features
        for ell in range(config.depth):
            layers.append(_init_dense(config, fan_in, config.width, key=keys[ell]))
            fan_in = config.width
        heads = tuple(_init_dense(config, fan_in, n_classes, key=keys[config.depth + k]) for k in range(n_tasks))
        return cls(tuple(layers), heads, config.activation)

    @property
    def n_tasks(self) -> int:
        return len(self.heads)

    @property
    def is_linear(self) -> bool:
        return self.activation == "linear"

    def features(self, x: Float[Array, "... N"], activation=None) -> Float[Array, "... H"]:
        """Trunk output h_L.  `activation`: a function to use instead of the named one (same
        values; the population theory's relu differs in its second derivative only)."""
        act = ACTIVATIONS[self.activation] if activation is None else activation
        for layer in self.layers:
            x = act(layer(x))
        return x

    def __call__(self, x: Float[Array, "... N"], task: int) -> Float[Array, "... C"]:
        """Logits of task `task` (0-based, static)."""
        return self.heads[task](self.features(x))

    def effective_linear(self, task: int) -> tuple[Float[Array, "C N"], Float[Array, " C"]]:
        """(A_k, a_k) with logits_k(x) = A_k x + a_k; valid only for a linear trunk."""
        return self.effective_linear_stacked((task,))

    def effective_linear_stacked(self, tasks) -> tuple[Float[Array, "KC N"], Float[Array, " KC"]]:
        """(A_k, a_k) of `tasks` (static sequence) stacked along the output axis: every trunk
        product is then one (K·C)-row matrix product, and so is each product of its
        vector–Jacobian product (the population theory's field), instead of one per task."""
        if not self.is_linear:
            raise ValueError("effective_linear needs activation='linear'")
        heads = [self.heads[k] for k in tasks]
        A = jnp.concatenate([h.weight for h in heads])
        a = jnp.concatenate([jnp.zeros(h.weight.shape[0]) if h.bias is None else h.bias for h in heads])
        for layer in reversed(self.layers):
            if layer.bias is not None:
                a = a + A @ layer.bias
            A = A @ layer.weight
        return A, a

    def logits(self, x: Float[Array, "n N"], task: int) -> Float[Array, "n C"]:
        """Logits of a batch; for a linear trunk through (A_k, a_k), which costs C·N per
        example instead of H·(N + (L-1)H + C) and is the same function exactly."""
        if self.is_linear and self.layers:
            A, a = self.effective_linear(task)
            return x @ A.T + a
        return self(x, task)
