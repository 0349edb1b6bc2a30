"""Training loops (optax inside `lax.scan`) and the per-run `History`.

One run is a pure function of an `Experiment` and `Seeds`; `jax.vmap` over both gives a
sweep (see `_sweep.py`).  Shapes depend only on static config fields.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ._custom_types import Array, Bool, Float, Int, PRNGKeyArray
from ._experiment import Experiment, Seeds, TrainConfig
from ._student import Student
from ._teacher import Teacher, sample_inputs


class TaskData(eqx.Module):
    """One task's data. `x_pool`: (n_pool, N), `y_pool`: (n_pool,), `x_test`: (n_test, N), `y_test`: (n_test,).

    For the online protocol the pool is empty (n_pool = 0)."""

    x_pool: Float[Array, "n_pool N"]
    y_pool: Int[Array, " n_pool"]
    x_test: Float[Array, "n_test N"]
    y_test: Int[Array, " n_test"]


class History(eqx.Module):
    """Metrics of one run (add leading axes for a batch of runs).

    **Fields:**

    - `step`: (T,) clock steps at the evaluations (task-1 steps for the paper protocol).
    - `time`: (T,) t = learning_rate × step.
    - `train_loss`, `test_loss`: (T, K) mean cross-entropy in nats on the training set / test set
      (NaN for tasks not trained; `train_loss` is NaN for the online protocol, which has no training set).
    - `test_loss_se`: (T, K) standard error (nats) of `test_loss` from the finite test set
      (std of the per-example loss / sqrt(n_test)); for theory, the quadrature's error estimate.
    - `test_acc`: (T, K) test accuracy in [0, 1].
    - `diverged`: () True if any recorded loss of a trained task is NaN or inf.
    """

    step: Int[Array, " T"]
    time: Float[Array, " T"]
    train_loss: Float[Array, "T K"]
    test_loss: Float[Array, "T K"]
    test_loss_se: Float[Array, "T K"]
    test_acc: Float[Array, "T K"]
    diverged: Bool[Array, ""]

    @property
    def early_stopped_loss(self) -> Float[Array, "... K"]:
        """min over evaluations of the test loss; NaN for diverged runs (never silently averaged)."""
        return early_stopped_loss(self.test_loss, self.diverged)

    @property
    def early_stopped_step(self) -> Int[Array, "... K"]:
        """Clock step of the early-stopped minimum (-1 for diverged runs)."""
        return jnp.where(self.diverged[..., None], -1, at_minimum(self.step, self.test_loss))

    @property
    def final_loss(self) -> Float[Array, "... K"]:
        """Test loss at the last evaluation (NaN for diverged runs)."""
        return jnp.where(self.diverged[..., None], jnp.nan, self.test_loss[..., -1, :])


def early_stopped_loss(test_loss: Float[Array, "... T K"], diverged: Bool[Array, "..."]) -> Float[Array, "... K"]:
    """min over times of the test loss; NaN for diverged runs/points (never silently averaged).
    Shared by simulation (`History`) and theory results."""
    return jnp.where(diverged[..., None], jnp.nan, jnp.min(test_loss, axis=-2))


def at_minimum(values: Array, test_loss: Float[Array, "... T K"]) -> Array:
    """`values` (..., T) (times or steps) at each task's test-loss minimum, NaNs skipped: (..., K)."""
    i = jnp.argmin(jnp.where(jnp.isnan(test_loss), jnp.inf, test_loss), axis=-2)
    v = jnp.broadcast_to(values[..., :, None], test_loss.shape)
    return jnp.take_along_axis(v, i[..., None, :], axis=-2)[..., 0, :]


def cross_entropy(
    logits: Float[Array, "n C"], y: Int[Array, " n"], weight: Float[Array, " n"] | None = None
) -> Float[Array, ""]:
    """Mean softmax cross-entropy (nats); with `weight`, the weighted mean Σ w_i ℓ_i / Σ w_i."""
    lse = jax.nn.logsumexp(logits, axis=-1)
    ll = lse - jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0]
    if weight is None:
        return jnp.mean(ll)
    return jnp.sum(weight * ll) / jnp.maximum(jnp.sum(weight), 1.0)


