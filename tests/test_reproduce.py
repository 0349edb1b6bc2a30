"""`mtjax reproduce`: cell selection, the authors' column format, the comparison report."""

import json
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest

import mtjax
from mtjax import _reproduce as rp
from mtjax.cli import main

RANK10_COLUMNS = ["id", "main_train_pts", "aux_train_pts", "relatedness", "s_a", "s_b", "single_task", "train_seed", "validation-1/loss"]
S = [0.01, 0.03981071705534973, 0.15848931924611134, 0.6309573444801929, 2.51188643150958, 10.0]


def fake_authors(columns=RANK10_COLUMNS, ntrain=(100,), aux=None, nlayers=None, r=(0.0, 1.0), s_a=(10.0,), s_b=(0.01, 10.0), seeds=(0, 1)):
    """A table in the authors' format: multitask rows of the grid, and single-task rows repeated
    over (r, s_b) with one loss per (ntrain, s_a, seed), as in their files."""
    rows = []
    for n in ntrain:
        for a in aux or [n]:
            for L in nlayers or [2]:
                for sa in s_a:
                    for seed in seeds:
                        single_loss = 2.3 - 0.01 * seed
                        for rr in r:
                            for sb in s_b:
                                base = dict(main_train_pts=n, aux_train_pts=a, nlayers=L, relatedness=rr, s_a=sa, s_b=sb, train_seed=seed)
                                rows.append(dict(base, single_task=False, **{"validation-1/loss": single_loss - 0.05 * rr}))
                                rows.append(dict(base, single_task=True, **{"validation-1/loss": single_loss}))
    d = pd.DataFrame(rows)
    d["id"] = [f"x-{i}" for i in range(len(d))]
    return d[[c for c in columns]]


def test_quick_subset_is_the_documented_one():
    authors = mtjax.authors_table("rank-10")
    cells = rp.select_cells(authors, "rank-10", "quick")
    grid = rp.reproduction_grid(cells)
    assert grid["ntrain"] == [100, 200] and grid["relatedness"] == [0.0, 0.5, 1.0] and grid["seed"] == [0, 1, 2, 3, 4]
    assert len(grid["s_a"]) == 3 and len(grid["s_b"]) == 4 and "ntrain_b" not in grid and "depth" not in grid
    assert len(rp._distinct_runs(cells)) == (72 + 6) * 5
    # the full grid is exactly the authors' file
    full = rp.select_cells(authors, "rank-10", "full")
    assert len(full) == len(authors) and np.allclose(rp.reproduction_grid(full)["s_b"], S, rtol=1e-10, atol=0)


