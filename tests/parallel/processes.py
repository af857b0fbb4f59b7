"""Running one command as several JAX processes on this machine, the way a multi-host run starts.

    with ProcessGroup([sys.executable, "scripts/train.py", ...], tmp_path / "logs") as group:
        outputs = group.wait(timeout=300)      # every process's stdout + stderr; fails if any process failed

Each process gets JAX_COORDINATOR_ADDRESS (a free localhost port), JAX_NUM_PROCESSES, JAX_PROCESS_ID, JAX_PLATFORMS=cpu
and its own count of fake CPU devices, so `initialize_distributed()` joins them into one run. A failure must fail
fast rather than hang: when one process exits non-zero the others would wait for it in a collective (or for up to
five minutes at start-up), so `wait` kills them all and reports every process's output.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_environment(index: int, processes: int, devices_per_process: int, port: int, extra: dict | None) -> dict:
    env = dict(os.environ)
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", env.get("XLA_FLAGS", ""))
    env.update(
        XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={devices_per_process}".strip(),
        JAX_PLATFORMS="cpu",
        JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
        JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}",  # not jax's default, every interface
        JAX_NUM_PROCESSES=str(processes),
        JAX_PROCESS_ID=str(index),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra or {})
    return env


class ProcessGroup:
    """`command` started as `processes` processes of `devices_per_process` CPU devices each, from the repository
    root; their outputs go to `logs/process_<i>.log`. Leaving the `with` block kills whatever is still running."""

    def __init__(self, command: list[str], logs: Path, *, processes: int = 2, devices_per_process: int = 4,
                 env: dict | None = None):
        self.command, self.logs, self.count = list(command), Path(logs), processes
        self.devices_per_process, self.env = devices_per_process, env
        self.processes: list[subprocess.Popen] = []

    def __enter__(self) -> ProcessGroup:
        self.logs.mkdir(parents=True, exist_ok=True)
        port = free_port()
        for index in range(self.count):
            with open(self.log(index), "w") as out:
                self.processes.append(subprocess.Popen(
                    self.command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                    env=process_environment(index, self.count, self.devices_per_process, port, self.env),
                ))
        return self

    def log(self, index: int) -> Path:
        return self.logs / f"process_{index}.log"

    def outputs(self) -> list[str]:
        return [self.log(i).read_text() for i in range(self.count)]

    def wait(self, timeout: float) -> list[str]:
        """Every process's output once all have exited 0; an AssertionError with all outputs as soon as one fails,
        or when `timeout` seconds pass."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            codes = [p.poll() for p in self.processes]
            if any(code not in (None, 0) for code in codes):
                self.kill()
                raise AssertionError(f"a process failed, exit codes {codes}:\n{self.report()}")
            if all(code == 0 for code in codes):
                return self.outputs()
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"processes still running after {timeout} s:\n{self.report()}")

    def report(self) -> str:
        return "\n".join(f"--- process {i} ---\n{text[-4000:]}" for i, text in enumerate(self.outputs()))

    def kill(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
        for process in self.processes:
            process.wait()

    def __exit__(self, *exc) -> None:
        self.kill()
