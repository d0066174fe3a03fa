"""Tables of the synthetic LUNA16 sample: candidates, their classes, and deterministic CSV files.

Candidate lists imitate LUNA16's two detector outputs. Each annotated nodule gets a few
candidates jittered within half its radius (class 1). Most candidates lie on vessels,
branchings, the pleura, bone, airway walls and other structures (class 0). The V2 list is longer
and finds every nodule, while the V1 list misses some small ones. `class` follows the official rule:
1 if and only if the candidate lies strictly within the radius of a nodule in annotations.csv.

All coordinates are world LPS millimetres in (x, y, z) order, columns coordX, coordY, coordZ.
They are rounded to 6 decimals before any class is computed, so the classes hold for the values
stored in the CSV files.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from luna_utils.matching import hit_matrix
from luna_utils.phantom import Phantom

COORD_COLUMNS = ["coordX", "coordY", "coordZ"]

# Digits after the decimal point of every float written to a CSV file.
CSV_DECIMALS = 6

# Share of false-positive candidates by kind. A kind without landmarks is left out, and the
# others share its weight.
NEGATIVE_KIND_WEIGHTS = {
    "vessel": 0.38,
    "bifurcation": 0.17,
    "pleura": 0.20,
    "bone": 0.07,
    "airway": 0.06,
    "other": 0.12,
}

# Candidates per scan that are not nodules in V1. V2 has 1.2-1.45 times as many.
V1_NEGATIVES_RANGE = (90, 160)

# Standard deviation of the offset between a false-positive candidate and its landmark, mm.
NEGATIVE_JITTER_MM = 0.7

# V1 misses a nodule under this diameter with this probability.
V1_SMALL_NODULE_MM = 6.0
V1_MISS_PROBABILITY = 0.35


def quantize(values: NDArray | pd.Series) -> NDArray[np.float64]:
    """Round floats to `CSV_DECIMALS` exactly as writing and reading them back as text does."""
    flat = np.asarray(values, dtype=np.float64).reshape(-1)
    rounded = np.array([float(f"{value:.{CSV_DECIMALS}f}") for value in flat], dtype=np.float64)
    return rounded.reshape(np.shape(values))


def _points_in_ball(center_xyz_mm: NDArray, radius_mm: float, count: int, rng: np.random.Generator) -> NDArray:
    """Return `count` points drawn uniformly in a ball, shape (count, 3)."""
    directions = rng.normal(size=(count, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True) + 1e-12
    radii = radius_mm * rng.uniform(0.0, 1.0, size=(count, 1)) ** (1.0 / 3.0)
    return center_xyz_mm + directions * radii


def _nodule_candidates(nodules: pd.DataFrame, version: int, rng: np.random.Generator) -> NDArray:
    """Return candidates on nodules, (N, 3) world mm, within half of each nodule's radius."""
    points = []
    for row in nodules.itertuples(index=False):
        center = np.array([row.coordX, row.coordY, row.coordZ])
        diameter = float(row.diameter_mm)
        if version == 1:
            if diameter < V1_SMALL_NODULE_MM and rng.random() < V1_MISS_PROBABILITY:
                continue
            count = 1 + int(rng.poisson(min(2.0, diameter / 6.0)))
        else:
            count = 1 + min(4, int(rng.poisson(min(3.0, diameter / 5.0))))
        points.append(_points_in_ball(center, 0.5 * diameter / 2.0, count, rng))
    return np.vstack(points) if points else np.zeros((0, 3))


def _negative_candidates(
    landmarks: dict[str, NDArray], count: int, rng: np.random.Generator
) -> tuple[NDArray, list[str]]:
    """Return `count` false-positive candidates (N, 3) world mm and their kinds."""
    kinds = [kind for kind in NEGATIVE_KIND_WEIGHTS if landmarks.get(kind, np.zeros((0, 3))).shape[0] > 0]
    if not kinds:
        return np.zeros((0, 3)), []
    weights = np.array([NEGATIVE_KIND_WEIGHTS[kind] for kind in kinds])
    drawn = rng.choice(len(kinds), size=count, p=weights / weights.sum())

    points, names = [], []
    for kind_index, kind in enumerate(kinds):
        number = int(np.sum(drawn == kind_index))
        if number == 0:
            continue
        pool = landmarks[kind]
        chosen = pool[rng.integers(0, pool.shape[0], size=number)]
        points.append(chosen + rng.normal(0.0, NEGATIVE_JITTER_MM, size=chosen.shape))
        names.extend([kind] * number)
    return np.vstack(points), names


