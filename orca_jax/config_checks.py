"""The whole config checked before anything is built, every problem reported at once.

Why up front: each stage otherwise finds its own mistakes only when it starts (a refine batch size that does not
divide over the devices after an hour of alignment, an unknown objective after the source features are computed),
or never (a negative epoch count silently skips a stage). Why all at once: a user fixes every line in one edit
instead of meeting the mistakes one run at a time, as the weight converter reports every bad key.

Each line reads `field=value: what is wrong; the fix`, with the dotted config path and the value as set, never one
derived from it (mesh sizes stay -1 as given). Valid names come from the modules that own them, so a new loss,
objective or source is accepted here the moment it is registered.

Only what needs neither the model nor the data is checked: the body's checkpoint is looked at only as far as its
`config.json`, when that is already on disk. A stage that does not run (`epochs` = 0) is not held to what only it
uses (its own section, the source set for align, the evaluation batch for refine): configs switch a stage off
without cleaning up after it (configs/demo.py:no_align), and nothing there can fail the run.
"""

from __future__ import annotations

import difflib
import math
import numbers
import os
import re
from pathlib import Path

import jax
from jax.sharding import AbstractMesh
from ml_collections import ConfigDict

from orca_jax.config import BODY_INITS, DENSE_1D_HEADS, DTYPES, EMBEDDER_INITS
from orca_jax.data.kinds import CLASS_WEIGHTINGS, TASK_KINDS
from orca_jax.data.sources import SOURCES
from orca_jax.data.tasks import TASK_LOADERS, scheme_loader
from orca_jax.models.pretrained import ARCHITECTURES
from orca_jax.ot.sinkhorn_settings import SOLVERS
from orca_jax.parallel.mesh import mesh_axes
from orca_jax.parallel.sharding import check_rules
from orca_jax.train.align import OBJECTIVES
from orca_jax.models.lora import PROJECTIONS, lora_targets
from orca_jax.train.finetune import FINETUNE_RULES
from orca_jax.train.losses import LOSSES
from orca_jax.train.metrics import METRICS
from orca_jax.train.task_loss import NORMALIZATIONS
from orca_jax.train.optimizers import OPTIMIZERS
from orca_jax.train.refine import REFINE_SELECTIONS
from orca_jax.weights.checkpoint_files import (
    CheckpointFormatError,
    CheckpointNotFoundError,
    read_json,
    resolve_checkpoint,
)


class ConfigError(ValueError):
    """Every problem found in a config; `problems` holds the lines, one per problem."""

    def __init__(self, problems: list[str]):
        self.problems = tuple(problems)
        super().__init__(f"The config has {len(problems)} problem(s):\n  - " + "\n  - ".join(problems))


class _Checker:
    """Collects `field=value: message` lines; each check returns whether the value passed, so a dependent check
    (divisibility after positivity) runs only on a value that makes sense."""

    _MISSING = object()

    def __init__(self, config: ConfigDict):
        self.config, self.problems = config, []

    def value(self, field: str):
        node = self.config
        for part in field.split("."):
            try:
                node = node[part]
            except (KeyError, TypeError):
                return self._MISSING
        return node

    def fail(self, field: str, message: str) -> bool:
        value = self.value(field)
        if value is self._MISSING:
            self.problems.append(f"{field}: missing; start the config from orca_jax.config.base_config()")
        else:
            self.problems.append(f"{field}={value!r}: {message}")
        return False

    def integer(self, field: str, minimum: int, fix: str) -> bool:
        value = self.value(field)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
            return self.fail(field, f"must be an integer >= {minimum}; {fix}")
        return True

    def number(self, field: str, interval: str | None, fix: str) -> bool:
        """`interval`, e.g. "(0, 1]" or "[0, inf)", is both the rule and how the message states it; None: any finite
        number."""
        value = self.value(field)
        where = f" in {interval}" if interval else ""
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            return self.fail(field, f"must be a finite number{where}; {fix}")
        if interval:
            low, high = (float(end) for end in interval[1:-1].split(","))
            above = value > low if interval[0] == "(" else value >= low
            below = value < high if interval[-1] == ")" else value <= high
            if not (above and below):
                return self.fail(field, f"must be in {interval}; {fix}")
        return True

    def choice(self, field: str, names, *, empty: str | None = None, fold_case: bool = False) -> bool:
        """`names`: the owner's registry; `empty`: what "" means for this field, when "" is allowed."""
        value = self.value(field)
        if isinstance(value, str) and ((value.lower() if fold_case else value) in names or (value == "" and empty)):
            return True
        also = f", or '' for {empty}" if empty else ""
        return self.fail(field, f"unknown; {_did_you_mean(value, names)}use one of {', '.join(sorted(names))}{also}")


