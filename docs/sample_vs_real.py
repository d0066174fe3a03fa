"""Draw real LUNA16 crops next to crops of the synthetic sample, at the same size and window.

Usage::

    python docs/sample_vs_real.py --sample data/sample [--out docs/sample_vs_real.png]

Row 1 shows the six real crops shipped in `data/real/ct_crops/` (central axial slice of each
32 x 48 x 48 voxel crop). Rows 2 and 3 show crops of the same voxel size from the sample: nodules
of each type and location, then false-positive candidates of each kind. Every panel uses the
lung window (-1000 to 400 HU) and millimetre axes from its own scan's spacing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from luna_utils import dataset, mhd  # noqa: E402
from luna_utils.geometry import round_to_voxel  # noqa: E402
from luna_utils.patches import extract_patch  # noqa: E402

CROP_ZYX = (32, 48, 48)
WINDOW_HU = (-1000.0, 400.0)
# The real crops are clipped to this range, so the sample crops get the same clip.
CLIP_HU = (-1000.0, 1000.0)

NODULE_PICKS = [
    ("solid", "isolated"),
    ("solid", "juxta-pleural"),
    ("solid", "juxta-vascular"),
    ("part-solid", None),
    ("ground-glass", None),
    (None, None),
]
NEGATIVE_KINDS = ["vessel", "bifurcation", "pleura", "bone", "airway", "other"]


def real_crops() -> list[tuple[str, np.ndarray, tuple[float, float]]]:
    """Return (title, axial slice, (row mm, column mm) spacing) of each shipped real crop."""
    folder = dataset.real_reference_dir() / "ct_crops"
    table = pd.read_csv(folder / "crops.csv", dtype={"seriesuid": str})
    metadata = dataset.load_real_table("luna16_scans_metadata").set_index("seriesuid")
    crops = []
    for row in table.sort_values(["is_nodule", "diameter_mm"], ascending=[False, True]).itertuples(index=False):
        chunk = np.load(folder / row.file)["ct_chunk"]
        spacing = metadata.loc[row.seriesuid]
        title = f"real nodule {row.diameter_mm:.1f} mm" if row.is_nodule else "real non-nodule"
        crops.append((title, chunk[chunk.shape[0] // 2], (float(spacing["sp_y"]), float(spacing["sp_x"]))))
    return crops


def _sample_crop(root: Path, scans: dict[str, mhd.CtScan], seriesuid: str, center_xyz_mm) -> tuple[np.ndarray, tuple[float, float]]:
    if seriesuid not in scans:
        scans[seriesuid] = mhd.read_scan(dataset.scan_path(root, seriesuid))
    scan = scans[seriesuid]
    center_zyx = round_to_voxel(scan.world_to_voxel(np.asarray(center_xyz_mm, dtype=np.float64)))
    crop = np.clip(extract_patch(scan.array, center_zyx, CROP_ZYX).astype(np.float32), *CLIP_HU)
    return crop[CROP_ZYX[0] // 2], (scan.spacing_xyz_mm[1], scan.spacing_xyz_mm[0])


def sample_crops(root: Path, seed: int = 0) -> tuple[list, list]:
    """Return sample nodule crops and sample negative crops as (title, slice, spacing) lists."""
    rng = np.random.default_rng(seed)
    nodules = pd.read_csv(root / "synthetic" / "nodules.csv", dtype={"seriesuid": str})
    kinds = pd.read_csv(root / "synthetic" / "candidate_kinds.csv", dtype={"seriesuid": str})
    scans: dict[str, mhd.CtScan] = {}

    nodule_crops, used = [], set()
    for nodule_type, location in NODULE_PICKS:
        pool = nodules[~nodules.index.isin(used)]
        if nodule_type:
            pool = pool[pool["nodule_type"] == nodule_type]
        if location:
            pool = pool[pool["location"] == location]
        if pool.empty:
            continue
        row = pool.loc[rng.choice(pool.index)]
        used.add(row.name)
        image, spacing = _sample_crop(root, scans, row["seriesuid"], row[["coordX", "coordY", "coordZ"]])
        title = f"{row['nodule_type']} {row['location']}\n{row['diameter_mm']:.1f} mm"
        nodule_crops.append((title, image, spacing))

    negative_crops = []
    negatives = kinds[(kinds["class"] == 0) & (kinds["version"] == 2)]
    for kind in NEGATIVE_KINDS:
        pool = negatives[negatives["kind"] == kind]
        if pool.empty:
            continue
        row = pool.loc[rng.choice(pool.index)]
        image, spacing = _sample_crop(root, scans, row["seriesuid"], row[["coordX", "coordY", "coordZ"]])
        negative_crops.append((f"sample {kind}", image, spacing))
    return nodule_crops, negative_crops


def draw(rows: list[list], out: Path) -> None:
    """Draw rows of (title, slice, spacing) panels with one shared HU colour bar."""
    columns = max(len(row) for row in rows)
    figure, axes = plt.subplots(len(rows), columns, figsize=(2.3 * columns + 1.0, 2.5 * len(rows)), squeeze=False)
    image = None
    for row_axes, crops in zip(axes, rows):
        for axis in row_axes:
            axis.set_visible(False)
        for axis, (title, crop, (row_mm, column_mm)) in zip(row_axes, crops):
            axis.set_visible(True)
            extent = (0.0, crop.shape[1] * column_mm, crop.shape[0] * row_mm, 0.0)
            image = axis.imshow(crop, cmap="gray", vmin=WINDOW_HU[0], vmax=WINDOW_HU[1], extent=extent)
            axis.set_title(title, fontsize=8)
            axis.set_xlabel("x (mm)", fontsize=7)
            axis.set_ylabel("y (mm)", fontsize=7)
            axis.tick_params(labelsize=6)
    figure.suptitle("Real LUNA16 crops (top) and synthetic sample crops (below), lung window", fontsize=10)
    figure.tight_layout(rect=(0, 0, 0.93, 0.96))
    bar_axis = figure.add_axes((0.94, 0.15, 0.012, 0.7))
    figure.colorbar(image, cax=bar_axis, label="HU")
    figure.savefig(out, dpi=80)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compare real LUNA16 crops with crops of the synthetic sample.")
    parser.add_argument("--sample", type=Path, default=dataset.default_sample_dir(), help="sample folder")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("sample_vs_real.png"), help="PNG to write")
    parser.add_argument("--seed", type=int, default=0, help="seed for picking sample crops")
    arguments = parser.parse_args(argv)

    nodule_crops, negative_crops = sample_crops(arguments.sample, arguments.seed)
    draw([real_crops(), nodule_crops, negative_crops], arguments.out)
    print(f"Wrote {dataset.display_path(arguments.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
