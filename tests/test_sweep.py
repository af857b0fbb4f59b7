"""The sweep harness and body selection: intervals against scipy, reports from fake summaries, resumption and failure
handling with a stub run function, then one real sweep and one real body selection on tiny bodies."""

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from orca_jax.config import base_config, load_config_file
from orca_jax.config_checks import check_config
from orca_jax.sweep.bodies import add_sweep_results, select_bodies
from orca_jax.sweep.records import RunRecord
from orca_jax.sweep.report import t_interval, write_reports
from orca_jax.sweep.runner import run_sweep
from orca_jax.sweep.variants import SWEEPS, Variant, apply_overrides, check_variants, run_config, select_variants
from orca_jax.workdir import RunLock, WorkdirError
from tests.text_checkpoints import save_tiny_text_model

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("values", [[0.61, 0.58, 0.66], [1.0, 2.0], [3.2, 2.9, 3.5, 3.1, 2.7, 3.3]])
def test_t_interval_equals_scipy(values):
    x = np.asarray(values)
    low, high = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    got = t_interval(values + [None, math.nan])  # missing and non-finite values are not seeds that finished
    assert (got.mean, got.low, got.high, got.n) == pytest.approx((x.mean(), low, high, len(x)), rel=1e-12)


def test_t_interval_of_one_run_has_no_interval():
    got = t_interval([0.5])
    assert got.mean == 0.5 and got.n == 1 and math.isnan(got.low) and math.isnan(got.high)
    assert t_interval([]).n == 0


def _summary(test, val, distance=None, seconds=1.0):
    summary = {"task": "t", "kind": "classification", "body": "b",
               "refine": {"metric": "accuracy", "selected": "best", "best_epoch": 2, "best_val_accuracy": val,
                          "test_accuracy": test, "seconds": seconds}}
    if distance is not None:
        summary["align"] = {"objective": "otdd-exact", "distance_before": 2 * distance, "distance_after": distance,
                            "seconds": seconds}
    return summary


def test_reports_from_fake_summaries(tmp_path):
    base = [(0, 0.60, 0.70, 14.0), (1, 0.64, 0.72, 15.0), (2, 0.59, 0.69, 13.5)]
    records = [RunRecord("otdd-annealed", s, "ran", summary=_summary(t, v, d), wall_seconds=10.0 + s, distance=d)
               for s, t, v, d in base]
    records += [RunRecord("layernorm", 0, "skipped", "otdd-annealed", _summary(0.55, 0.6), None, 4.0, 14.0),
                RunRecord("layernorm", 1, "ran", "otdd-annealed", _summary(0.57, 0.62), None, 5.0, 15.0),
                RunRecord("layernorm", 2, "failed", "otdd-annealed", error="ValueError: bad | thing\nsecond line")]
    write_reports(records, tmp_path)

    rows = {row["variant"]: row for row in _read_csv(tmp_path / "results.csv")}
    annealed, layernorm = rows["otdd-annealed"], rows["layernorm"]
    tests = np.array([t for _, t, _, _ in base])
    low, high = stats.t.interval(0.95, 2, loc=tests.mean(), scale=stats.sem(tests))
    assert float(annealed["test_mean"]) == pytest.approx(tests.mean())
    assert (float(annealed["test_ci_low"]), float(annealed["test_ci_high"])) == pytest.approx((low, high))
    assert float(annealed["wall_seconds_mean"]) == pytest.approx(11.0)
    assert (annealed["runs"], annealed["failed"], annealed["metric"]) == ("3", "0", "accuracy")
    assert (layernorm["runs"], layernorm["failed"], layernorm["align_from"]) == ("2", "1", "otdd-annealed")
    assert float(layernorm["distance_mean"]) == pytest.approx(14.5)  # the base runs' distances, seeds 0 and 1

    runs = _read_csv(tmp_path / "runs.csv")
    assert [(r["variant"], r["seed"], r["status"]) for r in runs] == [(r.variant, str(r.seed), r.status)
                                                                      for r in records]
    assert runs[0]["summary.align.distance_before"] == "28.0" and runs[0]["summary.refine.best_epoch"] == "2"
    assert runs[-1]["error"] == "ValueError: bad | thing\nsecond line" and runs[-1]["test"] == ""

    md = (tmp_path / "results.md").read_text()
    assert "Student's t" in md and "accuracy (higher is better)" in md
    assert f"| otdd-annealed | 3 | 0 | {tests.mean():.4g} [{low:.4g}, {high:.4g}] |" in md
    assert "| layernorm (from otdd-annealed) | 2 | 1 |" in md
    assert "| layernorm | 2 | ValueError: bad \\| thing second line |" in md
    for png in ("distance_vs_metric.png", "results_bars.png"):
        assert (tmp_path / png).read_bytes().startswith(PNG)


