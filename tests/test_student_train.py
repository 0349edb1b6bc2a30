import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mtjax
from helpers import replace, tiny, tree_allclose


def test_student_shapes_and_orthogonal_init(key):
    cfg = mtjax.StudentConfig(depth=2, width=64)
    st = mtjax.Student.init(cfg, 100, 10, 2, key=key)
    assert [l.weight.shape for l in st.layers] == [(64, 100), (64, 64)]
    assert [h.weight.shape for h in st.heads] == [(10, 64), (10, 64)]
    w = st.layers[0].weight
    np.testing.assert_allclose(w @ w.T, np.eye(64), atol=1e-5)  # rows orthonormal (out < in)
    np.testing.assert_allclose(st.heads[0].weight @ st.heads[0].weight.T, np.eye(10), atol=1e-5)
    assert np.all(np.abs(st.layers[0].bias) <= 1 / math.sqrt(100))
    assert np.all(np.abs(st.heads[1].bias) <= 1 / math.sqrt(64))
    x = jnp.ones((5, 100))
    assert st(x, 1).shape == (5, 10) and st(x[0], 0).shape == (10,)


def test_student_depth_zero_and_gaussian_init(key):
    st = mtjax.Student.init(mtjax.StudentConfig(depth=0, init="gaussian", init_scale=0.1, use_bias=False), 50, 4, 3, key=key)
    assert st.layers == () and len(st.heads) == 3 and st.heads[0].weight.shape == (4, 50)
    assert st.heads[0].bias is None
    std = float(jnp.std(jnp.stack([h.weight for h in st.heads])))
    assert abs(std - 0.1 / math.sqrt(50)) < 0.15 * 0.1 / math.sqrt(50)


def test_effective_linear_matches_forward(key):
    st = mtjax.Student.init(mtjax.StudentConfig(depth=3, width=7), 11, 5, 2, key=key)
    x = jax.random.normal(jax.random.key(1), (9, 11))
    A, a = st.effective_linear(1)
    np.testing.assert_allclose(x @ A.T + a, st(x, 1), atol=1e-5)
    relu = mtjax.Student.init(mtjax.StudentConfig(depth=1, width=7, activation="relu"), 11, 5, 2, key=key)
    with pytest.raises(ValueError, match="linear"):
        relu.effective_linear(0)
    np.testing.assert_allclose(relu.logits(x, 0), relu(x, 0))


@pytest.mark.parametrize("bad, name", [(dict(depth=-1), "depth"), (dict(activation="sigmoid"), "activation"), (dict(init_scale=0.0), "init_scale")])
def test_student_config_validation(bad, name):
    with pytest.raises(ValueError, match=name):
        mtjax.StudentConfig(**bad)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(protocol="sgd"), "protocol"),
        (dict(learning_rate=0.0), "learning_rate"),
        (dict(n_epochs=10, eval_every=3), "eval_every"),
        (dict(n_train=(100, 50)), "n_train"),
        (dict(n_train=100, n_pool=50), "n_pool"),
        (dict(optimizer="lbfgs"), "optimizer"),
        (dict(task_weights=[-1.0, 1.0]), "task_weights"),
    ],
)
def test_train_config_validation(kwargs, name):
    with pytest.raises(ValueError, match=name):
        mtjax.TrainConfig(**kwargs)


@pytest.mark.parametrize("protocol", ["paper", "full_batch", "online"])
def test_loss_decreases_on_clean_task(protocol):
    e = tiny(protocol)
    h = mtjax.simulate(e, mtjax.Seeds.same(0))
    assert h.test_loss.shape == (e.train.n_evals, 2)
    assert not bool(h.diverged)
    # Clean, strong teacher: the test loss must fall well below its start.
    assert float(h.test_loss[-1, 0]) < float(h.test_loss[0, 0]) - 0.1
    assert float(h.test_acc[-1, 0]) > float(h.test_acc[0, 0])
    np.testing.assert_allclose(h.time, e.train.learning_rate * h.step, rtol=1e-6)


