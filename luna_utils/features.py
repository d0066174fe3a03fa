"""Hand-crafted patch features and the scikit-learn baseline classifier.

Each candidate patch (int16 HU, axes (z, y, x), 1 mm voxels, candidate at the centre voxel) becomes
one row of numbers in three groups:

* intensity: HU statistics of the voxels within a few millimetres of the centre and of the patch;
* shape: size and shape of the central connected component of the thresholded patch, measured with
  `skimage.measure.regionprops` (a nodule is a compact blob, a vessel a long tube, the pleura a
  wall that touches the patch border);
* texture: gradient magnitude statistics and grey-level co-occurrence (GLCM) properties of the
  central axial slice.

With 1 mm voxels, voxel counts are cubic millimetres and voxel lengths are millimetres.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage
from skimage.feature import graycomatrix, graycoprops
from skimage.measure import label, regionprops
from skimage.morphology import ball
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from luna_utils.errors import LunaError
from luna_utils.progress import progress

logger = logging.getLogger(__name__)

# Edge of the central cube the features look at, in voxels (mm); larger patches are cropped.
FEATURE_SIZE = 32

# Voxels above this HU count as soft tissue (nodule, vessel, wall), below as lung air.
TISSUE_THRESHOLD_HU = -400

# Radius of the "inner" ball around the centre, in mm: about the radius of a typical nodule.
INNER_RADIUS_MM = 5

# Search radius, in mm, for the central component when the centre voxel itself is air.
CENTRE_SEARCH_RADIUS_MM = 3

# Radius, in mm, of the ball that opens the mask to cut thin vessels off a nodule.
OPENING_RADIUS_MM = 2

# HU window quantised into GLCM grey levels.
GLCM_WINDOW_HU = (-1000.0, 400.0)
GLCM_LEVELS = 16

FEATURE_NAMES = (
    "core_mean_hu",
    "core_max_hu",
    "inner_mean_hu",
    "inner_std_hu",
    "inner_p90_hu",
    "inner_tissue_fraction",
    "patch_mean_hu",
    "patch_std_hu",
    "component_found",
    "component_volume_mm3",
    "component_diameter_mm",
    "component_major_axis_mm",
    "component_minor_axis_mm",
    "component_elongation",
    "component_extent",
    "component_touches_border",
    "component_centre_offset_mm",
    "opened_volume_mm3",
    "gradient_inner_mean",
    "gradient_inner_std",
    "glcm_contrast",
    "glcm_homogeneity",
    "glcm_energy",
    "glcm_correlation",
)


def _ball_mask(size: int, radius: float) -> NDArray[np.bool_]:
    centre = size // 2
    z, y, x = np.ogrid[:size, :size, :size]
    return (z - centre) ** 2 + (y - centre) ** 2 + (x - centre) ** 2 <= radius**2


def central_crop(patch: ArrayLike, size: int = FEATURE_SIZE) -> NDArray:
    """Return the cube of edge `size` around the centre voxel (index edge // 2) of a cubic patch.

    The centre voxel of the patch lands at index `size // 2` of the crop.

    Raises:
        LunaError: If the patch is not a cube of at least `size` voxels.
    """
    patch = np.asarray(patch)
    if patch.ndim != 3 or len(set(patch.shape)) != 1 or patch.shape[0] < size:
        raise LunaError(f"Expected a cubic patch of edge >= {size} voxels; got shape {patch.shape}.")
    start = patch.shape[0] // 2 - size // 2
    return patch[start : start + size, start : start + size, start : start + size]


def _central_component(mask: NDArray[np.bool_]) -> NDArray[np.bool_] | None:
    """Return the connected component at the centre, or the nearest one within the search radius."""
    labels = label(mask, connectivity=1)
    centre = mask.shape[0] // 2
    if labels[centre, centre, centre]:
        return labels == labels[centre, centre, centre]

    near = _ball_mask(mask.shape[0], CENTRE_SEARCH_RADIUS_MM) & (labels > 0)
    if not near.any():
        return None
    points = np.argwhere(near)
    nearest = points[np.argmin(((points - centre) ** 2).sum(axis=1))]
    return labels == labels[tuple(nearest)]


def _shape_features(patch: NDArray[np.float64]) -> dict[str, float]:
    size = patch.shape[0]
    centre = size // 2
    component = _central_component(patch > TISSUE_THRESHOLD_HU)
    if component is None:
        return {
            "component_found": 0.0,
            "component_volume_mm3": 0.0,
            "component_diameter_mm": 0.0,
            "component_major_axis_mm": 0.0,
            "component_minor_axis_mm": 0.0,
            "component_elongation": 0.0,
            "component_extent": 0.0,
            "component_touches_border": 0.0,
            "component_centre_offset_mm": float(CENTRE_SEARCH_RADIUS_MM + 1),
            "opened_volume_mm3": 0.0,
        }

    region = regionprops(component.astype(np.uint8))[0]
    bbox = np.asarray(region.bbox)
    touches = bool(np.any(bbox[:3] == 0) or np.any(bbox[3:] == size))
    major = float(region.axis_major_length)
    minor = float(region.axis_minor_length)
    offset = float(np.linalg.norm(np.asarray(region.centroid) - centre))

    # Opening removes structures thinner than the ball (small vessels, thin walls), leaving blobs.
    opened = ndimage.binary_opening(component, structure=ball(OPENING_RADIUS_MM))
    opened_labels = label(opened, connectivity=1)
    opened_at_centre = opened_labels[centre, centre, centre]
    opened_volume = float((opened_labels == opened_at_centre).sum()) if opened_at_centre else 0.0

    return {
        "component_found": 1.0,
        "component_volume_mm3": float(region.area),
        "component_diameter_mm": float(region.equivalent_diameter_area),
        "component_major_axis_mm": major,
        "component_minor_axis_mm": minor,
        # Axis lengths below one voxel are noise, so they count as one voxel.
        "component_elongation": max(major, 1.0) / max(minor, 1.0),
        "component_extent": float(region.extent),
        "component_touches_border": float(touches),
        "component_centre_offset_mm": offset,
        "opened_volume_mm3": opened_volume,
    }


def _texture_features(patch: NDArray[np.float64], inner: NDArray[np.bool_]) -> dict[str, float]:
    gradient = ndimage.gaussian_gradient_magnitude(patch, sigma=1.0)

    low, high = GLCM_WINDOW_HU
    axial = patch[patch.shape[0] // 2]
    levels = np.clip((axial - low) / (high - low) * GLCM_LEVELS, 0, GLCM_LEVELS - 1).astype(np.uint8)
    glcm = graycomatrix(
        levels,
        distances=[1, 2],
        angles=[0, np.pi / 4, np.pi / 2, 3 * np.pi / 4],
        levels=GLCM_LEVELS,
        symmetric=True,
        normed=True,
    )
    # A uniform slice has an undefined correlation; skimage returns 1 for it, which is kept.
    return {
        "gradient_inner_mean": float(gradient[inner].mean()),
        "gradient_inner_std": float(gradient[inner].std()),
        "glcm_contrast": float(graycoprops(glcm, "contrast").mean()),
        "glcm_homogeneity": float(graycoprops(glcm, "homogeneity").mean()),
        "glcm_energy": float(graycoprops(glcm, "energy").mean()),
        "glcm_correlation": float(graycoprops(glcm, "correlation").mean()),
    }


def patch_features(patch_zyx: ArrayLike) -> dict[str, float]:
    """Compute the baseline features of one candidate patch.

    Args:
        patch_zyx: Cubic patch, HU, axes (z, y, x), 1 mm voxels, candidate at index edge // 2,
            edge >= `FEATURE_SIZE`.

    Returns:
        A dict with one float per name in `FEATURE_NAMES`, in that order.
    """
    patch = central_crop(patch_zyx).astype(np.float64)
    centre = patch.shape[0] // 2
    inner = _ball_mask(patch.shape[0], INNER_RADIUS_MM)
    core = patch[centre - 2 : centre + 3, centre - 2 : centre + 3, centre - 2 : centre + 3]

    features = {
        "core_mean_hu": float(core.mean()),
        "core_max_hu": float(core.max()),
        "inner_mean_hu": float(patch[inner].mean()),
        "inner_std_hu": float(patch[inner].std()),
        "inner_p90_hu": float(np.percentile(patch[inner], 90)),
        "inner_tissue_fraction": float((patch[inner] > TISSUE_THRESHOLD_HU).mean()),
        "patch_mean_hu": float(patch.mean()),
        "patch_std_hu": float(patch.std()),
    }
    features.update(_shape_features(patch))
    features.update(_texture_features(patch, inner))
    return {name: features[name] for name in FEATURE_NAMES}


def feature_table(patches: ArrayLike, desc: str = "features") -> pd.DataFrame:
    """Compute the features of a stack of patches.

    Args:
        patches: Shape (N, S, S, S), HU, axes (z, y, x) per patch; a memory map works.
        desc: Label of the progress bar.

    Returns:
        Shape (N, len(FEATURE_NAMES)), columns `FEATURE_NAMES`, float64.
    """
    rows = [patch_features(patch) for patch in progress(patches, desc=desc, total=len(patches))]
    return pd.DataFrame(rows, columns=list(FEATURE_NAMES), dtype=np.float64)


def make_baseline(kind: str = "gradient_boosting", seed: int = 0) -> Pipeline:
    """Build the baseline: feature scaling followed by a class-weighted classifier.

    Every classifier weights the classes inversely to their frequency (`class_weight="balanced"`),
    so the rare nodules are not drowned out by the negatives.

    Args:
        kind: "gradient_boosting" (HistGradientBoostingClassifier), "random_forest" or "logistic".
        seed: Seed of the classifier's randomness.

    Returns:
        An unfitted scikit-learn Pipeline with steps `scale` and `classify`.

    Raises:
        LunaError: If `kind` is unknown.
    """
    if kind == "gradient_boosting":
        classifier = HistGradientBoostingClassifier(
            max_iter=200, learning_rate=0.05, class_weight="balanced", early_stopping=False, random_state=seed
        )
    elif kind == "random_forest":
        classifier = RandomForestClassifier(
            n_estimators=300, min_samples_leaf=2, class_weight="balanced", n_jobs=1, random_state=seed
        )
    elif kind == "logistic":
        classifier = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000, random_state=seed)
    else:
        raise LunaError(
            f"Unknown baseline kind {kind!r}; use 'gradient_boosting', 'random_forest' or 'logistic'."
        )
    return Pipeline([("scale", StandardScaler()), ("classify", classifier)])
