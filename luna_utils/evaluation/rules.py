"""The LUNA16 counting rules: the per-scan mark cap, and which marks hit which findings.

These functions reproduce `noduleCADEvaluationLUNA16.py`, the evaluation script shipped in the
LUNA16 `evaluationScript.zip`, with array operations over all scans at once. Scans are given as
integer codes 0 .. n_scans - 1 (positions in the evaluated list); coordinates are world LPS
millimetres, shape (N, 3) in (x, y, z) order.
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

# Probability buckets per scan in the cap's histogram. Only the marks in the bucket that contains a
# scan's cut are sorted, so more buckets mean fewer sorted marks but a larger histogram. On the
# benchmark submission (`benchmarks/bench_evaluation.py`) 128 and 256 were equally fast, and 512
# and 1024 slower.
CAP_BUCKETS = 256

# Candidate (mark, finding) pairs tested at once. Each pair needs roughly 100 bytes of temporary
# arrays, so a batch stays near 100 MB (an estimate from the arrays involved, not a measurement).
MAX_PAIRS_PER_BATCH = 1_000_000

# Bins over z in the pair search: 2 ** 16, so a bin index sorts as one 16-bit radix pass.
Z_BINS = 1 << 16


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


def apply_cap(
    scan_codes: NDArray[np.int64],
    probabilities: NDArray[np.float64],
    max_marks: int | None,
    n_scans: int | None = None,
) -> CapResult:
    """Apply the official per-scan limit on the number of marks.

    A scan with more than `max_marks` marks keeps only those whose probability is strictly greater
    than its (max_marks + 1)-th highest probability. Marks tied with that value are all dropped,
    even the ones ranked within the first `max_marks`, so such a scan keeps fewer marks.

    Args:
        scan_codes: Shape (N,), scan code per mark, 0 .. n_scans - 1.
        probabilities: Shape (N,), finite.
        max_marks: The limit; None or 0 keeps every mark.
        n_scans: Number of scans; None takes the highest code + 1.

    Returns:
        The mask of kept marks and a count of the marks lost to ties.
    """
    n_marks = len(scan_codes)
    if not max_marks or n_marks == 0:
        return CapResult(np.ones(n_marks, dtype=bool), 0, 0)
    if n_scans is None:
        n_scans = int(scan_codes.max()) + 1

    cut = _cut_marks(scan_codes, probabilities, max_marks, n_scans)
    if cut is None:
        return CapResult(np.ones(n_marks, dtype=bool), 0, 0)

    short = cut.kept_counts < max_marks
    return CapResult(
        keep=cut.keep,
        tied_scans=int(short.sum()),
        tied_marks_dropped=int((max_marks - cut.kept_counts[short]).sum()),
    )


@dataclass(frozen=True)
class _CutResult:
    """The cap's cut applied to the marks.

    Attributes:
        keep: Shape (N,), bool, per mark: above its scan's cut.
        kept_counts: Shape (S,), number of marks kept, for each of the S scans over the cap.
    """

    keep: NDArray[np.bool_]
    kept_counts: NDArray[np.int64]


def _cut_marks(
    scan_codes: NDArray[np.int64], probabilities: NDArray[np.float64], max_marks: int, n_scans: int
) -> _CutResult | None:
    """Keep the marks above each scan's (max_marks + 1)-th highest probability.

    Returns None when no scan has more than `max_marks` marks.

    A per-scan histogram over probability buckets locates the bucket that contains the cut, so
    only the marks in that one bucket per scan are sorted. The bucket index never decreases as the
    probability grows, so every mark in a higher bucket is above the cut and every mark in a lower
    bucket is below it.
    """
    # Up to CAP_BUCKETS buckets, fewer when scans are many and marks few, to bound the histogram.
    n_buckets = max(1, min(CAP_BUCKETS, len(scan_codes) // n_scans))
    flat_bins = np.multiply(scan_codes, n_buckets, dtype=np.intp)
    flat_bins += _probability_buckets(probabilities, n_buckets)
    histogram = np.bincount(flat_bins, minlength=n_scans * n_buckets).reshape(n_scans, n_buckets)
    crowded = np.flatnonzero(histogram.sum(axis=1) > max_marks)
    if len(crowded) == 0:
        return None

    # Per crowded scan: the highest bucket b with more than max_marks marks at or above b.
    histogram = histogram[crowded]
    at_or_above = np.cumsum(histogram[:, ::-1], axis=1)[:, ::-1]
    cut_bucket = (at_or_above > max_marks).sum(axis=1) - 1
    rows = np.arange(len(crowded))
    in_cut_bucket = histogram[rows, cut_bucket]
    above_cut_bucket = at_or_above[rows, cut_bucket] - in_cut_bucket

    # Marks above their scan's cut bucket are kept, and those in it are the candidates. A scan
    # under the cap gets bin -1, below all of its marks.
    cut_bin_of_scan = np.full(n_scans, -1, dtype=np.intp)
    cut_bin_of_scan[crowded] = crowded * n_buckets + cut_bucket
    mark_cut_bins = cut_bin_of_scan[scan_codes]
    keep = flat_bins > mark_cut_bins
    candidates = np.flatnonzero(flat_bins == mark_cut_bins)

    # The candidates by scan and then by decreasing probability. The cut is the
    # (max_marks - above + 1)-th highest of its bucket, and the sorted candidates come scan after
    # scan, in the increasing order of `crowded`.
    candidate_scans = scan_codes[candidates]
    candidate_probabilities = probabilities[candidates]
    order = np.lexsort((-candidate_probabilities, candidate_scans))
    starts = np.cumsum(in_cut_bucket) - in_cut_bucket
    cut_probability = np.full(n_scans, -np.inf)
    cut_probability[crowded] = candidate_probabilities[order[starts + max_marks - above_cut_bucket]]

    # NOTE: the official script also stops after `max_marks` kept marks in file order. That never
    # removes a mark here: at most `max_marks` values can be strictly above the (max_marks + 1)-th.
    kept_candidates = candidate_probabilities > cut_probability[candidate_scans]
    keep[candidates] = kept_candidates
    kept_counts = above_cut_bucket + np.bincount(
        np.searchsorted(crowded, candidate_scans[kept_candidates]), minlength=len(crowded)
    )
    return _CutResult(keep, kept_counts)


def _probability_buckets(probabilities: NDArray[np.float64], n_buckets: int) -> NDArray[np.intp]:
    """Map probabilities to buckets 0 .. n_buckets - 1 of equal width, never decreasing with the value.

    All marks go to bucket 0 when the values are all equal or their range overflows float64.
    """
    low = probabilities.min()
    with np.errstate(over="ignore", divide="ignore"):
        span = probabilities.max() - low
        scale = n_buckets / span if span > 0 else np.inf
    if not (np.isfinite(scale) and scale > 0):
        return np.zeros(len(probabilities), dtype=np.intp)

    # Rounding keeps each step monotonic, and (value - low) * scale stays within [0, n_buckets].
    scaled = probabilities - low
    scaled *= scale
    buckets = scaled.astype(np.intp)
    np.minimum(buckets, n_buckets - 1, out=buckets)
    return buckets


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
    come from a sort of the marks by (scan, z) (`candidate_pairs`), and each is tested with the
    arithmetic of `hit_pairs`.

    Args:
        mark_scans: Shape (N,), scan code per mark.
        mark_xyz_mm: Shape (N, 3), world (x, y, z) mm.
        finding_scans: Shape (F,), scan code per finding.
        finding_xyz_mm: Shape (F, 3), world (x, y, z) mm.
        finding_diameters_mm: Shape (F,), mm; negative means 10 mm.
        max_pairs: Candidate pairs tested at once, to bound memory.

    Returns:
        (mark indices, finding indices), each of shape (H,), in no particular order.
    """
    hit_marks, hit_findings = [], []
    radii_mm = effective_diameters(finding_diameters_mm) / 2.0
    radius_squared = radii_mm**2
    mark_y_mm = np.ascontiguousarray(mark_xyz_mm[:, 1])
    finding_y_mm = np.ascontiguousarray(finding_xyz_mm[:, 1])
    batches = candidate_pairs(mark_scans, mark_xyz_mm[:, 2], finding_scans, finding_xyz_mm[:, 2], radii_mm, max_pairs)
    for marks, findings in batches:
        # A pair with |dy| >= radius misses: the squared distance, rounded at each step, is at
        # least the rounded radius squared. On the benchmark submission 1 pair in 7 remains.
        dy = mark_y_mm[marks]
        dy -= finding_y_mm[findings]
        near = np.flatnonzero(np.abs(dy, out=dy) < radii_mm[findings])
        marks, findings = marks[near], findings[near]

        # np.take copies whole rows, several times faster here than fancy indexing.
        difference = np.take(mark_xyz_mm, marks, axis=0)
        difference -= np.take(finding_xyz_mm, findings, axis=0)
        hits = _inside(difference, radius_squared[findings])
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
    radius_squared = (effective_diameters(diameters_mm) / 2.0) ** 2
    return _inside(points_xyz_mm - centers_xyz_mm, radius_squared)


