"""The evaluator on the real LUNA16 tables: the shipped ones, and candidates.csv when available."""

import os
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from luna_utils.dataset import ENV_DATA_DIR, is_sample, load_real_table, real_reference_dir
from luna_utils.evaluation import evaluate, read_table


def official_example_counts():
    """Parse the counts of the official example output shipped in data/real/."""
    text = (real_reference_dir() / "official_example_CADAnalysis.txt").read_text()
    labels = {
        "tp": "True positives",
        "fp": "False positives",
        "fn": "False negatives",
        "n_marks": "Total number of candidates",
        "n_nodules": "Total number of nodules",
        "ignored_on_excluded": "Ignored candidates on excluded nodules",
        "double_detections": "Ignored candidates which were double detections on a nodule",
    }
    return {key: int(re.search(rf"{label}: (\d+)", text).group(1)) for key, label in labels.items()}


def test_official_example_counts_parse():
    assert official_example_counts() == {
        "tp": 1120,
        "fp": 548420,
        "fn": 66,
        "n_marks": 551065,
        "n_nodules": 1186,
        "ignored_on_excluded": 1294,
        "double_detections": 231,
    }


def test_annotation_centres_as_marks_find_every_nodule():
    # One mark at each nodule centre of the 888 real scans: every nodule is hit, nothing else.
    annotations = load_real_table("annotations")
    excluded = load_real_table("annotations_excluded")
    seriesuids = load_real_table("seriesuids")
    submission = annotations[["seriesuid", "coordX", "coordY", "coordZ"]].assign(probability=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = evaluate(submission, annotations, excluded, seriesuids, bootstrap=0)

    assert (result.tp, result.fn, result.fp, result.n_nodules, result.n_scans) == (1186, 0, 0, 1186, 888)
    assert result.cpm == 1.0


@pytest.mark.slow
def test_real_candidates_reproduce_official_example():
    data_dir = os.environ.get(ENV_DATA_DIR)
    if not data_dir:
        pytest.skip(reason=f"{ENV_DATA_DIR} is not set; point it at the extracted real LUNA16 to run this test")
    candidates_path = Path(data_dir) / "candidates.csv"
    if is_sample(data_dir) or not candidates_path.is_file():
        pytest.skip(reason=f"the real LUNA16 candidates.csv is missing from {ENV_DATA_DIR} ({data_dir})")

    # The official sample submission is every row of candidates.csv. Without a cap the counts do
    # not depend on the probabilities, so seeded random ones stand in for the sample's.
    candidates = pd.read_csv(candidates_path, dtype={"seriesuid": str})
    candidates["probability"] = np.random.default_rng(0).random(len(candidates))
    submission = candidates[["seriesuid", "coordX", "coordY", "coordZ", "probability"]]

    # The example output reports 551,065 candidates (620.6 per scan), so it was produced without
    # the 100-marks-per-scan cap of the current script: score it the same way.
    result = evaluate(
        submission,
        load_real_table("annotations"),
        load_real_table("annotations_excluded"),
        load_real_table("seriesuids"),
        max_marks_per_scan=None,
        bootstrap=0,
    )
    counts = result.counts()
    assert {key: counts[key] for key in official_example_counts()} == official_example_counts()


def test_read_table_accepts_real_annotations():
    table = read_table(real_reference_dir() / "annotations.csv", "findings")
    assert len(table) == 1186
    assert table["diameter_mm"].min() > 0
