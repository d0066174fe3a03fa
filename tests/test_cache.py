"""Tests for luna_utils.cache: preprocessing, atomic and resumable writes, invalidation, Dask runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from luna_utils import cache
from luna_utils.errors import DatasetError, LunaError
from luna_utils.mhd import read_scan
from luna_utils.resample import resample_scan

FLIPPED = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def make_phantom(shape_zyx=(20, 48, 48), lung_center_x=(14, 34)) -> np.ndarray:
    """A body of soft tissue in air with two box-shaped lungs off the centre of the volume."""
    array = np.full(shape_zyx, -1000, dtype=np.int16)
    array[:, 4:44, 3:45] = 40
    for x in lung_center_x:
        array[3:15, 10:30, x - 6 : x + 6] = -850
    return array


def write_scan(path: Path, array: np.ndarray, direction=IDENTITY, spacing=(0.8, 0.8, 2.0),
               origin=(-20.0, 30.0, -150.0)) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture()
def dataset(tmp_path):
    """Three scans in subset0 and subset1, one of them flipped diag(-1, -1, 1)."""
    root = tmp_path / "data"
    write_scan(root / "subset0" / "1.1.mhd", make_phantom())
    write_scan(root / "subset0" / "1.2.mhd", make_phantom(), direction=FLIPPED)
    write_scan(root / "subset1" / "1.3.mhd", make_phantom((16, 40, 40), (12, 28)))
    return root


@pytest.fixture()
def cache_dir(tmp_path):
    return tmp_path / "cache"


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_build_cache_writes_entries(dataset, cache_dir):
    table = cache.build_cache(dataset, cache_dir, scheduler="sync")
    assert table["seriesuid"].tolist() == ["1.1", "1.2", "1.3"]
    assert table["subset"].tolist() == [0, 0, 1]
    assert table["status"].tolist() == ["built"] * 3
    assert table["error"].tolist() == [""] * 3
    for row in table.itertuples():
        assert row.path == cache_dir / f"{row.seriesuid}.npy"
        assert row.path.is_file()
        assert cache.entry_state(cache_dir, row.seriesuid, cache.PreprocessParams()) == "complete"
    assert sorted(p.name for p in cache_dir.iterdir() if p.name.startswith(".")) == []


def test_cached_volume_matches_resampled_scan(dataset, cache_dir):
    cache.build_cache(dataset, cache_dir, scheduler="sync")
    entry = cache.open_cached_scan(cache_dir, "1.2")
    full = resample_scan(read_scan(dataset / "subset0" / "1.2.mhd"), 1.0)

    z, y, x = entry.crop_offset_zyx
    dz, dy, dx = entry.shape_zyx
    assert isinstance(entry.volume, np.memmap)
    assert entry.volume.dtype == np.int16
    assert entry.lung_mask is not None
    assert entry.lung_mask.dtype == np.uint8
    assert entry.lung_mask.shape == entry.volume.shape
    np.testing.assert_array_equal(entry.volume, full.array[z : z + dz, y : y + dy, x : x + dx])
    np.testing.assert_array_equal(entry.volume, full.array[entry.crop_slices])
    assert entry.full_grid.shape_zyx == full.shape_zyx
    assert entry.full_grid.origin_xyz_mm == pytest.approx(full.origin_xyz_mm)
    assert entry.origin_xyz_mm == pytest.approx(full.origin_xyz_mm)
    assert entry.spacing_xyz_mm == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(entry.direction, np.diag([-1.0, -1.0, 1.0]))
    assert entry.full_shape_zyx == full.shape_zyx


def test_crop_keeps_lungs_and_margin(dataset, cache_dir):
    cache.build_cache(dataset, cache_dir, scheduler="sync", margin_mm=3.0)
    entry = cache.open_cached_scan(cache_dir, "1.1")
    full = resample_scan(read_scan(dataset / "subset0" / "1.1.mhd"), 1.0)
    # The lung boxes span x 8..39 of 48 at 0.8 mm: the crop is smaller than the full grid.
    assert np.prod(entry.shape_zyx) < np.prod(full.shape_zyx)
    assert any(offset > 0 for offset in entry.crop_offset_zyx)
    # All lung voxels of the full grid lie inside the crop.
    lung_voxels = np.argwhere(full.array == -850)
    local = lung_voxels - np.asarray(entry.crop_offset_zyx)
    assert np.all(local >= 0)
    assert np.all(local < np.asarray(entry.shape_zyx))


def test_sidecar_holds_geometry_and_params(dataset, cache_dir):
    cache.build_cache(dataset, cache_dir, scheduler="sync")
    sidecar = json.loads((cache_dir / "1.2.json").read_text())
    assert sidecar["format"] == cache.CACHE_FORMAT
    assert sidecar["params"] == cache.PreprocessParams().to_dict()
    geometry = sidecar["geometry"]
    assert geometry["original"]["spacing_xyz_mm"] == pytest.approx([0.8, 0.8, 2.0])
    assert geometry["original"]["shape_zyx"] == [20, 48, 48]
    assert geometry["original"]["direction"] == [[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]]
    assert geometry["full_shape_zyx"] == [40, 38, 38]
    assert geometry["lungs_found"] is True
    assert geometry["lung_voxels"] > 0
    assert sidecar["files"]["volume_bytes"] == (cache_dir / "1.2.npy").stat().st_size


@pytest.mark.parametrize("uid", ["1.1", "1.2"])
def test_cached_world_voxel_round_trip(dataset, cache_dir, uid):
    cache.build_cache(dataset, cache_dir, scheduler="sync", seriesuids=[uid])
    entry = cache.open_cached_scan(cache_dir, uid)
    scan = read_scan(next(dataset.glob(f"subset*/{uid}.mhd")))

    # An original voxel centre lands on the same world point through the cached grid.
    original_zyx = np.array([[10.0, 20.0, 15.0], [4.0, 12.0, 30.0]])
    world = scan.voxel_to_world(original_zyx)
    cached_zyx = entry.world_to_voxel(world)
    np.testing.assert_allclose(entry.voxel_to_world(cached_zyx), world, atol=1e-9)
    full_zyx = cached_zyx + np.asarray(entry.crop_offset_zyx)
    full = resample_scan(scan, 1.0)
    np.testing.assert_allclose(full.voxel_to_world(full_zyx), world, atol=1e-9)
    assert entry.world_to_voxel(world[0]).shape == (3,)


def test_rerun_skips_complete_entries(dataset, cache_dir):
    cache.build_cache(dataset, cache_dir, scheduler="sync")
    before = _mtimes(cache_dir)
    table = cache.build_cache(dataset, cache_dir, scheduler="sync")
    assert table["status"].tolist() == ["skipped"] * 3
    assert table["shape"].tolist() == [cache.open_cached_scan(cache_dir, u).shape_zyx for u in table.seriesuid]
    assert _mtimes(cache_dir) == before


def test_force_rebuilds(dataset, cache_dir):
    cache.build_cache(dataset, cache_dir, scheduler="sync", seriesuids=["1.1"])
    table = cache.build_cache(dataset, cache_dir, scheduler="sync", seriesuids=["1.1"], force=True)
    assert table["status"].tolist() == ["built"]


def test_changed_parameter_invalidates(dataset, cache_dir):
    cache.build_cache(dataset, cache_dir, scheduler="sync", seriesuids=["1.1"])
    old_shape = cache.open_cached_scan(cache_dir, "1.1").shape_zyx
    old_params = cache.PreprocessParams()
    new_params = cache.PreprocessParams(spacing_xyz_mm=(2.0, 2.0, 2.0))
    assert cache.entry_state(cache_dir, "1.1", new_params) == "stale"

    table = cache.build_cache(dataset, cache_dir, 2.0, scheduler="sync", seriesuids=["1.1"])
    assert table["status"].tolist() == ["built"]
    entry = cache.open_cached_scan(cache_dir, "1.1", new_params)
    assert entry.spacing_xyz_mm == (2.0, 2.0, 2.0)
    assert entry.shape_zyx != old_shape
    assert cache.entry_state(cache_dir, "1.1", old_params) == "stale"
    with pytest.raises(DatasetError, match="stale"):
        cache.open_cached_scan(cache_dir, "1.1", old_params)


def test_crash_before_sidecar_leaves_no_complete_entry(dataset, cache_dir, monkeypatch):
    def crash(path, sidecar):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache, "_write_sidecar", crash)
    with pytest.raises(KeyboardInterrupt):
        cache.build_cache(dataset, cache_dir, scheduler="sync", seriesuids=["1.1"])

    # The arrays were written, the sidecar was not: the entry is not complete.
    assert (cache_dir / "1.1.npy").is_file()
    assert not (cache_dir / "1.1.json").exists()
    assert cache.entry_state(cache_dir, "1.1") == "missing"
    with pytest.raises(DatasetError, match="build_cache"):
        cache.open_cached_scan(cache_dir, "1.1")
    assert cache.list_cached_scans(cache_dir).empty

    # A rerun finishes the interrupted scan.
    monkeypatch.undo()
    table = cache.build_cache(dataset, cache_dir, scheduler="sync", seriesuids=["1.1"])
    assert table["status"].tolist() == ["built"]
    assert cache.entry_state(cache_dir, "1.1") == "complete"


def test_crash_during_rebuild_invalidates_old_entry(dataset, cache_dir, monkeypatch):
    cache.build_cache(dataset, cache_dir, scheduler="sync", seriesuids=["1.1"])

    def crash(path, array):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache, "save_npy_atomically", crash)
    with pytest.raises(KeyboardInterrupt):
        cache.build_cache(dataset, cache_dir, 2.0, scheduler="sync", seriesuids=["1.1"])
    # The old sidecar is gone before any new array is written.
    assert cache.entry_state(cache_dir, "1.1") == "missing"


def test_interrupted_npy_write_leaves_old_file(tmp_path, monkeypatch):
    path = tmp_path / "a.npy"
    cache.save_npy_atomically(path, np.arange(5))

    def broken_save(handle, array, allow_pickle):
        handle.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        cache.save_npy_atomically(path, np.arange(100))
    monkeypatch.undo()
    np.testing.assert_array_equal(np.load(path), np.arange(5))
    assert [p.name for p in tmp_path.iterdir()] == ["a.npy"]


def test_truncated_volume_is_rebuilt(dataset, cache_dir):
    cache.build_cache(dataset, cache_dir, scheduler="sync", seriesuids=["1.3"])
    volume_path = cache_dir / "1.3.npy"
    data = volume_path.read_bytes()
    volume_path.write_bytes(data[: len(data) // 2])
    assert cache.entry_state(cache_dir, "1.3") == "incomplete"

    table = cache.build_cache(dataset, cache_dir, scheduler="sync", seriesuids=["1.3"])
    assert table["status"].tolist() == ["built"]
    assert volume_path.stat().st_size == len(data)


def test_unreadable_sidecar_is_rebuilt(dataset, cache_dir):
    cache.build_cache(dataset, cache_dir, scheduler="sync", seriesuids=["1.3"])
    (cache_dir / "1.3.json").write_text("{not json")
    assert cache.entry_state(cache_dir, "1.3") == "missing"
    table = cache.build_cache(dataset, cache_dir, scheduler="sync", seriesuids=["1.3"])
    assert table["status"].tolist() == ["built"]


def test_stale_temporaries_removed(dataset, cache_dir):
    cache_dir.mkdir()
    leftover = cache_dir / ".1.1.npy.123-abcd.tmp"
    leftover.write_bytes(b"x")
    cache.build_cache(dataset, cache_dir, scheduler="sync", seriesuids=["1.1"])
    assert not leftover.exists()


def test_failed_scan_reported_others_built(dataset, cache_dir):
    raw = dataset / "subset1" / "1.3.raw"
    raw.write_bytes(raw.read_bytes()[:100])
    table = cache.build_cache(dataset, cache_dir, scheduler="sync")
    assert table["status"].tolist() == ["built", "built", "failed"]
    assert "truncated" in table.loc[2, "error"]
    assert table.loc[2, "shape"] is None
    assert cache.entry_state(cache_dir, "1.3") == "missing"


def test_unknown_seriesuid_raises(dataset, cache_dir):
    with pytest.raises(DatasetError, match="9.9"):
        cache.build_cache(dataset, cache_dir, scheduler="sync", seriesuids=["1.1", "9.9"])


def test_list_cached_scans(dataset, cache_dir):
    cache.build_cache(dataset, cache_dir, scheduler="sync", seriesuids=["1.1", "1.3"])
    listing = cache.list_cached_scans(cache_dir)
    assert listing["seriesuid"].tolist() == ["1.1", "1.3"]
    assert listing["spacing_xyz_mm"].tolist() == [(1.0, 1.0, 1.0)] * 2


def test_uncropped_entry_covers_full_grid(dataset, cache_dir):
    cache.build_cache(dataset, cache_dir, scheduler="sync", seriesuids=["1.1"], crop_to_lungs=False)
    entry = cache.open_cached_scan(cache_dir, "1.1")
    assert entry.crop_offset_zyx == (0, 0, 0)
    assert entry.shape_zyx == entry.full_shape_zyx


def test_scan_without_lungs_is_cached_uncropped(tmp_path, caplog):
    path = write_scan(tmp_path / "subset0" / "2.1.mhd", np.full((6, 20, 20), 40, np.int16))
    with caplog.at_level("WARNING", logger="luna_utils"):
        volume, geometry = cache.preprocess_scan(path)
    assert geometry["lungs_found"] is False
    assert geometry["crop_offset_zyx"] == [0, 0, 0]
    assert list(volume.shape) == geometry["full_shape_zyx"]
    assert "no lungs found" in caplog.text


def test_default_cache_dir_under_work_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LUNA16_WORK_DIR", str(tmp_path / "work"))
    assert cache.default_cache_dir(tmp_path / "data") == tmp_path / "work" / "scan_cache"


def test_params_reject_unknown_key():
    with pytest.raises(LunaError, match="spacing"):
        cache.PreprocessParams.coerce({"spaceing": 1.0})


def test_params_reject_nearest_for_ct():
    with pytest.raises(LunaError, match="interpolation"):
        cache.PreprocessParams.coerce({"interpolation": "nearest"})


def test_params_normalise_spacing():
    params = cache.PreprocessParams.coerce({"spacing_xyz_mm": 1})
    assert params.spacing_xyz_mm == (1.0, 1.0, 1.0)
    assert params == cache.PreprocessParams()


def test_build_with_given_dask_client(dataset, cache_dir):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        table = cache.build_cache(dataset, cache_dir, scheduler=client, seriesuids=["1.1", "1.2"])
    assert table["status"].tolist() == ["built", "built"]
    assert cache.entry_state(cache_dir, "1.2") == "complete"


@pytest.mark.slow
def test_build_with_local_cluster(dataset, cache_dir):
    table = cache.build_cache(dataset, cache_dir, n_workers=2)
    assert table["status"].tolist() == ["built"] * 3
    expected, _ = cache.preprocess_scan(dataset / "subset0" / "1.2.mhd")
    np.testing.assert_array_equal(cache.open_cached_scan(cache_dir, "1.2").volume, expected)


def test_cached_grid_matches_conversions(dataset, cache_dir):
    cache.build_cache(dataset, cache_dir, scheduler="sync", seriesuids=["1.2"])
    entry = cache.open_cached_scan(cache_dir, "1.2")
    grid = entry.grid
    points_zyx = np.array([[0.0, 0.0, 0.0], [3.0, 7.5, 2.0]])
    np.testing.assert_allclose(grid.voxel_to_world(points_zyx), entry.voxel_to_world(points_zyx))
    assert grid.shape_zyx == entry.shape_zyx
