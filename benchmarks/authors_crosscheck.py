"""Cross-check of the paper preset against the authors' published PyTorch code.

Needs a local checkout of the authors' ``multitask/`` directory (repository
``tyler-nervana/mt-theory``: ``train.py``, ``data.py``), passed as ``--authors DIR``; nothing of
it is copied here, it is imported at run time. torch must be installed. Their code uses
``np.int`` (removed in NumPy 2) and ``tensorboardX``; both are shimmed at run time (``np.int =
int``; a stub ``SummaryWriter`` that records the scalars).

Two checks (docs/reproduction.md, "Cross-check against the authors' code"):

* ``replay``: run the authors' ``train.py`` unmodified for ``--epochs`` epochs, recording its
  realisation (the 6400 generated examples and labels, the initial weights and biases of trunk
  and heads, every training minibatch in the order it was drawn) and its per-epoch validation
  loss; then replay the same minibatches through mtjax's `Student`, `cross_entropy` and optax SGD
  step (the same update as `_train._train_paper`) and compare the per-epoch validation losses.
* ``realisations``: the distribution of the early-stopped loss over realisations. Realisation r
  is trained with mtjax's paper protocol (`_train._train_paper`, train seeds 0..S-1) on
  (A) the authors' generator with ``data_seed = model_seed = r`` and their student init, and
  (B) mtjax's generator and init (``Seeds(r, r, r, seed)``, as `mtjax reproduce` realisation r);
  ``--cross`` adds (C) their data + our init and (D) our data + their init; ``--their-subsets``
  trains every arm on the authors' training subsets (``RandomState(seed).permutation(3200)``).
* ``cells``: every cell of ``mtjax reproduce <experiment> --scale quick`` (rank-10: 72 multitask +
  6 single-task cells, 390 runs) trained with mtjax's paper protocol on the authors' realisation
  (their generator at data_seed = 0 for the cell's s_a, s_b, r; their init at model_seed = 0;
  their training subsets per train seed), compared with the authors' CSV by
  `mtjax.compare_with_authors` / `mtjax.reproduction_headline`: what the authors' published code gets against their
  own CSV. Writes ``<out>_runs.csv`` (per chunk, resumable), ``<out>_comparison.csv``, ``<out>.txt``,
  ``<out>.json``.

    python benchmarks/authors_crosscheck.py replay --authors /path/to/mt-theory/multitask --ntrain 200 --epochs 300
    python benchmarks/authors_crosscheck.py realisations --authors DIR --ntrain 200 --scale 10 --realisations 16 --seeds 5
    python benchmarks/authors_crosscheck.py cells --authors DIR --scale quick     # ~9 CPU-min, docs/results/authors_realisation_quick*
"""

from __future__ import annotations

import argparse
import json
import math
import os
import runpy
import sys
import tempfile
import time
import types

import numpy as np

LOSS = "validation-1/loss"  # the loss column of the authors' tables (task 1, early-stopped)


def _shim(authors: str):
    np.int = int  # their data.py uses np.int (removed in NumPy 2)
    if "tensorboardX" not in sys.modules:

        class SummaryWriter:
            def __init__(self, log_dir=None):
                self.log_dir, self.rows = log_dir, {}

            def add_graph(self, *a, **k):
                pass

            def add_scalar(self, tag, val, step):
                self.rows.setdefault(tag, []).append(float(val))

            def close(self):
                with open(os.path.join(self.log_dir, "scalars.json"), "w") as f:
                    json.dump(self.rows, f)

        sys.modules["tensorboardX"] = types.SimpleNamespace(SummaryWriter=SummaryWriter)
    if authors not in sys.path:
        sys.path.insert(0, authors)


def _flags(ntrain: int, scale: float, train_seed: int, epochs: int, save_dir: str) -> list[str]:
    """The flags of the authors' single-task runs (their defaults: data_seed = model_seed = 0)."""
    return ["--nsamples", "6400", "--ntrain", str(ntrain), "--nfeatures", "100", "--rank", "10", "--n_classes", "10",
            "--linear", "--clean_validation", "--random_train", "--train_seed", str(train_seed), "--scale1", str(scale),
            "--scale2", "0.01", "--single", "--nepochs", str(epochs), "--save_dir", save_dir]


