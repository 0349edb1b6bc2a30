"""Population theory of nonlinear trunks: the reduction, the label average, derivatives, and
theory = simulation (docs/theory.md §5.2)."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mtjax
from mtjax._gaussian import sobol_normals, teacher_constants
from mtjax._population import PopulationSolver, population_metrics, population_theory, population_vector_field, reduce_student
from mtjax._population_nonlinear import label_model, label_probabilities, nonlinear_metrics, nonlinear_vector_field
from mtjax._teacher import teacher_coefficients
from helpers import replace


def _teacher(N=16, R=3, **kw):
    cfg = mtjax.TeacherConfig(N, R, R, **{"scale": [1.5, 2.5], "relatedness": 0.5, "noise": 0.8, "flip": [0.1, 0.0],
                                          "noisy_fraction": [1.0, 0.5], **kw})
    return mtjax.Teacher.sample(cfg, key=jax.random.key(0))


def _reduced_T(teacher, reduced):
    Dp = reduced.layers[0].weight.shape[1]
    T = teacher_coefficients(teacher.config)
    return jnp.pad(T, ((0, 0), (0, 0), (0, Dp - T.shape[2])))


def test_label_probabilities_match_the_label_generator():
    # π(u) = E[e_y | u] of the mixture (logit noise on a fraction q, flips ε): its mean over inputs
    # must be the generator's class frequencies, and its correlation with u the generator's Λ.
    t = _teacher()
    n = 50_000
    x = mtjax.sample_inputs(jax.random.key(1), n, 16)
    for k in range(2):
        y = t.label(x, k, key=jax.random.key(2 + k))
        e = jax.nn.one_hot(y, 3)
        u = x @ t.U[k].T
        cfg = t.config
        pi = label_probabilities(u, t.w[k], cfg.scale[k], cfg.noise[k], cfg.flip[k], cfg.noisy_fraction[k])
        np.testing.assert_allclose(pi.sum(-1), 1.0, atol=1e-5)
        # Same inputs: the difference e − π has mean zero given u, variance <= 1/4 per entry.
        tol = 5 * math.sqrt(0.25 / n)
        assert np.abs(np.asarray((e - pi).mean(0))).max() < tol
        assert np.abs(np.asarray((e - pi).T @ u / n)).max() < 2 * tol


@pytest.mark.parametrize("activation, depth", [("relu", 1), ("tanh", 2)])
def test_reduced_field_equals_the_full_population_gradient(activation, depth):
    # The N-dimensional network's population gradient (autodiff of the cross-entropy on 2^18 fresh
    # examples labelled by the generator itself) must be the reduced flow's field lifted back
    # (W = Ω E + F Qᵀ): the first layer's gradient has no component outside span{W₁, U}
    # (Stein's lemma), and every other weight moves as in the reduced network.
    t = _teacher()
    st = mtjax.Student.init(mtjax.StudentConfig(depth=depth, width=4, activation=activation, init_scale=1.3), 16, 3, 2,
                            key=jax.random.key(1))
    rho = jnp.array([1.0, 0.6])
    red = reduce_student(st, t.basis)
    T = _reduced_T(t, red)
    pts = sobol_normals(2**16, T.shape[1] + T.shape[2], seed=3)
    field = jax.jit(lambda s: nonlinear_vector_field(s, label_model(t), T, rho, pts, (0, 1)))(red)
    lifted = mtjax.lift_student(field, st, t.basis)

    def chunk_grad(key):
        kx, ky = jax.random.split(key)
        x = mtjax.sample_inputs(kx, 2**14, 16)
        loss = lambda s: sum(rho[k] * mtjax.cross_entropy(s(x, k), t.label(x, k, key=jax.random.fold_in(ky, k)))
                             for k in range(2))
        return jax.grad(loss)(st)

    grads = jax.lax.map(chunk_grad, jax.random.split(jax.random.key(7), 16))
    mean = jax.tree_util.tree_map(lambda g: -g.mean(0), grads)
    se = jax.tree_util.tree_map(lambda g: g.std(0, ddof=1) / 4.0, grads)
    for f, m, s in zip(jax.tree_util.tree_leaves(lifted), jax.tree_util.tree_leaves(mean), jax.tree_util.tree_leaves(se)):
        z = np.abs(np.asarray(f - m)) / (np.asarray(s) + 1e-4)
        assert z.max() < 5.0, (z.max(), f, m)
    # The field is not trivially small: the check above has power.
    assert float(jnp.abs(lifted.layers[0].weight).max()) > 20 * float(se.layers[0].weight.max())


def test_nonlinear_machinery_on_a_linear_student_equals_the_closed_form():
    # The reduced-input quadrature with label averages, applied to a linear trunk, must give the
    # linear theory's Stein field and its test loss (independent constructions of one flow).
    t = _teacher()
    st = mtjax.Student.init(mtjax.StudentConfig(depth=1, width=5, init_scale=1.5), 16, 3, 2, key=jax.random.key(2))
    red = reduce_student(st, t.basis)
    T = _reduced_T(t, red)
    rho = jnp.array([1.0, 0.5])
    pts = sobol_normals(2**15, T.shape[1] + T.shape[2], seed=4)
    f_nl = jax.jit(lambda r: nonlinear_vector_field(r, label_model(t), T, rho, pts, (0, 1)))(red)
    consts = teacher_constants(t)
    f_lin = population_vector_field(red, consts, T, rho, sobol_normals(2**15, 3, seed=5), (0, 1))
    for a, b in zip(jax.tree_util.tree_leaves(f_nl), jax.tree_util.tree_leaves(f_lin)):
        np.testing.assert_allclose(a, b, atol=2e-3)
    loss_nl = jax.jit(lambda r: nonlinear_metrics(r, label_model(t), T, pts, (0, 1), 2)[0])(red)
    xe = sobol_normals(2**15, 3 + 6, seed=6)
    loss_lin = population_metrics(red, t, consts, T, xe[:, :6], xe[:, 6:], (0, 1))[0]
    np.testing.assert_allclose(loss_nl, loss_lin, atol=3e-3)


def _spec(activation="relu", **train):
    tr = {"protocol": "online", "n_steps": 400, "eval_every": 100, "learning_rate": 0.01, "batch_size": 512, "n_test": 20000}
    tr.update(train)
    return {
        "seed_scope": "train",
        "teacher": {"n_features": 60, "rank": 3, "n_classes": 3, "scale": [3.0, 2.0], "relatedness": 0.5, "noise": 0.3},
        "student": {"depth": 1, "width": 6, "activation": activation},
        "train": tr,
    }


SOLVER = PopulationSolver(n_quad=512, n_quad_eval=4096, n_substeps=4, dt_max=1.0)


@pytest.mark.parametrize("activation, h, rtol", [("tanh", 0.02, 0.02), ("relu", 0.05, 0.1)])
def test_theory_is_differentiable_in_r_s_and_sigma(activation, h, rtol):
    # The label average makes the flow smooth in the teacher: jax.grad = central differences.
    # relu: the flow of a point average is only piecewise smooth (points cross the kink), so its
    # central differences are rough on steps below ~0.05 (r: -0.082 at h = 0.02, -0.038 at 0.05),
    # and autodiff needs the kernel relu'' (`theory_relu`; without it -0.031 against -0.066).
    spec = _spec(activation, n_steps=300, eval_every=100, learning_rate=0.04)
    spec["teacher"]["scale"] = [1.0, 4.0]
    e = mtjax.experiment_from_spec(spec)

    def final_loss(p):
        r, sb, sig = p
        ee = replace(e, lambda m: m.teacher.relatedness, r[None])
        ee = eqx.tree_at(lambda m: (m.teacher.scale, m.teacher.noise), ee,
                         (jnp.stack([jnp.asarray(1.0), sb]), jnp.stack([sig, sig])))
        th = population_theory(ee, mtjax.Seeds(0), solver=SOLVER)
        return th.test_loss[-1, 0] + th.test_loss[-1, 1]

    p = jnp.array([0.5, 3.0, 1.5])
    g = eqx.filter_jit(jax.grad(final_loss))(p)
    f = eqx.filter_jit(final_loss)
    for i in range(3):
        d = jnp.zeros(3).at[i].set(h)
        fd = (f(p + d) - f(p - d)) / (2 * h)
        assert abs(float(fd) - float(g[i])) < rtol * abs(float(g[i])) + 3e-4, (i, fd, g)
    assert np.abs(np.asarray(g)).min() > 1e-2  # every parameter moves the loss


def test_theory_vmapped_equals_looped():
    e = mtjax.experiment_from_spec(_spec("tanh", n_steps=200, eval_every=100))
    rs = jnp.array([0.0, 1.0])
    f = eqx.filter_jit(lambda r: population_theory(replace(e, lambda m: m.teacher.relatedness, r[None]), mtjax.Seeds(0),
                                                   solver=SOLVER).test_loss)
    batched = jax.vmap(f)(rs)
    for i in range(2):
        np.testing.assert_allclose(batched[i], f(rs[i]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("activation", ["relu"])
def test_theory_equals_online_simulation_on_the_same_test_set(activation):
    # The theory's network (the lifted reduced state) on the simulation's own test set, against
    # four online runs that share teacher, test set and initial student (seed scope "train").
    e = mtjax.experiment_from_spec(_spec(activation, learning_rate=0.005, n_steps=800, eval_every=200))
    seeds = mtjax.Seeds(jnp.zeros(4, int), jnp.zeros(4, int), jnp.zeros(4, int), jnp.arange(4))
    batch = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (4,) + a.shape), e)
    sims = eqx.filter_jit(lambda s: mtjax.simulate_batch(batch, s))(seeds)
    th = eqx.filter_jit(population_theory)(e, mtjax.Seeds(0), solver=PopulationSolver(n_quad=1024, n_quad_eval=8192),
                                           save_states=True)
    assert bool(th.success) and not bool(th.diverged)
    teacher = mtjax.Teacher.sample(e.teacher, key=mtjax.Seeds(0).key("teacher"))
    data = mtjax.make_datasets(teacher, e.train, mtjax.make_inputs(e, key=mtjax.Seeds(0).key("data")),
                               key=mtjax.Seeds(0).key("data"))
    st0 = mtjax.Student.init(e.student, 60, 3, 2, key=mtjax.Seeds(0).key("init"))

    def on_test_set(state):
        net = mtjax.lift_student(state, st0, teacher.basis)
        return jnp.stack([mtjax.cross_entropy(net(d.x_test, k), d.y_test) for k, d in enumerate(data)])

    theory = np.asarray(jax.lax.map(on_test_set, th.states))
    mean = np.asarray(sims.test_loss.mean(0))
    se = np.asarray(sims.test_loss.std(0, ddof=1)) / 2
    assert np.all(np.abs(theory - mean) < 4 * se + 2e-3), (theory, mean, se)
    # The loss moved (the comparison is not of two initial conditions), and the quadrature
    # reading agrees within its own error (independent points) plus the test set's.
    assert float(mean[0, 0] - mean[-1, 0]) > 0.05
    assert np.all(np.abs(np.asarray(th.test_loss) - theory) < 4 * np.asarray(th.test_loss_se) + 0.015)


def test_new_activations_in_simulation():
    x = jnp.linspace(-3.0, 3.0, 13)
    for name, ref in [("tanh", np.tanh), ("erf", jax.scipy.special.erf),
                      ("gelu", lambda v: 0.5 * v * (1 + jax.scipy.special.erf(v / math.sqrt(2))))]:
        st = mtjax.Student.init(mtjax.StudentConfig(depth=1, width=13, activation=name, use_bias=False), 13, 3, 1,
                                key=jax.random.key(0))
        st = eqx.tree_at(lambda s: s.layers[0].weight, st, jnp.eye(13))
        np.testing.assert_allclose(st.features(x), ref(x), atol=1e-6)
    h = eqx.filter_jit(mtjax.simulate)(mtjax.experiment_from_spec(_spec("erf", n_steps=100, eval_every=50)), mtjax.Seeds(0))
    assert np.all(np.isfinite(np.asarray(h.test_loss))) and not bool(h.diverged)


def test_fit_through_the_nonlinear_theory_recovers_relatedness():
    # `fit_table` on online relu simulations (3 seeds) picks the population theory (online runs)
    # and fits r through the nonlinear flow: measured 0.601 for a true 0.6 from a start at 0.3.
    spec = _spec(n_steps=400, eval_every=50, learning_rate=0.02, n_test=8000)
    spec["teacher"]["relatedness"] = 0.6
    e = mtjax.experiment_from_spec(spec)
    sim = mtjax.sweep(spec, {"seed": [0, 1, 2]}, out_dir=None, progress=False)
    fr, _ = mtjax.fit_table(e, sim.curves, [mtjax.Param("relatedness", init=0.3)],
                            solver=PopulationSolver(n_quad=512, n_quad_eval=4096, dt_max=1.0), n_starts=1, n_adam=0, n_newton=6)
    r = float(fr.table().set_index("param").loc["relatedness", "value"])
    assert abs(r - 0.6) < 0.05, r