def _did_you_mean(value, names) -> str:
    close = difflib.get_close_matches(value, sorted(names), n=1) if isinstance(value, str) else []
    return f"did you mean {close[0]!r}? " if close else ""


def _runs(checker: _Checker, field: str) -> bool:
    """Whether a stage runs, for deciding what to hold it to: anything but an epoch count of exactly 0, so a negative
    count (itself an error) still has the rest of the stage checked."""
    return checker.value(field) != 0


def check_config(config: ConfigDict, *, devices: int | None = None) -> None:
    """Raises `ConfigError` listing every problem of `config`; `devices` (default: this run's JAX device count) is
    what the mesh must fit."""
    devices = jax.device_count() if devices is None else devices
    c = _Checker(config)
    align, refine = _runs(c, "align.epochs"), _runs(c, "refine.epochs")
    _check_run(c, refine)
    _check_task(c)
    _check_body(c, align)
    _check_optimizer(c)
    if align:
        _check_align(c)
    if refine:
        _check_refine(c)
    _check_mesh(c, devices)
    if c.problems:
        raise ConfigError(c.problems)


def _check_run(c: _Checker, refine: bool) -> None:
    c.integer("seed", 0, "NumPy's seeded generators take no negative seeds, use e.g. 0")
    c.integer("align.epochs", 0, "set 0 to skip the align stage, or its optimizer steps (official: 20-60)")
    c.integer("refine.epochs", 0, "set 0 to skip the refine stage, or the epochs to fine-tune")
    if c.value("align.epochs") == 0 and c.value("align.label_matching.epochs"):
        c.fail("align.label_matching.epochs", "is label matching after feature matching, yet align.epochs is 0; set "
                                              "align.epochs > 0, or align.label_matching.epochs=0")
    # Batches that do not divide over the devices are padded with masked rows (orca_jax/data/loader.py): any size
    # runs on any mesh, so only the values themselves are checked.
    c.integer("batch_size", 1, "set the examples per batch, e.g. 32")
    if refine:
        c.integer("eval_batch_size", 1, "set the examples per batch, e.g. 256")
    c.integer("data.threads", 1, "set the threads that read input batches, e.g. 2")
    c.integer("data.prefetch", 1, "set how many batches to read ahead, e.g. 4")
    c.integer("data.workers", 0, "set 0 to read in this process, or N worker processes")


