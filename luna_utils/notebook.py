"""Set-up shared by the tutorial notebooks: seeds, figure style, logging and the data note."""

from __future__ import annotations

import logging
import os
import random

import numpy as np

from luna_utils.dataset import DataInfo, describe_data

# Figures are stored as PNG at this resolution so each rendered notebook stays small.
FIGURE_DPI = 80

# Set by the tutorial runner while it executes notebooks without a person at the keyboard.
ENV_BATCH_RUN = "LUNA_UTILS_BATCH_RUN"


def is_batch_run() -> bool:
    """Return whether notebooks are being executed by the tutorial runner, not interactively."""
    return bool(os.environ.get(ENV_BATCH_RUN))


def setup_notebook(seed: int = 0, data_dir=None) -> DataInfo:
    """Prepare a notebook run and return the description of the data it uses.

    Seeds Python's and NumPy's global generators, sets a quiet matplotlib style with PNG output at
    `FIGURE_DPI`, and sends luna_utils' INFO logs to the notebook.

    Args:
        seed: Seed for `random` and `numpy.random`.
        data_dir: Dataset folder; None resolves it as `luna_utils.dataset.resolve_data_dir` does.

    Returns:
        The data description; displaying it in a cell shows which data the run used.
    """
    random.seed(seed)
    np.random.seed(seed)

    import matplotlib as mpl

    mpl.rcParams.update(
        {
            "figure.dpi": FIGURE_DPI,
            "savefig.dpi": FIGURE_DPI,
            "figure.figsize": (8, 4.5),
            "axes.grid": False,
            "image.cmap": "gray",
            "svg.hashsalt": str(seed),
        }
    )
    try:
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        set_matplotlib_formats("png")
    except ImportError:
        pass

    package_logger = logging.getLogger("luna_utils")
    if not package_logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        package_logger.addHandler(handler)
        package_logger.setLevel(logging.INFO)

    return describe_data(data_dir)
