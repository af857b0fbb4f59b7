"""Simple baselines on the split a run of the same config uses, scored by the runs' own metric code.

Why: whether ORCA is worth its cost on a task is answered only next to the simple answer on the same data. Every
baseline is fitted on the task's train split, chooses its hyperparameters (a small grid, and for networks the epoch)
on the validation split only, and is scored once on the test split through `orca_jax.train.metrics.MetricAccumulator`
with the split's per-example metadata, as the refine stage scores a run. Which baselines apply follows the kind:

- class labels of sequences or images: logistic regression, an MLP and a CNN (Flax NNX, trained with optax on the
  task's own loss, `TaskLoss.loss`, so configured class weights apply), and MiniRocket features (sktime) with a
  ridge classifier; tables (`tabular`): logistic regression and gradient boosting, class-weighted as the run's loss;
- multi-label targets: one-vs-rest logistic regression;
- real values: the training targets' mean, the input itself where it holds the target's values (a dense task's
  "nothing happens" answer), and ridge least squares on the flattened inputs.

Scikit-learn models' log-probabilities or decision scores stand in for logits: the metrics read their argmax or
their ranking, and the tabular AUROC's softmax turns log-probabilities back into the probabilities. Augmentations of
the training inputs (`Task.train_transform`) are not applied.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath
from flax import nnx
from ml_collections import ConfigDict

from orca_jax.config_checks import ConfigError
from orca_jax.data.kinds import get_task_kind
from orca_jax.data.types import Task
from orca_jax.train.metrics import MetricAccumulator, get_metric
from orca_jax.train.task_loss import TaskLoss, linear_outputs, make_task_loss
from orca_jax.workdir import WorkdirError, data_fingerprint, write_file

SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class BaselineResult:
    name: str
    metric: str
    val: float
    test: float
    params: dict  # what the validation split chose
    seconds: float  # fitting and scoring, every grid point included


@dataclasses.dataclass(frozen=True)
class BaselineReport:
    """The baselines of one task and seed, as `scripts/baselines.py` and a sweep's `--baselines` write them."""

    task: str
    kind: str
    metric: str
    seed: int
    examples: dict[str, int]  # per split
    results: list[BaselineResult]
    not_applicable: dict[str, str]  # name -> why


# A fit takes a grid point and returns (predict, chosen): predict(split name) gives that split's outputs; chosen holds
# what the fit itself selected on validation (a network's epoch).
Fit = Callable[[dict], tuple[Callable[[str], np.ndarray], dict]]


def score(task: Task, task_loss: TaskLoss, split: str, outputs: np.ndarray) -> float:
    """The task's metric of `outputs` on a split, through the accumulator the refine stage evaluates with."""
    data = getattr(task, split)
    accumulator = MetricAccumulator(task_loss.metric)
    accumulator.update(np.asarray(outputs, np.float32), np.asarray(data.y), **data.meta)
    return float(accumulator.result())


def _better(task_loss: TaskLoss) -> Callable[[float, float], bool]:
    higher = get_metric(task_loss.metric).higher_is_better
    return lambda new, old: math.isfinite(new) and (not math.isfinite(old) or (new > old if higher else new < old))


def _select(task: Task, task_loss: TaskLoss, grid: Sequence[dict], fit: Fit) -> tuple[float, float, dict]:
    """(val, test, hyperparameters) of the grid point best on validation; only that one sees the test split."""
    better, best = _better(task_loss), None
    for params in grid:
        predict, chosen = fit(params)
        val = score(task, task_loss, "val", predict("val"))
        if best is None or better(val, best[0]):
            best = (val, params | chosen, predict)
    val, params, predict = best
    return val, score(task, task_loss, "test", predict("test")), params


def _flat(task: Task) -> dict[str, np.ndarray]:
    return {s: np.asarray(getattr(task, s).x, np.float32).reshape(len(getattr(task, s)), -1) for s in SPLITS}


def _class_columns(classes: np.ndarray, values: np.ndarray, num_classes: int) -> np.ndarray:
    """Scores over every class of the task, whichever classes the training split happened to hold (a decision
    function of two classes gives one column: the second class's score)."""
    if values.ndim == 1:
        values = np.stack([-values, values], axis=1)
    out = np.full((len(values), num_classes), -1e9, np.float32)
    out[:, classes.astype(np.int64)] = values
    return out


# ------------------------------------------------------------------------------------------- scikit-learn models


def _standardized(task: Task) -> dict[str, np.ndarray]:
    from sklearn.preprocessing import StandardScaler

    x = _flat(task)
    scaler = StandardScaler().fit(x["train"])
    return {s: scaler.transform(v) for s, v in x.items()}


