"""A cache of candidate patches per split, stored as memory-mapped `.npy` files.

Cutting patches out of the scan cache is the slow part of feeding a classifier, so each split's
patches are cut once and stored under `work_dir(root)/patches/`:

    <name>_patches.npy      int16 HU, shape (N, S, S, S), axes (z, y, x), 1 mm voxels
    <name>_candidates.csv   the N candidate rows, in patch order, plus `inside` and `patch_index`
    <name>_manifest.json    patch size and a fingerprint of the candidate rows; written last

The candidate sits at voxel index S // 2 on every axis of its patch. An odd S puts the candidate on
the one voxel that flips and 90 degree rotations map onto itself, so augmentation never moves it.
Training crops a smaller cube (32^3) from the stored one (37^3), so random shifts never pad.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from luna_utils.errors import DatasetError
from luna_utils.progress import progress

logger = logging.getLogger(__name__)

# Stored cube edge in voxels (1 mm each): a 32^3 network input plus room for shifts of +-2 voxels.
STORED_PATCH_SIZE = 37

# Value of voxels outside the scan: air, in HU.
PAD_VALUE_HU = -1000

# Version of the file layout; a manifest with another version is rebuilt.
CACHE_FORMAT = 1

# A function that cuts the patches of one scan's candidates: (seriesuid, rows, size) ->
# (patches (n, S, S, S) int16 HU, inside (n,) bool), in the order of `rows`.
PatchExtractor = Callable[[str, pd.DataFrame, int], tuple[NDArray[np.int16], NDArray[np.bool_]]]


@dataclass(frozen=True)
class PatchCache:
    """The stored patches of one split.

    Attributes:
        name: The split name the files carry, for example "train".
        patches: Read-only memory map, int16 HU, shape (N, S, S, S), axes (z, y, x).
        table: The N candidate rows in patch order, with `inside` (the centre lies in the scan)
            and `patch_index` columns added.
    """

    name: str
    patches: np.memmap
    table: pd.DataFrame

    @property
    def size(self) -> int:
        """Edge of the stored cube in voxels."""
        return int(self.patches.shape[1])

    @property
    def labels(self) -> NDArray[np.int64]:
        """Candidate classes (1 nodule, 0 not), shape (N,)."""
        return self.table["class"].to_numpy(dtype=np.int64)

    def __len__(self) -> int:
        return int(self.patches.shape[0])


def cache_paths(folder: str | Path, name: str) -> dict[str, Path]:
    """Return the three file paths of one split's cache: keys `patches`, `table`, `manifest`."""
    folder = Path(folder)
    return {
        "patches": folder / f"{name}_patches.npy",
        "table": folder / f"{name}_candidates.csv",
        "manifest": folder / f"{name}_manifest.json",
    }


def fingerprint(candidates: pd.DataFrame) -> str:
    """Return a hash of the rows that decide a cache's content: seriesuid, coordinates, class."""
    columns = [c for c in ("seriesuid", "coordX", "coordY", "coordZ", "class") if c in candidates.columns]
    hashed = pd.util.hash_pandas_object(candidates[columns].reset_index(drop=True), index=False)
    return hashlib.sha1(hashed.to_numpy().tobytes()).hexdigest()


def subsample_negatives(candidates: pd.DataFrame, fraction: float, seed: int = 0) -> pd.DataFrame:
    """Keep every positive and a seeded random fraction of the negatives, in their original order.

    On real LUNA16 the training subsets 0-7 have about 600,000 candidates, 61 GB of 37^3 patches.
    Keeping 5 % of the negatives makes that about 3 GB. Never subsample a test split: a
    submission needs one row per test candidate.

    Args:
        candidates: Table with a `class` column.
        fraction: Share of negatives to keep, in (0, 1].
        seed: Seed of the choice.
    """
    if not 0.0 < fraction <= 1.0:
        raise DatasetError(f"The fraction of negatives to keep must be in (0, 1]; got {fraction!r}.")
    if fraction == 1.0:
        return candidates.reset_index(drop=True)

    rng = np.random.default_rng(seed)
    negative = candidates["class"].to_numpy() == 0
    keep = ~negative | (rng.random(len(candidates)) < fraction)
    return candidates.loc[keep].reset_index(drop=True)


