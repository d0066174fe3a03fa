"""A cache of preprocessed scans: resampled, cropped to the lungs, stored as memory-mappable `.npy`.

Each scan becomes three files in the cache folder:

    <seriesuid>.npy         int16 HU, (z, y, x), on the resampled grid, cropped to the lungs
    <seriesuid>_lungs.npy   uint8 lung mask (1 = lung) on the same voxels
    <seriesuid>.json        sidecar: the geometry and the parameters used; written last

The sidecar contains the world geometry of the resampled full grid (origin, spacing, direction), the
crop offset (the index of the cached array's voxel (0, 0, 0) in that grid), the original scan's
geometry and the preprocessing parameters. An entry is complete only when its sidecar exists, has
the requested parameters and names data files of the recorded sizes. Every file is written to a
temporary name in the same folder and then renamed, and a rebuild deletes the old sidecar first,
so a build interrupted at any point leaves no entry that reads as complete.

`build_cache` preprocesses a whole dataset with Dask, one scan per task and one task per worker
process, skips complete entries, and can be rerun after an interruption to finish the rest.
"""

from __future__ import annotations

import json
import logging
import math
import os
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk
from numpy.typing import ArrayLike, NDArray

from luna_utils import geometry, lungs
from luna_utils.dataset import display_path, list_scans, work_dir
from luna_utils.errors import DatasetError, LunaError
from luna_utils.mhd import read_image
from luna_utils.progress import progress
from luna_utils.resample import ImageGrid, as_spacing, output_grid, resample_to_grid

logger = logging.getLogger(__name__)

# Version of the file layout and sidecar schema; entries of another version are rebuilt.
CACHE_FORMAT = 1

# Margin, in mm, kept around the lung mask's bounding box when cropping. It exceeds half of a
# 32 mm patch, so a patch centred on a candidate at the lung surface contains real voxels only.
CROP_MARGIN_MM = 20.0

# CT value of voxels outside the scan's field of view, in HU (air).
AIR_HU = -1000

# Memory one worker needs to preprocess the largest LUNA16 scan (512 x 512 x 764 voxels). The peak
# measured on a synthetic scan of that size is about 0.8 GB (benchmarks/bench_preprocess.py); 3 GB
# leaves room for real scans' content and for the Dask worker itself.
WORKER_MEMORY_BYTES = 3 * 1024**3

# Schedulers accepted as strings that run in the calling process, one scan after another.
IN_PROCESS_SCHEDULERS = ("sync", "synchronous")

VOLUME_SUFFIX = ".npy"
MASK_SUFFIX = "_lungs.npy"
SIDECAR_SUFFIX = ".json"


@dataclass(frozen=True)
class PreprocessParams:
    """Parameters that decide the content of a cache entry; changing one invalidates the entry.

    Attributes:
        spacing_xyz_mm: Voxel size of the cached grid (x, y, z) mm.
        crop_to_lungs: Crop to the lung mask's bounding box plus `margin_mm`.
        margin_mm: Margin around the lungs' bounding box kept by the crop, in mm.
        interpolation: Interpolation of CT values: "linear" or "bspline".
        lung_margin_mm: Dilation of the stored lung mask, in mm (`lungs.segment_lungs`).
        lung_closing_mm: Closing radius of the lung mask, in mm.
        lung_threshold_hu: Air threshold of the lung segmentation, in HU.
    """

    spacing_xyz_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    crop_to_lungs: bool = True
    margin_mm: float = CROP_MARGIN_MM
    interpolation: str = "linear"
    lung_margin_mm: float = lungs.MARGIN_MM
    lung_closing_mm: float = lungs.CLOSING_MM
    lung_threshold_hu: float = lungs.LUNG_THRESHOLD_HU

    def to_dict(self) -> dict[str, Any]:
        """Return the parameters as JSON-ready values (lists instead of tuples)."""
        values = asdict(self)
        values["spacing_xyz_mm"] = list(self.spacing_xyz_mm)
        return values

    @classmethod
    def coerce(cls, params: PreprocessParams | dict[str, Any] | None) -> PreprocessParams:
        """Return `params` as a `PreprocessParams`; None gives the defaults.

        Raises:
            LunaError: If a dict contains an unknown key or an invalid value.
        """
        if params is None:
            return cls()
        if isinstance(params, cls):
            result = params
        else:
            unknown = sorted(set(params) - set(cls.__dataclass_fields__))
            if unknown:
                raise LunaError(
                    f"Unknown preprocessing parameter(s) {unknown}; the known ones are "
                    f"{sorted(cls.__dataclass_fields__)}."
                )
            result = cls(**params)
        return result._validated()

    def _validated(self) -> PreprocessParams:
        if self.interpolation not in ("linear", "bspline"):
            raise LunaError(
                f"interpolation must be 'linear' or 'bspline' for CT values; got "
                f"{self.interpolation!r}."
            )
        if not math.isfinite(self.margin_mm) or self.margin_mm < 0:
            raise LunaError(f"margin_mm must be 0 or more; got {self.margin_mm!r}.")
        # Normalise numbers so that equal parameters compare equal after a JSON round trip.
        return PreprocessParams(
            spacing_xyz_mm=as_spacing(self.spacing_xyz_mm),
            crop_to_lungs=bool(self.crop_to_lungs),
            margin_mm=float(self.margin_mm),
            interpolation=str(self.interpolation),
            lung_margin_mm=float(self.lung_margin_mm),
            lung_closing_mm=float(self.lung_closing_mm),
            lung_threshold_hu=float(self.lung_threshold_hu),
        )


