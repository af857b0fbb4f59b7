"""Research questions answered with seeds and intervals: named sets of config overrides (variants) run over seeds,
one workdir each, reported as means with 95 % Student-t intervals and the paper's two plots.

Why a harness: the effects ORCA reports (alignment helps, OTDD beats MMD, a lower final distance goes with a better
test metric, Fig. 4) are differences of a few points, and on small tasks one seed moves the test metric as much. One
run per variant cannot separate them; an interval over seeds says when the seeds cannot either.

- `SWEEPS`: the built-in sweeps, `ablations` (the paper's) and `objectives`. A variant is a dict of dotted config
  overrides. A variant with `align_from` differs from that variant only in refine settings, so it refines from the
  embedder that variant aligned for the same seed (`align.epochs=0`, `refine.init_embedder`): aligned once, its
  differences are the refine settings alone, and it reports that run's final distance.
- `run_sweep`: variants x seeds one after another in this process, each in `DIR/<variant>/seed<k>` through
  `orca_jax.pipeline.run` (which resumes an interrupted workdir). A run whose workdir holds a summary of the same
  config is not run again; a failing run is recorded and the sweep goes on, except on a full disk or a preemption,
  which stop it (every later run would fail, or should resume later). With `baselines`, the simple baselines of
  `orca_jax.baselines` are then fitted per seed on the same split (`DIR/baselines/seed<k>`, reused when the task
  and data are unchanged) and reported as rows `baseline: <name>` of the same table. Then `write_reports`. One sweep at a time
  holds `DIR` (the lock of `orca_jax.workdir.RunLock`); a second is refused at once.
- `select_bodies`: the paper's body selection. A short alignment per candidate body ranks them by final distance to
  each body's own source features; optionally full runs of the top bodies x seeds check the ranking against the
  test metric in one table.

A seed draws the model's initialisation, the data order and the validation split; the test split stays fixed
(`orca_jax.data.tasks`), so variants of one seed are compared on the same data.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from etils import epath
from ml_collections import ConfigDict
from scipy import stats

from orca_jax.baselines import run_baselines
from orca_jax.data.source_features import load_or_compute
from orca_jax.parallel import is_main_process
from orca_jax.pipeline import DiskFullError, run, strict_json
from orca_jax.plotting import figure_png
from orca_jax.train.metrics import METRICS
from orca_jax.workdir import CONFIG_FILE, RunLock, write_file

CONFIDENCE = 0.95
RUN_RECORD = "sweep_run.json"  # in each run's workdir: wall seconds summed over the attempts this harness made


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    overrides: Mapping[str, Any]
    align_from: str | None = None  # a variant (earlier in the sweep) whose aligned embedder, same seed, this refines


# Variants set what their names say, so the names hold whatever the base config chose.
_OTDD_ANNEALED = Variant("otdd-annealed", {"align.objective": "otdd-exact", "align.solver": "annealed"})
_MMD = Variant("mmd", {"align.objective": "mmd"})
_L2 = Variant("l2", {"align.objective": "l2"})
_NO_ALIGN = Variant("no-align", {"align.epochs": 0, "embedder.init": "fresh"})
SWEEPS: dict[str, tuple[Variant, ...]] = {
    "ablations": (
        _OTDD_ANNEALED,  # official; the base of the refine-only variants
        _NO_ALIGN,  # the official no-alignment baseline: embedder initialised anew
        Variant("no-align-body-init", {"align.epochs": 0, "embedder.init": "body"}),  # body's init, no alignment
        Variant("otdd-converged", {"align.objective": "otdd-exact", "align.solver": "converged"}),
        Variant("otdd-gaussian", {"align.objective": "otdd-gaussian"}),
        _MMD,
        _L2,
        Variant("layernorm", {"refine.finetune_method": "layernorm"}, align_from="otdd-annealed"),
        Variant("frozen-body", {"refine.finetune_method": "frozen-body"}, align_from="otdd-annealed"),
        Variant("random-body", {"body.init": "random"}),  # the replication's baseline: no pretrained knowledge
    ),
    "objectives": (_OTDD_ANNEALED, _MMD, _L2, _NO_ALIGN),
}


def select_variants(variants: Sequence[Variant], names: Sequence[str] | None) -> tuple[Variant, ...]:
    """The variants named (all when `names` is empty), in sweep order, with the variants they align from added: a
    refine-only variant cannot run without its base."""
    if not names:
        return tuple(variants)
    by_name = {v.name: v for v in variants}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"Unknown variant(s) {', '.join(unknown)}; this sweep has {', '.join(by_name)}.")
    wanted = set(names) | {by_name[n].align_from for n in names if by_name[n].align_from}
    return tuple(v for v in variants if v.name in wanted)


def check_variants(variants: Sequence[Variant]) -> None:
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"Variant names must be unique (each names a directory): {names}.")
    for i, v in enumerate(variants):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", v.name):
            raise ValueError(f"Variant name {v.name!r} must be a plain directory name ([A-Za-z0-9._-]).")
        if v.align_from and v.align_from not in names[:i]:
            raise ValueError(f"Variant {v.name} aligns from {v.align_from!r}, which must come before it in the sweep.")


def apply_overrides(config: ConfigDict, overrides: Mapping[str, Any]) -> ConfigDict:
    """A copy of `config` with dotted fields set; a field the config lacks is an error even when it is unlocked, so
    a sweep never runs a variant whose override silently did nothing."""
    config = copy.deepcopy(config)
    for field, value in overrides.items():
        *parents, leaf = field.split(".")
        node = config
        for part in parents:
            node = node.get(part) if isinstance(node, ConfigDict) else None
        if not isinstance(node, ConfigDict) or leaf not in node:
            raise ValueError(f"override {field}={value!r}: the config has no field {field}.")
        try:
            node[leaf] = value
        except TypeError as error:  # ml_collections' type safety: a str into a float field
            raise ValueError(f"override {field}={value!r}: {error}") from None
    return config


def run_dir(workdir: epath.PathLike, variant: str, seed: int) -> epath.Path:
    return epath.Path(workdir) / variant / f"seed{seed}"


def refine_from(run_workdir: epath.PathLike) -> dict:
    """The overrides that make a run refine from the embedder another run aligned (in `run_workdir`) instead of
    aligning its own: the one way the sweeps and the searches (`orca_jax.tune`) reuse an alignment."""
    return {"align.epochs": 0, "refine.init_embedder": str(epath.Path(run_workdir) / "aligned_embedder")}


def run_config(config: ConfigDict, variant: Variant, seed: int, workdir: epath.PathLike) -> ConfigDict:
    overrides = {**variant.overrides, "seed": seed}
    if variant.align_from:
        overrides |= refine_from(run_dir(workdir, variant.align_from, seed))
    return apply_overrides(config, overrides)


@dataclasses.dataclass(frozen=True)
class RunRecord:
    variant: str
    seed: int
    status: str  # ran | skipped (finished earlier) | failed
    align_from: str | None = None
    summary: dict | None = None
    error: str | None = None
    wall_seconds: float | None = None
    distance: float | None = None  # align distance_after: this run's, or its align_from run's
    baseline: bool = False  # a baseline of orca_jax.baselines on the seed's split, not a run

    @property
    def _scores(self) -> dict:
        """A run's refine summary, or a baseline's scores under the same keys."""
        return (self.summary or {}).get("baseline" if self.baseline else "refine") or {}

    @property
    def metric(self) -> str | None:
        return self._scores.get("metric")

    @property
    def test(self) -> float | None:
        return self._scores.get(f"test_{self.metric}")

    @property
    def best_val(self) -> float | None:
        return self._scores.get(f"best_val_{self.metric}")


def finished_summary(directory: epath.Path, config: ConfigDict) -> dict | None:
    """The summary of a finished run of exactly this config; None otherwise (then `pipeline.run` resumes the run,
    or refuses a workdir holding another experiment, naming the fields)."""
    summary, saved = directory / "summary.json", directory / CONFIG_FILE
    if not (summary.exists() and saved.exists()):
        return None
    if json.loads(saved.read_text()) != json.loads(config.to_json_best_effort()):
        return None
    return json.loads(summary.read_text())


def _wall_seconds(directory: epath.Path, add: float | None = None) -> float | None:
    """Wall seconds this harness spent on the run, summed over attempts (`add` one); None when it never ran it."""
    path = directory / RUN_RECORD
    record = json.loads(path.read_text()) if path.exists() else {"wall_seconds": 0.0, "attempts": 0}
    if add is not None:
        record = {"wall_seconds": record["wall_seconds"] + add, "attempts": record["attempts"] + 1}
        directory.mkdir(parents=True, exist_ok=True)  # a run can fail before creating its workdir (a config error)
        write_file(path, json.dumps(record))
    return record["wall_seconds"] if record["attempts"] else None


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _one_run(config, variant: Variant, seed: int, workdir, records: dict, run_fn: Callable) -> RunRecord:
    directory = run_dir(workdir, variant.name, seed)
    fields = {"variant": variant.name, "seed": seed, "align_from": variant.align_from}
    base = records.get((variant.align_from, seed))
    if base is not None and base.status == "failed":
        return RunRecord(**fields, status="failed", error=f"needs the aligned embedder of {variant.align_from} "
                                                          f"seed {seed}, whose run failed")
    distance = base.distance if base is not None else None
    try:
        config = run_config(config, variant, seed, workdir)
        summary = finished_summary(directory, config)
        if summary is not None:
            status, wall = "skipped", _wall_seconds(directory)
        else:
            start = time.perf_counter()
            try:
                summary = run_fn(config, directory)
            finally:
                wall = _wall_seconds(directory, add=time.perf_counter() - start)
            status = "ran"
    except DiskFullError:
        raise
    except Exception as error:  # recorded; the next run may well work (Preempted is a SystemExit and stops the sweep)
        return RunRecord(**fields, status="failed", error=_error_text(error))
    if base is None:
        distance = (summary.get("align") or {}).get("distance_after")
    return RunRecord(**fields, status=status, summary=summary, wall_seconds=wall, distance=distance)


def _progress(i: int, total: int, record: RunRecord) -> str:
    head = f"[{i}/{total}] {record.variant} seed {record.seed}: "
    if record.status == "failed":
        return head + f"FAILED: {record.error}"
    if record.status == "skipped":
        how = "finished earlier, skipped"
    else:
        how = f"done in {record.wall_seconds:.0f} s"
    test = f"test {record.metric} {_fmt(record.test)}, " if record.metric else ""
    return head + f"{how}: {test}final distance {_fmt(record.distance)}"


def run_sweep(
    config: ConfigDict,
    variants: Sequence[Variant],
    seeds: Sequence[int],
    workdir: epath.PathLike,
    *,
    run_fn: Callable[[ConfigDict, epath.Path], dict] = run,
    baselines: bool = False,
) -> list[RunRecord]:
    """Runs `variants` x `seeds` of `config` (see the module docstring), writes the reports into `workdir` and
    returns one record per run (and per baseline and seed, with `baselines`). `run_fn(config, workdir) -> summary`
    is `pipeline.run`; tests pass a stub."""
    check_variants(variants)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"Give distinct seeds, e.g. 0,1,2; got {list(seeds)}.")
    workdir = epath.Path(workdir).absolute()  # refine.init_embedder paths, and so the saved configs, are absolute
    workdir.mkdir(parents=True, exist_ok=True)
    records: dict[tuple[str, int], RunRecord] = {}
    total = len(variants) * len(seeds)
    # Locked as one run's workdir is: a second sweep on the directory would find each run busy, record it as
    # failed and overwrite the first sweep's reports.
    with RunLock(workdir):
        for variant in variants:
            for seed in seeds:
                record = _one_run(config, variant, seed, workdir, records, run_fn)
                records[(variant.name, seed)] = record
                if is_main_process():
                    print(_progress(len(records), total, record), flush=True)
        records = list(records.values())
        if baselines:
            records += [r for seed in seeds for r in baseline_records(config, seed, workdir)]
        write_reports(records, workdir)
    return records


BASELINES_DIR = "baselines"


def baseline_records(config: ConfigDict, seed: int, workdir: epath.PathLike) -> list[RunRecord]:
    """One record per baseline fitted on the split of `seed` (one failed record for all when fitting fails: the
    sweep's runs are what it is for)."""
    directory = epath.Path(workdir) / BASELINES_DIR / f"seed{seed}"
    start = time.perf_counter()
    try:
        report, reused = run_baselines(apply_overrides(config, {"seed": seed}), directory, reuse=True)
    except Exception as error:  # recorded like a failed run
        record = RunRecord("baselines", seed, "failed", error=_error_text(error), baseline=True)
        if is_main_process():
            print(f"baselines seed {seed}: FAILED: {record.error}", flush=True)
        return [record]
    if is_main_process():
        how = "fitted earlier, reused" if reused else f"fitted in {time.perf_counter() - start:.0f} s"
        print(f"baselines seed {seed}: {how}", flush=True)
    return [RunRecord(f"baseline: {r.name}", seed, "skipped" if reused else "ran", wall_seconds=r.seconds,
                      summary={"baseline": {"name": r.name, "metric": r.metric, f"best_val_{r.metric}": r.val,
                                            f"test_{r.metric}": r.test, "params": r.params}}, baseline=True)
            for r in report.results]


# ----------------------------------------------------------------------------------------------- aggregation


@dataclasses.dataclass(frozen=True)
class Interval:
    mean: float
    low: float  # NaN with fewer than two values: one run has no spread to estimate
    high: float
    n: int


def t_interval(values: Sequence[float | None], confidence: float = CONFIDENCE) -> Interval:
    """Mean and two-sided Student-t interval (n - 1 degrees of freedom, mean +- t * s / sqrt(n)) over the finite
    values; seeds are few, so the normal quantile would claim too much."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], np.float64)
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n == 1:
        return Interval(mean, math.nan, math.nan, 1)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return Interval(mean, mean - half, mean + half, n)


QUANTITIES = ("test", "best_val", "distance", "wall_seconds")  # the RunRecord attributes the reports aggregate


def quantity_labels(metric: str) -> dict:
    return {"test": f"test {metric}", "best_val": f"best val {metric}", "distance": "final distance",
            "wall_seconds": "wall time (s)"}


def aggregate(records: Sequence[RunRecord], confidence: float = CONFIDENCE) -> list[dict]:
    """One row per variant (in run order): runs finished and failed, then mean, interval and n of each quantity."""
    rows = []
    for name in dict.fromkeys(r.variant for r in records):
        runs = [r for r in records if r.variant == name]
        ok = [r for r in runs if r.status != "failed"]
        row = {"variant": name, "baseline": runs[0].baseline, "align_from": runs[0].align_from or "",
               "runs": len(ok), "failed": len(runs) - len(ok), "metric": metric_name([r.metric for r in ok])}
        for attribute in QUANTITIES:
            interval = t_interval([getattr(r, attribute) for r in ok], confidence)
            row |= {f"{attribute}_mean": interval.mean, f"{attribute}_ci_low": interval.low,
                    f"{attribute}_ci_high": interval.high, f"{attribute}_n": interval.n}
        rows.append(row)
    return rows


def _numbers(tree: Mapping, prefix: str = "") -> dict:
    """Every number of a summary (None stands for a non-finite one), keyed by its dotted path."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out |= _numbers(value, f"{prefix}{key}.")
        elif value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
            out[f"{prefix}{key}"] = value
    return out


def run_rows(records: Sequence[RunRecord]) -> list[dict]:
    """One row per run: the harness's columns, then every number of its summary."""
    rows = []
    for r in records:
        row = {"variant": r.variant, "baseline": r.baseline, "seed": r.seed, "status": r.status, "error": r.error or "",
               "align_from": r.align_from or "", "metric": r.metric or "", "test": r.test, "best_val": r.best_val,
               "distance": r.distance, "wall_seconds": r.wall_seconds}
        rows.append(row | {f"summary.{k}": v for k, v in _numbers(r.summary or {}).items()})
    return rows


def _csv(rows: Sequence[dict]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, restval="", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None or (isinstance(v, float) and math.isnan(v)) else v for k, v in row.items()})
    return buffer.getvalue()


