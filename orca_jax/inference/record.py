"""What a trained model needs to know about its task, recorded in the workdir when a run starts.

The model's architecture follows from the task (input layout and shape, target shape, kind, number of classes) and
its outputs are decoded with statistics of the training targets (`task.normalize_targets`), none of which the run's
config holds: a task given from Python (`pipeline.run(config, workdir, task=...)`) has no name in the config at all,
and a kind or a class count inferred from the data is not written down anywhere else. So the pipeline writes
`task.json` (and `task_arrays.npz` for the statistics) before anything is trained, and `load_model` rebuilds the
model from them, the config and the body checkpoint, without reading any data.

The record also keeps the command line that started the run, for the model card of an export. A resumed run
rewrites the record; the commands of earlier starts that differed are kept (`earlier_commands`), since a resume may
change safe fields (more epochs) that explain the results.
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import json
import os
import sys

import numpy as np
from etils import epath

from orca_jax.data.kinds import get_task_kind
from orca_jax.train.task_loss import TaskLoss
from orca_jax.workdir import write_file

TASK_FILE = "task.json"
TASK_ARRAYS = "task_arrays.npz"
FORMAT, VERSION = "orca-jax-task", 1
_ARRAYS = ("target_mean", "target_std", "class_weights")


class ModelError(ValueError):
    """A workdir or export that cannot be loaded as asked (missing metadata, no trained parameters, a damaged
    checkpoint): the message names the directory and what to do. The command-line tools print it alone and exit 2."""


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """The task as a trained model sees it. Attribute names follow `orca_jax.data.Task`, so this stands in for the
    task wherever only the data's shapes are needed (`pipeline.build_model`)."""

    name: str
    kind: str
    layout: str
    input_shape: tuple[int, ...]
    target_shape: tuple[int, ...]
    num_classes: int | None
    loss: str
    metric: str
    normalize_targets: str = "none"
    pos_weight: float | None = None
    clip_targets: float | None = None
    ignore_meta: str | None = None
    meta: tuple[str, ...] = ()  # per-example arrays the splits carry (a metric may read them)
    class_names: tuple[str, ...] | None = None  # orca-jax tasks carry none yet: classes are ids 0..num_classes-1
    input_dtype: str = "float32"
    examples: dict = dataclasses.field(default_factory=dict)  # train / val / test sizes of the run
    command: tuple[str, ...] = ()
    earlier_commands: tuple[tuple[str, ...], ...] = ()
    target_mean: np.ndarray | None = None
    target_std: np.ndarray | None = None
    class_weights: np.ndarray | None = None

    @classmethod
    def from_task(cls, task, task_loss, normalize_targets: str, command=None) -> TaskInfo:
        return cls(
            name=task.name, kind=task.kind, layout=task.layout, input_shape=tuple(task.input_shape),
            target_shape=tuple(task.target_shape), num_classes=task.num_classes, loss=task_loss.loss_name,
            metric=task_loss.metric, normalize_targets=normalize_targets, pos_weight=task_loss.pos_weight,
            clip_targets=task_loss.clip_targets, ignore_meta=task_loss.ignore_meta,
            meta=tuple(sorted(task.train.meta)), input_dtype=str(np.dtype(task.train.x.dtype)),
            examples={"train": len(task.train), "val": len(task.val), "test": len(task.test)},
            command=tuple(sys.argv if command is None else command), target_mean=task_loss.target_mean,
            target_std=task_loss.target_std, class_weights=task_loss.class_weights,
        )

    def task_loss(self) -> TaskLoss:
        """The run's `TaskLoss`: its `outputs` decode raw model outputs exactly as the run's evaluation did."""
        return TaskLoss(
            get_task_kind(self.kind), self.loss, self.metric, self.target_shape, self.class_weights, self.pos_weight,
            self.clip_targets, self.target_mean, self.target_std, self.ignore_meta,
        )

    def describe_inputs(self) -> str:
        """The expected inputs in words, for error messages and the model card."""
        shape = ", ".join(str(d) for d in self.input_shape)
        if self.layout == "NLC":
            length, channels = self.input_shape
            return (f"[N, {shape}] (N sequences of length {length} with {channels} channel"
                    f"{'s' if channels != 1 else ''}, channels last)")
        height, width, channels = self.input_shape
        return (f"[N, {shape}] (N images of {height}x{width} pixels with {channels} channel"
                f"{'s' if channels != 1 else ''}, channels last)")

    def to_json(self) -> dict:
        record = {"format": FORMAT, "version": VERSION}
        for field in dataclasses.fields(self):
            if field.name in _ARRAYS:
                continue
            value = getattr(self, field.name)
            record[field.name] = list(value) if isinstance(value, tuple) else value
        record["earlier_commands"] = [list(c) for c in self.earlier_commands]
        record["recorded"] = datetime.datetime.now().isoformat(timespec="seconds")
        return record

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: np.asarray(getattr(self, name)) for name in _ARRAYS if getattr(self, name) is not None}


