"""Packing an extracted dataset as a Zenodo mirror would hold it: archives, plain files, a manifest.

`write_mirror` turns a dataset folder (the synthetic sample, or a real LUNA16 copy) back into the
files LUNA16 is published as, plus `manifest.csv` (name,size,md5) for `--manifest`:

* `subsetN.zip` with members `subsetN/<seriesuid>.mhd` and `.raw`;
* `candidates_V2.zip`, `evaluationScript.zip` and `seg-lungs-LUNA16.zip`, each holding its folder;
* `annotations.csv`, `candidates.csv` and `sampleSubmission.csv` as plain files.

Two extras keep a fetched copy of the synthetic sample recognizable as synthetic: the marker file
`SYNTHETIC_SAMPLE.txt` (plain) and `synthetic.zip` (the sample's own ground truth), when present.

Archives are deterministic: members sorted by name, fixed timestamps (1980-01-01) and permissions,
deflate at zlib's default level, so rebuilding from the same files gives the same bytes with the
same zlib. Every output is written to a temporary file and renamed. A state file
(`.mirror_state.json`) stores each output's source files (names, sizes, modification times), so a
rerun rebuilds only what changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import zipfile
from pathlib import Path

import pandas as pd

from luna_utils.acquire import state
from luna_utils.acquire.verify import CHUNK_BYTES, md5_of_file
from luna_utils.dataset import SAMPLE_MARKER, default_sample_dir, display_path, is_sample, repo_root
from luna_utils.progress import progress

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.csv"
STATE_NAME = ".mirror_state.json"

# Folders packed as `<folder>.zip`, besides `subset0/` ... `subset9/`.
ARCHIVED_FOLDERS = ("candidates_V2", "evaluationScript", "seg-lungs-LUNA16", "synthetic")
PLAIN_FILES = ("annotations.csv", "candidates.csv", "sampleSubmission.csv", SAMPLE_MARKER)

# The earliest time a ZIP header can store; fixed so archives do not depend on file times.
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)


def _folder_members(dataset_dir: Path, folder: str) -> list[tuple[str, Path]]:
    """Return (member name, file) pairs for every regular file under a folder, sorted by name."""
    members = []
    for path in (dataset_dir / folder).rglob("*"):
        relative = path.relative_to(dataset_dir)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            if path.name.endswith((".part", ".extracting")):
                continue
            members.append((relative.as_posix(), path))
    return sorted(members)


def mirror_contents(dataset_dir: Path) -> dict[str, list[tuple[str, Path]]]:
    """List the mirror's outputs: for each output name, the files it is made from.

    Returns:
        Archive names map to their (member name, file) pairs; a plain file maps to one pair whose
        member name is its own name. Names are sorted; folders without files are left out.
    """
    dataset_dir = Path(dataset_dir)
    folders = [
        path.name
        for path in dataset_dir.glob("subset*")
        if path.is_dir() and path.name.removeprefix("subset").isdigit()
    ]
    folders += [name for name in ARCHIVED_FOLDERS if (dataset_dir / name).is_dir()]

    contents: dict[str, list[tuple[str, Path]]] = {}
    for folder in folders:
        members = _folder_members(dataset_dir, folder)
        if members:
            contents[f"{folder}.zip"] = members
    for name in PLAIN_FILES:
        if (dataset_dir / name).is_file():
            contents[name] = [(name, dataset_dir / name)]
    return dict(sorted(contents.items()))


def _fingerprint(members: list[tuple[str, Path]]) -> str:
    """Return a digest of the member names, sizes and modification times."""
    listing = []
    for member_name, path in members:
        stat = path.stat()
        listing.append([member_name, stat.st_size, stat.st_mtime_ns])
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def write_zip(path: Path, members: list[tuple[str, Path]]) -> None:
    """Write a deterministic ZIP archive atomically (ZIP64 when needed).

    Args:
        path: The archive to write.
        members: (member name, source file) pairs, written in the given order.
    """
    temp = state.temporary_path(path)
    try:
        with zipfile.ZipFile(temp, "x", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
            for member_name, source in members:
                info = zipfile.ZipInfo(member_name, date_time=ZIP_DATE_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.create_system = 3  # Unix, so the permission bits below are read as such
                info.external_attr = 0o644 << 16
                size = source.stat().st_size
                with open(source, "rb") as stream, archive.open(info, "w", force_zip64=size >= zipfile.ZIP64_LIMIT) as out:
                    shutil.copyfileobj(stream, out, CHUNK_BYTES)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _copy_file(source: Path, path: Path) -> None:
    """Copy a plain file atomically."""
    temp = state.temporary_path(path)
    try:
        shutil.copyfile(source, temp)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _write_if_changed(path: Path, text: str) -> None:
    """Write text atomically unless the file already contains exactly that text."""
    try:
        if path.read_text(encoding="utf-8") == text:
            return
    except OSError:
        pass
    state.atomic_write_text(path, text)


def write_mirror(dataset_dir: str | Path, mirror_dir: str | Path) -> Path:
    """Pack an extracted dataset as the files LUNA16 is published as, plus a manifest.

    An output is kept as it is when it is still on disk and its source files are unchanged since
    the last run (same names, sizes and modification times). Outputs whose source is gone are
    deleted.

    Args:
        dataset_dir: A dataset folder in the extracted LUNA16 layout.
        mirror_dir: Folder for the archives, plain files and `manifest.csv`; created if missing.

    Returns:
        The manifest, `<mirror_dir>/manifest.csv`, with columns name, size (bytes) and md5.
    """
    dataset_dir = Path(dataset_dir)
    mirror_dir = Path(mirror_dir)
    mirror_dir.mkdir(parents=True, exist_ok=True)
    state_path = mirror_dir / STATE_NAME
    try:
        previous = json.loads(state_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        previous = {}

    contents = mirror_contents(dataset_dir)
    current = {}
    stale = []
    for name, members in contents.items():
        path = mirror_dir / name
        fingerprint = _fingerprint(members)
        known = previous.get(name, {})
        if known.get("fingerprint") == fingerprint and path.is_file() and path.stat().st_size == known.get("size"):
            current[name] = known
        else:
            stale.append((name, fingerprint))

    for name, fingerprint in progress(stale, desc="mirror", total=len(stale), disable=not stale, leave=False, delay=2.0):
        path = mirror_dir / name
        if name in PLAIN_FILES:
            _copy_file(contents[name][0][1], path)
        else:
            write_zip(path, contents[name])
        current[name] = {"fingerprint": fingerprint, "size": path.stat().st_size, "md5": md5_of_file(path)}
    current = dict(sorted(current.items()))

    for name in sorted(set(previous) - set(current)):
        (mirror_dir / name).unlink(missing_ok=True)
        logger.info("Removed %s from the mirror: its source is gone.", name)

    manifest = pd.DataFrame(
        [{"name": name, "size": entry["size"], "md5": entry["md5"]} for name, entry in current.items()],
        columns=["name", "size", "md5"],
    )
    manifest_path = mirror_dir / MANIFEST_NAME
    _write_if_changed(manifest_path, manifest.to_csv(index=False, lineterminator="\n"))
    _write_if_changed(state_path, json.dumps(current, indent=1, sort_keys=True))

    if stale:
        logger.info("Wrote %d of %d mirror file(s) in %s.", len(stale), len(current), display_path(mirror_dir))
    else:
        logger.info("The mirror in %s is complete and current.", display_path(mirror_dir))
    return manifest_path


def default_mirror_dir() -> Path:
    """Return `data/sample-mirror/`, where the synthetic sample's mirror is kept."""
    return repo_root() / "data" / "sample-mirror"


def ensure_sample_mirror(sample_dir: str | Path | None = None, mirror_dir: str | Path | None = None) -> Path:
    """Return the manifest of the synthetic sample's mirror, generating and packing what is missing.

    Args:
        sample_dir: The sample; None means `data/sample/`, generated if it is not there yet.
        mirror_dir: The mirror; None means `data/sample-mirror/`.

    Returns:
        The mirror's `manifest.csv`.
    """
    sample_dir = Path(sample_dir) if sample_dir is not None else default_sample_dir()
    mirror_dir = Path(mirror_dir) if mirror_dir is not None else default_mirror_dir()
    if not is_sample(sample_dir):
        from luna_utils.sample import generate_sample

        logger.info("Generating the synthetic sample in %s", display_path(sample_dir))
        generate_sample(sample_dir)
    return write_mirror(sample_dir, mirror_dir)
