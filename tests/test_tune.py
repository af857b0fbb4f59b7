"""The search: the space parser's errors, worker processes sharing one SQLite study, resumption after a kill, shared
alignments, failures and the report with a stub run function, then one real pruned trial on a tiny body."""

import dataclasses
import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import numpy as np
import optuna
import pytest

from orca_jax.config import load_config_file
from orca_jax.config_checks import check_config
from orca_jax.sweep.records import RunRecord
from orca_jax.sweep.variants import apply_overrides
from orca_jax.tune import SPACES, Search, open_study, parse_space, prepare, run_workers, work, write_report
from orca_jax.tune.report import command_line, cost, final_runs
from orca_jax.tune.study import trial_dir

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"
State = optuna.trial.TrialState


def _config(**overrides):
    config = load_config_file(ROOT / "configs" / "own_data.py", "smoke")
    config.lock()
    return apply_overrides(config, {"task.metric": "accuracy", **overrides})


def _search(tmp_path, space, trials, config=None, **fields):
    config = config or _config(**{"align.epochs": 0})
    search = Search(config, parse_space(space, config), str(tmp_path), trials, (0,), "accuracy", "maximize", **fields)
    prepare(search)
    return search


# ---------------------------------------------------------------------------------------------- spaces


def test_inline_space_parses_to_typed_fields():
    config = _config()
    lr, bs, mode = parse_space("lr=log:1e-6:1e-3, bs=8|16|32,finetune=all|layernorm", config)
    assert (lr.field, lr.scale, lr.low, lr.high, lr.integer) == ("optimizer.learning_rate", "log", 1e-6, 1e-3, False)
    assert (bs.field, bs.choices) == ("batch_size", (8, 16, 32)) and all(type(c) is int for c in bs.choices)
    assert (mode.field, mode.choices) == ("refine.finetune_method", ("all", "layernorm"))
    (tokens,) = parse_space("embedder.target_seq_len=log:4:64", config)
    assert tokens.integer and (tokens.low, tokens.high) == (4, 64)


@pytest.mark.parametrize("space,said", [
    ("nope", "--space='nope' is neither a built-in space (default, nb360, pdebench, openml) nor an inline space"),
    ("lr=log:1e-3", "--space part 'lr=log:1e-3': a range needs two bounds, log:LOW:HIGH"),
    ("lr=log:0:1e-3", "a log range needs LOW > 0; got 0.0 (use linear:0.0:0.001, or choices that include 0)"),
    ("lr=linear:1e-3:1e-4", "the bounds must be finite with LOW < HIGH"),
    ("lr=exp:1:2", "unknown range 'exp'; use log:LOW:HIGH, linear:LOW:HIGH or choices A|B|C"),
    ("bs=8|x", "--space part 'bs=8|x': 'x' is not an int, which batch_size holds"),
    ("bs=8", "to fix batch_size to one value for every trial, pass --config.batch_size=8 instead"),
    ("lr=log:1e-6:1e-3,rate=1|2", "--space part 'rate=1|2': the config has no field 'rate'; use a dotted config"),
    ("finetune=linear:0:1", "refine.finetune_method is a str field, so it takes choices (A|B|C), not a range"),
    ("lr=1e-4|1e-3,optimizer.learning_rate=1e-2|1e-1", "optimizer.learning_rate is searched twice"),
    ("lr=", "--space part 'lr=': write FIELD=SPEC"),
    ("mesh.rules=a|b", "mesh.rules holds a tuple; only number, string and boolean fields can be searched"),
])
def test_inline_space_errors_name_the_part_and_the_fix(space, said):
    with pytest.raises(ValueError) as error:
        parse_space(space, _config())
    assert said in str(error.value)


@pytest.mark.parametrize("name,config_file,variant", [
    ("default", "own_data.py", None), ("nb360", "nb360.py", "ecg"), ("pdebench", "pdebench.py", "burgers"),
    ("openml", "openml.py", "1510")])
def test_builtin_spaces_give_valid_configs_at_every_end(name, config_file, variant):
    config = load_config_file(ROOT / "configs" / config_file, variant)
    space = SPACES[name](config)
    assert space and len({p.field for p in space}) == len(space)
    for end in (0, -1):
        values = {p.field: (p.choices[end] if p.scale == "choice" else (p.low, p.high)[end]) for p in space}
        check_config(apply_overrides(config, values))
    if name != "default":  # built from the official values: the learning rate spans the family's official range
        lr = next(p for p in space if p.field == "optimizer.learning_rate")
        assert lr.scale == "log" and lr.low < config.optimizer.learning_rate * 1.0001 and lr.high >= lr.low


# ------------------------------------------------------------------------------------------- stub runs


