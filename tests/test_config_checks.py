"""check_config: every mistake a new user makes is one line naming the field, the value as set and the fix, all of
them in one error, before anything is built; every shipped config passes."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orca_jax.config import base_config, load_config_file
from orca_jax.config_checks import ConfigError, check_config
from orca_jax.parallel import make_mesh

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^[a-z0-9_.]+=.+?: .+; .+")  # field=value: what is wrong; the fix


def snapshot(path: Path, model_type: str) -> str:
    """A checkpoint directory as far as the check reads it: its config.json."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": model_type}))
    return str(path)


@pytest.fixture
def config(tmp_path):
    """Both stages on, a text body on disk, a text source: valid as it stands."""
    c = base_config()
    c.body.checkpoint = snapshot(tmp_path / "text_body", "roberta")
    c.source.name = "python_docs"
    c.refine.epochs = 10
    return c


def problems(config, devices=8) -> list[str]:
    try:
        check_config(config, devices=devices)
    except ConfigError as error:
        return list(error.problems)
    return []


def with_overrides(config, overrides: dict):
    config.update_from_flattened_dict(overrides)
    return config


def test_the_fixture_is_valid(config):
    assert problems(config) == []


# (overrides, the line's start: field=value and what is wrong, its fix)
CASES = [
    # negative epochs skipped a stage silently
    ({"align.epochs": -1}, "align.epochs=-1: must be an integer >= 0", "set 0 to skip the align stage"),
    ({"refine.epochs": -1}, "refine.epochs=-1: must be an integer >= 0", "set 0 to skip the refine stage"),
    # batch sizes: a ZeroDivisionError in the sampler, misleading advice, or a failure after the align stage
    ({"batch_size": 0}, "batch_size=0: must be an integer >= 1", "set the examples per batch, e.g. 32"),
    ({"batch_size": -8}, "batch_size=-8: must be an integer >= 1", "set the examples per batch"),
    ({"eval_batch_size": 0}, "eval_batch_size=0: must be an integer >= 1", "e.g. 256"),
    # checkpoint intervals failed only after an epoch had trained
    ({"refine.checkpoint_every": 0}, "refine.checkpoint_every=0: must be an integer >= 1",
     "set the epochs between checkpoints"),
    ({"align.checkpoint_every": 0}, "align.checkpoint_every=0: must be an integer >= 1",
     "set the epochs between checkpoints"),
    # names, from their owners' registries
    ({"align.objective": "otdd"}, "align.objective='otdd': unknown", "use one of l2, mmd, none, otdd-exact, otdd-gaussian"),
    ({"align.objective": "none"}, "align.objective='none': means no align stage", "set align.epochs=0"),
    ({"align.solver": "anealed"}, "align.solver='anealed': unknown", "did you mean 'annealed'? use one of annealed"),
    ({"optimizer.name": "adamx"}, "optimizer.name='adamx': unknown", "use one of adam, adamw, sgd"),
    ({"refine.finetune_method": "none"}, "refine.finetune_method='none': unknown", "use one of all, frozen-body"),
    ({"task.kind": "clasification"}, "task.kind='clasification': unknown",
     "did you mean 'classification'? use one of classification,"),
    ({"task.loss": "ce"}, "task.loss='ce': unknown", "or '' for the kind's loss"),
    ({"task.metric": "acc"}, "task.metric='acc': unknown", "or '' for the kind's metric"),
    ({"task.class_weighting": "inverse"}, "task.class_weighting='inverse': unknown", "use one of inverse_frequency"),
    ({"task.normalize_targets": "yes"}, "task.normalize_targets='yes': unknown", "use one of elementwise, global"),
    ({"refine.select": "bets"}, "refine.select='bets': unknown", "did you mean 'best'? use one of best, last"),
    ({"body.dtype": "fp16"}, "body.dtype='fp16': unknown", "use one of bfloat16, float32"),
    ({"head.dense_1d": "mlp"}, "head.dense_1d='mlp': unknown", "use one of linear, pool"),
    ({"task.name": "mnist"}, "task.name='mnist': unknown", "did you mean 'mnist1d'? use a registered task"),
    ({"task.name": "npy:x.npy"}, "task.name='npy:x.npy': Unknown task scheme 'npy'", "use npz:PATH or tfds:NAME"),
    ({"task.name": "npz:"}, "task.name='npz:': names no data after the colon", "e.g. npz:data.npz"),
    ({"source.name": "cifar"}, "source.name='cifar': unknown", "did you mean 'cifar10'?"),
    # ranges
    ({"seed": -1}, "seed=-1: must be an integer >= 0", "use e.g. 0"),
    ({"task.val_fraction": 1.0}, "task.val_fraction=1.0: must be in (0, 1)", "e.g. 0.1"),
    ({"task.test_fraction": 0.0}, "task.test_fraction=0.0: must be in (0, 1)", "e.g. 0.2"),
    ({"task.train_size": -1}, "task.train_size=-1: must be an integer >= 0", "set 0 to train on all"),
    ({"task.num_classes": -1}, "task.num_classes=-1: must be an integer >= 0", "set 0 to count the classes"),
    ({"task.pos_weight": float("nan")}, "task.pos_weight=nan: must be a finite number", "<= 0 for none"),
    ({"data.threads": 0}, "data.threads=0: must be an integer >= 1", "e.g. 2"),
    ({"data.prefetch": 0}, "data.prefetch=0: must be an integer >= 1", "e.g. 4"),
    ({"data.workers": -1}, "data.workers=-1: must be an integer >= 0", "set 0 to read in this process"),
    ({"body.dropout": 1.0}, "body.dropout=1.0: must be in [0, 1)", "a negative rate keeps the checkpoint's own"),
    ({"embedder.target_seq_len": 0}, "embedder.target_seq_len=0: must be an integer >= 1", "(official 512)"),
    ({"source.size": 1}, "source.size=1: must be an integer >= 2", "at least two examples"),
    ({"source.seed": -3}, "source.seed=-3: must be an integer >= 0", "use e.g. 0"),
    ({"optimizer.learning_rate": -1e-4}, "optimizer.learning_rate=-0.0001: must be in [0, inf)", "e.g. 1e-4"),
    ({"optimizer.weight_decay": -0.1}, "optimizer.weight_decay=-0.1: must be in [0, inf)", "set 0 for none"),
    ({"optimizer.momentum": 1.0}, "optimizer.momentum=1.0: must be in [0, 1)", "official: momentum"),
    ({"optimizer.b1": -0.1}, "optimizer.b1=-0.1: must be in [0, 1)", "b1 0.9"),
    ({"optimizer.b2": 1.0}, "optimizer.b2=1.0: must be in [0, 1)", "b2 0.98"),
    ({"optimizer.eps": 0.0}, "optimizer.eps=0.0: must be in (0, inf)", "e.g. 1e-8"),
    ({"align.epsilon": 0.0}, "align.epsilon=0.0: must be in (0, inf)", "(official 0.1)"),
    ({"align.maxsamples": 0}, "align.maxsamples=0: must be an integer >= 1", "(official 256)"),
    ({"align.lr_multiplier": 0.0}, "align.lr_multiplier=0.0: must be in (0, inf)", "(official 10)"),
    ({"align.milestones": (40, 20)}, "align.milestones=(40, 20): must be epochs (integers >= 0) in increasing order",
     "e.g. (20, 40, 60)"),
    ({"align.milestones": (-1, 20)}, "align.milestones=(-1, 20): must be epochs", "or () for a constant rate"),
    ({"align.gamma": 0.0}, "align.gamma=0.0: must be in (0, 1]", "(official 0.2)"),
    ({"align.gamma": 1.5}, "align.gamma=1.5: must be in (0, 1]", "(official 0.2)"),
    ({"refine.accum": 0}, "refine.accum=0: must be an integer >= 1", "1 for none"),
    ({"refine.warmup_epochs": -1}, "refine.warmup_epochs=-1: must be in [0, inf)", "set 0 for no warm-up"),
    ({"refine.decay_epochs": 5}, "refine.decay_epochs=5: must be greater than refine.warmup_epochs=5",
     "set it above the warm-up"),
    ({"refine.finetune_method": "lora", "refine.lora.rank": 0}, "refine.lora.rank=0: must be an integer >= 1",
     "e.g. 8"),
    ({"refine.finetune_method": "lora", "refine.lora.targets": "qkv,query"}, "refine.lora.targets='qkv,query': "
     "names ['query']", "subset of qkv,out,mlp_in,mlp_out"),
    ({"refine.pare.enabled": True, "refine.pare.end_fraction": 0.8}, "refine.pare.end_fraction=0.8: must not exceed",
     "fewer tokens"),
    ({"refine.pare.enabled": True, "refine.pare.tau": 0.0}, "refine.pare.tau=0.0: must be in (0, inf)", "e.g. 0.9"),
    ({"align.label_matching.epochs": 3, "align.label_matching.rho": -1.0},
     "align.label_matching.rho=-1.0: must be in [0, inf)", "or 0 for none"),
    ({"align.epochs": 0, "align.objective": "none", "align.label_matching.epochs": 3},
     "align.label_matching.epochs=3: is label matching after feature matching", "set align.epochs > 0"),
    ({"mesh.min_shard_bytes": -1}, "mesh.min_shard_bytes=-1: must be an integer >= 0", "default 1 MiB"),
    # the mesh, in the values the user set
    ({"mesh.fsdp": 3}, "mesh.fsdp=3: does not divide the device count, 8, which mesh.data=-1 would share out",
     "set mesh.fsdp to a divisor of 8 (1, 2, 4, 8)"),
    ({"mesh.data": 2, "mesh.fsdp": 2}, "mesh.data=2, mesh.fsdp=2: 2 x 2 = 4 devices, but the device count is 8",
     "choose sizes whose product is 8, or -1 for one of them"),
    ({"mesh.fsdp": -1}, "mesh.data=-1, mesh.fsdp=-1: at most one axis may be -1", "e.g. mesh.fsdp=1"),
    ({"mesh.data": 0}, "mesh.data=0: not a mesh size", "or -1 for all remaining devices"),
    ({"mesh.rules": (".*", "fsdp")}, "mesh.rules=('.*', 'fsdp'): sharding rules are (regex, rule) pairs",
     "A single pair still needs the outer tuple"),
    ({"mesh.rules": ((".*", "fsd"),)}, "mesh.rules=(('.*', 'fsd'),): sharding rule 'fsd' for '.*' is not",
     "the rule forms are in orca_jax/parallel/sharding.py"),
    ({"mesh.rules": ((".*", ("model",)),)}, "mesh.rules=(('.*', ('model',)),): sharding rule ('model',) for '.*' "
     "names axes ['model']", "the rule forms are in"),
]


