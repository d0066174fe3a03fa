"""Benchmark: the vectorised LUNA16 evaluator against the plain-loop reference.

The submission is synthetic but sized like a real one. Each of the 888 real scans gets as many
marks as it has rows in candidates_V2.csv (754,975 in all, counted in
`data/real/luna16_scans_metadata.csv`). The marks are placed around the real annotation tables:
some inside nodules, some on excluded findings, the rest anywhere in the scan's box. Probabilities are rounded
to 4 decimals, as many models' outputs are, so ties occur at the 100-mark cap.

Run: `python benchmarks/bench_evaluation.py` (under a minute on 2 idle cores). It prints a
Markdown table of timings (the median of several runs) and ratios, and stops with an error if
the two implementations disagree.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import time
import warnings

import numpy as np
import pandas as pd

from luna_utils.dataset import load_real_table
from luna_utils.geometry import voxel_to_world
from luna_utils.evaluation import evaluate
from luna_utils.evaluation.reference import reference_evaluate

COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ", "probability"]


def make_submission(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, list[str]]:
    """Build the synthetic submission and return it with the real annotation tables and scan list."""
    rng = np.random.default_rng(seed)
    metadata = load_real_table("luna16_scans_metadata")
    annotations = load_real_table("annotations")
    excluded = load_real_table("annotations_excluded")
    seriesuids = load_real_table("seriesuids")["seriesuid"].tolist()

    nodules_by_scan = {uid: group for uid, group in annotations.groupby("seriesuid")}
    excluded_by_scan = {uid: group for uid, group in excluded.groupby("seriesuid")}
    parts = []
    for scan in metadata.itertuples(index=False):
        n_marks = int(scan.n_cand_v2)
        points = []

        # Up to 3 marks per nodule, inside it or just outside.
        nodules = nodules_by_scan.get(scan.seriesuid)
        if nodules is not None:
            for nodule in nodules.itertuples(index=False):
                for _ in range(rng.integers(0, 4)):
                    offset = rng.normal(0.0, nodule.diameter_mm / 4.0, 3)
                    points.append((nodule.coordX, nodule.coordY, nodule.coordZ, *offset, rng.beta(6, 2)))

        # A fifth of the excluded findings get a mark near them.
        findings = excluded_by_scan.get(scan.seriesuid)
        if findings is not None:
            for finding in findings.itertuples(index=False):
                if rng.random() < 0.2:
                    points.append((finding.coordX, finding.coordY, finding.coordZ, *rng.normal(0.0, 3.0, 3), rng.beta(2, 3)))

        # The rest anywhere in the scan's box: the world points of its first and last voxels.
        corners_xyz_mm = voxel_to_world(
            [[0, 0, 0], [scan.n_slices - 1, scan.dim_y - 1, scan.dim_x - 1]],
            [scan.origin_x, scan.origin_y, scan.origin_z],
            [scan.sp_x, scan.sp_y, scan.sp_z],
            np.diag([scan.flip_x, scan.flip_y, scan.flip_z]),
        )
        low, high = corners_xyz_mm.min(axis=0), corners_xyz_mm.max(axis=0)
        n_random = max(n_marks - len(points), 0)
        random_xyz = rng.uniform(low, high, size=(n_random, 3))
        random_probability = rng.beta(1.5, 6, n_random)

        xyz = np.array([p[:3] for p in points]).reshape(-1, 3) + np.array([p[3:6] for p in points]).reshape(-1, 3)
        probability = np.array([p[6] for p in points])
        frame = pd.DataFrame(
            np.column_stack((np.vstack((xyz, random_xyz)), np.concatenate((probability, random_probability)))),
            columns=COLUMNS[1:],
        )
        frame.insert(0, "seriesuid", scan.seriesuid)
        parts.append(frame.iloc[:n_marks])

    submission = pd.concat(parts, ignore_index=True)
    submission = submission.iloc[rng.permutation(len(submission))].reset_index(drop=True)
    submission["probability"] = submission["probability"].round(4)
    return submission, annotations, excluded, seriesuids


def timed(function, *args, **kwargs):
    """Run once; return the value and the CPU time of this process in seconds.

    CPU time, unlike wall-clock time, barely changes when other programs share the cores. Both
    implementations run on one thread, so for them it equals the wall-clock time of an idle machine.
    """
    start = time.process_time()
    value = function(*args, **kwargs)
    return value, time.process_time() - start


def median_time(repeats, function, *args, **kwargs):
    """Run `repeats` times; return the first value and the median CPU time in seconds."""
    value, seconds = timed(function, *args, **kwargs)
    times = [seconds] + [timed(function, *args, **kwargs)[1] for _ in range(repeats - 1)]
    return value, statistics.median(times)


def check_same(fast, reference, label: str) -> None:
    counts = fast.counts()
    expected = {key: reference[key] for key in counts}
    if counts != expected:
        raise SystemExit(f"{label}: evaluate and the loop reference disagree on the counts: {counts} vs {expected}")
    if not np.allclose(fast.sensitivities, reference["sensitivities"], rtol=0, atol=1e-12):
        raise SystemExit(f"{label}: evaluate and the loop reference disagree on the sensitivities: {fast.sensitivities} vs {reference['sensitivities']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic submission (default 0)")
    parser.add_argument(
        "--reference-resamples",
        type=int,
        default=100,
        help="bootstrap resamples timed for the loop reference; its time is scaled to 1,000 (default 100)",
    )
    args = parser.parse_args()
    # The warnings (ties at the cap, scans outside a partial list) are expected here.
    logging.getLogger("luna_utils").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")

    submission, annotations, excluded, seriesuids = make_submission(args.seed)
    print(f"Synthetic submission: {len(submission):,} marks over {len(seriesuids)} scans")
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}")
    rows = []

    # 1. Counts, FROC and CPM with the official 100-mark cap, no bootstrap.
    fast, fast_seconds = median_time(11, evaluate, submission, annotations, excluded, seriesuids, bootstrap=0)
    reference, reference_seconds = median_time(3, reference_evaluate, submission, annotations, excluded, seriesuids)
    check_same(fast, reference, "cap 100")
    rows.append(("counts + FROC + CPM, cap 100", reference_seconds, fast_seconds, "all scans"))
    print(
        f"cap 100: {fast.n_marks:,} marks kept, {fast.dropped_by_cap:,} dropped, TP {fast.tp}, FP {fast.fp:,}, "
        f"CPM {fast.cpm:.4f} (both implementations agree)"
    )

    # 2. Without the cap, as the official example output was produced. The loop reference runs
    #    on every 8th scan and its time is scaled by the share of marks it saw.
    fast_all, fast_all_seconds = median_time(
        5, evaluate, submission, annotations, excluded, seriesuids, max_marks_per_scan=None, bootstrap=0
    )
    some_scans = seriesuids[::8]
    some_marks = submission[submission["seriesuid"].isin(set(some_scans))]
    fast_part = evaluate(submission, annotations, excluded, some_scans, max_marks_per_scan=None, bootstrap=0)
    reference_part, reference_part_seconds = timed(
        reference_evaluate, submission, annotations, excluded, some_scans, max_marks_per_scan=None
    )
    check_same(fast_part, reference_part, "no cap, every 8th scan")
    scaled = reference_part_seconds * len(submission) / len(some_marks)
    rows.append(("counts + FROC + CPM, no cap", scaled, fast_all_seconds, f"reference on {len(some_scans)} scans, scaled"))
    print(f"no cap: {fast_all.n_marks:,} marks, CPM {fast_all.cpm:.4f}")

    # 3. Bootstrap, 1,000 resamples over scans, cap 100. Both use the same resample draws.
    wall_start = time.perf_counter()
    boot_fast, boot_total_seconds = timed(evaluate, submission, annotations, excluded, seriesuids, bootstrap=1000, seed=1)
    boot_wall_seconds = time.perf_counter() - wall_start
    boot_total_seconds = statistics.median(
        [boot_total_seconds] + [timed(evaluate, submission, annotations, excluded, seriesuids, bootstrap=1000, seed=1)[1] for _ in range(2)]
    )
    boot_fast_seconds = boot_total_seconds - fast_seconds
    small_fast = evaluate(submission, annotations, excluded, seriesuids, bootstrap=args.reference_resamples, seed=1)
    boot_reference, boot_reference_seconds = timed(
        reference_evaluate, submission, annotations, excluded, seriesuids, bootstrap=args.reference_resamples, seed=1
    )
    if not np.allclose(small_fast.cpm_ci, boot_reference["cpm_ci"], rtol=0, atol=1e-12):
        raise SystemExit(f"evaluate and the loop reference disagree on the bootstrap interval: {small_fast.cpm_ci} vs {boot_reference['cpm_ci']}")
    scaled_bootstrap = (boot_reference_seconds - reference_seconds) * 1000 / args.reference_resamples
    rows.append(
        ("bootstrap, 1,000 resamples, cap 100", scaled_bootstrap, boot_fast_seconds, f"reference on {args.reference_resamples} resamples, scaled")
    )
    print(
        f"bootstrap: CPM {boot_fast.cpm:.4f}, 95% interval {boot_fast.cpm_ci[0]:.4f}-{boot_fast.cpm_ci[1]:.4f}; "
        f"evaluate with 1,000 resamples took {boot_total_seconds:.2f} CPU s, {boot_wall_seconds:.2f} s wall-clock"
    )

    print()
    print("| task | loop reference (CPU s) | `evaluate` (CPU s) | ratio | note |")
    print("|---|---:|---:|---:|---|")
    for task, slow, quick, note in rows:
        print(f"| {task} | {slow:.2f} | {quick:.3f} | {slow / quick:.0f}x | {note} |")


if __name__ == "__main__":
    main()