def accuracy(logits: Float[Array, "n C"], y: Int[Array, " n"]) -> Float[Array, ""]:
    return jnp.mean(jnp.argmax(logits, axis=-1) == y)


def make_inputs(experiment: Experiment, *, key: PRNGKeyArray) -> tuple[Float[Array, "n N"], ...]:
    """Inputs of every task's pool + test set, shape (n_pool_k + n_test, N) per task.

    Separate from the labels so that runs sharing a data seed can share one copy (the sweep
    passes it unbatched to `jax.vmap`)."""
    cfg = experiment.train
    N = experiment.teacher.n_features
    pool = cfg.n_pool if cfg.protocol != "online" else (0,) * cfg.n_tasks
    keys = jax.random.split(jax.random.fold_in(key, 0), cfg.n_tasks)
    return tuple(sample_inputs(keys[k], pool[k] + cfg.n_test, N) for k in range(cfg.n_tasks))


def make_datasets(
    teacher: Teacher, cfg: TrainConfig, inputs: tuple[Float[Array, "n N"], ...], *, key: PRNGKeyArray
) -> tuple[TaskData, ...]:
    """Label every task's inputs. The first n_pool rows form the training pool, the rest the test set.

    Labels of pool and test set are drawn together, so the noisy fraction q is exact over the
    whole generated set, as in the authors' generator."""
    keys = jax.random.split(jax.random.fold_in(key, 1), 2 * cfg.n_tasks)
    out = []
    for k, x in enumerate(inputs):
        n_pool = x.shape[0] - cfg.n_test
        y = teacher.label(x, k, key=keys[2 * k])
        y_test = y[n_pool:]
        if cfg.clean_test:
            y_test = teacher.label(x[n_pool:], k, key=keys[2 * k + 1], clean=True)
        out.append(TaskData(x[:n_pool], y[:n_pool], x[n_pool:], y_test))
    return tuple(out)


def _batches(key: PRNGKeyArray, n: int, batch: int) -> tuple[Int[Array, "nb B"], Float[Array, "nb B"]]:
    """A reshuffled epoch of `n` examples in minibatches of `batch` (last one partial, masked)."""
    nb = -(-n // batch)
    perm = jax.random.permutation(key, n)
    idx = jnp.concatenate([perm, jnp.zeros(nb * batch - n, perm.dtype)]).reshape(nb, batch)
    mask = (jnp.arange(nb * batch) < n).astype(float).reshape(nb, batch)
    return idx, mask


def _evaluate(student: Student, data, subsets, cfg: TrainConfig, shared_subsets: bool = False):
    """(train_loss, test_loss, test_loss_se, test_acc), each (K,), NaN for untrained tasks."""
    nan = jnp.array(jnp.nan)
    tr, te, se, acc = [], [], [], []
    for k in range(cfg.n_tasks):
        if k not in cfg.active_tasks:
            tr.append(nan), te.append(nan), se.append(nan), acc.append(nan)
            continue
        d = data[k]
        if subsets is None:
            tr.append(nan)
        else:
            if shared_subsets:
                # Subset shared by the chunk: gather once, then one large matmul over the runs.
                lp = student.logits(d.x_pool[subsets[k]], k)
            else:
                # Logits of the whole pool then a gather: when the pool is shared by a vmapped
                # chunk this is one large matmul instead of a per-run gather of inputs.
                lp = student.logits(d.x_pool, k)[subsets[k]]
            w = (jnp.arange(cfg.n_train[k]) < cfg.n_train_active[k]).astype(float)
            tr.append(cross_entropy(lp, d.y_pool[subsets[k]], w))
        lt = student.logits(d.x_test, k)
        ll = jax.nn.logsumexp(lt, axis=-1) - jnp.take_along_axis(lt, d.y_test[:, None], axis=-1)[:, 0]
        te.append(jnp.mean(ll))
        se.append(jnp.std(ll) / jnp.sqrt(ll.shape[0]))
        acc.append(accuracy(lt, d.y_test))
    return jnp.stack(tr), jnp.stack(te), jnp.stack(se), jnp.stack(acc)


def _record(cfg, evals) -> History:
    tr, te, se, acc = evals
    step = jnp.asarray(cfg.eval_steps)
    active = jnp.asarray([k in cfg.active_tasks for k in range(cfg.n_tasks)])
    diverged = ~jnp.all(jnp.where(active, jnp.isfinite(te), True))
    if cfg.protocol != "online":
        diverged = diverged | ~jnp.all(jnp.where(active, jnp.isfinite(tr), True))
    return History(step, cfg.learning_rate * step, tr, te, se, acc, diverged)


def _scan_evals(block, carry, evaluate, cfg):
    """Evaluate at step 0 and after each of the n_evals-1 blocks of `eval_every` units."""
    first = evaluate(carry)

    def body(carry, i):
        carry = block(carry, i)
        return carry, evaluate(carry)

    _, rest = jax.lax.scan(body, carry, jnp.arange(cfg.n_evals - 1))
    return jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a[None], b]), first, rest)