@dataclasses.dataclass
class StubRun:
    """Stands in for pipeline.run: writes what the search reads (config.json, summary.json, refine_metrics.jsonl,
    aligned_embedder/), logs each call (process, cores) in `calls`, calls the epoch hook, resumes from the epochs
    it logged before. `hang`: the trial number whose first run stops after epoch 1 until killed; `barrier`: a
    directory where each process waits for a second one before its first run; `fail`: a fine-tune mode that
    fails."""

    hang: int | None = None
    barrier: str | None = None
    fail: str | None = None

    def __call__(self, config, workdir, *, on_epoch=None, test=True):
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        with open(workdir / "calls", "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "cores": sorted(os.sched_getaffinity(0))}) + "\n")
        self._wait_for_a_second_process()
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
        if config.refine.finetune_method == self.fail:
            raise RuntimeError("stub failure")
        if config.refine.epochs == 0:  # an align-only run
            (workdir / "aligned_embedder").mkdir(exist_ok=True)
            summary = {"align": {"objective": "otdd-exact", "distance_before": 2.0, "distance_after": 1.0}}
            (workdir / "summary.json").write_text(json.dumps(summary))
            return summary
        log = workdir / "refine_metrics.jsonl"
        history = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        stopped = None
        for epoch in range(len(history) + 1, config.refine.epochs + 1):
            scale = 1.0 if config.refine.finetune_method == "all" else 0.5
            val = scale * (1 - 1 / (1 + epoch)) + config.optimizer.learning_rate
            history.append({"epoch": epoch, "val_accuracy": val})
            log.write_text("".join(json.dumps(r) + "\n" for r in history))
            if self.hang is not None and workdir.parent.name == str(self.hang) and epoch == 1:
                (workdir / "hung").write_text("")
                time.sleep(600)
            reason = on_epoch(epoch, val) if on_epoch else None
            if reason:
                stopped = {"epoch": epoch, "reason": reason}
                break
        refine = {"metric": "accuracy", "best_val_accuracy": max(r["val_accuracy"] for r in history),
                  "test_accuracy": 0.5 + config.optimizer.learning_rate if test else None}
        if stopped:
            refine["stopped"] = stopped
        summary = {"refine": refine}
        (workdir / "summary.json").write_text(json.dumps(summary))
        return summary

    def _wait_for_a_second_process(self):
        if self.barrier is None:
            return
        Path(self.barrier, str(os.getpid())).write_text("")
        deadline = time.time() + 300
        while len(os.listdir(self.barrier)) < 2 and time.time() < deadline:
            time.sleep(0.1)


def _calls(directory: Path) -> list[dict]:
    return [json.loads(line) for line in (directory / "calls").read_text().splitlines()]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="two workers need two CPU cores")
def test_two_worker_processes_share_one_sqlite_study(tmp_path):
    (tmp_path / "barrier").mkdir()
    search = _search(tmp_path / "search", "lr=log:1e-5:1e-3,finetune=all|layernorm", trials=6, pruner="none")
    run_workers(search, 2, run_fn=StubRun(barrier=str(tmp_path / "barrier")))

    trials = open_study(search).get_trials()
    assert sorted(t.number for t in trials) == list(range(6)) and {t.state for t in trials} == {State.COMPLETE}
    calls = {t.number: _calls(trial_dir(search, t.number) / "seed0") for t in trials}
    assert all(len(c) == 1 for c in calls.values())  # no trial run twice
    by_pid = {}
    for (call,) in calls.values():
        by_pid.setdefault(call["pid"], call["cores"])
    assert len(by_pid) == 2  # both workers ran trials, each on a core of its own
    first, second = by_pid.values()
    assert first and second and not set(first) & set(second)
    for t in trials:
        assert t.user_attrs["devices"] == [1, "CPU core"] and t.user_attrs["epochs"] == 2
        assert t.value == pytest.approx(max(json.loads(line)["val_accuracy"] for line in (
            trial_dir(search, t.number) / "seed0" / "refine_metrics.jsonl").read_text().splitlines()))


