"""A gallery of patches around annotated findings, one panel per patch.

Patches are in voxel index space, NumPy order (z, y, x), as `luna_utils.patches.extract_patch`
cuts them around the voxel that `CtScan.world_to_voxel` gives for a finding's centre. Nothing is
flipped, so a patch of a scan stored with direction diag(-1, -1, 1) appears rotated by 180
degrees next to the others. Whole slices with nodule circles in world millimetres are drawn by
`luna_utils.plotting.show_slice`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from luna_utils.errors import LunaError
from luna_utils.plotting import Window, window_limits


def show_patch_gallery(
    patches: Sequence[ArrayLike],
    titles: Sequence[str],
    n_columns: int = 6,
    window: str | Window | tuple[float, float] = "lung",
    panel_size_in: float = 1.6,
):
    """Show the middle axial slice of each patch in a grid, rows as y and columns as x.

    Args:
        patches: 3-D patches, each shape (Z, Y, X) in HU.
        titles: One title per patch.
        n_columns: Panels per row.
        window: HU window: a name of `luna_utils.plotting.WINDOWS`, a `Window` or (level, width).
        panel_size_in: Width and height of each panel in inches.

    Returns:
        The matplotlib Figure.

    Raises:
        LunaError: If the numbers of patches and titles differ.
    """
    import matplotlib.pyplot as plt

    if len(patches) != len(titles):
        raise LunaError(f"Got {len(patches)} patches but {len(titles)} titles; pass one title each.")
    low_hu, high_hu = window_limits(window)
    n_rows = max(1, int(np.ceil(len(patches) / n_columns)))
    figure, axes = plt.subplots(
        n_rows, n_columns, figsize=(n_columns * panel_size_in, n_rows * (panel_size_in + 0.3)),
        squeeze=False,
    )
    for ax in axes.ravel():
        ax.set_axis_off()

    for ax, patch, title in zip(axes.ravel(), patches, titles):
        volume = np.asarray(patch)
        ax.imshow(volume[volume.shape[0] // 2], cmap="gray", vmin=low_hu, vmax=high_hu)
        ax.set_title(title, fontsize=8)
    figure.tight_layout()
    return figure
