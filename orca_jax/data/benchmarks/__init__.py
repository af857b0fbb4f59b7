"""The paper's benchmarks as registered tasks: `load_task("ecg")`, `load_task("pde_darcy")`, `load_task("openml_1510")`.

- NAS-Bench-360 (`nb360/`, a module per kind of data): cifar100, spherical, ninapro, fsd50k, darcy, psicov, cosmic,
  ecg, satellite, deepsea.
- PDEBench (`pdebench.py`): pde_advection, pde_burgers, pde_reaction_diffusion, pde_diffusion_sorption, pde_cfd_1d,
  pde_darcy, pde_shallow_water, pde_reaction_diffusion_2d, pde_cfd_2d.
- OpenML (`openml_tasks.py`): openml_<id> for the 42 ids of the paper's tabular experiments.

Registration is lazy: a task's module (and h5py, openml, scipy...) is imported when the task is loaded, so importing
`orca_jax.data` stays cheap. Files: `files.py` (layout under the data directory, URLs, checksums, errors);
`scripts/prepare_data.py` fetches and prepares them. Configs with the official hyperparameters: `configs/nb360.py`,
`configs/pdebench.py`, `configs/openml.py`.
"""

from __future__ import annotations

import importlib

from orca_jax.data.tasks import TASK_LOADERS

NB360_TASKS = ("cifar100", "spherical", "ninapro", "fsd50k", "darcy", "psicov", "cosmic", "ecg", "satellite", "deepsea")
PDEBENCH_TASKS = ("pde_advection", "pde_burgers", "pde_reaction_diffusion", "pde_diffusion_sorption", "pde_cfd_1d",
                  "pde_darcy", "pde_shallow_water", "pde_reaction_diffusion_2d", "pde_cfd_2d")
_MODULES = {"nb360": "orca_jax.data.benchmarks.nb360", "pdebench": "orca_jax.data.benchmarks.pdebench"}


class _Lazy:
    """A task loader that imports its benchmark module on the first call."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, data_dir=None):
        return importlib.import_module(self.module).LOADERS[self.name](data_dir=data_dir)


class _OpenML:
    def __init__(self, dataset_id: int):
        self.dataset_id = dataset_id

    def __call__(self, data_dir=None):
        from orca_jax.data.benchmarks.openml_tasks import load_openml

        return load_openml(self.dataset_id, data_dir=data_dir)


def _register() -> None:
    from orca_jax.data.benchmarks.openml_tasks import DATASET_IDS, task_name

    for benchmark, names in (("nb360", NB360_TASKS), ("pdebench", PDEBENCH_TASKS)):
        for name in names:
            TASK_LOADERS[name] = _Lazy(_MODULES[benchmark], name)
    for dataset_id in DATASET_IDS:
        TASK_LOADERS[task_name(dataset_id)] = _OpenML(dataset_id)


_register()