def test_resume_after_killing_the_study_process(tmp_path):
    search = _search(tmp_path, "lr=log:1e-5:1e-3", trials=3, pruner="none")
    process = multiprocessing.get_context("spawn").Process(target=work, args=(search, StubRun(hang=1)))
    process.start()
    hung = trial_dir(search, 1) / "seed0" / "hung"
    deadline = time.time() + 300
    while not hung.exists() and process.is_alive() and time.time() < deadline:
        time.sleep(0.2)
    assert hung.exists(), "the study process never reached trial 1"
    os.kill(process.pid, signal.SIGKILL)
    process.join()
    before = {t.number: t for t in open_study(search).get_trials()}
    assert before[0].state == State.COMPLETE and before[1].state == State.RUNNING and 2 not in before

    assert work(search, StubRun()) == 2  # the orphaned trial, then a new one: the budget is 3 in all
    trials = {t.number: t for t in open_study(search).get_trials()}
    assert sorted(trials) == [0, 1, 2] and {t.state for t in trials.values()} == {State.COMPLETE}
    assert trials[1].params == before[1].params  # the same trial, resumed where its run stopped
    assert sorted(trials[1].intermediate_values) == [1, 2]
    assert [r["epoch"] for r in map(json.loads, (trial_dir(search, 1) / "seed0" / "refine_metrics.jsonl")
                                    .read_text().splitlines())] == [1, 2]
    assert len(_calls(trial_dir(search, 1) / "seed0")) == 2 and len(_calls(trial_dir(search, 2) / "seed0")) == 1
    assert work(search, StubRun()) == 0  # nothing left


def test_trials_share_one_alignment_per_align_setting_and_failures_are_recorded(tmp_path):
    config = _config(**{"align.epochs": 2})
    search = _search(tmp_path, "finetune=all|layernorm|non-attn,warmup=0|1,lr=1e-4|1e-3", 8, config=config,
                     pruner="none")
    for mode, warmup, lr in [("all", 0, 1e-4), ("layernorm", 1, 1e-4), ("non-attn", 0, 1e-4), ("all", 1, 1e-4),
                             ("all", 0, 1e-3), ("layernorm", 0, 1e-3), ("non-attn", 1, 1e-3)]:
        open_study(search).enqueue_trial({"refine.finetune_method": mode, "refine.warmup_epochs": warmup,
                                          "optimizer.learning_rate": lr})
    work(search, StubRun(fail="non-attn"))  # the 8th trial is the sampler's
    trials = open_study(search).get_trials()
    assert len(trials) == 8
    for t in trials:
        failed = t.params["refine.finetune_method"] == "non-attn"
        assert t.state == (State.FAIL if failed else State.COMPLETE)
        assert ("error" in t.user_attrs) == failed and (t.user_attrs.get("error") == "RuntimeError: stub failure"
                                                        or not failed)
        saved = json.loads((trial_dir(search, t.number) / "seed0" / "config.json").read_text())
        assert saved["align"]["epochs"] == 0  # refined from the shared alignment, not aligned again
        embedder = Path(saved["refine"]["init_embedder"])
        aligned = json.loads((embedder.parent / "config.json").read_text())
        assert aligned["optimizer"]["learning_rate"] == t.params["optimizer.learning_rate"]
        assert aligned["refine"] == json.loads(config.to_json_best_effort())["refine"] | {"epochs": 0}
    alignments = sorted(p for p in (tmp_path / "align").iterdir() if p.is_dir())
    assert len(alignments) == len({t.params["optimizer.learning_rate"] for t in trials})  # one per align setting
    assert all(len(_calls(a)) == 1 for a in alignments)
    assert sum(t.user_attrs["align_seconds"] > 0 for t in trials) <= len(alignments)


class PruneAt(optuna.pruners.BasePruner):
    """Prunes trial `number` at epoch `epoch`: a pruner whose choice the test knows."""

    def __init__(self, number, epoch):
        self.number, self.epoch = number, epoch

    def prune(self, study, trial):
        return trial.number == self.number and trial.last_step == self.epoch


