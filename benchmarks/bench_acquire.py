"""Benchmark: luna_utils.acquire and luna_utils.inventory against the usual approaches.

Three measurements on the synthetic sample's mirror (`data/sample-mirror/`, about 100 MB in 18
files), served by a Range-capable HTTP server on 127.0.0.1:

1. A full acquisition (download, verify, extract) with `acquire` (MD5 computed while streaming,
   4 workers) against the usual script: `urllib.request.urlretrieve` per file, then a second pass
   for the MD5, then `zipfile.ZipFile.extractall`.
2. A download of the largest archive cut at half its size, then run again: bytes and time of the
   second run when it resumes (`acquire`) against a restart from zero (the usual script).
3. The per-scan geometry table from headers only (`header_geometry_table`) against reading every
   scan with `SimpleITK.ReadImage` to get the same fields.

Run: `python benchmarks/bench_acquire.py` (well under a minute on 2 cores). It prints a Markdown
table of timings and ratios and checks that both approaches give the same files and values.
"""

from __future__ import annotations

import hashlib
import http.server
import platform
import re
import shutil
import tempfile
import threading
import time
import urllib.request
import zipfile
from pathlib import Path

import pandas as pd
import SimpleITK as sitk

from luna_utils.acquire import RetryPolicy, acquire, ensure_sample_mirror
from luna_utils.dataset import default_sample_dir, list_scans
from luna_utils.inventory import compare_trees, header_geometry_table


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves files of the server's folder with HTTP Range support and an optional cut."""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        server = self.server
        data = (server.folder / self.path.lstrip("/")).read_bytes()
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        start = int(match.group(1)) if match else 0
        self.send_response(206 if match else 200)
        if match:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()

        body = data[start:]
        if server.cut_at is not None:
            body = body[: server.cut_at]
            server.cut_at = None
        server.bytes_sent += len(body)
        self.wfile.write(body)


def start_server(folder: Path) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    server.daemon_threads = True
    server.folder = folder
    server.cut_at = None
    server.bytes_sent = 0
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def usual_fetch(url: str, names: list[str], expected_md5: dict[str, str], dest: Path) -> None:
    """Download each file whole, hash it in a second pass, extract archives with extractall."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = dest / name
        urllib.request.urlretrieve(f"{url}/{name}", path)
        digest = hashlib.md5(path.read_bytes()).hexdigest()
        assert digest == expected_md5[name], name
        if name.endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                archive.extractall(dest)


def timed(function, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, result


def main() -> None:
    manifest_path = ensure_sample_mirror()
    mirror = manifest_path.parent
    manifest = pd.read_csv(manifest_path)
    expected_md5 = dict(zip(manifest["name"], manifest["md5"]))
    for name in manifest["name"]:
        (mirror / name).read_bytes()  # warm the page cache, so neither side pays for the first read
    server = start_server(mirror)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    rows = []

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)

        # 1. Full acquisition.
        ours_s, table = timed(acquire, scratch / "ours", base_url=url, manifest=manifest_path, workers=4)
        assert (table["state"] != "failed").all()
        usual_s, _ = timed(usual_fetch, url, list(manifest["name"]), expected_md5, scratch / "usual")
        same = compare_trees(scratch / "usual", scratch / "ours")
        assert set(same.loc[~same["path"].str.startswith(".luna_acquire"), "status"]) == {"same"}
        rows.append(("full acquisition, 18 files (s)", usual_s, ours_s))

        # 2. An interrupted download of the largest archive, run again.
        largest = manifest.sort_values("size").iloc[-1]
        name, size = largest["name"], int(largest["size"])
        server.cut_at = size // 2
        no_retry = RetryPolicy(retries=0)  # the cut run fails and leaves its part file
        acquire(scratch / "cut", files=[name], base_url=url, manifest=manifest_path, policy=no_retry)
        sent_before = server.bytes_sent
        resume_s, _ = timed(acquire, scratch / "cut", files=[name], base_url=url, manifest=manifest_path)
        resumed_bytes = server.bytes_sent - sent_before
        sent_before = server.bytes_sent
        restart_s, _ = timed(usual_fetch, url, [name], expected_md5, scratch / "restart")
        restarted_bytes = server.bytes_sent - sent_before
        rows.append((f"bytes sent to finish {name} cut at 50 %", restarted_bytes, resumed_bytes))
        rows.append((f"time to finish {name} cut at 50 % (s)", restart_s, resume_s))

    # 3. Geometry table: headers only against reading every volume.
    sample = default_sample_dir()
    headers_s, geometry = timed(header_geometry_table, sample)

    def read_all() -> list[tuple]:
        return [sitk.ReadImage(str(path)).GetSize() for path in list_scans(sample)["mhd_path"]]

    volumes_s, sizes = timed(read_all)
    assert [tuple(row) for row in geometry[["dim_x", "dim_y", "n_slices"]].itertuples(index=False)] == sizes
    rows.append((f"geometry table of {len(geometry)} scans (s)", volumes_s, headers_s))

    server.shutdown()
    print(f"Machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}\n")
    print("| measurement | usual approach | luna_utils | ratio (usual / luna_utils) |")
    print("|---|---|---|---|")
    for label, usual, ours in rows:
        fmt = "{:,.0f}" if "bytes" in label else "{:.2f}"
        print(f"| {label} | {fmt.format(usual)} | {fmt.format(ours)} | {usual / max(ours, 1e-9):.1f}x |")


if __name__ == "__main__":
    main()
