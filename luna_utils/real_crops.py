"""The six real LUNA16 CT crops shipped in `data/real/ct_crops/`, as scans with world geometry.

Each `.npz` contains `ct_chunk`, float32 HU clipped to [-1000, 1000], 32 x 48 x 48 voxels in stored
order (z, y, x), and `center_irc`, the (z, y, x) index in the full scan of the crop's centre voxel.
`crops.csv` names the scan, the world centre and, for nodules, the diameter. The full scans'
spacing, origin and direction come from `luna16_scans_metadata.csv`, so each crop is placed in
the same world millimetres as the annotations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from luna_utils import geometry
from luna_utils.dataset import load_real_table, real_reference_dir
from luna_utils.errors import DatasetError
from luna_utils.mhd import CtScan

CROPS_FOLDER = "ct_crops"
CROP_SHAPE_ZYX = (32, 48, 48)


@dataclass(frozen=True)
class RealCrop:
    """One real crop.

    Attributes:
        scan: The crop as a `CtScan` (float32 HU, (z, y, x)) with the full scan's spacing and
            direction and the world position of the crop's first voxel as origin.
        info: Its row of `crops.csv` (seriesuid, is_nodule, diameter_mm, coordX, coordY, coordZ, ...).
    """

    scan: CtScan
    info: pd.Series

    @property
    def nodules(self) -> pd.DataFrame:
        """The annotated nodule as a one-row table (none for a non-nodule candidate)."""
        if not self.info["is_nodule"]:
            return pd.DataFrame(columns=["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"])
        return self.info[["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]].to_frame().T


def load_real_crops() -> list[RealCrop]:
    """Load the six real crops in the order of `crops.csv`.

    Raises:
        DatasetError: If a crop file is missing, has another shape, or its scan is not in the
            per-scan metadata table.
    """
    folder = real_reference_dir() / CROPS_FOLDER
    table = pd.read_csv(folder / "crops.csv", dtype={"seriesuid": str})
    metadata = load_real_table("luna16_scans_metadata").set_index("seriesuid")

    crops = []
    for _, info in table.iterrows():
        path = folder / info["file"]
        if not path.is_file():
            raise DatasetError(f"{path} is missing; restore data/real/ from the repository.")
        with np.load(path) as archive:
            array = archive["ct_chunk"]
            center_zyx = archive["center_irc"].astype(np.int64)
        if array.shape != CROP_SHAPE_ZYX:
            raise DatasetError(f"{path}: ct_chunk has shape {array.shape}, expected {CROP_SHAPE_ZYX}.")
        if info["seriesuid"] not in metadata.index:
            raise DatasetError(f"{path}: scan {info['seriesuid']} is not in luna16_scans_metadata.csv.")

        row = metadata.loc[info["seriesuid"]]
        spacing_xyz_mm = (float(row["sp_x"]), float(row["sp_y"]), float(row["sp_z"]))
        origin_xyz_mm = (float(row["origin_x"]), float(row["origin_y"]), float(row["origin_z"]))
        direction = np.diag([float(row["flip_x"]), float(row["flip_y"]), float(row["flip_z"])])

        # NOTE: the crop's voxel (16, 24, 24) is assumed to be the scan voxel center_irc, because
        # the files do not record the crop's first index. None of the six crops touches a border.
        first_zyx = center_zyx - np.asarray(CROP_SHAPE_ZYX) // 2
        crop_origin = geometry.voxel_to_world(first_zyx, origin_xyz_mm, spacing_xyz_mm, direction)
        scan = CtScan(
            array=array,
            spacing_xyz_mm=spacing_xyz_mm,
            origin_xyz_mm=tuple(float(value) for value in crop_origin),  # type: ignore[arg-type]
            direction=direction,
            seriesuid=info["seriesuid"],
        )
        crops.append(RealCrop(scan=scan, info=info))
    return crops
