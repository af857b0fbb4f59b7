"""The 42 OpenML datasets of ORCA's tabular experiments with the official hyperparameters (`configs/openml.py:ID`).

    python scripts/prepare_data.py openml_1510 --data_dir DATA      # once: the openml package fills DATA/openml
    python scripts/train.py --config=configs/openml.py:1510 --config.task.data_dir=DATA --workdir=workdirs/1510
    python scripts/train.py --config=configs/openml.py:1510,smoke --config.task.data_dir=DATA \\
        --config.body.checkpoint=SMALL_BODY_DIR --workdir=/tmp/smoke    # tiny run: offline source, 16 examples

RoBERTa-base aligned to CoNLL-2003 features for 20 align epochs; cross-entropy weighted by 1 / class frequency and
AUROC (one-vs-one for more than two classes), as officially. Preprocessing: orca_jax/data/benchmarks/openml_tasks.py.
Differences: the 90/10 split is stratified with a fixed seed (officially unseeded, cached on first use), and AUROC
is computed over the whole test split (officially a mean over 1000-example chunks). Batch sizes are the official
single-GPU ones; on more devices they are padded with masked rows, so every update is the official one.
"""

from orca_jax.official_configs import Official, official_config, parse_variant

# id: target_seq_len, maxsamples, epochs, batch_size, optimizer, lr, weight_decay, momentum, dropout, clip, warmup,
# decay (src/configs/OPENML<id>.yaml of the official code; all: 20 align epochs, accum 1)
OFFICIAL = {
    11: (16, 128, 60, 4, "AdamW", 1e-06, 1e-05, 0.99, 0, 1, 5, 60),
    12: (8, 128, 60, 64, "AdamW", 1e-05, 1e-05, 0.99, 0.05, 1, 5, 60),
    14: (512, 128, 25, 4, "Adam", 1e-05, 1e-05, 0.99, 0.05, -1, 5, 60),
    15: (512, 128, 20, 4, "SGD", 0.0001, 0.1, 0.99, 0.05, 1, 5, 60),
    16: (512, 128, 60, 64, "AdamW", 1e-05, 1e-05, 0.999, 0.05, -1, 5, 60),
    18: (512, 128, 60, 4, "Adam", 1e-05, 0.001, 0.999, 0.05, -1, 5, 60),
    22: (512, 128, 60, 32, "SGD", 0.0001, 0.1, 0.99, 0, -1, 5, 60),
    23: (4, 64, 25, 64, "Adam", 1e-05, 0, 0.999, 0.1, 1, 5, 60),
    28: (512, 128, 60, 4, "SGD", 0.0001, 0, 0.999, 0, 1, 5, 60),
    29: (4, 128, 12, 64, "AdamW", 1e-05, 1e-05, 0.999, 0.05, 1, 5, 60),
    31: (8, 128, 20, 64, "Adam", 1e-05, 0.001, 0.999, 0.05, 1, 5, 20),
    37: (512, 128, 20, 64, "Adam", 1e-05, 0, 0.999, 0.1, 1, 5, 60),
    44: (512, 128, 40, 4, "AdamW", 1e-06, 1e-05, 0.999, 0.05, 1, 10, 100),
    48: (4, 128, 60, 64, "AdamW", 1e-05, 1e-05, 0.999, 0.05, 1, 5, 60),
    50: (512, 128, 30, 64, "Adam", 1e-06, 0, 0.999, 0.05, 1, 5, 60),
    54: (512, 128, 60, 4, "Adam", 0.001, 0.001, 0.999, 0.05, 1, 5, 60),
    61: (512, 128, 60, 4, "Adam", 0.001, 0.001, 0.999, 0.05, 1, 5, 60),
    187: (512, 128, 20, 4, "AdamW", 1e-06, 1e-05, 0.999, 0.05, 1, 5, 60),
    188: (16, 128, 60, 64, "Adam", 0.0001, 0.1, 0.99, 0.05, 1, 5, 60),
    458: (512, 128, 60, 32, "SGD", 0.0001, 1e-05, 0.99, 0, -1, 10, 60),
    469: (512, 128, 10, 64, "Adam", 1e-06, 0, 0.999, 0.05, 1, 5, 60),
    882: (512, 128, 60, 4, "SGD", 0.001, 0.001, 0.99, 0, 1, 5, 60),
    1049: (512, 512, 60, 32, "SGD", 0.0001, 0.1, 0.99, 0, -1, 10, 60),
    1050: (512, 128, 60, 64, "Adam", 1e-05, 0, 0.999, 0.05, 1, 5, 60),
    1063: (16, 128, 40, 64, "Adam", 0.0001, 0.1, 0.99, 0.1, 1, 5, 60),
    1068: (512, 128, 44, 32, "SGD", 0.0001, 1e-05, 0.99, 0, -1, 5, 60),
    1462: (512, 128, 60, 32, "SGD", 0.0001, 1e-05, 0.99, 0, -1, 5, 60),
    1464: (16, 128, 60, 64, "AdamW", 1e-05, 0.001, 0.999, 0.05, 0.1, 5, 60),
    1479: (16, 128, 60, 4, "AdamW", 1e-06, 1e-05, 0.99, 0, 1, 5, 60),
    1480: (512, 128, 60, 64, "AdamW", 1e-06, 1e-05, 0.99, 0.05, 1, 5, 60),
    1491: (512, 128, 30, 16, "Adam", 0.0001, 0.001, 0.99, 0, 1, 5, 60),
    1493: (512, 128, 30, 16, "Adam", 0.0001, 0.001, 0.99, 0, 1, 5, 60),
    1494: (512, 128, 60, 4, "Adam", 1e-06, 0.001, 0.99, 0.05, -1, 5, 60),
    1510: (16, 128, 60, 64, "AdamW", 1e-05, 1e-05, 0.999, 0, 0.1, 5, 60),
    1511: (512, 128, 60, 4, "AdamW", 1e-06, 1e-05, 0.999, 0.05, 1, 5, 60),
    6332: (16, 128, 60, 64, "AdamW", 1e-05, 0.001, 0.999, 0.05, 1, 5, 60),
    23381: (16, 128, 25, 32, "SGD", 1e-05, 0.001, 0.99, 0.05, 1, 5, 60),
    40496: (512, 128, 30, 4, "AdamW", 1e-06, 1e-05, 0.999, 0.05, 1, 5, 60),
    40966: (8, 128, 60, 64, "AdamW", 0.0001, 0, 0.99, 0.05, 1, 5, 60),
    40975: (16, 128, 60, 64, "AdamW", 0.0001, 0, 0.99, 0.05, 1, 5, 60),
    40982: (512, 128, 60, 16, "SGD", 0.0001, 1e-05, 0.999, 0.05, 1, 5, 60),
    40994: (512, 128, 60, 32, "SGD", 0.0001, 0.1, 0.99, 0, -1, 5, 60),
}
ALIGN_EPOCHS = 20


def official(dataset_id: int) -> Official:
    tsl, maxsamples, epochs, batch, optimizer, lr, wd, momentum, dropout, clip, warmup, decay = OFFICIAL[dataset_id]
    return Official("roberta", epochs, ALIGN_EPOCHS, batch, 1, clip, optimizer, lr, wd, momentum, warmup, decay,
                    maxsamples=maxsamples, target_seq_len=tsl, dropout=dropout)


def get_config(arg=None):
    variant, smoke = parse_variant(arg, [str(i) for i in OFFICIAL], "1510", "configs/openml.py")
    return official_config(f"openml_{variant}", official(int(variant)), smoke=smoke)
