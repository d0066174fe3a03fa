"""Tests for luna_utils.splits: subsets to roles, no scan in two sets."""

import logging

import pandas as pd
import pytest

from luna_utils.errors import DatasetError
from luna_utils.splits import (
    SubsetSplit,
    assign_candidates,
    assign_scans,
    check_disjoint,
    format_subsets,
    summarize_splits,
)
from luna_utils.training_report import attach_kinds, imbalance_table, real_run_sizes


def make_scans(per_subset: int = 2) -> pd.DataFrame:
    rows = [
        {"seriesuid": f"1.2.{subset}.{i}", "subset": subset}
        for subset in range(10)
        for i in range(per_subset)
    ]
    return pd.DataFrame(rows)


def make_candidates(scans: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for number, uid in enumerate(scans["seriesuid"]):
        for k in range(5):
            rows.append(
                {"seriesuid": uid, "coordX": number, "coordY": k, "coordZ": -k, "class": int(k == 0)}
            )
    return pd.DataFrame(rows)


def test_default_split_is_official_folds():
    split = SubsetSplit()

    assert split.train == (0, 1, 2, 3, 4, 5, 6, 7)
    assert split.validation == (8,)
    assert split.test == (9,)
    assert split.describe() == "train 0-7, validation 8, test 9"


def test_split_of_each_subset():
    split = SubsetSplit(train=(0, 1, 2, 3, 4, 5), validation=(6,), test=(8, 9))

    assert [split.split_of(s) for s in range(10)] == [
        "train", "train", "train", "train", "train", "train", "validation", None, "test", "test",
    ]


def test_split_accepts_single_int_and_sorts():
    split = SubsetSplit(train=[3, 1, 2], validation=0, test=9)

    assert split.train == (1, 2, 3)
    assert split.validation == (0,)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"train": (0, 1, 8), "validation": (8,), "test": (9,)}, "train and the validation"),
        ({"train": (0, 1), "validation": (2,), "test": (2, 9)}, "validation and the test"),
        ({"train": (0, 9), "validation": (8,), "test": (9,)}, "train and the test"),
        ({"train": (), "validation": (8,), "test": (9,)}, "no subsets"),
        ({"train": (0, 10), "validation": (8,), "test": (9,)}, "0 to 9"),
        ({"train": (0, -1), "validation": (8,), "test": (9,)}, "0 to 9"),
        ({"train": (0, 0), "validation": (8,), "test": (9,)}, "twice"),
    ],
)
def test_split_rejects_bad_choices(kwargs, message):
    with pytest.raises(DatasetError, match=message):
        SubsetSplit(**kwargs)


def test_no_scan_in_two_sets():
    scans = assign_scans(make_scans(), SubsetSplit(train=(0, 1, 2, 3, 4), validation=(5, 6), test=(8, 9)))
    candidates = assign_candidates(make_candidates(make_scans()), scans)

    check_disjoint(scans)
    check_disjoint(candidates)
    sets = {role: set(candidates.loc[candidates["split"] == role, "seriesuid"]) for role in ("train", "validation", "test")}
    assert not sets["train"] & sets["validation"]
    assert not sets["train"] & sets["test"]
    assert not sets["validation"] & sets["test"]
    assert len(sets["train"]) == 10
    assert len(sets["validation"]) == 4
    assert len(sets["test"]) == 4


def test_assign_scans_drops_unused_subsets():
    scans = assign_scans(make_scans(), SubsetSplit(train=(0, 1), validation=(2,), test=(3,)))

    assert sorted(scans["subset"].unique()) == [0, 1, 2, 3]
    assert scans.loc[scans["subset"] == 2, "split"].unique().tolist() == ["validation"]


def test_assign_scans_warns_on_missing_subset(caplog):
    scans = make_scans()
    scans = scans[scans["subset"] != 9]

    with caplog.at_level(logging.WARNING, logger="luna_utils.splits"):
        assign_scans(scans, SubsetSplit())

    assert "test split has no scans on disk for subset(s) [9]" in caplog.text


def test_assign_scans_rejects_scan_in_two_subsets():
    scans = pd.concat([make_scans(), pd.DataFrame([{"seriesuid": "1.2.0.0", "subset": 9}])])

    with pytest.raises(DatasetError, match="more than one subset"):
        assign_scans(scans, SubsetSplit())


