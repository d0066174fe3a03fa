"""Tests of resumable transfers and sources with in-memory fake sources (no network)."""

from __future__ import annotations

import hashlib
import io
import threading
from pathlib import Path

import pytest

from luna_utils.acquire.catalog import CatalogEntry
from luna_utils.acquire.download import RetryPolicy, download_to_part, part_path
from luna_utils.acquire.errors import AcquireError, CancelledError, RangeNotSatisfiableError, TransientError
from luna_utils.acquire.sources import HttpSource, LocalSource, OpenedFile, Source, ZenodoSource, resolve_source
from luna_utils.acquire.verify import Verification

DATA = bytes(range(256)) * 40  # 10240 bytes
MD5 = hashlib.md5(DATA).hexdigest()
POLICY = RetryPolicy(retries=2, backoff_s=1.0, max_backoff_s=3.0)


class ScriptedSource(Source):
    """Serves DATA; each call to `open` takes the next scripted behaviour.

    Behaviours: "ok" (honour the offset), "ignore" (start at 0), "shift" (start at offset + 1),
    "cut:N" (deliver N bytes, announce all), "transient", "permanent", "416".
    """

    def __init__(self, script: list[str]) -> None:
        self.script = list(script)
        self.offsets: list[int] = []

    def location(self, entry):
        return f"fake://{entry.name}"

    def open(self, entry, offset):
        self.offsets.append(offset)
        action = self.script.pop(0) if self.script else "ok"
        if action == "transient":
            raise TransientError("fake://: HTTP 503", retry_after_s=None)
        if action == "permanent":
            raise AcquireError("fake://: HTTP 404 Not Found")
        if action == "416":
            raise RangeNotSatisfiableError("416", len(DATA))
        start = {"ignore": 0, "shift": offset + 1}.get(action, offset)
        body = DATA[start:]
        length = len(body)
        if action.startswith("cut:"):
            body = body[: int(action[4:])]
        return OpenedFile(io.BytesIO(body), start, length, len(DATA))


def fetch(tmp_path: Path, source: Source, entry: CatalogEntry | None = None, sleeps: list | None = None):
    entry = entry or CatalogEntry("file.bin", size=len(DATA), md5=MD5)
    sleeps = [] if sleeps is None else sleeps
    return download_to_part(entry, source, tmp_path, POLICY, sleep=sleeps.append)


def test_fresh_download(tmp_path):
    transfer = fetch(tmp_path, ScriptedSource(["ok"]))

    assert transfer.part.read_bytes() == DATA
    assert (transfer.md5, transfer.size, transfer.how) == (MD5, len(DATA), "downloaded")
    assert transfer.bytes_transferred == len(DATA)


def test_resume_hashes_existing_bytes(tmp_path):
    part_path(tmp_path, "file.bin").write_bytes(DATA[:3000])
    source = ScriptedSource(["ok"])

    transfer = fetch(tmp_path, source)

    assert source.offsets == [3000]
    assert transfer.how == "resumed"
    assert transfer.md5 == MD5
    assert transfer.bytes_transferred == len(DATA) - 3000


def test_cut_stream_continues_and_resets_failures(tmp_path):
    source = ScriptedSource(["cut:1000", "transient", "cut:500", "transient", "ok"])
    sleeps: list[float] = []

    transfer = fetch(tmp_path, source, sleeps=sleeps)

    assert transfer.md5 == MD5
    assert source.offsets == [0, 1000, 1000, 1500, 1500]
    assert sleeps == [1.0, 2.0, 1.0, 2.0]  # progress after a cut starts the backoff again


def test_retries_run_out(tmp_path):
    sleeps: list[float] = []

    with pytest.raises(AcquireError, match="giving up after 3 failed attempts"):
        fetch(tmp_path, ScriptedSource(["transient"] * 5), sleeps=sleeps)
    assert sleeps == [1.0, 2.0]


def test_permanent_error_is_not_retried(tmp_path):
    source = ScriptedSource(["permanent"])

    with pytest.raises(AcquireError, match="404"):
        fetch(tmp_path, source)
    assert source.offsets == [0]