@pytest.mark.parametrize("overrides, start, fix", CASES, ids=[" ".join(map(str, c[0].items())) for c in CASES])
def test_each_mistake_is_one_line_naming_field_value_and_fix(config, overrides, start, fix):
    found = problems(with_overrides(config, overrides))
    assert len(found) == 1, found
    line = found[0]
    assert line.startswith(start), line
    assert fix in line.partition("; ")[2], line
    assert LINE.match(line), line


def test_the_device_count_defaults_to_this_run(config):
    config.mesh.fsdp = 3  # the tests run on 8 devices (conftest.py)
    with pytest.raises(ConfigError, match="mesh.fsdp=3: does not divide the device count, 8"):
        check_config(config)


def test_batch_sizes_need_not_divide_over_the_devices(config):
    config.batch_size, config.eval_batch_size = 4, 100  # padded with masked rows to 8 and 104 (data/loader.py)
    assert problems(config, devices=8) == []


def test_mesh_messages_never_name_a_resolved_size(config):
    (line,) = problems(with_overrides(config, {"mesh.data": -1, "mesh.fsdp": 3}))
    assert "data=2" not in line and "fsdp=-1" not in line and "mesh.data=-1" in line
    with pytest.raises(ValueError) as error:
        make_mesh(-1, 3)  # make_mesh's own error is the same line
    assert str(error.value).startswith("mesh.fsdp=3: does not divide the device count, 8, which mesh.data=-1")


