"""Time one align-stage OTDD call (value + gradient w.r.t. one target class), ours vs the official backend.

Ours: :class:`orca_jax.ot.OTDDLoss`, source terms cached, ``annealed`` and ``converged`` solvers. Reference: otdd on
geomloss/PyTorch as ORCA calls it, recomputing the source label distances and source terms every call
(``tests/ot/geomloss_reference.py``). Synthetic unit-scale features; the official sizes are 5,000 source points in
10 classes and target classes of 64–512 points at widths 128 (Swin) and 768 (RoBERTa).

    .venv/bin/python scripts/benchmark_otdd.py                # official sizes, + source-size scaling
    .venv/bin/python scripts/benchmark_otdd.py --quick        # small sizes, seconds
    .venv/bin/python scripts/benchmark_otdd.py --widths 128 --targets 160 --scaling-sizes 1000,5000,20000
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from orca_jax.ot import OTDDLoss  # noqa: E402


def data(n_src, n_tgt, width, classes, scale, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, width)) * 0.5
    src_y = np.arange(n_src) % classes
    src_x = ((centres[src_y] + rng.normal(size=(n_src, width))) * scale).astype(np.float32)
    tgt_x = ((rng.normal(size=(n_tgt, width)) * 0.8 + 0.1) * scale).astype(np.float32)
    return src_x, src_y, tgt_x


def best_time(fn, repeats):
    """Best wall time of ``repeats`` calls: on a shared machine other jobs only ever add time."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return min(times)


def timed(fn, repeats):
    """(best time per call, time of the first call, which includes compilation)."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return best_time(fn, repeats), time.perf_counter() - t0


def ours(src_x, src_y, tgt_x, solver, repeats):
    t0 = time.perf_counter()
    loss = OTDDLoss.build(src_x, src_y, solver=solver)
    jax.block_until_ready(loss.src_half_self)
    build = time.perf_counter() - t0
    per_call, warm = timed(lambda: loss(tgt_x), repeats)
    return per_call, warm, build


def reference(src_x, src_y, tgt_x, repeats):
    import torch

    from tests.ot import geomloss_reference

    torch.set_num_threads(os.cpu_count() or 1)
    sx, sy, ty = torch.tensor(src_x), torch.tensor(src_y), torch.zeros(len(tgt_x), dtype=torch.long)

    def call():
        tx = torch.tensor(tgt_x, requires_grad=True)
        geomloss_reference.otdd(sx, sy, tx, ty).backward()
        return tx.grad

    return best_time(call, repeats)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1,000 source points, width 32, targets of 64: seconds")
    p.add_argument("--widths", default="128,768")
    p.add_argument("--targets", default="64,160,512", help="target class sizes")
    p.add_argument("--source", type=int, default=5000)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--scale", type=float, default=1.0,
                   help="feature scale; at 1 (unit-scale) 'converged' needs thousands of iterations, at 0.1 tens")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--ref-repeats", type=int, default=2)
    p.add_argument("--no-reference", action="store_true")
    p.add_argument("--no-converged", action="store_true")
    p.add_argument("--scaling-sizes", default="1000,5000,20000", help="source sizes for the scaling table ('' = skip)")
    args = p.parse_args()
    if args.quick:
        args.widths, args.targets, args.source, args.scaling_sizes = "32", "64", 1000, "500,1000"

    widths = [int(w) for w in args.widths.split(",")]
    targets = [int(t) for t in args.targets.split(",")]
    solvers = ["annealed"] + ([] if args.no_converged else ["converged"])
    cases = [(w, n) for w in widths for n in targets]
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; {os.cpu_count()} CPU cores; "
          f"source {args.source} points in {args.classes} classes, feature scale {args.scale}")
    header = f"{'width':>5} {'target':>6} | " + " | ".join(f"{s:>9} s/call" for s in solvers)
    if not args.no_reference:
        header += " | reference s/call | " + " | ".join(f"ratio ({s})" for s in solvers)
    rows = []
    for i, (width, n_tgt) in enumerate(cases, 1):
        print(f"[{i}/{len(cases)}] width {width}, target class of {n_tgt} ...", flush=True)
        src_x, src_y, tgt_x = data(args.source, n_tgt, width, args.classes, args.scale)
        row = {"width": width, "target": n_tgt}
        for solver in solvers:
            per_call, warm, build = ours(src_x, src_y, tgt_x, solver, args.repeats)
            row[solver] = per_call
            print(f"    ours {solver}: {per_call:.4f} s/call (cache build {build:.1f} s, first call incl. "
                  f"compilation {warm:.1f} s)", flush=True)
        if not args.no_reference:
            row["reference"] = reference(src_x, src_y, tgt_x, args.ref_repeats)
            print(f"    reference (geomloss, recomputed per call): {row['reference']:.3f} s/call", flush=True)
        rows.append(row)

    print("\n" + header)
    for row in rows:
        line = f"{row['width']:>5} {row['target']:>6} | " + " | ".join(f"{row[s]:>16.4f}" for s in solvers)
        if "reference" in row:
            line += f" | {row['reference']:>16.3f} | " + " | ".join(
                f"{row['reference'] / row[s]:>15.1f}x" for s in solvers)
        print(line)

    sizes = [int(s) for s in args.scaling_sizes.split(",") if s]
    if sizes:
        width, n_tgt = widths[0], targets[len(targets) // 2]
        print(f"\nScaling with the source size (ours, annealed, width {width}, target class of {n_tgt}):")
        for n_src in sizes:
            src_x, src_y, tgt_x = data(n_src, n_tgt, width, args.classes, args.scale)
            per_call, _, build = ours(src_x, src_y, tgt_x, "annealed", args.repeats)
            print(f"  {n_src:>6} source points: {per_call:.4f} s/call, cache build {build:.1f} s", flush=True)


if __name__ == "__main__":
    main()
