"""The LUNA16 counting rules, each pinned by a small hand-made case worked out by hand."""

import math
import warnings

import numpy as np
import pandas as pd
import pytest

from luna_utils.evaluation import (
    ScansWithoutMarksWarning,
    TiedAtCapWarning,
    UndefinedSensitivityWarning,
    UnlistedMarksWarning,
    evaluate,
)
from luna_utils.evaluation.reference import reference_evaluate

FINDING_COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
MARK_COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ", "probability"]
NO_FINDINGS = pd.DataFrame(columns=FINDING_COLUMNS)


def findings(*rows):
    return pd.DataFrame(list(rows), columns=FINDING_COLUMNS)


def marks(*rows):
    return pd.DataFrame(list(rows), columns=MARK_COLUMNS)


def run(submission, annotations, excluded, seriesuids, **options):
    """Evaluate without bootstrap, ignoring warnings, and check the loop reference agrees."""
    options.setdefault("bootstrap", 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = evaluate(submission, annotations, excluded, seriesuids, **options)
    reference = reference_evaluate(
        submission, annotations, excluded, list(seriesuids), max_marks_per_scan=options.get("max_marks_per_scan", 100)
    )
    assert result.counts() == {key: reference[key] for key in result.counts()}
    np.testing.assert_allclose(result.sensitivities, reference["sensitivities"], rtol=0, atol=1e-12)
    return result


def test_distance_equal_to_radius_is_miss():
    # Nodule of diameter 10 mm: radius squared 25. (3, 4, 0) is at squared distance 9 + 16 = 25,
    # not strictly less, so it misses; (3, 3.9, 0) is at 9 + 15.21 = 24.21 and hits.
    annotations = findings(("s", 0.0, 0.0, 0.0, 10.0))
    on_sphere = run(marks(("s", 3.0, 4.0, 0.0, 0.9)), annotations, NO_FINDINGS, ["s"])
    inside = run(marks(("s", 3.0, 3.9, 0.0, 0.9)), annotations, NO_FINDINGS, ["s"])

    assert (on_sphere.tp, on_sphere.fn, on_sphere.fp) == (0, 1, 1)
    assert (inside.tp, inside.fn, inside.fp) == (1, 0, 0)


def test_excluded_negative_diameter_uses_10_mm():
    # Excluded finding with diameter -1 counts as 10 mm (radius squared 25). The mark at
    # squared distance 16 is ignored, and the one at 25 (on the sphere) is a false positive.
    # A -1 read literally (radius squared 0.25) would have made both false positives.
    excluded = findings(("s", 0.0, 0.0, 0.0, -1.0))
    submission = marks(("s", 4.0, 0.0, 0.0, 0.6), ("s", 0.0, 0.0, 5.0, 0.5))
    result = run(submission, findings(("s", 100.0, 0.0, 0.0, 6.0)), excluded, ["s"])

    assert result.ignored_on_excluded == 1
    assert result.fp == 1
    assert list(result.marks["outcome"]) == ["excluded", "false_positive"]


def test_mark_inside_two_nodules_counts_for_both():
    # Nodules at x = 0 and x = 6, diameter 10 (radius squared 25). The mark at x = 3 is at
    # squared distance 9 from both: both are true positives scored 0.7, no double detection,
    # and the mark is not a false positive. The mark at x = 50 is the one false positive.
    # FROC: scores 0.7 (TP), 0.7 (TP), 0.5 (FP); 1 scan, 2 nodules. Points (0, 0), (0, 2/2),
    # (1, 1): sensitivity 1 at every rate, CPM 1.
    annotations = findings(("s", 0.0, 0.0, 0.0, 10.0), ("s", 6.0, 0.0, 0.0, 10.0))
    submission = marks(("s", 3.0, 0.0, 0.0, 0.7), ("s", 50.0, 0.0, 0.0, 0.5))
    result = run(submission, annotations, NO_FINDINGS, ["s"])

    assert (result.tp, result.fn, result.fp, result.double_detections) == (2, 0, 1, 0)
    assert result.n_marks == 2
    assert list(result.nodules["score"]) == [0.7, 0.7]
    assert result.cpm == 1.0


def test_extra_marks_on_nodule_are_double_detections():
    # Three marks inside one nodule: one true positive scored with the highest probability
    # (0.9), 3 - 1 = 2 double detections, no false positive.
    annotations = findings(("s", 0.0, 0.0, 0.0, 10.0))
    submission = marks(("s", 0.0, 0.0, 0.0, 0.2), ("s", 1.0, 0.0, 0.0, 0.9), ("s", 0.0, 1.0, 0.0, 0.4))
    result = run(submission, annotations, NO_FINDINGS, ["s"])

    assert (result.tp, result.fp, result.double_detections) == (1, 0, 2)
    assert result.nodules["score"].tolist() == [0.9]
    assert result.nodules["n_hits"].tolist() == [3]
    assert list(result.marks["outcome"]) == ["double", "hit", "double"]


def test_included_nodule_wins_over_excluded_finding():
    # The first mark lies inside the nodule and inside an excluded finding: it is a hit, not
    # ignored. The second lies inside two overlapping excluded findings: ignored once.
    annotations = findings(("s", 0.0, 0.0, 0.0, 10.0))
    excluded = findings(("s", 1.0, 0.0, 0.0, 10.0), ("s", 40.0, 0.0, 0.0, -1.0), ("s", 42.0, 0.0, 0.0, -1.0))
    submission = marks(("s", 0.5, 0.0, 0.0, 0.3), ("s", 41.0, 0.0, 0.0, 0.8))
    result = run(submission, annotations, excluded, ["s"])

    assert (result.tp, result.fp, result.ignored_on_excluded) == (1, 0, 1)
    assert result.n_marks == 2


def test_froc_interpolation_worked_by_hand():
    # Scans a and b, 4 nodules; nodule 4 is missed. Entries by decreasing score:
    # 0.9 TP, 0.8 FP, 0.7 FP, 0.6 TP, 0.5 FP, 0.4 FP, 0.3 TP, 0.2 FP.
    # FROC points (FP / 2 scans, TP / 4 nodules): (0, 0), (0, .25), (.5, .25), (1, .25), (1, .5),
    # (1.5, .5), (2, .5), (2, .75), (2.5, .75). numpy.interp takes the last of equal x values:
    # 1/8, 1/4, 1/2 -> .25; 1 -> .5; 2, 4, 8 -> .75. CPM = (3 x .25 + .5 + 3 x .75) / 7 = 0.5.
    annotations = findings(
        ("a", 0.0, 0.0, 0.0, 10.0), ("b", 0.0, 0.0, 0.0, 10.0), ("a", 50.0, 0.0, 0.0, 10.0), ("b", 50.0, 0.0, 0.0, 10.0)
    )
    submission = marks(
        ("a", 0.0, 0.0, 0.0, 0.9),
        ("a", 100.0, 0.0, 0.0, 0.8),
        ("b", 100.0, 0.0, 0.0, 0.7),
        ("b", 1.0, 0.0, 0.0, 0.6),
        ("a", 120.0, 0.0, 0.0, 0.5),
        ("b", 120.0, 0.0, 0.0, 0.4),
        ("a", 51.0, 0.0, 0.0, 0.3),
        ("b", 140.0, 0.0, 0.0, 0.2),
    )
    result = run(submission, annotations, NO_FINDINGS, ["a", "b"])

    assert (result.tp, result.fp, result.fn, result.n_nodules) == (3, 5, 1, 4)
    np.testing.assert_allclose(result.sensitivities, [0.25, 0.25, 0.25, 0.5, 0.75, 0.75, 0.75])
    assert result.cpm == pytest.approx(0.5, abs=1e-12)
    assert result.detection_sensitivity == 0.75


def test_sensitivity_at_jump_follows_official_rounding():
    # 3 scans, 187 false positives: 3 at 0.9, then the hit on nodule 1 at 0.5, then 184 at 0.1.
    # Nodule 2 is missed. The official x of the first 3 false positives is
    # (3 / 187) x 187 / 3 = 1.0000000000000002, not 1, so at exactly 1 false positive per scan
    # numpy.interp reads the segment before the jump: sensitivity 0, not 0.5.
    # Sensitivities: 0, 0, 0, 0, .5, .5, .5; CPM = 1.5 / 7.
    annotations = findings(("a", 0.0, 0.0, 0.0, 10.0), ("b", 0.0, 0.0, 0.0, 10.0))
    rows = [(uid, 500.0, 0.0, 0.0, 0.9) for uid in "abc"]
    rows.append(("a", 0.0, 0.0, 0.0, 0.5))
    rows += [("abc"[i % 3], 1000.0 + 20.0 * i, 0.0, 0.0, 0.1) for i in range(184)]
    result = run(marks(*rows), annotations, NO_FINDINGS, ["a", "b", "c"])

    assert (result.tp, result.fp, result.fn) == (1, 187, 1)
    np.testing.assert_array_equal(result.sensitivities, [0, 0, 0, 0, 0.5, 0.5, 0.5])
    assert result.cpm == pytest.approx(1.5 / 7)


def scan_with_probabilities(probabilities, uid="s"):
    """Marks far apart on a line, one per probability, in the given (file) order."""
    return marks(*[(uid, 1000.0 + 20.0 * i, 0.0, 0.0, p) for i, p in enumerate(probabilities)])


def test_cap_keeps_top_100_without_ties():
    # 150 distinct probabilities: the 101st highest is 49/150, so the 100 marks above it stay
    # and 50 are dropped.
    probabilities = np.arange(150) / 150
    result = run(scan_with_probabilities(probabilities), NO_FINDINGS, NO_FINDINGS, ["s"])

    assert (result.n_marks, result.dropped_by_cap, result.fp) == (100, 50, 100)
    kept = result.marks.loc[result.marks["outcome"] == "false_positive", "probability"]
    assert kept.min() == pytest.approx(50 / 150)


def test_cap_ignores_file_order():
    # The official script also stops after 100 kept marks in file order. At most 100 values can
    # be strictly above the 101st highest, so that stop never triggers: any file order keeps the
    # same 100 marks (the loop reference implements the stop literally and agrees).
    probabilities = np.arange(150) / 150
    shuffled = np.random.default_rng(3).permutation(probabilities)
    result = run(scan_with_probabilities(shuffled), NO_FINDINGS, NO_FINDINGS, ["s"])

    kept = np.sort(result.marks.loc[result.marks["outcome"] != "dropped_by_cap", "probability"].to_numpy())
    np.testing.assert_array_equal(kept, probabilities[50:])


def test_cap_drops_every_mark_tied_at_cut():
    # 90 marks at distinct high probabilities, 20 tied at 0.5 (ranks 91 to 110), 40 low ones.
    # The 101st highest is 0.5, so only the 90 marks above 0.5 stay: 60 are dropped, of which
    # 10 (ranks 91 to 100) were within the top 100.
    probabilities = np.concatenate((0.6 + np.arange(90) / 1000, np.full(20, 0.5), np.arange(40) / 100))
    submission = scan_with_probabilities(probabilities)
    far_nodule = findings(("s", -500.0, 0.0, 0.0, 10.0))
    with pytest.warns(TiedAtCapWarning, match=r"10 mark\(s\) ranked within the top 100"):
        result = evaluate(submission, far_nodule, NO_FINDINGS, ["s"], bootstrap=0)

    assert (result.n_marks, result.dropped_by_cap) == (90, 60)
    run(submission, far_nodule, NO_FINDINGS, ["s"])


def test_cap_with_101_equal_marks_drops_all():
    # 101 marks at one probability: the 101st highest equals every mark, so none is kept and the
    # nodule the first mark hits is missed.
    submission = scan_with_probabilities(np.full(101, 0.5))
    annotations = findings(("s", 1000.0, 0.0, 0.0, 10.0))
    with pytest.warns(TiedAtCapWarning, match=r"100 mark\(s\) ranked"):
        result = evaluate(submission, annotations, NO_FINDINGS, ["s"], bootstrap=0)

    assert (result.n_marks, result.dropped_by_cap, result.tp, result.fn) == (0, 101, 0, 1)
    assert result.cpm == 0.0


def test_cap_leaves_exactly_100_tied_marks():
    # 100 marks is not more than the cap, so all stay even though they tie.
    with warnings.catch_warnings():
        warnings.simplefilter("error", TiedAtCapWarning)
        result = run(scan_with_probabilities(np.full(100, 0.5)), NO_FINDINGS, NO_FINDINGS, ["s"])
    assert (result.n_marks, result.dropped_by_cap) == (100, 0)


def test_cap_disabled_keeps_every_mark():
    result = run(scan_with_probabilities(np.full(150, 0.5)), NO_FINDINGS, NO_FINDINGS, ["s"], max_marks_per_scan=None)
    assert (result.n_marks, result.dropped_by_cap) == (150, 0)
    assert result.max_marks_per_scan is None


def test_cap_counts_per_scan():
    # Scan a has 101 marks (one dropped), scan b 60 (none dropped).
    submission = pd.concat(
        [scan_with_probabilities(np.arange(101) / 101, "a"), scan_with_probabilities(np.arange(60) / 60, "b")]
    )
    result = run(submission, NO_FINDINGS, NO_FINDINGS, ["a", "b"])
    assert (result.n_marks, result.dropped_by_cap) == (160, 1)


def test_scan_without_marks_counts_its_nodules_as_missed():
    # Scans a and b each hold one nodule; only a has a (hitting) mark. Sensitivity 1/2 at
    # every rate (no false positives, so every FROC point has x = 0), CPM 0.5.
    annotations = findings(("a", 0.0, 0.0, 0.0, 10.0), ("b", 0.0, 0.0, 0.0, 10.0))
    submission = marks(("a", 0.0, 0.0, 0.0, 0.9))
    with pytest.warns(ScansWithoutMarksWarning, match=r"1 of 2 evaluated scan\(s\) have no marks \(b\)"):
        result = evaluate(submission, annotations, NO_FINDINGS, ["a", "b"], bootstrap=0)

    assert (result.tp, result.fn, result.n_nodules) == (1, 1, 2)
    assert result.cpm == 0.5


def test_marks_of_unlisted_scans_are_ignored():
    # Scan c is not in the list: its mark and its nodule do not count anywhere.
    annotations = findings(("a", 0.0, 0.0, 0.0, 10.0), ("c", 0.0, 0.0, 0.0, 10.0))
    submission = marks(("a", 0.0, 0.0, 0.0, 0.9), ("c", 0.0, 0.0, 0.0, 0.8), ("c", 50.0, 0.0, 0.0, 0.7))
    with pytest.warns(UnlistedMarksWarning, match=r"2 mark\(s\) belong to 1 scan\(s\) outside"):
        result = evaluate(submission, annotations, NO_FINDINGS, ["a"], bootstrap=0)

    assert (result.n_marks, result.unlisted_marks, result.n_nodules, result.tp, result.fp) == (1, 2, 1, 1, 0)
    assert list(result.marks["outcome"]) == ["hit", "unlisted", "unlisted"]


def test_system_without_false_positives():
    # 3 nodules, 2 hit, no false positive: the official border case sets every FROC x to 0,
    # so the sensitivity is 2/3 at every rate and the CPM is 2/3.
    annotations = findings(("a", 0.0, 0.0, 0.0, 10.0), ("a", 50.0, 0.0, 0.0, 10.0), ("b", 0.0, 0.0, 0.0, 10.0))
    submission = marks(("a", 0.0, 0.0, 0.0, 0.9), ("b", 0.0, 0.0, 0.0, 0.1))
    result = run(submission, annotations, NO_FINDINGS, ["a", "b"])

    assert result.fp == 0
    np.testing.assert_array_equal(result.fps_per_scan, np.zeros(len(result.fps_per_scan)))
    np.testing.assert_allclose(result.sensitivities, np.full(7, 2 / 3))
    assert result.cpm == pytest.approx(2 / 3)


def test_empty_submission_scores_zero():
    annotations = findings(("a", 0.0, 0.0, 0.0, 10.0), ("b", 0.0, 0.0, 0.0, 10.0))
    with pytest.warns(ScansWithoutMarksWarning, match="2 of 2"):
        result = evaluate(marks(), annotations, NO_FINDINGS, ["a", "b"], bootstrap=20)

    assert (result.tp, result.fp, result.fn, result.n_marks) == (0, 0, 2, 0)
    assert result.cpm == 0.0
    assert result.cpm_ci == (0.0, 0.0)
    assert result.marks.empty


def test_only_false_positives_scores_zero():
    # The official script gives NaN here (0 / 0 in the ROC curve); the evaluator returns 0.
    annotations = findings(("a", 0.0, 0.0, 0.0, 10.0))
    result = run(marks(("a", 50.0, 0.0, 0.0, 0.9)), annotations, NO_FINDINGS, ["a"])

    assert (result.tp, result.fp, result.fn) == (0, 1, 1)
    np.testing.assert_array_equal(result.sensitivities, np.zeros(7))


def test_scans_without_nodules_give_nan_cpm():
    with pytest.warns(UndefinedSensitivityWarning, match="contain no included nodule"):
        result = evaluate(marks(("a", 50.0, 0.0, 0.0, 0.9)), NO_FINDINGS, NO_FINDINGS, ["a"], bootstrap=10)

    assert result.n_nodules == 0
    assert math.isnan(result.cpm)
    assert result.bootstrap is None
    assert result.to_dict()["cpm"] is None


def test_missing_excluded_adds_false_positives():
    annotations = findings(("a", 0.0, 0.0, 0.0, 10.0))
    excluded = findings(("a", 50.0, 0.0, 0.0, -1.0))
    submission = marks(("a", 0.0, 0.0, 0.0, 0.9), ("a", 50.0, 0.0, 0.0, 0.95))
    official = evaluate(submission, annotations, excluded, ["a"], bootstrap=0)
    without = evaluate(submission, annotations, None, ["a"], allow_no_excluded=True, bootstrap=0)

    assert (official.fp, official.ignored_on_excluded, official.used_excluded) == (0, 1, True)
    assert (without.fp, without.ignored_on_excluded, without.used_excluded) == (1, 0, False)
    # With the excluded finding the only entry is the hit, so the CPM is 1. Without it the
    # false positive 0.95 ranks first: points (0, 0), (1, 0), (1, 1); at 1/8 .. 1/2 the
    # sensitivity is 0, at 1 and above 1, so the CPM is 4/7.
    assert official.cpm == 1.0
    assert without.cpm == pytest.approx(4 / 7)


def test_nodule_table_lists_listed_nodules_in_order():
    annotations = findings(("b", 0.0, 0.0, 0.0, 4.0), ("x", 0.0, 0.0, 0.0, 4.0), ("a", 0.0, 0.0, 0.0, 8.0))
    submission = marks(("a", 1.0, 0.0, 0.0, 0.4))
    result = run(submission, annotations, NO_FINDINGS, ["a", "b"])

    assert result.nodules["seriesuid"].tolist() == ["b", "a"]
    assert result.nodules["detected"].tolist() == [False, True]
    assert result.nodules["diameter_mm"].tolist() == [4.0, 8.0]
    assert np.isnan(result.nodules["score"].iloc[0])
    assert result.nodules["score"].iloc[1] == 0.4
