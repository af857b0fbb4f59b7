"""Two real processes of 4 CPU devices each, started the documented way (JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID), joined into one 8-device run by `initialize_distributed`."""

import json
import signal
import sys
import time

import pytest

from tests.parallel.processes import ProcessGroup


def worker(scenario, out):
    return [sys.executable, "-m", "tests.parallel.worker", scenario, str(out)]


@pytest.mark.slow
def test_two_processes_train_one_sharded_model(tmp_path):
    with ProcessGroup(worker("sharded", tmp_path), tmp_path / "logs") as group:
        group.wait(timeout=120)
    assert [(tmp_path / f"sharded_{i}").read_text() for i in range(2)] == ["ok", "ok"]


def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path):
    with ProcessGroup(worker("preemption", tmp_path), tmp_path / "logs") as group:
        progress = [tmp_path / f"progress_{i}" for i in range(2)]
        deadline = time.monotonic() + 120
        while not all(path.exists() and int(path.read_text() or 0) >= 10 for path in progress):
            running = all(process.poll() is None for process in group.processes)
            assert running and time.monotonic() < deadline, group.report()
            time.sleep(0.05)
        signalled_at = int(progress[1].read_text())
        group.processes[1].send_signal(signal.SIGTERM)
        group.wait(timeout=60)
    stopped = [json.loads((tmp_path / f"stopped_{i}.json").read_text()) for i in range(2)]
    print("stopped:", stopped)
    assert stopped[0]["step"] == stopped[1]["step"] >= signalled_at


def test_a_failing_process_fails_the_group_at_once(tmp_path):
    """Process 0 would wait minutes at start-up for a process 1 that died; the group reports instead of hanging."""
    script = ("import os, sys\n"
              "if os.environ['JAX_PROCESS_ID'] == '1': sys.exit('process 1 gives up')\n"
              "from orca_jax.parallel import initialize_distributed\n"
              "initialize_distributed()\n")
    start = time.monotonic()
    with ProcessGroup([sys.executable, "-c", script], tmp_path / "logs") as group:
        with pytest.raises(AssertionError, match="(?s)exit codes .*process 1 gives up"):
            group.wait(timeout=60)
    assert time.monotonic() - start < 30
