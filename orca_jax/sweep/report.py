"""A sweep's records as numbers a person can trust: per-variant means with Student-t intervals, per-run rows,
results.md, two CSVs and the paper's two plots."""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
from etils import epath
from scipy import stats

from orca_jax.parallel import is_main_process
from orca_jax.plotting import figure_png
from orca_jax.sweep.records import RunRecord
from orca_jax.train.metrics import METRICS
from orca_jax.workdir import write_file

CONFIDENCE = 0.95


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


def csv_text(rows: Sequence[dict]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, restval="", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None or (isinstance(v, float) and math.isnan(v)) else v for k, v in row.items()})
    return buffer.getvalue()


def fmt_number(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.4g}"


def interval_cell(row: dict, attribute: str) -> str:
    mean, low, high = (row[f"{attribute}_{s}"] for s in ("mean", "ci_low", "ci_high"))
    if not math.isfinite(mean):
        return "–"
    interval = f" [{fmt_number(low)}, {fmt_number(high)}]" if math.isfinite(low) else ""
    n = f" (n={row[f'{attribute}_n']})" if row[f"{attribute}_n"] != row["runs"] else ""
    return f"{fmt_number(mean)}{interval}{n}"


def md_escape(text: str) -> str:
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
                     + " | ".join(interval_cell(row, a) for a in QUANTITIES) + " |")
    lines += ["", "![final distance vs test metric, one point per run](distance_vs_metric.png)", "",
              "![means per variant with intervals](results_bars.png)", ""]
    failed = [r for r in records if r.status == "failed"]
    if failed:
        lines += ["## Failed runs", "", "| variant | seed | error |", "|---|---|---|"]
        lines += [f"| {r.variant} | {r.seed} | {md_escape(r.error or '')} |" for r in failed]
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
    write_file(workdir / "results.csv", csv_text(rows))
    write_file(workdir / "runs.csv", csv_text(run_rows(records)))
    write_file(workdir / "results.md", results_markdown(records, rows))
    if is_main_process():
        write_file(workdir / "distance_vs_metric.png", plot_distance_vs_metric(records, rows))
        write_file(workdir / "results_bars.png", plot_bars(records, rows))
    return rows
