"""Generator statistics and conventions. Tolerances: 5 binomial / sampling standard errors."""

import math

import jax
import numpy as np
import pytest

import mtjax


@pytest.mark.parametrize("r", [-0.6, 0.0, 0.3, 1.0])
def test_subspace_overlap_equals_relatedness(key, r):
    cfg = mtjax.TeacherConfig(30, 4, 5, relatedness=r, scale=[1.0, 2.0])
    t = mtjax.Teacher.sample(cfg, key=key)
    np.testing.assert_allclose(t.U[0] @ t.U[1].T, r * np.eye(4), atol=1e-5)
    for k in range(2):
        np.testing.assert_allclose(t.U[k] @ t.U[k].T, np.eye(4), atol=1e-5)
        np.testing.assert_allclose(t.w[k].T @ t.w[k], np.eye(4), atol=1e-5)


def test_three_tasks_pairwise_overlaps(key):
    cfg = mtjax.TeacherConfig(30, 3, 3, relatedness=[0.5, 0.8], scale=[1.0, 1.0, 1.0])
    t = mtjax.Teacher.sample(cfg, key=key)
    np.testing.assert_allclose(t.U[0] @ t.U[2].T, 0.8 * np.eye(3), atol=1e-5)
    np.testing.assert_allclose(t.U[1] @ t.U[2].T, 0.4 * np.eye(3), atol=1e-5)


def test_readout_alignment(key):
    t1 = mtjax.Teacher.sample(mtjax.TeacherConfig(20, 3, 4, readout_alignment=1.0), key=key)
    np.testing.assert_allclose(t1.w[1], t1.w[0], atol=1e-5)
    t0 = mtjax.Teacher.sample(mtjax.TeacherConfig(20, 3, 4, readout_alignment=0.0), key=key)
    assert np.abs(t0.w[1] - t0.w[0]).max() > 0.1
    np.testing.assert_allclose(t0.w[0], t1.w[0])  # same draw, only task 2's readout changes


def test_class_balance_uniform_when_rank_equals_classes(key):
    # R = C: z = s w u with w orthogonal and u ~ N(0, I) is isotropic, so argmax is uniform.
    cfg = mtjax.TeacherConfig(20, 4, 4, scale=2.0, noise=0.0)
    t = mtjax.Teacher.sample(cfg, key=key)
    n = 40000
    x = mtjax.sample_inputs(jax.random.key(1), n, 20)
    y = np.asarray(t.label(x, 0, key=jax.random.key(2)))
    counts = np.bincount(y, minlength=4)
    chi2 = ((counts - n / 4) ** 2 / (n / 4)).sum()
    assert chi2 < 16.27  # chi-square(3 dof) 0.999 quantile


def test_logit_noise_level_closed_form(key):
    # R = 1, C = 2: the label flips when the noise difference (std sqrt(2) sigma) beats the
    # clean margin a u, u ~ N(0,1): P = arctan(sqrt(2) sigma / |a|) / pi.
    s, sigma = 1.0, 0.7
    cfg = mtjax.TeacherConfig(10, 1, 2, scale=s, noise=sigma)
    t = mtjax.Teacher.sample(cfg, key=key)
    n = 40000
    x = mtjax.sample_inputs(jax.random.key(3), n, 10)
    y = np.asarray(t.label(x, 0, key=jax.random.key(4)))
    y0 = np.asarray(t.label(x, 0, key=jax.random.key(4), clean=True))
    a = s * abs(float(t.w[0, 0, 0] - t.w[0, 1, 0]))
    p = math.atan(math.sqrt(2) * sigma / a) / math.pi
    se = math.sqrt(p * (1 - p) / n)
    assert abs((y != y0).mean() - p) < 5 * se


