"""orca-jax against the official ORCA code: the same model, data, hyperparameters and seeds, trained by both.

    python scripts/compare_official.py --official-src ORCA/src --official-python OFFICIAL/bin/python \\
        --task mnist1d --seeds 0,1,2                     # both sides, then the report
    python scripts/compare_official.py --task mnist1d --report      # the report from finished runs
    python scripts/compare_official.py --official-src ORCA/src --official-python OFFICIAL/bin/python \\
        --task mnist1d --seeds 0 --variant select-on-test            # one deliberate deviation, run both ways

`--official-src` is the `src/` directory of a checkout of github `sjunhongshen/ORCA`; `--official-python` a Python
with that code's dependencies (torch and torchvision, transformers, geomloss, POT, timm, attrdict, seaborn, and the
checkout's vendored otdd: `pip install ORCA/src/otdd`); the official side runs there, in
`scripts/official_orca_side.py`, which says exactly where the official code is adapted. (geomloss 0.2.6 is the
last release laid out as the vendored otdd expects: `geomloss.utils`.) This side runs orca-jax
through `orca_jax.pipeline.run`.

Tasks, all offline, on the demo's body (the pretrained MiniLM, all-MiniLM-L6-v2) aligned to its `python_docs`
source features (1,000 of them on both sides: the official OTDD recomputes the source's label distances on every
call, which at the official 5,000 makes one official align epoch take minutes here):
- `mnist1d`: classification, 1,000 training examples, the demo's hyperparameters, 10 align and 8 refine epochs;
- `heat`: the periodic heat equation of `scripts/heat_equation_data.py` (480 training and 120 test series of 128
  points), `dense_1d`, 10 align and 10 refine epochs;
- `breast_cancer`: scikit-learn's copy of OpenML 1510 (wdbc) in the official all-numeric layout (one token of 30
  standardised features, a stratified 90/10 split), with the official OPENML1510 hyperparameters (20 align, 60
  refine epochs);
- `identity`, `shift`: 500 smooth random series of 128 points whose targets are the inputs, or the inputs shifted by
  8 points (an advection step), `dense_1d`, with `configs/own_data.py:offline`'s budget (10 align and 10 refine
  epochs, batch 16): diagnostics whose answer is known.

Variants (`--variant`): `main` (both sides as defined); `select-on-test` (the official protocol: its "validation"
split is the test split); `body-positions` (the official embedder with orca-jax's position ids: a BERT body's from
0, where the official code always starts at 2); `remedy` (orca-jax with `embedder.norm=False` and
`head.dense_1d=linear`, the options for dense targets). `--refine-epochs`/`--align-epochs` change the budget (the
run directory says so).

Each seed's directory `DIR/<task>/<variant>/seed<k>/` holds what both sides read: `experiment.json`, `data.npz` (the
split, drawn by orca-jax's task loader with that seed), `source.npz` (the source features) and `init.npz` (the
initial embedder and head, from the orca-jax model of that seed, so both start from the same weights), and what
each wrote: `ours/` (an orca-jax workdir) and `official/history.json`. Finished sides are not run again
(`--rerun` does). `DIR/<task>/report.md` has, per variant and side, the test metric with a 95 % Student-t interval
over seeds, the wall times and the verdict; `DIR/<task>/curves.png` the per-epoch curves of both sides.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

from orca_jax.config import base_config  # noqa: E402
from orca_jax.data.source_features import load_or_compute  # noqa: E402
from orca_jax.data.tasks import load_task, task_from_arrays  # noqa: E402
from orca_jax.data.types import Split, Task  # noqa: E402
from orca_jax.models.packaged import packaged_minilm  # noqa: E402
from orca_jax.plotting import figure_png  # noqa: E402
from orca_jax.sweep.report import t_interval  # noqa: E402

SOURCE, SOURCE_SIZE = "python_docs", 1000


@dataclasses.dataclass(frozen=True)
class Budget:
    """Hyperparameters both sides take (the official names in comments)."""

    batch_size: int
    target_seq_len: int
    align_epochs: int  # embedder_epochs
    refine_epochs: int  # epochs
    optimizer: str  # adamw | adam | sgd (official AdamW | Adam | SGD)
    lr: float
    weight_decay: float
    warmup_epochs: int
    decay_epochs: int
    clip: float
    maxsamples: int = 128
    momentum: float = 0.9
    dropout: float | None = None  # drop_out; None keeps the checkpoint's (official: drop_out absent)


def smooth_series(count: int, length: int = 128, modes: int = 6, seed: int = 0) -> np.ndarray:
    """[count, length] random smooth periodic series: a few Fourier modes, amplitudes falling with the wave number."""
    rng = np.random.default_rng(seed)
    t = np.arange(length) * 2 * np.pi / length
    k = np.arange(1, modes + 1)
    amplitude = rng.normal(size=(count, modes)) / k
    phase = rng.uniform(0, 2 * np.pi, size=(count, modes))
    return np.einsum("nm,nml->nl", amplitude, np.sin(k[None, :, None] * t[None, None, :] + phase[..., None])).astype(
        np.float32)


def _mnist1d(seed: int) -> Task:
    return load_task("mnist1d", seed=seed, train_size=1000)


def _heat(seed: int) -> Task:
    from scripts.heat_equation_data import heat_equation

    common = dict(length=128, nu=0.1, time=1.0, modes=8)
    x, y = heat_equation(480, seed=0, **common)
    x_test, y_test = heat_equation(120, seed=1, **common)
    return task_from_arrays(x, y, x_test=x_test, y_test=y_test, kind="dense_1d", name="heat", seed=seed)


def _breast_cancer(seed: int) -> Task:
    import pandas as pd
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import StratifiedShuffleSplit

    from orca_jax.data.benchmarks.openml_tasks import SPLIT_SEED, TEST_FRACTION, preprocess

    data = load_breast_cancer(as_frame=True)
    x, y = preprocess(data.data, pd.Series(data.target), [False] * data.data.shape[1])
    split = StratifiedShuffleSplit(n_splits=1, test_size=TEST_FRACTION, random_state=SPLIT_SEED)
    train, test = next(split.split(np.zeros(len(y)), y))
    return task_from_arrays(x[train], y[train], x_test=x[test], y_test=y[test], kind="tabular", name="breast_cancer",
                            seed=seed)


def _series_task(name: str, shift: int):
    def build(seed: int) -> Task:
        x = smooth_series(500)
        return task_from_arrays(x[..., None], np.roll(x, shift, axis=1), kind="dense_1d", name=name, seed=seed)

    return build


_OWN_DATA = Budget(batch_size=16, target_seq_len=64, align_epochs=10, refine_epochs=10, optimizer="adamw", lr=1e-4,
                   weight_decay=1e-5, warmup_epochs=2, decay_epochs=20, clip=1.0)
TASKS = {
    "mnist1d": (_mnist1d, Budget(32, 20, 10, 8, "adamw", 1e-4, 1e-5, 1, 8, 1.0)),
    "heat": (_heat, Budget(16, 64, 10, 10, "adamw", 2e-4, 1e-5, 1, 10, 1.0)),
    "breast_cancer": (_breast_cancer, Budget(64, 16, 20, 60, "adamw", 1e-5, 1e-5, 5, 60, 0.1, momentum=0.999,
                                             dropout=0.0)),
    "identity": (_series_task("identity", 0), _OWN_DATA),
    "shift": (_series_task("shift", 8), _OWN_DATA),
}
# name -> (orca-jax config overrides, official overrides, sides that run; the others are the main variant's)
VARIANTS = {
    "main": ({}, {}, ("ours", "official")),
    "select-on-test": ({}, {"valid_split": False}, ("official",)),
    "body-positions": ({}, {"positions": "body"}, ("official",)),
    "remedy": ({"embedder.norm": False, "head.dense_1d": "linear"}, {}, ("ours",)),
}
OFFICIAL_OPTIMIZERS = {"adamw": "AdamW", "adam": "Adam", "sgd": "SGD"}


def ours_config(task: Task, budget: Budget, seed: int, overrides: dict):
    c = base_config()
    c.seed, c.batch_size = seed, budget.batch_size
    c.task.kind = task.kind
    c.body.checkpoint = packaged_minilm()
    c.body.dropout = -1.0 if budget.dropout is None else budget.dropout
    c.embedder.target_seq_len = budget.target_seq_len
    c.source.update(name=SOURCE, size=SOURCE_SIZE, seed=0)
    c.align.update(epochs=budget.align_epochs, maxsamples=budget.maxsamples, objective="otdd-exact",
                   solver="annealed", checkpoint_every=10)
    c.optimizer.update(name=budget.optimizer, learning_rate=budget.lr, weight_decay=budget.weight_decay,
                       momentum=budget.momentum, b1=0.9, b2=0.98, eps=1e-8)
    c.refine.update(epochs=budget.refine_epochs, warmup_epochs=budget.warmup_epochs,
                    decay_epochs=budget.decay_epochs, clip=budget.clip, accum=1, select="best")
    for field, value in overrides.items():
        section, name = field.split(".")
        c[section][name] = value
    return c


def official_spec(task: Task, budget: Budget, seed: int, overrides: dict) -> dict:
    official = {
        "batch_size": budget.batch_size, "target_seq_len": budget.target_seq_len, "maxsamples": budget.maxsamples,
        "embedder_epochs": budget.align_epochs, "epochs": budget.refine_epochs, "objective": "otdd-exact",
        "optimizer": OFFICIAL_OPTIMIZERS[budget.optimizer], "lr": budget.lr, "weight_decay": budget.weight_decay,
        "momentum": budget.momentum, "warmup_epochs": budget.warmup_epochs, "decay_epochs": budget.decay_epochs,
        "clip": budget.clip, "accum": 1, "drop_out": budget.dropout, "valid_split": True, "positions": "official",
    } | overrides
    return {"task": task.name, "kind": task.kind, "num_classes": task.num_classes, "seed": seed,
            "body": packaged_minilm(), "official": official}


def initial_weights(config, task: Task) -> dict:
    """The orca-jax model's initial embedder and linear head in PyTorch's layouts (Conv1d [out, in, k], Linear
    [out, in])."""
    from orca_jax.pipeline import build_model
    from orca_jax.train.task_loss import make_task_loss

    model = build_model(config, task, make_task_loss(task, config.task))
    e = model.embedder
    if e.norm is None:
        raise ValueError("the official embedder has a layer norm: compare runs with embedder.norm=True")
    init = {
        "projection_weight": np.asarray(e.projection.kernel[...]).transpose(2, 1, 0),
        "projection_bias": np.asarray(e.projection.bias[...]),
        "norm_weight": np.asarray(e.norm.scale[...]), "norm_bias": np.asarray(e.norm.bias[...]),
        "position_embeddings": np.asarray(e.position.embedding[...]),
    }
    if hasattr(model.head, "linear"):
        init["head_weight"] = np.asarray(model.head.linear.kernel[...]).T
        init["head_bias"] = np.asarray(model.head.linear.bias[...])
    return init


def split_arrays(task: Task) -> dict:
    return {f"{a}_{s}": np.asarray(getattr(getattr(task, s), a)) for s in ("train", "val", "test") for a in "xy"}


def task_from_split(name: str, kind: str, num_classes, arrays) -> Task:
    split = {s: Split(arrays[f"x_{s}"], arrays[f"y_{s}"]) for s in ("train", "val", "test")}
    return Task(name, split["train"], split["val"], split["test"], "NLC", kind, num_classes)


def prepare(directory: Path, task_name: str, variant: str, seed: int, budget: Budget) -> tuple:
    """The seed's shared inputs (written once) and both sides' settings."""
    build, _ = TASKS[task_name]
    ours_overrides, official_overrides, _ = VARIANTS[variant]
    directory.mkdir(parents=True, exist_ok=True)
    task = build(seed)
    config = ours_config(task, budget, seed, ours_overrides)
    if not (directory / "data.npz").is_file():
        np.savez(directory / "data.npz", **split_arrays(task))
        source = load_or_compute(config.body.checkpoint, SOURCE, size=SOURCE_SIZE, seed=0)
        np.savez(directory / "source.npz", features=source.features, labels=source.labels)
        init_config = ours_config(task, budget, seed, {})  # the official embedder's architecture
        np.savez(directory / "init.npz", **initial_weights(init_config, task))
        spec = official_spec(task, budget, seed, official_overrides)
        (directory / "experiment.json").write_text(json.dumps(spec, indent=2))
    with np.load(directory / "data.npz") as arrays:  # the split both sides read
        task = task_from_split(task.name, task.kind, task.num_classes, dict(arrays))
    return task, config


def run_ours(directory: Path, task: Task, config) -> None:
    from orca_jax.pipeline import run

    start = time.perf_counter()
    run(config, directory / "ours", task=task, restart=True)
    (directory / "ours" / "wall_seconds.json").write_text(json.dumps({"seconds": time.perf_counter() - start}))


def run_official(directory: Path, official_src: str, official_python: str) -> None:
    command = [official_python, str(ROOT / "scripts" / "official_orca_side.py"), "--official-src", official_src,
               "--experiment", str(directory)]
    with open(directory / "official.log", "w") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode:
        raise RuntimeError(f"the official side failed (exit {done.returncode}); see {directory / 'official.log'}")


# ------------------------------------------------------------------------------------------------------- report


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def read_side(directory: Path, side: str) -> dict | None:
    """One side's run in one shape: metric, test (best-validated epoch), per-epoch curves, seconds."""
    if side == "ours":
        summary_path = directory / "ours" / "summary.json"
        if not summary_path.is_file():
            return None
        summary = json.loads(summary_path.read_text())
        refine, align = summary.get("refine", {}), summary.get("align", {})
        metric = refine["metric"]
        curve = [r[f"val_{metric}"] for r in _jsonl(directory / "ours" / "refine_metrics.jsonl")]
        wall = json.loads((directory / "ours" / "wall_seconds.json").read_text())["seconds"]
        return {"metric": metric, "test": refine[f"test_{metric}"], "val_curve": curve,
                "align_curve": [r["distance"] for r in _jsonl(directory / "ours" / "align_metrics.jsonl")],
                "align_seconds": align.get("seconds", 0.0), "refine_seconds": refine["seconds"], "seconds": wall}
    path = directory / "official" / "history.json"
    if not path.is_file():
        return None
    h = json.loads(path.read_text())
    return {"test": h["test_best"], "test_last": h["test_last"], "val_curve": [r["val_metric"] for r in h["refine"]],
            "align_curve": [r["distance"] for r in h["align"]], "align_seconds": h.get("align_seconds", 0.0),
            "refine_seconds": h["refine_seconds"], "seconds": h["seconds"]}


