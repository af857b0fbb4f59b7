"""Where each benchmark's files live, where they come from, and the errors that say so.

Layout under the data directory (`--config.task.data_dir`, else `$ORCA_JAX_DATA`, else `~/orca_jax_data`):
`nb360/<task>/...`, `pdebench/<file>.hdf5`, `openml/` (the `openml` package's cache). `REMOTES` lists, per task,
every file its publisher distributes, with the URL and, where the publisher gives one, the MD5 checksum;
`scripts/prepare_data.py TASK` fetches them, unpacks archives and writes the prepared arrays some loaders read.

A loader that misses a file raises `MissingFile`, naming the file, the URL and the command that fetches it; a file
that is there but cut short (an interrupted download) raises `CorruptFile` with the same remedy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from pathlib import Path

from orca_jax.atomic import atomic_path

ENV_VAR = "ORCA_JAX_DATA"


@dataclasses.dataclass(frozen=True)
class Remote:
    path: str  # relative to the data directory
    url: str
    md5: str | None = None  # where the publisher gives one
    unpack: bool = False  # a .zip / .tar archive, unpacked next to itself after download


_S3 = "https://pde-xd.s3.amazonaws.com"  # the NAS-Bench-360 bucket the official loaders download from
_DARUS = "https://darus.uni-stuttgart.de/api/access/datafile"  # PDEBench, checksums from its pdebench_data_urls.csv


def _nb360(task: str, *names_and_urls: tuple[str, str], unpack: bool = False) -> tuple[Remote, ...]:
    return tuple(Remote(f"nb360/{task}/{name}", url, unpack=unpack) for name, url in names_and_urls)


REMOTES: dict[str, tuple[Remote, ...]] = {
    "cifar100": (Remote("nb360/cifar100/cifar-100-python.tar.gz",
                        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                        "eb9058c3a382ffc7106e4002c42a8d85"),),
    "spherical": _nb360("spherical", ("s2_cifar100.gz", f"{_S3}/spherical/s2_cifar100.gz")),
    "ninapro": _nb360("ninapro", *((f"{kind}_{split}.npy", f"{_S3}/ninapro/{kind}_{split}.npy")
                                   for split in ("train", "val", "test") for kind in ("ninapro", "label"))),
    "fsd50k": _nb360("fsd50k", ("audio.zip", f"{_S3}/audio/audio.zip"), unpack=True),
    "darcy": _nb360("darcy", *((f"piececonst_r421_N1024_smooth{k}.mat", f"{_S3}/piececonst_r421_N1024_smooth{k}.mat")
                               for k in (1, 2))),
    "psicov": _nb360("psicov", ("protein.zip", f"{_S3}/protein.zip"), unpack=True),
    "cosmic": _nb360("cosmic", *((f"deepCR.ACS-WFC.{s}.tar", f"{_S3}/cosmic/deepCR.ACS-WFC.{s}.tar")
                                 for s in ("train", "test")), unpack=True),
    "ecg": _nb360("ecg", ("challenge2017.pkl", f"{_S3}/ECG/challenge2017.pkl")),
    "satellite": _nb360("satellite", *((f"satellite_{s}.npy", f"{_S3}/satellite/satellite_{s}.npy")
                                       for s in ("train", "test"))),
    "deepsea": _nb360("deepsea", ("deepsea_filtered.npz", f"{_S3}/deepsea/deepsea_filtered.npz")),
    "pde_advection": (Remote("pdebench/1D_Advection_Sols_beta0.4.hdf5", f"{_DARUS}/255674",
                             "d595bbfd2c659df995a93cd40d6ea568"),),
    "pde_burgers": (Remote("pdebench/1D_Burgers_Sols_Nu1.0.hdf5", f"{_DARUS}/281365",
                           "9021eba35332d127306f11ef84c1a60f"),),
    "pde_reaction_diffusion": (Remote("pdebench/ReacDiff_Nu0.5_Rho1.0.hdf5", f"{_DARUS}/133177",
                                      "69a429239778d529cd419ed5888ea835"),),
    "pde_diffusion_sorption": (Remote("pdebench/1D_diff-sorp_NA_NA.h5", f"{_DARUS}/133020",
                                      "9d466d1213065619d087319e16d9a938"),),
    "pde_cfd_1d": (Remote("pdebench/1D_CFD_Rand_Eta0.1_Zeta0.1_periodic_Train.hdf5", f"{_DARUS}/164668",
                          "45655bd77d006ab539c52b7fbcf099b9"),),
    "pde_darcy": (Remote("pdebench/2D_DarcyFlow_beta0.1_Train.hdf5", f"{_DARUS}/133218",
                         "294f9a03a4aa16b0e386469ca8b471be"),),
    "pde_shallow_water": (Remote("pdebench/2D_rdb_NA_NA.h5", f"{_DARUS}/133021", "75d838c47aa410694bdc912ea7f22282"),),
    "pde_reaction_diffusion_2d": (Remote("pdebench/2D_diff-react_NA_NA.h5", f"{_DARUS}/133017",
                                         "b8d0b86064193195ddc30c33be5dc949"),),
    "pde_cfd_2d": (Remote("pdebench/2D_CFD_Rand_M1.0_Eta0.1_Zeta0.1_periodic_128_Train.hdf5", f"{_DARUS}/164691",
                          "75a34f34a3dcd9bc8ae4b7adf8bf372c"),),
}


def data_root(data_dir: str | os.PathLike | None) -> Path:
    return Path(data_dir or os.environ.get(ENV_VAR) or "~/orca_jax_data").expanduser()


def prepare_command(task: str, data_dir: str | os.PathLike | None) -> str:
    return f"python scripts/prepare_data.py {task} --data_dir {data_root(data_dir)}"


class MissingFile(FileNotFoundError):
    pass


class CorruptFile(ValueError):
    pass


def _remote_for(task: str, path: Path, data_dir) -> Remote | None:
    return next((r for r in REMOTES.get(task, ()) if data_root(data_dir) / r.path == path), None)


def require(task: str, relative: str, data_dir, *, made_by_prepare: bool = False) -> Path:
    """`data_root/relative`, or a `MissingFile` error naming it, where it comes from and the command that puts it
    there (`made_by_prepare`: a file the prepare step writes from the downloads, not a download itself)."""
    path = data_root(data_dir) / relative
    if path.exists():
        return path
    remote = _remote_for(task, path, data_dir)
    source = (f" (downloaded from {remote.url})" if remote else
              " (written by the prepare step from the downloaded files)" if made_by_prepare else "")
    raise MissingFile(f"Task {task!r}: {path} is missing{source}. Run `{prepare_command(task, data_dir)}`; "
                      "without network it lists which files to put where.")


def corrupt(task: str, path: Path, data_dir, error: BaseException) -> CorruptFile:
    """The error for a file that exists but cannot be read whole (an interrupted download, a wrong file)."""
    return CorruptFile(
        f"Task {task!r}: {path} ({path.stat().st_size if path.exists() else 0} bytes) is truncated or not the "
        f"published file ({type(error).__name__}: {error}). Delete it and run `{prepare_command(task, data_dir)}`."
    )


# Downloads (scripts/prepare_data.py) -------------------------------------------------------------------------


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def check_download(task: str, remote: Remote, path: Path, data_dir) -> None:
    """Raises `CorruptFile` when the publisher's checksum does not match `path`."""
    if remote.md5 is not None and (actual := md5_of(path)) != remote.md5:
        raise corrupt(task, path, data_dir, ValueError(f"MD5 {actual}, published {remote.md5}"))


def download(remote: Remote, path: Path, *, timeout: float = 60.0) -> None:
    """Streams `remote.url` to `path` through a `.part` file renamed into place only when complete, so an
    interrupted download never looks finished."""
    import urllib.request

    with atomic_path(path) as partial:
        with urllib.request.urlopen(remote.url, timeout=timeout) as response, open(partial, "wb") as sink:
            expected = response.headers.get("Content-Length")
            shutil.copyfileobj(response, sink, 1 << 24)
        if expected is not None and os.path.getsize(partial) != int(expected):
            raise OSError(f"{remote.url}: received {os.path.getsize(partial)} of {expected} bytes")


def unpack(path: Path) -> None:
    """Unpacks a .zip or .tar archive into its own directory, refusing members that would land outside it."""
    import tarfile
    import zipfile

    target = path.parent.resolve()
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if not (target / name).resolve().is_relative_to(target):
                    raise ValueError(f"{path}: member {name!r} would be written outside {target}")
            archive.extractall(target)
    else:
        with tarfile.open(path) as archive:
            archive.extractall(target, filter="data")
