"""The paper's body selection: rank candidate bodies by the final distance of a short alignment, optionally
checked against full runs of the best ones over seeds."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from etils import epath
from ml_collections import ConfigDict

from orca_jax.data.source_features import load_or_compute
from orca_jax.pipeline import run, strict_json
from orca_jax.sweep.report import aggregate, fmt_number, md_escape, metric_phrase
from orca_jax.sweep.runner import run_sweep
from orca_jax.sweep.variants import Variant, apply_overrides
from orca_jax.train.metrics import METRICS
from orca_jax.workdir import write_file


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
        cells = [str(e["rank"] or "–"), f"{e['name']} (`{e['body']}`)", fmt_number(e["distance_before"]),
                 f"failed: {md_escape(e['error'])}" if e["error"] else fmt_number(e["distance_after"]),
                 fmt_number(scale), fmt_number(ratio)]
        if swept:
            s = e.get("sweep")
            if s is None:
                cells += ["not run", "–"]
            else:
                low, high = s["test_ci_low"], s["test_ci_high"]
                interval = f" [{fmt_number(low)}, {fmt_number(high)}]" if math.isfinite(low) else ""
                cells += [f"{fmt_number(s['test_mean'])}{interval} (n={s['test_n']})",
                          str(s.get("rank_by_test", "–"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
