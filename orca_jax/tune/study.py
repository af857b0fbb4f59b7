"""A search as an Optuna study whose trials are ordinary runs, shared by any number of worker processes.

- Storage: an SQLite file in the search's directory by default; any Optuna RDB URL (PostgreSQL for several
  machines) or, given a path, Optuna's journal file (for a shared file system without a database server).
- A trial is `pipeline.run` in `DIR/trials/<n>/seed<k>` (the sweep's `run_dir`), once per `trial_seeds` seed, with
  the test split skipped: a search selects on validation alone. Its value is the mean over those seeds of the
  validation metric of the epoch the run would test (`refine.select`).
- Alignment is shared: the align stage depends on no refine setting, so a trial whose alignment (its config with
  the refine settings put back to the base recipe's) was run before refines from that run's embedder
  (`sweep.variants.refine_from`) in `DIR/align/<hash>/`, which the first trial to need it runs, the others waiting
  for it.
- Pruning: the first seed's run reports each epoch's validation metric to the trial, and the study's pruner may stop
  it there (`refine.stopped` in its summary, state PRUNED). Only the first seed's curve is reported: the pruner
  compares trials at equal epochs, and the seeds are run one after another.
- Claiming: a worker takes the study's file lock (`DIR/study.lock`), then either adopts a RUNNING trial whose
  workdir lock is free (its process died: it resumes with the same number, parameters and workdir, from its last
  checkpoint) or, while fewer than `trials` exist, asks for a new one and locks its workdir before letting go of the
  study lock; so no trial is run twice at once, and the budget holds across the workers of one machine. Machines
  that share the study but not the directory cannot adopt each other's trials, and may overshoot the budget by a
  trial each.
- A failing trial is recorded (state FAIL, its error as the user attribute `error`) and the study goes on; a full
  disk or a preemption stops the worker with its trial left RUNNING, for the next start to resume.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import fcntl
import hashlib
import json
import logging
import math
import multiprocessing
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence

import numpy as np
import optuna
from etils import epath
from ml_collections import ConfigDict

from orca_jax.config_checks import ConfigError
from orca_jax.data.kinds import get_task_kind
from orca_jax.pipeline import DiskFullError, load_configured_task, run
from orca_jax.sweep.runner import finished_summary
from orca_jax.sweep.variants import apply_overrides, refine_from, run_dir
from orca_jax.train.metrics import get_metric
from orca_jax.tune.spaces import Param
from orca_jax.workdir import RunLock, WorkdirError

log = logging.getLogger(__name__)

PRUNERS = ("median", "halving", "none")
SEARCH_FILE = "tune.json"  # in the search's directory: what a later start must match to continue the study
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
COUNTED = (*FINISHED, optuna.trial.TrialState.RUNNING)


@dataclasses.dataclass(frozen=True)
class Search:
    """Everything a worker needs, picklable for worker processes."""

    config: ConfigDict  # the base recipe, with the fixed --config.* overrides
    space: tuple[Param, ...]
    workdir: str  # absolute
    trials: int  # the study's budget: trials started, over all workers
    trial_seeds: tuple[int, ...]
    metric: str  # the task's metric, the trials' validation value
    direction: str  # maximize | minimize, the metric's
    pruner: str = "median"
    storage: str = ""  # "" = DIR/study.db; an RDB URL; or a journal file path
    study_name: str = "tune"

    @property
    def root(self) -> epath.Path:
        return epath.Path(self.workdir)


def metric_direction(config: ConfigDict) -> tuple[str, str]:
    """(metric, maximize | minimize): the study's direction is fixed when it is created, before any run; the task
    is loaded only when neither the metric nor the kind is in the config."""
    metric = config.task.metric
    if not metric:
        kind = config.task.kind or load_configured_task(config).kind
        metric = get_task_kind(kind).metric
    return metric, "maximize" if get_metric(metric).higher_is_better else "minimize"


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    """median: stop a trial whose epoch is worse than the median of the trials before it at that epoch, after 3
    trials and from the second epoch (one epoch says little); halving: asynchronous successive halving, keeping the
    best quarter at each rung; none."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"--pruner={name!r}; use one of {', '.join(PRUNERS)}.")


