"""The exit-status contract of every command-line entry point, on a table of bad inputs a new user would give:
status 2 and the message alone (no traceback), before anything is trained. The argparse commands run in this
process; the absl ones (which share flag names, so one process each) run all their cases in one subprocess."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from tests.test_task_kinds import ROOT

# Runs `main` of an absl script through orca_jax.cli.run_app once per argv; prints [[status, output], ...].
DRIVER = """
import contextlib, io, json, os, runpy, sys, traceback
from orca_jax.cli import run_app
script, cases = sys.argv[1], json.loads(sys.argv[2])
main = runpy.run_path(script, run_name="driven")["main"]  # the imports, paid once
results = []
for argv in cases:  # each case in a fresh fork: absl's flags are parsed once per process
    read, write = os.pipe()
    if os.fork() == 0:
        out = io.StringIO()
        with contextlib.redirect_stderr(out), contextlib.redirect_stdout(out):
            try:
                sys.argv = [script, *argv]  # config_flags finds the overrides there
                run_app(main, sys.argv)
                code = 0
            except SystemExit as exit:
                code = exit.code
            except BaseException:
                traceback.print_exc()
                code = "raised"
        os.write(write, json.dumps([code, out.getvalue()]).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        results.append(json.loads(pipe.read()))
    os.wait()
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    x, y = np.zeros((20, 8, 1), np.float32), np.arange(20) % 2
    np.savez(d / "good.npz", x=x, y=y)
    (d / "truncated.npz").write_bytes((d / "good.npz").read_bytes()[:300])
    (d / "text.npz").write_text("x,y\n1,2\n")
    np.savez(d / "strings.npz", x=x, y=np.array(["a", "b"] * 10))
    np.savez(d / "empty.npz", x=x[:0], y=y[:0])
    np.savez(d / "three.npz", x=x[:3], y=y[:3])
    np.savez(d / "floats.npz", x=x, y=y.astype(np.float64))
    (d / "no_y").mkdir()
    np.save(d / "no_y" / "x.npy", x)
    (d / "a_file").write_text("")
    (d / "no_weights").mkdir()
    return d


def absl_cases(d):
    w = f"--workdir={d}/w"  # one for all: a run that failed before training holds no other run's config or data
    own = ["--config=configs/own_data.py:smoke", "--config.body.checkpoint=no-such-org/no-such-model", w]
    return {
        "scripts/train.py": [
            ([], "Flag --config must have a value other than None"),
            (["--config=nope.py", w], "cannot load the config file"),
            (["--config=configs/demo.py:nope", w], "Unknown variant 'nope' of configs/demo.py"),
            (["--config=configs/demo.py", "--config.refine.epochz=3", w], 'did you mean "epochs"'),
            (["--config=configs/demo.py", "--config.refine.epochs=abc", w], "--config.refine.epochs=abc"),
            (["--config=configs/demo.py", w, "--restart=maybe"], "--restart=maybe"),
            (["--config=configs/demo.py", "--config.seed=-1", "--config.refine.lr=1", w], "--config.refine.lr: the config has no field 'lr'"),
            ([*own, f"--config.task.name=npz:{d}/missing.npz"], f"no file or directory {d}/missing.npz"),
            ([*own, f"--config.task.name=npz:{d}/truncated.npz"], f"{d}/truncated.npz is damaged or truncated"),
            ([*own, f"--config.task.name=npz:{d}/text.npz"], f"{d}/text.npz is not an .npz archive"),
            ([*own, f"--config.task.name=npz:{d}/no_y"], "lacks y.npy"),
            ([*own, f"--config.task.name=npz:{d}/strings.npz", "--config.task.kind=classification"],
             "np.unique(y, return_inverse=True)"),
            ([*own, f"--config.task.name=npz:{d}/empty.npz"], "x holds no examples"),
            ([*own, f"--config.task.name=npz:{d}/floats.npz", "--config.task.kind=classification"],
             "y has shape (20,) and dtype float64"),  # the file's count, not the training split's
            ([*own, f"--config.task.name=npz:{d}/three.npz"], "leaves 0 validation and 2 training examples; raise "
                                                               "task.val_fraction to at least 0.5"),
            ([*own, f"--config.task.name=npz:{d}/three.npz", "--config.task.val_fraction=0.5"],
             "The align stage needs a class with at least two examples"),  # before the (missing) body is loaded
            ([*own[:-1], f"--config.task.name=npz:{d}/good.npz", f"--workdir={d}/a_file"], "is a file"),
            ([*own, f"--config.task.name=npz:{d}/good.npz"], "no-such-org/no-such-model"),
            ([own[0], f"--config.body.checkpoint={d}/no_weights", f"--config.task.name=npz:{d}/good.npz", w],
             f"{d}/no_weights"),
        ],
        "scripts/sweep.py": [
            ([], "Flag --config must have a value other than None"),
            (["--config=configs/demo.py", "--sweep=nope", w], "--sweep"),
            (["--config=configs/demo.py", "--sweep=objectives", "--seeds=a", w], "--seeds=a: give integer seeds"),
        ],
        "scripts/tune.py": [
            (["--config=configs/demo.py", "--trials=2", "--space=lr=log:1e-3", w],
             "--space part 'lr=log:1e-3': a range needs two bounds, log:LOW:HIGH"),
            (["--config=configs/demo.py", "--trials=2", "--trial-seeds=1,2", "--final-seeds=2,3", w],
             "must be seeds no trial used"),
            (["--config=configs/demo.py", "--trials=2", "--space=bs=8|x", w], "'x' is not an int"),
            (["--config=configs/demo.py", "--trials=2", "--storage=postgresql://nobody@127.0.0.1:1/none", w],
             "--storage=postgresql://nobody@127.0.0.1:1/none: "),  # no driver, or no server: both the user's to fix
        ],
        "scripts/select_body.py": [
            ([], "Flag --config must have a value other than None"),
            (["--config=nope.py", "--bodies=x", w], "cannot load the config file"),
        ],
    }


def test_absl_entry_points_exit_2_with_the_message_alone(files):
    for script, cases in absl_cases(files).items():
        done = subprocess.run([sys.executable, "-c", DRIVER, script, json.dumps([argv for argv, _ in cases])],
                              cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        for (argv, said), (code, output) in zip(cases, json.loads(done.stdout.splitlines()[-1])):
            assert code == 2 and "Traceback" not in output and said in output, (script, argv, code, output)
    assert not (files / "w" / "tune.json").exists()  # a refused storage does not become the directory's search


def test_argparse_entry_points_exit_2_with_the_message_alone(files, capsys):
    from scripts import evaluate, export, predict, prepare_data, verify_weights

    d = files
    cases = [
        (predict.main, ["--model", f"{d}/missing", "--inputs", f"npz:{d}/good.npz", "--out", f"{d}/p.npz"],
         f"{d}/missing"),
        (predict.main, ["--model", f"{d}/no_weights", "--inputs", f"npz:{d}/truncated.npz", "--out", f"{d}/p.npz"],
         f"{d}/truncated.npz is damaged or truncated"),
        (evaluate.main, ["--model", f"{d}/no_weights", "--data", f"npz:{d}/text.npz"], "is not an .npz archive"),
        (export.main, ["--workdir", f"{d}/missing", "--out", f"{d}/e"], f"{d}/missing"),
        (verify_weights.main, [f"{d}/no_weights", "--tolerance", "-1"], "--tolerance=-1.0 must be a finite number"),
        (verify_weights.main, [f"{d}/no_weights", "--tolerance", "nan"], "--tolerance=nan must be"),
        (verify_weights.main, [f"{d}/no_weights"], f"{d}/no_weights"),
        (prepare_data.main, ["no_such_task"], "Unknown task 'no_such_task'"),
        (predict.main, [], "the following arguments are required"),
    ]
    for main, argv, said in cases:
        try:
            code = main(argv)
        except SystemExit as exit:
            code = exit.code
        output = "".join(capsys.readouterr())
        assert code == 2 and "Traceback" not in output and said in output, (main.__module__, argv, code, output)


def test_run_command_statuses(capsys):
    from orca_jax.cli import RunError, run_command
    from orca_jax.data import DataError

    def raising(error):
        def body():
            raise error
        return body

    assert run_command(raising(DataError("bad data"))) == 2 and capsys.readouterr().err == "bad data\n"
    assert run_command(raising(RunError("broke"))) == 1 and capsys.readouterr().err == "error: broke\n"
    assert run_command(raising(KeyboardInterrupt())) == 130
    assert "stopped at once, without saving; rerun the same command" in capsys.readouterr().err


def test_unusable_source_features_are_user_errors_naming_the_file(tmp_path, monkeypatch, capsys):
    from types import SimpleNamespace

    from orca_jax.cli import run_command
    from orca_jax.config import load_config_file
    from orca_jax.pipeline import load_source_features

    config = load_config_file(ROOT / "configs" / "demo.py", "smoke")
    model = SimpleNamespace(body=None, embedder=SimpleNamespace(width=4))
    path = tmp_path / "features.npz"
    for features, said in ((np.ones((5, 4)), f"are all identical, .* then delete {path} so that they are computed"),
                           (np.eye(5, 3), f"have width 3 but the embedder's tokens have 4: .* Delete {path} .*"
                                          "--config.source.cache_dir=DIR")):
        cached = SimpleNamespace(features=features, labels=np.zeros(5, np.int32), path=path)
        monkeypatch.setattr("orca_jax.pipeline.load_or_compute", lambda *a, c=cached, **k: c)
        assert run_command(lambda: load_source_features(config, model)) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and re.search(said, err), err


def test_the_compilation_cache_is_on_under_orca_jax_cache_unless_turned_off(tmp_path, monkeypatch):
    import jax

    from orca_jax.cli import COMPILE_CACHE_MIN_SECONDS, use_compile_cache

    names = ("jax_compilation_cache_dir", "jax_enable_compilation_cache", "jax_persistent_cache_min_compile_time_secs")
    saved = {name: getattr(jax.config, name) for name in names}
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", raising=False)
    try:
        jax.config.update("jax_compilation_cache_dir", None)  # as in a process whose environment names none
        use_compile_cache(True)
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "orca_jax" / "xla")
        assert jax.config.jax_persistent_cache_min_compile_time_secs == COMPILE_CACHE_MIN_SECONDS
        jax.config.update("jax_compilation_cache_dir", "/elsewhere")  # JAX_COMPILATION_CACHE_DIR's choice stands
        use_compile_cache(True)
        assert jax.config.jax_compilation_cache_dir == "/elsewhere"
        use_compile_cache(False)  # --nocompile_cache
        assert jax.config.jax_enable_compilation_cache is False
    finally:
        for name, value in saved.items():
            jax.config.update(name, value)
