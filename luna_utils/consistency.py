"""Scan geometry tables, and checks that findings lie inside their scan.

A geometry table has one row per scan with the columns

* `seriesuid` (str),
* `origin_xyz_mm` (tuple of 3 floats): world position of voxel (0, 0, 0), LPS mm, (x, y, z);
* `spacing_xyz_mm` (tuple of 3 floats): voxel size in mm, (x, y, z);
* `direction` (tuple of 9 floats): the direction matrix in SimpleITK's row-major order, whose
  columns are the image axes in world space;
* `shape_zyx` (tuple of 3 ints): array shape in NumPy order (slices, rows, columns);
* `flipped` (bool): whether a diagonal entry of the direction matrix is negative;
* `source` (str): `"header"` when read from a local `.mhd`, `"metadata"` when taken from the
  shipped table `data/real/luna16_scans_metadata.csv`.

It comes from the `.mhd` headers of downloaded scans, or, without the scans, from the shipped
metadata table, whose `flip_x, flip_y, flip_z` columns are the diagonal of the direction matrix
(every LUNA16 scan is axis-aligned, and 14 have diag(-1, -1, 1)).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from luna_utils import geometry
from luna_utils.annotations import coordinates_xyz_mm, require_columns, rows_by_scan
from luna_utils.dataset import list_scans, load_real_table, load_seriesuids
from luna_utils.errors import DatasetError
from luna_utils.mhd import read_header
from luna_utils.progress import progress

logger = logging.getLogger(__name__)

GEOMETRY_COLUMNS = [
    "seriesuid", "origin_xyz_mm", "spacing_xyz_mm", "direction", "shape_zyx", "flipped", "source",
]

METADATA_COLUMNS = [
    "seriesuid", "dim_x", "dim_y", "n_slices", "sp_x", "sp_y", "sp_z",
    "origin_x", "origin_y", "origin_z", "flip_x", "flip_y", "flip_z",
]

# Continuous voxel index columns added by `locate_findings`.
INDEX_COLUMNS = ["index_z", "index_y", "index_x"]

PROBLEM_OUTSIDE = "outside scan"
PROBLEM_NO_GEOMETRY = "scan geometry missing"


def geometry_from_headers(mhd_paths: list[str | Path] | pd.Series) -> pd.DataFrame:
    """Build a geometry table by reading the header of each local scan (not its voxels).

    Args:
        mhd_paths: `.mhd` files, for example `list_scans(root)["mhd_path"]`. The seriesuid is
            the file name without its suffix.

    Returns:
        A geometry table (see the module docstring) with `source` = "header".

    Raises:
        MhdError: If a header cannot be read.
    """
    rows = []
    paths = list(mhd_paths)
    for path in progress(paths, desc="Reading headers", total=len(paths), leave=False):
        header = read_header(path)
        rows.append(
            {
                "seriesuid": header.seriesuid,
                "origin_xyz_mm": tuple(header.origin_xyz_mm),
                "spacing_xyz_mm": tuple(header.spacing_xyz_mm),
                "direction": tuple(float(v) for v in header.direction.reshape(-1)),
                "shape_zyx": tuple(int(v) for v in header.shape_zyx),
                "flipped": bool(np.any(np.diag(header.direction) < 0)),
                "source": "header",
            }
        )
    return pd.DataFrame(rows, columns=GEOMETRY_COLUMNS)


def geometry_from_metadata(metadata: pd.DataFrame | None = None) -> pd.DataFrame:
    """Build a geometry table from a per-scan metadata table.

    Args:
        metadata: A table with the columns of `luna16_scans_metadata.csv` (`dim_x, dim_y,
            n_slices, sp_x, sp_y, sp_z, origin_x, origin_y, origin_z, flip_x, flip_y, flip_z`);
            None loads the shipped real table. `flip_*` are the diagonal entries of the direction
            matrix (+1 or -1).

    Returns:
        A geometry table (see the module docstring) with `source` = "metadata".

    Raises:
        DatasetError: If a column is missing, or a row is marked not axis-aligned (column
            `axis_aligned` False), since its direction is more than the stored diagonal.
    """
    if metadata is None:
        metadata = load_real_table("luna16_scans_metadata")
    require_columns(metadata, METADATA_COLUMNS, "scan metadata")

    if "axis_aligned" in metadata.columns:
        oblique = ~metadata["axis_aligned"].astype(str).str.lower().isin(["true", "1", "1.0"])
        if oblique.any():
            raise DatasetError(
                f"{int(oblique.sum())} scan(s) in the metadata table are not axis-aligned, for "
                f"example {metadata.loc[oblique, 'seriesuid'].iloc[0]}; the table stores only the "
                "diagonal of their direction matrix. Read their headers (geometry_from_headers)."
            )

    frame = metadata.reset_index(drop=True)
    origin = frame[["origin_x", "origin_y", "origin_z"]].to_numpy(dtype=np.float64)
    spacing = frame[["sp_x", "sp_y", "sp_z"]].to_numpy(dtype=np.float64)
    diagonal = frame[["flip_x", "flip_y", "flip_z"]].to_numpy(dtype=np.float64)
    shape_zyx = frame[["n_slices", "dim_y", "dim_x"]].to_numpy(dtype=np.int64)

    return pd.DataFrame(
        {
            "seriesuid": frame["seriesuid"].astype(str),
            "origin_xyz_mm": [tuple(row) for row in origin.tolist()],
            "spacing_xyz_mm": [tuple(row) for row in spacing.tolist()],
            "direction": [tuple(np.diag(row).reshape(-1).tolist()) for row in diagonal],
            "shape_zyx": [tuple(row) for row in shape_zyx.tolist()],
            "flipped": (diagonal < 0).any(axis=1),
            "source": "metadata",
        },
        columns=GEOMETRY_COLUMNS,
    )


def load_geometry(root: str | Path | None = None, fill_from_metadata: bool = True) -> pd.DataFrame:
    """Build the geometry table of a dataset from whatever is available.

    Scans on disk under `root/subset*/` are described by their headers. With
    `fill_from_metadata`, scans of the dataset that are not on disk but appear in the shipped
    metadata table (real LUNA16 scans of subsets not downloaded) are added from it.

    Args:
        root: A dataset folder, or None for no local scans (only the shipped metadata).
        fill_from_metadata: Add metadata rows for the dataset's scans that are not on disk.

    Returns:
        A geometry table sorted by seriesuid.
    """
    metadata = geometry_from_metadata()
    if root is None:
        return metadata.sort_values("seriesuid", ignore_index=True)

    local = geometry_from_headers(list_scans(root)["mhd_path"])
    parts = [local]
    if fill_from_metadata:
        not_on_disk = set(load_seriesuids(root)) - set(local["seriesuid"])
        parts.append(metadata[metadata["seriesuid"].isin(not_on_disk)])
    table = pd.concat(parts, ignore_index=True)
    logger.info(
        "Geometry of %d scan(s): %d from headers, %d from the shipped metadata.",
        len(table), len(local), len(table) - len(local),
    )
    return table.sort_values("seriesuid", ignore_index=True)


def locate_findings(findings: pd.DataFrame, geometry_table: pd.DataFrame) -> pd.DataFrame:
    """Convert findings' world centres to voxel indices of their scan and test if they are inside.

    Args:
        findings: Columns `seriesuid, coordX, coordY, coordZ` (world LPS mm); others are kept.
        geometry_table: A geometry table (see the module docstring) covering the findings' scans.

    Returns:
        A copy of `findings` with `index_z, index_y, index_x` (continuous voxel indices, NaN when
        the scan has no geometry row), `has_geometry` (bool) and `inside` (bool: the centre rounds
        to a stored voxel; False without geometry).

    Raises:
        DatasetError: If a table lacks a required column.
        GeometryError: If a coordinate is not a number.
    """
    require_columns(findings, ["seriesuid", "coordX", "coordY", "coordZ"], "findings")
    require_columns(geometry_table, GEOMETRY_COLUMNS[:5], "geometry")
    centers_xyz_mm = coordinates_xyz_mm(findings, "findings")

    index_zyx = np.full((len(findings), 3), np.nan)
    inside = np.zeros(len(findings), dtype=bool)
    has_geometry = np.zeros(len(findings), dtype=bool)

    geometry_by_uid = geometry_table.drop_duplicates("seriesuid").set_index("seriesuid")
    for uid, rows in rows_by_scan(findings["seriesuid"].astype(str)).items():
        if uid not in geometry_by_uid.index:
            continue
        scan = geometry_by_uid.loc[uid]
        index_zyx[rows] = geometry.world_to_voxel(
            centers_xyz_mm[rows], scan["origin_xyz_mm"], scan["spacing_xyz_mm"], scan["direction"]
        )
        inside[rows] = geometry.points_inside(index_zyx[rows], tuple(scan["shape_zyx"]))
        has_geometry[rows] = True

    located = findings.copy()
    located[INDEX_COLUMNS] = index_zyx
    located["has_geometry"] = has_geometry
    located["inside"] = inside
    return located


def findings_outside_scan(
    findings: pd.DataFrame,
    geometry_table: pd.DataFrame,
    what: str = "findings",
) -> pd.DataFrame:
    """Report findings whose centre lies outside their scan, or whose scan has no geometry.

    Never raises on such findings: it logs one warning with the counts and returns them.

    Args:
        findings: Columns `seriesuid, coordX, coordY, coordZ` (world LPS mm); others are kept.
        geometry_table: A geometry table (see the module docstring).
        what: How the warning names the table, for example "excluded findings".

    Returns:
        The offending rows of `locate_findings(findings, geometry_table)` (original index kept)
        with `shape_zyx` (tuple, None without geometry) and `problem` ("outside scan" or "scan
        geometry missing"). Empty when every finding is inside its scan.
    """
    located = locate_findings(findings, geometry_table)
    report = located[~located["inside"]].copy()

    shapes = geometry_table.drop_duplicates("seriesuid").set_index("seriesuid")["shape_zyx"]
    report["shape_zyx"] = [shapes.get(uid) for uid in report["seriesuid"].astype(str)]
    report["problem"] = np.where(report["has_geometry"], PROBLEM_OUTSIDE, PROBLEM_NO_GEOMETRY)

    if len(report):
        n_missing = int((~report["has_geometry"]).sum())
        problems = []
        if len(report) > n_missing:
            problems.append(f"{len(report) - n_missing} lie outside their scan")
        if n_missing:
            problems.append(f"{n_missing} belong to scans without geometry")
        logger.warning(
            "Of %d %s, %s (%d scan(s) involved); see the returned table.",
            len(findings), what, " and ".join(problems), report["seriesuid"].nunique(),
        )
    return report
