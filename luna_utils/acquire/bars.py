"""Per-file progress bars for transfers, hashing and extraction.

Several files are fetched at once, so several bars are open at the same time. Live, tqdm stacks
them on separate lines. In plain-progress mode (`LUNA_UTILS_PLAIN_PROGRESS`, used when notebooks
are executed and saved), stacked bars turn into cursor-movement codes in the saved output, so
per-file bars are hidden there and only the overall bar of a run is shown.
"""

from __future__ import annotations

import os
from typing import Any

from luna_utils.progress import ENV_PLAIN_PROGRESS, progress


def file_progress(**kwargs: Any):
    """Return a tqdm bar for one file; hidden in plain-progress mode. Accepts tqdm's arguments."""
    if os.environ.get(ENV_PLAIN_PROGRESS):
        kwargs["disable"] = True
    kwargs.setdefault("leave", False)
    return progress(**kwargs)
