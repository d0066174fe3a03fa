"""Tests for the dataset statistics: values against NumPy, three methods alike, Dask workers, cache."""

import os
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from distributed import LocalCluster

from luna_utils import cluster, histograms, stats, stats_cache
from luna_utils.dataset import list_scans
from luna_utils.errors import DatasetError, MhdError

# Three tiny scans: (subset, seriesuid, shape (z, y, x), spacing (x, y, z) mm, direction diagonal).
SCANS = [
    (0, "1.2.840.1", (5, 12, 10), (0.7, 0.7, 2.5), (1.0, 1.0, 1.0)),
    (0, "1.2.840.2", (9, 8, 8), (0.6, 0.6, 1.25), (-1.0, -1.0, 1.0)),
    (3, "1.2.840.3", (4, 10, 6), (0.9, 0.8, 1.0), (1.0, 1.0, 1.0)),
]


def _volume(seed: int, shape) -> np.ndarray:
    rng = np.random.default_rng(seed)
    volume = rng.integers(-1024, 1800, size=shape).astype(np.int16)
    # Padding outside the field of view, and values outside the 10 HU bins.
    volume[:, 0, :] = -3024 if seed % 2 == 0 else -2000
    volume[0, -1, -1] = -3500
    volume[-1, -1, -1] = 3200
    return volume