def write_task_record(workdir: epath.PathLike, task, task_loss, normalize_targets: str) -> None:
    """Writes `task.json` and `task_arrays.npz` (process 0 only). Called by `pipeline.run` before either stage."""
    workdir = epath.Path(workdir)
    info = TaskInfo.from_task(task, task_loss, normalize_targets)
    try:
        previous = _read_json(workdir / TASK_FILE)
    except ModelError:  # a damaged record of an earlier start is replaced, not allowed to stop the run
        previous = None
    if previous is not None:
        earlier = [tuple(c) for c in previous.get("earlier_commands", [])]
        last = tuple(previous.get("command", ()))
        if last and last != info.command and last not in earlier:
            earlier.append(last)
        info = dataclasses.replace(info, earlier_commands=tuple(earlier))
    buffer = io.BytesIO()
    np.savez(buffer, **info.arrays())
    write_file(workdir / TASK_ARRAYS, buffer.getvalue())
    write_file(workdir / TASK_FILE, json.dumps(info.to_json(), indent=2))


def _read_json(file: epath.Path) -> dict | None:
    if not file.exists():
        return None
    try:
        return json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelError(f"{file} is not valid JSON ({error}); it is damaged. Rerun the command that trained the model "
                         "to write it again (a finished run is not retrained).") from error


def read_task_record(directory: epath.PathLike) -> TaskInfo:
    """The `TaskInfo` of a workdir or an export; a `ModelError` for a directory without one."""
    directory = epath.Path(directory)
    record = _read_json(directory / TASK_FILE)
    if record is None:
        raise ModelError(
            f"{directory} has no {TASK_FILE}, the record of the task (kind, input and target shapes, classes, target "
            "normalisation) that rebuilding the model needs: it was trained by an orca-jax from before that record "
            "was written. Rerun the command that trained it with the same --workdir: a finished run is resumed at "
            "its end, so it only writes the record and evaluates the test split again, retraining nothing."
        )
    if record.get("format") != FORMAT or not isinstance(record.get("version"), int):
        raise ModelError(f"{directory / TASK_FILE} is not an orca-jax task record (format {record.get('format')!r}).")
    if record["version"] > VERSION:
        raise ModelError(f"{directory / TASK_FILE} has version {record['version']}, newer than this orca-jax reads "
                         f"({VERSION}); upgrade orca-jax.")
    fields = {f.name for f in dataclasses.fields(TaskInfo)} - set(_ARRAYS)
    values = {name: record[name] for name in fields if name in record}
    for name in ("input_shape", "target_shape", "meta", "command"):
        values[name] = tuple(values.get(name, ()))
    values["earlier_commands"] = tuple(tuple(c) for c in values.get("earlier_commands", ()))
    if values.get("class_names") is not None:
        values["class_names"] = tuple(values["class_names"])
    arrays_file = directory / TASK_ARRAYS
    if arrays_file.exists():
        with np.load(io.BytesIO(arrays_file.read_bytes()), allow_pickle=False) as arrays:
            values.update({name: arrays[name] for name in arrays.files if name in _ARRAYS})
    elif values.get("normalize_targets", "none") != "none":
        raise ModelError(f"{directory} lacks {TASK_ARRAYS}, which holds the target statistics that decode this "
                         f"model's outputs (task.normalize_targets={values['normalize_targets']!r}); copy it from "
                         "the workdir, or rerun the command that trained the model.")
    missing = sorted({"name", "kind", "layout", "input_shape", "target_shape", "loss", "metric"} - set(values))
    if missing:
        raise ModelError(f"{directory / TASK_FILE} lacks {missing}; it is damaged. Rerun the command that trained the "
                         "model to write it again.")
    return TaskInfo(**values)


def command_line(argv) -> str:
    """A recorded `sys.argv` as a command to paste into a shell."""
    import shlex

    argv = list(argv)
    if not argv:
        return "(not recorded)"
    program = argv[0]
    if program.endswith(".py"):  # a script: as run from the repository root, whatever the directory it ran from
        script = "scripts/" + program.rsplit("scripts/", 1)[1] if "scripts/" in program else os.path.basename(program)
        return shlex.join(["python", script, *argv[1:]])
    return shlex.join(argv)
