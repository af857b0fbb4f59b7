"""A run of scripts/train.py as two processes (4 CPU devices each, started by environment variables, collectives
over gloo) ends with the summary of one process on 8 devices, also when SIGTERM reaches only one of them mid-run and
both are restarted."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from orca_jax.parallel import PREEMPTED_EXIT_CODE
from tests.parallel.processes import ProcessGroup
from tests.test_task_kinds import ROOT
from tests.text_checkpoints import save_tiny_text_model


def command(workdir, data, body, cache):
    return [
        sys.executable, "scripts/train.py", "--config=configs/own_data.py:smoke", f"--workdir={workdir}",
        f"--config.task.name=npz:{data}", f"--config.body.checkpoint={body}", f"--config.source.cache_dir={cache}",
        "--config.task.kind=classification", "--config.refine.epochs=3", "--config.task.val_fraction=0.25",
        "--config.align.epochs=1",  # one cross-process OTDD update is the check; each costs ~5 s on 2 processes
    ]


def summary(workdir):
    return json.loads((workdir / "summary.json").read_text())


@pytest.mark.slow
def test_two_processes_equal_one_and_stop_together_on_sigterm(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(160, 12, 2)).astype(np.float32)
    np.savez(tmp_path / "data.npz", x=x, y=(x[:, :, 0].mean(1) > 0).astype(np.int64))
    body = save_tiny_text_model("roberta", tmp_path / "body", tokenizer=True)
    args = dict(data=tmp_path / "data.npz", body=body, cache=tmp_path / "cache")

    one = subprocess.run(command(tmp_path / "one", **args), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]

    workdir = tmp_path / "two"
    with ProcessGroup(command(workdir, **args), tmp_path / "logs") as group:
        # SIGTERM to process 1 alone, once the refine stage has checkpointed its first epoch (8 steps per epoch).
        deadline = time.monotonic() + 600
        while not any(p.name.isdigit() and int(p.name) >= 8 for p in (workdir / "refine").glob("*")) if (
                workdir / "refine").exists() else True:
            assert time.monotonic() < deadline and all(p.poll() is None for p in group.processes), group.report()
            time.sleep(0.2)
        group.processes[1].send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=300) for p in group.processes]
        assert codes == [PREEMPTED_EXIT_CODE] * 2, group.report()
        stopped = [line for text in group.outputs() for line in text.splitlines() if "stopped by SIGTERM" in line]
        assert len(stopped) == 2 and stopped[0].split("SIGTERM")[1] == stopped[1].split("SIGTERM")[1], stopped
    with ProcessGroup(command(workdir, **args), tmp_path / "logs2") as group:
        group.wait(timeout=600)

    a, b = summary(tmp_path / "one"), summary(workdir)
    assert a["align"]["distance_before"] == pytest.approx(b["align"]["distance_before"], rel=1e-5)
    assert a["align"]["distance_after"] == pytest.approx(b["align"]["distance_after"], rel=1e-5)
    assert a["refine"]["test_accuracy"] == b["refine"]["test_accuracy"]
    assert a["refine"]["best_val_accuracy"] == b["refine"]["best_val_accuracy"]
    history = lambda w: [json.loads(line) for line in (w / "refine_metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert [r["train_loss"] for r in history(workdir)] == pytest.approx(
        [r["train_loss"] for r in history(tmp_path / "one")], rel=1e-5)
