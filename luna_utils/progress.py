"""Progress bars that read well both live and in a saved notebook.

Interactive runs get `tqdm.auto` (a widget in Jupyter, text in a terminal). When the environment
variable `LUNA_UTILS_PLAIN_PROGRESS` is set, as the tutorial runner does, bars are plain text that
refresh rarely, so an executed notebook stores a few short lines instead of widget state.
"""

from __future__ import annotations

import os
import sys
from typing import Any

ENV_PLAIN_PROGRESS = "LUNA_UTILS_PLAIN_PROGRESS"


def progress(iterable: Any = None, **kwargs: Any):
    """Return a tqdm progress bar; accepts every tqdm keyword argument."""
    if os.environ.get(ENV_PLAIN_PROGRESS):
        from tqdm import tqdm

        kwargs.setdefault("mininterval", 30.0)
        kwargs.setdefault("ascii", True)
        kwargs.setdefault("file", sys.stderr)
        kwargs.setdefault("ncols", 80)
        return tqdm(iterable, **kwargs)

    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)
