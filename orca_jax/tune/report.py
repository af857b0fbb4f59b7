"""The answer of a search: the chosen recipe re-run on fresh seeds beside the default one, and what the search cost.

The trials selected on validation alone; the test split is evaluated here for the first time, for the tuned and
the default recipe, each over seeds the trials never used (a seed draws the validation split, so the chosen
recipe's validation score is optimistic by selection and the test split is the only honest comparison). The re-runs
are a sweep of two variants (`orca_jax.sweep.runner.run_sweep`, in `DIR/final/`), so they resume, skip finished runs and
report means with Student-t intervals like every sweep.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

import optuna

from orca_jax.pipeline import run
from orca_jax.plotting import figure_png
from orca_jax.sweep.records import RunRecord
from orca_jax.sweep.report import CONFIDENCE, aggregate, fmt_number, interval_cell, md_escape, metric_phrase
from orca_jax.sweep.runner import run_sweep
from orca_jax.sweep.variants import Variant
from orca_jax.tune.study import Search
from orca_jax.workdir import write_file

State = optuna.trial.TrialState
STATES = {State.COMPLETE: "finished", State.PRUNED: "pruned", State.FAIL: "failed", State.RUNNING: "running",
          State.WAITING: "waiting"}


def final_runs(search: Search, study: optuna.Study, seeds: Sequence[int], run_fn=run,
               baselines: bool = False) -> list[RunRecord]:
    """The config as given and the chosen recipe on `seeds` (a sweep in `DIR/final`), with `baselines` also the
    simple baselines fitted on each seed's split."""
    variants = (Variant("default", {}), Variant(tuned_name(study), dict(study.best_trial.params)))
    return run_sweep(search.config, variants, seeds, search.root / "final", run_fn=run_fn, baselines=baselines)


TUNED_PREFIX = "tuned-trial"


def tuned_name(study: optuna.Study) -> str:
    """The chosen recipe's variant, named by its trial: another machine's trial that finishes after this one's
    final re-runs began may become the best, and its re-runs must then not meet the old recipe's workdirs."""
    return f"{TUNED_PREFIX}{study.best_trial.number}"


def command_line(base_command: str, params: dict) -> str:
    """The training command of the chosen recipe: the search's own config and fixed overrides, then its values (a
    fixed override of a searched field is left out: the line sets each field once)."""
    kept = [a for a in shlex.split(base_command) if a.partition("=")[0].removeprefix("--config.") not in params]
    return " ".join([*map(shlex.quote, kept), *(shlex.quote(f"--config.{k}={v}") for k, v in params.items()),
                     "--workdir=WORKDIR"])


def _device_hours(trial: optuna.trial.FrozenTrial) -> float:
    count = (trial.user_attrs.get("devices") or [1])[0]
    return trial.user_attrs.get("seconds", 0.0) * count / 3600


def cost(trials: Sequence[optuna.trial.FrozenTrial]) -> dict:
    """Device-hours and trial-epochs spent, and what pruning saved: a pruned trial's remaining epochs at its own
    seconds per epoch (alignment excluded, since pruning stops the refine stage alone)."""
    spent = sum(_device_hours(t) for t in trials)
    epochs = sum(t.user_attrs.get("epochs", 0) for t in trials)
    saved_epochs, saved_hours = 0, 0.0
    for t in trials:
        if t.state != State.PRUNED or not t.user_attrs.get("epochs"):
            continue
        left = t.user_attrs["planned_epochs"] - t.user_attrs["epochs"]
        refine_hours = _device_hours(t) * (1 - t.user_attrs.get("align_seconds", 0.0) / t.user_attrs["seconds"])
        saved_epochs += left
        saved_hours += refine_hours / t.user_attrs["epochs"] * left
    return {"device_hours": spent, "epochs": epochs, "saved_epochs": saved_epochs, "saved_device_hours": saved_hours}


def plot_history(study: optuna.Study, metric: str) -> bytes:
    trials = [t for t in study.get_trials(deepcopy=False) if t.state in (State.COMPLETE, State.PRUNED)]
    sign = 1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1

    def draw(plt):
        fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
        done = [t for t in trials if t.state == State.COMPLETE]
        ax.plot([t.number for t in done], [t.value for t in done], "o", label="finished (mean over trial seeds)")
        pruned = [(t.number, t.intermediate_values[t.last_step]) for t in trials
                  if t.state == State.PRUNED and t.last_step is not None]
        ax.plot([n for n, _ in pruned], [v for _, v in pruned], "x", color="grey", label="pruned (its last epoch)")
        best, xs, ys = None, [], []
        for t in done:
            best = t.value if best is None or sign * t.value > sign * best else best
            xs.append(t.number), ys.append(best)
        ax.step(xs, ys, where="post", color="black", label="best so far")
        ax.set_xlabel("trial"), ax.set_ylabel(f"validation {metric}"), ax.legend(fontsize=7)
        return fig

    return figure_png(draw)


def plot_curves(study: optuna.Study, metric: str) -> bytes:
    """Each trial's validation metric per epoch (the first trial seed's run, as the pruner saw it)."""

    def draw(plt):
        fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
        for t in study.get_trials(deepcopy=False):
            steps = sorted(t.intermediate_values)
            if steps:
                pruned = t.state == State.PRUNED  # marked: a trial pruned after its first epoch is a point
                ax.plot(steps, [t.intermediate_values[s] for s in steps], "--" if pruned else "-",
                        marker="x" if pruned else None, linewidth=1, alpha=0.7)
        ax.set_xlabel("refine epoch"), ax.set_ylabel(f"validation {metric}")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title("one line per trial; dashed, x: pruned", fontsize=9)
        return fig

    return figure_png(draw)


