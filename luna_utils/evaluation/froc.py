"""FROC curve, CPM and their bootstrap, as the official LUNA16 evaluation computes them.

The FROC analysis uses one score per included nodule that some mark hits (the highest
probability among its marks) and one score per false-positive mark. Missed nodules count in the
number of nodules but have no score. The curve is sklearn's ROC curve over those scores
(computed here with the same arithmetic), rescaled: average false positives per scan =
FPR x false positives / scans, and sensitivity = TPR x detected nodules / nodules. The
competition performance metric (CPM) is the mean sensitivity at 1/8, 1/4, 1/2, 1, 2, 4 and 8
false positives per scan, read off the curve with `numpy.interp`.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from luna_utils.evaluation.warning_types import UndefinedSensitivityWarning
from luna_utils.progress import progress

logger = logging.getLogger(__name__)

# Average false positives per scan at which the CPM reads the sensitivity.
FP_RATES_PER_SCAN = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)

# The official script draws the bootstrap bands on this grid of false positives per scan.
BOOTSTRAP_GRID_FPS = np.linspace(0.125, 8.0, num=10000)


@dataclass(frozen=True)
class FrocEntries:
    """The scores the FROC analysis uses, each tagged with its scan.

    Attributes:
        tp_scores: Shape (T,), score of each detected nodule.
        tp_scans: Shape (T,), its scan code.
        fp_scores: Shape (F,), probability of each false-positive mark.
        fp_scans: Shape (F,), its scan code.
        nodules_per_scan: Shape (n_scans,), included nodules per scan, detected or not.
    """

    tp_scores: NDArray[np.float64]
    tp_scans: NDArray[np.int64]
    fp_scores: NDArray[np.float64]
    fp_scans: NDArray[np.int64]
    nodules_per_scan: NDArray[np.int64]

    @property
    def n_scans(self) -> int:
        """Number of evaluated scans."""
        return len(self.nodules_per_scan)


@dataclass(frozen=True)
class BootstrapResult:
    """Bootstrap of the FROC over scans: resampled with replacement, same number of scans.

    Attributes:
        n_resamples: Resamples drawn.
        n_used: Resamples used: those that drew at least one nodule.
        seed: Seed of `numpy.random.default_rng`.
        confidence: Level of the intervals, e.g. 0.95.
        fps_per_scan: Shape (G,), the grid of average false positives per scan.
        sensitivity_mean: Shape (G,), mean sensitivity over resamples on that grid.
        sensitivity_lower: Shape (G,), lower bound of the interval.
        sensitivity_upper: Shape (G,), upper bound of the interval.
        sensitivities_lower: Shape (7,), lower bounds at `FP_RATES_PER_SCAN`.
        sensitivities_upper: Shape (7,), upper bounds at `FP_RATES_PER_SCAN`.
        cpm_mean: Mean CPM over resamples.
        cpm_lower: Lower bound of the CPM interval.
        cpm_upper: Upper bound of the CPM interval.
    """

    n_resamples: int
    n_used: int
    seed: int
    confidence: float
    fps_per_scan: NDArray[np.float64]
    sensitivity_mean: NDArray[np.float64]
    sensitivity_lower: NDArray[np.float64]
    sensitivity_upper: NDArray[np.float64]
    sensitivities_lower: NDArray[np.float64]
    sensitivities_upper: NDArray[np.float64]
    cpm_mean: float
    cpm_lower: float
    cpm_upper: float

    @property
    def cpm_ci(self) -> tuple[float, float]:
        """The CPM interval as (lower, upper)."""
        return (self.cpm_lower, self.cpm_upper)


def froc_curve(entries: FrocEntries) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Compute the FROC curve exactly as the official script does with `sklearn.metrics.roc_curve`.

    The points, thresholds and float operations are those of `roc_curve` as of scikit-learn 1.9,
    with its default `drop_intermediate=True`. They come from one sort of the scores, without
    sklearn's input checks: about 3x faster than `roc_curve` on the benchmark submission of
    `benchmarks/bench_evaluation.py`, and the tests compare the two.

    Args:
        entries: The scores of detected nodules and false positives.

    Returns:
        (fps_per_scan, sensitivity, thresholds), each of shape (P,), ordered by decreasing
        threshold; the first point is (0, 0) at threshold +inf.
    """
    n_tp = len(entries.tp_scores)
    n_fp = len(entries.fp_scores)
    n_nodules = int(entries.nodules_per_scan.sum())
    if n_tp + n_fp == 0:
        return np.zeros(1), _sensitivity(np.zeros(1), n_nodules), np.array([np.inf])

    tp_counts, fp_counts, thresholds = _roc_points(entries.tp_scores, entries.fp_scores)

    if n_fp == 0:
        # The official script's border case: a system without false positives gets fps = 0.
        fps = np.zeros(len(fp_counts))
    else:
        fps = fp_counts / fp_counts[-1] * n_fp / entries.n_scans

    if n_tp == 0:
        # NOTE: the official script returns NaN sensitivities here, from 0 / 0 in the ROC curve.
        # A system that detects no nodule has sensitivity 0 at every rate, so 0 is returned.
        return fps, _sensitivity(np.zeros(len(tp_counts)), n_nodules), thresholds
    return fps, _sensitivity(tp_counts / tp_counts[-1] * n_tp, n_nodules), thresholds


