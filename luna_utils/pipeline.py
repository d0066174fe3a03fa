"""The `tf.data` input pipeline: patch reading, class balancing and augmentation.

Patches come from a `luna_utils.patch_cache.PatchCache`: int16 HU cubes of odd edge S (37 by
default), axes (z, y, x), 1 mm voxels, the candidate at index S // 2. The network receives a cube of
edge `INPUT_SIZE` (32) with the candidate at index 16 (= 32 // 2) unless a shift moved it.

Training batches are built in this order:

1. two index streams, negatives and positives, each shuffled with a seed and repeated;
2. `tf.data.Dataset.sample_from_datasets` draws from them with fixed weights, so a chosen share
   of every batch is positive whatever the imbalance of the split (LUNA16 has about 1 nodule per
   500 candidates);
3. each index is read from the memory-mapped patches in parallel (`num_parallel_calls`);
4. each patch is augmented with stateless random ops seeded by (seed, element number), so a run
   repeats exactly. Flips along z, y and x and in-plane 90 degree rotations turn the cube about
   its centre voxel, which keeps the candidate in place. A shift of a few voxels crops the input
   from the larger stored cube, so it never pads. A small intensity jitter changes contrast and
   brightness;
5. batching and prefetching.

Input values are HU mapped linearly from `HU_WINDOW` to [0, 1] and clipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
from numpy.typing import ArrayLike, NDArray

from luna_utils.errors import LunaError

logger = logging.getLogger(__name__)

# Default edge of the network's input cube, in voxels (1 mm each).
INPUT_SIZE = 32

# HU range mapped to [0, 1]: from air to dense soft tissue, the range of lung nodules.
HU_WINDOW = (-1000.0, 400.0)

AUTOTUNE = tf.data.AUTOTUNE


@dataclass(frozen=True)
class AugmentConfig:
    """Random changes applied to each training patch.

    Attributes:
        flips: Flip along z, y and x, each with probability 1/2.
        rotations: Rotate the axial (y, x) plane by 0, 90, 180 or 270 degrees.
        max_shift: Largest shift of the candidate from the centre, in voxels per axis.
        intensity_scale: Largest relative change of contrast (0.05 means x0.95 to x1.05).
        intensity_offset: Largest shift of the windowed values, in units of the [0, 1] window.
    """

    flips: bool = True
    rotations: bool = True
    max_shift: int = 2
    intensity_scale: float = 0.05
    intensity_offset: float = 0.03

    @classmethod
    def off(cls) -> AugmentConfig:
        """Return a config that changes nothing (centre crop and windowing only)."""
        return cls(flips=False, rotations=False, max_shift=0, intensity_scale=0.0, intensity_offset=0.0)


def centre_offset(stored_size: int, size: int = INPUT_SIZE) -> int:
    """Return the start index of the centred crop: the stored centre lands at index size // 2."""
    return stored_size // 2 - size // 2


def max_allowed_shift(stored_size: int, size: int = INPUT_SIZE) -> int:
    """Return the largest shift, in voxels, that keeps a crop of edge `size` inside the stored cube."""
    start = centre_offset(stored_size, size)
    return min(start, stored_size - size - start)


def _check_sizes(stored_size: int, size: int, config: AugmentConfig) -> None:
    if stored_size % 2 == 0:
        raise LunaError(
            f"Stored patches must have an odd edge so flips keep the candidate in place; got {stored_size}."
        )
    if stored_size < size:
        raise LunaError(f"Stored patches ({stored_size}^3) are smaller than the input size {size}^3.")
    allowed = max_allowed_shift(stored_size, size)
    if config.max_shift > allowed:
        raise LunaError(
            f"A shift of {config.max_shift} voxels does not fit a {size}^3 crop in a {stored_size}^3 "
            f"patch (at most {allowed}); lower max_shift or store larger patches."
        )


def window_tf(patch_hu: tf.Tensor) -> tf.Tensor:
    """Map HU to [0, 1] over `HU_WINDOW`, clipped, as float32."""
    low, high = HU_WINDOW
    scaled = (tf.cast(patch_hu, tf.float32) - low) / (high - low)
    return tf.clip_by_value(scaled, 0.0, 1.0)


def prepare_patches(patches: ArrayLike, size: int = INPUT_SIZE) -> NDArray[np.float32]:
    """Centre-crop and window patches with NumPy, as the network receives them without augmentation.

    Args:
        patches: Shape (N, S, S, S) or (S, S, S), HU, axes (z, y, x).
        size: Edge of the crop.

    Returns:
        Shape (N, size, size, size, 1) (or (size, size, size, 1)), float32 in [0, 1].
    """
    array = np.asarray(patches)
    start = centre_offset(array.shape[-1], size)
    crop = array[..., start : start + size, start : start + size, start : start + size]
    low, high = HU_WINDOW
    windowed = np.clip((crop.astype(np.float32) - low) / (high - low), 0.0, 1.0)
    return windowed[..., np.newaxis]


