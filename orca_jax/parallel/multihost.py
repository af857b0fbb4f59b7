"""Several processes as one run: start-up, the main process, and stopping together on a preemption notice.

Start-up (`initialize_distributed`), in order of precedence:
- JAX_NUM_PROCESSES and JAX_PROCESS_ID set (with JAX_COORDINATOR_ADDRESS=host:port, the address of process 0):
  read, checked and passed to `jax.distributed.initialize` here. jax 0.10.2 itself reads only the address, so this
  is what makes a workstation, a cloud VM group or a container fleet work without a cluster manager.
- otherwise SLURM (`srun`), Open MPI (`mpirun`) or a TPU pod: `jax.distributed.initialize()` finds everything.
- otherwise one process: nothing to start.
Cross-process collectives on CPU go through gloo, which jaxlib 0.10.2 uses by default
(`jax_cpu_collectives_implementation`; "mpi" is the other choice), so the same path runs as several processes of
fake CPU devices (`XLA_FLAGS=--xla_force_host_platform_device_count=N`, as the tests do).

Preemption (`PreemptionGuard`): a scheduler's SIGTERM may reach one process only, but a checkpoint needs every
process at the same step. With several processes the guard uses JAX's preemption sync service: the runtime catches
SIGTERM (it installs its own handler at start-up), tells the coordinator, and every process's
`reached_preemption_sync_point(step)` becomes true at one agreed step (the largest step any process had reported,
plus one). Checking involves no collective, unlike a `process_allgather` of a flag, which every process would
otherwise have to run (and wait for) at every step (docs/results.md, "Design measurements"). With one process the guard is a plain flag, set by SIGTERM
or by the first Ctrl-C.

A non-finite loss needs no agreement: the loss a jitted step returns is one global value that every process reads
identically, so every process takes the same decision from it.
"""

from __future__ import annotations

import logging
import os
import signal

import jax
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)

MANUAL_VARIABLES = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
CLUSTER_VARIABLES = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES")


def _int_variable(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not an integer.") from None


def initialize_distributed() -> None:
    """Starts the multi-process runtime once, as the module docstring describes; a no-op when already started or
    when the environment describes a single process. Call it before anything else touches JAX's devices."""
    if jax.distributed.is_initialized():
        return
    address = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if os.environ.get("JAX_NUM_PROCESSES") or os.environ.get("JAX_PROCESS_ID"):
        missing = [name for name in MANUAL_VARIABLES if not os.environ.get(name)]
        if missing:
            raise ValueError(
                f"Starting processes by hand needs all of {', '.join(MANUAL_VARIABLES)} (the first is host:port of "
                f"process 0); missing: {', '.join(missing)}."
            )
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"JAX_COORDINATOR_ADDRESS={address!r} is not host:port.")
        count, index = _int_variable("JAX_NUM_PROCESSES"), _int_variable("JAX_PROCESS_ID")
        if count < 1 or not 0 <= index < count:
            raise ValueError(
                f"JAX_PROCESS_ID={index} with JAX_NUM_PROCESSES={count}: need 0 <= JAX_PROCESS_ID < JAX_NUM_PROCESSES."
            )
        jax.distributed.initialize(address, num_processes=count, process_id=index)
    elif any(os.environ.get(name) for name in CLUSTER_VARIABLES):
        jax.distributed.initialize(address)
    elif address:
        raise ValueError(
            "JAX_COORDINATOR_ADDRESS is set but JAX_NUM_PROCESSES and JAX_PROCESS_ID are not, and no cluster "
            f"manager ({', '.join(CLUSTER_VARIABLES)}) is detected: set both, or unset the address for one process."
        )
    else:
        return
    log.info("process %d of %d, %d of %d devices here", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())


def is_main_process() -> bool:
    """Whether this process writes what exactly one process should write (logs, plots, summaries)."""
    return jax.process_index() == 0


PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: stopped by SIGTERM after saving a checkpoint; rerun the same command
INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT, what shells report for Ctrl-C: stopped after saving a checkpoint


class Preempted(SystemExit):
    """A stage saved a checkpoint after a preemption notice (SIGTERM) or a Ctrl-C and stopped: the process exits
    with `PREEMPTED_EXIT_CODE`, which schedulers can treat as "requeue", or `INTERRUPTED_EXIT_CODE`."""

    def __init__(self, message: str, code: int = PREEMPTED_EXIT_CODE):
        log.warning("%s", message)
        super().__init__(code)
        self.message = message


class PreemptionGuard:
    """Turns SIGTERM, delivered to any process, into a stop at one step boundary that every process agrees on; and,
    in a single-process run, the first Ctrl-C (SIGINT) too: a person stopping a run expects what a scheduler gets, a
    checkpoint and a resume. A second Ctrl-C stops at once (`KeyboardInterrupt`, nothing saved since the last
    checkpoint). A multi-process run keeps Python's Ctrl-C: one process's interrupt has no agreed stop step.

        with PreemptionGuard() as preemption:
            for step in range(first, last):
                state = train_step(state, batch(step))
                if preemption.should_stop(step):   # every process, every step, the same step numbers
                    save(state, step + 1)
                    raise preemption.stopped("train", f"at step {step + 1}")

    `step` must increase by one from call to call and be the same on every process (the global step of the run, so
    a resumed run continues the count): with several processes the agreed stop is a step number, and a process
    that skipped it would not stop. JAX computes that number once per process lifetime, from the last step each
    process passed to any guard, so loops that follow each other (align, then refine) should continue one count;
    a notice that arrives between loops (during evaluation, before the first loop) stops the next loop at its start.
    With several processes JAX's runtime catches SIGTERM from start-up on: code that polls no guard ignores it.
    JAX keeps one call counter per process for every caller of `reached_preemption_sync_point`, so the guard must
    be the only one: Orbax's checkpoint manager also calls it, and `orca_jax.train.checkpoints` switches that off.
    """

    def __init__(self):
        self._requested = None  # the signal's name once one arrived
        self._previous = {}
        self._depth = 0  # a stage enters the run's guard again: the handlers are installed and restored once

    def __enter__(self) -> PreemptionGuard:
        self._shared = jax.distributed.is_initialized()
        self._depth += 1
        if not self._shared and self._depth == 1:
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        if signum == signal.SIGINT:
            if self._requested == "Ctrl-C":
                raise KeyboardInterrupt  # the second one: at once
            log.warning("Ctrl-C: stopping at the next step boundary after saving a checkpoint (press Ctrl-C again "
                        "to stop at once, without saving)")
        self._requested = self._requested or ("Ctrl-C" if signum == signal.SIGINT else "SIGTERM")

    def should_stop(self, step: int) -> bool:
        if self._shared:
            stop = multihost_utils.reached_preemption_sync_point(step)
            self._requested = "SIGTERM" if stop else None
        stop = self._requested is not None
        if stop:
            log.warning("%s: stopping at step %d", "preemption notice (SIGTERM)" if self._requested == "SIGTERM"
                        else "Ctrl-C", step)
        return stop

    def stopped(self, stage: str, where: str) -> Preempted:
        """What a stage raises after saving, once `should_stop` said so: its exit status tells what stopped it."""
        code = INTERRUPTED_EXIT_CODE if self._requested == "Ctrl-C" else PREEMPTED_EXIT_CODE
        return Preempted(f"{stage} stopped by {self._requested or 'SIGTERM'} {where}; rerun the same command to "
                         "resume", code)

    def __exit__(self, *exc):
        self._depth -= 1
        if self._depth == 0:
            for signum, previous in self._previous.items():
                signal.signal(signum, previous)
            self._previous = {}
