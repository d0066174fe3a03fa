"""Benchmark: input-pipeline throughput against model training throughput, in samples per second.

The `tf.data` pipeline of `luna_utils.pipeline` must deliver batches faster than the 3-D CNN of
`luna_utils.models` consumes them, or training waits for data. Two measurements in one process:

1. pipeline: batches of the balanced, augmented training stream (`training_dataset`, default
   `AugmentConfig`) drawn from a memory-mapped patch cache and discarded, no model attached;
2. model: `train_on_batch` on one batch held in memory, so no input pipeline cost is included,
   for the default `CnnConfig` (32^3 input) and for notebook 06's CPU setting (24^3 input).

The ratio uses the faster model, the harder case for the pipeline.

The patch cache is synthetic: random int16 HU cubes of the stored size (37^3) in a temporary
`.npy` file, 5 % positives, as large as the sample's training split (2,500 patches, 256 MB).
The file is read while it sits in the operating system's page cache, as on every epoch after the
first. Target: the pipeline delivers at least 3x the samples per second that the model consumes.

Run: `python benchmarks/bench_pipeline.py` (about a minute on 2 cores). It prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from luna_utils.models import CnnConfig, build_cnn  # noqa: E402
from luna_utils.patch_cache import STORED_PATCH_SIZE  # noqa: E402
from luna_utils.pipeline import training_dataset  # noqa: E402
from luna_utils.training import set_seeds  # noqa: E402

# The pipeline must outpace the model by this factor.
TARGET_RATIO = 3.0


def make_patch_file(folder: Path, n_patches: int, seed: int = 0) -> tuple[np.memmap, np.ndarray]:
    """Write random patches to a `.npy` file and return it memory-mapped, with 5 % positive labels."""
    rng = np.random.default_rng(seed)
    path = folder / "patches.npy"
    size = STORED_PATCH_SIZE
    patches = np.lib.format.open_memmap(path, mode="w+", dtype=np.int16, shape=(n_patches, size, size, size))
    for start in range(0, n_patches, 250):
        stop = min(start + 250, n_patches)
        patches[start:stop] = rng.integers(-1000, 400, (stop - start, size, size, size), dtype=np.int16)
    patches.flush()
    del patches
    labels = (rng.random(n_patches) < 0.05).astype(np.int64)
    labels[0] = 1
    return np.load(path, mmap_mode="r"), labels


def pipeline_rate(patches: np.ndarray, labels: np.ndarray, batch_size: int, batches: int) -> float:
    """Return samples per second delivered by the training stream, after a warm-up of 5 batches."""
    stream = iter(training_dataset(patches, labels, batch_size=batch_size, seed=0))
    for _ in range(5):
        next(stream)
    start = time.perf_counter()
    for _ in range(batches):
        next(stream)
    return batches * batch_size / (time.perf_counter() - start)


# Networks timed: the default and notebook 06's CPU setting.
MODEL_CONFIGS = {
    "default CnnConfig, 32^3 input": CnnConfig(),
    "notebook 06 CPU setting, 24^3 input": CnnConfig(input_size=24),
}


def model_rate(patches: np.ndarray, labels: np.ndarray, batch_size: int, steps: int, config: CnnConfig) -> float:
    """Return samples per second consumed by training steps of a CNN on one in-memory batch."""
    stream = training_dataset(patches, labels, batch_size=batch_size, seed=1, size=config.input_size)
    inputs, targets = (tensor.numpy() for tensor in next(iter(stream)))
    model = build_cnn(config, positive_fraction=0.25)
    for _ in range(3):
        model.train_on_batch(inputs, targets)
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(inputs, targets)
    return steps * batch_size / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=2500, help="patches in the synthetic cache")
    parser.add_argument("--batch-size", type=int, default=32, help="samples per batch")
    parser.add_argument("--batches", type=int, default=60, help="batches timed for each measurement")
    args = parser.parse_args(argv)

    set_seeds(0)
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as folder:
        patches, labels = make_patch_file(Path(folder), args.patches)
        delivered = pipeline_rate(patches, labels, args.batch_size, args.batches)
        consumed = {
            name: model_rate(patches, labels, args.batch_size, args.batches // 3, config)
            for name, config in MODEL_CONFIGS.items()
        }
        del patches

    ratio = delivered / max(consumed.values())
    print(f"Machine: {platform.machine()}, {os.cpu_count()} CPU core(s), Python {platform.python_version()}")
    print(f"{args.patches} patches of {STORED_PATCH_SIZE}^3, batch size {args.batch_size}\n")
    print("| measurement | samples per second |")
    print("|---|---:|")
    print(f"| input pipeline (read, balance, augment, batch) | {delivered:,.0f} |")
    for name, rate in consumed.items():
        print(f"| model training steps, {name} | {rate:,.0f} |")
    print(f"| ratio pipeline / faster model | {ratio:.1f}x |")
    verdict = "met" if ratio >= TARGET_RATIO else "missed"
    print(f"\nTarget: pipeline >= {TARGET_RATIO:.0f}x the model's rate: {verdict}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