def augment_patch(
    patch_hu: tf.Tensor, seed: tf.Tensor, config: AugmentConfig, size: int = INPUT_SIZE
) -> tf.Tensor:
    """Apply seeded random flips, rotations, shift and intensity jitter to one patch.

    Flips and rotations act on the stored cube about its centre voxel, which they leave in place;
    the shift then moves the crop window. The same seed always gives the same output.

    Args:
        patch_hu: Shape (S, S, S) with S odd, HU, axes (z, y, x).
        seed: Shape (2,) int, the stateless seed.
        config: What to change.
        size: Edge of the output cube.

    Returns:
        Shape (size, size, size, 1), float32, windowed to [0, 1] and then jittered, so values can
        leave [0, 1] by up to the jitter amount.
    """
    stored_size = int(patch_hu.shape[0])
    _check_sizes(stored_size, size, config)
    flip_seed, rotate_seed, shift_seed, scale_seed, offset_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=5)
    )
    patch = patch_hu

    if config.flips:
        flip = tf.random.stateless_uniform((3,), flip_seed) < 0.5
        for axis in range(3):
            patch = tf.cond(flip[axis], lambda p=patch, a=axis: tf.reverse(p, [a]), lambda p=patch: p)

    if config.rotations:
        turns = tf.random.stateless_uniform((), rotate_seed, minval=0, maxval=4, dtype=tf.int32)
        # tf.image.rot90 turns the first two axes of an (H, W, C) image: here (y, x), with z as C.
        in_plane = tf.transpose(patch, (1, 2, 0))
        patch = tf.transpose(tf.image.rot90(in_plane, k=turns), (2, 0, 1))

    start = centre_offset(stored_size, size)
    if config.max_shift > 0:
        shift = tf.random.stateless_uniform(
            (3,), shift_seed, minval=-config.max_shift, maxval=config.max_shift + 1, dtype=tf.int32
        )
    else:
        shift = tf.zeros((3,), tf.int32)
    patch = tf.slice(patch, start + shift, (size, size, size))

    values = window_tf(patch)
    if config.intensity_scale > 0 or config.intensity_offset > 0:
        scale = 1.0 + tf.random.stateless_uniform(
            (), scale_seed, minval=-config.intensity_scale, maxval=config.intensity_scale
        )
        offset = tf.random.stateless_uniform(
            (), offset_seed, minval=-config.intensity_offset, maxval=config.intensity_offset
        )
        values = values * scale + offset
    return values[..., tf.newaxis]


def _patch_reader(patches: np.ndarray):
    """Return a graph function that reads one patch by index from a NumPy array or memory map."""
    shape = tuple(int(n) for n in patches.shape[1:])

    def read(index: np.int64) -> np.ndarray:
        return np.ascontiguousarray(patches[int(index)], dtype=np.int16)

    def read_tf(index: tf.Tensor) -> tf.Tensor:
        patch = tf.numpy_function(read, [index], tf.int16, stateful=False)
        patch.set_shape(shape)
        return patch

    return read_tf


def _check_cache(patches: np.ndarray, labels: NDArray) -> NDArray[np.int64]:
    if patches.ndim != 4 or len(set(patches.shape[1:])) != 1:
        raise LunaError(f"Expected patches of shape (N, S, S, S); got {patches.shape}.")
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if labels.shape[0] != patches.shape[0]:
        raise LunaError(f"Got {patches.shape[0]} patches but {labels.shape[0]} labels; give one label per patch.")
    if not np.isin(labels, (0, 1)).all():
        raise LunaError(f"Labels must be 0 or 1; got values {sorted(set(labels.tolist()))[:5]}.")
    return labels


