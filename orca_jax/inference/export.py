"""A trained model as a self-contained directory, loadable without the workdir or the original body checkpoint.

    DIR/README.md           model card: task, kind, metric, data shapes, the run's results, the training command
    DIR/orca_model.json     how to rebuild the model: the run's config (local paths removed), which parameters
    DIR/task.json           the task record (`orca_jax.inference.record`), and task_arrays.npz: target statistics
    DIR/model.safetensors   the embedder's and the head's parameters, named by path (`embedder.projection.kernel`)
    DIR/body/               the fine-tuned body in its family's Hugging Face layout (config.json, model.safetensors),
                            which `transformers.AutoModel.from_pretrained` loads strictly
    DIR/summary.json        the run's summary, when it has one

The body is written once, in Hugging Face layout, rather than twice: `load_model(DIR)` reads it back through the
same strict loader as any pretrained checkpoint (`orca_jax.models.load_checkpoint`), so every export load also
checks the name mapping (`orca_jax.weights.to_hf`, the key tables read backwards). The body carries every parameter
the original checkpoint had, the word embeddings and pooler included, unchanged by ORCA, which never uses them.

The directory is assembled next to its destination and renamed into place, so a crash never leaves half an export.
Hub upload is the user's step (see the model card): nothing here touches the network.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import uuid

import numpy as np
from etils import epath
from flax import nnx

from orca_jax.data.kinds import get_task_kind
from orca_jax.inference.model import EXPORT_FILE, EXPORT_FORMAT, EXPORT_VERSION, TrainedModel
from orca_jax.inference.record import TASK_ARRAYS, TASK_FILE, ModelError, command_line
from orca_jax.models.pretrained import ARCHITECTURES
from orca_jax.train.metrics import get_metric
from orca_jax.weights.to_hf import to_checkpoint_tensors, write_safetensors

# The bare model class of each family, which `AutoModel` builds from model_type whatever the source checkpoint was.
BARE_MODELS = {"bert": "BertModel", "roberta": "RobertaModel", "xlm-roberta": "XLMRobertaModel",
               "camembert": "CamembertModel", "swin": "SwinModel"}
# Config fields that are paths on the training machine: meaningless elsewhere, and not needed to rebuild the model.
_LOCAL_PATHS = ("task.data_dir", "source.cache_dir", "source.data_dir", "refine.init_embedder")


def _flat(module) -> dict[str, np.ndarray]:
    return {".".join(map(str, path)): np.asarray(var.get_value())
            for path, var in nnx.to_flat_state(nnx.state(module, nnx.Param))}


def body_checkpoint(trained: TrainedModel) -> tuple[dict, dict[str, np.ndarray]]:
    """(config.json, tensors) of the fine-tuned body as a bare Hugging Face model of its family."""
    hf_config = dict(trained.hf_config)
    model_type = hf_config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise ModelError(f"the body's model_type {model_type!r} has no Hugging Face key table in orca-jax.")
    body = trained.model.body
    tensors = to_checkpoint_tensors(_flat(body), ARCHITECTURES[model_type].key_table(body.config))
    dtypes = {str(t.dtype) for t in tensors.values()}
    hf_config["architectures"] = [BARE_MODELS[model_type]]
    hf_config.pop("torch_dtype", None)
    hf_config["dtype"] = dtypes.pop() if len(dtypes) == 1 else "float32"
    for key in [k for k in hf_config if k.startswith("_name_or_path")]:
        hf_config.pop(key)  # the source checkpoint's local path
    return hf_config, tensors


def _export_config(trained: TrainedModel) -> dict:
    config = json.loads(trained.config.to_json_best_effort())
    config["body"]["checkpoint"] = "body"  # resolved against the export directory by load_model
    config["body"]["init"] = "pretrained"  # body/ holds the trained weights, whatever the run started from
    for dotted in _LOCAL_PATHS:
        section, field = dotted.split(".")
        config[section][field] = ""
    return config


def _base_model(checkpoint: str) -> str | None:
    """The body checkpoint as a hub id, or None when it was a local directory (whose path says nothing elsewhere)."""
    path = epath.Path(checkpoint)
    if checkpoint.startswith((".", "/", "~")) or path.exists():
        return None
    return checkpoint


def export_model(trained: TrainedModel, out: epath.PathLike, *, overwrite: bool = False) -> epath.Path:
    """Writes `trained` to `out` (see the module docstring) and returns it. `out` must not exist, or be empty,
    unless `overwrite`."""
    trained._usable()
    out = epath.Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ModelError(f"{out} exists and is not empty; choose another --out, or pass --overwrite to replace it.")
    if out.resolve() == trained.path.resolve():
        raise ModelError(f"{out} is the directory the model was loaded from; export to another one.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.export-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        hf_config, body_tensors = body_checkpoint(trained)
        (tmp / "body").mkdir()
        (tmp / "body" / "config.json").write_text(json.dumps(hf_config, indent=2))
        write_safetensors(tmp / "body" / "model.safetensors", body_tensors)
        rest = {f"{part}.{name}": value for part in ("embedder", "head")
                for name, value in _flat(getattr(trained.model, part)).items()}
        write_safetensors(tmp / "model.safetensors", rest, {"orca-jax": "embedder and head of an OrcaModel"})
        record = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "which": trained.which,
                  "epoch": trained.epoch, "body": {"model_type": hf_config["model_type"], "directory": "body"},
                  "trained_from": {"body_init": trained.config.body.init,
                                   "base_model": _base_model(str(trained.config.body.checkpoint))},
                  "config": _export_config(trained)}
        (tmp / EXPORT_FILE).write_text(json.dumps(record, indent=2))
        (tmp / TASK_FILE).write_text(json.dumps(trained.info.to_json(), indent=2))
        buffer = io.BytesIO()
        np.savez(buffer, **trained.info.arrays())
        (tmp / TASK_ARRAYS).write_bytes(buffer.getvalue())
        if trained.summary is not None:
            summary = dict(trained.summary)
            summary["body"] = record["trained_from"]["base_model"] or "a local checkpoint, now body/"
            summary.pop("init_embedder", None)  # a path in the training machine's workdirs
            (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
        (tmp / "README.md").write_text(model_card(trained, record, body_tensors, rest))
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _count(tensors: dict[str, np.ndarray]) -> int:
    return int(sum(math.prod(t.shape) for t in tensors.values()))


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def model_card(trained: TrainedModel, record: dict, body_tensors: dict, rest: dict) -> str:
    """The export's README.md: a Hugging Face model card (YAML front matter, then Markdown)."""
    info, config, summary = trained.info, trained.config, trained.summary or {}
    kind = get_task_kind(info.kind)
    direction = "higher is better" if get_metric(info.metric).higher_is_better else "lower is better"
    base = record["trained_from"]["base_model"]
    family = hf_model_type = record["body"]["model_type"]
    front = ["---", "library_name: orca-jax", "tags:", "- orca", "- cross-modal-fine-tuning", "- jax", "- flax",
             f"- {info.kind.replace('_', '-')}"]
    if base:
        front.append(f"base_model: {base}")
    front.append("---")
    name = f"`{info.name}`" if info.name else "a task"
    targets = {
        "classes": f"[N] class ids 0..{(info.num_classes or 0) - 1} ({info.num_classes} classes)",
        "multilabel": f"[N, {info.num_classes}] {{0, 1}} labels",
        "values": f"[N{''.join(', ' + str(d) for d in info.target_shape)}] real values",
    }[kind.targets]
    normalisation = ("none" if info.normalize_targets == "none" else
                     f"{info.normalize_targets} (training-split mean and deviation; outputs are decoded back to the "
                     "targets' units)")
    examples = info.examples or {}
    lines = [
        *front, "",
        f"# ORCA: {family} fine-tuned for {name} ({info.kind})", "",
        "A cross-modal fine-tuned model (ORCA, \"Cross-Modal Fine-Tuning: Align then Refine\", Shen et al., ICML "
        "2023) trained with orca-jax (ORCA in JAX and Flax NNX): a task-specific embedder turns the inputs into tokens "
        f"of the pretrained {family} body's width, the body runs on them, and a {kind.head} head gives the "
        "prediction.", "",
        "## Task", "",
        "| | |", "|---|---|",
        f"| task | {name} |",
        f"| kind | `{info.kind}` (targets: {kind.targets}; head: {kind.head}; loss: `{info.loss}`) |",
        f"| metric | `{info.metric}` ({direction}) |",
        f"| inputs | {info.describe_inputs()}, layout {info.layout}, trained on {info.input_dtype} |",
        f"| targets | {targets} |",
        f"| target normalisation | {normalisation} |",
        f"| examples | train {examples.get('train', 'n/a')}, validation {examples.get('val', 'n/a')}, test "
        f"{examples.get('test', 'n/a')} |",
        "",
        "## Results", "",
    ]
    refine, align = summary.get("refine") or {}, summary.get("align") or {}
    metric = refine.get("metric", info.metric)
    rows = []
    if refine:
        rows.append(f"| test {metric} | {_number(refine.get(f'test_{metric}'))} |")
        rows.append(f"| best validation {metric} | {_number(refine.get(f'best_val_{metric}'))} (epoch "
                    f"{refine.get('best_epoch')}) |")
        epochs = config.refine.epochs
        rows.append(f"| refine | {epochs} epoch{'s' if epochs != 1 else ''}, {_number(refine.get('seconds'))} s; "
                    "parameters "
                    f"selected: {refine.get('selected')} |")
    if align:
        rows.append(f"| align | {align.get('objective')}: {_number(align.get('distance_before'))} -> "
                    f"{_number(align.get('distance_after'))} |")
    lines += (["| | |", "|---|---|", *rows] if rows else ["No summary.json: the run had not finished."])
    lines += ["", f"These are the **{trained.which}** epoch's parameters"
              + (f" (epoch {trained.epoch})" if trained.epoch else "") + ". The test metric is from the run's own "
              "test split, evaluated once after model selection on the validation split."]
    for note in refine.get("notes", []):
        lines.append(f"Note from the run: {note}.")
    command = command_line(info.command)
    lines += ["", "## How it was trained", ""]
    if info.command and not str(info.command[0]).endswith("train.py"):
        lines += ["The run was started from Python (`orca_jax.pipeline.run`), in a process started as:", ""]
    lines += ["```bash", command, "```", ""]
    if info.earlier_commands:
        lines += ["Earlier starts of the same run (resumed with the command above):", "", "```bash",
                  *(command_line(c) for c in info.earlier_commands), "```", ""]
    lines += [
        f"Body: {('`' + base + '`') if base else 'a local checkpoint'} ({hf_model_type}, "
        f"{_count(body_tensors):,} parameters, init {record['trained_from']['body_init']}); embedder and head: "
        f"{_count(rest):,} parameters. Fine-tuning: `{config.refine.finetune_method}`; align: "
        f"{config.align.epochs} epochs of `{config.align.objective}`; batch size {config.batch_size}; optimizer "
        f"{config.optimizer.name}, learning rate {config.optimizer.learning_rate}; seed {config.seed}. The whole "
        f"config is in `{EXPORT_FILE}`.", "",
        "## Use it", "",
        "```bash",
        "python scripts/predict.py --model=DIR --inputs=npz:new.npz --out=predictions.npz   # x: "
        + info.describe_inputs().split(" (")[0],
        "python scripts/evaluate.py --model=DIR --data=npz:labelled.npz                    # x and y",
        "```", "",
        "```python",
        "import orca_jax",
        "model = orca_jax.load_model(\"DIR\")",
        "predictions = model.predict(x)   # " + _predict_keys(trained),
        "scores = model.evaluate(x, y)    # {'metric', 'value', 'metrics', ...}",
        "```", "",
        "Inputs are channels last, as in training; a wrong shape, dtype or a NaN is refused with the expected shape.",
        "",
        "### The fine-tuned body in PyTorch", "",
        f"`body/` is a bare `{BARE_MODELS[hf_model_type]}` checkpoint. ORCA feeds the body its own embedder's tokens "
        "instead of the body's embedding layer (whose weights are unchanged, and kept so that it loads strictly):",
        "",
        "```python",
        "from transformers import AutoModel",
        "body = AutoModel.from_pretrained(\"DIR/body\")",
        "```", "",
        "## Upload to the Hugging Face Hub", "",
        "```python",
        "from huggingface_hub import upload_folder",
        "upload_folder(folder_path=\"DIR\", repo_id=\"your-name/your-model\", repo_type=\"model\")",
        "```", "",
        "## Files", "",
        "| file | what |", "|---|---|",
        "| `model.safetensors` | the embedder's and the head's parameters |",
        "| `body/` | the fine-tuned body, Hugging Face layout |",
        f"| `{EXPORT_FILE}` | the run's config and which parameters these are |",
        f"| `{TASK_FILE}`, `{TASK_ARRAYS}` | the task: kind, shapes, classes, target statistics, training command |",
        "| `summary.json` | the run's summary |", "",
    ]
    return "\n".join(lines)


def _predict_keys(trained: TrainedModel) -> str:
    kind = get_task_kind(trained.kind)
    if kind.targets == "classes":
        return "{'outputs': logits, 'probabilities', 'classes'}"
    if kind.targets == "multilabel" or trained.info.loss == "binary_cross_entropy":
        return "{'outputs': logits, 'probabilities', 'labels'}"
    return "{'outputs': values in the targets' units}"

