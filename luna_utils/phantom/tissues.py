"""Lung-mask labels, tissue codes and mean Hounsfield units of the phantom's tissues."""

from __future__ import annotations


# Labels of the lung mask, as in LUNA16's seg-lungs-LUNA16 files.
RIGHT_LUNG_LABEL = 3
LEFT_LUNG_LABEL = 4
AIRWAY_LABEL = 5

# Codes of the tissue label map (`Phantom.tissue_zyx`).
TISSUE_CODES = {
    "air": 0,
    "fat": 1,
    "muscle": 2,
    "lung": 3,
    "vessel": 4,
    "airway_lumen": 5,
    "airway_wall": 6,
    "bone": 7,
    # The heart and the descending aorta.
    "heart": 8,
    "organ": 9,
    "nodule": 10,
    "excluded_finding": 11,
    "pleural_bump": 12,
    "table": 13,
    "outside_fov": 14,
}

# Mean Hounsfield units of the tissues, before texture and noise.
HU_AIR = -1000.0
HU_FAT = -100.0
HU_MEDIASTINAL_FAT = -85.0
HU_MUSCLE = 40.0
HU_BLOOD = 40.0
HU_LIVER = 55.0
HU_LUNG = -870.0
HU_MARROW = 250.0
HU_CORTEX = 800.0
HU_DISC = 80.0
HU_TABLE = 120.0
# Value that some scanners store outside the reconstructed circle (the field of view).
HU_OUTSIDE_FOV = -2000.0