def collect(task_dir: Path) -> dict:
    """{variant: {side: [run per seed]}} of every finished run under DIR/<task>/."""
    found: dict = {}
    for variant_dir in sorted(p for p in task_dir.iterdir() if p.is_dir()):
        for seed_dir in sorted(variant_dir.glob("seed*")):
            for side in ("ours", "official"):
                record = read_side(seed_dir, side)
                if record is not None:
                    record["seed"] = int(seed_dir.name[4:])
                    found.setdefault(variant_dir.name, {}).setdefault(side, []).append(record)
    return found


def _interval(values) -> str:
    i = t_interval(values)
    if i.n == 0:
        return "—"
    return f"{i.mean:.4f}" if i.n < 2 else f"{i.mean:.4f} [{i.low:.4f}, {i.high:.4f}]"


def verdict(ours: list[float], official: list[float]) -> str:
    """The same within seed noise when the 95 % Welch interval of the difference of means holds 0."""
    if len(ours) < 2 or len(official) < 2:
        return f"difference {np.mean(ours) - np.mean(official):+.4f} (too few seeds for an interval)"
    a, b = np.asarray(ours), np.asarray(official)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    diff, se = a.mean() - b.mean(), math.sqrt(va + vb)
    if se == 0:
        return f"difference {diff:+.4f} (no spread over seeds)"
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = stats.t.ppf(0.975, dof) * se
    same = abs(diff) <= half
    return (f"{'the same within seed noise' if same else 'different'}: ours − official = {diff:+.4f} "
            f"[{diff - half:+.4f}, {diff + half:+.4f}] (95 % Welch interval)")


