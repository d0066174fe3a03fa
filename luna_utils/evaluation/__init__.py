"""LUNA16 evaluation: counts, FROC, CPM and bootstrap, reproducing the official script's rules.

The official `noduleCADEvaluationLUNA16.py` (LUNA16 `evaluationScript.zip`) is reproduced rule
for rule, vectorised per scan, and the places where its rules surprise people are reported as
warnings (`warning_types`). Coordinates are world LPS millimetres in (x, y, z) order, the
`coordX, coordY, coordZ` columns of the CSVs.

Typical use::

    from luna_utils.evaluation import evaluate_files, plot_froc
    result = evaluate_files("submission.csv", "annotations.csv", "annotations_excluded.csv", "seriesuids.csv")
    print(result.summary())
    plot_froc(result)

Command line: `python -m luna_utils.evaluation --help`.
"""

from luna_utils.evaluation.breakdown import detected_at, sensitivity_by_size, threshold_at
from luna_utils.evaluation.evaluator import evaluate, evaluate_files
from luna_utils.evaluation.froc import FP_RATES_PER_SCAN, BootstrapResult
from luna_utils.evaluation.report import plot_froc, plot_outcomes, write_outputs
from luna_utils.evaluation.result import EvaluationResult
from luna_utils.evaluation.rules import OFFICIAL_MAX_MARKS_PER_SCAN
from luna_utils.evaluation.tables import read_seriesuids, read_table
from luna_utils.evaluation.warning_types import (
    EvaluationWarning,
    ScansWithoutMarksWarning,
    TiedAtCapWarning,
    UndefinedSensitivityWarning,
    UnlistedMarksWarning,
)

__all__ = [
    "FP_RATES_PER_SCAN",
    "OFFICIAL_MAX_MARKS_PER_SCAN",
    "BootstrapResult",
    "EvaluationResult",
    "EvaluationWarning",
    "ScansWithoutMarksWarning",
    "TiedAtCapWarning",
    "UndefinedSensitivityWarning",
    "UnlistedMarksWarning",
    "detected_at",
    "evaluate",
    "evaluate_files",
    "plot_froc",
    "plot_outcomes",
    "read_seriesuids",
    "read_table",
    "sensitivity_by_size",
    "threshold_at",
    "write_outputs",
]