def _inside(difference_xyz_mm: NDArray[np.float64], radius_squared: NDArray[np.float64]) -> NDArray[np.bool_]:
    """Return squared length < radius squared per row of a (P, 3) difference: the test of `hit_pairs`."""
    return np.einsum("pk,pk->p", difference_xyz_mm, difference_xyz_mm) < radius_squared


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
    keeps every pair that can. Each z maps to one of `Z_BINS` bins over the findings' reach (z
    beyond it goes to the first or last bin), and the bin never decreases as z grows. Marks are
    sorted once by the integer key scan x Z_BINS + bin, so each finding's window is a range of
    keys within its own scan. The window is widened by a margin far above the rounding error of
    the hit test, and the caller tests every candidate exactly.

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

    # Each finding's window in z, widened by the margin, and the bins over all windows.
    largest_z = max(float(np.abs(mark_z_mm).max()), float(np.abs(finding_z_mm).max()), float(radii_mm.max()))
    margin = 1e-6 + 64 * float(np.spacing(largest_z))
    window_low = finding_z_mm - radii_mm - margin
    window_high = finding_z_mm + radii_mm + margin
    bins = _ZBins(float(window_low.min()), float(window_high.max()))

    # Marks sorted by (scan, bin); windows as key ranges, searched in increasing order.
    mark_keys = _scan_bin_keys(mark_scans, bins.of(mark_z_mm))
    order = _sort_keys(mark_scans, mark_keys)
    sorted_keys = mark_keys[order]
    finding_order = _sort_keys(finding_scans, _scan_bin_keys(finding_scans, bins.of(finding_z_mm)))
    scans = finding_scans[finding_order]
    low = np.searchsorted(sorted_keys, _scan_bin_keys(scans, bins.of(window_low[finding_order])), side="left")
    high = np.searchsorted(sorted_keys, _scan_bin_keys(scans, bins.of(window_high[finding_order])), side="right")
    counts = high - low

    # Batches of whole findings, each with at most about max_pairs candidate pairs.
    ends = np.cumsum(counts)
    start = 0
    while start < len(counts):
        stop = max(int(np.searchsorted(ends, (ends[start] - counts[start]) + max_pairs, side="right")), start + 1)
        batch_counts = counts[start:stop]
        batch_starts = ends[start:stop] - batch_counts - (ends[start] - counts[start])
        positions = np.arange(int(batch_counts.sum())) + np.repeat(low[start:stop] - batch_starts, batch_counts)
        yield order[positions], np.repeat(finding_order[start:stop], batch_counts)
        start = stop


