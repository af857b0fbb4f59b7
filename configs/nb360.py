"""NAS-Bench-360 with the official ORCA hyperparameters, one variant per task (`configs/nb360.py:TASK`).

    python scripts/prepare_data.py ecg --data_dir DATA          # once: fetch / prepare the files (or say where)
    python scripts/train.py --config=configs/nb360.py:ecg --config.task.data_dir=DATA --workdir=workdirs/ecg
    python scripts/train.py --config=configs/nb360.py:ecg,smoke --config.task.data_dir=DATA \\
        --config.body.checkpoint=SMALL_BODY_DIR --workdir=/tmp/smoke    # tiny run: offline sources, 16 examples

Tasks: cifar100, spherical, ninapro, fsd50k, darcy, psicov, cosmic (Swin-base, aligned to CIFAR-10 features), ecg,
satellite, deepsea (RoBERTa-base, aligned to CoNLL-2003 features). Data: orca_jax/data/benchmarks/nb360/.
Batch sizes are the official single-GPU ones; on more devices they are padded with masked rows, so every update is
the official one.

Metrics are computed honestly over whole splits; where the official number differs, it stays computable:
- psicov: MAE8 with each protein's own length (`psicov_mae8`). The official code scores every protein on the
  first protein's length (`--config.task.metric=psicov_mae8_official`). Training targets clipped at 16 A.
- cosmic: AUROC of the pixel scores without the ignored pixels (`pixel_auroc`); the official thresholds outputs
  at 0 first and counts ignored pixels as correct negatives (`--config.task.metric=pixel_auroc_thresholded`).
  Ignored pixels get no gradient, as officially (`task.ignore_meta`: outputs and targets multiplied by
  1 - ignore). One difference from the official training: the sky-background augmentation is not applied (a
  training transform sees no per-example sky level).
- fsd50k: clip-level mAP (mean logits over a clip's chunks); ecg: macro-F1 over the whole test split (officially
  means of 1000-window chunks); deepsea: mean AUROC on scores.
- darcy: targets normalised per grid point and decoded before loss and metric (`task.normalize_targets`), as
  officially.
"""

from orca_jax.official_configs import Official, official_config, parse_variant

# task: body, epochs, align_epochs, batch_size, accum, clip, optimizer, lr, weight_decay, momentum, warmup, decay,
# then maxsamples and target_seq_len where they are not 128 and 512 (src/configs/<task>.yaml of the official code)
OFFICIAL = {
    "cifar100": Official("swin", 60, 60, 32, 32, -1, "SGD", 1e-4, 1e-3, 0.9, 5, 200),
    "spherical": Official("swin", 60, 60, 32, 4, -1, "AdamW", 1e-4, 0.1, 0.999, 5, 60),
    "ninapro": Official("swin", 60, 100, 32, 1, 1, "Adam", 1e-4, 1e-5, 0.999, 5, 60),
    "fsd50k": Official("swin", 100, 60, 32, 1, -1, "Adam", 1e-4, 5e-5, 0.9, 5, 100),
    "darcy": Official("swin", 100, 60, 4, 1, -1, "AdamW", 1e-3, 5e-3, 0.9, 5, 100),
    "psicov": Official("swin", 10, 60, 1, 32, -1, "Adam", 5e-6, 1e-5, 0.99, 5, 100, maxsamples=64),
    "cosmic": Official("swin", 60, 60, 4, 1, -1, "AdamW", 1e-3, 0.0, 0.99, 5, 60),
    "ecg": Official("roberta", 15, 60, 4, 16, -1, "SGD", 1e-6, 0.1, 0.99, 5, 200, target_seq_len=64),
    "satellite": Official("roberta", 60, 60, 16, 4, -1, "AdamW", 3e-5, 3e-6, 0.9, 5, 60),
    "deepsea": Official("roberta", 13, 60, 16, 1, 1, "Adam", 1e-5, 0.0, 0.99, 10, 25, maxsamples=64),
}
# The official loss options (config.task fields) and evaluation batch sizes that differ from the default.
TASK_OPTIONS = {
    "darcy": dict(normalize_targets="elementwise"),
    "psicov": dict(clip_targets=16.0),
    "cosmic": dict(ignore_meta="ignore"),
    "deepsea": dict(pos_weight=4.0),
    "fsd50k": dict(pos_weight=10.0),
}
EVAL_BATCH_SIZE = {"psicov": 8}  # 512 x 512 x 57 inputs: 60 MB each
SMOKE_TRAIN_SIZE = {"cifar100": 64, "spherical": 64}  # 100 classes: enough examples for some class to have two


def get_config(arg=None):
    task, smoke = parse_variant(arg, list(OFFICIAL), "ecg", "configs/nb360.py")
    return official_config(task, OFFICIAL[task], smoke=smoke, eval_batch_size=EVAL_BATCH_SIZE.get(task, 64),
                           smoke_train_size=SMOKE_TRAIN_SIZE.get(task, 16), **TASK_OPTIONS.get(task, {}))
