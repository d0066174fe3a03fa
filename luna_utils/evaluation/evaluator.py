"""Scoring a submission under the official LUNA16 rules: `evaluate` and `evaluate_files`."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from luna_utils.errors import DatasetError
from luna_utils.evaluation import rules
from luna_utils.evaluation.froc import FrocEntries, bootstrap_froc, cpm_from_curve, froc_curve
from luna_utils.evaluation.result import EvaluationResult
from luna_utils.evaluation.tables import (
    COORD_COLUMNS,
    check_findings,
    check_seriesuid_values,
    check_seriesuids,
    check_submission,
    read_seriesuids,
    read_table,
)
from luna_utils.evaluation.uid_groups import scan_codes
from luna_utils.evaluation.warning_types import (
    ScansWithoutMarksWarning,
    TiedAtCapWarning,
    UndefinedSensitivityWarning,
    UnlistedMarksWarning,
)

logger = logging.getLogger(__name__)

# Scan ids quoted in a warning before the rest is summarised as a count.
MAX_IDS_IN_MESSAGE = 3

UNLISTED = "unlisted"


def evaluate(
    submission: pd.DataFrame,
    annotations: pd.DataFrame,
    excluded: pd.DataFrame | None,
    seriesuids: Iterable[str] | pd.Series | pd.DataFrame,
    *,
    allow_no_excluded: bool = False,
    max_marks_per_scan: int | None = rules.OFFICIAL_MAX_MARKS_PER_SCAN,
    bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    show_progress: bool = False,
) -> EvaluationResult:
    """Score a submission with the rules of the official LUNA16 evaluation script.

    Steps:

    1. Marks for scans outside `seriesuids` are ignored.
    2. Each scan keeps at most `max_marks_per_scan` marks: those strictly above its (cap + 1)-th
       highest probability, so marks tied at the cut are all dropped.
    3. A mark hits a finding when its squared distance is strictly below (diameter / 2) ** 2.
       Excluded findings of diameter -1 count as 10 mm.
    4. Each hit nodule is scored with its highest mark. Marks on excluded findings are ignored,
       and the rest are false positives.
    5. The FROC curve, the CPM and a bootstrap over scans follow.

    Warns (`luna_utils.evaluation.warning_types`) when listed scans have no marks, when marks
    belong to unlisted scans, and when ties at the cap drop marks.

    Args:
        submission: One row per mark: `seriesuid, coordX, coordY, coordZ, probability`
            (world LPS mm).
        annotations: Included nodules: `seriesuid, coordX, coordY, coordZ, diameter_mm`.
        excluded: Findings to ignore, same columns (`annotations_excluded.csv`); None only with
            `allow_no_excluded`.
        seriesuids: The evaluated scans (every scan of the test set, with marks or not).
        allow_no_excluded: Accept `excluded=None`; marks on excluded findings then count as false
            positives, which lowers the CPM compared with the official evaluation.
        max_marks_per_scan: The per-scan cap; the official script uses 100. None or 0 keeps every
            mark.
        bootstrap: Number of bootstrap resamples over scans; 0 skips the bootstrap.
        seed: Seed of the bootstrap's `numpy.random.default_rng`.
        confidence: Level of the bootstrap intervals.
        show_progress: Show a progress bar over bootstrap resamples.

    Returns:
        The counts, FROC curve, seven sensitivities, CPM, bootstrap and per-nodule and per-mark tables.

    Raises:
        DatasetError: On invalid tables (the message names the table, column and row), an empty
            or duplicated scan list, or a missing excluded table without `allow_no_excluded`.
    """
    _require_excluded(excluded, allow_no_excluded)
    used_excluded = excluded is not None
    if excluded is None:
        logger.warning("Scoring without excluded findings: marks on them count as false positives.")
        excluded = pd.DataFrame(columns=["seriesuid", *COORD_COLUMNS, "diameter_mm"])
    if max_marks_per_scan is not None and max_marks_per_scan < 0:
        raise ValueError(f"max_marks_per_scan must be positive, 0 or None; got {max_marks_per_scan}.")

    submission = check_submission(submission, "submission", check_uids=False)
    annotations = check_findings(annotations, "annotations")
    excluded = check_findings(excluded, "excluded findings")
    uids = check_seriesuids(seriesuids, "seriesuids")
    return _evaluate_checked(
        submission,
        annotations,
        excluded,
        uids,
        used_excluded=used_excluded,
        max_marks_per_scan=max_marks_per_scan or None,
        bootstrap=bootstrap,
        seed=seed,
        confidence=confidence,
        show_progress=show_progress,
    )


def evaluate_files(
    submission: str | Path,
    annotations: str | Path,
    excluded: str | Path | None,
    seriesuids: str | Path,
    **options,
) -> EvaluationResult:
    """Read the four CSV files and `evaluate` them; errors name the file and line at fault.

    Args:
        submission: CSV with `seriesuid,coordX,coordY,coordZ,probability`.
        annotations: The official `annotations.csv` (or a table of the same layout).
        excluded: `annotations_excluded.csv`; None only with `allow_no_excluded=True`.
        seriesuids: One seriesuid per line, with or without a `seriesuid` header.
        **options: Keyword arguments of `evaluate`.
    """
    _require_excluded(excluded, options.get("allow_no_excluded", False))
    return evaluate(
        read_table(submission, "submission"),
        read_table(annotations, "findings"),
        None if excluded is None else read_table(excluded, "findings"),
        read_seriesuids(seriesuids),
        **options,
    )


def _require_excluded(excluded, allow_no_excluded: bool) -> None:
    """Raise unless the excluded findings are given or their absence is allowed explicitly."""
    if excluded is None and not allow_no_excluded:
        raise DatasetError(
            "No excluded findings were given. The official LUNA16 evaluation ignores marks on the "
            "findings of annotations_excluded.csv; without them those marks count as false positives "
            "and the CPM drops. Pass that table (evaluationScript/annotations/annotations_excluded.csv), "
            "or pass allow_no_excluded=True (CLI: --no-excluded) to score without it on purpose."
        )


def _evaluate_checked(
    submission: pd.DataFrame,
    annotations: pd.DataFrame,
    excluded: pd.DataFrame,
    uids: list[str],
    *,
    used_excluded: bool,
    max_marks_per_scan: int | None,
    bootstrap: int,
    seed: int,
    confidence: float,
    show_progress: bool,
) -> EvaluationResult:
    """Run the evaluation on validated tables."""
    n_scans = len(uids)
    scan_index = pd.Index(uids)
    marks = _kept_marks(submission, scan_index, max_marks_per_scan)

    # Findings of evaluated scans.
    nodule_rows, nodule_scans = _findings_in(annotations, scan_index)
    nodules = annotations.iloc[nodule_rows].reset_index(drop=True)
    excluded_rows, excluded_scans = _findings_in(excluded, scan_index)

    match = rules.match_marks(
        marks.scans,
        marks.xyz_mm,
        marks.probabilities,
        nodule_scans,
        _column_stack(nodules, COORD_COLUMNS),
        nodules["diameter_mm"].to_numpy(),
        excluded_scans,
        _column_stack(excluded, COORD_COLUMNS, excluded_rows),
        excluded["diameter_mm"].to_numpy()[excluded_rows],
    )

    # FROC entries: one score per detected nodule, one per false-positive mark.
    detected = match.nodule_hits > 0
    is_fp = match.mark_outcome == rules.FALSE_POSITIVE
    entries = FrocEntries(
        tp_scores=match.nodule_score[detected],
        tp_scans=nodule_scans[detected],
        fp_scores=marks.probabilities[is_fp],
        fp_scans=marks.scans[is_fp],
        nodules_per_scan=np.bincount(nodule_scans, minlength=n_scans),
    )
    if len(nodules) == 0:
        message = (
            f"The {n_scans} evaluated scan(s) contain no included nodule, so sensitivity and CPM are "
            "undefined (NaN). Check that the annotations and the scan list belong together."
        )
        logger.warning(message)
        warnings.warn(message, UndefinedSensitivityWarning, stacklevel=3)
    fps, sensitivity, thresholds = froc_curve(entries)
    sensitivities, cpm = cpm_from_curve(fps, sensitivity)
    bootstrap_result = None
    if len(nodules):
        bootstrap_result = bootstrap_froc(entries, bootstrap, seed, confidence, show_progress)

    result = EvaluationResult(
        tp=int(detected.sum()),
        fp=int(is_fp.sum()),
        fn=int((~detected).sum()),
        n_nodules=len(nodules),
        n_marks=len(marks.rows),
        ignored_on_excluded=int((match.mark_outcome == rules.EXCLUDED).sum()),
        double_detections=int(np.maximum(match.nodule_hits - 1, 0).sum()),
        dropped_by_cap=marks.n_listed - len(marks.rows),
        n_scans=n_scans,
        unlisted_marks=marks.n_unlisted,
        max_marks_per_scan=max_marks_per_scan,
        used_excluded=used_excluded,
        fps_per_scan=fps,
        sensitivity=sensitivity,
        thresholds=thresholds,
        sensitivities=sensitivities,
        cpm=cpm,
        bootstrap=bootstrap_result,
        nodules=_nodule_table(nodules, match),
        marks=_mark_table(submission, marks, match),
    )
    logger.info(
        "Evaluated %d marks on %d scan(s): %d of %d nodules hit, %d false positives, CPM %.4f",
        result.n_marks,
        n_scans,
        result.tp,
        result.n_nodules,
        result.fp,
        cpm,
    )
    return result


@dataclass(frozen=True)
class _KeptMarks:
    """The marks of evaluated scans that the cap keeps, as arrays in submission order.

    Attributes:
        rows: Shape (K,), positions of the kept marks in the submission.
        scans: Shape (K,), scan code per kept mark.
        probabilities: Shape (K,).
        xyz_mm: Shape (K, 3), world (x, y, z) mm.
        listed_rows: Positions of the marks of evaluated scans; None when that is every row.
        n_listed: Marks of evaluated scans, before the cap.
        n_unlisted: Marks of other scans, ignored.
    """

    rows: np.ndarray
    scans: np.ndarray
    probabilities: np.ndarray
    xyz_mm: np.ndarray
    listed_rows: np.ndarray | None
    n_listed: int
    n_unlisted: int


def _kept_marks(submission: pd.DataFrame, scan_index: pd.Index, max_marks_per_scan: int | None) -> _KeptMarks:
    """Select the marks of evaluated scans, apply the cap, and warn about what gets left out."""
    n_scans = len(scan_index)

    # Marks of evaluated scans; the others are ignored, as in the official script. The slice
    # selects every row without copying when all rows belong to evaluated scans.
    mark_scans = scan_codes(submission["seriesuid"], scan_index)
    n_unlisted = 0
    listed_rows: slice | np.ndarray = slice(None)
    if len(mark_scans) and mark_scans.min() < 0:
        unlisted = mark_scans < 0
        n_unlisted = int(np.count_nonzero(unlisted))
        check_seriesuid_values(submission, "submission", rows=unlisted)
        _warn_about_unlisted(submission, unlisted)
        listed_rows = np.flatnonzero(~unlisted)
    listed_scans = mark_scans[listed_rows]
    probabilities = submission["probability"].to_numpy()
    _warn_about_unmarked(np.bincount(listed_scans, minlength=n_scans), scan_index)

    # The per-scan cap, applied to the marks of evaluated scans only.
    cap = rules.apply_cap(listed_scans, probabilities[listed_rows], max_marks_per_scan, n_scans)
    if cap.tied_marks_dropped:
        _warn_about_ties(cap, max_marks_per_scan)
    kept_rows = np.flatnonzero(cap.keep)
    if n_unlisted:
        kept_rows = listed_rows[kept_rows]

    return _KeptMarks(
        rows=kept_rows,
        scans=mark_scans[kept_rows],
        probabilities=probabilities[kept_rows],
        xyz_mm=_column_stack(submission, COORD_COLUMNS, kept_rows),
        listed_rows=listed_rows if n_unlisted else None,
        n_listed=len(listed_scans),
        n_unlisted=n_unlisted,
    )


def _findings_in(table: pd.DataFrame, scan_index: pd.Index) -> tuple[np.ndarray, np.ndarray]:
    """Return the positions of the findings of evaluated scans in a table, and their scan codes."""
    scans = scan_codes(table["seriesuid"], scan_index)
    rows = np.flatnonzero(scans >= 0)
    return rows, scans[rows]


def _column_stack(table: pd.DataFrame, columns: tuple[str, ...], rows: np.ndarray | None = None) -> np.ndarray:
    """Return the given rows (all when None) of some float columns as one (rows, columns) array."""
    if rows is None:
        return np.column_stack([table[column].to_numpy() for column in columns])
    return np.column_stack([table[column].to_numpy()[rows] for column in columns])


def _warn_about_unlisted(submission: pd.DataFrame, unlisted: np.ndarray) -> None:
    """Warn about marks of scans outside the evaluated list."""
    uids = submission.loc[unlisted, "seriesuid"].unique()
    message = (
        f"{int(unlisted.sum())} mark(s) belong to {len(uids)} scan(s) outside the evaluated "
        f"list ({_some_ids(uids)}); they are ignored. Check that the scan list matches the "
        "scans you predicted on."
    )
    logger.warning(message)
    warnings.warn(message, UnlistedMarksWarning, stacklevel=5)


def _warn_about_unmarked(marks_per_scan: np.ndarray, uids: pd.Index) -> None:
    """Warn about evaluated scans without marks."""
    if marks_per_scan.all():
        return
    unmarked = [uid for uid, count in zip(uids, marks_per_scan) if count == 0]
    message = (
        f"{len(unmarked)} of {len(uids)} evaluated scan(s) have no marks ({_some_ids(unmarked)}): "
        "their nodules all count as missed. If the scan list is larger than the set you "
        "predicted on, pass only the scans you predicted on."
    )
    logger.warning(message)
    warnings.warn(message, ScansWithoutMarksWarning, stacklevel=5)


def _warn_about_ties(cap: rules.CapResult, max_marks: int) -> None:
    message = (
        f"In {cap.tied_scans} scan(s), marks tied with the {_ordinal(max_marks + 1)} highest probability "
        f"at the {max_marks}-mark cap were all dropped: {cap.tied_marks_dropped} mark(s) ranked "
        f"within the top {max_marks} were lost with them. The official rule keeps only marks strictly "
        f"above that probability. Submit at most {max_marks} marks per scan, or break ties."
    )
    logger.warning(message)
    warnings.warn(message, TiedAtCapWarning, stacklevel=5)


def _nodule_table(nodules: pd.DataFrame, match: rules.MatchResult) -> pd.DataFrame:
    table = nodules.copy()
    table["detected"] = match.nodule_hits > 0
    table["score"] = match.nodule_score
    table["n_hits"] = match.nodule_hits
    return table


def _mark_table(submission: pd.DataFrame, marks: _KeptMarks, match: rules.MatchResult) -> pd.DataFrame:
    """Add the `outcome` column to the checked submission."""
    unlisted_code = len(rules.OUTCOME_NAMES)
    if marks.listed_rows is None:
        codes = np.full(len(submission), rules.DROPPED_BY_CAP, dtype=np.int8)
    else:
        codes = np.full(len(submission), unlisted_code, dtype=np.int8)
        codes[marks.listed_rows] = rules.DROPPED_BY_CAP
    codes[marks.rows] = match.mark_outcome
    names = list(rules.OUTCOME_NAMES) + [UNLISTED]
    # The checked submission is this call's own copy, so the column is added without copying again.
    submission["outcome"] = pd.Categorical.from_codes(codes, categories=names)
    return submission


def _ordinal(number: int) -> str:
    """Return 1st, 2nd, 3rd, 4th, ..., 11th, ..., 101st."""
    suffix = "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"


def _some_ids(uids) -> str:
    quoted = ", ".join(str(uid) for uid in list(uids)[:MAX_IDS_IN_MESSAGE])
    more = len(uids) - MAX_IDS_IN_MESSAGE
    return quoted + (f" and {more} more" if more > 0 else "")
