"""A trained ORCA model from a workdir or an export: `load_model`, then `predict` and `evaluate` on new data.

Loading rebuilds the architecture from what the run recorded (its `config.json` and the task record, `task.json`)
with the pipeline's own `build_model`, then restores the parameters:
- The refine stage's checkpoints hold only the parameters it trained (`refine.finetune_method`, split by
  `finetune.trainable` exactly as `refine.py` splits them). They are restored by Orbax into the abstract tree of those
  parameters (shapes, dtypes and shardings, no optimizer state): `refine_best/` for the best validation epoch, the
  newest step of `refine/` for the last epoch.
- Everything else is frozen, and so equal to what the run started from: the body's own embeddings and pooler (ORCA
  never uses them, they are kept so the body stays a loadable checkpoint), and, under `layernorm`, `non-attn` and
  `frozen-body`, more of the body. Those come from the body checkpoint named in `config.json`, loaded as the run
  loaded it (or initialised from the run's seed when `body.init=random`). The embedder and head train in every
  mode, so they always come from the refine checkpoint.
- A run without a refine stage (`refine.epochs=0`) has an aligned embedder (`aligned_embedder/`) and an untrained
  head: it loads (the embedder is what alignment produced, `model.model.features(x)` its pooled tokens), but
  `predict` and `evaluate` refuse, since the head's outputs mean nothing.
An export (`orca_jax.inference.export`) holds the body in Hugging Face layout and the rest as safetensors; its body
is read by the same strict loader as any checkpoint, so an export loads without the workdir or the original body.

Predictions and evaluations run through `orca_jax.train.refine.evaluate`, the function that evaluated the run's own
validation and test splits: batches from `orca_jax.data.loader.Batches` with a fixed shape (the last, partial batch
padded and masked), sharded over the devices of a data-parallel mesh, outputs decoded by the task's
`TaskLoss.outputs` (class logits, or values in the targets' units). Predictions use batch shapes from a short
ladder of powers of two up to `batch_size`, so one example does not pay for a batch of 256 and no input size
compiles a program of its own.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx
from jax.sharding import Mesh
from ml_collections import ConfigDict
from scipy.special import expit, softmax
from tqdm.auto import tqdm

from orca_jax.config import base_config
from orca_jax.data.kinds import get_task_kind
from orca_jax.data.types import DataError, Split
from orca_jax.inference.inputs import check_inputs, check_targets
from orca_jax.inference.record import ModelError, TaskInfo, read_task_record
from orca_jax.models import lora
from orca_jax.models.orca import OrcaModel
from orca_jax.parallel import is_main_process, make_mesh, param_shardings, place
from orca_jax.train.checkpoints import abstract, load_tree
from orca_jax.train.finetune import trainable
from orca_jax.train.metrics import METRICS, get_metric
from orca_jax.train.refine import device_rows, evaluate, evaluation_batch
from orca_jax.weights import (
    CheckpointFormatError,
    CheckpointNotFoundError,
    WeightConversionError,
    read_config,
    read_tensors,
    resolve_checkpoint,
)

log = logging.getLogger(__name__)

EXPORT_FILE = "orca_model.json"
EXPORT_FORMAT, EXPORT_VERSION = "orca-jax-model", 1
WHICH = ("best", "last")
# The metrics `evaluate` reports besides the task's own: those that score the same outputs and targets.
METRIC_FAMILIES = (
    ("accuracy", "macro_f1", "auroc"),
    ("mean_auroc", "mean_average_precision", "clip_mean_average_precision"),
    ("r2", "nrmse", "relative_l2"),
    ("pixel_auroc", "pixel_auroc_thresholded"),
    ("psicov_mae8", "psicov_mae8_official"),
)


def config_from_json(saved: dict) -> ConfigDict:
    """A run's saved config, with fields that a newer orca-jax added at their defaults (as `workdir.claim` reads
    an older `config.json`)."""

    def merged(values: dict, defaults: dict) -> dict:
        out = dict(defaults)
        for key, value in values.items():
            both = isinstance(value, dict) and isinstance(defaults.get(key), dict)
            out[key] = merged(value, defaults[key]) if both else value
        return out

    return ConfigDict(merged(saved, json.loads(base_config().to_json_best_effort())))


def _read_json(file: epath.Path, what: str) -> dict:
    try:
        return json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelError(f"{file} ({what}) is not valid JSON ({error}); it is damaged.") from error


def predict_rows(examples: int, batch_size: int) -> int:
    """Rows of a prediction batch: the smallest power of two holding all `examples`, at most `batch_size`. A few
    shapes serve every input size (each compiles once), and a single example is not padded to a full batch."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be positive.")
    return min(batch_size, 1 << max(examples - 1, 0).bit_length())