@dataclass
class PreprocessedScan:
    """One scan after preprocessing, before it is written.

    Attributes:
        volume: int16 HU, (z, y, x), cropped.
        lung_mask: uint8 (z, y, x), same shape as `volume`.
        geometry: JSON-ready geometry, as stored in the sidecar under "geometry".
    """

    volume: NDArray[np.int16]
    lung_mask: NDArray[np.uint8]
    geometry: dict[str, Any]


def default_cache_dir(root: str | Path) -> Path:
    """Return the scan cache folder of a dataset: `work_dir(root)/scan_cache/`."""
    return work_dir(root) / "scan_cache"


def _grid_dict(grid: ImageGrid) -> dict[str, Any]:
    return {
        "shape_zyx": [int(n) for n in grid.shape_zyx],
        "origin_xyz_mm": [float(v) for v in grid.origin_xyz_mm],
        "spacing_xyz_mm": [float(v) for v in grid.spacing_xyz_mm],
        "direction": [[float(v) for v in row] for row in grid.direction],
    }


def _to_int16(array: NDArray) -> NDArray[np.int16]:
    if array.dtype == np.int16:
        return array
    limits = np.iinfo(np.int16)
    return np.clip(np.rint(array), limits.min, limits.max).astype(np.int16)


def _crop_box(
    mask: NDArray[np.uint8], spacing_xyz_mm: tuple[float, float, float], margin_mm: float
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Return [low, high) of the mask's bounding box widened by `margin_mm`, clipped to the array."""
    pad_zyx = np.ceil(margin_mm / np.asarray(spacing_xyz_mm[::-1]) - 1e-9).astype(np.int64)
    low = np.zeros(3, dtype=np.int64)
    high = np.asarray(mask.shape, dtype=np.int64)
    for axis in range(3):
        other_axes = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(mask.any(axis=other_axes))
        low[axis] = max(int(present[0]) - pad_zyx[axis], 0)
        high[axis] = min(int(present[-1]) + pad_zyx[axis] + 1, mask.shape[axis])
    return low, high


def preprocess_scan_with_mask(
    path: str | Path, params: PreprocessParams | dict[str, Any] | None = None
) -> PreprocessedScan:
    """Read, resample, segment and crop one scan; return the volume, its lung mask and geometry.

    Steps: check the header and data file, read the voxels, resample them to
    `params.spacing_xyz_mm` (grid convention of `luna_utils.resample`), segment the lungs on the
    new grid, and crop both arrays to the lungs' bounding box plus `params.margin_mm`. When no lung
    is found, the full resampled volume is kept and a warning is logged.

    Args:
        path: The scan's `.mhd` file.
        params: Preprocessing parameters; None uses the defaults.

    Returns:
        The preprocessed scan. Its geometry contains `seriesuid`, the resampled full grid
        (`origin_xyz_mm`, `spacing_xyz_mm`, `direction`, `full_shape_zyx`), `crop_offset_zyx`,
        `shape_zyx` (the cropped shape), `original` (the scan's own grid), `lungs_found` and
        `lung_voxels`.

    Raises:
        MhdError: If the scan cannot be read.
    """
    params = PreprocessParams.coerce(params)
    # Resample straight from SimpleITK's buffer, so the input is held in memory once.
    header, image = read_image(path)
    source = ImageGrid.of_image(image)
    target = output_grid(source, params.spacing_xyz_mm)
    resampled = resample_to_grid(
        sitk.GetArrayViewFromImage(image), source, target, params.interpolation, AIR_HU
    )
    del image
    resampled = _to_int16(resampled)

    # NOTE: The stored mask is always this threshold segmentation; the official seg-lungs-LUNA16
    # masks are not used for the crop even when the dataset has them.
    mask = lungs.segment_lungs(
        resampled,
        target.spacing_xyz_mm,
        direction=target.direction,
        margin_mm=params.lung_margin_mm,
        closing_mm=params.lung_closing_mm,
        threshold_hu=params.lung_threshold_hu,
    )
    lungs_found = bool(mask.any())

    if params.crop_to_lungs and lungs_found:
        low, high = _crop_box(mask, target.spacing_xyz_mm, params.margin_mm)
        box = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
        volume = np.ascontiguousarray(resampled[box])
        mask = np.ascontiguousarray(mask[box])
        del resampled
    else:
        if params.crop_to_lungs:
            logger.warning("%s: no lungs found, so the whole scan is cached uncropped.", header.seriesuid)
        low = np.zeros(3, dtype=np.int64)
        volume = resampled

    full = _grid_dict(target)
    geometry_dict = {
        "seriesuid": header.seriesuid,
        "origin_xyz_mm": full["origin_xyz_mm"],
        "spacing_xyz_mm": full["spacing_xyz_mm"],
        "direction": full["direction"],
        "full_shape_zyx": full["shape_zyx"],
        "crop_offset_zyx": [int(v) for v in low],
        "shape_zyx": [int(n) for n in volume.shape],
        "original": _grid_dict(source),
        "lungs_found": lungs_found,
        "lung_voxels": int(np.count_nonzero(mask)),
    }
    return PreprocessedScan(volume=volume, lung_mask=mask, geometry=geometry_dict)


def preprocess_scan(
    path: str | Path, params: PreprocessParams | dict[str, Any] | None = None
) -> tuple[NDArray[np.int16], dict[str, Any]]:
    """Preprocess one scan and return its volume (int16 HU, (z, y, x)) and geometry dict.

    The same as `preprocess_scan_with_mask` without the lung mask; see it for the steps and keys.
    """
    result = preprocess_scan_with_mask(path, params)
    return result.volume, result.geometry


def entry_paths(cache_dir: str | Path, seriesuid: str) -> dict[str, Path]:
    """Return the paths of one cache entry: keys `volume`, `lung_mask`, `sidecar`."""
    folder = Path(cache_dir)
    return {
        "volume": folder / f"{seriesuid}{VOLUME_SUFFIX}",
        "lung_mask": folder / f"{seriesuid}{MASK_SUFFIX}",
        "sidecar": folder / f"{seriesuid}{SIDECAR_SUFFIX}",
    }


def _temporary_path(path: Path) -> Path:
    """Return a unique hidden name in the same folder, so the final rename is atomic."""
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def _write_atomically(path: Path, write) -> None:
    """Call `write(handle)` on a temporary file, flush it to disk, then rename it to `path`."""
    temporary = _temporary_path(path)
    try:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def save_npy_atomically(path: str | Path, array: NDArray) -> None:
    """Save an array as `.npy` through a temporary file and a rename."""
    _write_atomically(Path(path), lambda handle: np.save(handle, array, allow_pickle=False))


def _write_sidecar(path: Path, sidecar: dict[str, Any]) -> None:
    text = json.dumps(sidecar, indent=2, sort_keys=True) + "\n"
    _write_atomically(path, lambda handle: handle.write(text.encode("utf-8")))


def write_entry(cache_dir: str | Path, result: PreprocessedScan, params: PreprocessParams) -> Path:
    """Write one preprocessed scan to the cache: old sidecar removed, arrays, then the sidecar.

    Returns:
        The path of the volume `.npy`.
    """
    paths = entry_paths(cache_dir, result.geometry["seriesuid"])
    paths["sidecar"].unlink(missing_ok=True)

    save_npy_atomically(paths["volume"], result.volume)
    save_npy_atomically(paths["lung_mask"], result.lung_mask)

    sidecar = {
        "format": CACHE_FORMAT,
        "params": params.to_dict(),
        "geometry": result.geometry,
        "files": {
            "volume": paths["volume"].name,
            "volume_bytes": paths["volume"].stat().st_size,
            "lung_mask": paths["lung_mask"].name,
            "lung_mask_bytes": paths["lung_mask"].stat().st_size,
        },
    }
    _write_sidecar(paths["sidecar"], sidecar)
    return paths["volume"]


def read_sidecar(cache_dir: str | Path, seriesuid: str) -> dict[str, Any] | None:
    """Return an entry's sidecar, or None when it is missing or not valid JSON."""
    path = entry_paths(cache_dir, seriesuid)["sidecar"]
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        logger.warning("Ignoring the unreadable cache sidecar %s: %s", path, error)
        return None


def entry_state(
    cache_dir: str | Path,
    seriesuid: str,
    params: PreprocessParams | dict[str, Any] | None = None,
) -> str:
    """Return the state of one cache entry.

    Args:
        cache_dir: The cache folder.
        seriesuid: The scan id.
        params: Parameters the entry must have been built with; None accepts any.

    Returns:
        "complete"; "missing" (no sidecar); "stale" (other parameters or cache format); or
        "incomplete" (a data file is missing or has another size than the sidecar records).
    """
    sidecar = read_sidecar(cache_dir, seriesuid)
    if sidecar is None:
        return "missing"
    if sidecar.get("format") != CACHE_FORMAT:
        return "stale"
    if params is not None:
        wanted = PreprocessParams.coerce(params).to_dict()
        if sidecar.get("params") != wanted:
            return "stale"

    paths = entry_paths(cache_dir, seriesuid)
    files = sidecar.get("files", {})
    for key in ("volume", "lung_mask"):
        path = paths[key]
        if not path.is_file() or path.stat().st_size != files.get(f"{key}_bytes"):
            return "incomplete"
    return "complete"


@dataclass
class CachedScan:
    """A preprocessed scan read from the cache; its arrays are read-only memory maps.

    Attributes:
        volume: int16 HU, (z, y, x), on the resampled grid, cropped.
        lung_mask: uint8 lung mask (1 = lung) on the same voxels, or None when not stored.
        origin_xyz_mm: World position of voxel (0, 0, 0) of the resampled full grid, LPS mm.
        spacing_xyz_mm: Voxel size (x, y, z) mm.
        direction: 3x3 direction matrix (columns are the image axes in world space).
        crop_offset_zyx: Index in the resampled full grid of the cached array's voxel (0, 0, 0).
        seriesuid: The scan id.
        params: The preprocessing parameters the entry was built with.
        geometry: The sidecar's full geometry, including the original scan's grid.
    """

    volume: np.memmap
    lung_mask: np.memmap | None
    origin_xyz_mm: tuple[float, float, float]
    spacing_xyz_mm: tuple[float, float, float]
    direction: NDArray[np.float64]
    crop_offset_zyx: tuple[int, int, int]
    seriesuid: str
    params: dict[str, Any] = field(default_factory=dict)
    geometry: dict[str, Any] = field(default_factory=dict)

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        """Shape of the cached array in NumPy order (z, y, x)."""
        return tuple(int(n) for n in self.volume.shape)  # type: ignore[return-value]

    @property
    def grid(self) -> ImageGrid:
        """The voxel grid of the cached array, with the crop applied to its origin."""
        origin = geometry.voxel_to_world(
            np.asarray(self.crop_offset_zyx, dtype=np.float64),
            self.origin_xyz_mm,
            self.spacing_xyz_mm,
            self.direction,
        )
        return ImageGrid(
            shape_zyx=self.shape_zyx,
            origin_xyz_mm=tuple(float(v) for v in origin),  # type: ignore[arg-type]
            spacing_xyz_mm=tuple(float(v) for v in self.spacing_xyz_mm),  # type: ignore[arg-type]
            direction=np.asarray(self.direction, dtype=np.float64),
        )

    @property
    def full_shape_zyx(self) -> tuple[int, int, int]:
        """Shape of the resampled full grid, before the crop."""
        return tuple(int(n) for n in self.geometry["full_shape_zyx"])  # type: ignore[return-value]

    @property
    def full_grid(self) -> ImageGrid:
        """The resampled full grid, before the crop."""
        return ImageGrid(
            shape_zyx=self.full_shape_zyx,
            origin_xyz_mm=tuple(float(v) for v in self.origin_xyz_mm),  # type: ignore[arg-type]
            spacing_xyz_mm=tuple(float(v) for v in self.spacing_xyz_mm),  # type: ignore[arg-type]
            direction=np.asarray(self.direction, dtype=np.float64),
        )

    @property
    def crop_slices(self) -> tuple[slice, slice, slice]:
        """Slices (z, y, x) of the full grid that the cached array covers."""
        return tuple(  # type: ignore[return-value]
            slice(offset, offset + size) for offset, size in zip(self.crop_offset_zyx, self.shape_zyx)
        )

    def world_to_voxel(self, points_xyz_mm: ArrayLike) -> NDArray[np.float64]:
        """Convert world points (x, y, z) mm, shape (3,) or (N, 3), to continuous (z, y, x)
        indices in the cached array."""
        full_zyx = geometry.world_to_voxel(
            points_xyz_mm, self.origin_xyz_mm, self.spacing_xyz_mm, self.direction
        )
        return full_zyx - np.asarray(self.crop_offset_zyx, dtype=np.float64)

    def voxel_to_world(self, points_zyx: ArrayLike) -> NDArray[np.float64]:
        """Convert (z, y, x) indices in the cached array, shape (3,) or (N, 3), to world points.

        Returns world points (x, y, z) mm. This is the exact inverse of `world_to_voxel`.
        """
        full_zyx = np.asarray(points_zyx, dtype=np.float64) + np.asarray(
            self.crop_offset_zyx, dtype=np.float64
        )
        return geometry.voxel_to_world(
            full_zyx, self.origin_xyz_mm, self.spacing_xyz_mm, self.direction
        )

    def contains(self, points_xyz_mm: ArrayLike) -> NDArray[np.bool_] | bool:
        """Test whether world points (x, y, z) mm fall on a voxel of the cached array."""
        return geometry.points_inside(self.world_to_voxel(points_xyz_mm), self.shape_zyx)


def open_cached_scan(
    cache_dir: str | Path,
    seriesuid: str,
    params: PreprocessParams | dict[str, Any] | None = None,
) -> CachedScan:
    """Open a complete cache entry with its arrays memory-mapped read-only.

    Args:
        cache_dir: The cache folder.
        seriesuid: The scan id.
        params: When given, the entry must have been built with these parameters.

    Raises:
        DatasetError: If the entry is missing, incomplete, or built with other parameters.
    """
    state = entry_state(cache_dir, seriesuid, params)
    if state != "complete":
        raise DatasetError(
            f"Scan {seriesuid} has no complete entry in the cache {display_path(cache_dir)} "
            f"(state: {state}). Run luna_utils.cache.build_cache(root) to build it."
        )
    sidecar = read_sidecar(cache_dir, seriesuid)
    if sidecar is None:
        raise DatasetError(
            f"The cache entry of {seriesuid} in {display_path(cache_dir)} vanished while it was "
            "opened; another process may be rebuilding it. Try again when it has finished."
        )
    paths = entry_paths(cache_dir, seriesuid)
    entry_geometry = sidecar["geometry"]

    volume = np.load(paths["volume"], mmap_mode="r", allow_pickle=False)
    lung_mask = np.load(paths["lung_mask"], mmap_mode="r", allow_pickle=False)
    if tuple(volume.shape) != tuple(entry_geometry["shape_zyx"]):
        raise DatasetError(
            f"{paths['volume']} has shape {volume.shape} but its sidecar records "
            f"{entry_geometry['shape_zyx']}; delete both files and rebuild the cache."
        )

    return CachedScan(
        volume=volume,
        lung_mask=lung_mask,
        origin_xyz_mm=tuple(entry_geometry["origin_xyz_mm"]),  # type: ignore[arg-type]
        spacing_xyz_mm=tuple(entry_geometry["spacing_xyz_mm"]),  # type: ignore[arg-type]
        direction=np.asarray(entry_geometry["direction"], dtype=np.float64),
        crop_offset_zyx=tuple(int(v) for v in entry_geometry["crop_offset_zyx"]),  # type: ignore[arg-type]
        seriesuid=seriesuid,
        params=sidecar["params"],
        geometry=entry_geometry,
    )


def list_cached_scans(cache_dir: str | Path) -> pd.DataFrame:
    """List the complete entries of a cache folder.

    Returns:
        One row per complete entry, sorted by seriesuid, with columns `seriesuid`, `shape_zyx`,
        `crop_offset_zyx`, `spacing_xyz_mm` and `path` (the volume `.npy`).
    """
    rows = []
    folder = Path(cache_dir)
    for sidecar_path in sorted(folder.glob(f"*{SIDECAR_SUFFIX}")):
        seriesuid = sidecar_path.name[: -len(SIDECAR_SUFFIX)]
        if entry_state(folder, seriesuid) != "complete":
            continue
        entry_geometry = read_sidecar(folder, seriesuid)["geometry"]  # type: ignore[index]
        rows.append(
            {
                "seriesuid": seriesuid,
                "shape_zyx": tuple(entry_geometry["shape_zyx"]),
                "crop_offset_zyx": tuple(entry_geometry["crop_offset_zyx"]),
                "spacing_xyz_mm": tuple(entry_geometry["spacing_xyz_mm"]),
                "path": entry_paths(folder, seriesuid)["volume"],
            }
        )
    columns = ["seriesuid", "shape_zyx", "crop_offset_zyx", "spacing_xyz_mm", "path"]
    return pd.DataFrame(rows, columns=columns)


def _remove_stale_temporaries(cache_dir: Path, seriesuid: str) -> None:
    """Delete temporary files an interrupted build of this scan left behind."""
    for leftover in cache_dir.glob(f".{seriesuid}*.tmp"):
        leftover.unlink(missing_ok=True)


def build_entry(
    mhd_path: str | Path,
    cache_dir: str | Path,
    params: PreprocessParams | dict[str, Any] | None = None,
    sitk_threads: int | None = None,
) -> dict[str, Any]:
    """Preprocess one scan and write its cache entry; the task that `build_cache` runs per scan.

    Errors reading or preprocessing the scan are caught, logged and reported, so one bad scan
    does not stop a build.

    Args:
        mhd_path: The scan's `.mhd` file.
        cache_dir: The cache folder.
        params: Preprocessing parameters; None uses the defaults.
        sitk_threads: Threads SimpleITK may use in this process; None keeps its default.

    Returns:
        A dict with `seriesuid`, `status` ("built" or "failed"), `shape` (tuple or None) and
        `error` (message, "" when built).
    """
    mhd_path = Path(mhd_path)
    cache_dir = Path(cache_dir)
    seriesuid = mhd_path.stem
    if sitk_threads is not None:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(sitk_threads))

    try:
        params = PreprocessParams.coerce(params)
        _remove_stale_temporaries(cache_dir, seriesuid)
        result = preprocess_scan_with_mask(mhd_path, params)
        write_entry(cache_dir, result, params)
    except (LunaError, RuntimeError, OSError, ValueError, MemoryError) as error:
        logger.error("Caching %s failed: %s", seriesuid, error)
        return {"seriesuid": seriesuid, "status": "failed", "shape": None, "error": str(error)}

    return {
        "seriesuid": seriesuid,
        "status": "built",
        "shape": tuple(result.volume.shape),
        "error": "",
    }