def test_divergence_is_detected_and_not_averaged():
    e = tiny("full_batch", learning_rate=1e4, optimizer="sgd")
    h = mtjax.simulate(e, mtjax.Seeds.same(0))
    assert bool(h.diverged)
    assert np.all(np.isnan(h.early_stopped_loss)) and np.all(h.early_stopped_step == -1)


def test_zero_task2_weight_equals_single_task():
    # Under SGD a task-2 step with w_2 = 0 is a no-op, so the alternating multitask loop must
    # reproduce the single-task run exactly: this pins that task-2 steps touch only the trunk
    # and head 2 through their gradients, and that task-1 batches do not depend on task 2.
    e = tiny("paper", task_weights=[1.0, 0.0])
    s = tiny("paper", single_task=True)
    hm = mtjax.simulate(e, mtjax.Seeds.same(3))
    hs = mtjax.simulate(s, mtjax.Seeds.same(3))
    np.testing.assert_allclose(hm.test_loss[:, 0], hs.test_loss[:, 0], rtol=1e-5, atol=1e-6)
    assert np.all(np.isnan(hs.test_loss[:, 1]))


def test_task2_changes_task1_when_weighted():
    hm = mtjax.simulate(tiny("paper"), mtjax.Seeds.same(3))
    hs = mtjax.simulate(tiny("paper", single_task=True), mtjax.Seeds.same(3))
    assert np.abs(np.asarray(hm.test_loss[1:, 0] - hs.test_loss[1:, 0])).max() > 1e-4


def test_alternation_multiplicity_and_clock():
    e = tiny("paper", n_train=[32, 96], n_pool=[32, 96])
    assert e.train.task_multiplicity == (1, 3)
    assert e.train.steps_per_epoch == 2
    h = mtjax.simulate(e, mtjax.Seeds.same(0))
    np.testing.assert_array_equal(h.step, np.arange(e.train.n_evals) * 2 * 2)  # eval_every=2 epochs x 2 steps
    # The theory's horizon is the simulation's last clock time (task-1 steps only).
    np.testing.assert_allclose(e.train.t_max, h.time[-1], rtol=1e-6)
    # The paper's 2000 epochs at n = 800: ceil(800 / 128) = 7 steps per epoch at lr 1e-3.
    np.testing.assert_allclose(mtjax.paper(n_train=800).train.t_max, 14.0, rtol=1e-6)


def test_vmapped_equals_per_run():
    e = tiny("paper")
    n = 3
    seeds = mtjax.Seeds(jnp.arange(n), jnp.arange(n) + 10, jnp.arange(n) + 20, jnp.arange(n) + 30)
    r = jnp.array([0.0, 0.5, 1.0])
    sb = jnp.array([0.1, 1.0, 5.0])

    def with_params(r_, sb_):
        ee = replace(e, lambda m: m.teacher.relatedness, jnp.full((1,), r_))
        return replace(ee, lambda m: m.teacher.scale, jnp.stack([jnp.asarray(3.0), sb_]))

    batch = eqx.filter_vmap(with_params)(r, sb)
    hb = mtjax.simulate_batch(batch, seeds)
    for i in range(n):
        hi = mtjax.simulate(with_params(r[i], sb[i]), jax.tree_util.tree_map(lambda a: a[i], seeds))
        assert tree_allclose(jax.tree_util.tree_map(lambda a: a[i], hb), hi, rtol=1e-5, atol=1e-5)


def test_full_batch_vmappable_data_size():
    # Masking n_train_active must equal training on that many examples.
    # Both draw their subset as the first entries of the same permutation of a 32-example pool.
    big = tiny("full_batch", n_train=[32, 32], n_pool=[32, 32], n_train_active=[20, 32])
    small = tiny("full_batch", n_train=[20, 32], n_pool=[32, 32])
    h_masked = mtjax.simulate(big, mtjax.Seeds.same(0))
    h_small = mtjax.simulate(small, mtjax.Seeds.same(0))
    np.testing.assert_allclose(h_masked.test_loss, h_small.test_loss, rtol=1e-5)
    np.testing.assert_allclose(h_masked.train_loss, h_small.train_loss, rtol=1e-5)
    with pytest.raises(ValueError, match="n_train_active"):
        tiny("paper", n_train_active=[20, 32])
