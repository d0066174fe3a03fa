"""Cache of the dataset statistics, valid while the scan files stay the same.

The cache lives in `work_dir(root)/hu_statistics/`:

* `scans.csv`: one row per scan (geometry and HU summary);
* `histograms.npy`: int64 (n_scans, n_bins), each scan's 10 HU histogram;
* `value_counts.npy`: int64 (65536,), the dataset's count of every int16 value;
* `bin_edges.npy`: int64 (n_bins + 1,), the HU bin edges;
* `cache.json`: the fingerprint the files were computed for, written last.

The fingerprint hashes every scan file's path relative to the dataset, size and modification time,
plus the bin edges and `CACHE_VERSION`. Editing, adding, removing or re-extracting a scan changes it,
and the cache is recomputed. Every file is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from luna_utils.dataset import display_path, work_dir

logger = logging.getLogger(__name__)

# Bump when the content or layout of the cached files changes.
CACHE_VERSION = 1

CACHE_FOLDER = "hu_statistics"
MANIFEST = "cache.json"


def cache_dir(root: str | Path) -> Path:
    """Return the folder holding a dataset's cached statistics (created if missing)."""
    folder = work_dir(root) / CACHE_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def fingerprint(root: str | Path, scan_table: pd.DataFrame, bin_edges: NDArray) -> str:
    """Hash the names, sizes and modification times of every scan's files.

    A scan's files are all files beside its `.mhd` that share its name (`.mhd`, `.raw`, `.zraw`).

    Returns:
        A SHA-256 hex digest.
    """
    root = Path(root)
    digest = hashlib.sha256(f"version {CACHE_VERSION}\n".encode())
    digest.update(np.asarray(bin_edges, dtype=np.int64).tobytes())
    for mhd_path in sorted(Path(path) for path in scan_table["mhd_path"]):
        for path in sorted(mhd_path.parent.glob(f"{mhd_path.stem}.*")):
            stat = path.stat()
            relative = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
            digest.update(f"{relative}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write a file through a temporary file in the same folder, then rename it into place."""
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    try:
        with handle:
            write(handle)
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def save(
    root: str | Path,
    fingerprint_hex: str,
    scans: pd.DataFrame,
    histograms: NDArray[np.int64],
    value_counts: NDArray[np.int64],
    bin_edges: NDArray[np.int64],
) -> Path:
    """Write the statistics to the cache; the manifest goes last, so a partial write is never read.

    Returns:
        The cache folder.
    """
    folder = cache_dir(root)
    (folder / MANIFEST).unlink(missing_ok=True)

    _write_atomic(folder / "scans.csv", lambda handle: handle.write(scans.to_csv(index=False).encode()))
    for name, array in (("histograms", histograms), ("value_counts", value_counts), ("bin_edges", bin_edges)):
        _write_atomic(folder / f"{name}.npy", lambda handle, array=array: np.save(handle, np.asarray(array, dtype=np.int64)))

    manifest = {"version": CACHE_VERSION, "fingerprint": fingerprint_hex, "n_scans": int(len(scans))}
    _write_atomic(folder / MANIFEST, lambda handle: handle.write(json.dumps(manifest, indent=2).encode()))
    logger.info("Cached the statistics of %d scans in %s", len(scans), display_path(folder))
    return folder


def load(
    root: str | Path, fingerprint_hex: str
) -> tuple[pd.DataFrame, NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]] | None:
    """Read cached statistics if they were computed for this fingerprint.

    Returns:
        (scans, histograms, value_counts, bin_edges), or None when there is no cache, it belongs
        to other files, or it is damaged (a damaged cache is logged and ignored).
    """
    folder = cache_dir(root)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("version") != CACHE_VERSION or manifest.get("fingerprint") != fingerprint_hex:
            logger.info("The cached statistics are for other scan files; recomputing.")
            return None
        scans = pd.read_csv(folder / "scans.csv", dtype={"seriesuid": str})
        per_scan = np.load(folder / "histograms.npy")
        counts = np.load(folder / "value_counts.npy")
        edges = np.load(folder / "bin_edges.npy")
    except (OSError, ValueError, json.JSONDecodeError, pd.errors.ParserError) as error:
        logger.warning("Ignoring the damaged statistics cache in %s: %s", display_path(folder), error)
        return None

    if len(scans) != manifest.get("n_scans") or per_scan.shape != (len(scans), len(edges) - 1):
        logger.warning(
            "Ignoring the statistics cache in %s: %d rows and histograms of shape %s do not match.",
            display_path(folder), len(scans), per_scan.shape,
        )
        return None
    return scans, per_scan, counts, edges
