"""Train, validation and test splits by LUNA16 subset.

LUNA16 ships its 888 scans in ten subsets, `subset0` ... `subset9`, which are the official folds
for cross-validation. Splitting by subset keeps every candidate of a scan in the same set, so a
model is never validated or tested on a scan it saw during training. A split by candidate leaks
(the same nodule, seen from neighbouring candidates, lands in both sets) and inflates results.

Three roles:

* `train`: fits the model;
* `validation`: chooses the epoch, early stopping and hyper-parameters (part of the training side);
* `test`: scored once at the end, never used for any choice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable

import pandas as pd

from luna_utils.errors import DatasetError

logger = logging.getLogger(__name__)

# Names of the roles, in the order tables list them.
SPLIT_NAMES = ("train", "validation", "test")

# LUNA16 has ten subsets, numbered 0 to 9.
N_SUBSETS = 10


def _as_subsets(values: Iterable[int] | int, role: str) -> tuple[int, ...]:
    if isinstance(values, int):
        values = (values,)
    subsets = tuple(sorted(int(v) for v in values))
    if not subsets:
        raise DatasetError(f"The {role} split has no subsets; give at least one subset number 0-9.")
    bad = [s for s in subsets if not 0 <= s < N_SUBSETS]
    if bad:
        raise DatasetError(f"The {role} split names subset(s) {bad}; LUNA16 subsets are 0 to 9.")
    if len(set(subsets)) != len(subsets):
        raise DatasetError(f"The {role} split lists a subset twice: {subsets}.")
    return subsets


@dataclass(frozen=True)
class SubsetSplit:
    """The LUNA16 subsets of the training, validation and test splits.

    The default trains on subsets 0-7, validates on 8 and tests on 9. Subsets left out of all three
    roles are simply not used.

    Attributes:
        train: Subset numbers used for fitting.
        validation: Subset numbers used for model selection and early stopping.
        test: Subset numbers scored once at the end.

    Raises:
        DatasetError: If a role is empty, names a subset outside 0-9, or shares a subset with
            another role.
    """

    train: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7)
    validation: tuple[int, ...] = (8,)
    test: tuple[int, ...] = (9,)

    def __post_init__(self) -> None:
        for role in SPLIT_NAMES:
            object.__setattr__(self, role, _as_subsets(getattr(self, role), role))

        for i, first in enumerate(SPLIT_NAMES):
            for second in SPLIT_NAMES[i + 1 :]:
                shared = sorted(set(getattr(self, first)) & set(getattr(self, second)))
                if shared:
                    raise DatasetError(
                        f"Subset(s) {shared} are in both the {first} and the {second} split; "
                        "each subset may belong to one split only, or scans would leak between them."
                    )

    def split_of(self, subset: int) -> str | None:
        """Return the role of a subset ('train', 'validation', 'test'), or None when unused."""
        for role in SPLIT_NAMES:
            if int(subset) in getattr(self, role):
                return role
        return None

    def describe(self) -> str:
        """Return a one-line summary, for example 'train 0-7, validation 8, test 9'."""
        parts = [f"{role} {format_subsets(getattr(self, role))}" for role in SPLIT_NAMES]
        return ", ".join(parts)


def format_subsets(subsets: tuple[int, ...]) -> str:
    """Return subset numbers as text: a run of three or more as "0-7", others as "8,9"."""
    if len(subsets) > 2 and subsets == tuple(range(subsets[0], subsets[-1] + 1)):
        return f"{subsets[0]}-{subsets[-1]}"
    return ",".join(str(s) for s in subsets)


def assign_scans(scans: pd.DataFrame, split: SubsetSplit) -> pd.DataFrame:
    """Give each scan its split.

    Args:
        scans: One row per scan with columns `seriesuid` and `subset`, as from
            `luna_utils.dataset.list_scans`.
        split: The subset assignment.

    Returns:
        The scans whose subset has a role, with a new column `split`; rows keep their order.

    Raises:
        DatasetError: If a column is missing or a seriesuid is listed under two subsets.
    """
    missing = [c for c in ("seriesuid", "subset") if c not in scans.columns]
    if missing:
        raise DatasetError(f"The scan table lacks column(s) {missing}; it has {list(scans.columns)}.")

    subsets_per_scan = scans.groupby("seriesuid")["subset"].nunique()
    ambiguous = subsets_per_scan[subsets_per_scan > 1]
    if len(ambiguous):
        raise DatasetError(
            f"{len(ambiguous)} scan(s) appear in more than one subset, for example "
            f"{ambiguous.index[0]}; remove the duplicate .mhd file so each scan has one subset."
        )

    assigned = scans.assign(split=scans["subset"].map(split.split_of))
    assigned = assigned[assigned["split"].notna()].reset_index(drop=True)

    for role in SPLIT_NAMES:
        absent = sorted(set(getattr(split, role)) - set(assigned.loc[assigned["split"] == role, "subset"]))
        if absent:
            logger.warning("The %s split has no scans on disk for subset(s) %s.", role, absent)
    return assigned


def assign_candidates(candidates: pd.DataFrame, scans: pd.DataFrame) -> pd.DataFrame:
    """Give each candidate the subset and split of its scan.

    Candidates whose scan has no split (its subset is unused or not on disk) are dropped, and the
    number dropped is logged.

    Args:
        candidates: Candidate table with a `seriesuid` column (and any others, kept as they are).
        scans: Output of `assign_scans`.

    Returns:
        The kept candidates, in their original order, with columns `subset` and `split` added.
    """
    lookup = scans.drop_duplicates("seriesuid").set_index("seriesuid")
    subset = candidates["seriesuid"].map(lookup["subset"])
    role = candidates["seriesuid"].map(lookup["split"])
    kept = role.notna()
    if (~kept).any():
        logger.info("Left out %d candidate(s) whose scan has no split.", int((~kept).sum()))

    assigned = candidates.loc[kept].copy()
    assigned["subset"] = subset[kept].astype(int)
    assigned["split"] = role[kept]
    return assigned.reset_index(drop=True)


def check_disjoint(frame: pd.DataFrame) -> None:
    """Check that no scan appears in two splits.

    Args:
        frame: A table with columns `seriesuid` and `split` (scans or candidates).

    Raises:
        DatasetError: If a seriesuid has rows in more than one split.
    """
    splits_per_scan = frame.groupby("seriesuid")["split"].nunique()
    leaking = splits_per_scan[splits_per_scan > 1]
    if len(leaking):
        raise DatasetError(
            f"{len(leaking)} scan(s) appear in more than one split, for example {leaking.index[0]}; "
            "split by scan (LUNA16 subset), never by candidate."
        )


def summarize_splits(candidates: pd.DataFrame, label_column: str = "class") -> pd.DataFrame:
    """Count subsets, scans, candidates and positives per split.

    Args:
        candidates: Output of `assign_candidates` with a 0/1 label column.
        label_column: Name of the label column.

    Returns:
        One row per split present, in the order train, validation, test, with columns `subsets`,
        `scans`, `candidates`, `positives` and `positive_percent`.
    """
    rows = []
    for role in SPLIT_NAMES:
        part = candidates[candidates["split"] == role]
        if part.empty:
            continue
        positives = int(part[label_column].sum())
        rows.append(
            {
                "split": role,
                "subsets": format_subsets(tuple(sorted(part["subset"].unique()))),
                "scans": part["seriesuid"].nunique(),
                "candidates": len(part),
                "positives": positives,
                "positive_percent": round(100.0 * positives / len(part), 3),
            }
        )
    return pd.DataFrame(rows).set_index("split")
