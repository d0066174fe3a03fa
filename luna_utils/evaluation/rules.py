"""The LUNA16 counting rules: the per-scan mark cap, and which marks hit which findings.

These functions reproduce `noduleCADEvaluationLUNA16.py`, the evaluation script shipped in the
LUNA16 `evaluationScript.zip`, with array operations over all scans at once (only the cap loops
over scans). Scans are given as integer codes
0 .. n_scans - 1 (positions in the evaluated list); coordinates are world LPS millimetres, shape
(N, 3) in (x, y, z) order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from luna_utils.matching import effective_diameters

# The official script keeps at most this many marks per scan.
OFFICIAL_MAX_MARKS_PER_SCAN = 100

# Outcome codes of one mark of an evaluated scan.
HIT = 0  # the highest-probability mark on at least one included nodule
DOUBLE = 1  # hits an included nodule, but another mark scores every nodule it hits
EXCLUDED = 2  # hits no included nodule but an excluded finding: ignored
FALSE_POSITIVE = 3
DROPPED_BY_CAP = 4
OUTCOME_NAMES = ("hit", "double", "excluded", "false_positive", "dropped_by_cap")

# Candidate (mark, finding) pairs tested at once. Each pair needs roughly 100 bytes of temporary
# arrays, so a batch stays near 100 MB (an estimate from the arrays involved, not a measurement).
MAX_PAIRS_PER_BATCH = 1_000_000


@dataclass(frozen=True)
class CapResult:
    """Kept-mark mask of the per-scan cap, with the marks lost to ties.

    Attributes:
        keep: Shape (N,), bool, per mark.
        tied_scans: Number of scans that lost marks tied with the (cap + 1)-th highest probability.
        tied_marks_dropped: Marks among a scan's `cap` highest that were dropped only because they
            tie with the (cap + 1)-th highest probability; summed over scans.
    """

    keep: NDArray[np.bool_]
    tied_scans: int
    tied_marks_dropped: int


@dataclass(frozen=True)
class MatchResult:
    """Outcome of matching the kept marks against the findings.

    Attributes:
        mark_outcome: Shape (N,), int8 outcome code per kept mark (HIT, DOUBLE, EXCLUDED or
            FALSE_POSITIVE).
        nodule_hits: Shape (K,), number of marks that hit each included nodule.
        nodule_score: Shape (K,), highest probability among those marks; NaN for a missed nodule.
        nodule_best_mark: Shape (K,), index of the mark that gives the score (the first in
            submission order on ties); -1 for a missed nodule.
    """

    mark_outcome: NDArray[np.int8]
    nodule_hits: NDArray[np.int64]
    nodule_score: NDArray[np.float64]
    nodule_best_mark: NDArray[np.int64]


def apply_cap(scan_codes: NDArray[np.int64], probabilities: NDArray[np.float64], max_marks: int | None) -> CapResult:
    """Apply the official per-scan limit on the number of marks.

    A scan with more than `max_marks` marks keeps only those whose probability is strictly greater
    than its (max_marks + 1)-th highest probability. Marks tied with that value are all dropped,
    even the ones ranked within the first `max_marks`, so such a scan keeps fewer marks.

    Args:
        scan_codes: Shape (N,), scan code per mark.
        probabilities: Shape (N,), finite.
        max_marks: The limit; None or 0 keeps every mark.

    Returns:
        The mask of kept marks and a count of the marks lost to ties.
    """
    n_marks = len(scan_codes)
    if not max_marks or n_marks == 0:
        return CapResult(np.ones(n_marks, dtype=bool), 0, 0)

    n_scans = int(scan_codes.max()) + 1
    order, bounds = _group_by_scan(scan_codes, n_scans)
    counts = np.diff(bounds)

    # Each crowded scan's (max_marks + 1)-th highest probability: the cut.
    cut_probability = np.full(n_scans, -np.inf)
    for scan in np.flatnonzero(counts > max_marks):
        scan_probabilities = probabilities[order[bounds[scan] : bounds[scan + 1]]]
        rank_from_low = counts[scan] - max_marks - 1
        cut_probability[scan] = np.partition(scan_probabilities, rank_from_low)[rank_from_low]

    # NOTE: the official script also stops after `max_marks` kept marks in file order. That never
    # removes a mark here: at most `max_marks` values can be strictly above the (max_marks + 1)-th.
    keep = probabilities > cut_probability[scan_codes]

    kept_per_scan = np.bincount(scan_codes[keep], minlength=n_scans)
    short = (counts > max_marks) & (kept_per_scan < max_marks)
    return CapResult(
        keep=keep,
        tied_scans=int(short.sum()),
        tied_marks_dropped=int((max_marks - kept_per_scan[short]).sum()),
    )


def match_marks(
    mark_scans: NDArray[np.int64],
    mark_xyz_mm: NDArray[np.float64],
    mark_probabilities: NDArray[np.float64],
    nodule_scans: NDArray[np.int64],
    nodule_xyz_mm: NDArray[np.float64],
    nodule_diameters_mm: NDArray[np.float64],
    excluded_scans: NDArray[np.int64],
    excluded_xyz_mm: NDArray[np.float64],
    excluded_diameters_mm: NDArray[np.float64],
) -> MatchResult:
    """Match kept marks to included nodules and excluded findings of the same scan.

    A mark hits a finding when its squared distance to the centre is strictly less than
    (diameter / 2) ** 2, and a negative diameter counts as 10 mm (`luna_utils.matching`). A mark
    that hits any included nodule is a hit for every nodule it hits and never a false positive.
    A mark that hits no included nodule but an excluded finding is ignored. Every other mark is a
    false positive.

    Args:
        mark_scans: Shape (N,), scan code per mark.
        mark_xyz_mm: Shape (N, 3), world (x, y, z) mm.
        mark_probabilities: Shape (N,).
        nodule_scans: Shape (K,), scan code per included nodule.
        nodule_xyz_mm: Shape (K, 3), world (x, y, z) mm.
        nodule_diameters_mm: Shape (K,), mm.
        excluded_scans: Shape (E,), scan code per excluded finding.
        excluded_xyz_mm: Shape (E, 3), world (x, y, z) mm.
        excluded_diameters_mm: Shape (E,), mm; negative means 10 mm.

    Returns:
        Per-mark outcomes and per-nodule hit counts, scores and best marks, in input order.
    """
    n_marks, n_nodules = len(mark_scans), len(nodule_scans)

    # Included nodules first, then excluded findings, as one list of findings.
    finding_scans = np.concatenate((nodule_scans, excluded_scans))
    finding_xyz_mm = np.concatenate((nodule_xyz_mm, excluded_xyz_mm)).reshape(-1, 3)
    finding_diameters_mm = np.concatenate((nodule_diameters_mm, excluded_diameters_mm))
    hit_marks, hit_findings = find_hits(mark_scans, mark_xyz_mm, finding_scans, finding_xyz_mm, finding_diameters_mm)
    on_included = hit_findings < n_nodules

    # Included nodules: every mark inside a nodule counts for it.
    nodule_marks, nodules = hit_marks[on_included], hit_findings[on_included]
    on_nodule = np.zeros(n_marks, dtype=bool)
    on_nodule[nodule_marks] = True
    nodule_hits = np.bincount(nodules, minlength=n_nodules).astype(np.int64)

    # The best mark of each nodule: highest probability, then first in submission order.
    by_score = np.lexsort((nodule_marks, -mark_probabilities[nodule_marks], nodules))
    first = by_score[np.r_[True, np.diff(nodules[by_score]) != 0]] if len(by_score) else by_score
    nodule_best_mark = np.full(n_nodules, -1, dtype=np.int64)
    nodule_best_mark[nodules[first]] = nodule_marks[first]
    nodule_score = np.full(n_nodules, np.nan)
    nodule_score[nodules[first]] = mark_probabilities[nodule_marks[first]]

    # Excluded findings: only marks that no included nodule claimed.
    on_excluded = np.zeros(n_marks, dtype=bool)
    on_excluded[hit_marks[~on_included]] = True

    mark_outcome = np.full(n_marks, FALSE_POSITIVE, dtype=np.int8)
    mark_outcome[on_excluded & ~on_nodule] = EXCLUDED
    mark_outcome[on_nodule] = DOUBLE
    mark_outcome[nodule_marks[first]] = HIT
    return MatchResult(mark_outcome, nodule_hits, nodule_score, nodule_best_mark)


def find_hits(
    mark_scans: NDArray[np.int64],
    mark_xyz_mm: NDArray[np.float64],
    finding_scans: NDArray[np.int64],
    finding_xyz_mm: NDArray[np.float64],
    finding_diameters_mm: NDArray[np.float64],
    max_pairs: int = MAX_PAIRS_PER_BATCH,
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Return every (mark, finding) pair of the same scan where the mark hits the finding.

    Only pairs whose z distance is within the finding's radius can hit. Candidate pairs therefore
    come from a sort of the marks by (scan, z), and `hit_pairs` tests each of them.

    Args:
        mark_scans: Shape (N,), scan code per mark.
        mark_xyz_mm: Shape (N, 3), world (x, y, z) mm.
        finding_scans: Shape (F,), scan code per finding.
        finding_xyz_mm: Shape (F, 3), world (x, y, z) mm.
        finding_diameters_mm: Shape (F,), mm; negative means 10 mm.
        max_pairs: Candidate pairs tested at once, to bound memory.

    Returns:
        (mark indices, finding indices), each of shape (H,), sorted by finding.
    """
    hit_marks, hit_findings = [], []
    radii_mm = effective_diameters(finding_diameters_mm) / 2.0
    batches = candidate_pairs(mark_scans, mark_xyz_mm[:, 2], finding_scans, finding_xyz_mm[:, 2], radii_mm, max_pairs)
    for marks, findings in batches:
        hits = hit_pairs(mark_xyz_mm[marks], finding_xyz_mm[findings], finding_diameters_mm[findings])
        hit_marks.append(marks[hits])
        hit_findings.append(findings[hits])
    if not hit_marks:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(hit_marks), np.concatenate(hit_findings)


