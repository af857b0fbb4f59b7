"""Source features: a source set embedded by a pretrained body's own embedding layer, mean-pooled over tokens.

These are the points the align stage moves the task's embedded data towards, so they live where the official code
puts them: at the output of the body's embedding module (the input of the first transformer block), one vector
per example.
- Text encoder: sentences tokenised by the body's own tokenizer (from its checkpoint directory), padded and
  truncated to 32 tokens (the official `text_xs_32`), through `body.embeddings` (word + position + token type,
  layer norm; no dropout), then averaged over the real tokens, i.e. where the attention mask is 1 ([CLS]/[SEP]
  or <s>/</s> included, padding excluded). The official file's pooling over padding is unknown; averaging padding
  in would pull every short sentence towards the padding embedding.
- Swin: NHWC images resized to the body's image size (bilinear, half-pixel centres, no antialiasing: what
  torchvision's Resize did on tensors, and what the 2D embedder does), through `body.embeddings` (patch
  convolution and layer norm), then averaged over the patch tokens.

`load_or_compute` caches the features and labels per (body, source, size, seed) as `.npz` plus a `.json` of
metadata under `~/.cache/orca_jax/source_features` (or `cache_dir`). The body enters the key as its hub id or
absolute directory plus a hash of its config.json; rewriting a checkpoint's weights in place without touching
config.json is not detected (use another cache_dir). Files are written to a temporary name and renamed, the
`.json` last, so an interrupted run never leaves a file that looks complete. What is read is verified (both files
parse, the shapes are those the `.json` records, the features are finite); a damaged entry is recomputed and
replaced with a warning naming it. A cache directory that cannot be written is warned about, and the run goes on.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import os
import re
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from orca_jax.atomic import atomic_path, atomic_write
from orca_jax.data.source_set import OFFICIAL_SOURCE_SIZE, SourceSet
from orca_jax.data.sources import SOURCES, load_source, source_spec
from orca_jax.models.families import family_of
from orca_jax.models.pretrained import load_checkpoint
from orca_jax.models.swin import Swin
from orca_jax.models.text_encoder import TextEncoder
from orca_jax.weights import read_config, resolve_checkpoint

log = logging.getLogger(__name__)

TEXT_MAX_LENGTH = 32  # tokens per sentence, as the official text_xs_32.npy


class SourceFeaturesError(ValueError):
    """Source features the align stage cannot use (all identical, or of another body's width): the message names
    the cache file and what to do with it; the command lines print it alone and exit with status 2."""

_CACHE_FORMAT = 1


def cache_root() -> Path:
    """orca-jax's cache directory: source features, and the compiled programs of `orca_jax.cli.start`."""
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "orca_jax"


def default_cache_dir() -> Path:
    return cache_root() / "source_features"


def _batched(fn: Callable[..., jax.Array], arrays: Sequence[np.ndarray], batch_size: int, desc: str, progress: bool):
    """fn over fixed-size batches (the last one zero-padded, so one compilation), concatenated, as NumPy."""
    n = len(arrays[0])
    out = []
    with tqdm(total=n, desc=desc, unit="example", disable=not progress) as bar:
        for start in range(0, n, batch_size):
            chunk = [a[start : start + batch_size] for a in arrays]
            real = len(chunk[0])
            chunk = [np.pad(c, [(0, batch_size - real)] + [(0, 0)] * (c.ndim - 1)) for c in chunk]
            out.append(np.asarray(fn(*chunk))[:real])
            bar.update(real)
    return np.concatenate(out).astype(np.float32)


def text_features(
    body: TextEncoder,
    tokenizer,
    texts: Sequence[str],
    *,
    max_length: int = TEXT_MAX_LENGTH,
    batch_size: int = 256,
    progress: bool = True,
    depth: str = "embedding",
) -> np.ndarray:
    """float32 [N, width]: `body.embeddings` of each sentence (padded/truncated to max_length), mean over its real
    tokens; with `depth="body"` the whole body's last hidden state instead (padding masked out of attention)."""
    encoded = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="np")
    ids = encoded["input_ids"].astype(np.int32)
    mask = encoded["attention_mask"].astype(np.int32)
    types = encoded.get("token_type_ids", np.zeros_like(ids)).astype(np.int32)
    graphdef, state = nnx.split(body.embeddings if depth == "embedding" else body)

    @jax.jit
    def embed(state, ids, types, mask):
        module = nnx.merge(graphdef, state)
        if depth == "embedding":
            tokens = module(ids, None, types, None, None)
        else:
            tokens = module(ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        tokens = tokens.astype(jnp.float32)
        weights = mask[..., None].astype(jnp.float32)
        return jnp.sum(tokens * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)

    return _batched(lambda *a: embed(state, *a), [ids, types, mask], batch_size, "text features", progress)


def image_features(body: Swin, images: np.ndarray, *, batch_size: int = 64, progress: bool = True,
                   depth: str = "embedding") -> np.ndarray:
    """float32 [N, embed_dim]: NHWC images resized to the body's image size, `body.embeddings`, mean over tokens;
    with `depth="body"` the whole body's pooled output [N, num_features]."""
    if images.ndim != 4 or images.shape[-1] != body.config.num_channels:
        raise ValueError(
            f"Expected NHWC images [N, height, width, {body.config.num_channels}], got shape {images.shape}."
        )
    image_size = tuple(body.config.image_size)
    graphdef, state = nnx.split(body.embeddings if depth == "embedding" else body)

    @jax.jit
    def embed(state, images):
        if images.shape[1:3] != image_size:
            shape = (images.shape[0], *image_size, images.shape[3])
            images = jax.image.resize(images, shape, method="linear", antialias=False)
        if depth == "body":
            return nnx.merge(graphdef, state)(images).pooler_output.astype(jnp.float32)
        tokens, _ = nnx.merge(graphdef, state)(images)
        return jnp.mean(tokens.astype(jnp.float32), axis=1)

    images = np.asarray(images, np.float32)
    return _batched(lambda x: embed(state, x), [images], batch_size, "image features", progress)


def _embed_text(body, inputs, *, tokenizer=None, **options) -> np.ndarray:
    if tokenizer is None:
        raise ValueError("A text encoder needs its tokenizer to embed a text source; pass tokenizer=.")
    return text_features(body, tokenizer, inputs, **options)


def _embed_images(body, inputs, *, tokenizer=None, **options) -> np.ndarray:
    return image_features(body, inputs, **options)


DEPTHS = ("embedding", "body")  # how far into the body source features are taken
# A source set's modality -> how a body of a family with that modality embeds its inputs.
EMBEDDINGS: dict[str, Callable[..., np.ndarray]] = {"text": _embed_text, "image": _embed_images}


def embed_source(
    body: nnx.Module,
    source: SourceSet,
    *,
    tokenizer=None,
    batch_size: int | None = None,
    progress: bool = True,
    depth: str = "embedding",
) -> np.ndarray:
    """Source features of `source` under `body`; a text body needs its tokenizer. `depth`: "embedding" (the body's
    own embedding layer: what ORCA aligns to) or "body" (the whole body's pooled output: what a head on the body
    reads, for label matching)."""
    if depth not in DEPTHS:
        raise ValueError(f"depth={depth!r} is not one of {DEPTHS}.")
    batch = {} if batch_size is None else {"batch_size": batch_size}
    modality = family_of(body).modality
    if source.modality == modality:
        return EMBEDDINGS[modality](body, source.inputs, tokenizer=tokenizer, progress=progress, depth=depth, **batch)
    fitting = sorted(name for name, spec in SOURCES.items() if spec.modality == modality)
    raise ValueError(
        f"Source {source.name!r} is a {source.modality} source, which a {type(body).__name__} body cannot embed; "
        f"use one of the {modality} sources {fitting}."
    )


def mean_squared_pairwise_distance(features: np.ndarray) -> float:
    """Mean of |x_i - x_j|^2 over pairs i != j, in O(N D): 2 N / (N - 1) (mean |x|^2 - |mean x|^2).

    Compared with the Sinkhorn epsilon (0.1) it tells how entropic the OTDD is on these features.
    """
    x = np.asarray(features, np.float64)
    n = len(x)
    if n < 2:
        raise ValueError(f"Need at least 2 feature vectors for a pairwise distance, got {n}.")
    return float(2 * n / (n - 1) * (np.mean(np.sum(x * x, axis=1)) - np.sum(x.mean(axis=0) ** 2)))


@dataclasses.dataclass(frozen=True, eq=False)
class SourceFeatures:
    features: np.ndarray  # float32 [N, D]
    labels: np.ndarray  # int32 [N]
    class_names: tuple[str, ...]
    metadata: dict
    path: Path  # the .npz file
    from_cache: bool


def _body_id(checkpoint: str | os.PathLike) -> str:
    path = Path(checkpoint).expanduser()
    return str(path.resolve()) if path.is_dir() else str(checkpoint)


def cache_key(checkpoint: str | os.PathLike, source: str, *, size: int | None, seed: int, weights: str = "pretrained",
              depth: str = "embedding") -> dict:
    """Everything that decides the cached features: body (id or directory, config hash, and `weights`:
    "pretrained", or a tag of other weights such as a random initialisation's seed), source, size, seed."""
    spec = source_spec(source)
    config_bytes = json.dumps(read_config(resolve_checkpoint(checkpoint)), sort_keys=True).encode()
    key = {
        "format": _CACHE_FORMAT,
        "body": _body_id(checkpoint),
        "body_config_sha256": hashlib.sha256(config_bytes).hexdigest()[:16],
        "source": source,
        "size": "all" if size is None else int(size),
        "seed": int(seed),
        **spec.cache_tags(),
    }
    if weights != "pretrained":  # keys of pretrained bodies keep their earlier form, so existing caches stay valid
        key["weights"] = weights
    if depth != "embedding":  # likewise
        key["depth"] = depth
    if spec.modality == "text":
        key["text_max_length"] = TEXT_MAX_LENGTH
    return key


def cache_paths(key: dict, cache_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """(features .npz, metadata .json): a readable stem plus a hash of the whole key."""
    body = key["body"]
    body_name = re.sub(r"[^A-Za-z0-9._-]+", "-", "-".join(Path(body).parts[-2:]) if os.path.isabs(body) else body)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    stem = f"{key['source']}_{body_name}_n{key['size']}_s{key['seed']}_{digest}"
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return directory / f"{stem}.npz", directory / f"{stem}.json"


def _read_cache(key: dict, npz_path: Path, json_path: Path) -> SourceFeatures | None:
    """The cached entry, or None when there is none or it is damaged (then said, naming the file, and recomputed:
    a truncated or corrupt file must not fail every later run with this body and source)."""
    if not (npz_path.is_file() and json_path.is_file()):
        return None
    try:
        metadata = json.loads(json_path.read_text())
        if metadata.get("key") != key:
            return None
        with np.load(npz_path, allow_pickle=False) as data:
            features, labels = data["features"], data["labels"]
        class_names = tuple(metadata["class_names"])
        expected = (metadata["num_examples"], metadata["dim"])
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as error:
        log.warning("source-feature cache %s (or its %s) is damaged (%s: %s); recomputing and replacing it",
                    npz_path, json_path.name, type(error).__name__, error)
        return None
    if features.shape != expected or labels.shape != expected[:1]:
        log.warning("source-feature cache %s holds features %s and labels %s, not the %s its %s records; recomputing "
                    "and replacing it", npz_path, features.shape, labels.shape, expected, json_path.name)
        return None
    if not np.isfinite(features).all():
        log.warning("source-feature cache %s holds %d NaN or infinite values: the cached file is damaged (the body "
                    "is not to blame); recomputing and replacing it", npz_path, int((~np.isfinite(features)).sum()))
        return None
    return SourceFeatures(features, labels, class_names, metadata, npz_path, from_cache=True)


def _write_cache(npz_path: Path, json_path: Path, features: np.ndarray, labels: np.ndarray, metadata: dict) -> None:
    """Caches the entry; a cache directory that cannot be written (read-only, full) costs only the recomputation
    next time, so it is said and the run goes on."""
    try:
        with atomic_path(npz_path) as tmp, open(tmp, "wb") as f:
            np.savez(f, features=features, labels=labels)
        atomic_write(json_path, json.dumps(metadata, indent=1))
    except OSError as error:
        log.warning("cannot write the source-feature cache in %s (%s); going on without caching (set "
                    "source.cache_dir to a writable directory to keep them)", npz_path.parent, error)


def body_tokenizer(checkpoint: str | os.PathLike):
    """The tokenizer of a text body's checkpoint (hub id or snapshot directory)."""
    from transformers import AutoTokenizer  # slow to import; only a text body's source inputs need it

    return AutoTokenizer.from_pretrained(resolve_checkpoint(checkpoint))


def load_or_compute(
    checkpoint: str | os.PathLike,
    source: str,
    *,
    size: int | None = OFFICIAL_SOURCE_SIZE,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    body: TextEncoder | Swin | None = None,
    weights: str = "pretrained",
    depth: str = "embedding",
) -> SourceFeatures:
    """Source features of `source` under the body of `checkpoint` (hub id or snapshot directory), cached.

    Returns float32 features [N, D] and int32 labels [N] of the first `size` source examples after a shuffle
    seeded by `seed` (fewer if the source is smaller). On a cache miss the body is loaded from `checkpoint`, unless
    `body` passes it already loaded (it must be that checkpoint's body: the cache is keyed on `checkpoint`).
    `data_dir` is the tensorflow-datasets data directory for the tfds sources. A body with other weights than the
    checkpoint's (a random initialisation) passes `body` and names its weights in `weights`. `depth` as
    `embed_source`'s.
    """
    key = cache_key(checkpoint, source, size=size, seed=seed, weights=weights, depth=depth)
    npz_path, json_path = cache_paths(key, cache_dir)
    cached = _read_cache(key, npz_path, json_path)
    if cached is not None:
        return cached

    if body is None:
        body = load_checkpoint(checkpoint).model
    tokenizer = body_tokenizer(checkpoint) if family_of(body).needs_tokenizer else None
    source_set = load_source(source, size=size, seed=seed, data_dir=data_dir)
    features = embed_source(body, source_set, tokenizer=tokenizer, batch_size=batch_size, progress=progress,
                            depth=depth)
    labels = source_set.labels.astype(np.int32)
    metadata = {
        "key": key,
        "num_examples": int(features.shape[0]),
        "dim": int(features.shape[1]),
        "class_names": list(source_set.class_names),
        "class_counts": np.bincount(labels, minlength=len(source_set.class_names)).tolist(),
        "mean_squared_pairwise_distance": mean_squared_pairwise_distance(features),
        "body_type": type(body).__name__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    _write_cache(npz_path, json_path, features, labels, metadata)
    return SourceFeatures(features, labels, source_set.class_names, metadata, npz_path, from_cache=False)
