"""Reading evaluation inputs from files, input errors, and the `python -m luna_utils.evaluation` command."""

import json
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest

from luna_utils.errors import DatasetError
from luna_utils.evaluation import evaluate, evaluate_files, read_seriesuids, read_table
from luna_utils.evaluation.__main__ import main

ANNOTATIONS = "seriesuid,coordX,coordY,coordZ,diameter_mm\na,0,0,0,10\na,50,0,0,6\nb,0,0,0,8\n"
EXCLUDED = "seriesuid,coordX,coordY,coordZ,diameter_mm\na,-40,0,0,-1\n"
# Scan a: a hit (0.9), a double detection (0.5), a mark on the excluded finding (0.8) and a
# false positive (0.7). Nodule 2 of scan a is missed. Scan b: a hit (0.3).
# FROC entries: 0.9 TP, 0.7 FP, 0.3 TP over 2 scans and 3 nodules.
# Points: (0, 0), (0, 1/3), (0.5, 1/3), (0.5, 2/3).
# Sensitivity 1/3 at 1/8 and 1/4, then 2/3 from 1/2 on, so CPM = (2/3 + 10/3) / 7 = 4/7.
SUBMISSION = (
    "seriesuid,coordX,coordY,coordZ,probability\n"
    "a,1,0,0,0.9\na,0,1,0,0.5\na,-40,1,0,0.8\na,100,0,0,0.7\nb,0,0,1,0.3\n"
)


@pytest.fixture
def files(tmp_path):
    paths = {
        "annotations": tmp_path / "annotations.csv",
        "excluded": tmp_path / "annotations_excluded.csv",
        "seriesuids": tmp_path / "seriesuids.csv",
        "submission": tmp_path / "submission.csv",
    }
    paths["annotations"].write_text(ANNOTATIONS)
    paths["excluded"].write_text(EXCLUDED)
    # The official seriesuids.csv has no header and CRLF line endings.
    paths["seriesuids"].write_bytes(b"a\r\nb\r\n")
    paths["submission"].write_text(SUBMISSION)
    return paths


def cli_arguments(files, *extra):
    return [
        "--annotations", str(files["annotations"]),
        "--excluded", str(files["excluded"]),
        "--seriesuids", str(files["seriesuids"]),
        "--submission", str(files["submission"]),
        *extra,
    ]  # fmt: skip


def test_evaluate_files_counts(files):
    result = evaluate_files(files["submission"], files["annotations"], files["excluded"], files["seriesuids"], bootstrap=0)

    assert result.counts() == {
        "tp": 2,
        "fp": 1,
        "fn": 1,
        "n_nodules": 3,
        "n_marks": 5,
        "ignored_on_excluded": 1,
        "double_detections": 1,
        "dropped_by_cap": 0,
    }
    assert result.cpm == pytest.approx(4 / 7)


def test_read_seriesuids_with_and_without_header(tmp_path):
    plain = tmp_path / "plain.csv"
    plain.write_bytes(b"1.2.3\r\n4.5.6\r\n")
    headed = tmp_path / "headed.csv"
    headed.write_text("seriesuid\n1.2.3\n4.5.6\n")

    assert read_seriesuids(plain) == ["1.2.3", "4.5.6"]
    assert read_seriesuids(headed) == ["1.2.3", "4.5.6"]


def test_duplicate_seriesuid_names_line(tmp_path):
    path = tmp_path / "seriesuids.csv"
    path.write_text("seriesuid\na\nb\na\n")
    with pytest.raises(DatasetError, match=r"line 4: seriesuid a is listed twice"):
        read_seriesuids(path)


def test_empty_seriesuid_list_is_rejected(files):
    submission = read_table(files["submission"], "submission")
    annotations = read_table(files["annotations"], "findings")
    with pytest.raises(DatasetError, match="lists no scan"):
        evaluate(submission, annotations, annotations.iloc[:0], [])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("seriesuid,coordX,coordY,coordZ\na,1,2,3\n", r"lacks the column\(s\) \['probability'\]"),
        ("seriesuid,coordX,coordY,coordZ,probability\na,1,2,3,0.5\na,1,2,3,\n", r"line 3: probability is empty"),
        ("seriesuid,coordX,coordY,coordZ,probability\na,1,2,3,high\n", r"line 2: probability is 'high', not a finite number"),
        ("seriesuid,coordX,coordY,coordZ,probability\na,1,2,3,0.5\n,1,2,3,0.5\n", r"line 3: the seriesuid is empty"),
        ("seriesuid,coordX,coordY,coordZ,probability\na,1,2,3,nan\n", r"line 2: probability is empty"),
        ("seriesuid,coordX,coordY,coordZ,probability\na,x,2,3,0.5\n", r"line 2: coordX is 'x'"),
        # A file cut off in the middle of its last row.
        ("seriesuid,coordX,coordY,coordZ,probability\na,1,2,3,0.5\na,1,2", r"line 3: coordZ is empty"),
    ],
)
def test_invalid_submission_names_file_and_line(tmp_path, content, message):
    path = tmp_path / "submission.csv"
    path.write_text(content)
    with pytest.raises(DatasetError, match=message) as raised:
        read_table(path, "submission")
    assert str(path) in str(raised.value)


def test_empty_file_is_rejected(tmp_path):
    path = tmp_path / "submission.csv"
    path.write_text("")
    with pytest.raises(DatasetError, match="is empty"):
        read_table(path, "submission")