@dataclasses.dataclass(eq=False)
class TrainedModel:
    """A trained `OrcaModel` with what using it needs. `predict(x)` and `evaluate(x, y)` take NumPy arrays laid out
    as the training inputs were (`info.describe_inputs()`).

    `info`: the task (kind, layout, shapes, classes, target statistics, the training command); `config`: the run's
    config; `which`: the parameters loaded ("best" validation epoch or "last"; None for an align-only run);
    `stage`: "refine", or "align" when the run had no refine stage; `summary`: the run's summary.json, if any;
    `hf_config`: the body's Hugging Face config.
    """

    model: OrcaModel
    info: TaskInfo
    config: ConfigDict
    path: epath.Path
    source: str  # "workdir" or "export"
    which: str | None
    stage: str
    epoch: int | None
    summary: dict | None
    hf_config: dict
    mesh: Mesh | None = None
    _device: tuple | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self):
        # A LoRA run's adapters are folded into the body's weights: prediction runs the plain architecture at its
        # own cost, and an export is a plain Hugging Face checkpoint (orca_jax.models.lora).
        lora.merge(self.model)
        self.model.pare = None  # PaRe's gate and source head serve training only

    @property
    def kind(self) -> str:
        return self.info.kind

    @property
    def metric(self) -> str:
        return self.info.metric

    def _usable(self) -> None:
        if self.stage != "refine":
            raise ModelError(
                f"{self.path} holds a run without a refine stage (refine.epochs=0): its embedder is aligned but its "
                "head was never trained, so its outputs mean nothing. Fine-tune it: rerun with "
                f"--config.refine.epochs=N, or start a new run with --config.refine.init_embedder={self.path}/"
                "aligned_embedder --config.align.epochs=0."
            )

    def _prepared(self):
        """(eval_step, trainable params, frozen params, mesh), placed on the devices once and reused."""
        if self._device is None:
            mesh = self.mesh or make_mesh(-1, 1)
            mode = self.config.refine.finetune_method
            graphdef, params, frozen = nnx.split(self.model, trainable(mode), ...)
            mesh_config = self.config.mesh
            try:
                shardings = [param_shardings(tree, mesh, mesh_config.rules, min_shard_bytes=mesh_config.min_shard_bytes)
                             for tree in (params, frozen)]
            except ValueError as error:  # the run's explicit rules may not fit this machine's mesh
                log.warning("the run's sharding rules do not fit this mesh (%s); parameters are replicated", error)
                shardings = [param_shardings(tree, mesh, (("(.*)", "replicate"),)) for tree in (params, frozen)]
            params, frozen = place(params, shardings[0]), place(frozen, shardings[1])
            task_loss = self.info.task_loss()

            def eval_step(params, frozen, x):  # refine.make_steps' evaluation step
                return task_loss.outputs(nnx.merge(graphdef, params, frozen)(x))

            self._device = (jax.jit(eval_step), params, frozen, mesh)
        return self._device

    def _run(self, split: Split, batch_size: int, *, progress: bool, desc: str):
        """The split through `refine.evaluate` in batches of `batch_size` (rounded up to the devices)."""
        eval_step, params, frozen, mesh = self._prepared()
        steps = math.ceil(len(split) / batch_size)
        bar = tqdm(total=steps, desc=desc, unit="batch", leave=False, disable=not progress or not is_main_process())

        def step(*args):
            outputs = eval_step(*args)
            bar.update(1)
            return outputs

        try:
            return evaluate(step, params, frozen, split, batch_size, self.metric, mesh, self.config.data)
        finally:
            bar.close()

    def outputs(self, x, *, batch_size: int | None = None, progress: bool = False) -> np.ndarray:
        """The model's outputs as the run's `test_outputs.npz` holds them: logits for class and label kinds, values
        in the targets' units (normalisation undone) for the others."""
        x = check_inputs(x, self.info)
        self._usable()
        # Every row of a batch is real data where there is enough: the ladder's size, rounded up to the devices.
        rows = device_rows(predict_rows(len(x), batch_size or self.config.eval_batch_size), self._prepared()[3])
        split = Split(x, np.zeros(len(x), np.int8))
        return self._run(split, rows, progress=progress, desc="predict").arrays()[0]

    def predict(self, x, *, batch_size: int | None = None, progress: bool = False) -> dict[str, np.ndarray]:
        """Predictions for inputs `x` [N, *info.input_shape] (any N; channels last; any real dtype):

        - always `outputs`, as `outputs()` gives them;
        - class kinds: `probabilities` [N, classes] (softmax) and `classes` [N] (the most probable);
        - multi-label kinds and binary dense maps: `probabilities` (sigmoids) and `labels` (probability >= 0.5);
        - regression and dense kinds: `outputs` are the values, in the targets' units.
        `batch_size` (default: the run's `eval_batch_size`) bounds the rows per batch; `progress` shows a bar.
        """
        return self.decode(self.outputs(x, batch_size=batch_size, progress=progress))

    def decode(self, outputs: np.ndarray) -> dict[str, np.ndarray]:
        """`outputs` with the kind's derived predictions (see `predict`)."""
        kind = get_task_kind(self.kind)
        outputs = np.asarray(outputs, np.float32)
        out = {"outputs": outputs}
        if kind.targets == "classes":
            out["probabilities"] = softmax(outputs.astype(np.float64), axis=-1).astype(np.float32)
            out["classes"] = np.argmax(outputs, axis=-1).astype(np.int64)
        elif kind.targets == "multilabel" or self.info.loss == "binary_cross_entropy":
            out["probabilities"] = expit(outputs.astype(np.float64)).astype(np.float32)
            out["labels"] = (outputs >= 0).astype(np.int8)  # sigmoid(z) >= 0.5 exactly when z >= 0
        return out

    def evaluate(self, x, y, *, meta: dict[str, Any] | None = None, batch_size: int | None = None,
                 progress: bool = False) -> dict:
        """The task's metric on labelled data, computed as the run computed its test metric (`refine.evaluate`,
        `orca_jax.train.metrics`), with the other metrics of its family on the same outputs.

        `meta`: per-example arrays the metric reads (PSICOV `length`, FSD50K `clip`, Cosmic `ignore`; see
        `info.meta`). Returns {"metric", "value", "metrics": {name: value}, "undefined": {name: why}, "examples"}.
        A metric the data leaves undefined (AUROC with one class present) is reported under "undefined".
        """
        x = check_inputs(x, self.info)
        y = check_targets(y, self.info, len(x))
        meta = {name: np.asarray(values) for name, values in (meta or {}).items()}
        # What the run's evaluation passed: every meta array of its splits that the metric reads.
        accepted = _meta_names(self.metric, required=False)
        needed = _meta_names(self.metric) | (accepted & set(self.info.meta))
        absent, unread = sorted(needed - set(meta)), sorted(set(meta) - accepted)
        if absent:
            raise DataError(f"metric {self.metric!r} needs per-example {absent} besides x and y, as the run's data "
                            f"had; pass them (command line: arrays meta_{absent[0]}, ... in the data file).")
        if unread:
            raise DataError(f"metric {self.metric!r} reads no per-example {unread} (it reads {sorted(accepted)}); "
                            "leave them out.")
        for name, values in meta.items():
            if len(values) != len(x):
                raise DataError(f"meta {name!r} has {len(values)} entries for {len(x)} examples.")
        self._usable()
        batch = evaluation_batch(len(x), batch_size or self.config.eval_batch_size)
        accumulator = self._run(Split(x, y, meta), batch, progress=progress, desc="evaluate")
        try:
            value = accumulator.result()
        except ValueError as error:
            raise DataError(f"{self.metric} is undefined on these {len(x)} examples: {error}") from error
        outputs, targets, kept = accumulator.arrays()
        metrics, undefined = {self.metric: value}, {}
        family = next((f for f in METRIC_FAMILIES if self.metric in f), (self.metric,))
        for name in family:
            if name == self.metric:
                continue
            wanted = _meta_names(name)
            if not wanted <= set(self.info.meta) | set(kept):
                continue  # scores data this task does not have (FSD50K's clips, PSICOV's lengths)
            if not wanted <= set(kept):
                undefined[name] = f"needs per-example {sorted(wanted - set(kept))}"
                continue
            given = {k: kept[k] for k in _meta_names(name, required=False) if k in kept}
            try:
                metrics[name] = float(get_metric(name).fn(outputs, targets, **given))
            except ValueError as error:
                undefined[name] = str(error)
        return {"metric": self.metric, "value": value, "metrics": metrics, "undefined": undefined,
                "examples": len(x)}


