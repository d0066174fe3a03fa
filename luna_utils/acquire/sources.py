"""Where files come from: Zenodo, an HTTP mirror or a local folder, read from a byte offset.

Every source opens a file at an offset and reports where the returned stream really starts, so
the downloader resumes when the source honours the offset and restarts from zero when it does not
(an HTTP server that ignores Range returns 200 and the whole file).
"""

from __future__ import annotations

import email.utils
import http.client
import logging
import re
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote, urlparse
from urllib.request import url2pathname

from luna_utils.acquire.catalog import ZENODO_URL, CatalogEntry, zenodo_file_url
from luna_utils.acquire.errors import AcquireError, RangeNotSatisfiableError, TransientError
from luna_utils.dataset import display_path

logger = logging.getLogger(__name__)

USER_AGENT = "luna_utils-acquire/0.1 (Python urllib)"

# HTTP statuses worth retrying: request timeout, too many requests, and server errors.
RETRYABLE_STATUSES = {408, 429}


@dataclass
class OpenedFile:
    """A readable stream of one file, starting at `start`.

    Attributes:
        stream: Binary stream with `read(n)` and `close()`.
        start: Offset in the file of the stream's first byte: the requested offset, or 0 when
            the source ignored it.
        length: Bytes the stream should deliver (Content-Length), or None when unknown.
        total: Size of the whole file in bytes, or None when unknown.
    """

    stream: BinaryIO
    start: int
    length: int | None
    total: int | None

    def close(self) -> None:
        """Close the stream."""
        self.stream.close()


class Source(ABC):
    """A place that serves the LUNA16 files by name."""

    #: Whether this is the default Zenodo source, the only one that may call the Zenodo API.
    is_zenodo = False

    @abstractmethod
    def location(self, entry: CatalogEntry) -> str:
        """Return the URL or path of an entry, for messages."""

    @abstractmethod
    def open(self, entry: CatalogEntry, offset: int) -> OpenedFile:
        """Open an entry for reading from a byte offset.

        Raises:
            TransientError: On a failure worth retrying.
            RangeNotSatisfiableError: If the offset is at or past the end of the file.
            AcquireError: On a permanent failure, such as a missing file.
        """

    def describe(self) -> str:
        """Return a short description of the source for logs and tables."""
        return type(self).__name__


