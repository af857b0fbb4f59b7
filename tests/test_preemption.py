"""A refine run killed with SIGKILL and restarted ends exactly where an uninterrupted run ends (run as real
processes through the command line)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.text_checkpoints import save_tiny_text_model

ROOT = Path(__file__).resolve().parents[1]


EPOCHS = 8  # long enough after the first epoch's checkpoint that the kill lands mid-run, even on a fast machine


@pytest.fixture(scope="module")
def body(tmp_path_factory):
    return save_tiny_text_model("roberta", tmp_path_factory.mktemp("body"), tokenizer=True)


def command(workdir: Path, cache: Path, body: Path) -> list[str]:
    # The smoke demo without its align stage on a tiny body: 256 mnist1d examples, 16 steps per epoch.
    return [
        sys.executable, "scripts/train.py", "--config=configs/demo.py:smoke", f"--workdir={workdir}",
        f"--config.body.checkpoint={body}", "--config.align.epochs=0", "--config.align.objective=none",
        f"--config.refine.epochs={EPOCHS}", f"--config.refine.decay_epochs={EPOCHS}", "--config.task.train_size=256",
        "--config.batch_size=16", "--config.embedder.target_seq_len=10", "--config.task.val_fraction=0.02",
        f"--config.source.cache_dir={cache}",
    ]


def run_to_end(workdir: Path, cache: Path, body: Path) -> subprocess.CompletedProcess:
    return subprocess.run(command(workdir, cache, body), cwd=ROOT, capture_output=True, text=True, timeout=600)


def checkpoint_steps(workdir: Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "refine").glob("*") if p.name.isdigit())


def interrupt_after_step(workdir: Path, cache: Path, body: Path, sig: int, step: int) -> int:
    """Starts (or resumes) the run and sends `sig` half a second after a checkpoint of `step` or later exists."""
    process = subprocess.Popen(command(workdir, cache, body), cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if (workdir / "refine").exists() and checkpoint_steps(workdir) and checkpoint_steps(workdir)[-1] >= step:
            break
        time.sleep(0.1)
    time.sleep(0.5)  # into the next epoch
    assert process.poll() is None, "the run ended before it could be interrupted; make it longer"
    os.kill(process.pid, sig)
    return process.wait(timeout=300)


def history(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "refine_metrics.jsonl").read_text().splitlines()]


def same_run(a: Path, b: Path) -> None:
    ha, hb = history(a), history(b)
    assert [r["epoch"] for r in ha] == [r["epoch"] for r in hb] == list(range(1, EPOCHS + 1))
    for ra, rb in zip(ha, hb):
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-6)
        assert ra["val_accuracy"] == rb["val_accuracy"]
    sa = json.loads((a / "summary.json").read_text())["refine"]
    sb = json.loads((b / "summary.json").read_text())["refine"]
    assert sa["test_accuracy"] == sb["test_accuracy"]


@pytest.mark.slow
def test_sigkill_then_restart_equals_an_uninterrupted_run(body, tmp_path):
    # SIGTERM through the command line (exit 75, then a resume equal to an uninterrupted run) is
    # tests/test_multiprocess_run.py's, on two processes; here the stop that gives no chance to save.
    cache, whole, parts = tmp_path / "cache", tmp_path / "whole", tmp_path / "parts"
    result = run_to_end(whole, cache, body)
    assert result.returncode == 0, result.stderr[-3000:]
    # SIGKILLed in the second epoch (16 steps per epoch): the epoch-1 checkpoint must do.
    assert interrupt_after_step(parts, cache, body, signal.SIGKILL, step=16) == -signal.SIGKILL
    assert checkpoint_steps(parts)[-1] < 16 * EPOCHS
    result = run_to_end(parts, cache, body)
    assert result.returncode == 0, result.stderr[-3000:]
    same_run(whole, parts)
