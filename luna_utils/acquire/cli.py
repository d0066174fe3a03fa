"""Command line: `python -m luna_utils.acquire --dest DIR [options]`.

Prints the plan (with --dry-run) or the final table, one row per file. The exit status is 0 when
every file reached its finished state and 1 when any file failed. It is 2 on invalid input: an
unknown file, an invalid manifest or source, or too little disk space.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import pandas as pd

from luna_utils.acquire.catalog import ZENODO_URL
from luna_utils.acquire.download import RetryPolicy
from luna_utils.acquire.pipeline import acquire
from luna_utils.dataset import ENV_DATA_DIR
from luna_utils.errors import LunaError


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the acquisition command."""
    parser = argparse.ArgumentParser(
        prog="python -m luna_utils.acquire",
        description=(
            "Download LUNA16 (Zenodo records 3723295 and 4121926) with resume and checksums, and "
            "extract it into the layout the tutorial reads. Rerunning the command continues "
            "where it stopped and skips what is complete."
        ),
    )
    parser.add_argument(
        "--dest",
        default=os.environ.get(ENV_DATA_DIR),
        help=f"dataset folder to fill (default: the {ENV_DATA_DIR} environment variable)",
    )

    parser.add_argument("--subsets", type=int, nargs="+", metavar="N", help="subsets to fetch, 0-9 (subsetN.zip)")
    parser.add_argument("--files", nargs="+", metavar="NAME", help="file names to fetch, e.g. annotations.csv")

    parser.add_argument("--workers", type=int, default=4, help="files fetched at the same time (default: 4)")
    parser.add_argument(
        "--base-url",
        help=f"mirror to fetch from: an http(s) URL serving <URL>/<name>, or a local folder (default: {ZENODO_URL})",
    )
    parser.add_argument("--manifest", help="CSV with columns name,size,md5 that replaces the built-in catalog")

    parser.add_argument("--dry-run", action="store_true", help="list what would be fetched and the disk needed; fetch nothing")
    parser.add_argument("--delete-archives", action="store_true", help="delete each archive once its extraction is verified")
    parser.add_argument(
        "--no-zenodo-api",
        action="store_true",
        help="do not read sizes and checksums from the Zenodo API; use the built-in catalog",
    )

    parser.add_argument("--timeout", type=float, default=60.0, help="network timeout in seconds (default: 60)")
    parser.add_argument("--retries", type=int, default=5, help="failed attempts in a row tolerated per file (default: 5)")
    parser.add_argument("--backoff", type=float, default=2.0, help="first wait between attempts in seconds, doubled each time (default: 2)")
    return parser


def format_bytes(value) -> str:
    """Return a byte count in B, kB, MB or GB (powers of 1000), or "?" for NA."""
    if pd.isna(value):
        return "?"
    value = int(value)
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value} B"


def format_plan(plan: pd.DataFrame) -> str:
    """Return the dry-run plan and its totals as text."""
    shown = plan.copy()
    for column in ("size", "bytes_to_fetch", "bytes_to_extract"):
        shown[column] = shown[column].map(format_bytes)
    lines = [
        shown.to_string(index=False),
        "",
        f"To download: {format_bytes(plan.attrs['bytes_to_fetch'])}; to extract: "
        f"{format_bytes(plan.attrs['bytes_to_extract'])}; needed: {format_bytes(plan.attrs['bytes_needed'])}; "
        f"free: {format_bytes(plan.attrs['bytes_free'])}.",
    ]
    if plan.attrs["unknown_sizes"]:
        lines.append(f"Sizes unknown (counted as 0): {', '.join(plan.attrs['unknown_sizes'])}.")
    return "\n".join(lines)


def format_report(table: pd.DataFrame) -> str:
    """Return the final table and a summary line as text."""
    shown = table.copy()
    shown["size"] = shown["size"].map(format_bytes)
    failed = int((table["state"] == "failed").sum())
    summary = f"{len(table) - failed} of {len(table)} file(s) done, {failed} failed."
    return shown.to_string(index=False) + "\n\n" + summary


def main(argv: list[str] | None = None) -> int:
    """Run the command and return its exit status."""
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers and not logging.getLogger("luna_utils").handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    if not args.dest:
        print(f"error: pass --dest DIR or set {ENV_DATA_DIR}.", file=sys.stderr)
        return 2
    try:
        table = acquire(
            args.dest,
            subsets=args.subsets,
            files=args.files,
            base_url=args.base_url,
            manifest=args.manifest,
            workers=args.workers,
            dry_run=args.dry_run,
            delete_archives=args.delete_archives,
            use_zenodo_api=not args.no_zenodo_api,
            timeout_s=args.timeout,
            policy=RetryPolicy(retries=args.retries, backoff_s=args.backoff),
        )
    except LunaError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    if args.dry_run:
        print(format_plan(table))
        return 0 if table.attrs["bytes_needed"] <= table.attrs["bytes_free"] else 1
    print(format_report(table))
    return 1 if (table["state"] == "failed").any() else 0
