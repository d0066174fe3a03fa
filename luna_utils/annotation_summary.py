"""Summary tables of LUNA16 annotations and candidate lists.

Every function takes the tables as `luna_utils.dataset` loads them (a `seriesuid` column, world
coordinates in `coordX, coordY, coordZ`, `diameter_mm` for findings, `class` for candidates) and
returns a small DataFrame or Series ready to display. Counts per scan include the scans that have
no row at all, given the list of scans, because 287 of the 888 LUNA16 scans have no nodule.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from luna_utils.annotations import match_points, require_columns
from luna_utils.dataset import display_path, is_sample, load_annotations, load_candidates
from luna_utils.errors import DatasetError

logger = logging.getLogger(__name__)

# Width of the default diameter histogram bins.
DEFAULT_BIN_WIDTH_MM = 2.0

# Rows of the real annotations.csv: the nodules every published coverage figure refers to.
PUBLISHED_NODULE_COUNT = 1_186


def _scan_table(scans: pd.DataFrame | Iterable[str]) -> pd.DataFrame:
    """Return the scan list as a DataFrame with a `seriesuid` column (and `subset` when given)."""
    if isinstance(scans, pd.DataFrame):
        require_columns(scans, ["seriesuid"], "scans")
        table = scans[[c for c in ("seriesuid", "subset") if c in scans.columns]].copy()
    else:
        table = pd.DataFrame({"seriesuid": [str(uid) for uid in scans]})
    table["seriesuid"] = table["seriesuid"].astype(str)

    duplicated = table["seriesuid"].duplicated()
    if duplicated.any():
        raise DatasetError(
            f"The scan list names {int(duplicated.sum())} seriesuid(s) more than once, for example "
            f"{table.loc[duplicated, 'seriesuid'].iloc[0]}. Pass each scan once."
        )
    return table.reset_index(drop=True)


def count_per_scan(
    table: pd.DataFrame,
    scans: pd.DataFrame | Iterable[str],
    count_column: str = "n_rows",
) -> pd.DataFrame:
    """Count the rows of a table per scan, listing scans without rows with a count of 0.

    Args:
        table: Any table with a `seriesuid` column (annotations, candidates, detections).
        scans: The scans of the dataset: a sequence of seriesuids, or a DataFrame with a
            `seriesuid` column and optionally `subset`, which is carried over.
        count_column: Name of the count column in the result.

    Returns:
        One row per scan in the order of `scans`: `seriesuid`, `subset` (when given) and
        `count_column` (int64).

    Raises:
        DatasetError: If the table names a seriesuid missing from `scans`, or `scans` repeats one.
    """
    require_columns(table, ["seriesuid"], "table")
    result = _scan_table(scans)

    counts = table["seriesuid"].astype(str).value_counts()
    unknown = counts.index.difference(pd.Index(result["seriesuid"]))
    if len(unknown) > 0:
        raise DatasetError(
            f"{len(unknown)} seriesuid(s) in the table are not in the scan list, for example "
            f"{unknown[0]}. Pass the scan list of the same dataset (load_seriesuids)."
        )

    result[count_column] = result["seriesuid"].map(counts).fillna(0).astype(np.int64)
    return result


def nodules_per_scan(annotations: pd.DataFrame, scans: pd.DataFrame | Iterable[str]) -> pd.DataFrame:
    """Count nodules per scan, including scans with none (column `n_nodules`)."""
    return count_per_scan(annotations, scans, "n_nodules")


def count_distribution(per_scan: pd.DataFrame, count_column: str) -> pd.Series:
    """Return how many scans have each count: index 0..max count, values numbers of scans.

    Counts that no scan has appear with 0, so a bar chart of the result has no gaps.
    """
    require_columns(per_scan, [count_column], "per-scan")
    counts = per_scan[count_column].astype(np.int64)
    top = int(counts.max()) if len(counts) else 0
    distribution = counts.value_counts().reindex(range(top + 1), fill_value=0)
    distribution.index.name = count_column
    return distribution.rename("n_scans").astype(np.int64)


def per_subset_summary(per_scan: pd.DataFrame, count_column: str = "n_nodules") -> pd.DataFrame:
    """Summarise a per-scan count by subset.

    Args:
        per_scan: Output of `count_per_scan` with a `subset` column.
        count_column: The count to summarise.

    Returns:
        One row per subset (index `subset`) with `n_scans`, `n_scans_with_none`, `total` and
        `max_per_scan`, plus a final row `all` over every subset.
    """
    require_columns(per_scan, ["seriesuid", "subset", count_column], "per-scan")
    counts = per_scan[count_column]
    frame = pd.DataFrame(
        {"subset": per_scan["subset"].astype(str), "count": counts, "none": counts == 0}
    )
    summary = frame.groupby("subset", sort=False).agg(
        n_scans=("count", "size"),
        n_scans_with_none=("none", "sum"),
        total=("count", "sum"),
        max_per_scan=("count", "max"),
    )
    summary = summary.loc[sorted(summary.index, key=_subset_order)]
    summary.loc["all"] = [
        len(frame), int(frame["none"].sum()), int(counts.sum()), int(counts.max()) if len(counts) else 0,
    ]
    return summary.astype(np.int64)


def _subset_order(subset: str) -> tuple[int, str]:
    """Sort subset labels numerically when they are numbers ("2" before "10")."""
    return (int(subset), "") if subset.isdigit() else (1 << 30, subset)


def diameter_summary(diameters_mm: ArrayLike) -> pd.Series:
    """Summarise finding diameters; negative values ("unknown", -1 in LUNA16) are counted apart.

    Args:
        diameters_mm: Diameters in mm, shape (N,).

    Returns:
        A Series with `n` (all values), `n_unknown` (negative values), and `min_mm`, `median_mm`,
        `mean_mm`, `max_mm` over the known values (NaN when there is none).
    """
    diameters = np.asarray(diameters_mm, dtype=np.float64).reshape(-1)
    known = diameters[diameters >= 0]
    if known.size:
        statistics = [known.min(), np.median(known), known.mean(), known.max()]
    else:
        statistics = [np.nan] * 4
    return pd.Series(
        [diameters.size, diameters.size - known.size, *statistics],
        index=["n", "n_unknown", "min_mm", "median_mm", "mean_mm", "max_mm"],
        name="diameter",
        dtype=object,
    )


def diameter_histogram(
    diameters_mm: ArrayLike,
    bin_edges_mm: ArrayLike | None = None,
) -> pd.DataFrame:
    """Count known diameters in bins; negative ("unknown") diameters are left out.

    Args:
        diameters_mm: Diameters in mm, shape (N,).
        bin_edges_mm: Increasing bin edges in mm. Default: every `DEFAULT_BIN_WIDTH_MM` from 0 to
            the first edge above the largest diameter. Bins are half-open [start, end) except the
            last, which includes its end (as `numpy.histogram`); values outside the edges are not
            counted.

    Returns:
        One row per bin: `bin_start_mm`, `bin_end_mm`, `n`.
    """
    diameters = np.asarray(diameters_mm, dtype=np.float64).reshape(-1)
    known = diameters[diameters >= 0]
    if bin_edges_mm is None:
        top = known.max() if known.size else DEFAULT_BIN_WIDTH_MM
        n_bins = int(np.floor(top / DEFAULT_BIN_WIDTH_MM)) + 1
        edges = np.arange(n_bins + 1) * DEFAULT_BIN_WIDTH_MM
    else:
        edges = np.asarray(bin_edges_mm, dtype=np.float64).reshape(-1)
        if edges.size < 2 or np.any(np.diff(edges) <= 0):
            raise DatasetError(
                f"bin_edges_mm must hold at least two increasing values; got {edges.tolist()}."
            )
    counts, _ = np.histogram(known, bins=edges)
    return pd.DataFrame({"bin_start_mm": edges[:-1], "bin_end_mm": edges[1:], "n": counts})


def class_balance(candidates: pd.DataFrame) -> pd.Series:
    """Count positive (class 1) and negative (class 0) candidates.

    Returns:
        A Series with `n_candidates`, `n_positive`, `n_negative` and `negatives_per_positive`
        (NaN without positives).
    """
    require_columns(candidates, ["class"], "candidates")
    positive = int((candidates["class"].astype(int) == 1).sum())
    total = len(candidates)
    ratio = (total - positive) / positive if positive else np.nan
    return pd.Series(
        {"n_candidates": total, "n_positive": positive, "n_negative": total - positive,
         "negatives_per_positive": ratio},
        name="candidates",
        dtype=object,
    )


def candidates_per_scan(candidates: pd.DataFrame, scans: pd.DataFrame | Iterable[str]) -> pd.DataFrame:
    """Count candidates and positive candidates per scan, scans without candidates included.

    Returns:
        One row per scan: `seriesuid`, `subset` (when given), `n_candidates`, `n_positive`.
    """
    require_columns(candidates, ["seriesuid", "class"], "candidates")
    result = count_per_scan(candidates, scans, "n_candidates")
    positives = candidates[candidates["class"].astype(int) == 1]
    result["n_positive"] = count_per_scan(positives, result[["seriesuid"]], "n")["n"].to_numpy()
    return result


def hit_count_distribution(matched_findings: pd.DataFrame) -> pd.Series:
    """Return how many findings are hit by 0, 1, 2, ... points.

    Args:
        matched_findings: `match_points(...).findings`, with its `n_hits` column.

    Returns:
        Index `n_hits` from 0 to the maximum, values the number of findings (`n_findings`).
    """
    require_columns(matched_findings, ["n_hits"], "matched findings")
    return count_distribution(matched_findings, "n_hits").rename("n_findings")


def coverage_summary(matched_findings: pd.DataFrame) -> pd.Series:
    """Count the findings hit by at least one point, and those no point hits.

    Args:
        matched_findings: `match_points(...).findings`, with its `n_hits` column.

    Returns:
        A Series with `n_findings`, `n_covered`, `n_not_covered` and `fraction_covered`
        (NaN without findings).
    """
    require_columns(matched_findings, ["n_hits"], "matched findings")
    total = len(matched_findings)
    covered = int((matched_findings["n_hits"] > 0).sum())
    return pd.Series(
        {"n_findings": total, "n_covered": covered, "n_not_covered": total - covered,
         "fraction_covered": covered / total if total else np.nan},
        name="coverage",
        dtype=object,
    )


# Figures of the two real candidate lists, which the project does not ship (tens of MB each).
# They are the numbers the LUNA16 organisers published for the lists. Three of them can be checked
# against shipped files: 551,065 and 66 (nodules the V1 list misses) are in
# data/real/official_example_CADAnalysis.txt, and both row counts equal the sums of n_cand_v1 and
# n_cand_v2 in data/real/luna16_scans_metadata.csv.
# NOTE: 1,351, 1,557 and 20 are not checked against any shipped file.
PUBLISHED_CANDIDATE_FIGURES = {
    1: {"n_candidates": 551_065, "n_positive": 1_351, "n_nodules_not_covered": 66},
    2: {"n_candidates": 754_975, "n_positive": 1_557, "n_nodules_not_covered": 20},
}


def published_candidate_figures(version: int) -> pd.Series:
    """Return the published figures of the real candidate list V1 or V2.

    Returns:
        A Series with the fields of `candidate_list_figures` and `source` = "published by LUNA16".

    Raises:
        DatasetError: If `version` is not 1 or 2.
    """
    if version not in PUBLISHED_CANDIDATE_FIGURES:
        raise DatasetError(f"Candidate list version must be 1 or 2; got {version!r}.")

    published = PUBLISHED_CANDIDATE_FIGURES[version]
    n_negative = published["n_candidates"] - published["n_positive"]
    return pd.Series(
        {"n_candidates": published["n_candidates"], "n_positive": published["n_positive"],
         "negatives_per_positive": n_negative / published["n_positive"],
         "n_nodules": PUBLISHED_NODULE_COUNT,
         "n_nodules_not_covered": published["n_nodules_not_covered"],
         "source": "published by LUNA16"},
        name=f"candidates V{version}",
        dtype=object,
    )


def candidate_list_figures(root: str | Path, version: int) -> pd.Series:
    """Return the size, positives and nodule coverage of a dataset's candidate list.

    When the list is in the dataset the figures are computed from it and its annotations
    (coverage by the LUNA16 hit rule). When it is missing from a real LUNA16 folder they are the
    published figures, and `source` names their origin. A missing list in the synthetic sample
    is an error, since published figures would describe other data.

    Args:
        root: A dataset folder.
        version: 1 for `candidates.csv`, 2 for `candidates_V2.csv`.

    Returns:
        A Series with `n_candidates`, `n_positive`, `negatives_per_positive`, `n_nodules`,
        `n_nodules_not_covered` and `source` ("computed from <file>" or "published by LUNA16").

    Raises:
        DatasetError: If `version` is not 1 or 2, or the sample lacks the list.
    """
    if version not in PUBLISHED_CANDIDATE_FIGURES:
        raise DatasetError(f"Candidate list version must be 1 or 2; got {version!r}.")

    try:
        candidates = load_candidates(root, version=version)
    except DatasetError:
        if is_sample(root):
            raise
        logger.info("Candidate list V%d is not in %s; using the published figures.", version,
                    display_path(root))
        return published_candidate_figures(version)

    balance = class_balance(candidates)
    coverage = coverage_summary(match_points(candidates, load_annotations(root)).findings)
    name = "candidates.csv" if version == 1 else "candidates_V2.csv"
    return pd.Series(
        {"n_candidates": balance["n_candidates"], "n_positive": balance["n_positive"],
         "negatives_per_positive": balance["negatives_per_positive"],
         "n_nodules": coverage["n_findings"], "n_nodules_not_covered": coverage["n_not_covered"],
         "source": f"computed from {name}"},
        name=f"candidates V{version}",
        dtype=object,
    )
