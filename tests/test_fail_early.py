"""Runs that break or lie become clear stops with nothing lost: SIGTERM on an epoch's last step, Ctrl-C, non-finite
losses, a workdir reused by another experiment, on other data or by two runs at once, damaged checkpoints, a missing
best checkpoint, a full disk."""

import errno
import itertools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import types

import numpy as np
import pytest

from orca_jax.config import load_config_file
from orca_jax.data import load_task, task_from_arrays
from orca_jax.parallel import INTERRUPTED_EXIT_CODE, PREEMPTED_EXIT_CODE, PreemptionGuard
from orca_jax.pipeline import DiskFullError, run
from orca_jax.workdir import RunLock, WorkdirError, check_data, data_fingerprint
from tests.test_task_kinds import ROOT
from tests.text_checkpoints import save_tiny_text_model

RNG = np.random.default_rng(0)
X = RNG.normal(size=(80, 12, 2)).astype(np.float32)
Y = (X[:, :, 0].mean(1) > 0).astype(np.int64)
STEPS = 5  # 40 training examples in batches of 8


def _not_json(constant):
    raise AssertionError(f"{constant} is not JSON")


@pytest.fixture(scope="module")
def body(tmp_path_factory):
    return save_tiny_text_model("roberta", tmp_path_factory.mktemp("body"), tokenizer=True)


def task():
    return task_from_arrays(X, Y, val_fraction=0.2, test_fraction=0.375)


def config(body, tmp_path, **refine):
    c = load_config_file(ROOT / "configs" / "own_data.py", "smoke")
    c.body.checkpoint, c.source.cache_dir = str(body), str(tmp_path / "cache")
    c.align.epochs, c.align.objective = 0, "none"  # refine only, no distance measured
    c.refine.update({"epochs": 2, **refine})
    return c


