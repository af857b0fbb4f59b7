"""Train-step speed of orca-jax bodies: against transformers' PyTorch models on this CPU, and as model FLOPs
utilisation on whatever device JAX has.

    python scripts/benchmark_body.py [--body text|swin|both] [--steps 5] [--repeats 3] [--threads N] [--profile 2]
    python scripts/benchmark_body.py --device-suite [--text-batch B] [--image-batch B] [--steps 10] [--repeats 3]

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

Device suite (`--device-suite`, no PyTorch needed). orca-jax alone on `jax.devices()[0]` at real sizes:
roberta-base at sequence length 512 and swin-base at 224², AdamW train steps with bfloat16 compute over float32
master weights (`dtype=jnp.bfloat16`), and the model FLOPs utilisation: analytic model FLOPs per second over the
peak of a large bfloat16 (and, for reference, float32) matmul measured on the same device in the same run. Default
batches: 32 sequences / 64 images on accelerators, 2 / 2 on CPU (where the bfloat16 path is slow: XLA's CPU
backend has few bfloat16 kernels).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import os
import pathlib
import platform
import re
import statistics
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from orca_jax.models import Swin, SwinConfig, TextEncoder, TextEncoderConfig
from orca_jax.models.swin import stage_windows

ROBERTA_BASE = dict(
    model_type="roberta", vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
    intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1, layer_norm_eps=1e-5,
    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
)
SWIN_BASE = dict(
    model_type="swin", embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=7,
    drop_path_rate=0.0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
)


# ---- The machine ---------------------------------------------------------------------------------------------


def machine_description() -> str:
    """CPU model, vector extensions, cores this process may use, and JAX's device."""
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
    except OSError:
        pass
    vector = sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "sse4")))
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    device = jax.devices()[0]
    return (
        f"CPU: {model}; {os.cpu_count()} logical cores, {usable} usable by this process; vector extensions: "
        f"{' '.join(vector) or 'unknown'}\nJAX {jax.__version__} on {device.platform} ({device.device_kind})"
    )


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


# ---- Timing ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Spread:
    minimum: float
    median: float
    maximum: float

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        return cls(min(values), statistics.median(values), max(values))


def interleaved_seconds(fns: dict[str, Callable[[], None]], steps: int, repeats: int, warmup: int = 2) -> dict[str, Spread]:
    """Mean seconds per call of each function over `repeats` rounds of `steps` calls, the functions alternating
    call by call (so a burst of load from elsewhere hits all of them); its min / median / max over the rounds."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    rounds: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        totals = dict.fromkeys(fns, 0.0)
        for _ in range(steps):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn()
                totals[name] += time.perf_counter() - start
        for name in fns:
            rounds[name].append(totals[name] / steps)
    return {name: Spread.of(values) for name, values in rounds.items()}


def matmul_flops_per_second(matmul: Callable[[], None], n: int, steps: int = 5) -> float:
    """Best of `steps` timed n x n x n matmuls after a warm-up call."""
    matmul()
    best = min(_timed(matmul) for _ in range(steps))
    return 2 * n**3 / best


def _timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def jax_matmul(n: int, dtype, accumulate=None) -> Callable[[], None]:
    """An n x n x n matmul in `dtype`, its result in `accumulate` (default: `dtype`)."""
    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), dtype)
    mm = jax.jit(lambda x: jnp.matmul(x, x, preferred_element_type=accumulate))
    return lambda: mm(a).block_until_ready()


# ---- Train steps -----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class JaxStep:
    """One train step to call (it blocks until done), and the optimized HLO of the compiled step, whose instruction
    names are what the profiler's per-op events are called."""

    run: Callable[[], None]
    optimized_hlo: Callable[[], str]

    def __call__(self) -> None:
        self.run()


