"""Reading an evaluation at one operating point: threshold, detected nodules, sensitivity by size."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from luna_utils.evaluation.result import EvaluationResult

# Diameter bins (mm) for sensitivity by size: LUNA16 nodules are at least 3 mm; the largest
# annotated one is about 32 mm.
DEFAULT_SIZE_BINS_MM = (3.0, 5.0, 10.0, 20.0, 40.0)


def threshold_at(result: EvaluationResult, fps_per_scan: float) -> float:
    """Return the lowest probability threshold whose FROC point stays within a false-positive rate.

    Marks with probability >= the threshold are kept. The threshold is that of the last FROC point
    with at most `fps_per_scan` average false positives per scan. The curve's first point, at
    threshold +inf, keeps nothing and has 0 false positives.

    Args:
        result: An evaluation result.
        fps_per_scan: The operating point, average false positives per scan.
    """
    within = np.flatnonzero(result.fps_per_scan <= fps_per_scan)
    return float(result.thresholds[within[-1]]) if len(within) else float("inf")


def detected_at(result: EvaluationResult, fps_per_scan: float | None = None) -> pd.Series:
    """Return which nodules are detected, at any probability or at an operating point.

    Args:
        result: An evaluation result.
        fps_per_scan: None counts a nodule as detected when any kept mark hits it; a number
            requires its score to reach `threshold_at(result, fps_per_scan)`.

    Returns:
        Bool per row of `result.nodules`.
    """
    if fps_per_scan is None:
        return result.nodules["detected"].copy()
    return result.nodules["score"].fillna(-np.inf) >= threshold_at(result, fps_per_scan)


def sensitivity_by_size(
    result: EvaluationResult,
    bins_mm: Sequence[float] = DEFAULT_SIZE_BINS_MM,
    fps_per_scan: float | None = None,
) -> pd.DataFrame:
    """Return the sensitivity per nodule diameter bin.

    Args:
        result: An evaluation result.
        bins_mm: Bin edges in mm; bins are closed on the left, [low, high).
        fps_per_scan: Operating point, as in `detected_at`; None counts hits at any probability.

    Returns:
        One row per bin: `diameter_mm` (the interval), `n_nodules`, `n_detected`, `sensitivity`
        (NaN for an empty bin).
    """
    detected = detected_at(result, fps_per_scan)
    bins = pd.cut(result.nodules["diameter_mm"], bins=list(bins_mm), right=False)
    table = (
        pd.DataFrame({"diameter_mm": bins, "detected": detected})
        .groupby("diameter_mm", observed=False)["detected"]
        .agg(n_nodules="size", n_detected="sum")
        .reset_index()
    )
    table["n_detected"] = table["n_detected"].astype(int)
    table["sensitivity"] = table["n_detected"] / table["n_nodules"].where(table["n_nodules"] > 0)
    return table
