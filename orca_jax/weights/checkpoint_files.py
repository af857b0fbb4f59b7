"""Finding and reading Hugging Face checkpoints: a local snapshot directory or a hub id.

Tensors are returned as NumPy arrays keyed by the file's own names. Safetensors files are memory-mapped by a small
reader of our own rather than through `safetensors.numpy`, because that one rejects bfloat16 tensors (NumPy has no
bfloat16; `ml_dtypes` gives us one) and because memory-mapping keeps a multi-GB checkpoint out of RAM until each
tensor is converted. Legacy `pytorch_model.bin` files need torch, imported only on that path.

Damaged files (an interrupted download, a file cut short, something else saved under the name) raise
`CheckpointFormatError` naming the file and what is wrong with it, before any tensor is used: the safetensors
header must be JSON that fits in the file, and every tensor's byte range must lie inside the file and hold exactly
its shape times its dtype's size.
"""

from __future__ import annotations

import json
import math
import os
import pickle
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


class CheckpointFormatError(ValueError):
    """A checkpoint file that cannot be read as what its name says it is (truncated, damaged or something else)."""


_REFETCH = "re-download it, or re-save the model with save_pretrained()"


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


def read_json(file: Path) -> dict:
    """A JSON object from `file` (config.json, a shard index); anything else is a `CheckpointFormatError`."""
    try:
        content = json.loads(file.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f" at line {exc.lineno}, column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8 text"
        raise CheckpointFormatError(
            f"{file} is not valid JSON ({reason}{where}): it may be cut short or damaged; {_REFETCH}."
        ) from exc
    if not isinstance(content, dict):
        raise CheckpointFormatError(f"{file} holds a JSON {type(content).__name__}, not an object; {_REFETCH}.")
    return content


def read_config(directory: Path) -> dict:
    return read_json(directory / "config.json")


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
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise CheckpointFormatError(f"{index} has no weight_map of tensor names to file names; {_REFETCH}.")
            shards = [directory / name for name in sorted(set(weight_map.values()))]
            missing = [shard.name for shard in shards if not shard.is_file()]
            if missing:
                raise CheckpointNotFoundError(f"{index} names weight file(s) {missing} that are not in {directory}.")
            return shards
        if (directory / single_name).is_file():
            return [directory / single_name]
    raise CheckpointNotFoundError(
        f"No weights in {directory}: expected model.safetensors (or a sharded *.safetensors.index.json), or a legacy "
        "pytorch_model.bin. Re-save the model with save_pretrained() or download its weight files."
    )


def _read_safetensors(file: Path) -> dict[str, np.ndarray]:
    """The safetensors layout: an 8-byte little-endian header length, a JSON header mapping each tensor name to its
    dtype, shape and [start, end) byte offsets into the data that follows."""

    def damaged(why: str) -> CheckpointFormatError:
        return CheckpointFormatError(f"{file} is not a readable safetensors file: {why}; {_REFETCH}.")

    size = file.stat().st_size
    if size < 8:
        raise damaged(f"it has {size} bytes, too few for the 8-byte header length")
    with open(file, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > size - 8:
            raise damaged(f"its header length says {header_len} bytes but only {size - 8} follow (cut short, or not "
                          "safetensors at all)")
        raw_header = f.read(header_len)
    try:
        header = json.loads(raw_header)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise damaged(f"its {header_len}-byte header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise damaged("its header is not a JSON object")
    header.pop("__metadata__", None)
    data_len = size - 8 - header_len
    data = np.memmap(file, dtype=np.uint8, mode="r", offset=8 + header_len) if data_len else np.empty(0, np.uint8)
    tensors = {}
    for name, info in header.items():
        try:
            dtype_name, shape, (start, end) = info["dtype"], list(info["shape"]), info["data_offsets"]
        except (TypeError, KeyError, ValueError) as exc:
            raise damaged(f"the header entry of tensor {name!r} lacks a dtype, a shape or two data offsets") from exc
        if not all(isinstance(v, int) and v >= 0 for v in (*shape, start, end)) or start > end:
            raise damaged(f"tensor {name!r} has shape {shape} and data offsets [{start}, {end}), not non-negative "
                          "integers in order")
        if dtype_name not in _SAFETENSORS_DTYPES:
            raise ValueError(f"Tensor {name!r} in {file} has dtype {dtype_name}, which orca-jax cannot read.")
        dtype = np.dtype(_SAFETENSORS_DTYPES[dtype_name])
        if end > data_len:
            raise damaged(f"tensor {name!r} ends at byte {end} of the data but the file holds only {data_len} bytes "
                          "of data (cut short)")
        if end - start != math.prod(shape) * dtype.itemsize:
            raise damaged(f"tensor {name!r} ({dtype_name}, shape {tuple(shape)}) needs "
                          f"{math.prod(shape) * dtype.itemsize} bytes but its data offsets span {end - start}")
        tensors[name] = data[start:end].view(dtype).reshape(shape)
    return tensors


def _read_torch_bin(file: Path) -> Mapping[str, np.ndarray]:
    try:
        import torch
    except ImportError as exc:
        raise ImportError(
            f"{file} is a legacy PyTorch pickle, which needs torch to read. Install torch (CPU build is enough), or "
            "convert the checkpoint to safetensors with save_pretrained(..., safe_serialization=True)."
        ) from exc
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise CheckpointFormatError(f"{file} is not a readable PyTorch checkpoint ({exc}); {_REFETCH}.") from exc
    return {
        name: t.float().numpy().astype(ml_dtypes.bfloat16) if t.dtype == torch.bfloat16 else t.numpy()
        for name, t in state.items()
    }
