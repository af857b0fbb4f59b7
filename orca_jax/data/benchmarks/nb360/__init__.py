"""NAS-Bench-360's ten tasks from the files its authors distribute, preprocessed and split as the official ORCA
code does (differences are listed per task).

Files live under `DATA/nb360/<task>/` (`orca_jax.data.benchmarks.files`); `scripts/prepare_data.py TASK` fetches
them. Inputs are channels last: sequences `[N, length, channels]` for RoBERTa, images `[N, H, W, channels]` for
Swin. The official code trains on the published training and validation data together and selects on the test set;
here `TaskData.train` is the same training data and `load_task` carves the validation split from it, so the test
split is evaluated once.

| task | file(s) | input | target | notes |
|---|---|---|---|---|
| cifar100 | cifar-100-python.tar.gz (pickles) | 32x32x3, CIFAR-100 mean/std | 100 classes | crop + flip in training |
| spherical | s2_cifar100.gz (gzip pickle) | 60x60x3, /255 | 100 classes | |
| ninapro | ninapro_*.npy, label_*.npy | 16x52x1 | 18 classes | train + val train |
| fsd50k | audio.zip (1 s wav chunks, manifests) | 96x102x1 log-mel | 200 labels | prepared features |
| darcy | piececonst_r421_N1024_smooth{1,2}.mat | 85x85x3 (coefficient, grid) | 85x85 solution | |
| psicov | protein.zip (pickles, npy) | 512x512x57 pair features | 512x512 distances | lazy; lengths meta |
| cosmic | deepCR.ACS-WFC.{train,test}.tar (npy) | 128x128x1 | 128x128 mask | prepared crops |
| ecg | challenge2017.pkl | 1000x1 windows | 4 classes | |
| satellite | satellite_{train,test}.npy (pickled dicts) | 46x1 | 24 classes | |
| deepsea | deepsea_filtered.npz | 1000x4 one-hot | 36 labels | train + val train |
"""

from orca_jax.data.benchmarks.nb360.cosmic import load_cosmic, prepare_cosmic
from orca_jax.data.benchmarks.nb360.fsd50k import load_fsd50k, prepare_fsd50k
from orca_jax.data.benchmarks.nb360.images import load_cifar100, load_darcy, load_spherical
from orca_jax.data.benchmarks.nb360.psicov import load_psicov
from orca_jax.data.benchmarks.nb360.signals import load_deepsea, load_ecg, load_ninapro, load_satellite

LOADERS = {
    "cifar100": load_cifar100, "spherical": load_spherical, "ninapro": load_ninapro, "fsd50k": load_fsd50k,
    "darcy": load_darcy, "psicov": load_psicov, "cosmic": load_cosmic, "ecg": load_ecg,
    "satellite": load_satellite, "deepsea": load_deepsea,
}
PREPARE = {"cosmic": prepare_cosmic, "fsd50k": prepare_fsd50k}  # steps after download and unpacking