def _meta_names(metric: str, *, required: bool = True) -> set[str]:
    """The per-example arrays a metric function takes besides outputs and targets (`required`: those without a
    default)."""
    parameters = list(inspect.signature(METRICS[metric].fn).parameters.values())[2:]
    return {p.name for p in parameters if not required or p.default is inspect.Parameter.empty}


def load_model(path: str | epath.PathLike, which: str | None = None, *, mesh: Mesh | None = None) -> TrainedModel:
    """The trained model of a workdir (`scripts/train.py --workdir`) or an export (`scripts/export.py --out`).

    `which`: "best" (the best validation epoch's parameters), "last" (the last epoch's), or None: what the run
    tested (`refine.select`; an export: what was exported). `mesh`: the devices predictions run on (default: all
    devices, data-parallel). Raises `ModelError` for a directory that holds no loadable model, naming what is
    missing and how to get it.
    """
    path = epath.Path(path).absolute()  # Orbax restores only absolute paths; users type relative ones
    if which is not None and which not in WHICH:
        raise ModelError(f"which={which!r}; use one of {WHICH}, or None for the parameters the run tested.")
    if _directory_kind(path) == "export":
        return _load_export(path, which, mesh)
    return _load_workdir(path, config_from_json(_read_json(path / "config.json", "the run's config")), which, mesh)


