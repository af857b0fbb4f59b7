"""Where a train step's time goes: per phase (forward, backward, update), per kind of op (matmul, copies and
transposes, the rest) and the costliest ops, from `jax.profiler` and `torch.profiler` traces."""

from __future__ import annotations

import collections
import dataclasses
import pathlib
import re
import tempfile
from collections.abc import Callable

import jax

from benchmarking.workloads import JaxStep, Workload


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