def _check_task(c: _Checker) -> None:
    name = c.value("task.name")
    known = f"a registered task ({', '.join(sorted(TASK_LOADERS))}), npz:PATH or tfds:NAME"
    try:
        loader = scheme_loader(name) if isinstance(name, str) else None
    except ValueError as error:  # an unknown scheme; the message names the known ones
        c.fail("task.name", f"{error}".rstrip("."))
    else:
        if loader is None and name not in TASK_LOADERS:
            c.fail("task.name", f"unknown; {_did_you_mean(name, TASK_LOADERS)}use {known}")
        elif loader is not None and not name.partition(":")[2]:
            c.fail("task.name", "names no data after the colon; e.g. npz:data.npz or tfds:mnist")
    c.choice("task.kind", TASK_KINDS, empty="the task's own kind")
    c.number("task.val_fraction", "(0, 1)", "set the share of training examples held out for validation, e.g. 0.1")
    c.number("task.test_fraction", "(0, 1)", "set the share held out as test from data without a test split, e.g. 0.2")
    c.integer("task.train_size", 0, "set 0 to train on all training examples, or N for a seeded subset of N")
    c.integer("task.num_classes", 0, "set 0 to count the classes in the data")
    c.choice("task.loss", LOSSES, empty="the kind's loss")
    c.choice("task.metric", METRICS, empty="the kind's metric")
    c.choice("task.class_weighting", CLASS_WEIGHTINGS, empty="the kind's weighting")
    c.choice("task.normalize_targets", NORMALIZATIONS)
    for field in ("task.pos_weight", "task.clip_targets"):
        c.number(field, None, "set a number, <= 0 for none")


def _body_modality(c: _Checker) -> str | None:
    """The body's modality from its `config.json` if that is on disk (a snapshot directory, or the hub's cache),
    else None: fetching or loading the body is the run's work, not the check's. Reports checkpoints that cannot be
    a body at all."""
    checkpoint = c.value("body.checkpoint")
    if not isinstance(checkpoint, (str, os.PathLike)) or not str(checkpoint):
        c.fail("body.checkpoint", "use a Hugging Face hub id (e.g. roberta-base) or a snapshot directory")
        return None
    try:
        # resolve_checkpoint's own test: what exists or is spelled as a path is local, anything else a hub id.
        if Path(checkpoint).expanduser().exists() or str(checkpoint).startswith((".", "/", "~")):
            config_file = resolve_checkpoint(checkpoint) / "config.json"
        else:
            import huggingface_hub

            cached = huggingface_hub.try_to_load_from_cache(str(checkpoint), "config.json")
            if not isinstance(cached, str):
                return None
            config_file = Path(cached)
        model_type = read_json(config_file).get("model_type")
    except (CheckpointNotFoundError, CheckpointFormatError) as error:
        c.fail("body.checkpoint", f"{error}".rstrip("."))
        return None
    except ValueError as error:  # huggingface_hub's HFValidationError
        c.fail("body.checkpoint", f"neither a directory nor a valid hub id ({error}); pass a snapshot directory or "
                                  "an id like roberta-base")
        return None
    if model_type not in ARCHITECTURES:
        c.fail("body.checkpoint", f"its config.json has model_type={model_type!r}, which orca-jax cannot load; use a "
                                  f"checkpoint of one of {', '.join(sorted(ARCHITECTURES))}")
        return None
    return ARCHITECTURES[model_type].family.modality


def _check_body(c: _Checker, align: bool) -> None:
    modality = _body_modality(c)
    c.choice("body.init", BODY_INITS)
    c.choice("body.param_dtype", DTYPES)
    c.choice("body.dtype", DTYPES)
    dropout = c.value("body.dropout")
    keeps_checkpoints = isinstance(dropout, numbers.Real) and not isinstance(dropout, bool) and dropout < 0
    if not keeps_checkpoints:
        c.number("body.dropout", "[0, 1)", "a negative rate keeps the checkpoint's own")
    c.integer("embedder.target_seq_len", 1, "set the most tokens a 1D input becomes (official 512)")
    c.choice("embedder.init", EMBEDDER_INITS)
    if c.value("embedder.norm") is False and modality == "image":
        c.fail("embedder.norm", "applies to sequence inputs of text bodies; Swin's patch embedding keeps its norm "
                                "(set embedder.norm=True)")
    c.choice("head.dense_1d", DENSE_1D_HEADS)
    if not align:
        return
    if c.choice("source.name", SOURCES) and modality is not None:
        source = SOURCES[c.value("source.name")]
        if source.modality != modality:
            fitting = ", ".join(sorted(name for name, spec in SOURCES.items() if spec.modality == modality))
            c.fail("source.name", f"a {source.modality} source, which the {modality} body of body.checkpoint "
                                  f"cannot embed; use one of {fitting}")
    if c.value("source.size") is not None:
        c.integer("source.size", 2, "a distance to the source set needs at least two examples (official: 5000)")
    c.integer("source.seed", 0, "NumPy's seeded generators take no negative seeds, use e.g. 0")


