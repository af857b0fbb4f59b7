"""The one way orca-jax draws a figure: matplotlib's file backend, a figure in, PNG bytes out.

Why bytes: every plot is written next to a run's other outputs through `workdir.write_file` (atomic, process 0
only, `gs://` workdirs included), so drawing and writing stay apart. The Agg backend needs no display, so plots
work on headless machines and in CI.
"""

from __future__ import annotations

import io
from collections.abc import Callable


def figure_png(draw: Callable) -> bytes:
    """PNG bytes of the figure that `draw(pyplot)` returns (it is closed afterwards)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = draw(plt)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
