"""Runs variants x seeds one after another, each in its own workdir, skipping finished runs and recording
failures (see the package docstring)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence

from etils import epath
from ml_collections import ConfigDict

from orca_jax.baselines import run_baselines
from orca_jax.parallel import is_main_process
from orca_jax.pipeline import DiskFullError, run
from orca_jax.sweep.records import RunRecord
from orca_jax.sweep.report import fmt_number, write_reports
from orca_jax.sweep.variants import Variant, apply_overrides, check_variants, run_config, run_dir
from orca_jax.workdir import CONFIG_FILE, RunLock, write_file

RUN_RECORD = "sweep_run.json"  # in each run's workdir: wall seconds summed over the attempts this harness made
BASELINES_DIR = "baselines"


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
    test = f"test {record.metric} {fmt_number(record.test)}, " if record.metric else ""
    return head + f"{how}: {test}final distance {fmt_number(record.distance)}"


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