def _train_paper(student, data, subsets, cfg: TrainConfig, key, shared_subsets: bool = False) -> History:
    opt = cfg.make_optimizer()
    B = cfg.batch_size
    m = cfg.task_multiplicity
    nb = [-(-n // B) for n in cfg.n_train]
    task_keys = jax.random.split(key, cfg.n_tasks)
    carry0 = (student, opt.init(student.layers), tuple(opt.init(h) for h in student.heads))

    def step(carry, idx, mask, k):
        st, tstate, hstates = carry
        rows = subsets[k][idx]
        xb, yb = data[k].x_pool[rows], data[k].y_pool[rows]

        def loss_fn(layers, head):
            s = eqx.tree_at(lambda s: (s.layers, s.heads[k]), st, (layers, head))
            return cfg.task_weights[k] * cross_entropy(s.logits(xb, k), yb, mask)

        gl, gh = jax.grad(loss_fn, argnums=(0, 1))(st.layers, st.heads[k])
        ul, tstate = opt.update(gl, tstate, st.layers)
        uh, hk = opt.update(gh, hstates[k], st.heads[k])
        st = eqx.tree_at(
            lambda s: (s.layers, s.heads[k]),
            st,
            (optax.apply_updates(st.layers, ul), optax.apply_updates(st.heads[k], uh)),
        )
        return st, tstate, hstates[:k] + (hk,) + hstates[k + 1 :]

    def epoch(carry, e):
        idx1, mask1 = _batches(jax.random.fold_in(task_keys[0], e), cfg.n_train[0], B)
        # Task k >= 2 draws from its own stream, reshuffled whenever it is exhausted; this
        # epoch consumes its global steps [e·nb1·m_k, (e+1)·nb1·m_k), which span at most
        # n_e of its epochs, so precompute just those shuffles.
        tables = {}
        for k in cfg.active_tasks[1:]:
            per = nb[0] * m[k]
            n_e = -(-per // nb[k]) + 1
            e0 = (e * per) // nb[k]
            ks = jax.vmap(lambda j: jax.random.fold_in(task_keys[k], j))(e0 + jnp.arange(n_e))
            tables[k] = (e0, jax.vmap(lambda kk: _batches(kk, cfg.n_train[k], B))(ks))

        def batch_body(carry, xs):
            b, idx, mask = xs
            carry = step(carry, idx, mask, 0)
            for k in cfg.active_tasks[1:]:
                e0, (idxk, maskk) = tables[k]

                def inner(carry, i, k=k, e0=e0, idxk=idxk, maskk=maskk):
                    g = (e * nb[0] + b) * m[k] + i
                    ee, bb = g // nb[k] - e0, g % nb[k]
                    return step(carry, idxk[ee, bb], maskk[ee, bb], k), None

                carry, _ = jax.lax.scan(inner, carry, jnp.arange(m[k]))
            return carry, None

        carry, _ = jax.lax.scan(batch_body, carry, (jnp.arange(nb[0]), idx1, mask1))
        return carry

    def block(carry, i):
        def body(c, j):
            return epoch(c, i * cfg.eval_every + j), None

        return jax.lax.scan(body, carry, jnp.arange(cfg.eval_every))[0]

    evals = _scan_evals(block, carry0, lambda c: _evaluate(c[0], data, subsets, cfg, shared_subsets), cfg)
    return _record(cfg, evals)


def _train_full_batch(student, data, subsets, cfg: TrainConfig, key, shared_subsets: bool = False) -> History:
    del key  # deterministic given the data
    opt = cfg.make_optimizer()
    train = [(data[k].x_pool[subsets[k]], data[k].y_pool[subsets[k]]) for k in range(cfg.n_tasks)]
    weights = [(jnp.arange(cfg.n_train[k]) < cfg.n_train_active[k]).astype(float) for k in range(cfg.n_tasks)]

    def loss_fn(st):
        return sum(
            cfg.task_weights[k] * cross_entropy(st.logits(train[k][0], k), train[k][1], weights[k])
            for k in cfg.active_tasks
        )

    def block(carry, i):
        def body(c, _):
            st, state = c
            g = jax.grad(loss_fn)(st)
            u, state = opt.update(g, state, st)
            return (optax.apply_updates(st, u), state), None

        return jax.lax.scan(body, carry, None, length=cfg.eval_every)[0]

    carry0 = (student, opt.init(student))
    evals = _scan_evals(block, carry0, lambda c: _evaluate(c[0], data, subsets, cfg, shared_subsets), cfg)
    return _record(cfg, evals)


def _train_online(student, teacher, data, cfg: TrainConfig, key) -> History:
    opt = cfg.make_optimizer()
    N = teacher.config.n_features

    def loss_fn(st, t):
        total = 0.0
        for k in cfg.active_tasks:
            kx, ky = jax.random.split(jax.random.fold_in(jax.random.fold_in(key, t), k))
            x = sample_inputs(kx, cfg.batch_size, N)
            y = teacher.label(x, k, key=ky)
            total = total + cfg.task_weights[k] * cross_entropy(st.logits(x, k), y)
        return total

    def block(carry, i):
        def body(c, j):
            st, state = c
            g = jax.grad(loss_fn)(st, i * cfg.eval_every + j)
            u, state = opt.update(g, state, st)
            return (optax.apply_updates(st, u), state), None

        return jax.lax.scan(body, carry, jnp.arange(cfg.eval_every))[0]

    carry0 = (student, opt.init(student))
    evals = _scan_evals(block, carry0, lambda c: _evaluate(c[0], data, None, cfg), cfg)
    return _record(cfg, evals)


def _check_data_sizes(experiment: Experiment) -> None:
    """Refuse data sizes above the training pool: `apply_axes` sets `train.n_train_active`
    without the constructor's check (the theories read any P), and a simulation would silently
    train on the pool's `n_train` examples. Concrete values only: a traced check
    (`eqx.error_if`) changed the sharded sweep's program in its last bits
    (tests/test_distributed.py), so vmapped callers size the pool themselves."""
    act, pool = experiment.train.n_train_active, experiment.train.n_train
    if not isinstance(act, jax.core.Tracer) and np.any(np.asarray(act) > np.asarray(pool)):
        raise ValueError(f"ntrain / ntrain_b (train.n_train_active) = {np.asarray(act).tolist()} exceed the training "
                         f"pool train.n_train={pool}: the simulation would train on n_train examples only; make "
                         "train.n_train at least the largest data size")


def simulate(
    experiment: Experiment,
    seeds: Seeds,
    inputs: tuple[Float[Array, "n N"], ...] | None = None,
    *,
    student: Student | None = None,
    shared_subsets: bool = False,
) -> History:
    """Train one student on the experiment's teacher data and record its metrics.

    **Arguments:**

    - `experiment`: teacher, student and training configs.
    - `seeds`: the run's `Seeds` (teacher, data, init, train).
    - `inputs`: optional precomputed `make_inputs(experiment, key=seeds.key("data"))`, so that
      runs sharing a data seed share one copy.
    - `student`: optional initial student (else initialised from `seeds.init`).
    - `shared_subsets`: a performance hint for vmapped callers, no effect on results: True
      when every run of the batch has the same data and train seeds and shares `inputs`, so
      the training inputs are gathered once and evaluated in one large matmul over runs.

    **Returns:** a `History` (T evaluations x K tasks).

    Pure and jit/vmap-able: vmap over `experiment` (array fields) and `seeds` for a sweep.
    Data sizes above the pool (`train.n_train_active > train.n_train`) raise only where they are
    concrete; under `jax.jit`/`jax.vmap` they are tracers, so check the concrete experiment with
    `mtjax.Simulation().check(experiment)` before tracing, or the run trains on the pool alone.
    """
    _check_data_sizes(experiment)
    tcfg = experiment.train
    teacher = Teacher.sample(experiment.teacher, key=seeds.key("teacher"))
    if inputs is None:
        inputs = make_inputs(experiment, key=seeds.key("data"))
    data = make_datasets(teacher, tcfg, inputs, key=seeds.key("data"))
    if student is None:
        student = Student.init(
            experiment.student,
            experiment.teacher.n_features,
            experiment.teacher.n_classes,
            experiment.teacher.n_tasks,
            key=seeds.key("init"),
        )
    return train_on_datasets(student, data, tcfg, seeds.key("train"), teacher=teacher, shared_subsets=shared_subsets)


def train_on_datasets(
    student: Student,
    data: tuple[TaskData, ...],
    tcfg: TrainConfig,
    tkey: PRNGKeyArray,
    *,
    teacher: Teacher | None = None,
    subsets: tuple[Int[Array, " n_train"], ...] | None = None,
    shared_subsets: bool = False,
) -> History:
    """The training half of `simulate`: train `student` on given datasets (one `TaskData` per task).

    - `tkey`: the run's train key (`Seeds.key("train")`); it draws the training subsets and the
      minibatch order exactly as `simulate` does.
    - `teacher`: needed by the online protocol only (it draws fresh examples every step).
    - `subsets`: pool indices of each task's training examples (K arrays of n_train); default
      drawn from `tkey`. Given, e.g. to replay another code's subsets on the same data.
    - `shared_subsets`: as in `simulate`.

    **Returns:** a `History`."""
    if tcfg.protocol == "online":
        if teacher is None:
            raise ValueError("the online protocol needs the teacher (teacher=None)")
        return _train_online(student, teacher, data, tcfg, tkey)
    if subsets is None:
        skeys = jax.random.split(jax.random.fold_in(tkey, 10**6), tcfg.n_tasks)
        subsets = tuple(
            jax.random.permutation(skeys[k], tcfg.n_pool[k])[: tcfg.n_train[k]] for k in range(tcfg.n_tasks)
        )
    if tcfg.protocol == "paper":
        return _train_paper(student, data, subsets, tcfg, jax.random.fold_in(tkey, 1), shared_subsets)
    return _train_full_batch(student, data, subsets, tcfg, tkey, shared_subsets)



@eqx.filter_jit
def simulate_batch(
    experiments: Experiment, seeds: Seeds, inputs: tuple[Float[Array, "n N"], ...] | None = None
) -> History:
    """`simulate` vmapped over a leading run axis of `experiments`' array fields and `seeds`.

    `inputs`, if given, is shared by all runs (unbatched)."""
    return eqx.filter_vmap(simulate, in_axes=(0, 0, None))(experiments, seeds, inputs)
