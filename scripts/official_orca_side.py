"""The official ORCA code (github `sjunhongshen/ORCA`, `src/`) run on an experiment that `compare_official.py` wrote.

    python scripts/official_orca_side.py --official-src ORCA/src --experiment DIR    # one run
    python scripts/official_orca_side.py --official-src ORCA/src --check-replica     # the replica test

This file runs under a Python that has the official code's dependencies (torch, torchvision, transformers,
geomloss, POT, timm, attrdict, seaborn and the official checkout's vendored `otdd` installed with `pip install
src/otdd`), not orca-jax's: it imports neither JAX nor orca-jax. It imports the official modules from
`--official-src` as a library and adapts them only at their entry points:
- `task_configs.get_data` as `main` and `embedder` call it: the experiment's arrays (`data.npz`: the split that the
  orca-jax side reads too) instead of the official loaders, and the experiment's source features (`source.npz`)
  instead of the downloaded `text_xs.npy`, both as the official `TensorDataset` loaders (train shuffled, test in
  order, the task's batch size);
- `get_config` and `get_metric`: the task's sample shape, classes or output shape, loss and metric, built from the
  official loss and metric functions (`nrmse_loss` / `nmse` as for the PDE tasks, accuracy, OpenML's class-weighted
  cross-entropy and AUROC);
- `wrapper1D`: replaced by `Wrapper1D` below, a replica that takes the body's width from its config, because the
  official class hard-codes RoBERTa-base's 768 (and its `Embeddings1D` switches to Swin's square-length rule at any
  other width), so the demo's 384-wide MiniLM cannot be built with it. It loads a local body directory instead of
  the hub, and after the official initialisation it takes the experiment's initial embedder and head weights
  (`init.npz`, written from the orca-jax model of the same seed), so both sides start from the same point.
  `--check-replica` builds the original and the replica on a 768-wide RoBERTa checkpoint, where the original runs,
  and checks they are the same module: same parameters from the same seed, same outputs in both modes;
- two environment shims, not code changes: `attrdict` needs `collections.Mapping` (gone in Python 3.10), and the
  official checkpointing saves CUDA's RNG state, which does not exist on a CPU machine (an empty state is saved).
Everything else is the official code: `main.main` (seeding, `get_tgt_model`'s align loop with the vendored otdd on
geomloss, k-means pseudo-labels, the optimizer and scheduler, the fine-tuning loop, best-epoch checkpoints,
evaluation). `main.evaluate`, `main.train_one_epoch` and `embedder.get_tgt_model` are wrapped only to record their
results and times; what they compute is unchanged. The run's record is written to `DIR/official/history.json`.
"""

from __future__ import annotations

import argparse
import collections
import collections.abc
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def import_official(src: str):
    """The official modules `embedder`, `main`, `task_configs`, `utils`, imported from the checkout `src`."""
    for name in ("Mapping", "MutableMapping", "Sequence"):  # attrdict 2.0.1 predates Python 3.10
        if not hasattr(collections, name):
            setattr(collections, name, getattr(collections.abc, name))
    src = str(Path(src).resolve())
    if not Path(src, "embedder.py").is_file():
        sys.exit(f"--official-src {src} has no embedder.py: give the src/ directory of a sjunhongshen/ORCA checkout.")
    sys.path.insert(0, src)
    import embedder
    import main
    import task_configs
    import utils

    if not torch.cuda.is_available():  # official save_with_path stores the CUDA RNG state
        torch.cuda.get_rng_state = lambda *a, **k: torch.empty(0, dtype=torch.uint8)
        torch.cuda.set_rng_state = lambda *a, **k: None
    return embedder, main, task_configs, utils


ROBERTA_FAMILY = ("roberta", "xlm-roberta", "camembert")