def _check_optimizer(c: _Checker) -> None:
    c.choice("optimizer.name", OPTIMIZERS, fold_case=True)
    c.number("optimizer.learning_rate", "[0, inf)", "e.g. 1e-4")
    c.number("optimizer.weight_decay", "[0, inf)", "set 0 for none")
    for field in ("optimizer.momentum", "optimizer.b1", "optimizer.b2"):
        c.number(field, "[0, 1)", "official: momentum and b1 0.9, b2 0.98")
    c.number("optimizer.eps", "(0, inf)", "it keeps Adam's division finite, e.g. 1e-8")


def _check_milestones(c: _Checker, field: str) -> None:
    milestones = c.value(field)
    if not (
        isinstance(milestones, (tuple, list))
        and all(isinstance(m, numbers.Integral) and not isinstance(m, bool) and m >= 0 for m in milestones)
        and list(milestones) == sorted(milestones)
    ):
        c.fail(field, "must be epochs (integers >= 0) in increasing order; e.g. (20, 40, 60), or () for a constant "
                      "rate")


def _check_align(c: _Checker) -> None:
    if c.choice("align.objective", OBJECTIVES) and c.value("align.objective") == "none":
        c.fail("align.objective", "means no align stage, yet align.epochs is not 0; set align.epochs=0, or choose an "
                                  "objective (otdd-exact is the official one)")
    c.choice("align.solver", SOLVERS)
    c.number("align.epsilon", "(0, inf)", "set the entropic regularisation (official 0.1)")
    c.integer("align.maxsamples", 1, "set the examples a class draws per epoch (official 256)")
    c.number("align.lr_multiplier", "(0, inf)", "set the embedder's rate over the fine-tuning one (official 10)")
    _check_milestones(c, "align.milestones")
    c.number("align.gamma", "(0, 1]", "set the factor applied at each milestone (official 0.2)")
    c.integer("align.checkpoint_every", 1, "set the epochs between checkpoints, e.g. 10")
    c.integer("align.chunk_classes", 0, "set the classes embedded at a time, or 0 for all at once")
    if c.integer("align.label_matching.epochs", 0, "set the label-matching epochs, 0 for none") and c.value(
            "align.label_matching.epochs"):
        lm = "align.label_matching"
        _check_milestones(c, f"{lm}.milestones")
        c.number(f"{lm}.lr_multiplier", "(0, inf)", "set the embedder's rate over the fine-tuning one, e.g. 10")
        c.number(f"{lm}.gamma", "(0, 1]", "set the factor applied at each milestone, 1 for none")
        c.integer(f"{lm}.checkpoint_every", 1, "set the epochs between checkpoints, e.g. 10")
        c.number(f"{lm}.marginal_weight", "[0, inf)", "set the marginal entropy's weight, e.g. 1")
        c.integer(f"{lm}.head_steps", 1, "set the source head's training steps, e.g. 500")
        c.number(f"{lm}.head_lr", "(0, inf)", "set the source head's learning rate, e.g. 0.01")
        c.number(f"{lm}.tau", "[0, inf)", "set the gradient-norm bound of the source head's penalty, e.g. 0.4")
        c.number(f"{lm}.rho", "[0, inf)", "set the penalty's weight, e.g. 100, or 0 for none")