def open_storage(search: Search) -> optuna.storages.BaseStorage:
    url = search.storage or f"sqlite:///{search.root / 'study.db'}"
    if "://" not in url:
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url))
    # SQLite serialises writers: a worker waits for the file instead of failing while another one writes.
    engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else None
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine)
    except ImportError as error:
        # SQLAlchemy 2 reads postgresql:// as psycopg 3, not the psycopg2 that older guides name.
        missing = getattr(error.__cause__ or error.__context__, "name", None) or "the database's driver"
        raise ConfigError([f"--storage={url}: SQLAlchemy cannot import {missing}, the driver for this URL. Install "
                           "it on every machine of the search (PostgreSQL: pip install 'psycopg[binary]'), or name "
                           "the driver you have in the URL (postgresql+psycopg2://...)."]) from None
    except Exception as error:  # sqlalchemy's OperationalError and kin: no server, wrong password, no database
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError([f"--storage={url}: cannot open the study's database ({first}). Check that the server "
                           "runs and the URL's user, password, host, port and database (docs/scaling.md says how "
                           "to start one)."]) from None


def open_study(search: Search, pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    """The study, created by the first process to get here: under the study lock, since two processes creating the
    storage's tables at once collide."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with _exclusive(search.root / "study.lock"):
        return optuna.create_study(storage=open_storage(search), study_name=search.study_name,
                                   direction=search.direction, pruner=pruner or make_pruner(search.pruner),
                                   load_if_exists=True)


def _search_record(search: Search) -> dict:
    return {"config": json.loads(search.config.to_json_best_effort()),
            "space": [dataclasses.asdict(p) for p in search.space], "trial_seeds": list(search.trial_seeds),
            "metric": search.metric, "direction": search.direction, "pruner": search.pruner, "storage": search.storage,
            "study_name": search.study_name}


def prepare(search: Search) -> None:
    """Records the search in its directory, or checks that the one recorded there is this one: a study continued
    with another space or recipe would mix trials that answer different questions. The budget may change."""
    search.root.mkdir(parents=True, exist_ok=True)
    path, record = search.root / SEARCH_FILE, _search_record(search)
    if path.exists():
        saved = json.loads(path.read_text())
        differ = [key for key in record if saved.get(key) != json.loads(json.dumps(record[key]))]
        if differ:
            raise ConfigError([f"{search.workdir} holds a search with other {', '.join(differ)}; rerun it with the "
                               "same settings to continue it (--trials may change), or choose another --workdir."])
    else:
        open_study(search)  # a storage that cannot be opened is refused before the directory records this search
        # Not write_file: that asks JAX for the process index, which would start its backends (and take the GPUs
        # the workers are about to be given) in this process.
        path.write_text(json.dumps(record, indent=2))


@contextlib.contextmanager
def _exclusive(path: epath.Path):
    """A blocking lock of `path` across processes (and, on a shared file system that supports it, machines)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


def trial_dir(search: Search, number: int) -> epath.Path:
    return search.root / "trials" / str(number)


def _lock_trial(search: Search, number: int) -> RunLock | None:
    """The trial workdir's lock, held for the whole trial; None when another process holds it."""
    lock = RunLock(trial_dir(search, number))
    trial_dir(search, number).mkdir(parents=True, exist_ok=True)
    try:
        return lock.__enter__()
    except WorkdirError:
        return None


def claim(study: optuna.Study, search: Search) -> tuple[optuna.trial.Trial, RunLock] | None:
    """The next trial for this worker with its workdir locked (see the module docstring), or None: budget spent."""
    with _exclusive(search.root / "study.lock"):
        for frozen in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if (trial_dir(search, frozen.number) / ".lock").exists():  # locked from birth: free means orphaned
                lock = _lock_trial(search, frozen.number)
                if lock is not None and _frozen(study, frozen.number).state != optuna.trial.TrialState.RUNNING:
                    lock.__exit__(None, None, None)  # it finished between the listing and the lock
                elif lock is not None:
                    log.info("tune: resuming trial %d, whose process stopped", frozen.number)
                    # Optuna has no public handle on an existing trial but this constructor, which needs the id.
                    return optuna.trial.Trial(study, frozen._trial_id), lock
        if len(study.get_trials(deepcopy=False, states=COUNTED)) >= search.trials:
            return None
        trial = study.ask()
        return trial, _lock_trial(search, trial.number)


def align_overrides(config: ConfigDict, search: Search, run_fn: Callable) -> tuple[dict, float]:
    """The overrides that make `config` refine from its shared alignment (run here first if no trial has), and the
    seconds this call spent aligning; none when the recipe does not align."""
    if config.align.epochs <= 0:
        return {}, 0.0
    aligned = copy.deepcopy(config)
    aligned.refine, aligned.head = copy.deepcopy(search.config.refine), copy.deepcopy(search.config.head)
    aligned.eval_batch_size = search.config.eval_batch_size
    aligned.refine.epochs = 0
    key = hashlib.sha1(aligned.to_json_best_effort(sort_keys=True).encode()).hexdigest()[:12]
    directory = search.root / "align" / key
    seconds = 0.0
    with _exclusive(search.root / "align" / f"{key}.lock"):
        if finished_summary(directory, aligned) is None:
            start = time.perf_counter()
            run_fn(aligned, directory)
            seconds = time.perf_counter() - start
    return refine_from(directory), seconds


def selected_val(summary: dict, workdir: epath.Path, select: str) -> float | None:
    """The validation metric of the epoch the run would test: the best epoch's, or the last's."""
    refine = summary.get("refine") or {}
    if select == "best":
        return refine.get(f"best_val_{refine.get('metric')}")
    lines = (workdir / "refine_metrics.jsonl").read_text().splitlines()
    return json.loads(lines[-1]).get(f"val_{refine.get('metric')}")


def _frozen(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def _reporter(trial: optuna.trial.Trial, study: optuna.Study, workdir: epath.Path,
              metric: str) -> Callable[[int, float], str | None]:
    """The epoch hook of the trial's first run. A resumed run's epochs before the stop are reported from its
    metrics log first: its process may have died after an epoch's checkpoint and before the epoch's report."""
    reported = set(_frozen(study, trial.number).intermediate_values)

    def report(epoch: int, val: float) -> None:
        if val is not None and math.isfinite(val) and epoch not in reported:
            trial.report(val, epoch)
            reported.add(epoch)

    log_file = workdir / "refine_metrics.jsonl"
    if log_file.exists():
        for record in map(json.loads, log_file.read_text().splitlines()):
            report(record["epoch"], record.get(f"val_{metric}"))

    def on_epoch(epoch: int, val: float) -> str | None:
        report(epoch, val)
        return f"pruned by {type(study.pruner).__name__} after epoch {epoch}" if trial.should_prune() else None

    return on_epoch


def run_trial(study: optuna.Study, trial: optuna.trial.Trial, search: Search, run_fn: Callable = run,
              devices: tuple[int, str] = (1, "process")) -> None:
    """Runs one trial to its end and tells the study how it ended (see the module docstring). `devices`: this
    worker's share, (count, kind), from which the report counts device-hours."""
    start = time.perf_counter()
    align_seconds, values, epochs = 0.0, [], 0
    state, value = optuna.trial.TrialState.COMPLETE, None
    try:
        params = {p.field: p.suggest(trial) for p in search.space}
        recipe = apply_overrides(search.config, params)
        for i, seed in enumerate(search.trial_seeds):
            config = apply_overrides(recipe, {"seed": seed})
            overrides, seconds = align_overrides(config, search, run_fn)
            align_seconds += seconds
            config = apply_overrides(config, overrides)
            workdir = run_dir(search.root / "trials", str(trial.number), seed)
            hook = _reporter(trial, study, workdir, search.metric) if i == 0 else None
            summary = run_fn(config, workdir, on_epoch=hook, test=False)
            stopped = (summary.get("refine") or {}).get("stopped")
            epochs += stopped["epoch"] if stopped else config.refine.epochs
            if stopped:
                trial.set_user_attr("stopped", stopped)
                state = optuna.trial.TrialState.PRUNED
                break
            values.append(selected_val(summary, workdir, config.refine.select))
        if state == optuna.trial.TrialState.COMPLETE:
            finite = [v for v in values if v is not None and math.isfinite(v)]
            if len(finite) < len(values):
                raise FloatingPointError(f"a run's validation metric is not a finite number: {values}")
            value = float(np.mean(finite))
            trial.set_user_attr("seed_values", finite)
    except (DiskFullError, KeyboardInterrupt, SystemExit):
        raise  # the trial stays RUNNING, for the next start to resume (a preemption is a SystemExit)
    except Exception as error:  # recorded; the next trial may well work
        log.warning("tune: trial %d failed: %s: %s", trial.number, type(error).__name__, error)
        trial.set_user_attr("error", f"{type(error).__name__}: {error}")
        state = optuna.trial.TrialState.FAIL
    previous = _frozen(study, trial.number).user_attrs  # a resumed trial's time before it stopped counts too
    trial.set_user_attr("seconds", previous.get("seconds", 0.0) + time.perf_counter() - start)
    trial.set_user_attr("align_seconds", previous.get("align_seconds", 0.0) + align_seconds)
    trial.set_user_attr("epochs", epochs)
    trial.set_user_attr("planned_epochs", len(search.trial_seeds) * apply_overrides(
        search.config, dict(trial.params)).refine.epochs)
    trial.set_user_attr("devices", list(devices))
    study.tell(trial, value if state == optuna.trial.TrialState.COMPLETE else None, state=state)


def work(search: Search, run_fn: Callable = run, pruner: optuna.pruners.BasePruner | None = None,
         devices: tuple[int, str] = (1, "process")) -> int:
    """One worker: claims and runs trials until the budget is spent; returns how many it ran. `pruner` replaces the
    search's named one (tests pass their own)."""
    study = open_study(search, pruner)
    count = 0
    while (claimed := claim(study, search)) is not None:
        trial, lock = claimed
        try:
            run_trial(study, trial, search, run_fn, devices)
        finally:
            lock.__exit__(None, None, None)
        count += 1
        frozen = _frozen(study, trial.number)
        log.info("tune: trial %d %s: value %s", trial.number, frozen.state.name, frozen.value)
    return count


# ------------------------------------------------------------------------------------------- worker processes


def _gpus() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d for d in visible.split(",") if d.strip()]
    if shutil.which("nvidia-smi") is None:
        return []
    result = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                            text=True, check=False)
    return result.stdout.split() if result.returncode == 0 else []