def hit_pairs(points_xyz_mm: NDArray[np.float64], centers_xyz_mm: NDArray[np.float64], diameters_mm: NDArray[np.float64]) -> NDArray[np.bool_]:
    """Apply the rule of `luna_utils.matching.hit_matrix` to matched rows instead of all pairs.

    Row p tests point p against centre p. The arithmetic is the same as in `hit_matrix`: einsum
    over the axis, then a strict comparison with (diameter / 2) ** 2. The results are therefore
    bit-identical to the matching entries of `hit_matrix`, and the tests check this on random data.

    NOTE: the official script adds the three squares left to right in Python floats, and einsum
    can round the sum differently in the last bit. A mark within about 1e-16 relative of a sphere
    can therefore be classed differently from the official script, as with `hit_matrix`.

    Args:
        points_xyz_mm: Shape (P, 3), world (x, y, z) mm.
        centers_xyz_mm: Shape (P, 3), world (x, y, z) mm.
        diameters_mm: Shape (P,), mm; negative means 10 mm.

    Returns:
        Shape (P,), bool.
    """
    difference = points_xyz_mm - centers_xyz_mm
    radius_squared = (effective_diameters(diameters_mm) / 2.0) ** 2
    return np.einsum("pk,pk->p", difference, difference) < radius_squared


