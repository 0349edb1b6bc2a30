"""Lean sequential PyTorch reference of the "paper protocol" multitask training loop.

Replicates the loop of Lee & Ndirango (2019), authors' ``train.py``: a linear student (trunk of
``depth`` linear layers, one linear head per task), separate SGD optimisers for trunk and heads,
task-1 minibatches each followed by ``n_train_b // n_train`` task-2 minibatches drawn from a
persistent stream, and a task-1 test-loss evaluation after every epoch. Single process, no
DataLoader, no logging: the training tensors are indexed directly. Used as the throughput
baseline against the JAX implementation (``mtjax``).
"""
import math
import time

import torch
import torch.nn.functional as F
from torch import nn


def make_data(n_features=100, rank=10, n_classes=10, relatedness=0.0, s_a=1.0, s_b=1.0,
              n_pool=3200, n_test=3200, noisy_fraction=0.5, seed=0) -> dict:
    """Two-task low-rank teacher data.

    Q (2*rank x N) has orthonormal rows; U1 = Q[:rank], U2 = r U1 + sqrt(1-r^2) Q[rank:].
    Readouts w_k (C x rank) are orthogonal. Teacher logits of task k are
    s_k (x U_k^T) w_k^T + sigma xi, sigma = 1/sqrt(N), xi ~ N(0, I_C), the noise applied to an
    exactly floor(q n) random subset of the n = n_pool + n_test examples; label = argmax.
    Each task has its own inputs x ~ N(0, I_N) (float32).

    Returns {k: dict(x_pool, y_pool, x_test, y_test)} for k in (0, 1); the pool is the first
    n_pool rows of the generated set, the test set the last n_test.
    """
    g = torch.Generator().manual_seed(seed)
    N, C, n = n_features, n_classes, n_pool + n_test
    Q = nn.init.orthogonal_(torch.randn(2 * rank, N, generator=g), generator=g)
    U = (Q[:rank], relatedness * Q[:rank] + math.sqrt(1.0 - relatedness ** 2) * Q[rank:])
    W = tuple(nn.init.orthogonal_(torch.randn(C, rank, generator=g), generator=g) for _ in range(2))
    sigma = 1.0 / math.sqrt(N)
    data = {}
    for k, s in enumerate((s_a, s_b)):
        x = torch.randn(n, N, generator=g)
        logits = s * (x @ U[k].T) @ W[k].T
        noisy = torch.zeros(n, dtype=torch.bool)
        noisy[torch.randperm(n, generator=g)[: int(math.floor(noisy_fraction * n + 1e-6))]] = True
        logits = logits + noisy[:, None] * (sigma * torch.randn(n, C, generator=g))
        y = logits.argmax(dim=1)
        data[k] = dict(x_pool=x[:n_pool], y_pool=y[:n_pool], x_test=x[n_pool:], y_test=y[n_pool:])
    return data


def _linear(n_in, n_out):
    layer = nn.Linear(n_in, n_out)  # bias keeps PyTorch's default init
    nn.init.orthogonal_(layer.weight)
    return layer