def test_packaged_data(tmp_path, monkeypatch):
    """Without $MTJAX_PAPER_DATA and from an unrelated directory, the authors' tables load from the
    copy shipped in mtjax/data/paper, with its license, and that copy is byte-identical to the
    authors' files where a reference folder is at hand."""
    monkeypatch.delenv("MTJAX_PAPER_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    packaged = rp.default_data_dir()
    assert packaged == Path(mtjax.__file__).parent / "data" / "paper"
    authors = mtjax.authors_table("rank-10")
    assert list(authors.columns) == RANK10_COLUMNS and len(authors) == 10800
    for name, exp in rp.EXPERIMENTS.items():
        assert (packaged / exp.file).is_file(), name
    assert "Apache License" in (packaged / "LICENSE").read_text() and "tyler-nervana/mt-theory" in (packaged / "NOTICE").read_text()
    # $MTJAX_PAPER_DATA and data_dir= still take precedence
    monkeypatch.setenv("MTJAX_PAPER_DATA", str(tmp_path))
    assert rp.default_data_dir() == tmp_path
    with pytest.raises(ValueError, match="rank-10.csv"):
        mtjax.authors_table("rank-10")
    assert len(mtjax.authors_table("rank-10", data_dir=packaged)) == len(authors)
    reference = Path(__file__).resolve().parents[2] / "shared" / "paper-data"
    if not (reference / "rank-10.csv").exists():
        pytest.skip(f"no reference copy at {reference} to compare the packaged bytes with")
    for exp in rp.EXPERIMENTS.values():
        assert (packaged / exp.file).read_bytes() == (reference / exp.file).read_bytes(), exp.file


@pytest.mark.parametrize("name", ["aux-train-pts", "deep-nonlinear"])
def test_grids_and_format_of_other_experiments(name):
    cols = {"aux-train-pts": [c for c in RANK10_COLUMNS if c != "main_train_pts"],
            "deep-nonlinear": ["id", "nlayers", *RANK10_COLUMNS[1:]]}[name]
    kw = {"aux-train-pts": dict(aux=[100, 400]), "deep-nonlinear": dict(ntrain=(200,), nlayers=[1, 3])}[name]
    authors = fake_authors(columns=cols, **kw)
    cells = rp.select_cells(authors, name, "full")
    grid = rp.reproduction_grid(cells)
    if name == "aux-train-pts":
        assert grid["ntrain"] == [100] and grid["ntrain_b"] == [100, 400]
    else:
        assert grid["depth"] == [1, 3] and grid["ntrain"] == [200]
    # our summary table -> the authors' rows and columns
    runs = mtjax.expand_grid({**grid, "realisation": [0]})
    summ = runs.assign(task=1, early_stopped_loss=1.5)
    summ["ntrain_b"] = summ.get("ntrain_b", summ["ntrain"])
    summ["depth"] = summ.get("depth", 2)
    ours = rp._ours_in_authors_format(summ, cells, cols, name, 0)
    assert list(ours.columns) == cols and len(ours) == len(authors) and ours["validation-1/loss"].notna().all()
    assert ours["id"].is_unique
    # the spec follows the experiment
    spec = rp.reproduction_spec(name)
    assert spec["student"]["activation"] == ("relu" if name == "deep-nonlinear" else "linear")


def test_compare_statistics():
    authors = fake_authors(seeds=(0, 1, 2))
    ours = authors.copy()
    ours["validation-1/loss"] = ours["validation-1/loss"] + 0.03  # same benefit, offset loss
    c = mtjax.compare_with_authors(authors, ours)
    assert len(c) == 1 + 4 and c["single_task"].sum() == 1
    assert np.allclose(c["diff"], 0.03) and np.allclose(c["benefit_diff"].dropna(), 0.0)
    h = rp.headline(c)
    assert h["within_0.1_nats"] == 1.0 and np.isclose(h["median_abs_diff"], 0.03)
    # the authors' benefit is 0.05 r: the r = 1 cells are compared by sign, and agree
    assert h["benefit_cells_with_abs_ge_0.02"] == 2 and h["benefit_sign_agreement"] == 1.0
    # a second "realisation" 0.02 higher gives a realisation spread of 0.02 / sqrt(2)
    c2 = mtjax.compare_with_authors(authors, [ours, ours.assign(**{"validation-1/loss": ours["validation-1/loss"] + 0.02})])
    assert np.allclose(c2["realisation_sd"], 0.02 / np.sqrt(2))
    assert rp.headline(c2)["realisations"] == 2


def test_reproduce_end_to_end_tiny(tmp_path, capsys):
    """Real training on 2 multitask + 1 single-task cells (4 epochs): files, columns, report, resume."""
    data = tmp_path / "data"
    data.mkdir()
    authors = fake_authors(r=(1.0,))
    authors.to_csv(data / "rank-10.csv", index=False)
    args = ["reproduce", "rank-10", "--scale", "full", "--data", str(data), "--out", str(tmp_path / "out"), "--quiet",
            "--set", "train.n_epochs=4", "--set", "student.width=8", "--eval-every", "2"]
    main(args)
    out = capsys.readouterr().out
    assert "within 0.1 nats" in out and "sign agreement" in out
    (d,) = (tmp_path / "out").iterdir()
    assert d.name.startswith("rank-10-full-")  # overrides: a separate folder from the standard run
    ours = pd.read_csv(d / "rank-10.csv")
    assert list(ours.columns) == RANK10_COLUMNS and len(ours) == len(authors)
    assert ours["validation-1/loss"].between(0.5, 5.0).all()
    c = pd.read_csv(d / "comparison.csv")
    assert len(c) == 3 and {"authors_mean", "ours_mean", "diff", "z", "authors_benefit", "ours_benefit", "benefit_z", "sign_agree"} <= set(c)
    head = json.loads((d / "report.json").read_text())
    assert head["cells"] == 3 and head["timing"]["runs_per_realisation"] == 2 * 2 + 2
    assert "## Per data size" in (d / "report.md").read_text()
    # rerun: everything is on disk, nothing is retrained, same numbers
    main(args)
    assert pd.read_csv(d / "rank-10.csv").equals(ours)


def test_bad_arguments():
    with pytest.raises(ValueError, match="experiment"):
        rp.reproduction_spec("rank-7")
    with pytest.raises(ValueError, match="scale"):
        rp.select_cells(fake_authors(), "rank-10", "medium")
    with pytest.raises(ValueError, match="no cells"):
        rp.select_cells(fake_authors(), "rank-10", "full", {"main_train_pts": [400]})


def test_paper_training_matches_torch_sgd():
    """The paper protocol's training (`_train_paper`) equals the authors' PyTorch recipe on the same
    realisation: nn.Linear trunk + head, CrossEntropyLoss (batch mean), plain SGD on trunk and
    head, validation loss averaged over batches of 128. With ntrain <= 128 an epoch is one full
    batch, so the minibatch order cannot differ (docs/reproduction.md, "Cross-check")."""
    torch = pytest.importorskip("torch")
    import jax.numpy as jnp
    from torch import nn

    from mtjax._student import Dense, Student
    from mtjax._train import TaskData, _train_paper

    n_train, n_val, epochs, lr, width = 100, 256, 8, 0.1, 16  # lr > paper's 1e-3 so that the loss moves
    spec = mtjax.paper_spec(n_train=n_train, single_task=True, n_epochs=epochs)
    spec["train"].update(n_test=n_val, n_pool=[n_train, n_train], learning_rate=lr)
    spec["student"]["width"] = width
    cfg = mtjax.experiment_from_spec(spec).train
    rng = np.random.RandomState(0)
    x = rng.randn(n_train + n_val, 100).astype(np.float32)
    y = (x @ rng.randn(100, 10)).argmax(1)
    torch.manual_seed(0)
    mods = [nn.Linear(100, width), nn.Linear(width, width), nn.Linear(width, 10), nn.Linear(width, 10)]
    for m in mods:
        nn.init.orthogonal_(m.weight)
    d = [Dense(jnp.asarray(m.weight.detach().numpy()), jnp.asarray(m.bias.detach().numpy())) for m in mods]
    student = Student(tuple(d[:2]), tuple(d[2:]), "linear")
    td = TaskData(jnp.asarray(x[:n_train]), jnp.asarray(y[:n_train]), jnp.asarray(x[n_train:]), jnp.asarray(y[n_train:]))
    sub = jnp.arange(n_train)
    train = jax.jit(lambda st, td: _train_paper(st, (td, td), (sub, sub), cfg, jax.random.key(0)).test_loss[:, 0])
    ours = np.asarray(train(student, td))

    net = nn.Sequential(*mods[:3])
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    xt, yt = torch.tensor(x), torch.tensor(y)
    loss = nn.CrossEntropyLoss()

    def val():
        with torch.no_grad():
            return np.mean([loss(net(xt[n_train + i: n_train + i + 128]), yt[n_train + i: n_train + i + 128]).item() for i in range(0, n_val, 128)])

    theirs = [val()]
    for _ in range(epochs):
        opt.zero_grad()
        loss(net(xt[:n_train]), yt[:n_train]).backward()
        opt.step()
        theirs.append(val())
    assert theirs[-1] < theirs[0] - 0.05
    np.testing.assert_allclose(ours, theirs, atol=2e-5)
