"""Align-stage time per epoch at the official sizes: orca-jax vs a PyTorch reference of the official loop, same run.

    python scripts/benchmark_align.py [--epochs 4] [--width 768] [--solver annealed]

Official sizes: 5,000 source features in 10 classes; a 10-class target task whose classes each contribute
maxsamples 128 + one batch of 32 = 160 examples; a 1D embedder of ECG's shape (1,000 samples, 1 channel,
stride 20 -> 50 tokens, width 768, as RoBERTa-base). One epoch = embed every class, one OTDD per class against the
whole source set (label distances and source terms recomputed per call in the reference, as the official code
does; cached in orca-jax), class-weighted sum, backward, one AdamW step.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests.ot's reference

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402

from orca_jax.config import base_config  # noqa: E402
from orca_jax.models import TextEncoder, TextEncoderConfig  # noqa: E402
from orca_jax.models.embedders import SequenceEmbedder  # noqa: E402
from orca_jax.models.heads import ClassificationHead  # noqa: E402
from orca_jax.models.orca import OrcaModel  # noqa: E402
from orca_jax.parallel import make_mesh  # noqa: E402
from orca_jax.train.align import run_align  # noqa: E402
from tests.ot import geomloss_reference  # noqa: E402

LENGTH, STRIDE, CLASSES, PER_CLASS, SOURCE = 1000, 20, 10, 160, 5000


def synthetic(width: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    src_y = np.repeat(np.arange(10), SOURCE // 10)
    src_x = (rng.normal(size=(SOURCE, width)) + 3 * rng.normal(size=(10, width))[src_y] / np.sqrt(width))
    y = np.repeat(np.arange(CLASSES), 200)
    x = rng.normal(size=(len(y), LENGTH, 1)) + y[:, None, None] * 0.1
    return x.astype(np.float32), y, src_x.astype(np.float32), src_y


def ours_seconds_per_epoch(width: int, solver: str, epochs: int) -> float:
    x, y, src_x, src_y = synthetic(width)
    config = TextEncoderConfig(vocab_size=8, hidden_size=width, num_hidden_layers=1, num_attention_heads=12,
                               intermediate_size=4 * width, max_position_embeddings=514, pad_token_id=1,
                               padding_offset_positions=True, add_pooling_layer=False)
    rngs = nnx.Rngs(0)
    body = TextEncoder(config, rngs=rngs)  # unused by the align step, which sees only the embedder
    embedder = SequenceEmbedder.from_body(body, 1, LENGTH, target_seq_len=LENGTH // STRIDE, rngs=rngs)
    model = OrcaModel(embedder, body, ClassificationHead(width, CLASSES, rngs=rngs))
    # The schema's defaults (official values), so that fields added to the stage need no change here.
    config = base_config()
    align, optimizer = config.align, config.optimizer
    config.batch_size = 32
    align.update(epochs=epochs, objective="otdd-exact", solver=solver, epsilon=0.1, maxsamples=128,
                 checkpoint_every=10**6)
    optimizer.update(name="adamw", learning_rate=1e-5, weight_decay=0.0)
    with tempfile.TemporaryDirectory() as workdir:
        result = run_align(model, x, y, (src_x, src_y), config, mesh=make_mesh(), workdir=Path(workdir))
    seconds = [r["seconds"] for r in result.history]
    return (seconds[-1] - seconds[0]) / (len(seconds) - 1)  # the first epoch includes compilation


def reference_seconds_per_epoch(width: int) -> float:
    """The official loop: per class, embed 160 examples, mean over tokens, OTDD (geomloss), weighted backward."""
    x, y, src_x, src_y = synthetic(width)
    conv = torch.nn.Conv1d(1, width, STRIDE, STRIDE)
    norm = torch.nn.LayerNorm(width)
    positions = torch.nn.Embedding(514, width)
    params = [*conv.parameters(), *norm.parameters(), *positions.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.98))
    sx, sy = torch.tensor(src_x), torch.tensor(src_y)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for c in rng.permutation(CLASSES):
        members = rng.choice(np.flatnonzero(y == c), PER_CLASS, replace=False)
        xb = torch.tensor(x[members]).transpose(1, 2)  # official layout [batch, channels, length]
        tokens = norm(conv(xb).transpose(1, 2)) + positions(torch.arange(2, 2 + LENGTH // STRIDE))
        features = tokens.mean(1)
        weight = float(np.mean(y == c))
        (weight * geomloss_reference.otdd(sx, sy, features, torch.zeros(PER_CLASS, dtype=torch.long))).backward()
    optimizer.step()
    optimizer.zero_grad()
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=4, help="orca-jax epochs timed (the first, compiling, is not)")
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--solver", choices=["annealed", "converged"], default="annealed")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"align epoch at official sizes: {SOURCE} source x {args.width}, {CLASSES} classes x {PER_CLASS}, "
          f"{jax.device_count()} device(s)")
    ours = ours_seconds_per_epoch(args.width, args.solver, max(args.epochs, 2) + 1)
    print(f"  orca-jax ({args.solver}, cached): {ours:8.2f} s/epoch")
    reference = reference_seconds_per_epoch(args.width)
    print(f"  official loop (PyTorch + geomloss):  {reference:8.2f} s/epoch")
    print(f"  speed-up: {reference / ours:.1f}x")


if __name__ == "__main__":
    main()
