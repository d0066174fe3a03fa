"""Benchmark: preprocessing (resampling, patches from the scan cache, peak memory of one scan).

Three measurements, each case in a fresh Python process so that its peak resident memory
(`ru_maxrss` of that process) belongs to it alone:

1. Resampling a 512 x 512 x 121 scan at 0.7 x 0.7 x 2.5 mm to 1 mm: `luna_utils.resample` against
   the `scipy.ndimage.zoom` recipe (zoom factor = old spacing / new spacing, linear). Reported:
   time, peak memory above the process's resident memory just before the step (input and
   imports excluded), and the recipe's spacing error (the spacing it claims against the spacing
   of the grid it produced).
2. Patch throughput, 32^3 patches around random candidates of a 512 x 512 x 200 scan: from the
   scan cache (`open_cached_scan` + `patches_for_candidates`) against reading the `.mhd` for
   every candidate (`read_scan` + one patch at the native resolution, no resampling).
3. Peak memory of preprocessing one 512 x 512 x 764 scan (the largest LUNA16 size, spacing of the
   real scan of that size) into the cache: read, resample, segment, crop, write.

Scans are synthetic phantoms (body, two lungs, trachea, noise) written to a temporary folder.
Files are read while they are in the operating system's page cache, as on a second pass over a
dataset. Cold reads from disk are slower for both approaches.

Run: `python benchmarks/bench_preprocess.py` (about 2 minutes on 2 cores). It prints a Markdown
table and the targets met or missed. `--quick` uses fewer repetitions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESAMPLE_SHAPE_ZYX = (121, 512, 512)
RESAMPLE_SPACING_XYZ_MM = (0.7, 0.7, 2.5)

PATCH_SCAN_SHAPE_ZYX = (200, 512, 512)
PATCH_SCAN_SPACING_XYZ_MM = (0.7, 0.7, 1.25)
PATCH_SIZE = 32
CACHE_CANDIDATES = 10_000
MHD_CANDIDATES = 8

# The largest LUNA16 scan: 512 x 512 x 764 voxels at 0.646 x 0.646 x 0.5 mm
# (data/real/luna16_scans_metadata.csv).
LARGE_SHAPE_ZYX = (764, 512, 512)
LARGE_SPACING_XYZ_MM = (0.646484, 0.646484, 0.5)

TARGETS = {
    "resample_speedup": 5.0,
    "patch_speedup": 20.0,
    "patches_per_second": 5000.0,
    "large_scan_peak_gb": 2.5,
}


def peak_rss_bytes() -> int:
    """Return this process's peak resident memory in bytes.

    Linux's VmHWM starts afresh with each program, whereas `ru_maxrss` keeps the peak of the
    parent process from before `exec`; other systems fall back to `ru_maxrss`.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def current_rss_bytes() -> int:
    """Return this process's resident memory now, in bytes."""
    import psutil

    return psutil.Process().memory_info().rss


# Synthetic scans.


def phantom_slab(
    first: int, stop: int, shape_zyx: tuple[int, int, int], spacing_xyz_mm, rng: np.random.Generator
) -> np.ndarray:
    """Return slices [first, stop) of a chest phantom in HU, int16 (z, y, x)."""
    nz, ny, nx = shape_zyx
    sx, sy, sz = spacing_xyz_mm
    z = (np.arange(first, stop) - nz / 2)[:, None, None] * sz
    y = (np.arange(ny) - ny / 2)[None, :, None] * sy
    x = (np.arange(nx) - nx / 2)[None, None, :] * sx
    half_z = nz * sz / 2

    slab = np.full((stop - first, ny, nx), -1000.0, dtype=np.float32)
    body = (x / (0.45 * nx * sx)) ** 2 + (y / (0.33 * ny * sy)) ** 2 <= 1.0
    slab[np.broadcast_to(body, slab.shape)] = 40.0
    for side in (-1, 1):
        lung = (
            ((x - side * 0.2 * nx * sx) / (0.15 * nx * sx)) ** 2
            + (y / (0.25 * ny * sy)) ** 2
            + (z / (0.9 * half_z)) ** 2
        ) <= 1.0
        slab[lung] = -850.0
    trachea = (x**2 + (y + 0.05 * ny * sy) ** 2 <= 8.0**2) & (z > 0.3 * half_z)
    slab[trachea] = -1000.0
    slab += rng.normal(0.0, 20.0, size=slab.shape).astype(np.float32)
    return np.clip(np.rint(slab), -1024, 3071).astype(np.int16)


