"""Fetches and prepares what a benchmark task needs: `python scripts/prepare_data.py TASK [TASK ...] --data_dir DIR`.

TASK is a task (`ecg`, `pde_darcy`, `openml_1510`...; see orca_jax/data/benchmarks), a whole benchmark (`nb360`,
`pdebench`, `openml`), or a source set (`conll2003`, `cifar10`, through tensorflow-datasets, which needs
TensorFlow to prepare them once). For each task it
- checks the files already in DIR (MD5 where the publisher gives one; PDEBench and CIFAR-100 do) and stops at a
  wrong one, naming it;
- downloads the missing ones from the publisher (`orca_jax/data/benchmarks/files.py` lists every URL), unpacks
  archives, and writes the prepared arrays that Cosmic and FSD50K's loaders read (crops, log-mel features);
- without network (or with `--offline`), lists which file to put where and exits with status 1.
OpenML datasets go through the `openml` package into DIR/openml. Then train with
`--config.task.data_dir=DIR` (or set $ORCA_JAX_DATA=DIR).
"""

from __future__ import annotations

import argparse
import socket
import sys
import urllib.error
from pathlib import Path

from orca_jax.data.benchmarks import NB360_TASKS, PDEBENCH_TASKS
from orca_jax.data.benchmarks.files import REMOTES, CorruptFile, check_download, data_root, download, unpack
from orca_jax.data.benchmarks.openml_tasks import DATASET_IDS, fetch_dataset, task_name

SOURCE_SETS = ("conll2003", "cifar10")
BENCHMARKS = {"nb360": NB360_TASKS, "pdebench": PDEBENCH_TASKS, "openml": tuple(task_name(i) for i in DATASET_IDS)}
MIRROR_NOTE = ("NAS-Bench-360 files: if the S3 links are gone, the NAS-Bench-360 README (github.com/rtu715/"
               "NAS-Bench-360) links a shared-drive mirror with the same file names.")
_OFFLINE_ERRORS = (urllib.error.URLError, socket.timeout, ConnectionError)


class Offline(Exception):
    """No network: the caller lists what to put where."""


def _fetch_remotes(task: str, data_dir: Path, offline: bool) -> list[str]:
    """Downloads, checks and unpacks the task's files; returns 'URL -> PATH' lines for the files it could not get."""
    missing = []
    for remote in REMOTES.get(task, ()):
        path = data_dir / remote.path
        if not path.exists():
            if offline:
                missing.append(f"  {remote.url}\n    -> {path}")
                continue
            print(f"{task}: downloading {remote.url} -> {path}", flush=True)
            try:
                download(remote, path)
            except _OFFLINE_ERRORS as error:
                raise Offline(str(error)) from error
        check_download(task, remote, path, data_dir)
        marker = path.with_name(path.name + ".unpacked")
        if remote.unpack and not marker.exists():
            print(f"{task}: unpacking {path}", flush=True)
            try:
                unpack(path)
            except (OSError, EOFError, ValueError) as error:
                raise CorruptFile(f"Task {task!r}: {path} cannot be unpacked ({type(error).__name__}: {error}); "
                                  f"delete it and run `python scripts/prepare_data.py {task} --data_dir {data_dir}`.")
            marker.touch()
    return missing


def _prepare_task(task: str, data_dir: Path, offline: bool) -> list[str]:
    if task.startswith("openml_"):
        dataset_id = int(task.removeprefix("openml_"))
        try:
            fetch_dataset(dataset_id, data_dir, download=False)
            return []
        except FileNotFoundError:
            if offline:
                return [f"  OpenML dataset {dataset_id} (https://www.openml.org/d/{dataset_id}) through the openml "
                        f"package, into its cache\n    -> {data_dir / 'openml'}"]
        print(f"{task}: fetching OpenML dataset {dataset_id} into {data_dir / 'openml'}", flush=True)
        try:
            fetch_dataset(dataset_id, data_dir, download=True)
        except Exception as error:  # openml raises its own and requests' connection errors
            raise Offline(f"{type(error).__name__}: {error}") from error
        return []
    missing = _fetch_remotes(task, data_dir, offline)
    if not missing and task in ("cosmic", "fsd50k"):
        from orca_jax.data.benchmarks import nb360

        prepared = data_dir / "nb360" / task / "prepared"
        if not (prepared / ("test_image.npy" if task == "cosmic" else "background.npz")).exists():
            print(f"{task}: writing the prepared arrays under {prepared}", flush=True)
            nb360.PREPARE[task](data_dir)
    return missing


def _prepare_source(name: str, data_dir: Path, offline: bool) -> None:
    """Builds a tensorflow-datasets source set under DIR/tensorflow_datasets (needs TensorFlow and the network)."""
    import importlib.util

    tfds_dir = data_dir / "tensorflow_datasets"
    if importlib.util.find_spec("tensorflow") is None:
        raise ImportError(f"{name}: preparing a tensorflow-datasets source needs TensorFlow (`pip install -e "
                          "'.[data]'`, CPU is enough); the offline sources python_docs and digits need nothing.")
    if offline:
        raise Offline(f"{name}: tensorflow-datasets downloads it from its publisher")
    import tensorflow_datasets as tfds

    tfds.builder(name, data_dir=str(tfds_dir)).download_and_prepare()
    print(f"{name}: prepared in {tfds_dir}; train with --config.source.data_dir={tfds_dir}")


def _expand(names: list[str]) -> list[str]:
    known = {*NB360_TASKS, *PDEBENCH_TASKS, *BENCHMARKS["openml"], *SOURCE_SETS}
    tasks = []
    for name in names:
        if name in BENCHMARKS:
            tasks += BENCHMARKS[name]
        elif name in known:
            tasks.append(name)
        else:
            print(f"Unknown task {name!r}; use a task ({', '.join(sorted(known))}) or a benchmark "
                  f"({', '.join(BENCHMARKS)}).", file=sys.stderr)
            sys.exit(2)
    return tasks


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tasks", nargs="+", help="tasks, benchmarks (nb360, pdebench, openml) or source sets")
    parser.add_argument("--data_dir", default=None, help="default: $ORCA_JAX_DATA, else ~/orca_jax_data")
    parser.add_argument("--offline", action="store_true", help="download nothing; list what is missing")
    args = parser.parse_args(argv)
    data_dir = data_root(args.data_dir)
    offline, missing = args.offline, {}
    for task in _expand(args.tasks):
        try:
            if task in SOURCE_SETS:
                _prepare_source(task, data_dir, offline)
                continue
            missing[task] = _prepare_task(task, data_dir, offline)
        except Offline as error:
            print(f"{task}: no network ({error}); listing what to put where instead.", file=sys.stderr)
            offline = True
            missing[task] = _prepare_task(task, data_dir, offline)
        except (CorruptFile, ImportError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    missing = {task: lines for task, lines in missing.items() if lines}
    if missing:
        print(f"Without network, put these files in place (the archives can stay packed: this command unpacks and "
              f"prepares them), then rerun `python scripts/prepare_data.py {' '.join(args.tasks)} --data_dir "
              f"{data_dir}`:")
        for task, lines in missing.items():
            print(f"{task}:")
            print("\n".join(lines))
        if any(task in NB360_TASKS for task in missing):
            print(MIRROR_NOTE)
        return 1
    prepared = [t for t in _expand(args.tasks) if t not in SOURCE_SETS]
    if prepared:
        print(f"Ready: {', '.join(prepared)} in {data_dir}; train with --config.task.data_dir={data_dir}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