class StubRun:
    """Stands in for pipeline.run: records each call's config, writes what the harness reads (config.json,
    summary.json, aligned_embedder/), and fails for the (variant, seed) pairs in `fail` before creating the workdir,
    as a config error does."""

    def __init__(self, fail=()):
        self.calls, self.fail = [], set(fail)

    def __call__(self, config, workdir):
        variant, seed = Path(workdir).parent.name, config.seed
        self.calls.append((variant, seed, config))
        if (variant, seed) in self.fail:
            raise RuntimeError(f"stub failure of {variant} seed {seed}")
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
        if config.align.epochs > 0:
            (workdir / "aligned_embedder").mkdir(exist_ok=True)
        distance = 10.0 + seed if config.align.epochs > 0 else None
        summary = _summary(0.5 + 0.01 * seed, 0.6, distance)
        (workdir / "summary.json").write_text(json.dumps(summary))
        return summary


VARIANTS = (Variant("otdd-annealed", {}), Variant("mmd", {"align.objective": "mmd"}),
            Variant("layernorm", {"refine.finetune_method": "layernorm"}, align_from="otdd-annealed"))


def _config():
    config = load_config_file(ROOT / "configs" / "own_data.py", "smoke")
    config.lock()
    return config


def test_sweep_resumes_skips_finished_runs_and_records_failures(tmp_path, capsys):
    stub = StubRun(fail={("mmd", 0)})
    records = run_sweep(_config(), VARIANTS, [0, 1], tmp_path, run_fn=stub)
    assert [(v, s) for v, s, _ in stub.calls] == [(v.name, s) for v in VARIANTS for s in (0, 1)]
    assert [r.status for r in records] == ["ran", "ran", "failed", "ran", "ran", "ran"]
    assert records[2].error == "RuntimeError: stub failure of mmd seed 0"
    for (variant, seed, config), record in zip(stub.calls, records):
        assert config.seed == seed
        if variant == "layernorm":  # refines from the base run's embedder of the same seed, without aligning
            assert config.align.epochs == 0
            assert config.refine.init_embedder == str(tmp_path / "otdd-annealed" / f"seed{seed}" / "aligned_embedder")
            assert config.refine.finetune_method == "layernorm"
            assert record.distance == 10.0 + seed  # the base run's final distance
    out = capsys.readouterr().out
    assert "[3/6] mmd seed 0: FAILED: RuntimeError: stub failure of mmd seed 0" in out
    assert "[6/6] layernorm seed 1: done in" in out
    assert "stub failure of mmd seed 0" in (tmp_path / "results.md").read_text()

    # Rerun: only the failed run runs again; the finished ones are read back, with their recorded wall time.
    stub = StubRun()
    records = run_sweep(_config(), VARIANTS, [0, 1], tmp_path, run_fn=stub)
    assert [(v, s) for v, s, _ in stub.calls] == [("mmd", 0)]
    assert [r.status for r in records] == ["skipped", "skipped", "ran", "skipped", "skipped", "skipped"]
    assert all(r.wall_seconds is not None for r in records)
    assert [r.distance for r in records if r.variant == "layernorm"] == [10.0, 11.0]
    assert "[1/6] otdd-annealed seed 0: finished earlier, skipped" in capsys.readouterr().out

    # A changed config is not "finished": pipeline.run decides (resume, or refuse another experiment).
    stub = StubRun()
    changed = apply_overrides(_config(), {"optimizer.learning_rate": 0.5})
    run_sweep(changed, VARIANTS[:1], [0], tmp_path, run_fn=stub)
    assert [(v, s) for v, s, _ in stub.calls] == [("otdd-annealed", 0)]

    # A second sweep on the directory while one runs is refused before it runs anything or rewrites the reports.
    reports = (tmp_path / "results.md").read_text()
    stub = StubRun()
    with RunLock(tmp_path), pytest.raises(WorkdirError, match=rf"Workdir {tmp_path} is in use by process \d+"):
        run_sweep(changed, VARIANTS, [0, 2], tmp_path, run_fn=stub)
    assert stub.calls == [] and (tmp_path / "results.md").read_text() == reports