def test_missing_file_is_rejected(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        read_table(tmp_path / "absent.csv", "findings")


def test_invalid_dataframe_names_index_label(files):
    submission = pd.DataFrame(
        {"seriesuid": ["a", "a"], "coordX": [0.0, 1.0], "coordY": [0.0, 0.0], "coordZ": [0.0, 0.0], "probability": [0.5, np.inf]},
        index=[10, 11],
    )
    annotations = read_table(files["annotations"], "findings")
    with pytest.raises(DatasetError, match=r"submission, row with index label 11: probability is inf"):
        evaluate(submission, annotations, annotations.iloc[:0], ["a"])


def test_missing_excluded_requires_flag(files):
    with pytest.raises(DatasetError, match="allow_no_excluded=True"):
        evaluate_files(files["submission"], files["annotations"], None, files["seriesuids"])

    result = evaluate_files(
        files["submission"], files["annotations"], None, files["seriesuids"], allow_no_excluded=True, bootstrap=0
    )
    # The mark on the excluded finding becomes a second false positive.
    assert (result.fp, result.ignored_on_excluded, result.used_excluded) == (2, 0, False)


def test_cli_json_output(files, capsys):
    status = main(cli_arguments(files, "--json", "--bootstrap", "200", "--seed", "3"))
    numbers = json.loads(capsys.readouterr().out)

    assert status == 0
    assert {key: numbers[key] for key in ["tp", "fp", "fn", "n_nodules", "n_marks"]} == {
        "tp": 2,
        "fp": 1,
        "fn": 1,
        "n_nodules": 3,
        "n_marks": 5,
    }
    assert (numbers["ignored_on_excluded"], numbers["double_detections"], numbers["dropped_by_cap"]) == (1, 1, 0)
    assert numbers["sensitivities"] == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3])
    assert numbers["cpm"] == pytest.approx(4 / 7)
    lower, upper = numbers["cpm_ci"]
    assert 0.0 <= lower <= upper <= 1.0


def test_cli_json_without_bootstrap_has_no_interval(files, capsys):
    assert main(cli_arguments(files, "--json", "--bootstrap", "0")) == 0
    assert "cpm_ci" not in json.loads(capsys.readouterr().out)


def test_cli_writes_plot_and_curve(files, tmp_path, capsys):
    out = tmp_path / "results"
    status = main(cli_arguments(files, "--out", str(out), "--bootstrap", "50"))
    report = capsys.readouterr().out

    assert status == 0
    assert "CPM: 0.5714" in report
    assert "True positives: 2" in report
    assert (out / "froc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curve = pd.read_csv(out / "froc.csv")
    assert list(curve.columns) == ["fps_per_scan", "sensitivity", "threshold"]
    np.testing.assert_allclose(curve["sensitivity"].iloc[-1], 2 / 3)
    assert len(pd.read_csv(out / "froc_bootstrap.csv")) == 10000
    assert sorted(path.name for path in out.iterdir()) == [
        "froc.csv",
        "froc.png",
        "froc_bootstrap.csv",
        "nodules.csv",
        "result.json",
        "summary.txt",
    ]


def test_cli_invalid_input_exits_nonzero(files, capsys):
    files["submission"].write_text("seriesuid,coordX,coordY,coordZ,probability\na,1,2,3,oops\n")
    status = main(cli_arguments(files))
    error = capsys.readouterr().err

    assert status == 1
    assert "line 2: probability is 'oops'" in error


def test_cli_without_excluded_needs_flag(files, capsys):
    arguments = cli_arguments(files, "--json", "--bootstrap", "0")
    position = arguments.index("--excluded")
    del arguments[position : position + 2]

    assert main(arguments) == 1
    assert "--no-excluded" in capsys.readouterr().err
    assert main(arguments + ["--no-excluded"]) == 0
    assert json.loads(capsys.readouterr().out)["fp"] == 2


def test_cli_rejects_excluded_with_no_excluded(files, capsys):
    assert main(cli_arguments(files, "--no-excluded")) == 2
    assert "either --excluded or --no-excluded" in capsys.readouterr().err


def test_cli_runs_as_module(files):
    completed = subprocess.run(
        [sys.executable, "-m", "luna_utils.evaluation", *cli_arguments(files, "--json", "--bootstrap", "0")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["tp"] == 2


def test_evaluate_leaves_caller_tables_unchanged(files):
    # Probabilities given as text are read as numbers, but the caller's table keeps its values.
    submission = pd.read_csv(files["submission"], dtype={"probability": str})
    submission.index = submission.index + 100
    before = submission.copy()
    annotations = read_table(files["annotations"], "findings")
    result = evaluate(submission, annotations, read_table(files["excluded"], "findings"), ["a", "b"], bootstrap=0)

    pd.testing.assert_frame_equal(submission, before)
    assert result.tp == 2
    assert list(result.marks.index) == list(submission.index)
    assert result.marks["probability"].dtype == np.float64


def test_cli_reports_warnings_on_stderr(files, capsys):
    files["seriesuids"].write_text("a\nb\nc\n")
    before = warnings.showwarning
    status = main(cli_arguments(files, "--json", "--bootstrap", "0"))
    captured = capsys.readouterr()

    assert status == 0
    assert "warning: 1 of 3 evaluated scan(s) have no marks (c)" in captured.err
    assert json.loads(captured.out)["n_nodules"] == 3
    assert warnings.showwarning is before
