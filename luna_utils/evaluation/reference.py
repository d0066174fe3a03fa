"""A plain-loop implementation of the LUNA16 evaluation rules, kept simple to be obviously correct.

It follows the structure of the official `noduleCADEvaluationLUNA16.py`: loop over scans, then
over findings, then over marks, with Python floats. The tests and `benchmarks/bench_evaluation.py`
compare `luna_utils.evaluation.evaluate` against it. It expects valid tables (see
`luna_utils.evaluation.tables`) and makes the same two choices as the fast evaluator where the
official script gives NaN: sensitivity 0 when no nodule is hit, and resamples without a nodule
left out of the bootstrap.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import roc_curve

from luna_utils.evaluation.froc import BOOTSTRAP_GRID_FPS, FP_RATES_PER_SCAN

UNKNOWN_DIAMETER_MM = 10.0


def reference_evaluate(
    submission: pd.DataFrame,
    annotations: pd.DataFrame,
    excluded: pd.DataFrame,
    seriesuids: list[str],
    max_marks_per_scan: int | None = 100,
    bootstrap: int = 0,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Evaluate a submission with plain loops.

    Args:
        submission: `seriesuid, coordX, coordY, coordZ, probability`, one row per mark.
        annotations: Included nodules, `seriesuid, coordX, coordY, coordZ, diameter_mm`.
        excluded: Excluded findings, same columns.
        seriesuids: The evaluated scans, without duplicates.
        max_marks_per_scan: The per-scan cap; None or 0 keeps every mark.
        bootstrap: Number of resamples; 0 skips the bootstrap. Resamples draw the same scans as
            the fast evaluator for the same seed.
        seed: Seed of `numpy.random.default_rng`.
        confidence: Level of the intervals.

    Returns:
        A dict with the counts (`tp`, `fp`, `fn`, `n_nodules`, `n_marks`, `ignored_on_excluded`,
        `double_detections`, `dropped_by_cap`), `fps_per_scan`, `sensitivity`, `sensitivities`,
        `cpm`, `nodule_scores` (per included nodule of the listed scans in annotation order,
        NaN when missed) and, with a bootstrap, `cpm_ci`, `sensitivities_lower`,
        `sensitivities_upper` and `band_lower`, `band_mean`, `band_upper`.
    """
    listed = set(seriesuids)

    # Marks of each listed scan, in submission order.
    marks_by_scan: dict[str, list[tuple[float, float, float, float]]] = {uid: [] for uid in seriesuids}
    for row in submission.itertuples(index=False):
        if row.seriesuid in listed:
            marks_by_scan[row.seriesuid].append((row.coordX, row.coordY, row.coordZ, row.probability))

    nodules_by_scan = _findings_by_scan(annotations, listed)
    excluded_by_scan = _findings_by_scan(excluded, listed)

    counts = dict.fromkeys(
        ["tp", "fp", "fn", "n_nodules", "n_marks", "ignored_on_excluded", "double_detections", "dropped_by_cap"], 0
    )
    entries_by_scan: dict[str, list[tuple[int, float]]] = {uid: [] for uid in seriesuids}
    nodules_per_scan: dict[str, int] = {uid: 0 for uid in seriesuids}
    nodule_scores: dict[int, float] = {}

    for uid in seriesuids:
        marks = marks_by_scan[uid]

        # The cap: keep marks strictly above the (cap + 1)-th highest probability, and stop after
        # `cap` kept marks in submission order, as the official script does.
        if max_marks_per_scan and len(marks) > max_marks_per_scan:
            probabilities = sorted((mark[3] for mark in marks), reverse=True)
            cut = probabilities[max_marks_per_scan]
            kept = []
            for mark in marks:
                if len(kept) >= max_marks_per_scan:
                    break
                if mark[3] > cut:
                    kept.append(mark)
            counts["dropped_by_cap"] += len(marks) - len(kept)
            marks = kept
        counts["n_marks"] += len(marks)

        remaining = list(range(len(marks)))
        for row_index, x, y, z, diameter in nodules_by_scan.get(uid, []):
            counts["n_nodules"] += 1
            nodules_per_scan[uid] += 1
            radius_squared = (_diameter(diameter) / 2.0) ** 2
            matches = [i for i, mark in enumerate(marks) if _distance_squared(mark, x, y, z) < radius_squared]
            for i in matches:
                if i in remaining:
                    remaining.remove(i)
            if matches:
                score = max(marks[i][3] for i in matches)
                counts["tp"] += 1
                counts["double_detections"] += len(matches) - 1
                entries_by_scan[uid].append((1, score))
                nodule_scores[row_index] = score
            else:
                counts["fn"] += 1
                nodule_scores[row_index] = math.nan

        for _, x, y, z, diameter in excluded_by_scan.get(uid, []):
            radius_squared = (_diameter(diameter) / 2.0) ** 2
            for i in list(remaining):
                if _distance_squared(marks[i], x, y, z) < radius_squared:
                    counts["ignored_on_excluded"] += 1
                    remaining.remove(i)

        for i in remaining:
            counts["fp"] += 1
            entries_by_scan[uid].append((0, marks[i][3]))

    all_entries = [entry for uid in seriesuids for entry in entries_by_scan[uid]]
    fps, sensitivity = _froc(all_entries, len(seriesuids), counts["n_nodules"])
    sensitivities = np.interp(FP_RATES_PER_SCAN, fps, sensitivity)
    result: dict[str, Any] = dict(counts)
    result.update(
        fps_per_scan=fps,
        sensitivity=sensitivity,
        sensitivities=sensitivities,
        cpm=float(np.mean(sensitivities)),
        nodule_scores=[nodule_scores[key] for key in sorted(nodule_scores)],
    )
    if bootstrap and counts["n_nodules"]:
        result.update(_bootstrap(entries_by_scan, nodules_per_scan, seriesuids, bootstrap, seed, confidence))
    return result


