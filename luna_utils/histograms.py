"""Hounsfield-unit histograms: exact value counts, a fixed binning, percentiles and a plot.

LUNA16 stores every scan as int16 Hounsfield units (HU), so a scan's intensities are described
exactly by how often each of the 65,536 int16 values occurs. Those counts (`value_counts`) add
up across scans without any loss, which is what lets per-scan work be merged into dataset-wide
statistics: min, max, mean, standard deviation and percentiles of all voxels of all scans follow
from the summed counts, with no scan ever held in memory beside another.

For tables and figures the counts are also grouped into the fixed bins `HU_BIN_EDGES`
(10 HU wide, from -3100 to +3100 HU), which cover the HU range of every LUNA16 scan, including
the padding values -2000 and -3024 that some scanners write outside the reconstructed field of view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike, NDArray

from luna_utils.errors import LunaError

if TYPE_CHECKING:
    import pandas as pd

# `value_counts` index i counts the HU value i - VALUE_OFFSET, so index 0 is -32768 (int16 min).
VALUE_OFFSET = 32768
N_VALUES = 65536

# Left edges of the 10 HU bins plus the last right edge: bins are [edge_i, edge_i+1).
HU_BIN_WIDTH = 10
HU_BIN_EDGES = np.arange(-3100, 3100 + HU_BIN_WIDTH, HU_BIN_WIDTH, dtype=np.int64)

# Percentiles reported for each scan and for the dataset.
PERCENTILES = (1, 5, 50, 95, 99)

# Typical HU of the tissues marked on histogram plots. These are textbook values: real tissue
# spreads tens of HU around them, and bone ranges from about +300 to over +1000 HU.
TISSUE_HU = {"air": -1000, "fat": -100, "soft tissue": 40, "bone": 700}

# Slices counted at once by `value_counts`; bounds the temporary memory to a few slices.
CHUNK_SLICES = 16


def value_counts(array: NDArray, chunk_slices: int = CHUNK_SLICES) -> NDArray[np.int64]:
    """Count how often each int16 value occurs in an array.

    The array is processed `chunk_slices` slices (first axis) at a time, so the extra memory is a
    few slices, never a copy of the volume.

    Args:
        array: Integer voxels of any shape, normally a (z, y, x) int16 HU volume. Every value
            must lie in the int16 range [-32768, 32767].
        chunk_slices: Number of slices along the first axis counted per step.

    Returns:
        int64 array of shape (N_VALUES,): entry i counts the voxels equal to i - VALUE_OFFSET HU.

    Raises:
        LunaError: If the array is not of an integer dtype or contains values outside int16.
    """
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.integer):
        raise LunaError(
            f"value_counts needs integer Hounsfield units, got dtype {array.dtype}. "
            "Round the array and convert it with array.astype(np.int16) first."
        )
    counts = np.zeros(N_VALUES, dtype=np.int64)
    if array.size == 0:
        return counts

    volume = array.reshape((array.shape[0], -1)) if array.ndim > 1 else array.reshape((-1, 1))
    for start in range(0, volume.shape[0], chunk_slices):
        chunk = volume[start : start + chunk_slices]
        if array.dtype != np.int16:
            low, high = int(chunk.min()), int(chunk.max())
            if low < -VALUE_OFFSET or high >= N_VALUES - VALUE_OFFSET:
                raise LunaError(
                    f"value_counts supports values in the int16 range [-32768, 32767]; the array "
                    f"(dtype {array.dtype}) holds values from {low} to {high}."
                )
            chunk = chunk.astype(np.int16)

        # Flipping the sign bit maps int16 -32768..32767 onto uint16 0..65535 in order.
        shifted = chunk.view(np.uint16) ^ np.uint16(0x8000)
        counts += np.bincount(shifted.ravel(), minlength=N_VALUES)
    return counts


def hu_values() -> NDArray[np.int64]:
    """Return the HU value of each `value_counts` entry, shape (N_VALUES,): -32768 ... 32767."""
    return np.arange(N_VALUES, dtype=np.int64) - VALUE_OFFSET


def bin_value_counts(
    counts: ArrayLike, edges: ArrayLike = HU_BIN_EDGES
) -> tuple[NDArray[np.int64], int, int]:
    """Group exact value counts into HU bins [edge_i, edge_i+1).

    Args:
        counts: Value counts from `value_counts`, shape (N_VALUES,).
        edges: Increasing integer bin edges in HU, shape (n_bins + 1,).

    Returns:
        (histogram, n_below, n_above): int64 counts per bin, shape (n_bins,), and the numbers of
        voxels below the first edge and at or above the last edge.
    """
    counts = _as_counts(counts)
    edges = np.asarray(edges, dtype=np.int64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise LunaError(f"HU bin edges must be at least two increasing integers; got {edges!r}.")

    cumulative = np.concatenate([[0], np.cumsum(counts)])
    # cumulative[i] counts the voxels below HU value i - VALUE_OFFSET.
    positions = np.clip(edges + VALUE_OFFSET, 0, N_VALUES)
    below_edge = cumulative[positions]
    histogram = np.diff(below_edge)
    return histogram, int(below_edge[0]), int(cumulative[-1] - below_edge[-1])


def percentiles_from_counts(counts: ArrayLike, q: ArrayLike = PERCENTILES) -> NDArray[np.float64]:
    """Compute percentiles of the voxels described by value counts.

    The result equals `np.percentile(voxels, q)`, NumPy's default linear interpolation between the
    two closest ranks, up to float rounding (about 1e-13 relative), without sorting any voxel.

    Args:
        counts: Value counts from `value_counts`, shape (N_VALUES,).
        q: Percentiles in [0, 100], scalar or sequence.

    Returns:
        float64 HU values with the shape of `q`.

    Raises:
        LunaError: If there are no voxels or a percentile lies outside [0, 100].
    """
    counts = _as_counts(counts)
    quantiles = np.asarray(q, dtype=np.float64)
    if np.any((quantiles < 0) | (quantiles > 100)):
        raise LunaError(f"Percentiles must lie in [0, 100]; got {q!r}.")
    total = int(counts.sum())
    if total == 0:
        raise LunaError("Percentiles of an empty set of voxels are undefined: the counts are all zero.")

    # Rank k of the sorted voxels is the first value whose cumulative count exceeds k.
    cumulative = np.cumsum(counts)
    rank = (total - 1) * quantiles / 100.0
    lower_rank = np.floor(rank)
    fraction = rank - lower_rank
    lower = np.searchsorted(cumulative, lower_rank, side="right") - VALUE_OFFSET
    upper_rank = np.minimum(lower_rank + 1, total - 1)
    upper = np.searchsorted(cumulative, upper_rank, side="right") - VALUE_OFFSET

    # NumPy's interpolation formula, which returns the upper value exactly at fraction 1.
    lower = lower.astype(np.float64)
    upper = upper.astype(np.float64)
    difference = upper - lower
    return np.where(fraction >= 0.5, upper - difference * (1 - fraction), lower + difference * fraction)


@dataclass(frozen=True)
class HuSummary:
    """Summary statistics of a set of HU voxels, all derived from value counts.

    Attributes:
        n_voxels: Number of voxels.
        min_hu, max_hu: Smallest and largest value.
        mean_hu, std_hu: Mean and population standard deviation (NumPy's default ddof=0), both
            computed from exact integer sums and correctly rounded.
        mode_hu: Most frequent value; ties go to the lowest value.
        percentiles_hu: Percentile -> value, for the percentiles in `PERCENTILES`.
    """

    n_voxels: int
    min_hu: int
    max_hu: int
    mean_hu: float
    std_hu: float
    mode_hu: int
    percentiles_hu: dict[int, float]

    def as_row(self) -> dict[str, float | int]:
        """Return the summary as flat columns: n_voxels, min_hu, ..., p1_hu, p5_hu, ..."""
        row: dict[str, float | int] = {
            "n_voxels": self.n_voxels,
            "min_hu": self.min_hu,
            "max_hu": self.max_hu,
            "mean_hu": self.mean_hu,
            "std_hu": self.std_hu,
            "mode_hu": self.mode_hu,
        }
        for percentile, value in self.percentiles_hu.items():
            row[f"p{percentile}_hu"] = value
        return row


def summarize_counts(counts: ArrayLike, percentiles: tuple[int, ...] = PERCENTILES) -> HuSummary:
    """Compute count, min, max, mean, standard deviation, mode and percentiles from value counts.

    Raises:
        LunaError: If the counts are all zero.
    """
    counts = _as_counts(counts)
    present = np.flatnonzero(counts)
    if present.size == 0:
        raise LunaError("Cannot summarize an empty set of voxels: the counts are all zero.")

    # Exact integer sums (Python ints cannot overflow), then one correctly rounded division each.
    # Float dot products would depend on the BLAS thread count, so two processes could disagree
    # in the last bit; these do not.
    values = (present - VALUE_OFFSET).tolist()
    weights = counts[present].tolist()
    total = sum(weights)
    sum_values = sum(value * weight for value, weight in zip(values, weights))
    sum_squares = sum(value * value * weight for value, weight in zip(values, weights))
    mean = sum_values / total
    variance = (total * sum_squares - sum_values * sum_values) / (total * total)

    return HuSummary(
        n_voxels=total,
        min_hu=int(present[0] - VALUE_OFFSET),
        max_hu=int(present[-1] - VALUE_OFFSET),
        mean_hu=mean,
        std_hu=math.sqrt(variance),
        mode_hu=int(np.argmax(counts) - VALUE_OFFSET),
        percentiles_hu={
            int(p): float(v) for p, v in zip(percentiles, percentiles_from_counts(counts, percentiles))
        },
    )


def _as_counts(counts: ArrayLike) -> NDArray[np.int64]:
    array = np.asarray(counts)
    if array.shape != (N_VALUES,):
        raise LunaError(
            f"Value counts must have shape ({N_VALUES},), one entry per int16 value; got {array.shape}. "
            "Build them with luna_utils.histograms.value_counts."
        )
    if np.any(array < 0):
        raise LunaError("Value counts must not be negative.")
    return array.astype(np.int64, copy=False)


def plot_hu_histogram(
    edges: ArrayLike,
    histogram: ArrayLike,
    ax=None,
    *,
    log: bool = True,
    marks: dict[str, float] | None = None,
    label: str | None = None,
    hu_range: tuple[float, float] | None = None,
):
    """Plot a HU histogram with reference tissues marked.

    Args:
        edges: Bin edges in HU, shape (n_bins + 1,).
        histogram: Voxel count per bin, shape (n_bins,).
        ax: Axes to draw on; None creates a new figure.
        log: Use a logarithmic count axis, so rare values (bone, padding) stay visible.
        marks: Name -> HU of vertical reference lines; None uses `TISSUE_HU`, {} draws none.
        label: Legend label of the histogram line.
        hu_range: (low, high) HU limits of the horizontal axis; None shows every bin.

    Returns:
        (figure, ax).
    """
    import matplotlib.pyplot as plt

    edges = np.asarray(edges, dtype=np.float64)
    histogram = np.asarray(histogram)
    if edges.shape != (histogram.shape[0] + 1,):
        raise LunaError(
            f"A histogram of {histogram.shape[0]} bins needs {histogram.shape[0] + 1} edges; "
            f"got {edges.shape[0]}."
        )
    if ax is None:
        figure, ax = plt.subplots(figsize=(8, 3.5))
    else:
        figure = ax.figure

    ax.stairs(histogram, edges, label=label)
    if log:
        ax.set_yscale("log")
    marks = TISSUE_HU if marks is None else marks
    for position, (name, value) in enumerate(sorted(marks.items(), key=lambda item: item[1])):
        ax.axvline(value, color="0.4", linestyle="--", linewidth=0.8)
        # Alternate label heights so neighbours such as fat and soft tissue do not overlap.
        ax.annotate(
            f"{name}\n{value:+g} HU",
            xy=(value, 1.0 - 0.14 * (position % 2)),
            xycoords=("data", "axes fraction"),
            xytext=(3, -3),
            textcoords="offset points",
            va="top",
            fontsize=8,
            color="0.3",
        )
    if hu_range is not None:
        ax.set_xlim(*hu_range)
    ax.set_xlabel("Hounsfield units (HU)")
    ax.set_ylabel("voxels per bin" + (" (log scale)" if log else ""))
    return figure, ax


def plot_scan_histograms(
    edges: ArrayLike,
    per_scan: ArrayLike,
    labels: list[str] | None = None,
    ax=None,
    *,
    hu_range: tuple[float, float] | None = None,
):
    """Show the HU histograms of many scans as an image, one row per scan.

    Colour is log10(1 + voxels per bin), so a padding value shared by several scans (such as
    -2000 or -3024 HU) shows as a bright column.

    Args:
        edges: Bin edges in HU, shape (n_bins + 1,).
        per_scan: Voxel counts, shape (n_scans, n_bins).
        labels: One tick label per scan; None numbers them.
        ax: Axes to draw on; None creates a figure.
        hu_range: (low, high) HU limits of the horizontal axis; None shows every bin.

    Returns:
        (figure, ax).
    """
    import matplotlib.pyplot as plt

    edges = np.asarray(edges, dtype=np.float64)
    per_scan = np.asarray(per_scan)
    if per_scan.ndim != 2 or per_scan.shape[1] != edges.shape[0] - 1:
        raise LunaError(
            f"per_scan must have shape (n_scans, {edges.shape[0] - 1}) for {edges.shape[0]} edges; "
            f"got {per_scan.shape}."
        )
    if ax is None:
        figure, ax = plt.subplots(figsize=(9, 0.25 * per_scan.shape[0] + 1.5))
    else:
        figure = ax.figure

    n_scans = per_scan.shape[0]
    image = ax.imshow(
        np.log10(1 + per_scan), aspect="auto", cmap="magma", interpolation="nearest",
        extent=(edges[0], edges[-1], n_scans - 0.5, -0.5),
    )
    figure.colorbar(image, ax=ax, label="log10(1 + voxels per bin)")
    if labels is not None:
        ax.set_yticks(range(n_scans), labels, fontsize=7)
    if hu_range is not None:
        ax.set_xlim(*hu_range)
    ax.set_xlabel("Hounsfield units (HU)")
    ax.set_ylabel("scan")
    return figure, ax


def plot_distributions(
    tables: dict[str, pd.DataFrame],
    columns: dict[str, str],
    *,
    bins: int = 20,
    panel_inches: float = 3.6,
):
    """Compare the distribution of a few columns across tables, one panel per column.

    Each table's histogram is normalised to a density, so a 20-scan sample and the 888 real scans
    share one axis.

    Args:
        tables: Legend label -> table.
        columns: Column name -> axis label (with its unit).
        bins: Number of bins, shared by all tables of a panel.
        panel_inches: Width of one panel.

    Returns:
        (figure, axes).
    """
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(columns), figsize=(panel_inches * len(columns), 3.2), squeeze=False)
    for ax, (column, label) in zip(axes[0], columns.items()):
        values = [np.asarray(table[column], dtype=np.float64) for table in tables.values()]
        low = min(value.min() for value in values)
        high = max(value.max() for value in values)
        shared_edges = np.linspace(low, high if high > low else low + 1, bins + 1)
        for name, value in zip(tables, values):
            ax.hist(value, bins=shared_edges, density=True, histtype="step", linewidth=1.5, label=f"{name} ({len(value)})")
        ax.set_xlabel(label)
        ax.set_ylabel("density")
    axes[0][0].legend(fontsize=8)
    figure.tight_layout()
    return figure, axes[0]
