"""Bad input, through the command line and the Python API: every case is refused with a non-zero
exit and one line that names the argument and the fix, before anything is written."""

import subprocess
import sys

import pytest

import mtjax
from mtjax import cli

# A tiny experiment: nothing here ever trains, but a case that slipped through would run quickly.
TINY = ["--set", "teacher.n_features=8", "--set", "teacher.rank=2", "--set", "teacher.n_classes=2",
        "--set", "student.width=4", "--set", "train.n_epochs=2", "--set", "train.n_train=[16,16]",
        "--set", "train.n_pool=[16,16]", "--set", "train.n_test=16", "--set", "train.batch_size=8"]

CLI_CASES = [
    # (argv after the command, words the message must contain)
    (["simulate", "--grid", "relatedness=2"], ["relatedness", "[-1, 1]"]),
    (["simulate", "--grid", "lr=-0.1"], ["lr", "(0, inf)"]),
    (["simulate", "--grid", "s_b=-1"], ["s_b", "[0, inf)"]),
    (["simulate", "--grid", "q=2"], ["q", "[0, 1]"]),
    (["simulate", "--grid", "s_b=abc"], ["s_b", "not a number"]),
    (["simulate", "--grid", "eps_a=1.5"], ["eps_a", "[0, 1]"]),
    (["simulate", "--grid", "ntrain=0"], ["ntrain", "integers"]),
    (["simulate", "--grid", "ntrain=1.5"], ["ntrain", "not an integer"]),
    (["simulate", "--grid", "depth=-1"], ["depth", "[0, inf)"]),
    (["simulate", "--grid", "single_task=maybe"], ["single_task", "true or false"]),
    (["simulate", "--grid", "seed=-1"], ["seed", "integers"]),
    (["simulate", "--grid", "seed=1,1"], ["seed", "repeated"]),
    (["simulate", "--grid", "r=0.5"], ["unknown grid axis", "relatedness"]),
    (["simulate", "--grid", "s_b="], ["s_b", "no values"]),
    (["simulate", "--grid", "s_b"], ["--grid", "AXIS="]),
    (["simulate", "--set", "train.n_epoch=2"], ["train.n_epoch", "did you mean train.n_epochs"]),
    (["simulate", "--set", "train.n_epochs=abc"], ["n_epochs", "integer"]),
    (["simulate", "--set", "teacher.scale=abc"], ["scale", "not a number"]),
    (["simulate", "--set", "train.learning_rate=-1"], ["learning_rate", "(0.0, inf)"]),
    (["simulate", "--set", "student.activation=sigmoid"], ["activation", "relu"]),
    (["simulate", "--set", "train.protocol=batch"], ["protocol", "full_batch"]),
    (["simulate", "--set", "ntrain=3"], ["--set", "SECTION.KEY=VALUE"]),
    (["simulate", "--config", "missing.toml"], ["missing.toml", "no such file"]),
    (["simulate", "--config", "{bad_toml}"], ["bad.toml"]),
    (["simulate", "--config", "{unknown_key_toml}"], ["unknown spec keys", "grids"]),
    # A later compile group is invalid (paper protocol: task 2 needs at least task 1's data):
    (["simulate", "--preset", "paper", "--grid", "ntrain=100,400", "--grid", "ntrain_b=200"], ["n_train[1]=200", "ntrain=400"]),
    # The width-proportional theory needs a linear trunk (every theory covers relu at fixed width).
    (["theory", "--finite", "--width", "proportional", "--initial", "typical", "--set", "student.activation=relu"],
     ["activation", "linear"]),
    (["compare", "--set", "student.activation=sigmoid", "--grid", "s_b=1"], ["activation", "relu"]),
    (["compare", "--set", "train.n_steps=0", "--grid", "s_b=1"], ["n_steps", "[1, inf]"]),
    (["compare", "--grid", "w_b=-1"], ["w_b", "[0, inf)"]),
    (["plot", "{tmp}/nothing"], ["no summary"]),
    (["merge", "{tmp}/nothing"], ["no manifest.json"]),
]


def _fill(argv, tmp_path):
    (tmp_path / "cfg").mkdir()
    bad = tmp_path / "cfg" / "bad.toml"
    bad.write_text("[teacher\nscale = 1\n")
    unk = tmp_path / "cfg" / "unknown.toml"
    unk.write_text("[grids]\ns_b = [1.0]\n")
    subs = {"{bad_toml}": str(bad), "{unknown_key_toml}": str(unk), "{tmp}": str(tmp_path / "out")}
    out = []
    for a in argv:
        for k, v in subs.items():
            a = a.replace(k, v)
        out.append(a)
    return out


def _written(tmp_path) -> list[str]:
    return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if "cfg" not in p.parts)