def _fmt(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.4g}"


def _cell(row: dict, attribute: str) -> str:
    mean, low, high = (row[f"{attribute}_{s}"] for s in ("mean", "ci_low", "ci_high"))
    if not math.isfinite(mean):
        return "–"
    interval = f" [{_fmt(low)}, {_fmt(high)}]" if math.isfinite(low) else ""
    n = f" (n={row[f'{attribute}_n']})" if row[f"{attribute}_n"] != row["runs"] else ""
    return f"{_fmt(mean)}{interval}{n}"


def _md(text: str) -> str:
    return text.replace("\n", " ").replace("|", "\\|")


def metric_name(metrics: Sequence[str]) -> str:
    return "/".join(m for m in dict.fromkeys(metrics) if m)


def metric_phrase(metrics: Sequence[str]) -> str:
    """'accuracy (higher is better)': the metric's name and direction, for headings."""
    name = metric_name(metrics) or "metric"
    known = METRICS.get(name)
    return name + ("" if known is None else f" ({'higher' if known.higher_is_better else 'lower'} is better)")


def results_markdown(records: Sequence[RunRecord], rows: Sequence[dict], confidence: float = CONFIDENCE) -> str:
    seeds = sorted({r.seed for r in records})
    metrics = [row["metric"] for row in rows]
    metric = metric_name(metrics) or "metric"
    runs, variants = [r for r in records if not r.baseline], [row for row in rows if not row["baseline"]]
    baselines = ("" if len(variants) == len(rows) else
                 " Rows `baseline: <name>` are simple models fitted on each seed's split (orca_jax.baselines, as "
                 "scripts/baselines.py fits them), with no align or refine stage: best val is the validation metric "
                 "of the hyperparameters chosen on it, wall time the seconds of fitting and scoring.")
    lines = [
        "# Sweep results",
        "",
        (f"{len(runs)} runs: {len(variants)} variants x seeds {', '.join(map(str, seeds))}. Each cell is the mean over "
         f"the seeds whose run finished, then the {confidence:.0%} interval [low, high] from Student's t with n - 1 "
         "degrees of freedom (mean ± t·s/√n; none for a single run); (n=k) where fewer runs report the number. "
         f"Metric: {metric_phrase(metrics)}. Final distance: the align stage's distance_after in the variant's own "
         "objective (OTDD, MMD or l2 values share no scale: compare distances only between variants of one objective), "
         "or, without an align stage, the distance where the refine stage starts; variants refined from another's "
         "aligned embedder report that run's. Wall time: seconds in pipeline.run over all attempts, "
         "loading and compiling included (a refine-only variant's excludes the alignment it starts from)."
         + baselines),
        "",
    ]
    names = quantity_labels(metric)
    lines += ["| variant | runs | failed | " + " | ".join(names[a] for a in QUANTITIES) + " |", "|---" * 7 + "|"]
    for row in rows:
        name = row["variant"] + (f" (from {row['align_from']})" if row["align_from"] else "")
        lines.append(f"| {name} | {row['runs']} | {row['failed']} | "
                     + " | ".join(_cell(row, a) for a in QUANTITIES) + " |")
    lines += ["", "![final distance vs test metric, one point per run](distance_vs_metric.png)", "",
              "![means per variant with intervals](results_bars.png)", ""]
    failed = [r for r in records if r.status == "failed"]
    if failed:
        lines += ["## Failed runs", "", "| variant | seed | error |", "|---|---|---|"]
        lines += [f"| {r.variant} | {r.seed} | {_md(r.error or '')} |" for r in failed]
        lines.append("")
    return "\n".join(lines)