def record_authors_run(authors: str, ntrain: int, scale: float, train_seed: int, epochs: int) -> dict:
    """Run their train.py, recording data, initial parameters, minibatches and validation losses."""
    _shim(authors)
    import torch
    from torch.utils.data import Subset

    import data as their_data  # noqa: the authors' data.py

    rec: dict = {"batches": [], "init": []}
    make = their_data.make_teacher_classification

    def make_recorded(*a, **k):
        out = make(*a, **k)
        rec["X"], rec["y"] = out[0][0].copy(), out[0][1].copy()
        return out

    sgd_init, getitems = torch.optim.SGD.__init__, Subset.__getitems__

    def sgd_recorded(self, params, *a, **k):  # optimisers are built trunk, head 1, head 2
        params = list(params)
        rec["init"].append([p.detach().numpy().copy() for p in params])
        sgd_init(self, params, *a, **k)

    def getitems_recorded(self, indices):
        if len(self.indices) == ntrain:  # the training subset (the validation set has 3200)
            rec["batches"].append(np.asarray([self.indices[i] for i in indices]))
        return getitems(self, indices)

    their_data.make_teacher_classification = make_recorded
    torch.optim.SGD.__init__, Subset.__getitems__ = sgd_recorded, getitems_recorded
    argv = sys.argv
    try:
        with tempfile.TemporaryDirectory() as out:
            sys.argv = ["train.py", *_flags(ntrain, scale, train_seed, epochs, out)]
            runpy.run_path(os.path.join(authors, "train.py"), run_name="__main__")
            with open(os.path.join(out, "scalars.json")) as f:
                rec["val_loss"] = np.asarray(json.load(f)["validation-1/loss"])
    finally:
        sys.argv = argv
        their_data.make_teacher_classification = make
        torch.optim.SGD.__init__, Subset.__getitems__ = sgd_init, getitems
    rec["batches"] = rec["batches"][1:]  # the first is create_summary_writer's peek, not a step
    return rec