def _check_refine(c: _Checker) -> None:
    if c.choice("refine.finetune_method", FINETUNE_RULES) and c.value("refine.finetune_method") == "lora":
        c.integer("refine.lora.rank", 1, "set the adapters' rank, e.g. 8")
        c.number("refine.lora.alpha", "(0, inf)", "set the adapters' scale numerator, e.g. 16 (scale alpha / rank)")
        targets = lora_targets(c.value("refine.lora.targets"))
        unknown = sorted(set(targets) - set(PROJECTIONS))
        if unknown or not targets:
            c.fail("refine.lora.targets", f"names {unknown or 'no projection'}; give a comma-separated subset of "
                                          f"{','.join(PROJECTIONS)}")
    if c.value("refine.pare.enabled") not in (True, False):
        c.fail("refine.pare.enabled", "must be True or False")
    elif c.value("refine.pare.enabled"):
        starts = c.number("refine.pare.start_fraction", "[0, 1]", "set the fraction of tokens replaced at first, e.g. 0.5")
        ends = c.number("refine.pare.end_fraction", "[0, 1]", "set the fraction replaced at the end, e.g. 0.1")
        if starts and ends and c.value("refine.pare.end_fraction") > c.value("refine.pare.start_fraction"):
            start = c.value("refine.pare.start_fraction")
            c.fail("refine.pare.end_fraction", f"must not exceed refine.pare.start_fraction={start!r}; lower it (PaRe "
                                               "replaces fewer tokens as fine-tuning goes on)")
        c.integer("refine.pare.soft_epochs", 0, "set the epochs of soft (gate-training) selection, e.g. 5")
        c.number("refine.pare.tau", "(0, inf)", "set the Gumbel soft top-k temperature, e.g. 0.9")
    c.integer("refine.accum", 1, "set the micro-batches summed per optimizer step, 1 for none")
    c.number("refine.clip", None, "set a global-norm bound, <= 0 for none")
    warmup_ok = c.number("refine.warmup_epochs", "[0, inf)", "set 0 for no warm-up")
    if c.number("refine.decay_epochs", "(0, inf)", "set the epoch where the rate reaches 0") and warmup_ok:
        warmup = c.value("refine.warmup_epochs")
        if c.value("refine.decay_epochs") <= warmup:
            c.fail("refine.decay_epochs", f"must be greater than refine.warmup_epochs={warmup!r}, since the rate rises "
                                          "during the warm-up and falls to 0 at decay_epochs; set it above the "
                                          "warm-up (officially: the number of refine epochs)")
    c.integer("refine.checkpoint_every", 1, "set the epochs between checkpoints, e.g. 1")
    c.choice("refine.select", REFINE_SELECTIONS)
    start = c.value("refine.init_embedder")
    if start:
        if c.value("align.epochs") != 0:
            c.fail("refine.init_embedder", "starts refining from a saved embedder, yet align.epochs is not 0 (the "
                                           "align stage would be overwritten); set align.epochs=0")
        elif "://" not in str(start) and not Path(start).is_dir():
            c.fail("refine.init_embedder", "is not a directory; give the aligned_embedder/ folder of an earlier run's "
                                           "workdir")


def _check_mesh(c: _Checker, devices: int) -> None:
    try:
        sizes = mesh_axes(c.value("mesh.data"), c.value("mesh.fsdp"), devices)
    except ValueError as error:
        c.problems.append(f"{error}".rstrip("."))
        sizes = None
    # The rules are checked against the mesh the run will build; with no valid sizes there is none to name.
    rules = c.value("mesh.rules")
    if sizes is not None:
        try:
            check_rules(rules, AbstractMesh(sizes, ("data", "fsdp")))
        except (ValueError, TypeError, re.error) as error:
            c.fail("mesh.rules", f"{error}".rstrip(".") + "; the rule forms are in orca_jax/parallel/sharding.py")
    c.integer("mesh.min_shard_bytes", 0, "set the size below which 'fsdp' keeps a tensor replicated (default 1 MiB)")
