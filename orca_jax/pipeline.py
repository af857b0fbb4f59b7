"""ORCA end to end from a config: task data, pretrained body, embedder, model, source features, align.

`scripts/train.py` is a thin command line around `run`; everything here is importable for notebooks and sweeps.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx
from ml_collections import ConfigDict

from orca_jax.data.source_features import load_or_compute
from orca_jax.data.tasks import Task, load_task
from orca_jax.models import from_pretrained
from orca_jax.models.embedders import ImageEmbedder, SequenceEmbedder
from orca_jax.models.heads import ClassificationHead
from orca_jax.models.orca import OrcaModel
from orca_jax.models.swin import Swin
from orca_jax.ot import pseudo_labels
from orca_jax.parallel import make_mesh
from orca_jax.train.align import run_align
from orca_jax.train.refine import run_refine

log = logging.getLogger(__name__)

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_model(config: ConfigDict, task: Task) -> OrcaModel:
    """The pretrained body wrapped with the embedder for the task's input layout and a classification head."""
    if config.body.dtype not in _DTYPES:
        raise ValueError(f"body.dtype={config.body.dtype!r}; use one of {sorted(_DTYPES)}.")
    dtype = _DTYPES[config.body.dtype]
    dropout = config.body.dropout if config.body.dropout >= 0 else None
    body = from_pretrained(config.body.checkpoint, dtype=dtype, dropout=dropout)
    rngs = nnx.Rngs(config.seed)
    init_from_body = config.align.epochs > 0  # the official no-alignment ablation initialises the embedder anew
    if isinstance(body, Swin):
        if task.layout != "NHWC":
            raise ValueError(f"Task {task.name!r} has {task.layout} inputs; a Swin body takes images (NHWC).")
        embedder = ImageEmbedder.from_body(
            body, task.input_shape[-1], init_from_body=init_from_body, antialias=config.embedder.antialias, rngs=rngs
        )
        width = body.config.num_features
    else:
        if task.layout != "NLC":
            raise ValueError(f"Task {task.name!r} has {task.layout} inputs; a text body takes sequences (NLC).")
        length, channels = task.input_shape
        embedder = SequenceEmbedder.from_body(
            body, channels, length, target_seq_len=config.embedder.target_seq_len, init_from_body=init_from_body,
            rngs=rngs,
        )
        width = body.config.hidden_size
    return OrcaModel(embedder, body, ClassificationHead(width, task.num_classes, dtype=dtype, rngs=rngs))


def align_labels(task: Task, seed: int) -> np.ndarray:
    """Class ids for the align stage: the labels of a classification task; otherwise (dense outputs, multi-label
    targets) k-means pseudo-labels, k = 10, of the flattened targets, as the official code does."""
    if task.kind == "classification":
        return task.train.y
    return pseudo_labels(task.train.y, num_clusters=10, seed=seed)


def run(config: ConfigDict, workdir: str | Path) -> dict:
    """Runs the configured stages in `workdir` (resuming what is there) and returns the summary it also saves."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    mesh = make_mesh(config.mesh.data, config.mesh.fsdp)
    task = load_task(
        config.task.name, val_fraction=config.task.val_fraction, seed=config.seed,
        train_size=config.task.train_size or None,
    )
    model = build_model(config, task)
    summary: dict = {"task": task.name, "body": str(config.body.checkpoint)}
    if config.align.epochs > 0:
        source = load_or_compute(
            config.body.checkpoint, config.source.name, size=config.source.size, seed=config.source.seed,
            cache_dir=config.source.cache_dir or None, data_dir=config.source.data_dir or None, body=model.body,
        )
        width = model.embedder.norm.scale.shape[0]
        if source.features.shape[1] != width:
            raise ValueError(
                f"Source features {source.path} have width {source.features.shape[1]} but the embedder's tokens have "
                f"{width}: they were computed for another body."
            )
        result = run_align(
            model, task.train.x, align_labels(task, config.seed), (source.features, source.labels), config.align,
            config.optimizer,
            batch_size=config.batch_size, mesh=mesh, workdir=workdir, seed=config.seed,
        )
        summary["align"] = {
            "objective": config.align.objective,
            "distance_before": result.distance_before,
            "distance_after": result.distance_after,
            "seconds": result.seconds,
        }
    if config.refine.epochs > 0:
        result = run_refine(model, task, config, mesh=mesh, workdir=workdir)
        summary["refine"] = {
            "metric": result.metric,
            "best_epoch": result.best_epoch,
            f"best_val_{result.metric}": result.best_val,
            f"test_{result.metric}": result.test,
            "seconds": result.seconds,
        }
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
