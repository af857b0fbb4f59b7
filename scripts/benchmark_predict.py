"""Serving speed of an exported model against transformers' PyTorch model of the same body with the same embedder
and head, in the same process, on the same CPU threads.

    python scripts/benchmark_predict.py --model=EXPORT_DIR [--batch 256] [--repeats 20] [--threads 2]
    python scripts/benchmark_predict.py [--layers 2 --hidden 128 --length 256 --channels 4 --classes 10]

With `--model`, an export of `scripts/export.py`; without it, a random RoBERTa-style body of the given size with
a classification embedder and head, exported first (no training: speed does not depend on the weights). The
PyTorch side is `transformers.AutoModel.from_pretrained(DIR/body)` run from its first transformer layer, as ORCA
runs the body, with the embedder and head written here in PyTorch from the export's `model.safetensors`; its outputs
are checked against orca-jax's before timing (the difference is printed), so both sides compute the same function.

Measured, per side, alternating between the sides (so load from other processes falls on both alike):
- batch-1 latency: one example in, its prediction out (median and min over `--repeats` calls);
- throughput: `--batch` examples per call, examples per second (median call).
orca-jax is timed twice: `TrainedModel.predict` (NumPy in, decoded predictions out, through the input pipeline:
what a user calls) and its compiled step alone on a device array (what the model costs). PyTorch: the module's
forward under `torch.inference_mode()` from NumPy, with the same decoding (softmax). Ratios are PyTorch's time over
ours: above 1, orca-jax is faster.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/, for the benchmarking helpers
from benchmarking.machine import machine_description, pin_threads  # noqa: E402


def torch_pipeline(trained, export_dir: Path):
    """The export's model in PyTorch: the transformers body, and the embedder and head from model.safetensors."""
    import torch
    import torch.nn.functional as F
    import transformers
    from safetensors.numpy import load_file

    from orca_jax.models.heads import (
        ClassificationHead,
        ImageDenseHead,
        SequenceDenseHead,
        SequenceLinearHead,
        adaptive_pool_matrix,
    )
    from orca_jax.models.families import FAMILIES, family_of

    weights = {k: torch.from_numpy(np.ascontiguousarray(v))
               for k, v in load_file(export_dir / "model.safetensors").items()}
    body = transformers.AutoModel.from_pretrained(export_dir / "body").eval()
    embedder, head = trained.model.embedder, trained.model.head
    task_loss = trained.info.task_loss()
    image = family_of(trained.model.body) is FAMILIES["image"]  # the PyTorch side is written per family

    def conv_weight(name):  # nnx (*spatial, in, out) -> torch (out, in, *spatial)
        w = weights[name]
        return w.permute(w.ndim - 1, w.ndim - 2, *range(w.ndim - 2))

    def embed(x):
        if image:
            x = x.permute(0, 3, 1, 2)
            if tuple(x.shape[2:]) != embedder.image_size:
                x = F.interpolate(x, size=embedder.image_size, mode="bilinear", align_corners=False, antialias=False)
            x = F.conv2d(x, conv_weight("embedder.projection.kernel"), weights["embedder.projection.bias"],
                         stride=embedder.projection.kernel_size)
            grid = tuple(x.shape[2:])
            x = F.layer_norm(x.flatten(2).transpose(1, 2), (x.shape[1],), weights["embedder.norm.scale"],
                             weights["embedder.norm.bias"], float(embedder.norm.epsilon))
            return x, grid
        x = F.conv1d(x.transpose(1, 2), conv_weight("embedder.projection.kernel"), weights["embedder.projection.bias"],
                     stride=embedder.stride).transpose(1, 2)
        if embedder.norm is not None:
            x = F.layer_norm(x, (x.shape[-1],), weights["embedder.norm.scale"], weights["embedder.norm.bias"],
                             float(embedder.norm.epsilon))
        first = embedder.first_position
        return x + weights["embedder.position.embedding"][first : first + x.shape[1]], None

    def run_head(pooled, sequence):
        if isinstance(head, ClassificationHead):
            return F.linear(pooled, weights["head.linear.kernel"].T, weights["head.linear.bias"])
        if isinstance(head, SequenceDenseHead):
            batch, tokens, _ = sequence.shape
            values = F.adaptive_avg_pool1d(sequence, head.out_channels * head.stride)
            return values.reshape(batch, head.out_channels, tokens * head.stride).transpose(1, 2)
        if isinstance(head, SequenceLinearHead):
            batch, tokens, _ = sequence.shape
            values = F.linear(sequence, weights["head.linear.kernel"].T, weights["head.linear.bias"])
            values = values.reshape(batch, tokens, head.out_channels, head.stride).transpose(2, 3)
            return values.reshape(batch, tokens * head.stride, head.out_channels)
        if isinstance(head, ImageDenseHead):
            batch = sequence.shape[0]
            maps = sequence.transpose(1, 2).reshape(batch, -1, *head.grid)
            maps = F.pixel_shuffle(F.conv2d(maps, conv_weight("head.decoder.kernel"), weights["head.decoder.bias"]),
                                   head.encoder_stride)
            maps = F.adaptive_avg_pool2d(maps, head.output_size)
            channels = torch.from_numpy(adaptive_pool_matrix(maps.shape[1], head.out_channels))
            return torch.einsum("bchw,kc->bhwk", maps, channels)
        raise SystemExit(f"no PyTorch version of {type(head).__name__} here")

    def forward(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            tokens, grid = embed(torch.from_numpy(np.asarray(x, np.float32)))
            if image:
                sequence = body.layernorm(body.encoder(tokens, grid).last_hidden_state)
            else:
                sequence = body.encoder(tokens).last_hidden_state
            raw = run_head(sequence.mean(1), sequence)
            out = raw.reshape(raw.shape[0], *task_loss.target_shape) if task_loss.kind.targets == "values" else raw
            if task_loss.target_mean is not None:
                out = out * torch.from_numpy(task_loss.target_std) + torch.from_numpy(task_loss.target_mean)
            out = out.numpy()
        return trained.decode(out)

    return forward


def synthetic_export(args, directory: Path) -> Path:
    """A random RoBERTa-style body with a classification embedder and head, exported as a trained run would be."""
    import torch
    import transformers

    from orca_jax.config import base_config
    from orca_jax.data import task_from_arrays
    from orca_jax.inference import TaskInfo, TrainedModel, export_model
    from orca_jax.pipeline import build_model
    from orca_jax.train.task_loss import make_task_loss
    from orca_jax.weights import read_config

    hf = transformers.RobertaConfig(
        hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 64),
        intermediate_size=4 * args.hidden, vocab_size=1000, max_position_embeddings=args.length + 2,
        type_vocab_size=1, pad_token_id=1, layer_norm_eps=1e-5,
    )
    torch.manual_seed(0)
    transformers.AutoModel.from_config(hf).save_pretrained(directory / "body")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4 * args.classes, args.length, args.channels)).astype(np.float32)
    task = task_from_arrays(x, np.arange(len(x)) % args.classes, kind="classification")
    config = base_config()
    config.body.checkpoint = str(directory / "body")
    config.embedder.target_seq_len = args.length
    config.align.epochs, config.refine.epochs = 0, 1
    task_loss = make_task_loss(task, config.task)
    trained = TrainedModel(build_model(config, task, task_loss), TaskInfo.from_task(task, task_loss, "none"), config,
                           directory, "workdir", "last", "refine", None, None, read_config(directory / "body"))
    return export_model(trained, directory / "export")


