"""Generate a synthetic miniature of LUNA16 in the exact layout of the extracted Zenodo files.

The sample lets every notebook and test run without the 120 GB dataset. It holds::

    subset0/ ... subset9/<seriesuid>.mhd + .raw   CT phantoms, int16 HU, MET_SHORT little-endian
    annotations.csv                             nodules (seriesuid, coordX, coordY, coordZ, diameter_mm)
    candidates.csv, candidates_V2/candidates_V2.csv
    evaluationScript/annotations/annotations.csv, annotations_excluded.csv, seriesuids.csv
    seg-lungs-LUNA16/<seriesuid>.mhd + .zraw   lung masks: 3 right lung, 4 left lung, 5 airways
    sampleSubmission.csv                        every V1 candidate with a random probability
    synthetic/nodules.csv                       nodule type (solid, part-solid, ground-glass) and location
    synthetic/candidate_kinds.csv               what each candidate lies on (nodule, vessel, pleura, ...)
    SYNTHETIC_SAMPLE.txt                        marker, written last

Each scan borrows the spacing, world centre and direction of a real LUNA16 scan (from
`data/real/luna16_scans_metadata.csv`) on a smaller grid. Series UIDs lie under `SAMPLE_UID_ROOT`
(2.999 is the object-identifier arc reserved for examples), so no sample scan can pass for a real one.
The same arguments give byte-identical files.

Command line::

    python -m luna_utils.sample --out data/sample --scans 20 --seed 0
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from numpy.typing import NDArray

from luna_utils.dataset import SAMPLE_MARKER, is_sample, load_real_table
from luna_utils.errors import DatasetError
from luna_utils.phantom import Phantom, ScanGeometry, make_phantom
from luna_utils.progress import progress
from luna_utils.sample_tables import (
    COORD_COLUMNS,
    format_csv,
    make_candidates,
    quantize,
    write_text_atomic,
)

logger = logging.getLogger(__name__)

# Root of every sample series UID. 2.999 is the arc ITU-T X.660 reserves for examples.
SAMPLE_UID_ROOT = "2.999.16.1."

# Length of a LUNA16 series UID ("1.3.6.1.4.1.14519.5.2.1.6279.6001." plus 30 digits).
SERIESUID_LENGTH = 64

N_SUBSETS = 10
DEFAULT_N_SCANS = 20

# Grid limits: in-plane size in voxels, and voxels per scan (7 million int16 voxels = 14 MB).
MIN_IN_PLANE = 160
MAX_IN_PLANE = 224
TARGET_FOV_MM = 150.0
MAX_SCAN_VOXELS = 7_000_000
Z_EXTENT_RANGE_MM = (120.0, 180.0)

# Scan slots with a fixed kind of geometry, by scan index modulo 10: index 1, 11, ... borrow a
# flipped scan (direction diag(-1, -1, 1)) and index 3, 13, ... a thin-slice scan (under 1 mm).
FLIPPED_SLOT = 1
THIN_SLICE_SLOT = 3

# Keys of a real LUNA16 header, in the order the real files write them.
MHD_KEYS = (
    "ObjectType",
    "NDims",
    "BinaryData",
    "BinaryDataByteOrderMSB",
    "CompressedData",
    "TransformMatrix",
    "Offset",
    "CenterOfRotation",
    "AnatomicalOrientation",
    "ElementSpacing",
    "DimSize",
    "ElementType",
    "ElementDataFile",
)

# Folders and files of a sample. Regenerating removes these and nothing else.
SAMPLE_ENTRIES = (
    *(f"subset{index}" for index in range(N_SUBSETS)),
    "seg-lungs-LUNA16",
    "candidates_V2",
    "evaluationScript",
    "synthetic",
    "annotations.csv",
    "candidates.csv",
    "sampleSubmission.csv",
    SAMPLE_MARKER,
)


@dataclass(frozen=True)
class ScanPlan:
    """Plan of one sample scan, decided before any voxel is drawn.

    Attributes:
        index: Position of the scan in the sample, 0-based.
        seriesuid: Its series UID, under `SAMPLE_UID_ROOT`.
        subset: The subset folder it goes to (index modulo 10).
        geometry: Its grid and world placement.
        source_seriesuid: The real LUNA16 scan whose spacing, centre and direction it borrows.
    """

    index: int
    seriesuid: str
    subset: int
    geometry: ScanGeometry
    source_seriesuid: str

    @property
    def is_flipped(self) -> bool:
        """Whether the direction is diag(-1, -1, 1)."""
        return bool(np.any(np.diag(self.geometry.direction_matrix) < 0))


def make_seriesuid(seed: int, index: int) -> str:
    """Return the series UID of scan `index`: 64 characters of dotted digits under `SAMPLE_UID_ROOT`."""
    rng = np.random.default_rng([seed, index, 7])
    digits_left = SERIESUID_LENGTH - len(SAMPLE_UID_ROOT) - 1
    first_length = digits_left - 30
    parts = []
    for length in (first_length, 30):
        digits = [str(rng.integers(1, 10))] + [str(d) for d in rng.integers(0, 10, size=length - 1)]
        parts.append("".join(digits))
    return SAMPLE_UID_ROOT + ".".join(parts)


def geometry_from_real_row(row: pd.Series, rng: np.random.Generator) -> ScanGeometry:
    """Return a smaller grid with a real scan's spacing, world centre and direction.

    The in-plane size gives about `TARGET_FOV_MM` of field of view within
    [`MIN_IN_PLANE`, `MAX_IN_PLANE`] voxels, and the z extent is drawn in `Z_EXTENT_RANGE_MM`. Grids
    over `MAX_SCAN_VOXELS` are made narrower, then shorter. The origin is placed so that the
    grid's centre is the real scan's centre under the real direction.

    Args:
        row: A row of `luna16_scans_metadata.csv`.
        rng: Random generator for the z extent.
    """
    spacing = np.array([row["sp_x"], row["sp_y"], row["sp_z"]], dtype=np.float64)
    signs = np.array([row["flip_x"], row["flip_y"], row["flip_z"]], dtype=np.float64)
    signs = np.where(signs < 0, -1.0, 1.0)
    real_size = np.array([row["dim_x"], row["dim_y"], row["n_slices"]], dtype=np.float64)
    real_origin = np.array([row["origin_x"], row["origin_y"], row["origin_z"]], dtype=np.float64)

    in_plane = int(np.clip(round(TARGET_FOV_MM / max(spacing[0], spacing[1])), MIN_IN_PLANE, MAX_IN_PLANE))
    n_slices = int(round(rng.uniform(*Z_EXTENT_RANGE_MM) / spacing[2]))
    if in_plane * in_plane * n_slices > MAX_SCAN_VOXELS:
        in_plane = max(MIN_IN_PLANE, int(np.sqrt(MAX_SCAN_VOXELS / n_slices)))
    n_slices = min(n_slices, MAX_SCAN_VOXELS // (in_plane * in_plane))
    size = np.array([in_plane, in_plane, n_slices], dtype=np.float64)

    # Same centre, same direction: centre = origin + D (spacing * (size - 1) / 2).
    center = real_origin + signs * spacing * (real_size - 1.0) / 2.0
    origin = center - signs * spacing * (size - 1.0) / 2.0
    origin = np.round(origin, 6)

    direction = np.diag(signs).reshape(-1)
    return ScanGeometry(
        shape_zyx=(n_slices, in_plane, in_plane),
        spacing_xyz_mm=tuple(float(value) for value in spacing),  # type: ignore[arg-type]
        origin_xyz_mm=tuple(float(value) + 0.0 for value in origin),  # type: ignore[arg-type]
        direction=tuple(float(value) + 0.0 for value in direction),
    )


def plan_sample(n_scans: int = DEFAULT_N_SCANS, seed: int = 0) -> list[ScanPlan]:
    """Choose the seriesuid, subset and geometry of every scan, without drawing any voxel.

    Real rows are drawn without replacement. Indices 1, 11, ... borrow a flipped scan, indices
    3, 13, ... a scan with slices under 1 mm. The other indices borrow scans with slices of 1 mm
    or more, which keep the sample small. Scans go to subsets round-robin.

    Raises:
        DatasetError: If n_scans is not a positive integer.
    """
    if int(n_scans) != n_scans or n_scans < 1:
        raise DatasetError(f"The number of sample scans must be a positive integer, got {n_scans!r}.")
    table = load_real_table("luna16_scans_metadata").sort_values("seriesuid", ignore_index=True)
    flipped = (table["flip_x"] < 0) | (table["flip_y"] < 0)
    pools = {
        "flipped": table[flipped],
        "thin": table[~flipped & (table["sp_z"] < 1.0)],
        "regular": table[~flipped & (table["sp_z"] >= 1.0)],
    }
    rng = np.random.default_rng([seed, 16])
    orders = {name: list(rng.permutation(len(pool))) for name, pool in pools.items()}

    plans = []
    for index in range(int(n_scans)):
        slot = index % 10
        if slot == FLIPPED_SLOT:
            name = "flipped"
        elif slot == THIN_SLICE_SLOT:
            name = "thin"
        else:
            name = "regular"
        if not orders[name]:
            name = "regular"
        row = pools[name].iloc[orders[name].pop(0)]
        geometry_rng = np.random.default_rng([seed, index, 3])
        plans.append(
            ScanPlan(
                index=index,
                seriesuid=make_seriesuid(seed, index),
                subset=index % N_SUBSETS,
                geometry=geometry_from_real_row(row, geometry_rng),
                source_seriesuid=str(row["seriesuid"]),
            )
        )
    return plans


def _format_number(value: float) -> str:
    """Format a float as the shortest text that reads back exactly ("-195", "0.703125")."""
    text = repr(float(value) + 0.0)
    return text[:-2] if text.endswith(".0") else text


def anatomical_orientation(direction: NDArray[np.float64]) -> str:
    """Return the MetaImage AnatomicalOrientation code of an axis-aligned direction, as ITK writes it.

    ITK names, for each image axis, the side the axis starts from: "RAI" for the identity and
    "LPI" for diag(-1, -1, 1). Readers take the geometry from TransformMatrix, not from this code.
    """
    letters = (("R", "L"), ("A", "P"), ("I", "S"))
    code = ""
    for axis in range(3):
        column = direction[:, axis]
        world_axis = int(np.argmax(np.abs(column)))
        code += letters[world_axis][0 if column[world_axis] > 0 else 1]
    return code


def format_mhd_header(scan_geometry: ScanGeometry, data_file: str) -> str:
    """Return the text of a MET_SHORT `.mhd` header with the keys of a real LUNA16 header, in order."""
    nz, ny, nx = scan_geometry.shape_zyx
    matrix = scan_geometry.direction_matrix

    def join(values) -> str:
        return " ".join(_format_number(value) for value in values)

    values = {
        "ObjectType": "Image",
        "NDims": "3",
        "BinaryData": "True",
        "BinaryDataByteOrderMSB": "False",
        "CompressedData": "False",
        # MetaImage writes the direction matrix row by row.
        "TransformMatrix": join(matrix.reshape(-1)),
        "Offset": join(scan_geometry.origin_xyz_mm),
        "CenterOfRotation": "0 0 0",
        "AnatomicalOrientation": anatomical_orientation(matrix),
        "ElementSpacing": join(scan_geometry.spacing_xyz_mm),
        "DimSize": f"{nx} {ny} {nz}",
        "ElementType": "MET_SHORT",
        "ElementDataFile": data_file,
    }
    return "".join(f"{key} = {values[key]}\n" for key in MHD_KEYS)


def write_scan(mhd_path: Path, hu_zyx: NDArray[np.int16], scan_geometry: ScanGeometry) -> None:
    """Write a scan as `.mhd` + `.raw`, each through a temporary file, the header last."""
    mhd_path = Path(mhd_path)
    raw_path = mhd_path.with_suffix(".raw")
    mhd_path.parent.mkdir(parents=True, exist_ok=True)
    if tuple(hu_zyx.shape) != tuple(scan_geometry.shape_zyx):
        raise DatasetError(
            f"Cannot write {mhd_path.name}: array shape {hu_zyx.shape} differs from the geometry's "
            f"{scan_geometry.shape_zyx}."
        )

    handle, temporary = tempfile.mkstemp(prefix=f".{raw_path.name}.", suffix=".tmp", dir=raw_path.parent)
    os.close(handle)
    try:
        np.ascontiguousarray(hu_zyx).astype("<i2").tofile(temporary)
        os.replace(temporary, raw_path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    write_text_atomic(mhd_path, format_mhd_header(scan_geometry, raw_path.name))


def write_lung_mask(mhd_path: Path, labels_zyx: NDArray[np.uint8], scan_geometry: ScanGeometry) -> None:
    """Write a lung mask as `.mhd` + zlib-compressed `.zraw` with SimpleITK, atomically.

    SimpleITK names the data file after the header, so both are written in a temporary folder
    beside the target and then renamed into place, data file first.
    """
    mhd_path = Path(mhd_path)
    mhd_path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(np.ascontiguousarray(labels_zyx, dtype=np.uint8))
    image.SetSpacing(scan_geometry.spacing_xyz_mm)
    image.SetOrigin(scan_geometry.origin_xyz_mm)
    image.SetDirection(tuple(float(v) for v in scan_geometry.direction_matrix.reshape(-1)))

    folder = Path(tempfile.mkdtemp(prefix=f".{mhd_path.stem}.", dir=mhd_path.parent))
    try:
        sitk.WriteImage(image, str(folder / mhd_path.name), useCompression=True)
        os.replace(folder / mhd_path.with_suffix(".zraw").name, mhd_path.with_suffix(".zraw"))
        os.replace(folder / mhd_path.name, mhd_path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _prepare_output(out_dir: Path) -> None:
    """Make out_dir ready for a new sample: absent, empty, or containing only an earlier sample.

    Raises:
        DatasetError: If out_dir contains other data, which this function never deletes.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise DatasetError(f"{out_dir} exists and is not a folder. Pass a folder path with --out.")
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = sorted(path.name for path in out_dir.iterdir())
    if not entries:
        return

    # An interrupted run leaves scan files (and temporary files, named ".<file>.<random>.tmp")
    # whose names all start with the sample UID root.
    scan_files = [path.name.lstrip(".") for path in out_dir.glob("subset*/*")]
    scan_files += [path.name.lstrip(".") for path in out_dir.glob("seg-lungs-LUNA16/*")]
    earlier = is_sample(out_dir) or (
        bool(scan_files) and all(name.startswith(SAMPLE_UID_ROOT) for name in scan_files)
    )
    foreign = [name for name in entries if name not in SAMPLE_ENTRIES]
    if not earlier or foreign:
        raise DatasetError(
            f"{out_dir} is not empty and contains data other than a synthetic sample (found "
            f"{', '.join((foreign or entries)[:5])}). Choose an empty or new folder, because the "
            "generator never deletes other data."
        )

    # Remove the marker first, so an interrupted regeneration is never taken as complete.
    (out_dir / SAMPLE_MARKER).unlink(missing_ok=True)
    for name in entries:
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def _marker_text(n_scans: int, seed: int, plans: list[ScanPlan]) -> str:
    flipped = sum(plan.is_flipped for plan in plans)
    return (
        "SYNTHETIC SAMPLE - NOT PATIENT DATA\n"
        "\n"
        "Every scan, mask and table in this folder was generated by luna_utils.sample from\n"
        "mathematical phantoms. No image comes from a patient or from LUNA16. Only the layout of the\n"
        "files, and the spacing, world centre and direction of each scan, follow the real LUNA16.\n"
        f"Series UIDs start with {SAMPLE_UID_ROOT} (the object-identifier arc for examples).\n"
        "\n"
        f"Arguments: n_scans={n_scans} seed={seed}\n"
        f"Command: python -m luna_utils.sample --out DIR --scans {n_scans} --seed {seed}\n"
        f"Scans: {len(plans)}, of which {flipped} with direction diag(-1, -1, 1).\n"
        "\n"
        "Ground truth beyond LUNA16's own files: synthetic/nodules.csv (nodule type and location)\n"
        "and synthetic/candidate_kinds.csv (what each candidate lies on).\n"
        "This file is written last: a sample folder without it is incomplete.\n"
    )


