"""A Dask client sized for CT scans: a local cluster by default, an existing cluster on request.

The dataset-wide statistics run one scan per task. A task reads one whole scan, so a worker must
have room for the largest scan with some margin, and it must run one task at a time. The local
cluster is therefore planned from the scan headers:

* memory per worker = `WORKER_BASE_BYTES` + `SCAN_MEMORY_FACTOR` x the largest scan (uncompressed);
* workers = min(cores, `MEMORY_FRACTION` x machine memory // memory per worker), at least one;
* one thread per worker, so a worker never has two scans in memory at once.

To run the same code on a cluster that already exists (for example one started with
`dask scheduler` and `dask worker` on other machines), pass its address or set the environment
variable `LUNA16_DASK_SCHEDULER` to it, such as `tcp://scheduler-host:8786`. Its workers need
`luna_utils` installed and must see the dataset at the same path.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd
from distributed import Client, WorkerPlugin

from luna_utils import mhd
from luna_utils.dataset import list_scans
from luna_utils.errors import DatasetError

logger = logging.getLogger(__name__)

ENV_SCHEDULER = "LUNA16_DASK_SCHEDULER"

# A task keeps one copy of the scan as read. The rest of the factor covers the per-slice
# temporaries and freed pages that the allocator has not yet returned to the system.
SCAN_MEMORY_FACTOR = 2.5

# Estimated resident memory of an idle worker process with NumPy, SimpleITK, pandas and Dask
# imported (about 190 MB for the imports alone, measured on Linux with Python 3.11).
WORKER_BASE_BYTES = 512 * 2**20

# Share of the machine's memory given to workers; the rest is left to the notebook, the scheduler
# and the operating system.
MEMORY_FRACTION = 0.8

MIB = 2**20
GIB = 2**30


@dataclass(frozen=True)
class ClusterPlan:
    """Size of a local Dask cluster for processing one scan per task.

    Attributes:
        n_workers: Number of worker processes.
        threads_per_worker: Always 1: each worker runs one scan task at a time.
        memory_per_worker_bytes: Memory limit of each worker, bytes.
        largest_scan_bytes: Uncompressed size of the largest scan, bytes.
        total_memory_bytes: Memory of the machine the plan is for, bytes.
        cores: CPU cores of that machine.
    """

    n_workers: int
    threads_per_worker: int
    memory_per_worker_bytes: int
    largest_scan_bytes: int
    total_memory_bytes: int
    cores: int

    def describe(self) -> str:
        """Return a one-line summary with the sizes in MiB/GiB."""
        return (
            f"{self.n_workers} worker(s) x {self.threads_per_worker} thread, "
            f"{self.memory_per_worker_bytes / MIB:,.0f} MiB each "
            f"(largest scan {self.largest_scan_bytes / MIB:,.1f} MiB; machine: {self.cores} cores, "
            f"{self.total_memory_bytes / GIB:,.1f} GiB)"
        )


def largest_scan_bytes(scan_table: pd.DataFrame) -> int:
    """Return the uncompressed voxel size in bytes of the largest scan, read from the headers only.

    Args:
        scan_table: Scans as `luna_utils.dataset.list_scans` returns them (column mhd_path).

    Raises:
        DatasetError: If the table is empty.
    """
    if scan_table.empty:
        raise DatasetError("No scans to size the cluster for: the scan table is empty.")
    return int(max(mhd.read_header(path).expected_data_bytes for path in scan_table["mhd_path"]))


def memory_summary(metadata: pd.DataFrame) -> pd.Series:
    """Summarize how much memory a set of scans needs, from per-scan sizes alone.

    Args:
        metadata: One row per scan with columns dim_x, dim_y and n_slices, such as
            `load_real_table("luna16_scans_metadata")`.

    Returns:
        A Series: number of scans, total voxels, the whole set in GiB as int16 and as float32,
        and the largest scan's seriesuid, shape (z, y, x) and MiB as int16 and float32.
    """
    voxels = metadata["dim_x"].astype(np.int64) * metadata["dim_y"].astype(np.int64) * metadata["n_slices"].astype(np.int64)
    largest = metadata.loc[voxels.idxmax()]
    return pd.Series(
        {
            "scans": len(metadata),
            "voxels (billions)": round(voxels.sum() / 1e9, 2),
            "all scans as int16 (GiB)": round(voxels.sum() * 2 / GIB, 1),
            "all scans as float32 (GiB)": round(voxels.sum() * 4 / GIB, 1),
            "largest scan": str(largest.get("seriesuid", voxels.idxmax())),
            "largest shape (z, y, x)": (int(largest["n_slices"]), int(largest["dim_y"]), int(largest["dim_x"])),
            "largest as int16 (MiB)": round(voxels.max() * 2 / MIB, 1),
            "largest as float32 (MiB)": round(voxels.max() * 4 / MIB, 1),
        }
    )


def plan_cluster(
    largest_scan_bytes: int,
    total_memory_bytes: int | None = None,
    cores: int | None = None,
) -> ClusterPlan:
    """Plan a local cluster where every worker has room for the largest scan.

    Args:
        largest_scan_bytes: Uncompressed size of the largest scan, bytes.
        total_memory_bytes: Machine memory; None queries Dask (which respects container limits).
        cores: CPU cores; None queries Dask (which respects CPU affinity and container limits).

    Returns:
        The plan. When even one worker does not fit, the plan still has one worker and a
        warning is logged.
    """
    from dask.system import CPU_COUNT
    from distributed.system import MEMORY_LIMIT

    total_memory_bytes = int(MEMORY_LIMIT if total_memory_bytes is None else total_memory_bytes)
    cores = int(CPU_COUNT if cores is None else cores)
    per_worker = int(WORKER_BASE_BYTES + SCAN_MEMORY_FACTOR * largest_scan_bytes)

    fitting = int(MEMORY_FRACTION * total_memory_bytes) // per_worker
    if fitting < 1:
        logger.warning(
            "One worker needs %.0f MiB for the largest scan (%.0f MiB), but only %.0f MiB are "
            "available to workers; starting one worker anyway, which may run out of memory.",
            per_worker / MIB, largest_scan_bytes / MIB, MEMORY_FRACTION * total_memory_bytes / MIB,
        )
    return ClusterPlan(
        n_workers=max(1, min(cores, fitting)),
        threads_per_worker=1,
        memory_per_worker_bytes=per_worker,
        largest_scan_bytes=int(largest_scan_bytes),
        total_memory_bytes=total_memory_bytes,
        cores=cores,
    )


def scheduler_address(address: str | None = None) -> str | None:
    """Return the scheduler to connect to: the argument, else `LUNA16_DASK_SCHEDULER`, else None."""
    return address or os.environ.get(ENV_SCHEDULER) or None


def local_cluster_arguments(plan: ClusterPlan, processes: bool = True, dashboard_address: str = "127.0.0.1:8787") -> dict:
    """Return the `distributed.LocalCluster` keyword arguments that realise a plan.

    Worker processes get the plan's memory limit. Workers run as threads of this process
    (processes=False) share its memory, and Dask would compare the whole process's memory with
    each worker's limit and pause them, so they get no limit (0).
    """
    return {
        "n_workers": plan.n_workers,
        "threads_per_worker": plan.threads_per_worker,
        "memory_limit": plan.memory_per_worker_bytes if processes else 0,
        "processes": processes,
        "host": "127.0.0.1" if processes else None,
        "dashboard_address": dashboard_address,
    }


def start_client(
    root: str | Path | None = None,
    *,
    address: str | None = None,
    plan: ClusterPlan | None = None,
    processes: bool = True,
    dashboard_address: str = "127.0.0.1:8787",
) -> Client:
    """Connect to an existing Dask cluster, or start a local one sized for the dataset's scans.

    Closing the returned client (`client.close()`) also shuts down a local cluster it started.

    Args:
        root: Dataset folder, used to size the local cluster from the scan headers; None uses
            the dataset `luna_utils.dataset.resolve_data_dir` picks.
        address: Scheduler address of an existing cluster. None falls back to
            `LUNA16_DASK_SCHEDULER`, and without it a local cluster is started.
        plan: Size of the local cluster; None plans it with `plan_cluster`.
        processes: Run local workers as separate processes (True) or as threads of this process
            (False, quicker to start, without memory limits; used by the tests).
        dashboard_address: Where the local dashboard listens; the default keeps it on this machine.
            If the port is taken, Dask picks a free one.

    Returns:
        A connected `distributed.Client`.
    """
    existing = scheduler_address(address)
    if existing is not None:
        logger.info("Connecting to the Dask scheduler at %s", existing)
        return Client(existing)

    if plan is None:
        from luna_utils.dataset import resolve_data_dir

        plan = plan_cluster(largest_scan_bytes(list_scans(resolve_data_dir(root))))
    logger.info("Starting a local Dask cluster: %s", plan.describe())
    return Client(**local_cluster_arguments(plan, processes, dashboard_address))


def dashboard_text(client: Client) -> str:
    """Describe where the Dask dashboard is, without the host name or address.

    The dashboard needs the `bokeh` package. Without it, the returned text explains that it is
    not available.
    """
    link = client.dashboard_link
    port = urlparse(link).port if link else None
    if importlib.util.find_spec("bokeh") is None:
        from distributed.versions import BOKEH_REQUIREMENT

        return (
            "Dask dashboard: not available, because the bokeh package is not installed "
            f"(pip install '{BOKEH_REQUIREMENT}'); progress is shown below instead."
        )
    if port is None:
        return "Dask dashboard: not started for this cluster."
    return f"Dask dashboard: port {port}, path /status (on the machine running the scheduler)."


def describe_client(client: Client) -> str:
    """Return a one-line summary of the connected cluster: workers, threads and memory limits."""
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    memory = sorted({worker["memory_limit"] for worker in workers})
    threads = sorted({worker["nthreads"] for worker in workers})
    memory_text = ", ".join(f"{value / MIB:,.0f} MiB" for value in memory) or "none"
    return f"{len(workers)} worker(s), threads per worker {threads}, memory limit per worker {memory_text}"


class TaskConcurrencyPlugin(WorkerPlugin):
    """Record the largest number of tasks each worker ran at the same time.

    Register it with `client.register_plugin(TaskConcurrencyPlugin())` and read it back with
    `peak_concurrency(client)`. With one thread per worker the peak is 1.
    """

    name = "luna-task-concurrency"

    def setup(self, worker) -> None:
        self.executing = 0
        self.peak = 0
        self.tasks = 0

    def transition(self, key, start, finish, **kwargs) -> None:
        if finish == "executing":
            self.executing += 1
            self.tasks += 1
            self.peak = max(self.peak, self.executing)
        elif start == "executing":
            self.executing -= 1


def _read_concurrency(dask_worker) -> dict[str, int]:
    plugin = dask_worker.plugins.get(TaskConcurrencyPlugin.name)
    if plugin is None:
        return {"peak": -1, "tasks": 0}
    return {"peak": plugin.peak, "tasks": plugin.tasks}


def peak_concurrency(client: Client) -> dict[str, dict[str, int]]:
    """Return, per worker address, the peak number of concurrent tasks and the tasks run.

    A peak of -1 means `TaskConcurrencyPlugin` was not registered on that worker.
    """
    return client.run(_read_concurrency)


def _peak_rss_bytes() -> int:
    import resource

    # ru_maxrss is in kilobytes on Linux and in bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if os.uname().sysname == "Darwin" else peak * 1024)


def worker_peak_memory(client: Client) -> dict[str, int]:
    """Return the peak resident memory (bytes) of each worker's process so far.

    Workers started with processes=False share this process, so they all report its peak.
    """
    return client.run(_peak_rss_bytes)