def make_replica(official_utils, transformers):
    """`Wrapper1D`, `Embeddings1D`: the official 1D classes with the width read from the body's config."""
    nn = torch.nn
    U = official_utils

    class Embeddings1D(nn.Module):
        """The official `Embeddings1D` for a text body of any width (the official one assumes 768)."""

        def __init__(self, input_shape, embed_dim, target_seq_len, config=None, dense=False, first_position=2):
            super().__init__()
            self.dense, self.embed_dim = dense, embed_dim
            self.stack_num = self.get_stack_num(input_shape[-1], target_seq_len)
            self.patched_dimensions = (int(np.sqrt(input_shape[-1] // self.stack_num)),) * 2
            self.norm = nn.LayerNorm(embed_dim)
            self.padding_idx = 1
            self.position_embeddings = nn.Embedding(target_seq_len, embed_dim, padding_idx=self.padding_idx)
            self.projection = nn.Conv1d(input_shape[1], embed_dim, kernel_size=self.stack_num, stride=self.stack_num)
            U.conv_init(self.projection)
            self.first_position = first_position

        @staticmethod
        def get_stack_num(input_len, target_seq_len):  # the official text-body rule (its 768 branch)
            for i in range(1, input_len + 1):
                if input_len % i == 0 and input_len // i <= target_seq_len:
                    break
            return i

        def forward(self, x=None, inputs_embeds=None, *args, **kwargs):
            if x is None:
                x = inputs_embeds
            x = self.norm(self.projection(x).transpose(1, 2))
            # Official: positions padding_idx + 1 = 2 onwards, whatever the body (RoBERTa's convention).
            position_ids = U.create_position_ids_from_inputs_embeds(x, self.first_position - 1)
            self.ps = self.position_embeddings(position_ids)
            return x + self.ps

    class Wrapper1D(nn.Module):
        """The official `wrapper1D` for a local text body of any width; same signature, same behaviour."""

        body_dir: str = ""
        positions: str = "official"  # or "body": the body family's own first position (orca-jax's choice)
        init_file: str | None = None

        def __init__(self, input_shape, output_shape, use_embedder=True, weight="roberta", train_epoch=0,
                     activation=None, target_seq_len=512, drop_out=None, from_scratch=False):
            super().__init__()
            self.dense, self.output_raw, self.weight, self.output_shape = False, True, weight, output_shape
            if isinstance(output_shape, tuple):
                self.dense = True
            configuration = transformers.AutoConfig.from_pretrained(self.body_dir)
            if drop_out is not None:
                configuration.hidden_dropout_prob = drop_out
                configuration.attention_probs_dropout_prob = drop_out
            self.model = (transformers.AutoModel.from_pretrained(self.body_dir, config=configuration)
                          if not from_scratch else transformers.AutoModel.from_config(configuration))
            width = configuration.hidden_size
            first = 2
            if self.positions == "body":
                first = configuration.pad_token_id + 1 if configuration.model_type in ROBERTA_FAMILY else 0
            self.embedder = Embeddings1D(input_shape, config=self.model.config, embed_dim=width,
                                         target_seq_len=target_seq_len, dense=self.dense, first_position=first)
            U.embedder_init(self.model.embeddings, self.embedder, train_embedder=train_epoch > 0)
            U.set_grad_state(self.embedder, True)
            self.model.embeddings = U.embedder_placeholder()
            if self.dense:
                self.model.pooler = nn.Identity()
                self.predictor = U.adaptive_pooler(out_channel=output_shape[-2] * self.embedder.stack_num,
                                                   output_shape=output_shape, dense=True)
            else:
                self.model.pooler = U.adaptive_pooler()
                self.predictor = nn.Linear(in_features=width, out_features=output_shape)
            if activation == "sigmoid":
                self.predictor = nn.Sequential(self.predictor, nn.Sigmoid())
            U.set_grad_state(self.model, False)
            U.set_grad_state(self.predictor, False)
            if self.init_file:
                load_initial_weights(self, self.init_file)

        def forward(self, x):
            if self.output_raw:
                return self.embedder(x)
            x = self.embedder(x)
            if self.dense:
                x = self.predictor(self.model(inputs_embeds=x)["last_hidden_state"])
            else:
                x = self.predictor(self.model(inputs_embeds=x)["pooler_output"])
            if x.shape[1] == 1 and len(x.shape) == 2:
                x = x.squeeze(1)
            return x

    return Wrapper1D, Embeddings1D


def load_initial_weights(wrapper, path: str) -> None:
    """The experiment's initial embedder (and linear head) weights, in PyTorch's layouts (`compare_official.py`
    writes them from the orca-jax model of the same seed)."""
    with np.load(path) as init:
        assigned = {
            "embedder.projection.weight": init["projection_weight"],
            "embedder.projection.bias": init["projection_bias"],
            "embedder.norm.weight": init["norm_weight"],
            "embedder.norm.bias": init["norm_bias"],
            "embedder.position_embeddings.weight": init["position_embeddings"],
        }
        if "head_weight" in init.files:
            assigned["predictor.weight"], assigned["predictor.bias"] = init["head_weight"], init["head_bias"]
    state = wrapper.state_dict()
    with torch.no_grad():
        for name, value in assigned.items():
            if tuple(state[name].shape) != value.shape:
                raise ValueError(f"init.npz {name}: shape {value.shape}, the model's is {tuple(state[name].shape)}")
            state[name].copy_(torch.from_numpy(np.ascontiguousarray(value)))


def loaders(x, y, batch_size: int, *, shuffle: bool):
    dataset = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=0)


def run_experiment(official_src: str, experiment: Path) -> dict:
    E, M, T, U = import_official(official_src)
    import transformers

    spec = json.loads((experiment / "experiment.json").read_text())
    official = spec["official"]
    data = dict(np.load(experiment / "data.npz"))
    ncl = {k: np.ascontiguousarray(np.swapaxes(v, 1, 2), np.float32) for k, v in data.items() if k.startswith("x_")}
    kind = spec["kind"]
    as_targets = (lambda y: y.astype(np.int64)) if kind != "dense_1d" else (lambda y: y.astype(np.float32))
    y = {k: as_targets(v) for k, v in data.items() if k.startswith("y_")}
    with np.load(experiment / "source.npz") as source:
        # The official code reads [N, tokens, width] token features and averages them: one token is the feature.
        src_x, src_y = source["features"][:, None, :].astype(np.float32), source["labels"].astype(np.int64)
    bs = official["batch_size"]

    def get_data(root, dataset, batch_size, valid_split, maxsize=None, get_shape=False):
        if dataset == "text":
            src = loaders(src_x[:maxsize] if maxsize else src_x, src_y[:maxsize] if maxsize else src_y, batch_size,
                          shuffle=True)
            return src, None, None, len(src), 0, 0, None
        train = loaders(ncl["x_train"], y["y_train"], batch_size, shuffle=True)
        test = loaders(ncl["x_test"], y["y_test"], batch_size, shuffle=False)
        val = loaders(ncl["x_val"], y["y_val"], batch_size, shuffle=False) if valid_split else test
        return train, val, test, len(train), len(val), len(test), None

    sample_shape = (1, *ncl["x_train"].shape[1:])
    if kind == "dense_1d":
        num_classes, loss, metric = (1, y["y_train"].shape[1]), U.nrmse_loss, U.nmse
    elif kind == "tabular":  # the official OpenML loss: cross-entropy weighted by 1 / class frequency
        num_classes = spec["num_classes"]
        weights = [1.0 / float(np.mean(y["y_train"] == c)) for c in range(num_classes)]
        loss, metric = torch.nn.CrossEntropyLoss(weight=torch.tensor(weights)), U.inverse_score(U.auc_metric)
    else:
        num_classes = spec["num_classes"]
        loss, metric = torch.nn.CrossEntropyLoss(), U.inverse_score(U.accuracy)

    def get_config(root, args):
        args.infer_label = kind == "dense_1d"  # as for every official dense task
        args.activation = None
        return 1, sample_shape, num_classes, loss, args

    Wrapper1D, _ = make_replica(U, transformers)
    Wrapper1D.body_dir, Wrapper1D.positions = spec["body"], official.get("positions", "official")
    Wrapper1D.init_file = str(experiment / "init.npz")
    E.get_data, M.get_data, M.get_config = get_data, get_data, get_config
    M.get_metric = lambda root, dataset: (metric, np.min)
    E.wrapper1D = Wrapper1D

    record = {"refine": [], "tests": [], "align": []}
    evaluate, train_one_epoch, get_tgt_model = M.evaluate, M.train_one_epoch, M.get_tgt_model
    clock = {}

    def timed_train(*a, **k):
        clock["epoch_start"] = time.perf_counter()
        loss_value = train_one_epoch(*a, **k)
        clock["train_loss"] = loss_value
        return loss_value

    def recorded_evaluate(context, args, model, loader, *a, **k):
        eval_loss, score = evaluate(context, args, model, loader, *a, **k)
        if "epoch_start" in clock:  # after a training epoch: the validation evaluation
            record["refine"].append({"epoch": len(record["refine"]) + 1, "train_loss": clock.pop("train_loss"),
                                     "val_score": float(score), "seconds": time.perf_counter() - clock["start"],
                                     "epoch_seconds": time.perf_counter() - clock.pop("epoch_start")})
        else:
            record["tests"].append(float(score))
        return eval_loss, score

    def timed_align(*a, **k):
        start = time.perf_counter()
        model, stats = get_tgt_model(*a, **k)
        record["align"] = [{"epoch": i + 1, "distance": float(s[0]), "epoch_seconds": float(s[1])}
                           for i, s in enumerate(stats)]
        record["align_seconds"] = time.perf_counter() - start
        clock["start"] = time.perf_counter()
        return model, stats

    M.evaluate, M.train_one_epoch, M.get_tgt_model = recorded_evaluate, timed_train, timed_align
    args = hyperparameters(spec)
    out = experiment / "official"
    shutil.rmtree(out, ignore_errors=True)  # the official loop resumes from results/ if it finds a checkpoint
    out.mkdir(parents=True)
    start, cwd = time.perf_counter(), os.getcwd()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    try:
        os.chdir(out)
        M.main(False, args)
    finally:
        os.chdir(cwd)
    record["seconds"] = time.perf_counter() - start
    record["refine_seconds"] = record["seconds"] - record.get("align_seconds", 0.0)
    # Officially a score is an error (1 - accuracy, 1 - AUROC); nRMSE is reported as is.
    natural = (lambda s: s) if kind == "dense_1d" else (lambda s: 1.0 - s)
    for r in record["refine"]:
        r["val_metric"] = natural(r["val_score"])
    record["test_last"], record["test_best"] = (natural(s) for s in record["tests"][-2:])
    (out / "history.json").write_text(json.dumps(record, indent=2))
    return record


def hyperparameters(spec: dict):
    """The official `hyperparameters:` section (an AttrDict, as `main.py` reads it from YAML)."""
    from attrdict import AttrDict

    o = spec["official"]
    return AttrDict({
        "dataset": spec["task"], "embedder_dataset": "text", "objective": o["objective"], "weight": "roberta",
        "maxsamples": o["maxsamples"], "target_seq_len": o["target_seq_len"], "experiment_id": 0, "seed": spec["seed"],
        "epochs": o["epochs"], "embedder_epochs": o["embedder_epochs"], "predictor_epochs": 0,
        "finetune_method": "all", "drop_out": o["drop_out"], "batch_size": o["batch_size"], "eval_batch_size": 1000,
        "accum": o["accum"], "clip": o["clip"], "validation_freq": 1,
        "optimizer": {"name": o["optimizer"], "params": {"lr": o["lr"], "betas": [0.9, 0.98],
                                                         "weight_decay": o["weight_decay"], "momentum": o["momentum"]}},
        "scheduler": {"name": "WarmupLR", "params": {"warmup_epochs": o["warmup_epochs"],
                                                     "decay_epochs": o["decay_epochs"], "sched": [30, 60, 90],
                                                     "base": 0.2}},
        "no_warmup_scheduler": {"name": "StepLR", "params": {"warmup_epochs": 10, "decay_epochs": 100,
                                                             "sched": [20, 40, 60], "base": 0.2}},
        "num_workers": 4, "reproducibility": False, "valid_split": o["valid_split"],
    })


def check_replica(official_src: str) -> None:
    """The replica is the official `wrapper1D` where the original runs: RoBERTa at width 768 (a tiny random
    checkpoint stands in for roberta-base), classification and dense heads, with and without embedder training."""
    E, _, _, U = import_official(official_src)
    import transformers

    Wrapper1D, _ = make_replica(U, transformers)
    with tempfile.TemporaryDirectory() as body_dir:
        config = transformers.RobertaConfig(vocab_size=50, hidden_size=768, num_hidden_layers=1,
                                            num_attention_heads=12, intermediate_size=64, max_position_embeddings=514)
        torch.manual_seed(0)
        transformers.RobertaModel(config).save_pretrained(body_dir)
        Wrapper1D.body_dir = body_dir

        class Hub:  # the official wrapper asks the hub for "roberta-base": the tiny checkpoint answers
            def __init__(self, real):
                self.real = real

            def from_pretrained(self, name, *a, **k):
                return self.real.from_pretrained(body_dir if name == "roberta-base" else name, *a, **k)

            def __getattr__(self, item):
                return getattr(self.real, item)

        with contextlib.ExitStack() as stack:
            for name in ("AutoConfig", "AutoModel"):
                stack.callback(setattr, E, name, getattr(E, name))
                setattr(E, name, Hub(getattr(E, name)))
            cases = [((1, 2, 40), 5, 1), ((1, 1, 64), (1, 64), 1), ((1, 3, 30), 4, 0)]
            for shape, outputs, train_epoch in cases:
                built = []
                for cls in (E.wrapper1D, Wrapper1D):
                    torch.manual_seed(1)
                    built.append(cls(shape, outputs, train_epoch=train_epoch, target_seq_len=16).eval())
                original, replica = built
                a, b = original.state_dict(), replica.state_dict()
                assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
                for key in a:
                    assert torch.equal(a[key], b[key]), key
                x = torch.randn(3, *shape[1:])
                for raw in (True, False):
                    original.output_raw = replica.output_raw = raw
                    with torch.no_grad():
                        assert torch.equal(original(x), replica(x)), (shape, outputs, raw)
                print(f"replica == official wrapper1D: input {shape}, output {outputs}, train_epoch {train_epoch}")
    print("the replica is the official wrapper1D on every case")


def main_cli(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official-src", required=True, help="src/ of a sjunhongshen/ORCA checkout")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--experiment", type=Path, help="a directory that compare_official.py prepared")
    group.add_argument("--check-replica", action="store_true")
    args = parser.parse_args(argv)
    if args.check_replica:
        check_replica(args.official_src)
        return
    record = run_experiment(args.official_src, args.experiment)
    print(json.dumps({k: record[k] for k in ("test_best", "test_last", "seconds")}))


if __name__ == "__main__":
    main_cli()
