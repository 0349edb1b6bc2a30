"""Free parameters of a fit and their constraints (transforms to unconstrained coordinates)."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

#: Default constraint of every fittable parameter: tanh keeps r in (-1, 1), log keeps scales
#: positive, sigmoid keeps probabilities in (0, 1).  `time_scale` multiplies every task rate
#: (an effective learning-rate factor): the theory at rates τρ and time t equals the theory at
#: rates ρ and time τt.
DEFAULT_TRANSFORMS = {
    "relatedness": "tanh",
    "s_a": "log",
    "s_b": "log",
    "sigma_a": "log",
    "sigma_b": "log",
    "eps_a": "sigmoid",
    "eps_b": "sigmoid",
    "q": "sigmoid",
    "readout_alignment": "tanh",
    "w_b": "log",
    "init_scale": "log",
    "time_scale": "log",
    "ntrain": "log",
    "ntrain_b": "log",
    "loss_offset": "identity",
}
#: Parameters that act after the theory solve, on its predictions: `time_scale` (on the time
#: axis) and `loss_offset` (an additive bias of the predicted metric, in nats: a fitted model
#: discrepancy, e.g. one per condition group whose level the theory misses while it gets the
#: differences between conditions; it cancels in a benefit between rows of one level).
POST_SOLVE = ("time_scale", "loss_offset")
#: Data sizes: free or known only for a model that sees training sets (`AbstractModel.data_sizes`,
#: the finite-data theory), as continuous P_k (α_k = P_k / N); default start: the experiment's.
DATA_SIZES = ("ntrain", "ntrain_b")
TRANSFORMS = ("identity", "log", "tanh", "sigmoid")


def _forward(transform: str, u):
    if transform == "identity":
        return u
    if transform == "log":
        return jnp.exp(u)
    if transform == "tanh":
        return jnp.tanh(u)
    if transform == "sigmoid":
        return jax.nn.sigmoid(u)
    raise ValueError(f"transform={transform!r} is not one of {list(TRANSFORMS)}")


def _inverse(transform: str, x):
    x = np.asarray(x, float)
    if transform == "identity":
        return x
    if transform == "log":
        return np.log(x)
    if transform == "tanh":
        return np.arctanh(np.clip(x, -1 + 1e-6, 1 - 1e-6))
    if transform == "sigmoid":
        x = np.clip(x, 1e-6, 1 - 1e-6)
        return np.log(x) - np.log1p(-x)
    raise ValueError(f"transform={transform!r} is not one of {list(TRANSFORMS)}")


class Param(eqx.Module):
    """One free parameter of a fit.

    **Arguments:**

    - `name`: a theory parameter (`relatedness`, `s_a`, `s_b`, `sigma_a`, `sigma_b`, `eps_a`,
      `eps_b`, `q`, `readout_alignment`, `w_b`, `init_scale`, `lr`), `time_scale` (effective
      factor on every task rate, i.e. on the learning rate), or a data size `ntrain`, `ntrain_b`
      (examples of task 1 / tasks 2..K, continuous; finite-data theory only), or `loss_offset`
      (an additive bias of the predictions, nats; after the solve, like `time_scale`).
    - `init`: starting value (constrained units), a scalar or one value per level of `by`
      (data sizes: default the experiment's own).
    - `transform`: `"tanh"`, `"log"`, `"sigmoid"` or `"identity"` (default by name, see
      `DEFAULT_TRANSFORMS`): the fit optimises the unconstrained u with value = transform(u),
      so bounded parameters cannot leave their range.
    - `by`: `None` (one value shared by all rows) or a column of the observation table: one
      value per distinct value of that column (e.g. a time scale per training-set size).
    """

    name: str = eqx.field(static=True)
    init: Any = eqx.field(static=True)
    transform: str = eqx.field(static=True)
    by: str | None = eqx.field(static=True)

    def __init__(self, name: str, init=None, transform: str | None = None, by: str | None = None):
        if name not in DEFAULT_TRANSFORMS and name != "lr":
            raise ValueError(f"Param name={name!r} is not fittable; allowed: {sorted([*DEFAULT_TRANSFORMS, 'lr'])}")
        self.name = name
        self.transform = transform or DEFAULT_TRANSFORMS.get(name, "log")
        if self.transform not in TRANSFORMS:
            raise ValueError(f"transform={self.transform!r} is not one of {list(TRANSFORMS)}")
        default = {"relatedness": 0.0, "eps_a": 0.1, "eps_b": 0.1, "q": 0.5, "readout_alignment": 0.0,
                   "loss_offset": 0.0}.get(name, 1.0)  # fmt: skip
        if init is None and name in DATA_SIZES:
            self.init = ()  # the experiment's data size (`FitProblem.initial_theta`)
        else:
            self.init = tuple(np.atleast_1d(np.asarray(default if init is None else init, float)).tolist())
        self.by = by
