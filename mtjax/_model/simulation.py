"""Training networks: the simulation as a model."""

from __future__ import annotations

from typing import Any, ClassVar

import equinox as eqx

from .._experiment import Experiment, Seeds
from .._train import History, _check_data_sizes, make_inputs, simulate
from .base import AbstractModel

_make_inputs_jit = eqx.filter_jit(make_inputs)


class Simulation(AbstractModel):
    """Train the students (the experiment's protocol: paper, full_batch or online) and record
    their curves on a finite test set (`mtjax.simulate`)."""

    name: ClassVar[str] = "simulation"
    source: ClassVar[str] = "simulation"
    differentiable: ClassVar[bool] = False

    def history(self, experiment: Experiment, seeds: Seeds, context: Any = None) -> History:
        inputs, shared = (None, False) if context is None else context
        return simulate(experiment, seeds, inputs, shared_subsets=shared)

    def check(self, experiment: Experiment) -> None:
        # `simulate`'s own pool check sees tracers under jit/vmap; sweeps and benchmarks that
        # trace it check the concrete experiment here first.
        _check_data_sizes(experiment)

    def prepare(self, experiment: Experiment, seeds: Seeds) -> Any:
        """Where every run of a chunk has one data seed (the paper preset's seed scope "train"
        with one realisation), the input pool is drawn once and shared; where the training
        subset and order are shared too, each layer's product with the data becomes one large
        matrix product over the chunk (`simulate(..., shared_subsets=True)`)."""
        if seeds.data.ndim != 0:
            return None
        inputs = _make_inputs_jit(experiment, key=seeds.key("data"))
        return inputs, bool(seeds.train.ndim == 0)

    def bytes_per_run(self, experiment: Experiment, shared_inputs: bool) -> int:
        tr, te, st = experiment.train, experiment.teacher, experiment.student
        N, C, H, L = te.n_features, te.n_classes, st.width, st.depth
        n_pool = tr.n_pool if tr.protocol != "online" else (0,) * tr.n_tasks
        rows = sum(n_pool) + tr.n_tasks * tr.n_test
        data = 0 if shared_inputs else rows * N
        labels_and_logits = rows * (2 + 3 * C)
        fans = [N] + [H] * L
        params = sum(a * H for a in fans[:-1]) + tr.n_tasks * fans[-1] * C
        acts = 4 * tr.batch_size * (N + L * H + C) * tr.n_tasks
        hist = 3 * tr.n_evals * tr.n_tasks
        return 4 * (data + labels_and_logits + 6 * params + acts + hist) + 4096
