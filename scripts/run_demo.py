"""The README's main job: ORCA end to end on mnist1d with the real pretrained MiniLM, offline, next to the same
model fine-tuned without alignment, so a newcomer sees what alignment buys.

    python scripts/run_demo.py [--workdir workdirs]

Runs configs/demo.py (align, then refine) in WORKDIR/demo and configs/demo.py:no_align (refine only, the official
no-alignment ablation) in WORKDIR/demo_no_align, then prints both test accuracies and each stage's wall time.
Rerunning resumes (or reuses) what the workdirs hold.
"""

import argparse
import json
import time
from pathlib import Path

from orca_jax.cli import start
from orca_jax.config import load_config_file
from orca_jax.pipeline import run

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=str(ROOT / "workdirs"))
    args = parser.parse_args(argv)
    start()
    summaries = {}
    for name, variant in (("demo", None), ("demo_no_align", "no_align")):
        began = time.perf_counter()
        summaries[name] = run(load_config_file(ROOT / "configs" / "demo.py", variant), Path(args.workdir) / name)
        summaries[name]["wall_seconds"] = time.perf_counter() - began
    orca, plain = summaries["demo"], summaries["demo_no_align"]
    print("\n" + json.dumps(summaries, indent=2))
    print("\nmnist1d, pretrained MiniLM body (all-MiniLM-L6-v2), same refine budget:")
    print(f"  OTDD to MiniLM's source features: {orca['align']['distance_before']:.2f} before alignment, "
          f"{orca['align']['distance_after']:.2f} after ({orca['align']['seconds']:.0f} s); the embedder "
          f"initialised afresh (no alignment) starts at {plain['align']['distance_after']:.2f}")
    for label, summary in (("ORCA (align, then refine)", orca), ("fine-tuning without alignment", plain)):
        refine = summary["refine"]
        print(f"  {label:<30} test accuracy {refine['test_accuracy']:.3f}  "
              f"(best validation {refine['best_val_accuracy']:.3f} at epoch {refine['best_epoch']}; "
              f"refine {refine['seconds']:.0f} s, whole run {summary['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
