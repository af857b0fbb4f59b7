"""Train-step speed of orca-jax bodies: against transformers' PyTorch models on this CPU, and as model FLOPs
utilisation on whatever device JAX has.

    python scripts/benchmark_body.py [--body text|swin|both] [--steps 5] [--repeats 3] [--threads N] [--profile 2]
    python scripts/benchmark_body.py --device-suite [--text-batch B] [--image-batch B] [--steps 10] [--repeats 3]
    python scripts/benchmark_body.py --lora RANK [--steps 5] [--repeats 3]

Comparison (default). A train step is forward, backward and an AdamW update (lr 1e-4, betas (0.9, 0.98), weight
decay 0.01) of every parameter the loss uses, on random inputs, float32, dropout off: roberta-base shape with
8 x 128 `inputs_embeds` (its unused word-embedding table is frozen on our side, and PyTorch's AdamW skips it since
it gets no gradient), and swin-base-patch4-window7-224 with 2 images of 224². Both sides run in this process on
the same `--threads` cores: the process is pinned to them (XLA's CPU thread pool sizes itself from the process's
CPU affinity) and `torch.set_num_threads` gets the same number. Steps alternate between the two sides, so load
from other processes falls on both alike. Printed per side: step time min / median / max over `--repeats` rounds
of `--steps` steps, samples/s and achieved FLOP/s (analytic matmul FLOPs, identical for both sides) as a fraction
of this machine's float32 matmul peak, measured in the same run as the best of JAX's and PyTorch's 2048² matmuls;
then the ratio of throughputs (PyTorch time / ours) from the medians and from the minima.

Profile (`--profile STEPS`, after the timing): both sides traced for STEPS steps (`jax.profiler`, `torch.profiler`),
and per step: time in the forward pass, the backward pass and the optimizer update; in matmuls, in copies and
transposes, and in everything else; and the costliest ops (XLA's by HLO instruction, with the JAX operation each
comes from; PyTorch's by aten op, self time).

LoRA (`--lora RANK`): our roberta-base step (8 x 128, as above) with full fine-tuning against the same step with
adapters of RANK on the four projections and the body frozen (`refine.finetune_method=lora`), interleaved; printed:
both step times and their ratio.

Device suite (`--device-suite`, no PyTorch needed). orca-jax alone on `jax.devices()[0]` at real sizes:
roberta-base at sequence length 512 and swin-base at 224², AdamW train steps with bfloat16 compute over float32
master weights (`dtype=jnp.bfloat16`), and the model FLOPs utilisation: analytic model FLOPs per second over the
peak of a large bfloat16 (and, for reference, float32) matmul measured on the same device in the same run. Default
batches: 32 sequences / 64 images on accelerators, 2 / 2 on CPU (where the bfloat16 path is slow: XLA's CPU
backend has few bfloat16 kernels).
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

from benchmarking.machine import load_average, machine_description, pin_threads
from benchmarking.timing import interleaved_seconds, jax_matmul, matmul_flops_per_second
from benchmarking.workloads import swin_workload, text_lora_step, text_workload
from benchmarking.profiling import print_profile


def compare(args) -> None:
    import torch

    pin_threads(args.threads)
    print(machine_description())
    print(f"threads: {args.threads} (XLA: process affinity; PyTorch {torch.__version__}: {torch.get_num_threads()})")
    print(f"load average before: {load_average()}")
    n = 2048
    a = np.random.default_rng(0).normal(size=(n, n)).astype(np.float32)
    t = torch.from_numpy(a)
    peak = max(
        matmul_flops_per_second(jax_matmul(n, jnp.float32), n), matmul_flops_per_second(lambda: torch.mm(t, t), n)
    )
    print(f"float32 matmul peak (best of JAX and PyTorch, {n}^3): {peak / 1e9:.1f} GFLOP/s")
    builders = {"text": lambda: text_workload(8, 128), "swin": lambda: swin_workload(2, 224)}
    for name in ["text", "swin"] if args.body == "both" else [args.body]:
        w = builders[name]()
        print(f"\n{w.name}: {w.flops / 1e9:.1f} GFLOP per train step; {args.repeats} rounds of {args.steps} steps")
        spreads = interleaved_seconds({"orca-jax": w.ours, "PyTorch": w.reference}, args.steps, args.repeats)
        for side, s in spreads.items():
            print(
                f"  {side:<9} step min / median / max {s.minimum:6.3f} / {s.median:6.3f} / {s.maximum:6.3f} s  "
                f"{w.samples / s.median:6.2f} samples/s  {w.flops / s.median / 1e9:6.1f} GFLOP/s = "
                f"{w.flops / s.median / peak:5.1%} of peak (median)"
            )
        ours, theirs = spreads["orca-jax"], spreads["PyTorch"]
        print(
            f"  ratio orca-jax / PyTorch throughput: {theirs.median / ours.median:.2f}x (medians), "
            f"{theirs.minimum / ours.minimum:.2f}x (minima)"
        )
        if args.profile:
            print_profile(w, args.profile, args.top)
    print(f"\nload average after: {load_average()}")


def lora_speed(args) -> None:
    """Our roberta-base train step, full fine-tuning against LoRA at `--lora` rank, interleaved in this run."""
    pin_threads(args.threads)
    print(machine_description())
    full, adapted = text_workload(8, 128, reference=False), text_lora_step(8, 128, args.lora)
    print(f"\n{full.name}: full fine-tuning vs LoRA rank {args.lora} (qkv, out, mlp_in, mlp_out; body frozen); "
          f"{args.repeats} rounds of {args.steps} steps")
    spreads = interleaved_seconds({"full": full.ours, "lora": adapted}, args.steps, args.repeats)
    for side, s in spreads.items():
        print(f"  {side:<5} step min / median / max {s.minimum:6.3f} / {s.median:6.3f} / {s.maximum:6.3f} s")
    print(f"  LoRA step time / full: {spreads['lora'].median / spreads['full'].median:.2f} (medians), "
          f"{spreads['lora'].minimum / spreads['full'].minimum:.2f} (minima)")


def device_suite(args) -> None:
    device = jax.devices()[0]
    accelerator = device.platform != "cpu"
    text_batch = args.text_batch or (32 if accelerator else 2)
    image_batch = args.image_batch or (64 if accelerator else 2)
    print(machine_description())
    n = 8192 if accelerator else 2048
    # bfloat16's peak: the better of bfloat16 and float32 results (CPUs with AVX512-BF16 reach it only through
    # float32 accumulation).
    peaks = {
        "bfloat16": max(matmul_flops_per_second(jax_matmul(n, jnp.bfloat16, out), n) for out in (None, jnp.float32)),
        "float32": matmul_flops_per_second(jax_matmul(n, jnp.float32), n),
    }
    print(f"matmul peaks ({n}^3): " + ", ".join(f"{k} {v / 1e12:.3f} TFLOP/s" for k, v in peaks.items()))
    workloads = [
        lambda: text_workload(text_batch, 512, dtype=jnp.bfloat16, reference=False),
        lambda: swin_workload(image_batch, 224, dtype=jnp.bfloat16, reference=False),
    ]
    for build in workloads:
        w = build()
        s = interleaved_seconds({"ours": w.ours}, args.steps, args.repeats)["ours"]
        achieved = w.flops / s.median
        print(
            f"\n{w.name}, AdamW, bfloat16 compute / float32 weights: {w.flops / 1e12:.3f} TFLOP per step\n"
            f"  step min / median / max {s.minimum:.4f} / {s.median:.4f} / {s.maximum:.4f} s; "
            f"{w.samples / s.median:.1f} samples/s; {achieved / 1e12:.3f} TFLOP/s; "
            f"MFU {achieved / peaks['bfloat16']:.1%} of the measured bfloat16 matmul peak "
            f"({achieved / peaks['float32']:.1%} of float32's)"
        )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--body", choices=["text", "swin", "both"], default="text")
    parser.add_argument("--steps", type=int, default=5, help="steps per round (each side)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; the spread is over rounds")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                        else os.cpu_count(), help="cores for both sides (default: all this process may use)")
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="after timing, profile STEPS steps of each side: time per phase, per kind of op, top ops")
    parser.add_argument("--top", type=int, default=12, help="with --profile: how many of the costliest ops to list")
    parser.add_argument("--device-suite", action="store_true", help="MFU of bfloat16 train steps at real sizes")
    parser.add_argument("--lora", type=int, default=0, metavar="RANK",
                        help="time our full fine-tuning step against LoRA at RANK instead (roberta-base, 8 x 128)")
    parser.add_argument("--text-batch", type=int, default=0, help="device suite: sequences of 512 per step")
    parser.add_argument("--image-batch", type=int, default=0, help="device suite: 224² images per step")
    args = parser.parse_args(argv)
    if args.lora < 0:
        parser.error(f"--lora {args.lora}: give a positive adapter rank, e.g. --lora 8 (0 or absent: no LoRA timing).")
    if args.device_suite:
        device_suite(args)
    elif args.lora:
        lora_speed(args)
    else:
        compare(args)


if __name__ == "__main__":
    main()