def test_a_failed_base_run_fails_its_refine_only_variant_without_running_it(tmp_path):
    stub = StubRun(fail={("otdd-annealed", 1)})
    records = run_sweep(_config(), VARIANTS[::2], [0, 1], tmp_path, run_fn=stub)
    assert [(v, s) for v, s, _ in stub.calls] == [("otdd-annealed", 0), ("otdd-annealed", 1), ("layernorm", 0)]
    assert records[-1].status == "failed"
    assert records[-1].error == "needs the aligned embedder of otdd-annealed seed 1, whose run failed"


def test_variant_selection_adds_the_base_and_rejects_unknown_names():
    assert [v.name for v in select_variants(SWEEPS["ablations"], ["frozen-body", "mmd"])] == [
        "otdd-annealed", "mmd", "frozen-body"]
    with pytest.raises(ValueError, match="Unknown variant.*nope"):
        select_variants(SWEEPS["ablations"], ["nope"])
    with pytest.raises(ValueError, match="must come before it"):
        check_variants(VARIANTS[::-1])


def test_an_override_of_a_missing_field_is_an_error_even_unlocked():
    with pytest.raises(ValueError, match="override align.epoch=3: the config has no field align.epoch"):
        apply_overrides(base_config(), {"align.epoch": 3})


@pytest.mark.parametrize("sweep,variant", [(s, v.name) for s, vs in SWEEPS.items() for v in vs])
def test_builtin_variants_are_valid_configs(sweep, variant, tmp_path):
    variants = SWEEPS[sweep]
    check_variants(variants)
    chosen = next(v for v in variants if v.name == variant)
    if chosen.align_from:
        (tmp_path / chosen.align_from / "seed0" / "aligned_embedder").mkdir(parents=True)
    config = run_config(load_config_file(ROOT / "configs" / "own_data.py"), chosen, 0, tmp_path)
    check_config(config)
    for field, value in chosen.overrides.items():
        node = config
        for part in field.split("."):
            node = node[part]
        assert node == value, field


def test_ranking_rank_by_test_follows_the_metric_direction():
    rows = [{"variant": "a", "runs": 2, "failed": 0, "metric": "nrmse", "test_mean": 0.3, "test_ci_low": 0.2,
             "test_ci_high": 0.4, "test_n": 2, "distance_mean": 5.0},
            {"variant": "b", "runs": 2, "failed": 0, "metric": "nrmse", "test_mean": 0.1, "test_ci_low": 0.0,
             "test_ci_high": 0.2, "test_n": 2, "distance_mean": 6.0}]
    ranking = [{"name": "a", "rank": 1}, {"name": "b", "rank": 2}, {"name": "c", "rank": 3}]
    add_sweep_results(ranking, rows)
    assert [e.get("sweep", {}).get("rank_by_test") for e in ranking] == [2, 1, None]  # lower nrmse is better


def test_select_bodies_ranks_then_sweeps_the_top_bodies(tmp_path, monkeypatch):
    distances = {"/b/small": 3.0, "/a/large": 9.0, "hub/mid": 5.0}

    def short_or_full(config, workdir):  # a short alignment gives the body's distance; a full run adds a test metric
        stub = StubRun()
        summary = stub(config, workdir)
        summary["align"]["distance_after"] = distances[config.body.checkpoint]
        if config.refine.epochs == 0:
            del summary["refine"]
        (Path(workdir) / "summary.json").write_text(json.dumps(summary))
        return summary

    monkeypatch.setattr("orca_jax.sweep.bodies.source_scale", lambda config: 2.0)
    ranking = select_bodies(_config(), list(distances), tmp_path, align_epochs=3, sweep_seeds=[0], top_k=2,
                            run_fn=short_or_full)
    assert [(e["name"], e["rank"], e["distance_after"]) for e in ranking] == [
        ("small", 1, 3.0), ("mid", 2, 5.0), ("large", 3, 9.0)]
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir()) == ["mid", "small"]
    saved = json.loads((tmp_path / "ranking.json").read_text())  # strict JSON: one seed's interval is null
    assert saved[0]["sweep"]["test_ci_low"] is None and saved[0]["sweep"]["rank_by_test"] == 1
    assert "sweep" not in saved[2]
    md = (tmp_path / "ranking.md").read_text()
    assert "| 1 | small (`/b/small`) | 20 | 3 | 2 | 1.5 | 0.5 (n=1) | 1 |" in md
    assert "| 3 | large (`/a/large`) | 20 | 9 | 2 | 4.5 | not run | – |" in md