def test_the_source_must_fit_the_body(config, tmp_path):
    config.body.checkpoint = snapshot(tmp_path / "swin_body", "swin")
    assert problems(config) == [
        "source.name='python_docs': a text source, which the image body of body.checkpoint cannot embed; use one of "
        "cifar10, digits"
    ]
    config.source.name = "digits"
    assert problems(config) == []
    config.embedder.norm = False  # the sequence embedder's option
    assert problems(config) == ["embedder.norm=False: applies to sequence inputs of text bodies; Swin's patch "
                                "embedding keeps its norm (set embedder.norm=True)"]


def test_checkpoints_that_cannot_be_a_body(config, tmp_path):
    config.body.checkpoint = snapshot(tmp_path / "gpt", "gpt2")
    (line,) = problems(config)
    assert line.startswith(f"body.checkpoint='{tmp_path / 'gpt'}': its config.json has model_type='gpt2', which "
                           "orca-jax cannot load; use a checkpoint of one of ")
    config.body.checkpoint = str(tmp_path / "missing")
    (line,) = problems(config)
    assert line.startswith(f"body.checkpoint='{tmp_path / 'missing'}': ") and "pass a snapshot directory" in line
    config.body.checkpoint = "not a/hub//id"
    (line,) = problems(config)
    assert line.startswith("body.checkpoint='not a/hub//id': neither a directory nor a valid hub id")
    config.body.checkpoint = "some-org/not-downloaded-yet"  # the run fetches it; nothing to check before
    assert problems(config) == []


