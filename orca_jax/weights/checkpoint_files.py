"""Finding and reading Hugging Face checkpoints: a local snapshot directory or a hub id.

Tensors are returned as NumPy arrays keyed by the file's own names. Safetensors files are memory-mapped by a small
reader of our own rather than through `safetensors.numpy`, because that one rejects bfloat16 tensors (NumPy has no
bfloat16; `ml_dtypes` gives us one) and because memory-mapping keeps a multi-GB checkpoint out of RAM until each
tensor is converted. Legacy `pytorch_model.bin` files need torch, imported only on that path.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path

import ml_dtypes
import numpy as np

# The hub files worth fetching: configs, weights, tokenizer and image-processor files. Everything else in a model
# repository (other frameworks' weights, ONNX exports, READMEs) is skipped.
_WEIGHT_PATTERNS = ["*.safetensors", "*.safetensors.index.json"]
_LEGACY_PATTERNS = ["pytorch_model*.bin", "pytorch_model.bin.index.json"]
_SIDE_PATTERNS = [
    "config.json",
    "tokenizer*",
    "vocab*",
    "merges.txt",
    "special_tokens_map.json",
    "sentencepiece*",
    "*.model",
    "preprocessor_config.json",
]

_SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


class CheckpointNotFoundError(FileNotFoundError):
    """A checkpoint that is neither a usable local directory nor obtainable from the hub."""


def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """Returns a local directory holding `config.json` and the weights of `name_or_path`.

    An existing directory is used as it is. Anything else is taken as a hub id and resolved through
    `huggingface_hub`, which honours its cache and `HF_HUB_OFFLINE`; safetensors weights are preferred, and
    `pytorch_model.bin` files are fetched only when a repository has no safetensors.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointNotFoundError(
                f"{str(path)!r} is a directory but has no config.json: pass a Hugging Face snapshot directory "
                "(config.json plus *.safetensors or pytorch_model.bin), e.g. one written by save_pretrained()."
            )
        return path
    if path.exists() or str(name_or_path).startswith((".", "/", "~")):
        raise CheckpointNotFoundError(
            f"{str(name_or_path)!r} is not a directory: pass a snapshot directory or a Hugging Face hub id."
        )
    return _download(str(name_or_path))


def _download(repo_id: str) -> Path:
    import huggingface_hub
    from huggingface_hub import errors

    def fetch(patterns: list[str]) -> Path:
        return Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=patterns + _SIDE_PATTERNS))

    try:
        snapshot = fetch(_WEIGHT_PATTERNS)
        if not any(snapshot.glob("*.safetensors")):
            snapshot = fetch(_LEGACY_PATTERNS)
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled) as exc:
        raise CheckpointNotFoundError(
            f"Checkpoint {repo_id!r} is not in the Hugging Face cache and the hub cannot be reached "
            f"({type(exc).__name__}). On a machine with network access run `hf download {repo_id}` (or "
            f"`huggingface-cli download {repo_id}`) and copy the cache directory here, or unset HF_HUB_OFFLINE, or "
            "pass a local snapshot directory instead of the id."
        ) from exc
    except errors.RepositoryNotFoundError as exc:
        raise CheckpointNotFoundError(
            f"{repo_id!r} is neither a local directory nor a Hugging Face hub repository (check the spelling, or "
            "log in with `hf auth login` for a private or gated model)."
        ) from exc
    if not (snapshot / "config.json").is_file():
        raise CheckpointNotFoundError(f"Hub repository {repo_id!r} has no config.json; it is not a model snapshot.")
    return snapshot


def read_config(directory: Path) -> dict:
    with open(directory / "config.json") as f:
        return json.load(f)


def read_tensors(directory: Path) -> dict[str, np.ndarray]:
    """Every tensor of the snapshot, keyed by its name in the file(s); shards are merged.

    A name that appears in two shards is an error, since which copy would win is undefined.
    """
    files = _weight_files(directory)
    tensors: dict[str, np.ndarray] = {}
    for file in files:
        part = _read_safetensors(file) if file.suffix == ".safetensors" else _read_torch_bin(file)
        repeated = sorted(set(part) & set(tensors))
        if repeated:
            raise ValueError(f"Tensor(s) {repeated} appear in more than one weight file of {directory}.")
        tensors.update(part)
    return tensors


def _weight_files(directory: Path) -> list[Path]:
    for index_name, single_name in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        index = directory / index_name
        if index.is_file():
            with open(index) as f:
                shard_names = sorted(set(json.load(f)["weight_map"].values()))
            return [directory / name for name in shard_names]
        if (directory / single_name).is_file():
            return [directory / single_name]
    raise CheckpointNotFoundError(
        f"No weights in {directory}: expected model.safetensors (or a sharded *.safetensors.index.json), or a legacy "
        "pytorch_model.bin. Re-save the model with save_pretrained() or download its weight files."
    )


def _read_safetensors(file: Path) -> dict[str, np.ndarray]:
    with open(file, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    header.pop("__metadata__", None)
    data = np.memmap(file, dtype=np.uint8, mode="r", offset=8 + header_len)
    tensors = {}
    for name, info in header.items():
        dtype_name = info["dtype"]
        if dtype_name not in _SAFETENSORS_DTYPES:
            raise ValueError(f"Tensor {name!r} in {file} has dtype {dtype_name}, which orca-jax cannot read.")
        start, end = info["data_offsets"]
        dtype = np.dtype(_SAFETENSORS_DTYPES[dtype_name])
        tensors[name] = data[start:end].view(dtype).reshape(info["shape"])
    return tensors


def _read_torch_bin(file: Path) -> Mapping[str, np.ndarray]:
    try:
        import torch
    except ImportError as exc:
        raise ImportError(
            f"{file} is a legacy PyTorch pickle, which needs torch to read. Install torch (CPU build is enough), or "
            "convert the checkpoint to safetensors with save_pretrained(..., safe_serialization=True)."
        ) from exc
    state = torch.load(file, map_location="cpu", weights_only=True)
    return {
        name: t.float().numpy().astype(ml_dtypes.bfloat16) if t.dtype == torch.bfloat16 else t.numpy()
        for name, t in state.items()
    }