def _findings_by_scan(table: pd.DataFrame, listed: set[str]) -> dict[str, list[tuple[int, float, float, float, float]]]:
    findings: dict[str, list[tuple[int, float, float, float, float]]] = {}
    for row_index, row in enumerate(table.itertuples(index=False)):
        if row.seriesuid in listed:
            findings.setdefault(row.seriesuid, []).append((row_index, row.coordX, row.coordY, row.coordZ, row.diameter_mm))
    return findings


def _diameter(diameter: float) -> float:
    return UNKNOWN_DIAMETER_MM if diameter < 0.0 else diameter


def _distance_squared(mark: tuple[float, float, float, float], x: float, y: float, z: float) -> float:
    return (mark[0] - x) ** 2 + (mark[1] - y) ** 2 + (mark[2] - z) ** 2


def _froc(entries: list[tuple[int, float]], n_scans: int, n_nodules: int) -> tuple[np.ndarray, np.ndarray]:
    """Compute the FROC as the official computeFROC does: sklearn's ROC curve, rescaled to false positives per scan."""
    labels = [label for label, _ in entries]
    scores = [score for _, score in entries]
    n_tp = sum(labels)
    n_fp = len(labels) - n_tp
    if not entries:
        return np.zeros(1), np.full(1, math.nan if n_nodules == 0 else 0.0)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        fpr, tpr, _ = roc_curve(labels, scores)
    fps = np.zeros(len(fpr)) if n_fp == 0 else fpr * n_fp / n_scans
    if n_nodules == 0:
        return fps, np.full(len(tpr), math.nan)
    if n_tp == 0:
        return fps, np.zeros(len(tpr))
    return fps, tpr * n_tp / n_nodules


def _bootstrap(entries_by_scan, nodules_per_scan, seriesuids, n_resamples, seed, confidence) -> dict[str, Any]:
    """Resample scans with replacement, concatenate their entries and recompute the FROC each time."""
    rng = np.random.default_rng(seed)
    curves = []
    cpms = []
    rates = []
    n_scans = len(seriesuids)
    for _ in range(n_resamples):
        drawn = rng.integers(0, n_scans, size=n_scans)
        entries = []
        n_nodules = 0
        for index in drawn:
            entries.extend(entries_by_scan[seriesuids[index]])
            n_nodules += nodules_per_scan[seriesuids[index]]
        if n_nodules == 0:
            continue
        fps, sensitivity = _froc(entries, n_scans, n_nodules)
        curves.append(np.interp(BOOTSTRAP_GRID_FPS, fps, sensitivity))
        at_rates = np.interp(FP_RATES_PER_SCAN, fps, sensitivity)
        rates.append(at_rates)
        cpms.append(float(np.mean(at_rates)))

    tail = (1.0 - confidence) / 2.0
    lower = int(math.floor(tail * len(cpms)))
    upper = int(math.floor((1.0 - tail) * len(cpms)))
    curves_sorted = np.sort(np.array(curves), axis=0)
    rates_sorted = np.sort(np.array(rates), axis=0)
    cpms_sorted = sorted(cpms)
    return {
        "cpm_ci": (cpms_sorted[lower], cpms_sorted[upper]),
        "sensitivities_lower": rates_sorted[lower],
        "sensitivities_upper": rates_sorted[upper],
        "band_mean": np.mean(np.array(curves), axis=0),
        "band_lower": curves_sorted[lower],
        "band_upper": curves_sorted[upper],
    }
