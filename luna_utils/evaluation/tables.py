"""Checking and loading the four inputs of a LUNA16 evaluation.

The inputs are the included nodules (`annotations.csv`), the excluded findings
(`annotations_excluded.csv`), the list of evaluated scans (`seriesuids.csv`) and a submission
(`seriesuid,coordX,coordY,coordZ,probability`). Coordinates are world LPS millimetres in the CSVs'
(x, y, z) order. Every check raises `DatasetError` naming the table, the column, the row and the
value at fault.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from luna_utils.errors import DatasetError
from luna_utils.evaluation.uid_groups import distinct_uids

COORD_COLUMNS = ("coordX", "coordY", "coordZ")
SUBMISSION_COLUMNS = ("seriesuid", *COORD_COLUMNS, "probability")
FINDING_COLUMNS = ("seriesuid", *COORD_COLUMNS, "diameter_mm")


@dataclass(frozen=True)
class TableSource:
    """Origin of a table, for error messages.

    Attributes:
        name: What the table is ("submission", "annotations", ...), or its file path.
        first_line: File line number of the table's first data row (2 below a header line); None
            when the table was passed in as a DataFrame, so rows are named by index label.
    """

    name: str
    first_line: int | None = None

    def row(self, table: pd.DataFrame, position: int) -> str:
        """Name one row the way a reader finds it: a file line, or a DataFrame index label."""
        if self.first_line is None:
            return f"row with index label {show_value(table.index[position])}"
        return f"line {position + self.first_line}"


def check_findings(table: pd.DataFrame, source: TableSource | str) -> pd.DataFrame:
    """Validate an annotations or excluded-findings table and return a clean copy.

    Args:
        table: Columns `seriesuid, coordX, coordY, coordZ, diameter_mm` (world LPS mm); extra
            columns are kept.
        source: The table's name or file, for error messages.

    Returns:
        A copy with the same index and row order, `seriesuid` as str and the numeric columns as float64.

    Raises:
        DatasetError: On a missing column, an empty seriesuid, or a value that is not a finite number.
    """
    return _check_table(table, FINDING_COLUMNS, _as_source(source))


def check_submission(table: pd.DataFrame, source: TableSource | str, check_uids: bool = True) -> pd.DataFrame:
    """Validate a submission table and return a clean copy in the same row order.

    Args:
        table: Columns `seriesuid, coordX, coordY, coordZ, probability`, one row per mark (world
            LPS mm); extra columns are kept.
        source: The table's name or file, for error messages.
        check_uids: Check every seriesuid for emptiness. The evaluator skips this and checks only
            the rows outside the scan list (`check_seriesuid_values`), because a seriesuid found in
            the validated list cannot be empty.

    Returns:
        A copy with the same index and row order, `seriesuid` as str and the numeric columns as float64.

    Raises:
        DatasetError: On a missing column, an empty seriesuid, or a coordinate or probability that
            is not a finite number.
    """
    return _check_table(table, SUBMISSION_COLUMNS, _as_source(source), check_uids)


def check_seriesuid_values(table: pd.DataFrame, source: TableSource | str, rows: np.ndarray | None = None) -> None:
    """Raise `DatasetError` naming the first row whose seriesuid is missing or blank.

    Args:
        table: A table with a `seriesuid` column.
        source: The table's name or file, for error messages.
        rows: Bool mask of the rows to check; None checks every row.
    """
    source = _as_source(source)
    uids = table["seriesuid"] if rows is None else table["seriesuid"][rows]
    empty = uids.isna().to_numpy()
    if not empty.any():
        # Blank ids are rare: look for them among the distinct values, far fewer than the rows.
        blank = [uid for uid in distinct_uids(uids) if str(uid).strip() == ""]
        empty = uids.isin(blank).to_numpy() if blank else empty
    if empty.any():
        position = int(np.flatnonzero(empty)[0]) if rows is None else int(np.flatnonzero(rows)[np.flatnonzero(empty)[0]])
        raise DatasetError(f"{source.name}, {source.row(table, position)}: the seriesuid is empty. Fix or remove the row.")


def check_seriesuids(seriesuids: Iterable[str] | pd.Series | pd.DataFrame, source: TableSource | str) -> list[str]:
    """Validate the list of evaluated scans.

    Args:
        seriesuids: The scan ids: a list, a Series, or a DataFrame with a `seriesuid` column (or a
            single column).
        source: The list's name or file, for error messages.

    Returns:
        The seriesuids as a list of str, in the given order.

    Raises:
        DatasetError: If the list is empty, has an empty entry, or names a scan twice.
    """
    source = _as_source(source)
    if isinstance(seriesuids, pd.DataFrame):
        if "seriesuid" in seriesuids.columns:
            column = seriesuids["seriesuid"]
        elif seriesuids.shape[1] == 1:
            column = seriesuids.iloc[:, 0]
        else:
            raise DatasetError(
                f"{source.name} has columns {list(seriesuids.columns)} but no `seriesuid` column. "
                "Pass one column of scan ids."
            )
    else:
        column = pd.Series(list(seriesuids) if not isinstance(seriesuids, pd.Series) else seriesuids)

    frame = pd.DataFrame({"seriesuid": column.to_numpy()})
    if frame.empty:
        raise DatasetError(f"{source.name} lists no scan. Pass the seriesuids of the scans to evaluate.")

    missing = frame["seriesuid"].isna() | (frame["seriesuid"].astype(str).str.strip() == "")
    if missing.any():
        position = int(np.flatnonzero(missing.to_numpy())[0])
        raise DatasetError(f"{source.name}, {source.row(frame, position)}: the seriesuid is empty. Remove the row.")

    uids = frame["seriesuid"].astype(str).tolist()
    duplicated = frame["seriesuid"].astype(str).duplicated()
    if duplicated.any():
        position = int(np.flatnonzero(duplicated.to_numpy())[0])
        raise DatasetError(
            f"{source.name}, {source.row(frame, position)}: seriesuid {uids[position]} is listed twice "
            f"({int(duplicated.sum())} duplicate(s) in all). The official script would count such a scan's "
            "nodules and marks twice; remove the duplicates."
        )
    return uids


def read_table(path: str | Path, kind: str) -> pd.DataFrame:
    """Read and validate one CSV table.

    Args:
        path: The CSV file.
        kind: "submission" or "findings" (annotations and excluded findings share a layout).

    Returns:
        The validated table, as `check_submission` or `check_findings` returns it.

    Raises:
        DatasetError: If the file is missing, empty, not a CSV, or fails the table's checks.
    """
    path = Path(path)
    frame = _read_csv(path, header="infer")
    source = TableSource(str(path), first_line=2)
    if kind == "submission":
        return check_submission(frame, source)
    if kind == "findings":
        return check_findings(frame, source)
    raise ValueError(f"kind must be 'submission' or 'findings'; got {kind!r}")


def read_seriesuids(path: str | Path) -> list[str]:
    """Read a list of evaluated scans: one seriesuid per line, with or without a `seriesuid` header.

    The official `seriesuids.csv` has no header; tables written with pandas usually have one. Only
    the first column is read, as the official script does. The official script would count a
    header line as one more scan without marks; here it is skipped.

    Raises:
        DatasetError: If the file is missing, empty or fails `check_seriesuids`.
    """
    path = Path(path)
    frame = _read_csv(path, header=None)
    first_line = 1
    if str(frame.iloc[0, 0]).strip() == "seriesuid":
        frame = frame.iloc[1:].reset_index(drop=True)
        first_line = 2
    column = frame.iloc[:, 0].str.strip()
    return check_seriesuids(column, TableSource(str(path), first_line=first_line))


def show_value(value: object) -> str:
    """Format a table value for an error message: text quoted, numbers plain, missing as "empty"."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "empty"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, np.generic):
        value = value.item()
    return str(value)


