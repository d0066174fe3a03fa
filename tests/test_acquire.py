"""End-to-end tests of luna_utils.acquire against an HTTP server on 127.0.0.1.

A tiny dataset in the LUNA16 layout is packed once with `write_mirror`. Each test serves that
mirror, or archives it builds itself, from a local threaded HTTP server. The server can ignore
Range, fail the first requests with 503 and cut responses short. A guard fixture makes any connection
to another host fail the test.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import zipfile
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from luna_utils.acquire import catalog, extract, pipeline
from luna_utils.acquire.cli import main
from luna_utils.acquire.download import RetryPolicy
from luna_utils.acquire.errors import AcquireError
from luna_utils.acquire.mirror import write_mirror
from luna_utils.acquire.pipeline import acquire
from luna_utils.dataset import repo_root

FAST = RetryPolicy(retries=3, backoff_s=0.01, max_backoff_s=0.05)
FAST_ARGS = ["--workers", "2", "--timeout", "5", "--backoff", "0.01", "--retries", "3"]


# ---------------------------------------------------------------------------------------------
# A tiny dataset in the extracted LUNA16 layout


def write_scan(folder: Path, uid: str, seed: int, shape_zyx=(6, 40, 48), flipped=False, compressed=False) -> None:
    """Write a random int16 scan as .mhd + .raw (or .zraw); random voxels keep archives large."""
    rng = np.random.default_rng(seed)
    array = rng.integers(-1000, 1000, size=shape_zyx, dtype=np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 0.7, 2.5))
    image.SetOrigin((-150.0, -160.0, -300.0))
    if flipped:
        image.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    folder.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(folder / f"{uid}.mhd"), useCompression=compressed)


def make_dataset(root: Path) -> Path:
    """Create three scans in subset0 and subset1, lung masks and every LUNA16 table."""
    uids = ["1.2.826.0.1.1", "1.2.826.0.1.2", "1.2.826.0.1.3"]
    write_scan(root / "subset0", uids[0], seed=1)
    write_scan(root / "subset0", uids[1], seed=2, flipped=True)
    write_scan(root / "subset1", uids[2], seed=3)
    write_scan(root / "seg-lungs-LUNA16", uids[0], seed=4, compressed=True)

    annotations = "seriesuid,coordX,coordY,coordZ,diameter_mm\n" + f"{uids[0]},-140.5,-150.0,-295.0,6.2\n"
    (root / "annotations.csv").write_text(annotations)
    (root / "candidates.csv").write_text("seriesuid,coordX,coordY,coordZ,class\n" + f"{uids[1]},-140,-150,-290,0\n")
    (root / "candidates_V2").mkdir()
    (root / "candidates_V2" / "candidates_V2.csv").write_text("seriesuid,coordX,coordY,coordZ,class\n")
    evaluation = root / "evaluationScript" / "annotations"
    evaluation.mkdir(parents=True)
    (evaluation / "annotations.csv").write_text(annotations)
    (evaluation / "annotations_excluded.csv").write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n")
    (evaluation / "seriesuids.csv").write_text("\n".join(uids) + "\n")
    (root / "sampleSubmission.csv").write_text("seriesuid,coordX,coordY,coordZ,probability\n")
    return root


def tree_md5(root: Path) -> dict[str, str]:
    """Return the MD5 of every file under root, keyed by relative path."""
    return {
        path.relative_to(root).as_posix(): hashlib.md5(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def assert_dataset_copied(dataset: Path, dest: Path) -> None:
    """Check that every dataset file is in dest with the same bytes and no temporary file is left."""
    expected = tree_md5(dataset)
    actual = tree_md5(dest)
    for name, digest in expected.items():
        assert actual.get(name) == digest, name
    leftovers = [name for name in actual if name.endswith((".part", ".extracting"))]
    assert leftovers == []


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """The tiny dataset and its mirror, built once for the module."""
    base = tmp_path_factory.mktemp("sample")
    dataset = make_dataset(base / "dataset")
    mirror = base / "mirror"
    manifest = write_mirror(dataset, mirror)
    return dataset, mirror, manifest


def write_manifest(path: Path, rows: list[tuple[str, object, object]]) -> Path:
    table = pd.DataFrame(rows, columns=["name", "size", "md5"])
    table.to_csv(path, index=False)
    return path


# ---------------------------------------------------------------------------------------------
# The local HTTP server


class MirrorServer(http.server.ThreadingHTTPServer):
    """Serves files of one folder at /<name>, and JSON documents at chosen paths.

    Attributes:
        ignore_range: Whether to send 200 and the whole file whatever the Range header.
        fail_first: Number of next requests to fail with 503.
        cut_after: Close the connection after this many body bytes, for the next `cuts` responses.
        log: (name, Range header, status) of every request, in order.
    """

    daemon_threads = True

    def __init__(self, folder: Path) -> None:
        super().__init__(("127.0.0.1", 0), MirrorHandler)
        self.folder = folder
        self.ignore_range = False
        self.fail_first = 0
        self.cut_after: int | None = None
        self.cuts = 0
        self.documents: dict[str, bytes] = {}
        self.log: list[tuple[str, str | None, int]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def names_requested(self) -> list[str]:
        return [name for name, _, _ in self.log]


class MirrorHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def _answer(self, status: int, headers: dict[str, str], body: bytes, name: str) -> None:
        self.server.log.append((name, self.headers.get("Range"), status))
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        server: MirrorServer = self.server
        path = unquote(urlparse(self.path).path)
        name = path.lstrip("/")

        if path in server.documents:
            body = server.documents[path]
            self._answer(200, {"Content-Type": "application/json", "Content-Length": str(len(body))}, body, name)
            return

        with server.lock:
            failing = server.fail_first > 0
            server.fail_first -= int(failing)
            cut = server.cut_after if server.cuts > 0 else None
            server.cuts -= int(cut is not None)
        if failing:
            self._answer(503, {"Retry-After": "0", "Content-Length": "0"}, b"", name)
            return

        file = server.folder / name
        if "/" in name or not file.is_file():
            self._answer(404, {"Content-Length": "0"}, b"", name)
            return
        data = file.read_bytes()

        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match is None or server.ignore_range:
            status, start, headers = 200, 0, {}
        else:
            start = int(match.group(1))
            if start >= len(data):
                self._answer(416, {"Content-Range": f"bytes */{len(data)}", "Content-Length": "0"}, b"", name)
                return
            status, headers = 206, {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}

        body = data[start:]
        headers["Content-Length"] = str(len(body))
        self._answer(status, headers, body if cut is None else body[:cut], name)


@pytest.fixture
def serve():
    """Start a server for a folder; every server started is shut down after the test."""
    servers = []

    def start(folder: Path) -> MirrorServer:
        server = MirrorServer(folder)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def only_local_connections(monkeypatch):
    """Fail the test on any connection to a host other than 127.0.0.1."""
    original = socket.create_connection

    def guarded(address, *args, **kwargs):
        if address[0] not in ("127.0.0.1", "localhost"):
            raise AssertionError(f"test tried to connect to {address}")
        return original(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", guarded)


def states(table: pd.DataFrame) -> dict[str, str]:
    return dict(zip(table["name"], table["state"]))


def column(table: pd.DataFrame, name: str, key: str) -> str:
    return table.set_index("name").loc[name, key]


# ---------------------------------------------------------------------------------------------
# Tests


def test_full_run_recreates_dataset(sample, serve, tmp_path, capsys):
    dataset, mirror, manifest = sample
    server = serve(mirror)
    dest = tmp_path / "dest"

    status = main(["--dest", str(dest), "--base-url", server.url, "--manifest", str(manifest), *FAST_ARGS])

    assert status == 0
    assert_dataset_copied(dataset, dest)
    output = capsys.readouterr().out
    assert "subset0.zip" in output
    assert "0 failed" in output


def test_second_run_skips_complete_files(sample, serve, tmp_path):
    dataset, mirror, manifest = sample
    server = serve(mirror)
    dest = tmp_path / "dest"
    acquire(dest, base_url=server.url, manifest=manifest, policy=FAST)
    requests_after_first_run = len(server.log)

    table = acquire(dest, base_url=server.url, manifest=manifest, policy=FAST)

    assert set(table["state"]) == {"skipped"}
    assert len(server.log) == requests_after_first_run
    assert column(table, "subset0.zip", "extract") == "already extracted"
    assert_dataset_copied(dataset, dest)


def test_cut_connection_resumes(sample, serve, tmp_path):
    dataset, mirror, manifest = sample
    server = serve(mirror)
    server.cut_after, server.cuts = 3000, 1
    dest = tmp_path / "dest"

    table = acquire(dest, files=["subset0.zip"], base_url=server.url, manifest=manifest, workers=1, policy=FAST)

    assert states(table) == {"subset0.zip": "extracted"}
    assert column(table, "subset0.zip", "check") == "md5 ok"
    assert server.log[0] == ("subset0.zip", None, 200)
    assert server.log[1] == ("subset0.zip", "bytes=3000-", 206)
    assert "connection broke at byte 3000" in column(table, "subset0.zip", "detail")
    assert (dest / "subset0.zip").read_bytes() == (mirror / "subset0.zip").read_bytes()


def test_partial_file_from_earlier_run_resumes(sample, serve, tmp_path):
    dataset, mirror, manifest = sample
    server = serve(mirror)
    dest = tmp_path / "dest"
    dest.mkdir()
    head = (mirror / "subset0.zip").read_bytes()[:5000]
    (dest / "subset0.zip.part").write_bytes(head)

    table = acquire(dest, files=["subset0.zip"], base_url=server.url, manifest=manifest, policy=FAST)

    assert column(table, "subset0.zip", "transfer") == "resumed"
    assert column(table, "subset0.zip", "check") == "md5 ok"
    assert server.log == [("subset0.zip", "bytes=5000-", 206)]
    assert not (dest / "subset0.zip.part").exists()
    assert_dataset_copied(dataset / "subset0", dest / "subset0")


def test_complete_part_file_is_not_fetched_again(sample, serve, tmp_path):
    dataset, mirror, manifest = sample
    server = serve(mirror)
    dest = tmp_path / "dest"
    dest.mkdir()
    shutil.copyfile(mirror / "annotations.csv", dest / "annotations.csv.part")

    table = acquire(dest, files=["annotations.csv"], base_url=server.url, manifest=manifest, policy=FAST)

    assert column(table, "annotations.csv", "check") == "md5 ok"
    assert server.log == []


def test_server_ignoring_range_restarts(sample, serve, tmp_path):
    dataset, mirror, manifest = sample
    server = serve(mirror)
    server.ignore_range = True
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "subset1.zip.part").write_bytes((mirror / "subset1.zip").read_bytes()[:4000])

    table = acquire(dest, files=["subset1.zip"], base_url=server.url, manifest=manifest, policy=FAST)

    assert column(table, "subset1.zip", "transfer") == "downloaded"
    assert column(table, "subset1.zip", "check") == "md5 ok"
    assert "ignored the request to resume at byte 4000" in column(table, "subset1.zip", "detail")
    assert server.log == [("subset1.zip", "bytes=4000-", 200)]
    assert (dest / "subset1.zip").read_bytes() == (mirror / "subset1.zip").read_bytes()


def test_retries_after_503(sample, serve, tmp_path, caplog):
    dataset, mirror, manifest = sample
    server = serve(mirror)
    server.fail_first = 2
    dest = tmp_path / "dest"

    table = acquire(dest, files=["annotations.csv"], base_url=server.url, manifest=manifest, workers=1, policy=FAST)

    assert states(table) == {"annotations.csv": "downloaded"}
    assert [status for _, _, status in server.log] == [503, 503, 200]
    assert "retry 2 of 3" in caplog.text


def test_gives_up_after_retries(sample, serve, tmp_path):
    dataset, mirror, manifest = sample
    server = serve(mirror)
    server.fail_first = 100
    dest = tmp_path / "dest"

    table = acquire(dest, files=["annotations.csv"], base_url=server.url, manifest=manifest, workers=1, policy=FAST)

    assert states(table) == {"annotations.csv": "failed"}
    assert len(server.log) == FAST.retries + 1
    assert "giving up after 4 failed attempts" in column(table, "annotations.csv", "detail")


def test_missing_file_is_not_retried(serve, tmp_path):
    folder = tmp_path / "mirror"
    folder.mkdir()
    manifest = write_manifest(tmp_path / "manifest.csv", [("absent.csv", "", "")])
    server = serve(folder)

    table = acquire(tmp_path / "dest", base_url=server.url, manifest=manifest, policy=FAST)

    assert states(table) == {"absent.csv": "failed"}
    assert "HTTP 404" in column(table, "absent.csv", "detail")
    assert server.log == [("absent.csv", None, 404)]


def test_wrong_checksum_is_kept_aside(sample, serve, tmp_path, capsys):
    dataset, mirror, manifest = sample
    rows = pd.read_csv(manifest)
    real_md5 = rows.loc[rows["name"] == "subset0.zip", "md5"].item()
    wrong_md5 = "0" * 32
    rows.loc[rows["name"] == "subset0.zip", "md5"] = wrong_md5
    bad_manifest = tmp_path / "bad.csv"
    rows.to_csv(bad_manifest, index=False)
    server = serve(mirror)
    dest = tmp_path / "dest"

    status = main(["--dest", str(dest), "--base-url", server.url, "--manifest", str(bad_manifest), "--files", "subset0.zip", *FAST_ARGS])

    assert status == 1
    assert (dest / "subset0.zip.md5-mismatch").read_bytes() == (mirror / "subset0.zip").read_bytes()
    assert not (dest / "subset0.zip").exists()
    assert not (dest / "subset0.zip.part").exists()
    assert not (dest / "subset0").exists()
    output = capsys.readouterr().out
    assert "failed" in output
    assert real_md5 in output
    assert wrong_md5 in output


def test_present_file_with_wrong_content_is_replaced(sample, serve, tmp_path):
    dataset, mirror, manifest = sample
    server = serve(mirror)
    dest = tmp_path / "dest"
    dest.mkdir()
    size = (mirror / "subset1.zip").stat().st_size
    (dest / "subset1.zip").write_bytes(b"\x00" * size)  # right size, wrong bytes

    table = acquire(dest, files=["subset1.zip"], base_url=server.url, manifest=manifest, policy=FAST)

    assert column(table, "subset1.zip", "state") == "extracted"
    assert "failed its check (md5 mismatch)" in column(table, "subset1.zip", "detail")
    assert (dest / "subset1.zip.md5-mismatch").read_bytes() == b"\x00" * size
    assert_dataset_copied(dataset / "subset1", dest / "subset1")


def test_unknown_checksum_still_downloads(sample, serve, tmp_path):
    dataset, mirror, _ = sample
    manifest = write_manifest(tmp_path / "m.csv", [("candidates.csv", "", "")])
    server = serve(mirror)

    table = acquire(tmp_path / "dest", base_url=server.url, manifest=manifest, policy=FAST)

    assert column(table, "candidates.csv", "check") == "md5 unavailable"
    expected_md5 = hashlib.md5((mirror / "candidates.csv").read_bytes()).hexdigest()
    assert f"md5 is {expected_md5}" in column(table, "candidates.csv", "detail")


def make_zip(path: Path, members: dict[str, bytes]) -> tuple[str, int, str]:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name), data)
    data = path.read_bytes()
    return path.name, len(data), hashlib.md5(data).hexdigest()


def test_archive_escaping_dest_is_rejected(serve, tmp_path):
    folder = tmp_path / "mirror"
    folder.mkdir()
    outside = tmp_path / "outside.txt"
    absolute = tmp_path / "absolute.txt"
    rows = [
        make_zip(folder / "slip.zip", {"subset9/inside.txt": b"fine", "../outside.txt": b"escaped"}),
        make_zip(folder / "absolute.zip", {"subset8/inside.txt": b"fine", str(absolute): b"escaped"}),
    ]
    manifest = write_manifest(tmp_path / "manifest.csv", rows)
    server = serve(folder)
    dest = tmp_path / "dest"

    table = acquire(dest, base_url=server.url, manifest=manifest, policy=FAST)

    assert states(table) == {"slip.zip": "failed", "absolute.zip": "failed"}
    assert "outside" in column(table, "slip.zip", "detail")
    assert not outside.exists()
    assert not absolute.exists()
    assert not (dest / "subset9").exists()
    assert not (dest / "subset8").exists()
    assert (dest / "slip.zip").is_file()  # kept for inspection, never extracted


def test_killed_extraction_completes_on_rerun(sample, serve, tmp_path, monkeypatch):
    dataset, mirror, manifest = sample
    server = serve(mirror)
    dest = tmp_path / "dest"
    original = extract.copy_stream
    calls = []

    def killed_on_second_member(source, target, bar):
        calls.append(Path(target.name).name)
        if len(calls) == 2:
            target.write(source.read(100))
            raise KeyboardInterrupt("simulated kill")
        return original(source, target, bar)

    monkeypatch.setattr(extract, "copy_stream", killed_on_second_member)
    with pytest.raises(KeyboardInterrupt):
        acquire(dest, files=["subset0.zip"], base_url=server.url, manifest=manifest, workers=1, policy=FAST)

    assert all(name.endswith(".extracting") for name in calls)  # members are written under temporary names
    written = [path for path in (dest / "subset0").iterdir()]
    assert len(written) == 1
    assert written[0].suffix == ".raw"  # data files come before headers
    assert written[0].read_bytes() == (dataset / "subset0" / written[0].name).read_bytes()

    monkeypatch.setattr(extract, "copy_stream", original)
    table = acquire(dest, files=["subset0.zip"], base_url=server.url, manifest=manifest, workers=1, policy=FAST)

    assert column(table, "subset0.zip", "transfer") == "present"
    assert column(table, "subset0.zip", "extract") == "extracted 3 of 4"
    assert "1 member(s) were already complete" in column(table, "subset0.zip", "detail")
    assert_dataset_copied(dataset / "subset0", dest / "subset0")


def test_truncated_scan_in_archive_fails(serve, tmp_path):
    source = tmp_path / "scans"
    write_scan(source, "9.9", seed=5)
    raw = (source / "9.9.raw").read_bytes()
    folder = tmp_path / "mirror"
    folder.mkdir()
    rows = [make_zip(folder / "subset7.zip", {"subset7/9.9.mhd": (source / "9.9.mhd").read_bytes(), "subset7/9.9.raw": raw[:1000]})]
    manifest = write_manifest(tmp_path / "manifest.csv", rows)
    server = serve(folder)
    dest = tmp_path / "dest"

    table = acquire(dest, base_url=server.url, manifest=manifest, delete_archives=True, policy=FAST)

    assert states(table) == {"subset7.zip": "failed"}
    assert "truncated" in column(table, "subset7.zip", "detail")
    assert (dest / "subset7.zip").is_file()  # not deleted: the extraction was not verified


def test_delete_archives_after_verified_extraction(sample, serve, tmp_path):
    dataset, mirror, manifest = sample
    server = serve(mirror)
    dest = tmp_path / "dest"

    table = acquire(dest, base_url=server.url, manifest=manifest, delete_archives=True, policy=FAST)

    assert column(table, "subset0.zip", "state") == "extracted"
    assert sorted(path.name for path in dest.glob("*.zip")) == []
    assert (dest / "annotations.csv").is_file()
    assert_dataset_copied(dataset, dest)

    requests = len(server.log)
    again = acquire(dest, base_url=server.url, manifest=manifest, policy=FAST)
    assert set(again["state"]) == {"skipped"}
    assert column(again, "subset0.zip", "transfer") == "archive deleted"
    assert len(server.log) == requests


def test_dry_run_fetches_nothing(sample, serve, tmp_path, capsys):
    dataset, mirror, manifest = sample
    server = serve(mirror)
    dest = tmp_path / "dest"

    status = main(["--dest", str(dest), "--base-url", server.url, "--manifest", str(manifest), "--dry-run"])

    assert status == 0
    assert server.log == []
    assert not dest.exists()
    output = capsys.readouterr().out
    total = sum(path.stat().st_size for path in mirror.iterdir() if path.name not in ("manifest.csv", ".mirror_state.json"))
    assert "subset1.zip" in output
    assert "To download:" in output
    plan = acquire(dest, base_url=server.url, manifest=manifest, dry_run=True)
    assert plan.attrs["bytes_to_fetch"] == total
    assert set(plan["on_disk"]) == {"missing"}


def test_selection_by_subset_and_file(sample, serve, tmp_path):
    dataset, mirror, manifest = sample
    server = serve(mirror)
    dest = tmp_path / "dest"

    table = acquire(dest, subsets=[1], files=["annotations.csv"], base_url=server.url, manifest=manifest, policy=FAST)

    assert list(table["name"]) == ["annotations.csv", "subset1.zip"]
    assert sorted(set(server.names_requested())) == ["annotations.csv", "subset1.zip"]
    assert not (dest / "subset0").exists()
    with pytest.raises(AcquireError, match="Subset 4 is not available"):
        acquire(dest, subsets=[4], base_url=server.url, manifest=manifest)
    with pytest.raises(AcquireError, match="not in the catalog or manifest"):
        acquire(dest, files=["nodules.csv"], base_url=server.url, manifest=manifest)


def test_manifest_overrides_catalog(sample, serve, tmp_path):
    dataset, mirror, _ = sample
    folder = tmp_path / "mirror"
    shutil.copytree(mirror, folder)
    (folder / "notes.txt").write_text("files of a lab mirror\n")
    rows = [
        ("annotations.csv", (folder / "annotations.csv").stat().st_size, hashlib.md5((folder / "annotations.csv").read_bytes()).hexdigest()),
        ("notes.txt", "", ""),
    ]
    manifest = write_manifest(tmp_path / "manifest.csv", rows)
    server = serve(folder)

    table = acquire(tmp_path / "dest", base_url=server.url, manifest=manifest, policy=FAST)

    # The sample's annotations.csv differs from the real one, whose MD5 the catalog holds.
    assert states(table) == {"annotations.csv": "downloaded", "notes.txt": "downloaded"}
    assert column(table, "annotations.csv", "check") == "md5 ok"
    assert sorted(set(server.names_requested())) == ["annotations.csv", "notes.txt"]


def test_local_folder_source(sample, tmp_path):
    dataset, mirror, manifest = sample
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "subset0.zip.part").write_bytes((mirror / "subset0.zip").read_bytes()[:2000])

    table = acquire(dest, base_url=str(mirror), manifest=manifest, policy=FAST)

    assert set(table["state"]) <= {"downloaded", "extracted"}
    assert column(table, "subset0.zip", "transfer") == "resumed"
    assert_dataset_copied(dataset, dest)
    file_url = acquire(tmp_path / "other", base_url=mirror.as_uri(), manifest=manifest, files=["annotations.csv"])
    assert states(file_url) == {"annotations.csv": "downloaded"}


def test_invalid_source_raises(sample, tmp_path, capsys):
    _, _, manifest = sample
    status = main(["--dest", str(tmp_path / "d"), "--base-url", str(tmp_path / "no-such-folder"), "--manifest", str(manifest)])

    assert status == 2
    assert "neither an http(s):// URL nor an existing folder" in capsys.readouterr().err


def test_manifest_without_source_raises(sample, tmp_path):
    _, _, manifest = sample
    with pytest.raises(AcquireError, match="pass the mirror with --base-url"):
        acquire(tmp_path / "d", manifest=manifest)


def test_too_little_disk_space_stops_before_fetching(sample, serve, tmp_path, monkeypatch, capsys):
    dataset, mirror, manifest = sample
    server = serve(mirror)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(pipeline.shutil, "disk_usage", lambda path: usage._replace(free=1000))

    status = main(["--dest", str(tmp_path / "dest"), "--base-url", server.url, "--manifest", str(manifest)])

    assert status == 2
    assert "Not enough free disk space" in capsys.readouterr().err
    assert server.log == []


def test_mirror_source_never_calls_zenodo_api(sample, serve, tmp_path, monkeypatch):
    dataset, mirror, manifest = sample
    server = serve(mirror)

    def fail(*args, **kwargs):
        raise AssertionError("the Zenodo API was called")

    monkeypatch.setattr(pipeline, "update_from_zenodo", fail)
    monkeypatch.setattr(catalog, "read_zenodo_record", fail)

    acquire(tmp_path / "a", base_url=server.url, manifest=manifest, policy=FAST)
    plan = acquire(tmp_path / "b", base_url=server.url, subsets=[0], dry_run=True)
    assert list(plan["name"]) == ["subset0.zip"]


def test_zenodo_api_values_replace_catalog(monkeypatch, tmp_path, caplog):
    listing = {"subset0.zip": (123, "a" * 32), "annotations.csv": (136_986, "f4404df491aee6445a4485061bfdffdd")}
    calls = []

    def fake_record(record, base_url=catalog.ZENODO_URL, timeout_s=30.0):
        calls.append(record)
        return listing if record == catalog.RECORD_PART1 else {}

    monkeypatch.setattr(catalog, "read_zenodo_record", fake_record)

    plan = acquire(tmp_path / "dest", subsets=[0], files=["annotations.csv"], dry_run=True)

    assert calls == [catalog.RECORD_PART1]
    assert plan.set_index("name").loc["subset0.zip", "size"] == 123
    assert "Zenodo lists subset0.zip with md5 " + "a" * 32 in caplog.text
    assert "annotations.csv with" not in caplog.text


def test_read_zenodo_record_from_local_api(serve, tmp_path):
    server = serve(tmp_path)
    document = {
        "files": [
            {"key": "subset7.zip", "size": 42, "checksum": "md5:" + "b" * 32},
            {"key": "notes.txt", "size": 5},
        ]
    }
    server.documents["/api/records/777"] = json.dumps(document).encode()

    listing = catalog.read_zenodo_record("777", base_url=server.url, timeout_s=5)

    assert listing == {"subset7.zip": (42, "b" * 32), "notes.txt": (5, None)}
    with pytest.raises(AcquireError, match="Could not read the file list"):
        catalog.read_zenodo_record("778", base_url=server.url, timeout_s=5)


def test_cli_runs_as_subprocess(sample, serve, tmp_path):
    dataset, mirror, manifest = sample
    server = serve(mirror)
    dest = tmp_path / "dest"
    environment = {**os.environ, "LUNA_UTILS_PLAIN_PROGRESS": "1"}

    completed = subprocess.run(
        [sys.executable, "-m", "luna_utils.acquire", "--dest", str(dest), "--base-url", server.url, "--manifest", str(manifest), *FAST_ARGS],
        cwd=repo_root(),
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert completed.returncode == 0, completed.stderr
    assert "0 failed" in completed.stdout
    assert_dataset_copied(dataset, dest)


def test_cli_requires_dest(monkeypatch, capsys):
    monkeypatch.delenv("LUNA16_DIR", raising=False)

    assert main(["--dry-run"]) == 2
    assert "pass --dest" in capsys.readouterr().err