def _write_scan(root: Path, subset: int, seriesuid: str, volume: np.ndarray, spacing, diagonal) -> Path:
    folder = root / f"subset{subset}"
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing(spacing)
    image.SetOrigin((-150.0, -160.0, -300.0))
    image.SetDirection(tuple(np.diag(diagonal).reshape(-1).astype(float)))
    path = folder / f"{seriesuid}.mhd"
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture
def dataset(tmp_path, monkeypatch):
    """A dataset of three scans, with its cache under tmp_path; returns (root, volumes by uid)."""
    monkeypatch.setenv("LUNA16_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.delenv(cluster.ENV_SCHEDULER, raising=False)
    root = tmp_path / "luna"
    volumes = {}
    for seed, (subset, uid, shape, spacing, diagonal) in enumerate(SCANS):
        volumes[uid] = _volume(seed, shape)
        _write_scan(root, subset, uid, volumes[uid], spacing, diagonal)
    return root, volumes


@pytest.fixture(scope="module")
def small_client():
    """Two single-threaded workers in this process, sized like the real plan."""
    plan = cluster.plan_cluster(largest_scan_bytes=9 * 8 * 8 * 2, total_memory_bytes=8 * cluster.GIB, cores=2)
    client = cluster.start_client(plan=plan, processes=False, dashboard_address=":0")
    yield client
    client.close()


def test_scan_statistics_match_numpy(dataset):
    root, volumes = dataset
    volume = volumes["1.2.840.2"]

    result = stats.scan_statistics(root / "subset0" / "1.2.840.2.mhd", subset=0)
    row = result.row

    assert row["seriesuid"] == "1.2.840.2"
    assert (row["size_x"], row["size_y"], row["n_slices"]) == (8, 8, 9)
    assert row["spacing_z_mm"] == pytest.approx(1.25)
    assert (row["direction_xx"], row["direction_yy"], row["direction_zz"]) == (-1.0, -1.0, 1.0)
    assert row["axis_aligned"] is True
    assert row["data_bytes"] == volume.size * 2
    assert row["n_voxels"] == volume.size
    assert row["min_hu"] == -3500
    assert row["max_hu"] == 3200
    assert row["mode_hu"] == -2000
    assert row["n_padding"] == int((volume < -1100).sum())
    assert row["n_below_range"] == 1
    assert row["n_above_range"] == 1
    assert row["mean_hu"] == pytest.approx(volume.mean(dtype=np.float64), rel=1e-12)
    assert row["std_hu"] == pytest.approx(volume.std(dtype=np.float64), rel=1e-12)
    for percentile in histograms.PERCENTILES:
        assert row[f"p{percentile}_hu"] == pytest.approx(np.percentile(volume, percentile), rel=1e-12)
    expected_histogram, _ = np.histogram(volume[(volume >= -3100) & (volume < 3100)], bins=histograms.HU_BIN_EDGES)
    np.testing.assert_array_equal(result.histogram, expected_histogram)
    assert set(row) == set(stats.COLUMNS)


def test_scan_statistics_never_copies_volume(tmp_path):
    volume = np.zeros((256, 128, 128), dtype=np.int16)
    path = _write_scan(tmp_path, 0, "1.2.9", volume, (1.0, 1.0, 1.0), (1.0, 1.0, 1.0))

    tracemalloc.start()
    stats.scan_statistics(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    # NumPy allocations only: a copy of the 8 MiB volume (or a float version) would exceed this.
    assert peak < volume.nbytes


def test_loop_matches_numpy_over_dataset(dataset):
    root, volumes = dataset

    result = stats.compute_statistics(root, method="loop", use_cache=False)

    assert result.scans["seriesuid"].tolist() == ["1.2.840.1", "1.2.840.2", "1.2.840.3"]
    assert result.scans["subset"].tolist() == [0, 0, 3]
    assert result.histograms.shape == (3, len(histograms.HU_BIN_EDGES) - 1)
    every_voxel = np.concatenate([volume.ravel() for volume in volumes.values()])
    summary = result.summary()
    assert summary.n_voxels == every_voxel.size
    assert summary.min_hu == -3500
    assert summary.max_hu == 3200
    assert summary.mean_hu == pytest.approx(every_voxel.mean(dtype=np.float64), rel=1e-12)
    assert summary.std_hu == pytest.approx(every_voxel.std(dtype=np.float64), rel=1e-12)
    for percentile, value in summary.percentiles_hu.items():
        assert value == pytest.approx(np.percentile(every_voxel, percentile), rel=1e-12)
    assert result.histogram().sum() == every_voxel.size - 6  # two values per scan lie outside the bins
    assert result.method == "loop"
    assert not result.from_cache


def test_dask_matches_loop_one_scan_per_worker(dataset, small_client):
    root, volumes = dataset
    small_client.register_plugin(cluster.TaskConcurrencyPlugin())

    with_dask = stats.compute_statistics(root, method="dask", client=small_client, use_cache=False)
    with_loop = stats.compute_statistics(root, method="loop", use_cache=False)

    every_voxel = np.concatenate([volume.ravel() for volume in volumes.values()])
    summary = with_dask.summary()
    assert summary.n_voxels == every_voxel.size
    assert (summary.min_hu, summary.max_hu) == (every_voxel.min(), every_voxel.max())
    assert summary.mean_hu == pytest.approx(every_voxel.mean(dtype=np.float64), rel=1e-12)
    assert summary.percentiles_hu[50] == pytest.approx(np.median(every_voxel), rel=1e-12)
    assert with_dask.scans["n_voxels"].tolist() == [volume.size for volume in volumes.values()]
    assert with_dask.same_as(with_loop)
    pd.testing.assert_frame_equal(with_dask.scans, with_loop.scans, check_exact=True)
    concurrency = cluster.peak_concurrency(small_client)
    assert len(concurrency) == 2
    assert all(worker["peak"] == 1 for worker in concurrency.values())
    # 3 reads, 3 summaries, 3 value-count extractions and 1 sum.
    assert sum(worker["tasks"] for worker in concurrency.values()) == 10


def test_small_client_follows_plan(small_client):
    workers = small_client.scheduler_info(n_workers=-1)["workers"].values()

    assert [worker["nthreads"] for worker in workers] == [1, 1]
    assert "2 worker(s), threads per worker [1]" in cluster.describe_client(small_client)


def test_local_cluster_arguments_from_plan():
    plan = cluster.plan_cluster(400 * cluster.MIB, total_memory_bytes=16 * cluster.GIB, cores=4)

    worker_processes = cluster.local_cluster_arguments(plan)
    in_process = cluster.local_cluster_arguments(plan, processes=False)

    assert worker_processes["n_workers"] == 4
    assert worker_processes["threads_per_worker"] == 1
    assert worker_processes["memory_limit"] == plan.memory_per_worker_bytes
    assert worker_processes["memory_limit"] >= 2.5 * 400 * cluster.MIB
    assert worker_processes["host"] == "127.0.0.1"
    assert worker_processes["dashboard_address"].startswith("127.0.0.1:")
    # Threads share this process's memory, so a per-worker limit would pause them spuriously.
    assert in_process["memory_limit"] == 0


def test_processes_match_loop(dataset):
    root, _ = dataset

    with_processes = stats.compute_statistics(root, method="processes", max_workers=2, use_cache=False)
    with_loop = stats.compute_statistics(root, method="loop", use_cache=False)

    assert with_processes.same_as(with_loop)
    assert with_processes.method == "processes"


def test_existing_scheduler_from_environment(dataset, monkeypatch):
    root, _ = dataset
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as existing:
        monkeypatch.setenv(cluster.ENV_SCHEDULER, existing.scheduler_address)

        client = cluster.start_client(root)
        try:
            assert client.scheduler.address == existing.scheduler_address
            result = stats.compute_statistics(root, method="dask", client=client, use_cache=False)
        finally:
            client.close()

    assert result.same_as(stats.compute_statistics(root, method="loop", use_cache=False))


def test_scheduler_address_order(monkeypatch):
    monkeypatch.delenv(cluster.ENV_SCHEDULER, raising=False)
    assert cluster.scheduler_address() is None
    monkeypatch.setenv(cluster.ENV_SCHEDULER, "tcp://127.0.0.1:8786")
    assert cluster.scheduler_address() == "tcp://127.0.0.1:8786"
    assert cluster.scheduler_address("tcp://127.0.0.1:9999") == "tcp://127.0.0.1:9999"


def test_cache_is_reused_then_invalidated(dataset):
    root, volumes = dataset
    first = stats.compute_statistics(root, method="loop")

    second = stats.compute_statistics(root, method="loop")
    assert second.from_cache
    assert second.same_as(first)

    # Rewrite one scan with other values: its size stays, its modification time changes.
    changed = volumes["1.2.840.3"].copy()
    changed[0, 0, 0] = 3000
    path = _write_scan(root, 3, "1.2.840.3", changed, SCANS[2][3], SCANS[2][4])
    raw = path.with_suffix(".raw")
    os.utime(raw, ns=(raw.stat().st_atime_ns, raw.stat().st_mtime_ns + 10**9))

    third = stats.compute_statistics(root, method="loop")
    assert not third.from_cache
    assert third.scans.loc[2, "max_hu"] == 3200
    assert third.value_counts[3000 + histograms.VALUE_OFFSET] == first.value_counts[3000 + histograms.VALUE_OFFSET] + 1


def test_cache_invalidated_by_new_scan(dataset):
    root, _ = dataset
    stats.compute_statistics(root, method="loop")

    _write_scan(root, 5, "1.2.840.4", _volume(9, (3, 4, 4)), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0))
    result = stats.compute_statistics(root, method="loop")

    assert not result.from_cache
    assert len(result.scans) == 4


def test_cache_ignored_when_damaged(dataset):
    root, _ = dataset
    first = stats.compute_statistics(root, method="loop")
    folder = stats_cache.cache_dir(root)
    np.save(folder / "histograms.npy", np.zeros((2, 5), dtype=np.int64))

    result = stats.compute_statistics(root, method="loop")

    assert not result.from_cache
    assert result.same_as(first)
    assert stats.compute_statistics(root, method="loop").from_cache


def test_cache_round_trip_is_exact(dataset):
    root, _ = dataset
    first = stats.compute_statistics(root, method="loop")

    cached = stats.compute_statistics(root, method="loop")

    pd.testing.assert_frame_equal(cached.scans, first.scans, check_exact=True)
    assert sorted(path.name for path in stats_cache.cache_dir(root).iterdir()) == [
        "bin_edges.npy", "cache.json", "histograms.npy", "scans.csv", "value_counts.npy",
    ]


def test_no_cache_written_when_disabled(dataset):
    root, _ = dataset

    stats.compute_statistics(root, method="loop", use_cache=False)

    assert not (stats_cache.cache_dir(root) / stats_cache.MANIFEST).exists()


def test_errors_name_the_problem(dataset, tmp_path):
    root, _ = dataset
    with pytest.raises(DatasetError, match="Unknown statistics method 'spark'"):
        stats.compute_statistics(root, method="spark")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="No scans found"):
        stats.compute_statistics(empty, method="loop")

    raw = root / "subset0" / "1.2.840.1.raw"
    raw.write_bytes(raw.read_bytes()[:100])
    with pytest.raises(MhdError, match="1.2.840.1.raw is truncated"):
        stats.compute_statistics(root, method="loop", use_cache=False)


