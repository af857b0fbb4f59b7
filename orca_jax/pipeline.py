"""ORCA end to end from a config: task data, pretrained body, embedder, head, source features, align, refine.

`scripts/train.py` is a thin command line around `run`; everything here is importable for notebooks and sweeps.
"""

from __future__ import annotations

import errno
import json
import logging
import math

import numpy as np
from etils import epath
from flax import nnx
from ml_collections import ConfigDict

from orca_jax.config import DTYPES
from orca_jax.config_checks import ConfigError, check_config
from orca_jax.data.source_features import SourceFeaturesError, load_or_compute
from orca_jax.data.sources import source_spec
from orca_jax.data.kinds import get_task_kind
from orca_jax.data.tasks import check_task, class_notes, load_task
from orca_jax.data.types import DataError, Task
from orca_jax.inference.record import write_task_record
from orca_jax.models import lora
from orca_jax.models.families import family_of
from orca_jax.models.pretrained import load_checkpoint
from orca_jax.models.heads import ClassificationHead, ImageDenseHead, SequenceDenseHead, SequenceLinearHead
from orca_jax.models.orca import OrcaModel
from orca_jax.ot import pseudo_labels
from orca_jax.parallel import PreemptionGuard, make_mesh
from orca_jax.train.align import OBJECTIVES, align_classes, load_aligned_embedder, measure_distance, run_align
from orca_jax.train.label_matching import run_label_matching
from orca_jax.train.pare import PareParts
from orca_jax.train.task_loss import TaskLoss, linear_outputs, make_task_loss
from orca_jax.train.refine import EpochHook, run_refine
from orca_jax.workdir import RunLock, WorkdirError, check_data, claim, disk_full, free_space, write_file

log = logging.getLogger(__name__)

def build_model(config: ConfigDict, task: Task, task_loss: TaskLoss) -> OrcaModel:
    """The pretrained body wrapped with the embedder for the task's input layout and the head of its kind."""
    param_dtype, dtype = DTYPES[config.body.param_dtype], DTYPES[config.body.dtype]
    dropout = config.body.dropout if config.body.dropout >= 0 else None
    loaded = load_checkpoint(config.body.checkpoint, param_dtype=param_dtype, dtype=dtype, dropout=dropout)
    body = loaded.model
    if config.body.init == "random":  # the architecture alone: Flax's default initialisers, seeded by the run
        body = type(body)(loaded.config, param_dtype=param_dtype, dtype=dtype, rngs=nnx.Rngs(config.seed))
    rngs = nnx.Rngs(config.seed)
    if config.refine.finetune_method == "lora":  # own key: the embedder and head draw what they draw in other modes
        lora.add_adapters(body, rank=config.refine.lora.rank, alpha=config.refine.lora.alpha,
                          targets=lora.lora_targets(config.refine.lora.targets), rngs=nnx.Rngs(config.seed + 1))
    # The official code copies the body's pieces into the embedder when it aligns, and initialises it anew otherwise.
    init_from_body = {"auto": config.align.epochs > 0, "body": True, "fresh": False}[config.embedder.init]
    family = family_of(body)
    if task.layout != family.layout:
        raise DataError(f"Task {task.name!r} has {task.layout} inputs; {family.name} takes {family.inputs} "
                        f"({family.layout}).")
    embedder = family.build_embedder(body, task.input_shape, config.embedder, init_from_body=init_from_body, rngs=rngs)
    width = family.width(body)
    head = build_head(task, task_loss, body, embedder, width, dense_1d=config.head.dense_1d, param_dtype=param_dtype,
                      dtype=dtype, rngs=rngs)
    model = OrcaModel(embedder, body, head)
    if config.refine.pare.enabled:
        model.pare = PareParts(embedder.width, width, len(source_spec(config.source.name).class_names),
                               rngs=nnx.Rngs(config.seed + 2))
    return model


def build_head(
    task: Task, task_loss: TaskLoss, body, embedder, width: int, *, dense_1d: str = "pool", param_dtype, dtype,
    rngs: nnx.Rngs,
) -> nnx.Module:
    """The kind's head: linear for classes, labels and values; the official dense heads for per-position targets
    (their last target axis, when there is one, is the channel axis)."""
    kind, shape = task_loss.kind, task.target_shape
    if kind.head == "linear":
        return ClassificationHead(width, linear_outputs(task, task_loss), param_dtype=param_dtype, dtype=dtype,
                                  rngs=rngs)
    if kind.head == "dense_1d":
        channels = shape[1] if len(shape) == 2 else 1
        if dense_1d == "linear":
            return SequenceLinearHead(width, channels, embedder.stride, param_dtype=param_dtype, dtype=dtype,
                                      rngs=rngs)
        return SequenceDenseHead(channels, embedder.stride)
    return ImageDenseHead.from_body(body, out_channels=shape[2] if len(shape) == 3 else 1, output_size=shape[:2],
                                    rngs=rngs)