def worker_devices(workers: int) -> list[dict]:
    """Per worker, its share of this machine: GPUs through CUDA_VISIBLE_DEVICES when there are any, CPU cores by
    affinity otherwise (XLA's thread pools size themselves to the cores a process may use)."""
    gpus = _gpus()
    pool, what = (gpus, "GPUs") if gpus else (sorted(os.sched_getaffinity(0)), "CPU cores")
    if workers > len(pool):
        raise ConfigError([f"--workers={workers}, but this machine has {len(pool)} {what} to share; use "
                           f"--workers={len(pool)} or fewer."])
    shares = [list(map(str, share)) for share in np.array_split(np.asarray(pool, dtype=object), workers)]
    if gpus:
        return [{"env": {"CUDA_VISIBLE_DEVICES": ",".join(s)}, "cores": None, "devices": (len(s), "GPU")}
                for s in shares]
    return [{"env": {}, "cores": [int(c) for c in s], "devices": (len(s), "CPU core")} for s in shares]


def _worker_process(search: Search, share: dict, run_fn: Callable) -> None:
    os.environ.update(share["env"])  # before JAX starts its backends in this process
    if share["cores"] is not None:
        os.sched_setaffinity(0, share["cores"])
    from orca_jax.cli import start

    start()
    work(search, run_fn, devices=share["devices"])


def run_workers(search: Search, workers: int, run_fn: Callable = run) -> None:
    """`work` in `workers` processes of their own, each on its share of the devices (one process: this one). A
    worker that stops (preempted, a full disk) stops the others, whose trials resume on the next start."""
    shares = worker_devices(workers)
    if workers == 1:
        work(search, run_fn, devices=shares[0]["devices"])
        return
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no JAX state copied from this one
    processes = [context.Process(target=_worker_process, args=(search, share, run_fn)) for share in shares]
    for process in processes:
        process.start()
    try:
        _wait(processes)
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: the worker saves a checkpoint and stops (PreemptionGuard)
        for process in processes:
            process.join()
    codes = [p.exitcode for p in processes]
    if any(codes):
        raise SystemExit(next(c for c in codes if c))


def _wait(processes: Sequence[multiprocessing.Process]) -> None:
    while any(p.is_alive() for p in processes):
        if any(p.exitcode not in (None, 0) for p in processes):
            return
        time.sleep(0.5)
