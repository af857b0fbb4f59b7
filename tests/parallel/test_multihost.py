"""Start-up settings and the one-process preemption guard, in this process (the two-process behaviour is in
test_multiprocess.py)."""

import os
import signal
import time

import jax
import pytest

from orca_jax.parallel import PreemptionGuard, initialize_distributed, is_main_process
from orca_jax.parallel.multihost import CLUSTER_VARIABLES


@pytest.fixture
def environment(monkeypatch):
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", *CLUSTER_VARIABLES):
        monkeypatch.delenv(name, raising=False)

    def set_variables(**variables):
        for name, value in variables.items():
            monkeypatch.setenv(name, value)

    return set_variables


@pytest.mark.parametrize("variables, message", [
    (dict(JAX_NUM_PROCESSES="2"), "needs all of .*; missing: JAX_COORDINATOR_ADDRESS, JAX_PROCESS_ID"),
    (dict(JAX_NUM_PROCESSES="2", JAX_PROCESS_ID="0"), "missing: JAX_COORDINATOR_ADDRESS.$"),
    (dict(JAX_COORDINATOR_ADDRESS="localhost", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID="0"), "is not host:port"),
    (dict(JAX_COORDINATOR_ADDRESS="h:1", JAX_NUM_PROCESSES="two", JAX_PROCESS_ID="0"), "'two' is not an integer"),
    (dict(JAX_COORDINATOR_ADDRESS="h:1", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID="2"), "need 0 <= JAX_PROCESS_ID <"),
    (dict(JAX_COORDINATOR_ADDRESS="h:1"), "JAX_NUM_PROCESSES and JAX_PROCESS_ID are not"),
])
def test_incomplete_or_wrong_settings_are_named(environment, variables, message):
    environment(**variables)
    with pytest.raises(ValueError, match=message):
        initialize_distributed()
    assert not jax.distributed.is_initialized()


def test_one_process_needs_no_start_up(environment):
    initialize_distributed()
    assert not jax.distributed.is_initialized() and is_main_process()


def test_one_process_stops_on_sigterm_and_restores_the_handler():
    before = signal.getsignal(signal.SIGTERM)
    with PreemptionGuard() as guard:
        assert not guard.should_stop(0)
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 5
        while not guard.should_stop(1) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert guard.should_stop(1)
    assert signal.getsignal(signal.SIGTERM) == before
