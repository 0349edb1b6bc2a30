"""Experiment = teacher config + student config + training protocol, and the run seeds."""

from __future__ import annotations

from typing import Callable, Union

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ._custom_types import Array, Float, Int, PRNGKeyArray
from ._student import StudentConfig
from ._teacher import TeacherConfig, _as_task_array
from ._validation import check_choice, check_int, check_range

PROTOCOLS = ("paper", "full_batch", "online")

_OPTIMIZERS: dict[str, Callable] = {
    "sgd": lambda lr: optax.sgd(lr),
    "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
    "adam": lambda lr: optax.adam(lr),
}

OptimizerLike = Union[str, Callable[[Array], optax.GradientTransformation]]


def _as_tuple(name: str, value, n: int) -> tuple[int, ...]:
    if isinstance(value, (int, np.integer)):
        value = (int(value),) * n
    value = tuple(value)
    if len(value) != n:
        raise ValueError(f"{name} must be an int or have {n} entries (one per task), got {value}")
    return tuple(check_int(f"{name}[{i}]", v, 1) for i, v in enumerate(value))


class TrainConfig(eqx.Module):
    """Training protocol, data sizes and evaluation schedule.

    **Protocols** (all train the same `Student`):

    - `"paper"`: the authors' loop. Per epoch the task-1 training set is reshuffled into
      minibatches of `batch_size` (last partial batch kept); after every task-1 step come
      m_k = n_train[k] // n_train[0] steps of each task k >= 2, drawn from that task's own
      reshuffled minibatch stream. Each step updates the trunk and that task's head only,
      with separate optimiser states for the trunk and every head. The clock `step` counts
      task-1 steps; `eval_every` is in epochs.
    - `"full_batch"`: gradient descent on Σ_k w_k L_k(train set k); `eval_every` in steps.
    - `"online"`: every step draws a fresh batch of `batch_size` per task from the teacher
      (the infinite-data limit) and descends Σ_k w_k L_k(batch); `eval_every` in steps.

    Time is t = learning_rate × step in every protocol (docs/theory.md §3 maps the
    alternation to per-task rates ρ_1 = 1, ρ_k = m_k per unit time).

    **Arguments:**

    - `protocol`, `n_train` (examples per task, int or K-tuple), `n_test` (test examples per task),
      `batch_size`, `n_epochs` (paper), `n_steps` (full_batch, online), `eval_every`: static.
    - `n_pool`: size of the pool each task's training subset is drawn from (>= n_train; default
      n_train). The paper draws subsets of a fixed 3200-example half, so seeds share examples.
    - `single_task`: train task 1 only (the baseline of the multitask benefit); static.
    - `optimizer`: `"sgd"`, `"momentum"`, `"adam"`, or a callable lr -> optax transformation; static.
    - `clean_test`: test labels without logit noise or flips; static.
    - `learning_rate` (> 0) and `task_weights` w_k (>= 0, shape (K,)): array fields, vmappable.
    - `n_train_active`: (full_batch only) examples actually used per task, <= n_train, as an array
      so that data size can be vmapped; defaults to n_train.
    """

    protocol: str = eqx.field(static=True)
    n_train: tuple[int, ...] = eqx.field(static=True)
    n_pool: tuple[int, ...] = eqx.field(static=True)
    n_test: int = eqx.field(static=True)
    batch_size: int = eqx.field(static=True)
    n_epochs: int = eqx.field(static=True)
    n_steps: int = eqx.field(static=True)
    eval_every: int = eqx.field(static=True)
    single_task: bool = eqx.field(static=True)
    optimizer: OptimizerLike = eqx.field(static=True)
    clean_test: bool = eqx.field(static=True)
    learning_rate: Float[Array, ""]
    task_weights: Float[Array, " K"]
    n_train_active: Float[Array, " K"]

    def __init__(
        self,
        protocol: str = "paper",
        n_train=400,
        n_test: int = 3200,
        batch_size: int = 128,
        n_epochs: int = 2000,
        n_steps: int = 1000,
        eval_every: int = 1,
        learning_rate=1e-3,
        task_weights=1.0,
        n_pool=None,
        single_task: bool = False,
        optimizer: OptimizerLike = "sgd",
        clean_test: bool = False,
        n_train_active=None,
        n_tasks: int = 2,
    ):
        self.protocol = check_choice("protocol", protocol, PROTOCOLS)
        K = check_int("n_tasks", n_tasks, 1)
        self.n_train = _as_tuple("n_train", n_train, K)
        self.n_pool = self.n_train if n_pool is None else _as_tuple("n_pool", n_pool, K)
        for k, (nt, npool) in enumerate(zip(self.n_train, self.n_pool)):
            if npool < nt:
                raise ValueError(f"n_pool[{k}]={npool} must be in [n_train[{k}], inf) = [{nt}, inf)")
        self.n_test = check_int("n_test", n_test, 1)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.n_epochs = check_int("n_epochs", n_epochs, 1)
        self.n_steps = check_int("n_steps", n_steps, 1)
        self.eval_every = check_int("eval_every", eval_every, 1)
        horizon = self.n_epochs if protocol == "paper" else self.n_steps
        if horizon % self.eval_every:
            unit = "n_epochs" if protocol == "paper" else "n_steps"
            raise ValueError(f"eval_every={eval_every} must divide {unit}={horizon}")
        self.single_task = bool(single_task)
        if protocol == "paper" and not single_task:
            for k in range(1, K):
                if self.n_train[k] < self.n_train[0]:
                    raise ValueError(
                        f"paper protocol: n_train[{k}]={self.n_train[k]} must be in [n_train[0], inf) = "
                        f"[{self.n_train[0]}, inf): task {k + 1} takes n_train[{k}] // n_train[0] steps per task-1 step"
                    )
        if isinstance(optimizer, str):
            check_choice("optimizer", optimizer, _OPTIMIZERS)
        elif not callable(optimizer):
            raise ValueError(f"optimizer must be one of {sorted(_OPTIMIZERS)} or a callable lr -> optax transformation")
        self.optimizer = optimizer
        self.clean_test = bool(clean_test)
        check_range("learning_rate", learning_rate, 0.0, lo_open=True)
        check_range("task_weights", task_weights, 0.0)
        self.learning_rate = jnp.asarray(learning_rate, dtype=float)
        self.task_weights = _as_task_array("task_weights", task_weights, K)
        if n_train_active is None:
            n_train_active = np.asarray(self.n_train, dtype=float)
        elif protocol != "full_batch":
            raise ValueError("n_train_active is only supported with protocol='full_batch'")
        else:
            check_range("n_train_active", n_train_active, 1.0)
            if np.any(np.asarray(n_train_active) > np.asarray(self.n_train)):
                raise ValueError(f"n_train_active={n_train_active} must be in [1, n_train={self.n_train}]")
        self.n_train_active = _as_task_array("n_train_active", n_train_active, K)

    @property
    def n_tasks(self) -> int:
        return len(self.n_train)

    @property
    def active_tasks(self) -> tuple[int, ...]:
        return (0,) if self.single_task else tuple(range(self.n_tasks))

    @property
    def n_evals(self) -> int:
        horizon = self.n_epochs if self.protocol == "paper" else self.n_steps
        return horizon // self.eval_every + 1

    @property
    def steps_per_epoch(self) -> int:
        """Task-1 steps per epoch (paper protocol)."""
        return -(-self.n_train[0] // self.batch_size)

    @property
    def task_multiplicity(self) -> tuple[int, ...]:
        """m_k: steps of task k per task-1 step (paper protocol); m_1 = 1."""
        if self.single_task:
            return (1,) + (0,) * (self.n_tasks - 1)
        return (1,) + tuple(n // self.n_train[0] for n in self.n_train[1:])

    @property
    def total_steps(self) -> int:
        """Optimisation steps on the clock (task-1 steps for the paper protocol)."""
        if self.protocol == "paper":
            return self.n_epochs * self.steps_per_epoch
        return self.n_steps

    @property
    def t_max(self) -> Float[Array, ""]:
        """Theory time at the end of the run, learning_rate x `total_steps` (units of lr x steps;
        an array, so it follows a vmapped or traced learning rate).

        For the paper protocol the clock counts task-1 steps only (the interleaved task-k steps
        become the rate m_k of docs/theory.md), so 2000 epochs at n_train n end at
        2000 ceil(n / 128) x 1e-3."""
        return self.learning_rate * self.total_steps

    @property
    def eval_steps(self) -> np.ndarray:
        """Clock values (steps) at which metrics are recorded, shape (n_evals,)."""
        per = self.eval_every * (self.steps_per_epoch if self.protocol == "paper" else 1)
        return np.arange(self.n_evals) * per

    def make_optimizer(self) -> optax.GradientTransformation:
        if isinstance(self.optimizer, str):
            return _OPTIMIZERS[self.optimizer](self.learning_rate)
        return self.optimizer(self.learning_rate)


class Experiment(eqx.Module):
    """A complete simulation specification: `teacher`, `student`, `train` configs."""

    teacher: TeacherConfig
    student: StudentConfig
    train: TrainConfig

    def __check_init__(self):
        if self.teacher.n_tasks != self.train.n_tasks:
            raise ValueError(
                f"teacher has n_tasks={self.teacher.n_tasks} but train has {self.train.n_tasks} "
                "(pass n_tasks= to TrainConfig)"
            )


class Seeds(eqx.Module):
    """Integer seeds of one run (int arrays, so a batch of runs is vmapped).

    - `teacher`: the teacher's subspaces and readouts.
    - `data`: the inputs and label noise of every dataset (pool and test set).
    - `init`: the student's initialisation.
    - `train`: the training subset, minibatch order and online batches.

    The authors kept teacher, data and init fixed and varied `train` only.
    """

    teacher: Int[Array, ""]
    data: Int[Array, ""]
    init: Int[Array, ""]
    train: Int[Array, ""]

    def __init__(self, teacher=0, data=None, init=None, train=None):
        self.teacher = jnp.asarray(teacher, dtype=jnp.int32)
        self.data = self.teacher if data is None else jnp.asarray(data, dtype=jnp.int32)
        self.init = self.teacher if init is None else jnp.asarray(init, dtype=jnp.int32)
        self.train = self.teacher if train is None else jnp.asarray(train, dtype=jnp.int32)

    @classmethod
    def same(cls, seed) -> "Seeds":
        """All four seeds equal to `seed` (independent streams are still derived per purpose)."""
        return cls(seed, seed, seed, seed)

    def key(self, purpose: str) -> PRNGKeyArray:
        """Key for one purpose; the purpose tag decorrelates equal integer seeds."""
        tag = {"teacher": 0, "data": 1, "init": 2, "train": 3}[purpose]
        return jax.random.fold_in(jax.random.key(getattr(self, purpose)), tag)
