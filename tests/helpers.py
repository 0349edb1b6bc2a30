import jax
import jax.numpy as jnp
import numpy as np

import mtjax


def tree_allclose(a, b, rtol=1e-6, atol=1e-6) -> bool:
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    if ta != tb:
        return False
    return all(np.allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol, equal_nan=True) for x, y in zip(la, lb))


def tiny_spec(protocol="paper", **train):
    """A small, fast experiment: N = 20, R = C = 3, trunk 2 x 8."""
    tr = {
        "protocol": protocol,
        "n_train": [32, 32],
        "n_test": 256,
        "batch_size": 16,
        "n_epochs": 6,
        "n_steps": 60,
        "eval_every": 2 if protocol == "paper" else 20,
        "learning_rate": 0.05,
    }
    tr.update(train)
    return {
        "teacher": {"n_features": 20, "rank": 3, "n_classes": 3, "scale": [3.0, 3.0], "noise": 0.1},
        "student": {"depth": 2, "width": 8},
        "train": tr,
    }


def tiny(protocol="paper", **train) -> mtjax.Experiment:
    return mtjax.experiment_from_spec(tiny_spec(protocol, **train))


def replace(module, where, value):
    import equinox as eqx

    return eqx.tree_at(where, module, jnp.asarray(value, dtype=where(module).dtype))


def jit_optimised(f):
    """`jax.jit` of a run-bound test program at XLA optimisation level 1.

    The suite compiles at level 0 (tests/conftest.py: most tests are compile-bound), where the
    counter-based PRNG of online simulations and long quadrature loops run several times slower;
    the few tests dominated by such a run compile their program optimised instead."""
    return jax.jit(f, compiler_options={"xla_backend_optimization_level": 1})