def plot_importances(importances: dict) -> bytes:
    def draw(plt):
        fig, ax = plt.subplots(figsize=(6, 0.5 + 0.35 * len(importances)), dpi=120)
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names])
        ax.set_xlabel("importance (optuna.importance's default evaluator, normalised to sum 1)")
        return fig

    return figure_png(draw)


def importances(study: optuna.Study) -> dict | str:
    """Optuna's parameter importances over the finished trials (its default evaluator), or why there are none."""
    done = [t for t in study.get_trials(deepcopy=False) if t.state == State.COMPLETE]
    if len(done) < 2:
        return f"needs two finished trials; {len(done)} finished"
    try:
        return optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError) as error:  # e.g. every finished trial drew the same values
        return str(error)


def write_report(search: Search, study: optuna.Study, records: Sequence[RunRecord], base_command: str,
                 metric: str) -> str:
    """`DIR/tune.md` and its PNGs; returns the markdown. The baselines among `records` (`final_runs(...,
    baselines=True)`) are shown beside the two recipes."""
    root = search.root
    trials = study.get_trials(deepcopy=False)
    states = {s: sum(t.state == s for t in trials) for s in (State.COMPLETE, State.PRUNED, State.FAIL, State.RUNNING)}
    tuned = next(r.variant for r in records if r.variant.startswith(TUNED_PREFIX))
    number = int(tuned.removeprefix(TUNED_PREFIX))
    best = next(t for t in trials if t.number == number)  # the recipe re-run, which may no longer be the best
    later = []
    if study.best_trial.number != best.number:
        later.append(f"trial {study.best_trial.number}, which finished after these re-runs began, is now the best")
    if states[State.RUNNING]:
        later.append(f"{states[State.RUNNING]} trial(s) are still running elsewhere")
    rows = {row["variant"]: row for row in aggregate(records)}
    spend = cost(trials)
    final_hours = sum(r.wall_seconds or 0.0 for r in records) / 3600
    phrase = metric_phrase([metric])
    lines = [
        "# Search results", "",
        (f"{len(trials)} trials of {search.trials} ({states[State.COMPLETE]} finished, {states[State.PRUNED]} pruned, "
         f"{states[State.FAIL]} failed), {search.pruner} pruner, each trial's value the mean validation {phrase} "
         f"over seeds {', '.join(map(str, search.trial_seeds))}. Space:"), "",
        *[f"- {p.describe()}" for p in search.space], "",
        *([f"**Not final:** {'; '.join(later)}. Rerun the same command when every trial is done: it re-runs the "
           "recipe that is best then and reports it.", ""] if later else []),
        "## The chosen recipe", "",
        f"Trial {best.number}, validation {metric} {fmt_number(best.value)}:", "",
        "```bash", command_line(base_command, best.params), "```", "",
        (f"Test {phrase}, mean and {CONFIDENCE:.0%} Student-t interval over fresh seeds "
         f"{', '.join(map(str, sorted({r.seed for r in records})))} (never used by a trial); `final/results.md` has "
         "the runs:"), "",
        "| recipe | runs | failed | test | best validation |", "|---|---|---|---|---|",
    ]
    labelled = [(rows[tuned], "tuned (the chosen recipe)"), (rows["default"], "default (the config as given)")]
    labelled += [(row, row["variant"]) for row in rows.values() if row["baseline"]]
    for row, label in labelled:
        lines.append(f"| {label} | {row['runs']} | {row['failed']} | {interval_cell(row, 'test')} | "
                     f"{interval_cell(row, 'best_val')} |")
    lines += [
        "", "## Cost", "",
        (f"Trials: {spend['device_hours']:.3g} device-hours (a device: a worker's GPU or CPU core), "
         f"{spend['epochs']} refine epochs over all trial seeds "
         f"(alignments shared between trials counted once, in the trial that ran them); the final re-runs "
         f"{final_hours:.3g} hours of wall time. Pruning saved {spend['saved_epochs']} trial-epochs, about "
         f"{spend['saved_device_hours']:.3g} device-hours at the pruned trials' own speed."), "",
        "## The search", "",
        "![validation metric per trial, best so far](history.png)", "",
        "![each trial's validation curve](curves.png)", "",
    ]
    write_file(root / "history.png", plot_history(study, metric))
    write_file(root / "curves.png", plot_curves(study, metric))
    found = importances(study)
    if isinstance(found, dict):
        write_file(root / "importances.png", plot_importances(found))
        lines += ["![parameter importances](importances.png)", "",
                  "| parameter | importance |", "|---|---|", *[f"| {k} | {v:.3g} |" for k, v in found.items()], ""]
    else:
        lines += [f"Parameter importances: none ({found}).", ""]
    lines += ["| trial | state | value | epochs | device-hours | parameters |", "|---|---|---|---|---|---|"]
    for t in trials:
        note = t.user_attrs.get("error") or (t.user_attrs.get("stopped") or {}).get("reason", "")
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
        lines.append(f"| {t.number} | {STATES[t.state]}{': ' + md_escape(note) if note else ''} | "
                     f"{fmt_number(t.value)} | "
                     f"{t.user_attrs.get('epochs', '–')} | {_device_hours(t):.3g} | {params} |")
    text = "\n".join(lines) + "\n"
    write_file(root / "tune.md", text)
    return text
