"""A run's workdir: one run at a time, resumed only by the same experiment, restarted only on request.

- **Lock.** A run holds an exclusive lock on `workdir/.lock` (`fcntl.flock`, released by the kernel when the process
  dies, even by SIGKILL, so a crashed run never leaves a stale lock). A second run on the same workdir is refused at
  once, naming the process that holds it. Only process 0 of a multi-process run locks (the others are the same run);
  on object stores (`gs://`) there is no lock, which the log says.
- **Same experiment.** The config of the run that created the workdir is kept in `config.json`. A rerun resumes only
  when its config differs in fields that cannot change the results already there (`SAFE_TO_CHANGE`: more or fewer
  epochs, checkpoint cadence, evaluation batch size, input-pipeline threads, data and cache locations, the mesh).
  Anything else (seed, objective, learning rate, body...) is refused with the fields and both values, because
  resuming would mix two experiments in one summary. `restart=True` deletes the run's outputs and starts over.
- **Same data.** The same config can name a file whose content changed (an `npz:` file rewritten in place), and a
  resume would then score the old model on the new data. `data.json` keeps a fingerprint of every split's arrays
  (`data_fingerprint`): shapes, dtypes and a hash of the bytes; a rerun on other data is refused naming the task and
  the array that differ. Arrays up to `_FINGERPRINT_WHOLE_BYTES` are hashed whole; larger ones (memory maps of any
  size) on `_FINGERPRINT_ROWS` evenly spaced rows, first and last included, so the check reads a bounded amount: a
  change confined to rows between the sampled ones is not seen.
- **Writes.** Host-side files (summaries, JSONL, plots) are written by process 0 only (`is_main_process`), atomically
  (a temporary file renamed into place), through `etils.epath`, so `gs://` workdirs work unchanged.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import sys

import numpy as np
from etils import epath
from jax.experimental import multihost_utils
from ml_collections import ConfigDict

from orca_jax.config import base_config
from orca_jax.atomic import atomic_write
from orca_jax.parallel import is_main_process

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
DATA_FILE = "data.json"
_FINGERPRINT_WHOLE_BYTES = 64 << 20  # hashed whole up to this size (a fraction of a second)
_FINGERPRINT_ROWS = 1024  # otherwise this many evenly spaced rows
# Dotted config fields (or prefixes ending in ".") a resumed run may change.
SAFE_TO_CHANGE = (
    "align.epochs", "refine.epochs", "align.checkpoint_every", "refine.checkpoint_every", "eval_batch_size", "data.",
    "task.data_dir", "source.cache_dir", "source.data_dir", "mesh.",
)
# Everything a run writes into its workdir; --restart deletes exactly these.
RUN_OUTPUTS = (
    "align", "refine", "refine_best", "aligned_embedder", "tensorboard", "align_metrics.jsonl", "refine_metrics.jsonl",
    "align_summary.json", "align_distance.png", "summary.json", "test_outputs.npz", "task.json", "task_arrays.npz",
    CONFIG_FILE, DATA_FILE,
)


class WorkdirError(RuntimeError):
    """The workdir cannot be used as asked (busy, or holding another experiment)."""


def write_file(path: epath.PathLike, data: str | bytes) -> None:
    """Process 0 writes `data` to `path` atomically: readers see the old file or the new one, never a torn one."""
    if is_main_process():
        atomic_write(path, data)


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _comparable(config: ConfigDict) -> dict:
    """The config as JSON would give it back (tuples become lists), flattened to dotted fields."""
    return _flatten(json.loads(config.to_json_best_effort()))


def _safe(field: str, started_refine: bool) -> bool:
    if field == "align.epochs" and started_refine:
        return False  # the refine stage started from the alignment that is there; more align epochs would not reach it
    return any(field == s or (s.endswith(".") and field.startswith(s)) for s in SAFE_TO_CHANGE)


class RunLock:
    """The exclusive lock of a workdir for this run (see the module docstring)."""

    def __init__(self, workdir: epath.Path):
        self.path, self.file = workdir / ".lock", None

    def __enter__(self) -> RunLock:
        if not is_main_process():
            return self
        if "://" in str(self.path):
            log.info("workdir %s is not on a local file system: no lock against a second run", self.path.parent)
            return self
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise WorkdirError(
                f"Workdir {self.path.parent} is in use by {holder}. Wait for that run to finish or stop it, or choose "
                "another --workdir."
            ) from None
        self.file.seek(0)
        self.file.truncate()
        started = datetime.datetime.now().isoformat(timespec="seconds")
        self.file.write(f"process {os.getpid()} on {socket.gethostname()} (started {started}: {' '.join(sys.argv)})")
        self.file.flush()
        return self

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()
            self.file = None


def trained(workdir: epath.Path) -> bool:
    """Whether a stage of the run left anything: a run that failed before (bad data, a missing body) holds nothing a
    corrected rerun could be mixed with, so it is not held to the config or data it recorded."""
    return any((workdir / name).exists() for name in ("align", "refine", "align_metrics.jsonl", "summary.json"))


def claim(workdir: epath.PathLike, config: ConfigDict, *, restart: bool = False) -> None:
    """Checks that `config` may run in `workdir` (call it holding the `RunLock`): deletes the run's outputs when
    `restart`, refuses a different experiment, and records the config."""
    workdir = epath.Path(workdir)
    if restart:
        if is_main_process():
            removed = [name for name in RUN_OUTPUTS if (workdir / name).exists()]
            for name in removed:
                target = workdir / name
                target.rmtree() if target.is_dir() else target.unlink()
            if removed:
                log.warning("--restart: deleted %s from %s", ", ".join(removed), workdir)
        multihost_utils.sync_global_devices("orca_jax workdir restarted")  # no process reads what is being deleted
    saved_file = workdir / CONFIG_FILE
    if saved_file.exists() and trained(workdir):
        saved, new = _flatten(json.loads(saved_file.read_text())), _comparable(config)
        # A field the saved config lacks came with a newer orca-jax: at its default it changes nothing.
        defaults = _comparable(base_config())
        saved.update({f: defaults[f] for f in new.keys() - saved.keys() if f in defaults})
        started_refine = (workdir / "refine").exists() and any((workdir / "refine").iterdir())
        changed = sorted(f for f in set(saved) | set(new) if saved.get(f, "<absent>") != new.get(f, "<absent>"))
        unsafe = [f for f in changed if not _safe(f, started_refine)]
        if unsafe:
            diffs = ", ".join(f"{f}={new.get(f, '<absent>')!r} (was {saved.get(f, '<absent>')!r})" for f in unsafe)
            raise WorkdirError(
                f"Workdir {workdir} holds a run of another experiment: {diffs}. Resuming would mix the two in one "
                "summary. Choose another workdir, or start over in this one (scripts/train.py --restart, or "
                "pipeline.run(..., restart=True): deletes this run's checkpoints and results). (A resumed run may "
                f"change: {', '.join(f.rstrip('.') + ('.*' if f.endswith('.') else '') for f in SAFE_TO_CHANGE)}"
                + ("; align.epochs only until the refine stage starts" if started_refine else "") + ")."
            )
        if changed:
            log.info("resuming %s with %s changed", workdir, ", ".join(changed))
    multihost_utils.sync_global_devices("orca_jax workdir config compared")  # every process read the old one
    write_file(saved_file, config.to_json_best_effort(indent=2))


def _array_fingerprint(array) -> dict:
    shape, dtype = tuple(int(d) for d in array.shape), np.dtype(array.dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    whole = size <= _FINGERPRINT_WHOLE_BYTES or len(array) <= _FINGERPRINT_ROWS
    # Indexed by rows, as batches are read: memory maps and lazy readers read only those rows.
    rows = np.arange(len(array)) if whole else np.linspace(0, len(array) - 1, _FINGERPRINT_ROWS).astype(np.int64)
    values, sampled = np.asarray(array[rows]), "all" if whole else f"{_FINGERPRINT_ROWS} rows"
    digest = hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()[:32]
    return {"shape": list(shape), "dtype": dtype.str, "hashed": sampled, "sha256": digest}


def data_fingerprint(task) -> dict:
    """The fingerprint of a task's data that `check_data` compares (see the module docstring)."""
    return {
        f"{split}.{field}": _array_fingerprint(getattr(getattr(task, split), field))
        for split in ("train", "val", "test") for field in ("x", "y")
    }


