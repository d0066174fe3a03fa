"""Figures of the real LUNA16 tables shipped in data/real/, computed with luna_utils.

These are the numbers notebook 04 quotes; each is computed here from the shipped files.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from luna_utils import annotation_summary as summary
from luna_utils.annotations import match_points
from luna_utils.consistency import findings_outside_scan, geometry_from_metadata
from luna_utils.dataset import load_real_table, real_reference_dir


@pytest.fixture(scope="module")
def annotations():
    return load_real_table("annotations")


@pytest.fixture(scope="module")
def excluded():
    return load_real_table("annotations_excluded")


@pytest.fixture(scope="module")
def metadata():
    return load_real_table("luna16_scans_metadata")


@pytest.fixture(scope="module")
def per_scan(annotations):
    return summary.nodules_per_scan(annotations, load_real_table("luna16_subsets"))


def test_real_nodule_counts(annotations, per_scan):
    assert len(annotations) == 1186
    assert len(per_scan) == 888
    assert int((per_scan["n_nodules"] > 0).sum()) == 601
    assert int((per_scan["n_nodules"] == 0).sum()) == 287
    assert int(per_scan["n_nodules"].max()) == 12


def test_real_nodules_per_subset(per_scan):
    table = summary.per_subset_summary(per_scan)

    assert table.loc[[str(s) for s in range(8)], "n_scans"].tolist() == [89] * 8
    assert table.loc[["8", "9"], "n_scans"].tolist() == [88, 88]
    assert table.loc["all"].tolist() == [888, 287, 1186, 12]
    assert table.loc["6", "max_per_scan"] == 12


def test_real_nodule_counts_match_metadata(per_scan, metadata):
    expected = metadata.set_index("seriesuid")["n_nodules"]

    assert per_scan.set_index("seriesuid")["n_nodules"].equals(expected.loc[per_scan["seriesuid"]])


def test_real_nodule_diameters(annotations):
    result = summary.diameter_summary(annotations["diameter_mm"])

    assert result["n_unknown"] == 0
    assert round(result["min_mm"], 2) == 3.25
    assert round(result["max_mm"], 2) == 32.27
    # The two middle values of the 1,186 diameters are 6.4308 and 6.4364 mm.
    assert round(result["median_mm"], 2) == 6.43
    assert result["median_mm"] == pytest.approx(6.4336, abs=1e-4)


def test_real_excluded_counts(excluded):
    result = summary.diameter_summary(excluded["diameter_mm"])

    assert len(excluded) == 35192
    assert result["n_unknown"] == 30513
    assert int((excluded["diameter_mm"] == -1).sum()) == 30513
    assert excluded["seriesuid"].nunique() == 888


def test_real_flipped_scans(metadata):
    geometry = geometry_from_metadata(metadata)
    diagonals = np.array([np.diag(np.reshape(d, (3, 3))) for d in geometry["direction"]])

    flipped = (diagonals < 0).any(axis=1)
    assert int(flipped.sum()) == 14
    assert geometry["flipped"].tolist() == flipped.tolist()
    assert np.allclose(diagonals[flipped], [-1.0, -1.0, 1.0])


def test_real_excluded_outside_scan(excluded, metadata):
    report = findings_outside_scan(excluded, geometry_from_metadata(metadata))

    assert len(report) == 15
    assert (report["problem"] == "outside scan").all()
    per_scan = report["seriesuid"].value_counts()
    assert per_scan.iloc[0] == 14
    assert per_scan.index[0].endswith("914241295628")
    # Those 14 lie beyond the last slice of a 181-slice scan.
    beyond = report[report["seriesuid"] == per_scan.index[0]]
    assert (beyond["index_z"] > 181 - 0.5).all()


def test_real_annotations_inside_scan(annotations, metadata):
    assert findings_outside_scan(annotations, geometry_from_metadata(metadata)).empty


def test_real_candidate_counts_match_published(metadata):
    assert int(metadata["n_cand_v1"].sum()) == summary.PUBLISHED_CANDIDATE_FIGURES[1]["n_candidates"]
    assert int(metadata["n_cand_v2"].sum()) == summary.PUBLISHED_CANDIDATE_FIGURES[2]["n_candidates"]


def test_official_example_output_matches_published():
    text = (real_reference_dir() / "official_example_CADAnalysis.txt").read_text()

    def figure(label):
        return int(re.search(rf"{label}: (\d+)", text).group(1))

    assert figure("Total number of candidates") == summary.PUBLISHED_CANDIDATE_FIGURES[1]["n_candidates"]
    assert figure("False negatives") == summary.PUBLISHED_CANDIDATE_FIGURES[1]["n_nodules_not_covered"]
    assert figure("Total number of nodules") == summary.PUBLISHED_NODULE_COUNT


def test_real_excluded_findings_repeat_nodules(annotations, excluded):
    # Every nodule has the centre of at least one excluded finding inside its radius, so a
    # candidate on a nodule usually hits an excluded finding too: the nodule label must win.
    matched = match_points(excluded, annotations).findings

    assert int((matched["n_hits"] == 0).sum()) == 0