def align_labels(task: Task, seed: int) -> np.ndarray:
    """What the align stage groups target examples by: the classes of single-label kinds; otherwise (dense outputs,
    multi-label targets, regression) k-means pseudo-labels, k = 10, of the flattened targets, as officially."""
    if get_task_kind(task.kind).align_labels == "classes":
        return np.asarray(task.train.y)
    return pseudo_labels(task.train.y, num_clusters=10, seed=seed)  # chunked when the targets are large


def load_configured_task(config: ConfigDict) -> Task:
    t = config.task
    return load_task(
        t.name, kind=t.kind or None, data_dir=t.data_dir or None, val_fraction=t.val_fraction,
        test_fraction=t.test_fraction, seed=config.seed, train_size=t.train_size or None,
        num_classes=t.num_classes or None,
    )


class DiskFullError(OSError):
    """The workdir's file system ran out of space: said once, plainly, instead of a wall of write errors."""

    def __str__(self) -> str:  # the message alone: OSError's own form prefixes "[Errno 28]"
        return self.strerror


def run(config: ConfigDict, workdir: str | epath.PathLike, task: Task | None = None, *, restart: bool = False,
        on_epoch: EpochHook | None = None, test: bool = True) -> dict:
    """Runs the configured stages in `workdir` (resuming what is there) and returns the summary it also saves.

    `task`: data given from Python (e.g. `orca_jax.data.task_from_arrays(x, y, kind=...)`) instead of
    `config.task.name`; the config's loss options still apply. The workdir is locked for the run, and resumed only
    by the same experiment (`orca_jax.workdir`); `restart=True` deletes a previous run's outputs first.
    `on_epoch` and `test=False` are for searches (`orca_jax.train.refine`): a refine stage the hook stopped says so
    in the summary (`refine.stopped`), and without the test split its test metric is null.
    """
    check_config(config)  # every mistake at once, before the workdir, the data or the model is touched
    workdir = epath.Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise WorkdirError(f"--workdir {workdir} is a file, not a directory; choose another --workdir.")
    workdir.mkdir(parents=True, exist_ok=True)
    with RunLock(workdir):
        try:
            return _run(config, workdir, task, restart, on_epoch, test)
        except Exception as error:
            if disk_full(error):
                raise DiskFullError(
                    errno.ENOSPC,
                    f"The disk holding {workdir} is full ({free_space(workdir)}). Free some space and rerun the same "
                    "command: the run resumes from its last checkpoint.",
                ) from error
            raise


