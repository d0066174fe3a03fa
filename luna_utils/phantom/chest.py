"""Sizes of the scaled chest and the implicit lung shape, in the patient frame."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from luna_utils.phantom.tissues import LEFT_LUNG_LABEL, RIGHT_LUNG_LABEL


@dataclass(frozen=True)
class _Body:
    """Sizes of the scaled chest, millimetres, all relative to the scan centre (u, v, w)."""

    fov_mm: float
    height_mm: float

    # Outer body outline: an ellipse in the axial plane.
    @property
    def body_axes(self) -> tuple[float, float, float]:
        """Semi-axis along u, semi-axis along v, centre offset along v."""
        return 0.46 * self.fov_mm, 0.34 * self.fov_mm, 0.015 * self.fov_mm

    # Inner surface of the rib cage: the lungs fill this ellipse outside the mediastinum.
    @property
    def thorax_axes(self) -> tuple[float, float, float]:
        return 0.39 * self.fov_mm, 0.27 * self.fov_mm, 0.01 * self.fov_mm

    @property
    def fat_mm(self) -> float:
        return max(3.0, 0.035 * self.fov_mm)

    @property
    def spine(self) -> tuple[float, float]:
        """Centre of the vertebral bodies along v and their radius."""
        return 0.20 * self.fov_mm, max(6.0, 0.05 * self.fov_mm)

    @property
    def aorta(self) -> tuple[float, float, float]:
        """Centre of the descending aorta (u, v) and its radius."""
        return 0.065 * self.fov_mm, 0.13 * self.fov_mm, max(5.0, 0.035 * self.fov_mm)

    @property
    def mediastinum_half_width(self) -> float:
        """Narrowest half-width of the mediastinum. The lung ellipses widen it in front and behind."""
        return 0.03 * self.fov_mm

    @property
    def z_apex(self) -> float:
        return 0.47 * self.height_mm

    @property
    def z_taper(self) -> float:
        """Height above which the lungs narrow toward the apex."""
        return 0.05 * self.height_mm

    @property
    def z_carina(self) -> float:
        return 0.10 * self.height_mm

    @property
    def heart(self) -> tuple[float, float, float, float, float, float]:
        """Centre (u, v, w) and semi-axes (u, v, w) of the heart ellipsoid."""
        return (
            0.06 * self.fov_mm, -0.09 * self.fov_mm, -0.24 * self.height_mm,
            0.13 * self.fov_mm, 0.11 * self.fov_mm, 0.18 * self.height_mm,
        )

    def diaphragm_w(self, u: NDArray, v: NDArray) -> NDArray:
        """Height of the lung base (the diaphragm dome) above each (u, v), millimetres."""
        low = -0.46 * self.height_mm
        dome_u = np.where(u < 0, -0.19, 0.19) * self.fov_mm
        # The right dome sits higher, above the liver.
        top = np.where(u < 0, -0.26, -0.31) * self.height_mm
        bulge = 1.0 - ((u - dome_u) / (0.2 * self.fov_mm)) ** 2 - (v / (0.26 * self.fov_mm)) ** 2
        return low + (top - low) * np.clip(bulge, 0.0, 1.0)


def _ellipse_level(u: NDArray, v: NDArray, axes: tuple[float, float, float]) -> NDArray:
    """Return (u/a)^2 + ((v-c)/b)^2 for an ellipse with semi-axes a, b centred at v = c."""
    semi_u, semi_v, offset_v = axes
    return (u / semi_u) ** 2 + ((v - offset_v) / semi_v) ** 2


def _ellipse_depth_mm(u: NDArray, v: NDArray, axes: tuple[float, float, float]) -> NDArray:
    """Return the approximate signed distance to an ellipse outline, millimetres, negative inside.

    Uses level / |gradient of level|, which is exact on the outline and close to it nearby.
    """
    semi_u, semi_v, offset_v = axes
    level = _ellipse_level(u, v, axes)
    gradient_u = 2.0 * u / semi_u**2
    gradient_v = 2.0 * (v - offset_v) / semi_v**2
    norm = np.sqrt(gradient_u**2 + gradient_v**2) + 1e-6
    return (level - 1.0) / norm


class _LungShape:
    """Implicit lung shape, evaluated on grids or on scattered points of the patient frame."""

    def __init__(self, body: _Body, rng: np.random.Generator) -> None:
        self.body = body

        # Gentle random waves of the lung outline make every scan's lungs a little different.
        self.wave_vectors = rng.normal(0.0, 1.0, size=(3, 3)) * (2 * np.pi / (0.6 * body.fov_mm))
        self.wave_phases = rng.uniform(0.0, 2 * np.pi, size=3)
        self.wave_amplitude = 0.025

    def label(self, u: NDArray, v: NDArray, w: NDArray) -> NDArray[np.uint8]:
        """Return 3 (right lung), 4 (left lung) or 0 at points (u, v, w), broadcasting the inputs."""
        body = self.body

        # Inside the rib cage, narrowing toward the apex.
        height = max(body.z_apex - body.z_taper, 1e-6)
        rise = np.clip((w - body.z_taper) / height, 0.0, 1.0)
        scale = np.sqrt(np.clip(1.0 - rise**2, 0.0, 1.0))
        level = _ellipse_level(u, v, body.thorax_axes)
        waves = sum(
            np.sin(vector[0] * u + vector[1] * v + vector[2] * w + phase)
            for vector, phase in zip(self.wave_vectors, self.wave_phases)
        )
        inside = level + self.wave_amplitude * waves < (0.985 * scale) ** 2

        # Each lung is also inside its own ellipse, whose curved medial side shapes the mediastinum.
        lung_u = np.where(u < 0, -1.0, 1.0) * 0.25 * body.fov_mm
        lung_level = ((u - lung_u) / (0.21 * body.fov_mm)) ** 2 + (v / (0.3 * body.fov_mm)) ** 2
        inside &= lung_level < scale**2

        # Between the diaphragm and the apex.
        inside &= (w > body.diaphragm_w(u, v)) & (w < body.z_apex)

        # Outside the mediastinum, the spine, the aorta and the heart.
        inside &= np.abs(u) > body.mediastinum_half_width
        spine_v, spine_radius = body.spine
        inside &= u**2 + (v - spine_v) ** 2 > (spine_radius + 4.0) ** 2
        aorta_u, aorta_v, aorta_radius = body.aorta
        inside &= (u - aorta_u) ** 2 + (v - aorta_v) ** 2 > (aorta_radius + 3.0) ** 2
        heart_u, heart_v, heart_w, semi_u, semi_v, semi_w = body.heart
        heart_level = (
            ((u - heart_u) / (semi_u + 3.0)) ** 2
            + ((v - heart_v) / (semi_v + 3.0)) ** 2
            + ((w - heart_w) / semi_w) ** 2
        )
        inside &= heart_level > 1.0

        return np.where(inside, np.where(u < 0, RIGHT_LUNG_LABEL, LEFT_LUNG_LABEL), 0).astype(np.uint8)
