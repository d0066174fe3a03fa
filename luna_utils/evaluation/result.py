"""The result of a LUNA16 evaluation: counts, FROC curve, CPM, bootstrap, per-nodule and per-mark tables."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from luna_utils.evaluation.froc import FP_RATES_PER_SCAN, BootstrapResult


@dataclass(frozen=True)
class EvaluationResult:
    """Everything the evaluation of one submission produced.

    The counts mean what the official `CADAnalysis.txt` reports.

    Attributes:
        tp: Included nodules hit by at least one mark ("True positives").
        fp: Marks that hit neither an included nodule nor an excluded finding.
        fn: Included nodules no mark hits.
        n_nodules: Included nodules in the evaluated scans ("Total number of nodules").
        n_marks: Marks of evaluated scans after the cap ("Total number of candidates").
        ignored_on_excluded: Marks that hit no included nodule but an excluded finding
            ("Ignored candidates on excluded nodules").
        double_detections: Sum over detected nodules of (marks hitting it - 1) ("Ignored
            candidates which were double detections on a nodule").
        dropped_by_cap: Marks of evaluated scans removed by the per-scan cap.
        n_scans: Number of evaluated scans.
        unlisted_marks: Marks for scans outside the evaluated list, ignored.
        max_marks_per_scan: The cap that was applied; None when no cap was applied.
        used_excluded: Whether marks on excluded findings were ignored (False when the excluded
            list was left out, so such marks counted as false positives).
        fps_per_scan: Shape (P,), FROC x: average false positives per scan.
        sensitivity: Shape (P,), FROC y.
        thresholds: Shape (P,), probability threshold of each FROC point (+inf first).
        sensitivities: Shape (7,), sensitivity at `FP_RATES_PER_SCAN`.
        cpm: Mean of `sensitivities`.
        bootstrap: Bootstrap bands and intervals; None when not computed.
        nodules: One row per included nodule of the evaluated scans, in annotation order: the
            annotation columns plus `detected` (bool), `score` (highest probability of a mark on
            it, NaN if missed) and `n_hits` (marks on it).
        marks: One row per submission row, in submission order: the submission columns plus
            `outcome` ("hit", "double", "excluded", "false_positive", "dropped_by_cap" or
            "unlisted"). "hit" marks the mark scoring a nodule (the first in submission order on
            ties); "double" marks the other marks on nodules.
    """

    tp: int
    fp: int
    fn: int
    n_nodules: int
    n_marks: int
    ignored_on_excluded: int
    double_detections: int
    dropped_by_cap: int
    n_scans: int
    unlisted_marks: int
    max_marks_per_scan: int | None
    used_excluded: bool
    fps_per_scan: NDArray[np.float64] = field(repr=False)
    sensitivity: NDArray[np.float64] = field(repr=False)
    thresholds: NDArray[np.float64] = field(repr=False)
    sensitivities: NDArray[np.float64] = field(repr=False)
    cpm: float
    bootstrap: BootstrapResult | None = field(repr=False)
    nodules: pd.DataFrame = field(repr=False)
    marks: pd.DataFrame = field(repr=False)

    @property
    def cpm_ci(self) -> tuple[float, float] | None:
        """The bootstrap interval of the CPM as (lower, upper); None without bootstrap."""
        return None if self.bootstrap is None else self.bootstrap.cpm_ci

    @property
    def detection_sensitivity(self) -> float:
        """Fraction of nodules hit at any probability, the "Sensitivity" line of `CADAnalysis.txt`."""
        return self.tp / self.n_nodules if self.n_nodules else math.nan

    def counts(self) -> dict[str, int]:
        """Return the counts as a dict, in the order `CADAnalysis.txt` lists them."""
        return {
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "n_nodules": self.n_nodules,
            "n_marks": self.n_marks,
            "ignored_on_excluded": self.ignored_on_excluded,
            "double_detections": self.double_detections,
            "dropped_by_cap": self.dropped_by_cap,
        }

    def froc_frame(self) -> pd.DataFrame:
        """Return the FROC curve: columns `fps_per_scan`, `sensitivity`, `threshold`."""
        return pd.DataFrame(
            {"fps_per_scan": self.fps_per_scan, "sensitivity": self.sensitivity, "threshold": self.thresholds}
        )

    def sensitivity_table(self) -> pd.DataFrame:
        """Return the sensitivities at the seven FP rates, with bootstrap bounds when available."""
        table = pd.DataFrame({"fps_per_scan": FP_RATES_PER_SCAN, "sensitivity": self.sensitivities})
        if self.bootstrap is not None:
            table["lower"] = self.bootstrap.sensitivities_lower
            table["upper"] = self.bootstrap.sensitivities_upper
        return table

    def bootstrap_frame(self) -> pd.DataFrame | None:
        """Return the bootstrap bands: columns `fps_per_scan`, `mean`, `lower`, `upper`; None without bootstrap."""
        if self.bootstrap is None:
            return None
        return pd.DataFrame(
            {
                "fps_per_scan": self.bootstrap.fps_per_scan,
                "mean": self.bootstrap.sensitivity_mean,
                "lower": self.bootstrap.sensitivity_lower,
                "upper": self.bootstrap.sensitivity_upper,
            }
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the numbers as plain Python values, ready for `json.dumps`.

        Keys: the counts, `n_scans`, `sensitivities` (seven values, 1/8 false positives per scan
        first), `cpm`, and `cpm_ci` ([lower, upper]) when the bootstrap ran. NaN becomes None.
        """
        numbers: dict[str, Any] = dict(self.counts())
        numbers["n_scans"] = self.n_scans
        numbers["sensitivities"] = [_json_float(value) for value in self.sensitivities]
        numbers["cpm"] = _json_float(self.cpm)
        if self.cpm_ci is not None:
            numbers["cpm_ci"] = [_json_float(value) for value in self.cpm_ci]
        return numbers

    def summary(self) -> str:
        """Return a text report: the counts, the seven sensitivities and the CPM."""
        return format_summary(self)


def format_summary(result: EvaluationResult) -> str:
    """Format a result as the text report the CLI prints."""
    lines = [
        f"Scans evaluated: {result.n_scans}",
        f"Total number of marks (after the cap): {result.n_marks}",
        f"Total number of nodules: {result.n_nodules}",
        f"True positives: {result.tp}",
        f"False positives: {result.fp}",
        f"False negatives: {result.fn}",
        f"Ignored marks on excluded findings: {result.ignored_on_excluded}",
        f"Ignored marks that were double detections on a nodule: {result.double_detections}",
        f"Marks dropped by the cap of {result.max_marks_per_scan} per scan: {result.dropped_by_cap}"
        if result.max_marks_per_scan
        else "Marks dropped by a cap: 0 (no cap applied)",
        f"Marks for scans outside the list (ignored): {result.unlisted_marks}",
        f"Sensitivity at any probability: {result.detection_sensitivity:.4f}",
        "",
        "False positives per scan   Sensitivity",
    ]
    bounds = result.sensitivity_table()
    for row in bounds.itertuples(index=False):
        interval = f"   ({row.lower:.4f}-{row.upper:.4f})" if "lower" in bounds.columns else ""
        lines.append(f"{row.fps_per_scan:>24g}   {row.sensitivity:.4f}{interval}")

    cpm_line = f"CPM: {result.cpm:.4f}"
    if result.bootstrap is not None:
        level = round(result.bootstrap.confidence * 100)
        cpm_line += (
            f"   ({level}% interval {result.bootstrap.cpm_lower:.4f}-{result.bootstrap.cpm_upper:.4f}, "
            f"{result.bootstrap.n_used} bootstrap resamples, seed {result.bootstrap.seed})"
        )
    lines.extend(["", cpm_line])
    if not result.used_excluded:
        lines.append("Excluded findings were not used: marks on them counted as false positives.")
    return "\n".join(lines)


def _json_float(value: float) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value
