"""Benchmark: dataset HU statistics with Dask, a process pool and a loop, against the usual approach.

Four ways to get the dataset's HU mean, standard deviation and percentiles, each run in a fresh
Python process so its peak memory is its own:

* `concatenate` (the usual approach): read every scan, concatenate all voxels into one array,
  then `np.mean`, `np.std` and `np.percentile`. Its memory grows with the dataset.
* `loop`: `luna_utils.stats` in a single-process loop (exact value counts, one scan at a time).
* `processes`: the same in a `ProcessPoolExecutor`.
* `dask`: the same on a local Dask cluster (`luna_utils.cluster.start_client`), worker processes.

For each: wall time with and without the Dask cluster's start-up (a process pool's start-up is
always included), and the peak resident memory
(ru_maxrss) of the main process and of its worker processes. An `imports` run records the peak of a
process that only imports the libraries, the floor under every other number. The script also checks
that all four give the same dataset mean and percentiles.

Run: `python benchmarks/bench_stats.py [--data DIR] [--workers N]` (about a minute on the sample
with 2 cores). It prints a Markdown table with ratios against the loop and `concatenate`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

METHODS = ("imports", "concatenate", "loop", "processes", "dask")
MIB = 2**20


def _peak_rss_bytes(processes: int = resource.RUSAGE_SELF) -> int:
    # ru_maxrss is in kilobytes on Linux and in bytes on macOS.
    peak = resource.getrusage(processes).ru_maxrss
    return int(peak if platform.system() == "Darwin" else peak * 1024)


def run_child(method: str, root: Path, workers: int) -> dict:
    """Run one method in this process and return its timings, peaks and dataset summary."""
    import numpy as np

    from luna_utils import cluster, histograms, mhd, stats
    from luna_utils.dataset import list_scans

    scans = list_scans(root)
    start = time.perf_counter()
    worker_peaks: list[int] = []
    summary: dict = {}
    work_seconds = None

    if method == "concatenate":
        voxels = np.concatenate([mhd.read_scan(path).array.ravel() for path in scans["mhd_path"]])
        summary = {
            "mean_hu": float(voxels.mean(dtype=np.float64)),
            "std_hu": float(voxels.std(dtype=np.float64)),
            **{f"p{p}_hu": float(v) for p, v in zip(histograms.PERCENTILES, np.percentile(voxels, histograms.PERCENTILES))},
        }
    elif method in ("loop", "processes"):
        result = stats.compute_statistics(root, method=method, max_workers=workers, use_cache=False)
        summary = result.summary().as_row()
        work_seconds = result.seconds
    elif method == "dask":
        plan = cluster.plan_cluster(cluster.largest_scan_bytes(scans))
        plan = cluster.ClusterPlan(**{**plan.__dict__, "n_workers": workers})
        client = cluster.start_client(root, plan=plan, dashboard_address=":0")
        try:
            result = stats.compute_statistics(root, method="dask", client=client, use_cache=False)
            worker_peaks = list(cluster.worker_peak_memory(client).values())
        finally:
            client.close()
        summary = result.summary().as_row()
        work_seconds = result.seconds

    seconds = time.perf_counter() - start
    if worker_peaks:
        worker_peak = max(worker_peaks)
    elif method == "processes":
        # The largest peak among the pool's processes, which have all exited by now.
        worker_peak = _peak_rss_bytes(resource.RUSAGE_CHILDREN)
    else:
        worker_peak = 0
    return {
        "method": method,
        "seconds": seconds,
        "work_seconds": seconds if work_seconds is None else work_seconds,
        "main_peak_bytes": _peak_rss_bytes(),
        "worker_peak_bytes": worker_peak,
        "summary": {key: summary[key] for key in ("mean_hu", "std_hu", "p1_hu", "p50_hu", "p99_hu")} if summary else {},
    }


def run_in_subprocess(method: str, root: Path, workers: int) -> dict:
    environment = {**os.environ, "LUNA_UTILS_PLAIN_PROGRESS": "1"}
    command = [sys.executable, __file__, "--child", method, "--data", str(root), "--workers", str(workers)]
    completed = subprocess.run(command, capture_output=True, text=True, env=environment, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"The {method} run failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="dataset folder (default: the synthetic sample)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes for processes and dask (default 2)")
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        if args.child == "imports":
            import distributed  # noqa: F401
            import numpy  # noqa: F401
            import SimpleITK  # noqa: F401

            from luna_utils import stats  # noqa: F401

            print(json.dumps({"method": "imports", "seconds": 0.0, "work_seconds": 0.0, "main_peak_bytes": _peak_rss_bytes(), "worker_peak_bytes": 0, "summary": {}}))
        else:
            print(json.dumps(run_child(args.child, args.data, args.workers)))
        return 0

    from luna_utils.dataset import display_path, list_scans, resolve_data_dir
    from luna_utils.mhd import read_header

    root = resolve_data_dir(args.data)
    scans = list_scans(root)
    total_bytes = sum(read_header(path).expected_data_bytes for path in scans["mhd_path"])
    largest_bytes = max(read_header(path).expected_data_bytes for path in scans["mhd_path"])
    print(f"Data: {display_path(root)}, {len(scans)} scans, {total_bytes / MIB:.0f} MiB as int16 (largest {largest_bytes / MIB:.1f} MiB)")
    print(f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}, {args.workers} workers\n")

    results = {method: run_in_subprocess(method, root, args.workers) for method in METHODS}

    reference = results["concatenate"]["summary"]
    for method in ("loop", "processes", "dask"):
        for key, value in reference.items():
            got = results[method]["summary"][key]
            if abs(got - value) > 1e-9 * max(1.0, abs(value)):
                raise RuntimeError(f"{method} gives {key} = {got}, the usual approach {value}.")

    loop, usual = results["loop"], results["concatenate"]
    print("| method | total time (s) | without cluster start (s) | total time vs loop | main process peak (MiB) | worker peak (MiB) | main peak vs concatenate |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for method in METHODS:
        row = results[method]
        workers = f"{row['worker_peak_bytes'] / MIB:.0f}" if row["worker_peak_bytes"] else "-"
        time_ratio = f"{row['seconds'] / loop['seconds']:.2f}" if method != "imports" else "-"
        print(
            f"| {method} | {row['seconds']:.2f} | {row['work_seconds']:.2f} | {time_ratio} | {row['main_peak_bytes'] / MIB:.0f} | {workers} | "
            f"{row['main_peak_bytes'] / usual['main_peak_bytes']:.2f} |"
        )
    print("\nAll methods agree on the dataset mean, standard deviation and percentiles.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
