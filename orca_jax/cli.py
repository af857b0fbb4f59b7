"""What every command-line entry point does first, in one place."""

import logging

from absl import logging as absl_logging

from orca_jax.parallel import initialize_distributed


def start() -> None:
    """orca-jax's own progress at INFO, libraries at WARNING (Orbax logs every checkpoint file operation at INFO),
    and the multi-process runtime joined when the environment describes one."""
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("orca_jax").setLevel(logging.INFO)
    initialize_distributed()