def jax_train_step(model: nnx.Module, loss_fn: Callable, inputs,
                   frozen: Callable[[tuple], bool] = lambda path: False) -> JaxStep:
    """The functional NNX step orca-jax trains with: split once, differentiate a function of the trainable
    parameters, donate parameters and optimizer state (the refine stage's step does the same)."""
    trainable = nnx.All(nnx.Param, lambda path, _: not frozen(path))
    graphdef, params, rest = nnx.split(model, trainable, ...)
    optimizer = optax.adamw(1e-4, b1=0.9, b2=0.98, weight_decay=0.01)
    state = {"params": params, "opt": optimizer.init(params)}

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, inputs):
        loss, grads = jax.value_and_grad(lambda p: loss_fn(nnx.merge(graphdef, p, rest), inputs))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def run():
        state["params"], state["opt"], loss = step(state["params"], state["opt"], inputs)
        loss.block_until_ready()

    return JaxStep(run, lambda: step.lower(state["params"], state["opt"], inputs).compile().as_text())


def torch_train_step(model, loss_fn):
    """PyTorch's step, its phases labelled for the profiler (`record_function` costs microseconds a step)."""
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), weight_decay=0.01)

    def run():
        optimizer.zero_grad(set_to_none=True)
        with torch.profiler.record_function("forward"):
            loss = loss_fn(model)
        with torch.profiler.record_function("backward"):
            loss.backward()
        with torch.profiler.record_function("update"):
            optimizer.step()

    return run


def text_forward_flops(config: TextEncoderConfig, batch: int, length: int) -> float:
    """Matmul FLOPs of the encoder layers' forward pass: q/k/v/out projections, scores and context, MLP."""
    width, ff = config.hidden_size, config.intermediate_size
    tokens = batch * length
    per_layer = 2 * tokens * (4 * width * width + 2 * width * ff) + 4 * batch * length * length * width
    return config.num_hidden_layers * per_layer