def write_patch_cache(
    folder: str | Path,
    name: str,
    candidates: pd.DataFrame,
    extract: PatchExtractor,
    size: int = STORED_PATCH_SIZE,
    overwrite: bool = False,
) -> PatchCache:
    """Cut and store the patches of a candidate table, or reuse a matching cache.

    A cache is reused when its manifest names the same patch size and the same candidate rows
    (`fingerprint`). Files are written under temporary names in `folder` and moved into place
    with `os.replace`, the manifest last, so an interrupted run leaves no cache that looks complete.

    Args:
        folder: Folder for the files, created if missing.
        name: Split name used in the file names.
        candidates: Rows with `seriesuid, coordX, coordY, coordZ, class`.
        extract: Function that cuts one scan's patches; see `PatchExtractor`.
        size: Edge of the stored cube in voxels; odd, so the candidate has a centre voxel.
        overwrite: Rebuild even when a matching cache exists.

    Returns:
        The opened cache.

    Raises:
        DatasetError: If `size` is even or below 3, or `extract` returns the wrong shape.
    """
    if size < 3 or size % 2 == 0:
        raise DatasetError(f"The stored patch size must be odd and at least 3 voxels; got {size}.")

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = cache_paths(folder, name)
    table = candidates.reset_index(drop=True)
    manifest = {"format": CACHE_FORMAT, "size": size, "rows": len(table), "fingerprint": fingerprint(table)}

    if not overwrite and _manifest_matches(paths["manifest"], manifest):
        logger.info("Reusing the %s patch cache (%d patches).", name, len(table))
        return open_patch_cache(folder, name)

    # Drop the old manifest first, so a run that stops half-way leaves no cache that looks valid.
    paths["manifest"].unlink(missing_ok=True)

    inside = np.zeros(len(table), dtype=bool)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{name}_patches.", suffix=".npy")
    os.close(handle)
    try:
        patches = np.lib.format.open_memmap(
            temporary, mode="w+", dtype=np.int16, shape=(len(table), size, size, size)
        )
        groups = table.groupby("seriesuid", sort=False).indices
        for seriesuid, rows in progress(groups.items(), desc=f"{name} patches", total=len(groups)):
            scan_patches, scan_inside = extract(seriesuid, table.iloc[rows], size)
            expected = (len(rows), size, size, size)
            if scan_patches.shape != expected:
                raise DatasetError(
                    f"Patches of scan {seriesuid} have shape {scan_patches.shape}; expected {expected}."
                )
            patches[rows] = scan_patches
            inside[rows] = scan_inside
        patches.flush()
        del patches
        os.replace(temporary, paths["patches"])
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)

    stored = table.assign(inside=inside, patch_index=np.arange(len(table)))
    _write_atomic(paths["table"], stored.to_csv(index=False))
    _write_atomic(paths["manifest"], json.dumps(manifest, indent=2))
    logger.info("Stored %d %s patches of %d^3 voxels in %s.", len(table), name, size, folder.name)
    return open_patch_cache(folder, name)


def open_patch_cache(folder: str | Path, name: str) -> PatchCache:
    """Open a stored split cache with its patches memory-mapped read-only.

    Raises:
        DatasetError: If a file is missing or the patches and the table disagree in length.
    """
    paths = cache_paths(folder, name)
    for kind, path in paths.items():
        if not path.is_file():
            raise DatasetError(
                f"The {name} patch cache is incomplete: {path.name} ({kind}) is missing in "
                f"{Path(folder).name}. Build it with build_patch_cache or write_patch_cache."
            )

    patches = np.load(paths["patches"], mmap_mode="r")
    table = pd.read_csv(paths["table"], dtype={"seriesuid": str})
    if patches.shape[0] != len(table):
        raise DatasetError(
            f"{paths['patches'].name} contains {patches.shape[0]} patches but {paths['table'].name} "
            f"has {len(table)} rows; rebuild the cache with overwrite=True."
        )
    return PatchCache(name=name, patches=patches, table=table)


def _manifest_matches(path: Path, expected: dict) -> bool:
    if not path.is_file():
        return False
    try:
        stored = json.loads(path.read_text())
    except json.JSONDecodeError:
        logger.warning("Ignoring the unreadable manifest %s; rebuilding the cache.", path.name)
        return False
    return stored == expected


def _write_atomic(path: Path, text: str) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w", newline="") as stream:
            stream.write(text)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def scan_cache_extractor(cache_dir: str | Path) -> PatchExtractor:
    """Return a `PatchExtractor` that cuts patches from the 1 mm scan cache of `luna_utils.cache`.

    Args:
        cache_dir: Folder of the scan cache, `luna_utils.cache.default_cache_dir(root)` by default.
    """
    from luna_utils.cache import open_cached_scan
    from luna_utils.patches import patches_for_candidates

    def extract(seriesuid: str, rows: pd.DataFrame, size: int):
        scan = open_cached_scan(cache_dir, seriesuid)
        patch_set = patches_for_candidates(scan, rows, size_zyx=(size, size, size), mode="3d")
        return np.asarray(patch_set.patches, dtype=np.int16), np.asarray(patch_set.inside, dtype=bool)

    return extract


def build_patch_cache(
    root: str | Path,
    candidates: pd.DataFrame,
    name: str,
    size: int = STORED_PATCH_SIZE,
    cache_dir: str | Path | None = None,
    overwrite: bool = False,
) -> PatchCache:
    """Cut one split's patches from the scan cache into `work_dir(root)/patches/`.

    Args:
        root: The dataset folder.
        candidates: The split's candidate rows (for a training split, possibly after
            `subsample_negatives`).
        name: Split name used in the file names.
        size: Edge of the stored cube in voxels.
        cache_dir: The scan cache; None uses `luna_utils.cache.default_cache_dir(root)`.
        overwrite: Rebuild even when a matching cache exists.
    """
    from luna_utils.cache import default_cache_dir
    from luna_utils.dataset import work_dir

    if cache_dir is None:
        cache_dir = default_cache_dir(root)
    folder = work_dir(root) / "patches"
    return write_patch_cache(folder, name, candidates, scan_cache_extractor(cache_dir), size, overwrite)