def history(workdir):
    return [json.loads(line) for line in (workdir / "refine_metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_sigterm_on_the_last_step_of_an_epoch_finishes_the_epoch_and_resumes(body, tmp_path, monkeypatch):
    whole = run(config(body, tmp_path, epochs=3), tmp_path / "whole", task=task())
    real_should_stop = PreemptionGuard.should_stop
    for stop_at in (STEPS - 1, 3 * STEPS - 1):  # the first epoch's last step; the final epoch's last step
        monkeypatch.setattr(PreemptionGuard, "should_stop", lambda self, step, s=stop_at: step == s)
        workdir = tmp_path / f"stop{stop_at}"
        if stop_at < 3 * STEPS - 1:
            with pytest.raises(SystemExit) as stopped:
                run(config(body, tmp_path, epochs=3), workdir, task=task())
            assert stopped.value.code == PREEMPTED_EXIT_CODE
            assert [r["epoch"] for r in history(workdir)] == [1]  # the epoch was finished and evaluated
            monkeypatch.setattr(PreemptionGuard, "should_stop", real_should_stop)
        # Resumed; or, stopped on the final epoch's last step, nothing is left to stop for: the run just ends.
        resumed = run(config(body, tmp_path, epochs=3), workdir, task=task())
        monkeypatch.setattr(PreemptionGuard, "should_stop", real_should_stop)
        assert [r["train_loss"] for r in history(workdir)] == pytest.approx(
            [r["train_loss"] for r in history(tmp_path / "whole")], rel=1e-6)
        assert resumed["refine"]["test_accuracy"] == whole["refine"]["test_accuracy"]


@pytest.mark.slow
def test_ctrl_c_stops_at_the_next_step_after_saving_and_a_second_stops_at_once(body, tmp_path, monkeypatch, caplog):
    real_should_stop = PreemptionGuard.should_stop

    def press_ctrl_c_at(step_wanted, times):
        def should_stop(self, step):
            if step == step_wanted:
                for _ in range(times):
                    os.kill(os.getpid(), signal.SIGINT)  # handled by the guard, as a terminal's Ctrl-C would be
            return real_should_stop(self, step)
        monkeypatch.setattr(PreemptionGuard, "should_stop", should_stop)

    press_ctrl_c_at(2, times=1)
    workdir = tmp_path / "w"
    with caplog.at_level(logging.WARNING, logger="orca_jax"), pytest.raises(SystemExit) as stopped:
        run(config(body, tmp_path, epochs=2), workdir, task=task())
    assert stopped.value.code == INTERRUPTED_EXIT_CODE
    assert "press Ctrl-C again to stop at once" in caplog.text
    assert "refine stopped by Ctrl-C at epoch 1, step 3; rerun the same command to resume" in caplog.text
    press_ctrl_c_at(STEPS + 1, times=2)
    with pytest.raises(KeyboardInterrupt):
        run(config(body, tmp_path, epochs=2), workdir, task=task())
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the guard gave Ctrl-C back
    monkeypatch.setattr(PreemptionGuard, "should_stop", real_should_stop)
    summary = run(config(body, tmp_path, epochs=2), workdir, task=task())
    assert [r["epoch"] for r in history(workdir)] == [1, 2] and summary["refine"]["best_epoch"] in (1, 2)


@pytest.mark.slow
def test_a_non_finite_loss_stops_with_epoch_and_step_and_keeps_the_last_checkpoint(body, tmp_path):
    c = config(body, tmp_path, epochs=3, warmup_epochs=0, clip=-1.0)
    c.optimizer.update(dict(name="sgd", learning_rate=1e30, momentum=0.0, weight_decay=0.0))
    with pytest.raises(FloatingPointError, match=r"training loss is (nan|inf) at epoch 1, step \d+; stopped without "
                                                 "saving .*Lower optimizer.learning_rate"):
        run(c, tmp_path / "w", task=task())
    assert not (tmp_path / "w" / "summary.json").exists()


@pytest.mark.slow
def test_a_non_finite_distance_stops_the_align_stage_with_its_epoch(body, tmp_path):
    c = config(body, tmp_path, epochs=0)
    c.align.update(dict(epochs=3, objective="otdd-exact", checkpoint_every=1))
    c.optimizer.update(dict(name="sgd", learning_rate=1e30, momentum=0.0, weight_decay=0.0))
    with pytest.raises(FloatingPointError, match=r"align: the distance is (nan|inf) at epoch [23]; stopped without "
                                                 r"saving \(the last good checkpoint, epoch [12], is kept\)"):
        run(c, tmp_path / "w", task=task())
    assert not (tmp_path / "w" / "summary.json").exists()


@pytest.mark.slow
def test_a_workdir_resumes_only_the_same_experiment(body, tmp_path, caplog):
    workdir = tmp_path / "w"
    run(config(body, tmp_path, epochs=1), workdir, task=task())
    other = config(body, tmp_path, epochs=1)
    other.seed, other.optimizer.learning_rate = 1, 3e-4
    with pytest.raises(WorkdirError, match=r"another experiment: optimizer.learning_rate=0.0003 \(was 0.001\), "
                                           r"seed=1 \(was 0\).*--restart"):
        run(other, workdir, task=task())
    other_data = task_from_arrays(X[::-1].copy(), Y[::-1].copy(), val_fraction=0.2, test_fraction=0.375)
    with pytest.raises(WorkdirError, match=r"trained on other data than task 'arrays' gives now: train.x has other "
                                           r"values.*--restart"):
        run(config(body, tmp_path, epochs=1), workdir, task=other_data)
    more = run(config(body, tmp_path, epochs=2), workdir, task=task())  # more epochs: safe, resumes
    assert [r["epoch"] for r in history(workdir)] == [1, 2] and more["refine"]["best_epoch"] in (1, 2)
    with caplog.at_level(logging.WARNING, logger="orca_jax"):
        run(other, workdir, task=task(), restart=True)
    assert "--restart: deleted" in caplog.text and [r["epoch"] for r in history(workdir)] == [1]
    assert json.loads((workdir / "config.json").read_text())["seed"] == 1


def test_the_data_fingerprint_sees_arrays_changed_in_place_and_samples_large_memory_maps(tmp_path, monkeypatch):
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "y.npy", Y)
    (tmp_path / "w").mkdir()
    check_data(tmp_path / "w", load_task(f"npz:{tmp_path}", val_fraction=0.2, num_classes=2))
    (tmp_path / "w" / "summary.json").write_text("{}")  # a finished run: held to its data
    y = np.load(tmp_path / "y.npy", mmap_mode="r+")
    y[7] = 1 - y[7]  # one label rewritten in place: same file size, shapes and dtypes
    y.flush()
    with pytest.raises(WorkdirError, match=rf"task 'npz:{tmp_path}' gives now: \w+.y has other values"):
        check_data(tmp_path / "w", load_task(f"npz:{tmp_path}", val_fraction=0.2, num_classes=2))
    np.save(tmp_path / "x.npy", X[:, :6])
    with pytest.raises(WorkdirError, match=r"train.x is <f4 \(\d+, 6, 2\) \(was <f4 \(\d+, 12, 2\)\)"):
        check_data(tmp_path / "w", load_task(f"npz:{tmp_path}", val_fraction=0.2, num_classes=2))
    monkeypatch.setattr("orca_jax.workdir._FINGERPRINT_WHOLE_BYTES", 0)  # every array "large": sampled rows
    monkeypatch.setattr("orca_jax.workdir._FINGERPRINT_ROWS", 3)
    fingerprint = data_fingerprint(task())
    assert fingerprint["train.x"]["hashed"] == "3 rows" and fingerprint["train.x"]["shape"] == [40, 12, 2]


def test_a_second_run_on_a_busy_workdir_is_refused_at_once(body, tmp_path):
    (tmp_path / "w").mkdir()
    with RunLock(tmp_path / "w"):
        with pytest.raises(WorkdirError, match=r"is in use by process \d+ on .*Wait for that run"):
            run(config(body, tmp_path), tmp_path / "w", task=task())


@pytest.mark.slow
def test_damaged_checkpoints_and_a_missing_best_fall_back_with_warnings(body, tmp_path, caplog):
    workdir = tmp_path / "w"
    run(config(body, tmp_path, epochs=2), workdir, task=task())
    latest = workdir / "refine" / str(2 * STEPS)
    for file in latest.rglob("*"):
        if file.is_file():
            file.write_bytes(b"\0" * 7)
    shutil.rmtree(workdir / "refine_best")
    with caplog.at_level(logging.WARNING, logger="orca_jax"):
        summary = run(config(body, tmp_path, epochs=3), workdir, task=task())
    assert f"refine/{2 * STEPS} does not restore" in caplog.text
    assert [r["epoch"] for r in history(workdir)] == [1, 2, 3]  # epoch 2 redone from the epoch-1 checkpoint
    assert summary["refine"]["best_epoch"] in (1, 2, 3)


@pytest.mark.slow
def test_a_missing_best_checkpoint_is_said_in_the_summary(body, tmp_path):
    workdir = tmp_path / "w"
    run(config(body, tmp_path, epochs=1), workdir, task=task())
    shutil.rmtree(workdir / "refine_best")
    summary = run(config(body, tmp_path, epochs=1), workdir, task=task())
    assert any("refine_best is missing or damaged" in note for note in summary["refine"]["notes"])
    json.loads((workdir / "summary.json").read_text(), parse_constant=_not_json)  # strict JSON: no NaN, no Infinity


def test_a_full_disk_is_said_once_plainly(body, tmp_path, monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("orca_jax.workdir.write_file", no_space)
    with pytest.raises(DiskFullError, match=r"The disk holding .* is full \(.* GiB free\)\. Free some space and "
                                            "rerun the same command"):
        run(config(body, tmp_path), tmp_path / "w", task=task())


@pytest.mark.slow
def test_a_resumed_run_sums_its_stages_seconds_over_attempts_and_notes_classes_left_untrained(body, tmp_path,
                                                                                                monkeypatch):
    # Labels 1 and 2 (class 0 empty), and a class 3 that only the test split has.
    y_test = np.where(np.arange(20) == 0, 3, Y[60:] + 1)
    data = task_from_arrays(X[:60], Y[:60] + 1, x_test=X[60:], y_test=y_test, val_fraction=0.2)
    c = config(body, tmp_path, epochs=2)
    c.align.update(dict(epochs=2, objective="otdd-exact", checkpoint_every=1))
    slow_clock = lambda: types.SimpleNamespace(perf_counter=itertools.count(0.0, 1000.0).__next__)  # noqa: E731
    # Attempt 1 stops after align epoch 1 (guard step 0) on a clock that runs 1000 s a reading; attempt 2 in
    # refine epoch 1 (guard step 2 + 2) on such a clock; attempt 3 finishes on real time. Without the seconds of
    # the earlier attempts, both stages would report a few seconds.
    for stop_at in (0, 4):  # align, then refine
        monkeypatch.setattr(PreemptionGuard, "should_stop", lambda self, step, s=stop_at: step == s)
        monkeypatch.setattr("orca_jax.train.stage.time", slow_clock())  # the clock both stages keep (StageRun)
        with pytest.raises(SystemExit):
            run(c, tmp_path / "w", task=data)
        monkeypatch.undo()
    summary = run(c, tmp_path / "w", task=data)
    assert summary["align"]["seconds"] >= 1000 and summary["refine"]["seconds"] >= 1000, summary
    assert [note.split(",")[0] for note in summary["notes"]] == [
        "task 'arrays': classes [0] of the 4-class head have no example in any split (the labels hold 1..3)",
        "task 'arrays': classes [3] have no training example (class 3: 1 in test)",
    ]


# A run whose checkpoint writer (Orbax's, in its background threads) finds the disk full, through run_command as the
# command lines run it; its own process, since the run's last word is the end of that process.
FULL_DISK_RUN = """
import errno, sys
import numpy as np
import orbax.checkpoint._src.handlers.json_checkpoint_handler as json_handler
from orca_jax.cli import run_command
from orca_jax.pipeline import run
from tests.test_fail_early import config, task

async def no_space(self, x, directory):
    raise OSError(errno.ENOSPC, "No space left on device")

json_handler.JsonCheckpointHandler._save_fn = no_space
body, tmp_path = sys.argv[1:]
sys.exit(run_command(lambda: run(config(body, __import__("pathlib").Path(tmp_path), epochs=3), tmp_path + "/w",
                                 task=task())))
"""


@pytest.mark.slow
def test_a_disk_filling_under_the_background_writer_is_said_once_last(body, tmp_path):
    done = subprocess.run([sys.executable, "-c", FULL_DISK_RUN, str(body), str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    said = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1 and said[-1].startswith(f"error: The disk holding {tmp_path}/w is full"), said[-20:]
    assert "Traceback" not in done.stderr and "Event loop is closed" not in done.stderr, done.stderr[-3000:]
    assert sum("is full" in line for line in said) == 1


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary_one(tmp_path):
    from orca_jax.atomic import atomic_path, atomic_write

    target = tmp_path / "a" / "results.json"
    atomic_write(target, "old")
    with pytest.raises(OSError, match="disk full"):
        with atomic_path(target) as part:
            part.write_text("half of the new")
            raise OSError("disk full")
    assert target.read_text() == "old" and [p.name for p in target.parent.iterdir()] == ["results.json"]
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new" and [p.name for p in target.parent.iterdir()] == ["results.json"]
