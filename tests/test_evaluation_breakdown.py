"""Operating points, sensitivity by size, and the evaluation figures."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from luna_utils.evaluation import (
    detected_at,
    evaluate,
    plot_froc,
    plot_outcomes,
    sensitivity_by_size,
    threshold_at,
)

FINDING_COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
MARK_COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ", "probability"]


@pytest.fixture(scope="module")
def result():
    # Nodules of 4, 8, 12 and 25 mm; the 25 mm one is missed. Entries by decreasing score:
    # 0.9 TP (4 mm), 0.8 FP, 0.7 FP, 0.6 TP (8 mm), 0.5 FP, 0.4 FP, 0.3 TP (12 mm), 0.2 FP,
    # over 2 scans and 4 nodules. FROC points (FP / 2, TP / 4) with thresholds: (0, 0, inf),
    # (0, .25, .9), (.5, .25, .8), (1, .25, .7), (1, .5, .6), (1.5, .5, .5), (2, .5, .4),
    # (2, .75, .3), (2.5, .75, .2). sklearn drops the collinear points (.5, .25) and (1.5, .5).
    annotations = pd.DataFrame(
        [("a", 0.0, 0.0, 0.0, 4.0), ("b", 0.0, 0.0, 0.0, 8.0), ("a", 50.0, 0.0, 0.0, 12.0), ("b", 50.0, 0.0, 0.0, 25.0)],
        columns=FINDING_COLUMNS,
    )
    submission = pd.DataFrame(
        [
            ("a", 0.0, 0.0, 0.0, 0.9),
            ("a", 100.0, 0.0, 0.0, 0.8),
            ("b", 100.0, 0.0, 0.0, 0.7),
            ("b", 1.0, 0.0, 0.0, 0.6),
            ("a", 120.0, 0.0, 0.0, 0.5),
            ("b", 120.0, 0.0, 0.0, 0.4),
            ("a", 51.0, 0.0, 0.0, 0.3),
            ("b", 140.0, 0.0, 0.0, 0.2),
        ],
        columns=MARK_COLUMNS,
    )
    excluded = pd.DataFrame([("a", -40.0, 0.0, 0.0, -1.0)], columns=FINDING_COLUMNS)
    return evaluate(submission, annotations, excluded, ["a", "b"], bootstrap=50)


def test_threshold_at_operating_points(result):
    assert threshold_at(result, 0.0) == 0.9
    assert threshold_at(result, 1.0) == 0.6
    assert threshold_at(result, 2.0) == 0.3
    assert threshold_at(result, 100.0) == 0.2
    assert threshold_at(result, -1.0) == float("inf")


def test_detected_at_operating_point(result):
    assert detected_at(result).tolist() == [True, True, True, False]
    assert detected_at(result, 1.0).tolist() == [True, True, False, False]


def test_sensitivity_by_size_bins(result):
    any_probability = sensitivity_by_size(result)
    at_one = sensitivity_by_size(result, fps_per_scan=1.0)

    assert any_probability["n_nodules"].tolist() == [1, 1, 1, 1]
    assert any_probability["sensitivity"].tolist() == [1.0, 1.0, 1.0, 0.0]
    assert at_one["n_detected"].tolist() == [1, 1, 0, 0]
    assert [str(interval) for interval in at_one["diameter_mm"]] == ["[3.0, 5.0)", "[5.0, 10.0)", "[10.0, 20.0)", "[20.0, 40.0)"]


def test_sensitivity_by_size_empty_bin_is_nan(result):
    table = sensitivity_by_size(result, bins_mm=(0.0, 3.0, 40.0))
    assert table["n_nodules"].tolist() == [0, 4]
    assert np.isnan(table["sensitivity"].iloc[0])
    assert table["sensitivity"].iloc[1] == 0.75


def test_plot_froc_axes(result):
    ax = plot_froc({"toy": result})

    assert ax.get_xlabel() == "Average false positives per scan"
    assert ax.get_ylabel() == "Sensitivity"
    assert ax.get_xscale() == "log"
    assert ax.get_xlim() == pytest.approx((0.125, 8.0))
    assert "CPM 0.500" in ax.get_legend().get_texts()[0].get_text()
    plt.close(ax.figure)


def test_plot_outcomes_labels_every_mark(result):
    excluded = pd.DataFrame([("a", -40.0, 0.0, 0.0, -1.0)], columns=FINDING_COLUMNS)
    ax = plot_outcomes(result, "a", excluded=excluded)

    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend == ["hit", "false positive"]
    labels = [text.get_text() for text in ax.texts]
    assert labels.count("nodule: hit") == 2
    assert labels.count("excluded") == 1
    assert ax.get_xlabel() == "x (mm)"
    plt.close(ax.figure)
