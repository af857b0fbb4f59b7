"""The exit-status contract of the inference commands, in one place (the same as `scripts/train.py`'s): a problem
the user can fix (the model directory, the data, the weight files) prints its message alone and exits 2; a failure
of the run itself (a full disk, non-finite outputs) prints `error: ...` and exits 1; success is 0."""

from __future__ import annotations

import sys
from collections.abc import Callable

from orca_jax.cli import start
from orca_jax.data.tasks import DataError
from orca_jax.inference.record import ModelError
from orca_jax.weights import CheckpointFormatError, CheckpointNotFoundError, WeightConversionError

USER_ERRORS = (DataError, ModelError, CheckpointFormatError, CheckpointNotFoundError, WeightConversionError)


class RunError(RuntimeError):
    """The command ran and failed (not the user's input): printed as `error: ...`, exit status 1."""


def run_command(body: Callable[[], None]) -> int:
    start()
    try:
        body()
    except USER_ERRORS as error:
        print(error, file=sys.stderr)  # the message names the value and the fix; a traceback would only bury it
        return 2
    except (RunError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