def _directory_kind(path: epath.Path) -> str:
    """"export" or "workdir", or a `ModelError` saying what `path` is instead."""
    if (path / EXPORT_FILE).exists():
        return "export"
    config_file = path / "config.json"
    if not config_file.exists():
        raise ModelError(f"{path} is neither an orca-jax workdir (it has no config.json; give the --workdir of "
                         f"scripts/train.py) nor an export ({EXPORT_FILE}; written by scripts/export.py).")
    saved = _read_json(config_file, "the run's config")
    if "model_type" in saved or "task" not in saved or "body" not in saved:
        raise ModelError(f"{path} holds a Hugging Face checkpoint or another program's config.json, not an orca-jax "
                         "run: give the --workdir of scripts/train.py, or an export of scripts/export.py.")
    return "workdir"


def task_info(path: str | epath.PathLike) -> TaskInfo:
    """The task record of a workdir or an export, without loading the model: what new inputs are checked against
    before anything is built or compiled."""
    path = epath.Path(path)
    _directory_kind(path)
    return read_task_record(path)


def _summary(path: epath.Path) -> dict | None:
    file = path / "summary.json"
    return _read_json(file, "the run's summary") if file.exists() else None


def _build(config: ConfigDict, info: TaskInfo, where: str):
    """The model as the run built it (`pipeline.build_model`), with the body's Hugging Face config."""
    from orca_jax.pipeline import build_model  # the pipeline imports this package to write the task record

    checkpoint = config.body.checkpoint
    try:
        model = build_model(config, info, info.task_loss())
        hf_config = read_config(resolve_checkpoint(checkpoint))
    except (CheckpointNotFoundError, CheckpointFormatError, WeightConversionError) as error:
        raise ModelError(
            f"{where}: the body checkpoint {checkpoint!r} (body.checkpoint) cannot be loaded: {error}\nThe "
            "parameters the run did not train (the body's embeddings, and more with refine.finetune_method other "
            "than 'all') come from it: make it available there (a snapshot directory, or the hub id in the Hugging "
            "Face cache), or load an export of this model (scripts/export.py), which carries its body."
        ) from error
    return model, hf_config


def _load_workdir(path: epath.Path, config: ConfigDict, which: str | None, mesh: Mesh | None) -> TrainedModel:
    info = read_task_record(path)
    refine_dir, best_dir = path / "refine", path / "refine_best"
    steps = _steps(refine_dir)
    if config.refine.epochs == 0 or not steps:
        return _load_align_only(path, config, info, mesh, steps_expected=config.refine.epochs > 0)
    select = config.refine.select
    which = which or select
    if which == "best" and not best_dir.exists():
        raise ModelError(
            f"{path} has no best-epoch parameters (refine_best/): "
            + ("the run selected the last epoch (refine.select=last), so it kept none; use which='last' (--which=last)"
               if select == "last" else
               "the refine stage has not finished an epoch's evaluation yet; wait for it, or use which='last'")
            + "."
        )
    model, hf_config = _build(config, info, str(path))
    mode = config.refine.finetune_method
    _, params, _ = nnx.split(model, trainable(mode), ...)
    position = _restore_position(refine_dir, max(steps))
    if which == "best":
        restored = load_tree(best_dir, params)
        if restored is None:
            raise ModelError(f"{best_dir} does not restore into this model (see the warning above): it is damaged, "
                             "or the body checkpoint or config.json changed since the run. Use which='last', or "
                             "rerun the training command.")
        epoch = position.get("best_epoch") if position else None
    else:
        restored = _restore_params(refine_dir, max(steps), params)
        epoch = position.get("epoch") if position else None
    nnx.update(model, restored)
    return TrainedModel(model, info, config, path, "workdir", which, "refine", epoch, _summary(path), hf_config, mesh)