def test_report_of_a_study_with_a_pruned_and_a_failed_trial(tmp_path):
    search = _search(tmp_path, "finetune=all|layernorm|non-attn,lr=log:1e-5:1e-3", 6)
    config = search.config
    modes = ["all", "layernorm", "non-attn", "all", "layernorm", "all"]  # trial 2 fails, trial 3 is pruned
    for mode, lr in zip(modes, np.geomspace(1e-5, 1e-3, 6)):
        open_study(search).enqueue_trial({"refine.finetune_method": mode, "optimizer.learning_rate": lr})
    work(search, StubRun(fail="non-attn"), pruner=PruneAt(3, 1))
    study = open_study(search)
    pruned = {t.number: t for t in study.get_trials()}[3]
    assert pruned.state == State.PRUNED and pruned.user_attrs["stopped"]["epoch"] == 1
    assert pruned.user_attrs["stopped"]["reason"] == "pruned by PruneAt after epoch 1"
    spent = cost(study.get_trials())
    assert spent["saved_epochs"] == config.refine.epochs - 1
    assert spent["epochs"] == sum(t.user_attrs["epochs"] for t in study.get_trials())

    records = final_runs(search, study, [7, 8], run_fn=StubRun())
    best = study.best_trial
    tuned = f"tuned-trial{best.number}"
    assert [(r.variant, r.seed, r.status) for r in records] == [
        ("default", 7, "ran"), ("default", 8, "ran"), (tuned, 7, "ran"), (tuned, 8, "ran")]
    records += [RunRecord("baseline: logistic_regression", seed, "ran", baseline=True, summary={"baseline": {
        "name": "logistic_regression", "metric": "accuracy", "best_val_accuracy": 0.6, "test_accuracy": test}})
        for seed, test in ((7, 0.3), (8, 0.5))]
    text = write_report(search, study, records, "python scripts/train.py --config=configs/own_data.py:smoke",
                        "accuracy")
    line = command_line("python scripts/train.py --config=configs/own_data.py:smoke", best.params)
    fixed = ("python scripts/train.py --config=configs/own_data.py:smoke --config.optimizer.learning_rate=1 "
             "--config.seed=3")
    assert command_line(fixed, best.params).count("--config.optimizer.learning_rate=") == 1
    assert "--config.seed=3" in command_line(fixed, best.params)
    assert line in text and f"--config.refine.finetune_method={best.params['refine.finetune_method']}" in line
    tuned_test = 0.5 + best.params["optimizer.learning_rate"]
    assert f"| tuned (the chosen recipe) | 2 | 0 | {tuned_test:.4g} [{tuned_test:.4g}, {tuned_test:.4g}]" in text
    assert "| baseline: logistic_regression | 2 | 0 | 0.4 [-0.8706, 1.671] | 0.6 [0.6, 0.6] |" in text
    assert f"Pruning saved {config.refine.epochs - 1} trial-epochs" in text
    assert "| 3 | pruned: pruned by PruneAt after epoch 1 |" in text
    assert "| 2 | failed: RuntimeError: stub failure | – | 0 |" in text
    for png in ("history.png", "curves.png"):
        assert (tmp_path / png).read_bytes().startswith(PNG)
    assert (tmp_path / "tune.md").read_text() == text and "Not final" not in text

    # Another machine's trial finishing after these re-runs began, better than the one re-run: the report says so,
    # and the next final re-runs are the new best's, in their own workdirs (not refused as another experiment).
    study.add_trial(optuna.trial.create_trial(params=best.params, distributions=best.distributions, value=2.0))
    assert study.best_trial.number == 6
    assert "**Not final:** trial 6, which finished after these re-runs began, is now the best" in write_report(
        search, study, records, "python scripts/train.py", "accuracy")
    again = final_runs(search, study, [7], run_fn=StubRun())
    assert [(r.variant, r.status) for r in again] == [("default", "skipped"), ("tuned-trial6", "ran")]


def test_a_continued_search_must_be_the_same_search(tmp_path):
    _search(tmp_path, "lr=log:1e-5:1e-3", 2)
    _search(tmp_path, "lr=log:1e-5:1e-3", 5)  # a larger budget continues it
    with pytest.raises(Exception, match="holds a search with other space"):
        _search(tmp_path, "lr=log:1e-6:1e-3", 5)


# ------------------------------------------------------------------------------------------- a real trial


@pytest.mark.slow
def test_a_pruned_trial_stops_at_the_pruners_epoch_and_its_summary_says_so(tmp_path):
    from tests.text_checkpoints import save_tiny_text_model  # torch: not for the worker processes above

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 12, 2)).astype(np.float32)
    np.savez(tmp_path / "data.npz", x=x, y=(x[:, :, 0].mean(1) > 0).astype(np.int64))
    body = save_tiny_text_model("roberta", tmp_path / "roberta")
    config = _config(**{"task.name": f"npz:{tmp_path / 'data.npz'}", "body.checkpoint": str(body),
                        "align.epochs": 0, "align.objective": "none", "refine.epochs": 3})
    search = _search(tmp_path / "search", "lr=1e-3|2e-3", 1, config=config)
    work(search, pruner=PruneAt(0, 2))

    (trial,) = open_study(search).get_trials()
    assert trial.state == State.PRUNED and sorted(trial.intermediate_values) == [1, 2]
    run = trial_dir(search, 0) / "seed0"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["refine"]["stopped"] == {"epoch": 2, "reason": "pruned by PruneAt after epoch 2"}
    assert summary["refine"]["test_accuracy"] is None and not (run / "test_outputs.npz").exists()
    epochs = [json.loads(line)["epoch"] for line in (run / "refine_metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]
    assert [trial.intermediate_values[e] for e in (1, 2)] == [
        json.loads(line)["val_accuracy"] for line in (run / "refine_metrics.jsonl").read_text().splitlines()]
