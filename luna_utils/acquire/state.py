"""Records of finished work in the destination folder, so a rerun skips it.

Each record is a small JSON file in `<dest>/.luna_acquire/`: `<name>.verified.json` once a file
passed its checks, and `<name>.extracted.json` once an archive's members were all extracted and
checked. A record stores the file's size and modification time, so it stops counting as soon as
the file changes. All writes are atomic (a temporary file in the same folder, then `os.replace`).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

STATE_DIR = ".luna_acquire"


def temporary_path(path: Path) -> Path:
    """Return an unused hidden name next to path, for writing it before `os.replace`.

    Unlike `tempfile.mkstemp`, which creates files readable by the owner only, a file opened at
    this name gets the usual permissions of the process umask.
    """
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file atomically: a temporary file in the same folder, then `os.replace`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = temporary_path(path)
    try:
        with open(temp, "xb") as stream:
            stream.write(data)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write UTF-8 text atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def record_path(dest: Path, name: str, kind: str) -> Path:
    """Return the record file of one file: kind is "verified" or "extracted"."""
    return Path(dest) / STATE_DIR / f"{name}.{kind}.json"


def write_record(dest: Path, name: str, kind: str, content: dict[str, Any]) -> None:
    """Store a record as JSON."""
    atomic_write_text(record_path(dest, name, kind), json.dumps(content, indent=1, sort_keys=True))


def read_record(dest: Path, name: str, kind: str) -> dict[str, Any] | None:
    """Return a stored record, or None when it is missing or unreadable."""
    path = record_path(dest, name, kind)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def remove_record(dest: Path, name: str, kind: str) -> None:
    """Delete a record if it exists."""
    record_path(dest, name, kind).unlink(missing_ok=True)


def file_signature(path: Path) -> dict[str, int]:
    """Return the size and modification time (ns) that identify a file's current content."""
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