def make_candidates(phantom: Phantom, rng: np.random.Generator) -> pd.DataFrame:
    """Build the V1 and V2 candidate lists of one scan.

    False positives that happen to fall within a nodule's radius are dropped, so every class-0
    candidate misses every nodule and every class-1 candidate is of kind "nodule".

    Args:
        phantom: The scan's phantom, whose nodules table contains world coordinates.
        rng: Random generator of this scan.

    Returns:
        Columns coordX, coordY, coordZ (rounded to 6 decimals), class, kind, version (1 or 2).
    """
    nodules = phantom.nodules
    centers = nodules[COORD_COLUMNS].to_numpy(dtype=np.float64)
    diameters = nodules["diameter_mm"].to_numpy(dtype=np.float64)

    # V2 keeps part of V1's false positives and adds its own, as a retrained detector would.
    n_v1 = int(rng.integers(V1_NEGATIVES_RANGE[0], V1_NEGATIVES_RANGE[1] + 1))
    n_v2_new = int(round(n_v1 * rng.uniform(0.6, 0.85)))
    v1_points, v1_kinds = _negative_candidates(phantom.landmarks_xyz_mm, n_v1, rng)
    reused = np.flatnonzero(rng.random(len(v1_kinds)) < 0.6)
    new_points, new_kinds = _negative_candidates(phantom.landmarks_xyz_mm, n_v2_new, rng)
    v2_points = np.vstack([v1_points[reused], new_points])
    v2_kinds = [v1_kinds[i] for i in reused] + new_kinds

    frames = []
    for version, negatives, kinds in ((1, v1_points, v1_kinds), (2, v2_points, v2_kinds)):
        positives = _nodule_candidates(nodules, version, rng)
        points = quantize(np.vstack([positives, negatives]).reshape(-1, 3))
        frame = pd.DataFrame(points, columns=COORD_COLUMNS)
        frame["kind"] = ["nodule"] * positives.shape[0] + list(kinds)
        frame["class"] = label_candidates(points, centers, diameters)
        frame["version"] = version
        frames.append(frame[(frame["kind"] == "nodule") | (frame["class"] == 0)])

    return pd.concat(frames, ignore_index=True)[[*COORD_COLUMNS, "class", "kind", "version"]]


def label_candidates(points_xyz_mm: NDArray, centers_xyz_mm: NDArray, diameters_mm: NDArray) -> NDArray[np.int64]:
    """Return LUNA16's class of each candidate: 1 if it hits a nodule (strictly within its radius), else 0."""
    points = np.asarray(points_xyz_mm, dtype=np.float64).reshape(-1, 3)
    if points.shape[0] == 0 or np.size(diameters_mm) == 0:
        return np.zeros(points.shape[0], dtype=np.int64)
    return hit_matrix(points, centers_xyz_mm, diameters_mm).any(axis=1).astype(np.int64)


def format_csv(frame: pd.DataFrame, line_ending: str = "\n", header: bool = True) -> str:
    """Format a table as CSV text with fixed float formatting: 6 decimals, and -1 as "-1".

    Args:
        frame: The table. Columns are written in order and rows as they are.
        line_ending: "\\n", or "\\r\\n" as in LUNA16's annotation files.
        header: Whether to write the column names first.
    """
    lines = [",".join(frame.columns)] if header else []
    columns = []
    for name in frame.columns:
        values = frame[name].to_numpy()
        if np.issubdtype(values.dtype, np.floating):
            columns.append(["-1" if value == -1.0 else f"{value:.{CSV_DECIMALS}f}" for value in values])
        else:
            columns.append([str(value) for value in values])
    lines.extend(",".join(row) for row in zip(*columns))
    return "".join(line + line_ending for line in lines)


def write_text_atomic(path: Path, text: str) -> None:
    """Write text to path through a temporary file in the same folder, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="ascii", newline="") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
