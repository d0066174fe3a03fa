"""Warnings the evaluator issues where the official LUNA16 rules give surprising numbers.

Each is a `UserWarning` subclass, so a caller can silence one kind or turn it into an error with
the standard `warnings` filters, for example
`warnings.simplefilter("error", TiedAtCapWarning)`.
"""

from __future__ import annotations


class EvaluationWarning(UserWarning):
    """Base class of the evaluator's warnings."""


class ScansWithoutMarksWarning(EvaluationWarning):
    """Scans in the evaluated list have no marks: their nodules all count as missed."""


class UnlistedMarksWarning(EvaluationWarning):
    """The submission has marks for scans outside the evaluated list: those marks are ignored."""


class TiedAtCapWarning(EvaluationWarning):
    """Marks tied with the first probability below the per-scan cap were all dropped."""


class UndefinedSensitivityWarning(EvaluationWarning):
    """Sensitivity is undefined because the evaluated scans (or a resample of them) hold no nodule."""