def check_data(workdir: epath.PathLike, task) -> None:
    """Refuses to resume the run in `workdir` on other data than it was trained on, and records the data of a new
    run (call it after `claim`, before anything of the run is rewritten)."""
    saved_file, new = epath.Path(workdir) / DATA_FILE, data_fingerprint(task)
    if saved_file.exists() and trained(workdir):
        saved = json.loads(saved_file.read_text())["arrays"]
        differ = [name for name in new if saved.get(name) != new[name]]
        if differ:
            def what(name):
                old, now = saved.get(name, {}), new[name]
                if old.get("shape") != now["shape"] or old.get("dtype") != now["dtype"]:
                    return f"{name} is {now['dtype']} {tuple(now['shape'])} (was {old.get('dtype')} " \
                           f"{tuple(old.get('shape', ()))})"
                return f"{name} has other values"
            raise WorkdirError(
                f"Workdir {workdir} holds a run trained on other data than task {task.name!r} gives now: "
                f"{'; '.join(what(n) for n in differ)}. Resuming would score the old model on the new data. Choose "
                "another workdir, or start over in this one (scripts/train.py --restart, or pipeline.run(..., "
                "restart=True))."
            )
        return
    write_file(saved_file, json.dumps({"task": task.name, "arrays": new}, indent=1))


