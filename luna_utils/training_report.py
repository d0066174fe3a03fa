"""Figures and tables that report on training: patch galleries, training curves, ROC, sizes.

Patches are int16 HU cubes, axes (z, y, x), 1 mm voxels, with the candidate at the centre voxel;
galleries show the axial slice through it with the axes in millimetres from the candidate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from sklearn.metrics import roc_auc_score, roc_curve

from luna_utils.dataset import COORD_COLUMNS, load_real_table
from luna_utils.errors import DatasetError
from luna_utils.splits import SPLIT_NAMES, SubsetSplit, format_subsets

# HU window of the galleries: lung, vessels and nodules, with bone saturated.
GALLERY_WINDOW_HU = (-1000.0, 400.0)

# Published sizes of the two LUNA16 candidate lists (LUNA16 challenge data description):
# candidates and positives (class 1).
REAL_CANDIDATE_COUNTS = {
    "candidates.csv (V1)": (551_065, 1_351),
    "candidates_V2.csv (V2)": (754_975, 1_557),
}


def imbalance_table(sample_counts: Mapping[str, tuple[int, int]]) -> pd.DataFrame:
    """Put candidate and positive counts side by side with the real LUNA16 figures.

    Args:
        sample_counts: Candidates and positives by list name for this run's data, with the same
            keys as `REAL_CANDIDATE_COUNTS`.

    Returns:
        One row per (data, list) with `candidates`, `positives`, `negatives per positive`.
    """
    rows = []
    for data, counts in (("this run", sample_counts), ("real LUNA16", REAL_CANDIDATE_COUNTS)):
        for name, (candidates, positives) in counts.items():
            rows.append(
                {
                    "data": data,
                    "list": name,
                    "candidates": candidates,
                    "positives": positives,
                    "negatives per positive": round((candidates - positives) / max(positives, 1), 1),
                }
            )
    return pd.DataFrame(rows).set_index(["data", "list"])


def attach_kinds(candidates: pd.DataFrame, root: str | Path, version: int = 2) -> pd.DataFrame:
    """Add the synthetic sample's `kind` (nodule, vessel, pleura, ...) to candidate rows.

    Rows are matched on seriesuid and the coordinates as written in the CSV files. Rows of data
    without `synthetic/candidate_kinds.csv` (real LUNA16) get kind "unknown".
    """
    path = Path(root) / "synthetic" / "candidate_kinds.csv"
    if not path.is_file():
        return candidates.assign(kind="unknown")
    kinds = pd.read_csv(path, dtype={"seriesuid": str})
    kinds = kinds[kinds["version"] == version].drop_duplicates(["seriesuid", *COORD_COLUMNS])
    merged = candidates.merge(kinds[["seriesuid", *COORD_COLUMNS, "kind"]], on=["seriesuid", *COORD_COLUMNS], how="left")
    merged["kind"] = merged["kind"].fillna("unknown")
    merged.index = candidates.index
    return merged


def real_run_sizes(
    split: SubsetSplit,
    stored_size: int,
    negative_fraction: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """Estimate the patch cache of a run on real LUNA16, per split, from the shipped scan table.

    Uses `data/real/luna16_scans_metadata.csv` (per-scan V2 candidate and nodule counts of all
    888 scans). Sizes are int16 cubes of edge `stored_size`; an estimate, since the negative
    subsampling keeps a random share.

    Args:
        split: The subsets of each split.
        stored_size: Edge of the stored patch cube in voxels.
        negative_fraction: Share of negatives kept per split name; missing names keep all.

    Returns:
        One row per split with `subsets`, `scans`, `nodules`, `candidates V2`, `patches kept` and
        `patch cache GB`.
    """
    metadata = load_real_table("luna16_scans_metadata")
    negative_fraction = negative_fraction or {}
    bytes_per_patch = 2 * stored_size**3
    rows = []
    for role in SPLIT_NAMES:
        subsets = getattr(split, role)
        part = metadata[metadata["subset"].isin(subsets)]
        candidates = int(part["n_cand_v2"].sum())
        # Positives are about 0.2 % of V2 candidates (1,557 of 754,975), all kept.
        positives = round(candidates * 1_557 / 754_975)
        kept = positives + round((candidates - positives) * negative_fraction.get(role, 1.0))
        rows.append(
            {
                "split": role,
                "subsets": format_subsets(subsets),
                "scans": len(part),
                "nodules": int(part["n_nodules"].sum()),
                "candidates V2": candidates,
                "patches kept": kept,
                "patch cache GB": round(kept * bytes_per_patch / 1e9, 1),
            }
        )
    return pd.DataFrame(rows).set_index("split")


def _axial_slice(patch: ArrayLike) -> np.ndarray:
    patch = np.asarray(patch)
    if patch.ndim == 4 and patch.shape[-1] == 1:
        patch = patch[..., 0]
    if patch.ndim != 3:
        raise DatasetError(f"Expected a (z, y, x) patch; got shape {patch.shape}.")
    return patch[patch.shape[0] // 2]


def plot_patch_gallery(
    patches: ArrayLike,
    titles: Sequence[str],
    ncols: int = 6,
    window: tuple[float, float] | None = GALLERY_WINDOW_HU,
    panel_size: float = 1.7,
):
    """Show the axial slice through the centre of each patch, with a cross on the candidate.

    Args:
        patches: Shape (N, S, S, S) in HU (or (N, S, S, S, 1) windowed inputs with window=None).
        titles: One title per patch.
        ncols: Panels per row.
        window: (low, high) grey-level range, HU; None shows values in [0, 1].
        panel_size: Edge of one panel in inches.

    Returns:
        The figure.
    """
    import matplotlib.pyplot as plt

    patches = np.asarray(patches)
    count = len(patches)
    nrows = max(1, -(-count // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_size * ncols, panel_size * nrows + 0.3), squeeze=False)
    low, high = window if window is not None else (0.0, 1.0)

    for ax in axes.flat:
        ax.axis("off")
    for ax, patch, title in zip(axes.flat, patches, titles):
        image = _axial_slice(patch)
        half = image.shape[0] / 2
        # Extent in mm from the candidate: 1 mm voxels, centre voxel at index S // 2.
        centre = image.shape[0] // 2
        extent = (-centre - 0.5, image.shape[1] - centre - 0.5, image.shape[0] - centre - 0.5, -centre - 0.5)
        ax.imshow(image, cmap="gray", vmin=low, vmax=high, extent=extent)
        ax.plot([0], [0], "+", color="#ff7f0e", markersize=8)
        ax.set_title(title, fontsize=8)
        ax.set_xlim(-half, half)
    fig.supxlabel(f"axial slices through the candidate, {patches.shape[2]} mm wide", fontsize=9)
    fig.tight_layout()
    return fig


def plot_training_curves(history: pd.DataFrame, monitor: str = "val_auc"):
    """Plot loss and ROC AUC per epoch, training stream against validation subset.

    The epoch whose weights were kept (best `monitor`) is marked with a vertical line.

    Args:
        history: Output of `luna_utils.training.train_cnn`.
        monitor: The metric early stopping watched.

    Returns:
        The figure.
    """
    import matplotlib.pyplot as plt

    best = history["epoch"].iloc[
        int(history[monitor].idxmin() if monitor.endswith("loss") else history[monitor].idxmax())
    ]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, metric, label in ((axes[0], "loss", "binary cross-entropy"), (axes[1], "auc", "ROC AUC")):
        ax.plot(history["epoch"], history[metric], "o-", label="training stream (balanced, augmented)")
        ax.plot(history["epoch"], history[f"val_{metric}"], "s-", label="validation subset (all candidates)")
        ax.axvline(best, color="grey", linestyle=":", label=f"kept: epoch {best}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
    axes[1].set_ylim(0.0, 1.02)
    axes[1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def plot_roc(curves: Mapping[str, tuple[ArrayLike, ArrayLike]], ax=None):
    """Plot ROC curves, one per model, with the AUC in the legend.

    Args:
        curves: Per model name, (labels 0/1, scores) of the same candidates.
        ax: Axes to draw on; None creates a figure.

    Returns:
        The axes.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(4.8, 4.2))
    for name, (labels, scores) in curves.items():
        false_positive_rate, true_positive_rate, _ = roc_curve(labels, scores)
        ax.plot(false_positive_rate, true_positive_rate, label=f"{name} (AUC {roc_auc_score(labels, scores):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    ax.set_xlabel("false positive rate (share of negatives above threshold)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.legend(fontsize=8, loc="lower right")
    return ax