def _colours(names: Sequence[str]) -> dict:
    import matplotlib

    cycle = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {name: cycle(i % cycle.N) for i, name in enumerate(names)}


def _objective(record: RunRecord) -> str:
    return str(((record.summary or {}).get("align") or {}).get("objective", "unknown"))


def plot_distance_vs_metric(records: Sequence[RunRecord], rows: Sequence[dict]) -> bytes:
    """The paper's Fig. 4 shape: one point per run, final distance against test metric, coloured by variant; one
    panel per alignment objective, since an MMD and an OTDD value share no scale."""
    colours = _colours([row["variant"] for row in rows if not row["baseline"]])
    finished = [r for r in records if r.status != "failed" and not r.baseline]
    objectives = sorted({_objective(r) for r in finished}) or ["unknown"]

    def draw(plt):
        fig, axes = plt.subplots(1, len(objectives), figsize=(3 + 3 * len(objectives), 4), dpi=120, sharey=True,
                                 squeeze=False)
        for ax, objective in zip(axes[0], objectives):
            for name, colour in colours.items():
                points = [(r.distance, r.test) for r in finished if r.variant == name and _objective(r) == objective]
                if not points:
                    continue
                shown = [(d, t) for d, t in points if d is not None and t is not None]
                missing = len(points) - len(shown)
                label = name + (f" ({missing} without a distance)" if missing else "")
                ax.scatter([d for d, _ in shown], [t for _, t in shown], color=colour, label=label, s=30)
            ax.set_xlabel(f"final {objective} distance")
            ax.legend(fontsize=7)
        axes[0][0].set_ylabel(f"test {metric_phrase([row['metric'] for row in rows])}")
        fig.suptitle("one point per run; one panel per alignment objective", fontsize=9)
        return fig

    return figure_png(draw)