def _as_source(source: TableSource | str) -> TableSource:
    return source if isinstance(source, TableSource) else TableSource(source)


def _read_csv(path: Path, header: str | None) -> pd.DataFrame:
    if not path.is_file():
        raise DatasetError(f"{path} does not exist. Check the path.")
    try:
        frame = pd.read_csv(path, header=header, dtype={"seriesuid": str} if header else str)
    except pd.errors.EmptyDataError as error:
        raise DatasetError(f"{path} is empty; expected a CSV file with a header line.") from error
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path} is not a valid CSV file: {error}") from error
    if header is None and frame.empty:
        raise DatasetError(f"{path} is empty; expected one seriesuid per line.")
    return frame


def _check_table(table: pd.DataFrame, columns: tuple[str, ...], source: TableSource, check_uids: bool = True) -> pd.DataFrame:
    """Check required columns and values; return a copy with float64 numbers and str seriesuids."""
    if not isinstance(table, pd.DataFrame):
        raise DatasetError(f"{source.name} must be a pandas DataFrame; got {type(table).__name__}.")

    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise DatasetError(
            f"{source.name} lacks the column(s) {missing}; it has {list(table.columns)}. "
            f"Expected the columns {','.join(columns)}."
        )

    # A shallow copy: with pandas copy-on-write, replacing its columns leaves the caller's table alone.
    frame = table.copy(deep=False)

    if check_uids:
        check_seriesuid_values(frame, source)
    if not pd.api.types.is_string_dtype(frame["seriesuid"]):
        frame["seriesuid"] = frame["seriesuid"].astype(str)

    for column in columns[1:]:
        if not _is_finite_float64(frame[column]):
            frame[column] = _finite_column(frame[column], column, source, table)
    return frame


def _is_finite_float64(values: pd.Series) -> bool:
    """Return True for a NumPy float64 column of finite values, which needs no conversion.

    A sum is finite only if every value is, so one pass with no temporary array decides the
    common case. A sum that overflows returns False, and `_finite_column` then checks each value.
    """
    if values.dtype != np.float64:
        return False
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(values.to_numpy().sum()))


def _finite_column(values: pd.Series, column: str, source: TableSource, table: pd.DataFrame) -> pd.Series:
    """Return a column as float64, or raise naming the first value that is not a finite number."""
    if pd.api.types.is_bool_dtype(values):
        raise DatasetError(f"{source.name}: column {column} contains True/False values; expected numbers.")

    numbers = pd.to_numeric(values, errors="coerce").astype(np.float64)
    bad = ~np.isfinite(numbers.to_numpy())
    if bad.any():
        position = int(np.flatnonzero(bad)[0])
        raise DatasetError(
            f"{source.name}, {source.row(table, position)}: {column} is {show_value(values.iloc[position])}, not a finite number "
            f"({int(bad.sum())} such row(s) in all). Fix or remove the row."
        )
    return numbers