def timed(call, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="an export of scripts/export.py (default: a synthetic one)")
    p.add_argument("--batch", type=int, default=256, help="examples per call for the throughput")
    p.add_argument("--repeats", type=int, default=20, help="timed calls per side and measure (alternating)")
    p.add_argument("--threads", type=int, default=2, help="CPU cores both sides run on")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--length", type=int, default=256, help="input length (the embedder makes it <= length tokens)")
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--classes", type=int, default=10)
    args = p.parse_args(argv)
    pin_threads(args.threads)  # before JAX starts its CPU client, which sizes its thread pool from the affinity

    import jax
    import torch

    from orca_jax.inference import load_model

    print(machine_description())
    print(f"threads: {args.threads} (XLA: process affinity; PyTorch {torch.__version__}: {torch.get_num_threads()}); "
          f"JAX {jax.__version__} on {jax.devices()[0].platform}")
    with tempfile.TemporaryDirectory() as scratch:
        export_dir = Path(args.model) if args.model else synthetic_export(args, Path(scratch))
        trained = load_model(export_dir)
        body = trained.hf_config
        print(f"model: {'synthetic ' if not args.model else ''}{body['model_type']} body, "
              f"{body.get('num_hidden_layers', body.get('depths'))} layers, width "
              f"{body.get('hidden_size', body.get('embed_dim'))}; kind {trained.kind}; inputs "
              f"{trained.info.describe_inputs()}")
        theirs = torch_pipeline(trained, export_dir)
        rng = np.random.default_rng(0)
        big = rng.normal(size=(args.batch, *trained.info.input_shape)).astype(np.float32)
        one = big[:1]
        difference = np.abs(trained.predict(big)["outputs"] - theirs(big)["outputs"]).max()
        print(f"max |orca-jax - PyTorch| over {args.batch} predictions: {difference:.2e}")
        step, params, frozen, mesh = trained._prepared()
        from orca_jax.parallel import batch_from_process_rows

        device_one, device_big = (batch_from_process_rows(a, mesh) for a in (one, big))
        sides = {
            "orca-jax predict()": lambda x: trained.predict(x),
            "orca-jax compiled step": lambda x: jax.block_until_ready(
                step(params, frozen, device_one if len(x) == 1 else device_big)),
            "PyTorch (transformers)": theirs,
        }
        results = {name: {"one": [], "big": []} for name in sides}
        for name, call in sides.items():  # warm-up: compilation, allocator
            call(one), call(big)
        rounds = max(1, args.repeats // 5)
        for _ in range(rounds):  # interleaved
            for name, call in sides.items():
                results[name]["one"] += timed(lambda: call(one), 5)
                results[name]["big"] += timed(lambda: call(big), 2)
    print(f"\n| side | batch-1 latency, median / min (ms) | batch-{args.batch} throughput (examples/s, median) |")
    print("|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {1e3 * statistics.median(r['one']):.2f} / {1e3 * min(r['one']):.2f} | "
              f"{args.batch / statistics.median(r['big']):.0f} |")
    torch_side = results["PyTorch (transformers)"]
    for name in ("orca-jax predict()", "orca-jax compiled step"):
        ratio = {k: statistics.median(torch_side[k]) / statistics.median(results[name][k]) for k in ("one", "big")}
        print(f"ratio PyTorch / {name}: batch-1 latency {ratio['one']:.2f}x, throughput {ratio['big']:.2f}x")


if __name__ == "__main__":
    main()
