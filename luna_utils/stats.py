"""Dataset-wide geometry and Hounsfield-unit statistics, one scan per task.

Each scan is read once, in one task, and reduced to a small result: its geometry, a summary of its
HU values, a 10 HU histogram and the exact count of every int16 value (`luna_utils.histograms`).
The value counts of all scans are then summed in a tree, so dataset percentiles, mean and standard
deviation come out exact while no process ever keeps more than one scan in memory.

The same work runs three ways, with identical results:

* `method="dask"`: a Dask graph on a `distributed` cluster (`luna_utils.cluster`): a local one
  sized to the machine, or an existing one given by address or `LUNA16_DASK_SCHEDULER`;
* `method="processes"`: a `concurrent.futures.ProcessPoolExecutor` on this machine;
* `method="loop"`: a plain loop in this process.

Results are cached under `luna_utils.dataset.work_dir(root)` and reused while the scan files keep
their names, sizes and modification times (`luna_utils.stats_cache`).
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from graphlib import TopologicalSorter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk
from numpy.typing import NDArray

from luna_utils import histograms, mhd, stats_cache
from luna_utils.dataset import list_scans, resolve_data_dir
from luna_utils.errors import DatasetError, LunaError, MhdError
from luna_utils.progress import progress

logger = logging.getLogger(__name__)

METHODS = ("dask", "processes", "loop")

# Voxels below this value are padding written outside the scanner's field of view (LUNA16 scans
# use -2000, -3024 and others): air is -1000 HU and noise rarely takes it below -1024 HU.
PADDING_BELOW_HU = -1100

# Number of value-count arrays summed by one task of the Dask reduction tree.
TREE_FAN_IN = 8

GEOMETRY_COLUMNS = [
    "seriesuid", "subset", "size_x", "size_y", "n_slices",
    "spacing_x_mm", "spacing_y_mm", "spacing_z_mm", "origin_x_mm", "origin_y_mm", "origin_z_mm",
    "direction_xx", "direction_yy", "direction_zz", "axis_aligned", "data_bytes",
]
HU_COLUMNS = [
    "n_voxels", "min_hu", "max_hu", "mean_hu", "std_hu", "mode_hu",
    *[f"p{p}_hu" for p in histograms.PERCENTILES],
    "n_padding", "n_below_range", "n_above_range",
]
COLUMNS = GEOMETRY_COLUMNS + HU_COLUMNS


@dataclass
class ScanStatistics:
    """Everything computed from one scan.

    Attributes:
        row: Geometry and HU summary, keyed by `COLUMNS`.
        histogram: Voxels per `histograms.HU_BIN_EDGES` bin, int64, shape (n_bins,).
        value_counts: Voxels per int16 value, int64, shape (65536,) (see `histograms.value_counts`).
    """

    row: dict[str, Any]
    histogram: NDArray[np.int64]
    value_counts: NDArray[np.int64]


def scan_statistics(mhd_path: str | Path, subset: int = -1) -> ScanStatistics:
    """Read one scan and compute its geometry, HU summary, histogram and value counts.

    The voxels are read into SimpleITK's buffer and counted through a NumPy view of it, a few
    slices at a time, so the task's memory is one scan plus a few slices.

    Args:
        mhd_path: The scan's `.mhd` header (its `.raw` or `.zraw` beside it).
        subset: The LUNA16 subset number to record, or -1 when unknown.

    Raises:
        MhdError: If the header or data file is missing, truncated or unreadable, or the voxels
            are not integers.
    """
    header, image = mhd.read_image(mhd_path)

    try:
        counts = histograms.value_counts(sitk.GetArrayViewFromImage(image))
    except LunaError as error:
        raise MhdError(f"{header.path}: {error}") from error
    finally:
        del image
    if counts.sum() == 0:
        raise MhdError(
            f"{header.path} is empty: DimSize {header.size_xyz} gives no voxels. Download or "
            "extract the scan again."
        )

    histogram, n_below, n_above = histograms.bin_value_counts(counts)
    summary = histograms.summarize_counts(counts)
    diagonal = np.diag(header.direction)
    row = {
        "seriesuid": header.seriesuid,
        "subset": int(subset),
        "size_x": header.size_xyz[0],
        "size_y": header.size_xyz[1],
        "n_slices": header.size_xyz[2],
        "spacing_x_mm": header.spacing_xyz_mm[0],
        "spacing_y_mm": header.spacing_xyz_mm[1],
        "spacing_z_mm": header.spacing_xyz_mm[2],
        "origin_x_mm": header.origin_xyz_mm[0],
        "origin_y_mm": header.origin_xyz_mm[1],
        "origin_z_mm": header.origin_xyz_mm[2],
        "direction_xx": float(diagonal[0]),
        "direction_yy": float(diagonal[1]),
        "direction_zz": float(diagonal[2]),
        "axis_aligned": bool(np.allclose(header.direction, np.diag(diagonal), atol=1e-6)),
        "data_bytes": header.expected_data_bytes,
        **summary.as_row(),
        "n_padding": int(counts[: PADDING_BELOW_HU + histograms.VALUE_OFFSET].sum()),
        "n_below_range": n_below,
        "n_above_range": n_above,
    }
    return ScanStatistics(row=row, histogram=histogram, value_counts=counts)


def scan_summary(result: ScanStatistics) -> tuple[dict[str, Any], NDArray[np.int64]]:
    """Return the small part of a scan's result: its row and its 10 HU histogram."""
    return result.row, result.histogram