class HttpSource(Source):
    """Files served over HTTP(S) at `<base_url>/<name>`, read with HTTP Range requests."""

    def __init__(self, base_url: str, timeout_s: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s

    def describe(self) -> str:
        return f"mirror {self.base_url}"

    def location(self, entry: CatalogEntry) -> str:
        return f"{self.base_url}/{quote(entry.name)}"

    def open(self, entry: CatalogEntry, offset: int) -> OpenedFile:
        url = self.location(entry)
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        if offset > 0:
            request.add_header("Range", f"bytes={offset}-")

        try:
            response = urllib.request.urlopen(request, timeout=self.timeout_s)
        except urllib.error.HTTPError as error:
            raise _http_error(url, error, offset) from error
        except urllib.error.URLError as error:
            if isinstance(error.reason, OSError):
                raise TransientError(f"{url}: connection failed: {error.reason}") from error
            raise AcquireError(f"{url}: request failed: {error.reason}") from error
        except (http.client.HTTPException, OSError) as error:
            raise TransientError(f"{url}: connection failed: {error!r}") from error

        return _opened_from_response(response, offset)


class ZenodoSource(HttpSource):
    """The LUNA16 records on Zenodo, at `https://zenodo.org/records/<record>/files/<name>`.

    NOTE: the tests never leave 127.0.0.1, so downloads from zenodo.org itself (its redirects and
    Range support) are not exercised by them.
    """

    is_zenodo = True

    def __init__(self, timeout_s: float = 60.0, zenodo_url: str = ZENODO_URL) -> None:
        super().__init__(zenodo_url, timeout_s)

    def describe(self) -> str:
        return f"Zenodo ({self.base_url})"

    def location(self, entry: CatalogEntry) -> str:
        if not entry.record:
            raise AcquireError(
                f"{entry.name} has no Zenodo record; pass --base-url to fetch it from a mirror."
            )
        return zenodo_file_url(entry.record, entry.name, self.base_url)


class LocalSource(Source):
    """Files in a local folder (a copied mirror or a mounted share), copied with the same logic."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def describe(self) -> str:
        return f"folder {display_path(self.folder)}"

    def location(self, entry: CatalogEntry) -> str:
        return str(self.folder / entry.name)

    def open(self, entry: CatalogEntry, offset: int) -> OpenedFile:
        path = self.folder / entry.name
        if not path.is_file():
            raise AcquireError(f"{path} does not exist. Check the folder passed as the source.")
        total = path.stat().st_size
        if offset >= total and offset > 0:
            if offset == total:
                raise RangeNotSatisfiableError(f"{path}: offset {offset} is the end of the file.", total)
            offset = 0  # a longer partial file cannot belong to this file: start again

        try:
            stream = open(path, "rb")
            stream.seek(offset)
        except OSError as error:
            raise TransientError(f"{path}: could not read: {error}") from error
        return OpenedFile(stream=stream, start=offset, length=total - offset, total=total)


def resolve_source(base_url: str | None = None, timeout_s: float = 60.0) -> Source:
    """Return the source for a `--base-url` value.

    Args:
        base_url: None for Zenodo; an `http(s)://` URL for a mirror holding `<base_url>/<name>`;
            a `file://` URL or an existing folder for a local copy.
        timeout_s: Socket timeout for HTTP sources, in seconds.

    Raises:
        AcquireError: If the value is neither a URL nor an existing folder.
    """
    if base_url is None:
        return ZenodoSource(timeout_s)
    if base_url.startswith(("http://", "https://")):
        return HttpSource(base_url, timeout_s)
    if base_url.startswith("file://"):
        folder = Path(url2pathname(urlparse(base_url).path))
    else:
        folder = Path(base_url).expanduser()
    if not folder.is_dir():
        raise AcquireError(
            f"Source {base_url!r} is neither an http(s):// URL nor an existing folder. "
            "Pass the mirror's URL or the folder holding the files."
        )
    return LocalSource(folder)


def _opened_from_response(response: http.client.HTTPResponse, offset: int) -> OpenedFile:
    """Describe a 200 or 206 response as an `OpenedFile`."""
    length_header = response.headers.get("Content-Length")
    length = int(length_header) if length_header and length_header.isdigit() else None

    if response.status == 206:
        match = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", response.headers.get("Content-Range", ""))
        if match is None:
            response.close()
            raise TransientError(
                f"{response.url}: HTTP 206 without a valid Content-Range "
                f"({response.headers.get('Content-Range')!r})."
            )
        start = int(match.group(1))
        total = int(match.group(3)) if match.group(3).isdigit() else None
        return OpenedFile(response, start, length, total)

    if offset > 0:
        logger.info("%s ignored the Range request (HTTP %s); restarting from byte 0.", response.url, response.status)
    return OpenedFile(response, 0, length, length)


def _http_error(url: str, error: urllib.error.HTTPError, offset: int) -> AcquireError:
    """Translate an HTTP error status into a transient, range or permanent error."""
    code = error.code
    headers = error.headers
    error.close()

    if code == 416:
        content_range = headers.get("Content-Range", "") if headers is not None else ""
        match = re.match(r"bytes \*/(\d+)", content_range)
        total = int(match.group(1)) if match else None
        return RangeNotSatisfiableError(f"{url}: HTTP 416 for offset {offset}.", total)
    if code in RETRYABLE_STATUSES or code >= 500:
        return TransientError(f"{url}: HTTP {code} {error.reason}", _retry_after_s(headers))
    if code == 404:
        return AcquireError(f"{url}: HTTP 404 Not Found. Check the file name and the source URL.")
    return AcquireError(f"{url}: HTTP {code} {error.reason}. The server rejected the request; check the URL and your access to it.")


def _retry_after_s(headers) -> float | None:
    """Return the wait in seconds that an HTTP Retry-After header requests, or None."""
    value = headers.get("Retry-After") if headers else None
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())
