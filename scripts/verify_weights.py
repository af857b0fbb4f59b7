"""Checks that a Hugging Face checkpoint loads into orca-jax exactly: runs orca-jax and transformers' PyTorch model
on the same random inputs (with padding where the body takes a mask) and prints the max abs difference per layer.

    python scripts/verify_weights.py CHECKPOINT [--tolerance 1e-4] [--batch 2] [--length 16]

CHECKPOINT is a snapshot directory or a hub id (resolved through the Hugging Face cache). Exit status: 0 every
difference within the tolerance; 1 some difference exceeds it (float32) or is not finite (NaN or infinite outputs
on either side); 2 the checkpoint cannot be loaded or an argument is meaningless (nothing was compared).
"""

import argparse
import math
import sys

from orca_jax.cli import RunError, run_command
from orca_jax.config_checks import ConfigError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=16, help="tokens (text) or image side in pixels (Swin)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    def body():
        bad = [f"--{name}={value} must be {need}" for name, value, need, ok in (
            ("tolerance", args.tolerance, "a finite number >= 0 (e.g. 1e-4)",
             math.isfinite(args.tolerance) and args.tolerance >= 0),
            ("batch", args.batch, "at least 1", args.batch >= 1),
            ("length", args.length, "at least 1", args.length >= 1),
        ) if not ok]
        if bad:
            raise ConfigError(bad)
        from orca_jax.parity import compare_with_transformers, worst

        comparisons = compare_with_transformers(args.checkpoint, batch=args.batch, length=args.length, seed=args.seed)
        width = max(len(c.name) for c in comparisons)
        for c in comparisons:
            finite = math.isfinite(c.max_abs_diff)
            flag = "ok" if c.within(args.tolerance) else "FAIL" if finite else "FAIL (not finite)"
            print(f"{c.name:<{width}}  max|diff| = {c.max_abs_diff:.3e}  {flag}")
        failures = [c for c in comparisons if not c.within(args.tolerance)]
        worst_one = worst(comparisons)
        print(f"{'FAIL' if failures else 'PASS'}: {len(failures)} of {len(comparisons)} comparisons fail; worst "
              f"{worst_one.name} {worst_one.max_abs_diff:.3e} vs tolerance {args.tolerance:g}")
        if failures:
            raise RunError("the weights differ from transformers' beyond the tolerance (see the lines above)")

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