def replay(args):
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optax

    from mtjax import Dense, Student, TrainConfig, cross_entropy

    t0 = time.time()
    rec = record_authors_run(args.authors, args.ntrain, args.scale, args.train_seed, args.epochs)
    t_torch = time.time() - t0
    X, y = jnp.asarray(rec["X"], dtype=jnp.float32), jnp.asarray(rec["y"])
    x_val, y_val = X[3200:], y[3200:]
    (w0, b0, w1, b1), (v1, c1), (v2, c2) = [[jnp.asarray(p) for p in ps] for ps in rec["init"]]
    student = Student((Dense(w0, b0), Dense(w1, b1)), (Dense(v1, c1), Dense(v2, c2)), "linear")
    cfg = TrainConfig(n_train=(args.ntrain,) * 2, n_pool=(3200, 3200), n_test=3200, batch_size=128,
                      n_epochs=args.epochs, learning_rate=1e-3, single_task=True, protocol="paper")
    opt = cfg.make_optimizer()

    @jax.jit
    def step(carry, rows):  # = _train._train_paper's step for task 0
        st, tstate, hstate = carry
        xb, yb = X[rows], y[rows]

        def loss_fn(layers, head):
            s = eqx.tree_at(lambda s: (s.layers, s.heads[0]), st, (layers, head))
            return cross_entropy(s.logits(xb, 0), yb, jnp.ones(rows.shape[0]))

        gl, gh = jax.grad(loss_fn, argnums=(0, 1))(st.layers, st.heads[0])
        ul, tstate = opt.update(gl, tstate, st.layers)
        uh, hstate = opt.update(gh, hstate, st.heads[0])
        st = eqx.tree_at(lambda s: (s.layers, s.heads[0]), st,
                         (optax.apply_updates(st.layers, ul), optax.apply_updates(st.heads[0], uh)))
        return st, tstate, hstate

    val = jax.jit(lambda st: cross_entropy(st.logits(x_val, 0), y_val))
    carry = (student, opt.init(student.layers), opt.init(student.heads[0]))
    nb = -(-args.ntrain // 128)
    ours = []
    for e in range(args.epochs):
        for b in range(nb):
            carry = step(carry, jnp.asarray(rec["batches"][e * nb + b]))
        ours.append(float(val(carry[0])))
    ours, theirs = np.asarray(ours), rec["val_loss"]
    d = np.abs(ours - theirs)
    print(f"replay: ntrain {args.ntrain}, s_a {args.scale}, train_seed {args.train_seed}, {args.epochs} epochs "
          f"({len(rec['batches'])} minibatches); authors' run {t_torch:.0f} s")
    for e in sorted({0, args.epochs // 3, 2 * args.epochs // 3, args.epochs - 1}):
        print(f"  epoch {e:5d}: authors {theirs[e]:.6f}  mtjax {ours[e]:.6f}")
    print(f"  max |diff| over epochs {d.max():.2e}; min over epochs: authors {theirs.min():.6f}, mtjax {ours.min():.6f}")


def realisations(args):
    import jax
    import jax.numpy as jnp
    import torch
    from torch import nn

    from mtjax import Dense, Seeds, Student, TaskData, Teacher, experiment_from_spec, make_datasets, make_inputs, paper_spec
    from mtjax import train_on_datasets

    _shim(args.authors)
    from data import make_teacher_classification  # the authors' data.py

    spec = paper_spec(n_train=args.ntrain, single_task=True, n_epochs=args.epochs)
    spec["teacher"]["scale"] = [args.scale, 0.01]
    spec["train"]["eval_every"] = args.eval_every
    exp = experiment_from_spec(spec)
    cfg = exp.train

    def their_data(d):
        (x, y), *_ = make_teacher_classification(6400, n_features=100, rank=10, relatedness=0, flip_y1=0, flip_y2=0,
                                                 shuffle=True, random_state=d, scale1=args.scale, scale2=0.01,
                                                 n_classes=10, noise_validation=False)
        x, y = jnp.asarray(x, dtype=jnp.float32), jnp.asarray(y)
        t = TaskData(x[:3200], y[:3200], x[3200:], y[3200:])
        return (t, t)

    def their_init(m):  # their train.py: torch.manual_seed(model_seed), nn.Linear layers, orthogonal_ weights
        torch.manual_seed(m)
        mods = [nn.Linear(100, 64), nn.Linear(64, 64), nn.Linear(64, 10), nn.Linear(64, 10)]
        for mod in mods:
            nn.init.orthogonal_(mod.weight)
        d = [Dense(jnp.asarray(l.weight.detach().numpy()), jnp.asarray(l.bias.detach().numpy())) for l in mods]
        return Student(tuple(d[:2]), tuple(d[2:]), "linear")

    def our_data(r):
        s = Seeds(r, r, r, 0)
        teacher = Teacher.sample(exp.teacher, key=s.key("teacher"))
        return make_datasets(teacher, cfg, make_inputs(exp, key=s.key("data")), key=s.key("data"))

    def our_init(r):
        return Student.init(exp.student, 100, 10, 2, key=Seeds(r, r, r, 0).key("init"))

    their_subsets = jnp.asarray(np.stack([  # their train.py with --random_train: the first ntrain of a permutation
        np.random.RandomState(seed=s).permutation(np.arange(3200))[: args.ntrain] for s in range(args.seeds)]))

    @jax.jit
    def train(student, data, seeds):
        def one(s, theirs):  # as simulate(): subsets (unless theirs) and minibatch order from the train seed
            subsets = (theirs, theirs) if args.their_subsets else None
            return train_on_datasets(student, data, cfg, Seeds(0, 0, 0, s).key("train"), subsets=subsets).early_stopped_loss[0]

        return jax.vmap(one)(seeds, their_subsets)

    seeds = jnp.arange(args.seeds)
    arms = {"A": (their_data, their_init), "B": (our_data, our_init)}
    if args.cross:
        arms |= {"C": (their_data, our_init), "D": (our_data, their_init)}
    res = {k: [] for k in arms}
    print(f"realisations: ntrain {args.ntrain}, s_a {args.scale}, {args.epochs} epochs (eval every {args.eval_every}), "
          f"train seeds 0..{args.seeds - 1}" + (" (the authors' training subsets)" if args.their_subsets else "") + "; A = authors' generator + init, B = mtjax's"
          + ("; C = authors' data + mtjax init; D = mtjax data + authors' init" if args.cross else ""))
    for r in range(args.realisations):
        line = []
        for k, (data, init) in arms.items():
            v = np.asarray(train(init(r), data(r), seeds))
            res[k].append(v)
            line.append(f"{k} {v.mean():.4f} [" + " ".join(f"{x:.3f}" for x in v) + "]")
        print(f"  r={r:3d}  " + "  ".join(line), flush=True)
    n = args.realisations
    np.seterr(all="ignore")  # s.d. of one realisation: NaN, not a warning
    import warnings

    warnings.filterwarnings("ignore", "Degrees of freedom", RuntimeWarning)
    for k, v in res.items():
        v = np.asarray(v)
        m = v.mean(1)
        rank = [int((m > m[i]).sum()) + 1 for i in range(min(3, n))]
        print(f"  {k}: mean over realisations {m.mean():.4f} ± {m.std(ddof=1) / np.sqrt(n):.4f} (s.e.); s.d. of the "
              f"{args.seeds}-seed realisation means {m.std(ddof=1):.4f}; within-realisation seed s.d. {v.std(1, ddof=1).mean():.4f}; "
              f"r = 0, 1, 2: {' '.join(f'{x:.4f}' for x in m[:3])} (rank {rank} of {n}, 1 = highest)")
    d = np.asarray(res["A"]).mean(1) - np.asarray(res["B"]).mean(1)
    print(f"  A - B: {d.mean():+.4f} ± {d.std(ddof=1) / np.sqrt(n):.4f}")


def cells(args):
    """Every cell of ``mtjax reproduce <experiment> --scale S`` on the authors' realisation.

    Per cell (s_a, s_b, r) the data are the authors' generator at data_seed = 0 (their
    ``make_teacher_classification`` with their train.py's arguments), the init their student at
    model_seed = 0, and train seed k trains on their subset ``RandomState(k).permutation(3200)
    [:ntrain]`` (the same positions for both tasks, as their script); training is mtjax's paper
    protocol (`_train._train_paper`, minibatch order of `mtjax reproduce` realisation 0, eval every
    ``--eval-every`` epochs). One compiled program per (ntrain, single/multi); cells are vmapped
    in chunks of ``--chunk-cells`` and every finished chunk is appended to ``<out>_runs.csv``
    (the authors' columns), so an interrupted run resumes and a partial one still compares.
    The comparison and headline are `mtjax reproduce`'s (`mtjax.select_cells`, `compare_with_authors`, `reproduction_headline`).
    """
    import jax
    import jax.numpy as jnp
    import pandas as pd
    import torch
    from torch import nn

    import mtjax
    from mtjax import Dense, Seeds, Student, TaskData, experiment_from_spec, train_on_datasets

    _shim(args.authors)
    from data import make_teacher_classification  # the authors' data.py

    authors = mtjax.authors_table(args.experiment, args.data)
    sel = mtjax.select_cells(authors, args.experiment, args.scale)
    if args.ntrain:
        sel = sel[sel["main_train_pts"].isin(args.ntrain)].reset_index(drop=True)
    preset = mtjax.reproduction_spec(args.experiment)
    assert (sel["nlayers"] == 2).all() and preset["student"]["activation"] == "linear"
    rank = preset["teacher"]["rank"]
    multi_rows = sel[~sel["single_task"]]
    assert (multi_rows["aux_train_pts"] == multi_rows["main_train_pts"]).all(), "m = 1 only"
    seeds = sorted(int(v) for v in sel["train_seed"].unique())
    out = args.out
    runs_csv = out + "_runs.csv"
    if args.fresh and os.path.exists(runs_csv):
        os.remove(runs_csv)
    done = pd.read_csv(runs_csv) if os.path.exists(runs_csv) else None  # its keys are rounded below

    torch.manual_seed(0)  # their train.py: torch.manual_seed(model_seed) after the data, then nn.Linear + orthogonal_
    mods = [nn.Linear(100, 64), nn.Linear(64, 64), nn.Linear(64, rank), nn.Linear(64, rank)]
    for mod in mods:
        nn.init.orthogonal_(mod.weight)
    dense = [Dense(jnp.asarray(l.weight.detach().numpy()), jnp.asarray(l.bias.detach().numpy())) for l in mods]
    student = Student(tuple(dense[:2]), tuple(dense[2:]), "linear")

    def their_data(s_a, s_b, r):
        (x1, y1), (x2, y2), *_ = make_teacher_classification(
            6400, n_features=100, rank=rank, relatedness=r, flip_y1=0, flip_y2=0, shuffle=True, random_state=0,
            scale1=s_a, scale2=s_b, randomize=False, n_classes=rank, noise_validation=False, exp_values=False,
            single_sample=False)
        return tuple(TaskData(jnp.asarray(x[:3200], jnp.float32), jnp.asarray(y[:3200]), jnp.asarray(x[3200:], jnp.float32),
                              jnp.asarray(y[3200:])) for x, y in ((x1, y1), (x2, y2)))

    def stack(trees):
        return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *trees)

    total = 0
    t_start, c_start = time.time(), time.process_time()
    for ntrain in sorted(int(v) for v in sel["main_train_pts"].unique()):
        subsets = jnp.asarray(np.stack([np.random.RandomState(seed=s).permutation(np.arange(3200))[:ntrain] for s in seeds]))
        tkeys = jnp.stack([Seeds(0, 0, 0, s).key("train") for s in seeds])
        for single in (True, False):
            rows = sel[(sel["main_train_pts"] == ntrain) & (sel["single_task"] == single)]
            if not len(rows):
                continue
            cols = ["s_a"] if single else ["relatedness", "s_a", "s_b"]
            todo = rows.drop_duplicates(cols)[cols].sort_values(cols).to_dict("records")
            if done is not None:
                d = done[(done["main_train_pts"] == ntrain) & (done["single_task"] == single)]
                have = {tuple(np.round(v, 12)) for v in d[cols].to_numpy(float)}
                todo = [c for c in todo if tuple(np.round([c[k] for k in cols], 12)) not in have]
            if not todo:
                continue
            spec = mtjax.reproduction_spec(args.experiment, eval_every=args.eval_every,
                                       overrides={"train": {"n_epochs": args.epochs, "single_task": single}})
            spec["train"]["n_train"] = [ntrain, ntrain]
            cfg = experiment_from_spec(spec).train
            assert cfg.n_train == (ntrain, ntrain) and cfg.n_pool == (3200, 3200) and cfg.single_task == single

            @jax.jit
            def train(data):  # data: cells x (task 1, task 2); vmapped over cells, then over seeds
                def cell(d):
                    return jax.vmap(lambda sub, k: train_on_datasets(student, d, cfg, k, subsets=(sub, sub)).early_stopped_loss[0])(subsets, tkeys)

                return jax.vmap(cell)(data)

            n = args.chunk_cells
            for i in range(0, len(todo), n):
                chunk = todo[i: i + n]
                pad = chunk + [chunk[-1]] * (n - len(chunk))  # one shape per program: pad the last chunk
                t0, c0 = time.time(), time.process_time()
                data = stack([their_data(c["s_a"], c.get("s_b", 0.01), c.get("relatedness", 0.0)) for c in pad])
                loss = np.asarray(train(data))[: len(chunk)]
                recs = []
                for c, v in zip(chunk, loss):
                    for s, x in zip(seeds, v):
                        recs.append({"main_train_pts": ntrain, "aux_train_pts": ntrain, "relatedness": c.get("relatedness", np.nan),
                                     "s_a": c["s_a"], "s_b": c.get("s_b", np.nan), "single_task": single, "train_seed": s, LOSS: float(x)})
                part = pd.DataFrame(recs)
                part.to_csv(runs_csv, mode="a", header=not os.path.exists(runs_csv), index=False)
                total += len(recs)
                print(f"ntrain {ntrain} {'single' if single else 'multi '} cells {i + 1}-{i + len(chunk)} of {len(todo)}: "
                      f"{len(recs)} runs, {time.time() - t0:.0f} s wall, {time.process_time() - c0:.0f} s CPU; "
                      f"mean loss {loss.mean():.4f}", flush=True)
    print(f"trained {total} runs in {time.time() - t_start:.0f} s wall, {time.process_time() - c_start:.0f} s CPU")
    summarise(args, authors, sel, runs_csv)


def summarise(args, authors, sel, runs_csv):
    """Compare the runs in `runs_csv` with the authors' cells exactly as `mtjax reproduce` does."""
    import pandas as pd

    import mtjax

    runs = pd.read_csv(runs_csv)
    runs[["relatedness", "s_a", "s_b"]] = runs[["relatedness", "s_a", "s_b"]].round(12)  # as mtjax.cell_statistics keys them
    runs = runs.drop_duplicates(["main_train_pts", "single_task", "relatedness", "s_a", "s_b", "train_seed"], keep="last")
    # Our runs are in the authors' format already: the comparison of `mtjax reproduce` (inner join on the cells of `sel`).
    comp = mtjax.compare_with_authors(sel, runs, args.experiment)
    comp.to_csv(args.out + "_comparison.csv", index=False)
    head = mtjax.reproduction_headline(comp)
    per = {int(n): mtjax.reproduction_headline(comp[comp["main_train_pts"] == n].reset_index(drop=True)) for n in sorted(comp["main_train_pts"].unique())}
    lines = [f"# `mtjax reproduce {args.experiment} --scale {args.scale}` cells trained on the authors' realisation",
             "",
             "Data: the authors' generator (data.py) at data_seed = 0 per cell (s_a, s_b, r); init: their student at "
             "model_seed = 0; training subsets: theirs (RandomState(train_seed).permutation(3200)[:ntrain], both tasks); "
             f"training: mtjax's paper protocol, {args.epochs} epochs, eval every {args.eval_every}; loss: task-1 "
             "validation CE, min over evaluations. Compared with the authors' CSV by mtjax.compare_with_authors/reproduction_headline.",
             f"Command: python benchmarks/authors_crosscheck.py cells --authors DIR --experiment {args.experiment} "
             f"--scale {args.scale} --epochs {args.epochs} --eval-every {args.eval_every}.",
             f"Runs: {len(runs)}; cells compared: {head['cells']} ({head['single_task_cells']} single-task, "
             f"{head['multitask_cells']} multitask).",
             "",
             "| ntrain | cells | within 0.1 nats | median abs diff | mean diff (ours - authors) | max abs diff | "
             "abs diff < 2 pooled seed s.e. | benefit sign agreement (abs authors' benefit >= 0.02) | benefit median abs diff |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, h in [("all", head), *per.items()]:
        sa = "nan" if math.isnan(h["benefit_sign_agreement"]) else f"{h['benefit_sign_agreement']:.1%}"
        lines.append(f"| {name} | {h['cells']} | {h['within_0.1_nats']:.1%} | {h['median_abs_diff']:.3f} | {h['mean_diff']:+.3f} | "
                     f"{h['max_abs_diff']:.3f} | {h['abs_z_below_2']:.1%} | {sa} of {h['benefit_cells_with_abs_ge_0.02']} | "
                     f"{h['benefit_median_abs_diff']:.3f} |")
    lines.append("")
    lines.append(mtjax.reproduction_report(args.experiment, args.scale, comp, head).split("\n", 2)[2])
    text = "\n".join(lines)
    with open(args.out + ".txt", "w") as f:
        f.write(text)
    with open(args.out + ".json", "w") as f:
        json.dump({"all": head, **{str(k): v for k, v in per.items()}}, f, indent=2)
    print(text)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("replay", "realisations"):
        q = sub.add_parser(name)
        q.add_argument("--authors", required=True, help="the authors' multitask/ directory (train.py, data.py)")
        q.add_argument("--ntrain", type=int, default=200)
        q.add_argument("--scale", type=float, default=10.0, help="s_a (--scale1)")
        q.add_argument("--epochs", type=int, default=300 if name == "replay" else 2000)
    sub.choices["replay"].add_argument("--train-seed", type=int, default=0)
    r = sub.choices["realisations"]
    r.add_argument("--realisations", type=int, default=16)
    r.add_argument("--seeds", type=int, default=5)
    r.add_argument("--eval-every", type=int, default=10)
    r.add_argument("--cross", action="store_true", help="also the crossed arms C and D")
    r.add_argument("--their-subsets", action="store_true",
                   help="train on the authors' training subsets of each seed instead of mtjax's (minibatch order stays mtjax's)")
    c = sub.add_parser("cells")
    c.add_argument("--authors", required=True, help="the authors' multitask/ directory (train.py, data.py)")
    c.add_argument("--experiment", default="rank-10", choices=["rank-10", "rank-3"])
    c.add_argument("--scale", default="quick", choices=["quick", "full"])
    c.add_argument("--data", default=None, help="folder of the authors' CSVs (default: mtjax reproduce's)")
    c.add_argument("--ntrain", type=int, nargs="*", help="only these main_train_pts")
    c.add_argument("--epochs", type=int, default=2000)
    c.add_argument("--eval-every", type=int, default=10)
    c.add_argument("--chunk-cells", type=int, default=12, help="cells per vmapped chunk (x seeds = runs)")
    c.add_argument("--out", default="docs/results/authors_realisation_quick",
                   help="prefix of the outputs: _runs.csv (appended per chunk; resumed), _comparison.csv, .txt, .json")
    c.add_argument("--fresh", action="store_true", help="delete an existing _runs.csv first")
    c.add_argument("--summary-only", action="store_true", help="only compare the runs already in _runs.csv")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.cmd == "cells" and args.summary_only:
        import mtjax

        sel = mtjax.select_cells(mtjax.authors_table(args.experiment, args.data), args.experiment, args.scale)
        summarise(args, mtjax.authors_table(args.experiment, args.data), sel, args.out + "_runs.csv")
        return
    {"replay": replay, "realisations": realisations, "cells": cells}[args.cmd](args)


if __name__ == "__main__":
    main()