def _load_align_only(path, config, info, mesh, *, steps_expected: bool) -> TrainedModel:
    if steps_expected:
        raise ModelError(f"{path}: the refine stage (refine.epochs={config.refine.epochs}) has not saved a checkpoint "
                         "yet, so there are no trained parameters to load; let the run finish its first epoch (rerun "
                         "the training command to resume it).")
    if config.align.epochs == 0:
        raise ModelError(f"{path}: the run trained nothing (align.epochs=0 and refine.epochs=0), so there is no model "
                         "to load; set --config.refine.epochs.")
    from orca_jax.train.align import load_aligned_embedder

    model, hf_config = _build(config, info, str(path))
    if not load_aligned_embedder(model, path):
        raise ModelError(f"{path}: the align-only run has no usable aligned_embedder/ (it has not finished, or the "
                         "directory is damaged); rerun the training command to finish it.")
    log.warning("%s: an align-only run (refine.epochs=0): the embedder is aligned, the head untrained", path)
    return TrainedModel(model, info, config, path, "workdir", None, "align", None, _summary(path), hf_config, mesh)


def _steps(directory: epath.Path) -> list[int]:
    if not directory.exists():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and (p / "state").exists())


def _restore_position(directory: epath.Path, step: int) -> dict | None:
    file = directory / str(step) / "position" / "metadata"
    try:
        return json.loads(file.read_text()) if file.exists() else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _restore_params(directory: epath.Path, step: int, params):
    """The trainable parameters alone from refine checkpoint `step` (saved with the optimizer state), restored into
    `params`' abstract tree."""
    target = {"params": abstract(params)}
    try:
        restored = ocp.PyTreeCheckpointer().restore(
            directory / str(step) / "state",
            args=ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                        partial_restore=True),
        )
    except Exception as error:  # Orbax and TensorStore raise many types for damaged or mismatched files
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        raise ModelError(f"{directory}/{step} does not restore into this model ({type(error).__name__}: {first}): it "
                         "is damaged, or the body checkpoint or config.json changed since the run.") from error
    return restored["params"]


def _load_export(path: epath.Path, which: str | None, mesh: Mesh | None) -> TrainedModel:
    record = _read_json(path / EXPORT_FILE, "the export's description")
    if record.get("format") != EXPORT_FORMAT or record.get("version", 0) > EXPORT_VERSION:
        raise ModelError(f"{path / EXPORT_FILE} is not an orca-jax export this version reads (format "
                         f"{record.get('format')!r}, version {record.get('version')!r}).")
    if which is not None and which != record["which"]:
        raise ModelError(f"{path} is an export of the {record['which']!r} parameters only; load it with which=None, "
                         f"or export the {which!r} ones (scripts/export.py --which={which}).")
    info = read_task_record(path)
    config = config_from_json(record["config"])
    config.body.checkpoint = str(path / "body")
    model, hf_config = _build(config, info, str(path))
    tensors = read_tensors(pathlib.Path(path))  # model.safetensors: the embedder and the head
    state = nnx.state(model, nnx.Param)
    flat = [(p, v) for p, v in nnx.to_flat_state(state) if p[0] in ("embedder", "head")]
    expected = {".".join(map(str, p)): v for p, v in flat}
    problems = [f"missing {name}" for name in sorted(set(expected) - set(tensors))]
    problems += [f"unexpected {name}" for name in sorted(set(tensors) - set(expected))]
    problems += [f"{name} has shape {tuple(tensors[name].shape)}, the model {tuple(v.get_value().shape)}"
                 for name, v in expected.items() if name in tensors and tensors[name].shape != v.get_value().shape]
    if problems:
        raise ModelError(f"{path}/model.safetensors does not fit the model its {EXPORT_FILE} describes: "
                         + "; ".join(problems) + ". The export is damaged; export the workdir again.")
    updated = [(p, v.replace(jnp.asarray(tensors[".".join(map(str, p))], v.get_value().dtype))) for p, v in flat]
    nnx.update(model, nnx.from_flat_state(updated))
    return TrainedModel(model, info, config, path, "export", record["which"], "refine", record.get("epoch"),
                        _summary(path), hf_config, mesh)
