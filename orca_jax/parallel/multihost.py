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
plus one). Checking involves no collective: measured on 2 CPU processes, 0.3 µs per check in a tight loop and
13-17 µs inside a training-like loop, against 4-6 ms for a `process_allgather` of one flag, which every process
would otherwise have to run (and wait for) at every step. With one process the guard is a plain SIGTERM flag.

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


class Preempted(SystemExit):
    """A stage saved a checkpoint after a preemption notice and stopped: the process exits with
    `PREEMPTED_EXIT_CODE`, which schedulers can treat as "requeue"."""

    def __init__(self, message: str):
        log.warning("%s", message)
        super().__init__(PREEMPTED_EXIT_CODE)
        self.message = message


class PreemptionGuard:
    """Turns SIGTERM, delivered to any process, into a stop at one step boundary that every process agrees on.

        with PreemptionGuard() as preemption:
            for step in range(first, last):
                state = train_step(state, batch(step))
                if preemption.should_stop(step):   # every process, every step, the same step numbers
                    save(state, step + 1)
                    raise SystemExit(...)

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
        self._requested = False
        self._previous = None

    def __enter__(self) -> PreemptionGuard:
        self._shared = jax.distributed.is_initialized()
        if not self._shared:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self._requested = True

    def should_stop(self, step: int) -> bool:
        stop = multihost_utils.reached_preemption_sync_point(step) if self._shared else self._requested
        if stop:
            log.warning("preemption notice (SIGTERM): stopping at step %d", step)
        return stop

    def __exit__(self, *exc):
        if not self._shared:
            signal.signal(signal.SIGTERM, self._previous)