@pytest.mark.parametrize("q", [0.0, 0.5, 1.0])
def test_noisy_fraction_is_exact(key, q):
    # Huge noise randomises the noisy examples: disagreement with clean labels = q (C-1)/C,
    # and the number of noisy examples is exactly floor(q n), so the clean ones never disagree.
    C = 4
    cfg = mtjax.TeacherConfig(20, 4, C, scale=1.0, noise=1e6, noisy_fraction=q)
    t = mtjax.Teacher.sample(cfg, key=key)
    n = 20000
    x = mtjax.sample_inputs(jax.random.key(5), n, 20)
    dis = np.asarray(t.label(x, 0, key=jax.random.key(6))) != np.asarray(t.label(x, 0, key=key, clean=True))
    p = q * (C - 1) / C
    assert abs(dis.mean() - p) < 5 * math.sqrt(max(p * (1 - p), 1e-12) / n) + 1e-12


def test_label_flip_rate(key):
    C, eps = 5, 0.3
    cfg = mtjax.TeacherConfig(20, 3, C, scale=1.0, noise=0.0, flip=eps)
    t = mtjax.Teacher.sample(cfg, key=key)
    n = 40000
    x = mtjax.sample_inputs(jax.random.key(7), n, 20)
    dis = (np.asarray(t.label(x, 0, key=jax.random.key(8))) != np.asarray(t.label(x, 0, key=key, clean=True))).mean()
    p = eps * (C - 1) / C  # the replacement class is uniform over all C, as in the authors' code
    assert abs(dis - p) < 5 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(relatedness=1.5), "relatedness"),
        (dict(scale=-1.0), "scale"),
        (dict(noise=-0.1), "noise"),
        (dict(flip=1.2), "flip"),
        (dict(noisy_fraction=-0.1), "noisy_fraction"),
        (dict(n_features=10, rank=6), "rank"),
        (dict(n_classes=3, rank=4), "n_classes"),
        (dict(n_classes=1, rank=1), "n_classes"),
        (dict(scale=[1.0, 2.0, 3.0], n_tasks=2), "scale"),
    ],
)
def test_config_validation(kwargs, name):
    base = dict(n_features=40, rank=4, n_classes=4)
    base.update(kwargs)
    with pytest.raises(ValueError, match=name):
        mtjax.TeacherConfig(**base)


def test_paper_preset_conventions():
    e = mtjax.paper(n_train=400)
    t, s, tr = e.teacher, e.student, e.train
    assert (t.n_features, t.rank, t.n_classes, t.n_tasks) == (100, 10, 10, 2)
    np.testing.assert_allclose(t.noise, [0.1, 0.1])
    np.testing.assert_allclose(t.noisy_fraction, [0.5, 0.5])  # --clean_validation quirk
    assert (s.depth, s.width, s.activation, s.use_bias, s.init, s.bias_init) == (2, 64, "linear", True, "orthogonal", "torch")
    assert (tr.protocol, tr.batch_size, tr.n_epochs, tr.n_test, tr.optimizer) == ("paper", 128, 2000, 3200, "sgd")
    assert tr.n_pool == (3200, 3200) and tr.n_train == (400, 400)
    np.testing.assert_allclose(tr.learning_rate, 1e-3)
    assert mtjax.paper(n_train=100, n_train_b=400).train.task_multiplicity == (1, 4)
    assert mtjax.paper(n_train=6400).train.n_pool[0] == 6400


def test_paper_dataset_noisy_half_exact():
    # In the preset exactly half of each generated set (pool + validation) is noisy.
    e = mtjax.experiment_from_spec({"preset": "paper", "teacher": {"noise": 1e6}, "train": {"n_train": [100, 100]}})
    seeds = mtjax.Seeds(0)
    t = mtjax.Teacher.sample(e.teacher, key=seeds.key("teacher"))
    inputs = mtjax.make_inputs(e, key=seeds.key("data"))
    assert inputs[0].shape == (6400, 100)
    data = mtjax.make_datasets(t, e.train, inputs, key=seeds.key("data"))
    y = np.concatenate([data[0].y_pool, data[0].y_test])
    y0 = np.asarray(t.label(inputs[0], 0, key=seeds.key("data"), clean=True))
    dis = (y != y0).mean()
    p = 0.5 * 9 / 10
    assert abs(dis - p) < 5 * math.sqrt(0.5 * 0.9 * 0.1 / 6400)
