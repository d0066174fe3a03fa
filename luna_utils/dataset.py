"""Finding the dataset and loading its tables.

One place decides which data a run uses, in this order:

1. an explicit path passed by the caller;
2. the `LUNA16_DIR` environment variable (the real LUNA16, extracted);
3. the synthetic sample under `data/sample/`, generated on first use.

Every dataset follows the layout of the extracted Zenodo files::

    subset0/<seriesuid>.mhd + .raw     ... subset9/
    annotations.csv                    candidates.csv
    candidates_V2/candidates_V2.csv    sampleSubmission.csv
    evaluationScript/annotations/annotations.csv, annotations_excluded.csv, seriesuids.csv
    seg-lungs-LUNA16/<seriesuid>.mhd + .zraw

Tables are returned as DataFrames with world coordinates in columns `coordX, coordY, coordZ`
(LPS millimetres), the names the CSV files use.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from luna_utils.errors import DatasetError

logger = logging.getLogger(__name__)

ENV_DATA_DIR = "LUNA16_DIR"
ENV_WORK_DIR = "LUNA16_WORK_DIR"

# File written at the root of every synthetic sample; its presence marks the data as synthetic.
SAMPLE_MARKER = "SYNTHETIC_SAMPLE.txt"

COORD_COLUMNS = ["coordX", "coordY", "coordZ"]


def repo_root() -> Path:
    """Return the root of the tutorial repository (the folder holding `luna_utils/`)."""
    return Path(__file__).resolve().parent.parent


def real_reference_dir() -> Path:
    """Return `data/real/`: the real LUNA16 tables, headers and crops shipped with the project."""
    return repo_root() / "data" / "real"


def default_sample_dir() -> Path:
    """Return `data/sample/`, where the default synthetic sample is generated."""
    return repo_root() / "data" / "sample"


def display_path(path: str | Path) -> str:
    """Return a path as it should appear in notebook output: relative to the repository when inside it.

    Paths outside the repository are shown relative to the home folder (`~/...`) or by their last
    two parts, so rendered notebooks never show a user name or machine layout.
    """
    path = Path(path).resolve()
    for base, prefix in ((repo_root(), ""), (Path.home(), "~/")):
        try:
            relative = path.relative_to(base)
        except ValueError:
            continue
        return prefix + (relative.as_posix() or ".")
    return ".../" + "/".join(path.parts[-2:])


def is_sample(root: str | Path) -> bool:
    """Return whether a dataset folder contains the synthetic sample (it has the sample marker)."""
    return (Path(root) / SAMPLE_MARKER).is_file()


def resolve_data_dir(path: str | Path | None = None, *, generate: bool = True) -> Path:
    """Return the dataset folder a run should use.

    Args:
        path: An explicit dataset folder; it wins over everything else.
        generate: Generate the default sample when it is needed and missing.

    Returns:
        The absolute dataset folder.

    Raises:
        DatasetError: If the chosen folder does not exist.
    """
    if path is not None:
        chosen, source = Path(path), "the path passed in"
    elif os.environ.get(ENV_DATA_DIR):
        chosen, source = Path(os.environ[ENV_DATA_DIR]), f"the {ENV_DATA_DIR} environment variable"
    else:
        chosen = default_sample_dir()
        if generate and not is_sample(chosen):
            # The sample is written both extracted and as the Zenodo archives, so notebook 00 can
            # run the real download, verify and extract steps offline.
            from luna_utils.acquire.mirror import ensure_sample_mirror

            ensure_sample_mirror(chosen)
        return chosen.resolve()

    if not chosen.is_dir():
        raise DatasetError(
            f"The dataset folder {chosen} (from {source}) does not exist. Point it at the folder "
            "holding subset0/ ... subset9/ and annotations.csv, or unset it to use the sample."
        )
    return chosen.resolve()


@dataclass(frozen=True, repr=False)
class DataInfo:
    """Description of a run's dataset, shown at the top of each notebook.

    Attributes:
        root: The dataset folder.
        synthetic: Whether it is the synthetic sample.
        n_scans: Number of `.mhd` scans found under `subset*/`.
        subsets: Subset numbers present.
    """

    root: Path
    synthetic: bool
    n_scans: int
    subsets: tuple[int, ...]

    @property
    def kind(self) -> str:
        """'synthetic sample' or 'real LUNA16'."""
        return "synthetic sample" if self.synthetic else "real LUNA16"

    def note(self) -> str:
        """Return a one-paragraph Markdown note naming the data this run used."""
        where = display_path(self.root)
        subsets = ", ".join(str(s) for s in self.subsets) or "none"
        if self.synthetic:
            return (
                f"**Data used in this run: the synthetic sample** (`{where}`, {self.n_scans} scans "
                f"in subsets {subsets}). The scans are generated phantoms in the exact LUNA16 "
                "layout, not patient data: numbers computed from them describe the sample, not "
                "LUNA16. Set `LUNA16_DIR` to run on the real data."
            )
        return (
            f"**Data used in this run: real LUNA16** (`{where}`, {self.n_scans} scans in subsets "
            f"{subsets})."
        )

    def _repr_markdown_(self) -> str:
        return self.note()

    def __repr__(self) -> str:
        # Shown as plain text in saved notebooks, so the path is never absolute.
        return (
            f"DataInfo(root={display_path(self.root)!r}, synthetic={self.synthetic}, "
            f"n_scans={self.n_scans}, subsets={self.subsets})"
        )


def describe_data(root: str | Path | None = None) -> DataInfo:
    """Describe the dataset a run uses (resolving it as `resolve_data_dir` does)."""
    root = resolve_data_dir(root)
    scans = list_scans(root)
    return DataInfo(
        root=root,
        synthetic=is_sample(root),
        n_scans=len(scans),
        subsets=tuple(sorted(int(s) for s in scans["subset"].unique())),
    )


def list_scans(root: str | Path) -> pd.DataFrame:
    """List the scans present on disk.

    Args:
        root: A dataset folder.

    Returns:
        One row per `subsetN/<seriesuid>.mhd`, sorted by subset then seriesuid, with columns
        `seriesuid` (str), `subset` (int) and `mhd_path` (Path).
    """
    root = Path(root)
    rows = []
    for subset_dir in sorted(root.glob("subset*")):
        suffix = subset_dir.name.removeprefix("subset")
        if not subset_dir.is_dir() or not suffix.isdigit():
            continue
        for mhd_path in sorted(subset_dir.glob("*.mhd")):
            rows.append({"seriesuid": mhd_path.stem, "subset": int(suffix), "mhd_path": mhd_path})
    frame = pd.DataFrame(rows, columns=["seriesuid", "subset", "mhd_path"])
    frame["subset"] = frame["subset"].astype(int)
    return frame.sort_values(["subset", "seriesuid"], ignore_index=True)


def scan_path(root: str | Path, seriesuid: str) -> Path:
    """Return the `.mhd` path of one scan.

    Raises:
        DatasetError: If no `subset*/<seriesuid>.mhd` exists under root.
    """
    matches = sorted(Path(root).glob(f"subset*/{seriesuid}.mhd"))
    if not matches:
        raise DatasetError(
            f"Scan {seriesuid} was not found under {Path(root)}/subset*/. Check the seriesuid, or "
            "download and extract the subset that holds it."
        )
    return matches[0]


def work_dir(root: str | Path, create: bool = True) -> Path:
    """Return the folder for caches, models and results derived from a dataset.

    `LUNA16_WORK_DIR` wins when set; otherwise `data/work/<dataset name>-<hash>/` inside the
    repository, so a read-only dataset folder is never written to and two datasets never share a cache.
    """
    if os.environ.get(ENV_WORK_DIR):
        folder = Path(os.environ[ENV_WORK_DIR])
    else:
        root = Path(root).resolve()
        digest = hashlib.sha1(str(root).encode()).hexdigest()[:8]
        folder = repo_root() / "data" / "work" / f"{root.name}-{digest}"
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def _first_existing(root: Path, candidates: list[str], what: str) -> Path:
    for relative in candidates:
        if (root / relative).is_file():
            return root / relative
    raise DatasetError(
        f"No {what} found in {root}: looked for {', '.join(candidates)}. Download and extract "
        "the LUNA16 file that holds it (python -m luna_utils.acquire), or check the folder."
    )


def _read_table(path: Path, columns: list[str], known_uids: set[str] | None) -> pd.DataFrame:
    """Read a CSV and check its columns, coordinates and seriesuids; the error names file and row."""
    try:
        frame = pd.read_csv(path, dtype={"seriesuid": str})
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path} is not a valid CSV file: {error}") from error

    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DatasetError(
            f"{path} lacks the column(s) {missing}; it has {list(frame.columns)}. "
            "Check that this is the right file."
        )

    coords = [c for c in COORD_COLUMNS if c in columns]
    numeric = frame[coords].apply(pd.to_numeric, errors="coerce")
    bad = ~np.isfinite(numeric.to_numpy(dtype=float)).all(axis=1)
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        raise DatasetError(
            f"{path}, row {index + 2} (line {index + 2} counting the header): coordinates "
            f"{frame.loc[index, coords].tolist()} are missing or not numbers. Fix or remove the row."
        )
    frame[coords] = numeric

    if known_uids is not None:
        unknown = ~frame["seriesuid"].isin(known_uids)
        if unknown.any():
            index = int(np.flatnonzero(unknown)[0])
            raise DatasetError(
                f"{path}, row {index + 2}: seriesuid {frame.loc[index, 'seriesuid']} is not in "
                f"the dataset ({int(unknown.sum())} row(s) like it). Use the tables that belong "
                "to this dataset."
            )
    return frame[columns + [c for c in frame.columns if c not in columns]]


def load_seriesuids(root: str | Path) -> list[str]:
    """Return the seriesuids the dataset defines, from `evaluationScript/annotations/seriesuids.csv`.

    Falls back to the scans present on disk when the file is absent.
    """
    root = Path(root)
    path = root / "evaluationScript" / "annotations" / "seriesuids.csv"
    if path.is_file():
        return pd.read_csv(path, header=None, dtype=str)[0].str.strip().tolist()
    return list_scans(root)["seriesuid"].tolist()


def load_annotations(root: str | Path, validate: bool = True) -> pd.DataFrame:
    """Load the nodule annotations (`annotations.csv`).

    Returns:
        Columns `seriesuid, coordX, coordY, coordZ, diameter_mm` (world LPS mm).

    Raises:
        DatasetError: On a missing file or column, a non-numeric coordinate, or an unknown seriesuid.
    """
    root = Path(root)
    path = _first_existing(
        root, ["annotations.csv", "evaluationScript/annotations/annotations.csv"], "annotations.csv"
    )
    known = set(load_seriesuids(root)) if validate else None
    return _read_table(path, ["seriesuid", *COORD_COLUMNS, "diameter_mm"], known)


def load_excluded(root: str | Path, validate: bool = True) -> pd.DataFrame:
    """Load the findings to ignore (`annotations_excluded.csv`); diameter -1 means "unknown".

    Returns:
        Columns `seriesuid, coordX, coordY, coordZ, diameter_mm`.
    """
    root = Path(root)
    path = _first_existing(
        root,
        ["evaluationScript/annotations/annotations_excluded.csv", "annotations_excluded.csv"],
        "annotations_excluded.csv",
    )
    known = set(load_seriesuids(root)) if validate else None
    return _read_table(path, ["seriesuid", *COORD_COLUMNS, "diameter_mm"], known)


def load_candidates(root: str | Path, version: int = 2, validate: bool = True) -> pd.DataFrame:
    """Load a candidate list: `candidates.csv` (version 1) or `candidates_V2.csv` (version 2).

    Returns:
        Columns `seriesuid, coordX, coordY, coordZ, class` (class 1 marks a nodule).
    """
    root = Path(root)
    if version == 1:
        names = ["candidates.csv"]
    elif version == 2:
        names = ["candidates_V2/candidates_V2.csv", "candidates_V2.csv"]
    else:
        raise DatasetError(f"Candidate list version must be 1 or 2; got {version!r}.")
    path = _first_existing(root, names, f"candidate list V{version}")
    known = set(load_seriesuids(root)) if validate else None
    frame = _read_table(path, ["seriesuid", *COORD_COLUMNS, "class"], known)
    frame["class"] = frame["class"].astype(int)
    return frame


def load_real_table(name: str) -> pd.DataFrame:
    """Load one of the real LUNA16 tables shipped in `data/real/`.

    Args:
        name: `annotations`, `annotations_excluded`, `seriesuids`, `luna16_subsets` or
            `luna16_scans_metadata`.
    """
    path = real_reference_dir() / f"{name}.csv"
    if not path.is_file():
        raise DatasetError(f"{path} is missing; restore it from the repository (git checkout data/real).")
    if name == "seriesuids":
        return pd.read_csv(path, header=None, names=["seriesuid"], dtype=str)
    return pd.read_csv(path, dtype={"seriesuid": str})
