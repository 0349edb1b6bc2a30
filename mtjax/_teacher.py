"""Teacher–student multitask classification data.

Task k (k = 1..K) has a rank-R linear teacher with C classes:

    z̄_k(x) = s_k · w_k U_k x + σ_k ξ,        ξ ~ N(0, I_C) fresh per example
    y_k    = argmax z̄_k, then, with probability ε_k, replaced by a uniform class.

x ~ N(0, I_N).  U_k (R x N) has orthonormal rows, w_k (C x R) orthonormal columns.
Relatedness: U_k = r_k U_1 + sqrt(1 - r_k²) U_k⊥ with all U_k⊥ orthonormal, mutually
orthogonal and orthogonal to U_1 (so U_j U_kᵀ = r_j r_k I for j ≠ k ≥ 2, and = r_k I for j = 1).
The logit noise σ_k ξ is applied to a fraction q_k of the examples of a dataset
(exactly ⌊q_k n⌋ of them, placed at random): q = 1 is plain noisy labels; q = 1/2 is the
authors' ``--clean_validation`` quirk (first half noisy, second half clean, then shuffled).
See docs/theory.md §1 for the conventions and their derivation from the authors' code.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._custom_types import Array, Float, Int, PRNGKeyArray
from ._validation import check_int, check_range


def _as_task_array(name: str, value, n: int) -> Array:
    """Broadcast a scalar or length-`n` sequence to a float array of shape (n,)."""
    arr = jnp.asarray(value, dtype=float)
    if arr.ndim == 0:
        return jnp.broadcast_to(arr, (n,))
    if arr.shape[-1] != n:
        raise ValueError(f"{name} must be a scalar or have {n} entries (one per task), got shape {arr.shape}")
    return arr


class TeacherConfig(eqx.Module):
    """Shapes and physical parameters of a K-task teacher.

    **Arguments:**

    - `n_features`: input dimension N (static).
    - `rank`: teacher rank R (static); needs K·R <= N.
    - `n_classes`: classes C (static); needs C >= R (w_k has orthonormal columns) and C >= 2.
    - `relatedness`: r_k in [-1, 1] for tasks 2..K, shape (K-1,) or scalar (task 1 has r = 1).
    - `scale`: teacher signal scale s_k >= 0, shape (K,) or scalar.
    - `noise`: logit-noise std σ_k >= 0, shape (K,) or scalar. Default 1/sqrt(N) (the paper's).
    - `flip`: label-flip probability ε_k in [0, 1], shape (K,) or scalar.
    - `noisy_fraction`: q_k in [0, 1], fraction of examples that receive logit noise.
    - `readout_alignment`: a_k in [-1, 1] for tasks 2..K: w_k = polar(a_k w_1 + sqrt(1-a_k²) w_k'),
      with w_k' an independent draw. 0 (default) gives the paper's independent readouts, 1 gives w_k = w_1.
    - `n_tasks`: K (static); inferred from `scale` if it has a task axis, else 2.

    Physical parameters are ordinary array fields, so a batch of configs can be `jax.vmap`ped.
    """

    n_features: int = eqx.field(static=True)
    rank: int = eqx.field(static=True)
    n_classes: int = eqx.field(static=True)
    n_tasks: int = eqx.field(static=True)
    relatedness: Float[Array, " K-1"]
    scale: Float[Array, " K"]
    noise: Float[Array, " K"]
    flip: Float[Array, " K"]
    noisy_fraction: Float[Array, " K"]
    readout_alignment: Float[Array, " K-1"]

    def __init__(
        self,
        n_features: int = 100,
        rank: int = 10,
        n_classes: int = 10,
        relatedness=0.0,
        scale=1.0,
        noise=None,
        flip=0.0,
        noisy_fraction=1.0,
        readout_alignment=0.0,
        n_tasks: int | None = None,
    ):
        self.n_features = check_int("n_features", n_features, 1)
        self.rank = check_int("rank", rank, 1)
        self.n_classes = check_int("n_classes", n_classes, 2)
        if n_tasks is None:
            s = np.shape(scale)
            n_tasks = s[-1] if len(s) else 2
        self.n_tasks = K = check_int("n_tasks", n_tasks, 1)
        if K * self.rank > self.n_features:
            raise ValueError(
                f"rank={self.rank} is too large: K·rank = {K * self.rank} must be <= n_features={self.n_features} "
                f"(allowed range of rank: [1, {self.n_features // K}]), so that every task has its own orthogonal complement"
            )
        if self.n_classes < self.rank:
            raise ValueError(
                f"n_classes={self.n_classes} < rank={self.rank}: the readout w_k (C x R) needs orthonormal columns, "
                f"so n_classes must be in [rank, inf) = [{self.rank}, inf)"
            )
        if noise is None:
            noise = 1.0 / np.sqrt(self.n_features)
        check_range("relatedness", relatedness, -1.0, 1.0)
        check_range("scale", scale, 0.0)
        check_range("noise", noise, 0.0)
        check_range("flip", flip, 0.0, 1.0)
        check_range("noisy_fraction", noisy_fraction, 0.0, 1.0)
        check_range("readout_alignment", readout_alignment, -1.0, 1.0)
        self.relatedness = _as_task_array("relatedness", relatedness, K - 1)
        self.scale = _as_task_array("scale", scale, K)
        self.noise = _as_task_array("noise", noise, K)
        self.flip = _as_task_array("flip", flip, K)
        self.noisy_fraction = _as_task_array("noisy_fraction", noisy_fraction, K)
        self.readout_alignment = _as_task_array("readout_alignment", readout_alignment, K - 1)


def orthonormal_rows(key: PRNGKeyArray, n_rows: int, n_cols: int) -> Float[Array, "n_rows n_cols"]:
    """A Haar-random matrix with orthonormal rows (n_rows <= n_cols), like `torch.nn.init.orthogonal_`.

    Gram–Schmidt (each projection applied twice, "CGS2", for orthogonality to rounding) of
    Gaussian rows, which is Haar-distributed on the Stiefel manifold.  Written with plain
    matrix-vector products rather than LAPACK's QR: jaxlib's batched LAPACK custom calls
    deadlocked inside large vmapped sweeps on a 2-core CPU.
    """
    if n_rows > n_cols:
        raise ValueError(f"n_rows={n_rows} must be <= n_cols={n_cols}")
    a = jax.random.normal(key, (n_rows, n_cols))

    def body(i, q):
        v = a[i]
        for _ in range(2):
            v = v - q.T @ (q @ v)
        return q.at[i].set(v / jnp.linalg.norm(v))

    return jax.lax.fori_loop(0, n_rows, body, jnp.zeros((n_rows, n_cols), a.dtype))


def _polar(a: Float[Array, "m n"], iterations: int = 40) -> Float[Array, "m n"]:
    """Closest matrix with orthonormal columns (polar factor), by Newton–Schulz iteration.

    Scaling by the Frobenius norm puts every singular value in (0, 1], where the iteration
    X <- X (3 I - XᵀX) / 2 converges to the polar factor (no LAPACK call, see above)."""
    x = a / jnp.linalg.norm(a)

    def body(_, x):
        return 1.5 * x - 0.5 * x @ (x.T @ x)

    return jax.lax.fori_loop(0, iterations, body, x)


class Teacher(eqx.Module):
    """One realisation of the K-task teacher.

    **Fields:**

    - `config`: the `TeacherConfig`.
    - `U`: input subspaces, shape (K, R, N), orthonormal rows, U_k = r_k U_1 + sqrt(1-r_k²) U_k⊥.
    - `w`: readouts, shape (K, C, R), orthonormal columns.
    - `basis`: E, shape (K·R, N), orthonormal rows spanning every U_k (U_k = T_k E, see
      `coefficients`); the population theory works in this basis.
    """

    config: TeacherConfig
    U: Float[Array, "K R N"]
    w: Float[Array, "K C R"]
    basis: Float[Array, "KR N"]

    @classmethod
    def sample(cls, config: TeacherConfig, *, key: PRNGKeyArray) -> "Teacher":
        """Draw a teacher: one orthogonal (K·R x N) basis, then U_k and w_k from it (the paper's recipe)."""
        K, R, N, C = config.n_tasks, config.rank, config.n_features, config.n_classes
        kbasis, kw = jax.random.split(key)
        basis = orthonormal_rows(kbasis, K * R, N).reshape(K, R, N)
        r = config.relatedness[:, None, None]
        U_rest = r * basis[:1] + jnp.sqrt(jnp.clip(1.0 - r**2, 0.0)) * basis[1:]
        U = jnp.concatenate([basis[:1], U_rest], axis=0)
        w_raw = jax.vmap(lambda k: orthonormal_rows(k, R, C).T)(jax.random.split(kw, K))
        a = config.readout_alignment[:, None, None]
        w_rest = jax.vmap(_polar)(a * w_raw[:1] + jnp.sqrt(jnp.clip(1.0 - a**2, 0.0)) * w_raw[1:])
        # a = 0 must give exactly the independent draw (the paper's teacher), not its polar
        # factor (equal up to rounding); keeping the draw avoids an SVD in the gradient path.
        w_rest = jnp.where(a == 0.0, w_raw[1:], w_rest)
        w = jnp.concatenate([w_raw[:1], w_rest], axis=0)
        return cls(config=config, U=U, w=w, basis=basis.reshape(K * R, N))

    @property
    def coefficients(self) -> Float[Array, "K R KR"]:
        """T_k with U_k = T_k E: T_1 = [I 0 ...], T_k = r_k [I 0 ...] + sqrt(1-r_k²) (block k)."""
        return teacher_coefficients(self.config)

    def fields(self, x: Float[Array, "... N"]) -> Float[Array, "... K R"]:
        """Teacher fields u_k = U_k x for every task."""
        return jnp.einsum("krn,...n->...kr", self.U, x)

    def clean_logits(self, x: Float[Array, "... N"], task: int) -> Float[Array, "... C"]:
        """Noise-free teacher logits s_k w_k U_k x of task `task` (0-based)."""
        u = x @ self.U[task].T
        return self.config.scale[task] * (u @ self.w[task].T)

    def label(
        self,
        x: Float[Array, "n N"],
        task: int,
        *,
        key: PRNGKeyArray,
        clean: bool = False,
    ) -> Int[Array, " n"]:
        """Labels of task `task` for the inputs `x` (one dataset: the noisy fraction is exact).

        With `clean=True` there is no logit noise and no label flip.
        """
        cfg = self.config
        n = x.shape[0]
        C = cfg.n_classes
        logits = self.clean_logits(x, task)
        if clean:
            return jnp.argmax(logits, axis=-1)
        knoise, kmask, kflip, kcls = jax.random.split(key, 4)
        n_noisy = jnp.floor(cfg.noisy_fraction[task] * n + 1e-6)
        noisy = jax.random.permutation(kmask, n) < n_noisy
        xi = jax.random.normal(knoise, (n, C))
        logits = logits + jnp.where(noisy[:, None], cfg.noise[task] * xi, 0.0)
        y = jnp.argmax(logits, axis=-1)
        # The flipped label is uniform over all C classes (it may equal the original),
        # as in the authors' generator: the effective flip rate is ε (C-1)/C.
        flip = jax.random.uniform(kflip, (n,)) < cfg.flip[task]
        return jnp.where(flip, jax.random.randint(kcls, (n,), 0, C), y)


def teacher_coefficients(config: TeacherConfig) -> Float[Array, "K R KR"]:
    """The teacher subspaces in the basis E of `Teacher.sample`: U_k = T_k E (shape (K, R, K·R))."""
    K, R = config.n_tasks, config.rank
    eye = jnp.eye(R)
    blocks = jnp.zeros((K, R, K, R))
    blocks = blocks.at[:, :, 0, :].set(jnp.concatenate([eye[None], config.relatedness[:, None, None] * eye], 0))
    for k in range(1, K):
        blocks = blocks.at[k, :, k, :].set(jnp.sqrt(jnp.clip(1.0 - config.relatedness[k - 1] ** 2, 0.0)) * eye)
    return blocks.reshape(K, R, K * R)


def sample_inputs(key: PRNGKeyArray, n: int, n_features: int) -> Float[Array, "n N"]:
    """Standard Gaussian inputs x ~ N(0, I_N), shape (n, N)."""
    return jax.random.normal(key, (n, n_features))