def training_dataset(
    patches: np.ndarray,
    labels: ArrayLike,
    batch_size: int,
    positive_fraction: float | None = 0.25,
    augment: AugmentConfig = AugmentConfig(),
    seed: int = 0,
    size: int = INPUT_SIZE,
) -> tf.data.Dataset:
    """Build the endless, balanced, augmented stream of training batches.

    Args:
        patches: Shape (N, S, S, S), int16 HU, axes (z, y, x); a memory map is read lazily.
        labels: Shape (N,), 0 or 1.
        batch_size: Patches per batch.
        positive_fraction: Expected share of positives in the stream, in (0, 1); None samples
            the patches with their natural frequency.
        augment: Random changes applied to each patch.
        seed: Seed of shuffling, class sampling and augmentation.
        size: Edge of the network input.

    Returns:
        An infinite dataset of (inputs (B, size, size, size, 1) float32, labels (B,) float32).

    Raises:
        LunaError: On mismatched inputs, a fraction outside (0, 1), or a class missing when
            balancing is requested.
    """
    labels = _check_cache(patches, labels)
    _check_sizes(int(patches.shape[1]), size, augment)
    label_tensor = tf.constant(labels, dtype=tf.float32)

    if positive_fraction is None:
        indices = _shuffled_indices(np.arange(len(labels)), seed)
    else:
        if not 0.0 < positive_fraction < 1.0:
            raise LunaError(f"positive_fraction must be in (0, 1) or None; got {positive_fraction!r}.")
        positive = np.flatnonzero(labels == 1)
        negative = np.flatnonzero(labels == 0)
        if len(positive) == 0 or len(negative) == 0:
            raise LunaError(
                f"Balancing needs both classes; the training patches have {len(positive)} positive(s) "
                f"and {len(negative)} negative(s). Add subsets to the training split."
            )
        indices = tf.data.Dataset.sample_from_datasets(
            [_shuffled_indices(negative, seed), _shuffled_indices(positive, seed + 1)],
            weights=[1.0 - positive_fraction, positive_fraction],
            seed=seed,
        )

    read = _patch_reader(patches)

    def load(count: tf.Tensor, index: tf.Tensor):
        element_seed = tf.stack([tf.constant(seed, tf.int64), count])
        inputs = augment_patch(read(index), element_seed, augment, size)
        return inputs, tf.gather(label_tensor, index)

    dataset = indices.enumerate().map(load, num_parallel_calls=AUTOTUNE, deterministic=True)
    return dataset.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE)


def _shuffled_indices(indices: NDArray[np.int64], seed: int) -> tf.data.Dataset:
    dataset = tf.data.Dataset.from_tensor_slices(indices.astype(np.int64))
    dataset = dataset.shuffle(len(indices), seed=seed, reshuffle_each_iteration=True)
    return dataset.repeat()


# Views of test-time augmentation: (flip z, in-plane quarter turns). The eight views are the
# four turns of the axial plane, each with and without a flip along z.
TEST_TIME_VIEWS = tuple((flip_z, turns) for flip_z in (False, True) for turns in range(4))


def evaluation_dataset(
    patches: np.ndarray,
    labels: ArrayLike | None = None,
    batch_size: int = 64,
    size: int = INPUT_SIZE,
    view: tuple[bool, int] = (False, 0),
) -> tf.data.Dataset:
    """Build the stream of centre-cropped, windowed patches in their stored order, once.

    Args:
        patches: Shape (N, S, S, S), int16 HU, axes (z, y, x).
        labels: Shape (N,), 0 or 1, or None for inputs only.
        batch_size: Patches per batch (the last batch may be smaller).
        size: Edge of the network input.
        view: (flip along z, quarter turns of the axial plane), applied to the stored cube about
            its centre voxel before the crop; see `TEST_TIME_VIEWS`.

    Returns:
        A finite dataset of inputs (B, size, size, size, 1) float32, or of (inputs, labels).
    """
    if labels is not None:
        labels = _check_cache(patches, labels)
    stored_size = int(patches.shape[1])
    _check_sizes(stored_size, size, AugmentConfig.off())
    start = centre_offset(stored_size, size)
    flip_z, turns = view

    def read(first: np.int64) -> np.ndarray:
        stop = min(int(first) + batch_size, patches.shape[0])
        batch = np.asarray(patches[int(first) : stop])
        if flip_z:
            batch = batch[:, ::-1]
        # Turning the (y, x) plane of an odd cube about its centre voxel keeps the candidate there.
        batch = np.rot90(batch, k=turns, axes=(2, 3))
        crop = batch[:, start : start + size, start : start + size, start : start + size]
        return np.ascontiguousarray(crop, dtype=np.int16)

    def load(first: tf.Tensor):
        batch = tf.numpy_function(read, [first], tf.int16, stateful=False)
        batch.set_shape((None, size, size, size))
        inputs = window_tf(batch)[..., tf.newaxis]
        if labels is None:
            return inputs
        stop = tf.minimum(first + batch_size, patches.shape[0])
        return inputs, tf.cast(label_tensor[first:stop], tf.float32)

    label_tensor = None if labels is None else tf.constant(labels, dtype=tf.float32)
    starts = tf.data.Dataset.range(0, patches.shape[0], batch_size)
    return starts.map(load, num_parallel_calls=AUTOTUNE, deterministic=True).prefetch(AUTOTUNE)
