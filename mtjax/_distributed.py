"""Spreading a sweep over the devices of a host and over processes (hosts).

Runs of a sweep are independent, so the computation itself needs no communication
between devices or processes:

- **Devices of one process**: the run axis of a chunk is placed on a one-axis
  `jax.sharding.Mesh` (axis name `"runs"`) over the process's local devices, and the
  vmapped program is wrapped in `jax.shard_map`: every device runs the same vmapped program
  on its block of runs, with the experiment and any shared inputs replicated. No collective
  is emitted (`out_specs` keeps the run axis sharded), so the result of each run is computed
  by the same per-run arithmetic as in the single-device program.
- **Processes**: `jax.distributed.initialize` (JAX's own runtime; coordinator address,
  process count and id from arguments, the environment, or cluster auto-detection such as
  SLURM) tells each process its index. Process 0 reads which runs are already on disk and
  broadcasts that list (`multihost_utils.broadcast_one_to_all`, the only cross-process
  communication of a sweep), so every process splits the *same* list of runs still to do,
  round-robin: a resume after a failure is shared evenly by all processes, and no write of
  a fast process can make the others disagree about who owns a run. Each process writes
  its own part files (their names carry the process index); the chunk computations
  themselves never communicate.

Failure model (JAX's): if any process dies, the coordination service stops the others
(at the latest after its heartbeat timeout, 100 s by default). Every finished chunk is already on disk (atomic part files), so rerunning
the same command, with any number of processes, runs exactly what is missing.

Without `jax.distributed` (e.g. the tasks of an array job started at different times) a
slice can be given explicitly: process `i` of `P` takes the runs with `run % P == i`, a
split that depends on the run id alone.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

RUN_AXIS = "runs"


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    **kwargs: Any,
) -> tuple[int, int]:
    """Start JAX's distributed runtime once for this process; a no-op if already started.

    **Arguments:**

    - `coordinator_address`: `"host:port"` of process 0's coordinator service. Default: the
      environment variable `JAX_COORDINATOR_ADDRESS` (read by JAX itself), else cluster
      auto-detection (SLURM, Open MPI, Kubernetes, Cloud TPU).
    - `num_processes`, `process_id`: default `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` from the
      environment when set (mtjax's convention, named like JAX's variables), else detected.
    - `**kwargs`: passed on to `jax.distributed.initialize` (e.g. `initialization_timeout`,
      `local_device_ids`).

    **Returns:** `(process_index, process_count)`.

    Must run before anything touches a JAX backend (JAX's rule for its distributed runtime).
    """
    if not jax.distributed.is_initialized():
        if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
            num_processes = int(os.environ["JAX_NUM_PROCESSES"])
        if process_id is None and os.environ.get("JAX_PROCESS_ID"):
            process_id = int(os.environ["JAX_PROCESS_ID"])
        # At exit every process waits at JAX's shutdown barrier for the others, and process 0
        # hosts the coordination service, so it must not leave (which would stop everyone)
        # while another process is still on its last chunks. JAX's default wait is 5 min,
        # shorter than one chunk of a large sweep can take; a hung process is for the
        # scheduler's wall-clock limit to end.
        kwargs.setdefault("shutdown_timeout_seconds", 6 * 3600)
        jax.distributed.initialize(coordinator_address, num_processes, process_id, **kwargs)
    return jax.process_index(), jax.process_count()


def local_mesh(devices: int | Sequence[jax.Device] | None = None) -> Mesh | None:
    """A one-axis mesh (`"runs"`) over this process's devices, or None for a single device.

    **Arguments:**

    - `devices`: None (every local device, `jax.local_devices()`), an int `n` (the first `n`
      local devices), or a sequence of devices.

    **Returns:** the mesh, or None when only one device is used (then the sweep runs the plain
    vmapped program, exactly as before sharding existed).

    **Raises:** `ValueError` if `n` is not in `1..len(jax.local_devices())`.
    """
    local = jax.local_devices()
    if devices is None:
        devs = list(local)
    elif isinstance(devices, int):
        if not 1 <= devices <= len(local):
            raise ValueError(f"devices={devices} must be between 1 and the {len(local)} local devices of this process")
        devs = list(local[:devices])
    else:
        devs = list(devices)
        if not devs:
            raise ValueError("devices=[] is empty: pass None for every local device")
    if len(devs) == 1:
        return None
    return Mesh(np.array(devs), (RUN_AXIS,))


def mesh_size(mesh: Mesh | None) -> int:
    """Number of devices the run axis is split over (1 without a mesh)."""
    return 1 if mesh is None else mesh.devices.size


def chunk_size(per_device: int, n_runs: int, n_devices: int, max_chunk: int | None) -> int:
    """Runs per chunk: a multiple of `n_devices`, `per_device` runs on each device at most.

    `per_device` comes from the per-device memory budget; `max_chunk` caps the whole chunk
    but never below one run per device; a chunk is never larger than needed for `n_runs`
    (rounded up to a multiple of `n_devices`; the padding runs are dropped)."""
    c = max(1, per_device)
    if max_chunk is not None:
        c = min(c, max(1, max_chunk // n_devices))
    c = min(c, max(1, math.ceil(n_runs / n_devices)))
    return c * n_devices


def map_runs(fn: Callable, batched: tuple, mesh: Mesh | None):
    """`jax.vmap(fn)(*batched)`, with the run axis sharded over `mesh` if one is given.

    Call inside `jit`. `fn` may close over replicated values (the experiment, shared inputs):
    `shard_map` treats closed-over values as replicated. Every leaf of `batched` needs a
    leading run axis divisible by the mesh size."""
    vf = jax.vmap(fn)
    if mesh is None:
        return vf(*batched)
    spec = P(RUN_AXIS)
    # check_vma=False: the per-run code starts loop carries from constants (zeros) that become
    # run-dependent, which the varying-manual-axes type check rejects inside shard_map. The
    # check guards collectives, and this body has none: every output is per-run (sharded).
    return jax.shard_map(vf, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False)(*batched)


def shard(tree, mesh: Mesh | None):
    """Place the leading (run) axis of every array of `tree` across `mesh` (no-op without one);
    scalars (values shared by the whole chunk, e.g. a common seed) are replicated."""
    if mesh is None:
        return tree
    return jax.tree_util.tree_map(
        lambda a: jax.device_put(a, NamedSharding(mesh, P(RUN_AXIS) if jnp.ndim(a) else P())), tree
    )


def _check_index(process_index: int, process_count: int) -> None:
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must be in 0..{process_count - 1} (process_count={process_count})")


def process_runs(run_ids: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
    """Static slice: mask of the runs with `run % process_count == process_index`.

    It depends on the run id alone, so processes that start at different times, or a rerun
    with the same count, agree without talking; round-robin gives every process an even share
    of every compile group."""
    _check_index(process_index, process_count)
    return np.asarray(run_ids) % process_count == process_index


def share_todo(todo: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
    """Balanced slice: mask of this process's share of the runs still to do.

    `todo`: (n_runs,) bool, identical on every process (see `agree`). The runs to do are dealt
    round-robin in run order, so after a failure all processes share the remainder evenly."""
    _check_index(process_index, process_count)
    mine = np.zeros(len(todo), bool)
    mine[np.flatnonzero(todo)[process_index::process_count]] = True
    return mine


def agree(mask: np.ndarray) -> np.ndarray:
    """Process 0's `mask` on every process (a collective: every process must call it).

    On CPU this goes through JAX's default cross-process collectives (gloo)."""
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.broadcast_one_to_all(np.asarray(mask)), bool)
