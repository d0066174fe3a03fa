"""The whole acquisition: plan, check the disk, then fetch, verify and extract files in parallel.

Each selected file goes through one worker: transfer into `<name>.part` (resuming what an earlier
run left), check size and MD5, rename to `<name>`, extract if it is an archive, and optionally
delete the archive once its extraction is verified. The result is one table row per file with
its state: downloaded, resumed, verified, extracted, skipped or failed, and why.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import pandas as pd

from luna_utils.acquire import state
from luna_utils.acquire.catalog import CatalogEntry, load_manifest, luna16_catalog, select_entries, update_from_zenodo
from luna_utils.acquire.download import RetryPolicy, SharedBar, Transfer, download_to_part, part_path
from luna_utils.acquire.errors import AcquireError
from luna_utils.acquire.extract import extract_archive, extraction_complete, record_extraction
from luna_utils.acquire.sources import Source, resolve_source
from luna_utils.acquire.verify import Verification, md5_of_file, mismatch_message, set_aside, verify_file
from luna_utils.dataset import display_path
from luna_utils.errors import LunaError
from luna_utils.progress import progress

logger = logging.getLogger(__name__)

REPORT_COLUMNS = ["name", "state", "transfer", "check", "extract", "size", "detail"]
PLAN_COLUMNS = ["name", "record", "size", "md5_known", "on_disk", "bytes_to_fetch", "bytes_to_extract"]


@dataclass
class FileReport:
    """The outcome for one file; `state` is the furthest step reached, or "failed"."""

    name: str
    transfer: str = ""
    check: str = ""
    extract: str = ""
    size: int | None = None
    failed: bool = False
    checked_now: bool = False
    details: list[str] = field(default_factory=list)

    @property
    def state(self) -> str:
        """One of failed, extracted, resumed, downloaded, verified, skipped."""
        if self.failed:
            return "failed"
        if self.extract.startswith("extracted"):
            return "extracted"
        if self.transfer in ("resumed", "downloaded"):
            return self.transfer
        if self.checked_now:
            return "verified"
        return "skipped"

    def row(self) -> dict:
        """Return the report as a table row."""
        return {
            "name": self.name,
            "state": self.state,
            "transfer": self.transfer,
            "check": self.check,
            "extract": self.extract,
            "size": self.size,
            "detail": "; ".join(self.details),
        }


def _free_bytes(folder: Path) -> int:
    """Return the free bytes on the disk holding folder, or its nearest existing parent."""
    folder = folder.resolve()
    while not folder.exists():
        folder = folder.parent
    return shutil.disk_usage(folder).free


def plan_table(entries: Iterable[CatalogEntry], dest: Path) -> pd.DataFrame:
    """Describe what fetching entries into dest would do, without touching the network.

    Returns:
        One row per file with columns `PLAN_COLUMNS`: `on_disk` is "extracted", "complete",
        "partial" or "missing"; byte counts are NA where the size is unknown. `attrs` contains the
        totals: `bytes_to_fetch`, `bytes_to_extract`, `bytes_needed`, `bytes_free` and
        `unknown_sizes` (names whose size is unknown, counted as 0).
    """
    dest = Path(dest)
    rows = []
    for entry in entries:
        final = dest / entry.name
        part = part_path(dest, entry.name)
        to_extract = entry.extracted_estimate() if entry.size is not None or not entry.is_archive else None
        if entry.is_archive and extraction_complete(dest, entry.name, entry.md5):
            on_disk, to_fetch, to_extract = "extracted", 0, 0
        elif final.is_file():
            on_disk, to_fetch = "complete", 0
        elif part.is_file():
            on_disk = "partial"
            to_fetch = None if entry.size is None else max(entry.size - part.stat().st_size, 0)
        else:
            on_disk, to_fetch = "missing", entry.size
        rows.append(
            {
                "name": entry.name,
                "record": entry.record,
                "size": entry.size,
                "md5_known": entry.md5 is not None,
                "on_disk": on_disk,
                "bytes_to_fetch": to_fetch,
                "bytes_to_extract": to_extract,
            }
        )

    table = pd.DataFrame(rows, columns=PLAN_COLUMNS).astype(
        {"size": "Int64", "bytes_to_fetch": "Int64", "bytes_to_extract": "Int64"}
    )
    table.attrs["bytes_to_fetch"] = int(table["bytes_to_fetch"].fillna(0).sum())
    table.attrs["bytes_to_extract"] = int(table["bytes_to_extract"].fillna(0).sum())
    table.attrs["bytes_needed"] = table.attrs["bytes_to_fetch"] + table.attrs["bytes_to_extract"]
    table.attrs["bytes_free"] = _free_bytes(dest)
    table.attrs["unknown_sizes"] = table.loc[table["size"].isna(), "name"].tolist()
    return table


def check_disk_space(plan: pd.DataFrame, dest: Path) -> None:
    """Raise if the planned downloads and extractions do not fit on the disk.

    Raises:
        AcquireError: With both numbers and ways out.
    """
    needed = plan.attrs["bytes_needed"]
    free = plan.attrs["bytes_free"]
    if needed > free:
        raise AcquireError(
            f"Not enough free disk space in {dest}: about {needed / 1e9:.1f} GB are needed "
            f"({plan.attrs['bytes_to_fetch'] / 1e9:.1f} GB to download, "
            f"{plan.attrs['bytes_to_extract'] / 1e9:.1f} GB to extract), but only {free / 1e9:.1f} GB "
            "are free. Free some space, choose another --dest, or fetch fewer files (--subsets 0)."
        )
    if plan.attrs["unknown_sizes"]:
        logger.info(
            "The disk estimate counts 0 bytes for files of unknown size: %s.",
            ", ".join(plan.attrs["unknown_sizes"]),
        )


def _verify_existing(entry: CatalogEntry, final: Path, dest: Path, report: FileReport) -> bool:
    """Check a file already at its final name; set it aside if it fails. Return whether it passed.

    A record of an earlier check is trusted while the file's size and modification time are
    unchanged and the expected MD5 is the one checked then.
    """
    record = state.read_record(dest, entry.name, "verified")
    signature = state.file_signature(final)
    if (
        record is not None
        and record.get("size") == signature["size"]
        and record.get("mtime_ns") == signature["mtime_ns"]
        and (entry.md5 is None or record.get("md5") == entry.md5)
        and (entry.size is None or signature["size"] == entry.size)
    ):
        report.transfer = "present"
        report.check = record.get("check", "")
        report.size = signature["size"]
        return True

    verification = verify_file(entry, signature["size"], md5_of_file(final))
    if verification.ok:
        _store_verified(dest, final, verification)
        report.transfer, report.check, report.size = "present", verification.summary(), verification.size
        report.checked_now = True
        report.details.append("checked the file already present")
        return True

    aside = set_aside(final, verification)
    state.remove_record(dest, entry.name, "verified")
    logger.warning("%s", mismatch_message(verification, aside))
    report.details.append(f"file already present failed its check ({verification.summary()}), kept as {aside.name}")
    return False


def _store_verified(dest: Path, final: Path, verification: Verification) -> None:
    state.write_record(
        dest,
        final.name,
        "verified",
        {**state.file_signature(final), "md5": verification.md5, "check": verification.summary()},
    )


def _fetch(
    entry: CatalogEntry,
    source: Source,
    dest: Path,
    policy: RetryPolicy,
    overall: SharedBar,
    report: FileReport,
    cancel: threading.Event | None,
) -> bool:
    """Transfer, verify and rename one file into place. Return whether it passed its checks."""
    transfer: Transfer = download_to_part(entry, source, dest, policy, overall, cancel=cancel)
    report.transfer = transfer.how
    report.details.extend(transfer.notes)
    if transfer.resumed_from:
        report.details.append(f"resumed at byte {transfer.resumed_from}")

    verification = verify_file(entry, transfer.size, transfer.md5)
    report.check = verification.summary()
    report.size = transfer.size
    if not verification.ok:
        aside = set_aside(transfer.part, verification)
        message = mismatch_message(verification, aside)
        logger.error("%s", message)
        report.failed = True
        report.details.append(message)
        return False

    final = dest / entry.name
    os.replace(transfer.part, final)
    _store_verified(dest, final, verification)
    if verification.md5_state == "unavailable":
        report.details.append(f"no checksum known; md5 is {verification.md5}")
    return True


def _extract(
    entry: CatalogEntry, dest: Path, delete_archive: bool, report: FileReport, cancel: threading.Event | None
) -> None:
    """Extract an archive that passed its checks, and delete it if asked once extraction is verified."""
    final = dest / entry.name
    result = extract_archive(final, dest, cancel=cancel)
    if not result.ok:
        report.failed = True
        report.extract = "incomplete"
        shown = "; ".join(result.problems[:3])
        report.details.append(
            f"extraction problems ({len(result.problems)}): {shown}. The archive was kept; delete it "
            "and run the command again to download it afresh."
        )
        return

    record = state.read_record(dest, entry.name, "verified") or {}
    record_extraction(dest, final, record.get("md5"))
    if result.written:
        report.extract = f"extracted {result.written} of {result.members}"
    else:
        report.extract = "already extracted"
    if result.skipped and result.written:
        report.details.append(f"{result.skipped} member(s) were already complete")

    if delete_archive:
        final.unlink()
        state.remove_record(dest, entry.name, "verified")
        report.details.append("archive deleted after verified extraction")


def fetch_one(
    entry: CatalogEntry,
    source: Source,
    dest: Path,
    policy: RetryPolicy = RetryPolicy(),
    delete_archive: bool = False,
    overall: SharedBar | None = None,
    cancel: threading.Event | None = None,
) -> FileReport:
    """Bring one file to its finished state in dest and report what that took.

    Errors are caught and reported in the returned row, so one failed file does not stop the others.
    Setting cancel stops the transfer or extraction at the next chunk or member.
    """
    report = FileReport(entry.name, size=entry.size)
    overall = overall or SharedBar()
    final = dest / entry.name
    try:
        if entry.is_archive and extraction_complete(dest, entry.name, entry.md5):
            report.transfer = "present" if final.is_file() else "archive deleted"
            report.extract = "already extracted"
            report.check = "verified before extraction"
            if delete_archive and final.is_file():
                final.unlink()
                state.remove_record(dest, entry.name, "verified")
                report.details.append("archive deleted after verified extraction")
            return report

        passed = final.is_file() and _verify_existing(entry, final, dest, report)
        if not passed and not _fetch(entry, source, dest, policy, overall, report, cancel):
            return report

        if entry.is_archive:
            _extract(entry, dest, delete_archive, report, cancel)
        else:
            report.extract = "not an archive"
    except (LunaError, OSError, zipfile.BadZipFile) as error:
        logger.error("%s failed: %s", entry.name, error)
        report.failed = True
        report.details.append(str(error))
    return report


def acquire(
    dest: str | Path,
    subsets: Iterable[int] | None = None,
    files: Iterable[str] | None = None,
    base_url: str | Path | None = None,
    manifest: str | Path | None = None,
    workers: int = 4,
    dry_run: bool = False,
    delete_archives: bool = False,
    use_zenodo_api: bool = True,
    timeout_s: float = 60.0,
    policy: RetryPolicy = RetryPolicy(),
    check_disk: bool = True,
) -> pd.DataFrame:
    """Fetch, verify and extract LUNA16 files into a dataset folder.

    Args:
        dest: Dataset folder; archives, part files and extracted folders all go here.
        subsets: Subset numbers to fetch (`subsetN.zip`).
        files: File names to fetch. With neither subsets nor files, every file is fetched.
        base_url: None for Zenodo, an http(s) URL of a mirror, or a local folder.
        manifest: CSV (name,size,md5) that replaces the built-in catalog; needs base_url.
        workers: Files fetched at the same time.
        dry_run: Only return the plan (`plan_table`); nothing is fetched or written.
        delete_archives: Delete each archive once its extraction is verified.
        use_zenodo_api: Read sizes and MD5s from the Zenodo API first. Only used when the source
            is Zenodo and no manifest is given.
        timeout_s: Socket timeout for HTTP requests, in seconds.
        policy: Retry settings for transient failures.
        check_disk: Check the free disk space before starting.

    Returns:
        With dry_run, the plan. Otherwise one row per file with columns `REPORT_COLUMNS`;
        `state` is "failed" for every file that did not reach its finished state.

    Raises:
        AcquireError: On an invalid selection or manifest, an invalid source, or too little disk.
    """
    dest = Path(dest)
    base_url = str(base_url) if base_url is not None else None
    if workers < 1:
        raise AcquireError(f"workers must be at least 1; got {workers}.")
    if manifest is not None and base_url is None:
        raise AcquireError(
            "A manifest lists the files of a mirror; pass the mirror with --base-url (a URL or folder)."
        )

    entries = load_manifest(manifest) if manifest is not None else luna16_catalog()
    entries = select_entries(entries, subsets, files)
    source = resolve_source(base_url, timeout_s)
    if source.is_zenodo and manifest is None and use_zenodo_api:
        entries = update_from_zenodo(entries, timeout_s=timeout_s)

    plan = plan_table(entries, dest)
    if dry_run:
        return plan
    if check_disk:
        check_disk_space(plan, dest)

    dest.mkdir(parents=True, exist_ok=True)
    logger.info("Fetching %d file(s) from %s into %s.", len(entries), source.describe(), display_path(dest))
    nothing_to_fetch = plan.attrs["bytes_to_fetch"] == 0 and not plan.attrs["unknown_sizes"]
    bar = progress(
        total=plan.attrs["bytes_to_fetch"], desc="all files", unit="B", unit_scale=True, disable=nothing_to_fetch
    )
    cancel = threading.Event()
    with bar, ThreadPoolExecutor(max_workers=workers) as pool:
        overall = SharedBar(bar)
        futures = [
            pool.submit(fetch_one, entry, source, dest, policy, delete_archives, overall, cancel)
            for entry in entries
        ]
        try:
            reports = [future.result() for future in futures]
        except KeyboardInterrupt:
            # Workers stop at their next chunk or member; part files and complete members stay.
            cancel.set()
            pool.shutdown(wait=False, cancel_futures=True)
            logger.warning("Interrupted. Run the same command again to resume where it stopped.")
            raise

    table = pd.DataFrame([report.row() for report in reports], columns=REPORT_COLUMNS)
    table["size"] = table["size"].astype("Int64")
    failed = table.loc[table["state"] == "failed", "name"].tolist()
    if failed:
        logger.error("%d file(s) failed: %s.", len(failed), ", ".join(failed))
    return table