def scan_value_counts(result: ScanStatistics) -> NDArray[np.int64]:
    """Return a scan's value counts (65536 int64, 512 KiB)."""
    return result.value_counts


def sum_value_counts(*counts: NDArray[np.int64]) -> NDArray[np.int64]:
    """Add value-count arrays; integer sums are exact in any order."""
    total = np.zeros(histograms.N_VALUES, dtype=np.int64)
    for array in counts:
        total += array
    return total


@dataclass
class DatasetStatistics:
    """Statistics of every scan of a dataset, and of all their voxels together.

    Attributes:
        scans: One row per scan, columns `COLUMNS`, in `list_scans` order.
        histograms: Voxels per 10 HU bin of each scan, int64, shape (n_scans, n_bins), rows in
            the order of `scans`.
        value_counts: Voxels per int16 value over the whole dataset, int64, shape (65536,).
        bin_edges: HU bin edges of `histograms`, shape (n_bins + 1,).
        method: "dask", "processes" or "loop"; the method of the run that computed them.
        seconds: Wall time of that run, 0 when read from the cache. It includes the start-up of
            a process pool but not that of a Dask cluster.
        from_cache: Whether they were read from the cache.
    """

    scans: pd.DataFrame
    histograms: NDArray[np.int64]
    value_counts: NDArray[np.int64]
    bin_edges: NDArray[np.int64] = field(default_factory=lambda: histograms.HU_BIN_EDGES.copy())
    method: str = ""
    seconds: float = 0.0
    from_cache: bool = False

    def summary(self) -> histograms.HuSummary:
        """Return min, max, mean, standard deviation, mode and percentiles of all voxels, exact."""
        return histograms.summarize_counts(self.value_counts)

    def histogram(self) -> NDArray[np.int64]:
        """Return voxels per 10 HU bin over the whole dataset, shape (n_bins,)."""
        return self.histograms.sum(axis=0)

    def same_as(self, other: DatasetStatistics) -> bool:
        """Return whether two runs produced identical tables and arrays, to the last bit."""
        return (
            self.scans.equals(other.scans)
            and np.array_equal(self.histograms, other.histograms)
            and np.array_equal(self.value_counts, other.value_counts)
            and np.array_equal(self.bin_edges, other.bin_edges)
        )


def _assemble(summaries: list[tuple[dict, NDArray]], value_counts: NDArray, method: str, seconds: float) -> DatasetStatistics:
    scans = pd.DataFrame([row for row, _ in summaries], columns=COLUMNS)
    stacked = np.stack([histogram for _, histogram in summaries]).astype(np.int64)
    return DatasetStatistics(scans, stacked, value_counts, method=method, seconds=seconds)


def _scan_items(scan_table: pd.DataFrame) -> list[tuple[str, int]]:
    return [(str(path), int(subset)) for path, subset in zip(scan_table["mhd_path"], scan_table["subset"])]