# ------------------------------------------------------------------------------------------- real runs, tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 12, 2)).astype(np.float32)
    y = (x[:, :, 0].mean(1) > 0).astype(np.int64) + (x[:, :, 1].mean(1) > 0)
    np.savez(root / "data.npz", x=x, y=y)
    return {"root": root, "roberta": save_tiny_text_model("roberta", root / "roberta", tokenizer=True),
            "bert": save_tiny_text_model("bert-gelu", root / "bert", tokenizer=True)}


def _command(script, tiny, workdir, *args):
    return [sys.executable, f"scripts/{script}", "--config=configs/own_data.py:smoke", f"--workdir={workdir}",
            f"--config.task.name=npz:{tiny['root'] / 'data.npz'}",
            f"--config.source.cache_dir={tiny['root'] / 'cache'}", "--config.refine.epochs=1", *args]


@pytest.mark.slow
def test_sweep_end_to_end_on_a_tiny_body(tiny, tmp_path):
    command = _command("sweep.py", tiny, tmp_path, f"--config.body.checkpoint={tiny['roberta']}", "--sweep=ablations",
                       "--variants=layernorm", "--seeds=0")
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[1/2] otdd-annealed seed 0: done in" in result.stdout  # the base came along, and ran first
    assert "[2/2] layernorm seed 0: done in" in result.stdout

    rows = {row["variant"]: row for row in _read_csv(tmp_path / "results.csv")}
    assert list(rows) == ["otdd-annealed", "layernorm"] and all(r["runs"] == "1" for r in rows.values())
    assert rows["layernorm"]["distance_mean"] == rows["otdd-annealed"]["distance_mean"]
    runs = _read_csv(tmp_path / "runs.csv")
    assert all(math.isfinite(float(r["test"])) for r in runs)
    for seed in (0,):  # intervals over several seeds: the stub-run tests above
        summary = json.loads((tmp_path / "layernorm" / f"seed{seed}" / "summary.json").read_text())
        # No align stage of its own: the distance is measured where the reused embedder stands.
        assert summary["align"]["epochs"] == 0 and math.isfinite(summary["align"]["distance_after"])
        assert summary["init_embedder"] == str(tmp_path / "otdd-annealed" / f"seed{seed}" / "aligned_embedder")
    for png in ("distance_vs_metric.png", "results_bars.png"):
        assert (tmp_path / png).read_bytes().startswith(PNG)

    # The configs the command line built are the ones a rerun compares with: every run is skipped, nothing runs.
    config = load_config_file(ROOT / "configs" / "own_data.py", "smoke")
    config.task.name, config.source.cache_dir = f"npz:{tiny['root'] / 'data.npz'}", str(tiny["root"] / "cache")
    config.refine.epochs, config.body.checkpoint = 1, str(tiny["roberta"])
    stub = StubRun()
    records = run_sweep(config, select_variants(SWEEPS["ablations"], ["layernorm"]), [0], tmp_path, run_fn=stub)
    assert stub.calls == [] and {r.status for r in records} == {"skipped"}


@pytest.mark.slow
def test_select_body_ranks_two_tiny_bodies(tiny, tmp_path):
    command = _command("select_body.py", tiny, tmp_path, f"--bodies={tiny['roberta']},{tiny['bert']}",
                       "--align-epochs=2")
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ranking = json.loads((tmp_path / "ranking.json").read_text())
    assert sorted(e["name"] for e in ranking) == ["bert", "roberta"]
    assert [e["rank"] for e in ranking] == [1, 2] and ranking[0]["distance_after"] <= ranking[1]["distance_after"]
    for e in ranking:
        summary = json.loads((tmp_path / "selection" / e["name"] / "seed0" / "summary.json").read_text())
        assert e["distance_after"] == summary["align"]["distance_after"]
        assert "refine" not in summary
        meta = [json.loads(p.read_text()) for p in (tiny["root"] / "cache").glob("*.json")]
        body = str(Path(e["body"]).resolve())
        scales = [m["mean_squared_pairwise_distance"] for m in meta if m["key"]["body"] == body]
        assert scales == [e["source_scale"]]
        assert f"| {e['rank']} | {e['name']} (`{e['body']}`) |" in result.stdout
    assert (tmp_path / "ranking.md").read_text() in result.stdout
