"""Command line: score a LUNA16 submission with the official rules.

Example::

    python -m luna_utils.evaluation --annotations annotations.csv \\
        --excluded annotations_excluded.csv --seriesuids seriesuids.csv \\
        --submission submission.csv --out results/

Prints the counts, the seven sensitivities and the CPM with its bootstrap interval (or one JSON
object with `--json`), and writes the FROC plot and curve to `--out`. Exit status: 0 on success,
1 on invalid input, 2 on invalid options.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

from luna_utils.errors import LunaError
from luna_utils.evaluation.evaluator import evaluate_files
from luna_utils.evaluation.report import write_outputs
from luna_utils.evaluation.rules import OFFICIAL_MAX_MARKS_PER_SCAN


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the command."""
    parser = argparse.ArgumentParser(
        prog="python -m luna_utils.evaluation",
        description="Score a LUNA16 submission (seriesuid,coordX,coordY,coordZ,probability) with the "
        "rules of the official evaluation script, and report the FROC and the CPM.",
    )
    parser.add_argument("--annotations", required=True, help="annotations.csv: the included nodules")
    parser.add_argument("--excluded", help="annotations_excluded.csv: findings whose marks are ignored")
    parser.add_argument("--seriesuids", required=True, help="the evaluated scans, one seriesuid per line")
    parser.add_argument("--submission", required=True, help="the marks to score, one row per mark")
    parser.add_argument("--out", help="folder for froc.png, froc.csv, froc_bootstrap.csv, nodules.csv, summary.txt")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples over scans; 0 turns it off (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    parser.add_argument(
        "--max-marks-per-scan",
        type=int,
        default=OFFICIAL_MAX_MARKS_PER_SCAN,
        help=f"per-scan cap on marks, as the official script applies it; 0 keeps every mark (default {OFFICIAL_MAX_MARKS_PER_SCAN})",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the text report")
    parser.add_argument(
        "--no-excluded",
        action="store_true",
        help="score without the excluded findings on purpose; marks on them then count as false positives",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; return the exit status."""
    args = build_parser().parse_args(argv)
    if args.excluded and args.no_excluded:
        print("error: pass either --excluded or --no-excluded, not both.", file=sys.stderr)
        return 2
    if args.bootstrap < 0 or args.max_marks_per_scan < 0:
        print("error: --bootstrap and --max-marks-per-scan must be 0 or more.", file=sys.stderr)
        return 2

    try:
        with warnings.catch_warnings():
            # Warnings go to stderr as one line each, so stdout stays a clean report or JSON object.
            warnings.showwarning = _show_warning
            result = evaluate_files(
                args.submission,
                args.annotations,
                args.excluded,
                args.seriesuids,
                allow_no_excluded=args.no_excluded,
                max_marks_per_scan=args.max_marks_per_scan,
                bootstrap=args.bootstrap,
                seed=args.seed,
                show_progress=not args.json,
            )
    except LunaError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1

    try:
        paths = write_outputs(result, args.out, label=_label(args.submission)) if args.out else {}
    except OSError as error:
        print(f"error: could not write the results to {args.out}: {error}", file=sys.stderr)
        return 1

    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(result.summary())
        for kind, path in paths.items():
            print(f"Wrote {kind}: {path}")
    return 0


def _label(path: str) -> str:
    return Path(path).stem


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


if __name__ == "__main__":
    # The warnings already report every surprise; log records below ERROR would repeat them.
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