def plot_bars(records: Sequence[RunRecord], rows: Sequence[dict], confidence: float = CONFIDENCE) -> bytes:
    """Per quantity, a bar per variant at its mean, the interval as error bar and each run as a dot."""
    colours = _colours([row["variant"] for row in rows])

    def draw(plt):
        fig, axes = plt.subplots(1, len(QUANTITIES), figsize=(3.2 * len(QUANTITIES), 3.6), dpi=120)
        labels = quantity_labels(metric_phrase([row["metric"] for row in rows]))
        for ax, attribute in zip(axes, QUANTITIES):
            for i, row in enumerate(rows):
                mean, low, high = (row[f"{attribute}_{s}"] for s in ("mean", "ci_low", "ci_high"))
                if not math.isfinite(mean):
                    continue
                error = [[mean - low], [high - mean]] if math.isfinite(low) else None
                ax.bar(i, mean, color=colours[row["variant"]], alpha=0.6, yerr=error, capsize=3)
                values = [getattr(r, attribute) for r in records
                          if r.variant == row["variant"] and r.status != "failed"]
                values = [v for v in values if v is not None and math.isfinite(v)]
                ax.plot([i] * len(values), values, "k.", markersize=4)
            ax.set_xticks(range(len(rows)), [row["variant"] for row in rows], rotation=45, ha="right", fontsize=7)
            ax.set_title(labels[attribute], fontsize=9)
        fig.suptitle(f"mean, {confidence:.0%} Student-t interval over seeds, each run a dot", fontsize=9)
        return fig

    return figure_png(draw)