def _summary_and_counts(mhd_path: str, subset: int) -> tuple[dict, NDArray, NDArray]:
    result = scan_statistics(mhd_path, subset)
    return result.row, result.histogram, result.value_counts


def run_loop(scan_table: pd.DataFrame) -> DatasetStatistics:
    """Compute the statistics with a plain loop in this process, one scan after another."""
    start = time.perf_counter()
    summaries = []
    total = np.zeros(histograms.N_VALUES, dtype=np.int64)
    items = _scan_items(scan_table)
    for path, subset in progress(items, desc="scans (loop)", total=len(items)):
        row, histogram, counts = _summary_and_counts(path, subset)
        summaries.append((row, histogram))
        total += counts
    return _assemble(summaries, total, "loop", time.perf_counter() - start)


def run_processes(scan_table: pd.DataFrame, max_workers: int) -> DatasetStatistics:
    """Compute the statistics in a pool of `max_workers` processes on this machine.

    Processes are started with "spawn", which is safe when this process runs threads (a Dask
    client, a Jupyter kernel). Each result is merged as soon as it arrives, so finished results
    do not pile up.
    """
    start = time.perf_counter()
    items = _scan_items(scan_table)
    summaries: list[Any] = [None] * len(items)
    total = np.zeros(histograms.N_VALUES, dtype=np.int64)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=max_workers, mp_context=context) as pool:
        futures = {
            pool.submit(_summary_and_counts, path, subset): position
            for position, (path, subset) in enumerate(items)
        }
        for future in progress(as_completed(futures), desc="scans (processes)", total=len(futures)):
            row, histogram, counts = future.result()
            summaries[futures[future]] = (row, histogram)
            total += counts
    return _assemble(summaries, total, "processes", time.perf_counter() - start)


def _key_suffix(path: str, subset: int) -> str:
    from dask.base import tokenize

    stat = Path(path).stat()
    # The file's size and modification time are part of the key, so a changed file never reuses
    # a result that the scheduler still keeps.
    return f"{Path(path).stem[-6:]}-{tokenize(path, subset, stat.st_size, stat.st_mtime_ns)[:8]}"


def statistics_graph(scan_table: pd.DataFrame, fan_in: int = TREE_FAN_IN) -> tuple[list, Any]:
    """Build the Dask graph: one task per scan, then a tree that sums the value counts.

    Per scan, `scan-statistics-<uid end>-<token>` reads the scan; `summary-...` and
    `value-counts-...` take the small row and histogram, and the value counts, from its result.
    `sum-value-counts-<level>-<i>` tasks add up to `fan_in` value-count arrays each, level by level,
    until one remains.

    Args:
        scan_table: Scans as `list_scans` returns them (columns mhd_path and subset).
        fan_in: Arrays added by each task of the tree, at least 2.

    Returns:
        (summaries, total): one `dask.delayed` object per scan yielding (row, histogram), and one
        yielding the dataset's value counts.
    """
    from dask import delayed

    if fan_in < 2:
        raise LunaError(f"The reduction tree needs fan_in >= 2; got {fan_in}.")
    summaries, counts = [], []
    for path, subset in _scan_items(scan_table):
        suffix = _key_suffix(path, subset)
        result = delayed(scan_statistics)(path, subset, dask_key_name=f"scan-statistics-{suffix}")
        summaries.append(delayed(scan_summary)(result, dask_key_name=f"summary-{suffix}"))
        counts.append(delayed(scan_value_counts)(result, dask_key_name=f"value-counts-{suffix}"))

    from dask.base import tokenize

    level = 0
    run_token = tokenize(*[item.key for item in counts])[:8]
    while len(counts) > 1:
        counts = [
            delayed(sum_value_counts)(*counts[start : start + fan_in], dask_key_name=f"sum-value-counts-{level}-{start // fan_in}-{run_token}")
            for start in range(0, len(counts), fan_in)
        ]
        level += 1
    total = counts[0] if level else delayed(sum_value_counts)(*counts, dask_key_name=f"sum-value-counts-0-0-{run_token}")
    return summaries, total


