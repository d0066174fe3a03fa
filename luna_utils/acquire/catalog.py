"""The LUNA16 files: names, Zenodo records, sizes and MD5 checksums.

LUNA16 is published on Zenodo in two records under CC BY 4.0:

* 3723295 (part 1 of 2): annotations.csv, candidates.csv, candidates_V2.zip, evaluationScript.zip,
  sampleSubmission.csv, seg-lungs-LUNA16.zip and subset0.zip ... subset6.zip;
* 4121926 (part 2 of 2): subset7.zip, subset8.zip and subset9.zip.

The built-in sizes and MD5s are those listed in `data/real/zenodo_files.md`; None marks a value that
list does not know. `read_zenodo_record` reads a record's own file list from the Zenodo REST API,
and `apply_remote_files` prefers its values and logs every difference. A manifest CSV
(`load_manifest`) replaces the catalog for mirrors that hold other files.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable
from urllib.parse import quote

import pandas as pd

from luna_utils.acquire.errors import AcquireError
from luna_utils.dataset import load_real_table

logger = logging.getLogger(__name__)

ZENODO_URL = "https://zenodo.org"
RECORD_PART1 = "3723295"
RECORD_PART2 = "4121926"

# Size of one LUNA16 .mhd header, rounded up; only used in extracted-size estimates.
MHD_HEADER_BYTES = 400

# Extracted size assumed for an archive whose content size is unknown, as a multiple of the
# archive size. This is a guess used only by the up-front disk check; the exact check happens
# before each extraction, from the archive's own member list.
UNKNOWN_EXPANSION_GUESS = 2.0

MANIFEST_COLUMNS = ("name", "size", "md5")

_MD5_PATTERN = re.compile(r"^[0-9a-f]{32}$")

# (name, record, bytes, md5, description); None where data/real/zenodo_files.md has no value.
# NOTE: these values come from public downloaders, not from Zenodo itself. The Zenodo API values,
# read when the source is Zenodo, take precedence.
_KNOWN_FILES = [
    ("annotations.csv", RECORD_PART1, 136_986, "f4404df491aee6445a4485061bfdffdd",
     "Nodule annotations: seriesuid, centre (x, y, z) mm, diameter mm"),
    ("candidates.csv", RECORD_PART1, None, None,
     "Candidate locations, version 1, with class 1 for nodules"),
    ("candidates_V2.zip", RECORD_PART1, None, None,
     "Candidate locations, version 2 (candidates_V2/candidates_V2.csv)"),
    ("evaluationScript.zip", RECORD_PART1, 21_803_068, "02680d438a80dc26eeff0c12e1942642",
     "Evaluation code and annotations/ (annotations_excluded.csv, seriesuids.csv)"),
    ("sampleSubmission.csv", RECORD_PART1, None, None,
     "Example submission in the format the evaluation script reads"),
    ("seg-lungs-LUNA16.zip", RECORD_PART1, None, None,
     "Lung masks of every scan (.mhd + .zraw)"),
    ("subset0.zip", RECORD_PART1, 6_811_924_508, "1065b0f42b8c25cf29260fd924a3c3a2", None),
    ("subset1.zip", RECORD_PART1, 6_334_778_552, "2eda28bb123543074f5cd849499b87ff", None),
    ("subset2.zip", RECORD_PART1, 7_257_937_108, "685b484b085bcdb81c525f3b1bf97c51", None),
    ("subset3.zip", RECORD_PART1, 6_896_620_114, "54707e9e8954af29326eed60f38ea321", None),
    ("subset4.zip", RECORD_PART1, 6_856_144_330, "98225ccb1a41fc434631f63f4284796a", None),
    ("subset5.zip", RECORD_PART1, 6_610_460_097, "395ec714c4123cf213fb7b08f05ee9cc", None),
    ("subset6.zip", RECORD_PART1, 6_531_050_274, "d162df1444a6f2674ab8273c7f9e1520", None),
    ("subset7.zip", RECORD_PART2, 6_313_598_213, "e99b8921990d1414bb5e92130371e8a3", None),
    ("subset8.zip", RECORD_PART2, 6_025_767_505, "38260ca9a8741888997bcebedfabc3f1", None),
    ("subset9.zip", RECORD_PART2, 6_699_650_017, "e55c473bbeebd712eb2224a58998be8e", None),
]


@dataclass(frozen=True)
class CatalogEntry:
    """One file to fetch.

    Attributes:
        name: File name on the server and in the destination folder, e.g. "subset0.zip".
        record: Zenodo record id, or None for a file listed only in a manifest.
        size: Size in bytes, or None when unknown.
        md5: Lower-case hex MD5, or None when unknown.
        description: What the file contains, for tables.
        extracted_bytes: Estimated bytes the archive's members take once extracted, or None when
            unknown. Plain files (not `.zip`) take no extra space, so it is 0 for them.
    """

    name: str
    record: str | None = None
    size: int | None = None
    md5: str | None = None
    description: str = ""
    extracted_bytes: int | None = None

    @property
    def is_archive(self) -> bool:
        """Whether the file is a ZIP archive to extract."""
        return self.name.lower().endswith(".zip")

    @property
    def subset(self) -> int | None:
        """The subset number of a `subsetN.zip`, else None."""
        match = re.fullmatch(r"subset(\d+)\.zip", self.name)
        return int(match.group(1)) if match else None

    def extracted_estimate(self) -> int:
        """Return the bytes extraction needs: the known estimate, else a guess from the size."""
        if not self.is_archive:
            return 0
        if self.extracted_bytes is not None:
            return self.extracted_bytes
        return int((self.size or 0) * UNKNOWN_EXPANSION_GUESS)


def luna16_catalog() -> list[CatalogEntry]:
    """Return the 16 LUNA16 files with their records, sizes and MD5s where known.

    Subset descriptions and extracted sizes are computed from the shipped per-scan table
    (`data/real/luna16_scans_metadata.csv`): the `.raw` bytes of each scan plus a header each.
    """
    scans = load_real_table("luna16_scans_metadata")
    per_subset = scans.groupby("subset")["raw_bytes"].agg(["sum", "count"])

    entries = []
    for name, record, size, md5, description in _KNOWN_FILES:
        entry = CatalogEntry(name, record, size, md5, description or "")
        if entry.subset is not None:
            n_scans = int(per_subset.loc[entry.subset, "count"])
            raw_bytes = int(per_subset.loc[entry.subset, "sum"])
            entry = replace(
                entry,
                description=f"{n_scans} CT scans of subset {entry.subset} (.mhd + .raw)",
                extracted_bytes=raw_bytes + n_scans * MHD_HEADER_BYTES,
            )
        elif not entry.is_archive:
            entry = replace(entry, extracted_bytes=0)
        entries.append(entry)
    return entries


def catalog_table(entries: Iterable[CatalogEntry]) -> pd.DataFrame:
    """Return entries as a table with columns name, record, size, md5, extracted_bytes, description."""
    rows = [
        {
            "name": entry.name,
            "record": entry.record,
            "size": entry.size,
            "md5": entry.md5,
            "extracted_bytes": entry.extracted_bytes,
            "description": entry.description,
        }
        for entry in entries
    ]
    table = pd.DataFrame(rows, columns=["name", "record", "size", "md5", "extracted_bytes", "description"])
    return table.astype({"size": "Int64", "extracted_bytes": "Int64"})


def validate_file_name(name: str, where: str) -> str:
    """Return a file name unchanged if it is a bare name that stays inside the destination.

    Raises:
        AcquireError: If the name is empty, contains a path separator, or is "." or "..".
    """
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise AcquireError(
            f"{where}: file name {name!r} is invalid; a name must be a bare file name such as "
            "'subset0.zip', without folders."
        )
    return name


def load_manifest(path: str | Path) -> list[CatalogEntry]:
    """Read a manifest CSV that replaces the catalog.

    The file has a `name` column and optional `size` (bytes) and `md5` (hex) columns; an empty cell
    means unknown. Entries get no Zenodo record, so a manifest needs a mirror (`base_url`).

    Raises:
        AcquireError: If the file is missing or not a CSV, lacks `name`, or has an invalid name,
            size or MD5, or a name listed twice. The message names the row.
    """
    path = Path(path)
    if not path.is_file():
        raise AcquireError(f"Manifest {path} does not exist. Pass a CSV with columns name,size,md5.")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise AcquireError(f"Manifest {path} is not a valid CSV file: {error}") from error
    if "name" not in table.columns:
        raise AcquireError(
            f"Manifest {path} has no 'name' column (columns: {list(table.columns)}). "
            "The header must be name,size,md5 (size and md5 optional)."
        )

    entries = []
    seen: set[str] = set()
    for index, row in table.iterrows():
        where = f"Manifest {path}, line {int(index) + 2}"
        name = validate_file_name(row["name"].strip(), where)
        if name in seen:
            raise AcquireError(f"{where}: {name!r} is listed twice. Keep one row per file.")
        seen.add(name)
        entries.append(
            CatalogEntry(
                name=name,
                size=_parse_size(row.get("size", ""), where),
                md5=_parse_md5(row.get("md5", ""), where),
                description="from the manifest",
                extracted_bytes=None if name.lower().endswith(".zip") else 0,
            )
        )
    return entries


def _parse_size(text: str, where: str) -> int | None:
    text = (text or "").strip().replace(",", "").replace("_", "")
    if not text:
        return None
    if not text.isdigit():
        raise AcquireError(f"{where}: size {text!r} is not a whole number of bytes.")
    return int(text)


def _parse_md5(text: str, where: str) -> str | None:
    text = (text or "").strip().lower().removeprefix("md5:")
    if not text:
        return None
    if not _MD5_PATTERN.match(text):
        raise AcquireError(f"{where}: md5 {text!r} is not 32 hexadecimal digits.")
    return text


def select_entries(
    entries: list[CatalogEntry],
    subsets: Iterable[int] | None = None,
    files: Iterable[str] | None = None,
) -> list[CatalogEntry]:
    """Choose the files to fetch, in catalog order.

    Args:
        entries: The catalog or manifest.
        subsets: Subset numbers; each selects `subsetN.zip`.
        files: File names to select.

    Returns:
        Every entry when both selections are None or empty, else the union of the two.

    Raises:
        AcquireError: If a subset or name is not in the entries; the message lists what is.
    """
    subsets = list(subsets or [])
    files = list(files or [])
    if not subsets and not files:
        return list(entries)

    by_name = {entry.name: entry for entry in entries}
    wanted = set()
    for subset in subsets:
        name = f"subset{int(subset)}.zip"
        if name not in by_name:
            available = sorted(e.subset for e in entries if e.subset is not None)
            raise AcquireError(f"Subset {subset} is not available; the subsets are {available}.")
        wanted.add(name)
    for name in files:
        if name not in by_name:
            raise AcquireError(
                f"File {name!r} is not in the catalog or manifest; choose among "
                f"{', '.join(sorted(by_name))}."
            )
        wanted.add(name)
    return [entry for entry in entries if entry.name in wanted]


def zenodo_file_url(record: str, name: str, base_url: str = ZENODO_URL) -> str:
    """Return the download URL of one file of a Zenodo record."""
    return f"{base_url}/records/{record}/files/{quote(name)}?download=1"


def read_zenodo_record(
    record: str, base_url: str = ZENODO_URL, timeout_s: float = 30.0
) -> dict[str, tuple[int | None, str | None]]:
    """Read a Zenodo record's file list from the REST API (`<base_url>/api/records/<record>`).

    Args:
        record: The record id, e.g. "3723295".
        base_url: The Zenodo server.
        timeout_s: Socket timeout in seconds.

    Returns:
        For each file name (`files[].key`), its size in bytes and MD5 (`checksum` "md5:..."),
        None where the API gives no value.

    Raises:
        AcquireError: If the request fails or the response is not the expected JSON.
    """
    url = f"{base_url}/api/records/{record}"
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            document = json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise AcquireError(f"Could not read the file list of Zenodo record {record} from {url}: {error}") from error

    files = document.get("files") if isinstance(document, dict) else None
    if not isinstance(files, list):
        raise AcquireError(f"{url} returned JSON without a 'files' list; the API format may have changed.")

    listing: dict[str, tuple[int | None, str | None]] = {}
    for item in files:
        if not isinstance(item, dict) or "key" not in item:
            continue
        size = item.get("size")
        checksum = str(item.get("checksum") or "")
        md5 = checksum.removeprefix("md5:").lower() if checksum.startswith("md5:") else None
        listing[str(item["key"])] = (int(size) if size is not None else None, md5)
    return listing


def apply_remote_files(
    entries: list[CatalogEntry], listings: dict[str, dict[str, tuple[int | None, str | None]]]
) -> list[CatalogEntry]:
    """Return entries with sizes and MD5s taken from Zenodo file lists, logging every difference.

    Args:
        entries: Catalog entries.
        listings: For each record id, the file list `read_zenodo_record` returned.

    Returns:
        The entries, each updated with the listed size and MD5 where its record lists the file.
        Entries whose record has no listing, or whose name the listing lacks, stay as they are.
    """
    updated = []
    for entry in entries:
        listing = listings.get(entry.record or "")
        if listing is None or entry.name not in listing:
            if listing is not None:
                logger.warning("Zenodo record %s does not list %s; keeping the catalog values.", entry.record, entry.name)
            updated.append(entry)
            continue

        size, md5 = listing[entry.name]
        for field_name, catalog_value, remote_value in (("size", entry.size, size), ("md5", entry.md5, md5)):
            if remote_value is not None and catalog_value is not None and remote_value != catalog_value:
                logger.warning(
                    "Zenodo lists %s with %s %s, but the built-in catalog has %s; using Zenodo's value.",
                    entry.name, field_name, remote_value, catalog_value,
                )
            elif remote_value is not None and catalog_value is None:
                logger.info("Zenodo provides the %s of %s: %s.", field_name, entry.name, remote_value)
        updated.append(
            replace(
                entry,
                size=size if size is not None else entry.size,
                md5=md5 if md5 is not None else entry.md5,
            )
        )
    return updated


def update_from_zenodo(
    entries: list[CatalogEntry], base_url: str = ZENODO_URL, timeout_s: float = 30.0
) -> list[CatalogEntry]:
    """Refresh sizes and MD5s from the Zenodo API for the records the entries come from.

    A record whose list cannot be read is logged and its entries keep the catalog values.
    """
    listings = {}
    for record in sorted({entry.record for entry in entries if entry.record}):
        try:
            listings[record] = read_zenodo_record(record, base_url, timeout_s)
        except AcquireError as error:
            logger.warning("%s Using the built-in sizes and checksums for this record.", error)
    return apply_remote_files(entries, listings)