def train_paper(data, n_train=400, n_train_b=None, single_task=False, n_epochs=2000, lr=1e-3,
                batch_size=128, depth=2, width=64, train_seed=0, init_seed=0, n_threads=2) -> dict:
    """Train with the authors' protocol; return task-1 test-loss statistics and timing.

    Training subsets: first n_train (task 2: n_train_b) entries of a permutation of range(n_pool)
    drawn from ``train_seed`` (one permutation per task). Each epoch reshuffles task 1's subset
    into minibatches (last partial batch kept); every task-1 step (trunk + head1) is followed by
    m = n_train_b // n_train task-2 steps (trunk + head2), unless ``single_task``. Task 2's
    minibatches come from a persistent stream over its subset, reshuffled when exhausted.

    Returns dict(early_stopped_loss, final_loss, curve, n_steps, seconds): ``curve`` holds the
    task-1 test loss after each epoch, ``n_steps`` counts minibatch updates (each one steps the
    trunk optimiser and one head optimiser), ``seconds`` is the wall time of the training loop
    (model construction and data generation excluded; per-epoch evaluation included).
    """
    torch.set_num_threads(n_threads)
    n_train_b = n_train if n_train_b is None else n_train_b
    N = data[0]["x_pool"].shape[1]
    C = int(max(data[0]["y_pool"].max(), data[1]["y_pool"].max())) + 1
    torch.manual_seed(init_seed)
    trunk = nn.Sequential(*[_linear(N if i == 0 else width, width) for i in range(depth)])
    heads = [_linear(width, C), _linear(width, C)]
    opt_trunk = torch.optim.SGD(trunk.parameters(), lr=lr)
    opt_heads = [torch.optim.SGD(h.parameters(), lr=lr) for h in heads]

    g = torch.Generator().manual_seed(train_seed)
    n_pool = data[0]["x_pool"].shape[0]
    sub = [torch.randperm(n_pool, generator=g)[:n] for n in (n_train, n_train_b)]
    xa, ya = data[0]["x_pool"][sub[0]], data[0]["y_pool"][sub[0]]
    xb, yb = data[1]["x_pool"][sub[1]], data[1]["y_pool"][sub[1]]
    x_test, y_test = data[0]["x_test"], data[0]["y_test"]
    m = 0 if single_task else n_train_b // n_train

    def step(k, x, y):
        loss = F.cross_entropy(heads[k](trunk(x)), y)
        loss.backward()
        opt_heads[k].step()
        opt_trunk.step()
        opt_heads[k].zero_grad()
        opt_trunk.zero_grad()

    def stream_b():  # persistent task-2 minibatch stream, reshuffled when exhausted
        while True:
            for idx in torch.randperm(n_train_b, generator=g).split(batch_size):
                yield idx

    batches_b = stream_b()
    curve, n_steps = [], 0
    t0 = time.perf_counter()
    for _ in range(n_epochs):
        for idx in torch.randperm(n_train, generator=g).split(batch_size):
            step(0, xa[idx], ya[idx])
            n_steps += 1
            for _ in range(m):
                idx_b = next(batches_b)
                step(1, xb[idx_b], yb[idx_b])
                n_steps += 1
        with torch.no_grad():
            curve.append(F.cross_entropy(heads[0](trunk(x_test)), y_test).item())
    seconds = time.perf_counter() - t0
    return dict(early_stopped_loss=min(curve), final_loss=curve[-1], curve=curve,
                n_steps=n_steps, seconds=seconds)


def flops_per_run(n_train, n_train_b, single_task, n_epochs, batch_size=128, depth=2, width=64,
                  n_features=100, n_classes=10, n_test=3200) -> float:
    """FLOPs of the layer-wise forward+backward passes of one ``train_paper`` run.

    With M = N*width + (depth-1)*width^2 + width*C the multiply-accumulates of trunk plus one head
    per example:

        FLOPs = 6*M*(E_a + E_b) + 2*M*n_test*n_epochs

    where 6*M = 2*M forward + 4*M backward per training example, E_a = n_train*n_epochs is the
    number of task-1 training examples processed and E_b the number of task-2 examples (exact:
    n_epochs*ceil(n_train/batch_size)*m steps, m = n_train_b // n_train or 0 if single_task,
    consumed from a stream of batches of sizes batch_size, ..., n_train_b mod batch_size that
    repeats every ceil(n_train_b/batch_size) steps). The last term is the per-epoch task-1 test
    forward pass. Biases, softmax/cross-entropy and the SGD updates are not counted.
    """
    M = n_features * width + (depth - 1) * width * width + width * n_classes
    e_a = n_train * n_epochs
    m = 0 if single_task else n_train_b // n_train
    steps_b = n_epochs * math.ceil(n_train / batch_size) * m
    nb2 = math.ceil(n_train_b / batch_size)
    sizes = [min(batch_size, n_train_b - i * batch_size) for i in range(nb2)]
    e_b = (steps_b // nb2) * n_train_b + sum(sizes[: steps_b % nb2])
    return float(6 * M * (e_a + e_b) + 2 * M * n_test * n_epochs)


if __name__ == "__main__":
    data = make_data()
    out = train_paper(data, n_train=400, single_task=True, n_epochs=50)
    fl = flops_per_run(400, 400, True, 50)
    print(f"single task, n_train=400, 50 epochs: {out['seconds']:.3f} s "
          f"({out['n_steps']} steps, {fl / out['seconds'] / 1e9:.2f} GFLOP/s); "
          f"extrapolated 2000 epochs: {out['seconds'] * 40:.1f} s; "
          f"final test loss {out['final_loss']:.4f}")
