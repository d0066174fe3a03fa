"""The vectorised evaluator against the plain-loop reference and sklearn, on random inputs."""

import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_curve

from luna_utils.evaluation import FP_RATES_PER_SCAN, evaluate
from luna_utils.evaluation.froc import FrocEntries, bootstrap_froc, froc_curve
from luna_utils.evaluation.reference import reference_evaluate

FINDING_COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
MARK_COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ", "probability"]


def random_case(seed, n_scans=8, max_marks=40):
    """Random findings and marks: marks near nodules, near excluded findings and elsewhere.

    Probabilities are rounded to two decimals so ties are common. One extra scan, outside the
    returned list, has findings and marks that must be ignored.
    """
    rng = np.random.default_rng(seed)
    uids = [f"scan{i}" for i in range(n_scans + 1)]
    nodules, excluded, marks = [], [], []
    for uid in uids:
        for _ in range(rng.integers(0, 4)):
            center = rng.uniform(-100, 100, 3)
            diameter = rng.uniform(3, 30)
            nodules.append((uid, *center, diameter))
            # Some excluded findings overlap a nodule.
            if rng.random() < 0.3:
                excluded.append((uid, *(center + rng.normal(0, 3, 3)), rng.choice([-1.0, 8.0])))
        for _ in range(rng.integers(0, 5)):
            excluded.append((uid, *rng.uniform(-100, 100, 3), rng.choice([-1.0, rng.uniform(3, 20)])))

        centers = [row[1:4] for row in nodules + excluded if row[0] == uid]
        for _ in range(rng.integers(0, max_marks)):
            if centers and rng.random() < 0.5:
                point = np.asarray(centers[rng.integers(len(centers))]) + rng.normal(0, 4, 3)
            else:
                point = rng.uniform(-110, 110, 3)
            marks.append((uid, *point, round(float(rng.random()), 2)))

    order = rng.permutation(len(marks))
    submission = pd.DataFrame([marks[i] for i in order], columns=MARK_COLUMNS)
    return (
        submission,
        pd.DataFrame(nodules, columns=FINDING_COLUMNS),
        pd.DataFrame(excluded, columns=FINDING_COLUMNS),
        uids[:-1],
    )


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("max_marks", [None, 12])
def test_evaluator_matches_loop_reference(seed, max_marks):
    submission, annotations, excluded, uids = random_case(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = evaluate(submission, annotations, excluded, uids, max_marks_per_scan=max_marks, bootstrap=40, seed=seed)
    reference = reference_evaluate(
        submission, annotations, excluded, uids, max_marks_per_scan=max_marks, bootstrap=40, seed=seed
    )

    assert result.counts() == {key: reference[key] for key in result.counts()}
    np.testing.assert_allclose(result.fps_per_scan, reference["fps_per_scan"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.sensitivity, reference["sensitivity"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.sensitivities, reference["sensitivities"], rtol=0, atol=1e-12)
    assert result.cpm == pytest.approx(reference["cpm"], abs=1e-12)
    np.testing.assert_array_equal(result.nodules["score"].to_numpy(), np.asarray(reference["nodule_scores"]))

    assert result.cpm_ci == pytest.approx(reference["cpm_ci"], abs=1e-12)
    np.testing.assert_allclose(result.bootstrap.sensitivities_lower, reference["sensitivities_lower"], atol=1e-12)
    np.testing.assert_allclose(result.bootstrap.sensitivities_upper, reference["sensitivities_upper"], atol=1e-12)
    np.testing.assert_allclose(result.bootstrap.sensitivity_mean, reference["band_mean"], atol=1e-12)
    np.testing.assert_allclose(result.bootstrap.sensitivity_lower, reference["band_lower"], atol=1e-12)
    np.testing.assert_allclose(result.bootstrap.sensitivity_upper, reference["band_upper"], atol=1e-12)


def test_random_cases_exercise_every_rule():
    # Guards the comparison above: across the random cases every counted event happens.
    totals = dict.fromkeys(["tp", "fp", "fn", "ignored_on_excluded", "double_detections", "dropped_by_cap"], 0)
    for seed in range(12):
        submission, annotations, excluded, uids = random_case(seed)
        reference = reference_evaluate(submission, annotations, excluded, uids, max_marks_per_scan=12)
        for key in totals:
            totals[key] += reference[key]
    assert all(value > 0 for value in totals.values()), totals


def test_froc_curve_matches_sklearn_points():
    # Official formula: fps = FPR x FP / scans, sensitivity = TPR x TP / nodules.
    rng = np.random.default_rng(5)
    entries = FrocEntries(
        tp_scores=rng.integers(0, 20, 30) / 20,
        tp_scans=rng.integers(0, 10, 30),
        fp_scores=rng.integers(0, 20, 200) / 20,
        fp_scans=rng.integers(0, 10, 200),
        nodules_per_scan=np.full(10, 4),
    )
    labels = np.r_[np.ones(30), np.zeros(200)]
    fpr, tpr, thresholds = roc_curve(labels, np.r_[entries.tp_scores, entries.fp_scores])
    fps, sensitivity, curve_thresholds = froc_curve(entries)

    np.testing.assert_allclose(fps, fpr * 200 / 10)
    np.testing.assert_allclose(sensitivity, tpr * 30 / 40)
    np.testing.assert_array_equal(curve_thresholds, thresholds)


def test_bootstrap_is_deterministic_per_seed():
    submission, annotations, excluded, uids = random_case(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = evaluate(submission, annotations, excluded, uids, bootstrap=100, seed=7)
        again = evaluate(submission, annotations, excluded, uids, bootstrap=100, seed=7)
        other = evaluate(submission, annotations, excluded, uids, bootstrap=100, seed=8)

    assert first.cpm_ci == again.cpm_ci
    np.testing.assert_array_equal(first.bootstrap.sensitivity_lower, again.bootstrap.sensitivity_lower)
    assert not np.array_equal(first.bootstrap.sensitivity_mean, other.bootstrap.sensitivity_mean)


def test_bootstrap_interval_contains_cpm_on_stable_system():
    # 40 scans, one nodule each, hit at probability 0.9; one false positive per scan at 0.5.
    # Every resample has the same curve: sensitivity 1 at every rate, so the interval is (1, 1).
    n_scans = 40
    entries = FrocEntries(
        tp_scores=np.full(n_scans, 0.9),
        tp_scans=np.arange(n_scans),
        fp_scores=np.full(n_scans, 0.5),
        fp_scans=np.arange(n_scans),
        nodules_per_scan=np.ones(n_scans, dtype=int),
    )
    result = bootstrap_froc(entries, n_resamples=50, seed=0)

    assert result.cpm_ci == (1.0, 1.0)
    assert result.n_used == 50
    assert result.sensitivities_lower.tolist() == [1.0] * len(FP_RATES_PER_SCAN)


def test_bootstrap_zero_resamples_returns_none():
    submission, annotations, excluded, uids = random_case(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = evaluate(submission, annotations, excluded, uids, bootstrap=0)
    assert result.bootstrap is None
    assert result.cpm_ci is None
    assert "cpm_ci" not in result.to_dict()