def _class_weight(task_loss: TaskLoss) -> str | None:
    # The run's inverse-frequency weights, len(y) / (classes * count), are scikit-learn's "balanced".
    return None if task_loss.class_weights is None else "balanced"


def _probabilistic(task: Task, task_loss: TaskLoss, x: dict, grid: Sequence[dict], make) -> tuple:
    """A scikit-learn classifier per grid point (`make(params)`), its log-probabilities as the outputs."""

    def fit(params):
        model = make(params).fit(x["train"], np.asarray(task.train.y))
        log_p = lambda s: np.log(np.clip(model.predict_proba(x[s]), 1e-30, None))  # noqa: E731
        return (lambda s: _class_columns(model.classes_, log_p(s), task.num_classes)), {}

    return _select(task, task_loss, grid, fit)


def logistic_regression(task, task_loss, seed):
    from sklearn.linear_model import LogisticRegression

    def make(params):
        return LogisticRegression(C=params["C"], class_weight=_class_weight(task_loss), max_iter=1000)

    return _probabilistic(task, task_loss, _standardized(task), [{"C": c} for c in (0.01, 0.1, 1.0, 10.0)], make)


def gradient_boosting(task, task_loss, seed):
    from sklearn.ensemble import HistGradientBoostingClassifier
    from threadpoolctl import threadpool_limits

    def make(params):
        return HistGradientBoostingClassifier(max_iter=200, early_stopping=False, class_weight=_class_weight(task_loss),
                                              random_state=seed, **params)

    grid = [{"learning_rate": lr, "max_leaf_nodes": leaves} for lr in (0.05, 0.2) for leaves in (7, 31)]
    # One OpenMP thread: on a busy machine (a sweep's own JAX threads, parallel test workers) its spinning threads
    # slow a small table down by orders of magnitude (docs/results.md, "Design measurements").
    with threadpool_limits(limits=1, user_api="openmp"):
        return _probabilistic(task, task_loss, _flat(task), grid, make)


def one_vs_rest_logistic(task, task_loss, seed):
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    x, y = _standardized(task), np.asarray(task.train.y)
    constant = y.min(0) == y.max(0)  # a label with one value in training gets no classifier: its value, confidently

    def fit(params):
        model = OneVsRestClassifier(LogisticRegression(C=params["C"], max_iter=1000)).fit(x["train"], y[:, ~constant])

        def predict(s):
            out = np.repeat(np.where(y[:1] > 0, 1e3, -1e3).astype(np.float32), len(x[s]), axis=0)
            out[:, ~constant] = model.decision_function(x[s]).reshape(len(x[s]), -1)
            return out

        return predict, {}

    return _select(task, task_loss, [{"C": c} for c in (0.01, 0.1, 1.0)], fit)


MINIROCKET_MIN_LENGTH = 9  # its kernels' length


def _series(x) -> np.ndarray:
    """[N, channels, positions], as sktime takes panels: sequences as they are, images as their rows end to end."""
    x = np.asarray(x, np.float32)
    return x.reshape(len(x), -1, x.shape[-1]).transpose(0, 2, 1)


def minirocket(task, task_loss, seed):
    """MiniRocket (Dempster et al., 2021): 10,000 features of fixed dilated convolutions, each the proportion of
    positive values over the series, then a ridge classifier on the standardized features."""
    from sklearn.linear_model import RidgeClassifier
    from sklearn.preprocessing import StandardScaler
    from sktime.transformations.rocket import MiniRocketMultivariate

    transform = MiniRocketMultivariate(random_state=seed).fit(_series(task.train.x))
    x = {s: np.asarray(transform.transform(_series(getattr(task, s).x)), np.float32) for s in SPLITS}
    scaler = StandardScaler().fit(x["train"])
    x = {s: scaler.transform(v) for s, v in x.items()}

    def fit(params):
        model = RidgeClassifier(alpha=params["alpha"]).fit(x["train"], np.asarray(task.train.y))
        return (lambda s: _class_columns(model.classes_, model.decision_function(x[s]), task.num_classes)), {}

    val, test, params = _select(task, task_loss, [{"alpha": a} for a in (1.0, 10.0, 100.0, 1e3, 1e4)], fit)
    return val, test, params | {"features": int(x["train"].shape[1])}


# ------------------------------------------------------------------------------------------------ Flax networks