def write_reports(records: Sequence[RunRecord], workdir: epath.PathLike) -> list[dict]:
    """results.md, results.csv (per variant), runs.csv (per run) and the two PNGs; returns the per-variant rows."""
    workdir = epath.Path(workdir)
    rows = aggregate(records)
    write_file(workdir / "results.csv", _csv(rows))
    write_file(workdir / "runs.csv", _csv(run_rows(records)))
    write_file(workdir / "results.md", results_markdown(records, rows))
    if is_main_process():
        write_file(workdir / "distance_vs_metric.png", plot_distance_vs_metric(records, rows))
        write_file(workdir / "results_bars.png", plot_bars(records, rows))
    return rows


# ---------------------------------------------------------------------------------------------- body selection


def body_variants(bodies: Sequence[str]) -> tuple[Variant, ...]:
    """One variant per candidate body (`body.checkpoint`), named by the hub id or directory name, made unique."""
    variants, used = [], set()
    for body in bodies:
        base = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(str(body).rstrip("/")).name or str(body)).strip("-.") or "body"
        name, k = base, 2
        while name in used:
            name, k = f"{base}-{k}", k + 1
        used.add(name)
        variants.append(Variant(name, {"body.checkpoint": str(body)}))
    return tuple(variants)


def source_scale(config: ConfigDict) -> float:
    """Mean squared pairwise distance of the body's source features (read from their cache, which the align stage
    filled): the OTDD's scale, which differs between bodies."""
    features = load_or_compute(
        config.body.checkpoint, config.source.name, size=config.source.size, seed=config.source.seed,
        cache_dir=config.source.cache_dir or None, data_dir=config.source.data_dir or None, progress=False,
    )
    return float(features.metadata["mean_squared_pairwise_distance"])