def graph_text(objects: list) -> str:
    """Describe a Dask graph as text: one line per task, dependencies first, with its inputs.

    Works without graphviz. Each line reads `key = function(input keys)`.
    """
    from dask.highlevelgraph import HighLevelGraph

    graph = HighLevelGraph.merge(*[item.__dask_graph__() for item in objects])
    dependencies = graph.get_all_dependencies()
    tasks = dict(graph)
    lines = []
    for key in TopologicalSorter(dependencies).static_order():
        function = getattr(tasks[key], "func", None)
        name = getattr(function, "__name__", "task")
        inputs = ", ".join(sorted(str(dependency) for dependency in dependencies[key])) or "file on disk"
        lines.append(f"{key} = {name}({inputs})")
    return "\n".join(lines)


def run_dask(scan_table: pd.DataFrame, client) -> DatasetStatistics:
    """Compute the statistics on a Dask cluster through `client`, with a progress bar per scan."""
    from distributed import as_completed as dask_as_completed

    start = time.perf_counter()
    summaries, total = statistics_graph(scan_table)
    futures = client.compute([*summaries, total])
    for _ in progress(dask_as_completed(futures[:-1]), desc="scans (Dask)", total=len(summaries)):
        pass
    results = client.gather(futures)
    return _assemble(results[:-1], results[-1], "dask", time.perf_counter() - start)


def compute_statistics(
    root: str | Path | None = None,
    *,
    method: str = "dask",
    client=None,
    max_workers: int | None = None,
    use_cache: bool = True,
) -> DatasetStatistics:
    """Compute (or read from the cache) the geometry and HU statistics of every scan of a dataset.

    Args:
        root: Dataset folder; None resolves it as `luna_utils.dataset.resolve_data_dir` does.
        method: "dask", "processes" or "loop"; all three return identical results.
        client: For "dask": a connected `distributed.Client`. None starts one with
            `luna_utils.cluster.start_client` (local, or the cluster named by
            `LUNA16_DASK_SCHEDULER`) and closes it afterwards.
        max_workers: For "processes": pool size; None sizes it like the local Dask cluster.
        use_cache: Read a valid cached result, and write a fresh one. False recomputes and
            leaves the cache as it is.

    Returns:
        The statistics. `from_cache` is True when they were read from the cache, False when
        they were computed in this call.

    Raises:
        DatasetError: If the dataset contains no scans or the method is unknown.
        MhdError: If a scan cannot be read (the message names the file).
    """
    if method not in METHODS:
        raise DatasetError(f"Unknown statistics method {method!r}; use one of {', '.join(METHODS)}.")
    root = resolve_data_dir(root)
    scan_table = list_scans(root)
    if scan_table.empty:
        raise DatasetError(
            f"No scans found under {root}/subset*/ (no .mhd files). Extract the LUNA16 subsets "
            "there, or point LUNA16_DIR at the folder that contains them."
        )

    fingerprint = stats_cache.fingerprint(root, scan_table, histograms.HU_BIN_EDGES)
    if use_cache:
        cached = stats_cache.load(root, fingerprint)
        if cached is not None:
            scans, per_scan, counts, edges = cached
            logger.info("Read the statistics of %d scans from the cache", len(scans))
            return DatasetStatistics(scans[COLUMNS], per_scan, counts, edges, method=method, from_cache=True)

    if method == "loop":
        result = run_loop(scan_table)
    elif method == "processes":
        if max_workers is None:
            from luna_utils.cluster import largest_scan_bytes, plan_cluster

            max_workers = plan_cluster(largest_scan_bytes(scan_table)).n_workers
        result = run_processes(scan_table, max_workers)
    else:
        result = _run_dask_with_client(scan_table, root, client)

    logger.info("Computed the statistics of %d scans with %s in %.1f s", len(scan_table), method, result.seconds)
    if use_cache:
        stats_cache.save(root, fingerprint, result.scans, result.histograms, result.value_counts, result.bin_edges)
    return result


def _run_dask_with_client(scan_table: pd.DataFrame, root: Path, client) -> DatasetStatistics:
    if client is not None:
        return run_dask(scan_table, client)

    from luna_utils.cluster import start_client

    own_client = start_client(root)
    try:
        return run_dask(scan_table, own_client)
    finally:
        own_client.close()