def swin_forward_flops(config: SwinConfig, image: tuple[int, int]) -> int:
    """Matmul FLOPs of one image's forward pass: patch embedding, q/k/v/out projections and attention on the
    (padded) windows, MLP, patch merging."""
    height, width = -(-image[0] // config.patch_size[0]), -(-image[1] // config.patch_size[1])
    flops = 2 * height * width * config.patch_size[0] * config.patch_size[1] * config.num_channels * config.embed_dim
    stages = stage_windows(config, image)
    for stage, ((h, w), window, _) in enumerate(stages):
        c, depth = config.stage_widths[stage], config.depths[stage]
        padded = -(-h // window) * window * (-(-w // window) * window)
        attention = 2 * padded * 4 * c * c + 2 * 2 * padded * window * window * c
        flops += depth * (attention + 2 * 2 * h * w * c * int(config.mlp_ratio * c))
        if stage < len(stages) - 1:
            flops += 2 * ((h + 1) // 2) * ((w + 1) // 2) * 4 * c * 2 * c
    return flops


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    samples: int  # per step
    flops: float  # per train step: analytic matmul FLOPs of the forward pass, x 3 for forward + backward
    ours: JaxStep
    reference: Callable[[], None] | None = None  # PyTorch's step


def _text_loss(model, embeds):
    return jnp.mean(model(inputs_embeds=embeds).last_hidden_state.astype(jnp.float32) ** 2)


def _swin_loss(model, images):
    return jnp.mean(model(images).last_hidden_state.astype(jnp.float32) ** 2)


def _unused_word_table(path) -> bool:
    return tuple(path[:2]) == ("embeddings", "word")


def text_workload(batch: int, length: int, *, dtype=jnp.float32, reference: bool = True) -> Workload:
    """roberta-base shape, `inputs_embeds` input, no pooler, loss = mean square of the output."""
    config = TextEncoderConfig.from_hf(ROBERTA_BASE, add_pooling_layer=False)
    embeds = np.random.default_rng(0).normal(size=(batch, length, config.hidden_size)).astype(np.float32)
    model = TextEncoder(config, dtype=dtype, rngs=nnx.Rngs(0))
    ours = jax_train_step(model, _text_loss, jnp.asarray(embeds), frozen=_unused_word_table)
    torch_step = None
    if reference:
        import torch
        import transformers

        hf_config = transformers.RobertaConfig(**{k: v for k, v in ROBERTA_BASE.items() if k != "model_type"})
        torch_model = transformers.RobertaModel(hf_config, add_pooling_layer=False).train()
        xt = torch.from_numpy(embeds)
        torch_step = torch_train_step(torch_model, lambda m: m(inputs_embeds=xt).last_hidden_state.pow(2).mean())
    flops = 3.0 * text_forward_flops(config, batch, length)
    return Workload(f"text encoder (roberta-base, {batch} x {length} tokens)", batch, flops, ours, torch_step)


def swin_workload(batch: int, side: int, *, dtype=jnp.float32, reference: bool = True) -> Workload:
    """swin-base-patch4-window7-224 shape, NHWC images on our side (NCHW on PyTorch's), loss = mean square of the
    last hidden state, drop path off like dropout."""
    config = SwinConfig.from_hf({**SWIN_BASE, "image_size": side})
    pixels = np.random.default_rng(0).normal(size=(batch, side, side, 3)).astype(np.float32)
    ours = jax_train_step(Swin(config, dtype=dtype, rngs=nnx.Rngs(0)), _swin_loss, jnp.asarray(pixels))
    torch_step = None
    if reference:
        import torch
        import transformers

        hf_config = transformers.SwinConfig(**{k: v for k, v in SWIN_BASE.items() if k != "model_type"}, image_size=side)
        torch_model = transformers.SwinModel(hf_config).train()
        xt = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))
        torch_step = torch_train_step(torch_model, lambda m: m(xt).last_hidden_state.pow(2).mean())
    flops = 3.0 * batch * swin_forward_flops(config, (side, side))
    name = f"Swin (swin-base-patch4-window7, {batch} x {side}x{side}x3 images)"
    return Workload(name, batch, flops, ours, torch_step)


# ---- Where the time goes --------------------------------------------------------------------------------------

PHASES = ("forward", "backward", "update")
CATEGORIES = ("matmul", "copy / transpose", "other")
_HLO_LINE = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<shape>\S+)\s+(?P<opcode>[\w\-]+)\(")
_TORCH_MATMUL = re.compile(r"^aten::(mm|addmm|bmm|baddbmm|mkldnn_convolution|convolution_backward)$")
_TORCH_LAYOUT = re.compile(r"^aten::(copy_|clone|contiguous|_to_copy|cat|constant_pad_nd|roll)$")


@dataclasses.dataclass
class OpTimes:
    """Seconds per step by op label, by phase and by category."""

    ops: collections.Counter  # label -> seconds per step, summed over the ops that share the label
    calls: collections.Counter  # label -> ops (XLA) or calls (PyTorch) per step
    phases: dict[str, float]
    categories: dict[str, float]

    @classmethod
    def empty(cls) -> OpTimes:
        return cls(collections.Counter(), collections.Counter(), dict.fromkeys(PHASES, 0.0),
                   dict.fromkeys(CATEGORIES, 0.0))

    @property
    def total(self) -> float:
        return sum(self.categories.values())

    def top(self, n: int) -> list[tuple[str, float, int]]:
        return [(label, seconds, self.calls[label]) for label, seconds in self.ops.most_common(n)]


def _hlo_instructions(text: str) -> dict[str, tuple[str, str, str]]:
    """name -> (opcode with fusion kind, result shape, JAX op_name) of every instruction in optimized HLO text."""
    found = {}
    for line in text.splitlines():
        match = _HLO_LINE.match(line)
        if not match:
            continue
        kind = re.search(r"kind=(k\w+)", line)
        op_name = re.search(r'op_name="([^"]*)"', line)
        opcode = match["opcode"] + (f"[{kind[1]}]" if kind else "")
        found[match["name"]] = (opcode, match["shape"], op_name[1] if op_name else "")
    return found


def _jax_phase(op_name: str) -> str:
    """Reverse-mode ops carry `transpose(jvp(...))` in their JAX op_name, forward ones `jvp(...)`; the optimizer's
    neither."""
    return "backward" if "transpose(" in op_name else "forward" if "jvp(" in op_name else "update"


def _jax_category(opcode: str, op_name: str) -> str:
    last = op_name.rsplit("/", 1)[-1]
    if opcode.startswith(("dot", "convolution")) or last.startswith(("dot_general", "conv_general")):
        return "matmul"
    if opcode.startswith(("copy", "transpose")) or last.startswith("transpose"):
        return "copy / transpose"
    return "other"


def jax_profile(step: JaxStep, steps: int) -> OpTimes:
    """Per-op times of `steps` calls from a `jax.profiler` trace: each XLA op's events (named by their HLO
    instruction), labelled from the step's optimized HLO."""
    from jax.profiler import ProfileData

    instructions = _hlo_instructions(step.optimized_hlo())
    totals: collections.Counter = collections.Counter()
    with tempfile.TemporaryDirectory() as directory:
        jax.profiler.start_trace(directory)
        for _ in range(steps):
            step()
        jax.profiler.stop_trace()
        trace = ProfileData.from_file(str(next(pathlib.Path(directory).rglob("*.xplane.pb"))))
        for plane in trace.planes:
            for line in plane.lines:
                for event in line.events:
                    hlo_op = dict(event.stats).get("hlo_op")
                    if hlo_op is not None:
                        totals[hlo_op] += event.duration_ns * 1e-9 / steps
    times = OpTimes.empty()
    for name, seconds in totals.items():
        opcode, shape, op_name = instructions.get(name, ("?", "?", ""))
        phase = _jax_phase(op_name)
        # Instances of one op in every layer share a label: the op, its shape and the JAX operation it comes from.
        label = f"{opcode} {shape.split('{')[0]} {phase}:{op_name.rsplit('/', 1)[-1]}"
        times.ops[label] += seconds
        times.calls[label] += 1
        times.phases[phase] += seconds
        times.categories[_jax_category(opcode, op_name)] += seconds
    return times


def torch_profile(step: Callable[[], None], steps: int) -> OpTimes:
    """Per-op self times of `steps` calls from `torch.profiler` (CPU), phases from the step's labels."""
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        for _ in range(steps):
            step()
    times = OpTimes.empty()
    for event in profile.key_averages():
        if event.key in PHASES:
            times.phases[event.key] += event.cpu_time_total * 1e-6 / steps
            continue
        seconds = event.self_cpu_time_total * 1e-6 / steps
        if seconds <= 0:
            continue
        times.ops[event.key] += seconds
        times.calls[event.key] += event.count // steps
        category = ("matmul" if _TORCH_MATMUL.match(event.key) else
                    "copy / transpose" if _TORCH_LAYOUT.match(event.key) else "other")
        times.categories[category] += seconds
    return times


def print_profile(workload: Workload, steps: int, top: int) -> None:
    sides = {"orca-jax": jax_profile(workload.ours, steps), "PyTorch": torch_profile(workload.reference, steps)}
    # Op times are busy times: XLA runs independent ops of a step concurrently on its threads, so its sums can
    # exceed the step's wall time; compare shares across sides, and absolute times within one.
    print(f"  where a step's time goes ({steps} profiled steps; busy seconds per step, summed over threads):")
    for side, times in sides.items():
        phases = ", ".join(f"{k} {v:.3f}" for k, v in times.phases.items())
        categories = ", ".join(f"{k} {v:.3f} ({v / times.total:.0%})" for k, v in times.categories.items())
        print(f"    {side:<9} {phases} | ops {times.total:.3f}: {categories}")
    for side, times in sides.items():
        print(f"  top {top} {side} ops{' (self time)' if side == 'PyTorch' else ''}: ms per step, share, count, op")
        for label, seconds, count in times.top(top):
            print(f"    {seconds * 1e3:8.1f} {seconds / times.total:6.1%} {count:5d}x  {label}")


# ---- The two modes ---------------------------------------------------------------------------------------------


def pin_threads(threads: int) -> None:
    """Both frameworks on the same `threads` cores: pin the process (before JAX starts its CPU client, which sizes
    its thread pool from the affinity) and tell PyTorch."""
    import torch

    if hasattr(os, "sched_setaffinity"):
        available = sorted(os.sched_getaffinity(0))
        if threads > len(available):
            raise SystemExit(f"--threads {threads}: this process may use only {len(available)} cores.")
        os.sched_setaffinity(0, available[:threads])
    torch.set_num_threads(threads)


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
    parser.add_argument("--text-batch", type=int, default=0, help="device suite: sequences of 512 per step")
    parser.add_argument("--image-batch", type=int, default=0, help="device suite: 224² images per step")
    args = parser.parse_args(argv)
    device_suite(args) if args.device_suite else compare(args)


if __name__ == "__main__":
    main()