def _cpu_count() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _local_cluster_size(n_tasks: int, n_workers: int | None) -> tuple[int, int]:
    """Return (worker processes, memory limit per worker in bytes) for a local Dask cluster.

    Each worker gets an equal share of 90 % of the free memory, and at least
    `WORKER_MEMORY_BYTES`. Without `n_workers`, as many workers start as the CPUs, the tasks and
    that minimum allow.
    """
    import psutil

    available = int(psutil.virtual_memory().available * 0.9)
    if n_workers is None:
        by_memory = available // WORKER_MEMORY_BYTES
        n_workers = max(1, min(_cpu_count(), by_memory, n_tasks))
    return n_workers, max(WORKER_MEMORY_BYTES, available // n_workers)


def _run_in_process(tasks: list[tuple[str, Path]], cache_dir: Path, params: PreprocessParams) -> list[dict]:
    results = []
    for _, mhd_path in progress(tasks, desc="Caching scans", total=len(tasks), unit="scan"):
        results.append(build_entry(mhd_path, cache_dir, params))
    return results


def _run_with_dask(
    tasks: list[tuple[str, Path]],
    cache_dir: Path,
    params: PreprocessParams,
    scheduler: Any,
    n_workers: int | None,
) -> list[dict]:
    """Run one `build_entry` task per scan on a Dask cluster and collect the results."""
    from distributed import Client, LocalCluster, as_completed

    cluster = None
    own_client = False
    sitk_threads = None
    if scheduler is None:
        workers, memory_limit = _local_cluster_size(len(tasks), n_workers)
        # SimpleITK threads share the CPUs among the worker processes.
        sitk_threads = max(1, _cpu_count() // workers)
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            memory_limit=memory_limit,
            dashboard_address=None,
            # The scheduler's HTTP server starts even without a dashboard; a free port on the
            # loopback interface avoids clashing with another cluster on the default 8787.
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
            silence_logs=logging.ERROR,
        )
        client = Client(cluster)
        own_client = True
        logger.info("Started a local Dask cluster with %d worker process(es)", workers)
    elif isinstance(scheduler, str):
        client = Client(scheduler)
        own_client = True
    else:
        client = scheduler

    try:
        futures = {
            client.submit(
                build_entry,
                str(mhd_path),
                str(cache_dir),
                params.to_dict(),
                sitk_threads,
                key=f"cache-{seriesuid}",
                pure=False,
            ): seriesuid
            for seriesuid, mhd_path in tasks
        }
        results = []
        for future in progress(
            as_completed(futures), desc="Caching scans", total=len(futures), unit="scan"
        ):
            seriesuid = futures[future]
            try:
                results.append(future.result())
            except Exception as error:  # noqa: BLE001 - a worker may die, e.g. out of memory
                logger.error("Caching %s failed on its Dask worker: %r", seriesuid, error)
                results.append(
                    {"seriesuid": seriesuid, "status": "failed", "shape": None, "error": repr(error)}
                )
        return results
    finally:
        if own_client:
            client.close()
        if cluster is not None:
            cluster.close()


def build_cache(
    root: str | Path,
    cache_dir: str | Path | None = None,
    spacing_xyz_mm: float | ArrayLike = (1.0, 1.0, 1.0),
    crop_to_lungs: bool = True,
    margin_mm: float = CROP_MARGIN_MM,
    scheduler: Any = None,
    seriesuids: list[str] | None = None,
    interpolation: str = "linear",
    n_workers: int | None = None,
    force: bool = False,
) -> pd.DataFrame:
    """Preprocess every scan of a dataset into the cache, skipping complete entries.

    An entry built with other parameters is rebuilt. The build can be interrupted at any time and
    rerun: finished entries are complete and skipped, unfinished ones never read as complete.

    Args:
        root: The dataset folder (with `subset*/<seriesuid>.mhd`).
        cache_dir: The cache folder; None uses `default_cache_dir(root)`.
        spacing_xyz_mm: Voxel size of the cached grid (x, y, z) mm, or one number.
        crop_to_lungs: Crop each scan to its lungs' bounding box plus `margin_mm`.
        margin_mm: Margin around the lungs' bounding box, in mm.
        scheduler: None starts a local Dask cluster with one single-threaded worker process per
            CPU, at most as many as the free memory allows at `WORKER_MEMORY_BYTES` each. A
            scheduler address ("tcp://host:port") or a `distributed.Client` uses that cluster.
            "sync" runs the scans one after another in this process.
        seriesuids: Cache only these scans; None caches every scan on disk.
        interpolation: "linear" or "bspline" for CT values.
        n_workers: Number of local worker processes; None sizes it as described above.
        force: Rebuild complete entries too.

    Returns:
        One row per scan with columns `seriesuid`, `subset`, `status` ("built", "skipped" or
        "failed"), `shape` (the cached (z, y, x) shape, None when failed), `path` (the volume
        `.npy`) and `error` (the message of a failure, else "").

    Raises:
        DatasetError: If a requested seriesuid is not on disk.

    NOTE: The local cluster starts worker processes with the "spawn" method, which imports the
    calling script again. A script (not a notebook) must therefore call `build_cache` under
    `if __name__ == "__main__":`.
    """
    params = PreprocessParams.coerce(
        {
            "spacing_xyz_mm": spacing_xyz_mm,
            "crop_to_lungs": crop_to_lungs,
            "margin_mm": margin_mm,
            "interpolation": interpolation,
        }
    )
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir(root)
    cache_dir.mkdir(parents=True, exist_ok=True)

    scans = list_scans(root)
    if seriesuids is not None:
        unknown = sorted(set(seriesuids) - set(scans["seriesuid"]))
        if unknown:
            raise DatasetError(
                f"{len(unknown)} requested scan(s) are not under {display_path(root)}/subset*/, "
                f"for example {unknown[0]}. Check the seriesuids or extract their subsets."
            )
        scans = scans[scans["seriesuid"].isin(set(seriesuids))].reset_index(drop=True)

    # Decide per scan: skip a complete entry, build the rest.
    results: dict[str, dict[str, Any]] = {}
    tasks: list[tuple[str, Path]] = []
    for row in scans.itertuples(index=False):
        state = entry_state(cache_dir, row.seriesuid, params)
        if state == "complete" and not force:
            shape = tuple(read_sidecar(cache_dir, row.seriesuid)["geometry"]["shape_zyx"])  # type: ignore[index]
            results[row.seriesuid] = {"status": "skipped", "shape": shape, "error": ""}
            continue
        if state in ("stale", "incomplete"):
            logger.info("Rebuilding the %s cache entry of %s", state, row.seriesuid)
        tasks.append((row.seriesuid, Path(row.mhd_path)))

    logger.info(
        "Scan cache %s: %d scan(s) to build, %d already complete",
        display_path(cache_dir),
        len(tasks),
        len(results),
    )
    if tasks:
        in_process = isinstance(scheduler, str) and scheduler in IN_PROCESS_SCHEDULERS
        if in_process:
            outcomes = _run_in_process(tasks, cache_dir, params)
        else:
            outcomes = _run_with_dask(tasks, cache_dir, params, scheduler, n_workers)
        for outcome in outcomes:
            results[outcome["seriesuid"]] = outcome

    table = pd.DataFrame(
        {
            "seriesuid": scans["seriesuid"],
            "subset": scans["subset"],
            "status": [results[uid]["status"] for uid in scans["seriesuid"]],
            "shape": [results[uid]["shape"] for uid in scans["seriesuid"]],
            "path": [entry_paths(cache_dir, uid)["volume"] for uid in scans["seriesuid"]],
            "error": [results[uid]["error"] for uid in scans["seriesuid"]],
        }
    )
    counts = table["status"].value_counts().to_dict()
    logger.info(
        "Scan cache done: %d built, %d skipped, %d failed",
        counts.get("built", 0),
        counts.get("skipped", 0),
        counts.get("failed", 0),
    )
    return table