def select_bodies(
    config: ConfigDict,
    bodies: Sequence[str],
    workdir: epath.PathLike,
    *,
    align_epochs: int = 10,
    sweep_seeds: Sequence[int] = (),
    top_k: int = 0,
    run_fn: Callable[[ConfigDict, epath.Path], dict] = run,
) -> list[dict]:
    """Ranks `bodies` by the final distance of a short alignment (`align_epochs`, no refine, seed `config.seed`) in
    `workdir/selection/`, lowest first, and writes `ranking.json` and `ranking.md`. With `sweep_seeds`, then runs
    `config` in full for the `top_k` best bodies (0: all) x those seeds in `workdir/sweep/` and adds their test
    metric to the ranking, so the ranking is checked against it in one table."""
    workdir = epath.Path(workdir).absolute()
    variants = body_variants(bodies)
    short = apply_overrides(config, {"align.epochs": align_epochs, "refine.epochs": 0})
    records = run_sweep(short, variants, [config.seed], workdir / "selection", run_fn=run_fn)
    ranking = []
    for variant, record in zip(variants, records):
        entry = {"body": variant.overrides["body.checkpoint"], "name": variant.name, "error": record.error,
                 "distance_before": None, "distance_after": record.distance, "source_scale": None}
        if record.status != "failed":
            entry["distance_before"] = (record.summary.get("align") or {}).get("distance_before")
            entry["source_scale"] = source_scale(apply_overrides(short, variant.overrides))
        ranking.append(entry)
    ranking.sort(key=lambda e: (e["distance_after"] is None, e["distance_after"] or 0.0))
    for rank, entry in enumerate(ranking, 1):
        entry["rank"] = rank if entry["distance_after"] is not None else None
    if sweep_seeds:
        chosen = [e for e in ranking if e["rank"] is not None][: top_k or None]
        by_name = {v.name: v for v in variants}
        records = run_sweep(config, [by_name[e["name"]] for e in chosen], sweep_seeds, workdir / "sweep",
                            run_fn=run_fn)
        add_sweep_results(ranking, aggregate(records))
    write_file(workdir / "ranking.json", json.dumps(strict_json(ranking), indent=2, allow_nan=False))
    write_file(workdir / "ranking.md", ranking_markdown(ranking, config.align.objective, align_epochs))
    return ranking