@pytest.mark.parametrize("argv, words", CLI_CASES, ids=[" ".join(a[:3]) for a, _ in CLI_CASES])
def test_cli_refuses_bad_input_in_one_line_before_writing(argv, words, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = _fill(argv, tmp_path)
    if argv[0] in ("simulate", "theory", "compare"):
        argv = argv + ["--out", str(tmp_path / "out"), "--quiet"]
        if "--preset" not in argv:
            argv = argv[:1] + TINY + argv[1:]
        if "--grid" not in argv and "--config" not in argv:
            argv = argv + ["--grid", "s_b=1"]
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    msg = str(e.value.code)
    assert e.value.code not in (0, None), msg
    assert "\n" not in msg.strip(), f"more than one line: {msg!r}"
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"
    assert _written(tmp_path) == [], f"files written on refusal: {_written(tmp_path)}"


SPEC = {"teacher": {"n_features": 8, "rank": 2, "n_classes": 2},
        "student": {"width": 4},
        "train": {"n_epochs": 2, "n_train": [16, 16], "n_pool": [16, 16], "n_test": 16, "batch_size": 8}}

API_CASES = [
    (lambda out: mtjax.sweep(SPEC, {"relatedness": [2.0]}, out_dir=out), ["relatedness", "[-1, 1]"]),
    (lambda out: mtjax.sweep(SPEC, {"r": [0.0]}, out_dir=out), ["unknown grid axis 'r'"]),
    (lambda out: mtjax.sweep(SPEC, {"s_b": "abc"}, out_dir=out), ["s_b", "not a number"]),
    (lambda out: mtjax.sweep(SPEC, {"s_b": {"a": 1}}, out_dir=out), ["s_b", "list of values"]),
    (lambda out: mtjax.sweep({**SPEC, "train": {**SPEC["train"], "n_epoch": 3}}, {"s_b": [1.0]}, out_dir=out),
     ["train.n_epoch", "n_epochs"]),
    (lambda out: mtjax.sweep(SPEC, {"s_b": [1.0]}, out_dir=out, model=mtjax.PopulationTheory(initial="warm")), ["initial", "quenched"]),
    (lambda out: mtjax.compare(SPEC, {"s_b": [1.0]}, out_dir=out, models=["simulation", "theory"]), ["theory", "finite-data"]),
    (lambda out: mtjax.compare(SPEC, {"s_b": [1.0]}, out_dir=out, models=["simulation", "simulation"]), ["at most once"]),
    (lambda out: mtjax.compare({**SPEC, "student": {"width": 4, "activation": "sigmoid"}}, {"s_b": [1.0]}, out_dir=out),
     ["activation", "relu"]),
    (lambda out: mtjax.compare(SPEC, {"s_b": [1.0]}, out_dir=out, solvers={"population": None}, models=["simulation"]),
     ["solvers", "population"]),
]


@pytest.mark.parametrize("call, words", API_CASES, ids=[f"api{i}" for i in range(len(API_CASES))])
def test_api_refuses_bad_input_before_writing(call, words, tmp_path):
    with pytest.raises(ValueError) as e:
        call(tmp_path / "out")
    msg = str(e.value)
    assert "\n" not in msg.strip()
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"
    assert not (tmp_path / "out").exists()


def test_enough_bad_inputs_are_covered():
    assert len(CLI_CASES) + len(API_CASES) >= 25


def test_corrected_command_runs_after_a_refused_start(tmp_path):
    """A refused start leaves nothing behind, so fixing the typo is all it takes."""
    out = str(tmp_path / "out")
    base = ["simulate", *TINY, "--out", out, "--quiet", "--name", "fix", "--grid", "s_b=1"]
    with pytest.raises(SystemExit):
        cli.main(base + ["--set", "train.n_epoch=2"])
    cli.main(base)
    assert (tmp_path / "out" / "fix" / "summary.csv").exists()


def test_no_traceback_on_the_command_line(tmp_path):
    """The real process: stderr is the one error line (a traceback would show 'Traceback')."""
    p = subprocess.run([sys.executable, "-m", "mtjax.cli", "simulate", "--grid", "relatedness=2", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == ["mtjax simulate: error: grid axis relatedness: value 2 is out of range; "
                                             "allowed: [-1, 1] (overlap r of the teachers' subspaces)"]


def test_scalar_grid_value_is_one_value(tmp_path):
    """`[grid] seed = 0` (a scalar, as TOML allows) is the list [0]."""
    assert mtjax.check_grid({"seed": 0, "s_b": 1.0}) == {"seed": [0], "s_b": [1.0]}


def test_simulation_refuses_data_sizes_above_its_pool():
    # apply_axes sets train.n_train_active without the constructor's check (the theories read
    # any P); a simulation would silently train on the pool's n_train examples only.
    exp = mtjax.experiment_from_spec({
        "teacher": {"n_features": 8, "rank": 2, "n_classes": 2},
        "student": {"depth": 1, "width": 4},
        "train": {"protocol": "full_batch", "n_train": [16, 16], "n_steps": 2, "eval_every": 1, "n_test": 16},
    })  # fmt: skip
    with pytest.raises(ValueError, match=r"\[32.0, 16.0\] exceed the training pool train.n_train=\(16, 16\)"):
        mtjax.simulate(mtjax.apply_axes(exp, {"ntrain": 32.0, "ntrain_b": 16.0}), mtjax.Seeds(0))
    h = mtjax.simulate(mtjax.apply_axes(exp, {"ntrain": 16.0, "ntrain_b": 8.0}), mtjax.Seeds(0))  # within: runs
    assert h.test_loss.shape[-1] == 2
    # Under jit the sizes are tracers and simulate cannot check them: the model's check, on the
    # concrete experiment, is what callers that trace the simulation run first.
    with pytest.raises(ValueError, match=r"\[32.0, 16.0\] exceed the training pool"):
        mtjax.Simulation().check(mtjax.apply_axes(exp, {"ntrain": 32.0, "ntrain_b": 16.0}))
    mtjax.Simulation().check(mtjax.apply_axes(exp, {"ntrain": 16.0, "ntrain_b": 8.0}))