class _ZBins:
    """`Z_BINS` bins of equal width over [low, high] mm; z outside goes to the first or last bin."""

    def __init__(self, low: float, high: float) -> None:
        self.low = low
        with np.errstate(over="ignore", divide="ignore"):
            scale = (Z_BINS - 1) / (high - low)
        # A range that overflows float64 puts every z in bin 0: slower, never wrong.
        self.scale = scale if np.isfinite(scale) else 0.0

    def of(self, z_mm: NDArray[np.float64]) -> NDArray[np.intp]:
        """Return the bin of each z; every step keeps the order, so the bin never decreases with z."""
        if self.scale == 0.0:
            return np.zeros(len(z_mm), dtype=np.intp)
        with np.errstate(over="ignore", invalid="ignore"):
            scaled = z_mm - self.low
            scaled *= self.scale
        np.clip(scaled, 0, Z_BINS - 1, out=scaled)
        return scaled.astype(np.intp)


def _scan_bin_keys(scans: NDArray[np.int64], bins: NDArray[np.intp]) -> NDArray[np.intp]:
    keys = np.multiply(scans, Z_BINS, dtype=np.intp)
    keys += bins
    return keys


def _sort_keys(scans: NDArray[np.int64], keys: NDArray[np.intp]) -> NDArray[np.intp]:
    """Return the order that sorts scan x Z_BINS + bin keys.

    NumPy's stable sort of 16-bit integers is a radix sort, several times faster than sorting
    the keys: the order comes from two such sorts, by bin and then by scan.
    """
    if len(scans) == 0 or scans.max() > np.iinfo(np.uint16).max:
        return np.argsort(keys, kind="stable")
    order = np.argsort((keys % Z_BINS).astype(np.uint16), kind="stable")
    return order[np.argsort(scans[order].astype(np.uint16), kind="stable")]