def test_values_of_the_wrong_type_are_named(config):
    config.batch_size = True  # ml_collections lets booleans and None into int fields
    config.align.maxsamples = None
    assert problems(config) == [
        "batch_size=True: must be an integer >= 1; set the examples per batch, e.g. 32",
        "align.maxsamples=None: must be an integer >= 1; set the examples a class draws per epoch (official 256)",
    ]


def test_official_semantics_are_not_rejected(config):
    """Decay that ends before training does (the schedule then stays at 0), no milestones, gamma 1, a zero learning
    rate, the checkpoint's dropout, an optimizer name in capitals (the optimizers fold case), a scheme task."""
    with_overrides(config, {"refine.epochs": 10, "refine.warmup_epochs": 1, "refine.decay_epochs": 4,
                            "align.milestones": (), "align.gamma": 1.0, "optimizer.learning_rate": 0.0,
                            "body.dropout": -1.0, "optimizer.name": "AdamW", "task.name": "npz:data.npz",
                            "task.kind": "dense_1d", "task.loss": "", "mesh.data": 2, "mesh.fsdp": 4})
    assert problems(config) == []


def test_a_stage_that_does_not_run_is_not_held_to_what_only_it_uses(config, tmp_path):
    with_overrides(config, {"align.epochs": 0, "align.objective": "none", "source.name": "nope", "align.gamma": 0.0,
                            "refine.epochs": 0, "refine.checkpoint_every": 0, "eval_batch_size": 0, "batch_size": 12,
                            "refine.select": "bets"})
    config.body.checkpoint = snapshot(tmp_path / "swin_body", "swin")  # and a body the source would not fit
    assert problems(config) == []


def test_every_problem_comes_in_one_error(config):
    with_overrides(config, {"align.epochs": -1, "batch_size": 0, "refine.checkpoint_every": 0, "align.solver": "x",
                            "mesh.fsdp": 3, "task.val_fraction": 0.0, "body.dtype": "half"})
    with pytest.raises(ConfigError) as error:
        check_config(config, devices=8)
    assert isinstance(error.value, ValueError)
    fields = {line.partition("=")[0] for line in error.value.problems}
    assert fields == {"align.epochs", "batch_size", "refine.checkpoint_every", "align.solver", "mesh.fsdp",
                      "task.val_fraction", "body.dtype"}
    message = str(error.value)
    assert message.startswith("The config has 7 problem(s):\n  - ")
    assert all(f"\n  - {line}" in message for line in error.value.problems)
    assert all(LINE.match(line) for line in error.value.problems), error.value.problems


def shipped_configs():
    """Every config file with every variant its unknown-variant error lists, and the default."""
    for path in sorted((ROOT / "configs").glob("*.py")):
        with pytest.raises(ValueError, match="known: ") as error:
            load_config_file(path, "no-such-variant")
        variants = re.search(r"known: (.*)\.$", str(error.value)).group(1).split(", ")
        yield from ((path, variant) for variant in [None, *variants])


@pytest.mark.parametrize("devices", [1, 8])
def test_every_shipped_config_passes(devices):
    checked = []
    for path, variant in shipped_configs():
        config = load_config_file(path, variant)
        assert problems(config, devices=devices) == [], (path.name, variant)
        checked.append(f"{path.stem}:{variant}")
    assert {"demo:no_align", "demo:smoke", "digits:smoke", "mnist1d:smoke", "own_data:offline"} <= set(checked)


@pytest.mark.slow  # a Python start-up that imports the pipeline: 5-15 s on 2 busy cores
def test_the_command_line_stops_before_any_work_with_the_message(tmp_path):
    workdir = tmp_path / "work"
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "scripts/train.py", "--config=configs/demo.py:smoke", f"--workdir={workdir}",
         "--config.batch_size=0", "--config.refine.checkpoint_every=0", "--config.mesh.fsdp=3"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    seconds = time.perf_counter() - start
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "The config has 3 problem(s):" in result.stderr
    for line in ("batch_size=0: must be an integer >= 1", "refine.checkpoint_every=0: must be an integer >= 1",
                 "mesh.fsdp=3: does not divide the device count, 8, which mesh.data=-1 would share out"):
        assert f"  - {line}" in result.stderr
    assert not workdir.exists()  # pipeline.run's first act is creating it: nothing ran
    assert seconds < 60, seconds  # imports only (a few seconds on an idle machine)