class MLP(nnx.Module):
    """Two hidden ReLU layers on the flattened input."""

    def __init__(self, inputs: int, outputs: int, width: int, *, rngs: nnx.Rngs):
        self.hidden = nnx.List([nnx.Linear(inputs, width, rngs=rngs), nnx.Linear(width, width, rngs=rngs)])
        self.out = nnx.Linear(width, outputs, rngs=rngs)

    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        for layer in self.hidden:
            x = nnx.relu(layer(x))
        return self.out(x)


class CNN(nnx.Module):
    """Three stride-2 ReLU convolutions (kernel 5 along a sequence, 3 x 3 over an image), then a linear layer on the
    flattened maps, so the classifier still sees where a feature occurred."""

    def __init__(self, input_shape: tuple[int, ...], outputs: int, width: int, *, rngs: nnx.Rngs):
        spatial, channels = input_shape[:-1], input_shape[-1]
        kernel = (5,) if len(spatial) == 1 else (3, 3)
        widths = (channels, width, width, 2 * width)
        self.convs = nnx.List([nnx.Conv(a, b, kernel, strides=2, padding="SAME", rngs=rngs)
                               for a, b in zip(widths[:-1], widths[1:])])
        size = math.prod(math.ceil(d / 8) for d in spatial)  # SAME padding at stride 2 rounds up, three times
        self.out = nnx.Linear(size * widths[-1], outputs, rngs=rngs)

    def __call__(self, x):
        for conv in self.convs:
            x = nnx.relu(conv(x))
        return self.out(x.reshape(x.shape[0], -1))


MAX_STEPS, MAX_EPOCHS, BATCH, LEARNING_RATE = 3000, 100, 64, 1e-3
MLP_WIDTHS, CNN_WIDTHS, WEIGHT_DECAYS = (128, 512), (16, 64), (1e-4, 1e-2)
CHUNK = 256  # rows per forward pass: every split is padded to a multiple, so one program serves them all