def test_assign_candidates_keeps_order_and_columns():
    scans = assign_scans(make_scans(), SubsetSplit(train=(0,), validation=(1,), test=(2,)))
    candidates = make_candidates(make_scans())

    assigned = assign_candidates(candidates, scans)

    assert len(assigned) == 6 * 5
    assert list(assigned.columns) == ["seriesuid", "coordX", "coordY", "coordZ", "class", "subset", "split"]
    expected = candidates[candidates["seriesuid"].isin(scans["seriesuid"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(assigned[expected.columns], expected)
    assert assigned.loc[assigned["seriesuid"] == "1.2.2.1", "split"].unique().tolist() == ["test"]


def test_assign_candidates_empty_table():
    scans = assign_scans(make_scans(), SubsetSplit())
    empty = make_candidates(make_scans()).iloc[:0]

    assigned = assign_candidates(empty, scans)

    assert assigned.empty
    assert "split" in assigned.columns


def test_check_disjoint_detects_leak():
    leaking = pd.DataFrame({"seriesuid": ["a", "a", "b"], "split": ["train", "test", "train"]})

    with pytest.raises(DatasetError, match="1 scan"):
        check_disjoint(leaking)


def test_summarize_splits_counts():
    scans = assign_scans(make_scans(), SubsetSplit(train=(0, 1, 2), validation=(3,), test=(8, 9)))
    candidates = assign_candidates(make_candidates(make_scans()), scans)

    summary = summarize_splits(candidates)

    assert summary.index.tolist() == ["train", "validation", "test"]
    assert summary.loc["train", "subsets"] == "0-2"
    assert summary.loc["test", "subsets"] == "8,9"
    assert summary["scans"].tolist() == [6, 2, 4]
    assert summary["candidates"].tolist() == [30, 10, 20]
    assert summary["positives"].tolist() == [6, 2, 4]
    assert summary.loc["train", "positive_percent"] == 20.0


# Reporting helpers built on the splits (luna_utils.training_report)


def test_format_subsets():
    assert format_subsets((0, 1, 2, 3)) == "0-3"
    assert format_subsets((8, 9)) == "8,9"
    assert format_subsets((1, 3, 5)) == "1,3,5"


def test_real_run_sizes_cover_all_scans():
    sizes = real_run_sizes(SubsetSplit(), stored_size=37)

    assert sizes.index.tolist() == ["train", "validation", "test"]
    assert sizes["scans"].sum() == 888
    assert sizes["nodules"].sum() == 1186
    assert sizes["candidates V2"].sum() == 754_975
    assert sizes.loc["train", "subsets"] == "0-7"
    test_bytes = sizes.loc["test", "candidates V2"] * 2 * 37**3
    assert sizes.loc["test", "patch cache GB"] == round(test_bytes / 1e9, 1)


def test_real_run_sizes_subsample_negatives():
    full = real_run_sizes(SubsetSplit(), 37)
    reduced = real_run_sizes(SubsetSplit(), 37, {"train": 0.05})

    assert reduced.loc["test", "patches kept"] == full.loc["test", "patches kept"]
    assert reduced.loc["train", "patches kept"] < 0.06 * full.loc["train", "patches kept"]
    assert reduced.loc["train", "patches kept"] > 0.05 * full.loc["train", "patches kept"]


def test_imbalance_table_ratios():
    table = imbalance_table({"candidates.csv (V1)": (101, 1), "candidates_V2.csv (V2)": (0, 0)})

    assert table.loc[("this run", "candidates.csv (V1)"), "negatives per positive"] == 100.0
    assert table.loc[("this run", "candidates_V2.csv (V2)"), "negatives per positive"] == 0.0
    assert table.loc[("real LUNA16", "candidates_V2.csv (V2)"), "candidates"] == 754_975
    assert table.loc[("real LUNA16", "candidates.csv (V1)"), "positives"] == 1_351


def test_attach_kinds_matches_coordinates(tmp_path):
    (tmp_path / "synthetic").mkdir()
    pd.DataFrame(
        {
            "seriesuid": ["s1", "s1", "s1"],
            "coordX": [1.5, 2.0, 1.5],
            "coordY": [0.0, 0.0, 0.0],
            "coordZ": [-3.25, 7.0, -3.25],
            "class": [1, 0, 1],
            "kind": ["nodule", "vessel", "pleura"],
            "version": [2, 2, 1],
        }
    ).to_csv(tmp_path / "synthetic" / "candidate_kinds.csv", index=False)
    candidates = pd.DataFrame(
        {"seriesuid": ["s1", "s1", "s2"], "coordX": [2.0, 1.5, 1.5], "coordY": [0.0, 0.0, 0.0], "coordZ": [7.0, -3.25, -3.25]},
        index=[5, 6, 7],
    )

    kinds = attach_kinds(candidates, tmp_path)

    assert kinds["kind"].tolist() == ["vessel", "nodule", "unknown"]
    assert kinds.index.tolist() == [5, 6, 7]
    assert attach_kinds(candidates, tmp_path / "elsewhere")["kind"].tolist() == ["unknown"] * 3
