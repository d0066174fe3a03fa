"""Dataset folder contents: a file inventory, `.mhd`/data-file integrity, and header geometry.

Everything here reads file sizes and MetaImage headers only, never voxels, so it runs in seconds
even on the full 120 GB of LUNA16. The geometry table has the columns of the real per-scan table
shipped in `data/real/luna16_scans_metadata.csv`, so the local dataset and the 888 real scans can
be compared column by column. Sizes, spacings and origins are in (x, y, z) order as the headers
write them: `dim_x, dim_y, n_slices`, `sp_x, sp_y, sp_z` (mm) and `origin_x, origin_y, origin_z`
(LPS mm).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from luna_utils.errors import MhdError
from luna_utils.mhd import read_header
from luna_utils.progress import progress

logger = logging.getLogger(__name__)

# Suffixes of MetaImage data files that a `.mhd` header can name.
DATA_SUFFIXES = (".raw", ".zraw")

GEOMETRY_COLUMNS = [
    "seriesuid", "subset", "dim_x", "dim_y", "n_slices", "sp_x", "sp_y", "sp_z",
    "origin_x", "origin_y", "origin_z", "flip_x", "flip_y", "flip_z", "axis_aligned",
    "element_type", "raw_name", "raw_bytes", "expected_raw_bytes",
]

# Loops shorter than this many seconds show no progress bar.
BAR_DELAY_S = 2.0

PAIR_COLUMNS = ["folder", "seriesuid", "header", "data_file", "compressed", "expected_bytes", "actual_bytes", "status"]


def _visible_files(root: Path) -> list[Path]:
    """Return every file under root, skipping hidden files and folders (such as `.luna_acquire/`)."""
    return sorted(
        path
        for path in root.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts)
    )


def file_inventory(root: str | Path) -> pd.DataFrame:
    """List every file of a dataset folder.

    Args:
        root: A dataset folder.

    Returns:
        One row per file, sorted by path, with columns `path` (relative, with `/`), `folder`
        (first folder of the path, or "." for files at the root), `extension` (lower-case suffix
        such as ".raw", or "" when none) and `size_bytes`.
    """
    root = Path(root)
    rows = []
    for path in _visible_files(root):
        relative = path.relative_to(root)
        rows.append(
            {
                "path": relative.as_posix(),
                "folder": relative.parts[0] if len(relative.parts) > 1 else ".",
                "extension": path.suffix.lower(),
                "size_bytes": path.stat().st_size,
            }
        )
    return pd.DataFrame(rows, columns=["path", "folder", "extension", "size_bytes"])


def inventory_summary(inventory: pd.DataFrame) -> pd.DataFrame:
    """Count files and bytes per folder and extension.

    Returns:
        Columns `folder`, `extension`, `files` and `size_bytes`, sorted by folder then extension.
    """
    summary = inventory.groupby(["folder", "extension"], as_index=False).agg(
        files=("path", "size"), size_bytes=("size_bytes", "sum")
    )
    return summary.sort_values(["folder", "extension"], ignore_index=True)


def check_pairs(root: str | Path) -> pd.DataFrame:
    """Check every `.mhd` header against its data file, and find data files without a header.

    A `.raw` data file is complete when its size equals DimSize x bytes per voxel. A compressed
    `.zraw` (the lung masks) only has to exist, since its size depends on the compression.

    Args:
        root: A dataset folder.

    Returns:
        One row per header and per orphan data file, with columns `PAIR_COLUMNS`. `status` is
        "ok", "data file missing", "truncated", "larger than expected", "unreadable header" or
        "data file without header"; byte counts are NA where they do not apply.
    """
    root = Path(root)
    files = _visible_files(root)
    headers = [path for path in files if path.suffix.lower() == ".mhd"]
    referenced: set[Path] = set()
    rows = []

    for header_path in progress(headers, desc="headers", total=len(headers), leave=False, delay=BAR_DELAY_S):
        row = {
            "folder": header_path.parent.relative_to(root).as_posix(),
            "seriesuid": header_path.stem,
            "header": header_path.name,
            "data_file": None,
            "compressed": None,
            "expected_bytes": None,
            "actual_bytes": None,
        }
        try:
            header = read_header(header_path)
        except MhdError as error:
            logger.warning("%s", error)
            rows.append({**row, "status": "unreadable header"})
            continue

        referenced.add(header.data_file)
        actual = header.data_file.stat().st_size if header.data_file.is_file() else None
        row.update(
            data_file=header.data_file.name,
            compressed=header.compressed,
            expected_bytes=None if header.compressed else header.expected_data_bytes,
            actual_bytes=actual,
        )
        rows.append({**row, "status": _pair_status(actual, row["expected_bytes"])})

    for path in files:
        if path.suffix.lower() in DATA_SUFFIXES and path not in referenced:
            rows.append(
                {
                    "folder": path.parent.relative_to(root).as_posix(),
                    "seriesuid": path.stem,
                    "header": None,
                    "data_file": path.name,
                    "compressed": path.suffix.lower() == ".zraw",
                    "expected_bytes": None,
                    "actual_bytes": path.stat().st_size,
                    "status": "data file without header",
                }
            )

    table = pd.DataFrame(rows, columns=PAIR_COLUMNS)
    return table.astype({"expected_bytes": "Int64", "actual_bytes": "Int64"})


def _pair_status(actual: int | None, expected: int | None) -> str:
    if actual is None:
        return "data file missing"
    if expected is None or actual == expected:
        return "ok"
    return "truncated" if actual < expected else "larger than expected"


def _subset_of(path: Path, root: Path) -> int | None:
    """Return N for a file under `subsetN/`, else None."""
    folder = path.parent.relative_to(root).parts
    if folder and folder[0].startswith("subset") and folder[0].removeprefix("subset").isdigit():
        return int(folder[0].removeprefix("subset"))
    return None


def header_geometry_table(root: str | Path) -> pd.DataFrame:
    """Build the per-scan geometry table of `subset*/` from the headers alone (no voxels read).

    Args:
        root: A dataset folder.

    Returns:
        One row per readable `subsetN/<seriesuid>.mhd`, sorted by subset then seriesuid, with
        columns `GEOMETRY_COLUMNS`, the columns of the shipped real table. Sizes are in voxels,
        spacing in mm and origin in LPS mm, all in (x, y, z) order. `flip_*` is the sign (+1 or
        -1) of the direction matrix's diagonal entry for each axis, and +1 when that entry is 0.
        `axis_aligned` is whether the direction matrix is diagonal with entries +-1. `raw_bytes`
        is the data file's size (NA when it is missing) and `expected_raw_bytes` the size that
        DimSize requires.
    """
    root = Path(root)
    headers = [path for path in sorted(root.glob("subset*/*.mhd")) if _subset_of(path, root) is not None]
    rows = []
    for header_path in progress(headers, desc="headers", total=len(headers), leave=False, delay=BAR_DELAY_S):
        try:
            header = read_header(header_path)
        except MhdError as error:
            logger.warning("Skipped from the geometry table: %s", error)
            continue

        diagonal = np.diag(header.direction)
        rows.append(
            {
                "seriesuid": header.seriesuid,
                "subset": _subset_of(header_path, root),
                "dim_x": header.size_xyz[0],
                "dim_y": header.size_xyz[1],
                "n_slices": header.size_xyz[2],
                "sp_x": header.spacing_xyz_mm[0],
                "sp_y": header.spacing_xyz_mm[1],
                "sp_z": header.spacing_xyz_mm[2],
                "origin_x": header.origin_xyz_mm[0],
                "origin_y": header.origin_xyz_mm[1],
                "origin_z": header.origin_xyz_mm[2],
                "flip_x": float(np.sign(diagonal[0]) or 1.0),
                "flip_y": float(np.sign(diagonal[1]) or 1.0),
                "flip_z": float(np.sign(diagonal[2]) or 1.0),
                "axis_aligned": bool(np.allclose(np.abs(header.direction), np.eye(3), atol=1e-6)),
                "element_type": header.element_type,
                "raw_name": header.data_file.name,
                "raw_bytes": header.data_file.stat().st_size if header.data_file.is_file() else None,
                "expected_raw_bytes": header.expected_data_bytes,
            }
        )
    table = pd.DataFrame(rows, columns=GEOMETRY_COLUMNS).astype({"raw_bytes": "Int64"})
    return table.sort_values(["subset", "seriesuid"], ignore_index=True)


def flipped_scans(geometry: pd.DataFrame) -> pd.DataFrame:
    """Return the scans whose direction matrix flips an axis (a negative `flip_*`)."""
    flipped = (geometry[["flip_x", "flip_y", "flip_z"]] < 0).any(axis=1)
    return geometry.loc[flipped, ["seriesuid", "subset", "flip_x", "flip_y", "flip_z"]].reset_index(drop=True)


def geometry_summary(geometry: pd.DataFrame) -> pd.Series:
    """Summarize a geometry table (local or real) in a few numbers.

    Returns:
        Scans, in-plane size in voxels (most common), slices (min, median, max), slice spacing
        and in-plane spacing in mm (min, median, max), flipped and oblique scan counts, and the
        total data size in GB.
    """
    def spread(values: pd.Series, digits: int) -> str:
        return f"{values.min():.{digits}f} / {values.median():.{digits}f} / {values.max():.{digits}f}"

    in_plane = (geometry["dim_x"].astype(str) + " x " + geometry["dim_y"].astype(str)).mode()
    return pd.Series(
        {
            "scans": len(geometry),
            "in-plane size (voxels, most common)": in_plane.iloc[0] if len(in_plane) else "",
            "slices (min / median / max)": spread(geometry["n_slices"], 0),
            "slice spacing sp_z, mm (min / median / max)": spread(geometry["sp_z"], 2),
            "in-plane spacing sp_x, mm (min / median / max)": spread(geometry["sp_x"], 3),
            "flipped scans": len(flipped_scans(geometry)),
            "oblique scans (not axis-aligned)": int((~geometry["axis_aligned"].astype(bool)).sum()),
            "data size, GB": round(float(geometry["expected_raw_bytes"].sum()) / 1e9, 3),
        }
    )


def compare_geometry(local: pd.DataFrame, real: pd.DataFrame, local_label: str = "local dataset") -> pd.DataFrame:
    """Return the summaries of two geometry tables side by side (real LUNA16 first)."""
    return pd.DataFrame({"real LUNA16": geometry_summary(real), local_label: geometry_summary(local)})


def tree_checksums(root: str | Path) -> pd.DataFrame:
    """Return the size and MD5 of every visible file under root.

    Returns:
        Columns `path` (relative, with `/`), `size_bytes` and `md5`, sorted by path.
    """
    root = Path(root)
    rows = []
    for path in progress(_visible_files(root), desc="md5", leave=False, delay=BAR_DELAY_S):
        digest = hashlib.md5()
        with open(path, "rb") as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
        rows.append({"path": path.relative_to(root).as_posix(), "size_bytes": path.stat().st_size, "md5": digest.hexdigest()})
    return pd.DataFrame(rows, columns=["path", "size_bytes", "md5"])


def compare_trees(reference: str | Path, other: str | Path) -> pd.DataFrame:
    """Compare two folders file by file, by MD5.

    Args:
        reference: The folder that other should reproduce.
        other: The folder to check.

    Returns:
        One row per path found in either folder, sorted by path, with columns `path` and
        `status`: "same", "different", "missing" (only in reference) or "extra" (only in other).
    """
    merged = tree_checksums(reference).merge(
        tree_checksums(other), on="path", how="outer", suffixes=("_reference", "_other"), indicator=True
    )
    status = np.select(
        [
            merged["_merge"] == "left_only",
            merged["_merge"] == "right_only",
            merged["md5_reference"] == merged["md5_other"],
        ],
        ["missing", "extra", "same"],
        default="different",
    )
    return pd.DataFrame({"path": merged["path"], "status": status}).sort_values("path", ignore_index=True)