def phantom_volume(shape_zyx, spacing_xyz_mm, seed: int) -> np.ndarray:
    """Return a whole phantom, built 4 slices at a time so that building it adds little peak memory."""
    rng = np.random.default_rng(seed)
    volume = np.empty(shape_zyx, dtype=np.int16)
    for first in range(0, shape_zyx[0], 4):
        stop = min(first + 4, shape_zyx[0])
        volume[first:stop] = phantom_slab(first, stop, shape_zyx, spacing_xyz_mm, rng)
    return volume


def write_phantom_mhd(path: Path, shape_zyx, spacing_xyz_mm, seed: int = 0) -> Path:
    """Write a phantom as `.mhd` + `.raw`, slab by slab, so the whole scan is never in memory."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape_zyx
    raw_path = path.with_suffix(".raw")
    with open(raw_path, "wb") as handle:
        for first in range(0, nz, 32):
            stop = min(first + 32, nz)
            handle.write(phantom_slab(first, stop, shape_zyx, spacing_xyz_mm, rng).tobytes())
    header = "\n".join(
        [
            "ObjectType = Image",
            "NDims = 3",
            "BinaryData = True",
            "BinaryDataByteOrderMSB = False",
            "CompressedData = False",
            "TransformMatrix = 1 0 0 0 1 0 0 0 1",
            "Offset = -180 -180 -300",
            "CenterOfRotation = 0 0 0",
            "AnatomicalOrientation = RAI",
            "ElementSpacing = " + " ".join(str(v) for v in spacing_xyz_mm),
            f"DimSize = {nx} {ny} {nz}",
            "ElementType = MET_SHORT",
            f"ElementDataFile = {raw_path.name}",
        ]
    )
    path.write_text(header + "\n")
    return path


# Cases, each run in its own process by `run_case`.


def case_resample(method: str, repeats: int) -> dict:
    from scipy import ndimage

    from luna_utils.mhd import CtScan
    from luna_utils.resample import resample_scan

    array = phantom_volume(RESAMPLE_SHAPE_ZYX, RESAMPLE_SPACING_XYZ_MM, seed=0)
    old_spacing_zyx = np.asarray(RESAMPLE_SPACING_XYZ_MM[::-1])
    baseline = current_rss_bytes()

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        if method == "luna_utils":
            scan = CtScan(array, RESAMPLE_SPACING_XYZ_MM, (0.0, 0.0, 0.0), np.eye(3), "bench")
            result = resample_scan(scan, 1.0).array
            real_spacing_zyx = np.ones(3)
        else:
            result = ndimage.zoom(array, old_spacing_zyx / 1.0, order=1)
            # zoom maps the first and last voxel centres onto each other (grid_mode=False).
            real_spacing_zyx = (np.asarray(array.shape) - 1) * old_spacing_zyx / (
                np.asarray(result.shape) - 1
            )
        times.append(time.perf_counter() - start)
        shape = result.shape
        del result

    error_zyx = 1.0 - real_spacing_zyx
    return {
        "seconds": min(times),
        "peak_above_start_mb": (peak_rss_bytes() - baseline) / 2**20,
        "shape": list(shape),
        "spacing_error_z_mm": float(error_zyx[0]),
        "drift_z_mm": float(error_zyx[0] * (shape[0] - 1)),
    }


def _random_candidates(entry, n: int, seed: int):
    import pandas as pd

    rng = np.random.default_rng(seed)
    local = rng.uniform(0, np.asarray(entry.shape_zyx) - 1, size=(n, 3))
    return pd.DataFrame(entry.voxel_to_world(local), columns=["coordX", "coordY", "coordZ"])


def case_patches(method: str, workdir: Path, repeats: int) -> dict:
    from luna_utils.cache import open_cached_scan
    from luna_utils.mhd import read_scan
    from luna_utils.patches import extract_patch, patches_for_candidates

    entry = open_cached_scan(workdir / "cache", "patchscan")
    baseline = current_rss_bytes()

    if method == "cache":
        candidates = _random_candidates(entry, CACHE_CANDIDATES, seed=1)
        times = []
        for _ in range(repeats):
            entry = open_cached_scan(workdir / "cache", "patchscan")
            start = time.perf_counter()
            for first in range(0, len(candidates), 1000):
                batch = patches_for_candidates(entry, candidates.iloc[first : first + 1000], PATCH_SIZE)
                del batch
            times.append(time.perf_counter() - start)
        n = len(candidates)
    else:
        candidates = _random_candidates(entry, MHD_CANDIDATES, seed=2)
        mhd_path = workdir / "data" / "subset0" / "patchscan.mhd"
        start = time.perf_counter()
        for row in candidates.itertuples(index=False):
            scan = read_scan(mhd_path)
            center = scan.world_to_voxel([row.coordX, row.coordY, row.coordZ])
            extract_patch(scan.array, center, PATCH_SIZE)
            del scan
        times = [time.perf_counter() - start]
        n = len(candidates)

    return {
        "seconds": min(times),
        "patches": n,
        "patches_per_second": n / min(times),
        "peak_above_start_mb": (peak_rss_bytes() - baseline) / 2**20,
    }


def case_large_scan(workdir: Path) -> dict:
    from luna_utils.cache import PreprocessParams, preprocess_scan_with_mask, write_entry

    baseline = current_rss_bytes()
    start = time.perf_counter()
    result = preprocess_scan_with_mask(workdir / "large.mhd")
    write_entry(workdir / "large_cache", result, PreprocessParams())
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "peak_gb": peak_rss_bytes() / 2**30,
        "peak_above_start_gb": (peak_rss_bytes() - baseline) / 2**30,
        "cached_shape": list(result.volume.shape),
    }


def run_case(name: str, workdir: Path, repeats: int) -> dict:
    """Run one case in a fresh Python process and return its JSON result."""
    command = [sys.executable, __file__, "--case", name, "--workdir", str(workdir), "--repeats", str(repeats)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def dispatch_case(name: str, workdir: Path, repeats: int) -> dict:
    if name in ("resample_luna_utils", "resample_zoom"):
        return case_resample(name.removeprefix("resample_"), repeats)
    if name in ("patches_cache", "patches_mhd"):
        return case_patches(name.removeprefix("patches_"), workdir, repeats)
    if name == "large_scan":
        return case_large_scan(workdir)
    if name == "prepare":
        prepare(workdir)
        return {}
    raise SystemExit(f"Unknown case {name!r}.")


def prepare(workdir: Path) -> None:
    """Write the phantoms and build the cache entry the patch cases read."""
    import logging

    from luna_utils.cache import build_entry

    logging.getLogger("luna_utils").setLevel(logging.ERROR)
    scan_path = workdir / "data" / "subset0" / "patchscan.mhd"
    scan_path.parent.mkdir(parents=True)
    write_phantom_mhd(scan_path, PATCH_SCAN_SHAPE_ZYX, PATCH_SCAN_SPACING_XYZ_MM, seed=3)
    (workdir / "cache").mkdir()
    result = build_entry(scan_path, workdir / "cache")
    if result["status"] != "built":
        raise SystemExit(f"Building the cache entry failed: {result['error']}")
    write_phantom_mhd(workdir / "large.mhd", LARGE_SHAPE_ZYX, LARGE_SPACING_XYZ_MM, seed=4)
    (workdir / "large_cache").mkdir()


def verdict(value: float, target: float, higher_is_better: bool = True) -> str:
    met = value >= target if higher_is_better else value <= target
    return "met" if met else "missed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one repetition per case instead of three")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3, help=argparse.SUPPRESS)
    arguments = parser.parse_args()

    if arguments.case:
        print(json.dumps(dispatch_case(arguments.case, arguments.workdir, arguments.repeats)))
        return

    repeats = 1 if arguments.quick else 3
    with tempfile.TemporaryDirectory(prefix="bench_preprocess_") as folder:
        workdir = Path(folder)
        print("Writing phantoms and the cache entry ...", file=sys.stderr)
        run_case("prepare", workdir, repeats)
        results = {}
        for name in ("resample_luna_utils", "resample_zoom", "patches_cache", "patches_mhd", "large_scan"):
            print(f"Running {name} ...", file=sys.stderr)
            results[name] = run_case(name, workdir, repeats)

    ours, zoom = results["resample_luna_utils"], results["resample_zoom"]
    cached, per_read = results["patches_cache"], results["patches_mhd"]
    large = results["large_scan"]
    resample_speedup = zoom["seconds"] / ours["seconds"]
    patch_speedup = cached["patches_per_second"] / per_read["patches_per_second"]

    print(f"Machine: {os.cpu_count()} CPU(s), {platform.system()} {platform.machine()}, Python {platform.python_version()}\n")
    print("| Measurement | luna_utils | usual approach | ratio | target | result |")
    print("|---|---|---|---|---|---|")
    print(
        f"| Resample 512x512x121 (0.7, 0.7, 2.5 mm) to 1 mm: time | {ours['seconds']:.2f} s | "
        f"{zoom['seconds']:.2f} s (`ndimage.zoom`) | {resample_speedup:.1f}x faster | >= 5x | "
        f"{verdict(resample_speedup, TARGETS['resample_speedup'])} |"
    )
    # Memory per output voxel keeps the comparison fair where the two output shapes differ.
    ours_bytes = ours["peak_above_start_mb"] * 2**20 / np.prod(ours["shape"])
    zoom_bytes = zoom["peak_above_start_mb"] * 2**20 / np.prod(zoom["shape"])
    print(
        f"| Same: peak memory above the input | {ours['peak_above_start_mb']:.1f} MB "
        f"({ours_bytes:.2f} B per output voxel) | {zoom['peak_above_start_mb']:.1f} MB "
        f"({zoom_bytes:.2f} B per output voxel) | {ours_bytes / zoom_bytes:.2f} per voxel | <= 1 | "
        f"{verdict(ours_bytes, zoom_bytes * 1.02, higher_is_better=False)} (within 2 %) |"
    )
    print(
        f"| Same: z spacing error (claimed 1 mm minus real) | 0 mm (shape {tuple(ours['shape'])}) | "
        f"{zoom['spacing_error_z_mm'] * 1000:.2f} um per slice, {zoom['drift_z_mm']:.2f} mm over "
        f"{zoom['shape'][0]} slices (shape {tuple(zoom['shape'])}) | | 0 | |"
    )
    print(
        f"| 32^3 patches from a 512x512x200 scan | {cached['patches_per_second']:,.0f} /s (cache) | "
        f"{per_read['patches_per_second']:.1f} /s (`.mhd` read per candidate) | {patch_speedup:,.0f}x | "
        f">= 20x and >= 5,000 /s | "
        f"{'met' if patch_speedup >= TARGETS['patch_speedup'] and cached['patches_per_second'] >= TARGETS['patches_per_second'] else 'missed'} |"
    )
    print(
        f"| Preprocess 512x512x764 (0.65, 0.65, 0.5 mm) into the cache: peak memory | "
        f"{large['peak_gb']:.2f} GB ({large['seconds']:.1f} s, cached {tuple(large['cached_shape'])}) | | | "
        f"<= 2.5 GB | {verdict(large['peak_gb'], TARGETS['large_scan_peak_gb'], higher_is_better=False)} |"
    )
    print("\nRaw results:", json.dumps(results, indent=1), file=sys.stderr)


if __name__ == "__main__":
    main()