def test_source_ignoring_offset_restarts(tmp_path):
    part_path(tmp_path, "file.bin").write_bytes(b"x" * 2000)  # stale bytes that must not survive

    transfer = fetch(tmp_path, ScriptedSource(["ignore"]))

    assert transfer.part.read_bytes() == DATA
    assert transfer.md5 == MD5
    assert transfer.how == "downloaded"
    assert "ignored the request to resume at byte 2000" in transfer.notes[0]


def test_shifted_range_answer_raises(tmp_path):
    part_path(tmp_path, "file.bin").write_bytes(DATA[:10])

    with pytest.raises(AcquireError, match="Range support is broken"):
        fetch(tmp_path, ScriptedSource(["shift"]))


def test_part_longer_than_expected_restarts(tmp_path):
    part_path(tmp_path, "file.bin").write_bytes(DATA + b"extra")
    source = ScriptedSource(["ok"])

    transfer = fetch(tmp_path, source)

    assert source.offsets == [0]
    assert transfer.md5 == MD5


def test_complete_part_of_unknown_size_ends_on_416(tmp_path):
    part_path(tmp_path, "file.bin").write_bytes(DATA)
    entry = CatalogEntry("file.bin")

    transfer = fetch(tmp_path, ScriptedSource(["416"]), entry=entry)

    assert transfer.md5 == MD5
    assert transfer.bytes_transferred == 0


def test_unknown_size_downloads_until_end(tmp_path):
    transfer = fetch(tmp_path, ScriptedSource(["ok"]), entry=CatalogEntry("file.bin"))

    assert transfer.size == len(DATA)


def test_retry_policy_delays():
    policy = RetryPolicy(retries=5, backoff_s=2.0, max_backoff_s=10.0)

    assert [policy.delay_s(n) for n in range(1, 5)] == [2.0, 4.0, 8.0, 10.0]
    assert policy.delay_s(1, retry_after_s=7.0) == 7.0
    assert policy.delay_s(1, retry_after_s=100.0) == 10.0


def test_local_source_reads_from_offset(tmp_path):
    (tmp_path / "f.bin").write_bytes(DATA)
    source = LocalSource(tmp_path)
    entry = CatalogEntry("f.bin")

    opened = source.open(entry, 100)
    assert (opened.start, opened.length, opened.total) == (100, len(DATA) - 100, len(DATA))
    assert opened.stream.read() == DATA[100:]
    opened.close()
    with pytest.raises(RangeNotSatisfiableError):
        source.open(entry, len(DATA))
    with pytest.raises(AcquireError, match="does not exist"):
        source.open(CatalogEntry("absent.bin"), 0)


def test_resolve_source(tmp_path):
    assert isinstance(resolve_source(None), ZenodoSource)
    assert isinstance(resolve_source("http://127.0.0.1:9/files/"), HttpSource)
    assert resolve_source("http://127.0.0.1:9/files/").location(CatalogEntry("a b.csv")) == "http://127.0.0.1:9/files/a%20b.csv"
    assert isinstance(resolve_source(str(tmp_path)), LocalSource)
    assert resolve_source(tmp_path.as_uri()).folder == tmp_path
    with pytest.raises(AcquireError, match="neither"):
        resolve_source("ftp://example.invalid/")


def test_zenodo_source_needs_a_record():
    source = ZenodoSource()

    assert source.location(CatalogEntry("subset7.zip", "4121926")) == "https://zenodo.org/records/4121926/files/subset7.zip?download=1"
    with pytest.raises(AcquireError, match="has no Zenodo record"):
        source.location(CatalogEntry("notes.txt"))


@pytest.mark.parametrize(
    "size, md5, summary, ok",
    [
        (10, MD5, "md5 ok", True),
        (10, None, "size ok, md5 unavailable", True),
        (None, None, "md5 unavailable", True),
        (10, "0" * 32, "md5 mismatch", False),
        (11, MD5, "size mismatch", False),
    ],
)
def test_verification_summary(size, md5, summary, ok):
    verification = Verification("f", 10, MD5, size, md5)

    assert verification.summary() == summary
    assert verification.ok is ok


def test_cancel_keeps_part_file(tmp_path):
    cancel = threading.Event()
    cancel.set()
    entry = CatalogEntry("file.bin", size=len(DATA), md5=MD5)

    with pytest.raises(CancelledError, match="stopped at byte 0"):
        download_to_part(entry, ScriptedSource(["ok"]), tmp_path, POLICY, cancel=cancel)
    assert part_path(tmp_path, "file.bin").exists()
