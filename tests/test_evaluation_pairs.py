"""The pair search behind the evaluator: same hits as `luna_utils.matching.hit_matrix`, scan by scan."""

import numpy as np
import pytest

from luna_utils.evaluation.rules import apply_cap, candidate_pairs, find_hits, hit_pairs
from luna_utils.matching import hit_matrix


def all_pairs_hits(mark_scans, mark_xyz, finding_scans, finding_xyz, diameters):
    """Hits by brute force: hit_matrix over all pairs, then keep pairs of the same scan."""
    matrix = hit_matrix(mark_xyz, finding_xyz, diameters) & (mark_scans[:, None] == finding_scans[None, :])
    marks, findings = np.nonzero(matrix)
    return set(zip(marks.tolist(), findings.tolist()))


def test_hit_pairs_equal_hit_matrix_bit_for_bit():
    rng = np.random.default_rng(0)
    points = rng.normal(0, 30, (400, 3)) * rng.random((400, 1))
    centers = rng.normal(0, 30, (300, 3))
    diameters = rng.choice([-1.0, 4.0, 10.0, 25.0, 60.0], 300)
    matrix = hit_matrix(points, centers, diameters)

    rows, columns = np.meshgrid(np.arange(400), np.arange(300), indexing="ij")
    pairs = hit_pairs(points[rows.ravel()], centers[columns.ravel()], diameters[columns.ravel()])

    assert matrix.any()
    np.testing.assert_array_equal(pairs, matrix.ravel())


def test_hit_pairs_boundary_is_miss():
    # Squared distance 9 + 16 = 25 equals (10 / 2) ** 2: a miss. With diameter -1 (10 mm) too.
    points = np.array([[3.0, 4.0, 0.0], [3.0, 4.0, 0.0], [3.0, 3.9, 0.0]])
    centers = np.zeros((3, 3))
    assert hit_pairs(points, centers, np.array([10.0, -1.0, 10.0])).tolist() == [False, False, True]


@pytest.mark.parametrize("max_pairs", [1, 7, 4_000_000])
def test_find_hits_matches_brute_force(max_pairs):
    rng = np.random.default_rng(1)
    n_scans = 5
    mark_scans = rng.integers(0, n_scans, 600)
    finding_scans = rng.integers(0, n_scans, 80)
    finding_xyz = rng.uniform(-300, 300, (80, 3))
    # Half the marks sit near a finding of any scan, so some are near but in another scan.
    near = finding_xyz[rng.integers(0, 80, 600)] + rng.normal(0, 6, (600, 3))
    mark_xyz = np.where(rng.random((600, 1)) < 0.5, near, rng.uniform(-300, 300, (600, 3)))
    diameters = rng.choice([-1.0, 5.0, 12.0, 30.0], 80)

    marks, findings = find_hits(mark_scans, mark_xyz, finding_scans, finding_xyz, diameters, max_pairs=max_pairs)

    expected = all_pairs_hits(mark_scans, mark_xyz, finding_scans, finding_xyz, diameters)
    assert len(expected) > 20
    assert set(zip(marks.tolist(), findings.tolist())) == expected
    assert len(marks) == len(expected)


def test_candidate_pairs_keep_marks_at_window_edge():
    # A mark exactly one radius away in z can not hit, but one just inside must be a candidate,
    # also at large z and high scan codes where the combined sort key is large.
    finding_scans = np.array([0, 887])
    finding_z = np.array([-1000.0, 1000.0])
    radii = np.array([5.0, 5.0])
    mark_scans = np.array([0, 0, 887, 887, 886])
    mark_z = np.array([-1000.0 + 4.999999, -995.0 - 1e-9, 1000.0 - 4.999999, 1000.0, 1000.0])
    pairs = {
        (int(m), int(f))
        for marks, findings in candidate_pairs(mark_scans, mark_z, finding_scans, finding_z, radii)
        for m, f in zip(marks, findings)
    }
    assert {(0, 0), (1, 0), (2, 1), (3, 1)} <= pairs
    assert all(mark_scans[m] == finding_scans[f] for m, f in pairs)


def test_apply_cap_returns_tie_counts():
    # Scan 0: 5 marks, cap 3, probabilities 0.9, 0.5, 0.5, 0.5, 0.1: the 4th highest is 0.5, so
    # only 0.9 stays; 2 marks ranked within the top 3 were tied with the cut.
    # Scan 1: 2 marks, under the cap.
    scans = np.array([0, 0, 0, 0, 0, 1, 1])
    probabilities = np.array([0.5, 0.9, 0.1, 0.5, 0.5, 0.3, 0.3])
    cap = apply_cap(scans, probabilities, 3)

    assert cap.keep.tolist() == [False, True, False, False, False, True, True]
    assert (cap.tied_scans, cap.tied_marks_dropped) == (1, 2)
