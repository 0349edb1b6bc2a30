"""Plain-dict (TOML/JSON) specifications of experiments, and the paper preset.

A spec is ``{"preset": ..., "teacher": {...}, "student": {...}, "train": {...}}`` whose
sections are keyword arguments of `TeacherConfig`, `StudentConfig` and `TrainConfig`.
Specs are what the CLI reads and what sweep manifests record, so a result table can always
be traced back to the exact configuration that produced it.
"""

from __future__ import annotations

import copy
import difflib
import inspect
from typing import Any

from ._experiment import Experiment, TrainConfig
from ._student import StudentConfig
from ._teacher import TeacherConfig

PAPER_N_VALIDATION = 3200


def paper_spec(
    n_train: int = 400,
    n_train_b: int | None = None,
    *,
    rank: int = 10,
    n_epochs: int = 2000,
    depth: int = 2,
    activation: str = "linear",
    single_task: bool = False,
) -> dict[str, Any]:
    """Spec of the authors' protocol (Lee & Ndirango 2019, their ``train.py``).

    N = 100, R = C = `rank`, σ = 1/sqrt(N) logit noise on exactly half of each generated set
    (``--clean_validation``), training subsets of a 3200-example pool (``--random_train``),
    3200 validation examples, linear trunk of 2 x 64 with biases, orthogonal init, plain SGD at
    lr 1e-3, batch 128, 2000 epochs, alternating task steps (m = ntrain2 // ntrain).
    Teacher, data and init are one realisation for all seeds; the seed picks the training subset.
    """
    n_train_b = n_train if n_train_b is None else n_train_b
    return {
        "preset": "paper",
        "seed_scope": "train",
        "teacher": {
            "n_features": 100,
            "rank": rank,
            "n_classes": rank,
            "relatedness": 0.0,
            "scale": [1.0, 1.0],
            "noise": 100**-0.5,
            "flip": 0.0,
            "noisy_fraction": 0.5,
        },
        "student": {
            "depth": depth,
            "width": 64,
            "activation": activation,
            "use_bias": True,
            "init": "orthogonal",
            "init_scale": 1.0,
            "bias_init": "torch",
        },
        "train": {
            "protocol": "paper",
            "n_train": [n_train, n_train_b],
            "n_pool": [max(PAPER_N_VALIDATION, n_train), max(PAPER_N_VALIDATION, n_train_b)],
            "n_test": PAPER_N_VALIDATION,
            "batch_size": 128,
            "n_epochs": n_epochs,
            "eval_every": 1,
            "learning_rate": 1e-3,
            "task_weights": [1.0, 1.0],
            "single_task": single_task,
            "optimizer": "sgd",
            "clean_test": False,
        },
    }


def paper(**kwargs) -> Experiment:
    """The paper preset as an `Experiment` (see `paper_spec` for the arguments)."""
    return experiment_from_spec(paper_spec(**kwargs))


def demo_spec(n_features: int = 200, steps: int = 40) -> tuple[dict[str, Any], dict[str, list]]:
    """The demo's experiment and grid: two tasks (R = C = 3) learned by a depth-1, width-8
    trunk with full-batch GD, at α = P / (N − 2R) = 1 and 4, related (r = 1) or not (r = 0),
    task 2 weighted 0 (task 1 alone) or 1, over 4 training sets. The finite-data theory
    tracks these networks (overfitting at α = 1, the benefit's sign change with α); the
    population theory is their α → ∞ limit."""
    N, R = n_features, 3
    d = N - 2 * R
    spec = {
        "name": "demo",
        "seed_scope": "train",  # teacher, test set and initial student shared; the seed draws the training sets
        "teacher": {"n_features": N, "rank": R, "n_classes": R, "scale": [3.0, 3.0], "noise": 0.5},
        "student": {"depth": 1, "width": 8, "bias_init": "zeros"},
        "train": {"protocol": "full_batch", "n_pool": [40 * d, 40 * d], "n_steps": steps, "eval_every": 1,
                  "learning_rate": 0.5, "n_test": 4000},
    }
    grid = {"ntrain": [d, 4 * d], "relatedness": [0.0, 1.0], "w_b": [0.0, 1.0], "seed": [0, 1, 2, 3]}
    return spec, grid


_SECTIONS = ("teacher", "student", "train")


def normalise_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Fill a spec from its preset, then apply its own sections on top; validates keys."""
    spec = copy.deepcopy(spec)
    unknown = set(spec) - {"preset", "seed_scope", "name", "grid", *_SECTIONS}
    if unknown:
        raise ValueError(f"unknown spec keys {sorted(unknown)}; allowed: preset, seed_scope, name, grid, {', '.join(_SECTIONS)}")
    preset = spec.get("preset")
    if preset is None:
        base: dict[str, Any] = {"seed_scope": "all", "teacher": {}, "student": {}, "train": {}}
    elif preset == "paper":
        tr = spec.get("train", {})
        n = tr.get("n_train", 400)
        n = n if isinstance(n, int) else n[0]
        nb = tr.get("n_train", [n, n])
        nb = nb if isinstance(nb, int) else nb[-1]
        base = paper_spec(n, nb)
    else:
        raise ValueError(f"preset={preset!r} is not one of ['paper'] (or omit it)")
    for sec in _SECTIONS:
        base[sec] = {**base.get(sec, {}), **spec.get(sec, {})}
    for key in ("seed_scope", "name", "grid"):
        if key in spec:
            base[key] = spec[key]
    if base.get("seed_scope", "all") not in ("all", "train"):
        raise ValueError(f"seed_scope={base['seed_scope']!r} is not one of ['all', 'train']")
    return base


_CONFIGS = {"teacher": TeacherConfig, "student": StudentConfig, "train": TrainConfig}


def check_spec_keys(spec: dict[str, Any]) -> None:
    """Raise a one-line `ValueError` for a key that no config takes, e.g. ``train.n_epoch``,
    with the closest allowed key as the fix."""
    for sec, cls in _CONFIGS.items():
        section = spec.get(sec, {})
        if not isinstance(section, dict):
            raise ValueError(f"spec section [{sec}] must be a table of keyword arguments of {cls.__name__}, got {section!r}")
        allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        for key in section:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f"did you mean {sec}.{close[0]}? " if close else ""
                raise ValueError(f"unknown key {sec}.{key}: {hint}allowed keys of [{sec}]: {', '.join(allowed)}")


def experiment_from_spec(spec: dict[str, Any]) -> Experiment:
    """Build the `Experiment` a spec describes (after `normalise_spec`).

    **Raises:** `ValueError` (one line, naming the key and the fix) for an unknown key or a
    value out of its range."""
    spec = normalise_spec(spec)
    check_spec_keys(spec)
    teacher = TeacherConfig(**spec["teacher"])
    train = dict(spec["train"])
    train.setdefault("n_tasks", teacher.n_tasks)
    for key in ("n_train", "n_pool", "task_weights"):
        if isinstance(train.get(key), list):
            train[key] = tuple(train[key]) if key != "task_weights" else train[key]
    return Experiment(teacher, StudentConfig(**spec["student"]), TrainConfig(**train))