def _scan_tables(plan: ScanPlan, phantom: Phantom, rng: np.random.Generator) -> dict[str, pd.DataFrame]:
    """Return one scan's rows of every table, with quantized coordinates and its seriesuid."""
    nodules = phantom.nodules.copy()
    excluded = phantom.excluded.copy()
    for frame in (nodules, excluded):
        for column in [*COORD_COLUMNS, "diameter_mm"]:
            frame[column] = quantize(frame[column].to_numpy(dtype=np.float64))
        frame.insert(0, "seriesuid", plan.seriesuid)

    quantized = dataclasses.replace(phantom, nodules=nodules)
    candidates = make_candidates(quantized, rng)
    candidates.insert(0, "seriesuid", plan.seriesuid)
    return {"nodules": nodules, "excluded": excluded, "candidates": candidates}


def _sorted(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    return frame.sort_values(columns, kind="mergesort", ignore_index=True)


def _write_tables(out_dir: Path, tables: dict[str, list[pd.DataFrame]], plans: list[ScanPlan], seed: int) -> None:
    """Write every CSV file of the sample."""
    annotation_columns = ["seriesuid", *COORD_COLUMNS, "diameter_mm"]
    nodules = _sorted(pd.concat(tables["nodules"], ignore_index=True), ["seriesuid", *COORD_COLUMNS])
    excluded = _sorted(pd.concat(tables["excluded"], ignore_index=True), ["seriesuid", *COORD_COLUMNS])
    candidates = _sorted(
        pd.concat(tables["candidates"], ignore_index=True),
        ["version", "seriesuid", *COORD_COLUMNS, "kind"],
    )

    # LUNA16's annotation files and seriesuids.csv use CRLF line endings.
    annotations_text = format_csv(nodules[annotation_columns], line_ending="\r\n")
    write_text_atomic(out_dir / "annotations.csv", annotations_text)
    evaluation = out_dir / "evaluationScript" / "annotations"
    write_text_atomic(evaluation / "annotations.csv", annotations_text)
    write_text_atomic(evaluation / "annotations_excluded.csv", format_csv(excluded[annotation_columns], line_ending="\r\n"))
    write_text_atomic(evaluation / "seriesuids.csv", "".join(f"{plan.seriesuid}\r\n" for plan in plans))

    candidate_columns = ["seriesuid", *COORD_COLUMNS, "class"]
    version_1 = candidates[candidates["version"] == 1].reset_index(drop=True)
    version_2 = candidates[candidates["version"] == 2].reset_index(drop=True)
    write_text_atomic(out_dir / "candidates.csv", format_csv(version_1[candidate_columns]))
    write_text_atomic(out_dir / "candidates_V2" / "candidates_V2.csv", format_csv(version_2[candidate_columns]))

    submission = version_1[["seriesuid", *COORD_COLUMNS]].copy()
    submission["probability"] = quantize(np.random.default_rng([seed, 99]).random(len(submission)))
    write_text_atomic(out_dir / "sampleSubmission.csv", format_csv(submission))

    synthetic = out_dir / "synthetic"
    write_text_atomic(synthetic / "nodules.csv", format_csv(nodules))
    kinds = candidates[["seriesuid", *COORD_COLUMNS, "class", "kind", "version"]]
    write_text_atomic(synthetic / "candidate_kinds.csv", format_csv(kinds))


def generate_sample(
    out_dir: str | Path,
    n_scans: int = DEFAULT_N_SCANS,
    seed: int = 0,
    on_scan: Callable[[ScanPlan, Phantom], None] | None = None,
) -> Path:
    """Generate the synthetic LUNA16 sample.

    Args:
        out_dir: Folder to write. It must be absent, empty, or contain an earlier sample, which
            is replaced.
        n_scans: Number of scans, spread over subset0..subset9 round-robin.
        seed: Seed of every random choice. The same arguments give byte-identical files.
        on_scan: Called with each scan's plan and phantom after the scan is written, for
            callers that need the label maps, which are not saved.

    Returns:
        The sample folder.

    Raises:
        DatasetError: If out_dir contains other data or n_scans is not a positive integer.
    """
    out_dir = Path(out_dir)
    plans = plan_sample(n_scans, seed)
    _prepare_output(out_dir)
    logger.info("Generating %d synthetic scans (seed %d) in %s", len(plans), seed, out_dir)

    tables: dict[str, list[pd.DataFrame]] = {"nodules": [], "excluded": [], "candidates": []}
    for plan in progress(plans, desc="Synthetic scans", total=len(plans)):
        rng = np.random.default_rng([seed, plan.index])
        phantom = make_phantom(plan.geometry, rng)
        write_scan(out_dir / f"subset{plan.subset}" / f"{plan.seriesuid}.mhd", phantom.hu_zyx, plan.geometry)
        write_lung_mask(out_dir / "seg-lungs-LUNA16" / f"{plan.seriesuid}.mhd", phantom.lung_labels_zyx, plan.geometry)
        for name, frame in _scan_tables(plan, phantom, rng).items():
            tables[name].append(frame)
        if on_scan is not None:
            on_scan(plan, phantom)
        logger.debug("Scan %d: %s, shape %s, %d nodules", plan.index, plan.seriesuid, plan.geometry.shape_zyx, len(phantom.nodules))

    _write_tables(out_dir, tables, plans, seed)
    write_text_atomic(out_dir / SAMPLE_MARKER, _marker_text(int(n_scans), seed, plans))
    logger.info("Synthetic sample complete: %d scans in %s", len(plans), out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: generate a sample and print where it went."""
    import argparse
    import time

    parser = argparse.ArgumentParser(
        prog="python -m luna_utils.sample",
        description="Generate a synthetic miniature LUNA16 (phantom CT scans in the real file layout).",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder (absent, empty, or an earlier sample)")
    parser.add_argument("--scans", type=int, default=DEFAULT_N_SCANS, help="number of scans (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument(
        "--mirror",
        type=Path,
        help="also pack the sample as the Zenodo archives plus manifest.csv in this folder",
    )
    arguments = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    try:
        generate_sample(arguments.out, n_scans=arguments.scans, seed=arguments.seed)
        if arguments.mirror is not None:
            from luna_utils.acquire.mirror import write_mirror

            manifest = write_mirror(arguments.out, arguments.mirror)
            print(f"Packed the sample as archives; manifest: {manifest}")
    except DatasetError as error:
        parser.exit(2, f"error: {error}\n")
    print(f"Wrote {arguments.scans} synthetic scans to {arguments.out} in {time.perf_counter() - started:.1f} s.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