def report(task_dir: Path, task_name: str) -> str:
    found = collect(task_dir)
    if not found:
        return f"no finished runs under {task_dir}"
    metric = next((r["metric"] for sides in found.values() for r in sides.get("ours", [])), "metric")
    lines = [f"# orca-jax vs the official ORCA: {task_name}", "",
             f"Test {metric} of the best-validated epoch; mean and 95 % Student-t interval over seeds; wall seconds "
             "per run (align / refine / whole run, the whole including start-up and compilation).", "",
             "| variant | side | seeds | test | per seed | align s | refine s | run s |", "|---|---|---|---|---|---|---|---|"]
    for variant, sides in found.items():
        for side, runs in sides.items():
            per_seed = ", ".join(f"{r['test']:.4f}" for r in runs)
            lines.append(
                f"| {variant} | {side} | {','.join(str(r['seed']) for r in runs)} | {_interval([r['test'] for r in runs])}"
                f" | {per_seed} | {np.mean([r['align_seconds'] for r in runs]):.0f} | "
                f"{np.mean([r['refine_seconds'] for r in runs]):.0f} | {np.mean([r['seconds'] for r in runs]):.0f} |")
    main = found.get("main", {})
    if "ours" in main and "official" in main:
        lines += ["", f"Verdict (main): {verdict([r['test'] for r in main['ours']], [r['test'] for r in main['official']])}."]
    for variant, sides in found.items():
        if variant == "main":
            continue
        for side, runs in sides.items():
            if side in main:
                lines.append(f"{variant} ({side}) against main ({side}): "
                             f"{verdict([r['test'] for r in runs], [r['test'] for r in main[side]]).replace('ours − official', variant + ' − main')}.")
    (task_dir / "curves.png").write_bytes(plot_curves(found, metric, task_name))
    text = "\n".join(lines) + "\n\n![curves](curves.png)\n"
    (task_dir / "report.md").write_text(text)
    return text


