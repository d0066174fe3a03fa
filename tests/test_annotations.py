"""Tests for matching points to findings, the annotation summaries and the outside-scan checks."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from luna_utils import annotation_summary as summary
from luna_utils.annotations import NO_FINDING, label_points, match_points
from luna_utils.consistency import (
    PROBLEM_NO_GEOMETRY,
    PROBLEM_OUTSIDE,
    findings_outside_scan,
    geometry_from_headers,
    geometry_from_metadata,
    load_geometry,
    locate_findings,
)
from luna_utils.errors import DatasetError, GeometryError, LunaError


def findings_table(rows):
    return pd.DataFrame(rows, columns=["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"])


def points_table(rows):
    return pd.DataFrame(rows, columns=["seriesuid", "coordX", "coordY", "coordZ"])


# ---------------------------------------------------------------- matching rule at its edges


def test_match_distance_equal_to_radius_misses():
    findings = findings_table([("a", 0.0, 0.0, 0.0, 10.0)])
    # Distances 5 (exactly the radius, exact in binary: 3-4-5), 4.999 and 5.001 mm.
    points = points_table([("a", 3.0, 4.0, 0.0), ("a", 4.999, 0.0, 0.0), ("a", 0.0, 0.0, 5.001)])

    result = match_points(points, findings).points

    assert result["hit"].tolist() == [False, True, False]
    assert result["distance_mm"].tolist() == pytest.approx([5.0, 4.999, 5.001])
    assert result["nearest_finding"].tolist() == [0, 0, 0]
    assert result["hit_finding"].tolist() == [NO_FINDING, 0, NO_FINDING]


def test_match_unknown_diameter_uses_10_mm():
    findings = findings_table([("a", 10.0, 20.0, 30.0, -1.0)])
    points = points_table([("a", 14.9, 20.0, 30.0), ("a", 15.0, 20.0, 30.0), ("a", 10.0, 20.0, 24.0)])

    result = match_points(points, findings)

    assert result.points["hit"].tolist() == [True, False, False]
    assert result.findings["n_hits"].tolist() == [1]


def test_match_unknown_diameter_is_configurable():
    findings = findings_table([("a", 0.0, 0.0, 0.0, -1.0)])
    points = points_table([("a", 7.0, 0.0, 0.0)])

    assert not match_points(points, findings).points["hit"].iloc[0]
    assert match_points(points, findings, unknown_diameter_mm=20.0).points["hit"].iloc[0]


def test_match_point_hitting_two_findings():
    findings = findings_table([("a", 0.0, 0.0, 0.0, 10.0), ("a", 6.0, 0.0, 0.0, 10.0)])
    points = points_table([("a", 3.5, 0.0, 0.0), ("a", -1.0, 0.0, 0.0)])

    result = match_points(points, findings)

    assert result.points["n_findings_hit"].tolist() == [2, 1]
    assert result.points["hit"].tolist() == [True, True]
    # 3.5 mm is 3.5 from finding 0 and 2.5 from finding 1: the closer one is reported.
    assert result.points["hit_finding"].tolist() == [1, 0]
    assert result.points["nearest_finding"].tolist() == [1, 0]
    assert result.findings["n_hits"].tolist() == [2, 1]


def test_match_nearest_missed_but_larger_hit():
    # A 4 mm finding 3 mm away is the nearest but is missed, while a 20 mm finding 6 mm away is hit.
    findings = findings_table([("a", 3.0, 0.0, 0.0, 4.0), ("a", -6.0, 0.0, 0.0, 20.0)])
    points = points_table([("a", 0.0, 0.0, 0.0)])

    result = match_points(points, findings).points

    assert result["nearest_finding"].iloc[0] == 0
    assert result["distance_mm"].iloc[0] == pytest.approx(3.0)
    assert result["hit_finding"].iloc[0] == 1
    assert bool(result["hit"].iloc[0])


def test_match_tie_goes_to_first_finding():
    findings = findings_table([("a", -2.0, 0.0, 0.0, 6.0), ("a", 2.0, 0.0, 0.0, 6.0)])
    points = points_table([("a", 0.0, 0.0, 0.0)])

    result = match_points(points, findings).points

    assert result["nearest_finding"].iloc[0] == 0
    assert result["hit_finding"].iloc[0] == 0
    assert result["n_findings_hit"].iloc[0] == 2


def test_match_scan_without_findings():
    findings = findings_table([("a", 0.0, 0.0, 0.0, 10.0)])
    # Same coordinates as the finding, but in another scan.
    points = points_table([("b", 0.0, 0.0, 0.0), ("a", 1.0, 0.0, 0.0)])

    result = match_points(points, findings)

    assert result.points["nearest_finding"].tolist() == [NO_FINDING, 0]
    assert np.isnan(result.points["distance_mm"].iloc[0])
    assert result.points["hit"].tolist() == [False, True]
    assert result.points["hit_finding"].tolist() == [NO_FINDING, 0]
    assert result.findings["n_hits"].tolist() == [1]


def test_match_finding_without_points():
    findings = findings_table([("a", 0.0, 0.0, 0.0, 12.0), ("c", 0.0, 0.0, 0.0, 10.0)])
    points = points_table([("a", 0.0, 3.0, 4.0)])

    result = match_points(points, findings).findings

    assert result["n_hits"].tolist() == [1, 0]
    assert result["nearest_point_mm"].iloc[0] == pytest.approx(5.0)
    assert np.isnan(result["nearest_point_mm"].iloc[1])


@pytest.mark.parametrize("n_points, n_findings", [(0, 2), (3, 0), (0, 0)])
def test_match_empty_inputs(n_points, n_findings):
    findings = findings_table([("a", float(i), 0.0, 0.0, 5.0) for i in range(n_findings)])
    points = points_table([("a", float(i), 1.0, 0.0) for i in range(n_points)])

    result = match_points(points, findings)

    assert len(result.points) == n_points
    assert len(result.findings) == n_findings
    assert result.points["nearest_finding"].tolist() == [NO_FINDING] * n_points
    assert not result.points["hit"].any()
    assert result.findings["n_hits"].tolist() == [0] * n_findings
    assert result.points["nearest_finding"].dtype == np.int64
    assert result.findings["n_hits"].dtype == np.int64


def test_match_keeps_index_order_and_columns():
    findings = findings_table([("b", 0.0, 0.0, 0.0, 4.0), ("a", 50.0, 0.0, 0.0, 4.0)])
    findings.index = [10, 20]
    points = points_table([("a", 51.0, 0.0, 0.0), ("b", 0.5, 0.0, 0.0), ("a", 0.0, 0.0, 0.0)])
    points["class"] = [1, 1, 0]
    points.index = ["p", "q", "r"]

    result = match_points(points, findings).points

    assert result.index.tolist() == ["p", "q", "r"]
    assert result["class"].tolist() == [1, 1, 0]
    # Row positions in findings, not index labels.
    assert result["nearest_finding"].tolist() == [1, 0, 1]
    assert result["hit"].tolist() == [True, True, False]
    assert result["distance_mm"].tolist() == pytest.approx([1.0, 0.5, 50.0])


def test_match_agrees_with_brute_force():
    rng = np.random.default_rng(7)
    uids = np.array(["a", "b", "c", "d"])
    findings = findings_table(
        [(rng.choice(uids[:3]), *rng.uniform(-20, 20, 3), rng.choice([-1.0, 4.0, 8.0, 15.0]))
         for _ in range(12)]
    )
    points = points_table([(rng.choice(uids), *rng.uniform(-25, 25, 3)) for _ in range(300)])

    result = match_points(points, findings)

    diameters = np.where(findings["diameter_mm"] < 0, 10.0, findings["diameter_mm"])
    expected_hits = np.zeros(len(findings), dtype=int)
    for n, point in points.iterrows():
        same_scan = np.flatnonzero(findings["seriesuid"].to_numpy() == point["seriesuid"])
        row = result.points.loc[n]
        if same_scan.size == 0:
            assert row["nearest_finding"] == NO_FINDING
            continue
        offsets = findings.loc[same_scan, ["coordX", "coordY", "coordZ"]].to_numpy() - point[
            ["coordX", "coordY", "coordZ"]
        ].to_numpy(dtype=float)
        distances = np.sqrt((offsets**2).sum(axis=1))
        hits = distances < diameters[same_scan] / 2
        expected_hits[same_scan] += hits
        assert row["nearest_finding"] == same_scan[np.argmin(distances)]
        assert row["distance_mm"] == pytest.approx(distances.min())
        assert row["n_findings_hit"] == hits.sum()
    assert result.findings["n_hits"].tolist() == expected_hits.tolist()
    assert result.points["hit"].sum() > 0


def test_match_missing_column_raises():
    findings = findings_table([("a", 0.0, 0.0, 0.0, 10.0)]).drop(columns="diameter_mm")
    points = points_table([("a", 0.0, 0.0, 0.0)])

    with pytest.raises(DatasetError, match="diameter_mm"):
        match_points(points, findings)


def test_match_non_numeric_coordinate_raises():
    findings = findings_table([("a", 0.0, 0.0, 0.0, 10.0)])
    points = points_table([("a", 0.0, 0.0, 0.0), ("a", 1.0, "x", 0.0)])

    with pytest.raises(GeometryError, match="row 1"):
        match_points(points, findings)


def test_match_missing_diameter_raises():
    findings = findings_table([("a", 0.0, 0.0, 0.0, np.nan)])
    points = points_table([("a", 0.0, 0.0, 0.0)])

    with pytest.raises(GeometryError, match="diameter_mm"):
        match_points(points, findings)


def test_label_points_nodule_wins_over_excluded():
    nodules = findings_table([("a", 0.0, 0.0, 0.0, 6.0)])
    excluded = findings_table([("a", 0.0, 0.0, 0.0, -1.0), ("b", 0.0, 0.0, 0.0, 2.0)])
    points = points_table(
        [("a", 1.0, 0.0, 0.0), ("a", 4.0, 0.0, 0.0), ("a", 6.0, 0.0, 0.0), ("b", 0.5, 0.0, 0.0)]
    )

    labels = label_points(points, nodules, excluded)

    assert labels.tolist() == ["nodule", "excluded", "negative", "excluded"]
    assert label_points(points, nodules).tolist() == ["nodule", "negative", "negative", "negative"]


# ---------------------------------------------------------------- summaries on a hand-made table

SCANS = pd.DataFrame({"seriesuid": ["A", "B", "C", "D"], "subset": [0, 0, 1, 1]})
NODULES = findings_table(
    [("A", 0.0, 0.0, 0.0, 4.0), ("A", 30.0, 0.0, 0.0, 10.0), ("C", 0.0, 0.0, 0.0, 6.0)]
)


def test_nodules_per_scan_includes_empty_scans():
    per_scan = summary.nodules_per_scan(NODULES, SCANS)

    assert per_scan["seriesuid"].tolist() == ["A", "B", "C", "D"]
    assert per_scan["n_nodules"].tolist() == [2, 0, 1, 0]
    assert per_scan["subset"].tolist() == [0, 0, 1, 1]


def test_nodules_per_scan_from_uid_list():
    per_scan = summary.nodules_per_scan(NODULES, ["D", "C", "A", "B"])

    assert per_scan["n_nodules"].tolist() == [0, 1, 2, 0]
    assert "subset" not in per_scan.columns


def test_nodules_per_scan_unknown_uid_raises():
    with pytest.raises(DatasetError, match="not in the scan list"):
        summary.nodules_per_scan(NODULES, ["A", "B"])


def test_nodules_per_scan_duplicate_scan_raises():
    with pytest.raises(DatasetError, match="more than once"):
        summary.nodules_per_scan(NODULES, ["A", "A", "C"])


def test_count_distribution_fills_gaps():
    per_scan = pd.DataFrame({"seriesuid": list("abcd"), "n": [0, 3, 0, 1]})

    distribution = summary.count_distribution(per_scan, "n")

    assert distribution.index.tolist() == [0, 1, 2, 3]
    assert distribution.tolist() == [2, 1, 0, 1]


def test_per_subset_summary_known_answers():
    table = summary.per_subset_summary(summary.nodules_per_scan(NODULES, SCANS))

    assert table.index.tolist() == ["0", "1", "all"]
    assert table.loc["0"].tolist() == [2, 1, 2, 2]
    assert table.loc["1"].tolist() == [2, 1, 1, 1]
    assert table.loc["all"].tolist() == [4, 2, 3, 2]
    assert table.columns.tolist() == ["n_scans", "n_scans_with_none", "total", "max_per_scan"]


def test_per_subset_summary_numeric_order():
    per_scan = pd.DataFrame({"seriesuid": list("abc"), "subset": [10, 2, 2], "n_nodules": [1, 0, 4]})

    table = summary.per_subset_summary(per_scan)

    assert table.index.tolist() == ["2", "10", "all"]
    assert table.loc["2", "total"] == 4


def test_diameter_summary_known_answers():
    result = summary.diameter_summary([4.0, 10.0, 6.0, -1.0])

    assert result["n"] == 4
    assert result["n_unknown"] == 1
    assert result["min_mm"] == 4.0
    assert result["median_mm"] == 6.0
    assert result["mean_mm"] == pytest.approx(20.0 / 3.0)
    assert result["max_mm"] == 10.0


def test_diameter_summary_only_unknown():
    result = summary.diameter_summary([-1.0, -1.0])

    assert result["n_unknown"] == 2
    assert np.isnan(result["median_mm"])


def test_diameter_histogram_default_bins():
    histogram = summary.diameter_histogram([4.0, 10.0, 6.0, -1.0])

    assert histogram["bin_start_mm"].tolist() == [0, 2, 4, 6, 8, 10]
    assert histogram["bin_end_mm"].tolist() == [2, 4, 6, 8, 10, 12]
    assert histogram["n"].tolist() == [0, 0, 1, 1, 0, 1]


def test_diameter_histogram_last_bin_closed():
    histogram = summary.diameter_histogram([4.0, 10.0, 6.0, 11.0], bin_edges_mm=[0, 5, 10])

    assert histogram["n"].tolist() == [1, 2]


def test_diameter_histogram_bad_edges_raise():
    with pytest.raises(DatasetError, match="increasing"):
        summary.diameter_histogram([4.0], bin_edges_mm=[5, 5, 6])


def test_class_balance_known_answers():
    candidates = points_table([("A", float(i), 0.0, 0.0) for i in range(5)])
    candidates["class"] = [1, 0, 0, 1, 0]

    balance = summary.class_balance(candidates)

    assert balance["n_candidates"] == 5
    assert balance["n_positive"] == 2
    assert balance["n_negative"] == 3
    assert balance["negatives_per_positive"] == pytest.approx(1.5)


def test_class_balance_without_positives():
    candidates = points_table([("A", 0.0, 0.0, 0.0)])
    candidates["class"] = [0]

    assert np.isnan(summary.class_balance(candidates)["negatives_per_positive"])


def test_candidates_per_scan_known_answers():
    candidates = points_table([("A", 0.0, 0.0, 0.0), ("A", 9.0, 0.0, 0.0), ("C", 1.0, 0.0, 0.0)])
    candidates["class"] = [1, 0, 1]

    per_scan = summary.candidates_per_scan(candidates, SCANS)

    assert per_scan["n_candidates"].tolist() == [2, 0, 1, 0]
    assert per_scan["n_positive"].tolist() == [1, 0, 1, 0]


def test_coverage_and_hits_per_nodule():
    candidates = points_table(
        [("A", 0.5, 0.0, 0.0), ("A", -0.5, 0.0, 0.0), ("A", 0.0, 1.0, 0.0), ("C", 40.0, 0.0, 0.0)]
    )

    matched = match_points(candidates, NODULES).findings
    coverage = summary.coverage_summary(matched)
    distribution = summary.hit_count_distribution(matched)

    assert matched["n_hits"].tolist() == [3, 0, 0]
    assert coverage["n_findings"] == 3
    assert coverage["n_covered"] == 1
    assert coverage["n_not_covered"] == 2
    assert coverage["fraction_covered"] == pytest.approx(1 / 3)
    assert distribution.tolist() == [2, 0, 0, 1]


def test_coverage_without_findings():
    matched = match_points(points_table([]), findings_table([])).findings

    assert summary.coverage_summary(matched)["n_findings"] == 0
    assert np.isnan(summary.coverage_summary(matched)["fraction_covered"])
    assert summary.hit_count_distribution(matched).tolist() == [0]


def test_candidate_figures_computed_when_present(tmp_path):
    (tmp_path / "SYNTHETIC_SAMPLE.txt").write_text("test\n")
    NODULES.to_csv(tmp_path / "annotations.csv", index=False)
    candidates = points_table([("A", 0.5, 0.0, 0.0), ("A", 40.0, 0.0, 0.0), ("C", 9.0, 0.0, 0.0)])
    candidates["class"] = [1, 0, 0]
    candidates.to_csv(tmp_path / "candidates.csv", index=False)
    (tmp_path / "subset0").mkdir()
    for uid in "ABCD":
        (tmp_path / "subset0" / f"{uid}.mhd").write_text("")

    figures = summary.candidate_list_figures(tmp_path, version=1)

    assert figures["n_candidates"] == 3
    assert figures["n_positive"] == 1
    assert figures["n_nodules"] == 3
    assert figures["n_nodules_not_covered"] == 2
    assert figures["source"] == "computed from candidates.csv"
    with pytest.raises(DatasetError):
        summary.candidate_list_figures(tmp_path, version=2)


def test_candidate_figures_published_when_absent(tmp_path):
    figures = summary.candidate_list_figures(tmp_path, version=2)

    assert figures["source"] == "published by LUNA16"
    assert figures["n_candidates"] == 754_975
    assert figures["n_positive"] == 1_557
    assert figures["n_nodules_not_covered"] == 20
    assert figures.equals(summary.published_candidate_figures(2))
    with pytest.raises(DatasetError, match="1 or 2"):
        summary.candidate_list_figures(tmp_path, version=3)
    with pytest.raises(DatasetError, match="1 or 2"):
        summary.published_candidate_figures(0)


# ---------------------------------------------------------------- geometry and outside-scan checks

FLIPPED = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def geometry_table(rows):
    """Build a geometry table from rows of (uid, origin, spacing, direction, shape_zyx)."""
    columns = ["seriesuid", "origin_xyz_mm", "spacing_xyz_mm", "direction", "shape_zyx"]
    frame = pd.DataFrame(rows, columns=columns)
    frame["flipped"] = [np.any(np.diag(np.reshape(d, (3, 3))) < 0) for d in frame["direction"]]
    frame["source"] = "test"
    return frame


FLIPPED_SCAN = ("f", (100.0, 120.0, -50.0), (0.5, 0.5, 2.0), FLIPPED, (10, 40, 40))


def test_locate_flipped_scan_indices():
    # Voxel (z=3, y=5, x=7): x = 100 - 7 * 0.5, y = 120 - 5 * 0.5, z = -50 + 3 * 2.
    findings = findings_table([("f", 96.5, 117.5, -44.0, 5.0)])

    located = locate_findings(findings, geometry_table([FLIPPED_SCAN]))

    assert located[["index_z", "index_y", "index_x"]].iloc[0].tolist() == pytest.approx([3.0, 5.0, 7.0])
    assert bool(located["inside"].iloc[0])
    assert bool(located["has_geometry"].iloc[0])


def test_outside_check_flipped_scan_needs_direction():
    findings = findings_table([("f", 96.5, 117.5, -44.0, 5.0)])
    identity = ("f", *FLIPPED_SCAN[1:3], (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), FLIPPED_SCAN[4])

    assert findings_outside_scan(findings, geometry_table([FLIPPED_SCAN])).empty
    report = findings_outside_scan(findings, geometry_table([identity]))
    assert report["problem"].tolist() == [PROBLEM_OUTSIDE]
    assert report[["index_y", "index_x"]].iloc[0].tolist() == pytest.approx([-5.0, -7.0])


def test_outside_check_borders_of_flipped_scan():
    # Slice index 9.49 rounds to the last slice (9), and 9.5 is past its outer face.
    # Along x, index -0.5 is on the outer face of the first column (inside) and -0.52 is outside.
    rows = [
        ("f", 100.0, 120.0, -50.0 + 9.49 * 2, 5.0),
        ("f", 100.0, 120.0, -50.0 + 9.5 * 2, 5.0),
        ("f", 100.0 + 0.25, 120.0, -50.0, 5.0),
        ("f", 100.0 + 0.26, 120.0, -50.0, 5.0),
    ]
    findings = findings_table(rows)
    findings.index = [5, 6, 7, 8]

    report = findings_outside_scan(findings, geometry_table([FLIPPED_SCAN]))

    assert report.index.tolist() == [6, 8]
    assert report["shape_zyx"].tolist() == [(10, 40, 40), (10, 40, 40)]


def test_outside_check_missing_geometry_and_warning(caplog):
    findings = findings_table([("f", 96.5, 117.5, -44.0, 5.0), ("g", 0.0, 0.0, 0.0, -1.0)])

    with caplog.at_level(logging.WARNING, logger="luna_utils.consistency"):
        report = findings_outside_scan(findings, geometry_table([FLIPPED_SCAN]), what="excluded findings")

    assert report["seriesuid"].tolist() == ["g"]
    assert report["problem"].tolist() == [PROBLEM_NO_GEOMETRY]
    assert report["shape_zyx"].tolist() == [None]
    assert "excluded findings" in caplog.text
    assert "1 belong to scans without geometry" in caplog.text
    assert "outside their scan" not in caplog.text


def test_outside_check_empty_findings_is_quiet(caplog):
    with caplog.at_level(logging.WARNING):
        report = findings_outside_scan(findings_table([]), geometry_table([FLIPPED_SCAN]))

    assert report.empty
    assert caplog.text == ""


def test_locate_oblique_scan_agrees_with_simpleitk():
    angle = np.deg2rad(30.0)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]]
    )
    origin, spacing, size_xyz = (-20.0, 5.0, 3.0), (0.7, 0.8, 2.5), (30, 20, 8)
    image = sitk.Image(size_xyz, sitk.sitkInt16)
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(tuple(rotation.reshape(-1)))
    world = [image.TransformContinuousIndexToPhysicalPoint(i) for i in [(4.2, 7.5, 1.0), (29.6, 0.0, 0.0)]]
    findings = findings_table([("o", *world[0], 5.0), ("o", *world[1], 5.0)])
    scan = ("o", origin, spacing, tuple(rotation.reshape(-1)), size_xyz[::-1])

    located = locate_findings(findings, geometry_table([scan]))

    assert located[["index_x", "index_y", "index_z"]].iloc[0].tolist() == pytest.approx([4.2, 7.5, 1.0])
    assert located["inside"].tolist() == [True, False]


def metadata_rows(flips, axis_aligned=True):
    return pd.DataFrame(
        {
            "seriesuid": ["m"], "subset": [0], "dim_x": [40], "dim_y": [30], "n_slices": [10],
            "sp_x": [0.5], "sp_y": [0.6], "sp_z": [2.0], "origin_x": [100.0], "origin_y": [120.0],
            "origin_z": [-50.0], "flip_x": [flips[0]], "flip_y": [flips[1]], "flip_z": [flips[2]],
            "axis_aligned": [axis_aligned],
        }
    )


def test_geometry_from_metadata_flipped():
    table = geometry_from_metadata(metadata_rows((-1.0, -0.9999999999999999, 1.0)))

    row = table.iloc[0]
    direction = np.reshape(row["direction"], (3, 3))
    assert np.diag(direction).tolist() == pytest.approx([-1.0, -1.0, 1.0])
    assert np.count_nonzero(direction - np.diag(np.diag(direction))) == 0
    assert row["shape_zyx"] == (10, 30, 40)
    assert row["spacing_xyz_mm"] == (0.5, 0.6, 2.0)
    assert row["origin_xyz_mm"] == (100.0, 120.0, -50.0)
    assert row["flipped"]
    assert row["source"] == "metadata"


def test_geometry_from_metadata_rejects_oblique_rows():
    with pytest.raises(DatasetError, match="not axis-aligned"):
        geometry_from_metadata(metadata_rows((1.0, 1.0, 1.0), axis_aligned=False))


def test_geometry_from_metadata_missing_column_raises():
    with pytest.raises(DatasetError, match="flip_z"):
        geometry_from_metadata(metadata_rows((1.0, 1.0, 1.0)).drop(columns="flip_z"))


def write_flipped_scan(path):
    image = sitk.Image((6, 5, 4), sitk.sitkInt16)
    image.SetOrigin((10.0, 20.0, -30.0))
    image.SetSpacing((0.5, 0.75, 2.0))
    image.SetDirection(FLIPPED)
    sitk.WriteImage(image, str(path))


def test_geometry_from_headers_reads_direction(tmp_path):
    write_flipped_scan(tmp_path / "1.2.3.mhd")

    table = geometry_from_headers([tmp_path / "1.2.3.mhd"])

    row = table.iloc[0]
    assert row["seriesuid"] == "1.2.3"
    assert row["direction"] == pytest.approx(FLIPPED)
    assert row["shape_zyx"] == (4, 5, 6)
    assert row["spacing_xyz_mm"] == pytest.approx((0.5, 0.75, 2.0))
    assert row["origin_xyz_mm"] == pytest.approx((10.0, 20.0, -30.0))
    assert row["flipped"]
    assert row["source"] == "header"


def test_load_geometry_fills_from_metadata(tmp_path):
    real_uid = "1.3.6.1.4.1.14519.5.2.1.6279.6001.105756658031515062000744821260"
    (tmp_path / "subset0").mkdir()
    write_flipped_scan(tmp_path / "subset0" / "1.2.3.mhd")
    (tmp_path / "evaluationScript" / "annotations").mkdir(parents=True)
    (tmp_path / "evaluationScript" / "annotations" / "seriesuids.csv").write_text(f"1.2.3\n{real_uid}\n")

    table = load_geometry(tmp_path)
    local_only = load_geometry(tmp_path, fill_from_metadata=False)

    assert table["seriesuid"].tolist() == ["1.2.3", real_uid]
    assert table["source"].tolist() == ["header", "metadata"]
    assert table["flipped"].tolist() == [True, False]
    assert table["shape_zyx"].iloc[1] == (121, 512, 512)
    assert local_only["seriesuid"].tolist() == ["1.2.3"]


# ---------------------------------------------------------------- display helpers

from luna_utils.annotation_views import show_patch_gallery  # noqa: E402


def test_show_patch_gallery_panels():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    patches = [np.full((3, 4, 4), value, dtype=np.int16) for value in (-1000, 0, 400)]
    figure = show_patch_gallery(patches, ["a", "b", "c"], n_columns=2)

    titled = [ax.get_title() for ax in figure.axes if ax.images]
    assert titled == ["a", "b", "c"]
    # The lung window (level -600, width 1500) maps -1350 HU to black and 150 HU to white.
    assert figure.axes[0].images[0].get_clim() == (-1350.0, 150.0)
    assert len(figure.axes) == 4
    with pytest.raises(LunaError, match="one title each"):
        show_patch_gallery(patches, ["a"])
    plt.close(figure)