def _network(task: Task, task_loss: TaskLoss, seed: int, widths: Sequence[int],
             make: Callable[[dict, nnx.Rngs], nnx.Module]):
    """AdamW on the task's loss over inputs standardized per channel, at most MAX_STEPS steps in epochs of shuffled
    batches; per grid point the epoch best on validation is kept."""
    train_x = np.asarray(task.train.x, np.float64)
    axes = tuple(range(train_x.ndim - 1))
    mean, std = train_x.mean(axes), train_x.std(axes) + 1e-6
    x = {s: ((np.asarray(getattr(task, s).x, np.float64) - mean) / std).astype(np.float32) for s in SPLITS}
    padded = {s: np.concatenate([v, np.zeros((-len(v) % CHUNK, *v.shape[1:]), np.float32)]) for s, v in x.items()}
    y = np.asarray(task.train.y)
    batch = min(BATCH, len(y))
    per_epoch = len(y) // batch
    epochs = max(1, min(MAX_EPOCHS, MAX_STEPS // per_epoch))
    better = _better(task_loss)

    def fit(params):
        graphdef, weights = nnx.split(make(params, nnx.Rngs(seed)), nnx.Param)
        tx = optax.adamw(LEARNING_RATE, weight_decay=params["weight_decay"])
        opt_state = tx.init(weights)

        @jax.jit
        def step(weights, opt_state, xb, yb):
            loss = lambda w: task_loss.loss(nnx.merge(graphdef, w)(xb), yb, jnp.ones(len(yb)))  # noqa: E731
            grads = jax.grad(loss)(weights)
            updates, opt_state = tx.update(grads, opt_state, weights)
            return optax.apply_updates(weights, updates), opt_state

        forward = jax.jit(lambda w, xb: task_loss.outputs(nnx.merge(graphdef, w)(xb)))

        def outputs(weights, s):
            chunks = [np.asarray(forward(weights, padded[s][i:i + CHUNK])) for i in range(0, len(padded[s]), CHUNK)]
            return np.concatenate(chunks)[:len(x[s])]

        rng = np.random.default_rng(seed)
        best = (math.nan, weights, 0)
        for epoch in range(1, epochs + 1):
            order = rng.permutation(len(y))
            for i in range(per_epoch):
                rows = order[i * batch:(i + 1) * batch]
                weights, opt_state = step(weights, opt_state, x["train"][rows], y[rows])
            val = score(task, task_loss, "val", outputs(weights, "val"))
            if better(val, best[0]):
                best = (val, weights, epoch)
        return (lambda s: outputs(best[1], s)), {"epoch": best[2], "epochs": epochs}

    grid = [{"width": w, "weight_decay": wd} for w in widths for wd in WEIGHT_DECAYS]
    val, test, params = _select(task, task_loss, grid, fit)
    return val, test, params | {"learning_rate": LEARNING_RATE}


def mlp(task, task_loss, seed):
    inputs, outputs = math.prod(task.input_shape), linear_outputs(task, task_loss)
    return _network(task, task_loss, seed, MLP_WIDTHS, lambda p, rngs: MLP(inputs, outputs, p["width"], rngs=rngs))


def cnn(task, task_loss, seed):
    outputs = linear_outputs(task, task_loss)
    return _network(task, task_loss, seed, CNN_WIDTHS,
                    lambda p, rngs: CNN(task.input_shape, outputs, p["width"], rngs=rngs))


# -------------------------------------------------------------------------------------------------- real values


def predict_mean(task, task_loss, seed):
    mean = np.asarray(task.train.y, np.float64).mean(0).astype(np.float32)
    outputs = lambda s: np.broadcast_to(mean, (len(getattr(task, s)), *mean.shape))  # noqa: E731
    return score(task, task_loss, "val", outputs("val")), score(task, task_loss, "test", outputs("test")), {}


def _input_as_target(task: Task) -> bool:
    """Whether each input holds as many values as its target, in the same arrangement (axes of size 1 aside)."""
    squeeze = lambda shape: tuple(d for d in shape if d != 1)  # noqa: E731
    return squeeze(task.input_shape) == squeeze(task.target_shape)


def predict_input(task, task_loss, seed):
    outputs = lambda s: np.asarray(getattr(task, s).x, np.float32).reshape(getattr(task, s).y.shape)  # noqa: E731
    return score(task, task_loss, "val", outputs("val")), score(task, task_loss, "test", outputs("test")), {}


MAX_LEAST_SQUARES_INPUTS = 8192  # ridge solves a system of inputs x inputs (or examples x examples)


def least_squares(task, task_loss, seed):
    from sklearn.linear_model import Ridge

    x, y = _flat(task), np.asarray(task.train.y, np.float32)

    def fit(params):
        model = Ridge(alpha=params["alpha"]).fit(x["train"], y.reshape(len(y), -1))
        return (lambda s: model.predict(x[s]).reshape(len(x[s]), *task.target_shape)), {}

    return _select(task, task_loss, [{"alpha": a} for a in (1e-4, 1e-2, 1.0, 100.0)], fit)


# ----------------------------------------------------------------------------------------------------- dispatch

BASELINES: dict[str, Callable[[Task, TaskLoss, int], tuple[float, float, dict]]] = {
    "logistic_regression": logistic_regression,
    "gradient_boosting": gradient_boosting,
    "mlp": mlp,
    "cnn": cnn,
    "minirocket": minirocket,
    "one_vs_rest_logistic": one_vs_rest_logistic,
    "predict_mean": predict_mean,
    "predict_input": predict_input,
    "least_squares": least_squares,
}


# Which baselines each family of kinds gets: tables, other class labels, multi-label targets, real values.
FAMILIES = {
    "tabular": ("logistic_regression", "gradient_boosting"),
    "classes": ("logistic_regression", "mlp", "cnn", "minirocket"),
    "multilabel": ("one_vs_rest_logistic",),
    "values": ("predict_mean", "predict_input", "least_squares"),
}


def applicable(task: Task) -> dict[str, str | None]:
    """The baselines of the task's kind: None where one applies to `task`, else why not."""
    family = "tabular" if task.kind == "tabular" else get_task_kind(task.kind).targets
    why: dict[str, str | None] = dict.fromkeys(FAMILIES[family])
    if "minirocket" in why:
        positions = math.prod(task.input_shape[:-1])
        if positions < MINIROCKET_MIN_LENGTH:
            why["minirocket"] = f"inputs of {positions} positions; MiniRocket needs at least {MINIROCKET_MIN_LENGTH}"
        elif importlib.util.find_spec("sktime") is None:
            why["minirocket"] = "sktime is not installed: pip install -e '.[baselines]'"
    if "predict_input" in why and not _input_as_target(task):
        why["predict_input"] = f"inputs {task.input_shape} and targets {task.target_shape} differ in shape"
    inputs = math.prod(task.input_shape)
    if "least_squares" in why and inputs > MAX_LEAST_SQUARES_INPUTS:
        why["least_squares"] = f"{inputs} input values per example (at most {MAX_LEAST_SQUARES_INPUTS})"
    return why


def fit_baseline(task: Task, task_loss: TaskLoss, name: str, seed: int = 0) -> BaselineResult:
    start = time.perf_counter()
    val, test, params = BASELINES[name](task, task_loss, seed)
    return BaselineResult(name, task_loss.metric, val, test, params, time.perf_counter() - start)


def fit_baselines(task: Task, task_loss: TaskLoss, *, seed: int = 0, names: Sequence[str] = (),
                  log: Callable[[str], None] = lambda line: None) -> BaselineReport:
    """The baselines of `names` (all that apply when empty) on `task`; `log` hears each as it finishes."""
    usable = applicable(task)
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ConfigError([f"--baselines: unknown {', '.join(unknown)}; known: {', '.join(BASELINES)}"])
    reasons = {n: usable[n] if n in usable else f"not for kind {task.kind!r}" for n in names}
    refused = [f"{n} ({why})" for n, why in reasons.items() if why]
    if refused:
        raise ConfigError([f"--baselines: not for task {task.name!r}: {'; '.join(refused)}"])
    results = []
    for name in names or [n for n, reason in usable.items() if reason is None]:
        result = fit_baseline(task, task_loss, name, seed)
        log(f"{name}: val {result.metric} {result.val:.4g}, test {result.test:.4g} ({result.seconds:.1f} s)")
        results.append(result)
    return BaselineReport(task.name, task.kind, task_loss.metric, seed, {s: len(getattr(task, s)) for s in SPLITS},
                          results, {} if names else {n: reason for n, reason in usable.items() if reason})


# ----------------------------------------------------------------------------------------------------- reports

REPORT_FILE, TABLE_FILE = "baselines.json", "baselines.md"


def _params_text(params: dict) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()) or "–"


def baselines_markdown(report: BaselineReport) -> str:
    metric = get_metric(report.metric)
    direction = "higher" if metric.higher_is_better else "lower"
    n = report.examples
    lines = [
        f"# Baselines: {report.task}, seed {report.seed}",
        "",
        (f"Task {report.task} (kind {report.kind}): {n['train']} train / {n['val']} validation / {n['test']} test "
         "examples, the split a run of the same config and seed uses. Each baseline is fitted on the train split with "
         f"the hyperparameters of its row, chosen on the validation split only; the metric is {report.metric} "
         f"({direction} is better), computed by orca_jax.train.metrics as a run's."),
        "",
        f"| baseline | val {report.metric} | test {report.metric} | hyperparameters | seconds |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r.name} | {r.val:.4g} | {r.test:.4g} | {_params_text(r.params)} | {r.seconds:.1f} |"
              for r in report.results]
    if report.not_applicable:
        lines += ["", "Not applicable: " + "; ".join(f"{n} ({why})" for n, why in report.not_applicable.items()) + "."]
    return "\n".join(lines) + "\n"


def _identity(config: ConfigDict, task: Task, names: Sequence[str]) -> dict:
    """What decides the baselines' numbers: the task section of the config, the seed, the data and the names."""
    return {"task_config": json.loads(config.task.to_json_best_effort()), "seed": config.seed, "names": list(names),
            "data": data_fingerprint(task)}


def _from_json(saved: dict) -> BaselineReport:
    report = {k: v for k, v in saved.items() if k in {f.name for f in dataclasses.fields(BaselineReport)}}
    return BaselineReport(**report | {"results": [BaselineResult(**r) for r in report["results"]]})


def run_baselines(config: ConfigDict, directory: epath.PathLike, *, names: Sequence[str] = (),
                  reuse: bool = False, log: Callable[[str], None] = lambda line: None) -> tuple[BaselineReport, bool]:
    """Fits the baselines on the task and split that `pipeline.run(config)` trains on and writes baselines.json and
    baselines.md into `directory`. With `reuse`, a report there of the same task config, seed, data and names is
    returned instead of refitting. Returns (report, whether it was reused)."""
    from orca_jax.pipeline import load_configured_task, strict_json

    directory = epath.Path(directory)
    if directory.exists() and not directory.is_dir():
        raise WorkdirError(f"--workdir {directory} is a file, not a directory; choose another --workdir.")
    task = load_configured_task(config)
    identity = _identity(config, task, names)
    saved_file = directory / REPORT_FILE
    if reuse and saved_file.exists():
        saved = json.loads(saved_file.read_text())
        if saved.get("identity") == identity:
            return _from_json(saved), True
    report = fit_baselines(task, make_task_loss(task, config.task), seed=config.seed, names=names, log=log)
    directory.mkdir(parents=True, exist_ok=True)
    saved = strict_json(dataclasses.asdict(report) | {"identity": identity})
    write_file(saved_file, json.dumps(saved, indent=2, allow_nan=False))
    write_file(directory / TABLE_FILE, baselines_markdown(report))
    return report, False