def plot_curves(found: dict, metric: str, task_name: str) -> bytes:
    colours = {"ours": "tab:blue", "official": "tab:orange"}
    styles = ["-", "--", ":", "-."]

    def draw(plt):
        fig, (align_ax, val_ax) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
        for v, (variant, sides) in enumerate(found.items()):
            for side, runs in sides.items():
                label = f"{side}" + ("" if variant == "main" else f" ({variant})")
                for ax, key in ((align_ax, "align_curve"), (val_ax, "val_curve")):
                    curves = [r[key] for r in runs if r[key]]
                    if not curves:
                        continue
                    for curve in curves:
                        ax.plot(range(1, len(curve) + 1), curve, color=colours[side], alpha=0.25,
                                linestyle=styles[v % 4], linewidth=0.8)
                    n = min(len(c) for c in curves)
                    ax.plot(range(1, n + 1), np.mean([c[:n] for c in curves], axis=0), color=colours[side],
                            linestyle=styles[v % 4], linewidth=2, label=f"{label}, mean of {len(curves)}")
        align_ax.set(xlabel="align epoch", ylabel="class-weighted OTDD (epoch's sample)", title="align")
        val_ax.set(xlabel="refine epoch", ylabel=f"validation {metric}", title="refine")
        for ax in (align_ax, val_ax):
            ax.legend(fontsize=7)
        fig.suptitle(f"{task_name}: orca-jax and the official ORCA, thin lines one seed each", fontsize=9)
        return fig

    return figure_png(draw)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True, choices=sorted(TASKS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--variant", default="main", choices=sorted(VARIANTS))
    parser.add_argument("--workdir", type=Path, default=ROOT / "workdirs" / "compare")
    parser.add_argument("--official-src", help="src/ of a sjunhongshen/ORCA checkout")
    parser.add_argument("--official-python", default=sys.executable,
                        help="a Python with the official code's dependencies (default: this one)")
    parser.add_argument("--sides", default="ours,official")
    parser.add_argument("--align-epochs", type=int)
    parser.add_argument("--refine-epochs", type=int)
    parser.add_argument("--rerun", action="store_true", help="run sides whose results are there again")
    parser.add_argument("--report", action="store_true", help="only write the report of finished runs")
    args = parser.parse_args(argv)
    task_dir = args.workdir / args.task
    if not args.report:
        try:
            seeds = [int(s) for s in args.seeds.split(",")]
        except ValueError:
            parser.error(f"--seeds={args.seeds!r}: give integers separated by commas, e.g. 0,1,2")
        sides = [s for s in args.sides.split(",") if s in VARIANTS[args.variant][2]]
        if "official" in sides and not args.official_src:
            parser.error("--official-src is needed to run the official side (or --sides=ours)")
        budget = TASKS[args.task][1]
        suffix = ""
        if args.align_epochs is not None:
            budget, suffix = dataclasses.replace(budget, align_epochs=args.align_epochs), f"{suffix}-align{args.align_epochs}"
        if args.refine_epochs is not None:
            budget = dataclasses.replace(budget, refine_epochs=args.refine_epochs, decay_epochs=max(
                budget.decay_epochs, args.refine_epochs))
            suffix += f"-refine{args.refine_epochs}"
        for seed in seeds:
            directory = task_dir / f"{args.variant}{suffix}" / f"seed{seed}"
            task, config = prepare(directory, args.task, args.variant, seed, budget)
            if "ours" in sides and (args.rerun or read_side(directory, "ours") is None):
                print(f"[{args.task} {args.variant}{suffix} seed {seed}] orca-jax ...", flush=True)
                run_ours(directory, task, config)
            if "official" in sides and (args.rerun or read_side(directory, "official") is None):
                print(f"[{args.task} {args.variant}{suffix} seed {seed}] official ORCA ...", flush=True)
                run_official(directory, os.path.abspath(args.official_src), args.official_python)
            for side in sides:
                record = read_side(directory, side)
                print(f"  {side}: test {record['test']:.4f}, {record['seconds']:.0f} s", flush=True)
    print(report(task_dir, args.task))


if __name__ == "__main__":
    main()