def disk_full(error: BaseException) -> bool:
    """Whether `error`, or an error it was raised from, is the file system running out of space."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(error):  # TensorStore and Orbax wrap the OSError in their own types
            return True
        error = error.__cause__ or error.__context__
    return False


class _QuietOnceDiskFull(logging.Filter):
    """Drops the errors that Orbax's background writers log once the disk is full, so that the run's one message
    (`pipeline.DiskFullError`) is the last word. A full disk fails every writer thread in flight: each logs its
    traceback (through absl's logger), and threads that outlive the failed run log `Event loop is closed` and
    `cannot schedule new futures` (through concurrent.futures'), thousands of lines that bury the message and are
    all the same fault. Errors before the disk fills pass."""

    full = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        if not _QuietOnceDiskFull.full and record.exc_info and record.exc_info[1] is not None:
            _QuietOnceDiskFull.full = disk_full(record.exc_info[1])
        if not _QuietOnceDiskFull.full:
            _QuietOnceDiskFull.full = "No space left on device" in record.getMessage()
        return not _QuietOnceDiskFull.full


_QUIET_ONCE_DISK_FULL = _QuietOnceDiskFull()
_BACKGROUND_WRITER_LOGGERS = ("absl", "concurrent.futures")


def quiet_once_disk_full(full: bool = False) -> None:
    """Installs `_QuietOnceDiskFull` (once per process; the command lines do, at start); `full=True`: the disk is
    known to be full from now on (the run's own error said so, before any writer thread logged it)."""
    for name in _BACKGROUND_WRITER_LOGGERS:
        if _QUIET_ONCE_DISK_FULL not in logging.getLogger(name).filters:
            logging.getLogger(name).addFilter(_QUIET_ONCE_DISK_FULL)
    _QuietOnceDiskFull.full = _QuietOnceDiskFull.full or full


def free_space(workdir: epath.PathLike) -> str:
    try:
        return f"{shutil.disk_usage(os.fspath(workdir)).free / 2**30:.2f} GiB free"
    except OSError:
        return "free space unknown"