def candidate_pairs(
    mark_scans: NDArray[np.int64],
    mark_z_mm: NDArray[np.float64],
    finding_scans: NDArray[np.int64],
    finding_z_mm: NDArray[np.float64],
    radii_mm: NDArray[np.float64],
    max_pairs: int = MAX_PAIRS_PER_BATCH,
) -> Iterator[tuple[NDArray[np.int64], NDArray[np.int64]]]:
    """Yield batches of (mark indices, finding indices) in the same scan with |dz| <= radius.

    A pair with |dz| >= radius cannot hit (the squared distance is at least dz ** 2), so this
    keeps every pair that can. Marks are sorted once by a combined key scan x span + z, where
    span exceeds any z range plus two radii, so each finding's window stays inside its own scan.
    The window is widened by a margin far above the rounding error of the key. Every candidate is
    then checked for the same scan and tested exactly by the caller.

    Args:
        mark_scans: Shape (N,), scan code per mark.
        mark_z_mm: Shape (N,), world z mm.
        finding_scans: Shape (F,), scan code per finding.
        finding_z_mm: Shape (F,), world z mm.
        radii_mm: Shape (F,), effective radius per finding (mm, positive).
        max_pairs: Batch size limit, to bound memory.
    """
    if len(mark_scans) == 0 or len(finding_scans) == 0:
        return

    max_radius = float(radii_mm.max())
    z_low = min(float(mark_z_mm.min()), float(finding_z_mm.min())) - max_radius - 1.0
    z_high = max(float(mark_z_mm.max()), float(finding_z_mm.max())) + max_radius + 1.0
    span = z_high - z_low
    mark_keys = mark_scans * span + (mark_z_mm - z_low)
    # The order among equal keys does not matter here, so the fastest sort will do.
    order = np.argsort(mark_keys)
    sorted_keys = mark_keys[order]
    margin = 1e-6 + 64 * float(np.spacing(max(float(np.abs(sorted_keys).max()), span)))

    centre_keys = finding_scans * span + (finding_z_mm - z_low)
    low = np.searchsorted(sorted_keys, centre_keys - radii_mm - margin, side="left")
    high = np.searchsorted(sorted_keys, centre_keys + radii_mm + margin, side="right")
    counts = high - low

    # Batches of whole findings, each with at most about max_pairs candidate pairs.
    ends = np.cumsum(counts)
    start = 0
    while start < len(counts):
        stop = max(int(np.searchsorted(ends, (ends[start] - counts[start]) + max_pairs, side="right")), start + 1)
        batch_counts = counts[start:stop]
        findings = np.repeat(np.arange(start, stop), batch_counts)
        offsets = np.arange(len(findings)) - np.repeat(np.cumsum(batch_counts) - batch_counts, batch_counts)
        marks = order[low[findings] + offsets]
        same_scan = mark_scans[marks] == finding_scans[findings]
        yield marks[same_scan], findings[same_scan]
        start = stop


def _group_by_scan(scan_codes: NDArray[np.int64], n_scans: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Return a stable order grouping rows by scan, and the bounds of each scan's run in it."""
    # NumPy's stable sort is a radix sort for 16-bit integers, several times faster than for int64.
    keys = scan_codes.astype(np.uint16) if n_scans <= np.iinfo(np.uint16).max else scan_codes
    order = np.argsort(keys, kind="stable")
    bounds = np.searchsorted(scan_codes[order], np.arange(n_scans + 1))
    return order, bounds