def _run(config: ConfigDict, workdir: epath.Path, task: Task | None, restart: bool, on_epoch: EpochHook | None,
         test: bool) -> dict:
    claim(workdir, config, restart=restart)
    mesh = make_mesh(config.mesh.data, config.mesh.fsdp)
    if task is None:
        task = load_configured_task(config)
    else:
        check_task(task)
    check_data(workdir, task)
    notes = class_notes(task)
    for note in notes:
        log.warning("%s", note)
    # Without an align stage, a distance is still measured where the embedder the refine stage starts from stands:
    # the distance that places the no-alignment ablations on the distance-versus-accuracy plot.
    align = config.align
    distance_only = align.epochs == 0 and align.objective in OBJECTIVES and align.objective != "none"
    labels = None  # what either groups target examples by
    if config.align.epochs > 0 or distance_only:
        labels = align_labels(task, config.seed)
        align_classes(labels, f"task {task.name!r}'s training split (the validation and test splits hold "
                              f"{len(task.val)} and {len(task.test)} more)")
    task_loss = make_task_loss(task, config.task)
    # What rebuilding the trained model needs and the config does not hold (orca_jax.inference.load_model).
    write_task_record(workdir, task, task_loss, config.task.normalize_targets)
    model = build_model(config, task, task_loss)
    summary: dict = {"task": task.name, "kind": task.kind, "body": str(config.body.checkpoint)}
    if notes:
        summary["notes"] = notes
    # One preemption guard for both stages, whose step numbers continue from one to the next (align epochs, then
    # refine steps), as a multi-process stop agreement needs.
    with PreemptionGuard() as preemption:
        if config.align.epochs > 0:
            source = load_source_features(config, model)
            result = run_align(model, task.train.x, labels, (source.features, source.labels), config, mesh=mesh,
                               workdir=workdir, preemption=preemption)
            summary["align"] = {
                "objective": config.align.objective,
                "distance_before": result.distance_before,
                "distance_after": result.distance_after,
                "seconds": result.seconds,
            }
        if config.align.label_matching.epochs > 0:
            source = load_source_features(config, model, depth="body")
            matched = run_label_matching(model, task.train.x, labels, (source.features, source.labels), config,
                                         mesh=mesh, workdir=workdir, preemption=preemption,
                                         step_offset=config.align.epochs)
            summary["label_matching"] = {
                "loss_before": matched.stage.distance_before,
                "loss_after": matched.stage.distance_after,
                "source_head_accuracy": matched.head_accuracy,
                "seconds": matched.stage.seconds,
            }
        if config.refine.init_embedder:
            if not load_aligned_embedder(model, config.refine.init_embedder, directory=True):
                raise ConfigError([
                    f"refine.init_embedder={config.refine.init_embedder!r} is not an aligned_embedder directory that "
                    "fits this model; give the aligned_embedder/ of a workdir whose run used the same body and task."
                ])
            summary["init_embedder"] = str(config.refine.init_embedder)
        if distance_only:
            source = load_source_features(config, model)
            distance = measure_distance(model, task.train.x, labels, (source.features, source.labels), config,
                                        mesh=mesh)
            summary["align"] = {"objective": config.align.objective, "epochs": 0, "distance_before": distance,
                                "distance_after": distance}
        if config.refine.epochs > 0:
            result = run_refine(model, task, task_loss, config, mesh=mesh, workdir=workdir, preemption=preemption,
                                step_offset=config.align.epochs + config.align.label_matching.epochs,
                                on_epoch=on_epoch, test=test)
            summary["refine"] = {
                "metric": result.metric,
                "selected": config.refine.select,
                "best_epoch": result.best_epoch,
                f"best_val_{result.metric}": result.best_val,
                f"test_{result.metric}": result.test,
                "seconds": result.seconds,
            }
            if result.notes:
                summary["refine"]["notes"] = result.notes
            if result.stopped:
                summary["refine"]["stopped"] = result.stopped
    summary = strict_json(summary)
    write_file(workdir / "summary.json", json.dumps(summary, indent=2, allow_nan=False))
    return summary


def load_source_features(config: ConfigDict, model: OrcaModel, *, depth: str = "embedding"):
    """The body's source features (computed once, then cached), checked to be usable by the align stage; with
    `depth="body"` the body's pooled outputs, which label matching's source head reads."""
    source = load_or_compute(
        config.body.checkpoint, config.source.name, size=config.source.size, seed=config.source.seed,
        cache_dir=config.source.cache_dir or None, data_dir=config.source.data_dir or None, body=model.body,
        weights="pretrained" if config.body.init == "pretrained" else f"random-seed{config.seed}", depth=depth,
    )
    if len(np.unique(source.features, axis=0)) < 2:
        raise SourceFeaturesError(
            f"The {len(source.features)} source features in {source.path} are all identical, so no distance to them "
            "can guide the embedder: the body's tokenizer probably does not fit its vocabulary (unknown tokens "
            f"everywhere), or the body is degenerate. Check the tokenizer files of {config.body.checkpoint}, then "
            f"delete {source.path} so that they are computed again; or run without the align stage: "
            "--config.align.epochs=0 --config.align.objective=none."
        )
    if depth == "embedding":
        width, what = model.embedder.width, "the embedder's tokens"
    else:
        width, what = family_of(model.body).width(model.body), "the body's outputs"
    if source.features.shape[1] != width:
        raise SourceFeaturesError(
            f"Source features {source.path} have width {source.features.shape[1]} but {what} have "
            f"{width}: they were computed for another body cached under the same name. Delete {source.path} (they "
            "are computed again for this body), or give this body its own cache: --config.source.cache_dir=DIR."
        )
    return source


def strict_json(value):
    """`value` with every non-finite float replaced by None: summaries stay strict JSON that any reader parses."""
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