def add_sweep_results(ranking: list[dict], rows: Sequence[dict]) -> None:
    """Each ranked body's full-run test metric (mean and interval) and its rank by that metric (best first)."""
    by_name = {row["variant"]: row for row in rows}
    for entry in ranking:
        row = by_name.get(entry["name"])
        if row is not None:
            entry["sweep"] = {k: row[k] for k in ("runs", "failed", "metric", "test_mean", "test_ci_low",
                                                  "test_ci_high", "test_n", "distance_mean")}
    swept = [e for e in ranking if "sweep" in e and math.isfinite(e["sweep"]["test_mean"])]
    for entry in swept:
        known = METRICS.get(entry["sweep"]["metric"])
        sign = -1.0 if known is None or known.higher_is_better else 1.0
        entry["sweep"]["rank_by_test"] = 1 + sum(sign * o["sweep"]["test_mean"] < sign * entry["sweep"]["test_mean"]
                                                 for o in swept)


def ranking_markdown(ranking: Sequence[dict], objective: str, align_epochs: int) -> str:
    swept = any("sweep" in e for e in ranking)
    text = (f"Ranked by the final {objective} distance after {align_epochs} align epochs, lowest first, as the paper "
            "ranks bodies. The distance depends on each body's feature scale (source scale: the mean squared pairwise "
            "distance of its source features), which differs between bodies; the paper compares raw distances "
            "anyway, so the scale and distance / scale are shown beside them.")
    columns = ["rank", "body", "distance before", "distance after", "source scale", "distance / scale"]
    if swept:
        metric = metric_phrase([e["sweep"]["metric"] for e in ranking if "sweep" in e])
        text += (" The last columns are full runs of the ranked bodies over seeds (sweep/results.md): mean and 95 % "
                 "Student-t interval of the test metric, and the rank it gives.")
        columns += [f"test {metric}", "rank by test"]
    lines = ["# Body selection", "", text, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for e in ranking:
        scale = e["source_scale"]
        ratio = e["distance_after"] / scale if e["distance_after"] is not None and scale else None
        cells = [str(e["rank"] or "–"), f"{e['name']} (`{e['body']}`)", _fmt(e["distance_before"]),
                 f"failed: {_md(e['error'])}" if e["error"] else _fmt(e["distance_after"]), _fmt(scale), _fmt(ratio)]
        if swept:
            s = e.get("sweep")
            if s is None:
                cells += ["not run", "–"]
            else:
                low, high = s["test_ci_low"], s["test_ci_high"]
                interval = f" [{_fmt(low)}, {_fmt(high)}]" if math.isfinite(low) else ""
                cells += [f"{_fmt(s['test_mean'])}{interval} (n={s['test_n']})", str(s.get("rank_by_test", "–"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
