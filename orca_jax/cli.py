"""What every command-line entry point does, in one place: start-up, and the exit-status contract.

Exit status: 0 done; 2 a problem the user can fix (a flag, the config, the data, the weight files, the workdir, the
cached source features or the model directory: `USER_ERRORS` and flag errors), printed as the message alone, since
it names the bad value and the fix and a traceback would only bury it; 1 the run itself failed (`RunError`, a full
disk, a non-finite loss, any other `OSError`), printed as `error: ...` (a full disk as the process's last line);
75 stopped by SIGTERM and 130 by Ctrl-C after saving a checkpoint (`orca_jax.parallel.Preempted`); 130 also for a
Ctrl-C that stopped at once, without saving. Anything else is a bug in orca-jax and keeps its traceback.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable

import jax
from absl import app, flags
from absl import logging as absl_logging

from orca_jax.config_checks import ConfigError
from orca_jax.data.source_features import SourceFeaturesError, cache_root
from orca_jax.data.types import DataError
from orca_jax.inference.record import ModelError
from orca_jax.parallel import INTERRUPTED_EXIT_CODE, initialize_distributed
from orca_jax.weights import CheckpointFormatError, CheckpointNotFoundError, WeightConversionError
from orca_jax.workdir import WorkdirError, disk_full, quiet_once_disk_full

USER_ERRORS = (ConfigError, DataError, ModelError, WorkdirError, CheckpointFormatError, CheckpointNotFoundError,
               WeightConversionError, SourceFeaturesError)
USAGE_EXIT_CODE = 2
COMPILE_CACHE_MIN_SECONDS = 0.1  # programs that take longer to compile are cached (JAX's default, 1 s, skips most)
_COMPILE_CACHE = flags.DEFINE_bool(
    "compile_cache", True, "Keep compiled programs in ~/.cache/orca_jax/xla (under XDG_CACHE_HOME when set), "
    "so a rerun, a resumed run or a sweep's later runs load them instead of compiling; JAX_COMPILATION_CACHE_DIR "
    "chooses another directory.")


class RunError(RuntimeError):
    """The command ran and failed (not the user's input): printed as `error: ...`, exit status 1."""


def start() -> None:
    """orca-jax's own progress at INFO, libraries at WARNING (Orbax logs every checkpoint file operation at INFO),
    a full disk said once (`orca_jax.workdir.quiet_once_disk_full`), the compilation cache (`--compile_cache`,
    `use_compile_cache`), and the multi-process runtime joined when the environment describes one."""
    absl_logging.set_verbosity(absl_logging.WARNING)
    quiet_once_disk_full()
    use_compile_cache(_COMPILE_CACHE.value if flags.FLAGS.is_parsed() else True)
    logging.getLogger("orca_jax").setLevel(logging.INFO)
    initialize_distributed()


def use_compile_cache(enabled: bool) -> None:
    """JAX's persistent compilation cache under orca-jax's cache directory, unless `enabled` is False or the
    environment chose a directory (JAX_COMPILATION_CACHE_DIR, read by JAX itself). Why on by default: every run
    of the same shapes compiles the same programs, tens of seconds of a short run's start. Set before the first
    compile: JAX reads the setting when it first compiles, once per process."""
    if not enabled:
        jax.config.update("jax_enable_compilation_cache", False)
        return
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(cache_root() / "xla"))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", COMPILE_CACHE_MIN_SECONDS)


def run_command(body: Callable[[], None]) -> int:
    """Starts up, runs `body` and returns the exit status of the module docstring's contract."""
    try:
        start()
        body()
    except USER_ERRORS as error:
        print(error, file=sys.stderr)
        return USAGE_EXIT_CODE
    except KeyboardInterrupt:  # a second Ctrl-C, or one before a stage's guard was listening
        print("interrupted: stopped at once, without saving; rerun the same command to resume from the last "
              "checkpoint", file=sys.stderr)
        return INTERRUPTED_EXIT_CODE
    except (RunError, FloatingPointError, OSError) as error:
        full = disk_full(error)
        quiet_once_disk_full(full)
        print(f"error: {error}", file=sys.stderr)
        if full:
            # The last word: the writer threads still in flight fail into event loops already closed and print
            # tracebacks while the interpreter shuts down, where no logging filter reaches them; nothing of the run
            # is left to save (Orbax clears the unfinished checkpoint on the next start).
            sys.stdout.flush(), sys.stderr.flush()
            os._exit(1)
        return 1
    return 0


def run_app(main: Callable[[list[str]], None], argv: list[str] | None = None) -> None:
    """`absl.app.run(main)` with flag and config-file mistakes said as one message with exit status 2 (absl's own
    exit 1, and config_flags' tracebacks, would break the contract)."""
    app.run(main, argv=argv, flags_parser=parse_flags)


def parse_flags(argv: list[str]) -> list[str]:
    try:
        rest = flags.FLAGS(argv)
        for name, flag in flags.FLAGS._flags().items():  # config_flags defers a missing file to the first access
            if flag.flag_type() == "config object" and flag.value is not None:
                flag.value.keys()
    except flags.Error as error:
        _usage(str(error).replace("Error whilst parsing config file:", "").strip())
    except (AttributeError, KeyError) as error:  # an override of a field the config lacks (ConfigDict's message)
        text = str(error).replace("\\'", "'").replace("\\n", " ")
        name = re.search(r"'(\w+)'", text)
        name = name[1] if name else text
        suggestion = re.search(r'Did you mean "(\w+)"', text)
        given = [a.split("=")[0] for a in argv if a.startswith("--config.") and a.split("=")[0].endswith(f".{name}")]
        _usage(f"{given[0] if given else '--config.<field>'}: the config has no field {name!r}"
               + (f'; did you mean "{suggestion[1]}"?' if suggestion else "")
               + " (the fields and their meaning are in orca_jax/config.py)")
    except OSError as error:  # the config file
        reason = str(error).strip().splitlines()
        _usage(f"--config: cannot load the config file ({reason[-1].strip()}); give a path such as "
               "configs/demo.py[:variant].")
    return rest


def seeds_flag(values: list[str], flag: str) -> tuple[int, ...]:
    """The integers of a comma-separated seeds flag (`--flag`), refused as a user error when not distinct integers."""
    try:
        seeds = tuple(int(v) for v in values)
    except ValueError:
        raise ConfigError([f"--{flag}={','.join(values)}: give integer seeds, e.g. 0,1,2."]) from None
    if len(set(seeds)) != len(seeds):
        raise ConfigError([f"--{flag}={','.join(values)}: the seeds must be distinct."])
    return seeds


def _usage(message: str) -> None:
    lines = [line for line in message.splitlines() if line.strip()]
    if any(line.lstrip().startswith("Traceback") for line in lines):  # config_flags quotes get_config's traceback
        lines = [lines[0].rstrip(":")] + [f"  {lines[-1].strip()}"]
    print("\n".join(lines) + "\n(--helpfull lists the flags)", file=sys.stderr)
    sys.exit(USAGE_EXIT_CODE)