def _roc_points(
    tp_scores: NDArray[np.float64], fp_scores: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Return the points of `sklearn.metrics.roc_curve` as counts: (tp counts, fp counts, thresholds).

    Each distinct score, from the highest, is a threshold, and its point counts the entries
    scoring at or above it. Points between two collinear neighbours are dropped, as sklearn's
    `drop_intermediate` does, and (0, 0) at threshold +inf comes first. The counts are float64,
    as in sklearn, so dividing them by their last value gives sklearn's rates bit for bit.
    """
    # Runs of equal scores in the ascending sort; each run is one threshold.
    scores = np.sort(np.concatenate((tp_scores, fp_scores)))
    run_starts = np.flatnonzero(np.r_[True, scores[1:] != scores[:-1]])[::-1]
    thresholds = scores[run_starts]

    # Entries at or above each threshold, and the detected nodules among them.
    at_or_above = len(scores) - run_starts
    tp_counts = len(tp_scores) - np.searchsorted(np.sort(tp_scores), thresholds, side="left")
    fp_counts = at_or_above - tp_counts

    if len(thresholds) > 2:
        corner = np.r_[True, (np.diff(fp_counts, 2) != 0) | (np.diff(tp_counts, 2) != 0), True]
        tp_counts, fp_counts, thresholds = tp_counts[corner], fp_counts[corner], thresholds[corner]

    return (
        np.r_[0.0, tp_counts.astype(np.float64)],
        np.r_[0.0, fp_counts.astype(np.float64)],
        np.r_[np.inf, thresholds],
    )


def cpm_from_curve(fps_per_scan: NDArray[np.float64], sensitivity: NDArray[np.float64]) -> tuple[NDArray[np.float64], float]:
    """Return the sensitivities at `FP_RATES_PER_SCAN` (shape (7,)) and their mean, the CPM.

    Past the curve's last point `numpy.interp` returns the last sensitivity, as in the official script.
    """
    sensitivities = np.interp(FP_RATES_PER_SCAN, fps_per_scan, sensitivity)
    return sensitivities, float(np.mean(sensitivities))


def bootstrap_froc(
    entries: FrocEntries,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    show_progress: bool = False,
) -> BootstrapResult | None:
    """Bootstrap the FROC curve and the CPM over scans.

    Each resample draws `n_scans` scans with replacement; a scan drawn k times counts k times.
    The curve of a resample is the same as `froc_curve` on the concatenated entries of the drawn
    scans, but computed from one global sort with per-scan weights, so no resample is sorted again.
    Intervals follow the official script: from the sorted resample values, the lower bound is
    the value at index floor((1 - confidence) / 2 x n) and the upper bound the one at
    floor((1 + confidence) / 2 x n). The bands are float64, where the official script stores
    float32, so they can differ from its output in the seventh digit. The resample draws come from
    `numpy.random.default_rng(seed)`, so they differ from the official script's unseeded draws.

    Args:
        entries: The scores of detected nodules and false positives.
        n_resamples: Number of resamples; 0 returns None.
        seed: Seed of `numpy.random.default_rng`.
        confidence: Level of the intervals.
        show_progress: Show a progress bar over resamples.

    Returns:
        The bands and intervals, or None if `n_resamples` is 0 or no resample contains a nodule.
    """
    if n_resamples <= 0:
        return None
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1; got {confidence}.")

    # One global sort by decreasing score; the last row of each run of equal scores is a threshold.
    scores = np.concatenate((entries.tp_scores, entries.fp_scores))
    is_tp = np.concatenate((np.ones(len(entries.tp_scores)), np.zeros(len(entries.fp_scores))))
    scans = np.concatenate((entries.tp_scans, entries.fp_scans))
    order = np.argsort(-scores, kind="stable")
    sorted_scans = scans[order]
    run_ends = np.flatnonzero(np.diff(scores[order]) != 0)
    run_ends = np.append(run_ends, len(scores) - 1) if len(scores) else run_ends

    # Detected nodules are few: their running count at each threshold is a gather from a short
    # cumulative sum, and false positives are all entries minus those.
    tp_positions = np.flatnonzero(is_tp[order])
    tp_scans = sorted_scans[tp_positions]
    tp_before_run_end = np.searchsorted(tp_positions, run_ends, side="right")

    rng = np.random.default_rng(seed)
    grid = BOOTSTRAP_GRID_FPS
    n_scans = entries.n_scans
    curves = np.empty((n_resamples, len(grid)))
    at_rates = np.empty((n_resamples, len(FP_RATES_PER_SCAN)))
    used = np.zeros(n_resamples, dtype=bool)

    resamples = range(n_resamples)
    if show_progress:
        resamples = progress(resamples, desc="bootstrap", total=n_resamples)
    for index in resamples:
        draw_counts = np.bincount(rng.integers(0, n_scans, size=n_scans), minlength=n_scans)
        n_nodules = int(draw_counts @ entries.nodules_per_scan)
        if n_nodules == 0:
            continue

        # Integer counts of entries up to each threshold, with each scan weighted by its draws.
        cumulative_all = np.cumsum(draw_counts[sorted_scans])[run_ends]
        cumulative_tp = np.concatenate(([0], np.cumsum(draw_counts[tp_scans])))[tp_before_run_end]
        cumulative_fp = cumulative_all - cumulative_tp
        fps, sensitivity = _rescale(cumulative_fp.astype(np.float64), cumulative_tp.astype(np.float64), n_scans, n_nodules)

        curves[index] = np.interp(grid, fps, sensitivity)
        at_rates[index] = np.interp(FP_RATES_PER_SCAN, fps, sensitivity)
        used[index] = True

    n_used = int(used.sum())
    if n_used < n_resamples:
        warnings.warn(
            f"{n_resamples - n_used} of {n_resamples} bootstrap resamples drew no scan with a nodule, "
            "so their sensitivity is undefined; the intervals use the other resamples. Evaluate more "
            "scans for a meaningful interval.",
            UndefinedSensitivityWarning,
            stacklevel=3,
        )
    if n_used == 0:
        return None

    curves = curves[used]
    cpms = at_rates[used].mean(axis=1)
    lower_curve, upper_curve = _interval(curves, confidence)
    lower_rates, upper_rates = _interval(at_rates[used], confidence)
    cpm_lower, cpm_upper = _interval(cpms[:, np.newaxis], confidence)
    logger.info("Bootstrap of %d resamples: CPM %.4f, interval %.4f-%.4f", n_used, cpms.mean(), cpm_lower[0], cpm_upper[0])
    return BootstrapResult(
        n_resamples=n_resamples,
        n_used=n_used,
        seed=seed,
        confidence=confidence,
        fps_per_scan=grid.copy(),
        sensitivity_mean=curves.mean(axis=0),
        sensitivity_lower=lower_curve,
        sensitivity_upper=upper_curve,
        sensitivities_lower=lower_rates,
        sensitivities_upper=upper_rates,
        cpm_mean=float(cpms.mean()),
        cpm_lower=float(cpm_lower[0]),
        cpm_upper=float(cpm_upper[0]),
    )


def _rescale(
    cumulative_fp: NDArray[np.float64], cumulative_tp: NDArray[np.float64], n_scans: int, n_nodules: int
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Turn cumulative counts into a FROC curve starting at (0, 0), with the official float operations.

    The official script computes FPR x FP / scans and TPR x TP / nodules with the rates from
    sklearn (count / total). Repeating those operations, rather than count / scans, keeps points
    that land on a CPM rate or a grid value bit-identical, which matters where the curve is
    vertical: there `numpy.interp` returns the upper end of the jump only at the exact x value.
    """
    fps = np.zeros(len(cumulative_fp) + 1)
    sensitivity = np.zeros(len(cumulative_tp) + 1)
    total_fp = cumulative_fp[-1] if len(cumulative_fp) else 0.0
    total_tp = cumulative_tp[-1] if len(cumulative_tp) else 0.0
    if total_fp > 0:
        fps[1:] = (cumulative_fp / total_fp) * total_fp / n_scans
    if total_tp > 0:
        sensitivity[1:] = (cumulative_tp / total_tp) * total_tp / n_nodules
    return fps, sensitivity


def _sensitivity(detected: NDArray[np.float64], n_nodules: int) -> NDArray[np.float64]:
    """Divide detected-nodule counts by the number of nodules; NaN when there is no nodule."""
    if n_nodules == 0:
        return np.full(len(detected), np.nan)
    return detected / n_nodules


def _interval(values: NDArray[np.float64], confidence: float) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Return the official percentile bounds of each column of a (resamples, points) array.

    The bounds are the values at two ranks of each sorted column; a partial sort finds them.
    """
    tail = (1.0 - confidence) / 2.0
    n = len(values)
    lower, upper = int(math.floor(tail * n)), int(math.floor((1.0 - tail) * n))
    ordered = np.partition(values, [lower, upper], axis=0)
    return ordered[lower], ordered[upper]