def test_float_scan_is_rejected(tmp_path):
    path = _write_scan(tmp_path, 0, "1.2.5", np.zeros((2, 3, 3), dtype=np.float32), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0))

    with pytest.raises(MhdError, match="1.2.5.mhd: value_counts needs integer"):
        stats.scan_statistics(path)


def test_graph_has_one_read_per_scan_and_a_tree(dataset):
    root, _ = dataset
    scan_table = list_scans(root)

    summaries, total = stats.statistics_graph(scan_table, fan_in=2)
    text = stats.graph_text([*summaries, total])
    lines = text.splitlines()

    assert len(summaries) == 3
    assert sum(line.startswith("scan-statistics-") for line in lines) == 3
    assert sum(line.startswith("sum-value-counts-") for line in lines) == 3  # 3 -> 2 -> 1
    assert lines[0].startswith("scan-statistics-")
    assert "= scan_statistics(file on disk)" in lines[0]
    assert lines[-1].startswith("sum-value-counts-1-0-")
    with pytest.raises(Exception, match="fan_in >= 2"):
        stats.statistics_graph(scan_table, fan_in=1)


def test_graph_single_scan(dataset):
    root, _ = dataset
    summaries, total = stats.statistics_graph(list_scans(root).head(1))

    assert total.key.startswith("sum-value-counts-0-0-")
    assert stats.graph_text([*summaries, total]).count("\n") == 3


