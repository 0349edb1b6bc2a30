"""The model interface: every model honours one contract, and a model written here (a toy
closed-form theory) sweeps, resumes and compares end to end — the seam is real."""

import dataclasses
import json
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from helpers import tiny_spec

import mtjax

SPEC = {**tiny_spec("full_batch", n_steps=8, eval_every=2, learning_rate=0.1), "seed_scope": "train"}
SMALL_DMFT = mtjax.FiniteDataSolver(n_grid=8, n_draws=64, n_response=64, max_iter=5, n_quad_eval=512)
SMALL_POP = mtjax.PopulationSolver(n_quad=256, n_quad_eval=512)
MODELS = [mtjax.Simulation(), mtjax.PopulationTheory(SMALL_POP), mtjax.FiniteDataTheory(SMALL_DMFT)]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
def test_every_model_satisfies_the_contract(model):
    exp = mtjax.experiment_from_spec(SPEC)
    seeds = mtjax.Seeds(0)
    T, K = exp.train.n_evals, exp.teacher.n_tasks
    h = eqx.filter_jit(model.history)(exp, seeds, model.prepare(exp, seeds))
    assert isinstance(h, mtjax.History)
    assert h.step.shape == (T,) and h.time.shape == (T,)
    for f in ("train_loss", "test_loss", "test_loss_se", "test_acc"):
        assert getattr(h, f).shape == (T, K), f
    # One clock for every model: the experiment's evaluation times t = lr x steps.
    np.testing.assert_allclose(np.asarray(h.time), float(exp.train.learning_rate) * exp.train.eval_steps, rtol=1e-5)
    assert np.isfinite(np.asarray(h.test_loss)).all() and not bool(h.diverged)
    assert isinstance(model.bytes_per_run(exp, False), int) and model.bytes_per_run(exp, False) > 0
    json.dumps(model.settings())  # a manifest entry
    assert model.name in ("simulation", "population", "finite-data")
    assert isinstance(model.differentiable, bool)
    # Vmappable over the experiment's array fields: two relatedness values in one call.
    rs = jnp.array([0.0, 1.0])
    hv = jax.vmap(lambda r: model.history(mtjax._sweep.apply_axes(exp, {"relatedness": r}), seeds,
                                          model.prepare(exp, seeds)))(rs)
    assert hv.test_loss.shape == (2, T, K)


@pytest.mark.parametrize("model", MODELS[1:], ids=lambda m: m.name)
def test_theories_refuse_what_they_cannot_do(model):
    relu = mtjax.experiment_from_spec({**SPEC, "student": {**SPEC["student"], "activation": "relu"}})
    # Both theories cover relu trunks (docs/theory.md §5.2, docs/dmft.md §4.2); the
    # width-proportional finite-data theory needs a linear one.
    model.check(relu)
    if model.name == "finite-data":
        with pytest.raises(ValueError, match="activation"):
            mtjax.FiniteDataTheory(model.solver, initial="typical", width="proportional").check(relu)
    # A theory averages over training sets: with seed scope "train" the seed axis is dropped.
    assert model.run_grid({"s_b": [1.0], "seed": [0, 1]}, "train") == {"s_b": [1.0]}


def test_relu_sharpness_enters_the_manifest_only_when_set():
    # Manifests (resume fingerprints) of finite-data sweeps stored before the setting existed stay valid.
    assert "relu_sharpness" not in mtjax.FiniteDataTheory(SMALL_DMFT).settings()
    sharp = mtjax.FiniteDataTheory(dataclasses.replace(SMALL_DMFT, relu_sharpness=8.0))
    assert sharp.settings()["relu_sharpness"] == 8.0


class DecayTheory(mtjax.AbstractModel):
    """A toy closed-form "theory": every task's test loss decays from log C to `floor` at rate
    s_a, test_loss(t) = floor + (log C − floor) exp(−s_a t). Only the interface is exercised."""

    floor: jax.Array
    name: ClassVar[str] = "decay"
    source: ClassVar[str] = "theory-decay"
    differentiable: ClassVar[bool] = True

    def __init__(self, floor=0.1):
        self.floor = jnp.asarray(floor, float)

    def history(self, experiment, seeds, context=None):
        tr, K = experiment.train, experiment.teacher.n_tasks
        step = jnp.asarray(tr.eval_steps, jnp.int32)
        t = tr.learning_rate * step
        rate = experiment.teacher.scale[0]
        loss = self.floor + (jnp.log(experiment.teacher.n_classes) - self.floor) * jnp.exp(-rate * t)
        loss = jnp.repeat(loss[:, None], K, axis=1)
        return mtjax.History(step, t, jnp.full_like(loss, jnp.nan), loss, jnp.zeros_like(loss),
                             jnp.full_like(loss, 0.5), jnp.asarray(False))

    def bytes_per_run(self, experiment, shared_inputs):
        return 1024

    def settings(self):
        return {"floor": float(self.floor)}


def test_a_model_written_outside_the_package_sweeps_resumes_and_compares(tmp_path):
    grid = {"s_a": [0.5, 2.0], "relatedness": [0.0, 1.0]}
    res = mtjax.sweep(SPEC, grid, model=DecayTheory(), name="toy", out_dir=tmp_path, progress=False)
    s, c = res.summary, res.curves
    assert set(s["model"]) == {"decay"} and set(s["source"]) == {"theory-decay"}
    assert s["run"].nunique() == 4
    # The closed form, read back from the table.
    exp = mtjax.experiment_from_spec(SPEC)
    t = float(exp.train.learning_rate) * exp.train.eval_steps
    for sa in (0.5, 2.0):
        got = c[(c["s_a"] == sa) & (c["task"] == 1) & (c["relatedness"] == 0.0)].sort_values("step")["test_loss"]
        np.testing.assert_allclose(got, 0.1 + (np.log(exp.teacher.n_classes) - 0.1) * np.exp(-sa * t), rtol=1e-5)
    manifest = json.loads((tmp_path / "toy" / "manifest.json").read_text())
    assert manifest["model"] == "decay" and manifest["solver"] == {"floor": pytest.approx(0.1)}
    # Resume: the same call finds every run done; another floor is another sweep.
    again = mtjax.sweep(SPEC, grid, model=DecayTheory(), name="toy", out_dir=tmp_path, progress=False)
    pd.testing.assert_frame_equal(again.summary, res.summary)
    with pytest.raises(ValueError, match="different sweep"):
        mtjax.sweep(SPEC, grid, model=DecayTheory(0.2), name="toy", out_dir=tmp_path, progress=False)
    # And next to the simulation in one joined table.
    cmp = mtjax.compare(SPEC, {"s_a": [2.0], "w_b": [0.0, 1.0]}, models=["simulation", DecayTheory()], out_dir=None,
                        progress=False)
    assert set(cmp.summary["model"]) == {"simulation", "decay"}
    assert set(cmp.benefit["model"]) == {"simulation", "decay"}
    toy = cmp.benefit[cmp.benefit["model"] == "decay"]
    np.testing.assert_allclose(toy["benefit"], 0.0, atol=1e-6)  # the toy ignores task 2


def test_source_strings_still_work_for_one_release():
    with pytest.warns(DeprecationWarning, match="model="):
        res = mtjax.sweep(SPEC, {"s_b": [1.0]}, out_dir=None, progress=False, source="theory", solver=SMALL_POP)
    assert set(res.summary["model"]) == {"population"}
    with pytest.raises(ValueError, match="model="):
        mtjax.sweep(SPEC, {"s_b": [1.0]}, out_dir=None, model=mtjax.Simulation(), source="theory")
