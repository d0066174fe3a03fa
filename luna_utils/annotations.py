"""Matching points (candidates or detections) to findings with the LUNA16 rule.

Findings are rows of `annotations.csv` (nodules) or `annotations_excluded.csv` (findings a detector
may hit without penalty). Points are rows of `candidates.csv`, `candidates_V2.csv` or a submission.
Both are DataFrames with a `seriesuid` column and world coordinates in `coordX, coordY, coordZ`
(LPS millimetres, the CSV column names); findings also carry `diameter_mm`.

A point hits a finding when its Euclidean distance to the finding's centre is strictly less than
the radius, diameter / 2 (`luna_utils.matching.hit_matrix`). Findings stored with a negative
diameter (LUNA16 writes -1 for "unknown") get the official 10 mm. Matching is done per scan, one
distance matrix per seriesuid, so points never match findings of another scan.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from luna_utils.errors import DatasetError, GeometryError
from luna_utils.matching import UNKNOWN_DIAMETER_MM, hit_matrix, squared_distances

logger = logging.getLogger(__name__)

COORD_COLUMNS = ["coordX", "coordY", "coordZ"]
POINT_COLUMNS = ["seriesuid", *COORD_COLUMNS]
FINDING_COLUMNS = ["seriesuid", *COORD_COLUMNS, "diameter_mm"]

# Value of `nearest_finding` and `hit_finding` for a point that has no such finding.
NO_FINDING = -1

# Labels given by `label_points`, in the order the official evaluation checks them.
LABEL_NODULE = "nodule"
LABEL_EXCLUDED = "excluded"
LABEL_NEGATIVE = "negative"


@dataclass(frozen=True)
class MatchResult:
    """Points and findings of one matching run, each with the matching columns added.

    Attributes:
        points: The input points, same index and order, plus
            `nearest_finding` (int64): row position (0-based) in `findings` of the finding whose
            centre is closest, or -1 when the point's scan has no finding. Ties go to the lower row;
            `distance_mm` (float64): distance to that centre in mm, NaN without a finding;
            `hit` (bool): whether the point hits at least one finding;
            `n_findings_hit` (int64): how many findings it hits;
            `hit_finding` (int64): row position of the closest finding it hits, -1 if it hits none.
            The closest finding may be missed while a larger one further away is hit, so
            `hit_finding` can differ from `nearest_finding`.
        findings: The input findings, same index and order, plus
            `n_hits` (int64): how many points hit the finding;
            `nearest_point_mm` (float64): distance to the closest point of the same scan in mm,
            NaN when that scan has no point.
    """

    points: pd.DataFrame
    findings: pd.DataFrame


def require_columns(frame: pd.DataFrame, columns: list[str], what: str) -> None:
    """Raise DatasetError unless a table has every column listed.

    Args:
        frame: The table to check.
        columns: Column names it must have.
        what: How the error names the table, for example "findings".
    """
    if not isinstance(frame, pd.DataFrame):
        raise DatasetError(
            f"The {what} must be a pandas DataFrame with columns {columns}; got {type(frame).__name__}."
        )
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise DatasetError(
            f"The {what} table lacks the column(s) {missing}; it has {list(frame.columns)}. "
            f"Pass a table with columns {columns}, as the LUNA16 CSV files have."
        )


def coordinates_xyz_mm(frame: pd.DataFrame, what: str) -> NDArray[np.float64]:
    """Return a table's world coordinates as an (N, 3) float64 array in (x, y, z) mm.

    Raises:
        GeometryError: If a coordinate is missing or not a finite number; the message names the row.
    """
    values = frame[COORD_COLUMNS].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        position = int(np.flatnonzero(bad)[0])
        raise GeometryError(
            f"The {what} table has {int(bad.sum())} row(s) with a missing or non-numeric "
            f"coordinate; the first is row {position} (index {frame.index[position]!r}): "
            f"{frame[COORD_COLUMNS].iloc[position].tolist()}. Fix or drop those rows."
        )
    return values.reshape(-1, 3)


def finding_diameters_mm(findings: pd.DataFrame) -> NDArray[np.float64]:
    """Return the `diameter_mm` column as float64, checking that every value is a number.

    Negative values are kept; they mean "unknown" and are replaced when matching.

    Raises:
        GeometryError: If a diameter is missing or not finite.
    """
    diameters = pd.to_numeric(findings["diameter_mm"], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(diameters)
    if bad.any():
        position = int(np.flatnonzero(bad)[0])
        raise GeometryError(
            f"The findings table has {int(bad.sum())} row(s) without a numeric diameter_mm; the "
            f"first is row {position} (value {findings['diameter_mm'].iloc[position]!r}). "
            "Use -1 for an unknown diameter, as annotations_excluded.csv does."
        )
    return diameters


def rows_by_scan(seriesuids: pd.Series) -> dict[str, NDArray[np.intp]]:
    """Map each seriesuid to the row positions holding it."""
    if seriesuids.empty:
        return {}
    return {str(uid): rows for uid, rows in seriesuids.groupby(seriesuids, sort=False).indices.items()}


def match_points(
    points: pd.DataFrame,
    findings: pd.DataFrame,
    unknown_diameter_mm: float = UNKNOWN_DIAMETER_MM,
) -> MatchResult:
    """Match points to the findings of the same scan with the LUNA16 hit rule.

    Args:
        points: Candidates or detections; columns `seriesuid, coordX, coordY, coordZ` (world
            LPS mm, x y z order). Other columns are kept.
        findings: Nodules or excluded findings; columns `seriesuid, coordX, coordY, coordZ,
            diameter_mm`. Other columns are kept.
        unknown_diameter_mm: Diameter used for findings with a negative diameter; LUNA16 uses 10.

    Returns:
        Copies of both tables with the matching columns described in `MatchResult`.

    Raises:
        DatasetError: If a table lacks a required column.
        GeometryError: If a coordinate or diameter is missing or not a number.
    """
    require_columns(points, POINT_COLUMNS, "points")
    require_columns(findings, FINDING_COLUMNS, "findings")
    point_xyz_mm = coordinates_xyz_mm(points, "points")
    finding_xyz_mm = coordinates_xyz_mm(findings, "findings")
    diameters_mm = finding_diameters_mm(findings)

    # Outputs start as "no finding in this scan" and are filled scan by scan.
    n_points = len(points)
    nearest_finding = np.full(n_points, NO_FINDING, dtype=np.int64)
    distance_mm = np.full(n_points, np.nan)
    n_findings_hit = np.zeros(n_points, dtype=np.int64)
    hit_finding = np.full(n_points, NO_FINDING, dtype=np.int64)
    n_hits = np.zeros(len(findings), dtype=np.int64)
    nearest_point_mm = np.full(len(findings), np.nan)

    finding_rows_by_scan = rows_by_scan(findings["seriesuid"].astype(str))
    for uid, point_rows in rows_by_scan(points["seriesuid"].astype(str)).items():
        finding_rows = finding_rows_by_scan.get(uid)
        if finding_rows is None:
            continue

        # One (points x findings) matrix per scan: distances, and hits by the official rule.
        squared = squared_distances(point_xyz_mm[point_rows], finding_xyz_mm[finding_rows])
        hits = hit_matrix(
            point_xyz_mm[point_rows], finding_xyz_mm[finding_rows], diameters_mm[finding_rows],
            unknown_diameter_mm,
        )

        # argmin returns the first minimum, so ties go to the finding listed first.
        closest = np.argmin(squared, axis=1)
        nearest_finding[point_rows] = finding_rows[closest]
        distance_mm[point_rows] = np.sqrt(squared[np.arange(len(point_rows)), closest])

        # The closest finding that is hit: set the distance of missed findings to infinity.
        n_findings_hit[point_rows] = hits.sum(axis=1)
        closest_hit = np.argmin(np.where(hits, squared, np.inf), axis=1)
        any_hit = hits.any(axis=1)
        hit_finding[point_rows[any_hit]] = finding_rows[closest_hit[any_hit]]

        n_hits[finding_rows] += hits.sum(axis=0)
        nearest_point_mm[finding_rows] = np.sqrt(squared.min(axis=0))

    matched_points = points.copy()
    matched_points["nearest_finding"] = nearest_finding
    matched_points["distance_mm"] = distance_mm
    matched_points["hit"] = n_findings_hit > 0
    matched_points["n_findings_hit"] = n_findings_hit
    matched_points["hit_finding"] = hit_finding

    matched_findings = findings.copy()
    matched_findings["n_hits"] = n_hits
    matched_findings["nearest_point_mm"] = nearest_point_mm

    logger.debug(
        "Matched %d points to %d findings: %d points hit a finding.",
        n_points, len(findings), int((n_findings_hit > 0).sum()),
    )
    return MatchResult(points=matched_points, findings=matched_findings)


def label_points(
    points: pd.DataFrame,
    nodules: pd.DataFrame,
    excluded: pd.DataFrame | None = None,
    unknown_diameter_mm: float = UNKNOWN_DIAMETER_MM,
) -> pd.Series:
    """Label each point as the official LUNA16 evaluation treats it.

    A point that hits a nodule is `"nodule"`. Otherwise a point that hits an excluded finding is
    `"excluded"`: the evaluation ignores it, so it is neither a true nor a false positive.
    Every other point is `"negative"`.

    Args:
        points: Columns `seriesuid, coordX, coordY, coordZ` (world LPS mm).
        nodules: Rows of `annotations.csv`.
        excluded: Rows of `annotations_excluded.csv`, or None to skip that step.
        unknown_diameter_mm: Diameter for findings stored with a negative diameter.

    Returns:
        A categorical Series with the points' index and categories nodule, excluded, negative.
    """
    labels = np.full(len(points), LABEL_NEGATIVE, dtype=object)
    if excluded is not None:
        excluded_hit = match_points(points, excluded, unknown_diameter_mm).points["hit"].to_numpy()
        labels[excluded_hit] = LABEL_EXCLUDED
    nodule_hit = match_points(points, nodules, unknown_diameter_mm).points["hit"].to_numpy()
    labels[nodule_hit] = LABEL_NODULE

    categories = [LABEL_NODULE, LABEL_EXCLUDED, LABEL_NEGATIVE]
    return pd.Series(pd.Categorical(labels, categories=categories), index=points.index, name="label")