def test_plan_cluster_arithmetic():
    scan_bytes = 512 * 512 * 764 * 2
    plan = cluster.plan_cluster(scan_bytes, total_memory_bytes=16 * cluster.GIB, cores=8)

    assert plan.memory_per_worker_bytes == int(cluster.WORKER_BASE_BYTES + 2.5 * scan_bytes)
    assert plan.memory_per_worker_bytes >= 2.5 * scan_bytes
    assert plan.n_workers == int(0.8 * 16 * cluster.GIB) // plan.memory_per_worker_bytes
    assert plan.threads_per_worker == 1
    assert cluster.plan_cluster(1000, total_memory_bytes=64 * cluster.GIB, cores=4).n_workers == 4


def test_plan_cluster_keeps_one_worker_when_memory_is_short(caplog):
    plan = cluster.plan_cluster(4 * cluster.GIB, total_memory_bytes=2 * cluster.GIB, cores=8)

    assert plan.n_workers == 1
    assert "may run out of memory" in caplog.text


def test_largest_scan_from_headers(dataset):
    root, _ = dataset

    assert cluster.largest_scan_bytes(list_scans(root)) == 12 * 10 * 5 * 2
    with pytest.raises(DatasetError, match="empty"):
        cluster.largest_scan_bytes(list_scans(root / "missing"))


def test_dashboard_text_hides_host(small_client):
    text = cluster.dashboard_text(small_client)

    assert text.startswith("Dask dashboard:")
    assert "127.0.0.1" not in text
    assert "tcp://" not in text


def test_memory_summary_of_real_table():
    from luna_utils.dataset import load_real_table

    summary = cluster.memory_summary(load_real_table("luna16_scans_metadata"))

    assert summary["scans"] == 888
    assert summary["largest shape (z, y, x)"] == (764, 512, 512)
    assert summary["largest as int16 (MiB)"] == 382.0
    assert summary["largest as float32 (MiB)"] == 764.0
    assert summary["all scans as float32 (GiB)"] == pytest.approx(2 * summary["all scans as int16 (GiB)"], abs=0.1)
